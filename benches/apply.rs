//! Apply throughput: pglive against PostgreSQL's own logical replication
//! (`CREATE SUBSCRIPTION`), `pgcopydb follow` and a consumer that only reads
//! and decodes the stream, all on this machine in the same run.
//!
//! Two throwaway clusters (a source and a target) are started. For each
//! backlog scenario every consumer gets its own target database with the
//! same starting state as the source, and its own logical slot, created
//! before the backlog is written. The backlog is then generated on the
//! source, its end LSN recorded, and each consumer is timed on its own, one
//! after the other, from its start until everything up to that LSN is
//! applied:
//!
//! - **read-and-discard**: `pglive-repl` alone, each message decoded and
//!   dropped, until a message or keepalive at or past the LSN;
//! - **pglive**: `Applier` + `pglive_apply::run` with `stop_at`;
//! - **native**: `ALTER SUBSCRIPTION … ENABLE`, then the subscription's slot
//!   polled every 50 ms until its `confirmed_flush_lsn` reaches the LSN;
//! - **pgcopydb**: `pgcopydb follow --endpos` (wal2json), stopped after a
//!   time limit if it has not finished.
//!
//! The scenarios (`PGLIVE_BENCH_SCALE`, default 1.0, scales every size):
//! 1,000,000 single-row inserts, 300,000 single-row updates by key and
//! 300,000 single-row deletes by key (the latter two on a 1,000,000-row
//! table, distinct keys in scattered order), all in transactions of 100
//! statements; and 60 s of pgbench's TPC-B-like script at 2 clients
//! (`pgbench -i -s 10` on every side first; 4 changes per transaction).
//!
//! pglive's and native's targets are compared with the source afterwards
//! (row counts and an order-independent hash of every row, plus an md5 of
//! the sorted rows for tables up to 200,000 rows); a difference is printed
//! loudly. The results go to standard output and, as markdown, to
//! `target/bench-apply.md`.
//!
//! Run with `cargo bench --bench apply`. Environment:
//! `PGLIVE_BENCH_SCALE` (e.g. `0.1` for a quick run),
//! `PGLIVE_BENCH_SCENARIOS` (comma-separated subset of
//! `inserts,updates,deletes,pgbench`), `PGLIVE_BENCH_REPEAT` (runs of
//! pglive and of native per scenario, alternating, each with its own slot
//! and target database; default 2, the fastest counts; read-and-discard
//! always runs twice), `PGLIVE_BENCH_PROTO` (pgoutput protocol of pglive
//! and read-and-discard: 2, the default, with streaming on; or 1),
//! `PGLIVE_BENCH_SESSIONS` (pglive's target sessions, default
//! `ApplyOptions`' 4), `PGLIVE_BENCH_PGCOPYDB_TIMEOUT`
//! (seconds; default 300 × scale, at least 30; `0` skips pgcopydb),
//! `PGCOPYDB` (the program, default `pgcopydb` on the `PATH`).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use pglive_apply::{Applier, ApplyOptions, RunOptions, Stopped};
use pglive_migrate::human::count;
use pglive_postgres::{Lsn, connect_sql};
use pglive_repl::pgoutput::Decoder;
use pglive_repl::{PgOutputOptions, ReplicationClient, ReplicationEvent, StreamOptions, Streaming};
use pglive_testkit::{Cluster, ClusterOptions, config};
use tokio_postgres::Client;

/// The publication pglive, read-and-discard and native read.
const PUBLICATION: &str = "bench";
/// The pgoutput protocol version pglive and read-and-discard use, unless
/// `PGLIVE_BENCH_PROTO` says otherwise (1: no streaming of large
/// transactions; 2: streaming on).
fn proto() -> u32 {
    std::env::var("PGLIVE_BENCH_PROTO")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| (1..=2).contains(v))
        .unwrap_or(2)
}
/// pglive's apply options: the defaults, with `PGLIVE_BENCH_SESSIONS`
/// target sessions when set.
fn apply_options(slot: &str) -> ApplyOptions {
    let mut options = ApplyOptions::new(slot, proto());
    if let Some(sessions) = std::env::var("PGLIVE_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &usize| v >= 1)
    {
        options.sessions = sessions;
    }
    options
}
/// Statements per source transaction in the insert, update and delete
/// scenarios.
const TXN_STATEMENTS: u64 = 100;
/// How often native's progress is polled.
const NATIVE_POLL: Duration = Duration::from_millis(50);
/// Give up on pglive, native or read-and-discard after this long.
const CONSUMER_LIMIT: Duration = Duration::from_secs(3600);
/// Tables up to this many rows also get an md5 of their sorted rows.
const MD5_MAX_ROWS: i64 = 200_000;

fn main() -> Result<()> {
    // `cargo test --all-targets` runs bench targets without `--bench`: this
    // one takes minutes and starts servers, so it only runs under
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("apply: skipped (run it with `cargo bench --bench apply`)");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(Box::pin(bench()))
}

// ---------------------------------------------------------------------------
// Configuration and scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Inserts,
    Updates,
    Deletes,
    Pgbench,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Inserts, Kind::Updates, Kind::Deletes, Kind::Pgbench];

    fn name(self) -> &'static str {
        match self {
            Kind::Inserts => "inserts",
            Kind::Updates => "updates",
            Kind::Deletes => "deletes",
            Kind::Pgbench => "pgbench",
        }
    }

    fn tables(self) -> &'static [&'static str] {
        match self {
            Kind::Inserts => &["bench_insert"],
            Kind::Updates => &["bench_update"],
            Kind::Deletes => &["bench_delete"],
            Kind::Pgbench => &[
                "pgbench_accounts",
                "pgbench_branches",
                "pgbench_tellers",
                "pgbench_history",
            ],
        }
    }
}

/// Every size of the run, from `PGLIVE_BENCH_SCALE`.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    scale: f64,
    inserts: u64,
    updates: u64,
    deletes: u64,
    /// Rows of the updated and deleted tables.
    table_rows: u64,
    pgbench_scale: u64,
    pgbench_seconds: u64,
}

impl Sizes {
    fn new(scale: f64) -> Sizes {
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        let updates = n(300_000.0).max(TXN_STATEMENTS);
        let deletes = n(300_000.0).max(TXN_STATEMENTS);
        Sizes {
            scale,
            inserts: n(1_000_000.0).max(TXN_STATEMENTS),
            updates,
            deletes,
            table_rows: n(1_000_000.0).max(updates).max(deletes),
            pgbench_scale: n(10.0),
            pgbench_seconds: n(60.0).max(3),
        }
    }

    fn describe(&self, kind: Kind) -> String {
        match kind {
            Kind::Inserts => format!(
                "{} single-row INSERTs, {TXN_STATEMENTS} per transaction",
                count(self.inserts)
            ),
            Kind::Updates => format!(
                "{} single-row UPDATEs by primary key (distinct keys of a {}-row table), {TXN_STATEMENTS} per transaction",
                count(self.updates),
                count(self.table_rows)
            ),
            Kind::Deletes => format!(
                "{} single-row DELETEs by primary key (distinct keys of a {}-row table), {TXN_STATEMENTS} per transaction",
                count(self.deletes),
                count(self.table_rows)
            ),
            Kind::Pgbench => format!(
                "pgbench TPC-B-like, -c 2 -j 2 -T {} on scale {} (3 UPDATEs + 1 INSERT per transaction)",
                self.pgbench_seconds, self.pgbench_scale
            ),
        }
    }

