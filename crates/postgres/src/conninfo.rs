//! Connection strings with libpq's meaning.
//!
//! [`ConnectConfig::parse`] accepts what users already give `psql`: a
//! `key=value` string (`host=db1 port=5432 user=app sslmode=verify-full`) or a
//! URI (`postgresql://app@db1:5432/shop?sslmode=require`). What the string does
//! not say comes from libpq's `PG*` environment variables, then from libpq's
//! defaults; a missing password is looked up in `~/.pgpass` (or `passfile`,
//! `PGPASSFILE`) as libpq does. The parsed configuration serves both kinds of
//! session: the replication connection of `pglive-repl` and ordinary SQL
//! sessions through `tokio-postgres` (see [`crate::connect_sql`]).
//!
//! The password never appears in `Debug` output or in errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How hard to insist on TLS and how much of the server's certificate to
/// check, with libpq's meaning of `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS only if the server insists (pglive tries plain first).
    Allow,
    /// Use TLS when the server offers it; libpq's default.
    Prefer,
    /// Always use TLS; check the certificate only if a root certificate is
    /// available (then as `verify-ca`).
    Require,
    /// Always use TLS and check that a trusted CA signed the certificate.
    VerifyCa,
    /// As `verify-ca`, and check that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, ConfigError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConfigError::new(format!(
                    "invalid sslmode {other:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether SCRAM authentication binds itself to the TLS channel
/// (`SCRAM-SHA-256-PLUS`), with libpq's meaning of `channel_binding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the connection uses TLS and the server offers it; libpq's
    /// default.
    Prefer,
    /// Fail unless the server authenticates with SCRAM bound to the TLS
    /// channel (so that a server in the middle cannot pass itself off).
    Require,
}

impl ChannelBinding {
    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }

    fn parse(value: &str) -> Result<ChannelBinding, ConfigError> {
        Ok(match value {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(ConfigError::new(format!(
                    "invalid channel_binding {other:?}: expected disable, prefer or require"
                )));
            }
        })
    }
}

/// Where a server listens: the ways libpq knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// `hostaddr`: reached over TCP at `addr` without a name lookup; `name`
    /// (the `host` given with it) is what TLS verifies and the password
    /// file is searched for, as in libpq.
    Addr {
        /// The address connected to.
        addr: std::net::IpAddr,
        /// The host name given beside it.
        name: Option<String>,
    },
    /// A directory holding the server's Unix-domain socket.
    Unix(PathBuf),
}

impl Host {
    /// The name TLS checks the server's certificate against (and sends as
    /// SNI): the host name, else the address; `None` for a socket.
    pub fn tls_name(&self) -> Option<String> {
        match self {
            Host::Tcp(name) => Some(name.clone()),
            Host::Addr {
                name: Some(name), ..
            } => Some(name.clone()),
            Host::Addr { addr, name: None } => Some(addr.to_string()),
            Host::Unix(_) => None,
        }
    }
}

/// TCP keepalives (`keepalives`, `keepalives_idle`, `keepalives_interval`,
/// `keepalives_count`): as in libpq, on unless `keepalives=0`, with the
/// system's timings where none is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    /// Whether keepalives are sent at all.
    pub enabled: bool,
    /// Idle time before the first probe.
    pub idle: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Probes lost before the connection counts as dead.
    pub count: Option<u32>,
}

impl Default for Keepalives {
    /// On, with the system's timings.
    fn default() -> Keepalives {
        Keepalives {
            enabled: true,
            idle: None,
            interval: None,
            count: None,
        }
    }
}

impl std::str::FromStr for ConnectConfig {
    type Err = ConfigError;

    /// As [`ConnectConfig::parse`].
    fn from_str(conninfo: &str) -> Result<ConnectConfig, ConfigError> {
        ConnectConfig::parse(conninfo)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) => f.write_str(name),
            Host::Addr {
                addr,
                name: Some(name),
            } => write!(f, "{name} ({addr})"),
            Host::Addr { addr, name: None } => write!(f, "{addr}"),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// A connection string that cannot be used, with what is wrong in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection string: {reason}")]
pub struct ConfigError {
    reason: String,
}

impl ConfigError {
    fn new(reason: impl Into<String>) -> ConfigError {
        ConfigError {
            reason: reason.into(),
        }
    }

