//! End to end through the real binary: migrate with a live workload, crash
//! and resume at every stage, a source restart, non-superuser roles over
//! verify-full TLS. Each ends with the target equal to the source, checked
//! by `pglive verify --full` and independently row by row.

use std::time::Duration;

use pglive_testkit::{Cluster, ClusterOptions};

use crate::util::{self, Workload, finish, run, run_ok, spawn, text, wait_for_stage};

/// The schema of these tests (also the example's).
pub(crate) const SCHEMA: &str = "
CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, price numeric, tags text[], doc jsonb,
                    price_x2 numeric GENERATED ALWAYS AS (price * 2) STORED);
CREATE TABLE events (id bigint, day date, note text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE events_a PARTITION OF events FOR VALUES FROM ('2020-01-01') TO ('2025-01-01');
CREATE TABLE events_b PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2030-01-01');
CREATE TABLE log (at timestamptz DEFAULT now(), line text);
ALTER TABLE log REPLICA IDENTITY FULL;
CREATE INDEX ON items (name);
CREATE INDEX ON items ((lower(name)));
";

/// Rows for [`SCHEMA`]'s tables.
pub(crate) fn load(rows: u64) -> String {
    format!(
        "INSERT INTO items (name, price, tags, doc) SELECT 'item ' || g, CASE WHEN g % 50 = 0 THEN 'NaN' ELSE g / 4.0 END,
                ARRAY['t' || g % 5, NULL], jsonb_build_object('g', g) FROM generate_series(1, {rows}) g;
         INSERT INTO events SELECT g, date '2020-01-01' + (g % 3000), repeat('n', 30) FROM generate_series(1, {rows}) g;
         INSERT INTO log (line) SELECT 'line ' || g FROM generate_series(1, {}) g;",
        rows / 10
    )
}

/// The live workload of these tests: inserts, updates, key moves between
/// partitions and deletes.
pub(crate) fn workload_sql(n: u64) -> String {
    let id = 1 + (n * 7919) % 500;
    match n % 5 {
        0 => format!("INSERT INTO items (name, price) VALUES ('live {n}', {n})"),
        1 => {
            format!("UPDATE items SET price = price + 1, tags = tags || 'u'::text WHERE id = {id}")
        }
        2 => format!(
            "BEGIN; DELETE FROM events WHERE id = {id}; INSERT INTO events VALUES ({id}, date '2026-01-01', 'moved'); COMMIT"
        ),
        3 => format!("INSERT INTO log (line) VALUES ('live {n}')"),
        _ => format!("UPDATE events SET day = day + 1 WHERE id = {}", id + 1000),
    }
}

/// Row-by-row equality of every user table, computed by the servers
/// independently of pglive's own verify.
pub(crate) fn assert_same_rows(cluster_s: &Cluster, db_s: &str, cluster_t: &Cluster, db_t: &str) {
    let tables = cluster_s
        .psql(db_s, "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        .unwrap();
    for table in tables.lines() {
        util::assert_table_equal(cluster_s, db_s, cluster_t, db_t, table);
    }
    // Sequences were synchronized at cutover.
    let seq = "SELECT last_value FROM items_id_seq";
    assert_eq!(
        cluster_s.psql(db_s, seq).unwrap(),
        cluster_t.psql(db_t, seq).unwrap()
    );
}

fn no_leftovers(source: &Cluster, db: &str) {
    assert_eq!(
        source
            .psql(
                db,
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
            )
            .unwrap(),
        "0",
        "slot dropped"
    );
    assert_eq!(
        source
            .psql(db, "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "0",
        "publication dropped"
    );
}

#[test]
fn migrate_with_live_workload_then_cutover_and_verify() {
    let cluster = Cluster::shared();
    let src = cluster.create_database("e2e_src").unwrap();
    let dst = cluster.create_database("e2e_dst").unwrap();
    cluster.psql(&src, SCHEMA).unwrap();
    cluster.psql(&src, &load(20_000)).unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let workload = Workload::start(source.clone(), workload_sql);
    let migrate = util::migrate_until_streaming(&source, &target, "e2e", &["--jobs", "2"]);
    std::thread::sleep(Duration::from_secs(2));
    let writes = workload.stop();
    assert!(writes > 50, "the workload ran ({writes} transactions)");
    let cutover = run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "e2e",
    ]);
    assert!(cutover.contains("switch your application now"), "{cutover}");
    let log = finish(migrate);
    assert!(log.contains("copy:") && log.contains("post-data:"), "{log}");
    // Post-data reports each object as its build starts (the last one
    // always, whatever the throttle).
    assert!(log.contains("post-data: building"), "{log}");
    assert!(log.contains("the target needs about"), "{log}");
    let verify = run_ok(&["verify", "--source", &source, "--target", &target, "--full"]);
    assert!(verify.contains("equal"), "{verify}");
    assert_same_rows(cluster, &src, cluster, &dst);
    no_leftovers(cluster, &src);
    // The copied tables were analyzed before streaming began.
    let unanalyzed = cluster
        .psql(
            &dst,
            "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = 'public' AND last_analyze IS NULL",
        )
        .unwrap();
    assert_eq!(unanalyzed, "0");
    // The status of a finished migration still reads from the target.
    let status = run_ok(&["status", "--target", &target, "--name", "e2e"]);
    assert!(status.contains("stage done"), "{status}");
    // Clean is idempotent.
    run_ok(&[
        "clean", "--source", &source, "--target", &target, "--name", "e2e",
    ]);
    let again = run_ok(&[
        "clean", "--source", &source, "--target", &target, "--name", "e2e",
    ]);
    assert!(again.contains("nothing to clean"), "{again}");
}

#[test]
fn kill_9_in_copy_post_data_and_streaming_then_resume() {
    let cluster = Cluster::shared();
    let src = cluster.create_database("kill_src").unwrap();
    let dst = cluster.create_database("kill_dst").unwrap();
    cluster.psql(&src, SCHEMA).unwrap();
    cluster.psql(&src, &load(200_000)).unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let args = [
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "k",
        "--jobs",
        "2",
        "--index-jobs",
        "1",
    ];
    let workload = Workload::start(source.clone(), workload_sql);
    let mut killed_at = Vec::new();
    for stages in [&["copy"][..], &["post-data"][..], &["streaming"][..]] {
        let mut child = spawn(&args);
        let reached = wait_for_stage(
            &target,
            "k",
            &[stages[0], "streaming"],
            &mut child,
            Duration::from_secs(180),
        );
        if stages[0] == "streaming" {
            std::thread::sleep(Duration::from_secs(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed_at.push(reached);
    }
    eprintln!("killed during: {killed_at:?}");
    assert!(
        killed_at.contains(&"copy".to_owned()),
        "a kill landed during the copy"
    );
    let mut migrate = spawn(&args);
    wait_for_stage(
        &target,
        "k",
        &["streaming"],
        &mut migrate,
        Duration::from_secs(180),
    );
    std::thread::sleep(Duration::from_secs(1));
    workload.stop();
    run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "k",
    ]);
    let log = finish(migrate);
    assert!(log.contains("resuming migration"), "{log}");
    run_ok(&["verify", "--source", &source, "--target", &target, "--full"]);
    assert_same_rows(cluster, &src, cluster, &dst);
    no_leftovers(cluster, &src);
}

#[test]
fn the_source_restarting_mid_stream_loses_nothing() {
    let source_cluster = Cluster::start(ClusterOptions::new()).unwrap();
    let target_cluster = Cluster::shared();
    let src = source_cluster.create_database("restart_src").unwrap();
    let dst = target_cluster.create_database("restart_dst").unwrap();
    source_cluster.psql(&src, SCHEMA).unwrap();
    source_cluster.psql(&src, &load(5_000)).unwrap();
    let (source, target) = (source_cluster.conninfo(&src), target_cluster.conninfo(&dst));
    let workload = Workload::start(source.clone(), workload_sql);
    let migrate = util::migrate_until_streaming(&source, &target, "r", &[]);
    std::thread::sleep(Duration::from_secs(1));
    source_cluster.restart().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let writes = workload.stop();
    assert!(writes > 20);
    run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "r",
    ]);
    let log = finish(migrate);
    assert!(
        log.contains("reconnecting"),
        "pglive noticed the restart:\n{log}"
    );
    assert_same_rows(&source_cluster, &src, target_cluster, &dst);
}

