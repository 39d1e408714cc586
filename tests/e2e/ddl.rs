//! Schema changes on the source while the migration streams.

use std::time::{Duration, Instant};

use pglive_testkit::Cluster;

use crate::corpus::schema_entries;
use crate::util::{self, Workload, finish, run};

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
    let mut migrate = util::migrate_until_streaming(&source, &target, "shape", &["--ddl", "stop"]);
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
    // A nullable column dropped on the source: rows without it are valid
    // on the target (as when the target is changed first), so apply goes
    // on; the cutover refuses until the target matches.
    cluster
        .psql(
            &src,
            "ALTER TABLE t DROP COLUMN a; INSERT INTO t (id, n) VALUES (2003, 3);",
        )
        .unwrap();
    let cutover = [
        "cutover", "--source", &source, "--target", &target, "--name", "shape",
    ];
    let refused = run(&cutover);
    let said = util::text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("the source no longer has \"a\""), "{said}");
    let (_, fix) = said.split_once("run on the target: ").expect("the fix");
    let fix = &fix[..fix.find(" then run").expect("the fix's end")];
    assert_eq!(fix, "ALTER TABLE \"public\".\"t\" DROP COLUMN \"a\";");
    cluster.psql(&dst, fix).unwrap();
    util::cutover_ok(&cutover, &mut migrate);
    let log = finish(migrate);
    assert!(log.contains("apply goes on"), "{log}");
    util::assert_table_equal(cluster, &src, cluster, &dst, "t");
    assert_eq!(schema_entries(cluster, &src), schema_entries(cluster, &dst));
}

/// Runs `sql` on `conninfo` as one query string, the way `psql -c` or an
/// application's migration tool sends it: several statements, one
/// implicit transaction.
fn one_query(conninfo: &str, sql: &str) {
    util::block_on(async {
        let config = pglive_postgres::ConnectConfig::parse(conninfo).unwrap();
        let client = pglive_postgres::connect_sql(&config).await.unwrap();
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    });
}

/// `pglive ddl <choice>` for the schema change migration `name` waits at.
fn decide(target: &str, name: &str, choice: &str) {
    let decided = run(&["ddl", choice, "--target", target, "--name", name]);
    assert!(decided.status.success(), "{}", util::text(&decided));
}

