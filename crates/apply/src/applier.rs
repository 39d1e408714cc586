//! The applier: source transactions in, target transactions out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pglive_postgres::{ConnectConfig, Lsn, PgTimestamp, connect_sql};
use pglive_repl::pgoutput::{self, ColumnValue, Decoder, LogicalMessage, OldTuple, TupleData};
use tokio_postgres::Client;

use crate::batch::{InFlight, RunAs, Segment, Sessions, Work};
use crate::error::{Error, Result, target};
use crate::execute::StatementCache;
use crate::lanes;
use crate::plan::{Change, TablePlan, Values};
use crate::progress::{self, LanePositions};
use crate::spool::Spools;
use crate::table::{Identity, TableMap};
use pglive_postgres::QualifiedName;

/// How the applier batches and where it keeps its state.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ApplyOptions {
    /// Names this stream's row in `pglive.apply_progress` (for example the
    /// slot name).
    pub stream_id: String,
    /// The pgoutput protocol version the stream was started with.
    pub protocol_version: u32,
    /// Per table, the LSN its initial copy corresponds to: changes of
    /// transactions that committed before it are already in the copy.
    pub copied_at: HashMap<QualifiedName, Lsn>,
    /// Tables whose changes are not applied at all: for example tables
    /// created and dropped on the source while a migration ran, which the
    /// target never had. Default: none.
    pub ignored_tables: std::collections::HashSet<QualifiedName>,
    /// Commit the target transaction at the first source commit after this
    /// many changes…
    pub max_batch_changes: usize,
    /// …or after it has been open this long.
    pub max_batch_duration: Duration,
    /// Run the collected statements inside the open target transaction once
    /// they hold this many bytes of values, so memory stays bounded.
    pub max_pending_bytes: usize,
    /// Memory for streamed in-progress transactions before they spill to
    /// files in `spill_dir`.
    pub spool_memory: usize,
    /// Where spill files go.
    pub spill_dir: PathBuf,
    /// Target sessions a batch may be spread over, by a hash of each row's
    /// key (at least 1). A batch runs on one session when it is small or
    /// mostly inserts, truncates, changes a key, or is too large to hold
    /// until its commit; tables whose rows are tied by a unique index
    /// beyond the key, an exclusion constraint or a checked foreign key,
    /// or whose key's equal values can print differently (`numeric`),
    /// always run on the first one.
    pub sessions: usize,
}

impl ApplyOptions {
    /// Defaults for `stream_id` and `protocol_version`: batches of up to
    /// 20,000 changes or 2 s, 32 MiB of pending values, 128 MiB of
    /// streamed transactions in memory, spill files in the temp directory,
    /// batches spread over 4 target sessions.
    pub fn new(stream_id: impl Into<String>, protocol_version: u32) -> ApplyOptions {
        ApplyOptions {
            stream_id: stream_id.into(),
            protocol_version,
            copied_at: HashMap::new(),
            ignored_tables: Default::default(),
            max_batch_changes: 20_000,
            max_batch_duration: Duration::from_secs(2),
            max_pending_bytes: 32 << 20,
            spool_memory: 128 << 20,
            spill_dir: std::env::temp_dir(),
            sessions: 4,
        }
    }
}

/// Counters since the applier started, for progress displays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyStats {
    /// The end LSN of the last source transaction committed on the target.
    pub applied_lsn: Lsn,
    /// The source commit time of that transaction.
    pub applied_commit_time: Option<PgTimestamp>,
    /// Source transactions applied.
    pub transactions: u64,
    /// Source transactions skipped because they were applied before a
    /// restart.
    pub skipped_transactions: u64,
    /// Rows inserted, updated and deleted on the target.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// TRUNCATE statements run.
    pub truncates: u64,
    /// Batches committed (each in one target transaction per session it
    /// ran on).
    pub batches: u64,
    /// Of those, the batches spread over several sessions.
    pub spread_batches: u64,
    /// Target sessions the applier uses.
    pub sessions: usize,
    /// Whether triggers and foreign keys are silenced with
    /// `session_replication_role = replica` (else statement order is kept
    /// across tables and user triggers are disabled).
    pub replica_role: bool,
}