/// A backlog applied while the source writes nothing more: "when ready" is
/// when every row is applied, not when the source next writes. The source's
/// last WAL (a checkpoint, a snapshot of running transactions: nothing
/// decoding sends) arrives while apply waits for a table a target session
/// holds, as on a production target; then the source is quiet (autovacuum
/// off) and the target free. Source and target on separate servers: on one
/// server the target's own WAL keeps the source's stream moving.
#[test]
fn a_backlog_on_a_quiet_source_is_cut_over_when_ready() {
    let source_cluster =
        Cluster::start(ClusterOptions::new().setting("autovacuum", "off")).unwrap();
    let target_cluster = Cluster::shared();
    let src = source_cluster.create_database("quiet_src").unwrap();
    let dst = target_cluster.create_database("quiet_dst").unwrap();
    source_cluster.psql(&src, SCHEMA).unwrap();
    source_cluster.psql(&src, &load(1_000)).unwrap();
    let (source, target) = (source_cluster.conninfo(&src), target_cluster.conninfo(&dst));
    let migrate = util::migrate_until_streaming(&source, &target, "quiet", &[]);
    let stopped = util::interrupt(migrate);
    assert_eq!(stopped.status.code(), Some(5), "{}", text(&stopped));
    for from in (0..100_000).step_by(10_000) {
        source_cluster
            .psql(
                &src,
                &format!(
                    "INSERT INTO events SELECT g, date '2026-01-01' + g % 1000, 'backlog'
                       FROM generate_series({}, {}) g",
                    1_000_000 + from,
                    1_000_000 + from + 9_999
                ),
            )
            .unwrap();
    }
    source_cluster.psql(&src, "VACUUM").unwrap();
    source_cluster.psql(&src, "CHECKPOINT").unwrap();
    let locker_db = dst.clone();
    let locker = std::thread::spawn(move || {
        target_cluster.psql(
            &locker_db,
            "SET application_name = 'locker'; BEGIN; LOCK TABLE events_b; SELECT pg_sleep(600);",
        )
    });
    let target_sql = |sql: &str| target_cluster.psql(&dst, sql).unwrap();
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("the target table is held", &|| {
        target_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'locker' AND wait_event = 'PgSleep'",
        ) == "1"
    });
    let mut migrate = spawn(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "quiet",
        "--cutover-when-ready",
    ]);
    until("apply waits for the held table", &|| {
        target_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        ) != "0"
    });
    // What the source still writes on its own after writes (the background
    // writer's snapshot of running transactions, at most 15 s later) comes
    // while apply waits; then pglive has been sent everything.
    std::thread::sleep(Duration::from_secs(16));
    until("the source sent its whole WAL", &|| {
        source_cluster
            .psql(
                &src,
                "SELECT count(*) FROM pg_stat_replication WHERE write_lsn >= pg_current_wal_lsn()",
            )
            .unwrap()
            == "1"
    });
    assert!(migrate.try_wait().unwrap().is_none());
    target_sql(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'",
    );
    assert!(
        locker.join().unwrap().is_err(),
        "the lock was held until cancelled"
    );
    let log = util::finish_within(migrate, Duration::from_secs(60));
    assert!(log.contains("switch your application now"), "{log}");
    assert_same_rows(&source_cluster, &src, target_cluster, &dst);
}

