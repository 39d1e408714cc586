//! A complete live migration through the library: copy and stream while
//! the application keeps writing, cut over with the source fenced, then
//! prove the target equal to the source row by row.
//!
//! ```text
//! cargo run --example migrate -- 'postgresql://repl@old-db/shop' 'postgresql://app@new-db/shop'
//! ```
//!
//! Fencing leaves the source read-only (`ALTER DATABASE … RESET
//! default_transaction_read_only` undoes it); the application moves to the
//! target.

use std::sync::Arc;
use std::time::Duration;

use pglive_migrate::{Control, Event, Events, MigrateOptions, Outcome, VerifyOptions};
use pglive_postgres::ConnectConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, target] = args.as_slice() else {
        eprintln!("usage: migrate SOURCE_CONNINFO TARGET_CONNINFO");
        std::process::exit(2);
    };
    let source = ConnectConfig::parse(source)?;
    let target = ConnectConfig::parse(target)?;
    let summary = migrate_live(source, target, "example").await?;
    println!("switch the application to the target now: {summary}");
    Ok(())
}

/// Migrates `source` into `target` as migration `name`, cuts over once the
/// stream runs (fencing the source), and verifies every table by count and
/// checksum. Returns the cutover's summary.
pub async fn migrate_live(
    source: ConnectConfig,
    target: ConnectConfig,
    name: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    // Events arrive from any task; here they become lines on stderr.
    let events: Arc<dyn Events> = Arc::new(|event: Event| match event {
        Event::Note { text, .. } => eprintln!("{text}"),
        Event::Warning { text, .. } => eprintln!("warning: {text}"),
        Event::Streaming(progress) if progress.lag_bytes > 0 => {
            eprintln!("lag: {} bytes", progress.lag_bytes)
        }
        _ => {}
    });
    let options = MigrateOptions::new(name);
    let control = Control::new();
    let migration = {
        let (source, target, events, control) = (
            source.clone(),
            target.clone(),
            Arc::clone(&events),
            control.clone(),
        );
        tokio::spawn(async move {
            pglive_migrate::migrate(source, target, &options, events, &control).await
        })
    };

    // Copy and indexes first; once changes stream, the target can take over.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if migration.is_finished() {
            break;
        }
        match pglive_migrate::status(target.clone(), name).await {
            Ok(status) if status.stage == "streaming" => {
                control.request_cutover(true);
                break;
            }
            // Not recorded yet, or still copying.
            _ => {}
        }
    }
    let Outcome::CutOver { summary } = migration.await?? else {
        return Err("the migration stopped before its cutover".into());
    };

    // Counts and checksums of every row, in parallel parts.
    let mut checks = VerifyOptions::default();
    checks.full = true;
    let verification = pglive_migrate::verify(source, target, name, &checks, events).await?;
    let differing = verification.comparison.mismatches();
    if !differing.is_empty() {
        return Err(format!("{} table(s) differ: {:?}", differing.len(), differing).into());
    }
    Ok(summary)
}
