//! Changes committed on the source after the cutover's final position:
//! the slot is read on, up to the source's position just before it is
//! dropped, and what it brings is counted per table, so a write that got
//! past the fence (or a writer that was not stopped) is reported rather
//! than silently left behind.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pglive_postgres::Lsn;
use pglive_repl::pgoutput::{Decoder, LogicalMessage};
use pglive_repl::{ReplicationEvent, ReplicationStream};
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result};

/// How long reading on may take before the report is given up as
/// incomplete.
const READ_FOR: Duration = Duration::from_secs(30);

/// What the slot held after the final position.
#[derive(Debug, Default)]
pub(crate) struct LateChanges {
    /// Committed transactions.
    pub transactions: u64,
    /// Changed rows (a `TRUNCATE` counts one) per table, by name.
    pub tables: BTreeMap<String, u64>,
    /// Whether the stream was read up to the position asked for.
    pub complete: bool,
}

impl LateChanges {
    /// "t1 (3), t2 (1)".
    pub fn describe(&self) -> String {
        if self.tables.is_empty() {
            // A large transaction sent in pieces before the position.
            return "tables not known (its changes were sent before the cutover point)".to_owned();
        }
        self.tables
            .iter()
            .map(|(table, n)| format!("{table} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Counts per relation OID; streamed transactions keep theirs apart by
/// (top-level, sub) transaction until they commit or abort.
#[derive(Default)]
struct Counter {
    transactions: u64,
    committed: HashMap<u32, u64>,
    open: HashMap<u32, u64>,
    streamed: HashMap<(u32, u32), HashMap<u32, u64>>,
    stream_xid: Option<u32>,
}

impl Counter {
    fn change(&mut self, xid: Option<u32>, relations: &[u32]) {
        let counts = match (xid, self.stream_xid) {
            (Some(xid), Some(top)) => self.streamed.entry((top, xid)).or_default(),
            _ => &mut self.open,
        };
        for relation in relations {
            *counts.entry(*relation).or_default() += 1;
        }
    }

    fn merge(committed: &mut HashMap<u32, u64>, counts: HashMap<u32, u64>) {
        for (relation, n) in counts {
            *committed.entry(relation).or_default() += n;
        }
    }

    /// Takes one message; true when it ended a transaction.
    fn take(&mut self, message: LogicalMessage) -> bool {
        match message {
            LogicalMessage::Insert(m) => self.change(m.xid, &[m.relation_id]),
            LogicalMessage::Update(m) => self.change(m.xid, &[m.relation_id]),
            LogicalMessage::Delete(m) => self.change(m.xid, &[m.relation_id]),
            LogicalMessage::Truncate(m) => self.change(m.xid, &m.relation_ids),
            LogicalMessage::StreamStart(m) => self.stream_xid = Some(m.xid),
            LogicalMessage::StreamStop => self.stream_xid = None,
            // A transaction without changes of published tables (sent
            // empty by PostgreSQL 14 and older) is not counted.
            LogicalMessage::Commit(_) => {
                let open = std::mem::take(&mut self.open);
                if !open.is_empty() {
                    self.transactions += 1;
                }
                Self::merge(&mut self.committed, open);
                return true;
            }
            LogicalMessage::StreamCommit(m) => {
                let keys: Vec<_> = self
                    .streamed
                    .keys()
                    .filter(|(top, _)| *top == m.xid)
                    .copied()
                    .collect();
                // Counted even when its changes all came before the
                // position read from: it committed after it.
                for key in keys {
                    if let Some(counts) = self.streamed.remove(&key) {
                        Self::merge(&mut self.committed, counts);
                    }
                }
                self.transactions += 1;
                return true;
            }
            LogicalMessage::StreamAbort(m) => {
                self.streamed.retain(|(top, sub), _| {
                    *top != m.xid || (m.subxid != m.xid && *sub != m.subxid)
                });
            }
            _ => {}
        }
        false
    }
}

/// Reads `stream` on from a transaction boundary until everything up to
/// `until` is received, counting the committed changes.
pub(crate) async fn read(
    stream: &mut ReplicationStream,
    protocol_version: u32,
    until: Lsn,
    source: &Client,
) -> Result<LateChanges> {
    let mut decoder = Decoder::new(protocol_version);
    let mut counter = Counter::default();
    let feedback = stream.feedback();
    let deadline = Instant::now() + READ_FOR;
    let mut in_transaction = false;
    let mut complete = false;
    while Instant::now() < deadline {
        feedback.request_reply();
        let event = match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(event)) => event?,
        };
        let position = match event {
            ReplicationEvent::XLogData { data, .. } => {
                let message = decoder.decode(data).map_err(|e| Error::State {
                    reason: format!("undecodable message after the cutover point: {e}"),
                })?;
                let end = match &message {
                    LogicalMessage::Commit(c) => Some(c.end_lsn),
                    LogicalMessage::StreamCommit(c) => Some(c.end_lsn),
                    _ => None,
                };
                if matches!(message, LogicalMessage::Begin(_)) {
                    in_transaction = true;
                }
                if counter.take(message) {
                    in_transaction = false;
                }
                end
            }
            ReplicationEvent::Keepalive { wal_end, .. } => Some(wal_end),
            _ => None,
        };
        if !in_transaction && position.is_some_and(|p| p >= until) {
            complete = true;
            break;
        }
    }
    let mut tables = BTreeMap::new();
    for (oid, n) in counter.committed {
        let name: Option<String> = source
            .query_opt(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                &[&oid],
            )
            .await
            .doing("naming the tables changed after the cutover point")?
            .map(|r| r.get(0));
        tables.insert(name.unwrap_or_else(|| format!("table with OID {oid}")), n);
    }
    Ok(LateChanges {
        transactions: counter.transactions,
        tables,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pglive_postgres::{ConnectConfig, connect_sql};
    use pglive_repl::{
        PgOutputOptions, ReplicationClient, SlotOptions, SnapshotAction, StreamOptions, Streaming,
    };
    use pglive_testkit::{Cluster, config};

    #[tokio::test]
    async fn counts_what_committed_after_a_position_per_table() {
        let cluster = Cluster::shared();
        let db = cluster.create_database("late").unwrap();
        cluster
            .psql(
                &db,
                "CREATE TABLE a (id int PRIMARY KEY, pad text); CREATE TABLE b (id int PRIMARY KEY);
                 CREATE PUBLICATION late FOR ALL TABLES",
            )
            .unwrap();
        // A small decoding budget: the large transactions below are
        // streamed while in progress.
        let conninfo = format!(
            "{} options='-c logical_decoding_work_mem=64kB'",
            cluster.conninfo(&db)
        );
        let mut client = ReplicationClient::connect(&config::<ConnectConfig>(&conninfo))
            .await
            .unwrap();
        let slot = client
            .create_slot(
                "late",
                &SlotOptions {
                    snapshot: SnapshotAction::NoExport,
                    ..SlotOptions::default()
                },
            )
            .await
            .unwrap();
        cluster
            .psql(
                &db,
                "INSERT INTO a VALUES (1, 'x'), (2, 'y');
                 UPDATE a SET pad = 'z' WHERE id = 1;
                 BEGIN; INSERT INTO b VALUES (1); ROLLBACK;
                 BEGIN; INSERT INTO b VALUES (2); SAVEPOINT s; INSERT INTO b VALUES (3); ROLLBACK TO s; COMMIT;
                 TRUNCATE b;
                 INSERT INTO a SELECT g, repeat('p', 100) FROM generate_series(10, 5009) g;
                 BEGIN; INSERT INTO a SELECT g, 'kept' FROM generate_series(10000, 14999) g;
                   SAVEPOINT s; INSERT INTO b SELECT generate_series(200, 5199); ROLLBACK TO s; COMMIT;
                 BEGIN; INSERT INTO b SELECT generate_series(100, 5099); ROLLBACK;",
            )
            .unwrap();
        let until: Lsn = cluster
            .psql(&db, "SELECT pg_current_wal_insert_lsn()")
            .unwrap()
            .parse()
            .unwrap();
        let mut pgoutput = PgOutputOptions::new(["late"]);
        pgoutput.proto_version = 2;
        pgoutput.streaming = Streaming::On;
        let mut stream = client
            .start_replication(
                "late",
                slot.consistent_point,
                &pgoutput,
                StreamOptions::default(),
            )
            .await
            .unwrap();
        let source = connect_sql(&config::<ConnectConfig>(&cluster.conninfo(&db)))
            .await
            .unwrap();
        let late = read(&mut stream, 2, until, &source).await.unwrap();
        assert!(late.complete);
        // Committed: the insert, the update, b's one row, the truncate,
        // and the two large ones (one with a rolled-back savepoint).
        assert_eq!(late.transactions, 6, "{late:?}");
        assert_eq!(late.describe(), "public.a (10003), public.b (2)");
        let mut client = stream.stop().await.unwrap();
        client.drop_slot("late", true).await.unwrap();
    }
}
