//! The replication client against real PostgreSQL servers from the testkit:
//! connection and commands, exported snapshots, every pgoutput message kind
//! decoded from real traffic, keepalives, feedback, and errors.

use std::time::Duration;

use futures_util::StreamExt;
use pglive_postgres::{Lsn, connect_sql};
use pglive_repl::pgoutput::{ColumnValue, Decoder, LogicalMessage, OldTuple};
use pglive_repl::{
    Error, PgOutputOptions, ReplicationClient, ReplicationEvent, ReplicationStream, SlotOptions,
    SnapshotAction, StreamOptions, Streaming,
};
use pglive_testkit::{Cluster, ClusterOptions, config};

async fn connect(conninfo: &str) -> ReplicationClient {
    ReplicationClient::connect(&config(conninfo))
        .await
        .expect("replication connection")
}

/// Reads decoded messages until `done` says the collection is complete, with
/// a time limit so a missing message fails the test instead of hanging it.
async fn collect_until(
    stream: &mut ReplicationStream,
    decoder: &mut Decoder,
    mut done: impl FnMut(&[LogicalMessage]) -> bool,
) -> Vec<LogicalMessage> {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&messages) {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; got so far: {messages:#?}"))
            .expect("stream ended early")
            .expect("stream error");
        if let ReplicationEvent::XLogData { data, .. } = event {
            messages.push(decoder.decode(data).expect("decodes"));
        }
    }
    messages
}

/// A slot without an exported snapshot.
async fn plain_slot(
    client: &mut ReplicationClient,
    name: &str,
    temporary: bool,
) -> pglive_repl::CreatedSlot {
    let options = SlotOptions {
        temporary,
        snapshot: SnapshotAction::NoExport,
        ..SlotOptions::default()
    };
    client.create_slot(name, &options).await.unwrap()
}

fn commits(messages: &[LogicalMessage]) -> usize {
    messages
        .iter()
        .filter(|m| {
            matches!(
                m,
                LogicalMessage::Commit(_)
                    | LogicalMessage::StreamCommit(_)
                    | LogicalMessage::StreamAbort(_)
                    | LogicalMessage::CommitPrepared(_)
                    | LogicalMessage::RollbackPrepared(_)
            )
        })
        .count()
}

fn text(value: &ColumnValue) -> Option<&str> {
    match value {
        ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn identify_system_and_pinned_session_settings() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("identify").unwrap();
    // Hostile defaults on the database must not leak into our sessions.
    cluster
        .psql(
            "postgres",
            &format!(
                "ALTER DATABASE {db} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {db} SET TimeZone = 'Pacific/Chatham'; ALTER DATABASE {db} SET extra_float_digits = -3; ALTER DATABASE {db} SET bytea_output = 'escape'; ALTER DATABASE {db} SET IntervalStyle = 'sql_standard'"
            ),
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let info = client.identify_system().await.unwrap();
    assert_eq!(info.dbname.as_deref(), Some(db.as_str()));
    assert!(!info.xlogpos.is_zero());
    assert!(info.timeline >= 1);
    let version = cluster.psql("postgres", "SHOW server_version_num").unwrap();
    assert_eq!(
        client.server_version_num().unwrap() / 10000,
        version.parse::<u32>().unwrap() / 10000
    );

    for (name, expected) in [
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
        ("IntervalStyle", "postgres"),
        ("client_encoding", "UTF8"),
    ] {
        let result = client.simple_query(&format!("SHOW {name}")).await.unwrap();
        assert_eq!(result.rows, vec![vec![Some(expected.to_owned())]], "{name}");
        // The same pinning holds for SQL sessions.
        let sql = connect_sql(&config(&cluster.conninfo(&db))).await.unwrap();
        let row = sql.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), expected, "{name} (SQL session)");
    }
    client.close().await.unwrap();
}

