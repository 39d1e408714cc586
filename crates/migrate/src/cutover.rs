//! Cutover: once writes stop, catch up to the source's position, carry over
//! what logical decoding does not (sequences, large objects, materialized
//! views), check row counts, and remove the slot and publication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglive_postgres::{ConnectConfig, Lsn, PgTimestamp, connect_sql};
use pglive_repl::ReplicationClient;
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result, chain};
use crate::events::{Event, Events, Step};
use crate::fence;
use crate::human;
use crate::job::Job;
use crate::late_changes;
use crate::live::{self, Session};
use crate::preflight;
use crate::publication;
use crate::slot;
use crate::state::{self, Record, Stage};
use crate::verify;

/// How long the cutover waits for the transactions open on the source to
/// end before its consistent point can be taken.
const POINT_PATIENCE: Duration = Duration::from_secs(60);

/// How long the stream must bring no new transaction before the source
/// counts as quiet.
const QUIET: Duration = Duration::from_secs(1);

async fn source_lsn(source: &Client) -> Result<Lsn> {
    let text: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .doing("reading the source's WAL position")?
        .get(0);
    Ok(text.parse()?)
}

/// Performs the cutover on a connected session; returns its summary.
/// Whatever stops it before the slot is dropped withdraws the cutover
/// (the migration goes back to streaming) and lifts the fence it raised;
/// after that, the next `migrate` or `cutover` finishes it.
pub(crate) async fn perform(
    job: &Job,
    record: &Record,
    session: Session,
    fence_source: bool,
    events: &dyn Events,
) -> Result<String> {
    let target = connect_sql(&job.target).await?;
    let source = connect_sql(&job.source).await?;
    // A cutover resumed under its own fence opens sessions that start
    // read-only.
    fence::allow_writes(&source).await?;
    state::begin_cutover(&target, job.name(), fence_source).await?;
    // What this process raised, to lift it whatever the state says.
    let mut raised = None;
    // A large future: on the heap.
    let checked = Box::pin(check(
        job,
        record,
        session,
        (&source, &target),
        fence_source,
        &mut raised,
        events,
    ))
    .await;
    let (summary, replication) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            give_up(job, &chain(&error), raised.as_ref(), events).await;
            return Err(error);
        }
    };
    complete(
        job,
        record,
        &source,
        &target,
        Some(replication),
        &summary,
        events,
    )
    .await?;
    Ok(summary)
}

