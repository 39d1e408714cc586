//! The initial data copy: every table's rows, from the source to the target,
//! exactly as the replication slot's exported snapshot sees them.
//!
//! # The model
//!
//! - **One instant.** The slot's snapshot and its consistent point C
//!   describe the same instant (DESIGN.md). Every worker's source session
//!   imports that snapshot (`BEGIN ISOLATION LEVEL REPEATABLE READ; SET
//!   TRANSACTION SNAPSHOT …`), so the copy holds every transaction committed
//!   before C and none after; the stream from C supplies the rest. Each part
//!   records C as its `copied_at`, and [`copied_at`] hands the applier the
//!   map table → LSN.
//! - **Parts.** [`plan`] splits tables into parts: whole tables, or ranges
//!   of an integer primary key or of heap blocks for tables above a size
//!   threshold, largest first. Partitioned tables are copied through their
//!   leaves; unlogged tables like any other; large objects as one more part.
//!   A TimescaleDB hypertable is read through its root in runs of whole
//!   chunks, or, when it has compressed chunks, chunk by chunk, compressed
//!   ones in their compressed form (see `chunks.rs`).
//! - **The target coordinates.** Parts live in `pglive.copy_parts` on the
//!   target. A worker claims one with `SELECT … FOR UPDATE SKIP LOCKED`,
//!   copies its rows and marks it done in that same transaction: a crash
//!   loses the part's rows and its claim together, and the next run copies
//!   only unfinished parts. Any number of processes, on any number of
//!   machines, can run the same copy at once; see [State](#state) below for
//!   how snapshots and resumption fit together.
//! - **Streaming.** A part is `COPY (SELECT <columns> FROM ONLY t [WHERE
//!   range]) TO STDOUT (FORMAT binary)` on the source piped chunk by chunk
//!   into `COPY t (<columns>) FROM STDIN (FORMAT binary)` on the target;
//!   each chunk is awaited into the target before the next is read, so
//!   memory stays bounded and a slow target slows the source read. Columns
//!   are named, generated columns left out. A whole-table part starts with
//!   `TRUNCATE` and writes with `FREEZE`. Tables with columns whose binary
//!   form embeds type OIDs (arrays of user-defined types, composites) move
//!   as text in sessions with pinned settings.
//! - **Progress** is reported as [`CopyEvent`]s to a callback; the library
//!   never prints.
//!
//! # State
//!
//! All parts of a table must come from one snapshot, because the applier
//! skips a table's changes up to one `copied_at`. Workers only claim parts
//! of tables whose finished parts carry their own snapshot's LSN. A run
//! under a new snapshot (after a crash, from a new `TEMPORARY` slot) empties
//! tables left half-done under an older one and copies them again; finished
//! tables keep their rows and their older `copied_at`, and the permanent
//! slot still holds everything after it. Processes sharing a copy share one
//! exported snapshot (the process that created the slot keeps its
//! connection open and idle until the workers have imported it).
//!
//! # Example
//!
//! ```no_run
//! use pglive_repl::{ReplicationClient, SlotOptions};
//! use pglive_postgres::{ConnectConfig, connect_sql};
//! use pglive_schema::{Catalog, ObjectFilter};
//! use pglive_snapshot::{Copier, CopyOptions, Snapshot};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = ConnectConfig::parse("host=old dbname=shop")?;
//! let target = ConnectConfig::parse("host=new dbname=shop")?;
//! let mut replication = ReplicationClient::connect(&source).await?;
//! let slot = replication.create_slot("pglive", &SlotOptions::default()).await?;
//! let snapshot = Snapshot::from_slot(&slot).expect("exported");
//! let catalog = Catalog::read(&connect_sql(&source).await?, &ObjectFilter::new()).await?;
//! let copier = Copier::new(source, target, catalog.tables, CopyOptions::default());
//! let summary = copier.run(&snapshot, |event| tracing::info!(?event)).await?;
//! println!("{} rows", summary.rows);
//! # Ok(())
//! # }
//! ```
//!
//! It never decodes WAL; that is `pglive-repl`'s job.
#![deny(missing_docs)]

mod chunks;
mod copier;
mod error;
mod pipe;
mod plan;
mod state;

pub use copier::{Copier, CopyEvent, CopyOptions, CopyPlan, CopySummary, Snapshot, vacuum_analyze};
pub use error::{Error, Result};
pub use pipe::pipe;
pub use plan::{Part, PartRange, PlanOptions, TimeType, key_ranges, largest_first, plan};
pub use state::{PartStatus, copied_at, reset, reset_tables, status};
