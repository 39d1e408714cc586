//! `pglive status` as text.

use pglive_migrate::Status;
use pglive_migrate::human::{bytes, count};

/// Prints `status` for people.
pub(crate) fn print(status: &Status) {
    println!(
        "migration {:?}: stage {}{}",
        status.name,
        status.stage,
        if status.running {
            " (pglive migrate is running)"
        } else {
            ""
        }
    );
    println!(
        "  source {}  slot {:?}  publication {:?}  stream from {}",
        status.source, status.slot, status.publication, status.start_lsn
    );
    println!(
        "  copy: {} of {} tables done",
        status.copy.tables_done, status.copy.tables
    );
    for table in &status.copy.per_table {
        if table.done() {
            println!(
                "    {}: done, {} rows, {}",
                table.table,
                count(table.rows as u64),
                bytes(table.bytes as u64)
            );
        } else {
            println!(
                "    {}: {}/{} parts",
                table.table, table.parts_done, table.parts
            );
        }
    }
    if let Some(p) = status.streaming.as_ref().and_then(|s| s.as_object()) {
        println!(
            "  streaming: applied {} · received {} · source {} · lag {} / {:.1}s · {} transactions (updated {:.0}s ago)",
            p["applied_lsn"].as_str().unwrap_or("-"),
            p["received_lsn"].as_str().unwrap_or("-"),
            p["source_lsn"].as_str().unwrap_or("-"),
            bytes(p["lag_bytes"].as_u64().unwrap_or(0)),
            p["lag_seconds"].as_f64().unwrap_or(0.0),
            count(p["transactions"].as_u64().unwrap_or(0)),
            p["seconds_since_update"].as_f64().unwrap_or(0.0),
        );
    }
    if let Some(wal) = status.slot_wal.as_ref().and_then(|w| w.as_object()) {
        let field = |key: &str| wal.get(key).and_then(serde_json::Value::as_i64);
        let retained = field("retained_bytes").unwrap_or(0).max(0) as u64;
        let limit = match field("safe_bytes") {
            Some(safe) => format!(
                ", {} more before max_slot_wal_keep_size invalidates it",
                bytes(safe.max(0) as u64)
            ),
            None => String::new(),
        };
        println!(
            "  slot: holds {} of WAL on the source ({}{limit})",
            bytes(retained),
            wal.get("wal_status")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
        );
    }
    if status.source_fenced {
        println!(
            "  the source is fenced (read-only){}",
            if status.stage == "done" {
                ""
            } else {
                ": `pglive cutover --abort` lifts the fence"
            }
        );
    }
    if let Some(why) = &status.apply_waiting {
        println!("  apply waits: {why}");
    }
    if !status.schema_changes.is_empty() {
        println!("  schema changes captured on the source:");
        for change in &status.schema_changes {
            println!(
                "    {} #{} {}: {}{}",
                change.lsn,
                change.position,
                change.outcome,
                change.command,
                change
                    .problem
                    .as_ref()
                    .map(|p| format!(" ({p}; `pglive ddl retry|skip` decides)"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(error) = &status.last_cutover_error {
        println!("  the last cutover was withdrawn: {error}");
    }
    if let Some(summary) = &status.summary {
        println!("  {summary}");
    }
}
