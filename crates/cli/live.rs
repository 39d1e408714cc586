//! The streaming stage: apply the slot's changes until cutover, reconnecting
//! with backoff when either server goes away.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use pglive_apply::{Applier, ApplyOptions, Progress, RunOptions, Stopped};
use pglive_postgres::QualifiedName;
use pglive_postgres::connect_sql;
use pglive_repl::{
    PgOutputOptions, ReplicationClient, ReplicationStream, StreamOptions, Streaming,
};

use crate::Interrupt;
use crate::cutover;
use crate::keys::CutoverKeys;
use crate::migrate::Job;
use crate::report::Reporter;
use crate::state::{self, Migration};

/// How streaming ended.
pub enum LiveOutcome {
    /// Ctrl-C: the last complete transaction is committed; resumable.
    Interrupted,
    /// Cutover finished.
    CutoverDone,
}

/// Why the apply loop was asked to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reason {
    Interrupt,
    Cutover {
        fence: bool,
    },
    Verify(pglive_postgres::Lsn),
    /// Source tables the migration does not carry yet (see
    /// `publication::tables_not_carried`).
    NotCarried(Vec<pglive_postgres::QualifiedName>),
}

/// How often streaming looks for tables created on the source.
const NEW_TABLES_EVERY: Duration = Duration::from_secs(10);

/// A connected applier and stream, ready to run.
pub struct Session {
    pub applier: Applier,
    pub stream: ReplicationStream,
}

/// Connects an applier to the target and a stream from the slot, resuming
/// from the applied position.
pub async fn connect(
    ctx: &Job,
    migration: &Migration,
    ignored: &HashSet<QualifiedName>,
) -> Result<Session> {
    let target = connect_sql(&ctx.target).await?;
    let copied_at: HashMap<QualifiedName, pglive_postgres::Lsn> =
        pglive_snapshot::copied_at(&target, &ctx.name)
            .await?
            .into_iter()
            .map(|(name, lsn)| (QualifiedName::new(name.schema, name.name), lsn))
            .collect();
    drop(target);
    let replication = ReplicationClient::connect(&ctx.source).await?;
    let proto = if replication.server_version_num().unwrap_or(0) >= 140000 {
        2
    } else {
        1
    };
    let mut options = ApplyOptions::new(ctx.name.clone(), proto);
    options.copied_at = copied_at;
    options.ignored_tables = ignored.clone();
    options.sessions = ctx.apply_sessions;
    let applier = Applier::connect(&ctx.target, options).await?;
    let publications = {
        let source = connect_sql(&ctx.source).await?;
        crate::publication::stream_names(&source, &migration.publication).await?
    };
    let mut pgoutput = PgOutputOptions::new(publications);
    pgoutput.proto_version = proto;
    if proto >= 2 {
        pgoutput.streaming = Streaming::On;
    }
    let start = applier.applied_lsn().max(migration.start_lsn);
    let stream = replication
        .start_replication(&migration.slot, start, &pgoutput, StreamOptions::default())
        .await
        .with_context(|| format!("starting replication from slot {:?}", migration.slot))?;
    Ok(Session { applier, stream })
}

/// Whether an error is worth a reconnect.
pub fn transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<pglive_apply::Error>()
            .is_some_and(pglive_apply::Error::is_transient)
            || cause
                .downcast_ref::<pglive_repl::Error>()
                .is_some_and(pglive_repl::Error::is_transient)
    })
}

pub async fn stream(
    ctx: &Job,
    migration: &Migration,
    reporter: &Arc<Reporter>,
    interrupt: &Interrupt,
    cutover_when_ready: bool,
) -> Result<LiveOutcome> {
    let keys = CutoverKeys::listen();
    reporter.line(if keys.listening() {
        format!(
            "streaming changes from slot {:?}; when ready type c + Enter to cut over \
             (f + Enter: fence writes first) or run `pglive cutover` elsewhere; Ctrl-C pauses",
            migration.slot
        )
    } else {
        format!(
            "streaming changes from slot {:?}; run `pglive cutover` (or Ctrl-C to pause) when ready",
            migration.slot
        )
    });
    let mut backoff = Duration::from_secs(1);
    // Tables created and dropped on the source during the migration.
    let mut ignored = HashSet::new();
    loop {
        match session(
            ctx,
            migration,
            reporter,
            interrupt,
            &keys,
            cutover_when_ready,
            &mut ignored,
        )
        .await
        {
            Ok(Some(outcome)) => {
                reporter.streaming_finished();
                return Ok(outcome);
            }
            Ok(None) => {
                reporter.line(format!(
                    "the source ended the stream (shutting down?); reconnecting in {}s",
                    backoff.as_secs()
                ));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = interrupt.wait() => return Ok(LiveOutcome::Interrupted),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) if transient(&error) && !interrupt.requested() => {
                reporter.line(format!(
                    "connection lost ({}); reconnecting in {}s",
                    crate::preflight::chain(error.as_ref()),
                    backoff.as_secs()
                ));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = interrupt.wait() => return Ok(LiveOutcome::Interrupted),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                reporter.streaming_finished();
                return Err(error);
            }
        }
    }
}