    /// The error for a configuration that names no host.
    pub fn no_hosts() -> ConfigError {
        ConfigError::new("no host to connect to")
    }
}

/// Everything needed to open a session with a server: where, as whom, to
/// which database, and with what TLS requirements.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    /// The servers to try, in order, each with its port.
    pub hosts: Vec<(Host, u16)>,
    /// The role to log in as.
    pub user: String,
    /// The password, if one was given or found in the password file.
    pub password: Option<String>,
    /// The database to connect to.
    pub dbname: String,
    /// The `application_name` reported to the server.
    pub application_name: String,
    /// TLS requirement and verification level.
    pub sslmode: SslMode,
    /// PEM file with the certificate authorities to trust (`sslrootcert`);
    /// `system` means the operating system's bundle.
    pub sslrootcert: Option<PathBuf>,
    /// PEM file with a client certificate (`sslcert`).
    pub sslcert: Option<PathBuf>,
    /// PEM file with the client certificate's key (`sslkey`).
    pub sslkey: Option<PathBuf>,
    /// Give up on a server after this long (`connect_timeout`).
    pub connect_timeout: Option<Duration>,
    /// Extra command-line options sent to the server (`options`).
    pub options: Option<String>,
    /// Whether SCRAM binds to the TLS channel (`channel_binding`).
    pub channel_binding: ChannelBinding,
    /// TCP keepalives.
    pub keepalives: Keepalives,
    /// Whether TLS sends the host name as SNI (`sslsni`, on by default).
    pub sslsni: bool,
    /// Whether TLS 1.3 is the oldest version accepted
    /// (`ssl_min_protocol_version=TLSv1.3`); otherwise TLS 1.2 is, the
    /// oldest pglive speaks.
    pub tls13_only: bool,
}

impl fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

/// Where the defaults for unset parameters come from; tests substitute their
/// own to stay independent of the machine.
pub(crate) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn home_dir(&self) -> Option<PathBuf>;
    fn os_user(&self) -> Option<String>;
}

struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn home_dir(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    fn os_user(&self) -> Option<String> {
        self.var("USER")
            .or_else(|| self.var("LOGNAME"))
            .or_else(user_from_passwd)
    }
}

/// The name of this process's user in /etc/passwd (as libpq's `getpwuid`).
fn user_from_passwd() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id: u32 = fields.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
}

