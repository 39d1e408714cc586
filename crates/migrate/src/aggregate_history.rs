//! The history of continuous aggregates: buckets materialized on the source
//! over raw data that is gone (a retention policy dropped its chunks while
//! the aggregate kept them — TimescaleDB's way of downsampling). No query of
//! the target's raw data can make them again, so they are copied from the
//! source's materialization under the copy's snapshot: the buckets before
//! the source's oldest raw chunk then (the *cut*, recorded in
//! `pglive.aggregate_history`). Every refresh pglive runs on the target
//! starts at a cut, where a refresh from the beginning would delete them
//! again: after the copy at the recorded one (the target still has every
//! raw chunk the copy saw), at cutover at the source's oldest raw chunk
//! then (the target dropped the chunks the source dropped meanwhile, and
//! keeps their buckets as it materialized them).
//!
//! A bucket that straddles a cut is history too: TimescaleDB refreshes
//! only the buckets wholly inside a window. Cuts are taken from the source
//! only, whose chunk boundaries may differ from the target's.

use pglive_postgres::{ConnectConfig, QualifiedName, SnapshotError, connect_sql};
use pglive_schema::ContinuousAggregate;
use tokio_postgres::Client;

use crate::error::{Doing, Result};
use crate::events::{Events, Step};

/// The start (TimescaleDB's internal time) of the oldest chunk of the raw
/// data of the continuous aggregate `c` (its hypertable, or for an
/// aggregate on an aggregate that one's materialization), along the first
/// open dimension `d`; NULL without chunks.
const OLDEST_RAW_CHUNK: &str = "(SELECT min(s.range_start)
          FROM _timescaledb_catalog.chunk ch
          JOIN _timescaledb_catalog.chunk_constraint cc ON cc.chunk_id = ch.id
          JOIN _timescaledb_catalog.dimension_slice s ON s.id = cc.dimension_slice_id
         WHERE ch.hypertable_id = c.raw_hypertable_id AND s.dimension_id = d.id
           AND NOT coalesce((to_jsonb(ch) ->> 'dropped')::bool, false)
           AND NOT coalesce((to_jsonb(ch) ->> 'osm_chunk')::bool, false))";

/// The first open (time) dimension `d` of the aggregate `c`'s raw data.
const RAW_TIME_DIMENSION: &str = "_timescaledb_catalog.dimension d
    ON d.id = (SELECT min(od.id) FROM _timescaledb_catalog.dimension od
                WHERE od.hypertable_id = c.raw_hypertable_id AND od.interval_length IS NOT NULL)";

/// The materialization hypertable `m` of the aggregate `c` named `$1.$2`.
const MATERIALIZATION: &str = "_timescaledb_catalog.continuous_agg c
    JOIN _timescaledb_catalog.hypertable m ON m.id = c.mat_hypertable_id";

/// The quoted columns of the materialization `m`, in order.
const MATERIALIZATION_COLUMNS: &str =
    "ARRAY(SELECT quote_ident(a.attname) FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = format('%I.%I', m.schema_name, m.table_name)::regclass
             AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)";

/// What the source's materialization of one aggregate holds as history.
struct SourceHistory {
    materialization: QualifiedName,
    columns: Vec<String>,
    /// Its time column, quoted.
    time_column: String,
    /// The cut (see the module documentation); `None`: all of it is
    /// history (the raw data has no chunk left).
    cut: Option<i64>,
    /// Finalized (TimescaleDB 2.7+): the target makes only such aggregates.
    finalized: bool,
    /// Whether the source role may read the materialization.
    readable: bool,
}

