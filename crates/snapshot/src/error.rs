//! The crate's error type.

use pglive_postgres::QualifiedName;

/// Everything that can go wrong while copying data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A session could not be opened.
    #[error("could not connect to {server}")]
    Connect {
        /// `user@host:port/dbname` (never the password).
        server: String,
        /// The connection error.
        #[source]
        source: pglive_postgres::Error,
    },
    /// The exported snapshot could not be imported: it is no longer valid
    /// (the exporting connection ran a command or closed) or never was.
    #[error(
        "could not import snapshot {name} on {server} (SQLSTATE {}): keep the connection that exported it open and idle until every worker has started",
        sqlstate(source)
    )]
    Snapshot {
        /// The snapshot's name.
        name: String,
        /// `user@host:port/dbname`.
        server: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement on the source failed.
    #[error("{context} on the source (SQLSTATE {})", sqlstate(source))]
    Source {
        /// What was being done, naming the table and part.
        context: String,
        /// The client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement on the target failed.
    #[error("{context} on the target (SQLSTATE {})", sqlstate(source))]
    Target {
        /// What was being done, naming the table and part.
        context: String,
        /// The client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A part in the state table names a table this process was not given.
    #[error("table {table} has copy parts in the state but is not among the tables given")]
    UnknownTable {
        /// The table.
        table: QualifiedName,
    },
    /// Another process copied part of the same table under a different
    /// snapshot: processes sharing a copy must share one snapshot.
    #[error(
        "part of {table} was copied under the snapshot at {theirs} while this process copies under {ours}: processes sharing a copy must use the same exported snapshot"
    )]
    SnapshotConflict {
        /// The table.
        table: QualifiedName,
        /// This process's snapshot LSN.
        ours: pglive_postgres::Lsn,
        /// The other snapshot's LSN, as stored.
        theirs: String,
    },
    /// The copy was started again under another snapshot (by the process
    /// that runs it) while this one still held the old one.
    #[error(
        "the copy of migration {migration:?} now runs under another snapshot than this process's (at {ours}): it was started again; join it anew"
    )]
    SnapshotReplaced {
        /// The migration.
        migration: String,
        /// This process's snapshot LSN.
        ours: pglive_postgres::Lsn,
    },
    /// A TimescaleDB chunk was compressed, decompressed or rewritten on the
    /// source after the copy's snapshot was taken, before its part was
    /// copied: TimescaleDB's own work there is not visible as of the
    /// snapshot (it truncates, drops and writes frozen rows), so the chunk's
    /// rows as of the snapshot cannot be read. A new snapshot can.
    #[error(
        "chunk {chunk} of {table} was compressed, decompressed or rewritten on the source after the copy's snapshot, before it was copied: its rows as of the snapshot cannot be read; run the migration again to copy {table} under a new snapshot (pausing the source's compression jobs while the copy runs avoids this)"
    )]
    ChunkChanged {
        /// The hypertable.
        table: QualifiedName,
        /// The chunk.
        chunk: QualifiedName,
    },
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] pglive_schema::Error),
    /// The copy's state table could not be created or upgraded.
    #[error(transparent)]
    State(#[from] pglive_postgres::StateSchemaError),
    /// A worker task panicked or was cancelled.
    #[error("copy worker {worker} stopped unexpectedly")]
    Worker {
        /// The worker's number.
        worker: usize,
        /// The task's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Snapshot { source, .. }
            | Error::Source { source, .. }
            | Error::Target { source, .. } => source.code().map(|c| c.code()),
            Error::Connect { source, .. } => source.sqlstate(),
            Error::Catalog(e) => e.sqlstate(),
            _ => None,
        }
    }
}

fn sqlstate(error: &tokio_postgres::Error) -> &str {
    error.code().map_or("none", |c| c.code())
}

pub(crate) fn source(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Source { context, source }
}

pub(crate) fn target(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Target { context, source }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
