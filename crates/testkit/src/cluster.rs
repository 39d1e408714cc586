//! A throwaway cluster: options, start, SQL through `psql`, teardown.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;

use crate::Error;
use crate::binaries::PgBinaries;
use crate::process::{RunAs, command, run, run_as, tail};
use crate::ssl;
use crate::supervisor::{LaunchError, Supervisor};

/// The address the server listens on.
const HOST: &str = "127.0.0.1";

/// The superuser created by `initdb`.
const SUPERUSER: &str = "postgres";

/// The login role of a [`ClusterOptions::password_auth`] cluster.
const ROLE: &str = "pglive_user";

/// How often to pick another port when it was taken before the server bound it.
const PORT_ATTEMPTS: usize = 10;

/// Settings every cluster gets unless [`ClusterOptions::setting`] overrides them.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", HOST),
    ("wal_level", "logical"),
    ("max_replication_slots", "20"),
    ("max_wal_senders", "20"),
    ("max_connections", "100"),
    ("max_prepared_transactions", "10"),
    ("shared_buffers", "32MB"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("password_encryption", "scram-sha-256"),
    ("logging_collector", "off"),
    ("log_destination", "stderr"),
    ("log_line_prefix", "%m [%p] %q%u@%d "),
    ("log_timezone", "UTC"),
];

/// Source of unique database names (with the process id).
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// Source of unique directory names (with the process id).
static DIRECTORIES: AtomicU64 = AtomicU64::new(0);

/// How to set up a [`Cluster`]. The defaults suit replication tests: see
/// [`Cluster`] for what every cluster gets.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    settings: Vec<(String, String)>,
    ssl: bool,
    password_auth: bool,
    auth_method: Option<String>,
    major: Option<u32>,
    timescaledb: bool,
}

impl ClusterOptions {
    /// The defaults: no TLS, trust authentication, newest server found.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a `postgresql.conf` setting, overriding the default of the same
    /// name (`port` and `unix_socket_directories` are always the cluster's own).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Turns TLS on with a fresh CA and a server certificate for `localhost`
    /// and `127.0.0.1` (see [`Cluster::ca_cert`]).
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    /// Makes the cluster look like a managed cloud database: TCP connections
    /// (also replication ones) need SCRAM passwords, and a non-superuser role
    /// with `LOGIN REPLICATION` is created (see [`Cluster::role`]). The
    /// superuser keeps passwordless access over the Unix socket, used by
    /// [`Cluster::psql`].
    pub fn password_auth(mut self, on: bool) -> Self {
        self.password_auth = on;
        self
    }

    /// With [`password_auth`](Self::password_auth): the pg_hba method for
    /// password logins — `scram-sha-256` (the default), `md5` (passwords are
    /// then stored as MD5 hashes, so the MD5 exchange really happens) or
    /// `password` (cleartext).
    pub fn auth_method(mut self, method: &str) -> Self {
        self.auth_method = Some(method.to_owned());
        if method == "md5" {
            self = self.setting("password_encryption", "md5");
        }
        self
    }

    /// The defaults, with the memory and checkpoint spacing a server needs
    /// to load and copy hundreds of megabytes without checkpointing all
    /// the time (256 MB of shared buffers and of maintenance work memory,
    /// 4 GB of WAL between checkpoints, at most every 30 minutes): what
    /// the demo and the benchmarks start from.
    pub fn bulk() -> Self {
        Self::new()
            .setting("shared_buffers", "256MB")
            .setting("maintenance_work_mem", "256MB")
            .setting("max_wal_size", "4GB")
            .setting("checkpoint_timeout", "30min")
    }

    /// Preloads TimescaleDB (`shared_preload_libraries`, telemetry off),
    /// building and installing it into the server installation first when
    /// it is missing (`../shared/timescaledb/install.sh`, a few minutes).
    pub fn timescaledb(mut self, on: bool) -> Self {
        self.timescaledb = on;
        self
    }

    /// Uses the server programs of this major version (e.g. `15`).
    pub fn major_version(mut self, major: u32) -> Self {
        self.major = Some(major);
        self
    }
}

