//! Every bad input gets its documented message and exit code, and nothing is
//! changed on either server: no slot, no publication, no state.

use pglive_testkit::{Cluster, ClusterOptions};

use crate::util::{self, run, text};
use crate::versions;

/// Exit code for a failed preflight.
const PREFLIGHT: i32 = 3;

fn assert_untouched(cluster: &Cluster, source_db: &str, target_db: &str) {
    assert_eq!(
        cluster
            .psql(
                source_db,
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
            )
            .unwrap(),
        "0",
        "no slot was created"
    );
    assert_eq!(
        cluster
            .psql(source_db, "SELECT count(*) FROM pg_publication")
            .unwrap(),
        "0",
        "no publication was created"
    );
    assert_eq!(
        cluster
            .psql(
                target_db,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pglive'"
            )
            .unwrap(),
        "0",
        "no state was written to the target"
    );
}

/// Runs `pglive migrate` expecting a preflight failure whose message
/// contains `expected`.
fn expect_preflight(source: &str, target: &str, expected: &str) -> String {
    let output = run(&["migrate", "--source", source, "--target", target]);
    let message = text(&output);
    assert_eq!(output.status.code(), Some(PREFLIGHT), "{message}");
    assert!(
        message.contains(expected),
        "expected {expected:?} in:\n{message}"
    );
    assert!(message.contains("nothing was changed"), "{message}");
    message
}

fn pair(cluster: &Cluster, prefix: &str) -> (String, String) {
    util::databases(
        cluster,
        prefix,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')",
    )
}

#[test]
fn malformed_connection_strings() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "malformed");
    let target = cluster.conninfo(&dst);
    expect_preflight("postgresql://host:notaport/db", &target, "invalid port");
    expect_preflight(
        "host=127.0.0.1 sslmode=sometimes",
        &target,
        "invalid sslmode",
    );
    expect_preflight(
        "host=127.0.0.1 bogus=1",
        &target,
        "unknown connection parameter",
    );
    assert_untouched(cluster, &src, &dst);
}

#[test]
fn unreachable_host() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "unreach");
    expect_preflight(
        &format!("host=127.0.0.1 port=1 user=postgres dbname={src} connect_timeout=3"),
        &cluster.conninfo(&dst),
        "cannot connect to the source",
    );
    assert_untouched(cluster, &src, &dst);
}

#[test]
fn wrong_password_and_role_without_replication() {
    let cluster = Cluster::start(ClusterOptions::new().password_auth(true)).unwrap();
    let (src, dst) = pair(&cluster, "auth");
    let role = cluster.role().unwrap();
    let good = cluster.role_conninfo(&src).unwrap();
    let wrong = good.replace(&format!("password={}", role.password), "password=wrong");
    let message = expect_preflight(
        &wrong,
        &cluster.role_conninfo(&dst).unwrap(),
        "password authentication failed",
    );
    assert!(!message.contains(&role.password), "no password in output");
    cluster
        .psql("postgres", "CREATE ROLE plain LOGIN PASSWORD 'plainpw'")
        .unwrap();
    cluster.psql(&src, "GRANT SELECT ON t TO plain").unwrap();
    let plain = format!(
        "host=127.0.0.1 port={} user=plain password=plainpw dbname={src}",
        cluster.port()
    );
    let message = expect_preflight(&plain, &cluster.role_conninfo(&dst).unwrap(), "REPLICATION");
    assert!(!message.contains("plainpw"), "no password in output");
    assert_untouched(&cluster, &src, &dst);
}

#[test]
fn wal_level_replica() {
    let cluster = Cluster::start(ClusterOptions::new().setting("wal_level", "replica")).unwrap();
    let (src, dst) = pair(&cluster, "walrep");
    expect_preflight(
        &cluster.conninfo(&src),
        &cluster.conninfo(&dst),
        "wal_level=replica",
    );
    assert_untouched(&cluster, &src, &dst);
}

