//! The copy's state in the target: `pglive.copy_parts`.
//!
//! One row per part and migration: its range, `pending` or `done`, and once
//! done its row and byte counts and `copied_at`, the LSN of the snapshot it
//! was copied under. The target server is the coordinator: a worker claims
//! a part with `SELECT … FOR UPDATE SKIP LOCKED` in the same transaction that
//! copies its rows and marks it done, so the mark commits with the rows or
//! not at all, and any number of workers in any number of processes share
//! the parts without a scheduler of their own.
//!
//! **Snapshots.** The applier skips a table's changes at or before the
//! table's `copied_at`, so all parts of a table must come from one snapshot.
//! A worker only claims parts of tables whose finished parts carry its own
//! snapshot's LSN; when a run starts under a new snapshot (after a crash,
//! from a new `TEMPORARY` slot), tables left half-done under an older one
//! are emptied and all their parts made pending again, while finished
//! tables keep their rows and their older `copied_at`. Processes sharing a
//! copy therefore share one exported snapshot.

use std::collections::{BTreeMap, HashSet};

use pglive_postgres::{Lsn, QualifiedName, StateSchema};
use tokio_postgres::GenericClient;

use crate::chunks::HypertableChunks;
use crate::error::{Error, Result, target};
use crate::plan::{Part, PartRange};

/// The advisory lock that serializes creating the state table and seeding
/// parts ("pglive" in ASCII).
const STATE_LOCK: i64 = 0x70_67_6c_69_76_65;

/// The copy's table, by version (see [`StateSchema`]).
pub(crate) const STATE: StateSchema = StateSchema {
    component: "snapshot",
    steps: &[VERSION_1, VERSION_2, VERSION_3, VERSION_4],
};

const VERSION_1: &str = "
CREATE TABLE IF NOT EXISTS pglive.copy_parts (
    migration text NOT NULL,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    part integer NOT NULL,
    kind text NOT NULL CHECK (kind IN ('table', 'key', 'blocks', 'large_objects')),
    key_column text,
    range_start bigint,
    range_end bigint,
    estimated_bytes bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    rows bigint,
    bytes bigint,
    copied_at pg_lsn,
    claimed_by text,
    started_at timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (migration, table_schema, table_name, part)
);
COMMENT ON TABLE pglive.copy_parts IS 'pglive initial data copy: one row per table part (pglive-snapshot)';
";

/// Version 2: the snapshot a migration's copy runs under now. Seeding
/// under a new snapshot replaces it (then waits for parts being copied
/// under the old one), and a part is claimed only under the current one,
/// so processes still holding an old snapshot cannot mix it into a table.
const VERSION_2: &str = "
CREATE TABLE IF NOT EXISTS pglive.copy_runs (
    migration text PRIMARY KEY,
    snapshot_lsn pg_lsn NOT NULL
);";

/// Version 3: parts of whole chunks of a TimescaleDB hypertable, by the
/// type of its time column (bounds in TimescaleDB's internal time).
const VERSION_3: &str = "
ALTER TABLE pglive.copy_parts DROP CONSTRAINT IF EXISTS copy_parts_kind_check;
ALTER TABLE pglive.copy_parts ADD CONSTRAINT copy_parts_kind_check
    CHECK (kind IN ('table', 'key', 'blocks', 'large_objects', 'timestamptz', 'timestamp', 'date'));";

/// Version 4: parts of chunks of a TimescaleDB hypertable, by their ids on
/// the source (`range_start` to `range_end`, inclusive).
const VERSION_4: &str = "
ALTER TABLE pglive.copy_parts DROP CONSTRAINT IF EXISTS copy_parts_kind_check;
ALTER TABLE pglive.copy_parts ADD CONSTRAINT copy_parts_kind_check
    CHECK (kind IN ('table', 'key', 'blocks', 'large_objects', 'timestamptz', 'timestamp', 'date',
                    'chunks'));";

