//! The workers: one source and one target session each, streaming parts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pglive_postgres::{
    ConnectConfig, Lsn, QualifiedName, SnapshotError, connect_sql, quote_ident,
    read_only_transaction,
};
use pglive_repl::CreatedSlot;
use pglive_schema::Table;

use crate::error::{Error, Result, source, target};
use crate::plan::{Part, PartRange, PlanOptions, plan};
use crate::state::{self, Claimed};

/// Large objects are read and written in pieces of this size.
const LARGE_OBJECT_CHUNK: i32 = 1 << 20;

/// An exported snapshot and the LSN it corresponds to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The name to import with `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the copy holds exactly the transactions
    /// committed before it. Recorded as `copied_at`.
    pub lsn: Lsn,
}

impl Snapshot {
    /// The snapshot a slot exported, if it exported one.
    pub fn from_slot(slot: &CreatedSlot) -> Option<Snapshot> {
        Some(Snapshot {
            name: slot.snapshot_name.clone()?,
            lsn: slot.consistent_point,
        })
    }
}

/// How the copy runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyOptions {
    /// The migration this copy belongs to; its parts are kept apart from
    /// other migrations' in the state table. Default: `default`.
    pub migration: String,
    /// Parallel workers in this process. Default: 4.
    pub workers: usize,
    /// How tables are split into parts.
    pub plan: PlanOptions,
    /// A name for this process in `claimed_by`. Default: host name and
    /// process id.
    pub process_name: String,
    /// The target's tables already hold their constraints and triggers
    /// (made by replayed schema changes): each is emptied with `DELETE`
    /// rather than `TRUNCATE` (which other tables' foreign keys forbid), and
    /// rows are written as a replica (`session_replication_role =
    /// replica`: no foreign key checks, no triggers), as apply writes them,
    /// when the target role may. Default: off.
    pub into_existing: bool,
}

impl Default for CopyOptions {
    fn default() -> CopyOptions {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        CopyOptions {
            migration: "default".to_owned(),
            workers: 4,
            plan: PlanOptions::default(),
            process_name: format!("{host}:{}", std::process::id()),
            into_existing: false,
        }
    }
}

/// What happened to a part; delivered to the caller's callback, from the
/// worker's task, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyEvent {
    /// The copy plan is in the state table: the parts this process knows
    /// of, and the tables that start over because they were half-done under
    /// another snapshot.
    Planned {
        /// Parts planned (tables that already had parts keep theirs).
        parts: usize,
        /// Tables emptied to be copied again under this snapshot.
        restarted: Vec<QualifiedName>,
    },
    /// A worker claimed a part.
    PartStarted {
        /// The worker's number in this process.
        worker: usize,
        /// The table.
        table: QualifiedName,
        /// The part's number.
        part: i32,
    },
    /// Rows and bytes moved so far for a part (every few megabytes).
    Progress {
        /// The worker's number in this process.
        worker: usize,
        /// The table.
        table: QualifiedName,
        /// The part's number.
        part: i32,
        /// Rows so far.
        rows: u64,
        /// COPY bytes so far.
        bytes: u64,
    },
    /// A part's rows and done-state are committed.
    PartDone {
        /// The worker's number in this process.
        worker: usize,
        /// The table.
        table: QualifiedName,
        /// The part's number.
        part: i32,
        /// Rows copied.
        rows: u64,
        /// COPY bytes moved.
        bytes: u64,
        /// How long the part took.
        elapsed: Duration,
    },
}

/// What this process copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopySummary {
    /// Parts copied by this process.
    pub parts: usize,
    /// Rows copied by this process.
    pub rows: u64,
    /// COPY bytes moved by this process.
    pub bytes: u64,
    /// Tables restarted because they were half-done under another snapshot.
    pub restarted: Vec<QualifiedName>,
    /// Parts of the given tables still pending when this process stopped:
    /// being copied by other processes, or (if none are running) left for
    /// a run under a snapshot that matches their table's finished parts.
    pub remaining: usize,
}

/// What [`Copier::prepare`] recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyPlan {
    /// The parts planned by this process, largest first (tables that
    /// already had parts in the state table keep theirs).
    pub parts: Vec<Part>,
    /// Tables emptied to start over because they were half-done under
    /// another snapshot.
    pub restarted: Vec<QualifiedName>,
}

/// The callback that receives [`CopyEvent`]s.
type Events = Arc<dyn Fn(CopyEvent) + Send + Sync>;

