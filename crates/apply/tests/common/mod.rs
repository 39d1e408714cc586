//! A source and a target database with the same schema, a slot on the
//! source, and a row-by-row comparison of the two.

#![allow(dead_code)]

use std::time::Duration;

use pglive_apply::{Applier, ApplyOptions, RunOptions, Stopped};
use pglive_postgres::{Lsn, connect_sql};
use pglive_repl::{
    PgOutputOptions, ReplicationClient, ReplicationStream, SlotOptions, SnapshotAction,
    StreamOptions, Streaming,
};
use pglive_testkit::Cluster;
pub use pglive_testkit::config;

/// Two databases of one cluster: `source` with a publication of every
/// table and a slot, `target` with the same tables.
pub struct Pair {
    pub cluster: &'static Cluster,
    pub source: String,
    pub target: String,
    pub slot: String,
    pub start: Lsn,
}

impl Pair {
    /// Creates both databases with `schema`, and the publication and slot.
    pub async fn new(prefix: &str, schema: &str) -> Pair {
        Pair::on(Cluster::shared(), prefix, schema).await
    }

    /// [`Pair::new`] on a cluster of the test's own.
    pub async fn on(cluster: &'static Cluster, prefix: &str, schema: &str) -> Pair {
        let source = cluster.create_database(&format!("{prefix}_src")).unwrap();
        let target = cluster.create_database(&format!("{prefix}_dst")).unwrap();
        cluster.psql(&source, schema).unwrap();
        cluster.psql(&target, schema).unwrap();
        cluster
            .psql(&source, "CREATE PUBLICATION pglive FOR ALL TABLES")
            .unwrap();
        let slot = source.clone();
        let mut client = ReplicationClient::connect(&config(&cluster.conninfo(&source)))
            .await
            .unwrap();
        let created = client
            .create_slot(
                &slot,
                &SlotOptions {
                    snapshot: SnapshotAction::NoExport,
                    ..SlotOptions::default()
                },
            )
            .await
            .unwrap();
        client.close().await.unwrap();
        Pair {
            cluster,
            source,
            target,
            slot,
            start: created.consistent_point,
        }
    }

    pub fn source_conninfo(&self) -> String {
        self.cluster.conninfo(&self.source)
    }

    pub fn target_conninfo(&self) -> String {
        self.cluster.conninfo(&self.target)
    }

    /// Runs SQL on the source.
    pub fn source_sql(&self, sql: &str) {
        self.cluster.psql(&self.source, sql).unwrap();
    }

    /// The source's current WAL position: everything committed so far is
    /// before it.
    pub fn source_lsn(&self) -> Lsn {
        self.cluster
            .psql(&self.source, "SELECT pg_current_wal_insert_lsn()")
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Applies everything committed on the source so far to the target,
    /// with `options` (protocol and stream id filled in).
    pub async fn catch_up(&self, target_conninfo: &str, options: ApplyOptions) -> Applier {
        let stop_at = self.source_lsn();
        let mut applier = Applier::connect(&config(target_conninfo), options.clone())
            .await
            .unwrap();
        let stopped = tokio::time::timeout(
            Duration::from_secs(120),
            apply_until(
                &self.source_conninfo(),
                &self.slot,
                self.start,
                &mut applier,
                options.protocol_version,
                stop_at,
            ),
        )
        .await
        .expect("catch-up within 120 s");
        assert!(matches!(stopped, Stopped::ReachedLsn(_)), "{stopped:?}");
        applier
    }

    /// A protocol-1 stream from the pair's slot, starting at `from`.
    pub async fn stream(&self, from: Lsn) -> pglive_repl::ReplicationStream {
        ReplicationClient::connect(&config(&self.source_conninfo()))
            .await
            .unwrap()
            .start_replication(
                &self.slot,
                from,
                &PgOutputOptions::new(["pglive"]),
                StreamOptions::default(),
            )
            .await
            .unwrap()
    }

    /// Compares every table of the schema row by row; panics on the first
    /// difference, naming the table.
    pub async fn assert_equal(&self) {
        let source = connect_sql(&config(&self.source_conninfo())).await.unwrap();
        let target = connect_sql(&config(&self.target_conninfo())).await.unwrap();
        let tables: Vec<String> = source
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
                  WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'pglive') ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!tables.is_empty());
        for table in tables {
            let sql = format!(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t"
            );
            let s = source.query_one(&sql, &[]).await.unwrap();
            let t = target.query_one(&sql, &[]).await.unwrap();
            let (sc, sm): (i64, String) = (s.get(0), s.get(1));
            let (tc, tm): (i64, String) = (t.get(0), t.get(1));
            if (sc, &sm) != (tc, &tm) {
                let diff = format!("SELECT t::text FROM {table} t ORDER BY 1 LIMIT 20");
                let srows: Vec<String> = source
                    .query(&diff, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let trows: Vec<String> = target
                    .query(&diff, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                panic!(
                    "{table} differs: source {sc} rows, target {tc} rows\nsource: {srows:#?}\ntarget: {trows:#?}"
                );
            }
        }
    }
}

/// Streams from the slot and applies until `stop_at`.
pub async fn apply_until(
    source_conninfo: &str,
    slot: &str,
    slot_start: Lsn,
    applier: &mut Applier,
    proto: u32,
    stop_at: Lsn,
) -> Stopped {
    let client = ReplicationClient::connect(&config(source_conninfo))
        .await
        .unwrap();
    let mut pgoutput = PgOutputOptions::new(["pglive"]);
    pgoutput.proto_version = proto;
    if proto >= 2 {
        pgoutput.streaming = Streaming::On;
    }
    let start = applier.applied_lsn().max(slot_start);
    let mut stream = client
        .start_replication(slot, start, &pgoutput, StreamOptions::default())
        .await
        .unwrap();
    let mut options = RunOptions::default();
    options.stop_at = Some(stop_at);
    let stopped = run_quietly(applier, &mut stream, &options).await.unwrap();
    stream.stop().await.unwrap();
    stopped
}

/// Runs the applier on `stream` with `options`, with no shutdown signal
/// and no progress display.
pub async fn run_quietly(
    applier: &mut Applier,
    stream: &mut ReplicationStream,
    options: &RunOptions,
) -> pglive_apply::Result<Stopped> {
    pglive_apply::run(applier, stream, std::future::pending(), options, |_| {}).await
}

/// Apply options for the pair's slot.
pub fn options(pair: &Pair, proto: u32) -> ApplyOptions {
    ApplyOptions::new(pair.slot.clone(), proto)
}
