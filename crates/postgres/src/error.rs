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

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
