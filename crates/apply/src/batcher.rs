//! The batcher, the second step: the changes of consecutive source
//! transactions gathered into one target transaction.
//!
//! A batch is a list of segments whose statements run in order. Inside a
//! `Tables` segment each table's changes are one plan (`plan`), and tables
//! are independent of each other — when the target's foreign keys and
//! triggers are silenced (`session_replication_role = replica`); otherwise
//! a new segment starts whenever the table changes, so statements keep the
//! source's order across tables. A truncate is a segment of its own.
//!
//! A batch ends at the first source commit after
//! [`crate::ApplyOptions::max_batch_changes`] changes or
//! [`crate::ApplyOptions::max_batch_duration`]; its statements run early,
//! inside the open target transaction, once they hold
//! [`crate::ApplyOptions::max_pending_bytes`] of values. What the batch
//! says about spreading it is tallied here and decided in `spread`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglive_postgres::{Lsn, PgTimestamp};

use crate::applier::ApplyOptions;
use crate::ddl::DdlStep;
use crate::plan::{Change, TablePlan};
use crate::spread::SpreadTally;
use crate::table::TableMap;

/// A group of changes whose statements run in order; inside a `Tables`
/// segment, tables are independent of each other.
pub(crate) enum Segment {
    Tables(Vec<(Arc<TableMap>, TablePlan)>),
    Truncate {
        tables: Vec<Arc<TableMap>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// A schema change captured on the source.
    Ddl(DdlStep),
}

/// The batch being collected.
pub(crate) struct Batch {
    segments: Vec<Segment>,
    /// Bytes of values collected since statements last ran.
    pending_bytes: usize,
    /// End LSN and commit time of the batch's last complete source
    /// transaction.
    commit: Option<(Lsn, PgTimestamp)>,
    changes: usize,
    started: Option<Instant>,
    /// What the batch says about spreading it.
    pub spread: SpreadTally,
    max_changes: usize,
    max_duration: Duration,
    max_pending_bytes: usize,
}

impl Batch {
    /// An empty batch with the limits of `options`.
    pub fn new(options: &ApplyOptions) -> Batch {
        Batch {
            segments: Vec::new(),
            pending_bytes: 0,
            commit: None,
            changes: 0,
            started: None,
            spread: SpreadTally::default(),
            max_changes: options.max_batch_changes,
            max_duration: options.max_batch_duration,
            max_pending_bytes: options.max_pending_bytes,
        }
    }

    /// Adds a row change of `table`; with `independent_tables`, to the
    /// table's plan in the last segment wherever it is, else only if the
    /// table is the last one's.
    pub fn push(&mut self, table: Arc<TableMap>, change: Change, independent_tables: bool) {
        self.pending_bytes += change.size();
        self.changes += 1;
        self.spread.change(&table, &change);
        let plans = match self.segments.last_mut() {
            Some(Segment::Tables(plans))
                if independent_tables
                    || plans.last().is_some_and(|(m, _)| Arc::ptr_eq(m, &table)) =>
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
        match plans.iter_mut().find(|(m, _)| Arc::ptr_eq(m, &table)) {
            Some((_, plan)) => plan.push(change),
            None => {
                let mut plan = TablePlan::new(table.key.clone(), table.tied);
                plan.push(change);
                plans.push((table, plan));
            }
        }
    }

    /// Adds a truncate of `tables`.
    pub fn push_truncate(
        &mut self,
        tables: Vec<Arc<TableMap>>,
        cascade: bool,
        restart_identity: bool,
    ) {
        self.spread.truncate();
        self.segments.push(Segment::Truncate {
            tables,
            cascade,
            restart_identity,
        });
        self.changes += 1;
    }

    /// Adds a schema change, which runs in order with everything around it.
    pub fn push_ddl(&mut self, step: DdlStep) {
        self.spread.schema_change();
        self.segments.push(Segment::Ddl(step));
        self.changes += 1;
    }

    /// Notes a complete source transaction; true when the batch should
    /// commit now (it is full or old).
    pub fn source_committed(&mut self, end_lsn: Lsn, commit_time: PgTimestamp) -> bool {
        self.commit = Some((end_lsn, commit_time));
        let started = *self.started.get_or_insert_with(Instant::now);
        self.changes >= self.max_changes || started.elapsed() >= self.max_duration
    }

    /// Whether the collected statements hold enough values to run early.
    pub fn values_full(&self) -> bool {
        self.pending_bytes >= self.max_pending_bytes
    }

    /// Whether statements were collected since they last ran.
    pub fn has_statements(&self) -> bool {
        !self.segments.is_empty()
    }

    /// The collected statements, to run now.
    pub fn take_statements(&mut self) -> Vec<Segment> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.segments)
    }

    /// End LSN and commit time of the last complete source transaction,
    /// when the batch has one to commit.
    pub fn commit_point(&self) -> Option<(Lsn, PgTimestamp)> {
        self.commit
    }

    /// Changes in the batch.
    pub fn changes(&self) -> usize {
        self.changes
    }

    /// Starts the next batch once this one's commit is on its way.
    pub fn committed(&mut self) {
        self.commit = None;
        self.changes = 0;
        self.started = None;
        self.spread = SpreadTally::default();
    }
}