/// The fewest changes a batch must hold to be spread over sessions (or
/// [`ApplyOptions::max_batch_changes`], when that is fewer).
const MIN_SPREAD_CHANGES: usize = 1_000;

struct SourceTxn {
    final_lsn: Lsn,
    skip: bool,
}

/// Applies a pgoutput stream to the target in large, ordered batches,
/// exactly once (see the crate documentation).
pub struct Applier {
    /// The target sessions, one per lane; the first also runs everything
    /// that is not spread.
    clients: Vec<Arc<Client>>,
    options: ApplyOptions,
    decoder: Decoder,
    /// The prepared statements of each session; away while work is in
    /// flight.
    caches: Option<Vec<StatementCache>>,
    /// Statements (and perhaps the commit) running on the target.
    in_flight: Option<InFlight>,
    relations: HashMap<u32, Arc<TableMap>>,
    /// Relations of [`ApplyOptions::ignored_tables`].
    ignored_relations: std::collections::HashSet<u32>,
    /// Tables whose triggers and identity columns were made ready for the
    /// source's rows.
    tables_prepared: std::collections::HashSet<QualifiedName>,
    /// For the short sessions that change a table's identity columns.
    target_config: ConnectConfig,
    /// The position every lane has applied.
    applied: Lsn,
    /// The lanes' positions after a crash between the commits of a spread
    /// batch, until a batch committed past the highest: a change of a
    /// transaction below its lane's position is already on the target.
    catch_up: Option<LanePositions>,
    confirmable: Lsn,
    txn: Option<SourceTxn>,
    block_xid: Option<u32>,
    spools: Spools,
    segments: Vec<Segment>,
    pending_bytes: usize,
    target_open: bool,
    batch_commit: Option<(Lsn, PgTimestamp)>,
    batch_changes: usize,
    batch_started: Option<Instant>,
    /// The batch must run on one session (see [`ApplyOptions::sessions`]).
    batch_on_one_session: bool,
    /// Updates and deletes of rows that may be spread over sessions, in
    /// the batch.
    batch_spread_finds: usize,
    stats: ApplyStats,
    pause_before: Option<Lsn>,
    held: Option<Bytes>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("stream_id", &self.options.stream_id)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl Applier {
    /// Opens the applier's sessions on the target
    /// ([`ApplyOptions::sessions`]), creates its state tables if needed and
    /// reads where a previous run stopped.
    pub async fn connect(target_config: &ConnectConfig, options: ApplyOptions) -> Result<Applier> {
        if options.sessions == 0 {
            return Err(Error::InvalidOption(
                "sessions must be at least 1".to_owned(),
            ));
        }
        let opened = futures_util::future::join_all(
            (0..options.sessions).map(|_| open_session(target_config)),
        )
        .await;
        let mut clients = Vec::with_capacity(opened.len());
        let mut replica_role = true;
        for session in opened {
            let (client, role) = session?;
            replica_role &= role;
            clients.push(Arc::new(client));
        }
        let positions = progress::load(&clients[0], &options.stream_id, options.sessions).await?;
        // Before any batch holds a lock: a table met later (not copied by
        // this migration) is prepared when its Relation message arrives.
        let copied: Vec<&QualifiedName> = options.copied_at.keys().collect();
        progress::allow_identity_values_of(&clients[0], &copied).await?;
        let applied = positions.lowest();
        let stats = ApplyStats {
            applied_lsn: applied,
            replica_role,
            sessions: clients.len(),
            ..ApplyStats::default()
        };
        Ok(Applier {
            caches: Some(new_caches(clients.len())),
            clients,
            decoder: Decoder::new(options.protocol_version),
            spools: Spools::new(options.spool_memory, options.spill_dir.clone()),
            options,
            in_flight: None,
            relations: HashMap::new(),
            ignored_relations: Default::default(),
            tables_prepared: Default::default(),
            target_config: target_config.clone(),
            applied,
            catch_up: (!positions.settled()).then_some(positions),
            confirmable: applied,
            txn: None,
            block_xid: None,
            segments: Vec::new(),
            pending_bytes: 0,
            target_open: false,
            batch_commit: None,
            batch_changes: 0,
            batch_started: None,
            batch_on_one_session: false,
            batch_spread_finds: 0,
            stats,
            pause_before: None,
            held: None,
        })
    }

    /// The end LSN of the last source transaction committed on the target;
    /// replication resumes from here.
    pub fn applied_lsn(&self) -> Lsn {
        self.applied
    }

    /// The position that may be confirmed to the source: everything before
    /// it is durably applied (or was not for this target).
    pub fn confirmable_lsn(&self) -> Lsn {
        self.confirmable
    }

    /// Counters for progress displays.
    pub fn stats(&self) -> &ApplyStats {
        &self.stats
    }

    /// Whether a source transaction is partly received.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some() || self.block_xid.is_some()
    }