    /// A multiplier coprime with the table size, so that
    /// `(i * step) % rows + 1` visits distinct keys in scattered order.
    fn step(&self) -> u64 {
        [7919u64, 7907, 7901, 7883]
            .into_iter()
            .find(|p| self.table_rows % p != 0)
            .unwrap_or(1)
    }
}

struct Env {
    sizes: Sizes,
    source: Cluster,
    target: Cluster,
    /// `pgcopydb` and its time limit, unless skipped.
    pgcopydb: Option<(PathBuf, Duration)>,
    prewarm: bool,
    /// Runs of pglive and of native per scenario (the fastest counts).
    repeat: usize,
    work_dir: PathBuf,
    /// Where the report and pgcopydb's logs go (`target/`).
    results_dir: PathBuf,
    clock_ticks: f64,
}

// ---------------------------------------------------------------------------
// Results

/// CPU seconds used by each party during one consumer's run.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    source: f64,
    target: f64,
    client: f64,
    /// Everything else on the machine (other users of the 2 cores).
    other: f64,
    /// TCP segments sent on the machine.
    segments: u64,
}

#[derive(Clone, Debug, Default)]
struct Outcome {
    /// Wall-clock seconds from the consumer's start to its end.
    seconds: f64,
    /// Changes applied (all of them unless `complete` is false).
    applied: u64,
    complete: bool,
    cpu: Cpu,
    /// `Some(false)`: the target differs from the source.
    verified: Option<bool>,
    /// Native: when the last transaction was committed on the target (its
    /// replication origin reached its final position), before the source
    /// heard of it.
    committed: Option<f64>,
    /// An incomplete run: when the applied count last grew.
    last_progress: Option<f64>,
    /// An incomplete run: how it ended.
    ending: Option<String>,
    notes: Vec<String>,
}

impl Outcome {
    /// Changes per second; for an incomplete run, up to its last progress.
    fn rate(&self) -> f64 {
        let seconds = match (self.complete, self.last_progress) {
            (false, Some(at)) if at > 0.0 => at,
            _ => self.seconds,
        };
        if seconds > 0.0 {
            self.applied as f64 / seconds
        } else {
            0.0
        }
    }

    fn cell(&self) -> String {
        if self.complete {
            return format!(
                "{:.2} s · {}/s{}",
                self.seconds,
                count(self.rate() as u64),
                if self.verified == Some(false) {
                    " · **WRONG DATA**"
                } else {
                    ""
                }
            );
        }
        let at = self.last_progress.unwrap_or(0.0);
        if let Some(ending) = &self.ending {
            format!(
                "{} changes applied by {at:.0} s ({}/s), then {ending}",
                count(self.applied),
                count(self.rate() as u64),
            )
        } else if self.seconds - at > 30.0 || self.applied == 0 {
            format!(
                "stalled after {} changes at {at:.0} s ({}/s until then); stopped at {:.0} s",
                count(self.applied),
                count(self.rate() as u64),
                self.seconds
            )
        } else {
            format!(
                "unfinished: {} changes in {:.0} s ({}/s)",
                count(self.applied),
                self.seconds,
                count(self.rate() as u64)
            )
        }
    }
}

#[derive(Debug, Default)]
struct ScenarioResult {
    kind: Option<Kind>,
    description: String,
    changes: u64,
    wal_bytes: u64,
    generate_seconds: f64,
    /// Two runs: first, and after pglive and native.
    discard: Vec<Outcome>,
    pglive: Vec<Outcome>,
    native: Vec<Outcome>,
    pgcopydb: Option<Outcome>,
    errors: Vec<String>,
}

impl ScenarioResult {
    fn fastest_discard(&self) -> Option<&Outcome> {
        fastest(&self.discard)
    }
}

/// The fastest complete run, else the first.
fn fastest(runs: &[Outcome]) -> Option<&Outcome> {
    runs.iter()
        .filter(|o| o.complete)
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .or(runs.first())
}

// ---------------------------------------------------------------------------
// The run

async fn bench() -> Result<()> {
    let scale: f64 = match std::env::var("PGLIVE_BENCH_SCALE") {
        Ok(v) => v.parse().context("PGLIVE_BENCH_SCALE must be a number")?,
        Err(_) => 1.0,
    };
    if scale <= 0.0 || !scale.is_finite() {
        bail!("PGLIVE_BENCH_SCALE must be positive");
    }
    let sizes = Sizes::new(scale);
    let kinds: Vec<Kind> = match std::env::var("PGLIVE_BENCH_SCENARIOS") {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                Kind::ALL
                    .into_iter()
                    .find(|k| k.name() == s)
                    .with_context(|| format!("unknown scenario {s:?}"))
            })
            .collect::<Result<_>>()?,
        Err(_) => Kind::ALL.to_vec(),
    };
    let timeout = match std::env::var("PGLIVE_BENCH_PGCOPYDB_TIMEOUT") {
        Ok(v) => v
            .parse::<f64>()
            .context("PGLIVE_BENCH_PGCOPYDB_TIMEOUT must be seconds")?,
        Err(_) => (300.0 * scale).max(30.0),
    };
    let repeat: usize = match std::env::var("PGLIVE_BENCH_REPEAT") {
        Ok(v) => v.parse().context("PGLIVE_BENCH_REPEAT must be a count")?,
        Err(_) => 2,
    };
    let repeat = repeat.max(1);
    let pgcopydb = if timeout > 0.0 {
        let program =
            PathBuf::from(std::env::var("PGCOPYDB").unwrap_or_else(|_| "pgcopydb".into()));
        match Command::new(&program).arg("--version").output() {
            Ok(out) if out.status.success() => Some((program, Duration::from_secs_f64(timeout))),
            _ => {
                eprintln!("apply: {} not found, pgcopydb skipped", program.display());
                None
            }
        }
    } else {
        None
    };

    eprintln!("apply: starting source and target clusters (scale {scale})");
    let options = || {
        ClusterOptions::bulk()
            // Nothing in the background while consumers are timed: every
            // target starts VACUUMed, and no consumer pays for another's
            // dead rows.
            .setting("autovacuum", "off")
            // The subscription launcher starts at most one apply worker per
            // wal_retrieve_retry_interval (5 s by default): native's second
            // run would wait for it.
            .setting("wal_retrieve_retry_interval", "100ms")
    };
    let source = Cluster::start(options())?;
    let target = Cluster::start(options())?;
    // wal2json (pgcopydb 0.10) loads on 15.19+ only when listed.
    let known = source.psql(
        "postgres",
        "SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'",
    )?;
    if known == "1" {
        source.alter_system(&[("output_plugin_libraries", "wal2json")])?;
        source.restart()?;
    }
    let prewarm = Path::new(&format!(
        "{}/pg_prewarm.control",
        source
            .psql(
                "postgres",
                "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'"
            )
            .map(|dir| format!("{dir}/extension"))
            .unwrap_or_default()
    ))
    .exists();
    let work_dir = std::env::temp_dir().join(format!("pglive-bench-apply-{}", std::process::id()));
    fs::create_dir_all(&work_dir)?;
    let clock_ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    let results_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    fs::create_dir_all(&results_dir)?;
    let env = Env {
        sizes,
        source,
        target,
        pgcopydb,
        prewarm,
        repeat,
        work_dir,
        results_dir,
        clock_ticks,
    };
    let server_version = env.source.psql("postgres", "SHOW server_version")?;

    let mut results = Vec::new();
    for kind in kinds {
        eprintln!("[{}] {}", kind.name(), sizes.describe(kind));
        let mut result = ScenarioResult {
            kind: Some(kind),
            description: sizes.describe(kind),
            ..ScenarioResult::default()
        };
        if let Err(error) = Box::pin(scenario(&env, kind, &mut result)).await {
            eprintln!("[{}] FAILED: {error:#}", kind.name());
            result.errors.push(format!("{error:#}"));
        }
        results.push(result);
    }
    let _ = fs::remove_dir_all(&env.work_dir);

    let report = report(&env, &server_version, &results);
    println!("\n{report}");
    let path = env.results_dir.join("bench-apply.md");
    fs::write(&path, &report)?;
    eprintln!("apply: results written to {}", path.display());
    Ok(())
}