#[tokio::test]
async fn exported_snapshot_sees_exactly_what_committed_before_the_slot() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("snapshot").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g; CREATE PUBLICATION p FOR ALL TABLES",
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let slot = client
        .create_slot("snap_slot", &SlotOptions::default())
        .await
        .unwrap();
    let snapshot = slot.snapshot_name.clone().expect("exported snapshot");
    assert_eq!(slot.output_plugin, "pgoutput");
    assert!(!slot.consistent_point.is_zero());

    // Committed after the slot's consistent point: in the stream, not in the snapshot.
    cluster
        .psql(&db, "INSERT INTO t SELECT g, 'after' FROM generate_series(101, 150) g; UPDATE t SET v = 'changed' WHERE id = 1")
        .unwrap();

    let sql = connect_sql(&config(&cluster.conninfo(&db))).await.unwrap();
    sql.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
    ))
    .await
    .unwrap();
    let row = sql
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE v = 'before') FROM t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 100);
    assert_eq!(row.get::<_, i64>(1), 100);
    sql.batch_execute("COMMIT").await.unwrap();

    let options = PgOutputOptions::new(["p"]);
    let mut stream = client
        .start_replication(
            "snap_slot",
            slot.consistent_point,
            &options,
            StreamOptions::default(),
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new(1);
    let messages = collect_until(&mut stream, &mut decoder, |m| commits(m) == 2).await;
    let inserted: Vec<i32> = messages
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Insert(i) => text(&i.new.columns[0])?.parse().ok(),
            _ => None,
        })
        .collect();
    assert_eq!(inserted, (101..=150).collect::<Vec<_>>());
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, LogicalMessage::Update(_)))
    );

    let mut client = stream.stop().await.unwrap();
    client.drop_slot("snap_slot", true).await.unwrap();
}

#[tokio::test]
async fn every_message_kind_decodes_from_real_traffic() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("kinds").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE TABLE keyed (id int PRIMARY KEY, m mood, small text, big text);
             CREATE TABLE fullid (a int, b text);
             ALTER TABLE fullid REPLICA IDENTITY FULL;
             CREATE PUBLICATION p FOR ALL TABLES;
             SELECT pg_replication_origin_create('elsewhere');",
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let slot = plain_slot(&mut client, "kinds_slot", false).await;
    cluster
        .psql(
            &db,
            "INSERT INTO keyed VALUES (1, 'happy', 's', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g));
             UPDATE keyed SET small = 't' WHERE id = 1;
             UPDATE keyed SET id = 2 WHERE id = 1;
             DELETE FROM keyed WHERE id = 2;
             INSERT INTO fullid VALUES (1, NULL), (1, NULL);
             DELETE FROM fullid WHERE ctid = (SELECT min(ctid) FROM fullid);
             TRUNCATE fullid RESTART IDENTITY;
             SELECT pg_logical_emit_message(true, 'pfx', 'transactional');
             SELECT pg_logical_emit_message(false, 'pfx', 'immediate');
             SELECT pg_replication_origin_session_setup('elsewhere');
             BEGIN; SELECT pg_replication_origin_xact_setup('0/AB', now()); INSERT INTO fullid VALUES (9, 'origin'); COMMIT;
             SELECT pg_replication_origin_session_reset();",
        )
        .unwrap();

    let mut options = PgOutputOptions::new(["p"]);
    options.messages = true;
    let mut stream = client
        .start_replication(
            "kinds_slot",
            slot.consistent_point,
            &options,
            StreamOptions::default(),
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new(1);
    // 9 transactions with commits, one non-transactional message.
    let messages = collect_until(&mut stream, &mut decoder, |m| {
        commits(m) == 9
            && m.iter()
                .any(|m| matches!(m, LogicalMessage::Message(x) if !x.is_transactional()))
    })
    .await;

    let relation = messages
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Relation(r) if r.name == "keyed" => Some(r),
            _ => None,
        })
        .expect("Relation for keyed");
    assert_eq!(relation.namespace, "public");
    let names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "m", "small", "big"]);
    assert!(relation.columns[0].is_key() && !relation.columns[1].is_key());
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, LogicalMessage::Type(t) if t.name == "mood")),
        "a Type message for the enum"
    );
    let updates: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].old, None, "no key change: no old tuple");
    assert!(
        matches!(updates[0].new.columns[3], ColumnValue::UnchangedToast),
        "the untouched TOAST column is sent as unchanged"
    );
    assert_eq!(text(&updates[0].new.columns[2]), Some("t"));
    match &updates[1].old {
        Some(OldTuple::Key(key)) => assert_eq!(text(&key.columns[0]), Some("1")),
        other => panic!("expected the old key, got {other:?}"),
    }
    let deletes: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Delete(d) => Some(d),
            _ => None,
        })
        .collect();
    assert!(matches!(&deletes[0].old, OldTuple::Key(k) if text(&k.columns[0]) == Some("2")));
    match &deletes[1].old {
        OldTuple::Full(row) => {
            assert_eq!(text(&row.columns[0]), Some("1"));
            assert_eq!(row.columns[1], ColumnValue::Null);
        }
        other => panic!("expected the full old row, got {other:?}"),
    }
    let truncate = messages
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Truncate(t) => Some(t),
            _ => None,
        })
        .expect("Truncate");
    assert!(truncate.restart_identity() && !truncate.cascade());
    let prefixes: Vec<(bool, &[u8])> = messages
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::Message(x) if x.prefix == "pfx" => {
                Some((x.is_transactional(), &x.content[..]))
            }
            _ => None,
        })
        .collect();
    assert!(prefixes.contains(&(true, &b"transactional"[..])));
    assert!(prefixes.contains(&(false, &b"immediate"[..])));
    let origin = messages
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Origin(o) => Some(o),
            _ => None,
        })
        .expect("Origin");
    assert_eq!(origin.name, "elsewhere");
    assert_eq!(origin.commit_lsn, "0/AB".parse::<Lsn>().unwrap());
    // Begin/Commit pairs carry consistent LSNs.
    for m in &messages {
        if let LogicalMessage::Commit(c) = m {
            assert!(c.end_lsn > c.commit_lsn);
        }
    }
    let mut client = stream.stop().await.unwrap();
    client.drop_slot("kinds_slot", true).await.unwrap();
}