    /// Whether complete source transactions wait for [`Applier::commit`].
    pub fn has_uncommitted(&self) -> bool {
        self.batch_commit.is_some()
    }

    /// Whether statements or a commit are running on the target; see
    /// [`Applier::settle`].
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether nothing is received but not yet committed: no open or
    /// uncommitted transaction, no streamed transaction in progress, no
    /// work running on the target.
    pub fn is_idle(&self) -> bool {
        !self.in_transaction()
            && !self.has_uncommitted()
            && self.spools.is_empty()
            && !self.is_busy()
    }

    /// Notes the server's WAL position from a keepalive: when the applier is
    /// idle, everything before it has been applied and it may be confirmed.
    pub fn note_server_position(&mut self, wal_end: Lsn) {
        if self.is_idle() {
            self.confirmable = self.confirmable.max(wal_end);
        }
    }

    /// Holds back the first source transaction that commits at or after
    /// `lsn` (and, since the stream is in commit order, everything after
    /// it): the target then shows the source exactly as of `lsn`. `None`
    /// lifts the pause; [`Applier::resume`] applies what was held.
    pub fn pause_before(&mut self, lsn: Option<Lsn>) {
        self.pause_before = lsn;
    }

    /// Whether a transaction is held back by [`Applier::pause_before`]:
    /// feed nothing more until [`Applier::resume`].
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Lifts the pause and applies the transaction start that was held.
    pub async fn resume(&mut self) -> Result<()> {
        self.pause_before = None;
        match self.held.take() {
            Some(data) => self.apply(data).await,
            None => Ok(()),
        }
    }

    /// Applies one XLogData payload (one pgoutput message).
    pub async fn apply(&mut self, data: Bytes) -> Result<()> {
        if self.held.is_some() {
            return Err(Error::Protocol(
                "a message arrived while a transaction is held for a pause".to_owned(),
            ));
        }
        let message = self.decoder.decode(data.clone())?;
        if let (Some(pause), None) = (self.pause_before, self.block_xid) {
            let commit = match &message {
                LogicalMessage::Begin(begin) => Some(begin.final_lsn),
                LogicalMessage::StreamCommit(commit) => Some(commit.commit_lsn),
                _ => None,
            };
            if commit.is_some_and(|lsn| lsn >= pause) {
                self.held = Some(data);
                return Ok(());
            }
        }
        if let Some(top) = self.block_xid {
            match message {
                LogicalMessage::StreamStop => self.block_xid = None,
                other => {
                    let made_by = stream_xid(&other).unwrap_or(top);
                    self.spools.push(top, made_by, data)?;
                }
            }
            return Ok(());
        }
        match message {
            LogicalMessage::StreamStart(start) => self.block_xid = Some(start.xid),
            LogicalMessage::StreamStop => {}
            LogicalMessage::StreamAbort(abort) => self.spools.abort(abort.xid, abort.subxid),
            LogicalMessage::StreamCommit(commit) => {
                self.begin_source(commit.commit_lsn)?;
                let mut replay = self.spools.take(commit.xid)?;
                while let Some(data) = replay.next_message()? {
                    let message = pgoutput::decode(data, self.options.protocol_version, true)?;
                    self.handle(message).await?;
                }
                self.end_source(commit.end_lsn, commit.commit_time).await?;
            }
            other => self.handle(other).await?,
        }
        Ok(())
    }

    fn begin_source(&mut self, final_lsn: Lsn) -> Result<()> {
        if self.txn.is_some() {
            return Err(Error::Protocol(format!(
                "a transaction begins at {final_lsn} inside another"
            )));
        }
        self.txn = Some(SourceTxn {
            final_lsn,
            skip: final_lsn < self.applied,
        });
        Ok(())
    }

