//! Helpers shared by the benchmarks.

use std::path::Path;
use std::process::{Command, Stdio};

/// One table through an OS pipe between two psql processes.
pub fn pipe(bin: &Path, src: &str, dst: &str, table: &str) -> Result<(), String> {
    let mut out = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src, "-c"])
        .arg(format!("COPY {table} TO STDOUT (FORMAT binary)"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let status_in = Command::new(bin.join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dst, "-c"])
        .arg(format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .stdin(out.stdout.take().expect("piped"))
        .status()
        .map_err(|e| e.to_string())?;
    let status_out = out.wait().map_err(|e| e.to_string())?;
    if status_in.success() && status_out.success() {
        Ok(())
    } else {
        Err(format!("pipe of {table}: {status_out} | {status_in}"))
    }
}
