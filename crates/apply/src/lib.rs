//! Batched change applier for pglive (not yet written).
//!
//! This crate will turn the decoded pgoutput stream from `pglive-repl` into
//! large target transactions: runs of inserts become one `COPY`, runs of
//! updates and deletes become set-based statements, consecutive source
//! transactions are grouped in commit order, and the commit LSN of the last
//! applied source transaction is written in the same target transaction as
//! the changes it covers, so apply is exactly-once and crash-safe without
//! superuser rights. It honours each table's `copied_at` LSN handed to it by
//! its caller and reports the durable flush LSN to confirm to the source.
//!
//! It never runs `pg_dump`; that is `pglive-schema`'s job.
#![deny(missing_docs)]
