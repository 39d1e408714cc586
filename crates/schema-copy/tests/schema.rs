//! Schema copy and catalog queries against real servers: the catalog's
//! typed values, pre-data before and post-data after (keys first), the
//! empty-target check and its escapes, filters, skipped extensions,
//! sequence sync and role copy.

use pglive_postgres::QualifiedName;
use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_schema::{
    Catalog, Error, ObjectFilter, ReplicaIdentity, SchemaCopy, SchemaOptions, TableKind,
    sync_sequences,
};
use pglive_testkit::{Cluster, ClusterOptions, config};

const SCHEMA: &str = r#"
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE TYPE colour AS ENUM ('red', 'green');
CREATE TABLE t_pk (id bigint PRIMARY KEY, name text, h hstore, c colour, cs colour[],
                   doubled bigint GENERATED ALWAYS AS (id * 2) STORED);
CREATE TABLE t_index (code text NOT NULL, other int);
CREATE UNIQUE INDEX t_index_code ON t_index (code);
ALTER TABLE t_index REPLICA IDENTITY USING INDEX t_index_code;
CREATE TABLE t_unique (a int NOT NULL, b int NOT NULL, CONSTRAINT t_unique_ab UNIQUE (a, b));
ALTER TABLE t_unique REPLICA IDENTITY USING INDEX t_unique_ab;
CREATE TABLE t_full (x int);
ALTER TABLE t_full REPLICA IDENTITY FULL;
CREATE TABLE t_nothing (x int);
ALTER TABLE t_nothing REPLICA IDENTITY NOTHING;
CREATE TABLE t_ref (id int PRIMARY KEY, pk bigint REFERENCES t_pk DEFERRABLE);
CREATE INDEX t_ref_pk ON t_ref (pk);
CREATE TABLE p (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE p1 PARTITION OF p FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE p2 PARTITION OF p FOR VALUES FROM ('2021-01-01') TO ('2022-01-01') PARTITION BY HASH (id);
CREATE TABLE p2a PARTITION OF p2 FOR VALUES WITH (MODULUS 1, REMAINDER 0);
CREATE UNLOGGED TABLE u (k int PRIMARY KEY);
CREATE SCHEMA "Other";
CREATE TABLE "Other"."Tab" ("Id" serial PRIMARY KEY);
CREATE SEQUENCE used_seq START 10;
CREATE SEQUENCE unused_seq START 7;
SELECT setval('used_seq', 42);
CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS n FROM t_pk;
INSERT INTO t_pk (id, name) SELECT g, 'n' || g FROM generate_series(1, 100) g;
INSERT INTO t_index SELECT 'c' || g, g FROM generate_series(1, 10) g;
INSERT INTO t_ref SELECT g, g FROM generate_series(1, 50) g;
SELECT lo_from_bytea(777, 'hello');
"#;

fn source_db(cluster: &Cluster, name: &str) -> String {
    let db = cluster.create_database(name).unwrap();
    cluster.psql(&db, SCHEMA).unwrap();
    db
}

fn options(jobs: usize) -> SchemaOptions {
    let mut options = SchemaOptions::default();
    options.jobs = jobs;
    options
}

#[tokio::test]
async fn catalog_describes_tables_keys_and_types() {
    let cluster = Cluster::shared();
    let db = source_db(cluster, "catalog");
    let client = connect_sql(&config(&cluster.conninfo(&db))).await.unwrap();
    let catalog = Catalog::read(&client, &ObjectFilter::new()).await.unwrap();
    assert_eq!(catalog.server_major(), cluster.major_version());
    assert_eq!(catalog.large_objects, 1);
    assert!(catalog.timescale.hypertables.is_empty());
    let extensions: Vec<&str> = catalog.extensions.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(extensions, ["citext", "hstore", "plpgsql"]);

    let t = catalog.table("public", "t_pk").unwrap();
    assert_eq!(t.kind, TableKind::Ordinary);
    assert_eq!(t.primary_key, ["id"]);
    assert_eq!(t.integer_key(), Some("id"));
    assert_eq!(t.replica_identity, ReplicaIdentity::Default);
    assert_eq!(t.identity_columns, ["id"]);
    assert!(t.bytes > 0);
    let columns: Vec<(&str, &str, bool, bool)> = t
        .columns
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.type_name.as_str(),
                c.generated,
                c.binary_safe,
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("id", "bigint", false, true),
            ("name", "text", false, true),
            ("h", "hstore", false, true),
            ("c", "colour", false, true),
            ("cs", "colour[]", false, false),
            ("doubled", "bigint", true, true),
        ]
    );
    assert_eq!(t.copied_columns().count(), 5);

    let t = catalog.table("public", "t_index").unwrap();
    assert_eq!(
        t.replica_identity,
        ReplicaIdentity::Index {
            name: "t_index_code".into()
        }
    );
    assert_eq!(t.identity_columns, ["code"]);
    assert!(t.primary_key.is_empty());
    assert_eq!(t.integer_key(), None);
    let t = catalog.table("public", "t_unique").unwrap();
    assert_eq!(t.identity_columns, ["a", "b"]);
    assert_eq!(
        catalog.table("public", "t_full").unwrap().replica_identity,
        ReplicaIdentity::Full
    );
    assert_eq!(
        catalog
            .table("public", "t_nothing")
            .unwrap()
            .replica_identity,
        ReplicaIdentity::Nothing
    );

    let p = catalog.table("public", "p").unwrap();
    assert_eq!(p.kind, TableKind::Partitioned);
    assert!(!p.holds_rows());
    assert_eq!(
        p.leaves,
        [
            QualifiedName::new("public", "p1"),
            QualifiedName::new("public", "p2a")
        ]
    );
    assert_eq!(
        catalog.table("public", "p2a").unwrap().partition_of,
        Some(QualifiedName::new("public", "p2"))
    );
    assert!(catalog.table("public", "u").unwrap().unlogged);
    assert!(!catalog.table("public", "t_pk").unwrap().unlogged);
    assert!(catalog.table("Other", "Tab").is_some());
    assert!(
        catalog
            .tables_with_rows()
            .all(|t| t.kind == TableKind::Ordinary)
    );

    let sequences: Vec<(String, Option<i64>)> = catalog
        .sequences
        .iter()
        .map(|s| (s.name.to_string(), s.last_value))
        .collect();
    assert_eq!(
        sequences,
        [
            ("\"Other\".\"Tab_Id_seq\"".to_owned(), None),
            ("\"public\".\"unused_seq\"".to_owned(), None),
            ("\"public\".\"used_seq\"".to_owned(), Some(42)),
        ]
    );

    // Filters use pg_dump's pattern rules.
    let mut filter = ObjectFilter::new();
    filter.exclude_tables = vec!["t_n*".into(), "\"Other\".*".into()];
    let filtered = Catalog::read(&client, &filter).await.unwrap();
    assert!(filtered.table("public", "t_nothing").is_none());
    assert!(filtered.table("Other", "Tab").is_none());
    assert!(filtered.table("public", "t_pk").is_some());
    let mut filter = ObjectFilter::new();
    filter.include_schemas = vec!["\"Other\"".into()];
    let filtered = Catalog::read(&client, &filter).await.unwrap();
    let names: Vec<String> = filtered.tables.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["\"Other\".\"Tab\""]);
    assert_eq!(filtered.sequences.len(), 1);
    let mut filter = ObjectFilter::new();
    filter.include_tables = vec!["\"unclosed".into()];
    assert!(matches!(
        Catalog::read(&client, &filter).await,
        Err(Error::Pattern { .. })
    ));
}