/// Privileges a role that is not a superuser lacks are refusals with the
/// statement that grants them: row-level security that would filter the
/// copy, cascading foreign keys without `session_replication_role`, a
/// sequence it may not read, an owner it may not give objects to.
#[test]
fn privileges_the_roles_lack() {
    let cluster = Cluster::start(ClusterOptions::new().password_auth(true)).unwrap();
    let role = cluster.role().unwrap().clone();
    let src = cluster.create_database("privs_src").unwrap();
    let dst = cluster.create_database("privs_dst").unwrap();
    let (source, target) = (
        cluster.role_conninfo(&src).unwrap(),
        cluster.role_conninfo(&dst).unwrap(),
    );
    cluster
        .psql_as(
            &source,
            Some(&role.password),
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent ON DELETE CASCADE);
             CREATE TABLE secret (id int PRIMARY KEY, who text);
             ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
             ALTER TABLE secret FORCE ROW LEVEL SECURITY;
             CREATE SEQUENCE hidden;
             SELECT lo_from_bytea(0, 'x');",
        )
        .unwrap();
    cluster
        .psql(
            &src,
            &format!(
                "REVOKE ALL ON SEQUENCE hidden FROM {user};
                 DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'another_owner') THEN
                     CREATE ROLE another_owner;
                   END IF;
                 END $$;
                 CREATE TABLE theirs (id int PRIMARY KEY);
                 ALTER TABLE theirs OWNER TO another_owner;
                 GRANT SELECT ON theirs TO {user};",
                user = role.user
            ),
        )
        .unwrap();
    let message = expect_preflight(&source, &target, "BYPASSRLS");
    for expected in [
        "GRANT SET ON PARAMETER session_replication_role",
        "child_parent_fkey",
        "GRANT SELECT ON SEQUENCE \"public\".\"hidden\"",
        "GRANT \"another_owner\" TO",
        "\"public\".\"theirs\"",
        "GRANT SELECT ON pg_catalog.pg_largeobject",
    ] {
        assert!(
            message.contains(expected),
            "expected {expected:?} in:\n{message}"
        );
    }
    assert!(!message.contains(&role.password), "no password in output");
    assert_untouched(&cluster, &src, &dst);
}

#[test]
fn slot_already_exists() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "slotexists");
    cluster
        .psql(
            &src,
            "SELECT pg_create_logical_replication_slot('pglive_taken', 'pgoutput')",
        )
        .unwrap();
    let output = run(&[
        "migrate",
        "--source",
        &cluster.conninfo(&src),
        "--target",
        &cluster.conninfo(&dst),
        "--slot",
        "pglive_taken",
    ]);
    let message = text(&output);
    assert_eq!(output.status.code(), Some(PREFLIGHT), "{message}");
    assert!(message.contains("already exists"), "{message}");
    cluster
        .psql(&src, "SELECT pg_drop_replication_slot('pglive_taken')")
        .unwrap();
    assert_untouched(cluster, &src, &dst);
}

#[test]
fn target_not_empty() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "notempty");
    cluster
        .psql(&dst, "CREATE TABLE already_here (x int)")
        .unwrap();
    expect_preflight(
        &cluster.conninfo(&src),
        &cluster.conninfo(&dst),
        "already_here",
    );
    assert_untouched(cluster, &src, &dst);
}

#[test]
fn same_server_as_source_and_target() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "same");
    let source = cluster.conninfo(&src);
    // The same database, even when reached by another address.
    let other_address = source.replace(
        "host=127.0.0.1",
        &format!("host={}", cluster.socket_dir().display()),
    );
    expect_preflight(&source, &other_address, "same database");
    assert_untouched(cluster, &src, &dst);
}

