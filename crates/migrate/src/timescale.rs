//! TimescaleDB on the target: hypertables, continuous aggregates and jobs
//! made through TimescaleDB's own functions before the copy, the jobs
//! paused until cutover; at cutover the aggregates are refreshed and the
//! jobs run as on the source.

use pglive_apply::ChunkedTable;
use pglive_postgres::QualifiedName;
use pglive_schema::{Catalog, Timescale};
use tokio_postgres::Client;

use crate::error::{Doing, Result};
use crate::events::{Events, Step};
use crate::job::Job;

/// For apply, when the source runs TimescaleDB: its hypertables, whose
/// changes arrive on their chunks, and the schemas of TimescaleDB's
/// internal relations, whose changes are never applied. Read at each
/// stream start without a snapshot, so only TimescaleDB's own small
/// catalog (tables come and go meanwhile).
pub(crate) async fn chunked_tables(
    source: &Client,
) -> Result<Option<(Vec<ChunkedTable>, Vec<String>)>> {
    let Some(layout) = pglive_schema::chunk_layout(source)
        .await
        .doing("reading the source's TimescaleDB hypertables")?
    else {
        return Ok(None);
    };
    // TimescaleDB's own hypertables (compressed data, materializations)
    // live in its own schemas: their chunks are never applied.
    let chunked = layout
        .hypertables
        .into_iter()
        .filter(|(table, _, _)| !layout.internal_schemas.contains(&table.schema))
        .map(|(table, chunk_schema, chunk_prefix)| ChunkedTable {
            table,
            chunk_schema,
            chunk_prefix,
        })
        .collect();
    Ok(Some((chunked, layout.internal_schemas)))
}

/// Builds on the target each index of `hypertables` (hypertables on both
/// sides) that the source has and the target lacks: TimescaleDB runs
/// `CREATE INDEX` on a hypertable without firing event triggers, so the
/// capture of schema changes never sees it. Indexes backing constraints
/// come with the schema. Before the target holds every change (`caught_up`
/// false: at a stream start), an index on what the target does not have
/// yet (a column added since) is left for the cutover, which calls this
/// again once caught up. Returns how many it built.
pub(crate) async fn follow_source_hypertable_indexes(
    (source, target): (&Client, &Client),
    hypertables: &[QualifiedName],
    events: &dyn Events,
    caught_up: bool,
) -> Result<usize> {
    let step = if caught_up {
        Step::Cutover
    } else {
        Step::Streaming
    };
    let mut built = 0;
    for hypertable in hypertables {
        let name = hypertable.quoted();
        // Indexes that back no constraint (constraints come with the schema).
        let indexes = "SELECT c.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid)
                         FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
                        WHERE i.indrelid = pg_catalog.to_regclass($1)
                          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                                           WHERE k.conindid = i.indexrelid)";
        let there: Vec<String> = target
            .query(indexes, &[&name])
            .await
            .doing("reading a hypertable's indexes on the target")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for row in source
            .query(indexes, &[&name])
            .await
            .doing("reading a hypertable's indexes on the source")?
        {
            let (index, definition): (String, String) = (row.get(0), row.get(1));
            if there.contains(&index) {
                continue;
            }
            match target.batch_execute(&definition).await {
                Ok(()) => {}
                // Undefined column, table or object: not on the target yet.
                Err(e)
                    if !caught_up
                        && e.code()
                            .is_some_and(|c| matches!(c.code(), "42703" | "42P01" | "42704")) =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(e).doing_with(|| {
                        format!("building index {index:?} of {name} on the target")
                    });
                }
            }
            events.note(
                step,
                format!("index {index:?} of hypertable {name} (made on the source without an event trigger) built on the target"),
            );
            built += 1;
        }
    }
    Ok(built)
}

