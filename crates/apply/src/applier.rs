//! The applier: source transactions in, target transactions out.
//!
//! A change goes one way: `intake` (decode, streamed transactions put in
//! commit order, the pause) → `changes` (a row message becomes a change of
//! a target table, found through `relations`) → `batcher` (changes of
//! consecutive source transactions gathered into one target transaction;
//! `spread` decides whether it runs over several sessions) → `sessions`
//! (the statements, per session or lane, in a background task). The
//! applier holds the positions: which source transactions are applied,
//! what may be confirmed, and the lanes of a crashed run still caught up.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pglive_postgres::{ConnectConfig, Lsn, PgTimestamp, QualifiedName};
use pglive_repl::pgoutput::LogicalMessage;

use crate::batcher::Batch;
use crate::changes;
use crate::chunks::{ChunkedTable, MoveMarker};
use crate::ddl::{self, Captured, DdlDecision, DdlStep, Disposition};
use crate::error::{Error, Result};
use crate::intake::{Intake, Intook};
use crate::lanes;
use crate::plan::Change;
use crate::progress::{self, LanePositions};
use crate::relations::Relations;
use crate::sessions::{RunAs, Sessions, Work};
use crate::spread::{self, BatchShape};
use crate::table::TableMap;

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
    pub ignored_tables: HashSet<QualifiedName>,
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
    /// Whether target tables may have columns the source does not send
    /// (they keep their defaults): on for targets prepared by hand. Off,
    /// such a column stops apply as the source dropping (or renaming) it.
    pub extra_target_columns: bool,
    /// Tables whose rows the source reports on their chunks (TimescaleDB
    /// hypertables): a chunk's changes are applied to its table. Default:
    /// none.
    pub chunked_tables: Vec<ChunkedTable>,
    /// Schemas where the source keeps chunks and TimescaleDB's internal
    /// relations: changes of relations in them that are not chunks of
    /// [`ApplyOptions::chunked_tables`] are never applied. Default: none.
    pub internal_schemas: Vec<String>,
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
            extra_target_columns: false,
            chunked_tables: Vec::new(),
            internal_schemas: Vec::new(),
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

/// The source transaction being received.
struct SourceTxn {
    final_lsn: Lsn,
    /// Applied before a restart: its changes are skipped.
    skip: bool,
    /// How deep inside TimescaleDB's markers of rows it moves into or out
    /// of compressed chunks (a recompression decompresses inside a
    /// compression): while above 0, chunks' changes are not the
    /// application's.
    moving_rows: u32,
    /// The schema changes captured in it so far, by the sending they came
    /// in (see [`Captured::sending`]).
    ddl_seen: Vec<(String, String, String)>,
    /// How many schema changes it brought so far: the next one's position.
    ddl_count: u32,
    /// A schema change was replayed: the batch commits after it.
    replayed_ddl: bool,
}

