//! The crate's error type.

use crate::conninfo::ConfigError;

/// What can go wrong opening an SQL session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string is malformed or names an unknown parameter.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS settings could not be used (unreadable certificate file, bad
    /// PEM, host name not valid for TLS).
    #[error("TLS configuration: {reason}")]
    Tls {
        /// What is wrong, naming the file or setting.
        reason: String,
    },
    /// An SQL session (tokio-postgres) failed.
    #[error("SQL session with {server}")]
    Sql {
        /// `user@host:port/dbname` (never the password).
        server: String,
        /// The client's error; its SQLSTATE is available through
        /// [`Error::sqlstate`].
        #[source]
        source: tokio_postgres::Error,
    },
}

impl Error {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Sql { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// Whether retrying on a new connection may succeed: the connection was
    /// lost or never opened, or the server is shutting down.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Sql { source, .. } => source.is_closed() || source.code().is_none(),
            _ => false,
        }
    }
}

/// Whether a statement's error may go away on a new connection: the
/// connection was lost (class 08 or closed) or the server is shutting down
/// or starting (57P01…57P03). Every stage's `is_transient` asks this of its
/// statement errors.
pub fn is_transient_statement_error(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || error
            .code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
