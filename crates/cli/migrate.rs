//! `pglive migrate`: the stages in order, each resumable, then streaming
//! until cutover.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_repl::{CreatedSlot, ReplicationClient, SlotOptions, SnapshotAction};
use pglive_schema::{Catalog, ObjectFilter, SchemaCopy, SchemaOptions};
use pglive_snapshot::{Copier, CopyOptions, Snapshot};
use tokio_postgres::Client;

use crate::cli::MigrateArgs;
use crate::live::{self, LiveOutcome};
use crate::preflight::{self, Plan};
use crate::report::{self, Reporter};
use crate::state::{self, Migration, Settings, Stage};
use crate::{ExitStatus, Interrupt};

/// Everything a stage needs.
pub struct Job {
    pub source: ConnectConfig,
    pub target: ConnectConfig,
    pub name: String,
    pub jobs: usize,
    pub index_jobs: usize,
    /// Target sessions the applier spreads batches over.
    pub apply_sessions: usize,
    pub reuse_schema: bool,
    /// Make TimescaleDB hypertables on the target before the data.
    pub hypertables: bool,
    /// Filters and owner/privilege choices, as recorded with the migration.
    pub settings: Settings,
}

impl Job {
    /// Which schemas and tables, from the settings.
    pub fn filter(&self) -> ObjectFilter {
        self.settings.filter()
    }

    /// A job for the commands that finish a recorded migration (cutover):
    /// its recorded settings, one session each.
    pub fn for_recorded(
        source: ConnectConfig,
        target: ConnectConfig,
        migration: &Migration,
    ) -> Job {
        Job {
            source,
            target,
            name: migration.name.clone(),
            jobs: 1,
            index_jobs: 1,
            apply_sessions: 1,
            reuse_schema: true,
            hypertables: false,
            settings: migration.settings.clone(),
        }
    }
}

pub async fn run(
    args: MigrateArgs,
    reporter: Arc<Reporter>,
    interrupt: Interrupt,
) -> Result<ExitStatus> {
    let source = crate::parse_conninfo(&args.servers.source, "--source")?;
    let target = crate::parse_conninfo(&args.servers.target, "--target")?;
    let name = args.servers.name.clone();
    let slot = args.slot.clone().unwrap_or_else(|| name.clone());
    let publication = args.publication.clone().unwrap_or_else(|| name.clone());
    let requested = Settings {
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        keep_owners: !args.no_owner,
        keep_privileges: !args.no_acl,
    };
    if publication.len() > crate::publication::MAX_NAME_BYTES || slot.len() > 63 {
        return Err(crate::preflight::failed(format!(
            "the publication name {publication:?} (or the slot name {slot:?}) is too long: \
             publications may have {} bytes and slots 63 (choose --name, --publication or --slot)",
            crate::publication::MAX_NAME_BYTES
        )));
    }
    let mut ctx = Job {
        source,
        target,
        name: name.clone(),
        jobs: args.jobs.max(1),
        index_jobs: args.index_jobs.max(1),
        apply_sessions: usize::from(args.apply_sessions),
        reuse_schema: args.reuse_schema,
        hypertables: args.hypertables == crate::cli::Hypertables::Auto,
        settings: requested.clone(),
    };

    // The lock first: whatever this process reads about the migration
    // stays true while it runs.
    let lock_client = preflight::connect(&ctx.target, "target").await?;
    if !state::lock(&lock_client, &name, std::time::Duration::from_secs(5)).await? {
        bail!(
            "another `pglive migrate` is running migration {name:?} (it holds its lock on the target)"
        );
    }
    let existing = state::load(&lock_client, &name).await?;
    if let Some(m) = &existing {
        if m.slot != slot || m.publication != publication {
            bail!(
                "migration {name:?} on the target uses slot {:?} and publication {:?}; run with the same --slot/--publication, or `pglive clean` to start over",
                m.slot,
                m.publication
            );
        }
        // A resumed migration keeps what it was started with.
        let flags_given =
            !args.include.is_empty() || !args.exclude.is_empty() || args.no_owner || args.no_acl;
        if !m.settings_recorded {
            state::save_settings(&lock_client, &name, &requested).await?;
        } else if flags_given && m.settings != requested {
            bail!(
                "migration {name:?} was started with other --include/--exclude/--no-owner/--no-acl flags \
                 ({:?}); run it with the same flags (or none), or `pglive clean` to start over",
                m.settings
            );
        }
        if m.settings_recorded {
            ctx.settings = m.settings.clone();
        }
        if m.stage == Stage::Done {
            reporter.line(format!(
                "migration {name:?} is already done: {}",
                m.summary.as_deref().unwrap_or("")
            ));
            return Ok(ExitStatus::Success);
        }
    }
    let filter = ctx.filter();
    let plan = Plan {
        source: &ctx.source,
        target: &ctx.target,
        slot: &slot,
        publication: &publication,
        filter: &filter,
        resuming: existing.is_some(),
        reuse_schema: ctx.reuse_schema,
        settings: &ctx.settings,
        copy_roles: args.roles,
    };
    let (findings, source_client, target_client, catalog) = preflight::run(&plan).await?;
    for warning in &findings.warnings {
        reporter.line(format!("warning: {warning}"));
    }
    for note in &findings.notes {
        reporter.line(format!("preflight: {note}"));
    }
    state::create_tables(&target_client).await?;
    if args.roles && existing.is_none() {
        let schema =
            SchemaCopy::new(ctx.source.clone(), ctx.target.clone(), schema_options(&ctx)).await?;
        let created = schema.copy_roles().await.context("copying roles")?;
        reporter.line(format!(
            "roles: {created} role(s) created on the target (without passwords)"
        ));
    }

    let migration = match existing {
        Some(m) => {
            reporter.line(format!(
                "resuming migration {name:?} at stage {} (slot {:?}, stream from {})",
                m.stage.as_str(),
                m.slot,
                m.start_lsn
            ));
            m
        }
        None => {
            start(
                &ctx,
                &source_client,
                &target_client,
                &catalog,
                &slot,
                &publication,
                &reporter,
            )
            .await?
        }
    };
    drop(source_client);
    let status = continue_from(
        &ctx,
        migration,
        &target_client,
        &catalog,
        &reporter,
        &interrupt,
        args.cutover_when_ready,
    )
    .await;
    let _ = state::unlock(&lock_client, &name).await;
    status
}

