//! The applier against real servers: after catch-up the target equals the
//! source, row by row, whatever the workload.

mod common;

use common::{Pair, apply_until, config, options, run_quietly};
use pglive_apply::{Applier, Error};
use pglive_postgres::Lsn;

const SCHEMA: &str = "
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    balance numeric,
    ratio double precision,
    tags text[],
    grid int[][],
    blob bytea,
    seen timestamptz,
    span interval,
    doc jsonb,
    raw json,
    attrs hstore,
    big text,
    balance_x2 numeric GENERATED ALWAYS AS (balance * 2) STORED
);
CREATE TABLE \"Mixed Case\" (\"Key\" int PRIMARY KEY, \"välue\" text);
CREATE TABLE full_identity (a int, b json, c point);
ALTER TABLE full_identity REPLICA IDENTITY FULL;
CREATE TABLE events (id int, region text, payload text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
CREATE TABLE truncated (id serial PRIMARY KEY, v text);
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE moods (m mood PRIMARY KEY, n int);
";

const WORKLOAD: &str = "
INSERT INTO accounts (id, owner, balance, ratio, tags, grid, blob, seen, span, doc, raw, attrs, big)
SELECT g, 'owner ' || g, CASE g % 5 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 'Infinity' WHEN 2 THEN '-Infinity' ELSE g * 1.5 END,
       CASE g % 4 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-Infinity' WHEN 2 THEN 1e-310 ELSE 0.1 + g END,
       ARRAY['a', NULL, 'quote\"d', 'back\\slash', 'tab\there'], ARRAY[[g, 2], [3, NULL]],
       decode(lpad(to_hex(g), 8, '0') || '00ff0a0d5c09', 'hex'), '2024-02-29 23:59:59.123456+05:30'::timestamptz + g * interval '1 hour',
       make_interval(years => 1, days => g, secs => 0.5), jsonb_build_object('k', g, 'nested', jsonb_build_array(1, 'x', NULL)),
       '{\"b\": 1,  \"a\": [2]}', hstore(ARRAY['k', 'n'], ARRAY[g::text, NULL]), NULL
  FROM generate_series(1, 300) g;
UPDATE accounts SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i) WHERE id <= 20;
UPDATE accounts SET balance = balance + 1 WHERE id % 3 = 0;
UPDATE accounts SET owner = owner || '!' WHERE id <= 20;
UPDATE accounts SET id = id + 1000 WHERE id BETWEEN 21 AND 30;
DELETE FROM accounts WHERE id % 7 = 0;
BEGIN; UPDATE accounts SET owner = 'rolled back'; ROLLBACK;
BEGIN;
  INSERT INTO accounts (id, owner) VALUES (5000, 'kept');
  SAVEPOINT s1; INSERT INTO accounts (id, owner) VALUES (5001, 'subxact rolled back'); ROLLBACK TO s1;
  SAVEPOINT s2; UPDATE accounts SET owner = 'sub kept' WHERE id = 5000; RELEASE s2;
COMMIT;
INSERT INTO \"Mixed Case\" SELECT g, 'välue ' || g FROM generate_series(1, 50) g;
UPDATE \"Mixed Case\" SET \"välue\" = NULL WHERE \"Key\" % 2 = 0;
INSERT INTO full_identity VALUES (1, '{\"x\": 1}', '(1,2)'), (1, '{\"x\": 1}', '(1,2)'), (2, NULL, NULL), (3, '[]', '(0,0)');
UPDATE full_identity SET a = 10 WHERE ctid = (SELECT min(ctid) FROM full_identity WHERE a = 1);
DELETE FROM full_identity WHERE a = 2;
UPDATE full_identity SET b = '{\"y\": 2}' WHERE a = 3;
INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'p' || g FROM generate_series(1, 100) g;
UPDATE events SET region = 'us' WHERE region = 'eu' AND id % 4 = 0;
INSERT INTO truncated (v) SELECT 'x' FROM generate_series(1, 10);
TRUNCATE truncated RESTART IDENTITY;
INSERT INTO truncated (v) VALUES ('after truncate');
INSERT INTO moods VALUES ('sad', 1), ('ok', 2), ('happy', 3);
UPDATE moods SET n = n * 10;
DELETE FROM moods WHERE m = 'ok';
";

