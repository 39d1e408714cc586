//! TimescaleDB on both sides, against a real TimescaleDB (built from
//! `../shared/timescaledb` by testkit when missing).

use std::sync::OnceLock;

use pglive_testkit::{Cluster, ClusterOptions};

use crate::util::{self, finish, run};

/// A cluster preloading TimescaleDB, shared by this module's tests.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        Cluster::start(ClusterOptions::new().timescaledb(true))
            .unwrap_or_else(|err| panic!("a TimescaleDB cluster: {err}"))
    })
}

/// The source: four hypertables — `metrics` (time and space dimensions,
/// keyed), `events` (keyless, with a retention policy), `readings`
/// (compressed, with a compression policy), `scratch` (truncated while
/// streaming) — and a continuous aggregate of `metrics` with a refresh
/// policy.
const SOURCE: &str = "
CREATE EXTENSION timescaledb;
CREATE TABLE metrics (ts timestamptz NOT NULL, device int NOT NULL, value float8, note text,
                      PRIMARY KEY (device, ts));
SELECT create_hypertable('metrics', by_range('ts', INTERVAL '1 day'));
SELECT add_dimension('metrics', by_hash('device', 4));
SELECT add_reorder_policy('metrics', 'metrics_ts_idx');
INSERT INTO metrics SELECT '2026-01-01'::timestamptz + g * INTERVAL '10 minutes', g % 10, g,
                           'n' || g || repeat(md5(g::text), 20)
  FROM generate_series(1, 6000) g;
CREATE TABLE events (ts timestamptz NOT NULL, kind text, payload jsonb);
SELECT create_hypertable('events', by_range('ts', INTERVAL '7 days'));
INSERT INTO events SELECT '2024-01-01'::timestamptz + g * INTERVAL '1 hour', 'old', jsonb_build_object('g', g)
  FROM generate_series(1, 500) g;
INSERT INTO events SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', 'k' || (g % 3), jsonb_build_object('g', g)
  FROM generate_series(1, 2000) g;
SELECT add_retention_policy('events', INTERVAL '400 days');
CREATE TABLE readings (ts timestamptz NOT NULL, sensor int NOT NULL, v numeric, PRIMARY KEY (sensor, ts));
SELECT create_hypertable('readings', by_range('ts', INTERVAL '1 day'));
ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'sensor',
                          timescaledb.compress_orderby = 'ts');
INSERT INTO readings SELECT '2026-01-01'::timestamptz + g * INTERVAL '5 minutes', g % 5, g / 7.0
  FROM generate_series(1, 8000) g;
SELECT compress_chunk(c) FROM show_chunks('readings', older_than => '2026-01-10'::timestamptz) c;
SELECT add_compression_policy('readings', compress_after => INTERVAL '30 days');
CREATE TABLE scratch (ts timestamptz NOT NULL, n int);
SELECT create_hypertable('scratch', by_range('ts', INTERVAL '1 day'));
INSERT INTO scratch SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', g FROM generate_series(1, 200) g;
CREATE MATERIALIZED VIEW metrics_hourly WITH (timescaledb.continuous) AS
  SELECT time_bucket('1 hour', ts) AS bucket, device, avg(value) AS mean, count(*) AS n
    FROM metrics GROUP BY 1, 2 WITH DATA;
