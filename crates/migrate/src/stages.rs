//! A migration's stages in order, each resumable, then streaming until
//! cutover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglive_postgres::{ConnectConfig, QualifiedName, connect_sql};
use pglive_repl::{CreatedSlot, ReplicationClient, SlotOptions, SnapshotAction};
use pglive_schema::{Catalog, SchemaCopy};
use pglive_snapshot::{Copier, CopyEvent, Snapshot};
use tokio_postgres::Client;

use crate::control::Control;
use crate::cutover;
use crate::ddl_capture::DdlMode;
use crate::error::{Doing, Error, Result};
use crate::events::{Event, Events, Step};
use crate::human;
use crate::job::{Job, MigrateOptions};
use crate::live::{self, LiveOutcome};
use crate::lock::LockKeeper;
use crate::preflight::{self, Plan};
use crate::publication;
use crate::state::{self, Record, Stage};

/// How a migration run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Stopped at a transaction boundary on request; run it again to
    /// resume.
    Stopped,
    /// The cutover is done; the summary says what it did.
    CutOver {
        /// What the cutover did, on one line.
        summary: String,
    },
    /// The migration had been finished before.
    AlreadyDone {
        /// What its cutover did.
        summary: String,
    },
}

/// Runs the migration `options` describes from `source` to `target`:
/// preflight, publications and a slot with an exported snapshot, schema,
/// parallel copy, indexes and constraints, then the change stream until a
/// cutover is asked for (through `control`, `pglive cutover`, or
/// [`MigrateOptions::cutover_when_ready`]). Whatever stopped an earlier
/// run, the same call resumes it from the state on the target.
///
/// Only one process runs a migration at a time (an advisory lock on the
/// target); a second gets [`Error::Busy`]. Preflight failures are
/// [`Error::Preflight`], returned before anything is created.
pub async fn migrate(
    source: ConnectConfig,
    target: ConnectConfig,
    options: &MigrateOptions,
    events: Arc<dyn Events>,
    control: &Control,
) -> Result<Outcome> {
    check_names(options)?;
    // The whole migration's state machine is a large future: on the heap,
    // so callers need not box it.
    Box::pin(run(
        Job::new(source, target, options),
        options,
        events,
        control,
    ))
    .await
}

/// The longest migration name: its temporary slots are
/// `<name>_resume_<pid>`, and slot names have at most 63 bytes.
const MAX_MIGRATION_NAME: usize = 63 - "_resume_".len() - 7;

