//! Embedding pglive's applier: keep a target in step with a source slot,
//! exactly once, until Ctrl-C.
//!
//! ```text
//! cargo run --example apply_changes -- 'host=old dbname=shop' my_slot my_publication 'host=new dbname=shop'
//! ```
//!
//! The slot must exist and the target must already hold the tables with the
//! data as of the slot's consistent point (see the `copy_tables` example).
//! Stop it and start it again at will: it resumes from the position recorded
//! in the target, and nothing is applied twice.

use pglive_apply::{Applier, ApplyOptions, RunOptions};
use pglive_postgres::ConnectConfig;
use pglive_repl::{PgOutputOptions, ReplicationClient, StreamOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, slot, publication, target] = &args[..] else {
        eprintln!("usage: apply_changes SOURCE_CONNINFO SLOT PUBLICATION TARGET_CONNINFO");
        std::process::exit(2);
    };
    let source = ConnectConfig::parse(source)?;
    let target = ConnectConfig::parse(target)?;
    let mut applier = Applier::connect(&target, ApplyOptions::new(slot.clone(), 1)).await?;
    let client = ReplicationClient::connect(&source).await?;
    let mut stream = client
        .start_replication(
            slot,
            applier.applied_lsn(),
            &PgOutputOptions::new([publication.clone()]),
            StreamOptions::default(),
        )
        .await?;
    let shutdown = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let mut last = std::time::Instant::now();
    let stopped = pglive_apply::run(
        &mut applier,
        &mut stream,
        shutdown,
        &RunOptions::default(),
        |p| {
            if last.elapsed().as_secs() >= 5 {
                last = std::time::Instant::now();
                eprintln!(
                    "applied {} · lag {} bytes / {:.1}s · {} transactions",
                    p.stats.applied_lsn, p.lag_bytes, p.lag_seconds, p.stats.transactions
                );
            }
        },
    )
    .await?;
    eprintln!("stopped: {stopped:?} at {}", applier.applied_lsn());
    stream.stop().await?;
    Ok(())
}