SELECT add_continuous_aggregate_policy('metrics_hourly', start_offset => NULL,
  end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour');
DO $$ BEGIN CREATE ROLE ts_analyst LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE ts_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT SELECT ON metrics TO ts_analyst;
ALTER MATERIALIZED VIEW metrics_hourly OWNER TO ts_analyst;
GRANT SELECT ON metrics_hourly TO ts_reader;
COMMENT ON VIEW metrics_hourly IS 'hourly means per device';
CREATE MATERIALIZED VIEW metrics_daily WITH (timescaledb.continuous) AS
  SELECT time_bucket('1 day', bucket) AS day, device, sum(n) AS n FROM metrics_hourly GROUP BY 1, 2
  WITH NO DATA;
CREATE VIEW busiest AS SELECT day, max(n) AS n FROM metrics_daily GROUP BY day;
CREATE VIEW \"Busiest Week\" AS SELECT time_bucket('7 days', day) AS week, max(n) AS n FROM busiest GROUP BY 1;
COMMENT ON VIEW \"Busiest Week\" IS 'weekly';
GRANT SELECT (week) ON \"Busiest Week\" TO ts_reader;
COMMENT ON VIEW busiest IS 'busiest device per day';
GRANT SELECT ON busiest TO ts_reader;
CREATE MATERIALIZED VIEW device_peaks AS SELECT device, max(mean) AS top FROM metrics_hourly GROUP BY device;
CREATE UNIQUE INDEX device_peaks_device ON device_peaks (device);
";

/// One statement of the workload: inserts into new time ranges (new
/// chunks) and old ones, updates and deletes in uncompressed and
/// compressed chunks, of keyed and keyless hypertables.
fn workload(n: u64) -> String {
    let old = |step: u64| format!("'2026-01-01'::timestamptz + {step} * INTERVAL '5 minutes'");
    match n % 6 {
        0 => format!(
            "INSERT INTO metrics VALUES ('2026-03-01'::timestamptz + {n} * INTERVAL '1 hour', {}, {n}, 'new')",
            n % 10
        ),
        1 => format!(
            "UPDATE metrics SET value = value + 0.5, note = 'upd' \
             WHERE ts = '2026-01-01'::timestamptz + {} * INTERVAL '10 minutes'",
            (n * 7) % 6000 + 1
        ),
        2 => format!(
            "UPDATE readings SET v = v + 1 WHERE ts = {}",
            old((n * 13) % 8000 + 1)
        ),
        3 => format!(
            "DELETE FROM readings WHERE ts = {}",
            old((n * 29) % 8000 + 1)
        ),
        4 => format!(
            "INSERT INTO events VALUES ('2026-01-02'::timestamptz + {n} * INTERVAL '3 hours', 'live', '{{\"n\": {n}}}'); \
             INSERT INTO readings VALUES ('2026-01-03'::timestamptz + {n} * INTERVAL '1 second', 9, {n}) ON CONFLICT DO NOTHING"
        ),
        _ => format!(
            "DELETE FROM metrics WHERE ts = '2026-01-01'::timestamptz + {} * INTERVAL '10 minutes'",
            (n * 11) % 6000 + 1
        ),
    }
}

/// Runs `sql` on the source, failing the test if the source refuses it
/// (a publication must never make the application's writes fail).
fn source_ok(cluster: &Cluster, db: &str, sql: &str) {
    if let Err(err) = cluster.psql(db, sql) {
        panic!("the source refused {sql}: {err}");
    }
}

/// Runs the source's policy job `proc_name` now.
fn run_job(cluster: &Cluster, db: &str, proc_name: &str) {
    let id = cluster
        .psql(
            db,
            &format!(
                "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = '{proc_name}'"
            ),
        )
        .unwrap();
    source_ok(cluster, db, &format!("CALL run_job({})", id.trim()));
}

/// `pglive verify --full` of the running migration: hypertables are
/// compared through their chunks, and a row changed inside a chunk of the
/// target is found; once it is changed back, they are equal.
fn verify_finds_a_row_changed_in_a_chunk(
    cluster: &Cluster,
    dst: &str,
    source: &str,
    target: &str,
    migrate: &mut std::process::Child,
) {
    let row = "ts = '2026-01-01'::timestamptz + 4321 * INTERVAL '10 minutes' AND device = 1";
    cluster
        .psql(
            dst,
            &format!("UPDATE metrics SET note = note || '!' WHERE {row}"),
        )
        .unwrap();
    let verify = || {
        run(&[
            "verify", "--source", source, "--target", target, "--name", "tsdb", "--full",
        ])
    };
    let differs = verify();
    assert_eq!(differs.status.code(), Some(4), "{}", util::text(&differs));
    let table = util::text(&differs);
    assert!(
        table
            .lines()
            .any(|l| l.contains("\"metrics\"") && l.contains("DIFFERENT")),
        "{table}"
    );
    cluster
        .psql(
            dst,
            &format!("UPDATE metrics SET note = rtrim(note, '!') WHERE {row}"),
        )
        .unwrap();
    let verified = verify();
    if !verified.status.success() {
        migrate.kill().ok();
        panic!("verify failed: {}", util::text(&verified));
    }
}

/// What TimescaleDB says of a database's hypertables, compression and
/// jobs, without the ids that differ between databases.
fn timescale_settings(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql(
            db,
            "SELECT hypertable_schema, hypertable_name, dimension_number, column_name, column_type,
                    time_interval, integer_interval, num_partitions
               FROM timescaledb_information.dimensions ORDER BY 1, 2, 3;
             SELECT hypertable_schema, hypertable_name, attname, segmentby_column_index,
                    orderby_column_index, orderby_asc, orderby_nullsfirst
               FROM timescaledb_information.compression_settings ORDER BY 1, 2, 3;
             SELECT view_schema, view_name, materialized_only, view_definition, view_owner,
                    (SELECT relacl FROM pg_class WHERE oid = format('%I.%I', view_schema, view_name)::regclass),
                    obj_description(format('%I.%I', view_schema, view_name)::regclass, 'pg_class')
               FROM timescaledb_information.continuous_aggregates ORDER BY 1, 2;
             SELECT proc_name, coalesce(hypertable_name, ''), schedule_interval,
                    config - 'hypertable_id' - 'mat_hypertable_id', owner
               FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY 1, 2",
        )
        .unwrap()
}

/// Whether every policy job of a database is scheduled (enabled).
fn jobs_scheduled(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql(
            db,
            "SELECT proc_name || ' ' || scheduled FROM timescaledb_information.jobs
              WHERE job_id >= 1000 ORDER BY 1",
        )
        .unwrap()
}

/// A TimescaleDB source migrated into a TimescaleDB target under a live
/// workload that creates chunks, changes rows in compressed and
/// uncompressed chunks, while the compression policy, the retention
/// policy and a continuous aggregate refresh run on the source: every
/// hypertable equal row by row, the continuous aggregate equal to its
/// query evaluated afresh on the target, the hypertables, compression
/// settings and jobs as on the source, the jobs paused until cutover.
#[test]
fn a_timescaledb_source_migrates_into_timescaledb_under_load() {
    let cluster = cluster();
    let (src, dst) = util::databases(cluster, "tsdb", SOURCE);
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    // Parts of about 1 MB: metrics (~5 MB) is copied in runs of chunks.
    let mut migrate =
        util::migrate_until_streaming(&source, &target, "tsdb", &["--part-size", "1"]);
    let parts: i64 = cluster
        .psql(&dst, "SELECT count(*) FROM pglive.copy_parts WHERE table_name = 'metrics' AND kind = 'timestamptz'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        parts > 2,
        "metrics is copied in parts of whole chunks: {parts}"
    );
    assert_eq!(
        timescale_settings(cluster, &src),
        timescale_settings(cluster, &dst),
        "the target's hypertables, compression and jobs are the source's"
    );
    assert!(
        !jobs_scheduled(cluster, &dst).contains(" t"),
        "the target's jobs are paused until cutover: {}",
        jobs_scheduled(cluster, &dst)
    );

    for n in 1..=480 {
        source_ok(cluster, &src, &workload(n));
        match n {
            // Background work of TimescaleDB's own, mid-stream.
            100 => run_job(cluster, &src, "policy_compression"),
            // Whole compressed batches: TimescaleDB deletes them without
            // decompressing, unless told not to.
            150 => source_ok(
                cluster,
                &src,
                "DELETE FROM readings WHERE sensor = 4 AND ts >= '2026-01-05' AND ts < '2026-01-08'",
            ),
            200 => source_ok(
                cluster,
                &src,
                "SELECT decompress_chunk(c) FROM show_chunks('readings', older_than => '2026-01-03'::timestamptz) c",
            ),
            240 => verify_finds_a_row_changed_in_a_chunk(cluster, &dst, &source, &target, &mut migrate),
            // Rows old enough for the retention policy, in chunks of their own.
            250 => source_ok(
                cluster,
                &src,
                "INSERT INTO events SELECT '2024-06-01'::timestamptz + g * INTERVAL '1 hour', 'expired', '{}'
                   FROM generate_series(1, 300) g",
            ),
            300 => run_job(cluster, &src, "policy_retention"),
            // The application empties a hypertable, then fills it again.
            350 => source_ok(
                cluster,
                &src,
                "TRUNCATE scratch; INSERT INTO scratch VALUES ('2026-05-01', 1), ('2026-05-02', 2)",
            ),
            400 => source_ok(
                cluster,
                &src,
                "CALL refresh_continuous_aggregate('metrics_hourly', NULL, NULL)",
            ),
            _ => {}
        }
    }
    assert!(migrate.try_wait().unwrap().is_none(), "{}", finish(migrate));

    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tsdb",
        ],
        &mut migrate,
    );
    finish(migrate);
    for table in ["metrics", "events", "readings", "scratch"] {
        util::assert_table_equal(cluster, &src, cluster, &dst, table);
    }
    let fresh = "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM (
                   SELECT time_bucket('1 hour', ts) AS bucket, device, avg(value) AS mean, count(*) AS n
                     FROM metrics GROUP BY 1, 2) r";
    let aggregate =
        "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM (
                       SELECT bucket, device, mean, n FROM metrics_hourly) r";
    assert_eq!(
        cluster.psql(&dst, fresh).unwrap(),
        cluster.psql(&dst, aggregate).unwrap(),
        "the continuous aggregate on the target equals its query"
    );
    assert_eq!(
        timescale_settings(cluster, &src),
        timescale_settings(cluster, &dst)
    );
    assert_eq!(
        jobs_scheduled(cluster, &src),
        jobs_scheduled(cluster, &dst),
        "the jobs run on the target after cutover"
    );
    // Views on aggregates (made after them on the target), a hierarchical
    // aggregate equal to its query over the aggregate below it.
    let views =
        "SELECT c.relname, pg_get_viewdef(c.oid), c.relacl, obj_description(c.oid, 'pg_class')
                   FROM pg_class c WHERE c.relname IN ('busiest', 'Busiest Week') ORDER BY 1;
                 SELECT attname, attacl FROM pg_attribute
                  WHERE attrelid = '\"Busiest Week\"'::regclass AND attacl IS NOT NULL";
    assert_eq!(
        cluster.psql(&src, views).unwrap(),
        cluster.psql(&dst, views).unwrap()
    );
    // A materialized view on an aggregate: filled in post-data from the
    // aggregate, materialized by then (neither side refreshes it since).
    let peaks = "SELECT device, top FROM device_peaks ORDER BY device";
    assert_eq!(
        cluster.psql(&src, peaks).unwrap(),
        cluster.psql(&dst, peaks).unwrap()
    );
    let fresh_daily =
        "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM (
                         SELECT time_bucket('1 day', bucket) AS day, device, sum(n) AS n
                           FROM metrics_hourly GROUP BY 1, 2) r";
    let daily = "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM (
                   SELECT day, device, n FROM metrics_daily) r";
    assert_eq!(
        cluster.psql(&dst, fresh_daily).unwrap(),
        cluster.psql(&dst, daily).unwrap(),
        "the aggregate on an aggregate equals its query on the target"
    );
    let output = run(&["status", "--target", &target, "--name", "tsdb"]);
    assert!(output.status.success(), "{}", util::text(&output));
}

