//! `pglive migrate --join`: another process, on any machine, takes parts
//! of a running migration's copy. It imports the snapshot the running copy
//! reads (recorded on the target) and claims pending parts through the
//! target's state with `SKIP LOCKED`, as the running copy's own workers
//! do: PostgreSQL is the coordinator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglive_postgres::{ConnectConfig, SnapshotError, connect_sql, read_only_transaction};
use pglive_schema::Catalog;
use pglive_snapshot::Copier;

use crate::error::{Doing, Error, Result};
use crate::events::{Event, Events};
use crate::job::{Job, MigrateOptions};
use crate::preflight;
use crate::state::{self, Stage};

/// What a joined process copied.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JoinSummary {
    /// Parts this process copied.
    pub parts: usize,
    /// Rows this process copied.
    pub rows: u64,
    /// COPY bytes this process moved.
    pub bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// Parts still pending when no more were left to claim (being copied
    /// by other processes).
    pub remaining: usize,
}

/// How long a joining process waits for the migration's copy to begin.
const WAIT_FOR_COPY: Duration = Duration::from_secs(600);

/// Joins the copy of migration `options.name`, run by a `migrate` on
/// another process or machine, with `options.jobs` workers, until no part
/// is left to claim. Waits (up to ten minutes) for a migration that has not
/// reached its copy yet (or whose copy is starting again after a stop);
/// refuses one past it.
pub async fn join_copy(
    source: ConnectConfig,
    target: ConnectConfig,
    options: &MigrateOptions,
    events: Arc<dyn Events>,
) -> Result<JoinSummary> {
    let name = options.name.as_str();
    let target_client = preflight::connect(&target, "target").await?;
    let nothing = |reason: String| Error::NothingToJoin {
        name: name.to_owned(),
        reason,
    };
    let deadline = Instant::now() + WAIT_FOR_COPY;
    let mut source_client = connect_sql(&source).await?;
    // A snapshot recorded by a copy that stopped, until its next run
    // records a new one.
    let mut gone: Option<String> = None;
    let (record, snapshot, catalog) = loop {
        let record = state::load(&target_client, name)
            .await?
            .ok_or_else(|| Error::NotFound {
                name: name.to_owned(),
                target: target.describe(),
            })?;
        if record.stage > Stage::Copy {
            return Err(nothing(format!(
                "it is past its copy (stage {})",
                record.stage.as_str()
            )));
        }
        if !state::is_running(&target_client, name).await? {
            return Err(Error::NotRunning {
                name: name.to_owned(),
                stage: record.stage,
            });
        }
        if let Some(snapshot) = state::copy_snapshot(&target_client, name).await? {
            if gone.as_ref() != Some(&snapshot.name) {
                // The tables as the running copy sees them: read under its
                // snapshot.
                match read_only_transaction(&mut source_client, Some(&snapshot.name)).await {
                    Ok(tx) => {
                        let filter = record.settings.filter();
                        let mut catalog = Catalog::read(&tx, &filter).await?;
                        drop(tx);
                        crate::timescale::mark_target_hypertables(&mut catalog, &target_client)
                            .await?;
                        break (record, snapshot, catalog);
                    }
                    Err(SnapshotError::Import { .. }) => gone = Some(snapshot.name),
                    Err(SnapshotError::Begin(e)) => {
                        return Err(e).doing("starting a transaction on the source");
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(nothing(format!(
                "its copy did not begin within {} minutes",
                WAIT_FOR_COPY.as_secs() / 60
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut job = Job::for_recorded(source, target, &record);
    job.options.jobs = options.jobs.max(1);
    let pending: Vec<_> = pglive_snapshot::status(&target_client, name)
        .await?
        .into_iter()
        .filter(|p| !p.done)
        .collect();
    events.event(Event::CopyStarted {
        tables: catalog.tables_with_rows().count(),
        bytes: pending
            .iter()
            .map(|p| p.estimated_bytes.max(0) as u64)
            .sum(),
        workers: job.options.jobs,
    });
    let started = Instant::now();
    let copier = Copier::new(
        job.source.clone(),
        job.target.clone(),
        catalog.tables.clone(),
        job.copy_options(),
    );
    let sink = Arc::clone(&events);
    let summary = copier
        .copy_pending(&snapshot, move |event| sink.event(Event::Copy(event)))
        .await;
    events.event(Event::CopyFinished);
    let summary = summary.doing("copying parts of the running migration")?;
    Ok(JoinSummary {
        parts: summary.parts,
        rows: summary.rows,
        bytes: summary.bytes,
        elapsed: started.elapsed(),
        remaining: summary.remaining,
    })
}
