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
        let tcp_options = |tcp: TcpStream| -> std::io::Result<Socket> {
            tcp.set_nodelay(true)?;
            set_keepalives(&tcp, &config.keepalives)?;
            Ok(Socket::Tcp(tcp))
        };
        let socket = match host {
            Host::Tcp(name) => TcpStream::connect((name.as_str(), port))
                .await
                .and_then(tcp_options)
                .map_err(connect_error)?,
            Host::Addr { addr, .. } => TcpStream::connect((*addr, port))
                .await
                .and_then(tcp_options)
                .map_err(connect_error)?,
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Socket::Unix(UnixStream::connect(path).await.map_err(connect_error)?)
            }
        };
        let mut wire = Wire::new(socket, server);
        let wants_tls = !matches!(host, Host::Unix(_))
            && !matches!(config.sslmode, SslMode::Disable | SslMode::Allow);
        if let (true, Some(tls), Some(name)) = (wants_tls, tls, host.tls_name()) {
            wire = Self::negotiate_tls(wire, config.sslmode, tls, &name).await?;
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

/// Applies libpq's keepalive parameters to a TCP socket: `SO_KEEPALIVE`
/// unless `keepalives=0`, and the timings given (the system's otherwise).
pub(crate) fn set_keepalives(
    tcp: &TcpStream,
    keepalives: &pglive_postgres::Keepalives,
) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_keepalive(keepalives.enabled)?;
    if !keepalives.enabled {
        return Ok(());
    }
    let mut timings = socket2::TcpKeepalive::new();
    let mut any = false;
    if let Some(idle) = keepalives.idle {
        timings = timings.with_time(idle);
        any = true;
    }
    if let Some(interval) = keepalives.interval {
        timings = timings.with_interval(interval);
        any = true;
    }
    if let Some(count) = keepalives.count {
        timings = timings.with_retries(count);
        any = true;
    }
    if any {
        socket.set_tcp_keepalive(&timings)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn keepalive_parameters_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config: ConnectConfig = format!(
            "host=127.0.0.1 port={} user=u keepalives_idle=7 keepalives_interval=3 keepalives_count=4",
            addr.port()
        )
        .parse()
        .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        set_keepalives(&tcp, &config.keepalives).unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);

        let off: ConnectConfig = "host=127.0.0.1 user=u keepalives=0".parse().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        set_keepalives(&tcp, &off.keepalives).unwrap();
        assert!(!socket2::SockRef::from(&tcp).keepalive().unwrap());
        // libpq's default: on.
        let default: ConnectConfig = "host=127.0.0.1 user=u".parse().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        set_keepalives(&tcp, &default.keepalives).unwrap();
        assert!(socket2::SockRef::from(&tcp).keepalive().unwrap());
    }
}