#[test]
fn non_superuser_roles_over_verify_full_tls() {
    let cluster = Cluster::start(ClusterOptions::new().ssl(true).password_auth(true)).unwrap();
    let role = cluster.role().unwrap().clone();
    let src = cluster.create_database("tls_src").unwrap();
    let dst = cluster.create_database("tls_dst").unwrap();
    let ca = cluster.ca_cert().unwrap().display().to_string();
    let tls = format!(" sslmode=verify-full sslrootcert={ca}");
    let source = cluster.role_conninfo(&src).unwrap() + &tls;
    let target = cluster.role_conninfo(&dst).unwrap() + &tls;
    // The role owns its tables (a managed database's usual setup) and has
    // REPLICATION but no superuser rights, on both sides.
    cluster
        .psql_as(&source, Some(&role.password), SCHEMA)
        .unwrap();
    cluster
        .psql_as(&source, Some(&role.password), &load(2_000))
        .unwrap();
    // An event trigger a superuser made on the source: a target role that is
    // none cannot make it, which the cutover says without failing.
    cluster
        .psql_as(
            &source,
            Some(&role.password),
            "CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$ BEGIN END $f$",
        )
        .unwrap();
    cluster
        .psql(
            &src,
            "CREATE EVENT TRIGGER audit ON ddl_command_end EXECUTE FUNCTION note_ddl()",
        )
        .unwrap();
    let workload = Workload::start(source.clone(), workload_sql);
    let mut migrate = util::migrate_until_streaming(&source, &target, "tls", &[]);
    std::thread::sleep(Duration::from_secs(1));
    workload.stop();
    // A role that does not own the source database cannot fence it: said
    // before anything changes, and the migration streams on.
    let owner = |to: &str| {
        cluster
            .psql("postgres", &format!("ALTER DATABASE {src} OWNER TO {to}"))
            .unwrap()
    };
    owner(cluster.superuser());
    let refused = run(&[
        "cutover", "--source", &source, "--target", &target, "--name", "tls", "--fence",
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("may not ALTER DATABASE")
            && text(&refused).contains("nothing was changed"),
        "{}",
        text(&refused)
    );
    assert!(migrate.try_wait().unwrap().is_none(), "migrate goes on");
    owner(&role.user);
    let cutover = util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "tls",
        ],
        &mut migrate,
    );
    assert!(!cutover.contains(&role.password), "no password in output");
    let log = finish(migrate);
    assert!(!log.contains(&role.password), "no password in output");
    assert!(
        log.contains(
            "not created, as only a superuser may run it on the target: CREATE EVENT TRIGGER"
        ),
        "{log}"
    );
    run_ok(&["verify", "--source", &source, "--target", &target, "--full"]);
    assert_same_rows(&cluster, &src, &cluster, &dst);
    let output = run(&["status", "--target", &target, "--name", "tls", "--json"]);
    assert!(!text(&output).contains(&role.password));
}