    async fn end_source(&mut self, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        let txn = self
            .txn
            .take()
            .ok_or_else(|| Error::Protocol(format!("a commit at {end_lsn} without a begin")))?;
        if txn.skip {
            self.stats.skipped_transactions += 1;
            return Ok(());
        }
        self.stats.transactions += 1;
        self.batch_commit = Some((end_lsn, commit_time));
        self.batch_started.get_or_insert_with(Instant::now);
        let full = self.batch_changes >= self.options.max_batch_changes;
        let old = self
            .batch_started
            .is_some_and(|t| t.elapsed() >= self.options.max_batch_duration);
        if full || old {
            self.start_commit().await?;
        }
        Ok(())
    }

    async fn handle(&mut self, message: LogicalMessage) -> Result<()> {
        match message {
            LogicalMessage::Begin(begin) => self.begin_source(begin.final_lsn),
            LogicalMessage::Commit(commit) => {
                self.end_source(commit.end_lsn, commit.commit_time).await
            }
            LogicalMessage::Relation(relation)
                if self
                    .options
                    .ignored_tables
                    .contains(&QualifiedName::new(&relation.namespace, &relation.name)) =>
            {
                self.ignored_relations.insert(relation.id);
                Ok(())
            }
            LogicalMessage::Relation(relation) => {
                self.ignored_relations.remove(&relation.id);
                // Catalog reads and trigger changes go after the work in
                // flight, as they would in a sequential applier.
                self.settle().await?;
                // Changes collected under the table's earlier description
                // may have gone to other lanes than the later ones would.
                self.batch_on_one_session |= self.relations.contains_key(&relation.id);
                let replica_role = self.stats.replica_role;
                let map = TableMap::resolve(&self.clients[0], &relation, !replica_role).await?;
                if self.tables_prepared.insert(map.name.clone()) {
                    if !replica_role {
                        progress::disable_user_triggers(&self.clients[0], &map.name).await?;
                    }
                    if !map.identity_always.is_empty() {
                        // A session of its own: the apply sessions may be in
                        // a batch's transaction, which would hold the
                        // table's lock until the batch commits.
                        let client = connect_sql(&self.target_config).await?;
                        progress::allow_identity_values(&client, &map.name, &map.identity_always)
                            .await?;
                    }
                }
                self.relations.insert(relation.id, Arc::new(map));
                Ok(())
            }
            LogicalMessage::Insert(insert) => {
                let Some(map) = self.relation_for_change(insert.relation_id)? else {
                    return Ok(());
                };
                let new = map_tuple(&map, insert.new)?;
                self.push(map, Change::Insert(new)).await
            }
            LogicalMessage::Update(update) => {
                let Some(map) = self.relation_for_change(update.relation_id)? else {
                    return Ok(());
                };
                let new = map_tuple(&map, update.new)?;
                let change = match (map.identity, update.old) {
                    (Identity::Nothing, _) => {
                        return Err(Error::NoReplicaIdentity {
                            table: map.name.to_string(),
                            operation: "UPDATE",
                        });
                    }
                    (Identity::Full, Some(old)) => Change::UpdateFull {
                        old: map_tuple(&map, old.into_tuple())?,
                        new,
                    },
                    (Identity::Full, None) => {
                        return Err(Error::Protocol(format!(
                            "an UPDATE of {} without its old row although its replica identity is FULL",
                            map.name
                        )));
                    }
                    (Identity::Key, old) => {
                        let new_key = key_values(&map, &new);
                        let key = match old {
                            Some(old) => map_key(&map, old.into_tuple())?,
                            None => new_key.clone(),
                        };
                        if key.iter().any(|v| v.bytes().is_none()) {
                            return Err(Error::Protocol(format!(
                                "an UPDATE of {} whose key is null or unchanged TOAST",
                                map.name
                            )));
                        }
                        let key_changed = new_key
                            .iter()
                            .zip(&key)
                            .any(|(n, o)| n.bytes().is_some() && n != o);
                        // The old and the new key may hash to different
                        // lanes.
                        self.batch_on_one_session |= key_changed && map.spread;
                        Change::Update {
                            key,
                            new,
                            key_changed,
                        }
                    }
                };
                self.push(map, change).await
            }
            LogicalMessage::Delete(delete) => {
                let Some(map) = self.relation_for_change(delete.relation_id)? else {
                    return Ok(());
                };
                let change = match (map.identity, delete.old) {
                    (Identity::Nothing, _) => {
                        return Err(Error::NoReplicaIdentity {
                            table: map.name.to_string(),
                            operation: "DELETE",
                        });
                    }
                    (Identity::Full, old) => Change::DeleteFull {
                        old: map_tuple(&map, old.into_tuple())?,
                    },
                    (Identity::Key, OldTuple::Key(old) | OldTuple::Full(old)) => Change::Delete {
                        key: map_key(&map, old)?,
                    },
                    (Identity::Key, _) => {
                        return Err(Error::Protocol(format!(
                            "an unsupported old tuple in a DELETE of {}",
                            map.name
                        )));
                    }
                };
                self.push(map, change).await
            }
            LogicalMessage::Truncate(truncate) => {
                let mut tables = Vec::new();
                for id in &truncate.relation_ids {
                    if let Some(map) = self.relation_for_change(*id)? {
                        tables.push(map);
                    }
                }
                if !tables.is_empty() {
                    self.batch_on_one_session = true;
                    self.segments.push(Segment::Truncate {
                        tables,
                        cascade: truncate.cascade(),
                        restart_identity: truncate.restart_identity(),
                    });
                    self.batch_changes += 1;
                }
                Ok(())
            }
            LogicalMessage::Type(_) | LogicalMessage::Origin(_) | LogicalMessage::Message(_) => {
                Ok(())
            }
            other => Err(Error::Protocol(format!(
                "{} messages are not expected: the stream must be started without two_phase",
                other.kind()
            ))),
        }
    }