/// How one table is copied, derived from its catalog entry.
#[derive(Debug)]
pub(crate) struct TableCopy {
    pub(crate) name: QualifiedName,
    /// Quoted non-generated columns, comma-separated (may be empty).
    pub(crate) columns: String,
    /// Binary COPY unless some column's binary form embeds type OIDs.
    pub(crate) binary: bool,
    /// A TimescaleDB hypertable: read and written through its root.
    hypertable: bool,
}

impl TableCopy {
    fn new(table: &Table) -> TableCopy {
        TableCopy {
            name: table.name.clone(),
            columns: table
                .copied_columns()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", "),
            binary: table.copied_columns().all(|c| c.binary_safe),
            hypertable: table.hypertable,
        }
    }

    pub(crate) fn column_list(&self) -> String {
        if self.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.columns)
        }
    }

    fn copy_to(&self, range: &PartRange) -> String {
        let format = if self.binary { "binary" } else { "text" };
        match (range.condition(), self.hypertable) {
            (None, false) => format!(
                "COPY {}{} TO STDOUT (FORMAT {format})",
                self.name,
                self.column_list()
            ),
            (condition, hypertable) => format!(
                "COPY (SELECT {} FROM {}{}{}) TO STDOUT (FORMAT {format})",
                self.columns,
                only(hypertable),
                self.name,
                condition.map(|c| format!(" WHERE {c}")).unwrap_or_default(),
            ),
        }
    }

    pub(crate) fn copy_from(&self, freeze: bool) -> String {
        let format = if self.binary { "binary" } else { "text" };
        format!(
            "COPY {}{} FROM STDIN (FORMAT {format}{})",
            self.name,
            self.column_list(),
            if freeze { ", FREEZE" } else { "" }
        )
    }
}

/// `ONLY ` before a table's name in a statement that must not reach its
/// inheritance children, or nothing for a TimescaleDB hypertable, whose
/// rows are all in its chunks (TimescaleDB refuses `ONLY` for some).
pub(crate) fn only(hypertable: bool) -> &'static str {
    if hypertable { "" } else { "ONLY " }
}

/// Copies tables from a source to a target under an exported snapshot, with
/// parallel workers sharing parts through the target's state table.
pub struct Copier {
    source: ConnectConfig,
    target: ConnectConfig,
    tables: Vec<Table>,
    options: CopyOptions,
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("source", &self.source.describe())
            .field("target", &self.target.describe())
            .field("tables", &self.tables.len())
            .field("options", &self.options)
            .finish()
    }
}

impl Copier {
    /// A copier of `tables` (from [`pglive_schema::Catalog::read`];
    /// partitioned tables are copied through their leaves, which must be
    /// among them) from `source` to `target`, whose tables must exist
    /// without foreign keys pointing at them (restore post-data after the
    /// copy): whole-table parts start with `TRUNCATE`.
    pub fn new(
        source: ConnectConfig,
        target: ConnectConfig,
        tables: Vec<Table>,
        options: CopyOptions,
    ) -> Copier {
        Copier {
            source,
            target,
            tables,
            options,
        }
    }

    /// Plans the parts under `snapshot` and records them in the target's
    /// state table (tables that already have parts keep theirs). Tables
    /// left half-done under another snapshot are emptied and start over.
    /// [`run`](Self::run) calls this; call it alone to see the plan.
    pub async fn prepare(&self, snapshot: &Snapshot) -> Result<CopyPlan> {
        let mut source_client = connect(&self.source).await?;
        let tx = begin_snapshot(&mut source_client, snapshot, &self.source).await?;
        let parts = plan(&tx, &self.tables, &self.options.plan).await?;
        let mut target_client = connect(&self.target).await?;
        let hypertables: Vec<&QualifiedName> = self
            .tables
            .iter()
            .filter(|t| t.hypertable)
            .map(|t| &t.name)
            .collect();
        let restarted = state::seed(
            &mut target_client,
            &self.options.migration,
            &parts,
            &hypertables,
            snapshot.lsn,
        )
        .await?;
        let chunks = state::pending_chunks(&target_client, &self.options.migration).await?;
        crate::chunks::make_target_chunks(&tx, &target_client, &chunks).await?;
        drop(tx);
        Ok(CopyPlan { parts, restarted })
    }