#[tokio::test]
async fn pre_data_then_post_data_with_keys_first() {
    let cluster = Cluster::shared();
    let source_name = source_db(cluster, "prepost");
    let target_name = cluster.create_database("prepost_dst").unwrap();
    let source: ConnectConfig = config(&cluster.conninfo(&source_name));
    let target: ConnectConfig = config(&cluster.conninfo(&target_name));

    let mut copy = SchemaCopy::new(source.clone(), target.clone(), options(2))
        .await
        .unwrap();
    assert!(copy.tools().major() >= cluster.major_version());
    copy.dump(None).await.unwrap();
    let report = copy.restore_pre_data().await.unwrap();
    assert!(report.entries > 10, "{report:?}");
    let count = |sql: &str| cluster.psql(&target_name, sql).unwrap();
    // Tables and the large object exist, without rows, indexes or keys.
    assert_eq!(count("SELECT count(*) FROM t_pk"), "0");
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'Other')"
        ),
        "0"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_largeobject_metadata WHERE oid = 777"),
        "1"
    );
    assert_eq!(
        count("SELECT relreplident FROM pg_class WHERE relname = 't_full'"),
        "f"
    );
    assert_eq!(
        count("SELECT ispopulated FROM pg_matviews WHERE matviewname = 'mv'"),
        "f"
    );

    // A second restore would collide: refused before anything is written.
    let mut again = SchemaCopy::new(source.clone(), target.clone(), options(2))
        .await
        .unwrap();
    let err = again.restore_pre_data().await.unwrap_err();
    assert!(matches!(err, Error::TargetNotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("\"public\".\"mv\""), "{err}");

    cluster
        .psql(&target_name, "INSERT INTO t_pk (id) SELECT generate_series(1, 100); INSERT INTO t_ref SELECT g, g FROM generate_series(1, 50) g")
        .unwrap();
    let report = copy.restore_post_data().await.unwrap();
    // t_pk, t_ref, p, p1, p2, p2a, u, Tab primary keys; the t_index and
    // t_unique identities; the partition attachments.
    assert!(report.key_entries >= 10, "{report:?}");
    assert_eq!(report.materialized_views, 1);
    assert_eq!(count("SELECT n FROM mv"), "100");
    assert_eq!(
        count("SELECT count(*) FROM pg_index WHERE indisreplident"),
        "2"
    );
    assert_eq!(
        count("SELECT relreplident FROM pg_class WHERE relname = 't_index'"),
        "i"
    );
    assert_eq!(
        count("SELECT condeferrable FROM pg_constraint WHERE conname = 't_ref_pk_fkey'"),
        "t"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_indexes WHERE indexname = 't_ref_pk'"),
        "1"
    );

    // A fresh restart drops what is there (foreign keys first)...
    let mut restart_options = options(2);
    restart_options.drop_if_exists = true;
    let mut restart = SchemaCopy::new(source.clone(), target.clone(), restart_options)
        .await
        .unwrap();
    restart.restore_pre_data().await.unwrap();
    assert_eq!(count("SELECT count(*) FROM t_pk"), "0");
    assert_eq!(
        count("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"),
        "0"
    );
    // ... and reusing the schema restores nothing.
    let mut reuse_options = options(2);
    reuse_options.reuse_schema = true;
    let mut reuse = SchemaCopy::new(source, target, reuse_options)
        .await
        .unwrap();
    assert_eq!(reuse.restore_pre_data().await.unwrap().entries, 0);
}

