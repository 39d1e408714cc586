//! The apply loop: one `select!` over shutdown, finished target work, idle
//! commit and new WAL.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pglive_postgres::{Lsn, PgTimestamp};
use pglive_repl::{ReplicationEvent, ReplicationStream};

use crate::applier::{Applier, ApplyStats};
use crate::error::Result;

/// How often to ask the server where it is while waiting for a position.
const PING: Duration = Duration::from_millis(100);

/// When the loop commits and when it stops.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunOptions {
    /// Commit complete transactions once the stream has been quiet this
    /// long, so lag stays low when the source is not busy.
    pub idle_commit: Duration,
    /// Stop once everything up to this source position is applied (the
    /// cutover: the source's current LSN after writes stopped).
    pub stop_at: Option<Lsn>,
    /// Stop with every transaction that commits before this position
    /// applied and none at or after it (a consistent point to compare the
    /// target with a source snapshot exported at it); see
    /// [`Applier::pause_before`].
    pub pause_before: Option<Lsn>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            idle_commit: Duration::from_millis(20),
            stop_at: None,
            pause_before: None,
        }
    }
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// The shutdown future completed; the last complete transaction is
    /// committed.
    Shutdown,
    /// Everything up to [`RunOptions::stop_at`] is applied.
    ReachedLsn(Lsn),
    /// Everything before [`RunOptions::pause_before`] is applied and
    /// nothing after it; the applier holds the next transaction until
    /// [`Applier::resume`].
    Paused(Lsn),
    /// The server ended the stream.
    StreamEnded,
}

/// Where the migration stands, for progress displays.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Progress {
    /// The applier's counters.
    pub stats: ApplyStats,
    /// The highest WAL position received.
    pub received_lsn: Lsn,
    /// The source's end of WAL at its last message.
    pub source_lsn: Lsn,
    /// Bytes of WAL between the applied position and the source's end.
    pub lag_bytes: u64,
    /// Seconds between the source's clock and the commit time of the last
    /// applied transaction; 0 when caught up.
    pub lag_seconds: f64,
}

/// Applies the stream until `shutdown` completes, `stop_at` is reached or
/// the stream ends. The position confirmed to the source follows only what
/// the target committed. `on_progress` is called after every message; keep
/// it cheap (throttle displays yourself). Whatever way it returns, no work
/// is left running on the target.
pub async fn run(
    applier: &mut Applier,
    stream: &mut ReplicationStream,
    shutdown: impl Future<Output = ()>,
    options: &RunOptions,
    on_progress: impl FnMut(&Progress),
) -> Result<Stopped> {
    let stopped = run_until(applier, stream, shutdown, options, on_progress).await;
    let settled = applier.settle().await;
    stream.feedback().set_flushed(applier.confirmable_lsn());
    let stopped = stopped?;
    settled?;
    Ok(stopped)
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Event(Option<pglive_repl::Result<ReplicationEvent>>),
    IdleCommit,
    Settled(Result<()>),
    Ping,
}

