//! The fault matrix through the real binary: pglive killed, either server
//! restarted (fast or immediate), every connection cut or stalled (a TCP
//! proxy between pglive and each server), a target table locked — in the
//! copy, post-data, streaming and cutover, at random moments, with a live
//! workload. Each trial ends with the target equal to the source row by
//! row, nothing left on the source, and pglive having finished by itself
//! or with the same command run again.
//!
//! CI runs every fault twice, at two random stages (`PGLIVE_FAULT_SEED`
//! replays a run); the ignored `fault_matrix_long` runs every fault
//! `PGLIVE_FAULT_TRIALS` times (default 20), cycling through the stages.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pglive_testkit::{Cluster, ClusterOptions, TcpProxy};

use crate::migrate::{SCHEMA, assert_same_rows, load, workload_sql};
use crate::util::{self, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of the running `pglive migrate`.
    KillPglive,
    /// The source restarted with a fast or an immediate (crash) shutdown.
    RestartSource { immediate: bool },
    /// The target restarted likewise.
    RestartTarget { immediate: bool },
    /// Every connection of pglive to both servers cut.
    CutConnections,
    /// No byte flows between pglive and either server for a while.
    Stall,
    /// A target table locked (ACCESS EXCLUSIVE) for a while.
    LockTarget,
}

const FAULTS: [Fault; 8] = [
    Fault::KillPglive,
    Fault::RestartSource { immediate: false },
    Fault::RestartSource { immediate: true },
    Fault::RestartTarget { immediate: false },
    Fault::RestartTarget { immediate: true },
    Fault::CutConnections,
    Fault::Stall,
    Fault::LockTarget,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Copy,
    PostData,
    Streaming,
    Cutover,
}

const STAGES: [Stage; 4] = [
    Stage::Copy,
    Stage::PostData,
    Stage::Streaming,
    Stage::Cutover,
];

/// A small deterministic generator (xorshift), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Two servers and a proxy in front of each; pglive connects through the
/// proxies, the workload and the checks directly.
struct Servers {
    source: Cluster,
    target: Cluster,
    source_proxy: TcpProxy,
    target_proxy: TcpProxy,
    /// How long a stall or a lock lasts.
    hold: Duration,
    logs: PathBuf,
}

impl Servers {
    fn start(hold: Duration) -> Servers {
        let source = Cluster::start(ClusterOptions::new()).unwrap();
        let target = Cluster::start(ClusterOptions::new()).unwrap();
        let address = |c: &Cluster| format!("{}:{}", c.host(), c.port()).parse().unwrap();
        let source_proxy = TcpProxy::start(address(&source)).unwrap();
        let target_proxy = TcpProxy::start(address(&target)).unwrap();
        // Outside the clusters' directories, which go with them.
        let logs = std::env::temp_dir().join(format!("pglive-fault-logs-{}", std::process::id()));
        std::fs::create_dir_all(&logs).unwrap();
        Servers {
            source,
            target,
            source_proxy,
            target_proxy,
            hold,
            logs,
        }
    }
}

/// A `pglive` process whose output goes to a file.
struct Run {
    child: Child,
    log: PathBuf,
}