/// Refuses, before anything is created, names PostgreSQL would refuse
/// once the publication exists: slot names (also the temporary slots
/// named after the migration) are 1 to 63 lower-case letters, digits and
/// underscores; publications get a `_changes` twin within 63 bytes.
fn check_names(options: &MigrateOptions) -> Result<()> {
    let slot_like = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let suggestion = |name: &str, max: usize| {
        let cleaned: String = name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(max)
            .collect();
        if cleaned.is_empty() {
            "pglive".to_owned()
        } else {
            cleaned
        }
    };
    let name = &options.name;
    if !slot_like(name) || name.len() > MAX_MIGRATION_NAME {
        return Err(preflight::failed(format!(
            "--name {name:?} cannot name a migration: it names replication slots, which PostgreSQL allows \
             1 to {MAX_MIGRATION_NAME} lower-case letters, digits and underscores here (for example --name {})",
            suggestion(name, MAX_MIGRATION_NAME)
        )));
    }
    let slot = options.slot_name();
    if !slot_like(slot) || slot.len() > 63 {
        return Err(preflight::failed(format!(
            "--slot {slot:?} cannot name a replication slot: PostgreSQL allows 1 to 63 lower-case letters, \
             digits and underscores (for example --slot {})",
            suggestion(slot, 63)
        )));
    }
    let publication = options.publication_name();
    if publication.is_empty()
        || publication.len() > publication::MAX_NAME_BYTES
        || publication.contains('\0')
    {
        return Err(preflight::failed(format!(
            "--publication {publication:?} cannot name the publications: they need 1 to {} bytes \
             (a second one adds \"_changes\" within PostgreSQL's 63)",
            publication::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

/// [`migrate`] with its names checked.
async fn run(
    mut job: Job,
    options: &MigrateOptions,
    events: Arc<dyn Events>,
    control: &Control,
) -> Result<Outcome> {
    let name = options.name.clone();
    let slot = options.slot_name().to_owned();
    let publication = options.publication_name().to_owned();

    // The lock first: whatever this process reads about the migration
    // stays true while it runs.
    let lock_client = preflight::connect(&job.target, "target").await?;
    if !state::lock(&lock_client, &name, Duration::from_secs(5)).await? {
        return Err(Error::Busy {
            name,
            hint: "stop it first",
        });
    }
    // Held until the end, also across restarts of the target.
    let lock = LockKeeper::keep(
        job.target.clone(),
        &name,
        lock_client,
        control.clone(),
        Arc::clone(&events),
    );
    let state_client = preflight::connect(&job.target, "target").await?;
    let existing = state::load(&state_client, &name).await?;
    if let Some(m) = &existing {
        if m.slot != slot || m.publication != publication {
            return Err(Error::OtherNames {
                name,
                slot: m.slot.clone(),
                publication: m.publication.clone(),
            });
        }
        // A resumed migration keeps what it was started with.
        if !m.settings_recorded {
            state::save_settings(&state_client, &name, &options.settings).await?;
        } else if options.settings != Default::default() && m.settings != options.settings {
            return Err(Error::OtherSettings {
                name,
                recorded: m.settings.clone(),
            });
        }
        if m.settings_recorded {
            job.options.settings = m.settings.clone();
        }
        if m.stage == Stage::Done {
            return Ok(Outcome::AlreadyDone {
                summary: m.summary.clone().unwrap_or_default(),
            });
        }
    }
    let filter = job.filter();
    let plan = Plan {
        source: &job.source,
        target: &job.target,
        slot: &slot,
        publication: &publication,
        filter: &filter,
        resuming: existing.is_some(),
        reuse_schema: job.options.reuse_schema,
        settings: &job.options.settings,
        copy_roles: options.copy_roles,
        hypertables: job.options.hypertables,
        new_hypertables: &job.options.new_hypertables,
        ddl: job.options.ddl,
    };
    let (findings, source_client, target_client, mut catalog) = preflight::run(&plan).await?;
    // Tables that are (or are to become) hypertables on the target are
    // written and read there through their root.
    for table in &mut catalog.tables {
        if job
            .options
            .new_hypertables
            .iter()
            .any(|h| h.table == table.name)
        {
            table.hypertable = true;
        }
    }
    crate::timescale::mark_target_hypertables(&mut catalog, &target_client).await?;
    for warning in &findings.warnings {
        events.warn(Step::Preflight, warning.as_str());
    }
    for note in &findings.notes {
        events.note(Step::Preflight, format!("preflight: {note}"));
    }
    state::create_tables(&target_client).await?;
    if options.copy_roles && existing.is_none() {
        let schema =
            SchemaCopy::new(job.source.clone(), job.target.clone(), job.schema_options()).await?;
        let created = schema.copy_roles().await.doing("copying roles")?;
        events.note(
            Step::Schema,
            format!("roles: {created} role(s) created on the target (without passwords)"),
        );
    }

    let record = match existing {
        Some(m) => {
            events.note(
                Step::Schema,
                format!(
                    "resuming migration {name:?} at stage {} (slot {:?}, stream from {})",
                    m.stage.as_str(),
                    m.slot,
                    m.start_lsn
                ),
            );
            m
        }
        None => {
            let started = start(
                &job,
                (&source_client, &target_client),
                &catalog,
                (&slot, &publication),
                &events,
                control,
            )
            .await?;
            match started {
                Some(record) => record,
                None => return Ok(Outcome::Stopped),
            }
        }
    };
    drop(source_client);
    // The stages' state machine is a large future: on the heap.
    let outcome = Box::pin(continue_from(
        &job,
        record,
        &target_client,
        &catalog,
        &events,
        control,
        options.cutover_when_ready,
    ))
    .await;
    lock.release().await;
    outcome
}

/// A new migration: publication, slot with exported snapshot, schema, copy,
/// post-data — the snapshot is held (the replication connection stays idle)
/// until the copy is done.
/// Creates the migration and copies its data; `None` when a stop was
/// asked for while the copy waited for processes that joined it.
async fn start(
    job: &Job,
    (source, target): (&Client, &Client),
    catalog: &Catalog,
    (slot, publication): (&str, &str),
    events: &Arc<dyn Events>,
    control: &Control,
) -> Result<Option<Record>> {
    let superuser: bool = source
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    let keyless_baseline = publication::keyless_changes(source, catalog).await?;
    if !catalog.timescale.hypertables.is_empty() {
        // Before the publications exist: no chunk is made outside them.
        crate::timescale::prepare_source(source, events.as_ref()).await?;
    }
    // Not FOR ALL TABLES on a TimescaleDB source: TimescaleDB refuses to
    // make a hypertable of a table in a publication, and with every table
    // in one the source could create no continuous aggregate meanwhile
    // (its materialization is a new hypertable). Tables created later join
    // the listed publication by the capture of schema changes or adoption.
    let (tables, keyed) = publication::create(
        source,
        publication,
        catalog,
        superuser && job.filter().is_empty() && catalog.timescale.version.is_none(),
    )
    .await?;
    events.note(
        Step::Schema,
        format!(
            "created publications {publication:?} ({tables} tables) and {:?} (updates and deletes of the {keyed} with a key)",
            publication::changes_name(publication)
        ),
    );

    let capture = match job.options.ddl {
        DdlMode::Capture => true,
        DdlMode::Stop => false,
        DdlMode::Auto => {
            job.filter().is_empty() && crate::ddl_capture::why_not_allowed(source).await?.is_none()
        }
    };
    if capture {
        // Before the slot: every command after its snapshot is captured.
        crate::ddl_capture::install(
            source,
            job.name(),
            publication,
            catalog.timescale.version.is_some(),
        )
        .await?;
        events.note(
            Step::Schema,
            format!(
                "schema changes on the source are captured (event trigger \"pglive_{}\") and replayed in stream order",
                job.name()
            ),
        );
    }

    let mut replication = ReplicationClient::connect(&job.source).await?;
    let created = replication
        .create_slot(slot, &SlotOptions::default())
        .await
        .doing("creating the replication slot")?;
    events.note(
        Step::Schema,
        format!(
            "created slot {slot:?}: consistent point {}, snapshot {}",
            created.consistent_point,
            created.snapshot_name.as_deref().unwrap_or("-")
        ),
    );
    let record = Record {
        name: job.name().to_owned(),
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        stage: Stage::Schema,
        start_lsn: created.consistent_point,
        source: job.source.describe(),
        cutover_requested: false,
        fence: false,
        fence_raised: false,
        fence_prior: None,
        finishing: None,
        cutover_error: None,
        slot_wal: None,
        apply_waiting: None,
        summary: None,
        verify_request: None,
        settings: job.options.settings.clone(),
        settings_recorded: true,
        keyless_baseline,
    };
    state::insert(target, &record).await?;
    let snapshot = exported_snapshot(&created)?;
    schema_pre_data(job, Some(&snapshot.name), catalog, events.as_ref()).await?;
    state::set_stage(target, job.name(), Stage::Copy).await?;
    if !copy(job, catalog, &snapshot, events, control).await? {
        return Ok(None);
    }
    copy_aggregate_history(job, catalog, &snapshot, events.as_ref()).await?;
    // The snapshot is no longer needed.
    replication.close().await.ok();
    state::set_stage(target, job.name(), Stage::PostData).await?;
    Ok(Some(Record {
        stage: Stage::PostData,
        ..record
    }))
}

async fn schema_pre_data(
    job: &Job,
    snapshot: Option<&str>,
    catalog: &Catalog,
    events: &dyn Events,
) -> Result<()> {
    let started = Instant::now();
    let mut schema =
        SchemaCopy::new(job.source.clone(), job.target.clone(), job.schema_options()).await?;
    schema.dump(snapshot).await.doing("dumping the schema")?;
    let report = schema
        .restore_pre_data()
        .await
        .doing("restoring the schema (pre-data)")?;
    events.note(
        Step::Schema,
        format!(
            "schema: {} objects created in {:.1}s",
            report.entries,
            started.elapsed().as_secs_f64()
        ),
    );
    if !job.options.reuse_schema {
        let target = connect_sql(&job.target).await?;
        if job.options.hypertables && !catalog.timescale.hypertables.is_empty() {
            crate::timescale::create_on_target(job, &target, &catalog.timescale, events).await?;
            let restored = schema
                .restore_after_aggregates()
                .await
                .doing("restoring the views built on continuous aggregates")?;
            if restored > 0 {
                events.note(
                    Step::Schema,
                    format!("schema: {restored} object(s) built on continuous aggregates created after them"),
                );
            }
        } else if !catalog.timescale.continuous_aggregates.is_empty() {
            events.warn(
                Step::Schema,
                format!(
                    "--hypertables none: the source's {} continuous aggregate(s) and {} object(s) built on them \
                     (views, their privileges and comments) are not created on the target",
                    catalog.timescale.continuous_aggregates.len(),
                    schema.after_aggregates()
                ),
            );
        }
        if !job.options.new_hypertables.is_empty() {
            target
                .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                .await
                .doing("creating the timescaledb extension on the target")?;
        }
        for new in &job.options.new_hypertables {
            target
                .batch_execute(&new.hypertable().create_sql())
                .await
                .doing_with(|| format!("making {} a hypertable on the target", new.table))?;
            events.note(
                Step::Schema,
                format!(
                    "schema: {} made a hypertable on the target (by {})",
                    new.table, new.time_column
                ),
            );
        }
    }
    for skipped in schema.left_for_superuser() {
        events.warn(
            Step::Schema,
            format!("not restored, as only a superuser may run it on the target: {skipped}"),
        );
    }
    Ok(())
}

/// Copies the data under `snapshot`; false when a stop was asked for while
/// it waited for parts that processes which joined it copy.
async fn copy(
    job: &Job,
    catalog: &Catalog,
    snapshot: &Snapshot,
    events: &Arc<dyn Events>,
    control: &Control,
) -> Result<bool> {
    let started = Instant::now();
    let total: u64 = catalog
        .tables_with_rows()
        .map(|t| t.bytes.max(0) as u64)
        .sum();
    let tables = catalog.tables_with_rows().count();
    events.note(
        Step::Copy,
        format!(
            "copying {tables} tables (~{}) with {} workers",
            human::bytes(total),
            job.options.jobs
        ),
    );
    let copier = Copier::new(
        job.source.clone(),
        job.target.clone(),
        catalog.tables.clone(),
        job.copy_options(),
    );
    events.event(Event::CopyStarted {
        tables,
        bytes: total,
        workers: job.options.jobs,
    });
    let target = connect_sql(&job.target).await?;
    let source = connect_sql(&job.source).await?;
    let hypertables: Vec<&QualifiedName> = catalog
        .tables_with_rows()
        .filter(|t| t.hypertable)
        .map(|t| &t.name)
        .collect();
    crate::source_jobs::pause(
        (&source, &target),
        job.name(),
        &hypertables,
        events.as_ref(),
    )
    .await?;
    let copied = async {
        let plan = copier.prepare(snapshot).await?;
        events.event(Event::Copy(CopyEvent::Planned {
            parts: plan.parts.len(),
            restarted: plan.restarted,
        }));
        // With the parts recorded, other processes may join.
        state::set_copy_snapshot(&target, job.name(), Some(snapshot)).await?;
        let sink = Arc::clone(events);
        let summary = copier
            .copy_pending(snapshot, move |event| sink.event(Event::Copy(event)))
            .await?;
        wait_for_joined(&copier, snapshot, summary, events, control).await
    }
    .await;
    let cleared = state::set_copy_snapshot(&target, job.name(), None).await;
    resume_source_jobs(job, (&source, &target), events.as_ref()).await;
    events.event(Event::CopyFinished);
    let Some(summary) = copied.doing("copying the data")? else {
        return Ok(false);
    };
    cleared?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    events.note(
        Step::Copy,
        format!(
            "copy: {} rows, {} in {:.1}s ({}/s)",
            human::count(summary.rows),
            human::bytes(summary.bytes),
            secs,
            human::bytes((summary.bytes as f64 / secs) as u64)
        ),
    );
    Ok(true)
}

/// Schedules again the source's jobs a copy of migration `job` paused
/// ([`crate::source_jobs`]); a failure is a warning (the next run and
/// `pglive clean` schedule them).
async fn resume_source_jobs(job: &Job, (source, target): (&Client, &Client), events: &dyn Events) {
    if let Err(e) = crate::source_jobs::resume((source, target), job.name(), events).await {
        events.warn(
            Step::Copy,
            format!(
                "TimescaleDB: the source's jobs paused for the copy are still paused ({e}); the next run or pglive clean schedules them again"
            ),
        );
    }
}

/// Under the copy's snapshot, once the tables are in: the buckets of the
/// source's continuous aggregates whose raw data is gone
/// ([`crate::aggregate_history`]).
async fn copy_aggregate_history(
    job: &Job,
    catalog: &Catalog,
    snapshot: &Snapshot,
    events: &dyn Events,
) -> Result<()> {
    if !job.options.hypertables || catalog.timescale.continuous_aggregates.is_empty() {
        return Ok(());
    }
    let rows = crate::aggregate_history::copy_from_source(
        (&job.source, &job.target),
        (job.name(), &snapshot.name),
        &catalog.timescale.continuous_aggregates,
        events,
    )
    .await
    .doing("copying the history of continuous aggregates")?;
    if rows > 0 {
        events.note(
            Step::Copy,
            format!(
                "copy: TimescaleDB: {} materialized row(s) of continuous aggregates over raw data the source no longer has",
                human::count(rows)
            ),
        );
    }
    Ok(())
}

/// After this process's workers found no part left to claim: waits for
/// the parts processes that joined the copy are copying (taking over any
/// a stopped one left), then returns this process's summary; `None` when
/// a stop was asked for meanwhile.
async fn wait_for_joined(
    copier: &Copier,
    snapshot: &Snapshot,
    mut summary: pglive_snapshot::CopySummary,
    events: &Arc<dyn Events>,
    control: &Control,
) -> Result<Option<pglive_snapshot::CopySummary>> {
    let mut said = false;
    while summary.remaining > 0 {
        if !said {
            events.note(
                Step::Copy,
                format!(
                    "copy: waiting for {} part(s) being copied by processes that joined",
                    summary.remaining
                ),
            );
            said = true;
        }
        tokio::select! {
            () = tokio::time::sleep(JOINED_POLL) => {}
            () = control.stopped() => return Ok(None),
        }
        let sink = Arc::clone(events);
        let more = copier
            .copy_pending(snapshot, move |event| sink.event(Event::Copy(event)))
            .await?;
        summary.parts += more.parts;
        summary.rows += more.rows;
        summary.bytes += more.bytes;
        summary.remaining = more.remaining;
    }
    Ok(Some(summary))
}

/// How often the copy looks at the parts processes that joined it copy.
const JOINED_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the remaining stages of `record`.
async fn continue_from(
    job: &Job,
    mut record: Record,
    target: &Client,
    catalog: &Catalog,
    events: &Arc<dyn Events>,
    control: &Control,
    cutover_when_ready: bool,
) -> Result<Outcome> {
    if record.stage > Stage::Copy {
        // Jobs a copy that stopped left paused.
        let source = connect_sql(&job.source).await?;
        resume_source_jobs(job, (&source, target), events.as_ref()).await;
    }
    if record.stage <= Stage::Copy {
        // The exported snapshot died with the process that made it: copy
        // what is left under a new one from a temporary slot, whose later
        // consistent point becomes those tables' copied_at.
        let mut replication = ReplicationClient::connect(&job.source).await?;
        let temporary = temporary_slot(&mut replication, job.name()).await?;
        let snapshot = exported_snapshot(&temporary)?;
        if record.stage == Stage::Schema {
            // An extension's own tables (TimescaleDB's catalog) are no
            // sign that pre-data was restored.
            let tables_exist = target
                .query_opt(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pglive') AND n.nspname !~ '^pg_' AND c.relkind IN ('r', 'p')
                        AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
                      LIMIT 1",
                    &[],
                )
                .await?
                .is_some();
            if !tables_exist {
                schema_pre_data(job, Some(&snapshot.name), catalog, events.as_ref()).await?;
            }
            state::set_stage(target, job.name(), Stage::Copy).await?;
        }
        if !copy(job, catalog, &snapshot, events, control).await? {
            return Ok(Outcome::Stopped);
        }
        copy_aggregate_history(job, catalog, &snapshot, events.as_ref()).await?;
        replication.close().await.ok();
        state::set_stage(target, job.name(), Stage::PostData).await?;
        record.stage = Stage::PostData;
    }
    if control.stop_requested() {
        return Ok(Outcome::Stopped);
    }
    if record.stage == Stage::PostData {
        let timescale = !catalog.timescale.hypertables.is_empty() && job.options.hypertables;
        let started = Instant::now();
        if timescale {
            let source = connect_sql(&job.source).await?;
            let aggregates = crate::timescale::materialize_aggregates(job, &source, target).await?;
            if aggregates > 0 {
                events.note(
                    Step::PostData,
                    format!(
                        "post-data: TimescaleDB: {aggregates} continuous aggregate(s) materialized in {:.1}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
        }
        let started = Instant::now();
        let mut schema =
            SchemaCopy::new(job.source.clone(), job.target.clone(), job.schema_options()).await?;
        let report = schema
            .restore_post_data_reporting(|progress| events.event(Event::PostData(progress)))
            .await
            .doing("building indexes and constraints (post-data)")?;
        events.note(
            Step::PostData,
            format!(
                "post-data: {} objects ({} keys first) with {} jobs in {:.1}s",
                report.entries,
                report.key_entries,
                job.options.index_jobs,
                started.elapsed().as_secs_f64()
            ),
        );
        let started = Instant::now();
        let analyzed = analyze(target, catalog).await?;
        events.note(
            Step::PostData,
            format!(
                "post-data: statistics of {analyzed} tables gathered (ANALYZE) in {:.1}s",
                started.elapsed().as_secs_f64()
            ),
        );
        if timescale {
            let source = connect_sql(&job.source).await?;
            let jobs =
                crate::timescale::after_post_data(job, &source, target, events.as_ref()).await?;
            events.note(
                Step::PostData,
                format!("post-data: TimescaleDB: {jobs} job(s) created (paused until cutover)"),
            );
        }
        state::set_stage(target, job.name(), Stage::Streaming).await?;
        record.stage = Stage::Streaming;
    }
    if record.stage == Stage::Cutover {
        if let Some(summary) = cutover::finish_recorded(job, &record, events.as_ref()).await? {
            return Ok(Outcome::CutOver { summary });
        }
    }
    if record.stage == Stage::Done {
        return Ok(Outcome::AlreadyDone {
            summary: record.summary.clone().unwrap_or_default(),
        });
    }
    match Box::pin(live::stream(
        job,
        &record,
        events,
        control,
        cutover_when_ready,
    ))
    .await?
    {
        LiveOutcome::Stopped => Ok(Outcome::Stopped),
        LiveOutcome::CutOver(summary) => Ok(Outcome::CutOver { summary }),
    }
}

/// Gives the target's planner statistics of the copied tables before
/// changes stream, so keyed statements on them plan as on a loaded table.
/// ANALYZE reads a sample of bounded size: this does not grow with the data.
async fn analyze(target: &Client, catalog: &Catalog) -> Result<usize> {
    for table in &catalog.tables {
        target
            .batch_execute(&format!("ANALYZE {}", table.name))
            .await
            .doing_with(|| format!("analyzing {} on the target", table.name))?;
    }
    Ok(catalog.tables.len())
}

/// A temporary slot exporting a new snapshot, for copies made after the
/// migration's own snapshot is gone.
pub(crate) async fn temporary_slot(
    replication: &mut ReplicationClient,
    name: &str,
) -> Result<CreatedSlot> {
    replication
        .create_slot(
            &temporary_slot_name(name),
            &SlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..SlotOptions::default()
            },
        )
        .await
        .doing("creating a temporary slot for a new snapshot")
}

/// The name of this process's temporary slot for migration `name`.
pub(crate) fn temporary_slot_name(name: &str) -> String {
    format!("{}_resume_{}", name, std::process::id())
}

/// The snapshot `slot` exported.
pub(crate) fn exported_snapshot(slot: &CreatedSlot) -> Result<Snapshot> {
    Snapshot::from_slot(slot).ok_or_else(|| Error::NoSnapshot {
        slot: slot.name.clone(),
    })
}
