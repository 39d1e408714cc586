//! TimescaleDB, measured through the release binary against a real
//! TimescaleDB (testkit builds it from `../shared/timescaledb` when missing).
//!
//! ```text
//! cargo bench --bench timescale                          # small sizes
//! PGLIVE_TS_COPY_MB=500,2000 PGLIVE_TS_BACKLOG_ROWS=1000000,4000000 \
//!   cargo bench --bench timescale
//! ```
//!
//! - **copy** (`PGLIVE_TS_COPY_MB`, default `200,800`): one hypertable (1-day
//!   chunks, ~110-byte rows, a `(device, ts)` key) of each size. The raw
//!   limit: `psql -c "COPY (SELECT * FROM ht) TO STDOUT (FORMAT binary)" |
//!   psql -c "COPY ht FROM STDIN (FORMAT binary)"` into an empty hypertable,
//!   then `ALTER TABLE ht ADD PRIMARY KEY`. pglive: `pglive migrate --jobs 2 --cutover-when-ready`;
//!   copy and post-data seconds from its log. MB are the chunks' table bytes.
//! - **compressed copy** (`PGLIVE_TS_COMPRESSED_MB`, default `200`): the
//!   same hypertable, every chunk compressed (`segmentby` device, `orderby`
//!   ts). pglive copies each chunk in its compressed form; what compressing
//!   is left on the target (`compress_chunk` of every chunk) is timed by
//!   hand, and the compressed chunks on the target counted. The least a
//!   copy in compressed form could cost: the raw binary pipe of the
//!   compressed chunks' batches into one table (no catalog work, no chunk
//!   creation).
//! - **backlog** (`PGLIVE_TS_BACKLOG_ROWS`, default `300000,1200000`): the
//!   target is a server of its own (as in production: on one server the
//!   source's walsender also reads the target's WAL). A migration is
//!   stopped while streaming, that many rows are inserted into new chunks
//!   of the source hypertable (insert-only, 10,000 per transaction), and
//!   `pglive migrate --cutover-when-ready` is run again: rows/s = rows / its
//!   whole run (connection and cutover included). The raw limit: the same
//!   rows by a binary `COPY` pipe into an empty hypertable on the target
//!   server. Timescale's live migration documents about 20,000 rows/s.
//!
//! A benchmark, not a test: the figures are printed as one table at the end.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pglive_testkit::{Cluster, ClusterOptions};

#[path = "support/mod.rs"]
mod support;
use support::{PGLIVE, drop_database, pglive, seconds_after, sizes, timed_pipe};

/// The hypertable, without its key (added by [`KEY`]).
const HYPERTABLE: &str = "
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE ht (ts timestamptz NOT NULL, device int NOT NULL, v float8, body text);
SELECT create_hypertable('ht', by_range('ts', INTERVAL '1 day'));";

/// The hypertable's key.
const KEY: &str = "ALTER TABLE ht ADD PRIMARY KEY (device, ts)";

/// A throwaway TimescaleDB server tuned for bulk work.
fn timescaledb_server() -> Cluster {
    Cluster::start(
        ClusterOptions::bulk()
            .timescaledb(true)
            .setting("shared_buffers", "512MB")
            .setting("checkpoint_timeout", "1h")
            .setting("autovacuum", "off"),
    )
    .expect("start a TimescaleDB cluster")
}

fn main() {
    let cluster = timescaledb_server();
    let mut lines = Vec::new();
    for megabytes in sizes("PGLIVE_TS_COPY_MB", "200,800") {
        lines.push(copy(&cluster, megabytes));
    }
    for megabytes in sizes("PGLIVE_TS_COMPRESSED_MB", "200") {
        lines.push(compressed_copy(&cluster, megabytes));
    }
    let target_server = timescaledb_server();
    for rows in sizes("PGLIVE_TS_BACKLOG_ROWS", "300000,1200000") {
        lines.push(backlog((&cluster, &target_server), rows));
    }
    println!();
    for line in lines {
        println!("{line}");
    }
}

/// A source database with the hypertable of about `megabytes` (its key
/// included), and its table bytes in MB.
fn source_hypertable(cluster: &Cluster, megabytes: u64) -> (String, f64) {
    let source = cluster.create_database("ts_src").unwrap();
    eprintln!("generating a hypertable of about {megabytes} MB ...");
    let rows = megabytes * 1_000_000 / 110;
    cluster
        .psql(
            &source,
            &format!(
                "{HYPERTABLE}
                 INSERT INTO ht SELECT '2025-01-01'::timestamptz + g * INTERVAL '1 second', g % 100,
                                       g, md5(g::text) || md5((g * 7)::text)
                   FROM generate_series(1, {rows}) g;
                 {KEY};
                 VACUUM ANALYZE ht;"
            ),
        )
        .unwrap();
    let mb: f64 = cluster
        .psql(
            &source,
            "SELECT sum(table_bytes + toast_bytes) / 1e6 FROM hypertable_detailed_size('ht')",
        )
        .unwrap()
        .parse()
        .unwrap();
    (source, mb)
}