/// A source with hypertables and a target that cannot make them (TimescaleDB
/// not preloaded there): refused by preflight, nothing created on either
/// side.
#[test]
fn a_target_without_timescaledb_is_refused_before_anything_changes() {
    let source_cluster = cluster();
    let src = source_cluster.create_database("tsdb_refused_src").unwrap();
    source_cluster
        .psql(
            &src,
            "CREATE EXTENSION timescaledb;
             CREATE TABLE m (ts timestamptz NOT NULL, v int);
             SELECT create_hypertable('m', by_range('ts'));
             INSERT INTO m VALUES (now(), 1);",
        )
        .unwrap();
    let target_cluster = Cluster::shared();
    let dst = target_cluster.create_database("tsdb_refused_dst").unwrap();
    let output = run(&[
        "migrate",
        "--source",
        &source_cluster.conninfo(&src),
        "--target",
        &target_cluster.conninfo(&dst),
        "--name",
        "refused",
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", util::text(&output));
    let said = util::text(&output);
    assert!(
        said.contains("shared_preload_libraries") && said.contains("--hypertables none"),
        "{said}"
    );
    assert_eq!(
        source_cluster
            .psql(
                &src,
                "SELECT (SELECT count(*) FROM pg_publication)
                      + (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())"
            )
            .unwrap(),
        "0"
    );
    assert_eq!(
        target_cluster
            .psql(
                &dst,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pglive'"
            )
            .unwrap(),
        "0"
    );
}

/// `--hypertables none` into a target without TimescaleDB: the
/// hypertables arrive as plain tables, row by row; the continuous
/// aggregate and the view built on it cannot, and the migration says so.
#[test]
fn hypertables_copied_as_plain_tables_say_what_is_left_behind() {
    let source_cluster = cluster();
    let src = source_cluster.create_database("tsdb_plain_src").unwrap();
    source_cluster
        .psql(
            &src,
            "CREATE EXTENSION timescaledb;
             CREATE TABLE m (ts timestamptz NOT NULL, device int NOT NULL, v float8, PRIMARY KEY (device, ts));
             SELECT create_hypertable('m', by_range('ts', INTERVAL '1 day'));
             INSERT INTO m SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', g % 3, g
               FROM generate_series(1, 300) g;
             CREATE MATERIALIZED VIEW m_daily WITH (timescaledb.continuous) AS
               SELECT time_bucket('1 day', ts) AS day, max(v) AS top FROM m GROUP BY 1 WITH NO DATA;
             CREATE VIEW m_peaks AS SELECT day FROM m_daily WHERE top > 100;
             CREATE MATERIALIZED VIEW m_peak_days AS SELECT day, top FROM m_daily WHERE top > 200;
             CREATE INDEX m_peak_days_day ON m_peak_days (day);
             COMMENT ON INDEX m_peak_days_day IS 'by day';",
        )
        .unwrap();
    let target_cluster = Cluster::shared();
    let dst = target_cluster.create_database("tsdb_plain_dst").unwrap();
    let output = run(&[
        "migrate",
        "--source",
        &source_cluster.conninfo(&src),
        "--target",
        &target_cluster.conninfo(&dst),
        "--name",
        "plain",
        "--hypertables",
        "none",
        "--cutover-when-ready",
    ]);
    let said = util::text(&output);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("1 continuous aggregate(s) and 2 object(s) built on them"),
        "{said}"
    );
    util::assert_table_equal(source_cluster, &src, target_cluster, &dst, "m");
}

/// A plain PostgreSQL table made a hypertable on the target with
/// `--hypertable`: refused first for a table whose key lacks the time
/// column; then, under a workload, every row arrives in the target's
/// chunks, with the dimension and chunk interval asked for.
#[test]
fn a_plain_table_becomes_a_hypertable_on_the_target() {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tohyper",
        "CREATE TABLE readings (ts timestamptz NOT NULL, sensor int NOT NULL, v numeric,
                                PRIMARY KEY (sensor, ts));
         INSERT INTO readings SELECT '2026-01-01'::timestamptz + g * INTERVAL '7 minutes', g % 5, g
           FROM generate_series(1, 3000) g;
         CREATE TABLE keyed_by_id (id int PRIMARY KEY, ts timestamptz NOT NULL);",
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let refused = run(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "tohyper",
        "--hypertable",
        "keyed_by_id:ts",
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", util::text(&refused));
    assert!(
        util::text(&refused).contains("keyed_by_id_pkey"),
        "{}",
        util::text(&refused)
    );

    let mut migrate = util::migrate_until_streaming(
        &source,
        &target,
        "tohyper",
        &["--hypertable", "public.readings:ts:1 day"],
    );
    for n in 0..200u64 {
        let sql = match n % 3 {
            0 => format!(
                "INSERT INTO readings VALUES ('2026-02-01'::timestamptz + {n} * INTERVAL '2 hours', 7, {n})"
            ),
            1 => format!(
                "UPDATE readings SET v = v * 2 WHERE ts = '2026-01-01'::timestamptz + {} * INTERVAL '7 minutes'",
                n * 13 % 3000 + 1
            ),
            _ => format!(
                "DELETE FROM readings WHERE ts = '2026-01-01'::timestamptz + {} * INTERVAL '7 minutes'",
                n * 17 % 3000 + 1
            ),
        };
        source_ok(cluster, &src, &sql);
    }
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tohyper",
        ],
        &mut migrate,
    );
    finish(migrate);
    util::assert_table_equal(cluster, &src, cluster, &dst, "readings");
    util::assert_table_equal(cluster, &src, cluster, &dst, "keyed_by_id");
    assert_eq!(
        cluster
            .psql(
                &dst,
                "SELECT column_name || ' ' || time_interval FROM timescaledb_information.dimensions
                  WHERE hypertable_name = 'readings'"
            )
            .unwrap(),
        "ts 1 day"
    );
    let chunks: i64 = cluster
        .psql(&dst, "SELECT count(*) FROM show_chunks('readings')")
        .unwrap()
        .parse()
        .unwrap();
    assert!(chunks > 20, "the rows are in the target's chunks: {chunks}");
    assert_eq!(
        cluster
            .psql(&dst, "SELECT count(*) FROM ONLY readings")
            .unwrap(),
        "0",
        "no row in the hypertable's root"
    );
}

