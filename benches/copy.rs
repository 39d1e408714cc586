//! The initial copy against its limits, on one generated dataset in one run.
//!
//! ```text
//! cargo bench --bench copy                      # about 500 MB of tables
//! PGLIVE_BENCH_MB=2800 cargo bench --bench copy # the issue's 2.8 GB
//! PGLIVE_BENCH_ROUNDS=3 cargo bench --bench copy # best of three
//! ```
//!
//! Four ways of moving the same database between two databases of one
//! throwaway cluster (so all share the machine's cores equally), each into a
//! fresh target:
//!
//! - **raw**: the limit. Tables pre-created (not timed); per table `psql -c
//!   "COPY … TO STDOUT (FORMAT binary)" | psql -c "COPY … FROM STDIN (FORMAT
//!   binary)"`, two at a time, largest first; then the post-data section
//!   (indexes, constraints) with `pg_restore -j 2`.
//! - **pglive**: slot with exported snapshot, pre-data, the parallel copy
//!   with 2 workers, post-data with 2 jobs — everything timed.
//! - **pg_dump/pg_restore**: `pg_dump -Fd -j 2` then `pg_restore -j 2`.
//! - **pgcopydb**: `pgcopydb clone --table-jobs 2 --index-jobs 2`, when
//!   installed.
//!
//! Prints seconds, MB/s (of source table data, `pg_table_size`) and the
//! ratio to the raw limit. A benchmark, not a test: nothing is asserted
//! except that each target ends with the source's row counts.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_repl::{ReplicationClient, SlotOptions};
use pglive_schema::{Catalog, ObjectFilter, SchemaCopy, SchemaOptions};
use pglive_snapshot::{Copier, CopyOptions, Snapshot};
use pglive_testkit::{Cluster, ClusterOptions};

#[path = "support/mod.rs"]
mod support;
use support::pipe;

/// Parallelism of every method.
const JOBS: usize = 2;

/// One way of copying the source database into a fresh target.
type Method = fn(&Cluster, &str, &str) -> Result<Duration, String>;

fn main() {
    let megabytes: u64 = std::env::var("PGLIVE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let cluster = Cluster::start(
        ClusterOptions::bulk()
            .setting("shared_buffers", "512MB")
            .setting("max_wal_size", "16GB")
            .setting("checkpoint_timeout", "1h")
            .setting("autovacuum", "off"),
    )
    .expect("start a cluster");
    let source = cluster.create_database("bench_src").unwrap();
    eprintln!("generating about {megabytes} MB ...");
    let started = Instant::now();
    cluster.psql(&source, &dataset(megabytes)).unwrap();
    let bytes: i64 = cluster
        .psql(
            &source,
            "SELECT sum(pg_table_size(c.oid)) FROM pg_class c \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'",
        )
        .unwrap()
        .parse()
        .unwrap();
    let mb = bytes as f64 / 1e6;
    eprintln!(
        "dataset: {mb:.0} MB of tables in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let counts = row_counts(&cluster, &source);

    let rounds: usize = std::env::var("PGLIVE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let methods: [(&str, Method); 4] = [
        ("raw COPY pipe + indexes", raw_limit),
        ("pglive", pglive),
        ("pg_dump -Fd -j2 + pg_restore -j2", dump_restore),
        ("pgcopydb clone", pgcopydb),
    ];
    // Rounds interleave the methods; the best time of each counts, which
    // filters out other load on the machine.
    let mut results: Vec<(&str, Result<Duration, String>)> = methods
        .iter()
        .map(|(name, _)| (*name, Err("not run".to_owned())))
        .collect();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for ((_, method), (_, best)) in methods.iter().zip(results.iter_mut()) {
            let result = method(&cluster, &source, &counts);
            *best = match (best.clone(), result) {
                (Ok(b), Ok(r)) => Ok(b.min(r)),
                (_, Ok(r)) => Ok(r),
                (Ok(b), Err(_)) => Ok(b),
                (Err(_), Err(e)) => Err(e),
            };
        }
    }

    let raw = results[0].1.as_ref().ok().map(Duration::as_secs_f64);
    println!();
    println!(
        "copy of {mb:.0} MB ({JOBS} jobs each, best of {rounds}), PostgreSQL {}",
        cluster.major_version()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "method", "seconds", "MB/s", "vs raw"
    );
    for (name, result) in &results {
        match result {
            Ok(elapsed) => {
                let secs = elapsed.as_secs_f64();
                let ratio = raw.map(|r| format!("{:.2}x", secs / r)).unwrap_or_default();
                println!("{name:<34} {secs:>9.1} {:>9.1} {ratio:>9}", mb / secs);
            }
            Err(why) => println!("{name:<34} failed: {why}"),
        }
    }
}