async fn session(
    ctx: &Job,
    migration: &Migration,
    reporter: &Arc<Reporter>,
    interrupt: &Interrupt,
    keys: &CutoverKeys,
    cutover_when_ready: bool,
    ignored: &mut HashSet<QualifiedName>,
) -> Result<Option<LiveOutcome>> {
    let state_client = connect_sql(&ctx.target).await?;
    let source_client = connect_sql(&ctx.source).await?;
    // Each round connects an applier and a stream; a round ends for good,
    // or after tables created on the source were added to the migration.
    'connect: loop {
        let Session {
            mut applier,
            mut stream,
        } = connect(ctx, migration, ignored).await?;
        loop {
            let latest: Arc<Mutex<Option<Progress>>> = Arc::new(Mutex::new(None));
            let reason: Arc<Mutex<Option<Reason>>> = Arc::new(Mutex::new(None));
            let stop = watch_requests(
                [&state_client, &source_client],
                ctx,
                interrupt,
                keys,
                cutover_when_ready,
                Arc::clone(&latest),
                Arc::clone(&reason),
            );
            let display = Arc::clone(reporter);
            let ran = pglive_apply::run(
                &mut applier,
                &mut stream,
                stop,
                &RunOptions::default(),
                |p| {
                    display.streaming(p);
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
                    reporter.streaming_finished();
                    // Created and dropped on the source while the migration
                    // ran: the target never needs it.
                    let gone: bool = source_client
                        .query_one("SELECT to_regclass($1) IS NULL", &[&table.quoted()])
                        .await?
                        .get(0);
                    if gone {
                        reporter.line(format!(
                            "{table} was created and dropped on the source during the migration: its changes are skipped"
                        ));
                        ignored.insert(table);
                        continue 'connect;
                    }
                    let new = crate::publication::tables_not_carried(
                        &source_client,
                        &state_client,
                        &ctx.name,
                        &ctx.filter(),
                    )
                    .await?;
                    if !new.contains(&table) {
                        return Err(pglive_apply::Error::TableMissing { table }.into());
                    }
                    crate::adopt::adopt(ctx, migration, &new, reporter).await?;
                    continue 'connect;
                }
                Err(error) => return Err(error.into()),
            };
            let why = reason.lock().expect("not poisoned").clone();
            match (stopped, why) {
                (Stopped::Shutdown, Some(Reason::Cutover { fence })) => {
                    reporter.streaming_finished();
                    cutover::perform(ctx, migration, Session { applier, stream }, fence, reporter)
                        .await?;
                    return Ok(Some(LiveOutcome::CutoverDone));
                }
                (Stopped::Shutdown, Some(Reason::Verify(lsn))) => {
                    if !pause_for_verify(
                        ctx,
                        &mut applier,
                        &mut stream,
                        lsn,
                        &state_client,
                        reporter,
                        interrupt,
                    )
                    .await?
                    {
                        stream.stop().await.ok();
                        return Ok(Some(LiveOutcome::Interrupted));
                    }
                }
                (Stopped::Shutdown, Some(Reason::NotCarried(tables))) => {
                    stream.stop().await.ok();
                    drop(applier);
                    reporter.streaming_finished();
                    crate::adopt::adopt(ctx, migration, &tables, reporter).await?;
                    continue 'connect;
                }
                (Stopped::Shutdown, _) => {
                    stream.stop().await.ok();
                    return Ok(Some(LiveOutcome::Interrupted));
                }
                // The server ended the stream (it is shutting down): reconnect.
                (_, _) => return Ok(None),
            }
        }
    }
}