/// A source role that is not a superuser (a managed service's admin owning
/// the tables): preflight refuses it, changing nothing, and names the
/// GRANTs that let it set TimescaleDB's settings; once granted, the
/// migration runs and every row arrives.
#[test]
fn a_source_role_without_superuser_is_told_the_grants_then_migrates() {
    let cluster = &Cluster::start(ClusterOptions::new().timescaledb(true).password_auth(true))
        .expect("a TimescaleDB cluster with a non-superuser role");
    let role = cluster.role().unwrap().user.clone();
    let (src, dst) = util::databases(
        cluster,
        "tsrole",
        &format!(
            "CREATE EXTENSION timescaledb;
             CREATE TABLE m (ts timestamptz NOT NULL, device int NOT NULL, v int,
                             PRIMARY KEY (device, ts));
             SELECT create_hypertable('m', by_range('ts', INTERVAL '1 day'));
             INSERT INTO m SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', g % 3, g
               FROM generate_series(1, 500) g;
             ALTER TABLE m OWNER TO {role};"
        ),
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let source = cluster.role_conninfo(&src).unwrap();
    let target = cluster.conninfo(&dst);
    let refused = run(&[
        "migrate", "--source", &source, "--target", &target, "--name", "tsrole",
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", util::text(&refused));
    let said = util::text(&refused);
    assert!(
        said.contains(&format!(
            "GRANT ALTER SYSTEM ON PARAMETER timescaledb.enable_chunk_auto_publication TO \"{role}\";"
        )) && said.contains(&format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO \"{role}\";"
        )),
        "{said}"
    );
    assert_eq!(
        cluster
            .psql(
                &src,
                "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)"
            )
            .unwrap(),
        "0"
    );

    cluster
        .psql(
            &src,
            &format!(
                "GRANT ALTER SYSTEM ON PARAMETER timescaledb.enable_compression_wal_markers,
                     timescaledb.enable_chunk_auto_publication,
                     timescaledb.enable_compressed_direct_batch_delete,
                     timescaledb.enable_direct_compress_insert,
                     timescaledb.enable_direct_compress_copy TO {role};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO {role};"
            ),
        )
        .unwrap();
    let mut migrate = util::migrate_until_streaming(&source, &target, "tsrole", &[]);
    // New chunks, written by the role's own sessions.
    cluster
        .psql(
            &src,
            "INSERT INTO m SELECT '2026-03-01'::timestamptz + g * INTERVAL '1 hour', 7, g
               FROM generate_series(1, 100) g;
             UPDATE m SET v = -v WHERE device = 1;",
        )
        .unwrap();
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tsrole",
        ],
        &mut migrate,
    );
    finish(migrate);
    util::assert_table_equal(cluster, &src, cluster, &dst, "m");
}

/// Schema changes of a hypertable made while rows stream arrive on the
/// target: a column added and used in the same transaction and a column
/// renamed are captured and replayed on the target's hypertable (which
/// TimescaleDB carries to its chunks); an index TimescaleDB makes without
/// firing an event trigger is built on the target by cutover, and so are
/// a continuous aggregate (materialized), compression settings and the
/// policies (scheduled) made meanwhile by TimescaleDB's own commands and
/// functions. The table equals the source's row by row, with the same
/// columns, defaults and indexes; dimensions, compression settings,
/// aggregate definitions and jobs equal the source's. (While the migration runs, TimescaleDB refuses to make a new
/// table a hypertable: it is in the migration's publication.)
#[test]
fn schema_changes_of_a_hypertable_are_replayed() {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tsddl",
        "CREATE EXTENSION timescaledb;
         CREATE TABLE m (ts timestamptz NOT NULL, device int NOT NULL, value float8,
                         PRIMARY KEY (device, ts));
         SELECT create_hypertable('m', by_range('ts', INTERVAL '1 day'));
         INSERT INTO m SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', g % 4, g
           FROM generate_series(1, 500) g;
         CREATE MATERIALIZED VIEW m_weekly WITH (timescaledb.continuous) AS
           SELECT time_bucket('7 days', ts) AS week, count(*) AS n FROM m GROUP BY 1;
         CREATE TABLE retired (ts timestamptz NOT NULL, n int);
         SELECT create_hypertable('retired', by_range('ts', INTERVAL '1 day'));
         INSERT INTO retired SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', g FROM generate_series(1, 100) g;
         CREATE TABLE retained (ts timestamptz NOT NULL, n int);
         INSERT INTO retained VALUES ('2026-01-01', 1);",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "tsddl", &[]);
    for sql in [
        "ALTER TABLE m ADD COLUMN unit text DEFAULT 'C';
         INSERT INTO m VALUES ('2026-03-01', 1, 2.5, 'F');",
        "CREATE INDEX m_unit ON m (unit, ts);",
        "ALTER TABLE m RENAME COLUMN value TO reading;
         UPDATE m SET reading = -1 WHERE device = 2 AND ts < '2026-01-05';
         INSERT INTO m VALUES ('2026-04-01', 3, 7, 'K');",
        // Through TimescaleDB's own commands and functions: no event trigger.
        "CREATE MATERIALIZED VIEW m_daily WITH (timescaledb.continuous) AS
           SELECT time_bucket('1 day', ts) AS day, device, max(reading) AS top FROM m GROUP BY 1, 2
           WITH NO DATA;
         SELECT add_continuous_aggregate_policy('m_daily', start_offset => NULL,
           end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour');",
        // Captured commands on what TimescaleDB made without a trace: the
        // aggregate must be on the target before they replay.
        "CREATE VIEW m_daily_top AS SELECT day, max(top) AS top FROM m_daily GROUP BY day;
         COMMENT ON VIEW m_daily IS 'daily maxima';
         GRANT SELECT ON m_daily TO PUBLIC;
         ALTER MATERIALIZED VIEW m_daily SET (timescaledb.materialized_only = false);",
        // TimescaleDB reports it as a DROP VIEW, and forgets the
        // aggregate (or a hypertable) in event triggers of its own.
        "DROP MATERIALIZED VIEW m_weekly;",
        "DROP TABLE retired;",
        "ALTER TABLE m SET (timescaledb.compress, timescaledb.compress_segmentby = 'device');
         SELECT add_compression_policy('m', compress_after => INTERVAL '3000 days');
         INSERT INTO m VALUES ('2026-05-01', 1, 9, 'C');",
    ] {
        cluster
            .psql(&src, &format!("BEGIN; {sql} COMMIT;"))
            .unwrap();
    }
    // A table in a publication cannot become a hypertable (TimescaleDB
    // refuses it): one of the migration's tables is refused, a new one is
    // not (it waits out of the publications to be adopted).
    let refused = cluster.psql(&src, "SELECT create_hypertable('retained', by_range('ts'))");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("part of a publication")),
        "{refused:?}"
    );
    source_ok(
        cluster,
        &src,
        "BEGIN; CREATE TABLE n (ts timestamptz NOT NULL); SELECT create_hypertable('n', by_range('ts')); COMMIT;
         INSERT INTO n SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 day' FROM generate_series(1, 30) g;",
    );
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tsddl",
        ],
        &mut migrate,
    );
    finish(migrate);
    util::assert_table_equal(cluster, &src, cluster, &dst, "m");
    util::assert_table_equal(cluster, &src, cluster, &dst, "n");
    assert_eq!(
        timescale_settings(cluster, &src),
        timescale_settings(cluster, &dst)
    );
    assert_eq!(jobs_scheduled(cluster, &src), jobs_scheduled(cluster, &dst));
    let fresh = "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM (
                   SELECT time_bucket('1 day', ts) AS day, device, max(reading) AS top
                     FROM m GROUP BY 1, 2) r";
    let aggregate =
        "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM (
                       SELECT day, device, top FROM m_daily) r";
    assert_eq!(
        cluster.psql(&dst, fresh).unwrap(),
        cluster.psql(&dst, aggregate).unwrap(),
        "the continuous aggregate made mid-run equals its query on the target"
    );
    let dependents =
        "SELECT pg_get_viewdef('m_daily_top'::regclass), obj_description('m_daily'::regclass)";
    assert_eq!(
        cluster.psql(&src, dependents).unwrap(),
        cluster.psql(&dst, dependents).unwrap()
    );
    let shape = "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                   FROM pg_attribute WHERE attrelid = 'm'::regclass AND attnum > 0 AND NOT attisdropped;
                 SELECT string_agg(pg_get_expr(adbin, adrelid), ', ') FROM pg_attrdef WHERE adrelid = 'm'::regclass;
                 SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'm';
                 SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_name = 'm';";
    assert_eq!(
        cluster.psql(&src, shape).unwrap(),
        cluster.psql(&dst, shape).unwrap()
    );
}

