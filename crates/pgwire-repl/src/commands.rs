//! Replication commands: `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
//! `DROP_REPLICATION_SLOT`, `START_REPLICATION` with pgoutput's options,
//! and plain SQL through the simple query protocol.

use std::fmt::Write as _;

use pglive_postgres::{Lsn, quote_ident, quote_literal};
use postgres_protocol::message::frontend;

use crate::client::{ReplicationClient, short_command};
use crate::error::Result;
use crate::stream::{ReplicationStream, StreamOptions};
use crate::wire;

/// What `IDENTIFY_SYSTEM` reports about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database this connection is attached to.
    pub dbname: Option<String>,
}

/// What to do with the snapshot of a new logical slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotAction {
    /// Export it under a name that other sessions import with
    /// `SET TRANSACTION SNAPSHOT`; it stays valid until the next command on
    /// this connection, or until the connection closes.
    #[default]
    Export,
    /// Do not export it.
    NoExport,
    /// Make it the snapshot of the current transaction on this connection,
    /// which must be a `REPEATABLE READ` transaction that has run no query.
    Use,
}

/// Options of `CREATE_REPLICATION_SLOT` for a pgoutput slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotOptions {
    /// Drop the slot when this connection closes.
    pub temporary: bool,
    /// What to do with the slot's snapshot.
    pub snapshot: SnapshotAction,
    /// Decode prepared transactions at `PREPARE TRANSACTION` (PostgreSQL 15+).
    pub two_phase: bool,
}

/// A slot that `CREATE_REPLICATION_SLOT` has made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub name: String,
    /// The LSN from which the slot streams every transaction that commits
    /// after it; the snapshot describes this same instant.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, with [`SnapshotAction::Export`].
    pub snapshot_name: Option<String>,
    /// The output plugin (`pgoutput`).
    pub output_plugin: String,
}

/// The result of a simple query: column names, rows as text, and the command
/// tag of the last statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names of the last result set.
    pub columns: Vec<String>,
    /// Rows of the last result set; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag, such as `SELECT 1`.
    pub tag: String,
}

impl ReplicationClient {
    /// Runs one command with the simple query protocol and collects its
    /// result; an error response becomes [`crate::Error::Server`] with the command
    /// as context.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult> {
        frontend::query(sql, &mut self.wire.out).map_err(|e| self.wire.protocol(e.to_string()))?;
        self.wire.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'T' => {
                    result.columns = wire::parse_row_description(frame.body)
                        .ok_or_else(|| self.wire.protocol("malformed RowDescription"))?;
                    result.rows.clear();
                }
                b'D' => result.rows.push(
                    wire::parse_data_row(frame.body)
                        .ok_or_else(|| self.wire.protocol("malformed DataRow"))?,
                ),
                b'C' => {
                    let mut body = frame.body;
                    result.tag = wire::read_cstr(&mut body).unwrap_or_default();
                }
                b'E' => error = Some(self.server_error(&frame, &short_command(sql))),
                b'S' => self.record_parameter(frame.body),
                b'I' | b'N' => {}
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(result),
                    };
                }
                other => return Err(self.unexpected(other, "in a query result")),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the system identifier, timeline, current WAL
    /// position and database.
    pub async fn identify_system(&mut self) -> Result<SystemInfo> {
        let result = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = self.single_row(&result, 4, "IDENTIFY_SYSTEM")?;
        Ok(SystemInfo {
            system_id: row[0].clone().unwrap_or_default(),
            timeline: self.parse_field(&row[1], "IDENTIFY_SYSTEM timeline")?,
            xlogpos: self.parse_field(&row[2], "IDENTIFY_SYSTEM xlogpos")?,
            dbname: row[3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput …`.
    ///
    /// With [`SnapshotAction::Export`] the returned snapshot stays importable
    /// only until the next command on this connection: keep the client idle
    /// until every session that needs it has run `SET TRANSACTION SNAPSHOT`.
    pub async fn create_slot(&mut self, name: &str, options: &SlotOptions) -> Result<CreatedSlot> {
        let mut sql = format!("CREATE_REPLICATION_SLOT {}", quote_ident(name));
        if options.temporary {
            sql.push_str(" TEMPORARY");
        }
        sql.push_str(" LOGICAL pgoutput");
        if options.two_phase {
            if self.server_version_num().unwrap_or(0) < 150000 {
                return Err(self
                    .wire
                    .protocol("two-phase slots need PostgreSQL 15 or later".to_owned()));
            }
            let snapshot = match options.snapshot {
                SnapshotAction::Export => "export",
                SnapshotAction::NoExport => "nothing",
                SnapshotAction::Use => "use",
            };
            let _ = write!(sql, " (SNAPSHOT '{snapshot}', TWO_PHASE)");
        } else {
            // The keyword syntax works on every version from 10 on.
            sql.push_str(match options.snapshot {
                SnapshotAction::Export => " EXPORT_SNAPSHOT",
                SnapshotAction::NoExport => " NOEXPORT_SNAPSHOT",
                SnapshotAction::Use => " USE_SNAPSHOT",
            });
        }
        let result = self.simple_query(&sql).await?;
        let row = self.single_row(&result, 4, "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot {
            name: row[0].clone().unwrap_or_default(),
            consistent_point: self.parse_field(&row[1], "consistent_point")?,
            snapshot_name: row[2].clone(),
            output_plugin: row[3].clone().unwrap_or_default(),
        })
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`: with `wait`, waits until a
    /// connection still using the slot lets go instead of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(name),
            if wait { " WAIT" } else { "" }
        );
        self.simple_query(&sql).await.map(|_| ())
    }

    /// `START_REPLICATION SLOT name LOGICAL start (pgoutput options)`: turns
    /// this connection into a stream of WAL data. The stream answers
    /// keepalives and sends status updates by itself; the position confirmed
    /// to the server is only what the caller reports through
    /// [`ReplicationStream::feedback`].
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        pgoutput: &PgOutputOptions,
        options: StreamOptions,
    ) -> Result<ReplicationStream> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            quote_ident(slot),
            pgoutput.to_option_list()
        );
        frontend::query(&sql, &mut self.wire.out).map_err(|e| self.wire.protocol(e.to_string()))?;
        self.wire.flush().await?;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'W' => break,
                b'E' => {
                    let error = self.server_error(&frame, &short_command(&sql));
                    // Drain up to ReadyForQuery so the error is complete.
                    while self.wire.read_frame().await?.tag != b'Z' {}
                    return Err(error);
                }
                b'N' => {}
                b'S' => self.record_parameter(frame.body),
                other => return Err(self.unexpected(other, "after START_REPLICATION")),
            }
        }
        Ok(ReplicationStream::spawn(self, start, options))
    }

    fn single_row<'r>(
        &self,
        result: &'r QueryResult,
        columns: usize,
        command: &str,
    ) -> Result<&'r Vec<Option<String>>> {
        match result.rows.as_slice() {
            [row] if row.len() >= columns => Ok(row),
            _ => Err(self.wire.protocol(format!(
                "{command} returned {} rows instead of one with {columns} columns",
                result.rows.len()
            ))),
        }
    }

    fn parse_field<T: std::str::FromStr>(&self, value: &Option<String>, what: &str) -> Result<T> {
        value
            .as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                self.wire
                    .protocol(format!("{what} is missing or malformed: {value:?}"))
            })
    }
}