#[tokio::test]
async fn mixed_workload_arrives_exactly_on_a_target_with_hostile_defaults() {
    let pair = Pair::new("mixed", SCHEMA).await;
    pair.cluster
        .psql(
            "postgres",
            &format!(
                "ALTER DATABASE {t} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {t} SET TimeZone = 'Pacific/Chatham';
                 ALTER DATABASE {t} SET extra_float_digits = -3; ALTER DATABASE {t} SET IntervalStyle = 'sql_standard';
                 ALTER DATABASE {t} SET bytea_output = 'escape'",
                t = pair.target
            ),
        )
        .unwrap();
    pair.source_sql(WORKLOAD);
    let applier = pair
        .catch_up(&pair.target_conninfo(), options(&pair, 1))
        .await;
    pair.assert_equal().await;
    let stats = applier.stats();
    assert!(stats.replica_role);
    assert!(stats.inserted >= 300 && stats.updated > 0 && stats.deleted > 0);
    assert_eq!(stats.truncates, 1);
    // Far fewer target transactions than source transactions.
    assert!(stats.batches < stats.transactions, "{stats:?}");

    // More work later resumes from the recorded position.
    pair.source_sql(
        "UPDATE accounts SET ratio = 'Infinity' WHERE id < 50; DELETE FROM events WHERE id > 90;",
    );
    drop(applier);
    let applier = pair
        .catch_up(&pair.target_conninfo(), options(&pair, 1))
        .await;
    pair.assert_equal().await;
    assert_eq!(
        applier.stats().skipped_transactions,
        0,
        "already-confirmed transactions are not resent"
    );
}

#[tokio::test]
async fn large_transactions_streamed_and_whole_with_bounded_memory() {
    let pair = Pair::new(
        "large",
        "CREATE TABLE big (id int PRIMARY KEY, pad text, n int)",
    )
    .await;
    pair.source_sql(
        "SET logical_decoding_work_mem = '64kB';
         INSERT INTO big SELECT g, repeat('x', 50), 0 FROM generate_series(1, 500000) g;
         BEGIN; INSERT INTO big SELECT g, 'aborted', 0 FROM generate_series(600001, 650000) g; ROLLBACK;
         BEGIN; UPDATE big SET n = n + 1 WHERE id % 2 = 0; SAVEPOINT a; DELETE FROM big WHERE id < 1000; ROLLBACK TO a; DELETE FROM big WHERE id > 499000; COMMIT;",
    );
    // Protocol 2 streams the large transactions; a tiny spool budget makes
    // them spill to disk, and a small pending limit runs statements early.
    let mut streamed = options(&pair, 2);
    streamed.spool_memory = 256 * 1024;
    streamed.max_pending_bytes = 1 << 20;
    pair.catch_up(&pair.target_conninfo(), streamed).await;
    pair.assert_equal().await;

    // The same without streaming, on a fresh target.
    let pair = Pair::new(
        "whole",
        "CREATE TABLE big (id int PRIMARY KEY, pad text, n int)",
    )
    .await;
    pair.source_sql(
        "INSERT INTO big SELECT g, repeat('y', 50), g FROM generate_series(1, 200000) g;
         UPDATE big SET n = -n WHERE id % 3 = 0;",
    );
    let mut whole = options(&pair, 1);
    whole.max_pending_bytes = 1 << 20;
    pair.catch_up(&pair.target_conninfo(), whole).await;
    pair.assert_equal().await;
}