/// Downsampling, TimescaleDB's common pattern: a retention policy drops
/// raw chunks while continuous aggregates keep their buckets. Those buckets
/// cannot be computed again from the target's raw data, so they come from
/// the source's materialization; a chunk the source drops mid-run keeps its
/// buckets too. Pass = both aggregates (one on the other) equal the
/// source's, brought up to date over the raw data it still has.
#[test]
fn continuous_aggregate_buckets_older_than_the_raw_data_are_kept() {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tsdb_history",
        "CREATE EXTENSION timescaledb;
         CREATE TABLE conditions (ts timestamptz NOT NULL, device int NOT NULL, temp float8,
                                  PRIMARY KEY (device, ts));
         SELECT create_hypertable('conditions', by_range('ts', INTERVAL '1 day'));
         INSERT INTO conditions SELECT '2026-01-01'::timestamptz + g * INTERVAL '15 minutes', g % 3, g % 40
           FROM generate_series(0, 20 * 96 - 1) g;
         CREATE MATERIALIZED VIEW conditions_daily WITH (timescaledb.continuous) AS
           SELECT time_bucket('1 day', ts) AS day, device, avg(temp) AS mean, count(*) AS n
             FROM conditions GROUP BY 1, 2 WITH DATA;
         CREATE MATERIALIZED VIEW conditions_weekly WITH (timescaledb.continuous) AS
           SELECT time_bucket('7 days', day) AS week, device, sum(n) AS n
             FROM conditions_daily GROUP BY 1, 2 WITH DATA;
         SELECT drop_chunks('conditions', older_than => '2026-01-11'::timestamptz);
         -- The target's chunks start elsewhere than the source's.
         SELECT set_chunk_time_interval('conditions', INTERVAL '7 days');",
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let history = "SELECT count(*) FROM conditions_daily WHERE day < '2026-01-11'";
    let kept = cluster.psql(&src, history).unwrap();
    assert_ne!(
        kept, "0",
        "the source's aggregate keeps days without raw data"
    );

    let mut migrate = util::migrate_until_streaming(&source, &target, "tsdb_history", &[]);
    for n in 0..60 {
        source_ok(
            cluster,
            &src,
            &format!(
                "INSERT INTO conditions VALUES ('2026-01-21'::timestamptz + {n} * INTERVAL '1 hour', {}, {n});
                 UPDATE conditions SET temp = temp + 1 WHERE ts = '2026-01-15'::timestamptz + {n} * INTERVAL '15 minutes'",
                n % 3
            ),
        );
        if n == 30 {
            // Retention goes on while the migration runs.
            source_ok(
                cluster,
                &src,
                "SELECT drop_chunks('conditions', older_than => '2026-01-12'::timestamptz)",
            );
        }
    }
    util::cutover_ok(
        &[
            "cutover",
            "--source",
            &source,
            "--target",
            &target,
            "--name",
            "tsdb_history",
        ],
        &mut migrate,
    );
    finish(migrate);
    util::assert_table_equal(cluster, &src, cluster, &dst, "conditions");
    // The source's aggregates brought up to date where it has raw data.
    cluster
        .psql(
            &src,
            "CALL refresh_continuous_aggregate('conditions_daily', '2026-01-12'::timestamptz, NULL)",
        )
        .unwrap();
    cluster
        .psql(
            &src,
            "CALL refresh_continuous_aggregate('conditions_weekly', NULL, NULL)",
        )
        .unwrap();
    assert_eq!(cluster.psql(&dst, history).unwrap(), kept);
    for aggregate in ["conditions_daily", "conditions_weekly"] {
        let rows = format!(
            "SELECT count(*) || ' ' || md5(string_agg(r::text, ',' ORDER BY r::text)) FROM {aggregate} r"
        );
        assert_eq!(
            cluster.psql(&src, &rows).unwrap(),
            cluster.psql(&dst, &rows).unwrap(),
            "{aggregate} on the target equals the source's"
        );
    }
}

/// A deployment while the migration streams: a new table made a
/// hypertable at once (TimescaleDB refuses `create_hypertable()` on a table
/// in a publication, and the capture used to publish every new table in
/// its `CREATE`'s transaction, so the application's deployment failed),
/// and a new plain table. Both are carried: the hypertable adopted as soon
/// as streaming sees it, the plain table at cutover, each with the rows
/// written before and after.
#[test]
fn tables_created_while_streaming_may_still_become_hypertables() {
    new_tables_while_streaming("tsdb_new_tables", &[]);
}

/// The same without the capture of schema changes: streaming finds the new
/// tables itself, and makes them on the target from the source's schema.
#[test]
fn tables_created_while_streaming_may_still_become_hypertables_without_capture() {
    new_tables_while_streaming("tsdb_new_uncaptured", &["--ddl", "stop"]);
}