/// A new migration: publication, slot with exported snapshot, schema, copy,
/// post-data — the snapshot is held (the replication connection stays idle)
/// until the copy is done.
async fn start(
    ctx: &Job,
    source: &Client,
    target: &Client,
    catalog: &Catalog,
    slot: &str,
    publication: &str,
    reporter: &Arc<Reporter>,
) -> Result<Migration> {
    let superuser: bool = source
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    let keyless_baseline = crate::publication::keyless_changes(source, catalog).await?;
    let (tables, keyed) = crate::publication::create(
        source,
        publication,
        catalog,
        superuser && ctx.filter().is_empty(),
    )
    .await?;
    reporter.line(format!(
        "created publications {publication:?} ({tables} tables) and {:?} (updates and deletes of the {keyed} with a key)",
        crate::publication::changes_name(publication)
    ));

    let mut replication = ReplicationClient::connect(&ctx.source).await?;
    let created = replication
        .create_slot(slot, &SlotOptions::default())
        .await
        .context("creating the replication slot")?;
    reporter.line(format!(
        "created slot {slot:?}: consistent point {}, snapshot {}",
        created.consistent_point,
        created.snapshot_name.as_deref().unwrap_or("-")
    ));
    let migration = Migration {
        name: ctx.name.clone(),
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        stage: Stage::Schema,
        start_lsn: created.consistent_point,
        source: ctx.source.describe(),
        cutover_requested: false,
        fence: false,
        summary: None,
        verify_request: None,
        settings: ctx.settings.clone(),
        settings_recorded: true,
        keyless_baseline,
    };
    state::insert(target, &migration).await?;
    let snapshot = Snapshot::from_slot(&created).context("the slot exported no snapshot")?;
    schema_pre_data(ctx, Some(&snapshot.name), catalog, reporter).await?;
    state::set_stage(target, &ctx.name, Stage::Copy).await?;
    copy(ctx, catalog, &snapshot, reporter).await?;
    // The snapshot is no longer needed.
    replication.close().await.ok();
    state::set_stage(target, &ctx.name, Stage::PostData).await?;
    Ok(Migration {
        stage: Stage::PostData,
        ..migration
    })
}

pub fn schema_options(ctx: &Job) -> SchemaOptions {
    let mut options = SchemaOptions::default();
    options.filter = ctx.filter();
    options.jobs = ctx.index_jobs;
    options.reuse_schema = ctx.reuse_schema;
    options.keep_owners = ctx.settings.keep_owners;
    options.keep_privileges = ctx.settings.keep_privileges;
    options
}

async fn schema_pre_data(
    ctx: &Job,
    snapshot: Option<&str>,
    catalog: &Catalog,
    reporter: &Reporter,
) -> Result<()> {
    let started = Instant::now();
    let mut schema =
        SchemaCopy::new(ctx.source.clone(), ctx.target.clone(), schema_options(ctx)).await?;
    schema.dump(snapshot).await.context("dumping the schema")?;
    let report = schema
        .restore_pre_data()
        .await
        .context("restoring the schema (pre-data)")?;
    reporter.line(format!(
        "schema: {} objects created in {:.1}s",
        report.entries,
        started.elapsed().as_secs_f64()
    ));
    for skipped in schema.left_for_superuser() {
        reporter.line(format!(
            "warning: not restored, as only a superuser may run it on the target: {skipped}"
        ));
    }
    if ctx.hypertables && !catalog.hypertables.is_empty() && !ctx.reuse_schema {
        // Chunks are made as rows arrive, so the table must be a hypertable
        // before the copy.
        let target = connect_sql(&ctx.target).await?;
        for hypertable in &catalog.hypertables {
            target
                .batch_execute(&hypertable.create_sql())
                .await
                .with_context(|| {
                    format!("making {} a hypertable on the target", hypertable.name)
                })?;
        }
        reporter.line(format!(
            "schema: {} hypertable(s) created",
            catalog.hypertables.len()
        ));
    }
    Ok(())
}

