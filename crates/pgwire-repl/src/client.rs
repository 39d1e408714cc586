//! The replication connection and its commands.

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::{Buf, Bytes};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::frontend;
use tokio::net::{TcpStream, UnixStream};

use crate::error::{Error, Result};
use crate::stream::{ReplicationStream, StreamOptions};
use crate::wire::{self, Frame, Socket, Wire};
use pglive_postgres::{
    ChannelBinding as ChannelBindingMode, ConfigError, ConnectConfig, Host, Lsn, SESSION_SETTINGS,
    SslMode, tls,
};
use pglive_postgres::{quote_ident, quote_literal};

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

/// A connection in replication mode (`replication=database`): it runs
/// replication commands and plain SQL, and turns into a
/// [`ReplicationStream`] with [`ReplicationClient::start_replication`].
pub struct ReplicationClient {
    wire: Wire,
    parameters: HashMap<String, String>,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("server", &self.wire.server)
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Opens a replication connection, trying each host of `config` in turn,
    /// with TLS as `sslmode` asks and trust, password, MD5 or SCRAM-SHA-256
    /// authentication. The session's text formats are pinned (see
    /// [`pglive_postgres::SESSION_SETTINGS`]).
    pub async fn connect(config: &ConnectConfig) -> Result<ReplicationClient> {
        let tls = tls::client_config(config)?;
        let mut last_error = None;
        for (host, port) in &config.hosts {
            let server = format!("{}@{}:{}/{}", config.user, host, port, config.dbname);
            let attempt = Self::connect_one(config, host, *port, tls.as_ref(), server.clone());
            let result = match config.connect_timeout {
                Some(limit) => tokio::time::timeout(limit, attempt)
                    .await
                    .unwrap_or(Err(Error::ConnectTimeout { server })),
                None => attempt.await,
            };
            match result {
                Ok(client) => return Ok(client),
                Err(e) if e.is_transient() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Postgres(ConfigError::no_hosts().into())))
    }

    async fn connect_one(
        config: &ConnectConfig,
        host: &Host,
        port: u16,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
        server: String,
    ) -> Result<ReplicationClient> {
        let connect_error = |source| Error::Connect {
            server: server.clone(),
            source,
        };
        let socket = match host {
            Host::Tcp(name) => {
                let tcp = TcpStream::connect((name.as_str(), port))
                    .await
                    .map_err(connect_error)?;
                tcp.set_nodelay(true).map_err(connect_error)?;
                Socket::Tcp(tcp)
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Socket::Unix(UnixStream::connect(path).await.map_err(connect_error)?)
            }
        };
        let mut wire = Wire::new(socket, server);
        let wants_tls = matches!(host, Host::Tcp(_))
            && !matches!(config.sslmode, SslMode::Disable | SslMode::Allow);
        if let (true, Some(tls), Host::Tcp(name)) = (wants_tls, tls, host) {
            wire = Self::negotiate_tls(wire, config.sslmode, tls, name).await?;
        } else if matches!(host, Host::Unix(_)) && config.sslmode >= SslMode::Require {
            return Err(Error::TlsRefused {
                server: wire.server,
                sslmode: config.sslmode,
            });
        }
        let mut client = ReplicationClient {
            wire,
            parameters: HashMap::new(),
        };
        client.startup(config).await?;
        Ok(client)
    }