/// Copies, under `snapshot`, each of `aggregates`' history from the
/// source's materialization into the target's (made empty by
/// `create_on_target`; emptied first, so that a copy started again does
/// not double it), and records its cut for `migration`. Returns how many
/// rows.
pub(crate) async fn copy_from_source(
    (source, target): (&ConnectConfig, &ConnectConfig),
    (migration, snapshot): (&str, &str),
    aggregates: &[ContinuousAggregate],
    events: &dyn Events,
) -> Result<u64> {
    if aggregates.is_empty() {
        return Ok(0);
    }
    let mut source = connect_sql(source).await?;
    let mut target = connect_sql(target).await?;
    let source_tx = pglive_postgres::read_only_transaction(&mut source, Some(snapshot))
        .await
        .map_err(|e| match e {
            SnapshotError::Begin(e) | SnapshotError::Import { source: e, .. } => e,
        })
        .doing("importing the copy's snapshot to read continuous aggregates' history")?;
    let time_to_internal: String = source_tx
        .query_one(
            "SELECT quote_ident(n.nspname) || '.time_to_internal'
               FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
              WHERE p.proname = 'time_to_internal'
                AND n.nspname IN ('_timescaledb_functions', '_timescaledb_internal')
              ORDER BY n.nspname = '_timescaledb_functions' DESC LIMIT 1",
            &[],
        )
        .await
        .doing("finding TimescaleDB's time_to_internal on the source")?
        .get(0);
    let mut copied = 0;
    for aggregate in aggregates {
        let name = &aggregate.name;
        let Some(history) = source_history(&source_tx, name).await? else {
            continue;
        };
        if !history.finalized {
            events.warn(
                Step::Copy,
                format!(
                    "continuous aggregate {name} is in TimescaleDB's old (partial) format on the source: \
                     the target computes it anew from the raw data, and buckets whose raw data is gone are not carried"
                ),
            );
            continue;
        }
        if !history.readable {
            events.warn(
                Step::Copy,
                format!(
                    "continuous aggregate {name}: the source role may not read its materialization, so buckets whose raw data is gone \
                     are not carried (run GRANT SELECT ON {} TO <the source role> on the source, then copy again)",
                    history.materialization
                ),
            );
            continue;
        }
        let Some((materialization, columns)) = target_materialization(&target, name).await? else {
            continue;
        };
        if columns != history.columns {
            events.warn(
                Step::Copy,
                format!(
                    "continuous aggregate {name}: its materialization has other columns on the target ({}) than on the source ({}): \
                     buckets whose raw data is gone are not carried",
                    columns.join(", "),
                    history.columns.join(", ")
                ),
            );
            continue;
        }
        let columns = columns.join(", ");
        let what = format!("the history of continuous aggregate {name}");
        let rows = source_tx
            .copy_out(&format!(
                "COPY (SELECT {columns} FROM {} WHERE {}) TO STDOUT",
                history.materialization.quoted(),
                history.cut.map_or("true".to_owned(), |cut| format!(
                    "{time_to_internal}({}) < {cut}",
                    history.time_column
                ))
            ))
            .await
            .doing_with(|| format!("reading {what} on the source"))?;
        let tx = target.transaction().await?;
        tx.batch_execute(&format!("DELETE FROM {}", materialization.quoted()))
            .await
            .doing_with(|| format!("emptying {what} on the target"))?;
        let sink = tx
            .copy_in(&format!(
                "COPY {} ({columns}) FROM STDIN",
                materialization.quoted()
            ))
            .await
            .doing_with(|| format!("writing {what} on the target"))?;
        let (n, _) = pglive_snapshot::pipe(rows, sink, &what, |_, _| {}).await?;
        tx.execute(
            "INSERT INTO pglive.aggregate_history VALUES ($1, $2, $3, $4)
             ON CONFLICT (migration, view_schema, view_name) DO UPDATE SET cut = EXCLUDED.cut",
            &[&migration, &name.schema, &name.name, &history.cut],
        )
        .await
        .doing_with(|| format!("recording where {what} ends"))?;
        tx.commit()
            .await
            .doing_with(|| format!("writing {what} on the target"))?;
        copied += n;
    }
    source_tx.commit().await.ok();
    Ok(copied)
}

async fn source_history(
    source: &tokio_postgres::Transaction<'_>,
    name: &QualifiedName,
) -> Result<Option<SourceHistory>> {
    let sql = format!(
        "SELECT m.schema_name::text, m.table_name::text, {MATERIALIZATION_COLUMNS},
                (SELECT quote_ident(md.column_name) FROM _timescaledb_catalog.dimension md
                  WHERE md.hypertable_id = m.id ORDER BY md.id LIMIT 1),
                {OLDEST_RAW_CHUNK},
                coalesce((to_jsonb(c) ->> 'finalized')::bool, true),
                has_table_privilege(format('%I.%I', m.schema_name, m.table_name), 'SELECT')
           FROM {MATERIALIZATION} JOIN {RAW_TIME_DIMENSION}
          WHERE c.user_view_schema = $1 AND c.user_view_name = $2"
    );
    let Some(row) = source
        .query_opt(&sql, &[&name.schema, &name.name])
        .await
        .doing_with(|| format!("reading continuous aggregate {name} on the source"))?
    else {
        return Ok(None);
    };
    Ok(Some(SourceHistory {
        materialization: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
        columns: row.get(2),
        time_column: row.get(3),
        cut: row.get(4),
        finalized: row.get(5),
        readable: row.get(6),
    }))
}