#[test]
fn ctrl_c_pauses_at_a_transaction_boundary_and_fence_blocks_writes() {
    let cluster = Cluster::shared();
    let src = cluster.create_database("pause_src").unwrap();
    let dst = cluster.create_database("pause_dst").unwrap();
    cluster.psql(&src, SCHEMA).unwrap();
    cluster.psql(&src, &load(2_000)).unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let args = [
        "migrate", "--source", &source, "--target", &target, "--name", "p",
    ];
    let workload = Workload::start(source.clone(), workload_sql);
    let mut migrate = spawn(&args);
    wait_for_stage(
        &target,
        "p",
        &["streaming"],
        &mut migrate,
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(500));
    // Ctrl-C: the documented exit code 5, and a resumable state.
    let output = util::interrupt(migrate);
    assert_eq!(output.status.code(), Some(5), "{}", text(&output));
    assert!(text(&output).contains("resume"), "{}", text(&output));
    // Status tells how much WAL the slot holds on the source.
    let status = run_ok(&["status", "--target", &target, "--name", "p"]);
    assert!(
        status.contains("slot: holds") && status.contains("of WAL on the source (reserved"),
        "{status}"
    );

    let mut migrate = spawn(&args);
    util::wait_until_running(&target, "p", &mut migrate, Duration::from_secs(60));
    // Cut over with a fence while the workload still writes: the source
    // becomes read-only, its sessions end, nothing written is lost.
    let cutover = run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "p", "--fence",
    ]);
    assert!(cutover.contains("switch your application now"), "{cutover}");
    let writes = workload.stop();
    assert!(writes > 10);
    finish(migrate);
    assert_same_rows(cluster, &src, cluster, &dst);
    let refused = cluster.psql(&src, "INSERT INTO log (line) VALUES ('after the fence')");
    assert!(refused.is_err(), "the fenced source refuses writes");
    // --abort lifts the fence.
    run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "p", "--abort",
    ]);
    cluster
        .psql(&src, "INSERT INTO log (line) VALUES ('writable again')")
        .unwrap();
}

