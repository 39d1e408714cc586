//! The fence through the real binary: refused before anything changes
//! when a role's own setting would write through it or prepared
//! transactions are open, lifted by every cutover that does not finish,
//! lifted by `--abort` after the process died with it up, and kept after a
//! finished cutover.

use std::time::{Duration, Instant};

use pglive_testkit::{Cluster, ClusterOptions};

use crate::migrate::{SCHEMA, assert_same_rows, load, workload_sql};
use crate::util::{self, Workload, finish, run, run_ok, spawn, text};

/// Whether the source database carries the fence's setting.
fn fenced(cluster: &Cluster, db: &str) -> bool {
    cluster
        .psql(
            db,
            "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c
              WHERE s.setrole = 0 AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND c LIKE 'default_transaction_read_only=%'",
        )
        .unwrap()
        != "0"
}

fn writable(cluster: &Cluster, db: &str) -> bool {
    cluster
        .psql(db, "INSERT INTO log (line) VALUES ('a write')")
        .is_ok()
}

#[test]
fn a_fenced_cutover_that_fails_lifts_the_fence_and_streaming_goes_on() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "fence", &format!("{SCHEMA}{}", load(2_000)));
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    // Without DDL capture, so that a sequence created on the source below
    // is missing on the target and fails a step under the fence.
    let mut migrate = util::migrate_until_streaming(&source, &target, "f", &["--ddl", "stop"]);
    let cutover = [
        "cutover", "--source", &source, "--target", &target, "--name", "f", "--fence",
    ];

    // A role whose own setting starts its sessions writable: refused,
    // nothing changed.
    let role = format!("{src}_writer");
    cluster
        .psql(
            &src,
            &format!(
                "CREATE ROLE {role} LOGIN; ALTER ROLE {role} IN DATABASE {src} SET default_transaction_read_only = off"
            ),
        )
        .unwrap();
    let refused = run(&cutover);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&role) && said.contains("RESET default_transaction_read_only"),
        "{said}"
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert!(!fenced(cluster, &src) && writable(cluster, &src));
    assert!(migrate.try_wait().unwrap().is_none(), "migrate goes on");
    cluster
        .psql(
            &src,
            &format!("ALTER ROLE {role} IN DATABASE {src} RESET default_transaction_read_only; DROP ROLE {role}"),
        )
        .unwrap();

    // Counts that differ (the target holds a row the source does not) stop
    // the cutover before the fence: nothing to lift, migrate streams on.
    cluster
        .psql(&dst, "INSERT INTO log (line) VALUES ('only on the target')")
        .unwrap();
    let workload = Workload::start(source.clone(), workload_sql);
    std::thread::sleep(Duration::from_millis(500));
    let failed = run(&cutover);
    assert!(!failed.status.success());
    let said = text(&failed);
    assert!(
        said.contains("could not cut over") && said.contains("row counts differ"),
        "{said}"
    );
    assert!(!fenced(cluster, &src) && writable(cluster, &src));
    assert!(migrate.try_wait().unwrap().is_none(), "migrate goes on");
    assert_eq!(util::stage(&target, "f").as_deref(), Some("streaming"));
    cluster
        .psql(&dst, "DELETE FROM log WHERE line = 'only on the target'")
        .unwrap();

    // A step that fails under the fence (a sequence created on the source
    // since the schema was copied, not captured, cannot be set on the
    // target): the fence
    // is lifted, the cutover withdrawn, and migrate streams on.
    cluster.psql(&src, "CREATE SEQUENCE made_mid_run").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let failed = run(&cutover);
    assert!(!failed.status.success());
    let said = text(&failed);
    assert!(
        said.contains("made_mid_run") && said.contains("any fence it raised lifted"),
        "{said}"
    );
    assert!(!fenced(cluster, &src) && writable(cluster, &src));
    assert!(migrate.try_wait().unwrap().is_none(), "migrate goes on");

    // Mended, the same command finishes; the source stays read-only.
    cluster.psql(&dst, "CREATE SEQUENCE made_mid_run").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let done = util::cutover_ok(&cutover, &mut migrate);
    assert!(done.contains("switch your application now"), "{done}");
    workload.stop();
    let log = finish(migrate);
    assert!(log.contains("the fence is lifted"), "{log}");
    assert_same_rows(cluster, &src, cluster, &dst);
    assert!(fenced(cluster, &src) && !writable(cluster, &src));
    // `--abort` after a finished cutover lifts its fence.
    run_ok(&[
        "cutover", "--source", &source, "--target", &target, "--name", "f", "--abort",
    ]);
    assert!(!fenced(cluster, &src) && writable(cluster, &src));
}