/// The loop of [`run`], which settles the target work and reports the
/// flushed position after it, however it returns.
async fn run_until(
    applier: &mut Applier,
    stream: &mut ReplicationStream,
    shutdown: impl Future<Output = ()>,
    options: &RunOptions,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Stopped> {
    let feedback = stream.feedback();
    feedback.set_flushed(applier.confirmable_lsn());
    applier.pause_before(options.pause_before);
    futures_util::pin_mut!(shutdown);
    let mut shutting_down = false;
    let mut last_ping: Option<Instant> = None;
    // When to commit if no more data arrives; keepalives do not move it.
    let mut idle_deadline: Option<tokio::time::Instant> = None;
    loop {
        let mut waiting_for_position = false;
        if let Some(pause) = options.pause_before {
            let reached =
                applier.is_holding() || (applier.is_idle() && applier.confirmable_lsn() >= pause);
            if reached && !applier.in_transaction() {
                applier.commit().await?;
                return Ok(Stopped::Paused(pause));
            }
            waiting_for_position |= applier.is_idle();
        }
        if let Some(stop) = options.stop_at {
            if applier.is_idle() && applier.confirmable_lsn() >= stop {
                return Ok(Stopped::ReachedLsn(applier.confirmable_lsn()));
            }
            waiting_for_position |= applier.is_idle();
        }
        // A position the server told while apply was busy is not taken
        // (only an idle applier may confirm it), and the server tells it
        // again only when it sends more: on a source that writes nothing
        // more, apply would never count as caught up. Ask again.
        waiting_for_position |=
            applier.is_idle() && applier.confirmable_lsn() < feedback.server_wal_end();
        // Ask the server for a keepalive, which tells where it is; at most
        // every PING so an idle stream does not become a ping-pong.
        if waiting_for_position && last_ping.is_none_or(|t: Instant| t.elapsed() >= PING) {
            feedback.request_reply();
            last_ping = Some(Instant::now());
        }
        if shutting_down && !applier.in_transaction() {
            applier.commit().await?;
            return Ok(Stopped::Shutdown);
        }
        let idle_commit = applier.has_uncommitted() && !applier.in_transaction();
        let busy = applier.is_busy();
        // select! builds every branch's future, disabled ones too: the
        // timers are made inside async blocks so that a message costs no
        // timer when they are off (nearly always while a backlog streams).
        let wake = tokio::select! {
            biased;
            () = &mut shutdown, if !shutting_down => Wake::Shutdown,
            result = applier.settle(), if busy => Wake::Settled(result),
            event = stream.next() => Wake::Event(event),
            () = async {
                let deadline = idle_deadline
                    .unwrap_or_else(|| tokio::time::Instant::now() + options.idle_commit);
                tokio::time::sleep_until(deadline).await;
            }, if idle_commit => Wake::IdleCommit,
            () = async { tokio::time::sleep(PING).await }, if waiting_for_position => Wake::Ping,
        };
        let event = match wake {
            Wake::Shutdown => {
                shutting_down = true;
                continue;
            }
            Wake::Settled(result) => {
                result?;
                feedback.set_flushed(applier.confirmable_lsn());
                on_progress(&progress(applier, &feedback));
                continue;
            }
            Wake::IdleCommit => {
                applier.start_commit().await?;
                idle_deadline = None;
                continue;
            }
            Wake::Ping => continue,
            Wake::Event(event) => event,
        };
        match event {
            None => {
                if !applier.in_transaction() {
                    applier.commit().await?;
                }
                return Ok(Stopped::StreamEnded);
            }
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(ReplicationEvent::XLogData { data, .. })) => {
                applier.apply(data).await?;
                idle_deadline = Some(tokio::time::Instant::now() + options.idle_commit);
            }
            Some(Ok(ReplicationEvent::Keepalive { wal_end, .. })) => {
                applier.note_server_position(wal_end);
            }
            Some(Ok(_)) => {}
        }
        feedback.set_flushed(applier.confirmable_lsn());
        on_progress(&progress(applier, &feedback));
    }
}

fn progress(applier: &Applier, feedback: &pglive_repl::Feedback) -> Progress {
    let stats = applier.stats().clone();
    let source_lsn = feedback.server_wal_end();
    let caught_up = applier.is_idle() && applier.confirmable_lsn() >= source_lsn;
    let lag_seconds = match stats.applied_commit_time {
        Some(commit) if !caught_up => {
            let server = feedback.server_time().0.max(PgTimestamp::now().0);
            (server - commit.0).max(0) as f64 / 1e6
        }
        _ => 0.0,
    };
    Progress {
        lag_bytes: source_lsn.bytes_since(applier.confirmable_lsn()),
        received_lsn: feedback.received(),
        source_lsn,
        lag_seconds,
        stats,
    }
}