/// `c` + Enter in the terminal running `migrate` cuts over, as `pglive
/// cutover` from another shell would. `script` gives migrate a terminal.
#[test]
fn cutover_typed_in_the_migrate_terminal() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cluster = Cluster::shared();
    let src = cluster.create_database("keys_src").unwrap();
    let dst = cluster.create_database("keys_dst").unwrap();
    cluster.psql(&src, SCHEMA).unwrap();
    cluster.psql(&src, &load(2_000)).unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let workload = Workload::start(source.clone(), workload_sql);
    let line = format!(
        "'{}' migrate --source '{source}' --target '{target}' --name keys",
        env!("CARGO_BIN_EXE_pglive")
    );
    let mut migrate = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    wait_for_stage(
        &target,
        "keys",
        &["streaming"],
        &mut migrate,
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(1));
    let writes = workload.stop();
    assert!(writes > 10, "the workload ran ({writes} transactions)");
    let mut keyboard = migrate.stdin.take().unwrap();
    keyboard.write_all(b"c\n").unwrap();
    keyboard.flush().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while migrate.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            migrate.kill().ok();
            panic!("migrate did not cut over after c + Enter");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = finish(migrate);
    assert!(log.contains("type c + Enter"), "{log}");
    drop(keyboard);
    assert_eq!(util::stage(&target, "keys").as_deref(), Some("done"));
    assert_same_rows(cluster, &src, cluster, &dst);
    no_leftovers(cluster, &src);
}

/// A table without a key never breaks the source: its UPDATEs and DELETEs
/// keep working while the migration runs (it is published for inserts
/// only), its inserts arrive, and cutover names it as changed.
#[test]
fn keyless_table_updated_during_the_migration() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "keyless", "CREATE TABLE readings (at int, value text); INSERT INTO readings SELECT g, 'v' FROM generate_series(1, 100) g;
             CREATE TABLE keyed (id int PRIMARY KEY, v text); INSERT INTO keyed VALUES (1, 'a');");
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "kl", &[]);
    cluster
        .psql(
            &src,
            "INSERT INTO readings VALUES (101, 'new'); UPDATE readings SET value = 'changed' WHERE at <= 3;
             DELETE FROM readings WHERE at = 4; UPDATE keyed SET v = 'b'",
        )
        .expect("the source accepts UPDATE and DELETE of a keyless table during the migration");
    // Statistics reach the shared counters within a second of the session's end.
    std::thread::sleep(Duration::from_millis(1500));
    let cutover = util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "kl",
        ],
        &mut migrate,
    );
    let log = finish(migrate);
    assert!(
        log.contains("\"public\".\"readings\" has no primary key")
            && log.contains("received 4 UPDATE/DELETE"),
        "{log}"
    );
    assert!(cutover.contains("keyless"), "{cutover}");
    assert_eq!(
        cluster.psql(&dst, "SELECT v FROM keyed").unwrap(),
        "b",
        "keyed tables' updates arrive"
    );
    assert_eq!(
        cluster
            .psql(&dst, "SELECT count(*) FROM readings WHERE at = 101")
            .unwrap(),
        "1",
        "keyless tables' inserts arrive"
    );
    no_leftovers(cluster, &src);
}

/// `--include` is part of the migration: a standalone `cutover` (no
/// `migrate` running) and `verify` work on the included tables only, and
/// sequence synchronization leaves the other tables' sequences alone.
/// `clean` of another migration's name leaves this one's state alone.
#[test]
fn filters_are_kept_and_clean_removes_only_its_own_migration() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "filter", "CREATE TABLE kept (id serial PRIMARY KEY, v text); INSERT INTO kept (v) SELECT 'k' FROM generate_series(1, 100);
             CREATE TABLE left_out (id serial PRIMARY KEY, v text); INSERT INTO left_out (v) SELECT 'l' FROM generate_series(1, 100);");
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate =
        util::migrate_until_streaming(&source, &target, "f", &["--include", "public.kept"]);
    // Cleaning another migration on the same target keeps this one's state.
    let cleaned = run_ok(&[
        "clean",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "someone_else",
    ]);
    assert!(
        !cleaned.contains("dropped the pglive state schema"),
        "{cleaned}"
    );
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    cluster
        .psql(
            &src,
            "INSERT INTO kept (v) VALUES ('late'); INSERT INTO left_out (v) VALUES ('late')",
        )
        .unwrap();
    let cutover = run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "f",
    ]);
    assert!(
        cutover.contains("1 tables"),
        "only the included table: {cutover}"
    );
    assert_eq!(
        cluster
            .psql(&dst, "SELECT count(*), max(id) FROM kept")
            .unwrap(),
        "101|101"
    );
    assert_eq!(
        cluster
            .psql(&dst, "SELECT last_value FROM kept_id_seq")
            .unwrap(),
        "101"
    );
    assert_eq!(
        cluster
            .psql(&dst, "SELECT to_regclass('left_out') IS NULL")
            .unwrap(),
        "t"
    );
    let verify = run_ok(&[
        "verify", "--source", &source, "--target", &target, "--name", "f", "--full",
    ]);
    assert!(verify.contains("verified 1 tables"), "{verify}");
    no_leftovers(cluster, &src);
}

