//! The streaming stage: apply the slot's changes until cutover, reconnecting
//! with backoff when either server goes away.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use pglive_apply::{Applier, ApplyOptions, PendingDdl, Progress, RunOptions, Stopped};
use pglive_postgres::{Lsn, QualifiedName, connect_sql};
use pglive_repl::{
    PgOutputOptions, ReplicationClient, ReplicationStream, StreamOptions, Streaming,
};

use crate::control::Control;
use crate::cutover;
use crate::error::{Doing, Error, Result, chain};
use crate::events::{Event, Events, Step};
use crate::fence;
use crate::job::Job;
use crate::publication;
use crate::slot::{self, SlotWal};
use crate::state::{self, Record, Stage, VerifyRequest};

/// How streaming ended.
pub(crate) enum LiveOutcome {
    /// Stopped on request: the last complete transaction is committed;
    /// resumable.
    Stopped,
    /// Cutover finished, with its summary.
    CutOver(String),
}

/// Why the apply loop was asked to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reason {
    Stop,
    Cutover {
        fence: bool,
    },
    /// A `pglive verify` asks apply to hold.
    VerifyHold,
    /// Source tables the migration does not carry yet (see
    /// `publication::tables_not_carried`), or, when it captures schema
    /// changes, tables left for adoption (`publication::left_for_adoption`).
    NotCarried(Vec<QualifiedName>),
}

/// The latest value one task leaves for another (none yet at first).
type Latest<T> = Arc<Mutex<Option<T>>>;

/// How often streaming looks for tables created on the source.
const NEW_TABLES_EVERY: Duration = Duration::from_secs(10);

/// How long a plain table created on a TimescaleDB source stays out of the
/// migration (and its publications), so that the application may still
/// make it a hypertable: a deployment runs `CREATE TABLE` and
/// `create_hypertable()` one after the other. A hypertable is adopted at
/// once, every waiting table at a cutover.
const PLAIN_TABLE_GRACE: Duration = Duration::from_secs(120);

/// A connected applier and stream, ready to run.
pub(crate) struct Session {
    pub applier: Applier,
    pub stream: ReplicationStream,
    /// The pgoutput protocol version the stream was started with.
    pub protocol_version: u32,
}

/// Connects an applier to the target and a stream from the slot, resuming
/// from the applied position.
pub(crate) async fn connect(
    job: &Job,
    record: &Record,
    ignored: &HashSet<QualifiedName>,
    events: &dyn Events,
) -> Result<Session> {
    let target = connect_sql(&job.target).await?;
    let mut copied_at: HashMap<QualifiedName, Lsn> =
        pglive_snapshot::copied_at(&target, job.name())
            .await?
            .into_iter()
            .collect();
    // A table being adopted whose copy is not done: its copy will hold
    // every change the stream has of it until then.
    for table in state::adopting(&target, job.name()).await? {
        copied_at.entry(table).or_insert(Lsn(u64::MAX));
    }
    let replication = ReplicationClient::connect(&job.source).await?;
    let proto = if replication.server_version_num().unwrap_or(0) >= 140000 {
        2
    } else {
        1
    };
    let mut options = ApplyOptions::new(job.name().to_owned(), proto);
    options.copied_at = copied_at;
    options.ignored_tables = ignored.clone();
    options.sessions = job.options.apply_sessions;
    let source = connect_sql(&job.source).await?;
    let timescale = crate::timescale::chunked_tables(&source).await?;
    if let Some((chunked, _)) = &timescale {
        // Indexes made on the source's hypertables meanwhile.
        let on_target = pglive_schema::hypertable_names(&target)
            .await
            .doing("reading the target's hypertables")?;
        let on_both: Vec<QualifiedName> = chunked
            .iter()
            .map(|c| c.table.clone())
            .filter(|name| on_target.contains(name))
            .collect();
        crate::timescale::follow_source_hypertable_indexes(
            (&source, &target),
            &on_both,
            events,
            false,
        )
        .await?;
    }
    drop(target);
    // Captured schema changes travel as logical messages too.
    let messages =
        timescale.is_some() || crate::ddl_capture::installed(&source, job.name()).await?;
    if let Some((chunked, internal)) = timescale {
        options.chunked_tables = chunked;
        options.internal_schemas = internal;
    }
    let applier = Applier::connect(&job.target, options).await?;
    let publications = {
        slot::check_usable(&source, &record.slot).await?;
        publication::stream_names(&source, &record.publication).await?
    };
    drop(source);
    let mut pgoutput = PgOutputOptions::new(publications);
    pgoutput.proto_version = proto;
    // TimescaleDB marks the rows it moves into and out of compressed
    // chunks with logical messages.
    pgoutput.messages = messages;
    if proto >= 2 {
        pgoutput.streaming = Streaming::On;
    }
    let start = applier.applied_lsn().max(record.start_lsn);
    let stream = replication
        .start_replication(&record.slot, start, &pgoutput, StreamOptions::default())
        .await
        .doing_with(|| format!("starting replication from slot {:?}", record.slot))?;
    Ok(Session {
        applier,
        stream,
        protocol_version: proto,
    })
}

