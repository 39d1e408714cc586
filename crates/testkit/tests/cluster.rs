//! Throwaway clusters against the real PostgreSQL programs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pglive_testkit::{Cluster, ClusterOptions, Error, PgBinaries};

/// Set in the environment of the child that `killed_process_leaves_nothing`
/// runs and kills.
const HELPER_ENV: &str = "PGLIVE_TESTKIT_KILL_HELPER";

fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // A zombie has exited; only its parent's bookkeeping is left.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits up to 10 s for `done`.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn finds_binaries() {
    let bins = PgBinaries::find().unwrap();
    assert!(bins.program("postgres").is_file());
    assert!(bins.program("psql").is_file());
    assert!(bins.major() >= 10);
    assert_eq!(
        PgBinaries::find_major(bins.major()).unwrap().major(),
        bins.major()
    );
    let err = PgBinaries::find_major(7).unwrap_err();
    assert!(matches!(
        err,
        Error::BinariesNotFound { major: Some(7), .. }
    ));
    assert!(err.to_string().contains("PG_BINDIR"), "{err}");
}

#[test]
fn default_cluster_runs_sql() {
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions::new().setting("work_mem", "8MB")).unwrap();
    eprintln!("cluster started in {:?}", started.elapsed());

    assert_eq!(
        cluster.psql("postgres", "SHOW wal_level").unwrap(),
        "logical"
    );
    assert_eq!(
        cluster
            .psql("postgres", "SHOW max_replication_slots")
            .unwrap(),
        "20"
    );
    assert_eq!(cluster.psql("postgres", "SHOW work_mem").unwrap(), "8MB");
    assert_eq!(cluster.psql("postgres", "SHOW ssl").unwrap(), "off");
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, 'y'"
            )
            .unwrap(),
        "1|x\n2|y"
    );
    assert!(cluster.log_path().is_file());
    assert!(cluster.data_dir().join("PG_VERSION").is_file());
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    assert!(cluster.role().is_none() && cluster.ca_cert().is_none());

    // Over TCP, with trust, replication connections included.
    let conninfo = cluster.conninfo("postgres");
    assert!(conninfo.starts_with(&format!(
        "host=127.0.0.1 port={} user=postgres",
        cluster.port()
    )));
    assert_eq!(
        cluster
            .psql_as(&conninfo, None, "SELECT current_user")
            .unwrap(),
        "postgres"
    );
    let replication = format!("{conninfo} replication=database");
    let system = cluster
        .psql_as(&replication, None, "IDENTIFY_SYSTEM")
        .unwrap();
    assert_eq!(system.split('|').nth(3), Some("postgres"), "{system}");

    // A failing statement stops the script and reports psql's error.
    let err = cluster
        .psql("postgres", "SELECT 1; SELEC 2; SELECT 3")
        .unwrap_err();
    match &err {
        Error::Psql { stderr, .. } => assert!(stderr.contains("syntax error"), "{err}"),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn failed_start_reports_the_server_log() {
    let err = Cluster::start(ClusterOptions::new().setting("shared_buffers", "lots")).unwrap_err();
    match &err {
        Error::Server {
            log_tail, log_path, ..
        } => {
            assert!(log_tail.contains("shared_buffers"), "{err}");
            // The directory holding the log is gone with the failed cluster.
            assert!(!log_path.exists());
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn two_clusters_get_distinct_ports() {
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| Cluster::start(ClusterOptions::new()).unwrap());
        let b = s.spawn(|| Cluster::start(ClusterOptions::new()).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.root_dir(), b.root_dir());
    a.psql("postgres", "CREATE DATABASE only_in_a").unwrap();
    let sql = "SELECT count(*) FROM pg_database WHERE datname = 'only_in_a'";
    assert_eq!(a.psql_as(&a.conninfo("postgres"), None, sql).unwrap(), "1");
    assert_eq!(b.psql_as(&b.conninfo("postgres"), None, sql).unwrap(), "0");
}

#[test]
fn password_and_ssl_cluster_verifies_and_authenticates() {
    let cluster = Cluster::start(ClusterOptions::new().ssl(true).password_auth(true)).unwrap();
    let db = cluster.create_database("tls").unwrap();
    let role = cluster.role().unwrap().clone();
    let ca = cluster.ca_cert().unwrap();
    assert!(
        std::fs::read_to_string(ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname={db} sslmode=verify-full sslrootcert={}",
        cluster.port(),
        role.user,
        ca.display()
    );

    let sql = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let out = cluster
        .psql_as(&conninfo, Some(&role.password), sql)
        .unwrap();
    assert_eq!(out, format!("{}|t", role.user));

    // Not a superuser, but may replicate, and owns the test database.
    let sql = "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user";
    assert_eq!(
        cluster
            .psql_as(&conninfo, Some(&role.password), sql)
            .unwrap(),
        "f|t"
    );
    let sql = "CREATE TABLE owned (id int PRIMARY KEY); SELECT count(*) FROM owned";
    assert_eq!(
        cluster
            .psql_as(&conninfo, Some(&role.password), sql)
            .unwrap(),
        "0"
    );
    let replication = format!("{conninfo} replication=database");
    let system = cluster
        .psql_as(&replication, Some(&role.password), "IDENTIFY_SYSTEM")
        .unwrap();
    assert!(system.contains(&db), "{system}");

    // Wrong or missing passwords are refused, and never echoed.
    for password in [Some("wrong-password"), None] {
        let err = cluster
            .psql_as(&conninfo, password, "SELECT 1")
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Psql { .. }), "{text}");
        assert!(
            text.contains("password authentication failed")
                || text.contains("no password supplied"),
            "{text}"
        );
        assert!(!text.contains(&role.password));
    }
    let with_password = format!("{conninfo} password=wrong-password");
    let text = cluster
        .psql_as(&with_password, None, "SELECT 1")
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("password=<redacted>") && !text.contains("wrong-password"),
        "{text}"
    );

    // The superuser needs its password over TCP, none over the socket.
    let superuser_tcp = cluster.conninfo(&db);
    assert!(superuser_tcp.contains("password="));
    assert_eq!(
        cluster
            .psql_as(&superuser_tcp, None, "SELECT current_user")
            .unwrap(),
        "postgres"
    );
    let without = superuser_tcp.split(" password=").next().unwrap();
    assert!(cluster.psql_as(without, None, "SELECT 1").is_err());
    assert_eq!(
        cluster.psql(&db, "SELECT current_user").unwrap(),
        "postgres"
    );
    assert_eq!(
        cluster
            .psql_as(
                &cluster.role_conninfo(&db).unwrap(),
                None,
                "SELECT current_user"
            )
            .unwrap(),
        role.user
    );
}

#[test]
fn drop_removes_directory_and_process() {
    let cluster = Cluster::start(ClusterOptions::new()).unwrap();
    let root = cluster.root_dir().to_path_buf();
    let pid = cluster.postmaster_pid().unwrap();
    assert!(root.is_dir() && process_exists(pid));
    drop(cluster);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(!process_exists(pid), "postmaster {pid} still runs");
}

#[test]
fn panicking_test_still_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = thread::spawn(move || {
        let cluster = Cluster::start(ClusterOptions::new()).unwrap();
        tx.send((
            cluster.root_dir().to_path_buf(),
            cluster.postmaster_pid().unwrap(),
        ))
        .unwrap();
        panic!("test failure while holding a cluster");
    })
    .join();
    assert!(result.is_err());
    let (root, pid) = rx.recv().unwrap();
    assert!(!root.exists() && !process_exists(pid));
}

