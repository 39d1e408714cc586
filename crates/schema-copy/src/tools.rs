//! Finding and running the PostgreSQL client programs.
//!
//! The schema is copied by the real `pg_dump`, `pg_restore` and `psql`, never
//! by a re-implementation: they know every object kind of every version.
//! [`PgTools::find`] picks one directory holding all three. `pg_dump` must be
//! at least as new as the source server (an older one refuses to dump it), so
//! candidates are collected from `$PG_BINDIR`, `pg_config --bindir`, `PATH`
//! and `/usr/lib/postgresql/*/bin` (newest first), and the first one whose
//! major version is at least the server's wins.
//!
//! Child processes never see a password on their command line: it is passed
//! in `PGPASSWORD`, and TLS settings in `PGSSLMODE`, `PGCHANNELBINDING`,
//! `PGSSLROOTCERT`, ... so they behave as pglive's own sessions do. Other `PG*` variables of this
//! process are removed from their environment: the [`ConnectConfig`] already
//! took them into account.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use pglive_postgres::{ConnectConfig, Host};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::error::{Error, Result};

/// The programs a directory must hold.
const REQUIRED: [&str; 3] = ["pg_dump", "pg_restore", "psql"];

/// Where Debian and Ubuntu install each major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// How many lines of a failed program's standard error go into the error.
const STDERR_LINES: usize = 20;

/// A directory of PostgreSQL client programs (`pg_dump`, `pg_restore`,
/// `psql`, `pg_dumpall`) and their major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTools {
    dir: PathBuf,
    major: u32,
}

impl PgTools {
    /// Finds client programs able to dump a server of major version
    /// `server_major`: the first directory (in the order of the module
    /// documentation) whose `pg_dump` is at least that version.
    ///
    /// Errors: [`Error::ToolsTooOld`] naming the versions found when every
    /// one is older, [`Error::ToolsNotFound`] when there is none.
    pub fn find(server_major: u32) -> Result<PgTools> {
        Self::pick(candidate_dirs(), server_major)
    }