#[test]
fn usage_errors_exit_with_2() {
    let output = run(&["migrate", "--source", "x"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let output = run(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
}

/// A source newer than every pg_dump found is refused, naming the version
/// needed; PostgreSQL 18's idle slot timeout, which would invalidate the
/// slot during a long copy, is warned about.
#[test]
fn source_newer_than_pg_dump_and_idle_slot_timeout() {
    let source_cluster = versions::cluster(18);
    let target_cluster = versions::cluster(18);
    let src = source_cluster.create_database("new_src").unwrap();
    let dst = target_cluster.create_database("new_dst").unwrap();
    source_cluster
        .psql(
            &src,
            "CREATE TABLE t (id int PRIMARY KEY); ALTER SYSTEM SET idle_replication_slot_timeout = '30min'; SELECT pg_reload_conf()",
        )
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (source, target) = (source_cluster.conninfo(&src), target_cluster.conninfo(&dst));
    let output = util::pglive(&["migrate", "--source", &source, "--target", &target])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let message = text(&output);
    assert_eq!(output.status.code(), Some(PREFLIGHT), "{message}");
    assert!(
        message.contains("idle_replication_slot_timeout"),
        "{message}"
    );
    assert!(message.contains("PostgreSQL 18 client"), "{message}");
    assert_untouched(source_cluster, &src, &dst);
    source_cluster
        .psql(
            &src,
            "ALTER SYSTEM RESET idle_replication_slot_timeout; SELECT pg_reload_conf()",
        )
        .unwrap();
}

/// A role that owns source objects but is missing on the target is a
/// preflight failure naming it and the ways out; `--roles` creates it
/// (without a password) and the objects keep their owner.
#[test]
fn missing_roles_are_refused_or_copied_with_roles() {
    let (source_cluster, target_cluster) = (versions::cluster(14), versions::cluster(16));
    let src = source_cluster.create_database("roles_src").unwrap();
    let dst = target_cluster.create_database("roles_dst").unwrap();
    source_cluster
        .psql(
            &src,
            "CREATE ROLE only_on_source NOLOGIN; CREATE ROLE reader_on_source NOLOGIN;
             CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO only_on_source;
             GRANT SELECT ON t TO reader_on_source;",
        )
        .unwrap();
    let (source, target) = (source_cluster.conninfo(&src), target_cluster.conninfo(&dst));
    let message = expect_preflight(&source, &target, "\"only_on_source\"");
    assert!(
        message.contains("\"reader_on_source\"") && message.contains("--roles"),
        "{message}"
    );
    assert_untouched(source_cluster, &src, &src);
    assert_eq!(
        target_cluster
            .psql(
                &dst,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'pglive'"
            )
            .unwrap(),
        "0",
        "no state was written to the target"
    );
    let mut migrate = util::migrate_until_streaming(&source, &target, "roles", &["--roles"]);
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    assert_eq!(
        target_cluster
            .psql(
                &dst,
                "SELECT pg_get_userbyid(relowner) || ' ' || has_table_privilege('reader_on_source', 'public.t', 'SELECT')
                   FROM pg_class WHERE relname = 't'"
            )
            .unwrap(),
        "only_on_source true"
    );
    util::run_ok(&[
        "clean", "--source", &source, "--target", &target, "--name", "roles", "--force",
    ]);
}

/// A target older than the source is refused, naming both versions.
#[test]
fn target_older_than_source() {
    let (source_cluster, target_cluster) = (versions::cluster(16), versions::cluster(14));
    let src = source_cluster.create_database("older_src").unwrap();
    let dst = target_cluster.create_database("older_dst").unwrap();
    source_cluster
        .psql(&src, "CREATE TABLE t (id int PRIMARY KEY)")
        .unwrap();
    let (source, target) = (source_cluster.conninfo(&src), target_cluster.conninfo(&dst));
    expect_preflight(
        &source,
        &target,
        "the target runs PostgreSQL 14 but the source 16",
    );
    assert_untouched(source_cluster, &src, &src);
}

/// With --include, a table whose default uses a sequence left out (not
/// owned by the table, so pg_dump would not dump it) is refused, naming the
/// --include to add; with it, the migration goes ahead.
#[test]
fn include_without_the_sequence_a_default_uses() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "defseq");
    cluster
        .psql(
            &src,
            "CREATE SEQUENCE shared_ids; CREATE TABLE uses_it (id bigint PRIMARY KEY DEFAULT nextval('shared_ids'));",
        )
        .unwrap();
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    let output = run(&[
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--include",
        "public.uses_it",
    ]);
    let message = text(&output);
    assert_eq!(output.status.code(), Some(PREFLIGHT), "{message}");
    assert!(
        message.contains("--include '\"public\".\"shared_ids\"'"),
        "{message}"
    );
    assert_untouched(cluster, &src, &dst);
    let mut migrate = util::migrate_until_streaming(
        &source,
        &target,
        "defseq",
        &[
            "--include",
            "public.uses_it",
            "--include",
            "\"public\".\"shared_ids\"",
        ],
    );
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    util::run_ok(&[
        "clean", "--source", &source, "--target", &target, "--name", "defseq", "--force",
    ]);
}

/// Slot and publication names PostgreSQL would refuse (a slot name may
/// hold only lower-case letters, digits and underscores, and the
/// migration's name also names its temporary slots) are refused before
/// the publication or anything else is created.
#[test]
fn names_postgresql_would_refuse() {
    let cluster = Cluster::shared();
    let (src, dst) = pair(cluster, "names");
    let (source, target) = (cluster.conninfo(&src), cluster.conninfo(&dst));
    for (flag, name) in [
        ("--name", "Shop-Migration"),
        ("--slot", "slot with spaces"),
        ("--name", ""),
        (
            "--name",
            "a_name_longer_than_its_temporary_slots_allow_1234",
        ),
        ("--publication", ""),
    ] {
        let output = run(&[
            "migrate", "--source", &source, "--target", &target, flag, name,
        ]);
        let message = text(&output);
        assert_eq!(
            output.status.code(),
            Some(PREFLIGHT),
            "{flag} {name:?}: {message}"
        );
        assert!(message.contains(flag), "{flag} {name:?}: {message}");
        assert_untouched(cluster, &src, &dst);
    }
}