    /// Copies every pending part under `snapshot` with
    /// [`CopyOptions::workers`] workers, reporting to `events`, until no
    /// part is left that this process may copy (parts being copied by other
    /// processes are theirs to finish). On the first error the other workers
    /// stop; their parts roll back and stay pending for the next run.
    pub async fn run(
        &self,
        snapshot: &Snapshot,
        events: impl Fn(CopyEvent) + Send + Sync + 'static,
    ) -> Result<CopySummary> {
        let CopyPlan { parts, restarted } = self.prepare(snapshot).await?;
        events(CopyEvent::Planned {
            parts: parts.len(),
            restarted: restarted.clone(),
        });
        let summary = self.copy_pending(snapshot, events).await?;
        Ok(CopySummary {
            restarted,
            ..summary
        })
    }

    /// Copies the pending parts another process (or [`prepare`](Self::prepare))
    /// recorded under `snapshot`, the same snapshot imported here (on any
    /// machine, while its exporter stays open), with
    /// [`CopyOptions::workers`] workers, until no part is left that this
    /// process may claim. This is how more processes join a running copy.
    pub async fn copy_pending(
        &self,
        snapshot: &Snapshot,
        events: impl Fn(CopyEvent) + Send + Sync + 'static,
    ) -> Result<CopySummary> {
        let events: Events = Arc::new(events);
        let mut tables: HashMap<QualifiedName, Arc<TableCopy>> = self
            .tables
            .iter()
            .filter(|t| t.holds_rows())
            .map(|t| (t.name.clone(), Arc::new(TableCopy::new(t))))
            .collect();
        if self.options.plan.large_objects {
            let lo = crate::plan::large_objects_name();
            tables.insert(
                lo.clone(),
                Arc::new(TableCopy {
                    name: lo,
                    columns: String::new(),
                    binary: true,
                    hypertable: false,
                }),
            );
        }
        let tables = Arc::new(tables);
        let mut workers = tokio::task::JoinSet::new();
        let mut numbers = HashMap::new();
        for worker in 0..self.options.workers.max(1) {
            let ctx = Worker {
                number: worker,
                source: self.source.clone(),
                target: self.target.clone(),
                snapshot: snapshot.clone(),
                migration: self.options.migration.clone(),
                claimed_by: format!("{}/{worker}", self.options.process_name),
                tables: Arc::clone(&tables),
                events: Arc::clone(&events),
                into_existing: self.options.into_existing,
            };
            let handle = workers.spawn(ctx.run());
            numbers.insert(handle.id(), worker);
        }
        let mut summary = CopySummary::default();
        let mut first_error = None;
        while let Some(joined) = workers.join_next_with_id().await {
            match joined {
                Ok((_, Ok(done))) => {
                    summary.parts += done.parts;
                    summary.rows += done.rows;
                    summary.bytes += done.bytes;
                }
                Ok((_, Err(e))) => {
                    if first_error.is_none() {
                        first_error = Some(e);
                        workers.abort_all();
                    }
                }
                Err(e) if e.is_cancelled() => {}
                Err(source) => {
                    if first_error.is_none() {
                        let worker = numbers.get(&source.id()).copied().unwrap_or_default();
                        first_error = Some(Error::Worker { worker, source });
                        workers.abort_all();
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let client = connect(&self.target).await?;
        // Parts of tables this copier does not hold (dropped on the source
        // since they were planned) are not waited for.
        summary.remaining = state::status(&client, &self.options.migration)
            .await?
            .iter()
            .filter(|p| !p.done && tables.contains_key(&p.table))
            .count();
        Ok(summary)
    }
}

/// Opens a `REPEATABLE READ` transaction that imported `snapshot`.
async fn begin_snapshot<'a>(
    client: &'a mut tokio_postgres::Client,
    snapshot: &Snapshot,
    server: &ConnectConfig,
) -> Result<tokio_postgres::Transaction<'a>> {
    read_only_transaction(client, Some(&snapshot.name))
        .await
        .map_err(|e| match e {
            SnapshotError::Import { name, source } => Error::Snapshot {
                name,
                server: server.describe(),
                source,
            },
            SnapshotError::Begin(e) => source("starting the snapshot transaction")(e),
        })
}

async fn connect(config: &ConnectConfig) -> Result<tokio_postgres::Client> {
    connect_sql(config).await.map_err(|source| Error::Connect {
        server: config.describe(),
        source,
    })
}

/// One worker's context.
struct Worker {
    number: usize,
    source: ConnectConfig,
    target: ConnectConfig,
    snapshot: Snapshot,
    migration: String,
    claimed_by: String,
    tables: Arc<HashMap<QualifiedName, Arc<TableCopy>>>,
    events: Events,
    /// See [`CopyOptions::into_existing`].
    into_existing: bool,
}

impl Worker {
    async fn run(self) -> Result<CopySummary> {
        let mut source_client = connect(&self.source).await?;
        // Block ranges are read by TID range scans, whatever the role's or
        // database's planner settings.
        source_client
            .batch_execute("SET enable_tidscan = on")
            .await
            .map_err(source("setting enable_tidscan"))?;
        let source_tx = begin_snapshot(&mut source_client, &self.snapshot, &self.source).await?;
        let mut target_client = connect(&self.target).await?;
        // A part's rows and its done-mark commit together, so losing the
        // last commits in a target crash loses both: waiting for the WAL
        // flush buys nothing here.
        target_client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(target("setting synchronous_commit"))?;
        if self.into_existing {
            // A role that may not (no superuser) copies with its checks.
            pglive_postgres::set_replica_role(&target_client)
                .await
                .map_err(target("setting session_replication_role = replica"))?;
        }
        let (schemas, names): (Vec<String>, Vec<String>) = self
            .tables
            .keys()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .unzip();
        let mut summary = CopySummary::default();
        loop {
            let tx = target_client
                .transaction()
                .await
                .map_err(target("starting a part transaction"))?;
            let Some(part) = state::claim(
                &tx,
                &self.migration,
                &schemas,
                &names,
                self.snapshot.lsn,
                &self.claimed_by,
            )
            .await?
            else {
                break;
            };
            let started = Instant::now();
            (self.events)(CopyEvent::PartStarted {
                worker: self.number,
                table: part.table.clone(),
                part: part.number,
            });
            let table = self
                .tables
                .get(&part.table)
                .ok_or_else(|| Error::UnknownTable {
                    table: part.table.clone(),
                })?;
            let (rows, bytes) = match part.range {
                PartRange::LargeObjects => self.copy_large_objects(&source_tx, &tx, &part).await?,
                PartRange::Chunks { first, last } => {
                    let progress = self.progress(&part);
                    crate::chunks::copy_chunks(&source_tx, &tx, table, (first, last), progress)
                        .await?
                }
                _ => self.copy_part(&source_tx, &tx, table, &part).await?,
            };
            state::finish(
                &tx,
                &self.migration,
                &part,
                rows as i64,
                bytes as i64,
                self.snapshot.lsn,
            )
            .await?;
            tx.commit().await.map_err(target(format!(
                "committing part {} of {}",
                part.number, part.table
            )))?;
            tracing::debug!(table = %part.table, part = part.number, rows, bytes, "part copied");
            (self.events)(CopyEvent::PartDone {
                worker: self.number,
                table: part.table.clone(),
                part: part.number,
                rows,
                bytes,
                elapsed: started.elapsed(),
            });
            summary.parts += 1;
            summary.rows += rows;
            summary.bytes += bytes;
        }
        source_tx
            .commit()
            .await
            .map_err(source("ending the snapshot transaction"))?;
        Ok(summary)
    }

    /// Reports `(rows, bytes)` so far of `part` as [`CopyEvent::Progress`].
    fn progress<'a>(&'a self, part: &'a Claimed) -> impl FnMut(u64, u64) + 'a {
        move |rows, bytes| {
            (self.events)(CopyEvent::Progress {
                worker: self.number,
                table: part.table.clone(),
                part: part.number,
                rows,
                bytes,
            })
        }
    }

    /// Streams one part from the source's `COPY TO` into the target's `COPY
    /// FROM` ([`crate::pipe::pipe`]).
    async fn copy_part(
        &self,
        source_tx: &tokio_postgres::Transaction<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        table: &TableCopy,
        part: &Claimed,
    ) -> Result<(u64, u64)> {
        let what = format!("part {} of {}", part.number, part.table);
        // A whole-table part empties the table in its own transaction, which
        // also lets COPY write frozen rows. A part of a split table has
        // nothing of its own to remove: its rows commit in one transaction
        // with its done-mark, so an attempt that stopped left none, and
        // nothing scans the table (a DELETE of the range, on a target table
        // without indexes yet, would read everything copied so far, once per
        // part). Tables whose copy starts over under a new snapshot are
        // emptied as a whole first (see `state`).
        let freeze = match &part.range {
            PartRange::Whole => {
                let only = only(table.hypertable);
                let empty = match self.into_existing {
                    true => format!("DELETE FROM {only}{}", table.name),
                    false => format!("TRUNCATE {only}{}", table.name),
                };
                tx.batch_execute(&empty)
                    .await
                    .map_err(target(format!("emptying {}", table.name)))?;
                !table.hypertable && !self.into_existing
            }
            _ => false,
        };
        let stream = source_tx
            .copy_out(&table.copy_to(&part.range))
            .await
            .map_err(source(format!("reading {what}")))?;
        let sink = tx
            .copy_in::<_, Bytes>(&table.copy_from(freeze))
            .await
            .map_err(target(format!("writing {what}")))?;
        crate::pipe::pipe(stream, sink, &what, self.progress(part)).await
    }

    /// Copies every large object the snapshot sees, in pieces, keeping the
    /// target's object (and its comment) when it exists.
    async fn copy_large_objects(
        &self,
        source_tx: &tokio_postgres::Transaction<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        part: &Claimed,
    ) -> Result<(u64, u64)> {
        let oids: Vec<u32> = source_tx
            .query(
                "SELECT oid FROM pg_catalog.pg_largeobject_metadata ORDER BY oid",
                &[],
            )
            .await
            .map_err(source("listing large objects"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let read = source_tx
            .prepare("SELECT pg_catalog.lo_get($1::oid, $2::int8, $3::int4)")
            .await
            .map_err(source("preparing to read large objects"))?;
        let put = tx
            .prepare("SELECT pg_catalog.lo_put($1::oid, $2::int8, $3::bytea)")
            .await
            .map_err(target("preparing to write large objects"))?;
        let mut bytes = 0u64;
        for (i, oid) in oids.iter().enumerate() {
            let what = format!("large object {oid}");
            tx.execute(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata \
                                          WHERE oid = $1::oid) \
                        THEN pg_catalog.lo_truncate(pg_catalog.lo_open($1::oid, 131072), 0) \
                        ELSE pg_catalog.lo_create($1::oid)::int4 * 0 END",
                &[oid],
            )
            .await
            .map_err(target(format!("creating {what}")))?;
            let mut offset = 0i64;
            loop {
                let data: Vec<u8> = source_tx
                    .query_one(&read, &[oid, &offset, &LARGE_OBJECT_CHUNK])
                    .await
                    .map_err(source(format!("reading {what}")))?
                    .get(0);
                if data.is_empty() {
                    break;
                }
                let len = data.len();
                tx.execute(&put, &[oid, &offset, &data])
                    .await
                    .map_err(target(format!("writing {what}")))?;
                offset += len as i64;
                bytes += len as u64;
                if len < LARGE_OBJECT_CHUNK as usize {
                    break;
                }
            }
            if i % 100 == 99 {
                (self.events)(CopyEvent::Progress {
                    worker: self.number,
                    table: part.table.clone(),
                    part: part.number,
                    rows: i as u64 + 1,
                    bytes,
                });
            }
        }
        Ok((oids.len() as u64, bytes))
    }
}

/// Runs `VACUUM (ANALYZE)` on each of `tables` on the target, one after the
/// other; spawn it to let it run in the background while later stages
/// proceed.
pub async fn vacuum_analyze(target_config: &ConnectConfig, tables: &[QualifiedName]) -> Result<()> {
    let client = connect(target_config).await?;
    for table in tables {
        client
            .batch_execute(&format!("VACUUM (ANALYZE) {table}"))
            .await
            .map_err(target(format!("vacuuming {table}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(binary: bool, hypertable: bool) -> TableCopy {
        TableCopy {
            name: QualifiedName::new("S", "t\"1"),
            columns: "\"a\", \"B\"".into(),
            binary,
            hypertable,
        }
    }

    #[test]
    fn copy_statements() {
        let t = table(true, false);
        assert_eq!(
            t.copy_to(&PartRange::Whole),
            "COPY \"S\".\"t\"\"1\" (\"a\", \"B\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            t.copy_to(&PartRange::Blocks {
                start: Some(4),
                end: None
            }),
            "COPY (SELECT \"a\", \"B\" FROM ONLY \"S\".\"t\"\"1\" WHERE ctid >= '(4,0)'::tid) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            t.copy_from(true),
            "COPY \"S\".\"t\"\"1\" (\"a\", \"B\") FROM STDIN (FORMAT binary, FREEZE)"
        );
        let t = table(false, true);
        assert_eq!(
            t.copy_to(&PartRange::Whole),
            "COPY (SELECT \"a\", \"B\" FROM \"S\".\"t\"\"1\") TO STDOUT (FORMAT text)"
        );
        assert_eq!(
            t.copy_from(false),
            "COPY \"S\".\"t\"\"1\" (\"a\", \"B\") FROM STDIN (FORMAT text)"
        );
    }
}