/// Creates the state table if needed and records the parts of every table
/// that has none yet (tables with parts keep theirs, whoever planned them),
/// then resets tables left half-done under a snapshot other than `lsn`
/// (`hypertables` are emptied with their chunks). Returns the tables reset.
pub(crate) async fn seed(
    client: &mut tokio_postgres::Client,
    migration: &str,
    parts: &[Part],
    hypertables: &[&QualifiedName],
    lsn: Lsn,
) -> Result<Vec<QualifiedName>> {
    STATE.upgrade(client).await?;
    replace_snapshot(client, migration, lsn).await?;
    let tx = client
        .transaction()
        .await
        .map_err(target("starting the state transaction"))?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1)",
        &[&STATE_LOCK],
    )
    .await
    .map_err(target("locking pglive.copy_parts"))?;
    // Tables that have parts keep them, whoever planned them.
    let planned: HashSet<QualifiedName> = tx
        .query(
            "SELECT DISTINCT table_schema, table_name FROM pglive.copy_parts WHERE migration = $1",
            &[&migration],
        )
        .await
        .map_err(target("reading pglive.copy_parts"))?
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let new: Vec<&Part> = parts
        .iter()
        .filter(|p| !planned.contains(&p.table))
        .collect();
    let column = |f: &dyn Fn(&Part) -> Option<i64>| new.iter().map(|p| f(p)).collect::<Vec<_>>();
    let (starts, ends) = (
        column(&|p| match &p.range {
            PartRange::Key { start, .. }
            | PartRange::Blocks { start, .. }
            | PartRange::Time { start, .. } => *start,
            PartRange::Chunks { first, .. } => Some(*first),
            _ => None,
        }),
        column(&|p| match &p.range {
            PartRange::Key { end, .. }
            | PartRange::Blocks { end, .. }
            | PartRange::Time { end, .. }
            | PartRange::Chunks { last: end, .. } => *end,
            _ => None,
        }),
    );
    let keys: Vec<Option<&str>> = new
        .iter()
        .map(|p| match &p.range {
            PartRange::Key { column, .. } | PartRange::Time { column, .. } => Some(column.as_str()),
            _ => None,
        })
        .collect();
    let schemas: Vec<&str> = new.iter().map(|p| p.table.schema.as_str()).collect();
    let names: Vec<&str> = new.iter().map(|p| p.table.name.as_str()).collect();
    let numbers: Vec<i32> = new.iter().map(|p| p.number).collect();
    let kinds: Vec<&str> = new.iter().map(|p| p.range.kind()).collect();
    let sizes: Vec<i64> = new.iter().map(|p| p.estimated_bytes).collect();
    tx.execute(
        "INSERT INTO pglive.copy_parts (migration, table_schema, table_name, part, kind, \
             key_column, range_start, range_end, estimated_bytes) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], \
                                  $7::int8[], $8::int8[], $9::int8[])",
        &[
            &migration, &schemas, &names, &numbers, &kinds, &keys, &starts, &ends, &sizes,
        ],
    )
    .await
    .map_err(target("recording the copy plan in pglive.copy_parts"))?;
    // Tables half-done under another snapshot start over under this one.
    let stale = tx
        .query(
            "SELECT table_schema, table_name FROM pglive.copy_parts \
             WHERE migration = $1 AND kind <> 'large_objects' \
             GROUP BY table_schema, table_name \
             HAVING bool_or(state = 'pending') \
                AND bool_or(state = 'done' AND copied_at <> $2::text::pg_lsn)",
            &[&migration, &lsn.to_string()],
        )
        .await
        .map_err(target("finding tables copied under an older snapshot"))?;
    let mut reset = Vec::new();
    for row in stale {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let only = crate::copier::only(hypertables.contains(&&table));
        tx.batch_execute(&format!("TRUNCATE {only}{table}"))
            .await
            .map_err(target(format!("emptying {table} to copy it again")))?;
        tx.execute(
            "UPDATE pglive.copy_parts SET state = 'pending', rows = NULL, bytes = NULL, \
                 copied_at = NULL, claimed_by = NULL, started_at = NULL, finished_at = NULL \
             WHERE migration = $1 AND table_schema = $2 AND table_name = $3",
            &[&migration, &table.schema, &table.name],
        )
        .await
        .map_err(target(format!("resetting the parts of {table}")))?;
        reset.push(table);
    }
    tx.commit()
        .await
        .map_err(target("committing the copy plan"))?;
    reset.sort();
    Ok(reset)
}

