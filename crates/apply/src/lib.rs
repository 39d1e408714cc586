//! Batched, exactly-once application of a pgoutput stream to a target
//! PostgreSQL database.
//!
//! # The model
//!
//! Source transactions arrive in commit order from `pglive-repl`. The
//! [`Applier`] groups consecutive transactions into one target transaction
//! (bounded by changes, time and memory; committed at once when the stream
//! goes quiet). Inside it, each table's changes become few set-based
//! statements: runs of inserts one `COPY`, runs of updates and deletes by
//! key one `UPDATE … FROM unnest(…)` / `DELETE … USING unnest(…)`, repeated
//! changes of one key merged. A batch runs on the target in the background
//! while the next one is received and planned; batches still run one after
//! another, in order. A batch of mostly updates and deletes, held whole
//! until its commit, is spread over [`ApplyOptions::sessions`] target
//! sessions by a fixed hash of each row's key, one transaction per
//! session. Values travel as the text pgoutput sent and the target parses
//! them with the same input functions, under pinned session settings, so
//! `NaN`, `Infinity`, arrays, bytea and timestamps arrive exactly.
//!
//! # Correctness
//!
//! - **Exactly once.** The end LSN of the last source transaction in a
//!   batch is written to `pglive.apply_progress` in the same target
//!   transaction as the batch. After a crash, [`Applier::applied_lsn`] says
//!   where to restart, and transactions at or before it are skipped. No
//!   replication origins and no superuser rights are needed. A spread
//!   batch records one row per session (lane), each in that session's
//!   transaction; after a crash between them, the applier restarts from the
//!   lowest lane and skips each change its own lane already committed, on
//!   one session, which then records every lane again.
//! - **Source order where the target checks it.** A table whose rows are
//!   tied by a unique index without every key column (or an exclusion
//!   constraint) gets its updates in source order, never merged, and a
//!   statement that collides anyway is redone row by row; such tables, and
//!   tables with checked foreign keys, stay on the first session.
//! - **Never ahead.** [`run`] confirms to the source only what the target
//!   committed (or, when idle, the server's position after everything was
//!   committed).
//! - **Copy boundary.** Each table's `copied_at` LSN (from the initial
//!   copy) is honoured: changes of transactions that committed before it
//!   are already in the copy and are skipped.
//! - **Triggers and foreign keys.** With the right to set
//!   `session_replication_role = replica` the applier uses it, so target
//!   triggers and foreign keys do not interfere, and tables are batched
//!   independently. Without it, statement order is kept across tables (so
//!   foreign keys hold) and the target tables' enabled user triggers are
//!   disabled, recorded in `pglive.apply_disabled_triggers`, and enabled
//!   again by [`restore_triggers`] at cutover.
//! - **Identity columns.** `GENERATED ALWAYS` identity columns refuse the
//!   source's values, so the applier makes them `BY DEFAULT` (for the
//!   tables of [`ApplyOptions::copied_at`] when it connects, for others when
//!   their first Relation message arrives), records them in
//!   `pglive.apply_identity_always`, and [`restore_identity_columns`] makes
//!   them `ALWAYS` again at cutover.
//! - **Values are never changed on the way.** Casts from the stream's text
//!   carry no type modifier (the column's own modifier checks the stored
//!   value), and a column whose type (built-in by OID, the source's own
//!   types by the name their Type message gives) or modifier differs from
//!   the source's stops apply ([`Error::ShapeMismatch`]).
//! - **Rows must be there.** An UPDATE or DELETE that does not find every
//!   row the source changed stops apply ([`Error::RowsMissing`]): the target
//!   diverged and silently going on would hide it.
//! - **Bounded memory.** Collected statements run inside the open target
//!   transaction past [`ApplyOptions::max_pending_bytes`]; streamed
//!   in-progress transactions spill to disk past
//!   [`ApplyOptions::spool_memory`].
//!
//! A source relation whose columns no longer match the target (a column
//! added, retyped, dropped or renamed on the source) stops apply with
//! [`Error::ShapeMismatch`] naming the table and the columns, and the
//! `ALTER TABLE` that makes the target match (a single column gone and a
//! single one added with the same type is taken for a rename); nothing of
//! the unfinished batch is committed, so after fixing the target a new run
//! resumes from the last committed batch. Generated columns are never
//! written; columns are matched by name; a target column the source does
//! not send (other than a generated one) stops apply too, as the source's
//! rows would leave it empty.
#![deny(missing_docs)]

mod applier;
mod batcher;
mod changes;
mod chunks;
mod ddl;
mod error;
mod execute;
mod intake;
mod lanes;
mod plan;
mod progress;
mod relations;
mod run;
mod sessions;
mod shape;
mod spool;
mod spread;
mod statements;
mod table;

pub use applier::{Applier, ApplyOptions, ApplyStats};
pub use chunks::ChunkedTable;
pub use ddl::{
    DdlDecision, DdlRecord, PendingDdl, ddl_log, ddl_message_prefix, decide_ddl, record_pending_ddl,
};
pub use error::{Error, Result};
pub use progress::{applied_lsn, forget, restore_identity_columns, restore_triggers};
pub use run::{Progress, RunOptions, Stopped, run};