/// A user name and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The role name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A running throwaway PostgreSQL server with its own temporary directory
/// (data directory, Unix socket, certificates), deleted with the server when
/// the `Cluster` is dropped or the process ends.
///
/// Every cluster listens on `127.0.0.1` on a free port and on a Unix socket
/// in a private directory, with `wal_level=logical`, 20 replication slots and
/// WAL senders, 10 prepared transactions, 100 connections, 32 MB shared
/// buffers, and without `fsync`, `synchronous_commit` or full-page writes.
/// The server logs to [`log_path`](Self::log_path). The superuser is
/// `postgres`.
pub struct Cluster {
    supervisor: Mutex<Supervisor>,
    binaries: PgBinaries,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    superuser_password: Option<String>,
    role: Option<Credentials>,
    ca_cert: Option<PathBuf>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.root)
            .field("port", &self.port)
            .field("major", &self.binaries.major())
            .field("ssl", &self.ca_cert.is_some())
            .field("password_auth", &self.role.is_some())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Creates, configures and starts a cluster; returns once it accepts
    /// connections.
    pub fn start(options: ClusterOptions) -> Result<Cluster, Error> {
        for (name, _) in &options.settings {
            check_setting_name(name)?;
        }
        let binaries = match options.major {
            Some(major) => PgBinaries::find_major(major)?,
            None => PgBinaries::find()?,
        };
        if options.timescaledb {
            crate::timescaledb::ensure_installed(&binaries)?;
        }
        let run_as = run_as()?;
        let root = create_root(run_as)?;
        let data_dir = root.join("data");
        let socket_dir = root.join("sock");
        let log_path = data_dir.join("postgresql.log");
        let supervisor = match Supervisor::spawn(
            &binaries.program("postgres"),
            &root,
            &data_dir,
            &log_path,
            run_as,
        ) {
            Ok(supervisor) => supervisor,
            Err(err) => {
                let _ = fs::remove_dir_all(&root);
                return Err(err);
            }
        };
        // From here on, returning early drops `supervisor`, which deletes `root`.
        let mut cluster = Cluster {
            supervisor: Mutex::new(supervisor),
            binaries,
            root,
            data_dir,
            socket_dir,
            log_path,
            port: 0,
            superuser_password: options.password_auth.then(random_password),
            role: options.password_auth.then(|| Credentials {
                user: ROLE.to_owned(),
                password: random_password(),
            }),
            ca_cert: None,
        };
        cluster.init(&options, run_as)?;
        Ok(cluster)
    }

    /// A cluster with default options shared by the whole process (a test
    /// binary), started on first use and deleted when the process ends. Take
    /// a fresh database per test with [`create_database`](Self::create_database).
    ///
    /// # Panics
    ///
    /// If the cluster could not be started (on every call).
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Result<Cluster, Error>> = OnceLock::new();
        match SHARED.get_or_init(|| Cluster::start(ClusterOptions::default())) {
            Ok(cluster) => cluster,
            Err(err) => panic!(
                "could not start the shared PostgreSQL test cluster: {}",
                chain(err)
            ),
        }
    }

    fn init(&mut self, options: &ClusterOptions, run_as: Option<RunAs>) -> Result<(), Error> {
        run(command(self.binaries.program("initdb"), run_as, &self.root)
            .args([
                "--no-sync",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-U",
                SUPERUSER,
                "-D",
            ])
            .arg(&self.data_dir))?;
        create_dir(&self.socket_dir, run_as)?;

        let mut settings: Vec<(String, String)> = DEFAULT_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if options.ssl {
            let dir = self.root.join("ssl");
            create_dir(&dir, run_as)?;
            let certs = ssl::generate(&dir, run_as)?;
            settings.push(("ssl".into(), "on".into()));
            settings.push(("ssl_cert_file".into(), path_str(&certs.server_cert)));
            settings.push(("ssl_key_file".into(), path_str(&certs.server_key)));
            self.ca_cert = Some(certs.ca_cert);
        }
        if options.timescaledb {
            settings.push(("shared_preload_libraries".into(), "timescaledb".into()));
            settings.push(("timescaledb.telemetry_level".into(), "off".into()));
        }
        settings.extend(options.settings.iter().cloned());

        let hba = self.data_dir.join("pg_hba.conf");
        fs::write(
            &hba,
            pg_hba(
                options
                    .password_auth
                    .then(|| options.auth_method.as_deref().unwrap_or("scram-sha-256")),
            ),
        )
        .map_err(|e| Error::io("write", &hba, e))?;
        let conf = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| {
                f.write_all(b"\n# Added by pglive-testkit.\ninclude 'testkit.conf'\n")
            })
            .map_err(|e| Error::io("append to", &conf, e))?;

        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            self.write_settings(&settings)?;
            match self.supervisor().launch() {
                Ok(()) => break,
                Err(LaunchError::PortInUse(_)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(LaunchError::PortInUse(err) | LaunchError::Other(err)) => return Err(err),
            }
        }

        if let (Some(role), Some(password)) = (&self.role, &self.superuser_password) {
            self.psql(
                "postgres",
                &format!(
                    "CREATE ROLE {} LOGIN REPLICATION PASSWORD {};\nALTER ROLE {} PASSWORD {};\n",
                    quote_ident(&role.user),
                    quote_literal(&role.password),
                    quote_ident(SUPERUSER),
                    quote_literal(password),
                ),
            )?;
        }
        Ok(())
    }

    /// Writes `testkit.conf`, included at the end of `postgresql.conf`.
    fn write_settings(&self, settings: &[(String, String)]) -> Result<(), Error> {
        let mut text =
            String::from("# Written by pglive-testkit; ALTER SYSTEM settings override these.\n");
        let fixed = [
            ("port".to_owned(), self.port.to_string()),
            (
                "unix_socket_directories".to_owned(),
                path_str(&self.socket_dir),
            ),
        ];
        for (name, value) in settings.iter().chain(&fixed) {
            text.push_str(&format!("{name} = {}\n", conf_value(value)));
        }
        let path = self.data_dir.join("testkit.conf");
        fs::write(&path, text).map_err(|e| Error::io("write", &path, e))
    }

    fn supervisor(&self) -> MutexGuard<'_, Supervisor> {
        self.supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The private directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server programs in use; run `pg_dump`, `psql`, ... of the same
    /// version with [`PgBinaries::program`].
    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    /// The directory of the server programs (also `psql`, `pg_dump`, ...).
    pub fn bin_dir(&self) -> &Path {
        self.binaries.dir()
    }

    /// The server's major version, e.g. `15`.
    pub fn major_version(&self) -> u32 {
        self.binaries.major()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temporary directory holding everything of this cluster, deleted
    /// when it ends.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The server's log file; print it when a test fails.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The superuser's name: `postgres`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password, needed over TCP when the cluster has
    /// [`password_auth`](ClusterOptions::password_auth).
    pub fn superuser_password(&self) -> Option<&str> {
        self.superuser_password.as_deref()
    }

    /// The non-superuser `LOGIN REPLICATION` role of a
    /// [`password_auth`](ClusterOptions::password_auth) cluster; it owns the
    /// databases made by [`create_database`](Self::create_database).
    pub fn role(&self) -> Option<&Credentials> {
        self.role.as_ref()
    }

    /// The CA certificate that signed the server's certificate, when the
    /// cluster has [`ssl`](ClusterOptions::ssl); use it as
    /// `sslmode=verify-full sslrootcert=<path>`.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// The process id of the running postmaster, `None` while stopped.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.supervisor().postmaster()
    }

    /// A libpq key=value connection string for the superuser over TCP:
    /// `host=127.0.0.1 port=N user=postgres dbname=DB`, plus `password=...`
    /// with [`password_auth`](ClusterOptions::password_auth).
    pub fn conninfo(&self, dbname: &str) -> String {
        let mut info = format!(
            "host={HOST} port={} user={} dbname={}",
            self.port,
            SUPERUSER,
            conninfo_value(dbname)
        );
        if let Some(password) = &self.superuser_password {
            info.push_str(&format!(" password={}", conninfo_value(password)));
        }
        info
    }

    /// A libpq key=value connection string for the superuser over the Unix
    /// socket (never needs a password).
    pub fn socket_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&path_str(&self.socket_dir)),
            self.port,
            SUPERUSER,
            conninfo_value(dbname)
        )
    }

    /// A libpq key=value connection string for [`role`](Self::role) over TCP,
    /// with its password; `None` without
    /// [`password_auth`](ClusterOptions::password_auth).
    pub fn role_conninfo(&self, dbname: &str) -> Option<String> {
        let role = self.role.as_ref()?;
        Some(format!(
            "host={HOST} port={} user={} password={} dbname={}",
            self.port,
            conninfo_value(&role.user),
            conninfo_value(&role.password),
            conninfo_value(dbname)
        ))
    }

    /// Creates a database named `prefix` (lower-cased, other characters made
    /// `_`) plus a process-wide counter and the process id, and returns the
    /// name. It is owned by [`role`](Self::role) if there is one, else by the
    /// superuser.
    pub fn create_database(&self, prefix: &str) -> Result<String, Error> {
        let name = database_name(prefix, DATABASES.fetch_add(1, Ordering::Relaxed));
        let owner = match &self.role {
            Some(role) => format!(" OWNER {}", quote_ident(&role.user)),
            None => String::new(),
        };
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}{owner}", quote_ident(&name)),
        )?;
        Ok(name)
    }

    /// The size of database `dbname` in bytes (`pg_database_size`).
    pub fn database_size(&self, dbname: &str) -> Result<u64, Error> {
        let text = self.psql(
            "postgres",
            &format!("SELECT pg_database_size({})", quote_literal(dbname)),
        )?;
        text.trim().parse().map_err(|_| Error::Psql {
            target: format!("database {dbname}"),
            status: "ok".to_owned(),
            stderr: format!("pg_database_size gave {text:?}"),
        })
    }

    /// Runs `sql` (any number of statements and psql meta-commands) as the
    /// superuser in database `dbname` over the Unix socket, with this
    /// cluster's own `psql` (`-X -q -A -t -v ON_ERROR_STOP=1`), stopping at
    /// the first error. Returns the output without trailing newlines: one
    /// line per row, columns separated by `|`.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, Error> {
        self.run_psql(
            &self.socket_conninfo(dbname),
            None,
            sql,
            format!("database {dbname}"),
        )
    }

    /// Like [`psql`](Self::psql), with any libpq connection string (e.g. the
    /// role over TCP with `sslmode=verify-full`); `password` is passed in
    /// `PGPASSWORD`. Neither `PG*` variables of our environment nor
    /// `~/.pgpass` are used.
    pub fn psql_as(
        &self,
        conninfo: &str,
        password: Option<&str>,
        sql: &str,
    ) -> Result<String, Error> {
        self.run_psql(conninfo, password, sql, redact_conninfo(conninfo))
    }

    fn run_psql(
        &self,
        conninfo: &str,
        password: Option<&str>,
        sql: &str,
        target: String,
    ) -> Result<String, Error> {
        let mut cmd = command(self.binaries.client("psql"), None, &self.root);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-d",
        ])
        .arg(conninfo)
        .env("PGCONNECT_TIMEOUT", "10")
        // Not our ~/.pgpass: a missing password must stay missing.
        .env("PGPASSFILE", self.root.join("no-pgpass"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: describe_program(&cmd),
            source,
        })?;
        let stdin = child.stdin.take();
        let output = thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(mut stdin) = stdin {
                    // psql may exit early (ON_ERROR_STOP); its status says why.
                    let _ = stdin.write_all(sql.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(|source| Error::Spawn {
            program: describe_program(&cmd),
            source,
        })?;
        if !output.status.success() {
            return Err(Error::Psql {
                target,
                status: output.status.to_string(),
                stderr: tail(&String::from_utf8_lossy(&output.stderr), 20),
            });
        }
        let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        stdout.truncate(stdout.trim_end_matches('\n').len());
        Ok(stdout)
    }

    /// Sets server parameters with `ALTER SYSTEM` and reloads the
    /// configuration. Parameters that only take effect at server start need
    /// a [`restart`](Self::restart) afterwards.
    pub fn alter_system(&self, settings: &[(&str, &str)]) -> Result<(), Error> {
        let mut sql = String::new();
        for (name, value) in settings {
            check_setting_name(name)?;
            sql.push_str(&format!(
                "ALTER SYSTEM SET {name} = {};\n",
                quote_literal(value)
            ));
        }
        sql.push_str("SELECT pg_reload_conf();\n");
        self.psql("postgres", &sql).map(drop)
    }

    /// Makes the server re-read its configuration files (`pg_reload_conf()`).
    pub fn reload(&self) -> Result<(), Error> {
        self.psql("postgres", "SELECT pg_reload_conf()").map(drop)
    }

    /// Stops the server (fast shutdown: sessions are ended, a checkpoint is
    /// written) if it is running, and starts it again on the same port.
    pub fn restart(&self) -> Result<(), Error> {
        let mut supervisor = self.supervisor();
        supervisor.stop("INT")?;
        supervisor
            .launch()
            .map_err(|(LaunchError::PortInUse(err) | LaunchError::Other(err))| err)
    }

    /// Stops the server with a fast shutdown, keeping its data;
    /// [`restart`](Self::restart) starts it again.
    pub fn stop(&self) -> Result<(), Error> {
        self.supervisor().stop("INT")
    }

    /// Stops the server with an immediate shutdown, as if it crashed (it
    /// recovers from WAL on [`restart`](Self::restart)).
    pub fn kill(&self) -> Result<(), Error> {
        self.supervisor().stop("QUIT")
    }
}