/// Makes the source's hypertables (with their compression settings) and
/// continuous aggregates (empty) on the target, whose tables exist and are
/// empty. Jobs come after post-data ([`create_jobs`]): a reorder policy
/// needs its index.
pub(crate) async fn create_on_target(
    job: &Job,
    target: &Client,
    timescale: &Timescale,
    events: &dyn Events,
) -> Result<()> {
    // Chunks are made as rows arrive, so the table must be a hypertable
    // before the copy.
    for hypertable in &timescale.hypertables {
        target
            .batch_execute(&hypertable.create_sql())
            .await
            .doing_with(|| format!("making {} a hypertable on the target", hypertable.name))?;
    }
    for aggregate in &timescale.continuous_aggregates {
        create_aggregate(job, target, aggregate).await?;
    }
    if !timescale.hypertables.is_empty() {
        events.note(
            Step::Schema,
            format!(
                "schema: {} hypertable(s) and {} continuous aggregate(s) created",
                timescale.hypertables.len(),
                timescale.continuous_aggregates.len(),
            ),
        );
    }
    Ok(())
}

/// Makes each of `timescale`'s hypertables one on the target where it is
/// not yet (a table created on the source while the migration streams,
/// which the target got by its replayed `CREATE`, empty). Returns how many.
pub(crate) async fn make_new_hypertables(
    target: &Client,
    timescale: &Timescale,
    events: &dyn Events,
) -> Result<usize> {
    let on_target = pglive_schema::hypertable_names(target)
        .await
        .doing("reading the target's hypertables")?;
    let mut made = 0;
    for hypertable in &timescale.hypertables {
        if on_target.contains(&hypertable.name) {
            continue;
        }
        target
            .batch_execute(&hypertable.create_sql())
            .await
            .doing_with(|| format!("making {} a hypertable on the target", hypertable.name))?;
        events.note(
            Step::Adopt,
            format!(
                "TimescaleDB: {} (made a hypertable on the source meanwhile) made one on the target",
                hypertable.name
            ),
        );
        made += 1;
    }
    Ok(made)
}

/// Creates `aggregate` on the target, empty (a refresh materializes it),
/// with its owner and privileges as the job keeps them, and its comment
/// (`pg_dump` leaves continuous aggregates out, so nothing else does).
async fn create_aggregate(
    job: &Job,
    target: &Client,
    aggregate: &pglive_schema::ContinuousAggregate,
) -> Result<()> {
    let settings = &job.options.settings;
    let statements = std::iter::once(aggregate.create_sql())
        .chain(aggregate.attributes_sql(settings.keep_owners, settings.keep_privileges));
    for statement in statements {
        target.batch_execute(&statement).await.doing_with(|| {
            format!(
                "creating continuous aggregate {} on the target ({statement})",
                aggregate.name
            )
        })?;
    }
    Ok(())
}

/// TimescaleDB settings every session of the source must have while a
/// migration streams, and why: with the defaults, rows change without a
/// trace in the stream.
const SOURCE_SETTINGS: [(&str, &str, &str); 5] = [
    (
        "timescaledb.enable_compression_wal_markers",
        "on",
        "rows TimescaleDB moves into or out of compressed chunks are marked in the stream, and not \
         applied twice",
    ),
    (
        "timescaledb.enable_chunk_auto_publication",
        "on",
        "a chunk made as rows arrive joins the publications",
    ),
    (
        "timescaledb.enable_compressed_direct_batch_delete",
        "off",
        "a DELETE of whole compressed batches decompresses them first, so its rows reach the stream",
    ),
    (
        "timescaledb.enable_direct_compress_insert",
        "off",
        "inserted rows are never written straight into compressed chunks",
    ),
    (
        "timescaledb.enable_direct_compress_copy",
        "off",
        "copied rows are never written straight into compressed chunks",
    ),
];

/// The [`SOURCE_SETTINGS`] the source's configuration does not hold yet.
async fn missing_settings(
    source: &Client,
) -> Result<Vec<&'static (&'static str, &'static str, &'static str)>> {
    let names: Vec<&str> = SOURCE_SETTINGS.iter().map(|(name, _, _)| *name).collect();
    let configured: Vec<(String, String)> = source
        .query(
            "SELECT name, setting FROM pg_catalog.pg_settings \
              WHERE name = ANY($1) AND source = 'configuration file'",
            &[&names],
        )
        .await
        .doing("reading the source's settings")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(SOURCE_SETTINGS
        .iter()
        .filter(|(name, value, _)| !configured.iter().any(|(n, v)| n == name && v == value))
        .collect())
}

