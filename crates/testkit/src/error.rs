//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while finding, starting, using or stopping a
/// throwaway cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No directory holding `postgres`, `initdb` and `pg_ctl` was found.
    #[error(
        "PostgreSQL server programs (postgres, initdb, pg_ctl){} not found (searched: {searched}); \
         install them (e.g. `apt-get install postgresql-15`) or set PG_BINDIR to the directory \
         that holds them",
        version_suffix(*.major)
    )]
    BinariesNotFound {
        /// The major version that was asked for, if any.
        major: Option<u32>,
        /// The directories that were looked at.
        searched: String,
    },

    /// The process runs as root, which PostgreSQL refuses, and the unprivileged
    /// system user to run it as does not exist.
    #[error(
        "running as root, which PostgreSQL refuses, and there is no system user `{user}` in \
         /etc/passwd to run it as; create one (e.g. `useradd --system {user}`, which \
         `apt-get install postgresql-15` also does) or run as a non-root user"
    )]
    NoUnprivilegedUser {
        /// The user name that was looked up.
        user: String,
    },

    /// A setting name is not a plain PostgreSQL parameter name.
    #[error("invalid setting name {name:?}: expected letters, digits, `_` and `.` only")]
    InvalidSetting {
        /// The rejected name.
        name: String,
    },

    /// A file-system operation failed.
    #[error("could not {action} {}", .path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A program could not be started at all.
    #[error("could not run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A helper program (initdb, openssl, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// The end of what it wrote to standard error (or output).
        stderr: String,
    },

    /// The server did not start or stop as asked.
    #[error("PostgreSQL server {reason}; server log {}:\n{log_tail}", .log_path.display())]
    Server {
        /// What happened, e.g. "exited during startup (exit code 1)".
        reason: String,
        /// The server's log file.
        log_path: PathBuf,
        /// The last lines the server logged during the attempt.
        log_tail: String,
    },

    /// `psql` failed: it could not connect or a statement failed.
    #[error("psql on {target} failed ({status}): {stderr}")]
    Psql {
        /// The database or the connection string (password removed).
        target: String,
        /// How psql exited.
        status: String,
        /// The end of psql's standard error.
        stderr: String,
    },

    /// TimescaleDB was asked for and could not be installed.
    #[error(
        "TimescaleDB is not installed in {libdir} and could not be: {detail}; install it with \
         `../shared/timescaledb/install.sh PG_CONFIG`"
    )]
    TimescaleDbMissing {
        /// The server's library directory (`pg_config --pkglibdir`).
        libdir: String,
        /// Why it could not be installed.
        detail: String,
    },

    /// The per-cluster supervisor process (which owns the server and deletes
    /// the cluster's directory) stopped answering.
    #[error("the cluster's supervisor process failed: {detail}")]
    Supervisor {
        /// What went wrong.
        detail: String,
        /// The underlying error, if any.
        #[source]
        source: Option<io::Error>,
    },
}

fn version_suffix(major: Option<u32>) -> String {
    major
        .map(|m| format!(" of version {m}"))
        .unwrap_or_default()
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn supervisor(detail: impl Into<String>, source: Option<io::Error>) -> Self {
        Error::Supervisor {
            detail: detail.into(),
            source,
        }
    }
}
