//! What grows with the data and what must not, measured at several sizes in
//! one run, through the release binary (as an operator runs it).
//!
//! ```text
//! cargo bench --bench scale                               # small sizes, minutes
//! PGLIVE_SCALE_COPY_MB=2000,8000,16000 \
//! PGLIVE_SCALE_CUTOVER_MB=1000,20000 \
//! PGLIVE_SCALE_BACKLOG_UPDATES=17000000 cargo bench --bench scale
//! ```
//!
//! - **copy** (`PGLIVE_SCALE_COPY_MB`, default `300,1200`): one table of each
//!   size (bigint key, ~140-byte rows). The raw limit: `psql -c "COPY … TO
//!   STDOUT (FORMAT binary)" | psql -c "COPY … FROM STDIN (FORMAT binary)"`
//!   into the bare table, then `ALTER TABLE … ADD PRIMARY KEY`. pglive:
//!   `pglive migrate --jobs 2 --cutover-when-ready` into an empty database;
//!   its copy and post-data seconds are read from its log (the slot, schema
//!   and cutover around them are reported apart). MB/s are of the table
//!   (`pg_table_size`).
//! - **verify**: `pglive verify --full --part-size 64` of the same table
//!   with each of `PGLIVE_SCALE_VERIFY_JOBS` jobs (default `1,2`), MB/s in
//!   all and per job.
//! - **cutover** (`PGLIVE_SCALE_CUTOVER_MB`, default `300,1200`): `pglive
//!   demo --size-mb N --workload-seconds 10`: the fenced cutover's blocked
//!   writes under the demo's live workload (the same at every size).
//! - **backlog memory** (`PGLIVE_SCALE_BACKLOG_UPDATES`, default 1,000,000):
//!   `scripts/backlog-memory.sh`: peak RSS while apply, behind a locked
//!   target table, faces that many updates' WAL (17,000,000 ≈ 5 GB).
//!
//! A benchmark, not a test: nothing is asserted beyond each step
//! succeeding; the figures are printed as one table at the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use pglive_testkit::{Cluster, ClusterOptions};

#[path = "support/mod.rs"]
mod support;
use support::{drop_database, pglive, seconds_after, sizes, timed_pipe};

fn main() {
    let mut lines = Vec::new();
    let copy_sizes = sizes("PGLIVE_SCALE_COPY_MB", "300,1200");
    if !copy_sizes.is_empty() {
        let cluster = Cluster::start(
            ClusterOptions::bulk()
                .setting("shared_buffers", "512MB")
                .setting("max_wal_size", "4GB")
                .setting("checkpoint_timeout", "1h")
                .setting("autovacuum", "off"),
        )
        .expect("start a cluster");
        for megabytes in copy_sizes {
            lines.extend(copy_and_verify(&cluster, megabytes));
        }
    }
    for megabytes in sizes("PGLIVE_SCALE_CUTOVER_MB", "300,1200") {
        lines.push(cutover(megabytes));
    }
    let updates = sizes("PGLIVE_SCALE_BACKLOG_UPDATES", "1000000");
    for updates in updates {
        lines.push(backlog_memory(updates));
    }
    println!();
    for line in lines {
        println!("{line}");
    }
}

