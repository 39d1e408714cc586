//! `pglive verify` through the binary: rows that differ are named, parts
//! are compared in parallel, paced, and a stopped verification continues.

use std::time::{Duration, Instant};

use pglive_testkit::Cluster;

use crate::migrate::{SCHEMA, assert_same_rows, load, workload_sql};
use crate::util::{self, Workload, finish, run, spawn, text};

/// `verify --full` names each row that differs: one changed, one deleted,
/// one added, one byte flipped inside a TOASTed value, all on the target;
/// and exits 4.
#[test]
fn verify_names_each_row_that_differs() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "rowdiff",
        &format!(
            "{SCHEMA}{}
             CREATE TABLE docs (id int PRIMARY KEY, body text);
             INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 200) i)
               FROM generate_series(1, 300) g;",
            load(50_000)
        ),
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "rows", &[]);
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "rows",
        ],
        &mut migrate,
    );
    finish(migrate);
    let toasted: String = cluster
        .psql(
            &dst,
            "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE relname = 'docs'",
        )
        .unwrap();
    assert_eq!(toasted, "t", "the bodies are stored out of line");
    cluster
        .psql(
            &dst,
            "UPDATE items SET price = price + 1 WHERE id = 4242;
             DELETE FROM items WHERE id = 31337;
             INSERT INTO items (id, name) VALUES (99999999, 'only on the target');
             UPDATE docs SET body = overlay(body placing 'Z' from 5000 for 1) WHERE id = 150;",
        )
        .unwrap();
    let output = run(&["verify", "--source", &source, "--target", &target, "--full"]);
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    let said = text(&output);
    for row in [
        "id=4242 changed",
        "id=31337 missing on the target",
        "id=99999999 only on the target",
        "id=150 changed",
    ] {
        assert!(said.contains(row), "{row} not named:\n{said}");
    }
}

/// How many parts of the default verification the target records, and how
/// many of them were compared.
fn recorded_parts(cluster: &Cluster, db: &str) -> (u64, u64) {
    recorded_parts_of(cluster, db, "pglive")
}

/// [`recorded_parts`] of migration `name`'s verification.
fn recorded_parts_of(cluster: &Cluster, db: &str, name: &str) -> (u64, u64) {
    let counts = cluster
        .psql(
            db,
            &format!(
                "SELECT count(*) || ' ' || count(source_rows) FROM pglive.verify_part WHERE migration = '{name}'"
            ),
        )
        .unwrap();
    let (all, compared) = counts.split_once(' ').unwrap();
    (all.parse().unwrap(), compared.parse().unwrap())
}

