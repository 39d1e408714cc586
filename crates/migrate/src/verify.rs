//! `pglive verify`: the same counts and checksums computed on both sides.
//!
//! The checksum of a table is the sum of the first 60 bits of each row's
//! md5 (of its text form, under the pinned session settings): independent of
//! row order, so no sort, and bounded memory on any table size. On a
//! mismatch of a table with a single integer key, the key space is split
//! into ranges to say where the rows differ.

use std::fmt;

use std::sync::Arc;

use pglive_postgres::{ConnectConfig, connect_sql, quote_literal};
use pglive_repl::{ReplicationClient, SlotOptions, SnapshotAction};
use pglive_schema::{Catalog, ObjectFilter, Table};
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result};
use crate::events::{Events, Step};
use crate::preflight;
use crate::state::{self, Stage};

/// One table's figures on both sides.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TableComparison {
    /// The table, quoted.
    pub table: String,
    /// Rows on the source.
    pub source_rows: u64,
    /// Rows on the target.
    pub target_rows: u64,
    /// The source's checksum (with `full`).
    pub source_checksum: Option<String>,
    /// The target's checksum (with `full`).
    pub target_checksum: Option<String>,
    /// Key ranges whose rows differ (integer keys only).
    pub differing_ranges: Vec<String>,
    /// The rows that differ, by key (integer keys only; at most
    /// [`MAX_ROWS_NAMED`]): `id=42 changed`, `id=7 missing on the target`,
    /// `id=9 only on the target`.
    pub differing_rows: Vec<String>,
}

/// How many differing rows a comparison names per table.
pub const MAX_ROWS_NAMED: usize = 20;

/// Below this many keys a differing range is compared row by row.
const ROWS_AT_ONCE: i64 = 512;

impl TableComparison {
    /// Whether counts (and checksums) are equal.
    pub fn matches(&self) -> bool {
        self.source_rows == self.target_rows && self.source_checksum == self.target_checksum
    }
}

impl fmt::Display for TableComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: source {} rows, target {} rows",
            self.table, self.source_rows, self.target_rows
        )?;
        if self.source_checksum != self.target_checksum {
            write!(f, ", checksums differ")?;
        }
        if !self.differing_ranges.is_empty() {
            write!(f, " (in key ranges {})", self.differing_ranges.join(", "))?;
        }
        Ok(())
    }
}

/// Every compared table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Comparison {
    /// One entry per table, in catalog order.
    pub tables: Vec<TableComparison>,
}

impl Comparison {
    /// The tables that differ.
    pub fn mismatches(&self) -> Vec<&TableComparison> {
        self.tables.iter().filter(|t| !t.matches()).collect()
    }
}

fn checksum_sql(table: &Table, condition: &str) -> String {
    // Generated columns are computed on each side; compare only copied ones.
    let columns: Vec<String> = table
        .copied_columns()
        .map(|c| pglive_postgres::quote_ident(&c.name))
        .collect();
    let row = if columns.is_empty() {
        "''".to_owned()
    } else {
        format!("ROW({})::text", columns.join(", "))
    };
    format!(
        "SELECT count(*)::int8, coalesce(sum(('x' || substr(md5({row}), 1, 15))::bit(60)::int8::numeric), 0)::text FROM ONLY {} t{condition}",
        table.name.quoted()
    )
}

async fn figures(client: &Client, sql: &str, full: bool) -> Result<(u64, Option<String>)> {
    let row = client
        .query_one(sql, &[])
        .await
        .doing_with(|| format!("running {sql}"))?;
    let count: i64 = row.get(0);
    Ok((count as u64, full.then(|| row.get(1))))
}

/// Compares every table the filter selects; `full` adds checksums.
pub(crate) async fn compare(
    source: &Client,
    target: &Client,
    filter: &ObjectFilter,
    full: bool,
) -> Result<Comparison> {
    let catalog = Catalog::read(source, filter).await?;
    let mut tables = Vec::new();
    for table in catalog.tables_with_rows() {
        let sql = if full {
            checksum_sql(table, "")
        } else {
            format!(
                "SELECT count(*)::int8, '' FROM ONLY {}",
                table.name.quoted()
            )
        };
        let (source_rows, source_checksum) = figures(source, &sql, full).await?;
        let (target_rows, target_checksum) = figures(target, &sql, full)
            .await
            .doing_with(|| format!("reading {} on the target", table.name))?;
        let mut comparison = TableComparison {
            table: table.name.to_string(),
            source_rows,
            target_rows,
            source_checksum,
            target_checksum,
            differing_ranges: Vec::new(),
            differing_rows: Vec::new(),
        };
        if !comparison.matches() {
            comparison.differing_ranges = differing_ranges(source, target, table).await?;
            comparison.differing_rows = differing_rows(source, target, table).await?;
        }
        tables.push(comparison);
    }
    Ok(Comparison { tables })
}

