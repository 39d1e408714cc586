//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while copying a schema or reading a catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No directory with `pg_dump`, `pg_restore` and `psql` was found.
    #[error(
        "no PostgreSQL client programs (pg_dump, pg_restore, psql) found; searched {searched}: install the PostgreSQL client or set PG_BINDIR"
    )]
    ToolsNotFound {
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// Every `pg_dump` found is older than the source server.
    #[error(
        "the source server is PostgreSQL {server_major} but the newest pg_dump found is older ({found}): install the PostgreSQL {server_major} client (or newer) or set PG_BINDIR"
    )]
    ToolsTooOld {
        /// The source server's major version.
        server_major: u32,
        /// The versions found with their directories, e.g. `14 (/usr/lib/postgresql/14/bin)`.
        found: String,
    },
    /// A child program could not be started.
    #[error("could not run {program}")]
    Spawn {
        /// The program's path.
        program: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A child program failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// What was run (program, action and server; never a password).
        command: String,
        /// The exit status.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// A file or directory could not be used.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done (`create`, `write`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A session with a server could not be opened.
    #[error("could not connect to {server}")]
    Connect {
        /// `user@host:port/dbname` (never the password).
        server: String,
        /// The connection error.
        #[source]
        source: pglive_postgres::Error,
    },
    /// A query failed.
    #[error("{context} (SQLSTATE {})", sqlstate(source))]
    Query {
        /// What was being done, naming the object and server.
        context: String,
        /// The client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The target already holds tables (or other relations) and the caller
    /// did not ask to reuse its schema.
    #[error(
        "the target {target} already holds {count} relation(s) ({examples}): use an empty database, drop them, or reuse the existing schema"
    )]
    TargetNotEmpty {
        /// `user@host:port/dbname`.
        target: String,
        /// How many relations were found.
        count: usize,
        /// The first few, as `schema.name`.
        examples: String,
    },
    /// A `pg_dump` object pattern cannot be used.
    #[error("invalid object pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A program printed something this crate does not understand.
    #[error("unexpected output from {command}: {reason}")]
    Output {
        /// What was run.
        command: String,
        /// What was unexpected.
        reason: String,
    },
}

impl Error {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Query { source, .. } => source.code().map(|c| c.code()),
            Error::Connect { source, .. } => source.sqlstate(),
            _ => None,
        }
    }
}

fn sqlstate(error: &tokio_postgres::Error) -> &str {
    error.code().map_or("none", |c| c.code())
}

/// Builds the error of a failed query.
pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Query { context, source }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