/// The waits between reconnects: 1 s doubling up to 30 s, without end.
fn reconnect_delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build()
}

/// Streams until a cutover is done or a stop is asked for, reconnecting
/// with backoff when either server goes away.
pub(crate) async fn stream(
    job: &Job,
    record: &Record,
    events: &Arc<dyn Events>,
    control: &Control,
    cutover_when_ready: bool,
) -> Result<LiveOutcome> {
    events.event(Event::StreamingStarted {
        slot: record.slot.clone(),
    });
    let mut delays = reconnect_delays();
    // Tables created and dropped on the source during the migration.
    let mut ignored = HashSet::new();
    // Where a table's shape stopped apply, while the target does not match
    // (a wait recorded by an earlier run is found again if it still holds).
    let mut waiting: Option<Lsn> = None;
    // Tables left for adoption, since when this process saw them.
    let mut left_since: HashMap<QualifiedName, tokio::time::Instant> = HashMap::new();
    {
        let target = connect_sql(&job.target).await?;
        state::set_apply_waiting(&target, job.name(), None).await?;
    }
    let mut said: Option<(String, Lsn)> = None;
    // The schema change before which TimescaleDB's untraced objects were
    // last followed.
    let mut followed_for: Option<(Lsn, u32)> = None;
    loop {
        // A cutover past its checks that lost a connection is finished.
        if let Some(summary) = finish_if_recorded(job, events.as_ref()).await? {
            events.event(Event::StreamingFinished);
            return Ok(LiveOutcome::CutOver(summary));
        }
        // A large future (the whole connected stretch): on the heap.
        let reason = match Box::pin(session(
            job,
            record,
            events,
            control,
            cutover_when_ready,
            (&mut ignored, &mut waiting, &mut left_since),
        ))
        .await
        {
            Ok(Stretch::ApplyWaits(Waits {
                message,
                mut applied,
                ddl,
                stopped_in,
                wants_object,
            })) => {
                // Everything before the transaction it stopped in applied
                // (the batch it stopped in held earlier ones too): what is
                // run by hand on the target then comes after every row
                // from before the change.
                if let Some(lsn) = stopped_in.filter(|lsn| applied < *lsn) {
                    let mut session = connect(job, record, &ignored, events.as_ref()).await?;
                    pause_at(&mut session, lsn, events.as_ref()).await?;
                    applied = session.applier.applied_lsn();
                    session.stream.stop().await.ok();
                }
                // What TimescaleDB made on the source without a trace may
                // be what the command wants: made, the command is replayed
                // again at once (once per command).
                if let Some(pending) = ddl.as_ref().filter(|_| wants_object) {
                    let at = Some((pending.lsn, pending.position));
                    if followed_for != at {
                        followed_for = at;
                        // Made from the source's catalog as it is now, which
                        // may be ahead of the stream: if that fails, apply
                        // waits at the command as it would have.
                        match crate::timescale::follow_before_replay(job, events.as_ref()).await {
                            Ok(true) => continue,
                            Ok(false) => {}
                            Err(error) => events.warn(
                                Step::Streaming,
                                format!(
                                    "making what TimescaleDB made on the source before the schema change failed: {}",
                                    chain(&error)
                                ),
                            ),
                        }
                    }
                }
                let again = said
                    .as_ref()
                    .is_some_and(|(m, at)| *m == message && *at == applied);
                let target = connect_sql(&job.target).await?;
                if !again {
                    let what_next = match &ddl {
                        Some(_) => format!(
                            "replay it by hand on the target and run `pglive ddl skip --name {name}`, or run `pglive ddl retry --name {name}` to replay it as captured",
                            name = job.name()
                        ),
                        None => "it goes on by itself once the target matches".to_owned(),
                    };
                    events.warn(
                        Step::Streaming,
                        format!(
                            "apply waits at {applied}: {message} ({what_next}; `pglive status` shows this)"
                        ),
                    );
                    state::set_apply_waiting(&target, job.name(), Some(&message)).await?;
                    said = Some((message, applied));
                }
                waiting = Some(applied);
                match ddl {
                    Some(pending) => {
                        pglive_apply::record_pending_ddl(&target, job.name(), &pending).await?;
                        if !decided(&target, job.name(), &pending, control).await? {
                            return Ok(LiveOutcome::Stopped);
                        }
                    }
                    None => tokio::select! {
                        () = tokio::time::sleep(SHAPE_RECHECK) => {}
                        () = control.stopped() => return Ok(LiveOutcome::Stopped),
                    },
                }
                continue;
            }
            Ok(Stretch::Done(outcome)) => {
                events.event(Event::StreamingFinished);
                return Ok(outcome);
            }
            // On fresh sessions: the fence ended this process's own.
            Ok(Stretch::CutoverWithdrawn) => continue,
            Ok(Stretch::ServerEnded) => "the source ended the stream (shutting down?)".to_owned(),
            Err(error) if error.is_transient() && !control.stop_requested() => {
                format!("connection lost ({})", chain(&error))
            }
            Err(error) => {
                events.event(Event::StreamingFinished);
                return Err(error);
            }
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        events.event(Event::Reconnecting { reason, delay });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = control.stopped() => return Ok(LiveOutcome::Stopped),
        }
    }
}