    /// The table of a change, or `None` when the change must be skipped:
    /// its transaction was applied before, or the table's copy already holds
    /// it.
    fn relation_for_change(&self, relation_id: u32) -> Result<Option<Arc<TableMap>>> {
        let txn = self
            .txn
            .as_ref()
            .ok_or_else(|| Error::Protocol("a change outside of a transaction".to_owned()))?;
        if txn.skip || self.ignored_relations.contains(&relation_id) {
            return Ok(None);
        }
        let map = self.relations.get(&relation_id).cloned().ok_or_else(|| {
            Error::Protocol(format!(
                "a change for relation {relation_id}, never described"
            ))
        })?;
        if let Some(copied_at) = self.options.copied_at.get(&map.name) {
            if txn.final_lsn < *copied_at {
                return Ok(None);
            }
        }
        Ok(Some(map))
    }

    async fn push(&mut self, map: Arc<TableMap>, change: Change) -> Result<()> {
        if let (Some(positions), Some(txn)) = (&self.catch_up, &self.txn) {
            // The lane the crashed run gave it, whatever the target's
            // catalog says now.
            let spread = positions.spread_tables.contains(&map.quoted);
            let lane = lanes::lane_of_change(&map, spread, &change, positions.by_lane.len());
            if txn.final_lsn < positions.by_lane[lane] {
                // Its lane committed it before the crash.
                return Ok(());
            }
        }
        self.pending_bytes += change.size();
        self.batch_changes += 1;
        if map.spread && !matches!(change, Change::Insert(_)) {
            self.batch_spread_finds += 1;
        }
        let replica_role = self.stats.replica_role;
        let same = |(m, _): &&mut (Arc<TableMap>, TablePlan)| Arc::ptr_eq(m, &map);
        let plans = match self.segments.last_mut() {
            Some(Segment::Tables(plans))
                if replica_role || plans.last().is_some_and(|(m, _)| Arc::ptr_eq(m, &map)) =>
            {
                plans
            }
            _ => {
                self.segments.push(Segment::Tables(Vec::new()));
                match self.segments.last_mut() {
                    Some(Segment::Tables(plans)) => plans,
                    _ => unreachable!("just pushed"),
                }
            }
        };
        match plans.iter_mut().find(same) {
            Some((_, plan)) => plan.push(change),
            None => {
                let mut plan = TablePlan::new(map.key.clone(), map.tied);
                plan.push(change);
                plans.push((map, plan));
            }
        }
        if self.pending_bytes >= self.options.max_pending_bytes {
            self.execute_pending().await?;
        }
        Ok(())
    }