/// Everything of the cutover up to dropping the slot. What reads whole
/// tables happens before writes are blocked: the row counts of both sides
/// at one consistent point, the materialized views' refresh, and a
/// catch-up to the source's position. Then the fence, a catch-up to the
/// final position, what the stream does not carry (sequences, large
/// objects), and what came after the final position. Records the summary
/// before returning it with the replication connection.
async fn check(
    job: &Job,
    record: &Record,
    mut session: Session,
    (source, target): (&Client, &Client),
    fence_source: bool,
    raised: &mut Option<fence::Raised>,
    events: &dyn Events,
) -> Result<(String, ReplicationClient)> {
    refuse_tables_not_carried(job, record, source, target).await?;
    let (chunks, rows) =
        crate::timescale::drop_chunks_gone_from_source(job, source, target).await?;
    if chunks > 0 || rows > 0 {
        events.note(
            Step::Cutover,
            format!(
                "cutover: TimescaleDB: {chunks} chunk(s) and {rows} more row(s) the source dropped (retention) dropped on the target"
            ),
        );
    }

    // Counted at one point, while the application still writes: changes
    // after it are applied row by row, each checked to touch exactly the
    // rows it names, so nothing under the fence scans a table.
    let (point, comparison) = counts_at_point(job, &mut session, events).await?;
    let keyless = keyless_changes(source, record, &job.filter()).await?;
    // A keyless table that received UPDATEs or DELETEs may differ: it is
    // reported below.
    let (expected, mismatches): (Vec<_>, Vec<_>) = comparison
        .mismatches()
        .into_iter()
        .partition(|m| keyless.changed.iter().any(|(table, _)| *table == m.table));
    for m in &expected {
        events.note(
            Step::Cutover,
            format!("cutover: {m} (a keyless table, see the warning below)"),
        );
    }
    if !mismatches.is_empty() {
        for m in &mismatches {
            events.note(Step::Cutover, format!("cutover: MISMATCH {m}"));
        }
        return Err(Error::CountsDiffer {
            tables: mismatches.iter().map(|m| m.table.clone()).collect(),
        });
    }
    let rows = comparison.tables.iter().map(|t| t.source_rows).sum();
    events.note(
        Step::Cutover,
        format!(
            "cutover: row counts match at {point} on {} of {} tables ({} rows)",
            comparison.tables.len() - expected.len(),
            comparison.tables.len(),
            human::count(rows)
        ),
    );
    // What arrived meanwhile is applied before the fence, not under it.
    live::catch_up(&mut session, source_lsn(source).await?, events).await?;
    // Caught up, the target has every schema change the stream carries:
    // a column that still differs is one no change in the stream can mend.
    let differences = crate::columns::differences(job).await?;
    if !differences.is_empty() {
        return Err(Error::ColumnsDiffer {
            differences: differences.iter().map(|d| d.describe()).collect(),
            fix: differences
                .iter()
                .map(|d| d.fix())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    let refreshed = refresh_materialized_views(target).await?;
    let applied_at_refresh = rows_applied(session.applier.stats());
    if refreshed > 0 {
        events.note(
            Step::Cutover,
            format!("cutover: {refreshed} materialized view(s) refreshed"),
        );
    }

    let started = Instant::now();
    if fence_source {
        let fence = raised.insert(fence::raise(source, target, job.name()).await?);
        events.note(
            Step::Cutover,
            format!(
                "cutover: source fenced (read-only), {} session(s) ended",
                fence.ended
            ),
        );
    }

    // Wait until a catch-up round brings no new transaction for QUIET.
    events.note(
        Step::Cutover,
        "cutover: waiting for the source to go quiet and the target to catch up",
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_change = Instant::now();
    let mut seen = session.applier.stats().transactions;
    let final_lsn = loop {
        let lsn = source_lsn(source).await?;
        live::catch_up(&mut session, lsn, events).await?;
        let now_seen = session.applier.stats().transactions;
        if now_seen != seen {
            seen = now_seen;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            break lsn;
        }
        if Instant::now() > deadline {
            return Err(Error::NotQuiet);
        }
        // `pglive cutover --abort` moves the stage back.
        if let Ok(Some(m)) = state::load(target, job.name()).await {
            if m.stage != Stage::Cutover {
                return Err(Error::CutoverAborted);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    events.event(Event::StreamingFinished);
    let stats = session.applier.stats().clone();
    let last_write = stats.applied_commit_time;
    state::save_stats(target, job.name(), &stats, final_lsn, final_lsn, 0, 0.0).await?;
    events.note(
        Step::Cutover,
        format!("cutover: target caught up with the source at {final_lsn}"),
    );

    // A table created between the check before the fence and the fence.
    refuse_tables_not_carried(job, record, source, target).await?;
    let sequences = pglive_schema::sync_sequences(source, target, &job.filter())
        .await
        .doing("synchronizing sequences")?;
    events.note(
        Step::Cutover,
        format!("cutover: {} sequence(s) synchronized", sequences.len()),
    );
    let large_objects =
        sync_large_objects(source, target, job.options.settings.keep_owners).await?;
    if large_objects > 0 {
        events.note(
            Step::Cutover,
            format!("cutover: {large_objects} large object(s) synchronized"),
        );
    }
    // Refreshed again only when changes arrived since.
    if refreshed > 0 && rows_applied(&stats) != applied_at_refresh {
        refresh_materialized_views(target).await?;
        events.note(
            Step::Cutover,
            format!(
                "cutover: {refreshed} materialized view(s) refreshed again (changes arrived since)"
            ),
        );
    }
    let restored = pglive_apply::restore_triggers(target).await?;
    if restored > 0 {
        events.note(
            Step::Cutover,
            format!("cutover: {restored} target trigger(s) enabled again"),
        );
    }
    let identities = pglive_apply::restore_identity_columns(target).await?;
    if identities > 0 {
        events.note(
            Step::Cutover,
            format!("cutover: {identities} identity column(s) made GENERATED ALWAYS again"),
        );
    }
    let (aggregates, jobs) =
        crate::timescale::finish_on_target(job, source, target, events).await?;
    if aggregates + jobs > 0 {
        events.note(
            Step::Cutover,
            format!(
                "cutover: TimescaleDB: {aggregates} continuous aggregate(s) refreshed, {jobs} job(s) scheduled"
            ),
        );
    }
    // Again, for what changed between the point and the fence.
    let keyless = keyless_changes(source, record, &job.filter()).await?;
    keyless.report(events);

    // The slot is read on to the source's position: whatever committed
    // after the final one is not on the target.
    drop(session.applier);
    let until = source_lsn(source).await?;
    let late =
        late_changes::read(&mut session.stream, session.protocol_version, until, source).await?;
    if late.transactions > 0 {
        events.warn(
            Step::Cutover,
            format!(
                "{} transaction(s) committed on the source after the cutover point {final_lsn} are not on the target: \
                 {}; a session wrote {}: compare those tables (`pglive verify --full`) and carry the rows by hand",
                late.transactions,
                late.describe(),
                if fence_source {
                    "past the fence (BEGIN READ WRITE, or SET default_transaction_read_only = off)"
                } else {
                    "after the application was to be stopped (use --fence)"
                }
            ),
        );
    }
    if !late.complete {
        events.warn(
            Step::Cutover,
            format!(
                "the slot could not be read up to the source's position {until} in time: \
                 changes committed after the cutover point {final_lsn} cannot be ruled out"
            ),
        );
    }
    let replication = session.stream.stop().await?;

    // With a fence, writes were blocked from the fence on. Without one,
    // pglive does not know when the application stopped: it says how long
    // before the switch the source's last write was (which is the blocked
    // time when the application stopped for the cutover, and more when
    // the source was idle anyway).
    let writes = if fence_source {
        format!(
            "writes blocked for {:.1}s (source stays read-only)",
            started.elapsed().as_secs_f64()
        )
    } else {
        let since_last_write = last_write.and_then(|t| {
            PgTimestamp::now()
                .to_system_time()
                .duration_since(t.to_system_time())
                .ok()
        });
        match since_last_write {
            Some(since) => format!(
                "last source write {:.1}s before the switch",
                since.as_secs_f64()
            ),
            None => "no source write while streaming".to_owned(),
        }
    };
    let mut summary = format!(
        "cut over at {final_lsn}: {} tables, {} rows verified by count at {point}; {writes}",
        comparison.tables.len(),
        human::count(rows),
    );
    if !keyless.changed.is_empty() {
        summary.push_str(&format!(
            "; {} keyless table(s) received updates or deletes that were not carried",
            keyless.changed.len()
        ));
    }
    if late.transactions > 0 {
        summary.push_str(&format!(
            "; {} transaction(s) committed on the source after the cutover point were not carried: {}",
            late.transactions,
            late.describe()
        ));
    }
    state::set_finishing(target, job.name(), &summary).await?;
    Ok((summary, replication))
}

/// How long a failed cutover keeps trying to reach the servers to withdraw
/// itself and lift its fence (the failure may be one of them restarting).
const GIVE_UP_PATIENCE: Duration = Duration::from_secs(30);

/// How a failed cutover ended.
enum Withdrawn {
    /// Its checks had passed: it is left to be finished.
    Finishing,
    /// Withdrawn, and its fence lifted.
    Lifted,
    /// Withdrawn; there was no fence.
    Unfenced,
}

/// Withdraws a cutover that failed (`reason` says why) and lifts its
/// fence, and says which; on connections of its own, retried for
/// [`GIVE_UP_PATIENCE`], as the failure may have been one.
async fn give_up(job: &Job, reason: &str, raised: Option<&fence::Raised>, events: &dyn Events) {
    let deadline = Instant::now() + GIVE_UP_PATIENCE;
    let outcome = loop {
        match withdraw(job, reason, raised).await {
            Ok(outcome) => break Ok(outcome),
            Err(error) if Instant::now() > deadline => break Err(error),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    events.warn(
        Step::Cutover,
        match outcome {
            Ok(Withdrawn::Finishing) => format!(
                "the cutover stopped after its checks passed ({reason}): run `pglive cutover` (or `pglive migrate`) again to finish it"
            ),
            Ok(Withdrawn::Lifted) => format!(
                "the cutover stopped: {reason}; it is withdrawn and the fence is lifted: the source is writable again"
            ),
            Ok(Withdrawn::Unfenced) => {
                format!("the cutover stopped: {reason}; it is withdrawn")
            }
            Err(error) => format!(
                "the cutover stopped: {reason}; it could not be withdrawn ({}): if it fenced the source, the source \
                 stays read-only until `pglive cutover --abort` or `pglive clean` lifts the fence",
                chain(&error)
            ),
        },
    );
}

async fn withdraw(job: &Job, reason: &str, raised: Option<&fence::Raised>) -> Result<Withdrawn> {
    let target = connect_sql(&job.target).await?;
    // Withdrawn first, in one statement that loses to a cutover past its
    // checks: the fence is never lifted under a cutover that finishes.
    if !state::abort_cutover(&target, job.name(), Some(reason)).await? {
        return Ok(Withdrawn::Finishing);
    }
    if fence::lift_recorded(&job.source, &target, job.name()).await? {
        return Ok(Withdrawn::Lifted);
    }
    // Raised here while another process recorded it lifted.
    match raised {
        Some(raised) => {
            fence::lift_raised(&job.source, &target, job.name(), raised).await?;
            Ok(Withdrawn::Lifted)
        }
        None => Ok(Withdrawn::Unfenced),
    }
}

/// Drops the slot and the publications and records the migration done;
/// `replication` is the stream's connection when the caller has it.
async fn complete(
    job: &Job,
    record: &Record,
    source: &Client,
    target: &Client,
    replication: Option<ReplicationClient>,
    summary: &str,
    events: &dyn Events,
) -> Result<()> {
    if slot::active_pid(source, &record.slot).await?.is_some() {
        let mut replication = match replication {
            Some(replication) => replication,
            None => ReplicationClient::connect(&job.source).await?,
        };
        replication
            .drop_slot(&record.slot, true)
            .await
            .doing_with(|| format!("dropping slot {:?}", record.slot))?;
        replication.close().await.ok();
    }
    crate::ddl_capture::remove(source, job.name()).await?;
    publication::drop(source, &record.publication).await?;
    // Last of the target's schema: nothing of pglive's fires them.
    let (made, left) =
        crate::event_triggers::create_on_target(source, target, job.options.settings.keep_owners)
            .await?;
    if made > 0 {
        events.note(
            Step::Cutover,
            format!("cutover: {made} event trigger(s) of the source created on the target"),
        );
    }
    for statements in left {
        events.warn(
            Step::Cutover,
            format!("not created, as only a superuser may run it on the target: {statements}"),
        );
    }
    state::finish(target, job.name(), summary).await?;
    events.note(
        Step::Cutover,
        format!("cutover: slot and publications dropped; {summary}"),
    );
    events.event(Event::SwitchNow {
        summary: summary.to_owned(),
    });
    Ok(())
}

/// Finishes a cutover whose checks passed but whose process stopped
/// before it recorded `done` (see [`Record::finishing`]).
pub(crate) async fn finish_recorded(
    job: &Job,
    record: &Record,
    events: &dyn Events,
) -> Result<Option<String>> {
    let Some(summary) = &record.finishing else {
        return Ok(None);
    };
    events.note(
        Step::Cutover,
        "cutover: its checks had passed before pglive stopped; finishing it",
    );
    let target = connect_sql(&job.target).await?;
    let source = connect_sql(&job.source).await?;
    fence::allow_writes(&source).await?;
    complete(job, record, &source, &target, None, summary, events).await?;
    Ok(Some(summary.clone()))
}

/// Fails when the source has selected tables this migration's copy does not
/// hold: `migrate` adopts them while it streams, and must run again.
async fn refuse_tables_not_carried(
    job: &Job,
    record: &Record,
    source: &Client,
    target: &Client,
) -> Result<()> {
    let tables = publication::tables_not_carried(
        source,
        target,
        (job.name(), &record.publication),
        &job.filter(),
    )
    .await?;
    if tables.is_empty() {
        Ok(())
    } else {
        Err(Error::TablesNotCarried { tables })
    }
}

/// What the source's statistics say of the keyless tables' UPDATEs and
/// DELETEs (which are not published) since the migration started.
struct KeylessChanges {
    /// Tables whose count grew, with by how much.
    changed: Vec<(String, i64)>,
    /// Tables whose statistics were reset, so nothing can be told.
    reset: Vec<String>,
}

impl KeylessChanges {
    /// Warns of each table.
    fn report(&self, events: &dyn Events) {
        for table in &self.reset {
            events.warn(Step::Cutover, format!(
                "the source's statistics of {table} were reset during the migration, so whether this \
                 keyless table received UPDATEs or DELETEs (which are not carried) cannot be told: compare it with \
                 `pglive verify --full`"
            ));
        }
        for (table, changes) in &self.changed {
            events.warn(Step::Cutover, format!(
                "{table} has no primary key or replica identity and received {changes} UPDATE/DELETE(s) \
                 on the source during the migration: they are not carried, so the target's copy differs; \
                 copy the table again after the switch (e.g. TRUNCATE it on the target and COPY it from the source), \
                 and give it a primary key before the next migration"
            ));
        }
    }
}

/// The keyless tables' UPDATE and DELETE counts on the source against
/// the migration's baseline.
async fn keyless_changes(
    source: &Client,
    record: &Record,
    filter: &pglive_schema::ObjectFilter,
) -> Result<KeylessChanges> {
    // Keyless when the migration started (a key added since does not bring
    // back what was not streamed) or now.
    let catalog = pglive_schema::Catalog::read(source, filter).await?;
    let mut tables: Vec<String> = record.keyless_baseline.keys().cloned().collect();
    tables.extend(publication::keyless_tables(&catalog));
    tables.sort();
    tables.dedup();
    let now = publication::change_counts(source, &tables).await?;
    let mut changes = KeylessChanges {
        changed: Vec::new(),
        reset: Vec::new(),
    };
    for (table, count) in now {
        let before = record.keyless_baseline.get(&table).copied().unwrap_or(0);
        if count < before {
            changes.reset.push(table);
        } else if count > before {
            changes.changed.push((table, count - before));
        }
    }
    Ok(changes)
}

/// Row counts of both sides at one consistent point: a temporary slot
/// exports a source snapshot at its position, the applier applies exactly
/// up to it and holds while a target session takes its snapshot, and goes
/// on; the counts then read both snapshots.
async fn counts_at_point(
    job: &Job,
    session: &mut Session,
    events: &dyn Events,
) -> Result<(Lsn, verify::Comparison)> {
    // A slot's snapshot waits for every transaction open on the server.
    let source = connect_sql(&job.source).await?;
    let prepared: Vec<String> = source
        .query(
            "SELECT format('%s (database %s, role %s)', gid, database, owner) FROM pg_catalog.pg_prepared_xacts ORDER BY prepared",
            &[],
        )
        .await
        .doing("listing the source's prepared transactions")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !prepared.is_empty() {
        return Err(Error::PreparedTransactions { prepared });
    }
    let mut replication = ReplicationClient::connect(&job.source).await?;
    let slot = match tokio::time::timeout(
        POINT_PATIENCE,
        crate::stages::temporary_slot(&mut replication, job.name()),
    )
    .await
    {
        Ok(slot) => slot?,
        Err(_) => {
            // The walsender waits inside the slot's creation and does not
            // see its client leave: end it, or its slot stays behind.
            source
                .execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_catalog.pg_replication_slots
                      WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&crate::stages::temporary_slot_name(job.name())],
                )
                .await
                .ok();
            let open: Vec<String> = source
                .query(
                    "SELECT format('%s (role %s, %s, open since %s)', pid, usename, coalesce(application_name, ''), xact_start)
                       FROM pg_catalog.pg_stat_activity
                      WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 5",
                    &[],
                )
                .await
                .doing("listing the source's open transactions")?
                .iter()
                .map(|r| r.get(0))
                .collect();
            return Err(Error::PointWaits {
                sessions: if open.is_empty() {
                    "not visible to pglive's role".to_owned()
                } else {
                    open.join(", ")
                },
            });
        }
    };
    let snapshot = crate::stages::exported_snapshot(&slot)?;
    let point = slot.consistent_point;
    live::pause_at(session, point, events).await?;
    let target_at_point = verify::ExportedSnapshot::take(&job.target).await;
    session.applier.resume().await?;
    let target_at_point = target_at_point?;
    let at_source = verify::Point {
        config: &job.source,
        snapshot: &snapshot.name,
    };
    let mut options = crate::VerifyOptions::default();
    options.jobs = job.options.jobs;
    let comparison = verify::compare(
        (at_source, target_at_point.point()),
        &job.filter(),
        &options,
        (None, None),
        events,
    )
    .await?;
    replication.close().await.ok();
    Ok((point, comparison))
}

/// Rows the applier changed so far (empty transactions do not count).
fn rows_applied(stats: &pglive_apply::ApplyStats) -> u64 {
    stats.inserted + stats.updated + stats.deleted + stats.truncates
}

async fn refresh_materialized_views(target: &Client) -> Result<usize> {
    let views: Vec<String> = target
        .query(
            "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews WHERE schemaname <> 'pglive'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for view in &views {
        target
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}"))
            .await
            .doing_with(|| format!("refreshing {view}"))?;
    }
    Ok(views.len())
}

/// Large objects are not in the change stream: make the target's set equal
/// the source's (by OID and content) after writes stopped.
/// Makes the target's large objects the source's: their changes are not
/// in the stream. Contents are compared by digest; a changed one is
/// rewritten in place (keeping its owner and privileges), a new one is
/// created and given its source owner. The source is read through
/// `pg_largeobject` (preflight checks the role may), the target through
/// `lo_get`, which works for objects the role owns or may read.
async fn sync_large_objects(source: &Client, target: &Client, keep_owners: bool) -> Result<usize> {
    let read =
        |rows: Vec<tokio_postgres::Row>| -> std::collections::HashMap<i64, (String, String)> {
            rows.iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect()
        };
    let any = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata)";
    let source_has: bool = source.query_one(any, &[]).await?.get(0);
    let target_has: bool = target.query_one(any, &[]).await?.get(0);
    if !source_has && !target_has {
        return Ok(0);
    }
    let on_source = read(
        source
            .query(
                "SELECT m.oid::int8, md5(coalesce(string_agg(p.data, ''::bytea ORDER BY p.pageno), ''::bytea)),
                        pg_get_userbyid(m.lomowner)::text
                   FROM pg_largeobject_metadata m LEFT JOIN pg_largeobject p ON p.loid = m.oid GROUP BY m.oid, m.lomowner",
                &[],
            )
            .await
            .doing("reading the source's large objects (GRANT SELECT ON pg_catalog.pg_largeobject TO the source role)")?,
    );
    let on_target = read(
        target
            .query(
                "SELECT oid::int8, md5(lo_get(oid)), pg_get_userbyid(lomowner)::text FROM pg_largeobject_metadata",
                &[],
            )
            .await
            .doing("reading the target's large objects")?,
    );
    let mut changed = 0;
    for oid in on_target.keys().filter(|oid| !on_source.contains_key(oid)) {
        target
            .execute("SELECT lo_unlink($1::int8::oid)", &[oid])
            .await?;
        changed += 1;
    }
    for (oid, (hash, owner)) in &on_source {
        if on_target.get(oid).map(|(h, _)| h) == Some(hash) {
            continue;
        }
        let data: Vec<u8> = source
            .query_one("SELECT lo_get($1::int8::oid)", &[oid])
            .await?
            .get(0);
        if on_target.contains_key(oid) {
            // Rewritten in place, in one transaction (131072 = INV_WRITE).
            target.batch_execute("BEGIN").await?;
            target
                .execute(
                    "SELECT lo_truncate(lo_open($1::int8::oid, 131072), 0)",
                    &[oid],
                )
                .await?;
            target
                .execute("SELECT lo_put($1::int8::oid, 0, $2)", &[oid, &data])
                .await?;
            target.batch_execute("COMMIT").await?;
        } else {
            target
                .execute("SELECT lo_from_bytea($1::int8::oid, $2)", &[oid, &data])
                .await?;
            if keep_owners {
                target
                    .batch_execute(&format!(
                        "ALTER LARGE OBJECT {oid} OWNER TO {}",
                        pglive_postgres::quote_ident(owner)
                    ))
                    .await
                    .doing_with(|| format!("giving large object {oid} to {owner}"))?;
            }
        }
        changed += 1;
    }
    Ok(changed)
}

/// How a cutover is asked for.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CutoverOptions {
    /// The migration's name.
    pub name: String,
    /// Make the source read-only first (and end its other sessions).
    pub fence: bool,
    /// How long to wait for it to finish.
    pub timeout: Duration,
}

impl CutoverOptions {
    /// A cutover of migration `name`, unfenced, waiting up to 300 s.
    pub fn new(name: impl Into<String>) -> CutoverOptions {
        CutoverOptions {
            name: name.into(),
            fence: false,
            timeout: Duration::from_secs(300),
        }
    }
}

/// How a cutover ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CutoverOutcome {
    /// Done now; the summary says what it did.
    Done {
        /// What the cutover did, on one line.
        summary: String,
    },
    /// The migration had been cut over before.
    AlreadyDone {
        /// What that cutover did.
        summary: String,
    },
}

/// Cuts migration `options.name` over: asks its running [`crate::migrate`]
/// to do it (through the target's state) and waits, or, when none runs,
/// does it on a session of its own. Needs the migration streaming.
pub async fn cutover(
    source: ConnectConfig,
    target: ConnectConfig,
    options: &CutoverOptions,
    events: Arc<dyn Events>,
) -> Result<CutoverOutcome> {
    let name = options.name.clone();
    let target_client = preflight::connect(&target, "target").await?;
    let Some(record) = state::load(&target_client, &name).await? else {
        return Err(Error::NotFound {
            name,
            target: target.describe(),
        });
    };
    match record.stage {
        Stage::Done => {
            return Ok(CutoverOutcome::AlreadyDone {
                summary: record.summary.unwrap_or_default(),
            });
        }
        Stage::Streaming | Stage::Cutover => {}
        stage => {
            return Err(Error::WrongStage {
                name,
                stage,
                needs: "cutover needs the copy and indexes done (let `pglive migrate` get to streaming)",
            });
        }
    }
    let seconds = options.timeout.as_secs();
    let deadline = Instant::now() + options.timeout;
    let job = Job::for_recorded(source, target, &record);
    let locked = state::try_lock(&target_client, &name).await?;
    // A migrate whose lock went with a restarted target still streams
    // from the slot until its keeper takes the lock again.
    if !locked || slot_in_use(&job, &record.slot).await? {
        if locked {
            state::unlock(&target_client, &name).await?;
        }
        return ask_running_migrate(&job, target_client, options, events.as_ref(), deadline).await;
    }
    let finishing = if record.stage == Stage::Cutover {
        finish_recorded(&job, &record, events.as_ref()).await
    } else {
        Ok(None)
    };
    let result = match finishing {
        Ok(Some(summary)) => Ok(Ok(summary)),
        Ok(None) => {
            // The tail after writes stopped is short: one session.
            let session =
                live::connect(&job, &record, &Default::default(), events.as_ref()).await?;
            tokio::time::timeout(
                options.timeout,
                perform(&job, &record, session, options.fence, events.as_ref()),
            )
            .await
        }
        Err(error) => Ok(Err(error)),
    };
    if result.is_err() {
        give_up(&job, "`pglive cutover` timed out", None, events.as_ref()).await;
    }
    state::unlock(&target_client, &name).await.ok();
    match result {
        Ok(summary) => summary.map(|summary| CutoverOutcome::Done { summary }),
        Err(_) => Err(Error::Timeout {
            what: "the cutover",
            seconds,
        }),
    }
}

/// Whether a process streams from `slot` on the source.
async fn slot_in_use(job: &Job, slot: &str) -> Result<bool> {
    let source = connect_sql(&job.source).await?;
    Ok(slot::active_pid(&source, slot).await?.flatten().is_some())
}

/// Asks the running `migrate` to cut over (through the target's state)
/// and waits for it, riding out a restart of the target.
async fn ask_running_migrate(
    job: &Job,
    mut target_client: Client,
    options: &CutoverOptions,
    events: &dyn Events,
    deadline: Instant,
) -> Result<CutoverOutcome> {
    let name = job.name();
    state::request_cutover(&target_client, name, options.fence).await?;
    events.note(
        Step::Cutover,
        "cutover requested from the running `pglive migrate`; waiting",
    );
    // A migrate that lost its lock with its session takes it again within
    // seconds.
    const LOCK_GRACE: Duration = Duration::from_secs(15);
    let mut not_running_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Instant::now() > deadline {
            give_up(job, "`pglive cutover` timed out", None, events).await;
            return Err(Error::Timeout {
                what: "the cutover",
                seconds: options.timeout.as_secs(),
            });
        }
        let (current, running) = match (
            state::load(&target_client, name).await,
            state::is_running(&target_client, name).await,
        ) {
            (Ok(current), Ok(running)) => (current, running),
            (Err(error), _) | (_, Err(error)) if error.is_transient() => {
                if let Ok(client) = connect_sql(&job.target).await {
                    target_client = client;
                }
                continue;
            }
            (Err(error), _) | (_, Err(error)) => return Err(error),
        };
        let current = current.ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
            target: job.target.describe(),
        })?;
        if current.stage == Stage::Done {
            let summary = current.summary.unwrap_or_default();
            events.event(Event::SwitchNow {
                summary: summary.clone(),
            });
            return Ok(CutoverOutcome::Done { summary });
        }
        if !current.cutover_requested {
            // The migrate lifts its fence right after withdrawing.
            let mut fence_up = current.fence_raised;
            let lift_deadline = Instant::now() + GIVE_UP_PATIENCE + Duration::from_secs(5);
            while fence_up && Instant::now() < lift_deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(Some(now)) = state::load(&target_client, name).await {
                    fence_up = now.fence_raised;
                }
            }
            return Err(Error::CutoverWithdrawn {
                reason: current
                    .cutover_error
                    .unwrap_or_else(|| "it was aborted".to_owned()),
                fence_up,
            });
        }
        if running {
            not_running_since = None;
        } else if not_running_since.get_or_insert_with(Instant::now).elapsed() > LOCK_GRACE {
            // Not left for the next migrate to act on unasked.
            let _ = state::abort_cutover(&target_client, name, Some("the migrate stopped")).await;
            return Err(Error::MigrateStopped);
        }
    }
}

/// Ends a cutover that was asked for: moves the migration back to
/// streaming and lifts the fence it recorded (after a finished cutover,
/// only lifts its fence). True when a fence was lifted.
pub async fn abort_cutover(
    source: ConnectConfig,
    target: ConnectConfig,
    name: &str,
) -> Result<bool> {
    let target_client = preflight::connect(&target, "target").await?;
    let Some(record) = state::load(&target_client, name).await? else {
        return Err(Error::NotFound {
            name: name.to_owned(),
            target: target.describe(),
        });
    };
    // After a finished cutover only its fence is left to lift.
    if record.stage == Stage::Done {
        return fence::lift_recorded(&source, &target_client, name).await;
    }
    // The request first (a running cutover stops before the fence goes),
    // unless the cutover is past its checks.
    if !state::abort_cutover(&target_client, name, None).await? {
        return Err(Error::WrongStage {
            name: name.to_owned(),
            stage: record.stage,
            needs: "its checks passed and it is dropping its slot: run `pglive cutover` (or `pglive migrate`) again to finish it",
        });
    }
    fence::lift_recorded(&source, &target_client, name).await
}