/// Preflight, when the source has hypertables: the source role may set the
/// [`SOURCE_SETTINGS`] it lacks (`ALTER SYSTEM` on each, and
/// `pg_reload_conf()`), or it is a failure with the GRANTs to run.
pub(crate) async fn check_source_settings(source: &Client, role: &str) -> Vec<String> {
    let role = pglive_postgres::quote_ident(role);
    let missing = match missing_settings(source).await {
        Ok(missing) => missing,
        Err(e) => return vec![format!("cannot read the source's settings: {e}")],
    };
    if missing.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = missing.iter().map(|(name, _, _)| *name).collect();
    let denied: Vec<String> = match source
        .query(
            "SELECT n FROM unnest($1::text[]) n \
              WHERE NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
                AND NOT pg_catalog.has_parameter_privilege(n, 'ALTER SYSTEM') \
             UNION ALL \
             SELECT 'pg_reload_conf()' \
              WHERE NOT pg_catalog.has_function_privilege('pg_catalog.pg_reload_conf()', 'EXECUTE')",
            &[&names],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => return vec![format!("cannot read the source role's privileges: {e}")],
    };
    if denied.is_empty() {
        return Vec::new();
    }
    let grants: Vec<String> = denied
        .iter()
        .map(|d| match d.as_str() {
            "pg_reload_conf()" => {
                format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO {role};")
            }
            name => format!("GRANT ALTER SYSTEM ON PARAMETER {name} TO {role};"),
        })
        .collect();
    vec![format!(
        "the source runs TimescaleDB, and while pglive streams every session there needs {}; the \
         source role may not set them (ALTER SYSTEM and a reload): as a superuser on the source run \
         `{}`, or put them in its configuration and reload it",
        missing
            .iter()
            .map(|(name, value, why)| format!("{name} = {value} ({why})"))
            .collect::<Vec<_>>()
            .join("; "),
        grants.join(" ")
    )]
}