/// The `pglive status --json` of migration `name`.
fn status_json(target: &str, name: &str) -> serde_json::Value {
    let output = run(&["status", "--target", target, "--name", name, "--json"]);
    assert!(output.status.success(), "{}", util::text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until apply has met a schema change of this tag and outcome.
fn wait_for_schema_change(
    target: &str,
    name: &str,
    tag: &str,
    outcome: &str,
    migrate: &mut std::process::Child,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = status_json(target, name);
        if let Some(found) = status["schema_changes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["tag"] == tag && c["outcome"] == outcome)
        {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {outcome} {tag} in {status:#}"
        );
        if let Some(exit) = migrate.try_wait().unwrap() {
            let mut log = String::new();
            if let Some(mut e) = migrate.stderr.take() {
                use std::io::Read;
                e.read_to_string(&mut log).ok();
            }
            panic!("migrate ended ({exit}) before a {outcome} {tag}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With DDL captured (the default for a superuser source), every kind of
/// schema change the source runs while rows stream — in transactions with
/// rows written under the new shape, sent as one query string — is
/// replayed on the target at its place in the stream; a rolled-back one
/// never is; commands pglive does not replay stop apply with the command
/// shown until `pglive ddl retry` or `skip` (after replaying it by hand).
/// After cutover the target's schema equals the source's entry by entry
/// and every table equals row by row.
#[test]
fn schema_changes_are_replayed_in_stream_order() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "ddlcap",
        "CREATE TABLE t (id int PRIMARY KEY, a text, n int, gone text);
         INSERT INTO t SELECT g, 'a' || g, g, 'x' FROM generate_series(1, 1000) g;
         CREATE SEQUENCE workload_ids START 100000;
         DO $$ BEGIN CREATE ROLE ddl_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE ROLE ddl_writer; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         -- The application's own DDL audit: its rows arrive through the
         -- stream, so its copy on the target must not add them again.
         CREATE TABLE ddl_audit (id bigserial PRIMARY KEY, tag text);
         CREATE FUNCTION audit_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
           $f$ BEGIN INSERT INTO public.ddl_audit (tag) VALUES (tg_tag); END $f$;
         CREATE EVENT TRIGGER audit_ddl ON ddl_command_end EXECUTE FUNCTION audit_ddl();",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "ddlcap", &[]);
    // Rows stream all along: inserts and updates of t by its key only, so
    // that they go on whatever its other columns become.
    let workload = Workload::start(source.clone(), |n| {
        format!(
            "INSERT INTO t (id) VALUES (nextval('workload_ids')); UPDATE t SET id = id WHERE id = {}",
            n % 1000 + 1
        )
    });
    let changes = [
        // Columns: added with a default, retyped, renamed, constrained, dropped.
        "ALTER TABLE t ADD COLUMN added numeric(10,2) DEFAULT 1.5; INSERT INTO t (id, a, n, added) VALUES (2001, 'b', 1, 2.25)",
        "ALTER TABLE t ALTER COLUMN n TYPE bigint; UPDATE t SET n = 5000000000 WHERE id = 7",
        "ALTER TABLE t RENAME COLUMN a TO label; UPDATE t SET label = 'renamed' WHERE id = 8",
        "ALTER TABLE t ALTER COLUMN label SET DEFAULT 'none'; UPDATE t SET label = 'none' WHERE label IS NULL; \
         ALTER TABLE t ALTER COLUMN label SET NOT NULL; ALTER TABLE t ADD CONSTRAINT n_positive CHECK (n > 0)",
        "ALTER TABLE t DROP COLUMN gone; INSERT INTO t (id, label) VALUES (2002, 'c')",
        // A new table: its rows, updates and deletes from its first.
        "CREATE TABLE fresh (id int PRIMARY KEY, v text); INSERT INTO fresh SELECT g, 'v' || g FROM generate_series(1, 50) g",
        "UPDATE fresh SET v = 'changed' WHERE id <= 10; DELETE FROM fresh WHERE id > 40",
        // Types: a new enum used at once, a value added then used.
        "CREATE TYPE mood AS ENUM ('ok', 'meh'); ALTER TABLE t ADD COLUMN m mood; UPDATE t SET m = 'ok' WHERE id = 9",
        "ALTER TYPE mood ADD VALUE 'great'",
        "UPDATE t SET m = 'great' WHERE id = 10",
        // Indexes, also CONCURRENTLY (each alone: it cannot run in a transaction).
        "CREATE INDEX CONCURRENTLY t_label ON t (label)",
        "CREATE UNIQUE INDEX CONCURRENTLY t_n ON t (n) WHERE n > 4000000000",
        "DROP INDEX CONCURRENTLY t_n",
        // Comments, privileges, views, sequences.
        "COMMENT ON TABLE t IS 'the main table'; COMMENT ON COLUMN t.label IS 'was a'",
        "GRANT SELECT, UPDATE (label) ON t TO ddl_reader; REVOKE UPDATE (label) ON t FROM ddl_reader",
        "CREATE VIEW labels AS SELECT id, label FROM t WHERE m IS NOT NULL",
        "CREATE OR REPLACE VIEW labels AS SELECT id, label, m FROM t WHERE m IS NOT NULL; \
         CREATE VIEW doomed AS SELECT 1 AS one; DROP VIEW doomed",
        "CREATE SEQUENCE fresh_ids START 500; ALTER SEQUENCE fresh_ids INCREMENT BY 5; \
         ALTER TABLE fresh ALTER COLUMN id SET DEFAULT nextval('fresh_ids'); INSERT INTO fresh (v) VALUES ('from seq')",
        // Partitions: created with rows, attached, detached.
        "CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         INSERT INTO events VALUES (1, '2026-03-01'), (2, '2026-04-01')",
        "CREATE TABLE events_2027 (LIKE events INCLUDING ALL); \
         ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01'); \
         INSERT INTO events VALUES (3, '2027-05-01'); UPDATE events SET id = 20 WHERE id = 2",
        "ALTER TABLE events DETACH PARTITION events_2026; DELETE FROM events_2026 WHERE id = 1",
        // A comment ending the statement; a role grant (no event trigger
        // fires for it) before the table grant that is replayed.
        "ALTER TABLE t ADD COLUMN commented int -- why it is added\n; INSERT INTO t (id, commented) VALUES (2004, 1)",
        "GRANT ddl_reader TO ddl_writer; GRANT SELECT ON fresh TO ddl_reader",
        // Rolled back: never replayed.
        "BEGIN; ALTER TABLE t ADD COLUMN never int; INSERT INTO t (id, label) VALUES (9999, 'never'); ROLLBACK",
        "BEGIN; SAVEPOINT s; CREATE TABLE never_either (x int); ROLLBACK TO SAVEPOINT s; \
         INSERT INTO t (id, label) VALUES (2003, 'kept'); COMMIT",
        // Temporary tables: never replayed either.
        "CREATE TEMP TABLE scratch (x int); DROP TABLE scratch",
    ];
    for change in changes {
        one_query(&source, change);
    }

    // A table made from a query's rows arrives with its rows: they reach
    // the stream before the command, and the table is carried like any
    // table created on the source.
    one_query(
        &source,
        "CREATE TABLE made_with_rows AS SELECT id, label FROM t WHERE id <= 20",
    );

    // Two transactions in one query string, each with a CREATE TABLE:
    // which statement each message is cannot be told, so each stops apply
    // until made by hand and skipped.
    one_query(
        &source,
        "BEGIN; CREATE TABLE tx_one (id int PRIMARY KEY); COMMIT; \
         CREATE TABLE tx_two (id int PRIMARY KEY); INSERT INTO tx_two VALUES (1)",
    );
    for table in ["tx_one", "tx_two"] {
        let pending =
            wait_for_schema_change(&target, "ddlcap", "CREATE TABLE", "pending", &mut migrate);
        assert!(
            pending["problem"]
                .as_str()
                .unwrap()
                .contains("several transactions"),
            "{pending:#}"
        );
        cluster
            .psql(&dst, &format!("CREATE TABLE {table} (id int PRIMARY KEY)"))
            .unwrap();
        decide(&target, "ddlcap", "skip");
    }

    // Not on the list: stops until `retry` replays it as captured.
    one_query(
        &source,
        "CREATE STATISTICS t_stats (dependencies) ON id, n FROM t",
    );
    wait_for_schema_change(
        &target,
        "ddlcap",
        "CREATE STATISTICS",
        "pending",
        &mut migrate,
    );
    decide(&target, "ddlcap", "retry");
    wait_for_schema_change(
        &target,
        "ddlcap",
        "CREATE STATISTICS",
        "replayed",
        &mut migrate,
    );

    // Run inside a DO block, the command has no text of its own: replayed
    // by hand, then skipped.
    one_query(
        &source,
        "DO $$ BEGIN EXECUTE 'ALTER TABLE fresh ADD COLUMN note text'; END $$; UPDATE fresh SET note = 'n' WHERE id = 1",
    );
    wait_for_schema_change(&target, "ddlcap", "ALTER TABLE", "pending", &mut migrate);
    cluster
        .psql(&dst, "ALTER TABLE fresh ADD COLUMN note text")
        .unwrap();
    decide(&target, "ddlcap", "skip");
    one_query(
        &source,
        "INSERT INTO fresh (v, note) VALUES ('after', 'n2')",
    );

    // A column added with a default computed once (`now()`): the rows that
    // existed hold the source's value, which the target would compute
    // anew. Apply stops; replayed by hand with the source's value, skipped.
    one_query(
        &source,
        "ALTER TABLE fresh ADD COLUMN stamped timestamptz DEFAULT now(); INSERT INTO fresh (v) VALUES ('stamped')",
    );
    let pending = wait_for_schema_change(&target, "ddlcap", "ALTER TABLE", "pending", &mut migrate);
    assert!(
        pending["problem"].as_str().unwrap().contains("\"stamped\""),
        "{pending:#}"
    );
    let stamped = cluster
        .psql(
            &src,
            "SELECT attmissingval::text::timestamptz[] FROM pg_attribute
              WHERE attrelid = 'fresh'::regclass AND attname = 'stamped'",
        )
        .unwrap();
    let stamped = stamped
        .trim()
        .trim_matches(|c| c == '{' || c == '}' || c == '"');
    cluster
        .psql(
            &dst,
            &format!(
                "ALTER TABLE fresh ADD COLUMN stamped timestamptz DEFAULT '{stamped}';
                 ALTER TABLE fresh ALTER COLUMN stamped SET DEFAULT now();"
            ),
        )
        .unwrap();
    decide(&target, "ddlcap", "skip");

    // One computed per row (`random()`) rewrote the table on the source:
    // apply stops; the target gets the source's values by hand, skipped.
    one_query(
        &source,
        "ALTER TABLE fresh ADD COLUMN r float8 DEFAULT random()",
    );
    let pending = wait_for_schema_change(&target, "ddlcap", "ALTER TABLE", "pending", &mut migrate);
    assert!(
        pending["problem"]
            .as_str()
            .unwrap()
            .contains("value per row"),
        "{pending:#}"
    );
    let values = cluster
        .psql(
            &src,
            "SELECT string_agg(format('(%s, %s::float8)', id, r), ', ') FROM fresh",
        )
        .unwrap();
    cluster
        .psql(
            &dst,
            &format!(
                "ALTER TABLE fresh ADD COLUMN r float8 DEFAULT random();
                 UPDATE fresh SET r = v.r FROM (VALUES {values}) v(id, r) WHERE fresh.id = v.id;"
            ),
        )
        .unwrap();
    decide(&target, "ddlcap", "skip");

    let rows = workload.stop();
    assert!(rows > 0, "the workload wrote nothing");
    let status = status_json(&target, "ddlcap");
    let log = status["schema_changes"].to_string();
    assert!(
        !log.contains("never"),
        "a rolled-back change was replayed: {log}"
    );
    assert!(
        !log.contains("scratch"),
        "a temporary table's change was replayed: {log}"
    );
    // The audit's rows up to here; the cutover's removal of the capture
    // from the source adds its own after the final point.
    let audited = cluster.psql(&src, "SELECT max(id) FROM ddl_audit").unwrap();
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "ddlcap",
        ],
        &mut migrate,
    );
    finish(migrate);
    for table in [
        "t",
        "fresh",
        "events",
        "events_2026",
        "events_2027",
        "made_with_rows",
        "tx_one",
        "tx_two",
        "labels",
    ] {
        util::assert_table_equal(cluster, &src, cluster, &dst, table);
    }
    let audit = format!(
        "SELECT count(*) || ' ' || md5(string_agg(id || ' ' || tag, ',' ORDER BY id)) FROM ddl_audit WHERE id <= {audited};
         SELECT count(*) FROM ddl_audit WHERE id > {audited}"
    );
    let (on_source, on_target) = (
        cluster.psql(&src, &audit).unwrap(),
        cluster.psql(&dst, &audit).unwrap(),
    );
    assert_eq!(
        on_source.lines().next(),
        on_target.lines().next(),
        "the DDL audit: its rows arrived once"
    );
    assert_eq!(
        on_target.lines().nth(1),
        Some("0"),
        "nothing audited on the target itself"
    );
    assert_eq!(schema_entries(cluster, &src), schema_entries(cluster, &dst));
    // The capture is gone from the source with the migration.
    let left = cluster
        .psql(
            &src,
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pglive%'",
        )
        .unwrap();
    assert_eq!(left.trim(), "0");
}

/// `--ddl capture` where it cannot be had (here: a migration of some
/// tables only, whose trigger would replay every table's changes) is
/// refused by preflight, with nothing created on the source.
#[test]
fn ddl_capture_that_cannot_be_had_is_refused_before_anything_changes() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "ddlrefused",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let refused = run(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--name",
        "ddlrefused",
        "--ddl",
        "capture",
        "--include",
        "public.t",
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", util::text(&refused));
    let said = util::text(&refused);
    assert!(
        said.contains("--ddl capture") && said.contains("--ddl stop"),
        "{said}"
    );
    let left = cluster
        .psql(
            &src,
            "SELECT (SELECT count(*) FROM pg_event_trigger) + (SELECT count(*) FROM pg_publication)
                    + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ddlrefused')",
        )
        .unwrap();
    assert_eq!(left.trim(), "0", "something was created on the source");
}

/// Schema changes run by the application's own role (not a superuser),
/// with identity columns: a table it creates with a `GENERATED ALWAYS`
/// identity key and fills at once arrives with its rows and its owner; an
/// identity column added to a table with rows (numbered per row on each
/// side, which the stream does not carry) stops apply until given the
/// source's values by hand. Target equals source, schema entry by entry.
#[test]
fn an_application_role_creates_identity_columns_mid_run() {
    let cluster = Cluster::shared();
    let (src, dst) = util::databases(
        cluster,
        "ddlid",
        "DO $$ BEGIN CREATE ROLE ddl_app; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT CREATE ON SCHEMA public TO ddl_app;
         CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t OWNER TO ddl_app;
         INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g;",
    );
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let mut migrate = util::migrate_until_streaming(&source, &target, "ddlid", &[]);
    one_query(
        &source,
        "SET ROLE ddl_app;
         CREATE TABLE owned (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO owned (v) VALUES ('a'), ('b'); RESET ROLE",
    );
    one_query(
        &source,
        "SET ROLE ddl_app; ALTER TABLE t ADD COLUMN n int GENERATED ALWAYS AS IDENTITY;
         INSERT INTO t (id, v) VALUES (1000, 'new'); RESET ROLE",
    );
    let pending = wait_for_schema_change(&target, "ddlid", "ALTER TABLE", "pending", &mut migrate);
    assert!(
        pending["problem"]
            .as_str()
            .unwrap()
            .contains("value per row"),
        "{pending:#}"
    );
    let values = cluster
        .psql(
            &src,
            "SELECT string_agg(format('(%s, %s)', id, n), ', ') FROM t WHERE id < 1000",
        )
        .unwrap();
    cluster
        .psql(
            &dst,
            &format!(
                "ALTER TABLE t ADD COLUMN n int GENERATED BY DEFAULT AS IDENTITY;
                 UPDATE t SET n = v.n FROM (VALUES {values}) v(id, n) WHERE t.id = v.id;
                 SELECT setval(pg_get_serial_sequence('t', 'n'), 100);
                 ALTER TABLE t ALTER COLUMN n SET GENERATED ALWAYS;"
            ),
        )
        .unwrap();
    decide(&target, "ddlid", "skip");
    one_query(
        &source,
        "SET ROLE ddl_app; INSERT INTO owned (v) VALUES ('c'); INSERT INTO t (id, v) VALUES (1001, 'later'); RESET ROLE",
    );
    util::cutover_ok(
        &[
            "cutover", "--source", &source, "--target", &target, "--name", "ddlid",
        ],
        &mut migrate,
    );
    finish(migrate);
    for table in ["t", "owned"] {
        util::assert_table_equal(cluster, &src, cluster, &dst, table);
    }
    assert_eq!(schema_entries(cluster, &src), schema_entries(cluster, &dst));
}