#[tokio::test]
async fn streamed_and_two_phase_transactions_decode() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("streaming").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TABLE big (id int PRIMARY KEY, pad text); CREATE PUBLICATION p FOR ALL TABLES",
        )
        .unwrap();
    let major = cluster.major_version();
    // A small decoding memory makes any sizeable transaction stream.
    let conninfo = format!(
        "{} options='-c logical_decoding_work_mem=64kB'",
        cluster.conninfo(&db)
    );
    let mut client = connect(&conninfo).await;
    let two_phase = major >= 15;
    let slot = client
        .create_slot(
            "stream_slot",
            &SlotOptions {
                snapshot: SnapshotAction::NoExport,
                two_phase,
                ..SlotOptions::default()
            },
        )
        .await
        .unwrap();
    let proto = PgOutputOptions::max_proto_version(client.server_version_num().unwrap());
    assert!(proto >= 2, "streaming needs PostgreSQL 14+");
    cluster
        .psql(
            &db,
            "INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 5000) g;
             BEGIN; INSERT INTO big SELECT g, repeat('q', 200) FROM generate_series(10001, 15000) g; ROLLBACK;
             BEGIN; INSERT INTO big SELECT g, 'sub' FROM generate_series(20001, 20010) g; SAVEPOINT s; INSERT INTO big SELECT g, repeat('r', 200) FROM generate_series(30001, 35000) g; ROLLBACK TO s; COMMIT;",
        )
        .unwrap();
    if two_phase {
        cluster
            .psql(
                &db,
                "BEGIN; INSERT INTO big VALUES (-1, 'prepared'); PREPARE TRANSACTION 'g1'; COMMIT PREPARED 'g1';
                 BEGIN; INSERT INTO big VALUES (-2, 'rolled back'); PREPARE TRANSACTION 'g2'; ROLLBACK PREPARED 'g2';",
            )
            .unwrap();
    }
    let mut options = PgOutputOptions::new(["p"]);
    options.proto_version = proto;
    options.streaming = Streaming::On;
    options.two_phase = two_phase;
    let mut stream = client
        .start_replication(
            "stream_slot",
            slot.consistent_point,
            &options,
            StreamOptions::default(),
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new(proto);
    cluster
        .psql(&db, "INSERT INTO big VALUES (-100, 'end marker')")
        .unwrap();
    let messages = collect_until(&mut stream, &mut decoder, |m| {
        matches!(m.last(), Some(LogicalMessage::Commit(_)))
            && m.iter().any(|m| matches!(m, LogicalMessage::Insert(i) if text(&i.new.columns[0]) == Some("-100")))
    })
    .await;

    let stream_starts = messages
        .iter()
        .filter(|m| matches!(m, LogicalMessage::StreamStart(_)))
        .count();
    assert!(
        stream_starts >= 2,
        "large transactions are streamed in blocks"
    );
    let streamed_inserts = messages
        .iter()
        .filter(|m| matches!(m, LogicalMessage::Insert(i) if i.xid.is_some()))
        .count();
    assert!(streamed_inserts >= 5000);
    let commit = messages
        .iter()
        .find_map(|m| match m {
            LogicalMessage::StreamCommit(c) => Some(c),
            _ => None,
        })
        .expect("Stream Commit");
    assert!(commit.end_lsn > commit.commit_lsn);
    let aborts: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            LogicalMessage::StreamAbort(a) => Some(a),
            _ => None,
        })
        .collect();
    assert!(
        aborts.iter().any(|a| a.xid == a.subxid),
        "the rolled-back streamed transaction is aborted whole"
    );
    assert!(
        aborts.iter().any(|a| a.xid != a.subxid),
        "the rolled-back subtransaction is aborted on its own"
    );
    if two_phase {
        let gids: Vec<&str> = messages
            .iter()
            .filter_map(|m| match m {
                LogicalMessage::BeginPrepare(b) => Some(b.gid.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(gids, ["g1", "g2"]);
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, LogicalMessage::Prepare(p) if p.gid == "g1"))
        );
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, LogicalMessage::CommitPrepared(c) if c.gid == "g1"))
        );
        assert!(
            messages
                .iter()
                .any(|m| matches!(m, LogicalMessage::RollbackPrepared(r) if r.gid == "g2"))
        );
    }
    let mut client = stream.stop().await.unwrap();
    client.drop_slot("stream_slot", true).await.unwrap();
}