/// Gives every session of the source the [`SOURCE_SETTINGS`] (`ALTER
/// SYSTEM` and a reload; the application's sessions pick them up at once,
/// unless one sets them itself). Run before the publications exist.
pub(crate) async fn prepare_source(source: &Client, events: &dyn Events) -> Result<()> {
    let missing = missing_settings(source).await?;
    if missing.is_empty() {
        return Ok(());
    }
    // One statement each: ALTER SYSTEM runs outside a transaction.
    let mut statements: Vec<String> = missing
        .iter()
        .map(|(name, value, _)| format!("ALTER SYSTEM SET {name} = {value}"))
        .collect();
    statements.push("SELECT pg_catalog.pg_reload_conf()".to_owned());
    for statement in &statements {
        if let Err(err) = source.batch_execute(statement).await {
            return Err(crate::error::Error::TimescaleSettings {
                settings: SOURCE_SETTINGS
                    .iter()
                    .map(|(name, value, why)| format!("{name} = {value} ({why})"))
                    .collect::<Vec<_>>()
                    .join("; "),
                grants: SOURCE_SETTINGS
                    .iter()
                    .map(|(name, _, _)| {
                        format!("GRANT ALTER SYSTEM ON PARAMETER {name} TO <role>;")
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                reason: err
                    .as_db_error()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_else(|| err.to_string()),
            });
        }
    }
    for (name, value, why) in missing {
        events.note(
            Step::Schema,
            format!("TimescaleDB: {name} = {value} on the source (ALTER SYSTEM), so {why}"),
        );
    }
    Ok(())
}

/// What TimescaleDB holds on each side for the migration's tables, and
/// each target job paired with the source's same job (the same procedure
/// for the same relation; several alike are paired in order).
struct BothSides {
    source: Timescale,
    target: Timescale,
    /// (source job, target job).
    pairs: Vec<(pglive_schema::Job, pglive_schema::Job)>,
}

impl BothSides {
    /// The source's hypertables that are hypertables on the target too.
    fn hypertables_on_both(&self) -> Vec<QualifiedName> {
        self.source
            .hypertables
            .iter()
            .filter(|h| self.target.hypertables.iter().any(|t| t.name == h.name))
            .map(|h| h.name.clone())
            .collect()
    }
}

async fn both_sides(job: &Job, source: &Client, target: &Client) -> Result<BothSides> {
    let source = Catalog::read(source, &job.filter())
        .await
        .doing("reading the source's TimescaleDB objects")?
        .timescale;
    let target = Catalog::read(target, &job.filter())
        .await
        .doing("reading the target's TimescaleDB objects")?
        .timescale;
    let mut pairs = Vec::new();
    let mut taken = vec![false; target.jobs.len()];
    for s in &source.jobs {
        let found = target
            .jobs
            .iter()
            .enumerate()
            .find(|(i, t)| !taken[*i] && s.same_as(t));
        if let Some((i, t)) = found {
            taken[i] = true;
            pairs.push((s.clone(), t.clone()));
        }
    }
    Ok(BothSides {
        source,
        target,
        pairs,
    })
}

/// After post-data: makes on the target each source job it lacks for the
/// migration's tables and aggregates, configured as on the source and
/// paused (a run that stopped midway makes only the missing ones). Returns
/// how many it made.
async fn create_jobs(both: &BothSides, target: &Client, events: &dyn Events) -> Result<usize> {
    let on_target = |name: &pglive_postgres::QualifiedName| {
        both.target.hypertables.iter().any(|h| &h.name == name)
            || both
                .target
                .continuous_aggregates
                .iter()
                .any(|c| &c.name == name)
    };
    let mut created = 0;
    for (i, wanted) in both.source.jobs.iter().enumerate() {
        let paired = both.pairs.iter().filter(|(s, _)| s.same_as(wanted)).count();
        let earlier = both.source.jobs[..i]
            .iter()
            .filter(|s| s.same_as(wanted))
            .count();
        if earlier < paired || wanted.relation.as_ref().is_some_and(|r| !on_target(r)) {
            continue;
        }
        let Some(create) = wanted.create_sql() else {
            events.warn(
                Step::PostData,
                format!(
                    "TimescaleDB job {} is of a kind pglive does not know: create it on the \
                     target by hand",
                    wanted.describe()
                ),
            );
            continue;
        };
        // One transaction: the scheduler never sees the job before it is
        // paused.
        let made = async {
            target.batch_execute("BEGIN").await?;
            let id: i32 = target.query_one(&create, &[]).await?.get(0);
            target.execute(&wanted.configure_sql(), &[&id]).await?;
            target.batch_execute("COMMIT").await
        }
        .await;
        if made.is_err() {
            target.batch_execute("ROLLBACK").await.ok();
        }
        made.doing_with(|| {
            format!(
                "creating TimescaleDB job {} on the target",
                wanted.describe()
            )
        })?;
        created += 1;
    }
    Ok(created)
}

/// At cutover, before the counts: drops the target's chunks older than the
/// oldest chunk the source still has, for each hypertable of both sides —
/// retention policies and `drop_chunks` drop whole chunks on the source
/// without a change in the stream — and the rows before that chunk that the
/// target's chunks (other boundaries) still hold. Returns how many chunks
/// and rows it dropped.
pub(crate) async fn drop_chunks_gone_from_source(
    job: &Job,
    source: &Client,
    target: &Client,
) -> Result<(i64, u64)> {
    let both = both_sides(job, source, target).await?;
    let mut dropped = (0, 0);
    for hypertable in &both.source.hypertables {
        let (Some(time), true) = (
            hypertable.dimensions.first(),
            both.target
                .hypertables
                .iter()
                .any(|t| t.name == hypertable.name),
        ) else {
            continue;
        };
        let oldest: Option<String> = source
            .query_one(
                "SELECT coalesce(min(range_start)::text, min(range_start_integer)::text) \
                   FROM timescaledb_information.chunks \
                  WHERE hypertable_schema = $1 AND hypertable_name = $2",
                &[&hypertable.name.schema, &hypertable.name.name],
            )
            .await
            .doing_with(|| format!("reading the chunks of {} on the source", hypertable.name))?
            .get(0);
        // A source without chunks: nothing to go by (the counts tell).
        let Some(oldest) = oldest else { continue };
        let sql = format!(
            "SELECT count(*) FROM drop_chunks({}, older_than => {}::{})",
            pglive_postgres::quote_literal(&hypertable.name.quoted()),
            pglive_postgres::quote_literal(&oldest),
            time.column_type
        );
        let n: i64 = target
            .query_one(&sql, &[])
            .await
            .doing_with(|| format!("dropping old chunks of {} on the target", hypertable.name))?
            .get(0);
        dropped.0 += n;
        // The target's chunks may start elsewhere (the source changed its
        // chunk interval since): rows before the source's oldest chunk
        // that a remaining chunk of the target still holds.
        let sql = format!(
            "DELETE FROM {} WHERE {} < {}::{}",
            hypertable.name.quoted(),
            pglive_postgres::quote_ident(&time.column),
            pglive_postgres::quote_literal(&oldest),
            time.column_type
        );
        // As the source's drop_chunks: no triggers, no foreign key actions.
        dropped.1 += crate::adopt::as_replica(target, &sql)
            .await
            .doing_with(|| format!("deleting old rows of {} on the target", hypertable.name))?;
    }
    Ok(dropped)
}

/// At cutover, once the target holds every change: makes what TimescaleDB
/// made on the source meanwhile without a trace in the stream (indexes of
/// hypertables, continuous aggregates, compression settings, jobs),
/// refreshes the target's
/// continuous aggregates and schedules each job as the source schedules
/// it. Returns how many aggregates and jobs it refreshed and scheduled.
pub(crate) async fn finish_on_target(
    job: &Job,
    source: &Client,
    target: &Client,
    events: &dyn Events,
) -> Result<(usize, usize)> {
    // Hypertables copied as plain tables: nothing of TimescaleDB's is made.
    if !job.options.hypertables {
        return Ok((0, 0));
    }
    let mut both = both_sides(job, source, target).await?;
    follow_source_hypertable_indexes((source, target), &both.hypertables_on_both(), events, true)
        .await?;
    if follow_source_objects(job, &both, target, events, Step::Cutover).await? {
        both = both_sides(job, source, target).await?;
    }
    // Jobs after the aggregates they may run for.
    if create_jobs(&both, target, events).await? > 0 {
        both = both_sides(job, source, target).await?;
    }
    crate::aggregate_history::refresh_on_target(
        (source, target),
        job.name(),
        &both.target.continuous_aggregates,
        crate::aggregate_history::Cut::SourceNow,
    )
    .await?;
    let mut scheduled = 0;
    for (source_job, target_job) in &both.pairs {
        if source_job.scheduled && !target_job.scheduled {
            target
                .execute("SELECT alter_job($1, scheduled => true)", &[&target_job.id])
                .await
                .doing_with(|| format!("scheduling {} on the target", target_job.describe()))?;
            scheduled += 1;
        }
    }
    Ok((both.target.continuous_aggregates.len(), scheduled))
}

/// Before a captured schema change that failed on the target for want of
/// an object is replayed again: makes on the target what TimescaleDB made
/// on the source without a trace in the stream (indexes of hypertables,
/// continuous aggregates, compression settings), so that a view, comment
/// or grant on a continuous aggregate made meanwhile replays at its place.
/// Whether it made anything (nothing for a source without TimescaleDB).
pub(crate) async fn follow_before_replay(job: &Job, events: &dyn Events) -> Result<bool> {
    if !job.options.hypertables {
        return Ok(false);
    }
    let source = pglive_postgres::connect_sql(&job.source).await?;
    let target = pglive_postgres::connect_sql(&job.target).await?;
    let both = both_sides(job, &source, &target).await?;
    let indexes = follow_source_hypertable_indexes(
        (&source, &target),
        &both.hypertables_on_both(),
        events,
        false,
    )
    .await?;
    let objects = follow_source_objects(job, &both, &target, events, Step::Streaming).await?;
    Ok(indexes > 0 || objects)
}

/// Makes on the target what the source made while the migration ran
/// through commands that fire no event trigger (so the capture of schema
/// changes never saw them): continuous aggregates (empty: the refresh
/// after materializes them) and compression settings of hypertables both
/// sides have. Whether it made anything.
async fn follow_source_objects(
    job: &Job,
    both: &BothSides,
    target: &Client,
    events: &dyn Events,
    step: Step,
) -> Result<bool> {
    let mut made = false;
    for aggregate in &both.source.continuous_aggregates {
        let there = both
            .target
            .continuous_aggregates
            .iter()
            .find(|c| c.name == aggregate.name);
        if let Some(there) = there {
            // `ALTER MATERIALIZED VIEW … SET (timescaledb.materialized_only)`
            // fires no event trigger either.
            if there.materialized_only != aggregate.materialized_only {
                target
                    .batch_execute(&aggregate.materialized_only_sql())
                    .await
                    .doing_with(|| format!("setting {} on the target", aggregate.name))?;
                events.note(
                    step,
                    format!("TimescaleDB: materialized_only of {} (changed on the source meanwhile) set on the target", aggregate.name),
                );
                made = true;
            }
            continue;
        }
        create_aggregate(job, target, aggregate).await?;
        events.note(
            step,
            format!("TimescaleDB: continuous aggregate {} (made on the source meanwhile) created on the target", aggregate.name),
        );
        made = true;
    }
    for hypertable in &both.source.hypertables {
        let Some(there) = both
            .target
            .hypertables
            .iter()
            .find(|t| t.name == hypertable.name)
        else {
            continue;
        };
        if there.compression == hypertable.compression {
            continue;
        }
        let Some(sql) = hypertable.compression_sql() else {
            continue;
        };
        target.batch_execute(&sql).await.doing_with(|| {
            format!(
                "setting the compression of {} on the target",
                hypertable.name
            )
        })?;
        events.note(
            step,
            format!("TimescaleDB: compression settings of {} (changed on the source meanwhile) set on the target", hypertable.name),
        );
        made = true;
    }
    Ok(made)
}

/// Before post-data (a materialized view there may read them): materializes
/// the target's continuous aggregates once the copy is in (what streams
/// later is refreshed at cutover from its invalidations). Returns how many.
pub(crate) async fn materialize_aggregates(
    job: &Job,
    source: &Client,
    target: &Client,
) -> Result<usize> {
    let both = both_sides(job, source, target).await?;
    crate::aggregate_history::refresh_on_target(
        (source, target),
        job.name(),
        &both.target.continuous_aggregates,
        crate::aggregate_history::Cut::Recorded,
    )
    .await?;
    Ok(both.target.continuous_aggregates.len())
}

/// After post-data (a reorder policy needs its index): makes the jobs
/// ([`create_jobs`]). Returns how many.
pub(crate) async fn after_post_data(
    job: &Job,
    source: &Client,
    target: &Client,
    events: &dyn Events,
) -> Result<usize> {
    let both = both_sides(job, source, target).await?;
    create_jobs(&both, target, events).await
}

/// Preflight, when the target is to have `wanted` hypertables: it must be
/// able to make them (TimescaleDB installed there or installable, and
/// preloaded). Returns failures and notes (the versions of both sides).
pub(crate) async fn check_target(
    target: &Client,
    wanted: usize,
    source_version: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    if wanted == 0 {
        return (Vec::new(), Vec::new());
    }
    let read = target
        .query_one(
            "SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'), \
                    (SELECT default_version FROM pg_catalog.pg_available_extensions \
                      WHERE name = 'timescaledb'), \
                    current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb($|[ ,])'",
            &[],
        )
        .await;
    let row = match read {
        Ok(row) => row,
        Err(e) => {
            return (
                vec![format!("cannot read the target's extensions: {e}")],
                Vec::new(),
            );
        }
    };
    let (installed, available, preloaded): (Option<String>, Option<String>, bool) =
        (row.get(0), row.get(1), row.get(2));
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let remedy = "or copy hypertables as plain tables with --hypertables none";
    match (&installed, &available) {
        (None, None) => failures.push(format!(
            "{wanted} hypertable(s) need TimescaleDB on the target, which does not have it: \
             install TimescaleDB{} there and add it to shared_preload_libraries, {remedy}",
            source_version.map(|v| format!(" {v}")).unwrap_or_default()
        )),
        _ if !preloaded => failures.push(format!(
            "TimescaleDB is not in the target's shared_preload_libraries: add it (ALTER SYSTEM SET \
             shared_preload_libraries = 'timescaledb', then restart the target), {remedy}"
        )),
        _ => {}
    }
    let target_version = installed.or(available);
    if let (Some(target_version), Some(source_version)) = (target_version, source_version) {
        if target_version != source_version {
            notes.push(format!(
                "TimescaleDB {source_version} on the source, {target_version} on the target: pglive \
                 makes hypertables, continuous aggregates and jobs with the target's own functions"
            ));
        }
    }
    (failures, notes)
}

/// Marks the tables of `catalog` (read from the source) that are
/// hypertables on the target — made so by `--hypertable`, or by TimescaleDB
/// on both sides — so that their rows are read there through the root.
pub(crate) async fn mark_target_hypertables(catalog: &mut Catalog, target: &Client) -> Result<()> {
    let on_target = pglive_schema::hypertable_names(target)
        .await
        .doing("reading the target's hypertables")?;
    for table in &mut catalog.tables {
        if on_target.contains(&table.name) {
            table.hypertable = true;
        }
    }
    Ok(())
}

/// Preflight of `--hypertable`: each table must be selected and hold rows,
/// have the time column, and every unique index must include that column
/// (TimescaleDB partitions unique indexes by it). Returns the failures.
pub(crate) async fn check_new_hypertables(
    source: &Client,
    catalog: &Catalog,
    new: &[crate::job::NewHypertable],
) -> Vec<String> {
    let mut failures = Vec::new();
    for h in new {
        let Some(table) = catalog.table(&h.table.schema, &h.table.name) else {
            failures.push(format!(
                "--hypertable {}: no such table among the ones migrated",
                h.table
            ));
            continue;
        };
        if !table.holds_rows() || table.partition_of.is_some() {
            failures.push(format!(
                "--hypertable {}: only a plain table can become a hypertable (not a partitioned \
                 table or a partition)",
                h.table
            ));
            continue;
        }
        if !table.columns.iter().any(|c| c.name == h.time_column) {
            failures.push(format!(
                "--hypertable {}: it has no column {:?}",
                h.table, h.time_column
            ));
            continue;
        }
        let without: Vec<String> = match source
            .query(
                "SELECT i.indexrelid::regclass::text FROM pg_catalog.pg_index i \
                  WHERE i.indrelid = $1::text::regclass AND i.indisunique \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                                     WHERE a.attrelid = i.indrelid AND a.attname = $2 \
                                       AND a.attnum = ANY (i.indkey))",
                &[&h.table.quoted(), &h.time_column],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                failures.push(format!(
                    "--hypertable {}: reading its indexes: {e}",
                    h.table
                ));
                continue;
            }
        };
        if !without.is_empty() {
            failures.push(format!(
                "--hypertable {}: TimescaleDB needs {:?} in every unique index and primary key, \
                 and {} lack it: add it to them on the source first, or leave the table plain",
                h.table,
                h.time_column,
                without.join(", ")
            ));
        }
    }
    failures
}