/// Finishes the cutover the state records as past its checks, if any.
async fn finish_if_recorded(job: &Job, events: &dyn Events) -> Result<Option<String>> {
    let target = connect_sql(&job.target).await?;
    match state::load(&target, job.name()).await? {
        Some(current) if current.stage == Stage::Cutover && current.finishing.is_some() => {
            cutover::finish_recorded(job, &current, events).await
        }
        _ => Ok(None),
    }
}

/// How one connected stretch of streaming ended.
enum Stretch {
    /// For good.
    Done(LiveOutcome),
    /// The server ended the stream: connect again.
    ServerEnded,
    /// A cutover failed and was withdrawn: stream on, on new sessions.
    CutoverWithdrawn,
    /// Apply stopped, with everything up to `applied` applied, before the
    /// first row of a source table whose shape the target does not match
    /// (connect again once it does), or before a captured schema change
    /// that was not replayed (connect again once it is decided about).
    ApplyWaits(Waits),
}

/// Why apply waits, and where.
struct Waits {
    /// What differs and the SQL that makes the target match, or the
    /// schema change and why it was not replayed.
    message: String,
    /// Where apply stopped.
    applied: Lsn,
    /// The schema change, when that is what apply waits at.
    ddl: Option<PendingDdl>,
    /// The commit LSN of the transaction apply stopped in, when known:
    /// every transaction before it is applied before apply waits.
    stopped_in: Option<Lsn>,
    /// A schema change failed on the target for want of a table or an
    /// object (one TimescaleDB may have made on the source untraced).
    wants_object: bool,
}

/// Whether `error` is a schema change that failed on the target because a
/// table or another object it names does not exist there.
fn wants_object(error: &pglive_apply::Error) -> bool {
    match error {
        pglive_apply::Error::DdlFailed { source, .. } => source
            .code()
            .is_some_and(|c| matches!(c.code(), "42P01" | "42704")),
        _ => false,
    }
}

/// Why apply waits, if that is what stopped `error`: a source table's
/// shape the target does not match, or a captured schema change that was
/// not replayed.
fn why_apply_waits(error: &Error) -> Option<(String, Option<PendingDdl>)> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<pglive_apply::Error>() {
            if found.is_transient() {
                return None;
            }
            if let Some(pending) = found.pending_ddl() {
                return Some((found.to_string(), Some(pending.clone())));
            }
            if matches!(found, pglive_apply::Error::ShapeMismatch { .. }) {
                return Some((found.to_string(), None));
            }
        }
        cause = current.source();
    }
    None
}