#[tokio::test]
async fn feedback_confirms_only_what_the_caller_reported() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("feedback").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR ALL TABLES",
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let slot = plain_slot(&mut client, "fb_slot", false).await;
    cluster
        .psql(&db, "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)")
        .unwrap();
    let mut options = StreamOptions::default();
    options.status_interval = Duration::from_millis(100);
    let mut stream = client
        .start_replication(
            "fb_slot",
            slot.consistent_point,
            &PgOutputOptions::new(["p"]),
            options,
        )
        .await
        .unwrap();
    let mut decoder = Decoder::new(1);
    let messages = collect_until(&mut stream, &mut decoder, |m| commits(m) == 2).await;
    let first_commit = messages
        .iter()
        .find_map(|m| match m {
            LogicalMessage::Commit(c) => Some(c.end_lsn),
            _ => None,
        })
        .unwrap();
    let confirmed = || {
        cluster
            .psql(
                &db,
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'fb_slot'",
            )
            .unwrap()
            .parse::<Lsn>()
            .unwrap()
    };
    // Several status updates go out, but nothing was reported yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        confirmed() <= slot.consistent_point,
        "nothing confirmed before the caller reports"
    );

    let feedback = stream.feedback();
    feedback.set_flushed(first_commit);
    feedback.send_now();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while confirmed() != first_commit {
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed_flush_lsn never reached {first_commit}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Positions only move forward.
    feedback.set_flushed(Lsn(1));
    assert_eq!(feedback.flushed(), first_commit);
    assert!(feedback.received() >= first_commit);
    let client = stream.stop().await.unwrap();
    assert_eq!(
        confirmed(),
        first_commit,
        "the final update does not overshoot"
    );
    client.close().await.unwrap();
    cluster
        .psql(&db, "SELECT pg_drop_replication_slot('fb_slot')")
        .unwrap();
}

#[tokio::test]
async fn keepalives_keep_an_idle_unread_stream_alive() {
    let cluster =
        Cluster::start(ClusterOptions::new().setting("wal_sender_timeout", "1s")).unwrap();
    let db = cluster.create_database("idle").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR ALL TABLES",
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let slot = plain_slot(&mut client, "idle_slot", true).await;
    let mut options = StreamOptions::default();
    options.status_interval = Duration::from_millis(300);
    let mut stream = client
        .start_replication(
            "idle_slot",
            slot.consistent_point,
            &PgOutputOptions::new(["p"]),
            options,
        )
        .await
        .unwrap();
    // Nobody reads the stream for several timeouts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.psql(&db, "INSERT INTO t VALUES (42)").unwrap();
    let mut decoder = Decoder::new(1);
    let messages = collect_until(&mut stream, &mut decoder, |m| commits(m) == 1).await;
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, LogicalMessage::Insert(_)))
    );
    let log = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
    assert!(
        !log.contains("terminating walsender process due to replication timeout"),
        "the server timed the stream out"
    );
}

