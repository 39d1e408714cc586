//! The shape of the migrated database: schema copy with the real `pg_dump`
//! and `pg_restore`, and the catalog facts the other stages need.
//!
//! # The model
//!
//! pglive never re-implements DDL generation. `pg_dump` knows every object
//! kind of every PostgreSQL version, so this crate drives it and
//! `pg_restore` as child processes ([`PgTools`] finds programs at least as
//! new as the source server) and only decides *what* runs *when*:
//!
//! - **Pre-data** (schemas, extensions, types, functions, tables, sequences,
//!   views) is restored before the rows are copied, in one transaction, on a
//!   target that must hold no tables yet ([`SchemaCopy::restore_pre_data`]).
//! - **Post-data** (indexes, constraints, triggers, rules) is restored after
//!   the rows, because building an index once is far cheaper than
//!   maintaining it row by row. Primary keys and replica identity indexes
//!   come first, since the applier needs them to find rows; the rest runs in
//!   parallel; materialized views are refreshed last
//!   ([`SchemaCopy::restore_post_data`]).
//! - Both sections are dumped up front under the replication slot's exported
//!   snapshot ([`SchemaCopy::dump`]), so schema and data describe the same
//!   instant.
//!
//! Owners and privileges are left out by default, so a target role that
//! only owns its database (a managed service) can restore everything.
//! Passwords reach child processes through `PGPASSWORD`, never their command
//! line; TLS settings through `PGSSLMODE` and friends.
//!
//! [`Catalog::read`] returns what the other stages need as plain values:
//! tables with sizes, keys, replica identity, generated columns, partitions;
//! sequences; extensions; large objects; TimescaleDB hypertables.
//! [`sync_sequences`] sets the target's sequences at cutover.
//!
//! This crate never copies rows; that is `pglive-snapshot`'s job.
//!
//! # Example
//!
//! ```no_run
//! use pglive_postgres::ConnectConfig;
//! use pglive_schema::{SchemaCopy, SchemaOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let source = ConnectConfig::parse("host=old dbname=shop")?;
//! let target = ConnectConfig::parse("host=new dbname=shop")?;
//! let mut copy = SchemaCopy::new(source, target, SchemaOptions::default()).await?;
//! copy.dump(Some("00000003-00000002-1")).await?; // the slot's exported snapshot
//! copy.restore_pre_data().await?;
//! // ... copy the rows (pglive-snapshot) ...
//! copy.restore_post_data().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod catalog;
mod copy;
mod error;
mod filter;
mod sequences;
mod timescale;
mod toc;
mod tools;

pub use catalog::{Catalog, Column, Extension, ReplicaIdentity, Sequence, Table, TableKind};
pub use copy::{PostDataProgress, RestoreReport, SchemaCopy, SchemaOptions};
pub use error::{Error, Result};
pub use filter::ObjectFilter;
pub use sequences::{SyncedSequence, sync_sequences};
pub use timescale::{
    ChunkLayout, Compression, ContinuousAggregate, Dimension, Hypertable, Job, Timescale,
    chunk_layout, hypertable_names,
};
pub use tools::{PgTools, server_major};
