//! Helpers shared by the benchmarks (each uses some of them).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use pglive_testkit::Cluster;

/// The release binary the benches were built with.
pub const PGLIVE: &str = env!("CARGO_BIN_EXE_pglive");

/// Rows of `from` (a table, or a query in parentheses) into table `into`
/// through an OS pipe between two psql processes: the raw limit of a copy.
pub fn pipe(bin: &Path, src: &str, dst: &str, from: &str, into: &str) -> Result<(), String> {
    let mut out = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-c"])
        .arg(format!("COPY {from} TO STDOUT (FORMAT binary)"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let status_in = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dst, "-c"])
        .arg(format!("COPY {into} FROM STDIN (FORMAT binary)"))
        .stdin(out.stdout.take().expect("piped"))
        .status()
        .map_err(|e| e.to_string())?;
    let status_out = out.wait().map_err(|e| e.to_string())?;
    if status_in.success() && status_out.success() {
        Ok(())
    } else {
        Err(format!("pipe of {from}: {status_out} | {status_in}"))
    }
}

/// Seconds of [`pipe`] from database `source` to `target` of `cluster`,
/// after a checkpoint (so that neither pays for the other's dirty pages).
pub fn timed_pipe(cluster: &Cluster, source: &str, target: &str, from: &str, into: &str) -> f64 {
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    let started = std::time::Instant::now();
    pipe(
        cluster.bin_dir(),
        &cluster.conninfo(source),
        &cluster.conninfo(target),
        from,
        into,
    )
    .expect("the raw pipe");
    started.elapsed().as_secs_f64()
}

/// The sizes listed in environment variable `name` (comma-separated).
pub fn sizes(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("a whole number"))
        .collect()
}

/// Runs the binary; its stdout and stderr (it must succeed).
pub fn pglive(args: &[&str]) -> String {
    let output = Command::new(PGLIVE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("pglive runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pglive {args:?} failed:\n{said}");
    said
}

/// The seconds in `…<marker>… in 12.3s` on the first line starting with
/// `prefix` that has them.
pub fn seconds_after(log: &str, prefix: &str, marker: &str) -> f64 {
    log.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let rest = &l[l.rfind(marker)? + marker.len()..];
            rest.split('s').next()?.parse().ok()
        })
        .next()
        .unwrap_or_else(|| panic!("no {prefix:?} line with seconds in:\n{log}"))
}

pub fn drop_database(cluster: &Cluster, name: &str) {
    cluster
        .psql("postgres", &format!("DROP DATABASE \"{name}\""))
        .unwrap();
}
