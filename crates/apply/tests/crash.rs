//! Crash safety: the applying process is killed with SIGKILL at random
//! points and started again; at the end the target equals the source and
//! nothing was applied twice.
//!
//! The applying process is this test binary run again with
//! `PGLIVE_APPLY_CHILD` set, so it dies like a real pglive would.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Pair, apply_until, config};
use pglive_apply::{Applier, ApplyOptions, Stopped};
use pglive_postgres::Lsn;

const CHILD: &str = "PGLIVE_APPLY_CHILD";

/// The child's side: apply from the slot until the given LSN with small
/// batches (so kills land between and inside many commits), then exit.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\u{1}').collect();
    let [source, target, slot, start, stop_at, proto] = parts[..] else {
        panic!("bad child spec");
    };
    let proto: u32 = proto.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut options = ApplyOptions::new(slot, proto);
        options.max_batch_changes = 300;
        // Kills also land between the commits of one batch's lanes.
        options.sessions = 3;
        let mut applier = Applier::connect(&config(target), options).await.unwrap();
        let stopped = apply_until(
            source,
            slot,
            start.parse().unwrap(),
            &mut applier,
            proto,
            stop_at.parse::<Lsn>().unwrap(),
        )
        .await;
        assert!(matches!(stopped, Stopped::ReachedLsn(_)));
        let stats = applier.stats();
        eprintln!(
            "child applied {} batches, {} of them spread over sessions",
            stats.batches, stats.spread_batches
        );
    });
    // Peak resident memory, for the bounded-memory test.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    if let Ok(file) = std::env::var("PGLIVE_APPLY_RSS_FILE") {
        std::fs::write(file, peak.split_whitespace().nth(1).unwrap()).unwrap();
    }
}

struct Rng(u64);

impl Rng {
    fn new() -> (Rng, u64) {
        let seed = std::env::var("PGLIVE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        (Rng(seed | 1), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn_child(pair: &Pair, stop_at: Lsn) -> Child {
    spawn_child_with(pair, stop_at, 2, None)
}

fn spawn_child_with(
    pair: &Pair,
    stop_at: Lsn,
    proto: u32,
    rss_file: Option<&std::path::Path>,
) -> Child {
    let spec = [
        pair.source_conninfo(),
        pair.target_conninfo(),
        pair.slot.clone(),
        pair.start.to_string(),
        stop_at.to_string(),
        proto.to_string(),
    ]
    .join("\u{1}");
    let mut command = Command::new(std::env::current_exe().unwrap());
    if let Some(file) = rss_file {
        command.env("PGLIVE_APPLY_RSS_FILE", file);
    }
    command
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, spec)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn kill_and_resume(trials: u32) {
    let pair = Pair::new(
        "crash",
        "CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL, pad text);
         CREATE TABLE log (n int, note text);
         ALTER TABLE log REPLICA IDENTITY FULL;",
    )
    .await;
    // A backlog of many small transactions of every kind; `log` has no key,
    // so a transaction applied twice would show as extra rows.
    let mut workload = String::from(
        "INSERT INTO kv SELECT g, 0, repeat('p', 20) FROM generate_series(1, 2000) g;\n",
    );
    // Key changes make a batch run on one session, and so do batches of
    // mostly inserts; the second half has no key changes and fewer
    // inserts, so its batches are spread over the child's sessions.
    let statements = trials as usize * 2000;
    for i in 0..statements {
        let k = (i * 7919) % 2000 + 1;
        let kind = match i % 6 {
            1 | 4 if i >= statements / 2 => 0,
            kind => kind,
        };
        workload.push_str(&match kind {
            0 => format!("UPDATE kv SET v = v + 1 WHERE k = {k};\n"),
            1 => format!("INSERT INTO log VALUES ({i}, 'n');\n"),
            2 => format!("BEGIN; UPDATE kv SET v = v * 2 WHERE k = {k}; INSERT INTO log VALUES ({i}, 'tx'); COMMIT;\n"),
            3 => format!("DELETE FROM kv WHERE k = {k}; INSERT INTO kv VALUES ({k}, {i}, 'again') ON CONFLICT (k) DO NOTHING;\n"),
            4 => format!("UPDATE kv SET k = k + 100000 WHERE k = {k};\n"),
            _ => format!("INSERT INTO kv VALUES ({}, {i}, 'new');\n", 200000 + i),
        });
    }
    workload.push_str("DELETE FROM log WHERE n % 10 = 1;\n");
    pair.source_sql(&workload);
    let stop_at = pair.source_lsn();

    let (mut rng, seed) = Rng::new();
    eprintln!("crash test seed {seed} (set PGLIVE_CRASH_SEED to replay)");
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while kills < trials {
        let mut child = spawn_child(&pair, stop_at);
        let wait = Duration::from_millis(40 + rng.below(400));
        tokio::time::sleep(wait).await;
        if child.try_wait().unwrap().is_some() {
            // It finished before the kill; nothing left to interrupt.
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert!(Instant::now() < deadline, "crash trials took too long");
    }
    // A last run, left alone, finishes the job.
    let status = spawn_child(&pair, stop_at).wait().unwrap();
    assert!(status.success(), "the final apply failed");
    eprintln!("{kills} kill -9 during apply");
    assert!(
        kills * 4 >= trials * 3,
        "only {kills} kills landed before apply finished"
    );
    pair.assert_equal().await;
}

#[tokio::test]
async fn kill_9_during_apply_then_resume() {
    kill_and_resume(4).await;
}

/// The long version: `cargo test -p pglive-apply --test crash -- --ignored`.
#[tokio::test]
#[ignore]
async fn kill_9_during_apply_twenty_times() {
    kill_and_resume(24).await;
}

/// A 1,000,000-row source transaction (not streamed: protocol 1, so it
/// arrives whole) is applied by a process whose peak resident memory stays
/// under 512 MiB.
#[tokio::test]
async fn a_million_row_transaction_applies_in_bounded_memory() {
    let pair = Pair::new("memory", "CREATE TABLE big (id int PRIMARY KEY, pad text)").await;
    pair.source_sql(
        "INSERT INTO big SELECT g, repeat('m', 100) FROM generate_series(1, 1000000) g",
    );
    let stop_at = pair.source_lsn();
    let rss_file = std::env::temp_dir().join(format!("pglive-rss-{}", std::process::id()));
    let status = spawn_child_with(&pair, stop_at, 1, Some(&rss_file))
        .wait()
        .unwrap();
    assert!(status.success());
    let peak_kb: u64 = std::fs::read_to_string(&rss_file)
        .expect("the child reports its peak memory")
        .trim()
        .parse()
        .unwrap();
    std::fs::remove_file(&rss_file).ok();
    eprintln!(
        "peak RSS applying 1,000,000 rows in one transaction: {} MiB",
        peak_kb / 1024
    );
    assert!(peak_kb < 512 * 1024, "peak RSS {peak_kb} kB");
    assert_eq!(
        pair.cluster
            .psql(&pair.target, "SELECT count(*) FROM big")
            .unwrap(),
        "1000000"
    );
}