#[tokio::test]
async fn a_target_without_replica_role_keeps_order_and_silences_triggers() {
    let schema = "
        CREATE TABLE parent (id int PRIMARY KEY, v text);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, v text);
        CREATE TABLE audit (n int);
        CREATE FUNCTION scribble() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN NEW.v := 'changed by trigger'; INSERT INTO audit VALUES (1); RETURN NEW; END $$;";
    let pair = Pair::new("owner", schema).await;
    // The trigger exists on the target only: it must not touch applied rows.
    pair.cluster
        .psql(
            &pair.target,
            "CREATE TRIGGER scribble BEFORE INSERT OR UPDATE ON child FOR EACH ROW EXECUTE FUNCTION scribble();
             CREATE ROLE app_owner LOGIN;
             GRANT ALL ON SCHEMA public TO app_owner;
             ALTER TABLE parent OWNER TO app_owner; ALTER TABLE child OWNER TO app_owner; ALTER TABLE audit OWNER TO app_owner;",
        )
        .unwrap();
    pair.cluster
        .psql(
            "postgres",
            &format!("ALTER DATABASE {} OWNER TO app_owner", pair.target),
        )
        .unwrap();
    pair.source_sql(
        "INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 50) g;
         INSERT INTO child SELECT g, g, 'c' FROM generate_series(1, 50) g;
         DELETE FROM child WHERE id > 40; DELETE FROM parent WHERE id > 40;
         UPDATE child SET v = 'updated' WHERE id < 10;
         INSERT INTO parent VALUES (100, 'late'); INSERT INTO child VALUES (100, 100, 'late');",
    );
    let owner = pair
        .target_conninfo()
        .replace("user=postgres", "user=app_owner");
    let applier = pair.catch_up(&owner, options(&pair, 1)).await;
    assert!(!applier.stats().replica_role);
    pair.assert_equal_except_audit().await;
    drop(applier);
    let target = pglive_postgres::connect_sql(&config(&owner)).await.unwrap();
    assert_eq!(pglive_apply::restore_triggers(&target).await.unwrap(), 1);
    let enabled: String = target
        .query_one(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'scribble'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enabled, "O", "the trigger is enabled again");
}

impl Pair {
    async fn assert_equal_except_audit(&self) {
        let audit = self
            .cluster
            .psql(&self.target, "SELECT count(*) FROM audit")
            .unwrap();
        assert_eq!(audit, "0", "the target trigger never fired");
        self.assert_equal().await;
    }
}

/// Applies the stream up to the source's current position, expecting an
/// error, from the start on a single session.
async fn apply_until_error(pair: &Pair) -> Error {
    let stop_at = pair.source_lsn();
    let mut applier = Applier::connect(&config(&pair.target_conninfo()), options(pair, 1))
        .await
        .unwrap();
    let mut stream = pair.stream(pair.start).await;
    let mut run_options = pglive_apply::RunOptions::default();
    run_options.stop_at = Some(stop_at);
    run_quietly(&mut applier, &mut stream, &run_options)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn schema_drift_stops_apply_with_the_table_and_column_named() {
    let pair = Pair::new("drift", "CREATE TABLE t (id int PRIMARY KEY, a text)").await;
    pair.source_sql(
        "INSERT INTO t VALUES (1, 'before');
         ALTER TABLE t ADD COLUMN added_later int;
         INSERT INTO t VALUES (2, 'after', 7);",
    );
    let error = apply_until_error(&pair).await;
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("\"public\".\"t\"") && message.contains("added_later"),
        "{message}"
    );

    // Fix the target, resume: everything arrives once.
    pair.cluster
        .psql(&pair.target, "ALTER TABLE t ADD COLUMN added_later int")
        .unwrap();
    pair.catch_up(&pair.target_conninfo(), options(&pair, 1))
        .await;
    pair.assert_equal().await;
}