/// How often apply, stopped by a table whose shape the target does not
/// match, tries again.
const SHAPE_RECHECK: Duration = Duration::from_secs(5);

/// Waits until the schema change apply stopped at is decided about
/// (`pglive ddl retry|skip`); false when a stop was asked for first.
async fn decided(
    target: &tokio_postgres::Client,
    name: &str,
    pending: &PendingDdl,
    control: &Control,
) -> Result<bool> {
    loop {
        let log = pglive_apply::ddl_log(target, name).await?;
        let still = log.iter().any(|r| {
            r.lsn == pending.lsn && r.position == pending.position && r.outcome == "pending"
        });
        if !still {
            return Ok(true);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = control.stopped() => return Ok(false),
        }
    }
}

/// One connected stretch of streaming.
async fn session(
    job: &Job,
    record: &Record,
    events: &Arc<dyn Events>,
    control: &Control,
    cutover_when_ready: bool,
    (ignored, waiting, left_since): (
        &mut HashSet<QualifiedName>,
        &mut Option<Lsn>,
        &mut HashMap<QualifiedName, tokio::time::Instant>,
    ),
) -> Result<Stretch> {
    let state_client = connect_sql(&job.target).await?;
    let source_client = connect_sql(&job.source).await?;
    // Captured, a table created on the source arrives through its CREATE.
    let capturing = crate::ddl_capture::installed(&source_client, job.name()).await?;
    // On a TimescaleDB source new tables are adopted after a while, so
    // that they may still become hypertables.
    let timescale_source = source_client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?
        .is_some();
    // Each round connects an applier and a stream; a round ends for good,
    // or after tables created on the source were added to the migration.
    'connect: loop {
        let Session {
            mut applier,
            mut stream,
            protocol_version,
        } = connect(job, record, ignored, events.as_ref()).await?;
        loop {
            let latest: Latest<Progress> = Arc::new(Mutex::new(None));
            let reason: Latest<Reason> = Arc::new(Mutex::new(None));
            let stop = watch_requests(
                [&state_client, &source_client],
                (job, &record.publication),
                control,
                (cutover_when_ready, capturing, timescale_source),
                (&mut *waiting, &mut *left_since),
                (Arc::clone(&latest), Arc::clone(&reason)),
                events.as_ref(),
            );
            let ran = pglive_apply::run(
                &mut applier,
                &mut stream,
                stop,
                &RunOptions::default(),
                |p| {
                    events.event(Event::Streaming(p.clone()));
                    *latest.lock().expect("not poisoned") = Some(p.clone());
                },
            )
            .await;
            let stopped = match ran {
                Ok(stopped) => stopped,
                // Rows of a table created on the source (FOR ALL TABLES
                // publishes it at once) before the periodic check saw it.
                Err(pglive_apply::Error::TableMissing { table }) => {
                    stream.stop().await.ok();
                    drop(applier);
                    events.event(Event::StreamingFinished);
                    // Created and dropped on the source while the migration
                    // ran: the target never needs it.
                    let gone: bool = source_client
                        .query_one("SELECT to_regclass($1) IS NULL", &[&table.quoted()])
                        .await?
                        .get(0);
                    if gone {
                        events.note(
                            Step::Streaming,
                            format!(
                                "{table} was created and dropped on the source during the migration: its changes are skipped"
                            ),
                        );
                        ignored.insert(table);
                        continue 'connect;
                    }
                    let new = publication::tables_not_carried(
                        &source_client,
                        &state_client,
                        (job.name(), &record.publication),
                        &job.filter(),
                    )
                    .await?;
                    if !new.contains(&table) {
                        return Err(pglive_apply::Error::TableMissing { table }.into());
                    }
                    // Captured, the others arrive through their own CREATE
                    // further on in the stream: only this one (made with
                    // its rows by a query) is adopted.
                    let new = match capturing {
                        true => vec![table],
                        false => new,
                    };
                    crate::adopt::adopt(job, record, &new, false, events.as_ref()).await?;
                    continue 'connect;
                }
                Err(error)
                    if !error.is_transient()
                        && (matches!(error, pglive_apply::Error::ShapeMismatch { .. })
                            || error.pending_ddl().is_some()) =>
                {
                    stream.stop().await.ok();
                    events.event(Event::StreamingFinished);
                    return Ok(Stretch::ApplyWaits(Waits {
                        message: error.to_string(),
                        applied: applier.applied_lsn(),
                        stopped_in: error
                            .pending_ddl()
                            .map(|p| p.lsn)
                            .or(applier.current_transaction_lsn()),
                        ddl: error.pending_ddl().cloned(),
                        wants_object: wants_object(&error),
                    }));
                }
                Err(error) => return Err(error.into()),
            };
            let why = reason.lock().expect("not poisoned").clone();
            match (stopped, why) {
                (Stopped::Shutdown, Some(Reason::Cutover { fence })) => {
                    events.event(Event::StreamingFinished);
                    let session = Session {
                        applier,
                        stream,
                        protocol_version,
                    };
                    let error = match cutover::perform(job, record, session, fence, events.as_ref())
                        .await
                    {
                        Ok(summary) => return Ok(Stretch::Done(LiveOutcome::CutOver(summary))),
                        Err(error) => error,
                    };
                    let finishing = state::load(&state_client, job.name())
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|m| m.finishing.is_some());
                    // Withdrawn, with its fence lifted (which the cutover
                    // said): streaming goes on, unless cutting over was all
                    // this run was for. Past its checks, it is finished by
                    // the next attempt instead.
                    let shape = why_apply_waits(&error);
                    if finishing || error.is_transient() || (cutover_when_ready && shape.is_none())
                    {
                        return Err(error);
                    }
                    control.withdraw_cutover();
                    events.note(Step::Cutover, "cutover: streaming goes on");
                    if let Some((message, ddl)) = shape {
                        // Apply waits for the target, then a cutover when
                        // ready is tried again.
                        let applied = pglive_apply::applied_lsn(&state_client, job.name())
                            .await?
                            .unwrap_or(record.start_lsn);
                        return Ok(Stretch::ApplyWaits(Waits {
                            message,
                            applied,
                            stopped_in: ddl.as_ref().map(|p| p.lsn),
                            ddl,
                            wants_object: false,
                        }));
                    }
                    return Ok(Stretch::CutoverWithdrawn);
                }
                (Stopped::Shutdown, Some(Reason::VerifyHold)) => {
                    let paused = pause_for_verify(
                        job,
                        &mut applier,
                        &mut stream,
                        &state_client,
                        events.as_ref(),
                        control,
                    )
                    .await;
                    match paused {
                        Ok(true) => {}
                        Ok(false) => {
                            stream.stop().await.ok();
                            return Ok(Stretch::Done(LiveOutcome::Stopped));
                        }
                        Err(error) => {
                            // The verification cannot reach its point.
                            state::clear_verify_request(&state_client, job.name())
                                .await
                                .ok();
                            let Some((message, ddl)) = why_apply_waits(&error) else {
                                return Err(error);
                            };
                            stream.stop().await.ok();
                            events.event(Event::StreamingFinished);
                            return Ok(Stretch::ApplyWaits(Waits {
                                message,
                                applied: applier.applied_lsn(),
                                stopped_in: ddl
                                    .as_ref()
                                    .map(|p| p.lsn)
                                    .or(applier.current_transaction_lsn()),
                                ddl,
                                wants_object: false,
                            }));
                        }
                    }
                }
                (Stopped::Shutdown, Some(Reason::NotCarried(tables))) => {
                    stream.stop().await.ok();
                    drop(applier);
                    events.event(Event::StreamingFinished);
                    // Capturing, these are tables the capture left for
                    // adoption, made on the target by their replayed CREATE.
                    crate::adopt::adopt(job, record, &tables, capturing, events.as_ref()).await?;
                    continue 'connect;
                }
                (Stopped::Shutdown, _) => {
                    stream.stop().await.ok();
                    return Ok(Stretch::Done(LiveOutcome::Stopped));
                }
                // The server ended the stream (it is shutting down): reconnect.
                (_, _) => return Ok(Stretch::ServerEnded),
            }
        }
    }
}