/// The options `START_REPLICATION` passes to pgoutput.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOutputOptions {
    /// Protocol version 1–4: 2 adds streaming of large in-progress
    /// transactions, 3 two-phase commit, 4 parallel streaming.
    pub proto_version: u32,
    /// The publications whose tables are streamed.
    pub publication_names: Vec<String>,
    /// Send column values in binary instead of text (PostgreSQL 14+).
    pub binary: bool,
    /// Send `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Stream large in-progress transactions: `off`, `on` or (protocol 4)
    /// `parallel`.
    pub streaming: Streaming,
    /// Decode prepared transactions at `PREPARE` (protocol 3+).
    pub two_phase: bool,
    /// Only changes that originate locally (`origin 'none'`, PostgreSQL 16+).
    pub origin_none: bool,
}

/// Whether pgoutput streams in-progress transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Streaming {
    /// Whole transactions only, sent at commit.
    #[default]
    Off,
    /// Large transactions are sent in blocks while in progress (protocol 2+).
    On,
    /// As `On`, with abort LSN and time in Stream Abort (protocol 4).
    Parallel,
}

impl PgOutputOptions {
    /// Protocol version 1 for the given publications; no binary, no
    /// messages, no streaming.
    pub fn new<I, S>(publications: I) -> PgOutputOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        PgOutputOptions {
            proto_version: 1,
            publication_names: publications.into_iter().map(Into::into).collect(),
            binary: false,
            messages: false,
            streaming: Streaming::Off,
            two_phase: false,
            origin_none: false,
        }
    }

    /// The highest protocol version a server of `server_version_num`
    /// supports: 4 from 16, 3 from 15, 2 from 14, else 1.
    pub fn max_proto_version(server_version_num: u32) -> u32 {
        match server_version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            v if v >= 140000 => 2,
            _ => 1,
        }
    }

    fn to_option_list(&self) -> String {
        let publications = self
            .publication_names
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join(",");
        let mut list = format!(
            "proto_version '{}', publication_names {}",
            self.proto_version,
            quote_literal(&publications)
        );
        if self.binary {
            list.push_str(", binary 'true'");
        }
        if self.messages {
            list.push_str(", messages 'true'");
        }
        match self.streaming {
            Streaming::Off => {}
            Streaming::On => list.push_str(", streaming 'on'"),
            Streaming::Parallel => list.push_str(", streaming 'parallel'"),
        }
        if self.two_phase {
            list.push_str(", two_phase 'true'");
        }
        if self.origin_none {
            list.push_str(", origin 'none'");
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_list_quotes_publication_names() {
        let mut o = PgOutputOptions::new(["pub", "we\"ird'one"]);
        o.proto_version = 4;
        o.binary = true;
        o.messages = true;
        o.streaming = Streaming::Parallel;
        o.two_phase = true;
        assert_eq!(
            o.to_option_list(),
            "proto_version '4', publication_names '\"pub\",\"we\"\"ird''one\"', binary 'true', messages 'true', streaming 'parallel', two_phase 'true'"
        );
    }

    #[test]
    fn max_protocol_by_version() {
        assert_eq!(PgOutputOptions::max_proto_version(130010), 1);
        assert_eq!(PgOutputOptions::max_proto_version(140000), 2);
        assert_eq!(PgOutputOptions::max_proto_version(150019), 3);
        assert_eq!(PgOutputOptions::max_proto_version(170002), 4);
    }
}