/// A column whose type modifier differs on the target would change values
/// on the way (numeric rounded, varchar cut by an explicit cast): apply
/// stops before the first row with the column named; with the target made
/// like the source, everything arrives.
#[tokio::test]
async fn a_different_type_modifier_stops_apply_before_values_change() {
    let pair = Pair::new(
        "typmod",
        "CREATE TABLE t (id int PRIMARY KEY, amount numeric(12,4), code varchar(10))",
    )
    .await;
    pair.cluster
        .psql(
            &pair.target,
            "ALTER TABLE t ALTER COLUMN amount TYPE numeric(12,2)",
        )
        .unwrap();
    pair.source_sql("INSERT INTO t VALUES (1, 1.2345, 'abcdefghij')");
    let error = apply_until_error(&pair).await;
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("\"amount\" is numeric(12,4) on the source, numeric(12,2) on the target"),
        "{message}"
    );
    assert!(!message.contains("\"code\""), "{message}");
    pair.cluster
        .psql(
            &pair.target,
            "ALTER TABLE t ALTER COLUMN amount TYPE numeric(12,4)",
        )
        .unwrap();
    pair.catch_up(&pair.target_conninfo(), options(&pair, 1))
        .await;
    pair.assert_equal().await;
}

#[tokio::test]
async fn a_diverged_target_is_an_error_not_a_silent_skip() {
    let pair = Pair::new("diverged", "CREATE TABLE t (id int PRIMARY KEY, a text)").await;
    pair.source_sql("INSERT INTO t VALUES (1, 'x'), (2, 'y')");
    pair.catch_up(&pair.target_conninfo(), options(&pair, 1))
        .await;
    pair.cluster
        .psql(&pair.target, "DELETE FROM t WHERE id = 2")
        .unwrap();
    pair.source_sql("UPDATE t SET a = 'z'");
    let stop_at = pair.source_lsn();
    let mut applier = Applier::connect(&config(&pair.target_conninfo()), options(&pair, 1))
        .await
        .unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut stream = pair.stream(applier.applied_lsn()).await;
        let mut run_options = pglive_apply::RunOptions::default();
        run_options.stop_at = Some(stop_at);
        run_quietly(&mut applier, &mut stream, &run_options).await
    })
    .await
    .unwrap();
    let error = result.unwrap_err();
    // Exactly the deleted row is missing (the count is per lane when the
    // batch is spread over sessions).
    assert!(
        matches!(
            error,
            Error::RowsMissing {
                matched,
                expected,
                ..
            } if expected == matched + 1
        ),
        "{error}"
    );
}

#[tokio::test]
async fn pausing_at_a_consistent_point_matches_the_source_snapshot() {
    use pglive_postgres::connect_sql;
    use pglive_repl::{ReplicationClient, SlotOptions, SnapshotAction};
    let pair = Pair::new("pause", "CREATE TABLE t (id int PRIMARY KEY, n int)").await;
    pair.source_sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 1000) g; UPDATE t SET n = 1 WHERE id % 2 = 0;");
    // A temporary slot exports a snapshot and the exact LSN it stands for.
    let mut marker = ReplicationClient::connect(&config(&pair.source_conninfo()))
        .await
        .unwrap();
    let point = marker
        .create_slot(
            "pause_marker",
            &SlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..SlotOptions::default()
            },
        )
        .await
        .unwrap();
    pair.source_sql("UPDATE t SET n = 2 WHERE id % 3 = 0; DELETE FROM t WHERE id > 900; INSERT INTO t VALUES (5000, 5);");

    let mut applier = Applier::connect(&config(&pair.target_conninfo()), options(&pair, 1))
        .await
        .unwrap();
    let mut stream = pair.stream(pair.start).await;
    let mut run_options = pglive_apply::RunOptions::default();
    run_options.pause_before = Some(point.consistent_point);
    let stopped = run_quietly(&mut applier, &mut stream, &run_options)
        .await
        .unwrap();
    assert_eq!(
        stopped,
        pglive_apply::Stopped::Paused(point.consistent_point)
    );

    // The paused target equals the source as of the snapshot, not as of now.
    let snapshot_sql = "SELECT count(*) || ' ' || sum(n) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t";
    let source = connect_sql(&config(&pair.source_conninfo())).await.unwrap();
    source
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'",
            point.snapshot_name.as_deref().unwrap()
        ))
        .await
        .unwrap();
    let at_snapshot: String = source.query_one(snapshot_sql, &[]).await.unwrap().get(0);
    let target = connect_sql(&config(&pair.target_conninfo())).await.unwrap();
    let paused: String = target.query_one(snapshot_sql, &[]).await.unwrap().get(0);
    assert_eq!(paused, at_snapshot);
    let now = pair.cluster.psql(&pair.source, snapshot_sql).unwrap();
    assert_ne!(now, at_snapshot, "the source moved on after the snapshot");
    marker.close().await.unwrap();

    // Resume: the held transaction and the rest arrive.
    applier.resume().await.unwrap();
    let mut run_options = pglive_apply::RunOptions::default();
    run_options.stop_at = Some(pair.source_lsn());
    run_quietly(&mut applier, &mut stream, &run_options)
        .await
        .unwrap();
    pair.assert_equal().await;
}