/// `pglive migrate --jobs 2 --cutover-when-ready` of `source` into a new
/// database; its copy and post-data seconds and the target database.
fn migrate_copy(cluster: &Cluster, source: &str) -> (f64, f64, String) {
    let target = cluster.create_database("ts_dst").unwrap();
    cluster
        .psql(&target, "CREATE EXTENSION timescaledb")
        .unwrap();
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    let log = pglive(&[
        "migrate",
        "--source",
        &cluster.conninfo(source),
        "--target",
        &cluster.conninfo(&target),
        "--name",
        "tsbench",
        "--jobs",
        "2",
        "--cutover-when-ready",
    ]);
    let copied = seconds_after(&log, "copy: ", " in ");
    let post_data = seconds_after(&log, "post-data: ", " in ");
    (copied, post_data, target)
}

/// The copy of one hypertable of about `megabytes` by the raw pipe and by
/// pglive.
fn copy(cluster: &Cluster, megabytes: u64) -> String {
    let (source, mb) = source_hypertable(cluster, megabytes);
    let rate = |secs: f64| mb / secs.max(0.001);

    let raw_target = cluster.create_database("ts_raw").unwrap();
    cluster.psql(&raw_target, HYPERTABLE).unwrap();
    let raw_copy = timed_pipe(cluster, &source, &raw_target, "(SELECT * FROM ht)", "ht");
    let started = Instant::now();
    cluster.psql(&raw_target, KEY).unwrap();
    let raw = raw_copy + started.elapsed().as_secs_f64();
    drop_database(cluster, &raw_target);

    let (copied, post_data, target) = migrate_copy(cluster, &source);
    drop_database(cluster, &target);
    drop_database(cluster, &source);
    let line = format!(
        "hypertable copy {mb:>6.0} MB | raw pipe {raw_copy:6.1}s + key {:5.1}s = {raw:6.1}s ({:5.1} MB/s) | pglive copy {copied:6.1}s + post-data {post_data:5.1}s ({:5.1} MB/s, {:.2}x raw)",
        raw - raw_copy,
        rate(raw),
        rate(copied + post_data),
        (copied + post_data) / raw,
    );
    eprintln!("{line}");
    line
}

/// The copy of the same hypertable with every chunk compressed: pglive
/// copies the chunks in compressed form; what compressing the target still
/// has to do is timed by hand. Against it, the least a copy in compressed
/// form could cost: the raw binary pipe of the compressed chunks' batches
/// into one table.
fn compressed_copy(cluster: &Cluster, megabytes: u64) -> String {
    let (source, mb) = source_hypertable(cluster, megabytes);
    let started = Instant::now();
    cluster
        .psql(
            &source,
            "ALTER TABLE ht SET (timescaledb.compress, timescaledb.compress_segmentby = 'device',
                                 timescaledb.compress_orderby = 'ts');
             SELECT count(compress_chunk(c)) FROM show_chunks('ht') c;
             VACUUM ANALYZE;",
        )
        .unwrap();
    let compressing = started.elapsed().as_secs_f64();
    let compressed_mb: f64 = cluster
        .psql(
            &source,
            "SELECT sum(after_compression_total_bytes) / 1e6 FROM chunk_compression_stats('ht')",
        )
        .unwrap()
        .parse()
        .unwrap();
    let batches = cluster
        .psql(
            &source,
            "SELECT format('%I.%I', z.schema_name, z.table_name)
               FROM _timescaledb_catalog.chunk c
               JOIN _timescaledb_catalog.chunk z ON z.id = c.compressed_chunk_id
               JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
              WHERE h.table_name = 'ht' ORDER BY 1",
        )
        .unwrap();
    let batches: Vec<&str> = batches.lines().collect();
    let columns = cluster
        .psql(
            &source,
            &format!(
                "SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
                   FROM pg_attribute WHERE attrelid = '{}'::regclass AND attnum > 0 AND NOT attisdropped",
                batches[0]
            ),
        )
        .unwrap();
    let raw_target = cluster.create_database("ts_raw").unwrap();
    cluster
        .psql(
            &raw_target,
            &format!("CREATE EXTENSION timescaledb; CREATE TABLE batches ({columns})"),
        )
        .unwrap();
    let raw: f64 = batches
        .iter()
        .map(|chunk| {
            timed_pipe(
                cluster,
                &source,
                &raw_target,
                &format!("(SELECT * FROM {chunk})"),
                "batches",
            )
        })
        .sum();
    drop_database(cluster, &raw_target);

    let (copied, post_data, target) = migrate_copy(cluster, &source);
    let compressed_chunks = cluster
        .psql(
            &target,
            "SELECT count(*) FILTER (WHERE is_compressed) || '/' || count(*)
               FROM timescaledb_information.chunks WHERE hypertable_name = 'ht'",
        )
        .unwrap();
    let started = Instant::now();
    cluster
        .psql(
            &target,
            "SELECT count(compress_chunk(c)) FROM show_chunks('ht') c",
        )
        .unwrap();
    let recompressing = started.elapsed().as_secs_f64();
    drop_database(cluster, &target);
    drop_database(cluster, &source);
    let line = format!(
        "compressed hypertable {mb:>6.0} MB ({compressed_mb:.0} MB compressed in {compressing:.1}s) | pglive copy in compressed form {copied:6.1}s + post-data {post_data:5.1}s ({:5.1} MB/s of rows), {compressed_chunks} chunks compressed on the target, compressing left {recompressing:5.1}s | raw pipe of the compressed batches {raw:5.1}s (pglive's copy {:.1}x that)",
        mb / (copied + post_data).max(0.001),
        (copied + post_data) / raw.max(0.001),
    );
    eprintln!("{line}");
    line
}

