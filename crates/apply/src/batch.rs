//! Target work in flight: one batch's statements, and optionally its
//! commit, running on the target in a background task while the applier
//! decodes and plans the next batch.
//!
//! At most one piece of work is in flight, and each starts only after the
//! previous one finished, so the target sees exactly the statement order a
//! sequential applier would send. What changes is only that receiving,
//! decoding and planning overlap with the target's execution.

use std::sync::Arc;

use pglive_repl::{Lsn, PgTimestamp};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::error::{Error, Result, target};
use crate::execute::{self, StatementCache};
use crate::plan::TablePlan;
use crate::progress;
use crate::table::TableMap;

/// A group of changes whose statements run in order; inside a `Tables`
/// segment, tables are independent of each other.
pub(crate) enum Segment {
    Tables(Vec<(Arc<TableMap>, TablePlan)>),
    Truncate {
        tables: Vec<Arc<TableMap>>,
        cascade: bool,
        restart_identity: bool,
    },
}

/// What one piece of work does on the target.
pub(crate) struct Work {
    /// Open the target transaction first (it is not open yet).
    pub begin: bool,
    pub segments: Vec<Segment>,
    /// The source position reported when a statement finds fewer rows than
    /// the source changed.
    pub lsn: Lsn,
    /// Record this applied position and commit: the end LSN and commit time
    /// of the batch's last source transaction.
    pub commit: Option<(Lsn, PgTimestamp)>,
    /// The stream's row in `pglive.apply_progress`.
    pub stream_id: String,
}

/// What finished work did.
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub truncates: u64,
    /// The position now committed on the target, when the work committed.
    pub committed: Option<(Lsn, PgTimestamp)>,
}

/// Work running on the target.
pub(crate) struct InFlight {
    handle: JoinHandle<(StatementCache, Result<Done>)>,
}

impl InFlight {
    /// Starts `work` on the target. The statement cache travels with the
    /// work and comes back when it is done.
    pub fn start(client: Arc<Client>, cache: StatementCache, work: Work) -> InFlight {
        InFlight {
            handle: tokio::spawn(async move {
                let mut cache = cache;
                let result = perform(&client, &mut cache, work).await;
                (cache, result)
            }),
        }
    }

    /// Waits for the work to finish. Cancel-safe: dropping the future
    /// leaves the work running and `self` waitable again.
    pub async fn finish(&mut self) -> Result<(StatementCache, Result<Done>)> {
        (&mut self.handle)
            .await
            .map_err(|e| Error::Protocol(format!("the target task ended abnormally: {e}")))
    }

    /// Stops the work: the target session is closed by the task's end, and
    /// the server rolls back whatever it did not commit.
    pub fn abort(&self) {
        self.handle.abort();
    }
}

/// The statement that opens a batch's target transaction. It locks the
/// stream's progress row, so an applier that starts while an earlier one's
/// transaction is still open (a dropped session the server has not noticed
/// yet) waits for it to end before reading the applied position.
fn begin_sql(stream_id: &str) -> String {
    format!(
        "BEGIN; SELECT 1 FROM pglive.apply_progress WHERE stream_id = {} FOR UPDATE",
        pglive_repl::quote_literal(stream_id)
    )
}

async fn perform(client: &Client, cache: &mut StatementCache, work: Work) -> Result<Done> {
    let mut done = Done::default();
    if work.begin {
        client
            .batch_execute(&begin_sql(&work.stream_id))
            .await
            .map_err(target("beginning a batch"))?;
    }
    for segment in work.segments {
        match segment {
            Segment::Tables(plans) => {
                for (map, plan) in plans {
                    for statement in plan.finish() {
                        match execute::execute(client, cache, &map, &statement).await? {
                            Ok(outcome) => {
                                done.inserted += outcome.inserted;
                                done.updated += outcome.updated;
                                done.deleted += outcome.deleted;
                            }
                            Err((operation, expected, matched)) => {
                                return Err(Error::RowsMissing {
                                    table: map.name.to_string(),
                                    operation,
                                    expected,
                                    matched,
                                    lsn: work.lsn,
                                });
                            }
                        }
                    }
                }
            }
            Segment::Truncate {
                tables,
                cascade,
                restart_identity,
            } => {
                let refs: Vec<&TableMap> = tables.iter().map(|t| t.as_ref()).collect();
                execute::truncate(client, &refs, cascade, restart_identity).await?;
                done.truncates += 1;
            }
        }
    }
    if let Some((lsn, commit_time)) = work.commit {
        let seconds = commit_time
            .to_system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        client
            .batch_execute(&progress::save_and_commit_sql(
                &work.stream_id,
                lsn,
                seconds,
            ))
            .await
            .map_err(target(format!(
                "recording the applied position and committing the batch ending at {lsn}"
            )))?;
        done.committed = Some((lsn, commit_time));
    }
    Ok(done)
}
