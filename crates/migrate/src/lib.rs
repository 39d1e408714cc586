//! A whole live PostgreSQL migration, as a library.
//!
//! The stage crates each do one thing (`pglive-repl` speaks replication,
//! `pglive-schema` runs `pg_dump`, `pglive-snapshot` copies tables under a
//! snapshot, `pglive-apply` applies the change stream). This crate composes
//! them into a migration that survives crashes, and is what the `pglive`
//! command runs: the binary only turns flags into options and events into
//! bars, lines or JSON.
//!
//! # The model
//!
//! A migration has a name and lives in the target database (schema
//! `pglive`): its stage, slot, publications, settings and positions. Every
//! call reads that state first, so any call can run from any machine, and a
//! call that stopped (a crash, a lost connection, [`Control::stop`]) is
//! resumed by making it again.
//!
//! - [`migrate`]: preflight (every refusal before anything is created, as
//!   [`Error::Preflight`]), publications and a replication slot with an
//!   exported snapshot, the schema with `pg_dump` (pre-data), the parallel
//!   copy under the snapshot, indexes and constraints, then the change
//!   stream applied until a cutover is asked for. Tables created on the
//!   source meanwhile join the migration.
//! - [`cutover`]: waits for the source to go quiet (optionally fencing it
//!   first), applies up to its position, carries what logical decoding
//!   does not (sequences, large objects, materialized views), compares row
//!   counts, reports anything committed after its final position, and
//!   drops the slot. Asked of a running [`migrate`] through the target, or
//!   done directly when none runs. The fence is recorded on the target
//!   before it is raised; a cutover that does not finish withdraws itself
//!   and lifts it, and [`abort_cutover`] and [`clean`] lift a recorded one.
//! - [`verify`]: counts and checksums on both sides, at one consistent
//!   point even while the migration streams.
//! - [`status`] and [`clean`].
//!
//! Progress and messages arrive through an [`Events`] sink; a [`Control`]
//! asks a running migration to stop or to cut over.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use pglive_migrate::{Control, Event, MigrateOptions, Outcome};
//! use pglive_postgres::ConnectConfig;
//!
//! # async fn run() -> Result<(), pglive_migrate::Error> {
//! let source = ConnectConfig::parse("postgresql://repl@old-db/shop")?;
//! let target = ConnectConfig::parse("postgresql://app@new-db/shop")?;
//! let mut options = MigrateOptions::new("shop");
//! options.cutover_when_ready = true;
//! let events = Arc::new(|event: Event| {
//!     if let Event::Note { text, .. } = event {
//!         println!("{text}");
//!     }
//! });
//! match pglive_migrate::migrate(source, target, &options, events, &Control::new()).await? {
//!     Outcome::CutOver { summary } => println!("switch the application now: {summary}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod adopt;
mod aggregate_history;
mod clean;
mod columns;
mod control;
mod cutover;
mod ddl_capture;
mod error;
mod event_triggers;
mod events;
mod fence;
pub mod human;
mod job;
mod join;
mod late_changes;
mod live;
mod lock;
mod preflight;
mod publication;
mod schema_changes;
mod slot;
mod source_jobs;
mod stages;
mod state;
mod status;
mod timescale;
mod verify;

pub use clean::clean;
pub use control::Control;
pub use cutover::{CutoverOptions, CutoverOutcome, abort_cutover, cutover};
pub use ddl_capture::DdlMode;
pub use error::{Error, Result, chain};
pub use events::{Event, Events, Ignore, Step, VerifyProgress};
pub use job::{MigrateOptions, NewHypertable};
pub use join::{JoinSummary, join_copy};
pub use preflight::Findings;
pub use schema_changes::{DdlDecision, SchemaChange, decide as decide_ddl};
pub use stages::{Outcome, migrate};
pub use state::{Settings, Stage};
pub use status::{CopyStatus, Status, TableCopy, status};
pub use verify::{Comparison, TableComparison, Verification, VerifyOptions, verify};

/// The applier's figures, as [`Event::Streaming`] carries them.
pub use pglive_apply::Progress;
/// A post-data build starting, as [`Event::PostData`] carries it.
pub use pglive_schema::PostDataProgress;
/// A copy worker's progress, as [`Event::Copy`] carries it.
pub use pglive_snapshot::CopyEvent;
