//! The data copy against real servers: a type zoo copied under an exported
//! snapshot equals the source row by row and schema by schema; rows
//! committed after the slot's consistent point stay out; a copy killed
//! midway resumes; two copies share one plan; a target role that only owns
//! its database is enough.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pglive_postgres::QualifiedName;
use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_repl::{ReplicationClient, SlotOptions, SnapshotAction};
use pglive_schema::{Catalog, ObjectFilter, SchemaCopy, SchemaOptions};
use pglive_snapshot::{Copier, CopyEvent, CopyOptions, PlanOptions, Snapshot};
use pglive_testkit::{Cluster, ClusterOptions, config};

const ZOO: &str = include_str!("fixtures/zoo.sql");

/// The environment variable that turns `crash_child` into the copy process
/// that `crash_midway_then_resume` kills.
const CRASH_CHILD: &str = "PGLIVE_SNAPSHOT_TEST_CRASH_CHILD";

/// A source database loaded with the zoo and an empty target database.
fn zoo_databases(cluster: &Cluster, name: &str) -> (String, String) {
    let source = cluster.create_database(&format!("{name}_src")).unwrap();
    cluster.psql(&source, ZOO).unwrap();
    let target = cluster.create_database(&format!("{name}_dst")).unwrap();
    (source, target)
}

/// A temporary slot with an exported snapshot; the snapshot stays valid
/// while the returned connection stays open and idle.
async fn export_snapshot(source: &ConnectConfig, slot: &str) -> (ReplicationClient, Snapshot) {
    let mut client = ReplicationClient::connect(source).await.unwrap();
    let created = client
        .create_slot(
            slot,
            &SlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..SlotOptions::default()
            },
        )
        .await
        .unwrap();
    let snapshot = Snapshot::from_slot(&created).expect("exported");
    (client, snapshot)
}

async fn tables(source: &ConnectConfig) -> Catalog {
    let client = connect_sql(source).await.unwrap();
    Catalog::read(&client, &ObjectFilter::new()).await.unwrap()
}

/// Parts small enough that the zoo's big tables split (zoo by key, nokey by
/// blocks).
fn small_parts() -> PlanOptions {
    let mut plan = PlanOptions::default();
    plan.split_threshold = 400 << 10;
    plan.part_size = 200 << 10;
    plan
}

fn options(workers: usize, plan: PlanOptions) -> CopyOptions {
    let mut options = CopyOptions::default();
    options.workers = workers;
    options.plan = plan;
    options
}

/// Per table (and materialized view, and large objects): the row count and
/// an md5 of the sorted rows as text, computed the same way on both sides in
/// sessions with pinned settings.
async fn checksums(db: &ConnectConfig) -> BTreeMap<String, String> {
    let client = connect_sql(db).await.unwrap();
    let catalog = Catalog::read(&client, &ObjectFilter::new()).await.unwrap();
    let mut sums = BTreeMap::new();
    let mut relations: Vec<String> = catalog
        .tables
        .iter()
        .map(|t| format!("ONLY {}", t.name))
        .collect();
    relations.push("public.zoo_stats".into());
    for relation in relations {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*)::text || ' ' || \
                            coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') \
                     FROM {relation} AS t"
                ),
                &[],
            )
            .await
            .unwrap();
        sums.insert(relation, row.get(0));
    }
    let row = client
        .query_one(
            "SELECT coalesce(string_agg(oid::text || ':' || md5(lo_get(oid)) || ':' || \
                     coalesce(obj_description(oid, 'pg_largeobject'), ''), ',' ORDER BY oid), '') \
             FROM pg_largeobject_metadata",
            &[],
        )
        .await
        .unwrap();
    sums.insert("large objects".into(), row.get(0));
    sums
}