    /// Runs every collected statement inside the open target transaction,
    /// in the background.
    async fn execute_pending(&mut self) -> Result<()> {
        if self.segments.is_empty() {
            return Ok(());
        }
        self.dispatch(None).await
    }

    /// Waits for the work in flight (if any) to finish and takes in what it
    /// did: counters, and the applied position when it committed. Cancel-safe.
    pub async fn settle(&mut self) -> Result<()> {
        let Some(in_flight) = &mut self.in_flight else {
            return Ok(());
        };
        let finished = in_flight.finish().await;
        self.in_flight = None;
        let (caches, done) = finished?;
        self.caches = Some(caches);
        let done = done?;
        self.stats.inserted += done.inserted;
        self.stats.updated += done.updated;
        self.stats.deleted += done.deleted;
        self.stats.truncates += done.truncates;
        if let Some((lsn, commit_time)) = done.committed {
            self.applied = lsn;
            self.confirmable = self.confirmable.max(lsn);
            self.stats.applied_lsn = lsn;
            self.stats.applied_commit_time = Some(commit_time);
            self.stats.batches += 1;
            // Every lane has recorded this position now; a lane that was
            // further ahead keeps its own until it is passed.
            if self.catch_up.as_ref().is_some_and(|p| lsn >= p.highest()) {
                self.catch_up = None;
            }
        }
        Ok(())
    }

    /// Starts the collected statements, and the commit when `commit` says
    /// which source transaction ends the batch, on the target once the
    /// previous work finished.
    async fn dispatch(&mut self, commit: Option<(Lsn, PgTimestamp)>) -> Result<()> {
        self.settle().await?;
        let lsn = self
            .txn
            .as_ref()
            .map(|t| t.final_lsn)
            .or(self.batch_commit.map(|(l, _)| l))
            .unwrap_or(self.applied);
        // Only a whole batch is spread: one held back until its commit,
        // after every lane recorded the same position. A small one is not
        // worth a commit on every session. Nor is one of mostly inserts:
        // one session's COPY takes them faster than several sessions that
        // contend for the same table's new pages (on the 1M-insert
        // backlog, 3.1 s on one session against 4.3 s on four), while
        // updates and deletes, which look every row up, gain (3.2 s
        // against 2.5 s for 300k updates).
        let spread = self.clients.len() > 1
            && commit.is_some()
            && self.batch_changes >= MIN_SPREAD_CHANGES.min(self.options.max_batch_changes)
            && !self.target_open
            && self.batch_spread_finds * 2 >= self.batch_changes
            && !self.batch_on_one_session
            && self.catch_up.is_none();
        let work = Work {
            begin: !self.target_open,
            segments: std::mem::take(&mut self.segments),
            lsn,
            commit,
            stream_id: self.options.stream_id.clone(),
            run_as: if spread {
                RunAs::Spread
            } else {
                RunAs::OneSession {
                    lanes: self.lanes_to_record(commit.map(|(lsn, _)| lsn)),
                }
            },
        };
        if spread {
            self.stats.spread_batches += 1;
        }
        let caches = self
            .caches
            .take()
            .unwrap_or_else(|| new_caches(self.clients.len()));
        let sessions = Sessions {
            clients: self.clients.clone(),
            caches,
        };
        self.in_flight = Some(InFlight::start(sessions, work));
        self.target_open = commit.is_none();
        self.pending_bytes = 0;
        if commit.is_some() {
            self.batch_commit = None;
            self.batch_changes = 0;
            self.batch_started = None;
            self.batch_on_one_session = false;
            self.batch_spread_finds = 0;
        }
        Ok(())
    }

    /// How many lanes a batch on one session records when it commits at
    /// `end`: while it still catches up lanes of a crashed run, exactly
    /// that run's lanes (their number decides which lane a change belongs
    /// to), raised but never lowered; once past the highest of them, this
    /// applier's sessions, all at `end`.
    fn lanes_to_record(&self, end: Option<Lsn>) -> usize {
        match (&self.catch_up, end) {
            (Some(positions), Some(end)) if end < positions.highest() => positions.by_lane.len(),
            _ => self.clients.len(),
        }
    }