fn new_tables_while_streaming(name: &str, options: &[&str]) {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        name,
        "CREATE EXTENSION timescaledb;
         CREATE TABLE m (ts timestamptz NOT NULL, v int);
         SELECT create_hypertable('m', by_range('ts', INTERVAL '1 day'));
         INSERT INTO m SELECT '2026-01-01'::timestamptz + g * INTERVAL '1 hour', g FROM generate_series(1, 100) g;
         CREATE TABLE swapped (id int PRIMARY KEY, v text);
         INSERT INTO swapped SELECT g, 'old' FROM generate_series(1, 20) g;",
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, name, options);
    source_ok(
        cluster,
        &src,
        "BEGIN;
         CREATE TABLE fresh (ts timestamptz NOT NULL, device int NOT NULL, v float8, PRIMARY KEY (device, ts));
         SELECT create_hypertable('fresh', by_range('ts', INTERVAL '1 day'));
         COMMIT;
         INSERT INTO fresh SELECT '2026-02-01'::timestamptz + g * INTERVAL '20 minutes', g % 4, g
           FROM generate_series(1, 500) g;
         CREATE TABLE plain_new (id int PRIMARY KEY, note text);
         INSERT INTO plain_new SELECT g, 'n' || g FROM generate_series(1, 50) g;
         CREATE TABLE orders (id int PRIMARY KEY, note text);
         CREATE TABLE order_items (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders, qty int);
         INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 30) g;
         INSERT INTO order_items SELECT g, g % 30 + 1, g FROM generate_series(1, 90) g;",
    );
    if options.is_empty() {
        // A table made again under the same name: a new table, copied afresh.
        source_ok(
            cluster,
            &src,
            "CREATE TABLE swapped_new (LIKE swapped INCLUDING ALL);
             INSERT INTO swapped_new SELECT g, 'new' FROM generate_series(1, 40) g;
             ALTER TABLE swapped RENAME TO swapped_old;
             ALTER TABLE swapped_new RENAME TO swapped;
             DROP TABLE swapped_old;",
        );
    }
    for n in 0..40 {
        source_ok(
            cluster,
            &src,
            &format!(
                "INSERT INTO fresh VALUES ('2026-03-01'::timestamptz + {n} * INTERVAL '1 hour', {}, {n});
                 UPDATE fresh SET v = v + 0.5 WHERE ts = '2026-02-01'::timestamptz + {} * INTERVAL '20 minutes';
                 DELETE FROM fresh WHERE ts = '2026-02-01'::timestamptz + {} * INTERVAL '20 minutes';
                 UPDATE plain_new SET note = note || '+' WHERE id = {};
                 INSERT INTO plain_new VALUES ({}, 'late');
                 INSERT INTO m VALUES ('2026-01-10'::timestamptz + {n} * INTERVAL '1 minute', {n});
                 INSERT INTO orders VALUES ({}, 'late'); INSERT INTO order_items VALUES ({}, {}, 1);
                 UPDATE swapped SET v = v || '+' WHERE id = {}",
                n % 4,
                n * 7 + 1,
                n * 11 + 2,
                n + 1,
                n + 1000,
                n + 100,
                n + 1000,
                n + 100,
                n % 20 + 1
            ),
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(migrate.try_wait().unwrap().is_none(), "{}", finish(migrate));
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", name,
        ],
        &mut migrate,
    );
    let said = finish(migrate);
    for table in [
        "m",
        "fresh",
        "plain_new",
        "orders",
        "order_items",
        "swapped",
    ] {
        util::assert_table_equal(cluster, &src, cluster, &dst, table);
    }
    let shape = "SELECT hypertable_name, num_dimensions FROM timescaledb_information.hypertables ORDER BY 1;
                 SELECT column_name, time_interval FROM timescaledb_information.dimensions ORDER BY 1, 2;
                 SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('fresh', 'plain_new') ORDER BY 1";
    assert_eq!(
        cluster.psql(&src, shape).unwrap(),
        cluster.psql(&dst, shape).unwrap(),
        "{said}"
    );
}

/// An adoption stopped between publishing a new table and copying it
/// (pglive killed while its temporary slot waits for a transaction open on
/// the source): the next run takes it up again, and the table arrives
/// whole — its changes since it was published were skipped, the copy has
/// them.
#[test]
fn an_adoption_killed_midway_is_taken_up_again() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tsdb_adopt_kill",
        "CREATE EXTENSION timescaledb;
         CREATE TABLE m (ts timestamptz NOT NULL, v int);
         SELECT create_hypertable('m', by_range('ts', INTERVAL '1 day'));
         -- The chunk exists: a transaction making one holds the publication
         -- (TimescaleDB adds the chunk to it) until it ends.
         INSERT INTO m VALUES ('2026-01-01 12:00', 1);",
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let name = "tsdb_adopt_kill";
    let mut migrate = util::migrate_until_streaming(&source, &target, name, &[]);
    // A transaction open on the source: a slot's creation waits for it.
    let mut open = Command::new(cluster.bin_dir().join("psql"))
        .args(["-X", "-q", &source])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut session = open.stdin.take().unwrap();
    session
        .write_all(b"BEGIN; INSERT INTO m VALUES ('2026-01-01', 0);\n")
        .unwrap();
    session.flush().unwrap();
    source_ok(
        cluster,
        &src,
        "BEGIN;
         CREATE TABLE fresh (ts timestamptz NOT NULL, device int NOT NULL, v int, PRIMARY KEY (device, ts));
         SELECT create_hypertable('fresh', by_range('ts', INTERVAL '1 day'));
         COMMIT;
         INSERT INTO fresh SELECT '2026-02-01'::timestamptz + g * INTERVAL '1 hour', g % 3, g FROM generate_series(1, 200) g;",
    );
    // Published (and recorded as adopting), its copy waiting for the slot.
    let published = "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'fresh'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cluster.psql(&src, published).unwrap() == "0" {
        if std::time::Instant::now() > deadline {
            migrate.kill().ok();
            panic!("fresh was never published: {}", finish(migrate));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    // Changes while nothing runs, and while the next run starts.
    source_ok(
        cluster,
        &src,
        "UPDATE fresh SET v = v + 1000 WHERE device = 1;
         DELETE FROM fresh WHERE device = 2 AND v < 50;
         INSERT INTO fresh VALUES ('2026-03-01', 1, 1)",
    );
    session.write_all(b"COMMIT;\n").unwrap();
    drop(session);
    open.wait().unwrap();
    let mut migrate = util::migrate_until_streaming(&source, &target, name, &[]);
    source_ok(
        cluster,
        &src,
        "UPDATE fresh SET v = v + 1 WHERE device = 0; INSERT INTO fresh VALUES ('2026-03-02', 2, 2)",
    );
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", name,
        ],
        &mut migrate,
    );
    let said = finish(migrate);
    for table in ["m", "fresh"] {
        util::assert_table_equal(cluster, &src, cluster, &dst, table);
    }
    assert!(said.contains("fresh"), "{said}");
}