/// Completes when a stop or a cutover is asked for through `control`,
/// another pglive process asks for a cutover or a verification pause, or a
/// table appears on the source that the migration does not carry; records
/// progress every second. The clients are the target's (state) and the
/// source's.
async fn watch_requests(
    [state_client, source_client]: [&tokio_postgres::Client; 2],
    (job, publication): (&Job, &str),
    control: &Control,
    (cutover_when_ready, capturing, timescale_source): (bool, bool, bool),
    (waiting, left_since): (
        &mut Option<Lsn>,
        &mut HashMap<QualifiedName, tokio::time::Instant>,
    ),
    (latest, reason): (Latest<Progress>, Latest<Reason>),
    events: &dyn Events,
) {
    let name = job.name();
    let set = |r: Reason| *reason.lock().expect("not poisoned") = Some(r);
    // Not at once: after an adoption whose post-data must wait for apply,
    // apply goes on first.
    let mut next_table_check = tokio::time::Instant::now() + NEW_TABLES_EVERY;
    let mut next_slot_check = tokio::time::Instant::now();
    let mut warned_at_risk = false;
    'watch: loop {
        if tokio::time::Instant::now() >= next_slot_check {
            next_slot_check += NEW_TABLES_EVERY;
            // The slot's WAL, for status, and a warning before it is lost.
            if let Ok(Some(wal)) = SlotWal::read(source_client, job.options.slot_name()).await {
                if let Ok(json) = serde_json::to_value(&wal) {
                    let _ = state::save_slot_wal(state_client, name, &json).await;
                }
                if wal.at_risk() && !warned_at_risk {
                    events.warn(
                        Step::Streaming,
                        format!(
                            "the slot holds {} of WAL, more than max_slot_wal_keep_size allows: the source will \
                             invalidate it at its next checkpoint unless apply catches up; raise max_slot_wal_keep_size now",
                            crate::human::bytes(wal.retained_bytes.max(0) as u64)
                        ),
                    );
                }
                warned_at_risk = wal.at_risk();
            }
        }
        if tokio::time::Instant::now() >= next_table_check {
            next_table_check += NEW_TABLES_EVERY;
            if timescale_source {
                // Rare, and a large future: on the heap.
                let due = Box::pin(due_for_adoption(
                    [state_client, source_client],
                    (job, publication),
                    (capturing, false),
                    left_since,
                    events,
                ));
                if let Some(tables) = due.await {
                    return set(Reason::NotCarried(tables));
                }
            } else if !capturing {
                if let Ok(tables) = publication::tables_not_carried(
                    source_client,
                    state_client,
                    (name, publication),
                    &job.filter(),
                )
                .await
                {
                    if !tables.is_empty() {
                        return set(Reason::NotCarried(tables));
                    }
                }
            }
        }
        let fence = 'cutover: {
            tokio::select! {
                () = control.stopped() => return set(Reason::Stop),
                fence = control.cutover_requested() => break 'cutover fence,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let progress = latest.lock().expect("not poisoned").clone();
            if let Some(p) = &progress {
                let _ = state::save_progress(state_client, name, p).await;
                // Past where a table's shape stopped it: the target matched.
                if waiting.is_some_and(|at| p.stats.applied_lsn > at)
                    && state::set_apply_waiting(state_client, name, None)
                        .await
                        .is_ok()
                {
                    *waiting = None;
                    events.note(Step::Streaming, "apply goes on past where it waited");
                }
                if cutover_when_ready && p.lag_bytes < 1 << 20 && p.lag_seconds < 1.0 {
                    break 'cutover false;
                }
            }
            if let Ok(Some(m)) = state::load(state_client, name).await {
                if m.cutover_requested {
                    break 'cutover m.fence;
                }
                // A fence no cutover stands behind (one that failed could not
                // lift it then): lifted as soon as the source answers.
                if m.fence_raised && m.stage == Stage::Streaming {
                    // Rare, and a large future: on the heap.
                    let lift = Box::pin(fence::lift_recorded(&job.source, state_client, name));
                    if let Ok(true) = lift.await {
                        events.note(
                            Step::Streaming,
                            "lifted the fence a cutover that did not finish left on the source: it is writable again",
                        );
                    }
                }
                if m.verify_request == Some(VerifyRequest::Hold) {
                    return set(Reason::VerifyHold);
                }
            }
            continue 'watch;
        };
        // Before a cutover, every table left for adoption is adopted (the
        // request stands, and is taken again after).
        if timescale_source {
            // Rare, and a large future: on the heap.
            let due = Box::pin(due_for_adoption(
                [state_client, source_client],
                (job, publication),
                (capturing, true),
                left_since,
                events,
            ));
            if let Some(tables) = due.await {
                return set(Reason::NotCarried(tables));
            }
        }
        return set(Reason::Cutover { fence });
    }
}

