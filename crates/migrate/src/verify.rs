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
    /// 20): `id=42 changed`, `id=7 missing on the target`,
    /// `id=9 only on the target`.
    pub differing_rows: Vec<String>,
}

/// How many differing rows a comparison names per table.
pub(crate) const MAX_ROWS_NAMED: usize = 20;

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

/// One side of a comparison: a session, reading the present or a snapshot.
/// Under a snapshot each read is a short transaction of its own that
/// imports it, so no table stays locked while the others are read (apply
/// goes on meanwhile, and may need those locks).
#[derive(Clone, Copy)]
pub(crate) struct Side<'a> {
    client: &'a Client,
    snapshot: Option<&'a str>,
}

impl<'a> Side<'a> {
    /// Reads the present.
    pub fn now(client: &'a Client) -> Side<'a> {
        Side {
            client,
            snapshot: None,
        }
    }

    /// Reads exported snapshot `snapshot` (whose exporter stays open).
    pub fn at(client: &'a Client, snapshot: &'a str) -> Side<'a> {
        Side {
            client,
            snapshot: Some(snapshot),
        }
    }

    async fn begin(&self) -> Result<()> {
        if let Some(snapshot) = self.snapshot {
            self.client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                    quote_literal(snapshot)
                ))
                .await
                .doing("importing the comparison's snapshot")?;
        }
        Ok(())
    }

    async fn end(&self) {
        if self.snapshot.is_some() {
            self.client.batch_execute("ROLLBACK").await.ok();
        }
    }

    async fn query(&self, sql: &str) -> Result<Vec<tokio_postgres::Row>> {
        self.begin().await?;
        let rows = self
            .client
            .query(sql, &[])
            .await
            .doing_with(|| format!("running {sql}"));
        self.end().await;
        rows
    }

    async fn query_one(&self, sql: &str) -> Result<tokio_postgres::Row> {
        let mut rows = self.query(sql).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(Error::State {
                reason: format!("{sql} returned {n} rows instead of one"),
            }),
        }
    }

    async fn catalog(&self, filter: &ObjectFilter) -> Result<Catalog> {
        self.begin().await?;
        let catalog = Catalog::read(self.client, filter).await;
        self.end().await;
        Ok(catalog?)
    }
}

async fn figures(side: Side<'_>, sql: &str, full: bool) -> Result<(u64, Option<String>)> {
    let row = side.query_one(sql).await?;
    let count: i64 = row.get(0);
    Ok((count as u64, full.then(|| row.get(1))))
}

/// Compares every table the filter selects (as the source lists them);
/// `full` adds checksums.
pub(crate) async fn compare(
    source: Side<'_>,
    target: Side<'_>,
    filter: &ObjectFilter,
    full: bool,
) -> Result<Comparison> {
    let catalog = source.catalog(filter).await?;
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
            (comparison.differing_ranges, comparison.differing_rows) =
                narrow(source, target, table).await?;
        }
        tables.push(comparison);
    }
    Ok(Comparison { tables })
}