/// A hypertable with compressed chunks: chunks compressed under the
/// hypertable's current settings (one of them partial: a row inserted
/// after compression) arrive compressed, in the same chunks as on the
/// source; chunks compressed under older settings arrive decompressed;
/// changes in compressed chunks of more rows than TimescaleDB decompresses
/// per statement by default are applied; every row equal at cutover.
#[test]
fn compressed_chunks_arrive_compressed() {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tscompressed",
        "CREATE EXTENSION timescaledb;
         CREATE TABLE samples (ts timestamptz NOT NULL, sensor int NOT NULL, v float8, label text,
                               PRIMARY KEY (sensor, ts));
         SELECT create_hypertable('samples', by_range('ts', INTERVAL '2 days'));
         ALTER TABLE samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'sensor',
                                  timescaledb.compress_orderby = 'ts DESC');
         INSERT INTO samples SELECT '2026-01-01'::timestamptz + g * INTERVAL '2 seconds', g % 2, g,
                                    'l' || (g % 7)
           FROM generate_series(0, 5 * 86400 - 1) g;
         SELECT compress_chunk(c) FROM show_chunks('samples', older_than => '2026-01-03'::timestamptz) c;
         ALTER TABLE samples SET (timescaledb.compress_orderby = 'ts');
         SELECT compress_chunk(c) FROM show_chunks('samples', older_than => '2026-01-09'::timestamptz) c;
         INSERT INTO samples VALUES ('2026-01-04 12:00:00.5', 1, -1, 'partial');",
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    // The source's chunks: range, compressed, compressed under the
    // hypertable's settings now.
    let source_chunks = cluster
        .psql(
            &src,
            "SELECT c.range_start, c.range_end, c.is_compressed,
                    coalesce((SELECT to_jsonb(s) - 'relid' - 'compress_relid'
                                FROM _timescaledb_catalog.compression_settings s
                               WHERE s.relid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass)
                             = (SELECT to_jsonb(s) - 'relid' - 'compress_relid'
                                  FROM _timescaledb_catalog.compression_settings s
                                 WHERE s.relid = 'samples'::regclass), false)
               FROM timescaledb_information.chunks c
              WHERE c.hypertable_name = 'samples' ORDER BY 1",
        )
        .unwrap();
    let source_rows: Vec<Vec<&str>> = source_chunks
        .lines()
        .map(|l| l.split('|').collect())
        .collect();
    assert!(
        source_rows.iter().any(|r| r[2] == "t" && r[3] == "t")
            && source_rows.iter().any(|r| r[2] == "t" && r[3] == "f")
            && source_rows.iter().any(|r| r[2] == "f"),
        "chunks of every kind on the source: {source_chunks}"
    );

    let mut migrate = util::migrate_until_streaming(&source, &target, "tscompressed", &[]);
    let chunk_parts: i64 = cluster
        .psql(
            &dst,
            "SELECT count(*) FROM pglive.copy_parts WHERE table_name = 'samples' AND kind = 'chunks'",
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        chunk_parts > 4,
        "samples is copied chunk by chunk: {chunk_parts}"
    );
    // The target has the source's chunks; those compressed under today's
    // settings are compressed there too, the others are not.
    let expected: Vec<String> = source_rows
        .iter()
        .map(|r| format!("{}|{}|{}", r[0], r[1], r[2] == "t" && r[3] == "t"))
        .collect();
    let target_chunks = cluster
        .psql(
            &dst,
            "SELECT range_start, range_end, is_compressed FROM timescaledb_information.chunks
              WHERE hypertable_name = 'samples' ORDER BY 1",
        )
        .unwrap();
    assert_eq!(
        target_chunks
            .lines()
            .map(|l| l.replace("|t", "|true").replace("|f", "|false"))
            .collect::<Vec<_>>(),
        expected
    );
    // The partial chunk holds its row outside the compressed batches there
    // too.
    let partial = "SELECT count(*) FROM samples WHERE label = 'partial'";
    assert_eq!(cluster.psql(&dst, partial).unwrap(), "1");

    // Changes in compressed chunks (under both settings) and new rows.
    for n in 0..40u64 {
        let at = |day: u64| {
            format!(
                "'2026-01-01'::timestamptz + INTERVAL '{day} days' + {} * INTERVAL '2 seconds'",
                n * 997
            )
        };
        source_ok(
            cluster,
            &src,
            &format!(
                "UPDATE samples SET v = v + 0.5, label = 'upd' WHERE ts = {};
                 DELETE FROM samples WHERE ts = {};
                 UPDATE samples SET label = 'old' WHERE ts = {};
                 INSERT INTO samples VALUES ('2026-02-01'::timestamptz + {n} * INTERVAL '1 hour', 3, {n}, 'new')",
                at(4),
                at(5),
                at(0)
            ),
        );
    }
    util::cutover_ok(
        &[
            "cutover",
            "--source",
            &source,
            "--target",
            &target,
            "--name",
            "tscompressed",
        ],
        &mut migrate,
    );
    finish(migrate);
    util::assert_table_equal(cluster, &src, cluster, &dst, "samples");
    // Applying a change decompressed only what it touched, as on the
    // source: a compressed chunk the workload left alone is still wholly
    // compressed (not partial) on the target.
    let partial = "SELECT i.range_start, c.status & 8 <> 0
                     FROM timescaledb_information.chunks i
                     JOIN _timescaledb_catalog.chunk c
                       ON c.schema_name = i.chunk_schema AND c.table_name = i.chunk_name
                    WHERE i.hypertable_name = 'samples' AND i.is_compressed ORDER BY 1";
    let on_source = cluster.psql(&src, partial).unwrap();
    let on_target = cluster.psql(&dst, partial).unwrap();
    assert!(
        on_target.lines().all(|l| on_source.lines().any(|s| s == l)),
        "partial chunks on the target:\n{on_target}\non the source:\n{on_source}"
    );
    assert!(on_target.lines().any(|l| l.ends_with("|f")), "{on_target}");
}

/// A source with hypertable `table`: eight days of rows in 2-day chunks,
/// those before `compressed_before` compressed.
fn eight_days_compressed(table: &str, compressed_before: &str) -> String {
    format!(
        "CREATE EXTENSION timescaledb;
         CREATE TABLE {table} (ts timestamptz NOT NULL, device int NOT NULL, v float8,
                               PRIMARY KEY (device, ts));
         SELECT create_hypertable('{table}', by_range('ts', INTERVAL '2 days'));
         ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'device');
         INSERT INTO {table} SELECT '2026-01-01'::timestamptz + g * INTERVAL '5 seconds', g % 3, g
           FROM generate_series(0, 8 * 17280 - 1) g;
         SELECT compress_chunk(c)
           FROM show_chunks('{table}', older_than => '{compressed_before}'::timestamptz) c;"
    )
}