#[tokio::test]
async fn scram_over_tls_with_verify_full_for_a_replication_only_role() {
    let cluster = Cluster::start(ClusterOptions::new().ssl(true).password_auth(true)).unwrap();
    let db = cluster.create_database("tls").unwrap();
    let ca = cluster.ca_cert().unwrap().display().to_string();
    let role = cluster.role_conninfo(&db).unwrap();

    let verified = format!("{role} sslmode=verify-full sslrootcert={ca}");
    let mut client = connect(&verified).await;
    let info = client.identify_system().await.unwrap();
    assert_eq!(info.dbname.as_deref(), Some(db.as_str()));
    let ssl = client
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    assert_eq!(ssl.rows, vec![vec![Some("t".to_owned())]]);
    let sql = connect_sql(&config(&verified)).await.unwrap();
    let row = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));

    // localhost is in the certificate too; verify-ca ignores the name.
    let by_name = verified.replace("host=127.0.0.1", "host=localhost");
    connect(&by_name).await.identify_system().await.unwrap();
    // hostaddr says where to connect; the host name beside it is still
    // what the certificate must be valid for.
    let via_addr = verified.replace("host=127.0.0.1", "host=localhost hostaddr=127.0.0.1");
    connect(&via_addr).await.identify_system().await.unwrap();
    connect_sql(&config(&via_addr)).await.unwrap();
    let misnamed = verified.replace("host=127.0.0.1", "host=db.invalid hostaddr=127.0.0.1");
    let refused = ReplicationClient::connect(&config(&misnamed))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::TlsHandshake { .. }), "{refused}");
    let refused = connect_sql(&config(&misnamed)).await.map(drop).unwrap_err();
    assert!(
        format!("{refused:?}").contains("NotValidForName"),
        "{refused:?}"
    );
    connect(&format!("{role} sslmode=verify-ca sslrootcert={ca}")).await;

    let wrong = ReplicationClient::connect(&config(&format!(
        "{} password=wrong sslmode=verify-full sslrootcert={ca}",
        role.split(" password=").next().unwrap()
    )))
    .await
    .unwrap_err();
    assert_eq!(wrong.sqlstate(), Some("28P01"), "{wrong}");
    let no_password = ReplicationClient::connect(&config(&format!(
        "{} sslmode=require passfile=/nonexistent",
        role.split(" password=").next().unwrap()
    )))
    .await
    .unwrap_err();
    assert!(
        matches!(no_password, Error::PasswordRequired { .. }),
        "{no_password}"
    );
    let no_ca = ReplicationClient::connect(&config(&format!(
        "{role} sslmode=verify-full sslrootcert=/nonexistent/ca.pem"
    )))
    .await
    .unwrap_err();
    assert!(no_ca.to_string().contains("/nonexistent/ca.pem"), "{no_ca}");
    // A CA that did not sign the server's certificate fails the handshake.
    let other_ca = std::env::temp_dir().join(format!("pglive-other-ca-{}.pem", std::process::id()));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(other_ca.with_extension("key"))
        .arg("-out")
        .arg(&other_ca)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let untrusted = ReplicationClient::connect(&config(&format!(
        "{role} sslmode=verify-full sslrootcert={}",
        other_ca.display()
    )))
    .await
    .unwrap_err();
    assert!(
        matches!(untrusted, Error::TlsHandshake { .. }),
        "{untrusted}"
    );
    let _ = std::fs::remove_file(&other_ca);
    let _ = std::fs::remove_file(other_ca.with_extension("key"));
}