    async fn negotiate_tls(
        mut wire: Wire,
        sslmode: SslMode,
        tls: &std::sync::Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<Wire> {
        frontend::ssl_request(&mut wire.out);
        wire.flush().await?;
        match wire.read_byte().await? {
            b'S' => {
                let server = wire.server.clone();
                let (socket, leftover) = wire.into_parts();
                if !leftover.is_empty() {
                    return Err(Error::Protocol {
                        server,
                        reason: "data after the SSL response (possible man-in-the-middle)".into(),
                    });
                }
                let Socket::Tcp(tcp) = socket else {
                    unreachable!("TLS is negotiated on TCP sockets only")
                };
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
                let stream = connector
                    .connect(tls::server_name(host)?, tcp)
                    .await
                    .map_err(|source| Error::TlsHandshake {
                        server: server.clone(),
                        source,
                    })?;
                Ok(Wire::new(Socket::Tls(Box::new(stream)), server))
            }
            b'N' if sslmode == SslMode::Prefer => Ok(wire),
            b'N' => Err(Error::TlsRefused {
                server: wire.server,
                sslmode,
            }),
            other => {
                Err(wire.protocol(format!("unexpected answer {other:#04x} to the SSL request")))
            }
        }
    }

    async fn startup(&mut self, config: &ConnectConfig) -> Result<()> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &config.user),
            ("database", &config.dbname),
            ("replication", "database"),
            ("application_name", &config.application_name),
        ];
        params.extend_from_slice(SESSION_SETTINGS);
        if let Some(options) = &config.options {
            params.push(("options", options));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wire.out)
            .map_err(|e| self.wire.protocol(e.to_string()))?;
        self.wire.flush().await?;
        self.authenticate(config).await?;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'S' => self.record_parameter(frame.body),
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                b'E' => return Err(self.server_error(&frame, "connecting")),
                other => {
                    return Err(self.unexpected(other, "during startup"));
                }
            }
        }
    }

    /// With `channel_binding=require`, refuses a login that is not SCRAM
    /// bound to the TLS channel; `method` says what the server asked for.
    fn allow_unbound_login(&self, config: &ConnectConfig, method: &str) -> Result<()> {
        if config.channel_binding == ChannelBindingMode::Require {
            return Err(Error::ChannelBindingRequired {
                server: self.wire.server.clone(),
                method: method.to_owned(),
            });
        }
        Ok(())
    }

    async fn authenticate(&mut self, config: &ConnectConfig) -> Result<()> {
        let server = self.wire.server.clone();
        let password = || {
            config
                .password
                .as_deref()
                .ok_or_else(|| Error::PasswordRequired {
                    server: server.clone(),
                })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut frame = self.wire.read_frame().await?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(self.server_error(&frame, "connecting")),
                b'N' => continue,
                other => return Err(self.unexpected(other, "during authentication")),
            }
            if frame.body.len() < 4 {
                return Err(self.wire.protocol("short authentication message"));
            }
            let code = frame.body.get_u32();
            match code {
                0 => {
                    if scram.is_none() {
                        self.allow_unbound_login(config, "no password")?;
                    }
                    return Ok(());
                }
                3 => {
                    self.allow_unbound_login(config, "a cleartext password")?;
                    let pw = password()?.to_owned();
                    frontend::password_message(pw.as_bytes(), &mut self.wire.out)
                        .map_err(|e| self.wire.protocol(e.to_string()))?;
                }
                5 => {
                    self.allow_unbound_login(config, "an MD5 password")?;
                    if frame.body.len() < 4 {
                        return Err(self.wire.protocol("short MD5 salt"));
                    }
                    let salt = [frame.body[0], frame.body[1], frame.body[2], frame.body[3]];
                    let hash = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wire.out)
                        .map_err(|e| self.wire.protocol(e.to_string()))?;
                }
                10 => {
                    let mechanisms: Vec<String> = frame
                        .body
                        .split(|&b| b == 0)
                        .filter(|m| !m.is_empty())
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect();
                    let offered = |name: &str| mechanisms.iter().any(|m| m == name);
                    if !offered(SCRAM_SHA_256) && !offered(SCRAM_SHA_256_PLUS) {
                        return Err(Error::UnsupportedAuth {
                            server: self.wire.server.clone(),
                            method: format!("SASL {}", mechanisms.join(", ")),
                        });
                    }
                    let end_point = match config.channel_binding {
                        ChannelBindingMode::Disable => None,
                        _ => self.wire.tls_server_end_point(),
                    };
                    // RFC 5802's flags: `p` binds; `y` says the client could
                    // bind but the server did not offer it (so a server that
                    // did offer it detects the downgrade); `n` cannot bind.
                    let (mechanism, binding) = match end_point {
                        Some(data) if offered(SCRAM_SHA_256_PLUS) => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(data),
                        ),
                        Some(_) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                        None => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                    };
                    if mechanism != SCRAM_SHA_256_PLUS {
                        self.allow_unbound_login(config, "SCRAM without channel binding")?;
                    }
                    let client = ScramSha256::new(password()?.as_bytes(), binding);
                    frontend::sasl_initial_response(
                        mechanism,
                        client.message(),
                        &mut self.wire.out,
                    )
                    .map_err(|e| self.wire.protocol(e.to_string()))?;
                    scram = Some(client);
                }
                11 | 12 => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| self.wire.protocol("SASL message before SASL started"))?;
                    if code == 11 {
                        client
                            .update(&frame.body)
                            .map_err(|e| self.wire.protocol(format!("SCRAM: {e}")))?;
                        frontend::sasl_response(client.message(), &mut self.wire.out)
                            .map_err(|e| self.wire.protocol(e.to_string()))?;
                    } else {
                        client.finish(&frame.body).map_err(|e| {
                            self.wire.protocol(format!("SCRAM server signature: {e}"))
                        })?;
                        continue;
                    }
                }
                2 | 7 | 8 | 9 => {
                    return Err(Error::UnsupportedAuth {
                        server: self.wire.server.clone(),
                        method: match code {
                            2 => "Kerberos V5",
                            9 => "SSPI",
                            _ => "GSSAPI",
                        }
                        .to_owned(),
                    });
                }
                other => {
                    return Err(self
                        .wire
                        .protocol(format!("unknown authentication request {other}")));
                }
            }
            self.wire.flush().await?;
        }
    }

    fn record_parameter(&mut self, mut body: Bytes) {
        if let (Some(name), Some(value)) = (wire::read_cstr(&mut body), wire::read_cstr(&mut body))
        {
            self.parameters.insert(name, value);
        }
    }

    fn server_error(&self, frame: &Frame, context: &str) -> Error {
        self.wire.server_error(frame, context)
    }

    fn unexpected(&self, tag: u8, when: &str) -> Error {
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

    /// Runs one command with the simple query protocol and collects its
    /// result; an error response becomes [`Error::Server`] with the command
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

    pub(crate) fn into_parts(self) -> (Wire, HashMap<String, String>) {
        (self.wire, self.parameters)
    }

    pub(crate) fn from_parts(wire: Wire, parameters: HashMap<String, String>) -> ReplicationClient {
        ReplicationClient { wire, parameters }
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

    /// Closes the connection politely (a Terminate message).
    pub async fn close(mut self) -> Result<()> {
        frontend::terminate(&mut self.wire.out);
        self.wire.flush().await
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

/// The first words of a command, for error context without dumping data.
fn short_command(sql: &str) -> String {
    const MAX: usize = 120;
    let sql = sql.trim();
    match sql.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &sql[..cut]),
        None => sql.to_owned(),
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