/// Completes when Ctrl-C is pressed, a cutover is typed, another pglive
/// process asks for a cutover or a verification pause, or a table appears
/// on the source that the migration does not carry; records progress
/// every second. The clients are the target's (state) and the source's.
async fn watch_requests(
    [state_client, source_client]: [&tokio_postgres::Client; 2],
    ctx: &Job,
    interrupt: &Interrupt,
    keys: &CutoverKeys,
    cutover_when_ready: bool,
    latest: Arc<Mutex<Option<Progress>>>,
    reason: Arc<Mutex<Option<Reason>>>,
) {
    let name = ctx.name.as_str();
    let set = |r: Reason| *reason.lock().expect("not poisoned") = Some(r);
    // Not at once: after an adoption whose post-data must wait for apply,
    // apply goes on first.
    let mut next_table_check = tokio::time::Instant::now() + NEW_TABLES_EVERY;
    loop {
        if tokio::time::Instant::now() >= next_table_check {
            next_table_check += NEW_TABLES_EVERY;
            if let Ok(tables) = crate::publication::tables_not_carried(
                source_client,
                state_client,
                &ctx.name,
                &ctx.filter(),
            )
            .await
            {
                if !tables.is_empty() {
                    return set(Reason::NotCarried(tables));
                }
            }
        }
        tokio::select! {
            () = interrupt.wait() => return set(Reason::Interrupt),
            fence = keys.wait() => return set(Reason::Cutover { fence }),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let progress = latest.lock().expect("not poisoned").clone();
        if let Some(p) = &progress {
            let _ = state::save_progress(state_client, name, p).await;
            if cutover_when_ready && p.lag_bytes < 1 << 20 && p.lag_seconds < 1.0 {
                return set(Reason::Cutover { fence: false });
            }
        }
        if let Ok(Some(m)) = state::load(state_client, name).await {
            if m.cutover_requested {
                return set(Reason::Cutover { fence: m.fence });
            }
            if let Some((lsn, request)) = m.verify_request {
                if request == "requested" {
                    return set(Reason::Verify(lsn));
                }
            }
        }
    }
}

/// Applies exactly up to `lsn`, holds there while `pglive verify` compares,
/// then resumes. False when Ctrl-C interrupted the pause.
async fn pause_for_verify(
    ctx: &Job,
    applier: &mut Applier,
    stream: &mut ReplicationStream,
    lsn: pglive_postgres::Lsn,
    state_client: &tokio_postgres::Client,
    reporter: &Reporter,
    interrupt: &Interrupt,
) -> Result<bool> {
    if applier.applied_lsn() > lsn {
        // Already past the verifier's snapshot: it will take a newer one.
        state::set_verify_state(state_client, &ctx.name, Some("missed")).await?;
        return Ok(true);
    }
    reporter.line(format!(
        "verify: pausing apply at {lsn} for a consistent comparison"
    ));
    let mut options = RunOptions::default();
    options.pause_before = Some(lsn);
    let stopped = pglive_apply::run(applier, stream, interrupt.wait(), &options, |p| {
        reporter.streaming(p)
    })
    .await?;
    if stopped != Stopped::Paused(lsn) {
        state::set_verify_state(state_client, &ctx.name, None).await?;
        return Ok(false);
    }
    state::set_verify_state(state_client, &ctx.name, Some("paused")).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        tokio::select! {
            () = interrupt.wait() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let pending = state::verify_request(state_client, &ctx.name).await?;
        if pending.is_none_or(|(at, _)| at != lsn) || std::time::Instant::now() > deadline {
            break;
        }
    }
    applier.resume().await?;
    reporter.line("verify: apply resumed");
    Ok(!interrupt.requested())
}

/// Runs the applier until everything up to `stop_at` is applied.
pub async fn catch_up(
    session: &mut Session,
    stop_at: pglive_postgres::Lsn,
    reporter: &Reporter,
) -> Result<()> {
    let mut options = RunOptions::default();
    options.stop_at = Some(stop_at);
    let stopped = pglive_apply::run(
        &mut session.applier,
        &mut session.stream,
        std::future::pending(),
        &options,
        |p| reporter.streaming(p),
    )
    .await?;
    match stopped {
        Stopped::ReachedLsn(_) => Ok(()),
        other => anyhow::bail!("catching up to {stop_at} stopped early ({other:?})"),
    }
}