/// The parameters pglive understands, with their `PG*` environment variable.
const PARAMETERS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("dbname", Some("PGDATABASE")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("options", Some("PGOPTIONS")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("replication", None),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("krbsrvname", None),
    ("sslcompression", None),
    ("sslsni", None),
    ("ssl_min_protocol_version", None),
];

/// The Unix socket directory libpq on Debian uses when no host is given.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

impl ConnectConfig {
    /// Parses a libpq connection string (`key=value …` or a
    /// `postgres://`/`postgresql://` URI) and fills in what it leaves out from
    /// `PG*` environment variables, `~/.pgpass` and libpq's defaults.
    pub fn parse(conninfo: &str) -> Result<ConnectConfig, ConfigError> {
        Self::parse_with(conninfo, &ProcessEnvironment)
    }

    pub(crate) fn parse_with(
        conninfo: &str,
        env: &dyn Environment,
    ) -> Result<ConnectConfig, ConfigError> {
        let trimmed = conninfo.trim_start();
        let mut params =
            if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
                parse_uri(trimmed)?
            } else {
                parse_key_values(conninfo)?
            };
        for (key, var) in PARAMETERS {
            if let (false, Some(var)) = (params.contains_key(*key), var) {
                if let Some(value) = env.var(var) {
                    params.insert((*key).to_owned(), value);
                }
            }
        }
        Self::from_params(params, env)
    }

    fn from_params(
        params: BTreeMap<String, String>,
        env: &dyn Environment,
    ) -> Result<ConnectConfig, ConfigError> {
        let get = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();

        let split = |list: Option<String>| -> Vec<String> {
            list.map(|l| l.split(',').map(|h| h.trim().to_owned()).collect())
                .unwrap_or_default()
        };
        let names = split(get("host"));
        let addrs = split(get("hostaddr"));
        if !addrs.is_empty() && !names.is_empty() && names.len() != addrs.len() {
            return Err(ConfigError::new(format!(
                "{} hosts but {} hostaddr values: give one address per host",
                names.len(),
                addrs.len()
            )));
        }
        if addrs.len() > 1 && addrs.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "hostaddr must give an address for every host, or be left out",
            ));
        }
        let count = names.len().max(addrs.len()).max(1);
        let port_list = get("port").unwrap_or_else(|| "5432".to_owned());
        let ports = port_list
            .split(',')
            .map(|p| {
                let p = p.trim();
                if p.is_empty() {
                    return Ok(5432);
                }
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ConfigError::new(format!("invalid port {p:?}")))
            })
            .collect::<Result<Vec<u16>, ConfigError>>()?;
        if ports.len() != 1 && ports.len() != count {
            return Err(ConfigError::new(format!(
                "{count} hosts but {} ports: give one port, or one per host",
                ports.len()
            )));
        }
        let hosts = (0..count)
            .map(|i| {
                let port = if ports.len() == 1 { ports[0] } else { ports[i] };
                let name = names.get(i).filter(|n| !n.is_empty());
                let addr = addrs.get(i).filter(|a| !a.is_empty());
                let host = match (addr, name) {
                    (Some(addr), name) => Host::Addr {
                        addr: addr.parse().map_err(|_| {
                            ConfigError::new(format!(
                                "hostaddr {addr:?} is not a numeric IP address (host names go in host=)"
                            ))
                        })?,
                        name: name.filter(|n| !n.starts_with('/')).cloned(),
                    },
                    (None, None) => Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR)),
                    (None, Some(n)) if n.starts_with('/') => Host::Unix(PathBuf::from(n)),
                    (None, Some(n)) => Host::Tcp(n.clone()),
                };
                Ok((host, port))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;

        let sslrootcert = get("sslrootcert").map(PathBuf::from);
        let sslmode = match get("sslmode") {
            Some(mode) => SslMode::parse(&mode)?,
            // libpq: sslrootcert=system makes verify-full the default.
            None if sslrootcert.as_deref() == Some(Path::new("system")) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if sslrootcert.as_deref() == Some(Path::new("system")) && sslmode != SslMode::VerifyFull {
            return Err(ConfigError::new(format!(
                "sslrootcert=system requires sslmode=verify-full, not {sslmode}"
            )));
        }
        let channel_binding = match get("channel_binding") {
            Some(mode) => ChannelBinding::parse(&mode)?,
            None => ChannelBinding::Prefer,
        };
        if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
            return Err(ConfigError::new(
                "channel_binding=require needs TLS, but sslmode=disable",
            ));
        }
        let user = get("user").or_else(|| env.os_user()).ok_or_else(|| {
            ConfigError::new(
                "no user given and the operating system user is unknown: set user= or PGUSER",
            )
        })?;
        let dbname = get("dbname").unwrap_or_else(|| user.clone());
        let connect_timeout = match get("connect_timeout") {
            None => None,
            Some(t) => {
                let secs: i64 = t
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::new(format!("invalid connect_timeout {t:?}")))?;
                // libpq: zero or negative waits forever, and 1 means 2 seconds.
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
        };
        if let Some(encoding) = get("client_encoding") {
            if !encoding.eq_ignore_ascii_case("utf8") && !encoding.eq_ignore_ascii_case("utf-8") {
                return Err(ConfigError::new(format!(
                    "client_encoding={encoding} is not supported: pglive always uses UTF8"
                )));
            }
        }
        // Accepted only where pglive behaves as libpq would: it never
        // encrypts with GSSAPI, and it connects to the first host that
        // answers, whatever that server's role.
        if let Some(mode) = get("gssencmode").filter(|m| m == "require") {
            return Err(ConfigError::new(format!(
                "gssencmode={mode} is not supported: pglive does not speak GSSAPI encryption; \
                 use sslmode=verify-full (or gssencmode=prefer)"
            )));
        }
        if let Some(attrs) = get("target_session_attrs").filter(|a| a != "any") {
            return Err(ConfigError::new(format!(
                "target_session_attrs={attrs} is not supported: pglive connects to the first host that \
                 answers; give the address of the server you mean (the primary) instead"
            )));
        }
        if let Some(replication) = get("replication") {
            return Err(ConfigError::new(format!(
                "replication={replication} must not be given: pglive opens replication connections itself"
            )));
        }
        let keepalives = Keepalives {
            enabled: match get("keepalives").as_deref().map(str::trim) {
                None => true,
                Some(v) => {
                    v.parse::<i64>()
                        .map_err(|_| ConfigError::new(format!("invalid keepalives {v:?}")))?
                        != 0
                }
            },
            idle: seconds(get("keepalives_idle"), "keepalives_idle")?,
            interval: seconds(get("keepalives_interval"), "keepalives_interval")?,
            count: match seconds(get("keepalives_count"), "keepalives_count")? {
                Some(n) => Some(u32::try_from(n.as_secs()).map_err(|_| {
                    ConfigError::new(format!("keepalives_count {} is too large", n.as_secs()))
                })?),
                None => None,
            },
        };
        // libpq sends SNI when the value starts with 1.
        let sslsni = get("sslsni").is_none_or(|v| v.starts_with('1'));
        let tls13_only = match get("ssl_min_protocol_version")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            // pglive's TLS speaks 1.2 and 1.3: an older minimum allows them.
            None | Some("tlsv1" | "tlsv1.1" | "tlsv1.2") => false,
            Some("tlsv1.3") => true,
            Some(other) => {
                return Err(ConfigError::new(format!(
                    "invalid ssl_min_protocol_version {other:?}: TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3"
                )));
            }
        };
        let application_name = get("application_name")
            .or_else(|| get("fallback_application_name"))
            .unwrap_or_else(|| "pglive".to_owned());

        let mut config = ConnectConfig {
            hosts,
            user,
            password: get("password"),
            dbname,
            application_name,
            sslmode,
            sslrootcert,
            sslcert: get("sslcert").map(PathBuf::from),
            sslkey: get("sslkey").map(PathBuf::from),
            connect_timeout,
            options: get("options"),
            channel_binding,
            keepalives,
            sslsni,
            tls13_only,
        };
        if config.password.is_none() {
            let passfile = get("passfile")
                .map(PathBuf::from)
                .or_else(|| env.home_dir().map(|h| h.join(".pgpass")));
            if let Some(passfile) = passfile {
                config.password = password_from_file(&passfile, &config);
            }
        }
        Ok(config)
    }

    /// A short description of the server for messages: `user@host:port/dbname`,
    /// never with the password.
    pub fn describe(&self) -> String {
        match self.hosts.first() {
            Some((host, port)) => format!("{}@{}:{}/{}", self.user, host, port, self.dbname),
            None => format!("{}@?/{}", self.user, self.dbname),
        }
    }

    /// The root certificates to trust: `sslrootcert`, else
    /// `~/.postgresql/root.crt` when it exists (libpq's default).
    pub(crate) fn root_cert_path(&self) -> Option<PathBuf> {
        self.sslrootcert.clone().or_else(|| {
            let default = ProcessEnvironment
                .home_dir()?
                .join(".postgresql")
                .join("root.crt");
            default.exists().then_some(default)
        })
    }
}