/// Applies a pgoutput stream to the target in large, ordered batches,
/// exactly once (see the crate documentation).
pub struct Applier {
    options: ApplyOptions,
    intake: Intake,
    relations: Relations,
    batch: Batch,
    sessions: Sessions,
    /// The position every lane has applied.
    applied: Lsn,
    /// The position that may be confirmed to the source.
    confirmable: Lsn,
    /// The lanes' positions after a crash between the commits of a spread
    /// batch, until a batch committed past the highest: a change of a
    /// transaction below its lane's position is already on the target.
    catch_up: Option<LanePositions>,
    txn: Option<SourceTxn>,
    /// A target transaction is open (statements ran before the commit).
    target_open: bool,
    /// The prefix of this stream's captured schema changes.
    ddl_prefix: String,
    /// The open target transaction replayed a schema change.
    schema_change_in_batch: bool,
    /// Decisions about schema changes apply stopped at before.
    ddl_decisions: HashMap<(Lsn, u32), DdlDecision>,
    stats: ApplyStats,
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
        let (sessions, replica_role) = Sessions::open(target_config, options.sessions).await?;
        let positions =
            progress::load(sessions.first(), &options.stream_id, options.sessions).await?;
        // Before any batch holds a lock: a table met later (not copied by
        // this migration) is prepared when its Relation message arrives.
        let copied: Vec<&QualifiedName> = options.copied_at.keys().collect();
        progress::allow_identity_values_of(sessions.first(), &copied).await?;
        let ddl_decisions = ddl::decisions(sessions.first(), &options.stream_id).await?;
        let ddl_prefix = ddl::ddl_message_prefix(&options.stream_id);
        let applied = positions.lowest();
        let stats = ApplyStats {
            applied_lsn: applied,
            replica_role,
            sessions: sessions.count(),
            ..ApplyStats::default()
        };
        Ok(Applier {
            intake: Intake::new(
                options.protocol_version,
                options.spool_memory,
                options.spill_dir.clone(),
            ),
            relations: Relations::new(
                target_config.clone(),
                options.ignored_tables.clone(),
                options.chunked_tables.clone(),
                options.internal_schemas.clone(),
                options.extra_target_columns,
            ),
            batch: Batch::new(&options),
            options,
            sessions,
            applied,
            confirmable: applied,
            catch_up: (!positions.settled()).then_some(positions),
            txn: None,
            target_open: false,
            ddl_prefix,
            schema_change_in_batch: false,
            ddl_decisions,
            stats,
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
        self.txn.is_some() || self.intake.in_block()
    }

    /// The commit LSN of the source transaction being received, if one is:
    /// after an error, the transaction that met it.
    pub fn current_transaction_lsn(&self) -> Option<Lsn> {
        self.txn.as_ref().map(|t| t.final_lsn)
    }

    /// Whether complete source transactions wait for [`Applier::commit`].
    pub fn has_uncommitted(&self) -> bool {
        self.batch.commit_point().is_some()
    }

    /// Whether statements or a commit are running on the target; see
    /// [`Applier::settle`].
    pub fn is_busy(&self) -> bool {
        self.sessions.is_busy()
    }

    /// Whether nothing is received but not yet committed: no open or
    /// uncommitted transaction, no streamed transaction in progress, no
    /// work running on the target.
    pub fn is_idle(&self) -> bool {
        !self.in_transaction()
            && !self.has_uncommitted()
            && self.intake.is_empty()
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
        self.intake.pause_before(lsn);
    }

    /// Whether a transaction is held back by [`Applier::pause_before`]:
    /// feed nothing more until [`Applier::resume`].
    pub fn is_holding(&self) -> bool {
        self.intake.is_holding()
    }

    /// Lifts the pause and applies the transaction start that was held.
    pub async fn resume(&mut self) -> Result<()> {
        match self.intake.resume() {
            Some(data) => self.apply(data).await,
            None => Ok(()),
        }
    }

    /// Applies one XLogData payload (one pgoutput message).
    pub async fn apply(&mut self, data: Bytes) -> Result<()> {
        match self.intake.accept(data)? {
            Intook::Nothing | Intook::Held => Ok(()),
            Intook::Message(message) => self.handle(message).await,
            Intook::StreamedCommit { commit, mut replay } => {
                self.begin_source(commit.commit_lsn)?;
                while let Some(message) = self.intake.replayed(&mut replay)? {
                    self.handle(message).await?;
                }
                self.end_source(commit.end_lsn, commit.commit_time).await
            }
        }
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
            moving_rows: 0,
            ddl_seen: Vec::new(),
            ddl_count: 0,
            replayed_ddl: false,
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
        // After a schema change, at once: a new enum value, for one, may
        // be used only once committed.
        if self.batch.source_committed(end_lsn, commit_time) || txn.replayed_ddl {
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
            LogicalMessage::Relation(relation) => {
                if self.relations.ignore(&relation) {
                    return Ok(());
                }
                // Catalog reads and trigger changes go after the work in
                // flight, as they would in a sequential applier.
                self.settle().await?;
                let checks_foreign_keys = !self.stats.replica_role;
                if self
                    .relations
                    .describe(
                        &relation,
                        self.sessions.first(),
                        checks_foreign_keys,
                        self.schema_change_in_batch,
                    )
                    .await?
                {
                    self.batch.spread.relation_redescribed();
                }
                Ok(())
            }
            LogicalMessage::Insert(insert) => {
                self.row_change(insert.relation_id, |table| changes::insert(table, insert))
                    .await
            }
            LogicalMessage::Update(update) => {
                self.row_change(update.relation_id, |table| changes::update(table, update))
                    .await
            }
            LogicalMessage::Delete(delete) => {
                self.row_change(delete.relation_id, |table| changes::delete(table, delete))
                    .await
            }
            LogicalMessage::Truncate(truncate) => {
                let mut tables: Vec<Arc<TableMap>> = Vec::new();
                let mut of_chunks: Vec<Arc<TableMap>> = Vec::new();
                for id in &truncate.relation_ids {
                    if let Some(table) = self.table_for_change(*id)? {
                        match self.relations.is_chunk(*id) {
                            true => of_chunks.push(table),
                            false => tables.push(table),
                        }
                    }
                }
                // A table truncated with its chunks is truncated once;
                // chunks truncated without their table cannot be.
                if let Some(alone) = of_chunks
                    .iter()
                    .find(|c| !tables.iter().any(|t| t.name == c.name))
                {
                    return Err(Error::ChunkTruncated {
                        table: alone.name.to_string(),
                    });
                }
                if !tables.is_empty() {
                    self.batch.push_truncate(
                        tables,
                        truncate.cascade(),
                        truncate.restart_identity(),
                    );
                }
                Ok(())
            }
            LogicalMessage::Type(described) => {
                self.relations.note_type(&described);
                Ok(())
            }
            LogicalMessage::Message(message) if message.prefix == self.ddl_prefix => {
                self.schema_change(&message.content).await
            }
            LogicalMessage::Message(message) => {
                if let (Some(marker), Some(txn)) =
                    (MoveMarker::of(&message.prefix), self.txn.as_mut())
                {
                    txn.moving_rows = match marker {
                        MoveMarker::Start => txn.moving_rows + 1,
                        MoveMarker::End => txn.moving_rows.saturating_sub(1),
                    };
                }
                Ok(())
            }
            LogicalMessage::Origin(_) => Ok(()),
            other => Err(Error::Protocol(format!(
                "{} messages are not expected: the stream must be started without two_phase",
                other.kind()
            ))),
        }
    }

    /// Replays a schema change captured on the source (see `ddl`) after
    /// the changes before it, or stops apply before it.
    async fn schema_change(&mut self, content: &[u8]) -> Result<()> {
        let txn = self.txn.as_mut().ok_or_else(|| {
            Error::Protocol("a schema change outside of a transaction".to_owned())
        })?;
        let captured = Captured::parse(content)?;
        let position = txn.ddl_count;
        txn.ddl_count += 1;
        let sending = captured.sending();
        let ordinal = txn
            .ddl_seen
            .iter()
            .filter(|s| Some(*s) == sending.as_ref())
            .count();
        txn.ddl_seen.extend(sending);
        if txn.skip {
            return Ok(());
        }
        let lsn = txn.final_lsn;
        let made = captured.tables_made_with_rows();
        if !made.is_empty() {
            self.settle().await?;
            let exists: bool = self
                .sessions
                .first()
                .query_one(
                    "SELECT bool_and(pg_catalog.to_regclass(t) IS NOT NULL) FROM unnest($1::text[]) t",
                    &[&made],
                )
                .await
                .map_err(crate::error::target("looking for a table made from a query's rows"))?
                .get(0);
            if exists {
                return Ok(());
            }
        }
        let txn = self.txn.as_mut().expect("inside a transaction");
        let decision = self.ddl_decisions.get(&(lsn, position)).copied();
        let disposition = captured.disposition(ordinal, &self.options.internal_schemas);
        let run = match (disposition, decision) {
            (Disposition::Ignore, _) => return Ok(()),
            (_, Some(DdlDecision::Skip)) => None,
            (Disposition::Replay(statement), _) => Some(statement),
            (
                Disposition::NotReplayed {
                    statement: Some(statement),
                    ..
                },
                Some(DdlDecision::Retry),
            ) => Some(statement),
            (Disposition::NotReplayed { reason, statement }, _) => {
                return Err(Error::DdlNotReplayed {
                    pending: ddl::PendingDdl {
                        lsn,
                        position,
                        tag: captured.tag,
                        command: statement.unwrap_or(captured.query),
                        problem: reason,
                    },
                });
            }
        };
        txn.replayed_ddl = true;
        self.schema_change_in_batch = true;
        let command = run.clone().unwrap_or_else(|| captured.query.clone());
        // After `retry`, the target's own default values are accepted.
        let check_tables = match decision {
            Some(DdlDecision::Retry) => Vec::new(),
            _ => captured.altered_tables(),
        };
        self.batch.push_ddl(DdlStep {
            lsn,
            position,
            missing: captured.missing,
            tag: captured.tag,
            command,
            run,
            role: captured.role,
            search_path: captured.search_path,
            check_tables,
            replica: self.stats.replica_role,
        });
        // Now, so that the Relation messages after it describe the target
        // as the command left it.
        self.execute_pending().await
    }

    /// The table of a change, or `None` when the change must be skipped:
    /// its transaction was applied before, its table is ignored, or the
    /// table's copy already holds it.
    fn table_for_change(&self, relation_id: u32) -> Result<Option<Arc<TableMap>>> {
        let txn = self
            .txn
            .as_ref()
            .ok_or_else(|| Error::Protocol("a change outside of a transaction".to_owned()))?;
        if txn.skip || (txn.moving_rows > 0 && self.relations.is_chunk(relation_id)) {
            return Ok(None);
        }
        let Some(table) = self.relations.table(relation_id)? else {
            return Ok(None);
        };
        if let Some(copied_at) = self.options.copied_at.get(&table.name) {
            if txn.final_lsn < *copied_at {
                return Ok(None);
            }
        }
        // Only a change that is applied needs the shapes to match.
        if let Some(problem) = &table.mismatch {
            return Err(problem.error(&table.name));
        }
        Ok(Some(table))
    }

    /// Adds the change `make` builds of relation `relation_id`'s table,
    /// unless the change is to be skipped.
    async fn row_change(
        &mut self,
        relation_id: u32,
        make: impl FnOnce(&TableMap) -> Result<Change>,
    ) -> Result<()> {
        match self.table_for_change(relation_id)? {
            Some(table) => {
                let change = make(&table)?;
                self.push(table, change).await
            }
            None => Ok(()),
        }
    }

    async fn push(&mut self, table: Arc<TableMap>, change: Change) -> Result<()> {
        if let (Some(positions), Some(txn)) = (&self.catch_up, &self.txn) {
            // The lane the crashed run gave it, whatever the target's
            // catalog says now.
            let spread = positions.spread_tables.contains(&table.quoted);
            let lane = lanes::lane_of_change(&table, spread, &change, positions.by_lane.len());
            if txn.final_lsn < positions.by_lane[lane] {
                // Its lane committed it before the crash.
                return Ok(());
            }
        }
        self.batch.push(table, change, self.stats.replica_role);
        if self.batch.values_full() {
            self.execute_pending().await?;
        }
        Ok(())
    }

    /// Runs every collected statement inside the open target transaction,
    /// in the background.
    async fn execute_pending(&mut self) -> Result<()> {
        if !self.batch.has_statements() {
            return Ok(());
        }
        self.dispatch(None).await
    }

    /// Waits for the work in flight (if any) to finish and takes in what it
    /// did: counters, and the applied position when it committed. Cancel-safe.
    pub async fn settle(&mut self) -> Result<()> {
        let Some(done) = self.sessions.settle().await? else {
            return Ok(());
        };
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
            .or(self.batch.commit_point().map(|(l, _)| l))
            .unwrap_or(self.applied);
        let spread = spread::spreads(
            &self.batch.spread,
            &BatchShape {
                sessions: self.sessions.count(),
                whole: commit.is_some() && !self.target_open,
                changes: self.batch.changes(),
                max_batch_changes: self.options.max_batch_changes,
                catching_up: self.catch_up.is_some(),
            },
        );
        let work = Work {
            begin: !self.target_open,
            segments: self.batch.take_statements(),
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
        self.sessions.start(work);
        self.target_open = commit.is_none();
        if commit.is_some() {
            self.batch.committed();
            self.schema_change_in_batch = false;
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
            _ => self.sessions.count(),
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
        match self.batch.commit_point() {
            Some(commit) => self.dispatch(Some(commit)).await,
            None => Ok(()),
        }
    }

    /// Commits the complete source transactions received so far in one
    /// target transaction, with the applied position, waits for it, and
    /// returns that position; `None` when there was nothing to commit. Must
    /// not be called inside a source transaction.
    pub async fn commit(&mut self) -> Result<Option<Lsn>> {
        let lsn = self.batch.commit_point().map(|(lsn, _)| lsn);
        self.start_commit().await?;
        self.settle().await?;
        Ok(lsn)
    }
}