/// Apply's rows/s on an insert-only backlog of `rows` into new chunks,
/// from a database of `cluster` to one of `target_server`.
fn backlog((cluster, target_server): (&Cluster, &Cluster), rows: u64) -> String {
    let (source, target) = (
        cluster.create_database("ts_backlog_src").unwrap(),
        target_server.create_database("ts_backlog_dst").unwrap(),
    );
    cluster
        .psql(
            &source,
            &format!(
                "{HYPERTABLE}
                 {KEY};
                 INSERT INTO ht SELECT '2025-01-01'::timestamptz + g * INTERVAL '1 minute', g % 100, g, 'x'
                   FROM generate_series(1, 10000) g;"
            ),
        )
        .unwrap();
    target_server
        .psql(&target, "CREATE EXTENSION timescaledb")
        .unwrap();
    let (src, dst) = (cluster.conninfo(&source), target_server.conninfo(&target));
    let args = [
        "migrate",
        "--source",
        &src,
        "--target",
        &dst,
        "--name",
        "tsbacklog",
    ];
    // Until it streams, then stopped (Ctrl-C stops at a transaction boundary).
    let mut first = Command::new(PGLIVE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pglive runs");
    let deadline = Instant::now() + Duration::from_secs(300);
    while target_server
        .psql(
            &target,
            "SELECT count(*) FROM pglive.migration WHERE stage = 'streaming'",
        )
        .map(|n| n != "1")
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the migration never streamed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .unwrap();
    // Exit status 5: stopped at a transaction boundary, resumable.
    assert!(stopped.success() && first.wait().unwrap().code() == Some(5));

    eprintln!("inserting {rows} rows into new chunks of the source ...");
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(10_000);
        cluster
            .psql(
                &source,
                &format!(
                    "INSERT INTO ht SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 second', g % 100, g, 'backlog'
                       FROM generate_series({}, {}) g",
                    done + 1,
                    done + n
                ),
            )
            .unwrap();
        done += n;
    }
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    let started = Instant::now();
    let log = pglive(&[&args[..], &["--cutover-when-ready"]].concat());
    let whole = started.elapsed().as_secs_f64();
    let target_rows: u64 = target_server
        .psql(&target, "SELECT count(*) FROM ht")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(target_rows, rows + 10_000, "every row arrived:\n{log}");
    drop_database(target_server, &target);

    let raw_target = target_server.create_database("ts_backlog_raw").unwrap();
    target_server
        .psql(&raw_target, &format!("{HYPERTABLE}\n{KEY}"))
        .unwrap();
    target_server.psql("postgres", "CHECKPOINT").unwrap();
    let started = Instant::now();
    support::pipe(
        cluster.bin_dir(),
        &src,
        &target_server.conninfo(&raw_target),
        "(SELECT * FROM ht WHERE ts >= '2026-01-01')",
        "ht",
    )
    .expect("the raw pipe");
    let raw = started.elapsed().as_secs_f64();
    drop_database(target_server, &raw_target);
    drop_database(cluster, &source);
    let line = format!(
        "hypertable backlog {rows:>9} inserted rows | applied and cut over in {whole:6.1}s: {:>8.0} rows/s (connection and cutover included) | raw binary COPY pipe into an empty hypertable {raw:5.1}s: {:>8.0} rows/s ({:.2}x)",
        rows as f64 / whole,
        rows as f64 / raw,
        whole / raw
    );
    eprintln!("{line}");
    line
}