#[tokio::test]
async fn channel_binding_require_accepts_only_scram_bound_to_tls() {
    let cluster = Cluster::start(ClusterOptions::new().ssl(true).password_auth(true)).unwrap();
    let db = cluster.create_database("binding").unwrap();
    let ca = cluster.ca_cert().unwrap().display().to_string();
    let role = cluster.role_conninfo(&db).unwrap();

    // The server checks the client's hash of its certificate, so a login
    // that succeeds under `require` used SCRAM-SHA-256-PLUS with the right
    // binding data: a non-PLUS login is refused by the client itself.
    for tls in [
        format!("sslmode=verify-full sslrootcert={ca}"),
        "sslmode=require".to_owned(),
    ] {
        let bound = format!("{role} {tls} channel_binding=require");
        let mut client = connect(&bound).await;
        assert_eq!(
            client.identify_system().await.unwrap().dbname.as_deref(),
            Some(db.as_str())
        );
        let sql = connect_sql(&config(&bound)).await.unwrap();
        sql.simple_query("SELECT 1").await.unwrap();
    }
    // Without TLS there is nothing to bind to: `allow` logs in over plain
    // TCP first, and `require` refuses that login.
    let plain = ReplicationClient::connect(&config(&format!(
        "{role} sslmode=allow channel_binding=require"
    )))
    .await
    .unwrap_err();
    assert!(
        matches!(plain, Error::ChannelBindingRequired { .. }),
        "{plain}"
    );
    assert!(plain.to_string().contains("SCRAM without channel binding"));
    // `disable` never binds, and still logs in over TLS.
    connect(&format!("{role} sslmode=require channel_binding=disable"))
        .await
        .identify_system()
        .await
        .unwrap();

    // A server that lets the role in without a password cannot satisfy it.
    let trusting = Cluster::shared();
    let trusting_db = trusting.create_database("binding").unwrap();
    let no_password = ReplicationClient::connect(&config(&format!(
        "{} channel_binding=require",
        trusting.conninfo(&trusting_db)
    )))
    .await
    .unwrap_err();
    assert!(
        matches!(no_password, Error::ChannelBindingRequired { .. }),
        "{no_password}"
    );
}

#[tokio::test]
async fn clear_errors_for_common_mistakes() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("errors").unwrap();
    cluster
        .psql(
            &db,
            "CREATE ROLE plain LOGIN; CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR ALL TABLES",
        )
        .unwrap();

    // A role without REPLICATION.
    let plain = cluster.conninfo(&db).replace("user=postgres", "user=plain");
    let err = ReplicationClient::connect(&config(&plain))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
    assert!(err.to_string().contains("replication"), "{err}");

    // A slot that already exists.
    let mut client = connect(&cluster.conninfo(&db)).await;
    let options = SlotOptions {
        temporary: true,
        snapshot: SnapshotAction::NoExport,
        ..SlotOptions::default()
    };
    let slot = client.create_slot("dup_slot", &options).await.unwrap();
    let mut other = connect(&cluster.conninfo(&db)).await;
    let err = other.create_slot("dup_slot", &options).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");
    assert!(err.to_string().contains("dup_slot"), "{err}");

    // An unknown publication fails once there is something to decode.
    let mut stream = client
        .start_replication(
            "dup_slot",
            slot.consistent_point,
            &PgOutputOptions::new(["nope"]),
            StreamOptions::default(),
        )
        .await
        .unwrap();
    cluster.psql(&db, "INSERT INTO t VALUES (1)").unwrap();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("stream ended without an error"),
            Err(_) => panic!("no error for an unknown publication"),
        }
    };
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");

    // Nothing listens on a closed port.
    let closed = format!("host=127.0.0.1 port=1 user=postgres dbname={db} connect_timeout=5");
    let err = ReplicationClient::connect(&config(&closed))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn wal_level_replica_is_refused_with_a_clear_error() {
    let cluster = Cluster::start(ClusterOptions::new().setting("wal_level", "replica")).unwrap();
    let db = cluster.create_database("walrep").unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let err = client
        .create_slot("s", &SlotOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("55000"), "{err}");
    assert!(err.to_string().contains("wal_level"), "{err}");
}