/// A new applier reads the applied position only after an earlier
/// session's open batch on the same stream ended: every batch locks the
/// stream's progress row first, so a batch that was still committing when
/// its applier went away is never applied a second time.
#[tokio::test]
async fn a_new_applier_waits_for_an_earlier_sessions_open_batch() {
    use pglive_postgres::{Lsn, connect_sql, quote_literal};
    let pair = Pair::new("handover", "CREATE TABLE t (id int PRIMARY KEY);").await;
    let target = config(&pair.target_conninfo());
    let first = Applier::connect(&target, options(&pair, 1)).await.unwrap();
    let before = first.applied_lsn();
    drop(first);
    let committed: Lsn = "0/ABCDEF0".parse().unwrap();
    assert_ne!(before, committed);
    let earlier = connect_sql(&target).await.unwrap();
    earlier
        .batch_execute(&format!(
            "BEGIN;
             SELECT 1 FROM pglive.apply_progress WHERE stream_id = {id} FOR UPDATE;
             INSERT INTO t VALUES (1)",
            id = quote_literal(&pair.slot)
        ))
        .await
        .unwrap();
    let connecting = tokio::spawn({
        let (target, options) = (target.clone(), options(&pair, 1));
        async move { Applier::connect(&target, options).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !connecting.is_finished(),
        "the new applier read the position while a batch was open"
    );
    // The batch records its position and commits.
    earlier
        .batch_execute(&format!(
            "UPDATE pglive.apply_progress SET applied_lsn = '{committed}' WHERE stream_id = {}; COMMIT",
            quote_literal(&pair.slot)
        ))
        .await
        .unwrap();
    let applier = connecting.await.unwrap().unwrap();
    assert_eq!(applier.applied_lsn(), committed);
}

/// Batches spread over several target sessions arrive exactly, and a crash
/// between the lanes' commits (one lane held back, the others committed)
/// resumes without applying anything twice or losing anything, also with
/// a different number of sessions.
#[tokio::test]
async fn spread_batches_resume_after_a_crash_between_lane_commits() {
    use pglive_postgres::quote_literal;
    let pair = Pair::new(
        "lanes",
        // Keys far apart, so that they spread over lanes one by one rather
        // than by block of consecutive integers.
        "CREATE TABLE items (id bigint PRIMARY KEY, n int, note text);
         CREATE TABLE tagged (id int PRIMARY KEY, tag text UNIQUE, n int);",
    )
    .await;
    let mut spread = options(&pair, 1);
    spread.sessions = 3;
    spread.max_batch_changes = 1500;
    for round in 0..10 {
        pair.source_sql(&format!(
            "INSERT INTO items SELECT g * 4099, g, 'r{round}' FROM generate_series({a}, {b}) g;
             UPDATE items SET n = n + 1, note = note || '+' WHERE id % 3 <> 0;
             DELETE FROM items WHERE id % 10 = {round};
             INSERT INTO tagged VALUES ({round}, 't{round}', 0);",
            a = round * 200 + 1,
            b = round * 200 + 200,
        ));
    }
    let applier = pair.catch_up(&pair.target_conninfo(), spread.clone()).await;
    pair.assert_equal().await;
    let stats = applier.stats().clone();
    assert!(stats.spread_batches > 0, "{stats:?}");
    drop(applier);

    // Hold lane 0's row the way an open batch would: the next batch (all
    // of the late transactions) commits in lanes 1 and 2, lane 0 waits,
    // and then the applier dies.
    let mut one_batch = spread.clone();
    one_batch.max_batch_changes = 1_000_000;
    one_batch.max_batch_duration = std::time::Duration::from_secs(600);
    let mut applier = Applier::connect(&config(&pair.target_conninfo()), one_batch)
        .await
        .unwrap();
    let before = applier.applied_lsn();
    let stream_id = quote_literal(&pair.slot);
    let holder = pglive_postgres::connect_sql(&config(&pair.target_conninfo()))
        .await
        .unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM pglive.apply_progress WHERE stream_id = {stream_id} AND lane = 0 FOR UPDATE"
        ))
        .await
        .unwrap();
    // Several transactions, which the resuming applier below commits in
    // several batches while it catches up.
    let mut mid = None;
    for part in 0..5 {
        if part == 2 {
            mid = Some(pair.source_lsn());
        }
        pair.source_sql(&format!(
            "INSERT INTO items SELECT g * 4099, g, 'late' FROM generate_series({a}, {b}) g;
             UPDATE items SET n = -n WHERE id % 4 = {part} % 4;
             DELETE FROM items WHERE id % 35 = {part};",
            a = 5001 + part * 100,
            b = 5100 + part * 100,
        ));
    }
    let stop_at = pair.source_lsn();
    let lanes_ahead = format!(
        "SELECT count(*) FROM pglive.apply_progress WHERE stream_id = {stream_id} AND applied_lsn > '{before}'"
    );
    let mut stream = pair.stream(before).await;
    let mut run_options = pglive_apply::RunOptions::default();
    run_options.stop_at = Some(stop_at);
    // A short pause in the stream must not commit part of the backlog
    // early (that small batch would wait on lane 0 too).
    run_options.idle_commit = std::time::Duration::from_millis(500);
    let two_lanes_ahead = async {
        while pair.cluster.psql(&pair.target, &lanes_ahead).unwrap() != "2" {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        stopped = run_quietly(&mut applier, &mut stream, &run_options) => {
            panic!("apply ended while lane 0 was held: {stopped:?}")
        }
        () = two_lanes_ahead => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
            panic!("two lanes never committed")
        }
    }
    drop(stream);
    drop(applier);
    holder.batch_execute("ROLLBACK").await.unwrap();

    let positions = |pair: &Pair| -> Vec<pglive_postgres::Lsn> {
        pair.cluster
            .psql(
                &pair.target,
                &format!(
                    "SELECT string_agg(applied_lsn::text, ' ' ORDER BY lane) FROM pglive.apply_progress WHERE stream_id = {stream_id}"
                ),
            )
            .unwrap()
            .split(' ')
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let crashed = positions(&pair);
    let (low, high, mid) = (crashed[0], crashed[1], mid.unwrap());
    assert_eq!(crashed, [low, high, high], "lanes 1 and 2 committed");
    assert!(low < mid && mid < high, "{low} {mid} {high}");

    // Meanwhile the target changed: a unique index that does not name the
    // key ties the rows, so `items` would no longer be spread. The resume
    // must still assign the cut-short batch's changes to lanes as it was.
    pair.cluster
        .psql(
            &pair.target,
            "CREATE UNIQUE INDEX items_id_again ON items ((id + 0))",
        )
        .unwrap();

    // Resume with two sessions instead of three, and batches smaller than
    // the one that was cut short; stop halfway through it. The three lanes
    // stay (their number decides which lane a change belongs to), none
    // goes back.
    let mut fewer = spread.clone();
    fewer.sessions = 2;
    fewer.max_batch_changes = 200;
    let mut applier = Applier::connect(&config(&pair.target_conninfo()), fewer.clone())
        .await
        .unwrap();
    let mut stream = pair.stream(applier.applied_lsn()).await;
    let mut run_options = pglive_apply::RunOptions::default();
    run_options.pause_before = Some(mid);
    let stopped = run_quietly(&mut applier, &mut stream, &run_options)
        .await
        .unwrap();
    assert!(matches!(stopped, pglive_apply::Stopped::Paused(_)));
    drop(stream);
    drop(applier);
    let halfway = positions(&pair);
    assert_eq!(halfway.len(), 3, "{halfway:?}");
    // Lane 0 moved on (to the end of the last transaction before `mid`).
    assert!(halfway[0] > low && halfway[0] < high, "{low} {halfway:?}");
    assert_eq!(&halfway[1..], [high, high]);

    let applier = pair.catch_up(&pair.target_conninfo(), fewer).await;
    pair.assert_equal().await;
    let lanes = pair
        .cluster
        .psql(
            &pair.target,
            &format!(
                "SELECT count(*) || ' ' || count(DISTINCT applied_lsn) FROM pglive.apply_progress WHERE stream_id = {stream_id}"
            ),
        )
        .unwrap();
    assert_eq!(lanes, "2 1", "two lanes at one position");
    assert!(
        applier.applied_lsn() >= high,
        "past the lane that was ahead"
    );
}

/// A target whose state table predates lanes (one row per stream) keeps
/// its recorded position.
#[tokio::test]
async fn a_progress_table_from_before_lanes_keeps_its_position() {
    use pglive_postgres::quote_literal;
    let pair = Pair::new("upgrade", "CREATE TABLE t (id int PRIMARY KEY);").await;
    pair.cluster
        .psql(
            &pair.target,
            &format!(
                "CREATE SCHEMA pglive;
                 CREATE TABLE pglive.apply_progress (
                     stream_id text PRIMARY KEY,
                     applied_lsn pg_lsn NOT NULL,
                     source_commit_time timestamptz,
                     updated_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO pglive.apply_progress (stream_id, applied_lsn) VALUES ({}, '0/ABCDEF0')",
                quote_literal(&pair.slot)
            ),
        )
        .unwrap();
    let mut four = options(&pair, 1);
    four.sessions = 4;
    let applier = Applier::connect(&config(&pair.target_conninfo()), four)
        .await
        .unwrap();
    assert_eq!(applier.applied_lsn(), "0/ABCDEF0".parse().unwrap());
    let lanes = pair
        .cluster
        .psql(
            &pair.target,
            "SELECT string_agg(lane || '@' || applied_lsn, ' ' ORDER BY lane) FROM pglive.apply_progress",
        )
        .unwrap();
    assert_eq!(lanes, "0@0/ABCDEF0 1@0/ABCDEF0 2@0/ABCDEF0 3@0/ABCDEF0");
}

/// Values that move from one row to another under a unique index arrive,
/// although the target checks the index row by row in its own order
/// (ascending key here), where they collide.
#[tokio::test]
async fn values_moving_between_rows_of_a_unique_index_arrive() {
    let pair = Pair::new(
        "tied",
        "CREATE TABLE tagged (id int PRIMARY KEY, tag text NOT NULL UNIQUE, n int);",
    )
    .await;
    // Each row takes the tag its successor just gave up, in one
    // transaction, then in one transaction per step.
    let chain = |prefix: &str| {
        let mut sql = format!("UPDATE tagged SET tag = '{prefix}tmp' WHERE id = 100;");
        for k in (1..100).rev() {
            sql.push_str(&format!(
                "UPDATE tagged SET tag = '{prefix}t{}', n = n + 1 WHERE id = {k};",
                k + 1
            ));
        }
        sql.push_str(&format!(
            "UPDATE tagged SET tag = '{prefix}t1' WHERE id = 100;"
        ));
        sql
    };
    pair.source_sql("INSERT INTO tagged SELECT g, 't' || g, 0 FROM generate_series(1, 100) g;");
    pair.source_sql(&format!("BEGIN; {} COMMIT;", chain("")));
    pair.source_sql(&chain("x"));
    let mut one = options(&pair, 1);
    one.sessions = 1;
    let applier = pair.catch_up(&pair.target_conninfo(), one).await;
    pair.assert_equal().await;
    assert_eq!(applier.stats().updated, 2 * 101);
}

/// Only keys whose equal values always print the same are spread over
/// sessions: `1.0` and `1.00` are one numeric key but would hash to
/// different lanes. And only batches of mostly updates and deletes.
#[tokio::test]
async fn only_keys_that_print_one_way_are_spread() {
    let pair = Pair::new(
        "canonical",
        "CREATE TABLE by_numeric (k numeric PRIMARY KEY, n int);
         CREATE TABLE by_int (k int PRIMARY KEY, n int);",
    )
    .await;
    let mut spread = options(&pair, 1);
    spread.sessions = 3;
    spread.max_batch_changes = 1000;
    // Updates: a batch of mostly inserts stays on one session anyway.
    pair.source_sql("INSERT INTO by_numeric SELECT g, g FROM generate_series(1, 3000) g");
    pair.source_sql("UPDATE by_numeric SET n = n + 1");
    let applier = pair.catch_up(&pair.target_conninfo(), spread.clone()).await;
    pair.assert_equal().await;
    assert_eq!(applier.stats().spread_batches, 0, "{:?}", applier.stats());
    assert!(applier.stats().batches >= 2, "{:?}", applier.stats());
    drop(applier);
    pair.source_sql("INSERT INTO by_int SELECT g, g FROM generate_series(1, 3000) g");
    pair.source_sql("UPDATE by_int SET n = n + 1");
    let applier = pair.catch_up(&pair.target_conninfo(), spread).await;
    pair.assert_equal().await;
    assert!(applier.stats().spread_batches > 0, "{:?}", applier.stats());
}

#[tokio::test]
async fn a_target_waiting_for_its_synchronous_standby_is_not_confirmed_early() {
    // A cluster of its own: the standby setting is the whole server's.
    let cluster: &'static pglive_testkit::Cluster = Box::leak(Box::new(
        pglive_testkit::Cluster::start(pglive_testkit::ClusterOptions::new()).unwrap(),
    ));
    let pair = Pair::on(
        cluster,
        "syncrep",
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
    )
    .await;
    // Connected (its state tables made) before the target must wait.
    let mut applier = Applier::connect(&config(&pair.target_conninfo()), options(&pair, 1))
        .await
        .unwrap();
    // The source's own commits do not wait; the target's do, for a
    // standby that is not there (yet).
    cluster
        .psql(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET synchronous_commit = local",
                pair.source
            ),
        )
        .unwrap();
    cluster
        .alter_system(&[("synchronous_standby_names", "pglive_absent_standby")])
        .unwrap();
    pair.source_sql("INSERT INTO t VALUES (1, 'after the standby confirms')");
    let stop_at = pair.source_lsn();
    let (source_conninfo, slot, start) = (pair.source_conninfo(), pair.slot.clone(), pair.start);
    let applying = tokio::spawn(async move {
        let stopped = apply_until(&source_conninfo, &slot, start, &mut applier, 1, stop_at).await;
        (applier, stopped)
    });

    // The batch's commit waits for the standby, and the source is not
    // told the change is safe.
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event = 'SyncRep'",
        pair.target
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cluster.psql("postgres", &waiting).unwrap() == "0" {
        assert!(
            !applying.is_finished() && std::time::Instant::now() < deadline,
            "apply committed without waiting for the target's synchronous standby"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let confirmed: Lsn = cluster
        .psql(
            &pair.source,
            &format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
                pair.slot
            ),
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        confirmed < stop_at,
        "{confirmed} confirmed before the standby had {stop_at}"
    );

    // Once the standby requirement is met (here: dropped), apply goes on.
    cluster
        .alter_system(&[("synchronous_standby_names", "")])
        .unwrap();
    let (_applier, stopped) = tokio::time::timeout(std::time::Duration::from_secs(60), applying)
        .await
        .expect("apply finishes once the standby requirement is met")
        .unwrap();
    assert!(
        matches!(stopped, pglive_apply::Stopped::ReachedLsn(_)),
        "{stopped:?}"
    );
    pair.assert_equal().await;
}
