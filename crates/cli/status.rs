//! `pglive status`: everything about a migration, read from the target, so
//! it works from any machine.

use anyhow::{Result, bail};
use serde_json::json;

use crate::cli::StatusArgs;
use crate::report;
use crate::state;

pub async fn run(args: StatusArgs) -> Result<()> {
    let target_config = crate::parse_conninfo(&args.target, "--target")?;
    let target = crate::preflight::connect(&target_config, "target").await?;
    let Some(migration) = state::load(&target, &args.name).await? else {
        bail!(
            "no migration named {:?} on {} (start one with `pglive migrate`)",
            args.name,
            target_config.describe()
        );
    };
    let parts = pglive_snapshot::status(&target, &args.name).await?;
    let progress = state::load_progress(&target, &args.name).await?;
    let running = state::is_running(&target, &args.name).await?;
    let mut tables: Vec<serde_json::Value> = Vec::new();
    let mut by_table: std::collections::BTreeMap<String, (usize, usize, i64, i64)> =
        Default::default();
    for part in &parts {
        let entry = by_table.entry(part.table.to_string()).or_default();
        entry.0 += 1;
        if part.done {
            entry.1 += 1;
        }
        entry.2 += part.rows.unwrap_or(0);
        entry.3 += part.bytes.unwrap_or(0);
    }
    for (table, (total, done, rows, bytes)) in &by_table {
        tables.push(json!({"table": table, "parts": total, "parts_done": done, "rows": rows, "bytes": bytes}));
    }
    let copy_done = by_table.values().filter(|(t, d, _, _)| t == d).count();
    let document = json!({
        "name": migration.name,
        "stage": migration.stage.as_str(),
        "running": running,
        "source": migration.source,
        "slot": migration.slot,
        "publication": migration.publication,
        "start_lsn": migration.start_lsn.to_string(),
        "cutover_requested": migration.cutover_requested,
        "summary": migration.summary,
        "copy": {"tables": by_table.len(), "tables_done": copy_done, "per_table": tables},
        "streaming": progress,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!(
        "migration {:?}: stage {}{}",
        migration.name,
        migration.stage.as_str(),
        if running {
            " (pglive migrate is running)"
        } else {
            ""
        }
    );
    println!(
        "  source {}  slot {:?}  publication {:?}  stream from {}",
        migration.source, migration.slot, migration.publication, migration.start_lsn
    );
    println!("  copy: {copy_done} of {} tables done", by_table.len());
    for (table, (total, done, rows, bytes)) in &by_table {
        if done < total {
            println!("    {table}: {done}/{total} parts");
        } else {
            println!(
                "    {table}: done, {} rows, {}",
                report::count(*rows as u64),
                report::bytes(*bytes as u64)
            );
        }
    }
    if let Some(p) = &document["streaming"].as_object() {
        println!(
            "  streaming: applied {} · received {} · source {} · lag {} / {:.1}s · {} transactions (updated {:.0}s ago)",
            p["applied_lsn"].as_str().unwrap_or("-"),
            p["received_lsn"].as_str().unwrap_or("-"),
            p["source_lsn"].as_str().unwrap_or("-"),
            report::bytes(p["lag_bytes"].as_u64().unwrap_or(0)),
            p["lag_seconds"].as_f64().unwrap_or(0.0),
            report::count(p["transactions"].as_u64().unwrap_or(0)),
            p["seconds_since_update"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(summary) = &migration.summary {
        println!("  {summary}");
    }
    Ok(())
}