/// On a TimescaleDB source, the new tables due for adoption: those left
/// for it (`publication::left_for_adoption` when `capturing`, else every
/// table not carried) that are hypertables, plain tables waiting longer
/// than [`PLAIN_TABLE_GRACE`], or, with `all`, every one. `left_since`
/// keeps when each was first seen (and is told of it); `None` when none is
/// due or the source cannot be read now (the next check tries again).
async fn due_for_adoption(
    [state_client, source_client]: [&tokio_postgres::Client; 2],
    (job, publication): (&Job, &str),
    (capturing, all): (bool, bool),
    left_since: &mut HashMap<QualifiedName, tokio::time::Instant>,
    events: &dyn Events,
) -> Option<Vec<QualifiedName>> {
    let names = (job.name(), publication);
    let left = if capturing {
        publication::left_for_adoption(source_client, state_client, names, &job.filter())
            .await
            .ok()?
    } else {
        let tables =
            publication::tables_not_carried(source_client, state_client, names, &job.filter())
                .await
                .ok()?;
        let hypertables = pglive_schema::hypertable_names(source_client).await.ok()?;
        tables
            .into_iter()
            .map(|name| publication::LeftTable {
                hypertable: hypertables.contains(&name),
                name,
            })
            .collect()
    };
    let now = tokio::time::Instant::now();
    left_since.retain(|table, _| left.iter().any(|l| &l.name == table));
    let mut due = Vec::new();
    for table in left {
        let since = *left_since.entry(table.name.clone()).or_insert_with(|| {
            if !table.hypertable && !all {
                events.note(
                    Step::Streaming,
                    format!(
                        "new table {} on the source: it joins the migration once it is a hypertable, \
                         or in {} s as a plain table (TimescaleDB refuses create_hypertable() on a table in a publication)",
                        table.name,
                        PLAIN_TABLE_GRACE.as_secs()
                    ),
                );
            }
            now
        });
        if all || table.hypertable || now.duration_since(since) >= PLAIN_TABLE_GRACE {
            due.push(table.name);
        }
    }
    if all && capturing {
        // Before a cutover, a table whose columns the target does not match
        // would be postponed again and again: the cutover is let through,
        // to refuse it by name.
        let listed: Vec<&QualifiedName> = due.iter().collect();
        let differing = crate::columns::differing(job, &listed).await.ok()?;
        due.retain(|t| !differing.iter().any(|d| d.table() == t));
    }
    (!due.is_empty()).then_some(due)
}