/// `verify --jobs 3 --part-size 1` cuts a 10 MB table into key ranges
/// compared three at a time: equal sides pass; rows changed, deleted and
/// added on the target in different parts are each named (a table without
/// an integer key is reported different as a whole). A verification paced
/// with `--max-rate` and killed midway continues with `--resume`: the parts
/// it had compared are not read again, and the same rows are found.
#[test]
fn verify_in_parallel_parts_paced_and_resumed() {
    let cluster = Cluster::shared();
    let data = "CREATE TABLE wide (id bigint PRIMARY KEY, body text);
         INSERT INTO wide SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g;
         CREATE TABLE tags (name text PRIMARY KEY, n int);
         INSERT INTO tags SELECT 'tag ' || g, g FROM generate_series(1, 1000) g;
         ANALYZE;";
    let (src, dst) = util::databases(cluster, "vparts", data);
    cluster.psql(&dst, data).unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--source",
            &source,
            "--target",
            &target,
            "--full",
            "--part-size",
            "1",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    let equal = verify(&["--jobs", "3"]);
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
    assert!(
        text(&equal).contains("verified 2 tables"),
        "{}",
        text(&equal)
    );
    let (parts, compared) = recorded_parts(cluster, &dst);
    assert!(parts >= 8, "the 10 MB table is cut into parts: {parts}");
    assert_eq!(compared, parts);

    cluster
        .psql(
            &dst,
            "UPDATE wide SET body = 'changed' WHERE id = 5;
             DELETE FROM wide WHERE id = 30000;
             INSERT INTO wide VALUES (70000, 'only here');
             UPDATE tags SET n = -1 WHERE name = 'tag 7';",
        )
        .unwrap();
    let rows = [
        "id=5 changed",
        "id=30000 missing on the target",
        "id=70000 only on the target",
    ];
    let assert_found = |output: &std::process::Output| {
        assert_eq!(output.status.code(), Some(4), "{}", text(output));
        let said = text(output);
        for row in rows {
            assert!(said.contains(row), "{row} not named:\n{said}");
        }
        assert!(
            said.lines()
                .any(|l| l.contains("\"tags\"") && l.contains("DIFFERENT")),
            "{said}"
        );
    };
    assert_found(&verify(&["--jobs", "3"]));

    // One part a second, one at a time: stopped after two or more.
    let mut paced = spawn(&[
        "verify",
        "--source",
        &source,
        "--target",
        &target,
        "--full",
        "--part-size",
        "1",
        "--jobs",
        "1",
        "--max-rate",
        "1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let stopped_at = loop {
        let (parts, compared) = recorded_parts(cluster, &dst);
        if compared >= 2 && compared < parts {
            break compared;
        }
        assert!(Instant::now() < deadline, "{compared} of {parts} parts");
        assert!(paced.try_wait().unwrap().is_none(), "{}", finish(paced));
        std::thread::sleep(Duration::from_millis(50));
    };
    paced.kill().unwrap();
    paced.wait().unwrap();
    let stamps = "SELECT string_agg(table_name || part || compared_at, ',' ORDER BY table_name, part) \
                  FROM pglive.verify_part WHERE migration = 'pglive' AND compared_at IS NOT NULL";
    let before = cluster.psql(&dst, stamps).unwrap();
    let (_, compared) = recorded_parts(cluster, &dst);
    assert!(compared >= stopped_at);

    let resumed = verify(&["--jobs", "3", "--resume"]);
    assert_found(&resumed);
    assert!(
        text(&resumed).contains(&format!("continued a stopped verification: {compared} of")),
        "{}",
        text(&resumed)
    );
    let after = cluster.psql(&dst, stamps).unwrap();
    for part in before.split(',') {
        assert!(after.split(',').any(|p| p == part), "{part} was read again");
    }

    let again = verify(&["--resume"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(
        text(&again).contains("no stopped verification") && text(&again).contains("finished"),
        "{}",
        text(&again)
    );
}

/// While the migration streams under a live workload, `verify --full`
/// compares both sides at one consistent point in parallel parts: equal,
/// then a row changed on the target alone is named; put back, the
/// migration cuts over equal.
#[test]
fn live_verify_in_parts_finds_a_row_changed_on_the_target() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(cluster, "vlive", &format!("{SCHEMA}{}", load(60_000)));
    cluster.psql(&src, "ANALYZE").unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let workload = Workload::start(source.clone(), workload_sql);
    let mut migrate = util::migrate_until_streaming(&source, &target, "live", &[]);
    let verify = || {
        run(&[
            "verify",
            "--source",
            &source,
            "--target",
            &target,
            "--name",
            "live",
            "--full",
            "--jobs",
            "2",
            "--part-size",
            "1",
        ])
    };
    let equal = verify();
    assert_eq!(equal.status.code(), Some(0), "{}", text(&equal));
    assert!(
        text(&equal).contains("at one consistent point of the live migration"),
        "{}",
        text(&equal)
    );
    let (parts, _) = recorded_parts_of(cluster, &dst, "live");
    assert!(parts > 4, "items is cut into parts: {parts}");

    // Outside the rows the workload touches.
    cluster
        .psql(
            &dst,
            "UPDATE items SET name = 'target only' WHERE id = 45000",
        )
        .unwrap();
    let differs = verify();
    assert_eq!(differs.status.code(), Some(4), "{}", text(&differs));
    assert!(
        text(&differs).contains("id=45000 changed"),
        "{}",
        text(&differs)
    );

    cluster
        .psql(
            &dst,
            "UPDATE items SET name = 'item 45000' WHERE id = 45000",
        )
        .unwrap();
    workload.stop();
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "live",
        ],
        &mut migrate,
    );
    let log = finish(migrate);
    assert!(
        log.contains("verify: apply resumed, after holding"),
        "{log}"
    );
    assert_same_rows(cluster, &src, cluster, &dst);
}
