//! Carrying tables created on the source while the migration streams.
//!
//! Such a table is in no copy, and its changes are not all in the stream
//! (a publication that lists its tables lacks it, and the publication of
//! UPDATEs and DELETEs always lists them). With apply stopped at a
//! transaction boundary, each one is, in this order:
//!
//! 1. added to the publications;
//! 2. copied under the snapshot of a new temporary slot, created after
//!    step 1 (its creation waits for every transaction that was running,
//!    so each change of the table is either committed before the slot's
//!    consistent point, in the copy, or after it, in the stream with the
//!    table published), after its pre-data is restored on the target;
//!    the consistent point becomes the table's `copied_at`, below which
//!    the applier skips its changes;
//! 3. given its indexes and constraints (post-data); until then it is
//!    recorded in `pglive.adopting`, so an adoption interrupted after the
//!    copy, or whose constraints cannot be built yet, is taken up again.
//!
//! Streaming then resumes from the applied position.

use crate::error::{Doing, Result};
use pglive_postgres::QualifiedName;
use pglive_postgres::connect_sql;
use pglive_repl::ReplicationClient;
use pglive_schema::{Catalog, ObjectFilter, SchemaCopy};
use pglive_snapshot::Copier;

use crate::error::chain;
use crate::events::{Events, Step};
use crate::job::Job;
use crate::publication;
use crate::stages;
use crate::state::{self, Record};

/// Whether the adoption of replayed `tables` waits because their columns
/// differ on the target (apply has not replayed a change of them yet); it
/// says so.
async fn postponed(
    job: &Job,
    tables: &[&QualifiedName],
    names: &[String],
    events: &dyn Events,
) -> Result<bool> {
    let differing = crate::columns::differing(job, tables).await?;
    if differing.is_empty() {
        return Ok(false);
    }
    let described: Vec<String> = differing.iter().map(|d| d.describe()).collect();
    events.note(
        Step::Adopt,
        format!(
            "new table(s) {}: adopted once apply has replayed the changes of their columns ({})",
            names.join(", "),
            described.join("; ")
        ),
    );
    Ok(true)
}

/// Runs `sql` on the target as a replica (no triggers, no foreign key
/// actions) when the role may, else as it is.
pub(crate) async fn as_replica(
    target: &tokio_postgres::Client,
    sql: &str,
) -> Result<u64, tokio_postgres::Error> {
    let replica = pglive_postgres::set_replica_role(target).await?;
    let done = target.execute(sql, &[]).await;
    if replica {
        target
            .batch_execute("RESET session_replication_role")
            .await?;
    }
    done
}

/// Publishes, creates, copies and indexes `tables` (see the module
/// documentation). `replayed` tables were made on the target by their
/// captured, replayed `CREATE` (a TimescaleDB source's capture leaves new
/// tables out of the publications): their indexes and later changes come
/// by replay too, so only their rows are copied — once the target has
/// replayed every change of their columns up to now (until then this
/// adopts nothing, and is asked again) — and a hypertable on the source is
/// made one on the target first.
pub(crate) async fn adopt(
    job: &Job,
    record: &Record,
    tables: &[QualifiedName],
    replayed: bool,
    events: &dyn Events,
) -> Result<()> {
    let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
    events.note(
        Step::Adopt,
        format!(
            "new table(s) on the source: {}; adding them to the migration",
            names.join(", ")
        ),
    );
    let mut filter = ObjectFilter::new();
    filter.include_tables = tables.iter().map(QualifiedName::quoted).collect();
    let source = connect_sql(&job.source).await?;
    let catalog = Catalog::read(&source, &filter).await?;
    let target = connect_sql(&job.target).await?;
    let listed: Vec<&QualifiedName> = tables.iter().collect();
    if replayed && postponed(job, &listed, &names, events).await? {
        return Ok(());
    }
    // Recorded before they are published: until the adoption is done,
    // streaming skips their changes (the copy has them) and takes the
    // adoption up again whatever stopped it.
    state::set_adopting(&target, job.name(), tables, false).await?;
    if replayed {
        // Whatever an earlier copy left (of a table of the same name,
        // dropped and made again since, or of this one, stopped midway) is
        // forgotten and emptied: the copy starts afresh.
        pglive_snapshot::reset_tables(&target, job.name(), tables)
            .await
            .doing("forgetting an earlier copy of the new tables")?;
        for table in tables {
            as_replica(&target, &format!("DELETE FROM {}", table.quoted()))
                .await
                .doing_with(|| format!("emptying {table} on the target"))?;
        }
    }
    publication::add(&source, &record.publication, &catalog).await?;
    // Read again once published (TimescaleDB refuses create_hypertable()
    // from now on): what is copied is what the snapshot will see.
    let catalog = Catalog::read(&source, &filter).await?;

    let mut replication = ReplicationClient::connect(&job.source).await?;
    let slot = stages::temporary_slot(&mut replication, job.name()).await?;
    let snapshot = stages::exported_snapshot(&slot)?;
    // Compared again after the snapshot: a change of their columns that
    // apply has not replayed yet shows as a difference.
    if replayed && postponed(job, &listed, &names, events).await? {
        replication.close().await.ok();
        return Ok(());
    }
    // An adoption interrupted after it created a table goes on with it.
    let mut missing = Vec::new();
    for table in tables {
        let exists: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
            .await
            .doing("looking for a new table on the target")?
            .get(0);
        if !exists {
            missing.push(table.quoted());
        }
    }
    let mut options = job.schema_options();
    options.reuse_schema = false;
    options.add_to_existing = true;
    if !missing.is_empty() && !replayed {
        let mut create = options.clone();
        create.filter.include_tables = missing;
        let mut pre_data = SchemaCopy::new(job.source.clone(), job.target.clone(), create).await?;
        pre_data
            .dump(Some(&snapshot.name))
            .await
            .doing("dumping the new tables' schema")?;
        pre_data
            .restore_pre_data()
            .await
            .doing("creating the new tables on the target")?;
    }
    // Empty on the target: made a hypertable there now if it is one here.
    if job.options.hypertables {
        crate::timescale::make_new_hypertables(&target, &catalog.timescale, events).await?;
    }
    options.filter = filter;
    let mut schema = SchemaCopy::new(job.source.clone(), job.target.clone(), options).await?;
    // Updates of an adopted keyless table before its copy are in the copy.
    let keyless = publication::keyless_changes(&source, &catalog).await?;
    state::add_keyless_baseline(&target, job.name(), &keyless).await?;
    let mut copy_options = job.copy_options();
    copy_options.plan.large_objects = false;
    copy_options.into_existing = replayed;
    let summary = Copier::new(
        job.source.clone(),
        job.target.clone(),
        catalog.tables.clone(),
        copy_options,
    )
    .run(&snapshot, |_| {})
    .await
    .doing("copying the new tables")?;
    replication.close().await.ok();
    // Foreign keys may refer to rows the stream has not applied yet (apply
    // stopped before the copy's point): then the post-data is retried at
    // the next check, after apply went on. Replayed tables have theirs.
    if !replayed {
        if let Err(error) = schema.restore_post_data().await {
            events.note(
                Step::Adopt,
                format!(
                    "new table(s) {}: indexes and constraints not built yet, retried shortly: {}",
                    names.join(", "),
                    chain(&error)
                ),
            );
            return Ok(());
        }
    }
    state::set_adopting(&target, job.name(), tables, true).await?;
    events.note(
        Step::Adopt,
        format!(
            "new table(s) {} copied ({} rows as of {}) and streamed from there",
            names.join(", "),
            summary.rows,
            slot.consistent_point
        ),
    );
    Ok(())
}
