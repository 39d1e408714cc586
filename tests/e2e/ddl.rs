//! Schema changes on the source while the migration streams.

use std::time::{Duration, Instant};

use pglive_testkit::Cluster;

use crate::corpus::schema_entries;
use crate::util::{self, finish, run};

/// `apply_waiting` from `pglive status --json` (`None` while apply runs).
fn apply_waiting(target: &str, name: &str) -> Option<String> {
    let output = run(&["status", "--target", target, "--name", name, "--json"]);
    assert!(output.status.success(), "{}", util::text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["apply_waiting"].as_str().map(str::to_owned)
}

/// Without DDL capture, each change of a source table's shape made while
/// rows stream (in a transaction with rows written under the new shape)
/// stops apply before the first of those rows, and `pglive status` shows
/// what differs and the SQL to run on the target; run there, apply goes on
/// by itself. For an added column, a changed type and a dropped column;
/// after cutover the rows and the schema equal the source's.
#[test]
fn apply_waits_for_the_target_to_match_a_changed_table() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "shape",
        "CREATE TABLE t (id int PRIMARY KEY, a text, n int, gone text NOT NULL);
         INSERT INTO t SELECT g, 'a' || g, g, 'x' FROM generate_series(1, 1000) g;",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "shape", &[]);
    let changes = [
        (
            "ALTER TABLE t ADD COLUMN added numeric(10,2)",
            "INSERT INTO t VALUES (2001, 'b', 1, 'y', 1.5)",
            "\"added\" numeric(10,2)",
        ),
        (
            "ALTER TABLE t ALTER COLUMN n TYPE bigint",
            "UPDATE t SET n = 5000000000 WHERE id = 7",
            "\"n\" is bigint on the source, integer on the target",
        ),
        (
            "ALTER TABLE t DROP COLUMN gone",
            "INSERT INTO t (id, a) VALUES (2002, 'c')",
            "the source no longer sends (dropped or renamed there): \"gone\"",
        ),
    ];
    for (ddl, row, named) in changes {
        // One transaction: the row is written under the new shape.
        cluster.psql(&src, &format!("{ddl}; {row};")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let waiting = loop {
            if let Some(waiting) = apply_waiting(&target, "shape") {
                break waiting;
            }
            assert!(Instant::now() < deadline, "apply did not stop for {ddl}");
            assert!(migrate.try_wait().unwrap().is_none(), "{}", finish(migrate));
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(waiting.contains(named), "{ddl}: {waiting}");
        let (_, fix) = waiting.split_once("run on the target: ").expect("the fix");
        let fix = &fix[..fix.rfind(") and resume").expect("the fix's end")];
        cluster.psql(&dst, fix).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while apply_waiting(&target, "shape").is_some() {
            assert!(Instant::now() < deadline, "apply did not go on after {fix}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "shape",
        ],
        &mut migrate,
    );
    let log = finish(migrate);
    assert!(log.contains("apply goes on"), "{log}");
    util::assert_table_equal(cluster, &src, cluster, &dst, "t");
    assert_eq!(schema_entries(cluster, &src), schema_entries(cluster, &dst));
}