#[tokio::test]
async fn skipped_extensions_and_filters_leave_objects_out() {
    let cluster = Cluster::shared();
    let source_name = source_db(cluster, "skip");
    let target_name = cluster.create_database("skip_dst").unwrap();
    // The provider installed hstore; citext (unused by the selected tables'
    // columns) stays out.
    cluster
        .psql(&target_name, "CREATE EXTENSION hstore")
        .unwrap();
    let mut opts = options(1);
    opts.skip_extensions = true;
    opts.filter.exclude_schemas = vec!["\"Other\"".into()];
    let mut copy = SchemaCopy::new(
        config(&cluster.conninfo(&source_name)),
        config(&cluster.conninfo(&target_name)),
        opts,
    )
    .await
    .unwrap();
    // The empty-target check ignores extension members.
    copy.check_target().await.unwrap();
    copy.restore_pre_data().await.unwrap();
    copy.restore_post_data().await.unwrap();
    let q = |sql: &str| cluster.psql(&target_name, sql).unwrap();
    assert_eq!(
        q("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension"),
        "hstore,plpgsql"
    );
    assert_eq!(
        q("SELECT count(*) FROM pg_namespace WHERE nspname = 'Other'"),
        "0"
    );
    assert_eq!(
        q("SELECT count(*) FROM pg_tables WHERE tablename = 't_pk'"),
        "1"
    );
}

#[tokio::test]
async fn sequences_follow_the_source() {
    let cluster = Cluster::shared();
    let source_name = source_db(cluster, "seq");
    let target_name = cluster.create_database("seq_dst").unwrap();
    let (source, target): (ConnectConfig, ConnectConfig) = (
        config(&cluster.conninfo(&source_name)),
        config(&cluster.conninfo(&target_name)),
    );
    let mut copy = SchemaCopy::new(source.clone(), target.clone(), options(1))
        .await
        .unwrap();
    copy.restore_pre_data().await.unwrap();
    cluster
        .psql(
            &target_name,
            "SELECT nextval('unused_seq'), nextval('unused_seq')",
        )
        .unwrap();
    let source_client = connect_sql(&source).await.unwrap();
    let target_client = connect_sql(&target).await.unwrap();
    let synced = sync_sequences(&source_client, &target_client, &ObjectFilter::new())
        .await
        .unwrap();
    assert_eq!(synced.len(), 3);
    let q = |sql: &str| cluster.psql(&target_name, sql).unwrap();
    assert_eq!(q("SELECT nextval('used_seq')"), "43");
    assert_eq!(q("SELECT nextval('unused_seq')"), "7");
    assert_eq!(q("SELECT nextval('\"Other\".\"Tab_Id_seq\"')"), "1");
}

#[tokio::test]
async fn roles_are_copied_without_passwords_on_request() {
    let source_cluster = Cluster::shared();
    source_cluster
        .psql(
            "postgres",
            "CREATE ROLE \"Odd \"\"Role\"\"\" NOLOGIN; \
             CREATE ROLE app_login LOGIN PASSWORD 'secret' IN ROLE \"Odd \"\"Role\"\"\";",
        )
        .unwrap();
    let source_name = source_cluster.create_database("roles").unwrap();
    let target_cluster = Cluster::start(ClusterOptions::new()).unwrap();
    let target_name = target_cluster.create_database("roles_dst").unwrap();
    let copy = SchemaCopy::new(
        config(&source_cluster.conninfo(&source_name)),
        config(&target_cluster.conninfo(&target_name)),
        options(1),
    )
    .await
    .unwrap();
    assert_eq!(copy.copy_roles().await.unwrap(), 2);
    let q = |sql: &str| target_cluster.psql("postgres", sql).unwrap();
    assert_eq!(
        q(
            "SELECT rolname || ':' || rolcanlogin || ':' || (rolpassword IS NULL) FROM pg_authid WHERE rolname IN ('app_login', 'Odd \"Role\"') ORDER BY 1"
        ),
        "Odd \"Role\":false:true\napp_login:true:true"
    );
    assert_eq!(
        q(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname = 'Odd \"Role\"'"
        ),
        "1"
    );
    // Existing roles are left alone: nothing more to create.
    assert_eq!(copy.copy_roles().await.unwrap(), 0);
}