impl Run {
    fn spawn(servers: &Servers, label: &str, args: &[&str]) -> Run {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let log = servers.logs.join(format!(
            "{label}-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&log).unwrap();
        let child = util::pglive(args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Run { child, log }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `None` while it runs, else whether it succeeded.
    fn finished(&mut self) -> Option<bool> {
        self.child.try_wait().unwrap().map(|s| s.success())
    }
}

/// What a trial had to do to finish.
#[derive(Debug, Default)]
struct Recovery {
    migrate_reruns: u32,
    cutover_reruns: u32,
    reconnected: bool,
}

/// One trial: `fault` at a random moment of `stage`; panics with the
/// logs when the target does not end equal to the source.
fn trial(servers: &Servers, number: usize, fault: Fault, stage: Stage, rng: &mut Rng) -> Recovery {
    let (src, _) = util::databases(
        &servers.source,
        &format!("fault{number}"),
        &format!("{SCHEMA}{}", load(20_000)),
    );
    let dst = servers
        .target
        .create_database(&format!("fault{number}_dst"))
        .unwrap();
    let source = servers.source_proxy.conninfo(&servers.source, &src);
    let target = servers.target_proxy.conninfo(&servers.target, &dst);
    let direct_target = servers.target.conninfo(&dst);
    let migrate_args = [
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "t",
        "--jobs",
        "2",
        "--index-jobs",
        "1",
    ];
    let fence = rng.below(2) == 0;
    let mut cutover_args = vec![
        "cutover",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "t",
        "--timeout",
        "120",
    ];
    if fence {
        cutover_args.push("--fence");
    }
    let label = format!("{number}-{fault:?}-{stage:?}").replace([' ', '{', '}', ':'], "");
    let mut recovery = Recovery::default();
    let mut runs: Vec<Run> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let fail = |runs: &[Run], why: &str| -> ! {
        let logs: Vec<String> = runs
            .iter()
            .map(|r| format!("--- {}\n{}", r.log.display(), r.text()))
            .collect();
        panic!("trial {label}: {why}\n{}", logs.join("\n"));
    };

    let workload = Workload::start(servers.source.conninfo(&src), workload_sql);
    runs.push(Run::spawn(
        servers,
        &format!("{label}-migrate"),
        &migrate_args,
    ));
    let wanted = match stage {
        Stage::Copy => "copy",
        Stage::PostData => "post-data",
        Stage::Streaming | Stage::Cutover => "streaming",
    };
    // Wait for the stage (or a later one: the copy of a small table may
    // pass quickly).
    let order = [
        "schema",
        "copy",
        "post-data",
        "streaming",
        "cutover",
        "done",
    ];
    let position = |s: &str| order.iter().position(|o| *o == s).unwrap_or(0);
    loop {
        if let Some(current) = util::stage(&direct_target, "t") {
            if position(&current) >= position(wanted) {
                break;
            }
        }
        if runs[0].finished().is_some() {
            fail(&runs, "migrate ended before the fault");
        }
        if Instant::now() > deadline {
            fail(&runs, "the stage was never reached");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut writes_stopped = false;
    let mut workload = Some(workload);
    if stage == Stage::Cutover {
        std::thread::sleep(Duration::from_millis(500));
        workload.take().unwrap().stop();
        writes_stopped = true;
        runs.push(Run::spawn(
            servers,
            &format!("{label}-cutover"),
            &cutover_args,
        ));
        // Into the cutover (or past it: the fault then hits a finished one).
        while !matches!(
            util::stage(&direct_target, "t").as_deref(),
            Some("cutover" | "done")
        ) {
            if Instant::now() > deadline || runs[1].finished() == Some(false) {
                fail(&runs, "the cutover never started");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(rng.below(400)));
    inject(servers, fault, &dst, &mut runs[0]);

    // Recover: rerun whatever ended without finishing, until the migration
    // is done.
    let mut migrate = runs.len() - 1 - usize::from(stage == Stage::Cutover);
    let mut cutover: Option<usize> = (stage == Stage::Cutover).then_some(runs.len() - 1);
    let mut streaming_since: Option<Instant> = None;
    loop {
        if Instant::now() > deadline {
            fail(&runs, "no recovery within 5 minutes");
        }
        let stage_now = util::stage(&direct_target, "t");
        if stage_now.as_deref() == Some("done") && runs[migrate].finished().is_some() {
            break;
        }
        match runs[migrate].finished() {
            // Ended well: it cut over (the stage read above may predate it).
            None | Some(true) => {}
            Some(false) => {
                recovery.migrate_reruns += 1;
                if recovery.migrate_reruns > 10 {
                    fail(&runs, "migrate failed 10 times");
                }
                runs.push(Run::spawn(
                    servers,
                    &format!("{label}-migrate"),
                    &migrate_args,
                ));
                migrate = runs.len() - 1;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        if stage_now.as_deref() == Some("streaming") && cutover.is_none() {
            let since = *streaming_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                if let Some(workload) = workload.take() {
                    workload.stop();
                    writes_stopped = true;
                }
                runs.push(Run::spawn(
                    servers,
                    &format!("{label}-cutover"),
                    &cutover_args,
                ));
                cutover = Some(runs.len() - 1);
            }
        }
        if let Some(c) = cutover {
            if runs[c].finished() == Some(false) && stage_now.as_deref() != Some("done") {
                recovery.cutover_reruns += 1;
                if recovery.cutover_reruns > 10 {
                    fail(&runs, "cutover failed 10 times");
                }
                // Again once migrate streams (it may be resuming).
                cutover = None;
                streaming_since = None;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(writes_stopped);
    recovery.reconnected = runs.iter().any(|r| r.text().contains("reconnecting"));
    // Everything the source holds, the target holds: no row lost or doubled.
    let equal = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_same_rows(&servers.source, &src, &servers.target, &dst);
    }));
    if equal.is_err() {
        fail(&runs, "the target differs from the source");
    }
    let leftovers = servers
        .source
        .psql(
            &src,
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
                  + (SELECT count(*) FROM pg_publication)",
        )
        .unwrap();
    if leftovers != "0" {
        fail(&runs, "a slot or publication was left on the source");
    }
    // A finished fenced cutover keeps the source read-only; an unfenced
    // one, or a fence of a cutover that failed, never does.
    let read_only = servers
        .source
        .psql(
            &src,
            "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c
              WHERE s.setrole = 0 AND c LIKE 'default_transaction_read_only=%'
                AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .unwrap()
        != "0";
    if read_only != fence {
        fail(&runs, "the fence is not as the cutover left it");
    }
    if fence {
        // The finished cutover keeps the source read-only; lift it.
        util::run_ok(&[
            "cutover", "--source", &source, "--target", &target, "--name", "t", "--abort",
        ]);
    }
    recovery
}

/// Injects `fault`; returns once it is over (stalls and locks end by
/// themselves, later, on a thread of their own).
fn inject(servers: &Servers, fault: Fault, dst: &str, migrate: &mut Run) {
    match fault {
        Fault::KillPglive => {
            migrate.child.kill().unwrap();
            migrate.child.wait().unwrap();
        }
        Fault::RestartSource { immediate } => restart(&servers.source, immediate),
        Fault::RestartTarget { immediate } => restart(&servers.target, immediate),
        Fault::CutConnections => {
            servers.source_proxy.cut();
            servers.target_proxy.cut();
        }
        Fault::Stall => {
            servers.source_proxy.stall(true);
            servers.target_proxy.stall(true);
            std::thread::sleep(servers.hold);
            servers.source_proxy.stall(false);
            servers.target_proxy.stall(false);
        }
        Fault::LockTarget => {
            let conninfo = servers.target.conninfo(dst);
            let seconds = servers.hold.as_secs_f64();
            std::thread::spawn(move || {
                util::block_on(async move {
                    let config = pglive_postgres::ConnectConfig::parse(&conninfo).unwrap();
                    let Ok(client) = pglive_postgres::connect_sql(&config).await else {
                        return;
                    };
                    let _ = client
                        .batch_execute(&format!(
                            "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({seconds}); COMMIT"
                        ))
                        .await;
                });
            });
            // The lock is taken before pglive goes on.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn restart(cluster: &Cluster, immediate: bool) {
    if immediate {
        cluster.kill().unwrap();
    }
    cluster.restart().unwrap();
}

/// Runs `trials` and prints a table of what each needed.
fn run_trials(servers: &Servers, trials: &[(Fault, Stage)], rng: &mut Rng) {
    let mut table = Vec::new();
    for (number, (fault, stage)) in trials.iter().enumerate() {
        let started = Instant::now();
        let recovery = trial(servers, number, *fault, *stage, rng);
        table.push(format!(
            "{fault:?} in {stage:?}: {:.1}s, migrate reruns {}, cutover reruns {}, reconnected {}",
            started.elapsed().as_secs_f64(),
            recovery.migrate_reruns,
            recovery.cutover_reruns,
            recovery.reconnected
        ));
    }
    eprintln!("fault trials ({}):\n{}", table.len(), table.join("\n"));
}

fn seed() -> u64 {
    let seed = std::env::var("PGLIVE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("fault trials: PGLIVE_FAULT_SEED={seed}");
    seed
}

#[test]
fn every_fault_twice_at_random_stages() {
    let mut rng = Rng(seed());
    let servers = Servers::start(Duration::from_secs(5));
    let mut trials = Vec::new();
    for fault in FAULTS {
        let first = rng.below(STAGES.len() as u64) as usize;
        let second = (first + 1 + rng.below(STAGES.len() as u64 - 1) as usize) % STAGES.len();
        trials.push((fault, STAGES[first]));
        trials.push((fault, STAGES[second]));
    }
    run_trials(&servers, &trials, &mut rng);
}

#[test]
#[ignore = "long: PGLIVE_FAULT_TRIALS (default 20) trials of every fault, spread over the stages"]
fn fault_matrix_long() {
    let mut rng = Rng(seed());
    let per_fault: usize = std::env::var("PGLIVE_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // A stall or a lock of a minute, as a stuck network or a long
    // migration on the target would hold it.
    let servers = Servers::start(Duration::from_secs(60));
    let mut trials = Vec::new();
    for n in 0..per_fault {
        for fault in FAULTS {
            trials.push((fault, STAGES[n % STAGES.len()]));
        }
    }
    run_trials(&servers, &trials, &mut rng);
}