/// Makes `lsn` the snapshot migration `migration`'s copy runs under. When
/// it replaces another, no part is claimed under the old one from then
/// on, and this waits for the parts being copied under it to commit or
/// roll back: the seed that follows sees them.
async fn replace_snapshot(
    client: &mut tokio_postgres::Client,
    migration: &str,
    lsn: Lsn,
) -> Result<()> {
    let current = client
        .query_opt(
            "SELECT 1 FROM pglive.copy_runs WHERE migration = $1 AND snapshot_lsn = $2::text::pg_lsn",
            &[&migration, &lsn.to_string()],
        )
        .await
        .map_err(target("reading pglive.copy_runs"))?;
    if current.is_some() {
        return Ok(());
    }
    client
        .execute(
            "INSERT INTO pglive.copy_runs (migration, snapshot_lsn) VALUES ($1, $2::text::pg_lsn)
             ON CONFLICT (migration) DO UPDATE SET snapshot_lsn = excluded.snapshot_lsn",
            &[&migration, &lsn.to_string()],
        )
        .await
        .map_err(target("recording the copy's snapshot in pglive.copy_runs"))?;
    // A claimed part's row stays locked until its copy commits.
    let tx = client
        .transaction()
        .await
        .map_err(target("starting the state transaction"))?;
    tx.query(
        "SELECT 1 FROM pglive.copy_parts WHERE migration = $1 AND state = 'pending' FOR UPDATE",
        &[&migration],
    )
    .await
    .map_err(target("waiting for parts copied under the old snapshot"))?;
    tx.commit()
        .await
        .map_err(target("waiting for parts copied under the old snapshot"))
}

/// A part claimed by a worker, as read back from the state table.
#[derive(Clone, Debug)]
pub(crate) struct Claimed {
    pub table: QualifiedName,
    pub number: i32,
    pub range: PartRange,
}

