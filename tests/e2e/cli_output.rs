//! Snapshots of what users read: the help texts and `status --json`.

use std::time::Duration;

use pglive_testkit::Cluster;

use crate::util::{self, finish, run_ok, spawn, wait_for_stage};

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", run_ok(&["--help"]));
    for command in ["migrate", "cutover", "status", "verify", "clean", "demo"] {
        insta::assert_snapshot!(format!("help_{command}"), run_ok(&[command, "--help"]));
    }
}

/// Replaces values that differ from run to run.
fn normalize(value: &mut serde_json::Value) {
    const VOLATILE: [&str; 9] = [
        "start_lsn",
        "applied_lsn",
        "received_lsn",
        "source_lsn",
        "lag_seconds",
        "seconds_since_update",
        "summary",
        "source",
        "batches",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                // Recorded every 10 s of streaming: there or not by timing.
                if key == "slot_wal" {
                    *v = serde_json::Value::String("[slot_wal]".to_owned());
                } else if VOLATILE.contains(&key.as_str()) && !v.is_null() {
                    *v = serde_json::Value::String(format!("[{key}]"));
                } else {
                    normalize(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

#[test]
fn status_json_of_a_finished_migration() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "status", "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'v' FROM generate_series(1, 100) g;
             CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b SELECT generate_series(1, 10);");
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = spawn(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "snap",
        "--cutover-when-ready",
    ]);
    wait_for_stage(
        &target,
        "snap",
        &["done"],
        &mut migrate,
        Duration::from_secs(120),
    );
    finish(migrate);
    let mut status: serde_json::Value = serde_json::from_str(&run_ok(&[
        "status", "--target", &target, "--name", "snap", "--json",
    ]))
    .unwrap();
    normalize(&mut status);
    insta::assert_snapshot!(
        "status_json",
        serde_json::to_string_pretty(&status).unwrap()
    );
}

#[test]
fn json_log_format_writes_only_json_objects() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "jsonlog", "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'v' FROM generate_series(1, 1000) g;
             CREATE INDEX ON a (v);");
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let output = crate::util::run(&[
        "--log-format",
        "json",
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "jsonlog",
        "--cutover-when-ready",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mut events = std::collections::BTreeSet::new();
    for line in stderr.lines() {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        for field in ["time", "level", "message", "event"] {
            assert!(object.get(field).is_some(), "no {field:?} in {line}");
        }
        events.insert(object["event"].as_str().unwrap().to_owned());
    }
    for event in [
        "note",
        "post_data_progress",
        "streaming_started",
        "switch_now",
    ] {
        assert!(events.contains(event), "no {event} event in:\n{stderr}");
    }
    // Bad input is a JSON object too.
    let output = crate::util::run(&[
        "--log-format",
        "json",
        "status",
        "--target",
        "postgresql://x@/db?port=bad",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(error["event"], "error", "{stderr}");
}
