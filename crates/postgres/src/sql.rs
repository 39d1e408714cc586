//! Ordinary SQL sessions (tokio-postgres) with the same connection string,
//! TLS trust and pinned settings as the replication connection.

use crate::conninfo::{ChannelBinding, ConnectConfig, Host, SslMode};
use crate::error::{Error, Result};
use crate::session::session_options;
use crate::tls;

/// The tokio-postgres configuration for `config`, with the pinned session
/// settings in `options`. TLS verification is done by the connector from
/// [`connect_sql`], so every mode from `require` up maps to tokio-postgres's
/// `Require`.
pub fn tokio_postgres_config(config: &ConnectConfig) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    for (host, port) in &config.hosts {
        match host {
            Host::Tcp(name) => pg.host(name),
            // The name is what TLS verifies; the address is connected to.
            Host::Addr { addr, .. } => pg
                .host(host.tls_name().as_deref().unwrap_or_default())
                .hostaddr(*addr),
            Host::Unix(dir) => pg.host_path(dir),
        };
        pg.port(*port);
    }
    let keepalives = &config.keepalives;
    pg.keepalives(keepalives.enabled);
    if let Some(idle) = keepalives.idle {
        pg.keepalives_idle(idle);
    }
    if let Some(interval) = keepalives.interval {
        pg.keepalives_interval(interval);
    }
    if let Some(count) = keepalives.count {
        pg.keepalives_retries(count);
    }
    pg.user(&config.user).dbname(&config.dbname);
    if let Some(password) = &config.password {
        pg.password(password);
    }
    pg.application_name(&config.application_name);
    if let Some(timeout) = config.connect_timeout {
        pg.connect_timeout(timeout);
    }
    let mut options = session_options();
    if let Some(extra) = &config.options {
        options.push(' ');
        options.push_str(extra);
    }
    pg.options(&options);
    pg.ssl_mode(match config.sslmode {
        SslMode::Disable | SslMode::Allow => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    pg.channel_binding(match config.channel_binding {
        ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
        ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
        ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
    });
    pg
}

/// Opens an SQL session and drives its connection on a spawned task. The
/// session's text formats are pinned like the replication connection's.
pub async fn connect_sql(config: &ConnectConfig) -> Result<tokio_postgres::Client> {
    let pg = tokio_postgres_config(config);
    let server = config.describe();
    let sql_error = |source| Error::Sql {
        server: server.clone(),
        source,
    };
    match tls::client_config(config)? {
        Some(tls) => {
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            let (client, connection) = pg.connect(connector).await.map_err(sql_error)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        None => {
            let (client, connection) =
                pg.connect(tokio_postgres::NoTls).await.map_err(sql_error)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}
