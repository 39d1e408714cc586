//! Finding the PostgreSQL server programs.

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The programs a directory must hold to count as a server bin directory.
const REQUIRED: [&str; 3] = ["postgres", "initdb", "pg_ctl"];

/// Where Debian and Ubuntu install each major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Where `.ci/install-postgres-versions.sh` installs other server versions
/// (`<root>/<major>/bin`), unless `PGLIVE_PG_ROOT` names another place.
const VERSIONS_ROOT: &str = "/opt/pglive-pg";

/// A directory of PostgreSQL server programs (`postgres`, `initdb`,
/// `pg_ctl`, and usually `psql`, `pg_dump`, ... of the same version) and their
/// major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
    major: u32,
}

impl PgBinaries {
    /// Finds the server programs: `$PG_BINDIR`, then `pg_config --bindir`,
    /// then the directories on `PATH`, then `/usr/lib/postgresql/*/bin`,
    /// then `$PGLIVE_PG_ROOT/*/bin` (default `/opt/pglive-pg`, see
    /// `.ci/install-postgres-versions.sh`), newest major version first. A directory counts only if it holds
    /// `postgres`, `initdb` and `pg_ctl`; symbolic links are followed to the
    /// real directory.
    pub fn find() -> Result<Self, Error> {
        search(None)
    }

    /// Like [`find`](Self::find), but only accepts programs of major version
    /// `major` (e.g. `15`).
    pub fn find_major(major: u32) -> Result<Self, Error> {
        search(Some(major))
    }

    /// Uses the programs in `dir`, which must hold `postgres`, `initdb` and
    /// `pg_ctl`.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        candidate(&dir).ok_or_else(|| Error::BinariesNotFound {
            major: None,
            searched: dir.display().to_string(),
        })
    }

    /// The directory holding the programs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The major version, e.g. `15`.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The path of one program in the directory, e.g. `program("pg_dump")`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client program (`psql`, `pg_dump`, …) of this version or, for a
    /// server-only installation, of the newest installation that has it.
    pub fn client(&self, name: &str) -> PathBuf {
        let own = self.dir.join(name);
        if own.is_file() {
            return own;
        }
        installation_dirs(None)
            .into_iter()
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .unwrap_or(own)
    }
}

fn search(major: Option<u32>) -> Result<PgBinaries, Error> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        dirs.push(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !dir.is_empty() {
            dirs.push(dir.into());
        }
    }
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path).filter(|d| d.is_absolute()));
    }
    dirs.extend(installation_dirs(major));

    let mut searched: Vec<String> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if seen.contains(&dir) {
            continue;
        }
        seen.push(dir.clone());
        match candidate(&dir) {
            Some(found) if major.is_none_or(|m| m == found.major) => return Ok(found),
            Some(found) => searched.push(format!("{} (version {})", dir.display(), found.major)),
            None => searched.push(dir.display().to_string()),
        }
    }
    Err(Error::BinariesNotFound {
        major,
        searched: searched.join(", "),
    })
}

/// `<root>/<major>/bin` under Debian's root, then under the versions root,
/// each newest first, or only `major`'s: without a version asked for, the
/// system's installation comes first.
fn installation_dirs(major: Option<u32>) -> Vec<PathBuf> {
    let versions_root = env::var_os("PGLIVE_PG_ROOT")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(VERSIONS_ROOT));
    let mut found: Vec<(usize, u32, PathBuf)> = Vec::new();
    for (rank, root) in [PathBuf::from(DEBIAN_ROOT), versions_root]
        .into_iter()
        .enumerate()
    {
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if major.is_none_or(|m| m == version) {
                found.push((rank, version, root.join(version.to_string()).join("bin")));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    found.into_iter().map(|(_, _, dir)| dir).collect()
}

/// The server bin directory `dir` stands for, if any: the real directory of
/// `dir/postgres` when that holds all programs (so a directory of symbolic
/// links resolves to the installation), else `dir` itself.
fn candidate(dir: &Path) -> Option<PgBinaries> {
    let real = fs::canonicalize(dir.join("postgres"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| has_programs(d));
    let dir = match real {
        Some(real) => real,
        None if has_programs(dir) => dir.to_path_buf(),
        None => return None,
    };
    let major = major_version(&dir)?;
    Some(PgBinaries { dir, major })
}

fn has_programs(dir: &Path) -> bool {
    REQUIRED.iter().all(|name| {
        fs::metadata(dir.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs `postgres --version` ("postgres (PostgreSQL) 15.18 (Debian ...)").
fn major_version(dir: &Path) -> Option<u32> {
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .env_remove("PGDATA")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major(version: &str) -> Option<u32> {
    let rest = match version.find("(PostgreSQL)") {
        Some(i) => &version[i + "(PostgreSQL)".len()..],
        None => version,
    };
    let number = rest
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = number.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("nonsense"), None);
    }
}
