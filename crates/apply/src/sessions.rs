//! Execution, the last step: the target sessions, and one batch's
//! statements (and optionally its commit) running on them in a background
//! task while the applier decodes and plans the next batch.
//!
//! At most one piece of work is in flight, and each starts only after the
//! previous one finished, so the target sees exactly the statement order a
//! sequential applier would send. What changes is only that receiving,
//! decoding and planning overlap with the target's execution.
//!
//! A whole batch may also be spread over several sessions ("lanes", see
//! `lanes`): each lane gets the rows whose key hashes to it, in their
//! order, and commits them with its own recorded position. The next piece
//! of work still starts only after every lane finished.

use std::sync::Arc;

use pglive_postgres::{Lsn, PgTimestamp};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use pglive_postgres::{ConnectConfig, connect_sql};

use crate::batcher::Segment;
use crate::ddl::DdlStep;
use crate::error::{Error, Result, target};
use crate::execute::{self, StatementCache};
use crate::lanes;
use crate::plan::Statement;
use crate::progress::{self, Record};
use crate::table::TableMap;

/// What one piece of work does on the target.
pub(crate) struct Work {
    /// Open the target transaction first (it is not open yet).
    pub begin: bool,
    pub segments: Vec<Segment>,
    /// The source position reported when a statement finds fewer rows than
    /// the source changed.
    pub lsn: Lsn,
    /// Record this applied position and commit: the end LSN and commit time
    /// of the batch's last source transaction.
    pub commit: Option<(Lsn, PgTimestamp)>,
    /// The stream's rows in `pglive.apply_progress`.
    pub stream_id: String,
    /// On which sessions the work runs.
    pub run_as: RunAs,
}

/// On which sessions a piece of work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunAs {
    /// Everything on the first session, which records lanes
    /// `0`…`lanes - 1` (those of an earlier run while they are caught up
    /// after a crash).
    OneSession { lanes: usize },
    /// The rows spread over every session by key, one transaction per lane
    /// (only for a whole batch: `begin` and `commit`, and no truncate).
    Spread,
}

/// What finished work did.
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub truncates: u64,
    /// The position now committed on the target, when the work committed.
    pub committed: Option<(Lsn, PgTimestamp)>,
}

impl Done {
    fn add(&mut self, other: Done) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.truncates += other.truncates;
        self.committed = self.committed.or(other.committed);
    }
}

/// The target sessions, one per lane, and the work running on them.
pub(crate) struct Sessions {
    clients: Vec<Arc<Client>>,
    /// The prepared statements of each session; away while work is in
    /// flight.
    caches: Option<Vec<StatementCache>>,
    in_flight: Option<InFlight>,
}

impl Sessions {
    /// Opens `count` sessions on the target; whether all of them may set
    /// `session_replication_role = replica`.
    pub async fn open(target: &ConnectConfig, count: usize) -> Result<(Sessions, bool)> {
        let opened = futures_util::future::join_all((0..count).map(|_| open_session(target))).await;
        let mut clients = Vec::with_capacity(opened.len());
        let mut replica_role = true;
        for session in opened {
            let (client, role) = session?;
            replica_role &= role;
            clients.push(Arc::new(client));
        }
        let sessions = Sessions {
            caches: Some(new_caches(clients.len())),
            clients,
            in_flight: None,
        };
        Ok((sessions, replica_role))
    }

    /// The first session, which runs everything that is not spread.
    pub fn first(&self) -> &Client {
        &self.clients[0]
    }

    /// How many sessions (lanes) there are.
    pub fn count(&self) -> usize {
        self.clients.len()
    }

    /// Whether work is running on the target.
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts `work`; the previous work must be settled.
    pub fn start(&mut self, work: Work) {
        let caches = self
            .caches
            .take()
            .unwrap_or_else(|| new_caches(self.clients.len()));
        let lanes = Lanes {
            clients: self.clients.clone(),
            caches,
        };
        self.in_flight = Some(InFlight::start(lanes, work));
    }

    /// Waits for the work in flight, if any, and returns what it did.
    /// Cancel-safe: dropped early, the work stays in flight.
    pub async fn settle(&mut self) -> Result<Option<Done>> {
        let Some(in_flight) = &mut self.in_flight else {
            return Ok(None);
        };
        let finished = in_flight.finish().await;
        self.in_flight = None;
        let (caches, done) = finished?;
        self.caches = Some(caches);
        done.map(Some)
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        // Whatever the task has not committed is rolled back when its
        // session closes; a later applier waits for that (see
        // `progress::load`).
        if let Some(in_flight) = &self.in_flight {
            in_flight.abort();
        }
    }
}

/// The sessions and their statement caches, lent to one piece of work.
struct Lanes {
    clients: Vec<Arc<Client>>,
    caches: Vec<StatementCache>,
}

/// Work running on the target.
struct InFlight {
    handle: JoinHandle<(Vec<StatementCache>, Result<Done>)>,
}