/// Names of one scenario's databases, slots and subscriptions.
struct Names {
    source_db: String,
    /// pglive's runs: a target database and a slot each.
    pglive: Vec<Target>,
    /// Native's runs: a target database and a slot each; the subscription
    /// is named like the slot.
    native: Vec<Target>,
    pgcopydb_db: String,
    discard_slot: String,
    discard_again_slot: String,
    pgcopydb_slot: String,
    pgcopydb_origin: String,
    pgcopydb_dir: PathBuf,
}

/// One run's target database and slot.
struct Target {
    db: String,
    slot: String,
}

async fn scenario(env: &Env, kind: Kind, result: &mut ScenarioResult) -> Result<()> {
    let name = kind.name();
    let (source, target) = (&env.source, &env.target);
    let runs = |who: &str| -> Result<Vec<Target>> {
        (1..=env.repeat)
            .map(|n| {
                Ok(Target {
                    db: target.create_database(&format!("{who}{n}_{name}"))?,
                    slot: format!("{who}{n}_{name}"),
                })
            })
            .collect()
    };
    let names = Names {
        source_db: source.create_database(&format!("src_{name}"))?,
        pglive: runs("pglive")?,
        native: runs("native")?,
        pgcopydb_db: target.create_database(&format!("pgcopydb_{name}"))?,
        discard_slot: format!("discard_{name}"),
        discard_again_slot: format!("discard2_{name}"),
        pgcopydb_slot: format!("pgcopydb_{name}"),
        pgcopydb_origin: format!("pgcopydb_{name}"),
        pgcopydb_dir: env.work_dir.join(name),
    };
    let outcome = Box::pin(scenario_in(env, kind, &names, result)).await;
    teardown(env, &names);
    outcome
}