/// A copy of a hypertable with compressed chunks, in parts, stopped midway
/// (pglive killed while its last part is held) is done again under the
/// next run's snapshot: the half-copied hypertable is emptied with its
/// chunks and copied whole, with a chunk made on the source between the
/// two runs and a chunk compressed meanwhile.
#[test]
fn a_hypertable_copy_killed_midway_is_copied_again_under_the_next_snapshot() {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tskilled",
        &eight_days_compressed("packed", "2026-01-05"),
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    // Policies that would change chunks the copy has yet to read (or wait
    // for those it read): paused while it runs.
    source_ok(
        cluster,
        &src,
        "SELECT add_compression_policy('packed', compress_after => INTERVAL '400 days');
         SELECT add_retention_policy('packed', drop_after => INTERVAL '4000 days');",
    );
    let scheduled = || {
        cluster
            .psql(
                &src,
                "SELECT string_agg(proc_name || ' ' || scheduled, ', ' ORDER BY proc_name)
                   FROM timescaledb_information.jobs WHERE hypertable_name = 'packed'",
            )
            .unwrap()
    };
    let (running, paused) = (
        "policy_compression true, policy_retention true",
        "policy_compression false, policy_retention false",
    );
    assert_eq!(scheduled(), running);
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let args = [
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "tskilled",
        "--jobs",
        "1",
        "--part-size",
        "1",
    ];
    let mut first = util::spawn(&args);
    // Hold the part a worker takes last (the smallest): the copy does
    // every other one, then waits for it.
    let hold = PartHold::take(
        &target,
        "SELECT state FROM pglive.copy_parts WHERE migration = 'tskilled'
          ORDER BY estimated_bytes, part DESC LIMIT 1 FOR UPDATE NOWAIT",
    );
    let pending = "SELECT count(*) FILTER (WHERE state = 'pending') || '/' || count(*)
                     FROM pglive.copy_parts WHERE migration = 'tskilled'";
    wait_for_one_pending_part(cluster, &dst, pending);
    assert_eq!(scheduled(), paused, "the source's policies during the copy");
    first.kill().unwrap();
    first.wait().unwrap();
    hold.release();
    assert_eq!(
        scheduled(),
        paused,
        "a crash leaves them recorded as paused"
    );
    // Meanwhile on the source: a new chunk, a chunk compressed.
    source_ok(
        cluster,
        &src,
        "INSERT INTO packed VALUES ('2026-03-01', 1, -1), ('2026-03-02', 2, -2);
         SELECT compress_chunk(c) FROM show_chunks('packed', older_than => '2026-01-07'::timestamptz) c;",
    );
    let mut second = util::migrate_until_streaming(
        &source,
        &target,
        "tskilled",
        &["--jobs", "1", "--part-size", "1"],
    );
    assert_eq!(scheduled(), running, "scheduled again once copied");
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tskilled",
        ],
        &mut second,
    );
    let log = finish(second);
    assert!(log.contains("packed"), "{log}");
    util::assert_table_equal(cluster, &src, cluster, &dst, "packed");
    let chunks = "SELECT range_start, range_end, is_compressed FROM timescaledb_information.chunks
                   WHERE hypertable_name = 'packed' ORDER BY 1";
    assert_eq!(
        cluster.psql(&src, chunks).unwrap(),
        cluster.psql(&dst, chunks).unwrap()
    );
}

/// A copy part held locked on the target (workers skip it), until
/// released.
struct PartHold {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl PartHold {
    /// Locks the row `select` (`… FOR UPDATE NOWAIT` of `pglive.copy_parts`,
    /// its first column the part's state) as soon as the copy has planned
    /// it; fails the test unless the part was still pending.
    fn take(target: &str, select: &str) -> PartHold {
        let (held, is_held) = std::sync::mpsc::channel::<bool>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (conninfo, select) = (target.to_owned(), select.to_owned());
        let holder = std::thread::spawn(move || {
            util::block_on(async move {
                let config = pglive_postgres::ConnectConfig::parse(&conninfo).unwrap();
                let client = pglive_postgres::connect_sql(&config).await.unwrap();
                for _ in 0..3000 {
                    client.batch_execute("BEGIN").await.unwrap();
                    if let Ok(Some(row)) = client.query_opt(&select, &[]).await {
                        held.send(row.get::<_, String>(0) == "pending").unwrap();
                        released.recv().ok();
                        client.batch_execute("COMMIT").await.unwrap();
                        return;
                    }
                    client.batch_execute("ROLLBACK").await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                held.send(false).unwrap();
            })
        });
        assert!(
            is_held.recv().unwrap(),
            "the part was held before it was copied"
        );
        PartHold { release, holder }
    }

    /// Lets the copy have the part.
    fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// Waits until `pending` (`pending/all` parts) says one part of several is
/// left.
fn wait_for_one_pending_part(cluster: &Cluster, dst: &str, pending: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let counts = cluster.psql(dst, pending).unwrap();
        if counts.starts_with("1/") {
            assert!(counts != "1/1", "more than one part: {counts}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy did not reach its last part: {counts}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A compressed chunk decompressed on the source after the copy's
/// snapshot, before its part is copied: its rows as of the snapshot cannot
/// be read (TimescaleDB drops the compressed relation), so the copy stops
/// and says so; the next run copies the table under a new snapshot, whole.
#[test]
fn a_chunk_decompressed_on_the_source_during_the_copy_is_not_lost() {
    let cluster = cluster();
    let (src, dst) = util::databases(
        cluster,
        "tsmoved",
        &eight_days_compressed("moved", "2026-01-03"),
    );
    cluster.psql(&dst, "CREATE EXTENSION timescaledb").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let compressed = cluster
        .psql(
            &src,
            "SELECT c.id || ' ' || format('%I.%I', c.schema_name, c.table_name)
               FROM _timescaledb_catalog.chunk c WHERE c.compressed_chunk_id IS NOT NULL",
        )
        .unwrap();
    let (id, chunk) = compressed.split_once(' ').unwrap();
    let args = [
        "migrate", "--source", &source, "--target", &target, "--name", "tsmoved", "--jobs", "1",
    ];
    let mut first = util::spawn(&args);
    let hold = PartHold::take(
        &target,
        &format!(
            "SELECT state FROM pglive.copy_parts WHERE migration = 'tsmoved' AND range_end = {id}
              FOR UPDATE NOWAIT"
        ),
    );
    wait_for_one_pending_part(
        cluster,
        &dst,
        "SELECT count(*) FILTER (WHERE state = 'pending') || '/' || count(*)
           FROM pglive.copy_parts WHERE migration = 'tsmoved'",
    );
    source_ok(
        cluster,
        &src,
        &format!("SELECT decompress_chunk('{chunk}')"),
    );
    hold.release();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while first.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            first.kill().ok();
            let output = first.wait_with_output().unwrap();
            panic!(
                "the copy went on with the chunk decompressed:\n{}",
                util::text(&output)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stopped = first.wait_with_output().unwrap();
    assert!(!stopped.status.success(), "{}", util::text(&stopped));
    assert!(
        util::text(&stopped).contains("was compressed, decompressed or rewritten on the source"),
        "{}",
        util::text(&stopped)
    );
    let mut second = util::migrate_until_streaming(&source, &target, "tsmoved", &["--jobs", "1"]);
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tsmoved",
        ],
        &mut second,
    );
    finish(second);
    util::assert_table_equal(cluster, &src, cluster, &dst, "moved");
}