/// The copy of one table of about `megabytes` by the raw pipe and by
/// pglive, then its verification with 1 and 2 jobs.
fn copy_and_verify(cluster: &Cluster, megabytes: u64) -> Vec<String> {
    let source = cluster.create_database("scale_src").unwrap();
    eprintln!("generating a table of about {megabytes} MB ...");
    let rows = megabytes * 1_000_000 / 140;
    cluster
        .psql(
            &source,
            &format!(
                "CREATE TABLE wide (id bigint PRIMARY KEY, n int, body text);
                 INSERT INTO wide SELECT g, g % 1000, repeat(md5(g::text), 3) FROM generate_series(1, {rows}) g;
                 VACUUM ANALYZE wide;"
            ),
        )
        .unwrap();
    let table_bytes: f64 = cluster
        .psql(&source, "SELECT pg_table_size('wide')")
        .unwrap()
        .parse()
        .unwrap();
    let mb = table_bytes / 1e6;
    let rate = |secs: f64| mb / secs.max(0.001);

    let raw_target = cluster.create_database("scale_raw").unwrap();
    cluster
        .psql(
            &raw_target,
            "CREATE TABLE wide (id bigint, n int, body text)",
        )
        .unwrap();
    let raw_copy = timed_pipe(cluster, &source, &raw_target, "wide", "wide");
    let started = Instant::now();
    cluster
        .psql(&raw_target, "ALTER TABLE wide ADD PRIMARY KEY (id)")
        .unwrap();
    let raw_total = raw_copy + started.elapsed().as_secs_f64();
    drop_database(cluster, &raw_target);

    let target = cluster.create_database("scale_dst").unwrap();
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    let (src, dst) = (cluster.conninfo(&source), cluster.conninfo(&target));
    let started = Instant::now();
    let log = pglive(&[
        "migrate",
        "--source",
        &src,
        "--target",
        &dst,
        "--name",
        "scale",
        "--jobs",
        "2",
        "--cutover-when-ready",
    ]);
    let migrate_total = started.elapsed().as_secs_f64();
    let copy = seconds_after(&log, "copy: ", " in ");
    let post_data = seconds_after(&log, "post-data: ", " in ");
    let mut lines = vec![format!(
        "copy {:>6.0} MB | raw pipe {raw_copy:6.1}s + key {:5.1}s = {raw_total:6.1}s ({:5.1} MB/s) | pglive copy {copy:6.1}s + post-data {post_data:5.1}s = {:6.1}s ({:5.1} MB/s, {:.2}x raw) | whole migrate {migrate_total:6.1}s",
        mb,
        raw_total - raw_copy,
        rate(raw_total),
        copy + post_data,
        rate(copy + post_data),
        (copy + post_data) / raw_total,
    )];
    for jobs in sizes("PGLIVE_SCALE_VERIFY_JOBS", "1,2") {
        let jobs = jobs.to_string();
        let started = Instant::now();
        pglive(&[
            "verify",
            "--source",
            &src,
            "--target",
            &dst,
            "--name",
            "scale",
            "--full",
            "--jobs",
            &jobs,
            "--part-size",
            "64",
        ]);
        let secs = started.elapsed().as_secs_f64();
        let per_job = rate(secs) / jobs.parse::<f64>().unwrap();
        lines.push(format!(
            "verify {mb:>4.0} MB --full --jobs {jobs} | {secs:6.1}s, {:6.1} MB/s, {per_job:6.1} MB/s per job",
            rate(secs)
        ));
    }
    drop_database(cluster, &target);
    drop_database(cluster, &source);
    for line in &lines {
        eprintln!("{line}");
    }
    lines
}

/// The fenced cutover of `pglive demo` at about `megabytes`.
fn cutover(megabytes: u64) -> String {
    eprintln!("pglive demo --size-mb {megabytes} ...");
    let log = pglive(&[
        "demo",
        "--size-mb",
        &megabytes.to_string(),
        "--workload-seconds",
        "10",
    ]);
    let field = |label: &str| {
        log.lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| l.trim_start()[label.len()..].trim().to_owned())
            .unwrap_or_else(|| format!("(no {label:?} line)"))
    };
    let blocked = log
        .split("writes blocked for ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .unwrap_or("?");
    let line = format!(
        "cutover demo {megabytes:>6} MB | writes blocked {blocked}s | workload downtime {} | {}",
        field("write downtime"),
        field("copied")
    );
    eprintln!("{line}");
    line
}

/// Peak RSS of migrate applying a backlog of `updates` updates.
fn backlog_memory(updates: u64) -> String {
    eprintln!("scripts/backlog-memory.sh {updates} ...");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/backlog-memory.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(updates.to_string())
        .env("PGLIVE", support::PGLIVE)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "backlog-memory.sh failed: {said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = format!("backlog | {}", said.lines().collect::<Vec<_>>().join(" | "));
    eprintln!("{line}");
    line
}