/// The dataset: a few tables of different shapes adding up to about
/// `megabytes`, with primary keys, secondary indexes, one table without a
/// key.
fn dataset(megabytes: u64) -> String {
    // Approximate bytes per row on disk, measured on PostgreSQL 15.
    let rows = |share: f64, row_bytes: f64| ((megabytes as f64 * 1e6 * share) / row_bytes) as u64;
    let orders = rows(0.40, 110.0);
    let events = rows(0.30, 190.0);
    let items = rows(0.20, 190.0);
    let logs = rows(0.10, 120.0);
    format!(
        "
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL,
    amount numeric(12,2) NOT NULL, status text NOT NULL,
    created_at timestamptz NOT NULL, note text);
INSERT INTO orders SELECT g, g % 100000, (g % 10000) / 100.0,
    (ARRAY['new', 'paid', 'shipped'])[1 + g % 3],
    timestamptz '2020-01-01' + g * interval '1 second', md5(g::text)
FROM generate_series(1, {orders}) g;
CREATE INDEX orders_customer ON orders (customer_id);

CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind smallint NOT NULL, payload jsonb NOT NULL);
INSERT INTO events (kind, payload) SELECT g % 7, jsonb_build_object('user', g % 5000,
    'tags', jsonb_build_array('a', 'b', g % 13), 'text', md5(g::text))
FROM generate_series(1, {events}) g;

CREATE TABLE items (sku text PRIMARY KEY, title text NOT NULL, price float8,
    stock int, tags text[]);
INSERT INTO items SELECT 'sku-' || g, md5(g::text) || md5((g + 1)::text), g * 0.37,
    g % 1000, ARRAY['x', 'y' || g % 10]
FROM generate_series(1, {items}) g;
CREATE INDEX items_stock ON items (stock);

CREATE TABLE logs (at timestamptz NOT NULL, level text, line text);
INSERT INTO logs SELECT timestamptz '2024-01-01' + g * interval '10 ms',
    (ARRAY['info', 'warn', 'error'])[1 + g % 3], 'request ' || g || ' served ' || md5(g::text)
FROM generate_series(1, {logs}) g;

CREATE TABLE countries (code char(2) PRIMARY KEY, name text);
INSERT INTO countries SELECT chr(65 + g / 26) || chr(65 + g % 26), 'country ' || g
FROM generate_series(0, 675) g;
VACUUM ANALYZE;
"
    )
}

fn row_counts(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql(
            db,
            "SELECT (SELECT count(*) FROM orders) || ' ' || (SELECT count(*) FROM events) || ' ' || \
             (SELECT count(*) FROM items) || ' ' || (SELECT count(*) FROM logs) || ' ' || \
             (SELECT count(*) FROM countries) || ' ' || \
             (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public')",
        )
        .unwrap()
}