/// The target's materialization of the aggregate `name` and its quoted
/// columns; `None` when the target has no such aggregate.
async fn target_materialization(
    target: &Client,
    name: &QualifiedName,
) -> Result<Option<(QualifiedName, Vec<String>)>> {
    let sql = format!(
        "SELECT m.schema_name::text, m.table_name::text, {MATERIALIZATION_COLUMNS}
           FROM {MATERIALIZATION}
          WHERE c.user_view_schema = $1 AND c.user_view_name = $2"
    );
    let row = target
        .query_opt(&sql, &[&name.schema, &name.name])
        .await
        .doing_with(|| format!("reading continuous aggregate {name} on the target"))?;
    Ok(row.map(|row| {
        (
            QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
            row.get(2),
        )
    }))
}

/// Which cut a refresh starts at (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// After the copy: the recorded one (else the source's).
    Recorded,
    /// At cutover: the source's oldest raw chunk now (never before the
    /// recorded one).
    SourceNow,
}

/// Refreshes each of `aggregates` on the target from its cut on (in order:
/// an aggregate on an aggregate after the one below), leaving the buckets
/// before it as they are. Without a cut (no raw chunk on the source, none
/// at the copy) there is nothing to compute.
pub(crate) async fn refresh_on_target(
    (source, target): (&Client, &Client),
    migration: &str,
    aggregates: &[ContinuousAggregate],
    cut: Cut,
) -> Result<()> {
    let oldest_on_source = format!(
        "SELECT {OLDEST_RAW_CHUNK} FROM _timescaledb_catalog.continuous_agg c JOIN {RAW_TIME_DIMENSION}
          WHERE c.user_view_schema = $1 AND c.user_view_name = $2"
    );
    // The start as a value of the aggregate's time type on the target.
    let start_sql = format!(
        "SELECT CASE d.column_type
                  WHEN 'timestamptz'::regtype
                    THEN format('%L::timestamptz', _timescaledb_functions.to_timestamp($3))
                  WHEN 'timestamp'::regtype
                    THEN format('%L::timestamp', _timescaledb_functions.to_timestamp_without_timezone($3))
                  WHEN 'date'::regtype
                    THEN format('%L::date', _timescaledb_functions.to_date($3))
                  ELSE format('%s::%s', $3, d.column_type::regtype)
                END
           FROM _timescaledb_catalog.continuous_agg c JOIN {RAW_TIME_DIMENSION}
          WHERE c.user_view_schema = $1 AND c.user_view_name = $2"
    );
    for aggregate in aggregates {
        let name = &aggregate.name;
        let recorded: Option<Option<i64>> = target
            .query_opt(
                "SELECT cut FROM pglive.aggregate_history
                  WHERE migration = $1 AND view_schema = $2 AND view_name = $3",
                &[&migration, &name.schema, &name.name],
            )
            .await
            .doing_with(|| format!("reading where continuous aggregate {name}'s history ends"))?
            .map(|row| row.get(0));
        let now: Option<i64> = source
            .query_opt(&oldest_on_source, &[&name.schema, &name.name])
            .await
            .doing_with(|| {
                format!("reading where continuous aggregate {name}'s raw data starts on the source")
            })?
            .and_then(|row| row.get(0));
        let start = match (cut, recorded) {
            (Cut::Recorded, Some(recorded)) => recorded,
            (Cut::Recorded, None) | (Cut::SourceNow, None) => now,
            (Cut::SourceNow, Some(recorded)) => now.max(recorded),
        };
        let Some(start) = start else { continue };
        let Some(start) = target
            .query_opt(&start_sql, &[&name.schema, &name.name, &start])
            .await
            .doing_with(|| format!("reading continuous aggregate {name} on the target"))?
        else {
            continue;
        };
        let start: String = start.get(0);
        target
            .batch_execute(&aggregate.refresh_sql(&start))
            .await
            .doing_with(|| format!("refreshing continuous aggregate {name}"))?;
    }
    Ok(())
}
