//! The crate's error type.

use std::fmt;
use std::io;

use crate::pgoutput::DecodeError;
use pglive_postgres::SslMode;

/// An error reported by the server (an `ErrorResponse`), with the fields a
/// user needs to act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC` (not localized).
    pub severity: String,
    /// The SQLSTATE code, such as `42710` for a slot that already exists.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The optional detail.
    pub detail: Option<String>,
    /// The optional hint on what to do.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string, the TLS settings or an SQL session failed.
    #[error(transparent)]
    Postgres(#[from] pglive_postgres::Error),
    /// A TCP or Unix socket connection could not be opened.
    #[error("could not connect to {server}")]
    Connect {
        /// `user@host:port/dbname` (never the password).
        server: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("timed out connecting to {server}")]
    ConnectTimeout {
        /// `user@host:port/dbname`.
        server: String,
    },
    /// The server refused TLS that `sslmode` requires.
    #[error("{server} does not accept TLS connections, but sslmode={sslmode} requires TLS")]
    TlsRefused {
        /// `user@host:port/dbname`.
        server: String,
        /// The mode that required TLS.
        sslmode: SslMode,
    },
    /// The TLS handshake failed (for example the server's certificate did not
    /// verify).
    #[error("TLS handshake with {server} failed")]
    TlsHandshake {
        /// `user@host:port/dbname`.
        server: String,
        /// The TLS library's error.
        #[source]
        source: io::Error,
    },
    /// The server asked for a password and none was given or found.
    #[error(
        "{server} asks for a password and none was given: add password= to the connection string, set PGPASSWORD, or add a line to ~/.pgpass (mode 0600)"
    )]
    PasswordRequired {
        /// `user@host:port/dbname`.
        server: String,
    },
    /// The server asked for an authentication method this crate does not
    /// speak (GSSAPI, SSPI, Kerberos).
    #[error("{server} asks for an unsupported authentication method ({method})")]
    UnsupportedAuth {
        /// `user@host:port/dbname`.
        server: String,
        /// The method's name.
        method: String,
    },
    /// `channel_binding=require`, but the server let the client in without
    /// SCRAM bound to the TLS channel.
    #[error(
        "{server} authenticates with {method}, but channel_binding=require accepts only SCRAM-SHA-256-PLUS over TLS (the server needs scram-sha-256 in pg_hba.conf and TLS)"
    )]
    ChannelBindingRequired {
        /// `user@host:port/dbname`.
        server: String,
        /// What the server asked for instead.
        method: String,
    },
    /// The server accepted a SCRAM login without proving that it knows the
    /// password (no valid `SASLFinal` before `AuthenticationOk`): it may be
    /// a man in the middle.
    #[error(
        "{server} accepted the login without the SCRAM server proof (no SASLFinal): it may not be the real server; refusing to go on"
    )]
    ServerUnproven {
        /// `user@host:port/dbname`.
        server: String,
    },
    /// The server answered with an error while doing `context`.
    #[error("{context}: {source}")]
    Server {
        /// What was being done: "connecting to …", a replication command.
        context: String,
        /// The server's error.
        #[source]
        source: Box<ServerError>,
    },
    /// Reading from or writing to the connection failed.
    #[error("I/O error on the connection to {server}")]
    Io {
        /// `user@host:port/dbname`.
        server: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection unexpectedly.
    #[error("{server} closed the connection")]
    Closed {
        /// `user@host:port/dbname`.
        server: String,
    },
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation from {server}: {reason}")]
    Protocol {
        /// `user@host:port/dbname`.
        server: String,
        /// What was unexpected.
        reason: String,
    },
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The replication stream was stopped or its task ended.
    #[error("the replication stream has ended")]
    StreamEnded,
}

impl Error {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server { source, .. } => Some(&source.code),
            Error::Postgres(error) => error.sqlstate(),
            _ => None,
        }
    }

    /// Whether retrying on a new connection may succeed: the connection was
    /// lost, or the server is shutting down or overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Io { .. }
            | Error::Closed { .. } => true,
            // Class 08 (connection exception), 57P01..57P03 (shutdown,
            // cannot connect now), 53300 (too many connections), 55006 (a
            // slot still held by a walsender that has not yet noticed its
            // client is gone).
            Error::Server { source, .. } => {
                source.code.starts_with("08")
                    || matches!(
                        source.code.as_str(),
                        "57P01" | "57P02" | "57P03" | "53300" | "55006"
                    )
            }
            Error::Postgres(error) => error.is_transient(),
            _ => false,
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<pglive_postgres::ConfigError> for Error {
    fn from(error: pglive_postgres::ConfigError) -> Error {
        Error::Postgres(error.into())
    }
}