/// The lowest and highest value of an integer `key` on either side.
async fn key_bounds(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
    key: &str,
) -> Result<Option<(i64, i64)>> {
    let bounds = format!(
        "SELECT min({key})::int8, max({key})::int8 FROM ONLY {}",
        table.name.quoted()
    );
    let (s, t) = (
        source.query_one(&bounds).await?,
        target.query_one(&bounds).await?,
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

/// `[start, end)` of key `column` as a condition; an end past the largest
/// bigint leaves the range open above.
fn key_range(column: &str, start: i128, end: i128) -> String {
    if end > i128::from(i64::MAX) {
        format!(" WHERE {column} >= {start}")
    } else {
        format!(" WHERE {column} >= {start} AND {column} < {end}")
    }
}

/// The sixteenths of `[start, end)` (fewer when it is narrower).
fn sixteenths(start: i128, end: i128) -> Vec<(i128, i128)> {
    let step = ((end - start) / 16).max(1);
    let mut pieces = Vec::new();
    let mut from = start;
    while from < end {
        let to = (from + step).min(end);
        pieces.push((from, to));
        from = to;
    }
    pieces
}

/// The sixteenths of `[start, end)` of `table`'s key whose checksums
/// differ between the sides.
async fn differing_sixteenths(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
    key: &str,
    (start, end): (i128, i128),
) -> Result<Vec<(i128, i128)>> {
    let mut differing = Vec::new();
    for (from, to) in sixteenths(start, end) {
        let sql = checksum_sql(table, &key_range(key, from, to));
        if figures(source, &sql, true).await? != figures(target, &sql, true).await? {
            differing.push((from, to));
        }
    }
    Ok(differing)
}

/// Where the rows of a table with an integer key differ: the sixteenths of
/// the key's span that differ, and the differing rows themselves, found
/// data-diff style (ranges whose checksums differ are cut in 16 until they
/// hold few keys, which are compared row by row by key and digest; every
/// query reads a key range through the key's index).
async fn narrow(
    source: Side<'_>,
    target: Side<'_>,
    table: &Table,
) -> Result<(Vec<String>, Vec<String>)> {
    let Some(key) = table.integer_key() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let quoted = pglive_postgres::quote_ident(key);
    let Some((low, high)) = key_bounds(source, target, table, &quoted).await? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let span = (i128::from(low), i128::from(high) + 1);
    let top = differing_sixteenths(source, target, table, &quoted, span).await?;
    let ranges = top
        .iter()
        .map(|(from, to)| format!("[{from}, {to})"))
        .collect();
    let mut rows = Vec::new();
    // Lowest keys first.
    let mut pending: Vec<(i128, i128)> = top.into_iter().rev().collect();
    while let Some((from, to)) = pending.pop() {
        if rows.len() >= MAX_ROWS_NAMED {
            break;
        }
        if to - from <= i128::from(ROWS_AT_ONCE) {
            let condition = key_range(&quoted, from, to);
            rows.extend(rows_that_differ(source, target, table, key, &condition).await?);
        } else {
            let differing =
                differing_sixteenths(source, target, table, &quoted, (from, to)).await?;
            pending.extend(differing.into_iter().rev());
        }
    }
    rows.truncate(MAX_ROWS_NAMED);
    Ok((ranges, rows))
}

/// The rows of one small key range that differ, by the value of `key`
/// (unquoted).
async fn rows_that_differ(
    source: Side<'_>,
    target: Side<'_>,
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
    let on_source = read(source.query(&sql).await?);
    let on_target = read(target.query(&sql).await?);
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
        compare(
            Side::now(&source_client),
            Side::now(&target_client),
            &filter,
            full,
        )
        .await?
    };
    Ok(Verification { comparison, live })
}

/// A snapshot of the target taken when it was made (while apply held at a
/// point), exported by a session that stays open for the comparison's
/// reads while apply goes on.
pub(crate) struct TargetSnapshot {
    target: ConnectConfig,
    /// Holds the exported snapshot open; never reads a table.
    _exporter: Client,
    id: String,
}

impl TargetSnapshot {
    /// Takes the target's snapshot now.
    pub(crate) async fn take(target: &ConnectConfig) -> Result<TargetSnapshot> {
        let exporter = connect_sql(target).await?;
        exporter
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .doing("taking the target's snapshot")?;
        let id: String = exporter
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await
            .doing("taking the target's snapshot")?
            .get(0);
        Ok(TargetSnapshot {
            target: target.clone(),
            _exporter: exporter,
            id,
        })
    }
}

/// [`compare`] with the source read under the snapshot a slot exported
/// (`source_snapshot`, while the slot's connection stays open) and the
/// target under `target`: both sides as of one point.
pub(crate) async fn compare_at(
    source: &Client,
    source_snapshot: &str,
    target: &TargetSnapshot,
    filter: &ObjectFilter,
    full: bool,
) -> Result<Comparison> {
    let reader = connect_sql(&target.target).await?;
    compare(
        Side::at(source, source_snapshot),
        Side::at(&reader, &target.id),
        filter,
        full,
    )
    .await
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
        let target_at_point = TargetSnapshot::take(target_config).await;
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
