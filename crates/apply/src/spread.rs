//! Whether a batch is spread over several target sessions: every rule in
//! one place.
//!
//! Spreading runs a batch's rows on [`crate::ApplyOptions::sessions`]
//! sessions at once, each row on the session ("lane") its key hashes to
//! (see `lanes`), each lane in its own transaction with its own position
//! row. It pays off for batches of updates and deletes, which look every
//! row up; it is wrong whenever rows on different lanes could meet on the
//! target, or a restart could not tell which lane holds a change. So:
//!
//! - **A table spreads** only when its key's equal values always print the
//!   same (not `numeric`, `float` or a nondeterministic collation, whose
//!   equal values could hash to different lanes), no unique index without
//!   every key column or exclusion constraint ties its rows, and no foreign
//!   key from or to it is checked (checked when the sessions cannot set
//!   `session_replication_role = replica`). Other tables' rows stay on the
//!   first session.
//! - **A batch spreads** only when it is whole (held until its commit, so
//!   every lane records the same position), large enough to be worth a
//!   commit on every session, mostly updates and deletes of spreading
//!   tables, free of truncates, key changes and re-described relations
//!   (their rows could belong to two lanes), and not replaying a crashed
//!   run's lanes.

use crate::plan::Change;
use crate::table::TableMap;

/// The fewest changes a batch must hold to be spread over sessions (or
/// [`crate::ApplyOptions::max_batch_changes`], when that is fewer).
const MIN_SPREAD_CHANGES: usize = 1_000;

/// Whether a table's rows may go to different sessions, from what the
/// target's catalog says about it (see the module documentation).
pub(crate) fn table_spreads(canonical_key: bool, tied: bool, foreign_keys_checked: bool) -> bool {
    canonical_key && !(tied || foreign_keys_checked)
}

/// What a batch collected so far says about spreading it.
#[derive(Debug, Default)]
pub(crate) struct SpreadTally {
    /// Something in the batch forbids spreading it.
    one_session: bool,
    /// Updates and deletes of rows of spreading tables.
    finds: usize,
}

impl SpreadTally {
    /// Counts `change` of `table`.
    pub fn change(&mut self, table: &TableMap, change: &Change) {
        if table.spread && !matches!(change, Change::Insert(_)) {
            self.finds += 1;
        }
        // The old and the new key may hash to different lanes.
        if table.spread
            && matches!(
                change,
                Change::Update {
                    key_changed: true,
                    ..
                }
            )
        {
            self.one_session = true;
        }
    }

    /// A relation described again mid-batch: changes collected under its
    /// earlier description may have gone to other lanes than the later
    /// ones would.
    pub fn relation_redescribed(&mut self) {
        self.one_session = true;
    }

    /// A truncate runs in order with everything around it.
    pub fn truncate(&mut self) {
        self.one_session = true;
    }

    /// So does a schema change.
    pub fn schema_change(&mut self) {
        self.one_session = true;
    }
}

/// A batch about to run, as far as spreading is concerned.
pub(crate) struct BatchShape {
    /// Target sessions available.
    pub sessions: usize,
    /// The whole batch runs now, with its commit, in a transaction of its
    /// own (none of it ran early to bound memory).
    pub whole: bool,
    /// Changes in the batch.
    pub changes: usize,
    /// The configured largest batch.
    pub max_batch_changes: usize,
    /// The applier still replays the lanes of a crashed run.
    pub catching_up: bool,
}

/// Whether the batch runs spread over every session.
///
/// A small batch is not worth a commit on every session. Nor is one of
/// mostly inserts: one session's COPY takes them faster than several
/// sessions that contend for the same table's new pages (on the 1M-insert
/// backlog, 3.1 s on one session against 4.3 s on four), while updates and
/// deletes, which look every row up, gain (3.2 s against 2.5 s for 300k
/// updates).
pub(crate) fn spreads(tally: &SpreadTally, batch: &BatchShape) -> bool {
    batch.sessions > 1
        && batch.whole
        && batch.changes >= MIN_SPREAD_CHANGES.min(batch.max_batch_changes)
        && tally.finds * 2 >= batch.changes
        && !tally.one_session
        && !batch.catching_up
}