    /// Uses the programs in `dir`, which must hold `pg_dump`, `pg_restore`
    /// and `psql`.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<PgTools> {
        let dir = dir.into();
        probe(&dir).ok_or_else(|| Error::ToolsNotFound {
            searched: dir.display().to_string(),
        })
    }

    fn pick(dirs: Vec<PathBuf>, server_major: u32) -> Result<PgTools> {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for dir in &dirs {
            let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            if !seen.insert(dir.clone()) {
                continue;
            }
            if let Some(tools) = probe(&dir) {
                if tools.major >= server_major {
                    return Ok(tools);
                }
                found.push(tools);
            }
        }
        if found.is_empty() {
            return Err(Error::ToolsNotFound {
                searched: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Err(Error::ToolsTooOld {
            server_major,
            found: found
                .iter()
                .map(|t| format!("{} ({})", t.major, t.dir.display()))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The directory holding the programs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The programs' major version, e.g. `15`.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The path of one program, e.g. `program("pg_restore")`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command for `program` connecting to `server` through the
    /// environment: password, TLS settings and connect timeout in `PG*`
    /// variables, no other `PG*` variable inherited. The caller adds the
    /// connection string from [`conninfo`].
    pub(crate) fn command(&self, program: &str, server: &ConnectConfig) -> Command {
        let mut cmd = Command::new(self.program(program));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                cmd.env_remove(name);
            }
        }
        if let Some(password) = &server.password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.env("PGSSLMODE", server.sslmode.as_str());
        // As strict as pglive's own connections: with `require`, a program
        // must not fall back to a login that is not bound to the channel.
        cmd.env("PGCHANNELBINDING", server.channel_binding.as_str());
        cmd.env("PGSSLSNI", if server.sslsni { "1" } else { "0" });
        cmd.env(
            "PGSSLMINPROTOCOLVERSION",
            if server.tls13_only {
                "TLSv1.3"
            } else {
                "TLSv1.2"
            },
        );
        for (var, path) in [
            ("PGSSLROOTCERT", &server.sslrootcert),
            ("PGSSLCERT", &server.sslcert),
            ("PGSSLKEY", &server.sslkey),
        ] {
            if let Some(path) = path {
                cmd.env(var, path);
            }
        }
        if let Some(timeout) = server.connect_timeout {
            cmd.env("PGCONNECT_TIMEOUT", timeout.as_secs().to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

/// A libpq connection string for `server` without its password (which goes
/// in `PGPASSWORD`) or TLS settings (which go in `PGSSL*`).
pub(crate) fn conninfo(server: &ConnectConfig) -> String {
    let hosts = server
        .hosts
        .iter()
        .map(|(host, _)| match host {
            Host::Tcp(name) => name.clone(),
            // libpq verifies TLS against host: the address when alone.
            Host::Addr { name, addr } => name.clone().unwrap_or_else(|| addr.to_string()),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let addrs = server
        .hosts
        .iter()
        .filter_map(|(host, _)| match host {
            Host::Addr { addr, .. } => Some(addr.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",");
    let ports = server
        .hosts
        .iter()
        .map(|(_, port)| port.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut info = format!(
        "host={} port={} user={} dbname={} application_name={}",
        conninfo_value(&hosts),
        conninfo_value(&ports),
        conninfo_value(&server.user),
        conninfo_value(&server.dbname),
        conninfo_value(&server.application_name),
    );
    if !addrs.is_empty() {
        info.push_str(&format!(" hostaddr={}", conninfo_value(&addrs)));
    }
    if let Some(options) = &server.options {
        info.push_str(&format!(" options={}", conninfo_value(options)));
    }
    let keepalives = &server.keepalives;
    info.push_str(&format!(" keepalives={}", u8::from(keepalives.enabled)));
    for (key, value) in [
        ("keepalives_idle", keepalives.idle.map(|d| d.as_secs())),
        (
            "keepalives_interval",
            keepalives.interval.map(|d| d.as_secs()),
        ),
        ("keepalives_count", keepalives.count.map(u64::from)),
    ] {
        if let Some(value) = value {
            info.push_str(&format!(" {key}={value}"));
        }
    }
    info
}

/// A value quoted for a libpq key=value string.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs `cmd` to completion, feeding `input` to its standard input, and
/// returns its standard output; a non-zero exit is [`Error::Command`] with
/// `what` and the tail of standard error.
pub(crate) async fn run(mut cmd: Command, what: &str, input: Option<&[u8]>) -> Result<Vec<u8>> {
    let program = PathBuf::from(cmd.as_std().get_program());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        // The program may stop reading early (ON_ERROR_STOP); its exit status
        // says why, so a write error here is not the interesting one.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn { program, source })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: what.to_owned(),
            status: output.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), STDERR_LINES),
        });
    }
    Ok(output.stdout)
}

/// Runs `cmd` to completion, handing each line it writes to standard error
/// to `on_line` as it comes (for a program's `--verbose` progress); a
/// non-zero exit is [`Error::Command`] with `what` and the last lines.
pub(crate) async fn run_reporting(
    mut cmd: Command,
    what: &str,
    mut on_line: impl FnMut(&str),
) -> Result<()> {
    let program = PathBuf::from(cmd.as_std().get_program());
    cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut last = std::collections::VecDeque::with_capacity(STDERR_LINES);
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            on_line(&line);
            if last.len() == STDERR_LINES {
                last.pop_front();
            }
            last.push_back(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|source| Error::Spawn { program, source })?;
    if !status.success() {
        return Err(Error::Command {
            command: what.to_owned(),
            status: status.to_string(),
            stderr: Vec::from(last).join("\n"),
        });
    }
    Ok(())
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        dirs.push(dir.into());
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !dir.is_empty() {
            dirs.push(dir.into());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir(DEBIAN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
    dirs
}

/// The tools in `dir`, if it holds all of them and `pg_dump --version`
/// answers.
fn probe(dir: &Path) -> Option<PgTools> {
    let executable = |name: &str| {
        fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if !REQUIRED.iter().all(|name| executable(name)) {
        return None;
    }
    let out = std::process::Command::new(dir.join("pg_dump"))
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let major = parse_major(&String::from_utf8_lossy(&out.stdout))?;
    Some(PgTools {
        dir: dir.to_path_buf(),
        major,
    })
}

/// The major version in `pg_dump (PostgreSQL) 15.18 (Debian ...)` or
/// `pg_dump (PostgreSQL) 9.6.24`.
fn parse_major(version: &str) -> Option<u32> {
    let number = version
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number.split(|c: char| !c.is_ascii_digit());
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 {
        Some(first)
    } else {
        // 9.6 and older: the major version has two parts.
        let second: u32 = parts.next()?.parse().ok()?;
        Some(first * 100 + second)
    }
}

/// The major version of a server from its `server_version_num` (150018 →
/// 15, 90624 → 906).
pub fn server_major(server_version_num: u32) -> u32 {
    if server_version_num >= 100_000 {
        server_version_num / 10_000
    } else {
        server_version_num / 100
    }
}

/// A temporary directory (mode 0700) removed when dropped.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    pub(crate) fn create() -> Result<WorkDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "pglive-schema-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| Error::Io {
                action: "create",
                path: path.clone(),
                source,
            })?;
        Ok(WorkDir { path })
    }

    pub(crate) fn join(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }
}

use std::os::unix::fs::DirBuilderExt;

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17devel"), Some(17));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 9.6.24"), Some(906));
        assert_eq!(parse_major("nonsense"), None);
        assert_eq!(server_major(150018), 15);
        assert_eq!(server_major(90624), 906);
    }

    #[test]
    fn conninfo_has_no_password_and_quotes_values() {
        let config =
            ConnectConfig::parse("host=h1 port=5433 user='o\\'k' password=secret dbname='my db'")
                .unwrap();
        let info = conninfo(&config);
        assert!(!info.contains("secret"), "{info}");
        assert!(info.contains("user='o\\'k'"), "{info}");
        assert!(info.contains("dbname='my db'"), "{info}");
        assert!(info.contains("port='5433'"), "{info}");
        assert!(info.contains("keepalives=1"), "{info}");
        assert!(!info.contains("hostaddr"), "{info}");

        // hostaddr and keepalive timings reach the programs as given.
        let config = ConnectConfig::parse(
            "host=db.example hostaddr=10.0.0.7 user=u keepalives_idle=30 keepalives_count=3",
        )
        .unwrap();
        let info = conninfo(&config);
        assert!(info.contains("host='db.example'"), "{info}");
        assert!(info.contains("hostaddr='10.0.0.7'"), "{info}");
        assert!(
            info.contains("keepalives_idle=30") && info.contains("keepalives_count=3"),
            "{info}"
        );
    }

    #[test]
    fn too_old_tools_are_a_clear_error() {
        let Ok(tools) = PgTools::find(0) else {
            return; // no client programs on this machine
        };
        let err = PgTools::pick(vec![tools.dir().to_path_buf()], tools.major() + 1).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::ToolsTooOld { .. }), "{text}");
        assert!(text.contains(&tools.major().to_string()), "{text}");
        assert!(text.contains(&tools.dir().display().to_string()), "{text}");
        let err = PgTools::pick(vec![PathBuf::from("/nonexistent")], 10).unwrap_err();
        assert!(matches!(err, Error::ToolsNotFound { .. }), "{err}");
    }

    #[test]
    fn client_programs_get_the_channel_binding_and_tls_settings() {
        let Ok(tools) = PgTools::find(0) else {
            return; // no client programs on this machine
        };
        let config = ConnectConfig::parse(
            "host=h user=u password=secret dbname=d sslmode=require channel_binding=require",
        )
        .unwrap();
        let cmd = tools.command("pg_dump", &config);
        let env: Vec<(String, String)> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        // Without it pg_dump would fall back to an unbound login (and hand
        // the password to whoever answers) where pglive itself refuses one.
        assert_eq!(get("PGCHANNELBINDING"), Some("require"), "{env:?}");
        assert_eq!(get("PGSSLMODE"), Some("require"), "{env:?}");
        assert_eq!(get("PGPASSWORD"), Some("secret"));
    }
}