#[test]
fn prepared_transactions_stop_the_cutover_and_a_fence_left_by_a_crash_is_lifted() {
    // Prepared transactions need a server that allows them.
    let cluster: &'static Cluster = Box::leak(Box::new(
        Cluster::start(ClusterOptions::new().setting("max_prepared_transactions", "4")).unwrap(),
    ));
    let (src, dst) = util::databases(cluster, "prepared", &format!("{SCHEMA}{}", load(1_000)));
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let migrate = util::migrate_until_streaming(&source, &target, "p", &[]);
    // Stopped: the cutovers below run on sessions of their own.
    util::interrupt(migrate);
    // State an earlier pglive wrote (version 1 of the migration's tables)
    // is brought up by whichever command reads it first.
    cluster
        .psql(
            &dst,
            "ALTER TABLE pglive.migration DROP COLUMN fence_raised, DROP COLUMN fence_prior,
                 DROP COLUMN finishing, DROP COLUMN cutover_error, DROP COLUMN slot_wal;
             UPDATE pglive.schema_version SET version = 1 WHERE component = 'migrate'",
        )
        .unwrap();
    let status = run_ok(&["status", "--target", &target, "--name", "p"]);
    assert!(status.contains("stage streaming"), "{status}");
    cluster
        .psql(
            &src,
            "BEGIN; INSERT INTO items (name, price) VALUES ('prepared', 1); PREPARE TRANSACTION 'held_by_app'",
        )
        .unwrap();
    let cutover = [
        "cutover", "--source", &source, "--target", &target, "--name", "p", "--fence",
    ];

    // Refused before anything changes: the consistent point would wait for
    // it, and its COMMIT PREPARED could land after the cutover.
    let refused = run(&cutover);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(said.contains("held_by_app"), "{said}");
    assert!(!fenced(cluster, &src) && writable(cluster, &src));
    cluster.psql(&src, "COMMIT PREPARED 'held_by_app'").unwrap();

    // Killed with the fence up: the fence stays, recorded; `status` says
    // so and `--abort` lifts it.
    let mut waiting = spawn(&cutover);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fenced(cluster, &src) {
        assert!(Instant::now() < deadline, "the fence never went up");
        assert!(
            waiting.try_wait().unwrap().is_none(),
            "cutover exited early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    assert!(fenced(cluster, &src));
    let status = run_ok(&["status", "--target", &target, "--name", "p", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["source_fenced"], true, "{status}");
    assert_eq!(status["stage"], "cutover", "{status}");
    let aborted = run(&[
        "cutover", "--source", &source, "--target", &target, "--name", "p", "--abort",
    ]);
    assert!(aborted.status.success());
    assert!(
        text(&aborted).contains("fence is lifted"),
        "{}",
        text(&aborted)
    );
    assert!(!fenced(cluster, &src) && writable(cluster, &src));

    // The committed prepared row is carried by the next cutover.
    let done = run_ok(&cutover);
    assert!(done.contains("switch your application now"), "{done}");
    assert_same_rows(cluster, &src, cluster, &dst);
    assert!(fenced(cluster, &src));
    let cleaned = run_ok(&[
        "clean", "--source", &source, "--target", &target, "--name", "p",
    ]);
    assert!(cleaned.contains("stays read-only"), "{cleaned}");
}

/// A pglive stopped between dropping the slot and recording `done` (its
/// checks passed, its summary recorded) leaves a migration the next run
/// finishes, instead of one whose slot is gone.
#[test]
fn a_cutover_stopped_after_dropping_its_slot_is_finished_by_the_next_run() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "finishing", &format!("{SCHEMA}{}", load(500)));
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let migrate = util::migrate_until_streaming(&source, &target, "fin", &[]);
    util::interrupt(migrate);
    // What such a stop leaves: the cutover past its checks, the slot gone.
    cluster
        .psql(
            &dst,
            "UPDATE pglive.migration SET stage = 'cutover', cutover_requested = true,
                    finishing = 'cut over at 0/1: checks passed before the stop'
              WHERE name = 'fin'",
        )
        .unwrap();
    cluster
        .psql(&src, "SELECT pg_drop_replication_slot('fin')")
        .unwrap();
    // `--abort` cannot take back a cutover past its checks.
    let refused = run(&[
        "cutover", "--source", &source, "--target", &target, "--name", "fin", "--abort",
    ]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("dropping its slot"),
        "{}",
        text(&refused)
    );

    let finished = run(&[
        "migrate", "--source", &source, "--target", &target, "--name", "fin",
    ]);
    let said = text(&finished);
    assert!(finished.status.success(), "{said}");
    assert!(
        said.contains("finishing it") && said.contains("checks passed before the stop"),
        "{said}"
    );
    assert_eq!(util::stage(&target, "fin").as_deref(), Some("done"));
    assert_eq!(
        cluster
            .psql(&src, "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "0",
        "the publications went with it"
    );
}

/// A connection pool that reconnects at once when its session is ended
/// (here: a loop of short reads) does not keep the fence from holding:
/// sessions opened after it start read-only, so only earlier ones are ended.
#[test]
fn a_reconnecting_pool_does_not_hold_up_the_fence() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "pool", &format!("{SCHEMA}{}", load(500)));
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "pool", &[]);
    let pool = Workload::start(source.clone(), |_| "SELECT pg_sleep(0.02)".to_owned());
    std::thread::sleep(Duration::from_millis(500));
    let done = util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "pool", "--fence",
        ],
        &mut migrate,
    );
    assert!(done.contains("switch your application now"), "{done}");
    pool.stop();
    finish(migrate);
    assert!(fenced(cluster, &src) && !writable(cluster, &src));
}