/// The source's event triggers reach the target at cutover, as the source
/// has them (enabled, always, disabled, with their tags and comment):
/// before, pglive's own schema work there would fire them.
#[test]
fn event_triggers_reach_the_target_at_cutover() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "evt",
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$ BEGIN END $f$;
         CREATE EVENT TRIGGER evt_on ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
           EXECUTE FUNCTION note_ddl();
         COMMENT ON EVENT TRIGGER evt_on IS 'audit';
         CREATE EVENT TRIGGER evt_always ON sql_drop EXECUTE FUNCTION note_ddl();
         ALTER EVENT TRIGGER evt_always ENABLE ALWAYS;
         CREATE EVENT TRIGGER evt_off ON ddl_command_start EXECUTE FUNCTION note_ddl();
         ALTER EVENT TRIGGER evt_off DISABLE;",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let states = "SELECT coalesce(string_agg(evtname || ' ' || evtevent || ' ' || evtenabled::text || ' '
                                  || coalesce(evttags::text, '') || ' ' || coalesce(obj_description(oid, 'pg_event_trigger'), ''),
                                  ', ' ORDER BY evtname), 'none')
                    FROM pg_event_trigger WHERE evtname LIKE 'evt_%'";
    let mut migrate = util::migrate_until_streaming(&source, &target, "evt", &[]);
    assert_eq!(cluster.psql(&dst, states).unwrap(), "none");
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "evt",
        ],
        &mut migrate,
    );
    let log = finish(migrate);
    assert!(
        log.contains("3 event trigger(s) of the source created"),
        "{log}"
    );
    assert_eq!(
        cluster.psql(&dst, states).unwrap(),
        cluster.psql(&src, states).unwrap()
    );
}

/// Both sides of `tables`, row by row.
fn assert_tables_equal(cluster: &Cluster, src: &str, dst: &str, tables: &[&str]) {
    for table in tables {
        util::assert_table_equal(cluster, src, cluster, dst, table);
    }
}

/// Tables and partitions created on the source while a superuser's
/// unfiltered migration streams (FOR ALL TABLES) are copied and streamed
/// from there: inserts, updates and deletes before and after they joined
/// arrive exactly once.
#[test]
fn tables_created_mid_run_are_carried() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "newtab",
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'a');
             CREATE TABLE ev (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
             CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             INSERT INTO ev VALUES (1, '2025-02-01');",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    // Without DDL capture: tables arrive by adoption (with capture they
    // arrive through their CREATE, see `ddl::schema_changes_are_replayed_in_stream_order`).
    let mut migrate = util::migrate_until_streaming(&source, &target, "nt", &["--ddl", "stop"]);
    cluster
        .psql(
            &src,
            "CREATE TABLE b (id int PRIMARY KEY, v text);
             INSERT INTO b SELECT g, 'b' FROM generate_series(1, 50) g;
             UPDATE b SET v = 'early' WHERE id <= 5;
             CREATE TABLE ev_2026 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             INSERT INTO ev SELECT g, '2026-03-01' FROM generate_series(2, 20) g;
             CREATE TABLE loose (at int, note text); INSERT INTO loose VALUES (1, 'x');
             CREATE TABLE scratchpad (id int PRIMARY KEY); INSERT INTO scratchpad VALUES (1); DROP TABLE scratchpad;
             BEGIN; INSERT INTO a VALUES (2, 'parent');
             CREATE TABLE child (id int PRIMARY KEY, a_id int REFERENCES a); INSERT INTO child VALUES (1, 2); COMMIT;",
        )
        .unwrap();
    // As if an adoption had stopped after it created the table: it goes on.
    let half_done = "CREATE TABLE c (id int PRIMARY KEY, v text)";
    cluster.psql(&dst, half_done).unwrap();
    cluster
        .psql(&src, &format!("{half_done}; INSERT INTO c VALUES (1, 'c')"))
        .unwrap();
    for table in ["b", "ev_2026", "loose", "c", "child"] {
        util::wait_until_copied(cluster, &dst, table, &mut migrate);
    }
    cluster
        .psql(
            &src,
            "UPDATE b SET v = 'late' WHERE id BETWEEN 3 AND 8; DELETE FROM b WHERE id = 50;
             INSERT INTO b VALUES (51, 'new'); UPDATE ev SET id = id + 100 WHERE day = '2026-03-01' AND id < 5;
             INSERT INTO loose VALUES (2, 'y'); UPDATE a SET v = 'still'",
        )
        .unwrap();
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "nt",
        ],
        &mut migrate,
    );
    let log = finish(migrate);
    assert!(log.contains("new table(s)"), "{log}");
    assert_tables_equal(
        cluster,
        &src,
        &dst,
        &["a", "b", "ev", "loose", "c", "child"],
    );
    // The new table's foreign key was built once its parent row arrived.
    assert_eq!(
        cluster
            .psql(&dst, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'child'::regclass AND contype = 'f'")
            .unwrap(),
        "1"
    );
}

