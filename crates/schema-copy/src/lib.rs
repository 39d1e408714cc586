//! Schema copy for pglive (not yet written).
//!
//! This crate will own everything about the *shape* of the migrated database:
//! running the real `pg_dump`, `pg_restore` and `psql` (choosing a `pg_dump`
//! whose major version is at least the source's), restoring the pre-data
//! section before the rows are copied and the post-data section (indexes,
//! constraints, triggers) in parallel after them, and the catalog queries the
//! other stages need as plain typed values: tables with sizes and keys,
//! replica identity, generated columns, partitions, sequences, large objects
//! and TimescaleDB hypertables. It also synchronizes sequences at cutover.
//!
//! It never copies rows; that is `pglive-snapshot`'s job.
#![deny(missing_docs)]
