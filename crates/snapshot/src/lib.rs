//! Parallel initial data copy for pglive (not yet written).
//!
//! This crate will copy every table's rows from the source to the target
//! under the snapshot exported by the replication slot, so that the copy
//! describes exactly the slot's consistent point. Work is split into parts
//! (whole tables, or key / ctid ranges of large tables) that N workers claim
//! from a state table in the target with `SELECT … FOR UPDATE SKIP LOCKED`;
//! each part streams `COPY … TO STDOUT (FORMAT binary)` into
//! `COPY … FROM STDIN (FORMAT binary)` with bounded memory, and commits its
//! done-state in the same transaction as its rows, so a crashed copy resumes
//! with only the unfinished parts. Progress is reported as events; the
//! library never prints.
//!
//! It never decodes WAL; that is `pglive-repl`'s job.
#![deny(missing_docs)]