/// Without FOR ALL TABLES (a role that is not a superuser), a table created
/// mid-run is added to the publications, then copied and streamed.
#[test]
fn a_table_created_mid_run_outside_the_publication_is_carried() {
    let cluster = Cluster::start(ClusterOptions::new().password_auth(true)).unwrap();
    let role = cluster.role().unwrap().clone();
    let src = cluster.create_database("newpub_src").unwrap();
    let dst = cluster.create_database("newpub_dst").unwrap();
    let source = cluster.role_conninfo(&src).unwrap();
    let target = cluster.role_conninfo(&dst).unwrap();
    cluster
        .psql_as(
            &source,
            Some(&role.password),
            "CREATE TABLE a (id int PRIMARY KEY)",
        )
        .unwrap();
    let mut migrate = util::migrate_until_streaming(&source, &target, "np", &[]);
    cluster
        .psql_as(
            &source,
            Some(&role.password),
            "CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late SELECT g, 'x' FROM generate_series(1, 30) g",
        )
        .unwrap();
    util::wait_until_copied(&cluster, &dst, "late", &mut migrate);
    cluster
        .psql_as(
            &source,
            Some(&role.password),
            "UPDATE late SET v = 'y' WHERE id < 10; DELETE FROM late WHERE id = 30; INSERT INTO a VALUES (1)",
        )
        .unwrap();
    let cutover = util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "np",
        ],
        &mut migrate,
    );
    assert!(!cutover.contains(&role.password), "no password in output");
    let log = finish(migrate);
    assert!(!log.contains(&role.password), "no password in output");
    assert_tables_equal(&cluster, &src, &dst, &["a", "late"]);
}

/// A source with `max_slot_wal_keep_size` gets a warning before the copy,
/// and a slot it invalidated (while nothing read it) is a clear error with
/// the way forward, not a cryptic replication failure.
#[test]
fn a_slot_the_source_invalidated_is_a_clear_error() {
    let cluster =
        Cluster::start(ClusterOptions::new().setting("max_slot_wal_keep_size", "1MB")).unwrap();
    let (src, dst) = util::databases(&cluster, "lost", &format!("{SCHEMA}{}", load(100_000)));
    // A source that has written plenty of WAL since it started: the copy's
    // share of it passes the 1 MB limit whatever the machine's speed.
    cluster
        .psql(
            "postgres",
            "CREATE TABLE history (pad text); INSERT INTO history SELECT repeat('h', 1000) FROM generate_series(1, 200000)",
        )
        .unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let migrate = util::migrate_until_streaming(&source, &target, "lost", &[]);
    let output = util::interrupt(migrate);
    assert!(
        text(&output).contains("max_slot_wal_keep_size = 1MB"),
        "{}",
        text(&output)
    );
    // Far more WAL than the limit while nothing reads the slot.
    let lost = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lost'";
    for _ in 0..10 {
        if cluster.psql(&src, lost).unwrap() == "lost" {
            break;
        }
        cluster
            .psql(
                "postgres",
                "INSERT INTO history SELECT repeat('x', 1000) FROM generate_series(1, 20000);
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .unwrap();
    }
    assert_eq!(cluster.psql(&src, lost).unwrap(), "lost");
    let again = run(&[
        "migrate", "--source", &source, "--target", &target, "--name", "lost",
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    let said = text(&again);
    assert!(
        said.contains("invalidated by the source") && said.contains("pglive clean"),
        "{said}"
    );
}