impl InFlight {
    /// Starts `work` on the target. The statement caches travel with the
    /// work and come back when it is done.
    fn start(lanes: Lanes, work: Work) -> InFlight {
        InFlight {
            handle: tokio::spawn(async move {
                match work.run_as {
                    RunAs::OneSession { lanes: count } => perform_on_one(lanes, work, count).await,
                    RunAs::Spread => perform_spread(lanes, work).await,
                }
            }),
        }
    }

    /// Waits for the work to finish. Cancel-safe: dropping the future
    /// leaves the work running and `self` waitable again.
    async fn finish(&mut self) -> Result<(Vec<StatementCache>, Result<Done>)> {
        (&mut self.handle)
            .await
            .map_err(|e| Error::Protocol(format!("the target task ended abnormally: {e}")))
    }

    /// Stops the work: the target sessions are closed by the tasks' end,
    /// and the server rolls back whatever they did not commit.
    fn abort(&self) {
        self.handle.abort();
    }
}

/// One step of a lane's work.
enum Step {
    Statements(Arc<TableMap>, Vec<Statement>),
    Truncate {
        tables: Vec<Arc<TableMap>>,
        cascade: bool,
        restart_identity: bool,
    },
    Ddl(DdlStep),
}

/// The segments' statements, in the order they must run.
fn steps(segments: Vec<Segment>) -> Vec<Step> {
    let mut steps = Vec::new();
    for segment in segments {
        match segment {
            Segment::Tables(plans) => {
                for (map, plan) in plans {
                    steps.push(Step::Statements(map, plan.finish()));
                }
            }
            Segment::Truncate {
                tables,
                cascade,
                restart_identity,
            } => steps.push(Step::Truncate {
                tables,
                cascade,
                restart_identity,
            }),
            Segment::Ddl(step) => steps.push(Step::Ddl(step)),
        }
    }
    steps
}

/// How a lane opens, reports and ends its part of the work.
struct LaneWork {
    begin: bool,
    lsn: Lsn,
    commit: Option<(Lsn, PgTimestamp)>,
    stream_id: String,
    record: Record,
    spread_tables: Vec<String>,
}