/// The lowest and highest value of an integer `key` on either side.
async fn key_bounds(
    source: &Client,
    target: &Client,
    table: &Table,
    key: &str,
) -> Result<Option<(i64, i64)>> {
    let bounds = format!(
        "SELECT min({key})::int8, max({key})::int8 FROM ONLY {}",
        table.name.quoted()
    );
    let (s, t) = (
        source.query_one(&bounds, &[]).await?,
        target.query_one(&bounds, &[]).await?,
    );
    let lows = [s.get::<_, Option<i64>>(0), t.get::<_, Option<i64>>(0)];
    let highs = [s.get::<_, Option<i64>>(1), t.get::<_, Option<i64>>(1)];
    Ok(
        match (lows.iter().flatten().min(), highs.iter().flatten().max()) {
            (Some(low), Some(high)) => Some((*low, *high)),
            _ => None,
        },
    )
}

/// Splits an integer key's span into 16 ranges and lists those that differ.
async fn differing_ranges(source: &Client, target: &Client, table: &Table) -> Result<Vec<String>> {
    let Some(key) = table.integer_key() else {
        return Ok(Vec::new());
    };
    let key = pglive_postgres::quote_ident(key);
    let Some((low, high)) = key_bounds(source, target, table, &key).await? else {
        return Ok(Vec::new());
    };
    let step = ((high - low) / 16).max(1);
    let mut ranges = Vec::new();
    let mut start = low;
    while start <= high {
        let end = start.saturating_add(step);
        let sql = checksum_sql(table, &format!(" WHERE {key} >= {start} AND {key} < {end}"));
        if figures(source, &sql, true).await? != figures(target, &sql, true).await? {
            ranges.push(format!("[{start}, {end})"));
        }
        start = end;
    }
    Ok(ranges)
}

/// Narrows an integer key's differences down to rows, data-diff style:
/// ranges whose checksums differ are cut in 16 until they hold few keys,
/// which are then compared row by row (key and digest of each row). Every
/// query reads a key range through the key's index.
async fn differing_rows(source: &Client, target: &Client, table: &Table) -> Result<Vec<String>> {
    let Some(key) = table.integer_key() else {
        return Ok(Vec::new());
    };
    let quoted = pglive_postgres::quote_ident(key);
    let Some((low, high)) = key_bounds(source, target, table, &quoted).await? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    // Ranges still to look into, as [start, end); end may pass i64::MAX.
    let mut pending: Vec<(i128, i128)> = vec![(i128::from(low), i128::from(high) + 1)];
    while let Some((start, end)) = pending.pop() {
        if found.len() >= MAX_ROWS_NAMED {
            break;
        }
        let range = |column: &str| {
            format!(
                " WHERE {column} >= {start} AND {column} < {}",
                end.min(i128::from(i64::MAX))
            )
        };
        if end - start <= i128::from(ROWS_AT_ONCE) {
            found.extend(rows_that_differ(source, target, table, key, &range(&quoted)).await?);
            continue;
        }
        let step = ((end - start) / 16).max(1);
        let mut sub = start;
        let mut differing = Vec::new();
        while sub < end {
            let sub_end = (sub + step).min(end);
            let sql = checksum_sql(
                table,
                &format!(
                    " WHERE {quoted} >= {sub} AND {quoted} < {}",
                    sub_end.min(i128::from(i64::MAX))
                ),
            );
            if figures(source, &sql, true).await? != figures(target, &sql, true).await? {
                differing.push((sub, sub_end));
            }
            sub = sub_end;
        }
        // Lowest keys first.
        pending.extend(differing.into_iter().rev());
    }
    found.truncate(MAX_ROWS_NAMED);
    Ok(found)
}

/// The rows of one small key range that differ, by the value of `key`
/// (unquoted).
async fn rows_that_differ(
    source: &Client,
    target: &Client,
    table: &Table,
    key: &str,
    condition: &str,
) -> Result<Vec<String>> {
    let columns: Vec<String> = table
        .copied_columns()
        .map(|c| pglive_postgres::quote_ident(&c.name))
        .collect();
    let sql = format!(
        "SELECT {}::int8, md5(ROW({})::text) FROM ONLY {} t{condition}",
        pglive_postgres::quote_ident(key),
        columns.join(", "),
        table.name.quoted()
    );
    let read = |rows: Vec<tokio_postgres::Row>| -> std::collections::BTreeMap<i64, String> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let on_source = read(
        source
            .query(&sql, &[])
            .await
            .doing("reading rows on the source")?,
    );
    let on_target = read(
        target
            .query(&sql, &[])
            .await
            .doing("reading rows on the target")?,
    );
    let mut keys: Vec<&i64> = on_source.keys().chain(on_target.keys()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter_map(|k| match (on_source.get(k), on_target.get(k)) {
            (Some(a), Some(b)) if a != b => Some(format!("{key}={k} changed")),
            (Some(_), None) => Some(format!("{key}={k} missing on the target")),
            (None, Some(_)) => Some(format!("{key}={k} only on the target")),
            _ => None,
        })
        .collect())
}

/// A finished verification.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Verification {
    /// The figures per table.
    pub comparison: Comparison,
    /// Whether both sides were compared at one consistent point of a live
    /// migration (apply paused there).
    pub live: bool,
}