/// Claims the largest pending part of one of `tables` that may be copied
/// under `lsn`, locking its row until the transaction ends.
pub(crate) async fn claim(
    tx: &tokio_postgres::Transaction<'_>,
    migration: &str,
    schemas: &[String],
    names: &[String],
    lsn: Lsn,
    claimed_by: &str,
) -> Result<Option<Claimed>> {
    let row = tx
        .query_opt(
            "SELECT p.table_schema, p.table_name, p.part, p.kind, p.key_column, \
                    p.range_start, p.range_end \
             FROM pglive.copy_parts p \
             WHERE p.migration = $1 AND p.state = 'pending' \
               AND (p.table_schema, p.table_name) IN \
                   (SELECT * FROM unnest($2::text[], $3::text[])) \
               AND NOT EXISTS (SELECT 1 FROM pglive.copy_parts d \
                               WHERE d.migration = p.migration \
                                 AND d.table_schema = p.table_schema \
                                 AND d.table_name = p.table_name \
                                 AND d.state = 'done' AND d.kind <> 'large_objects' \
                                 AND d.copied_at <> $4::text::pg_lsn) \
             ORDER BY p.estimated_bytes DESC, p.table_schema, p.table_name, p.part \
             LIMIT 1 \
             FOR UPDATE OF p SKIP LOCKED",
            &[&migration, &schemas, &names, &lsn.to_string()],
        )
        .await
        .map_err(target("claiming a part"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    // After the part's row is locked: a new snapshot committed since is
    // seen here, and one committed later waits for this part.
    let current = tx
        .query_opt(
            "SELECT 1 FROM pglive.copy_runs WHERE migration = $1 AND snapshot_lsn = $2::text::pg_lsn",
            &[&migration, &lsn.to_string()],
        )
        .await
        .map_err(target("checking the copy's snapshot"))?;
    if current.is_none() {
        return Err(Error::SnapshotReplaced {
            migration: migration.to_owned(),
            ours: lsn,
        });
    }
    let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
    let number: i32 = row.get(2);
    let kind: String = row.get(3);
    let start: Option<i64> = row.get(5);
    let end: Option<i64> = row.get(6);
    let range = match kind.as_str() {
        "key" => PartRange::Key {
            column: row.get::<_, Option<String>>(4).unwrap_or_default(),
            start,
            end,
        },
        "blocks" => PartRange::Blocks { start, end },
        "large_objects" => PartRange::LargeObjects,
        "chunks" => PartRange::Chunks {
            first: start.unwrap_or_default(),
            last: end,
        },
        other => match crate::plan::TimeType::from_kind(other) {
            Some(time_type) => PartRange::Time {
                column: row.get::<_, Option<String>>(4).unwrap_or_default(),
                time_type,
                start,
                end,
            },
            None => PartRange::Whole,
        },
    };
    tx.execute(
        "UPDATE pglive.copy_parts SET claimed_by = $4, started_at = now() \
         WHERE migration = $1 AND table_schema = $2 AND table_name = $3 AND part = $5",
        &[&migration, &table.schema, &table.name, &claimed_by, &number],
    )
    .await
    .map_err(target(format!("claiming part {number} of {table}")))?;
    Ok(Some(Claimed {
        table,
        number,
        range,
    }))
}

/// The chunk parts of migration `migration` still pending: each
/// hypertable with the id ranges of its chunks (see
/// [`PartRange::Chunks`]).
pub(crate) async fn pending_chunks(
    client: &impl GenericClient,
    migration: &str,
) -> Result<Vec<HypertableChunks>> {
    let rows = client
        .query(
            "SELECT table_schema, table_name, range_start, range_end \
               FROM pglive.copy_parts \
              WHERE migration = $1 AND kind = 'chunks' AND state = 'pending' \
              ORDER BY 1, 2, 3",
            &[&migration],
        )
        .await
        .map_err(target("reading the chunks left to copy"))?;
    let mut pending: Vec<HypertableChunks> = Vec::new();
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let range = (row.get(2), row.get(3));
        match pending.last_mut() {
            Some((last, ranges)) if *last == table => ranges.push(range),
            _ => pending.push((table, vec![range])),
        }
    }
    Ok(pending)
}

/// Marks a claimed part done, in the transaction that copied its rows.
/// Fails if another part of the table was meanwhile committed under another
/// snapshot (two processes sharing a copy with different snapshots).
pub(crate) async fn finish(
    tx: &tokio_postgres::Transaction<'_>,
    migration: &str,
    part: &Claimed,
    rows: i64,
    bytes: i64,
    lsn: Lsn,
) -> Result<()> {
    if part.range != PartRange::LargeObjects {
        let other: Option<String> = tx
            .query_opt(
                "SELECT copied_at::text FROM pglive.copy_parts \
                 WHERE migration = $1 AND table_schema = $2 AND table_name = $3 \
                   AND state = 'done' AND copied_at <> $4::text::pg_lsn LIMIT 1",
                &[
                    &migration,
                    &part.table.schema,
                    &part.table.name,
                    &lsn.to_string(),
                ],
            )
            .await
            .map_err(target(format!("checking the snapshots of {}", part.table)))?
            .map(|r| r.get(0));
        if let Some(other) = other {
            return Err(Error::SnapshotConflict {
                table: part.table.clone(),
                ours: lsn,
                theirs: other,
            });
        }
    }
    tx.execute(
        "UPDATE pglive.copy_parts SET state = 'done', rows = $5, bytes = $6, \
             copied_at = $7::text::pg_lsn, finished_at = now() \
         WHERE migration = $1 AND table_schema = $2 AND table_name = $3 AND part = $4",
        &[
            &migration,
            &part.table.schema,
            &part.table.name,
            &part.number,
            &rows,
            &bytes,
            &lsn.to_string(),
        ],
    )
    .await
    .map_err(target(format!(
        "marking part {} of {} done",
        part.number, part.table
    )))?;
    Ok(())
}

/// The state of one part, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartStatus {
    /// The table (`pg_catalog.pg_largeobject` for large objects).
    pub table: QualifiedName,
    /// The part's number within its table.
    pub number: i32,
    /// Whether its rows are committed.
    pub done: bool,
    /// Rows copied (when done).
    pub rows: Option<i64>,
    /// Bytes of COPY data moved (when done).
    pub bytes: Option<i64>,
    /// Estimated size.
    pub estimated_bytes: i64,
    /// The LSN of the snapshot it was copied under (when done).
    pub copied_at: Option<Lsn>,
    /// Which worker copied it (when done).
    pub claimed_by: Option<String>,
}

