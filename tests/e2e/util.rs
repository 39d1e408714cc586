//! Running the real `pglive` binary from tests.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A `pglive` command with a clean environment (no PGLIVE_* or PG*
/// variables from the caller) and plain, non-terminal output.
pub fn pglive(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pglive"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PG") {
            command.env_remove(key);
        }
    }
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs `pglive args` to completion.
pub fn run(args: &[&str]) -> Output {
    pglive(args).output().expect("pglive runs")
}

/// Stdout and stderr together, for messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs and asserts success, returning stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(
        output.status.success(),
        "pglive {args:?} failed:\n{}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts `pglive args` in the background (stderr kept for failures).
pub fn spawn(args: &[&str]) -> Child {
    pglive(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pglive starts")
}

/// The migration's stage from `pglive status --json`, or `None` before it
/// exists.
pub fn stage(target: &str, name: &str) -> Option<String> {
    let output = run(&["status", "--target", target, "--name", name, "--json"]);
    if !output.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    json["stage"].as_str().map(str::to_owned)
}

/// Waits until the migration reaches one of `stages`, or the child exits.
pub fn wait_for_stage(
    target: &str,
    name: &str,
    stages: &[&str],
    child: &mut Child,
    limit: Duration,
) -> String {
    poll_stage(
        || stage(target, name),
        stages,
        child,
        limit,
        Duration::from_millis(50),
    )
}

/// Polls `read_stage` every `interval` until it says one of `stages`; the
/// child exiting first, or `limit` passing, fails the test.
fn poll_stage(
    read_stage: impl Fn() -> Option<String>,
    stages: &[&str],
    child: &mut Child,
    limit: Duration,
    interval: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    let reached = || read_stage().filter(|stage| stages.contains(&stage.as_str()));
    loop {
        if let Some(stage) = reached() {
            return stage;
        }
        if let Some(status) = child.try_wait().unwrap() {
            // The child may have reached the stage and exited between the
            // read above and this check: look once more.
            if let Some(stage) = reached() {
                return stage;
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                e.read_to_string(&mut err).ok();
            }
            panic!("pglive exited with {status} before reaching {stages:?}:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "stage {stages:?} not reached in time"
        );
        std::thread::sleep(interval);
    }
}

/// Waits until the migration's copy of `table` is done on the target, and
/// its adoption (for a table created mid-run) finished.
pub fn wait_until_copied(
    cluster: &pglive_testkit::Cluster,
    db: &str,
    table: &str,
    child: &mut std::process::Child,
) {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE state = 'done') || '/' || count(*) || '/' ||
                (SELECT count(*) FROM pglive.adopting WHERE table_name = '{table}')
           FROM pglive.copy_parts WHERE table_name = '{table}'"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = cluster.psql(db, &sql).unwrap_or_default();
        let parts: Vec<&str> = state.split('/').collect();
        if let [done, all, "0"] = parts[..] {
            if done == all && all != "0" {
                return;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "migrate exited");
        if Instant::now() >= deadline {
            let waiting = cluster
                .psql(
                    db,
                    "SELECT string_agg(name || ': ' || coalesce(apply_waiting, 'apply not waiting'), '; ') FROM pglive.migration",
                )
                .unwrap_or_default();
            panic!("{table} was never copied ({state}); {waiting}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a `cutover` while `migrate` runs; on failure, shows both outputs.
pub fn cutover_ok(args: &[&str], migrate: &mut Child) -> String {
    let output = run(args);
    if !output.status.success() {
        migrate.kill().ok();
        let mut log = String::new();
        if let Some(mut e) = migrate.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut log).ok();
        }
        panic!(
            "pglive {args:?} failed:\n{}\nmigrate said:\n{log}",
            text(&output)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Pins what the comparisons print, whatever the database defaults.
pub const PINNED: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET TimeZone = UTC; \
     SET extra_float_digits = 3; SET bytea_output = hex; SET statement_timeout = 0; \
     SET row_security = off; SET lc_monetary = 'C';";

/// A source database `<prefix>_src` loaded with `source_sql` and an empty
/// target database `<prefix>_dst` on `cluster` (their names made unique).
pub fn databases(
    cluster: &pglive_testkit::Cluster,
    prefix: &str,
    source_sql: &str,
) -> (String, String) {
    let source = cluster.create_database(&format!("{prefix}_src")).unwrap();
    let target = cluster.create_database(&format!("{prefix}_dst")).unwrap();
    cluster.psql(&source, source_sql).unwrap();
    (source, target)
}

/// Asserts that `table` holds the same rows in the source's database `src`
/// and the target's `dst` (count and digest of every row's text, computed
/// by the servers independently of pglive).
pub fn assert_table_equal(
    source: &pglive_testkit::Cluster,
    src: &str,
    target: &pglive_testkit::Cluster,
    dst: &str,
    table: &str,
) {
    let sql = format!(
        "{PINNED} SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
    );
    assert_eq!(
        source.psql(src, &sql).unwrap(),
        target.psql(dst, &sql).unwrap(),
        "{table} differs between source and target"
    );
}

/// Starts `pglive migrate` of migration `name` (with `extra` flags) and
/// waits up to two minutes until it streams.
pub fn migrate_until_streaming(source: &str, target: &str, name: &str, extra: &[&str]) -> Child {
    let mut args = vec![
        "migrate", "--source", source, "--target", target, "--name", name,
    ];
    args.extend_from_slice(extra);
    let mut migrate = spawn(&args);
    wait_for_stage(
        target,
        name,
        &["streaming"],
        &mut migrate,
        Duration::from_secs(120),
    );
    migrate
}

/// Sends a `pglive` process SIGINT (Ctrl-C) and waits for it to end.
pub fn interrupt(child: Child) -> Output {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

/// Runs `future` to completion on a runtime of its own (for test threads).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Waits for a child and asserts it succeeded.
pub fn finish(child: Child) -> String {
    let output = child.wait_with_output().expect("pglive finishes");
    assert!(output.status.success(), "pglive failed:\n{}", text(&output));
    text(&output)
}

/// Waits up to `limit` for a child and asserts it succeeded; one still
/// running then is killed and fails the test with what it printed.
pub fn finish_within(mut child: Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            let output = child.wait_with_output().unwrap();
            panic!("pglive still ran after {limit:?}:\n{}", text(&output));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    finish(child)
}

/// Waits until a `migrate` holds the migration's lock (status says running).
pub fn wait_until_running(target: &str, name: &str, child: &mut Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let output = run(&["status", "--target", target, "--name", name, "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if json["running"] == serde_json::Value::Bool(true) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "pglive exited early");
        assert!(Instant::now() < deadline, "migrate never started running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Source transactions in a loop until stopped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Workload {
    /// Runs `sql(n)` for n = 0, 1, … on `conninfo` until stopped; a
    /// failed statement reconnects (the source may be restarting) and is
    /// not counted.
    pub fn start(conninfo: String, sql: fn(u64) -> String) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || {
                block_on(async move {
                    let config = pglive_postgres::ConnectConfig::parse(&conninfo).unwrap();
                    let mut client = None;
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if client.is_none() {
                            client = pglive_postgres::connect_sql(&config).await.ok();
                            if client.is_none() {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                        let sql = sql(n);
                        match client.as_ref().unwrap().batch_execute(&sql).await {
                            Ok(()) => {
                                n += 1;
                                count.store(n, Ordering::Relaxed);
                            }
                            // The source may be restarting: reconnect.
                            Err(_) => client = None,
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            })
        };
        Workload {
            stop,
            count,
            thread,
        }
    }

    /// Stops the loop; how many statements succeeded.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.count.load(Ordering::Relaxed)
    }
}