async fn copy(
    ctx: &Job,
    catalog: &Catalog,
    snapshot: &Snapshot,
    reporter: &Arc<Reporter>,
) -> Result<()> {
    let started = Instant::now();
    let total: u64 = catalog
        .tables_with_rows()
        .map(|t| t.bytes.max(0) as u64)
        .sum();
    reporter.line(format!(
        "copying {} tables (~{}) with {} workers",
        catalog.tables_with_rows().count(),
        report::bytes(total),
        ctx.jobs
    ));
    let mut options = CopyOptions::default();
    options.migration = ctx.name.clone();
    options.workers = ctx.jobs;
    let copier = Copier::new(
        ctx.source.clone(),
        ctx.target.clone(),
        catalog.tables.clone(),
        options,
    );
    reporter.copy_started(total);
    let events_reporter = Arc::clone(reporter);
    let summary = copier
        .run(snapshot, move |event| events_reporter.copy_event(&event))
        .await;
    reporter.copy_finished();
    let summary = summary.context("copying the data")?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    reporter.line(format!(
        "copy: {} rows, {} in {:.1}s ({}/s)",
        report::count(summary.rows),
        report::bytes(summary.bytes),
        secs,
        report::bytes((summary.bytes as f64 / secs) as u64)
    ));
    Ok(())
}

/// Runs the remaining stages of `migration`.
async fn continue_from(
    ctx: &Job,
    mut migration: Migration,
    target: &Client,
    catalog: &Catalog,
    reporter: &Arc<Reporter>,
    interrupt: &Interrupt,
    cutover_when_ready: bool,
) -> Result<ExitStatus> {
    if migration.stage <= Stage::Copy {
        // The exported snapshot died with the process that made it: copy
        // what is left under a new one from a temporary slot, whose later
        // consistent point becomes those tables' copied_at.
        let mut replication = ReplicationClient::connect(&ctx.source).await?;
        let temporary = temporary_slot(&mut replication, &ctx.name).await?;
        let snapshot =
            Snapshot::from_slot(&temporary).context("the temporary slot exported no snapshot")?;
        if migration.stage == Stage::Schema {
            let tables_exist = target
                .query_opt(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pglive') AND n.nspname !~ '^pg_' AND c.relkind IN ('r', 'p') LIMIT 1",
                    &[],
                )
                .await?
                .is_some();
            if !tables_exist {
                schema_pre_data(ctx, Some(&snapshot.name), catalog, reporter).await?;
            }
            state::set_stage(target, &ctx.name, Stage::Copy).await?;
        }
        copy(ctx, catalog, &snapshot, reporter).await?;
        replication.close().await.ok();
        state::set_stage(target, &ctx.name, Stage::PostData).await?;
        migration.stage = Stage::PostData;
    }
    if interrupt.requested() {
        return Ok(ExitStatus::Interrupted);
    }
    if migration.stage == Stage::PostData {
        let started = Instant::now();
        let mut schema =
            SchemaCopy::new(ctx.source.clone(), ctx.target.clone(), schema_options(ctx)).await?;
        let report = schema
            .restore_post_data()
            .await
            .context("building indexes and constraints (post-data)")?;
        reporter.line(format!(
            "post-data: {} objects ({} keys first) with {} jobs in {:.1}s",
            report.entries,
            report.key_entries,
            ctx.index_jobs,
            started.elapsed().as_secs_f64()
        ));
        state::set_stage(target, &ctx.name, Stage::Streaming).await?;
        migration.stage = Stage::Streaming;
    }
    if migration.stage == Stage::Done {
        reporter.line(format!(
            "migration {:?} is already done: {}",
            migration.name,
            migration.summary.as_deref().unwrap_or("")
        ));
        return Ok(ExitStatus::Success);
    }
    match live::stream(ctx, &migration, reporter, interrupt, cutover_when_ready).await? {
        LiveOutcome::Interrupted => {
            reporter.line("stopped at a transaction boundary; run the same command to resume");
            Ok(ExitStatus::Interrupted)
        }
        LiveOutcome::CutoverDone => Ok(ExitStatus::Success),
    }
}

pub async fn temporary_slot(
    replication: &mut ReplicationClient,
    name: &str,
) -> Result<CreatedSlot> {
    let slot_name = format!("{}_resume_{}", name, std::process::id());
    replication
        .create_slot(
            &slot_name,
            &SlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..SlotOptions::default()
            },
        )
        .await
        .context("creating a temporary slot for a new snapshot")
}