fn parse_key_values(input: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut params = BTreeMap::new();
    let mut chars = input.chars().peekable();
    // The last parameter read: a stray word after it may be the rest of
    // its value (a password with a space), so it is never shown.
    let mut previous: Option<String> = None;
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConfigError::new(match &previous {
                Some(previous) => format!(
                    "missing \"=\" in a word after the value of {previous:?} in key=value connection string \
                     (quote values that contain spaces: {previous}='…')"
                ),
                None => "missing \"=\" after the first word of the key=value connection string"
                    .to_owned(),
            }));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConfigError::new(format!(
                            "unterminated quoted value for {key:?}"
                        )));
                    }
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConfigError::new(format!(
                                "unterminated quoted value for {key:?}"
                            )));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if previous.as_deref() == Some("password") && !is_parameter(&key) {
            return Err(ConfigError::new(
                "an unknown parameter follows the password (quote a password that contains spaces: password='…')",
            ));
        }
        insert_known(&mut params, key.clone(), value)?;
        previous = Some(key);
    }
    Ok(params)
}

/// libpq parameters pglive does not support, with why (the rest of libpq's
/// parameters are in [`PARAMETERS`]).
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "service",
        "connection services are not read: give the parameters themselves",
    ),
    (
        "require_auth",
        "not supported; channel_binding=require and sslmode=verify-full protect the login",
    ),
    (
        "sslpassword",
        "encrypted client keys are not supported: give an unencrypted sslkey",
    ),
    ("sslcrl", "certificate revocation lists are not checked"),
    ("sslcrldir", "certificate revocation lists are not checked"),
    (
        "sslcertmode",
        "a client certificate is sent when sslcert and sslkey are given",
    ),
    (
        "sslnegotiation",
        "only the usual TLS negotiation (sslnegotiation=postgres) is spoken",
    ),
    (
        "ssl_max_protocol_version",
        "not supported: pglive speaks TLS 1.2 and 1.3",
    ),
    ("requiressl", "deprecated in libpq: use sslmode=require"),
    (
        "requirepeer",
        "not supported: connect over TCP, or trust the socket's directory",
    ),
    (
        "tcp_user_timeout",
        "not supported: use keepalives_idle, keepalives_interval and keepalives_count",
    ),
    (
        "load_balance_hosts",
        "pglive tries hosts in the order given",
    ),
    ("gsslib", "GSSAPI is not supported"),
    ("gssdelegation", "GSSAPI is not supported"),
    ("sslkeylogfile", "TLS keys are never written out"),
    ("min_protocol_version", "pglive speaks protocol 3.0"),
    ("max_protocol_version", "pglive speaks protocol 3.0"),
    ("scram_client_key", "not supported: give the password"),
    ("scram_server_key", "not supported: give the password"),
];