/// The error and its sources, for a panic message.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(err) = source {
        text.push_str(&format!(": {err}"));
        source = err.source();
    }
    text
}

fn describe_program(cmd: &std::process::Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// pg_hba.conf: the superuser always trusts over the Unix socket; TCP from
/// 127.0.0.1 trusts everyone, or needs a password (by `password_method`)
/// from everyone with `password_auth`.
fn pg_hba(password_method: Option<&str>) -> String {
    let method = password_method.unwrap_or("trust");
    let (local_others, tcp) = (method, method);
    format!(
        "# Written by pglive-testkit.\n\
         # TYPE  DATABASE     USER        ADDRESS        METHOD\n\
         local   all          {SUPERUSER}                   trust\n\
         local   replication  {SUPERUSER}                   trust\n\
         local   all          all                       {local_others}\n\
         local   replication  all                       {local_others}\n\
         host    all          all         {HOST}/32   {tcp}\n\
         host    replication  all         {HOST}/32   {tcp}\n"
    )
}

/// Makes `$TMPDIR/pglive-testkit-<pid>-<n>` (or under `/tmp` when the
/// server user could not reach `$TMPDIR`, or its socket path would be too
/// long), private to the server user.
fn create_root(run_as: Option<RunAs>) -> Result<PathBuf, Error> {
    let mut base = std::env::temp_dir();
    let reachable = run_as.is_none()
        || base
            .ancestors()
            .all(|dir| fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0));
    // Unix socket paths are limited to about 100 bytes.
    if !reachable || base.as_os_str().len() > 50 {
        base = PathBuf::from("/tmp");
    }
    loop {
        let n = DIRECTORIES.fetch_add(1, Ordering::Relaxed);
        let root = base.join(format!("pglive-testkit-{}-{n}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {
                if let Some(user) = run_as {
                    if let Err(e) = std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid))
                    {
                        let _ = fs::remove_dir(&root);
                        return Err(Error::io("change the owner of", root, e));
                    }
                }
                return Ok(root);
            }
            // Left behind by an earlier process with the same id.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create directory", root, e)),
        }
    }
}

