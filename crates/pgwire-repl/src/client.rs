//! The replication connection: its state and the small helpers its
//! startup, authentication and commands share.

use std::collections::HashMap;

use bytes::Bytes;
use postgres_protocol::message::frontend;

use crate::error::{Error, Result};
use crate::wire::{self, Frame, Wire};

/// A connection in replication mode (`replication=database`): it runs
/// replication commands and plain SQL, and turns into a
/// [`crate::ReplicationStream`] with [`ReplicationClient::start_replication`].
pub struct ReplicationClient {
    /// The connection's socket and buffers.
    pub(crate) wire: Wire,
    /// Server parameters reported at startup and since.
    pub(crate) parameters: HashMap<String, String>,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("server", &self.wire.server)
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Records a `ParameterStatus` message's name and value.
    pub(crate) fn record_parameter(&mut self, mut body: Bytes) {
        if let (Some(name), Some(value)) = (wire::read_cstr(&mut body), wire::read_cstr(&mut body))
        {
            self.parameters.insert(name, value);
        }
    }

    pub(crate) fn server_error(&self, frame: &Frame, context: &str) -> Error {
        self.wire.server_error(frame, context)
    }

    pub(crate) fn unexpected(&self, tag: u8, when: &str) -> Error {
        self.wire
            .protocol(format!("unexpected message {:?} {when}", tag as char))
    }

    /// A server parameter reported at startup or since, such as
    /// `server_version`, `TimeZone` or `integer_datetimes`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version times 10000 plus its minor version, such
    /// as `150019` for 15.19 (as `server_version_num`).
    pub fn server_version_num(&self) -> Option<u32> {
        let version = self.parameter("server_version")?;
        let numeric: String = version
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        Some(major * 10000 + minor)
    }

    /// `user@host:port/dbname` of this connection.
    pub fn server(&self) -> &str {
        &self.wire.server
    }

    pub(crate) fn into_parts(self) -> (Wire, HashMap<String, String>) {
        (self.wire, self.parameters)
    }

    pub(crate) fn from_parts(wire: Wire, parameters: HashMap<String, String>) -> ReplicationClient {
        ReplicationClient { wire, parameters }
    }

    /// Closes the connection politely (a Terminate message).
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.wire.out);
        self.wire.flush().await
    }
}

/// The first words of a command, for error context without dumping data.
pub(crate) fn short_command(sql: &str) -> String {
    const MAX: usize = 120;
    let sql = sql.trim();
    match sql.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &sql[..cut]),
        None => sql.to_owned(),
    }
}
