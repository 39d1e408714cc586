//! Running helper programs, as the unprivileged server user when we are root.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::Error;

/// The system user that runs PostgreSQL when this process is root.
const SERVER_USER: &str = "postgres";

/// Who the server's processes run as when that is not us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `None` when we are not root (everything runs as us); otherwise the
/// `postgres` system user, because PostgreSQL refuses to run as root.
pub(crate) fn run_as() -> Result<Option<RunAs>, Error> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    lookup_user(SERVER_USER)
        .map(Some)
        .ok_or_else(|| Error::NoUnprivilegedUser {
            user: SERVER_USER.to_owned(),
        })
}

/// The effective user id: the owner of `/proc/self`, else `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Some(meta.uid());
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Looks a user up in `/etc/passwd`.
fn lookup_user(name: &str) -> Option<RunAs> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(RunAs { uid, gid })
    })
}

/// A command with a clean environment (no `PG*` variables, which would
/// change what the PostgreSQL programs do), standard input from `/dev/null`,
/// run in `cwd`, as `run_as` if given.
pub(crate) fn command(program: impl AsRef<OsStr>, run_as: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd).stdin(Stdio::null());
    if let Some(user) = run_as {
        // std drops supplementary groups when switching from root.
        cmd.uid(user.uid).gid(user.gid).env("HOME", cwd);
    }
    cmd
}

/// The command line, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion, capturing its output; a failure becomes
/// [`Error::Command`] with the end of its standard error.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, Error> {
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| Error::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(output);
    }
    let stream = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        &output.stdout
    } else {
        &output.stderr
    };
    Err(Error::Command {
        command: describe(cmd),
        status: output.status.to_string(),
        stderr: tail(&String::from_utf8_lossy(stream), 20),
    })
}

/// The last `lines` lines of `text`, without surrounding blank space.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let text = text.trim();
    let start = text
        .rmatch_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(tail("  only  ", 1), "only");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn finds_root_in_passwd() {
        assert_eq!(lookup_user("root"), Some(RunAs { uid: 0, gid: 0 }));
        assert_eq!(lookup_user("no-such-user-pglive"), None);
    }
}