async fn scenario_in(
    env: &Env,
    kind: Kind,
    names: &Names,
    result: &mut ScenarioResult,
) -> Result<()> {
    let name = kind.name();
    let (source, target) = (&env.source, &env.target);

    // The same starting state everywhere.
    let started = Instant::now();
    prepare(env, source, &names.source_db, kind)?;
    let target_dbs: Vec<&String> = names
        .pglive
        .iter()
        .chain(&names.native)
        .map(|t| &t.db)
        .chain([&names.pgcopydb_db])
        .collect();
    for db in &target_dbs {
        prepare(env, target, db, kind)?;
    }
    eprintln!(
        "[{name}] starting state ready on {} databases in {:.1} s",
        target_dbs.len() + 1,
        started.elapsed().as_secs_f64()
    );

    // Publication, slots and subscription before the backlog.
    source.psql(
        &names.source_db,
        &format!(
            "CREATE PUBLICATION {PUBLICATION} FOR TABLE {}",
            kind.tables().join(", ")
        ),
    )?;
    let create_slot = |slot: &str| -> Result<Lsn> {
        let lsn = source.psql(
            &names.source_db,
            &format!("SELECT lsn FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        )?;
        lsn.parse()
            .map_err(|e| anyhow::anyhow!("slot {slot} at {lsn:?}: {e:?}"))
    };
    let discard_start = create_slot(&names.discard_slot)?;
    let discard_again_start = create_slot(&names.discard_again_slot)?;
    let mut pglive_starts = Vec::new();
    for run in &names.pglive {
        pglive_starts.push(create_slot(&run.slot)?);
    }
    for run in &names.native {
        create_slot(&run.slot)?;
        target.psql(
            &run.db,
            &format!(
                "CREATE SUBSCRIPTION {} CONNECTION '{}' PUBLICATION {PUBLICATION}
                   WITH (create_slot = false, slot_name = '{}', copy_data = false, enabled = false)",
                run.slot,
                source.conninfo(&names.source_db),
                run.slot
            ),
        )?;
    }
    if let Some((program, _)) = &env.pgcopydb {
        fs::create_dir_all(&names.pgcopydb_dir)?;
        pgcopydb_command(
            program,
            &[
                "stream",
                "setup",
                "--source",
                &pg_uri(source, &names.source_db),
                "--target",
                &pg_uri(target, &names.pgcopydb_db),
                "--dir",
                &path_str(&names.pgcopydb_dir),
                "--slot-name",
                &names.pgcopydb_slot,
                "--origin",
                &names.pgcopydb_origin,
            ],
            &names.pgcopydb_dir.join("setup.log"),
        )?;
    }

    // The backlog.
    let started = Instant::now();
    result.changes = generate(env, kind, &names.source_db)?;
    result.generate_seconds = started.elapsed().as_secs_f64();
    // The insert position: the end of the last record written. (The write
    // position, `pg_current_wal_lsn()`, can stop at a page boundary before
    // the last commits.)
    let stop: Lsn =
        parse_lsn(&source.psql(&names.source_db, "SELECT pg_current_wal_insert_lsn()")?)?;
    result.wal_bytes = stop.bytes_since(discard_start);
    // Logical decoding reads only flushed WAL: wait for it, so no consumer
    // pays for the WAL writer.
    loop {
        let flushed = parse_lsn(&source.psql("postgres", "SELECT pg_current_wal_flush_lsn()")?)?;
        if flushed >= stop {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "[{name}] backlog: {} changes, {:.1} MB of WAL, generated in {:.1} s; end LSN {stop}",
        count(result.changes),
        result.wal_bytes as f64 / 1e6,
        result.generate_seconds
    );

    // The consumers, one at a time.
    quiesce(env, None)?;
    let outcome = read_and_discard(
        env,
        &names.source_db,
        &names.discard_slot,
        discard_start,
        stop,
        result.changes,
    )
    .await
    .context("read-and-discard")?;
    report_line(name, "read-and-discard", result.changes, &outcome);
    result.discard.push(outcome);

    // pglive and native alternate, so that a busy spell of the machine
    // does not hit only one of them.
    for (n, (pglive_run, native_run)) in names.pglive.iter().zip(&names.native).enumerate() {
        let label = |who: &str| {
            if env.repeat > 1 {
                format!("{who} (run {})", n + 1)
            } else {
                who.to_owned()
            }
        };
        quiesce(env, Some(&pglive_run.db))?;
        let mut outcome = Box::pin(pglive(
            env,
            &names.source_db,
            pglive_run,
            pglive_starts[n],
            stop,
        ))
        .await
        .context("pglive")?;
        outcome.applied = result.changes;
        outcome.verified =
            Some(verify(env, kind, &names.source_db, &pglive_run.db, "pglive").await?);
        report_line(name, &label("pglive"), result.changes, &outcome);
        result.pglive.push(outcome);

        quiesce(env, Some(&native_run.db))?;
        let mut outcome = Box::pin(native(env, &names.source_db, native_run, stop))
            .await
            .context("native")?;
        outcome.applied = result.changes;
        outcome.verified =
            Some(verify(env, kind, &names.source_db, &native_run.db, "native").await?);
        report_line(name, &label("native"), result.changes, &outcome);
        result.native.push(outcome);
    }

    // Read-and-discard again, after the others, to see how much the first
    // run's figure varies.
    quiesce(env, None)?;
    let outcome = read_and_discard(
        env,
        &names.source_db,
        &names.discard_again_slot,
        discard_again_start,
        stop,
        result.changes,
    )
    .await
    .context("read-and-discard (second run)")?;
    report_line(name, "read-and-discard (2nd)", result.changes, &outcome);
    result.discard.push(outcome);

    if env.pgcopydb.is_some() {
        quiesce(env, Some(&names.pgcopydb_db))?;
        let mut outcome = Box::pin(pgcopydb(env, kind, names, stop, result.changes))
            .await
            .context("pgcopydb")?;
        if outcome.complete {
            outcome.verified =
                Some(verify(env, kind, &names.source_db, &names.pgcopydb_db, "pgcopydb").await?);
        }
        report_line(name, "pgcopydb", result.changes, &outcome);
        result.pgcopydb = Some(outcome);
    }
    Ok(())
}

/// Creates the scenario's tables and starting rows in `db`, VACUUMed.
fn prepare(env: &Env, cluster: &Cluster, db: &str, kind: Kind) -> Result<()> {
    let sizes = env.sizes;
    let columns = "(id bigint PRIMARY KEY, account int NOT NULL, amount numeric(12,2) NOT NULL,
                    status text NOT NULL, note text, version int NOT NULL DEFAULT 0,
                    created timestamptz NOT NULL)";
    let fill = |table: &str| {
        format!(
            "INSERT INTO {table} SELECT g, g % 10000, (g % 100000) / 100.0, 'new', md5(g::text), 0,
                    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
               FROM generate_series(1, {}) g;",
            sizes.table_rows
        )
    };
    match kind {
        Kind::Inserts => cluster.psql(db, &format!("CREATE TABLE bench_insert {columns};"))?,
        Kind::Updates => cluster.psql(
            db,
            &format!(
                "CREATE TABLE bench_update {columns}; {}",
                fill("bench_update")
            ),
        )?,
        Kind::Deletes => cluster.psql(
            db,
            &format!(
                "CREATE TABLE bench_delete {columns}; {}",
                fill("bench_delete")
            ),
        )?,
        Kind::Pgbench => {
            let out = Command::new(cluster.bin_dir().join("pgbench"))
                .args(["-i", "-q", "-s", &sizes.pgbench_scale.to_string()])
                .args(pgbench_connection(cluster, db))
                .output()
                .context("running pgbench -i")?;
            if !out.status.success() {
                bail!(
                    "pgbench -i failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            String::new()
        }
    };
    cluster.psql(db, "VACUUM (FREEZE, ANALYZE)")?;
    if env.prewarm {
        cluster.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_prewarm")?;
    }
    Ok(())
}

/// Writes the backlog on the source; returns the number of row changes.
fn generate(env: &Env, kind: Kind, db: &str) -> Result<u64> {
    let sizes = env.sizes;
    let source = &env.source;
    let do_loop = |count: u64, statement: String| {
        format!(
            "DO $$ BEGIN
               FOR i IN 0..{} LOOP
                 {statement};
                 IF i % {TXN_STATEMENTS} = {} THEN COMMIT; END IF;
               END LOOP;
             END $$;",
            count - 1,
            TXN_STATEMENTS - 1
        )
    };
    let key = format!("(i::bigint * {}) % {} + 1", sizes.step(), sizes.table_rows);
    match kind {
        Kind::Inserts => {
            source.psql(
                db,
                &do_loop(
                    sizes.inserts,
                    "INSERT INTO bench_insert VALUES (i + 1, i % 10000, (i % 100000) / 100.0, 'new',
                        md5(i::text), 0, clock_timestamp())"
                        .into(),
                ),
            )?;
            Ok(sizes.inserts)
        }
        Kind::Updates => {
            source.psql(
                db,
                &do_loop(
                    sizes.updates,
                    format!(
                        "UPDATE bench_update SET amount = amount + 1, status = 'paid',
                            version = version + 1 WHERE id = {key}"
                    ),
                ),
            )?;
            Ok(sizes.updates)
        }
        Kind::Deletes => {
            source.psql(
                db,
                &do_loop(
                    sizes.deletes,
                    format!("DELETE FROM bench_delete WHERE id = {key}"),
                ),
            )?;
            Ok(sizes.deletes)
        }
        Kind::Pgbench => {
            let out = Command::new(source.bin_dir().join("pgbench"))
                .args(["-n", "-c", "2", "-j", "2", "-T"])
                .arg(sizes.pgbench_seconds.to_string())
                .args(pgbench_connection(source, db))
                .output()
                .context("running pgbench")?;
            if !out.status.success() {
                bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            if let Some(tps) = stdout.lines().find(|l| l.starts_with("tps")) {
                eprintln!("[pgbench] {tps}");
            }
            let transactions: u64 = source
                .psql(db, "SELECT count(*) FROM pgbench_history")?
                .parse()?;
            Ok(4 * transactions)
        }
    }
}

/// Checkpoints both clusters (so no consumer pays for another's dirty
/// buffers) and loads the consumer's target tables into shared buffers.
fn quiesce(env: &Env, target_db: Option<&str>) -> Result<()> {
    env.source.psql("postgres", "CHECKPOINT")?;
    env.target.psql("postgres", "CHECKPOINT")?;
    if let (Some(db), true) = (target_db, env.prewarm) {
        env.target.psql(
            db,
            "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')",
        )?;
    }
    Ok(())
}

fn teardown(env: &Env, names: &Names) {
    let (source, target) = (&env.source, &env.target);
    for run in &names.native {
        let sub = &run.slot;
        let _ = target.psql(
            &run.db,
            &format!(
                "ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE);
                 DROP SUBSCRIPTION {sub};"
            ),
        );
    }
    let db = &names.source_db;
    let _ = source.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
              WHERE database = '{db}' AND active_pid IS NOT NULL"
        ),
    );
    for _ in 0..100 {
        let dropped = source.psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE database = '{db}'"
            ),
        );
        if dropped.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = target.psql(
        "postgres",
        &format!(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
              WHERE roname = '{}'",
            names.pgcopydb_origin
        ),
    );
    let _ = source.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    for db in names
        .pglive
        .iter()
        .chain(&names.native)
        .map(|t| &t.db)
        .chain([&names.pgcopydb_db])
    {
        let _ = target.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    }
    let _ = fs::remove_dir_all(&names.pgcopydb_dir);
}

// ---------------------------------------------------------------------------
// Consumers

fn pgoutput_options() -> PgOutputOptions {
    let mut options = PgOutputOptions::new([PUBLICATION]);
    options.proto_version = proto();
    if options.proto_version >= 2 {
        options.streaming = Streaming::On;
    }
    options
}

/// pglive-repl alone: every message decoded and dropped.
async fn read_and_discard(
    env: &Env,
    db: &str,
    slot: &str,
    start: Lsn,
    stop: Lsn,
    changes: u64,
) -> Result<Outcome> {
    let sampler = Sampler::start(env, slot, None).await?;
    let cpu = CpuMeter::start(env);
    let started = Instant::now();
    let client = ReplicationClient::connect(&config(&env.source.conninfo(db))).await?;
    let mut stream = client
        .start_replication(slot, start, &pgoutput_options(), StreamOptions::default())
        .await?;
    let feedback = stream.feedback();
    let mut decoder = Decoder::new(proto());
    let (mut messages, mut bytes) = (0u64, 0u64);
    loop {
        let event = match tokio::time::timeout(Duration::from_millis(10), stream.next()).await {
            Err(_) => {
                feedback.request_reply();
                continue;
            }
            Ok(None) => bail!("the stream ended before {stop}"),
            Ok(Some(event)) => event?,
        };
        if started.elapsed() > CONSUMER_LIMIT {
            bail!("not done after {CONSUMER_LIMIT:?}");
        }
        match event {
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                messages += 1;
                bytes += data.len() as u64;
                drop(decoder.decode(data)?);
                if wal_start >= stop {
                    break;
                }
            }
            ReplicationEvent::Keepalive { wal_end, .. } => {
                feedback.set_flushed(wal_end.min(stop));
                if wal_end >= stop {
                    break;
                }
            }
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.stop(env);
    let mut notes = sampler.finish().await?;
    notes.push(segments_note(&cpu, Some(bytes)));
    stream.stop().await?.close().await?;
    Ok(Outcome {
        seconds,
        applied: changes,
        complete: true,
        cpu,
        notes: {
            notes.insert(
                0,
                format!(
                    "{} messages, {:.1} MB of pgoutput",
                    count(messages),
                    bytes as f64 / 1e6
                ),
            );
            notes
        },
        ..Outcome::default()
    })
}

async fn pglive(
    env: &Env,
    source_db: &str,
    run: &Target,
    start: Lsn,
    stop: Lsn,
) -> Result<Outcome> {
    let sampler = Sampler::start(env, &run.slot, Some((&run.db, "client backend"))).await?;
    let cpu = CpuMeter::start(env);
    let started = Instant::now();
    let options = apply_options(&run.slot);
    let mut applier = Applier::connect(&config(&env.target.conninfo(&run.db)), options).await?;
    let client = ReplicationClient::connect(&config(&env.source.conninfo(source_db))).await?;
    let mut stream = client
        .start_replication(
            &run.slot,
            applier.applied_lsn().max(start),
            &pgoutput_options(),
            StreamOptions::default(),
        )
        .await?;
    let connected = started.elapsed().as_secs_f64();
    let mut run_options = RunOptions::default();
    run_options.stop_at = Some(stop);
    // When the reader task last received data, and when the applier last
    // finished a source transaction.
    let (mut received, mut received_at) = (Lsn::ZERO, 0.0);
    let (mut transactions, mut last_txn_at) = (0u64, 0.0);
    let stopped = tokio::time::timeout(
        CONSUMER_LIMIT,
        pglive_apply::run(
            &mut applier,
            &mut stream,
            std::future::pending(),
            &run_options,
            |progress| {
                if progress.received_lsn > received {
                    received = progress.received_lsn;
                    received_at = started.elapsed().as_secs_f64();
                }
                if progress.stats.transactions > transactions {
                    transactions = progress.stats.transactions;
                    last_txn_at = started.elapsed().as_secs_f64();
                }
            },
        ),
    )
    .await
    .context("pglive did not finish in time")??;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.stop(env);
    let mut sampled = sampler.finish().await?;
    sampled.push(segments_note(&cpu, None));
    if !matches!(stopped, Stopped::ReachedLsn(_)) {
        bail!("pglive stopped early: {stopped:?}");
    }
    stream.stop().await?.close().await?;
    let stats = applier.stats();
    let changes = stats.inserted + stats.updated + stats.deleted;
    Ok(Outcome {
        seconds,
        complete: true,
        cpu,
        notes: [
            format!(
                "{} source transactions in {} target batches ({} changes per batch)",
                count(stats.transactions),
                count(stats.batches),
                count(changes / stats.batches.max(1))
            ),
            format!(
                "{} rows inserted, {} updated, {} deleted on the target (repeated changes of a key merged)",
                count(stats.inserted),
                count(stats.updated),
                count(stats.deleted)
            ),
            format!(
                "connected after {connected:.2} s; last data read from the socket at {received_at:.2} s; \
                 last source transaction handed to the applier at {last_txn_at:.2} s"
            ),
        ]
        .into_iter()
        .chain(sampled)
        .collect(),
        ..Outcome::default()
    })
}

async fn native(env: &Env, source_db: &str, run: &Target, stop: Lsn) -> Result<Outcome> {
    let source = connect_sql(&config(&env.source.conninfo(source_db))).await?;
    let target = connect_sql(&config(&env.target.conninfo(&run.db))).await?;
    let origin: String = target
        .query_one(
            "SELECT 'pg_' || oid FROM pg_subscription WHERE subname = $1",
            &[&run.slot],
        )
        .await?
        .get(0);
    let sampler = Sampler::start(
        env,
        &run.slot,
        Some((&run.db, "logical replication worker")),
    )
    .await?;
    let cpu = CpuMeter::start(env);
    let started = Instant::now();
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {} ENABLE", run.slot))
        .await?;
    // (seconds, the target's replication origin position): when the last
    // transaction was committed on the target, before it was confirmed.
    let mut applied: Vec<(f64, String)> = Vec::new();
    let mut polls = 0u64;
    loop {
        tokio::time::sleep(NATIVE_POLL).await;
        polls += 1;
        let confirmed: Option<String> = source
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&run.slot],
            )
            .await?
            .get(0);
        let at = started.elapsed().as_secs_f64();
        let origin_lsn: Option<String> = target
            .query_opt(
                "SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = $1",
                &[&origin],
            )
            .await?
            .and_then(|row| row.get(0));
        if let Some(lsn) = origin_lsn {
            if applied.last().is_none_or(|(_, last)| *last != lsn) {
                applied.push((at, lsn));
            }
        }
        if confirmed
            .as_deref()
            .map(parse_lsn)
            .transpose()?
            .is_some_and(|c| c >= stop)
        {
            break;
        }
        if polls % 20 == 0 {
            let errors: i64 = target
                .query_one(
                    "SELECT coalesce(sum(apply_error_count), 0)::bigint FROM pg_stat_subscription_stats
                      WHERE subname = $1",
                    &[&run.slot],
                )
                .await?
                .get(0);
            if errors > 0 {
                bail!(
                    "the subscription's apply worker failed {errors} times; see {}",
                    env.target.log_path().display()
                );
            }
        }
        if started.elapsed() > CONSUMER_LIMIT {
            bail!("not done after {CONSUMER_LIMIT:?}");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.stop(env);
    let sampled = sampler.finish().await?;
    target
        .batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", run.slot))
        .await?;
    let mut notes = Vec::new();
    let committed = applied
        .iter()
        .find(|(_, lsn)| Some(lsn) == applied.last().map(|(_, l)| l))
        .map(|(at, _)| *at);
    if let Some(at) = committed {
        notes.push(format!(
            "last transaction committed on the target at {at:.2} s (by its replication origin), confirmed at {seconds:.2} s"
        ));
    }
    notes.extend(sampled);
    notes.push(segments_note(&cpu, None));
    Ok(Outcome {
        seconds,
        complete: true,
        cpu,
        committed,
        notes,
        ..Outcome::default()
    })
}

async fn pgcopydb(
    env: &Env,
    kind: Kind,
    names: &Names,
    stop: Lsn,
    changes: u64,
) -> Result<Outcome> {
    let Some((program, limit)) = &env.pgcopydb else {
        bail!("pgcopydb skipped");
    };
    let source_uri = pg_uri(&env.source, &names.source_db);
    let target_uri = pg_uri(&env.target, &names.pgcopydb_db);
    let dir = &names.pgcopydb_dir;
    pgcopydb_command(
        program,
        &[
            "stream",
            "sentinel",
            "set",
            "apply",
            "--source",
            &source_uri,
        ],
        &dir.join("sentinel.log"),
    )?;
    pgcopydb_command(
        program,
        &[
            "stream",
            "sentinel",
            "set",
            "endpos",
            "--source",
            &source_uri,
            &stop.to_string(),
        ],
        &dir.join("sentinel.log"),
    )?;
    let source = connect_sql(&config(&env.source.conninfo(&names.source_db))).await?;
    let target = connect_sql(&config(&env.target.conninfo(&names.pgcopydb_db))).await?;
    let progress_sql = match kind {
        Kind::Inserts => "SELECT count(*) FROM bench_insert".to_owned(),
        Kind::Updates => "SELECT count(*) FROM bench_update WHERE version > 0".to_owned(),
        Kind::Deletes => format!(
            "SELECT {} - count(*) FROM bench_delete",
            env.sizes.table_rows
        ),
        Kind::Pgbench => "SELECT 4 * count(*) FROM pgbench_history".to_owned(),
    };
    let log_path = dir.join("follow.log");
    let log = fs::File::create(&log_path)?;
    let cpu = CpuMeter::start(env);
    let started = Instant::now();
    let mut child = Command::new(program)
        .args([
            "follow",
            "--source",
            &source_uri,
            "--target",
            &target_uri,
            "--dir",
        ])
        .arg(dir)
        .args([
            "--slot-name",
            &names.pgcopydb_slot,
            "--origin",
            &names.pgcopydb_origin,
        ])
        .args([
            "--resume",
            "--not-consistent",
            "--endpos",
            &stop.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting pgcopydb follow")?;
    let mut applied = 0u64;
    let mut last_progress_at = 0.0;
    let mut exit = None;
    let mut polls = 0u64;
    while started.elapsed() < *limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(status) = child.try_wait()? {
            exit = Some(status);
            break;
        }
        polls += 1;
        if polls % 4 == 0 {
            let now: i64 = target.query_one(&progress_sql, &[]).await?.get(0);
            if now as u64 > applied {
                applied = now as u64;
                last_progress_at = started.elapsed().as_secs_f64();
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_used;
    let mut notes = Vec::new();
    match exit {
        Some(status) => {
            cpu_used = cpu.stop(env);
            if !status.success() {
                notes.push(format!(
                    "pgcopydb follow failed ({status}): {}",
                    tail(&log_path, 3)
                ));
            }
        }
        None => {
            stop_group(&mut child)?;
            // Its children are waited for by now: their CPU time counts.
            cpu_used = cpu.stop(env);
        }
    }
    let now: i64 = target.query_one(&progress_sql, &[]).await?.get(0);
    if now as u64 > applied {
        applied = now as u64;
        last_progress_at = seconds;
    }
    let sentinel = source
        .query_opt(
            "SELECT coalesce(write_lsn::text, ''), coalesce(replay_lsn::text, '') FROM pgcopydb.sentinel",
            &[],
        )
        .await?;
    let complete = exit.is_some_and(|s| s.success()) && applied >= changes;
    let ending = match exit {
        _ if complete => None,
        Some(status) if status.success() => Some(format!(
            "exited at its --endpos with {} changes never applied",
            count(changes.saturating_sub(applied))
        )),
        Some(status) => Some(format!(
            "failed ({status}): {}",
            first_error(&log_path).unwrap_or_default()
        )),
        None if seconds - last_progress_at > 30.0 => {
            Some(format!("stalled until stopped at {seconds:.0} s"))
        }
        None => None,
    };
    if let Some(row) = sentinel {
        let (write, replay): (String, String) = (row.get(0), row.get(1));
        notes.push(format!(
            "sentinel: received up to {write}, replayed up to {replay} (end {stop})"
        ));
    }
    let spooled: u64 = fs::read_dir(dir.join("cdc"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    notes.push(format!(
        "{:.1} MB of JSON and SQL spooled in its work directory",
        spooled as f64 / 1e6
    ));
    if !complete {
        notes.insert(
            0,
            format!(
                "{} after {} of {} changes in {seconds:.0} s (last progress at {last_progress_at:.0} s){}",
                if exit.is_some() {
                    "exited"
                } else {
                    "stopped at the time limit"
                },
                count(applied),
                count(changes),
                if exit.is_none() && seconds - last_progress_at > 30.0 {
                    ": stalled"
                } else {
                    ""
                },
            ),
        );
        notes.push(format!("its log ends: {}", tail(&log_path, 4)));
    }
    let kept = env
        .results_dir
        .join(format!("bench-apply-pgcopydb-{}.log", kind.name()));
    if fs::copy(&log_path, &kept).is_ok() {
        notes.push(format!("log kept in {}", kept.display()));
    }
    Ok(Outcome {
        seconds,
        applied,
        complete,
        cpu: cpu_used,
        last_progress: Some(last_progress_at),
        ending,
        notes,
        ..Outcome::default()
    })
}

/// Stops a process group we started: SIGTERM, then SIGKILL after 10 s.
fn stop_group(child: &mut Child) -> Result<()> {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    child.wait()?;
    Ok(())
}

fn pgcopydb_command(program: &Path, args: &[&str], log: &Path) -> Result<()> {
    let out = Command::new(program).args(args).output()?;
    let mut text = out.stdout.clone();
    text.extend_from_slice(&out.stderr);
    let mut file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    std::io::Write::write_all(&mut file, &text)?;
    if !out.status.success() {
        bail!(
            "pgcopydb {} failed: {}",
            args[..2].join(" "),
            String::from_utf8_lossy(&text)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Verification

/// Compares every table of the scenario between the source and `db` on the
/// target; prints differences loudly. Returns whether they are equal.
async fn verify(env: &Env, kind: Kind, source_db: &str, db: &str, who: &str) -> Result<bool> {
    let source = connect_sql(&config(&env.source.conninfo(source_db))).await?;
    let target = connect_sql(&config(&env.target.conninfo(db))).await?;
    let mut equal = true;
    for table in kind.tables() {
        let s = table_summary(&source, table).await?;
        let t = table_summary(&target, table).await?;
        if s != t {
            equal = false;
            eprintln!(
                "!!!!!!!! {who}: {table} DIFFERS FROM THE SOURCE: source {s:?}, target {t:?} !!!!!!!!"
            );
        }
    }
    Ok(equal)
}

/// Row count, the sum of a 64-bit hash of every row, and for small tables
/// an md5 of the sorted rows.
async fn table_summary(client: &Client, table: &str) -> Result<(i64, String, Option<String>)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {table} t"
            ),
            &[],
        )
        .await?;
    let (count, hash): (i64, String) = (row.get(0), row.get(1));
    let md5 = if count <= MD5_MAX_ROWS {
        let row = client
            .query_one(
                &format!(
                    "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
                ),
                &[],
            )
            .await?;
        Some(row.get(0))
    } else {
        None
    };
    Ok((count, hash, md5))
}

// ---------------------------------------------------------------------------
// What the servers' processes are doing, sampled from pg_stat_activity

type Histogram = std::collections::BTreeMap<String, u32>;

/// Samples, every 50 ms, the state of the walsender of `slot` on the source
/// and of the applying session(s) in a target database.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<(Histogram, Histogram)>>,
}

impl Sampler {
    /// `target`: the database and the `backend_type` of the applying
    /// session there.
    async fn start(env: &Env, slot: &str, target: Option<(&str, &str)>) -> Result<Sampler> {
        let source = connect_sql(&config(&env.source.conninfo("postgres"))).await?;
        let target = match target {
            Some((db, kind)) => Some((
                connect_sql(&config(&env.target.conninfo("postgres"))).await?,
                db.to_owned(),
                kind.to_owned(),
            )),
            None => None,
        };
        let slot = slot.to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (mut walsender, mut applier) = (Histogram::new(), Histogram::new());
            // An idle session waits for its client (ClientRead): name it by
            // its state; a working one by what it waits for, if anything.
            let label = |state: Option<String>, wait: Option<String>| match (state, wait) {
                (Some(state), _) if state != "active" => state,
                (_, Some(wait)) => wait,
                (_, None) => "on CPU".to_owned(),
            };
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for row in source
                    .query(
                        "SELECT a.state, a.wait_event FROM pg_stat_activity a
                           JOIN pg_replication_slots s ON s.active_pid = a.pid
                          WHERE s.slot_name = $1",
                        &[&slot],
                    )
                    .await?
                {
                    *walsender.entry(label(row.get(0), row.get(1))).or_default() += 1;
                }
                if let Some((client, db, kind)) = &target {
                    for row in client
                        .query(
                            "SELECT state, wait_event FROM pg_stat_activity
                              WHERE datname = $1 AND backend_type = $2",
                            &[db, kind],
                        )
                        .await?
                    {
                        *applier.entry(label(row.get(0), row.get(1))).or_default() += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((walsender, applier))
        });
        Ok(Sampler { stop, task })
    }

    /// Stops sampling; returns a note with the shares of each state.
    async fn finish(self) -> Result<Vec<String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (walsender, applier) = self.task.await??;
        let mut notes = vec![format!("source walsender: {}", shares(&walsender))];
        if !applier.is_empty() {
            notes.push(format!("target session: {}", shares(&applier)));
        }
        Ok(notes)
    }
}

fn shares(histogram: &Histogram) -> String {
    let total: u32 = histogram.values().sum();
    let mut entries: Vec<(&String, &u32)> = histogram.iter().collect();
    entries.sort_by(|a, b| b.1.cmp(a.1));
    entries
        .iter()
        .map(|(label, n)| format!("{label} {:.0}%", 100.0 * **n as f64 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc

struct CpuMeter(Cpu);

impl CpuMeter {
    fn start(env: &Env) -> CpuMeter {
        CpuMeter(cpu_now(env))
    }

    fn stop(self, env: &Env) -> Cpu {
        let now = cpu_now(env);
        let (source, target, client) = (
            now.source - self.0.source,
            now.target - self.0.target,
            now.client - self.0.client,
        );
        Cpu {
            source,
            target,
            client,
            other: (now.other - self.0.other - source - target - client).max(0.0),
            segments: now.segments - self.0.segments,
        }
    }
}

fn cpu_now(env: &Env) -> Cpu {
    let ticks = |t: u64| t as f64 / env.clock_ticks;
    Cpu {
        source: ticks(cluster_ticks(&env.source)),
        target: ticks(cluster_ticks(&env.target)),
        client: ticks(proc_stat("self").map(|s| s.own + s.children).unwrap_or(0)),
        other: ticks(machine_busy_ticks()),
        segments: tcp_segments_sent(),
    }
}

/// Busy CPU ticks of the whole machine since boot (`/proc/stat`).
fn machine_busy_ticks() -> u64 {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| n.get(i)).sum()
}

/// TCP segments sent by the whole machine (`/proc/net/snmp`), nearly all
/// of them ours: source and target talk over loopback.
fn tcp_segments_sent() -> u64 {
    let text = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

struct ProcStat {
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: children that exited and were waited for.
    children: u64,
}

fn proc_stat(pid: &str) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    let n = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        ppid: n(1)? as u32,
        own: n(11)? + n(12)?,
        children: n(13)? + n(14)?,
    })
}

/// CPU ticks of a cluster: the postmaster, its live children, and its
/// exited children (which the postmaster waited for).
fn cluster_ticks(cluster: &Cluster) -> u64 {
    let Some(postmaster) = cluster.postmaster_pid() else {
        return 0;
    };
    let mut total = proc_stat(&postmaster.to_string())
        .map(|s| s.own + s.children)
        .unwrap_or(0);
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some(stat) = proc_stat(pid) {
                if stat.ppid == postmaster {
                    total += stat.own;
                }
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------
// Report

/// TCP segments during a run: about one per message means tiny writes.
fn segments_note(cpu: &Cpu, pgoutput_bytes: Option<u64>) -> String {
    match pgoutput_bytes {
        Some(bytes) => format!(
            "{} TCP segments sent on the machine ({} bytes of pgoutput per segment)",
            count(cpu.segments),
            bytes / cpu.segments.max(1)
        ),
        None => format!("{} TCP segments sent on the machine", count(cpu.segments)),
    }
}

fn report_line(scenario: &str, consumer: &str, changes: u64, outcome: &Outcome) {
    eprintln!(
        "[{scenario}] {consumer}: {:.2} s, {} changes/s{}; CPU s: source {:.1}, target {:.1}, client {:.1}, rest of the machine {:.1}{}",
        outcome.seconds,
        count(outcome.rate() as u64),
        if outcome.complete {
            String::new()
        } else {
            format!(
                " (INCOMPLETE: {} of {})",
                count(outcome.applied),
                count(changes)
            )
        },
        outcome.cpu.source,
        outcome.cpu.target,
        outcome.cpu.client,
        outcome.cpu.other,
        match outcome.verified {
            Some(true) => "; target equals source",
            Some(false) => "; !!!! TARGET DIFFERS FROM SOURCE !!!!",
            None => "",
        }
    );
    for note in &outcome.notes {
        eprintln!("[{scenario}]     {note}");
    }
}

fn report(env: &Env, server_version: &str, results: &[ScenarioResult]) -> String {
    let mut md = String::new();
    let s = env.sizes;
    let _ = writeln!(md, "# Apply benchmark (`cargo bench --bench apply`)\n");
    let _ = writeln!(
        md,
        "PostgreSQL {server_version}; source and target in separate clusters on this machine \
         ({} cores); shared_buffers 256MB, max_wal_size 4GB, checkpoint_timeout 30min, fsync off, \
         synchronous_commit off, autovacuum off, wal_retrieve_retry_interval 100ms on the target (so \
         the subscription launcher starts each apply worker at once) (every target VACUUMed, prewarmed with pg_prewarm, \
         both clusters checkpointed before each consumer). Scale {}. pglive: pgoutput protocol \
         {}, default `ApplyOptions` with {} target sessions, timed until `run` returns at the end LSN. Native: \
         `CREATE SUBSCRIPTION` defaults, timed until its slot's `confirmed_flush_lsn` reaches the \
         end LSN (polled every 50 ms). Read-and-discard: run first and again after native; the \
         faster run is used. pgcopydb: `follow --endpos` (wal2json), time limit {}.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        s.scale,
        proto(),
        apply_options("bench").sessions,
        match &env.pgcopydb {
            Some((_, limit)) => format!("{:.0} s", limit.as_secs_f64()),
            None => "skipped".into(),
        }
    );
    let cell = |o: Option<&Outcome>| o.map(Outcome::cell).unwrap_or_else(|| "–".into());
    let name = |r: &ScenarioResult| r.kind.map(Kind::name).unwrap_or("?");
    let _ = writeln!(
        md,
        "| scenario | changes | WAL | read-and-discard | pglive | native | pgcopydb 0.10 |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let wrong = |runs: &[Outcome]| {
            if runs.iter().any(|o| o.verified == Some(false)) {
                " · **A RUN APPLIED WRONG DATA**"
            } else {
                ""
            }
        };
        let native = match fastest(&r.native) {
            Some(o) => match o.committed {
                Some(at) if o.complete => format!(
                    "{} (last commit at {at:.2} s){}",
                    o.cell(),
                    wrong(&r.native)
                ),
                _ => o.cell(),
            },
            None => "–".into(),
        };
        let pglive = format!("{}{}", cell(fastest(&r.pglive)), wrong(&r.pglive));
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} MB | {} | {pglive} | {native} | {} |",
            name(r),
            count(r.changes),
            r.wal_bytes as f64 / 1e6,
            cell(r.fastest_discard()),
            cell(r.pgcopydb.as_ref()),
        );
    }
    let _ = writeln!(
        md,
        "\nRatios (goals: pglive ≥ 1.0× native's speed, aim 1.2×; ≥ 20× pgcopydb's; pglive's time \
         ≤ 1.1× read-and-discard's):\n"
    );
    let _ = writeln!(
        md,
        "| scenario | pglive speed ÷ native speed | same, native timed to its last commit | \
         pglive speed ÷ pgcopydb speed | pglive time ÷ read-and-discard time |\n\
         |---|---:|---:|---:|---:|"
    );
    for r in results {
        let ratio = |a: f64, b: f64| {
            if a > 0.0 && b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "–".into()
            }
        };
        let pglive = fastest(&r.pglive).filter(|p| p.complete);
        let native = fastest(&r.native).filter(|n| n.complete);
        let vs_native = match (pglive, native) {
            (Some(p), Some(n)) => ratio(n.seconds, p.seconds),
            _ => "–".into(),
        };
        let vs_committed = match (pglive, native.and_then(|n| n.committed)) {
            (Some(p), Some(at)) => ratio(at, p.seconds),
            _ => "–".into(),
        };
        let vs_pgcopydb = match (pglive, &r.pgcopydb) {
            (Some(p), Some(o)) if o.rate() > 0.0 => ratio(p.rate(), o.rate()),
            (Some(_), Some(o)) => format!("∞ (it applied {} changes)", count(o.applied)),
            _ => "–".into(),
        };
        let vs_discard = match (pglive, r.fastest_discard()) {
            (Some(p), Some(d)) => ratio(p.seconds, d.seconds),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {vs_native} | {vs_committed} | {vs_pgcopydb} | {vs_discard} |",
            name(r)
        );
    }
    let _ = writeln!(
        md,
        "\nCPU seconds used during each consumer's run (source cluster / target cluster / client \
         process, which for pgcopydb includes its subprocesses / the rest of the machine, i.e. \
         other users of the cores):\n"
    );
    let _ = writeln!(
        md,
        "| scenario | read-and-discard | pglive | native | pgcopydb |\n|---|---:|---:|---:|---:|"
    );
    let cpu = |o: Option<&Outcome>| match o {
        Some(o) => format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            o.cpu.source, o.cpu.target, o.cpu.client, o.cpu.other
        ),
        None => "–".into(),
    };
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            name(r),
            cpu(r.fastest_discard()),
            cpu(fastest(&r.pglive)),
            cpu(fastest(&r.native)),
            cpu(r.pgcopydb.as_ref())
        );
    }
    let _ = writeln!(md, "\n## Scenarios\n");
    for r in results {
        let _ = writeln!(
            md,
            "- **{}**: {} (backlog written in {:.1} s).",
            name(r),
            r.description,
            r.generate_seconds
        );
        let mut rows: Vec<(String, &Outcome)> = Vec::new();
        for (who, runs) in [
            ("read-and-discard", &r.discard[..]),
            ("pglive", &r.pglive[..]),
            ("native", &r.native[..]),
            ("pgcopydb", r.pgcopydb.as_slice()),
        ] {
            for (n, o) in runs.iter().enumerate() {
                let label = if runs.len() > 1 {
                    format!("{who} run {} ({:.2} s)", n + 1, o.seconds)
                } else {
                    who.to_owned()
                };
                rows.push((label, o));
            }
        }
        for (who, o) in rows {
            let mut notes = o.notes.clone();
            match o.verified {
                Some(true) => notes.push("target equals source".into()),
                Some(false) => notes.push("**TARGET DIFFERS FROM SOURCE**".into()),
                None => {}
            }
            let _ = writeln!(md, "  - {who}: {}.", notes.join("; "));
        }
        for error in &r.errors {
            let _ = writeln!(md, "  - **error**: {error}");
        }
    }
    let peak = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .map(|l| l[6..].trim().to_owned())
    });
    if let Some(peak) = peak {
        let _ = writeln!(
            md,
            "\nPeak RSS of the bench process (pglive's client side included): {peak}."
        );
    }
    md
}

// ---------------------------------------------------------------------------
// Small helpers

fn parse_lsn(text: &str) -> Result<Lsn> {
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("not an LSN: {text:?}: {e:?}"))
}

fn pg_uri(cluster: &Cluster, db: &str) -> String {
    format!(
        "postgres://{}@{}:{}/{db}",
        cluster.superuser(),
        cluster.host(),
        cluster.port()
    )
}

fn pgbench_connection(cluster: &Cluster, db: &str) -> Vec<String> {
    vec![
        "-h".into(),
        path_str(cluster.socket_dir()),
        "-p".into(),
        cluster.port().to_string(),
        "-U".into(),
        cluster.superuser().into(),
        db.into(),
    ]
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The first ERROR line of a pgcopydb log, without its time and pid.
fn first_error(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.contains(" ERROR "))?;
    let message = &line[line.find(" ERROR ")? + 7..];
    Some(message.chars().take(160).collect())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