    /// Starts committing the complete source transactions received so far
    /// in one target transaction, with the applied position; the run loop
    /// collects the outcome with [`Applier::settle`]. Nothing happens when
    /// there is nothing to commit.
    pub(crate) async fn start_commit(&mut self) -> Result<()> {
        if self.in_transaction() {
            return Err(Error::Protocol(
                "commit requested inside a source transaction".to_owned(),
            ));
        }
        match self.batch_commit {
            Some(commit) => self.dispatch(Some(commit)).await,
            None => Ok(()),
        }
    }

    /// Commits the complete source transactions received so far in one
    /// target transaction, with the applied position, waits for it, and
    /// returns that position; `None` when there was nothing to commit. Must
    /// not be called inside a source transaction.
    pub async fn commit(&mut self) -> Result<Option<Lsn>> {
        let lsn = self.batch_commit.map(|(lsn, _)| lsn);
        self.start_commit().await?;
        self.settle().await?;
        Ok(lsn)
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Whatever the task has not committed is rolled back when its
        // session closes; a later applier waits for that (see
        // `progress::load`).
        if let Some(in_flight) = &self.in_flight {
            in_flight.abort();
        }
    }
}

/// The transaction id a change inside a streaming block carries.
fn stream_xid(message: &LogicalMessage) -> Option<u32> {
    match message {
        LogicalMessage::Insert(m) => m.xid,
        LogicalMessage::Update(m) => m.xid,
        LogicalMessage::Delete(m) => m.xid,
        LogicalMessage::Truncate(m) => m.xid,
        LogicalMessage::Relation(m) => m.xid,
        LogicalMessage::Type(m) => m.xid,
        LogicalMessage::Message(m) => m.xid,
        _ => None,
    }
}

/// The tuple's values for the written columns (generated ones dropped),
/// moved out of the message.
fn map_tuple(map: &TableMap, tuple: TupleData) -> Result<Values> {
    if tuple.columns.len() != map.source_to_column.len() {
        return Err(Error::ShapeMismatch {
            table: map.name.to_string(),
            difference: format!(
                "a row has {} columns but the relation described {}",
                tuple.columns.len(),
                map.source_to_column.len()
            ),
        });
    }
    let mut values = Vec::with_capacity(map.columns.len());
    for (value, target) in tuple.columns.into_iter().zip(&map.source_to_column) {
        if target.is_some() {
            values.push(value);
        }
    }
    Ok(values)
}

/// The key values of a source row (an old key or old row), moved out.
fn map_key(map: &TableMap, tuple: TupleData) -> Result<Values> {
    let mut values = map_tuple(map, tuple)?;
    Ok(map
        .key
        .iter()
        .map(|&i| std::mem::replace(&mut values[i], ColumnValue::Null))
        .collect())
}

fn key_values(map: &TableMap, values: &Values) -> Values {
    map.key.iter().map(|&i| values[i].clone()).collect()
}

/// Empty statement caches for `sessions` sessions.
fn new_caches(sessions: usize) -> Vec<StatementCache> {
    (0..sessions).map(|_| StatementCache::default()).collect()
}

/// Opens one apply session on the target and pins its settings; whether it
/// may set `session_replication_role = replica`.
async fn open_session(target_config: &ConnectConfig) -> Result<(Client, bool)> {
    let client = connect_sql(target_config).await?;
    // Fully qualified type names for casts; local durability before a
    // position is confirmed to the source.
    // Keyed statements find each row through the key's index, whatever
    // the table's size: a hash join would scan the whole table. JIT
    // compiles a batch's statement afresh whenever its estimated cost
    // passes jit_above_cost (10-15 ms for a 40,000-row UPDATE) and does
    // not make these short statements run faster.
    client
        .batch_execute(
            "SET search_path = pg_catalog; SET synchronous_commit = local;
             SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off",
        )
        .await
        .map_err(target("setting up the apply session"))?;
    let replica_role = match client
        .batch_execute("SET session_replication_role = replica")
        .await
    {
        Ok(()) => true,
        Err(e) if e.code().map(|c| c.code()) == Some("42501") => false,
        Err(e) => return Err(target("setting session_replication_role")(e)),
    };
    Ok((client, replica_role))
}