/// Creates a private directory owned by the server user.
fn create_dir(dir: &Path, run_as: Option<RunAs>) -> Result<(), Error> {
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))?;
    if let Some(user) = run_as {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
            .map_err(|e| Error::io("change the owner of", dir, e))?;
    }
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| Error::io("find a free port on", "127.0.0.1", e))
}

fn check_setting_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            name: name.to_owned(),
        })
    }
}

fn database_name(prefix: &str, n: u64) -> String {
    let mut prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if prefix.is_empty() {
        prefix.push_str("db");
    }
    format!("{prefix}_{n}_{}", std::process::id())
}

fn random_password() -> String {
    let state = RandomState::new();
    let mut text = String::new();
    for part in 0..2u8 {
        let mut hasher = state.build_hasher();
        hasher.write_u8(part);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        text.push_str(&format!("{:016x}", hasher.finish()));
    }
    text
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A value for postgresql.conf: quoted, with `'` and `\` escaped.
fn conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// An SQL string literal.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// An SQL quoted identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value in a libpq key=value string, quoted when needed.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The connection string with any password replaced, for error messages.
fn redact_conninfo(conninfo: &str) -> String {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        return redact_uri(conninfo);
    }
    let mut out = String::new();
    let mut rest = conninfo;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            return out;
        };
        let key = rest[..eq].trim();
        let after_eq = rest[eq + 1..].trim_start();
        let value_len = conninfo_value_len(after_eq);
        let value_start = rest.len() - after_eq.len();
        if key == "password" {
            out.push_str(&rest[..value_start]);
            out.push_str("<redacted>");
        } else {
            out.push_str(&rest[..value_start + value_len]);
        }
        rest = &after_eq[value_len..];
    }
}

/// The length of the (possibly quoted) value at the start of `s`.
fn conninfo_value_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    let quoted = s.starts_with('\'');
    if quoted {
        chars.next();
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return i + 1,
            c if !quoted && c.is_whitespace() => return i,
            _ => {}
        }
    }
    s.len()
}

fn redact_uri(uri: &str) -> String {
    let scheme_end = uri.find("://").map_or(0, |i| i + 3);
    let authority_end = uri[scheme_end..]
        .find(['/', '?'])
        .map_or(uri.len(), |i| scheme_end + i);
    let authority = &uri[scheme_end..authority_end];
    let mut out = match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:<redacted>{}",
                &uri[..scheme_end],
                &authority[..colon],
                &authority[at..]
            ),
            None => uri[..authority_end].to_owned(),
        },
        None => uri[..authority_end].to_owned(),
    };
    let query = &uri[authority_end..];
    match query.find('?') {
        Some(q) => {
            out.push_str(&query[..=q]);
            let params: Vec<String> = query[q + 1..]
                .split('&')
                .map(|param| {
                    if param.starts_with("password=") {
                        "password=<redacted>".to_owned()
                    } else {
                        param.to_owned()
                    }
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(query),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_conninfo("host=h password=secret user=u"),
            "host=h password=<redacted> user=u"
        );
        assert_eq!(
            redact_conninfo("password = 'a b\\' c' dbname=x"),
            "password = <redacted> dbname=x"
        );
        assert_eq!(
            redact_conninfo("dbname='a b' password=x"),
            "dbname='a b' password=<redacted>"
        );
        assert_eq!(
            redact_conninfo("postgres://u:secret@h:5432/db?sslmode=require&password=p"),
            "postgres://u:<redacted>@h:5432/db?sslmode=require&password=<redacted>"
        );
        assert_eq!(redact_conninfo("postgresql://h/db"), "postgresql://h/db");
    }

    #[test]
    fn quotes_values() {
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conf_value("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn names_databases() {
        let name = database_name("My Test-1", 7);
        assert_eq!(name, format!("my_test_1_7_{}", std::process::id()));
        assert!(database_name("", 0).starts_with("db_0_"));
        assert!(database_name(&"x".repeat(100), 0).len() < 64);
    }

    #[test]
    fn checks_setting_names() {
        assert!(check_setting_name("wal_level").is_ok());
        assert!(check_setting_name("auto_explain.log_min_duration").is_ok());
        assert!(check_setting_name("x; DROP").is_err());
        assert!(check_setting_name("").is_err());
    }

    #[test]
    fn passwords_differ() {
        assert_ne!(random_password(), random_password());
        assert_eq!(random_password().len(), 32);
    }
}