/// Seconds in a libpq integer parameter: absent or 0 is `None` (the
/// system's default); negative or not a number is an error.
fn seconds(value: Option<String>, key: &str) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(format!("invalid {key} {value:?}: a whole number")))?;
    Ok((n > 0).then(|| Duration::from_secs(n)))
}

/// Whether `key` names a parameter this crate knows.
fn is_parameter(key: &str) -> bool {
    key == "database" || PARAMETERS.iter().any(|(known, _)| *known == key)
}

fn insert_known(
    params: &mut BTreeMap<String, String>,
    key: String,
    value: String,
) -> Result<(), ConfigError> {
    let key = if key == "database" {
        "dbname".to_owned()
    } else {
        key
    };
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(name, _)| *name == key) {
        return Err(ConfigError::new(format!(
            "connection parameter {key:?} is not supported: {why}"
        )));
    }
    if key.starts_with("oauth_") {
        return Err(ConfigError::new(format!(
            "connection parameter {key:?} is not supported: OAuth logins are not"
        )));
    }
    if !is_parameter(&key) {
        return Err(ConfigError::new(format!(
            "unknown connection parameter {key:?}"
        )));
    }
    params.insert(key, value);
    Ok(())
}

/// Decodes `%XX` escapes of a URI component; errors name the component
/// (`what`), never its text, which may be a password.
fn percent_decode(part: &str, what: &str) -> Result<String, ConfigError> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConfigError::new(format!("invalid percent-encoding in {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::new(format!("{what} decodes to invalid UTF-8")))
}

fn parse_uri(uri: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or_else(|| ConfigError::new("URI must start with postgresql:// or postgres://"))?;
    let mut params = BTreeMap::new();
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let hostlist = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                params.insert("user".to_owned(), percent_decode(user, "the user name")?);
            }
            if let Some(p) = password {
                params.insert("password".to_owned(), percent_decode(p, "the password")?);
            }
            hosts
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for entry in hostlist.split(',') {
            let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
                let (addr, after) = v6.split_once(']').ok_or_else(|| {
                    ConfigError::new(format!("unterminated IPv6 address in {entry:?}"))
                })?;
                (addr.to_owned(), after.strip_prefix(':').map(str::to_owned))
            } else {
                match entry.rsplit_once(':') {
                    Some((h, p)) => (percent_decode(h, "a host")?, Some(p.to_owned())),
                    None => (percent_decode(entry, "a host")?, None),
                }
            };
            hosts.push(host);
            ports.push(port.unwrap_or_default());
        }
        params.insert("host".to_owned(), hosts.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            params.insert("port".to_owned(), ports.join(","));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        params.insert(
            "dbname".to_owned(),
            percent_decode(db, "the database name")?,
        );
    }
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        // A part without "=" may be the rest of a value with a stray "&"
        // (a password): never shown.
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            ConfigError::new(
                "a URI parameter has no \"=\" (percent-encode \"&\" inside values as %26)",
            )
        })?;
        let key = percent_decode(key, "a parameter name")?;
        let value = percent_decode(value, &format!("the value of {key:?}"))?;
        insert_known(&mut params, key, value)?;
    }
    Ok(params)
}