/// Compares the tables migration `name` carries (every table when the
/// target records no such migration): after cutover, or without a
/// migration, directly; while it streams, at one consistent point: a
/// temporary slot exports a source snapshot and its exact LSN, the running
/// [`crate::migrate`] applies up to that LSN and holds while a target
/// session takes its snapshot, then goes on while both snapshots are
/// compared. `full` adds checksums of every row.
pub async fn verify(
    source: ConnectConfig,
    target: ConnectConfig,
    name: &str,
    full: bool,
    events: Arc<dyn Events>,
) -> Result<Verification> {
    let source_client = preflight::connect(&source, "source").await?;
    let target_client = preflight::connect(&target, "target").await?;
    let recorded = state::load(&target_client, name).await?;
    // The tables the migration moved, not every table of the database.
    let filter = recorded
        .as_ref()
        .map(|m| m.settings.filter())
        .unwrap_or_default();
    let live = match recorded {
        Some(m) if m.stage < Stage::Cutover => {
            if !state::is_running(&target_client, name).await? {
                return Err(Error::NotRunning {
                    name: name.to_owned(),
                    stage: m.stage,
                });
            }
            if m.stage != Stage::Streaming {
                return Err(Error::WrongStage {
                    name: name.to_owned(),
                    stage: m.stage,
                    needs: "verify once it streams",
                });
            }
            true
        }
        _ => false,
    };
    let comparison = if live {
        compare_live(
            (&source, &target),
            &source_client,
            &target_client,
            name,
            &filter,
            full,
            events.as_ref(),
        )
        .await?
    } else {
        compare(&source_client, &target_client, &filter, full).await?
    };
    Ok(Verification { comparison, live })
}

/// A target session in a read-only REPEATABLE READ transaction whose
/// snapshot is taken now (while apply holds at a point).
pub(crate) async fn target_snapshot(target: &ConnectConfig) -> Result<Client> {
    let client = connect_sql(target).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
        .await
        .doing("taking the target's snapshot")?;
    Ok(client)
}

/// [`compare`] with the source read under the exported `snapshot` and the
/// target under the snapshot `target_at_point` holds (see
/// [`target_snapshot`]): both sides as of one point.
pub(crate) async fn compare_at(
    source: &Client,
    snapshot: &str,
    target_at_point: &Client,
    filter: &ObjectFilter,
    full: bool,
) -> Result<Comparison> {
    source
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .doing("importing the source snapshot")?;
    let comparison = compare(source, target_at_point, filter, full).await;
    source.batch_execute("COMMIT").await.ok();
    target_at_point.batch_execute("COMMIT").await.ok();
    comparison
}

async fn compare_live(
    (source_config, target_config): (&ConnectConfig, &ConnectConfig),
    source: &Client,
    target: &Client,
    name: &str,
    filter: &ObjectFilter,
    full: bool,
    events: &dyn Events,
) -> Result<Comparison> {
    let unanswered = |reason: String| Error::VerifyPoint { reason };
    for _attempt in 0..5 {
        let mut replication = ReplicationClient::connect(source_config).await?;
        let slot = replication
            .create_slot(
                &format!("pglive_verify_{}", std::process::id()),
                &SlotOptions {
                    temporary: true,
                    snapshot: SnapshotAction::Export,
                    ..SlotOptions::default()
                },
            )
            .await
            .doing("creating a temporary slot for the verification snapshot")?;
        let snapshot = slot
            .snapshot_name
            .clone()
            .ok_or_else(|| unanswered("the temporary slot exported no snapshot".to_owned()))?;
        state::request_verify(target, name, slot.consistent_point).await?;
        events.note(
            Step::Verify,
            format!(
                "verify: waiting for apply to reach {} and pause",
                slot.consistent_point
            ),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let answer = loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match state::verify_request(target, name).await? {
                Some((_, state)) if state == "requested" => {}
                Some((_, state)) => break state,
                None => {
                    return Err(unanswered(
                        "the running migrate dropped the verification request".to_owned(),
                    ));
                }
            }
            if std::time::Instant::now() > deadline {
                state::set_verify_state(target, name, None).await?;
                return Err(unanswered(format!(
                    "apply did not reach {} within an hour",
                    slot.consistent_point
                )));
            }
        };
        if answer == "missed" {
            state::set_verify_state(target, name, None).await?;
            replication.close().await.ok();
            continue;
        }
        // Apply holds only while the target's snapshot is taken.
        let target_at_point = target_snapshot(target_config).await;
        state::set_verify_state(target, name, None).await?;
        events.note(
            Step::Verify,
            format!(
                "verify: both sides' snapshots taken at {}; apply goes on while they are compared",
                slot.consistent_point
            ),
        );
        let result = compare_at(source, &snapshot, &target_at_point?, filter, full).await;
        replication.close().await.ok();
        return result;
    }
    Err(unanswered(
        "apply kept passing the verification snapshot; try again".to_owned(),
    ))
}
