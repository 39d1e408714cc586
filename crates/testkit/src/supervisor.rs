//! The per-cluster supervisor: a small `sh` process that starts and stops the
//! postmaster as its own child and deletes the cluster's directory when our
//! end of its standard input closes.
//!
//! Our process holds the only write end of the supervisor's standard input
//! (std opens pipes close-on-exec, so no other child inherits it). When the
//! [`Supervisor`] is dropped, or when our process ends in any way — normal
//! exit without running destructors (the shared cluster lives in a static),
//! panic, `SIGKILL` — the pipe closes, `read` sees end-of-file, and the script
//! shuts the server down immediately and removes the directory.
//!
//! The postmaster is started by the script rather than by `pg_ctl start`,
//! which daemonizes it: an orphaned postmaster is left for PID 1 to reap,
//! which the init of some containers and VMs does late or never, so stopped
//! servers would linger as zombies. As the script's child it is waited for.
//! Readiness is judged as `pg_ctl -w` does, from the status line of
//! `postmaster.pid`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;
use crate::process::{RunAs, command, tail};

/// How long a server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads commands (`start`, `stop SIGNAL`) line by line; answers `start` with
/// the postmaster's pid and `stop` with its exit code (`none` if no server was
/// running). `stop 0` only waits for a server that already exited.
const SCRIPT: &str = r#"
trap '' PIPE
postgres=$1 data=$2 log=$3 root=$4
pid=
while read -r cmd arg; do
  case $cmd in
  start)
    "$postgres" -D "$data" </dev/null >>"$log" 2>&1 &
    pid=$!
    echo "$pid"
    ;;
  stop)
    status=none
    if [ -n "$pid" ]; then
      kill "-$arg" "$pid" 2>/dev/null
      wait "$pid"
      status=$?
      pid=
    fi
    echo "$status"
    ;;
  *)
    echo "unknown command"
    ;;
  esac
done
if [ -n "$pid" ]; then
  kill -QUIT "$pid" 2>/dev/null
  wait "$pid"
fi
rm -rf "$root"
"#;

/// Why a start attempt failed.
pub(crate) enum LaunchError {
    /// The port was taken between choosing it and the server binding it.
    PortInUse(Error),
    /// Anything else.
    Other(Error),
}

impl From<Error> for LaunchError {
    fn from(err: Error) -> Self {
        LaunchError::Other(err)
    }
}

/// Owns the supervisor process; dropping it stops the server and deletes the
/// cluster's root directory, and waits for both.
#[derive(Debug)]
pub(crate) struct Supervisor {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    root: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    postmaster: Option<u32>,
}

impl Supervisor {
    /// Starts the supervisor for a cluster living in `root` (which it deletes
    /// at the end) with its data directory and log file.
    pub(crate) fn spawn(
        postgres: &Path,
        root: &Path,
        data_dir: &Path,
        log_path: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self, Error> {
        let mut cmd = command("/bin/sh", run_as, root);
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("pglive-testkit-supervisor")
            .arg(postgres)
            .arg(data_dir)
            .arg(log_path)
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C ends the test
            // process, and the closed pipe then tells the supervisor to clean up.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: "/bin/sh".to_owned(),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::supervisor("no pipes to the supervisor", None));
        };
        Ok(Supervisor {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            root: root.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            postmaster: None,
        })
    }

    /// The running postmaster's process id.
    pub(crate) fn postmaster(&self) -> Option<u32> {
        self.postmaster
    }

    fn request(&mut self, line: &str) -> Result<String, Error> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error::supervisor("already closed", None))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| Error::supervisor(format!("could not send `{line}`"), Some(e)))?;
        let mut reply = String::new();
        let n = self
            .stdout
            .read_line(&mut reply)
            .map_err(|e| Error::supervisor(format!("no answer to `{line}`"), Some(e)))?;
        if n == 0 {
            return Err(Error::supervisor(
                format!("exited instead of answering `{line}`"),
                None,
            ));
        }
        Ok(reply.trim().to_owned())
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub(crate) fn launch(&mut self) -> Result<(), LaunchError> {
        if self.postmaster.is_some() {
            return Ok(());
        }
        let log_start = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let reply = self.request("start")?;
        let pid: u32 = reply.parse().map_err(|_| {
            Error::supervisor(format!("unexpected answer {reply:?} to `start`"), None)
        })?;
        self.postmaster = Some(pid);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut delay = Duration::from_millis(2);
        loop {
            if is_ready(&self.data_dir, pid) {
                return Ok(());
            }
            if !is_alive(pid) {
                let status = self.request("stop 0")?;
                self.postmaster = None;
                let log_tail = self.log_since(log_start);
                let port_in_use = log_tail.contains("Address already in use");
                let err = Error::Server {
                    reason: format!("exited during startup (exit code {status})"),
                    log_path: self.log_path.clone(),
                    log_tail,
                };
                return Err(if port_in_use {
                    LaunchError::PortInUse(err)
                } else {
                    LaunchError::Other(err)
                });
            }
            if Instant::now() >= deadline {
                let _ = self.stop("QUIT");
                return Err(LaunchError::Other(Error::Server {
                    reason: format!(
                        "did not accept connections within {} s",
                        STARTUP_TIMEOUT.as_secs()
                    ),
                    log_path: self.log_path.clone(),
                    log_tail: self.log_since(log_start),
                }));
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(25));
        }
    }

    /// Sends `signal` (`TERM` smart, `INT` fast, `QUIT` immediate shutdown)
    /// to the postmaster, if running, and waits for it to exit.
    pub(crate) fn stop(&mut self, signal: &str) -> Result<(), Error> {
        if self.postmaster.is_none() {
            return Ok(());
        }
        let log_start = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let status = self.request(&format!("stop {signal}"))?;
        self.postmaster = None;
        // A fast or smart shutdown ends with exit code 0; an immediate one
        // (or a server that had already died) may not.
        if status == "0" || signal == "QUIT" {
            Ok(())
        } else {
            Err(Error::Server {
                reason: format!("exited with code {status} when stopped"),
                log_path: self.log_path.clone(),
                log_tail: self.log_since(log_start),
            })
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let log = fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(log.len());
        tail(&String::from_utf8_lossy(&log[start..]), 30)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // End-of-file makes the script stop the server and delete the root.
        drop(self.stdin.take());
        let _ = self.child.wait();
        // In case something in the directory was not the server user's to
        // delete (we may be root).
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Whether `postmaster.pid` names `pid` and says "ready" (its 8th line),
/// which is how `pg_ctl start -w` decides.
fn is_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let mut lines = text.lines();
    lines.next().map(str::trim) == Some(pid.to_string().as_str())
        && lines.nth(6).map(str::trim) == Some("ready")
}

/// Whether process `pid` is still running (not exited, not a zombie). Without
/// `/proc`, assumes it is and relies on the startup timeout.
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}