#[test]
fn restart_stop_kill_and_alter_system() {
    let cluster = Cluster::start(ClusterOptions::new()).unwrap();
    let db = cluster.create_database("restart").unwrap();
    cluster
        .psql(&db, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .unwrap();

    cluster
        .alter_system(&[("max_connections", "42"), ("work_mem", "6MB")])
        .unwrap();
    assert!(eventually(
        || cluster.psql(&db, "SHOW work_mem").unwrap() == "6MB"
    ));
    assert_eq!(cluster.psql(&db, "SHOW max_connections").unwrap(), "100");
    cluster.restart().unwrap();
    assert_eq!(cluster.psql(&db, "SHOW max_connections").unwrap(), "42");

    let pid = cluster.postmaster_pid().unwrap();
    cluster.stop().unwrap();
    assert!(cluster.postmaster_pid().is_none() && !process_exists(pid));
    assert!(matches!(
        cluster.psql(&db, "SELECT 1"),
        Err(Error::Psql { .. })
    ));
    cluster.restart().unwrap();
    cluster.kill().unwrap();
    cluster.restart().unwrap();
    assert_eq!(cluster.psql(&db, "SELECT v FROM t").unwrap(), "1");
    assert!(matches!(
        cluster.alter_system(&[("x; DROP TABLE t; --", "1")]),
        Err(Error::InvalidSetting { .. })
    ));
    assert!(matches!(
        Cluster::start(ClusterOptions::new().setting("bad name", "1")),
        Err(Error::InvalidSetting { .. })
    ));
}

#[test]
fn shared_cluster_gives_fresh_databases() {
    let cluster = Cluster::shared();
    assert!(std::ptr::eq(cluster, Cluster::shared()));
    let a = cluster.create_database("fresh").unwrap();
    let b = cluster.create_database("fresh").unwrap();
    assert_ne!(a, b);
    assert!(a.starts_with("fresh_") && a.ends_with(&format!("_{}", std::process::id())));
    cluster.psql(&a, "CREATE TABLE only_in_a (id int)").unwrap();
    let sql = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'";
    assert_eq!(cluster.psql(&a, sql).unwrap(), "1");
    assert_eq!(cluster.psql(&b, sql).unwrap(), "0");
}

/// Run by `killed_process_leaves_nothing` in a child process: starts a
/// cluster, reports it, and waits to be killed.
#[test]
#[ignore = "helper for killed_process_leaves_nothing"]
fn kill_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let cluster = Cluster::start(ClusterOptions::new()).unwrap();
    let shared = Cluster::shared();
    println!(
        "HELPER {} {} {} {}",
        cluster.root_dir().display(),
        cluster.postmaster_pid().unwrap(),
        shared.root_dir().display(),
        shared.postmaster_pid().unwrap()
    );
    thread::sleep(Duration::from_secs(120));
}

#[test]
fn killed_process_leaves_nothing() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "kill_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // libtest prints "test kill_helper ... " before the test's own output.
    let line = stdout
        .lines()
        .map(Result::unwrap)
        .find_map(|line| line.find("HELPER ").map(|i| line[i..].to_owned()));
    let Some(line) = line else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("the helper did not report its clusters");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let clusters = [
        (PathBuf::from(fields[1]), fields[2].parse::<u32>().unwrap()),
        (PathBuf::from(fields[3]), fields[4].parse::<u32>().unwrap()),
    ];
    for (root, pid) in &clusters {
        assert!(root.is_dir() && process_exists(*pid));
    }

    child.kill().unwrap(); // SIGKILL: no destructor runs.
    child.wait().unwrap();
    for (root, pid) in &clusters {
        assert!(
            eventually(|| !Path::new(root).exists() && !process_exists(*pid)),
            "{} or postmaster {pid} left behind",
            root.display()
        );
    }
}