/// Looks the password up in a libpq password file, as libpq does: the first
/// line whose host, port, database and user match (`*` matches anything). A
/// file readable by group or others is ignored, like libpq does.
fn password_from_file(path: &Path, config: &ConnectConfig) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let (host, port) = config.hosts.first()?;
    let host = match host {
        Host::Tcp(name) => name.clone(),
        // libpq looks up the host name when one is given with hostaddr.
        Host::Addr { addr, name } => name.clone().unwrap_or_else(|| addr.to_string()),
        Host::Unix(_) => "localhost".to_owned(),
    };
    let port = port.to_string();
    let wanted = [host.as_str(), port.as_str(), &config.dbname, &config.user];
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass_line(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want);
            matches.then(|| fields[4..].join(":"))
        })
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(escaped) = chars.next() {
                    fields.last_mut().expect("never empty").push(escaped);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeEnv {
        vars: BTreeMap<&'static str, String>,
        home: Option<PathBuf>,
    }

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn home_dir(&self) -> Option<PathBuf> {
            self.home.clone()
        }
        fn os_user(&self) -> Option<String> {
            Some("osuser".to_owned())
        }
    }

    fn parse(s: &str) -> Result<ConnectConfig, ConfigError> {
        ConnectConfig::parse_with(s, &FakeEnv::default())
    }

    #[test]
    fn parameters_pglive_cannot_honour_are_refused() {
        for (conninfo, expected) in [
            ("host=h gssencmode=require", "gssencmode=require"),
            (
                "host=h target_session_attrs=read-write",
                "target_session_attrs=read-write",
            ),
            (
                "host=a,b target_session_attrs=primary",
                "target_session_attrs=primary",
            ),
        ] {
            let error = parse(conninfo).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(expected), "{conninfo:?} gave {error:?}");
        }
        // What pglive does anyway is accepted.
        for conninfo in [
            "host=h gssencmode=disable",
            "host=h gssencmode=prefer",
            "host=h target_session_attrs=any",
        ] {
            parse(conninfo).unwrap();
        }
    }

    #[test]
    fn hostaddr_is_where_to_connect_and_host_what_tls_verifies() {
        let c = parse("host=db.example hostaddr=10.0.0.7 port=6000").unwrap();
        let addr: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(
            c.hosts,
            vec![(
                Host::Addr {
                    addr,
                    name: Some("db.example".into())
                },
                6000
            )]
        );
        assert_eq!(c.hosts[0].0.tls_name().as_deref(), Some("db.example"));
        assert_eq!(c.describe(), "osuser@db.example (10.0.0.7):6000/osuser");
        // Alone, the address is also the name TLS checks.
        let c = parse("hostaddr=::1").unwrap();
        assert_eq!(c.hosts[0].0.tls_name().as_deref(), Some("::1"));
        let c = parse("host=a,b hostaddr=10.0.0.1,10.0.0.2").unwrap();
        assert_eq!(c.hosts.len(), 2);
        for (conninfo, expected) in [
            ("host=a,b hostaddr=10.0.0.1", "2 hosts but 1 hostaddr"),
            ("hostaddr=db.example", "not a numeric IP address"),
            ("host=a,b hostaddr=10.0.0.1,", "an address for every host"),
        ] {
            let error = parse(conninfo).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(expected), "{conninfo:?} gave {error:?}");
        }
    }

    #[test]
    fn keepalives_sni_and_tls_minimum_as_in_libpq() {
        let c = parse("host=h").unwrap();
        assert_eq!(c.keepalives, Keepalives::default());
        assert!(c.keepalives.enabled && c.sslsni && !c.tls13_only);
        let c = parse(
            "host=h keepalives=1 keepalives_idle=30 keepalives_interval=0 keepalives_count=5 sslsni=0 \
             ssl_min_protocol_version=TLSv1.3",
        )
        .unwrap();
        assert_eq!(
            c.keepalives,
            Keepalives {
                enabled: true,
                idle: Some(Duration::from_secs(30)),
                interval: None,
                count: Some(5),
            }
        );
        assert!(!c.sslsni && c.tls13_only);
        assert!(!parse("host=h keepalives=0").unwrap().keepalives.enabled);
        assert!(
            parse("host=h ssl_min_protocol_version=tlsv1.3")
                .unwrap()
                .tls13_only
        );
        for (conninfo, expected) in [
            ("host=h keepalives_idle=-1", "invalid keepalives_idle"),
            ("host=h keepalives=yes", "invalid keepalives"),
            (
                "host=h ssl_min_protocol_version=SSLv3",
                "invalid ssl_min_protocol_version",
            ),
        ] {
            let error = parse(conninfo).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(expected), "{conninfo:?} gave {error:?}");
        }
    }

    #[test]
    fn libpq_parameters_pglive_does_not_support_say_so() {
        for key in [
            "service=x",
            "sslpassword=x",
            "sslcrl=/x",
            "tcp_user_timeout=1000",
            "require_auth=scram-sha-256",
            "load_balance_hosts=random",
            "oauth_issuer=https://x",
        ] {
            let error = parse(&format!("host=h {key}"))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(error.contains("is not supported"), "{key:?} gave {error:?}");
        }
    }

    #[test]
    fn malformed_strings_never_show_the_password() {
        for (conninfo, secret) in [
            ("postgresql://u:pa%zzss@h/db", "zzss"),
            ("postgresql://u:pa%c3ss@h/db", "c3ss"),
            ("host=h password=se cret dbname=x", "cret"),
            ("host=h password=se cret=1 dbname=x", "cret"),
            ("postgresql://h/db?password=s%zzecret", "ecret"),
            ("postgresql://h/db?password=ab&cdsecret", "cdsecret"),
        ] {
            let error = parse(conninfo).map(|_| ()).unwrap_err().to_string();
            assert!(!error.contains(secret), "{conninfo:?} gave {error:?}");
        }
        // Typos in other parameters are still named.
        let error = parse("host=h sslmod=require").map(|_| ()).unwrap_err();
        assert!(error.to_string().contains("sslmod"), "{error}");
    }

    #[test]
    fn key_value_with_quotes_and_escapes() {
        let c = parse(r"host=db1 port = 6543 user='app user' password='it''s' dbname=shop sslmode=verify-full")
            .map(|_| ())
            .unwrap_err();
        // `'it''s'` is not valid libpq quoting: a quote ends the value.
        assert!(c.to_string().contains("missing \"=\""), "{c}");

        let c = parse(r"host=db1 port = 6543 user='app user' password='it\'s \\ ok' dbname=shop sslmode=verify-full").unwrap();
        assert_eq!(c.hosts, vec![(Host::Tcp("db1".into()), 6543)]);
        assert_eq!(c.user, "app user");
        assert_eq!(c.password.as_deref(), Some(r"it's \ ok"));
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn uri_with_percent_encoding_ipv6_and_params() {
        let c = parse(
            "postgresql://us%40er:p%3Ass@[::1]:5433,db2/my%20db?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(c.user, "us@er");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(
            c.hosts,
            vec![
                (Host::Tcp("::1".into()), 5433),
                (Host::Tcp("db2".into()), 5432)
            ]
        );
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name, "x");
    }

    #[test]
    fn unix_socket_hosts_and_defaults() {
        let c = parse("postgres://%2Ftmp%2Fsock/db").unwrap();
        assert_eq!(c.hosts, vec![(Host::Unix("/tmp/sock".into()), 5432)]);
        let c = parse("").unwrap();
        assert_eq!(c.hosts, vec![(Host::Unix(DEFAULT_SOCKET_DIR.into()), 5432)]);
        assert_eq!(c.user, "osuser");
        assert_eq!(c.dbname, "osuser");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.application_name, "pglive");
    }

    #[test]
    fn environment_fills_what_the_string_leaves_out() {
        let mut env = FakeEnv::default();
        env.vars.insert("PGHOST", "envhost".into());
        env.vars.insert("PGPORT", "7777".into());
        env.vars.insert("PGUSER", "envuser".into());
        env.vars.insert("PGSSLMODE", "disable".into());
        let c = ConnectConfig::parse_with("port=1234", &env).unwrap();
        assert_eq!(c.hosts, vec![(Host::Tcp("envhost".into()), 1234)]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn pgpass_is_consulted_when_no_password_given() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pglive-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:nope\ndb1:5432:*:app:se\\:cret:x\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = FakeEnv {
            home: Some(dir.clone()),
            ..FakeEnv::default()
        };
        let c = ConnectConfig::parse_with("host=db1 user=app", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("se:cret:x"));
        let c = ConnectConfig::parse_with("host=db9 user=app", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("fallback"));
        // hostaddr says where to connect; the file is searched for the
        // host name given with it, as libpq does.
        let c = ConnectConfig::parse_with("host=db1 hostaddr=10.0.0.7 user=app", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("se:cret:x"));
        let c = ConnectConfig::parse_with("host=db1 user=app password=given", &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("given"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = ConnectConfig::parse_with("host=db1 user=app", &env).unwrap();
        assert_eq!(
            c.password, None,
            "a world-readable password file is ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        for (input, expected) in [
            ("host=a sslmode=maybe", "invalid sslmode"),
            ("host=a channel_binding=maybe", "invalid channel_binding"),
            (
                "host=a sslmode=disable channel_binding=require",
                "channel_binding=require needs TLS",
            ),
            ("port=99999", "invalid port"),
            ("bogus=1", "unknown connection parameter"),
            ("host", "missing \"=\""),
            ("password='open", "unterminated"),
            ("postgresql://h/db?sslmode", "has no \"=\""),
            ("postgresql://h/db?x=%zz", "percent-encoding"),
            ("host=a,b,c port=1,2", "3 hosts but 2 ports"),
            (
                "sslrootcert=system sslmode=require",
                "requires sslmode=verify-full",
            ),
            ("replication=database", "must not be given"),
        ] {
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse("host=a password=hunter2").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!c.describe().contains("hunter2"));
    }
}