/// Runs `method` against a fresh target, checks the row counts and drops
/// the target.
fn measure(
    cluster: &Cluster,
    name: &str,
    counts: &str,
    method: impl FnOnce(&str) -> Result<Duration, String>,
) -> Result<Duration, String> {
    let target = cluster.create_database(name).unwrap();
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    eprintln!("{name} ...");
    let result = method(&target).and_then(|elapsed| {
        let got = row_counts(cluster, &target);
        if got == counts {
            Ok(elapsed)
        } else {
            Err(format!("row and index counts {got}, expected {counts}"))
        }
    });
    eprintln!("{name}: {result:?}");
    cluster
        .psql("postgres", &format!("DROP DATABASE \"{target}\""))
        .unwrap();
    result
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn raw_limit(cluster: &Cluster, source: &str, counts: &str) -> Result<Duration, String> {
    let bin = cluster.bin_dir().to_path_buf();
    let src = cluster.conninfo(source);
    let work = tempdir("raw");
    let post = work.join("post.dump");
    run(Command::new(bin.join("pg_dump"))
        .args(["-Fc", "--section=post-data", "-f"])
        .arg(&post)
        .args(["-d", &src]))?;
    let pre = work.join("pre.sql");
    run(Command::new(bin.join("pg_dump"))
        .args(["--section=pre-data", "-f"])
        .arg(&pre)
        .args(["-d", &src]))?;
    let tables: Vec<String> = cluster
        .psql(
            source,
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_table_size(c.oid) DESC",
        )
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let result = measure(cluster, "bench_raw", counts, |target| {
        let dst = cluster.conninfo(target);
        run(Command::new(bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&pre)
            .args(["-d", &dst]))?;
        let started = Instant::now();
        let queue = Mutex::new(tables.into_iter());
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..JOBS {
                s.spawn(|| {
                    loop {
                        let Some(table) = queue.lock().unwrap().next() else {
                            break;
                        };
                        if let Err(e) = pipe(&bin, &src, &dst, &table, &table) {
                            errors.lock().unwrap().push(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = errors.into_inner().unwrap().pop() {
            return Err(e);
        }
        let copied = started.elapsed();
        run(Command::new(bin.join("pg_restore"))
            .args(["-j", &JOBS.to_string(), "-d", &dst])
            .arg(&post))?;
        eprintln!(
            "raw: rows {:.1} s, indexes {:.1} s",
            copied.as_secs_f64(),
            (started.elapsed() - copied).as_secs_f64()
        );
        Ok(started.elapsed())
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn pglive(cluster: &Cluster, source: &str, counts: &str) -> Result<Duration, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let source = ConnectConfig::parse(&cluster.conninfo(source)).unwrap();
    measure(cluster, "bench_pglive", counts, |target| {
        let target = ConnectConfig::parse(&cluster.conninfo(target)).unwrap();
        runtime.block_on(async {
            let started = Instant::now();
            let mut replication = ReplicationClient::connect(&source)
                .await
                .map_err(|e| e.to_string())?;
            let slot = replication
                .create_slot(
                    "bench",
                    &SlotOptions {
                        temporary: true,
                        ..SlotOptions::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            let snapshot = Snapshot::from_slot(&slot).ok_or("no snapshot")?;
            let mut options = SchemaOptions::default();
            options.jobs = JOBS;
            let mut schema = SchemaCopy::new(source.clone(), target.clone(), options)
                .await
                .map_err(|e| e.to_string())?;
            schema
                .dump(Some(&snapshot.name))
                .await
                .map_err(|e| e.to_string())?;
            schema.restore_pre_data().await.map_err(|e| e.to_string())?;
            let client = connect_sql(&source).await.map_err(|e| e.to_string())?;
            let catalog = Catalog::read(&client, &ObjectFilter::new())
                .await
                .map_err(|e| e.to_string())?;
            let mut copy_options = CopyOptions::default();
            copy_options.workers = JOBS;
            let copier = Copier::new(source.clone(), target.clone(), catalog.tables, copy_options);
            let setup = started.elapsed();
            let copy_started = Instant::now();
            copier
                .run(&snapshot, |_| {})
                .await
                .map_err(|e| e.to_string())?;
            let copy_secs = copy_started.elapsed().as_secs_f64();
            let post = schema
                .restore_post_data()
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "pglive: slot, dumps and pre-data {:.1} s, rows {copy_secs:.1} s, post-data {:.1} s",
                setup.as_secs_f64(),
                post.elapsed.as_secs_f64()
            );
            replication.close().await.map_err(|e| e.to_string())?;
            Ok(started.elapsed())
        })
    })
}

fn dump_restore(cluster: &Cluster, source: &str, counts: &str) -> Result<Duration, String> {
    let bin = cluster.bin_dir().to_path_buf();
    let src = cluster.conninfo(source);
    let work = tempdir("dump");
    let result = measure(cluster, "bench_dump", counts, |target| {
        let started = Instant::now();
        let dir = work.join("dir");
        run(Command::new(bin.join("pg_dump"))
            .args(["-Fd", "-j", &JOBS.to_string(), "-f"])
            .arg(&dir)
            .args(["-d", &src]))?;
        run(Command::new(bin.join("pg_restore"))
            .args(["-j", &JOBS.to_string(), "-d", &cluster.conninfo(target)])
            .arg(&dir))?;
        Ok(started.elapsed())
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn pgcopydb(cluster: &Cluster, source: &str, counts: &str) -> Result<Duration, String> {
    let program = PathBuf::from("/usr/bin/pgcopydb");
    if !program.exists() {
        return Err("pgcopydb is not installed".into());
    }
    let uri = |db: &str| format!("postgres://postgres@127.0.0.1:{}/{db}", cluster.port());
    let work = tempdir("pgcopydb");
    let result = measure(cluster, "bench_pgcopydb", counts, |target| {
        let started = Instant::now();
        let mut path = cluster.bin_dir().as_os_str().to_owned();
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        run(Command::new(&program)
            .arg("clone")
            .args(["--source", &uri(source), "--target", &uri(target)])
            .args([
                "--table-jobs",
                &JOBS.to_string(),
                "--index-jobs",
                &JOBS.to_string(),
            ])
            .args(["--no-owner", "--no-acl", "--dir"])
            .arg(work.join("work"))
            .env("PATH", path))?;
        Ok(started.elapsed())
    });
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglive-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
