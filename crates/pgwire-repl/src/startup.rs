//! Opening a replication connection: each host in turn, TLS as `sslmode`
//! asks, the startup message with the pinned session settings, then
//! authentication (see `auth`) and the server's parameters.

use std::collections::HashMap;

use pglive_postgres::{ConfigError, ConnectConfig, Host, SESSION_SETTINGS, SslMode, tls};
use postgres_protocol::message::frontend;
use tokio::net::{TcpStream, UnixStream};

use crate::client::ReplicationClient;
use crate::error::{Error, Result};
use crate::wire::{Socket, Wire};

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
        self.wire.logged_in();
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
}