/// Aborts the lane tasks when the batch task is aborted (or ends early).
struct AbortOnDrop(Vec<JoinHandle<(StatementCache, Result<Done>)>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Runs the work on the first session, which records `lanes` lanes.
async fn perform_on_one(
    sessions: Lanes,
    work: Work,
    lanes: usize,
) -> (Vec<StatementCache>, Result<Done>) {
    let Lanes {
        clients,
        mut caches,
    } = sessions;
    let lane_work = LaneWork {
        begin: work.begin,
        lsn: work.lsn,
        commit: work.commit,
        stream_id: work.stream_id,
        record: Record::AllLanes(lanes),
        spread_tables: Vec::new(),
    };
    let result = perform(&clients[0], &mut caches[0], steps(work.segments), lane_work).await;
    (caches, result)
}

/// Splits a whole batch by lane and runs the lanes at once, one
/// transaction each; every lane records its own position, even one without
/// rows, so all lanes stay at the same batch boundary, and the tables the
/// batch spread.
async fn perform_spread(sessions: Lanes, work: Work) -> (Vec<StatementCache>, Result<Done>) {
    let Lanes { clients, caches } = sessions;
    let count = clients.len();
    let mut by_lane: Vec<Vec<Step>> = (0..count).map(|_| Vec::new()).collect();
    let mut spread_tables = Vec::new();
    for step in steps(work.segments) {
        match step {
            Step::Statements(map, statements) => {
                if map.spread {
                    spread_tables.push(map.quoted.clone());
                }
                for (lane, part) in lanes::split_statements(&map, statements, count)
                    .into_iter()
                    .enumerate()
                {
                    if !part.is_empty() {
                        by_lane[lane].push(Step::Statements(map.clone(), part));
                    }
                }
            }
            Step::Truncate { .. } | Step::Ddl(_) => {
                return (
                    caches,
                    Err(Error::Protocol(
                        "a truncate or a schema change in a batch spread over lanes".to_owned(),
                    )),
                );
            }
        }
    }
    spread_tables.sort();
    spread_tables.dedup();
    let mut tasks = AbortOnDrop(Vec::with_capacity(count));
    for (lane, ((client, mut cache), steps)) in
        clients.into_iter().zip(caches).zip(by_lane).enumerate()
    {
        let lane_work = LaneWork {
            begin: work.begin,
            lsn: work.lsn,
            commit: work.commit,
            stream_id: work.stream_id.clone(),
            record: Record::Lane(lane),
            spread_tables: spread_tables.clone(),
        };
        tasks.0.push(tokio::spawn(async move {
            let result = perform(&client, &mut cache, steps, lane_work).await;
            (cache, result)
        }));
    }
    let mut caches = Vec::with_capacity(count);
    let mut done = Ok(Done::default());
    for handle in &mut tasks.0 {
        match handle.await {
            Ok((cache, result)) => {
                caches.push(cache);
                match (&mut done, result) {
                    (Ok(total), Ok(lane)) => total.add(lane),
                    (Ok(_), Err(e)) => done = Err(e),
                    (Err(_), _) => {}
                }
            }
            Err(e) => {
                caches.push(StatementCache::default());
                if done.is_ok() {
                    done = Err(Error::Protocol(format!(
                        "a target lane task ended abnormally: {e}"
                    )));
                }
            }
        }
    }
    (caches, done)
}

async fn perform(
    client: &Client,
    cache: &mut StatementCache,
    steps: Vec<Step>,
    work: LaneWork,
) -> Result<Done> {
    let mut done = Done::default();
    let begin = work
        .begin
        .then(|| progress::begin_sql(&work.stream_id, work.record));
    let commit = work.commit.map(|(lsn, commit_time)| {
        let seconds = commit_time
            .to_system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let sql = progress::save_and_commit_sql(
            &work.stream_id,
            work.record,
            lsn,
            seconds,
            &work.spread_tables,
        );
        (lsn, commit_time, sql)
    });
    if let (Some(begin), true, Some((lsn, commit_time, commit))) =
        (&begin, steps.is_empty(), &commit)
    {
        // Nothing to change in this lane: record its position in one round
        // trip.
        client
            .batch_execute(&format!("{begin}; {commit}"))
            .await
            .map_err(target(format!("recording the applied position {lsn}")))?;
        done.committed = Some((*lsn, *commit_time));
        return Ok(done);
    }
    if let Some(begin) = begin {
        client
            .batch_execute(&begin)
            .await
            .map_err(target("beginning a batch"))?;
    }
    for step in steps {
        match step {
            Step::Statements(map, statements) => {
                for statement in statements {
                    match execute::execute(client, cache, &map, &statement).await? {
                        Ok(outcome) => {
                            done.inserted += outcome.inserted;
                            done.updated += outcome.updated;
                            done.deleted += outcome.deleted;
                        }
                        Err((operation, expected, matched)) => {
                            return Err(Error::RowsMissing {
                                table: map.name.to_string(),
                                operation,
                                expected,
                                matched,
                                lsn: work.lsn,
                            });
                        }
                    }
                }
            }
            Step::Truncate {
                tables,
                cascade,
                restart_identity,
            } => {
                let refs: Vec<&TableMap> = tables.iter().map(|t| t.as_ref()).collect();
                execute::truncate(client, &refs, cascade, restart_identity).await?;
                done.truncates += 1;
            }
            Step::Ddl(step) => {
                step.perform(client, &work.stream_id).await?;
                // Statements prepared before may describe the old shapes.
                *cache = StatementCache::default();
            }
        }
    }
    if let Some((lsn, commit_time, sql)) = commit {
        client.batch_execute(&sql).await.map_err(target(format!(
            "recording the applied position and committing the batch ending at {lsn}"
        )))?;
        done.committed = Some((lsn, commit_time));
    }
    Ok(done)
}

/// Empty statement caches for `sessions` sessions.
fn new_caches(sessions: usize) -> Vec<StatementCache> {
    (0..sessions).map(|_| StatementCache::default()).collect()
}

/// Opens one apply session on the target and pins its settings; whether it
/// may set `session_replication_role = replica`.
async fn open_session(target_config: &ConnectConfig) -> Result<(Client, bool)> {
    let client = connect_sql(target_config).await?;
    // Fully qualified type names for casts.
    // A position is confirmed to the source only once its batch is
    // durable: at least flushed locally (a target configured with
    // synchronous_commit = off would lose confirmed batches in a crash),
    // and on the synchronous standbys the target waits for, if any (a
    // failover would lose them otherwise). `on` is both; remote_write
    // and remote_apply, chosen by the target's owner, are kept.
    // On a TimescaleDB target, a change in a compressed chunk decompresses
    // the batches holding it, however many rows they hold (the default
    // limit would stop apply), and each statement is planned with its
    // batch's time bounds as constants (see `TimeKey`).
    // Keyed statements find each row through the key's index, whatever
    // the table's size: a hash join would scan the whole table. JIT
    // compiles a batch's statement afresh whenever its estimated cost
    // passes jit_above_cost (10-15 ms for a 40,000-row UPDATE) and does
    // not make these short statements run faster.
    client
        .batch_execute(
            "SET search_path = pg_catalog;
             SELECT pg_catalog.set_config('synchronous_commit', 'on', false)
              WHERE pg_catalog.current_setting('synchronous_commit') IN ('off', 'local');
             SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off;
             SELECT pg_catalog.set_config(name, setting, false)
               FROM (VALUES ('timescaledb.max_tuples_decompressed_per_dml_transaction', '0'),
                            ('plan_cache_mode', 'force_custom_plan')) AS s(name, setting)
              WHERE pg_catalog.current_setting('timescaledb.max_tuples_decompressed_per_dml_transaction', true)
                    IS NOT NULL",
        )
        .await
        .map_err(target("setting up the apply session"))?;
    let replica_role = pglive_postgres::set_replica_role(&client)
        .await
        .map_err(target("setting session_replication_role"))?;
    Ok((client, replica_role))
}
