//! A migration's state as recorded on the target, so it can be read from
//! any machine.

use std::collections::BTreeMap;

use pglive_postgres::ConnectConfig;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::preflight;
use crate::state;

/// Everything about one migration (its `serde` form is `pglive status
/// --json`).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The migration's name.
    pub name: String,
    /// Its stage (`schema`, `copy`, `post-data`, `streaming`, `cutover`,
    /// `done`).
    pub stage: &'static str,
    /// Whether a `pglive migrate` (or a cutover) runs it now.
    pub running: bool,
    /// The source, described without password.
    pub source: String,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Where the slot's stream begins.
    pub start_lsn: String,
    /// Whether a cutover was asked for.
    pub cutover_requested: bool,
    /// Whether pglive's fence is up on the source (recorded before it was
    /// raised; kept after a fenced cutover finished).
    pub source_fenced: bool,
    /// Why the last cutover asked for was withdrawn.
    pub last_cutover_error: Option<String>,
    /// Why apply waits, while it does: a source table changed shape (DDL
    /// on the source) and the target does not match it yet; the message
    /// holds the SQL to run on the target.
    pub apply_waiting: Option<String>,
    /// The slot's WAL on the source as last seen while streaming (every
    /// 10 s): `retained_bytes`, `wal_status`, `safe_bytes` (how much more
    /// before `max_slot_wal_keep_size` invalidates it; null without limit).
    pub slot_wal: Option<serde_json::Value>,
    /// What the cutover did, once done.
    pub summary: Option<String>,
    /// The copy, per table.
    pub copy: CopyStatus,
    /// The last recorded streaming figures (positions, lag, counters,
    /// `seconds_since_update`).
    pub streaming: Option<serde_json::Value>,
    /// The schema changes captured on the source and met by apply:
    /// replayed, skipped, or pending.
    pub schema_changes: Vec<crate::SchemaChange>,
}

/// The copy's progress.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct CopyStatus {
    /// Tables planned.
    pub tables: usize,
    /// Tables whose every part is done.
    pub tables_done: usize,
    /// One entry per table, by name.
    pub per_table: Vec<TableCopy>,
}

/// One table's copy.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct TableCopy {
    /// The table, quoted.
    pub table: String,
    /// Its parts.
    pub parts: usize,
    /// Parts done.
    pub parts_done: usize,
    /// Rows copied so far.
    pub rows: i64,
    /// Bytes of COPY data so far.
    pub bytes: i64,
}

impl TableCopy {
    /// Whether every part is copied.
    pub fn done(&self) -> bool {
        self.parts_done == self.parts
    }
}

/// Reads migration `name`'s state from `target`.
pub async fn status(target: ConnectConfig, name: &str) -> Result<Status> {
    let client = preflight::connect(&target, "target").await?;
    let Some(record) = state::load(&client, name).await? else {
        return Err(Error::NotFound {
            name: name.to_owned(),
            target: target.describe(),
        });
    };
    let parts = pglive_snapshot::status(&client, name).await?;
    let streaming = state::load_progress(&client, name).await?;
    let running = state::is_running(&client, name).await?;
    let schema_changes = crate::schema_changes::list(&client, name).await?;
    let mut by_table: BTreeMap<String, TableCopy> = BTreeMap::new();
    for part in &parts {
        let table = part.table.to_string();
        let entry = by_table.entry(table.clone()).or_insert(TableCopy {
            table,
            parts: 0,
            parts_done: 0,
            rows: 0,
            bytes: 0,
        });
        entry.parts += 1;
        if part.done {
            entry.parts_done += 1;
        }
        entry.rows += part.rows.unwrap_or(0);
        entry.bytes += part.bytes.unwrap_or(0);
    }
    let per_table: Vec<TableCopy> = by_table.into_values().collect();
    Ok(Status {
        name: record.name,
        stage: record.stage.as_str(),
        running,
        source: record.source,
        slot: record.slot,
        publication: record.publication,
        start_lsn: record.start_lsn.to_string(),
        cutover_requested: record.cutover_requested,
        source_fenced: record.fence_raised,
        last_cutover_error: record.cutover_error,
        apply_waiting: record.apply_waiting,
        slot_wal: record.slot_wal,
        summary: record.summary,
        copy: CopyStatus {
            tables: per_table.len(),
            tables_done: per_table.iter().filter(|t| t.done()).count(),
            per_table,
        },
        streaming,
        schema_changes,
    })
}
