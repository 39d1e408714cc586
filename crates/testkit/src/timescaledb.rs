//! TimescaleDB for the clusters that ask for it.
//!
//! The extension is built from the source that `../shared/timescaledb/`
//! holds beside the workspace (its `install.sh`), never vendored: a
//! cluster started with [`ClusterOptions::timescaledb`] installs it into
//! its server installation when missing, then preloads it.
//!
//! [`ClusterOptions::timescaledb`]: crate::ClusterOptions::timescaledb

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::binaries::PgBinaries;
use crate::error::Error;
use crate::process::run;

/// Where the install script is, unless `PGLIVE_TIMESCALEDB_INSTALL` names it:
/// `../shared/timescaledb/install.sh` beside the workspace.
fn install_script() -> PathBuf {
    match std::env::var_os("PGLIVE_TIMESCALEDB_INSTALL").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/timescaledb/install.sh")
        }
    }
}

/// Makes sure the server programs of `binaries` can load TimescaleDB,
/// building and installing it with the install script when they cannot.
pub(crate) fn ensure_installed(binaries: &PgBinaries) -> Result<(), Error> {
    // One installation at a time in this process; the script itself is
    // idempotent.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let pg_config = binaries.client("pg_config");
    let libdir = pg_config_value(&pg_config, "--pkglibdir")?;
    if Path::new(&libdir).join("timescaledb.so").is_file() {
        return Ok(());
    }
    let script = install_script();
    if !script.is_file() {
        return Err(Error::TimescaleDbMissing {
            libdir,
            detail: format!(
                "its install script {} is not there (set PGLIVE_TIMESCALEDB_INSTALL to it)",
                script.display()
            ),
        });
    }
    run(Command::new("bash").arg(&script).arg(&pg_config)).map_err(|err| {
        Error::TimescaleDbMissing {
            libdir: libdir.clone(),
            detail: format!("{} failed: {err}", script.display()),
        }
    })?;
    Ok(())
}

fn pg_config_value(pg_config: &Path, flag: &str) -> Result<String, Error> {
    let output = run(Command::new(pg_config).arg(flag))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