/// Every part of `migration`, from the target; empty if the state table
/// does not exist yet.
pub async fn status(client: &impl GenericClient, migration: &str) -> Result<Vec<PartStatus>> {
    if !state_exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT table_schema, table_name, part, state = 'done', rows, bytes, \
                    estimated_bytes, copied_at::text, claimed_by \
             FROM pglive.copy_parts WHERE migration = $1 \
             ORDER BY table_schema, table_name, part",
            &[&migration],
        )
        .await
        .map_err(target("reading pglive.copy_parts"))?;
    Ok(rows
        .iter()
        .map(|r| PartStatus {
            table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            number: r.get(2),
            done: r.get(3),
            rows: r.get(4),
            bytes: r.get(5),
            estimated_bytes: r.get(6),
            copied_at: r
                .get::<_, Option<String>>(7)
                .and_then(|lsn| lsn.parse().ok()),
            claimed_by: r.get(8),
        })
        .collect())
}

/// For every table whose parts are all done: the LSN its copy corresponds
/// to (the greatest `copied_at` of its parts; they are equal, see the module
/// documentation). The applier skips the table's changes at or before it.
/// Large objects are not included.
pub async fn copied_at(
    client: &impl GenericClient,
    migration: &str,
) -> Result<BTreeMap<QualifiedName, Lsn>> {
    if !state_exists(client).await? {
        return Ok(BTreeMap::new());
    }
    let rows = client
        .query(
            "SELECT table_schema, table_name, max(copied_at)::text \
             FROM pglive.copy_parts \
             WHERE migration = $1 AND kind <> 'large_objects' \
             GROUP BY table_schema, table_name \
             HAVING bool_and(state = 'done')",
            &[&migration],
        )
        .await
        .map_err(target("reading copied_at from pglive.copy_parts"))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let lsn = r.get::<_, Option<String>>(2)?.parse().ok()?;
            Some((
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                lsn,
            ))
        })
        .collect())
}

/// Forgets the copy state of `tables` in `migration` (the copied rows
/// stay), so that a new copy plans them afresh.
pub async fn reset_tables(
    client: &impl GenericClient,
    migration: &str,
    tables: &[QualifiedName],
) -> Result<()> {
    if !state_exists(client).await? {
        return Ok(());
    }
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    client
        .execute(
            "DELETE FROM pglive.copy_parts WHERE migration = $1 \
               AND (table_schema, table_name) IN (SELECT * FROM ROWS FROM (unnest($2::text[]), unnest($3::text[])))",
            &[&migration, &schemas, &names],
        )
        .await
        .map_err(target("deleting from pglive.copy_parts"))?;
    Ok(())
}

/// Forgets the copy state of `migration` (the copied rows stay).
pub async fn reset(client: &impl GenericClient, migration: &str) -> Result<()> {
    if state_exists(client).await? {
        client
            .execute(
                "DELETE FROM pglive.copy_parts WHERE migration = $1",
                &[&migration],
            )
            .await
            .map_err(target("deleting from pglive.copy_parts"))?;
        // Before version 2 there is no such table.
        let runs: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass('pglive.copy_runs') IS NOT NULL",
                &[],
            )
            .await
            .map_err(target("looking for pglive.copy_runs"))?
            .get(0);
        if runs {
            client
                .execute(
                    "DELETE FROM pglive.copy_runs WHERE migration = $1",
                    &[&migration],
                )
                .await
                .map_err(target("deleting from pglive.copy_runs"))?;
        }
    }
    Ok(())
}

async fn state_exists(client: &impl GenericClient) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regclass('pglive.copy_parts') IS NOT NULL",
            &[],
        )
        .await
        .map_err(target("looking for pglive.copy_parts"))?
        .get(0))
}