/// How long apply stays paused at a verification's point for it to take
/// the target's snapshot (which takes milliseconds).
const VERIFY_PAUSE_PATIENCE: Duration = Duration::from_secs(60);

/// How long apply holds for a verification to take the source's snapshot
/// (longer when transactions open on the source delay it): then it goes
/// on, and the verification tries again.
const VERIFY_HOLD_PATIENCE: Duration = Duration::from_secs(5);

/// The running migrate's side of a live verification's handshake (see
/// [`VerifyRequest`]), with apply stopped at a transaction boundary: holds
/// while the verifier takes the source's snapshot, then applies exactly up
/// to its point and pauses there while the verifier takes the target's,
/// then resumes. False when a stop interrupted it.
async fn pause_for_verify(
    job: &Job,
    applier: &mut Applier,
    stream: &mut ReplicationStream,
    state_client: &tokio_postgres::Client,
    events: &dyn Events,
    control: &Control,
) -> Result<bool> {
    let name = job.name();
    if !state::move_verify_request(state_client, name, VerifyRequest::Hold, VerifyRequest::Held)
        .await?
    {
        return Ok(true);
    }
    let held_since = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + VERIFY_HOLD_PATIENCE;
    let lsn = loop {
        tokio::select! {
            () = control.stopped() => {
                state::clear_verify_request(state_client, name).await?;
                return Ok(false);
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        match state::verify_request(state_client, name).await? {
            Some(VerifyRequest::Requested(lsn)) => break lsn,
            Some(VerifyRequest::Held) if tokio::time::Instant::now() < deadline => {}
            Some(VerifyRequest::Held) => {
                let given_up = state::move_verify_request(
                    state_client,
                    name,
                    VerifyRequest::Held,
                    VerifyRequest::Missed,
                )
                .await?;
                if given_up {
                    return Ok(true);
                }
            }
            // Withdrawn.
            _ => return Ok(true),
        }
    };
    if applier.applied_lsn() > lsn {
        // Cannot happen while apply held before the point was taken; the
        // verifier starts over if it does.
        state::move_verify_request(
            state_client,
            name,
            VerifyRequest::Requested(lsn),
            VerifyRequest::Missed,
        )
        .await?;
        return Ok(true);
    }
    events.note(
        Step::Verify,
        format!("verify: pausing apply at {lsn} for a consistent comparison"),
    );
    let mut options = RunOptions::default();
    options.pause_before = Some(lsn);
    let stopped = pglive_apply::run(applier, stream, control.stopped(), &options, |p| {
        events.event(Event::Streaming(p.clone()))
    })
    .await?;
    if stopped != Stopped::Paused(lsn) {
        state::clear_verify_request(state_client, name).await?;
        return Ok(false);
    }
    state::move_verify_request(
        state_client,
        name,
        VerifyRequest::Requested(lsn),
        VerifyRequest::Paused(lsn),
    )
    .await?;
    // The verifier only takes the target's snapshot now; a verifier that
    // went away must not hold apply.
    let deadline = std::time::Instant::now() + VERIFY_PAUSE_PATIENCE;
    loop {
        tokio::select! {
            () = control.stopped() => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let pending = state::verify_request(state_client, name).await?;
        if pending != Some(VerifyRequest::Paused(lsn))
            || std::time::Instant::now() > deadline
            || !state::verify_is_running(state_client, name).await?
        {
            break;
        }
    }
    if state::verify_request(state_client, name).await? == Some(VerifyRequest::Paused(lsn)) {
        state::clear_verify_request(state_client, name).await?;
    }
    applier.resume().await?;
    events.note(
        Step::Verify,
        format!(
            "verify: apply resumed, after holding {:.1}s for the comparison's point",
            held_since.elapsed().as_secs_f64()
        ),
    );
    Ok(!control.stop_requested())
}

/// Applies exactly up to `lsn` and holds there (resume with
/// `Applier::resume`).
pub(crate) async fn pause_at(session: &mut Session, lsn: Lsn, events: &dyn Events) -> Result<()> {
    let mut options = RunOptions::default();
    options.pause_before = Some(lsn);
    // A large transaction still in progress at the point keeps apply from
    // getting there until it ends: not forever.
    let patience = tokio::time::sleep(PAUSE_PATIENCE);
    run_to(session, &options, (lsn, patience), events, |s| {
        matches!(s, Stopped::Paused(_))
    })
    .await
}

/// How long apply may take to reach a point it is asked to pause at.
const PAUSE_PATIENCE: Duration = Duration::from_secs(600);

/// Runs the applier until everything up to `stop_at` is applied.
pub(crate) async fn catch_up(
    session: &mut Session,
    stop_at: Lsn,
    events: &dyn Events,
) -> Result<()> {
    let mut options = RunOptions::default();
    options.stop_at = Some(stop_at);
    run_to(
        session,
        &options,
        (stop_at, std::future::pending()),
        events,
        |s| matches!(s, Stopped::ReachedLsn(_)),
    )
    .await
}

/// Runs the applier with `options` until it stops (or `give_up`
/// completes); an error unless it stopped as `reached` expects at `lsn`.
async fn run_to(
    session: &mut Session,
    options: &RunOptions,
    (lsn, give_up): (Lsn, impl std::future::Future<Output = ()>),
    events: &dyn Events,
    reached: fn(&Stopped) -> bool,
) -> Result<()> {
    let stopped = pglive_apply::run(
        &mut session.applier,
        &mut session.stream,
        give_up,
        options,
        |p| events.event(Event::Streaming(p.clone())),
    )
    .await?;
    if reached(&stopped) {
        Ok(())
    } else {
        Err(Error::CatchUpStopped {
            lsn,
            how: format!("{stopped:?}"),
        })
    }
}