/// `pg_dump --schema-only` without comments, blank lines and the random
/// `\restrict` keys, and without pglive's own state.
fn schema_dump(bin_dir: &Path, conninfo: &str) -> String {
    let out = Command::new(bin_dir.join("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "--no-acl",
            "--exclude-schema=pglive",
            "--dbname",
            conninfo,
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("--")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
                && !l.trim().is_empty()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn schema_copy(source: &ConnectConfig, target: &ConnectConfig) -> SchemaCopy {
    let mut options = SchemaOptions::default();
    options.jobs = 2;
    // A target role that only owns its database cannot give objects to
    // the source's owners (pglive's --no-owner --no-acl).
    let superuser: bool = connect_sql(target)
        .await
        .unwrap()
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    options.keep_owners = superuser;
    options.keep_privileges = superuser;
    SchemaCopy::new(source.clone(), target.clone(), options)
        .await
        .unwrap()
}

/// The parts of a split table only append to it: none reads the target
/// table (which has no index yet), so the copy stays linear in its size.
/// Read once the statistics of the copy's sessions arrived (they count
/// the `rows` COPY wrote).
async fn assert_parts_never_scanned_the_target(target: &ConnectConfig, table: &str, rows: u64) {
    let client = connect_sql(target).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT coalesce(n_tup_ins, 0), coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
                &[&table],
            )
            .await
            .unwrap();
        let (inserted, scans): (i64, i64) = (row.get(0), row.get(1));
        if inserted >= rows as i64 {
            assert_eq!(scans, 0, "the copy's parts scanned the target's {table}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "statistics of {table} never arrived ({inserted} of {rows} rows)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The whole flow: pre-data under the snapshot, rows committed after the
/// slot, the copy, post-data; then the target must equal the source as it
/// was at the slot.
async fn copy_and_verify(cluster: &Cluster, source_info: &str, target_info: &str, slot: &str) {
    let (source, target): (ConnectConfig, ConnectConfig) =
        (config(source_info), config(target_info));
    let before = checksums(&source).await;
    let (_replication, snapshot) = export_snapshot(&source, slot).await;

    // Committed after the consistent point: must not be copied.
    let late = connect_sql(&source).await.unwrap();
    late.batch_execute(
        "INSERT INTO zoo (id, ci) VALUES (100001, 'late'); \
         INSERT INTO parent VALUES (100001, 'late'); \
         DELETE FROM cache WHERE k = 'k1'; \
         UPDATE \"Ünïcode \"\"Schema\"\"\".\"Mixed \"\"Quoted\"\" Tåble\" SET \"Välue\" = 'late'; \
         SELECT lo_put(424242, 0, '\\x41');",
    )
    .await
    .unwrap();

    let mut schema = schema_copy(&source, &target).await;
    schema.dump(Some(&snapshot.name)).await.unwrap();
    schema.restore_pre_data().await.unwrap();
    let catalog = tables(&source).await;
    let copier = Copier::new(
        source.clone(),
        target.clone(),
        catalog.tables.clone(),
        options(3, small_parts()),
    );
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&events);
    let summary = copier
        .run(&snapshot, move |e| sink.lock().unwrap().push(e))
        .await
        .unwrap();
    let zoo_rows: u64 = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            CopyEvent::PartDone { table, rows, .. } if table.name == "zoo" => Some(*rows),
            _ => None,
        })
        .sum();
    assert_parts_never_scanned_the_target(&target, "zoo", zoo_rows).await;
    let post = schema.restore_post_data().await.unwrap();
    assert!(post.key_entries >= 8, "{post:?}");
    assert_eq!(post.materialized_views, 1, "{post:?}");

    // Every table holding rows is done, at the slot's LSN.
    let target_client = connect_sql(&target).await.unwrap();
    let copied = pglive_snapshot::copied_at(&target_client, "default")
        .await
        .unwrap();
    let with_rows: Vec<&QualifiedName> = catalog.tables_with_rows().map(|t| &t.name).collect();
    assert_eq!(copied.len(), with_rows.len(), "{copied:?}");
    assert!(copied.values().all(|lsn| *lsn == snapshot.lsn));
    for name in &with_rows {
        assert!(copied.contains_key(*name), "{name} missing from copied_at");
    }
    let parts = pglive_snapshot::status(&target_client, "default")
        .await
        .unwrap();
    assert!(parts.iter().all(|p| p.done));
    assert_eq!(summary.parts, parts.len());
    assert_eq!(summary.remaining, 0);
    let zoo = QualifiedName::new("public", "zoo");
    let nokey = QualifiedName::new("public", "nokey");
    assert!(
        parts.iter().filter(|p| p.table == zoo).count() > 1,
        "zoo split"
    );
    assert!(
        parts.iter().filter(|p| p.table == nokey).count() > 1,
        "nokey split by blocks"
    );
    let events = std::mem::take(&mut *events.lock().unwrap());
    assert!(matches!(events[0], CopyEvent::Planned { .. }));
    let done_events = events
        .iter()
        .filter(|e| matches!(e, CopyEvent::PartDone { .. }))
        .count();
    assert_eq!(done_events, parts.len());

    // Row by row, and schema by schema.
    let after = checksums(&target).await;
    assert_eq!(before.len(), after.len());
    for (relation, sum) in &before {
        assert_eq!(Some(sum), after.get(relation), "{relation}");
    }
    let late_rows: i64 = target_client
        .query_one(
            "SELECT (SELECT count(*) FROM zoo WHERE id = 100001) \
                  + (SELECT count(*) FROM parent WHERE id = 100001)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late_rows, 0);
    let source_schema = schema_dump(cluster.bin_dir(), source_info);
    let target_schema = schema_dump(cluster.bin_dir(), target_info);
    assert!(source_schema.contains("CREATE TABLE public.zoo"));
    assert_eq!(source_schema, target_schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoo_copies_exactly_under_the_snapshot() {
    let cluster = Cluster::shared();
    let (source, target) = zoo_databases(cluster, "zoo");
    copy_and_verify(
        cluster,
        &cluster.conninfo(&source),
        &cluster.conninfo(&target),
        "zoo_copy",
    )
    .await;
}

/// A table whose keys are skewed (dense, then one far outlier) still splits
/// into parts of about the same size: split points follow the rows, not
/// the key's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_table_splits_into_even_parts() {
    let cluster = Cluster::shared();
    let table = "CREATE TABLE skewed (id bigint PRIMARY KEY, pad text);";
    let source_db = cluster.create_database("skew_src").unwrap();
    let target_db = cluster.create_database("skew_dst").unwrap();
    cluster
        .psql(
            &source_db,
            &format!(
                "{table} INSERT INTO skewed SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
                 INSERT INTO skewed VALUES (1000000000000, 'far'); ANALYZE skewed;"
            ),
        )
        .unwrap();
    cluster.psql(&target_db, table).unwrap();
    let (source, target): (ConnectConfig, ConnectConfig) = (
        config(&cluster.conninfo(&source_db)),
        config(&cluster.conninfo(&target_db)),
    );
    let (_replication, snapshot) = export_snapshot(&source, "skew_copy").await;
    let catalog = tables(&source).await;
    Copier::new(
        source.clone(),
        target.clone(),
        catalog.tables.clone(),
        options(2, small_parts()),
    )
    .run(&snapshot, |_| {})
    .await
    .unwrap();
    let target_client = connect_sql(&target).await.unwrap();
    let rows: Vec<i64> = pglive_snapshot::status(&target_client, "default")
        .await
        .unwrap()
        .iter()
        .filter(|p| p.table.name == "skewed")
        .map(|p| p.rows.unwrap())
        .collect();
    assert!(rows.len() >= 4, "{rows:?}");
    let (fewest, most) = (rows.iter().min().unwrap(), rows.iter().max().unwrap());
    assert!(most <= &(fewest * 2), "uneven parts: {rows:?}");
    assert_eq!(rows.iter().sum::<i64>(), 20001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_role_owning_only_its_database_is_enough() {
    let cluster = Cluster::start(ClusterOptions::new().password_auth(true)).unwrap();
    let (source, target) = zoo_databases(&cluster, "role");
    let role = cluster.role().unwrap();
    let superuser: String = cluster
        .psql(
            "postgres",
            &format!(
                "SELECT rolsuper FROM pg_roles WHERE rolname = '{}'",
                role.user
            ),
        )
        .unwrap();
    assert_eq!(superuser, "f");
    copy_and_verify(
        &cluster,
        &cluster.conninfo(&source),
        &cluster.role_conninfo(&target).unwrap(),
        "role_copy",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_share_the_parts() {
    let cluster = Cluster::shared();
    let (source_db, target_db) = zoo_databases(cluster, "shared");
    let (source, target): (ConnectConfig, ConnectConfig) = (
        config(&cluster.conninfo(&source_db)),
        config(&cluster.conninfo(&target_db)),
    );
    let before = checksums(&source).await;
    let (_replication, snapshot) = export_snapshot(&source, "shared_copy").await;
    let mut schema = schema_copy(&source, &target).await;
    schema.dump(Some(&snapshot.name)).await.unwrap();
    schema.restore_pre_data().await.unwrap();
    let catalog = tables(&source).await;
    let copier = |name: &str| {
        let mut options = options(2, small_parts());
        options.process_name = name.to_owned();
        Copier::new(
            source.clone(),
            target.clone(),
            catalog.tables.clone(),
            options,
        )
    };
    let (a, b) = (copier("a"), copier("b"));
    // Planning twice records the parts once.
    let planned = a.prepare(&snapshot).await.unwrap();
    assert_eq!(b.prepare(&snapshot).await.unwrap(), planned);
    let (ra, rb) = tokio::join!(a.run(&snapshot, |_| {}), b.run(&snapshot, |_| {}));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let target_client = connect_sql(&target).await.unwrap();
    let parts = pglive_snapshot::status(&target_client, "default")
        .await
        .unwrap();
    assert!(parts.iter().all(|p| p.done));
    assert_eq!(ra.parts + rb.parts, parts.len(), "each part copied once");
    let by: std::collections::BTreeSet<String> = parts
        .iter()
        .filter_map(|p| Some(p.claimed_by.as_ref()?.split('/').next()?.to_owned()))
        .collect();
    assert_eq!(by.len(), 2, "both copies took parts: {by:?}");
    schema.restore_post_data().await.unwrap();
    assert_eq!(before, checksums(&target).await);

    let names: Vec<QualifiedName> = catalog.tables_with_rows().map(|t| t.name.clone()).collect();
    pglive_snapshot::vacuum_analyze(&target, &names)
        .await
        .unwrap();
    let unvacuumed: String = target_client
        .query_one(
            "SELECT coalesce(string_agg(s.relname, ', '), '') FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid \
             WHERE s.schemaname <> 'pglive' AND c.relkind = 'r' AND s.last_vacuum IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unvacuumed, "");
}

#[tokio::test]
async fn a_snapshot_that_is_gone_is_a_clear_error() {
    let cluster = Cluster::shared();
    let source = cluster.create_database("gone_src").unwrap();
    let target = cluster.create_database("gone_dst").unwrap();
    let (source, target): (ConnectConfig, ConnectConfig) = (
        config(&cluster.conninfo(&source)),
        config(&cluster.conninfo(&target)),
    );
    let (replication, snapshot) = export_snapshot(&source, "gone").await;
    replication.close().await.unwrap();
    let copier = Copier::new(source, target, Vec::new(), CopyOptions::default());
    let err = copier.run(&snapshot, |_| {}).await.unwrap_err();
    assert!(
        matches!(err, pglive_snapshot::Error::Snapshot { .. }),
        "{err}"
    );
    assert_eq!(err.sqlstate(), Some("22023"), "{err}");
    assert!(err.to_string().contains(&snapshot.name), "{err}");
}

/// Not a test on its own: the copy process that `crash_midway_then_resume`
/// starts and kills. Slowed down so it is killed with parts in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CRASH_CHILD) else {
        return;
    };
    let (source_info, target_info) = spec.split_once('\t').unwrap();
    let (source, target): (ConnectConfig, ConnectConfig) =
        (config(source_info), config(target_info));
    let (_replication, snapshot) = export_snapshot(&source, "crash_child").await;
    let catalog = tables(&source).await;
    let copier = Copier::new(source, target, catalog.tables, options(2, small_parts()));
    copier
        .run(&snapshot, |event| {
            if let CopyEvent::PartStarted { .. } = event {
                // Holds the claimed part's transaction open for a while.
                std::thread::sleep(Duration::from_millis(250));
            }
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_midway_then_resume() {
    let cluster = Cluster::shared();
    let (source_db, target_db) = zoo_databases(cluster, "crash");
    let (source_info, target_info) = (cluster.conninfo(&source_db), cluster.conninfo(&target_db));
    let (source, target): (ConnectConfig, ConnectConfig) =
        (config(&source_info), config(&target_info));
    let before = checksums(&source).await;
    let mut schema = schema_copy(&source, &target).await;
    schema.dump(None).await.unwrap();
    schema.restore_pre_data().await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD, format!("{source_info}\t{target_info}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a dozen parts are done (the biggest tables come first).
    let target_client = connect_sql(&target).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_lsn = loop {
        assert!(Instant::now() < deadline, "the child copied too slowly");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child finished before being killed"
        );
        let parts = pglive_snapshot::status(&target_client, "default")
            .await
            .unwrap();
        let done: Vec<_> = parts.iter().filter(|p| p.done).collect();
        if done.len() >= 12 {
            break done[0].copied_at.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let parts = pglive_snapshot::status(&target_client, "default")
        .await
        .unwrap();
    let total = parts.len();
    let pending = parts.iter().filter(|p| !p.done).count();
    assert!(pending > 0, "killed midway");
    let (finished, half_done): (Vec<QualifiedName>, Vec<QualifiedName>) = {
        let mut tables: BTreeMap<&QualifiedName, (usize, usize)> = BTreeMap::new();
        for p in &parts {
            let entry = tables.entry(&p.table).or_default();
            if p.done {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        let finished = tables
            .iter()
            .filter(|(_, (_, pending))| *pending == 0)
            .map(|(t, _)| (*t).clone())
            .collect();
        let half_done = tables
            .iter()
            .filter(|(_, (done, pending))| *done > 0 && *pending > 0)
            .map(|(t, _)| (*t).clone())
            .collect();
        (finished, half_done)
    };
    assert!(!finished.is_empty());

    // Run again under a new snapshot: finished tables stay, the rest is
    // copied, half-done tables start over.
    let (_replication, snapshot) = export_snapshot(&source, "crash_resume").await;
    assert!(snapshot.lsn > first_lsn);
    let catalog = tables(&source).await;
    let copier = Copier::new(
        source.clone(),
        target.clone(),
        catalog.tables,
        options(2, small_parts()),
    );
    let summary = copier.run(&snapshot, |_| {}).await.unwrap();
    assert_eq!(summary.restarted, half_done);
    assert!(summary.parts < total, "resumed, not restarted: {summary:?}");
    let copied = pglive_snapshot::copied_at(&target_client, "default")
        .await
        .unwrap();
    for table in finished.iter().filter(|t| t.schema != "pg_catalog") {
        assert_eq!(
            copied.get(table),
            Some(&first_lsn),
            "{table} kept from the first run"
        );
    }
    assert!(copied.values().any(|lsn| *lsn == snapshot.lsn));

    // Post-data builds the primary keys: duplicates would fail it.
    schema.restore_post_data().await.unwrap();
    assert_eq!(before, checksums(&target).await);
}