#[tokio::test]
async fn md5_and_cleartext_password_authentication() {
    for method in ["md5", "password"] {
        let cluster = Cluster::start(
            ClusterOptions::new()
                .password_auth(true)
                .auth_method(method),
        )
        .unwrap();
        let db = cluster.create_database("auth").unwrap();
        let role = cluster.role().unwrap();
        if method == "md5" {
            let stored = cluster
                .psql(
                    "postgres",
                    &format!(
                        "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{}'",
                        role.user
                    ),
                )
                .unwrap();
            assert_eq!(
                stored, "md5",
                "the password is stored as MD5, so MD5 is exchanged"
            );
        }
        let mut client = connect(&cluster.role_conninfo(&db).unwrap()).await;
        assert_eq!(
            client.identify_system().await.unwrap().dbname.as_deref(),
            Some(db.as_str())
        );
        let wrong = cluster
            .role_conninfo(&db)
            .unwrap()
            .replace(&format!("password={}", role.password), "password=nope");
        let err = ReplicationClient::connect(&config(&wrong))
            .await
            .unwrap_err();
        assert_eq!(err.sqlstate(), Some("28P01"), "{method}: {err}");
    }
}

#[tokio::test]
async fn use_snapshot_makes_it_the_transaction_snapshot_of_the_connection() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("usesnap").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)",
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    client
        .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let slot = client
        .create_slot(
            "use_slot",
            &SlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Use,
                ..SlotOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(slot.snapshot_name, None);
    cluster.psql(&db, "INSERT INTO t VALUES (11)").unwrap();
    let count = client.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(count.rows, vec![vec![Some("10".to_owned())]]);
    client.simple_query("COMMIT").await.unwrap();
}

/// A consumer that falls behind holds back the reader: what waits between
/// the socket and the consumer stays within `max_buffered_bytes` (plus what
/// the kernel buffers), however much the slot holds; nothing is lost.
#[tokio::test]
async fn a_slow_consumer_bounds_what_the_reader_holds() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("bounded").unwrap();
    cluster
        .psql(
            &db,
            "CREATE TABLE wide (id int PRIMARY KEY, pad text); CREATE PUBLICATION bounded FOR ALL TABLES",
        )
        .unwrap();
    let mut client = connect(&cluster.conninfo(&db)).await;
    let slot = plain_slot(&mut client, "bounded", false).await;
    // About 100 MB of changes waiting in the slot, in 100 transactions.
    cluster
        .psql(
            &db,
            "DO $$ BEGIN FOR i IN 0..99 LOOP
                 INSERT INTO wide SELECT g, repeat('x', 1000) FROM generate_series(i * 1000 + 1, i * 1000 + 1000) g;
                 COMMIT;
             END LOOP; END $$",
        )
        .unwrap();
    let end: Lsn = cluster
        .psql(&db, "SELECT pg_current_wal_insert_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    let mut options = StreamOptions::default();
    options.max_buffered_bytes = 1 << 20;
    let mut stream = client
        .start_replication(
            "bounded",
            slot.consistent_point,
            &PgOutputOptions::new(["bounded"]),
            options,
        )
        .await
        .unwrap();
    // Nothing consumed for a while: the reader stops reading, so the
    // server's walsender stops sending (its sent position, which it moves
    // after each transaction it sent, stays far from the end).
    let sent = || -> Lsn {
        cluster
            .psql(
                &db,
                "SELECT r.sent_lsn FROM pg_stat_replication r
                   JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'bounded'",
            )
            .unwrap()
            .parse()
            .unwrap()
    };
    // Stalled: two looks a second apart see the same position.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stalled = sent();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = sent();
        if again == stalled {
            break;
        }
        stalled = again;
    }
    assert_eq!(stalled, sent(), "the walsender still sends");
    let held = stalled.bytes_since(slot.consistent_point);
    let total = end.bytes_since(slot.consistent_point);
    assert!(
        held < 32 << 20,
        "the server sent {held} of {total} bytes of WAL while the consumer read nothing"
    );
    // Everything still arrives once consumed.
    let mut inserts = 0;
    let mut decoder = Decoder::new(1);
    while inserts < 100_000 {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("the stream goes on")
            .unwrap()
            .unwrap();
        if let ReplicationEvent::XLogData { data, .. } = event {
            if matches!(decoder.decode(data).unwrap(), LogicalMessage::Insert(_)) {
                inserts += 1;
            }
        }
    }
    let mut client = stream.stop().await.unwrap();
    client.drop_slot("bounded", true).await.unwrap();
}
