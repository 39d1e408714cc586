//! TimescaleDB's maintenance jobs on the source (compression, retention and
//! reorder policies of the migrated hypertables), paused while the copy
//! reads their chunks.
//!
//! Such a job truncates, rewrites or drops a chunk. One the copy has not
//! read yet can then no longer be read as of the copy's snapshot (the copy
//! stops with the chunk named and that hypertable starts over on the next
//! run: with a daily policy, a copy longer than a day would never end); one
//! it has read stays locked until the copy ends, so the job would wait for
//! it, and the application's queries on that chunk behind the job. So the
//! copy pauses the scheduled ones, each recorded on the target before it is
//! paused, and schedules them again when it ends, however it ends; the next
//! run and `pglive clean` schedule any that a crash left paused. A role that
//! may not pause a job (not its owner) gets a warning saying what to run.

use pglive_postgres::QualifiedName;
use tokio_postgres::Client;

use crate::error::{Doing, Result};
use crate::events::{Events, Step};

/// The policies that rewrite or drop chunks.
const POLICIES: [&str; 3] = ["policy_compression", "policy_retention", "policy_reorder"];

/// Pauses the source's scheduled maintenance jobs of `hypertables`,
/// recording each on the target (migration `name`) first. Returns how many
/// were paused.
pub(crate) async fn pause(
    (source, target): (&Client, &Client),
    name: &str,
    hypertables: &[&QualifiedName],
    events: &dyn Events,
) -> Result<usize> {
    if hypertables.is_empty() || !has_jobs(source).await? {
        return Ok(0);
    }
    let (schemas, tables): (Vec<&str>, Vec<&str>) = hypertables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let jobs: Vec<(i32, String)> = source
        .query(
            "SELECT job_id, format('%s on %I.%I', proc_name, hypertable_schema, hypertable_name) \
               FROM timescaledb_information.jobs \
              WHERE scheduled AND proc_name::text = ANY($1) \
                AND (hypertable_schema::text, hypertable_name::text) IN \
                    (SELECT * FROM unnest($2::text[], $3::text[])) \
              ORDER BY job_id",
            &[&POLICIES.as_slice(), &schemas, &tables],
        )
        .await
        .doing("reading the source's TimescaleDB jobs")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut paused = Vec::new();
    for (id, what) in jobs {
        target
            .execute(
                "INSERT INTO pglive.paused_source_jobs (migration, job_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&name, &id],
            )
            .await
            .doing("recording a paused source job in pglive.paused_source_jobs")?;
        match source
            .execute("SELECT alter_job($1, scheduled => false)", &[&id])
            .await
        {
            Ok(_) => paused.push(what),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                forget(target, name, id).await?;
                events.warn(
                    Step::Copy,
                    format!(
                        "TimescaleDB: job {id} ({what}) keeps running on the source: the source role may not pause it (only its owner may). A chunk it changes before the copy reads it starts that hypertable's copy over on the next run; pause it while the copy runs: SELECT alter_job({id}, scheduled => false), and scheduled => true after"
                    ),
                );
            }
            Err(e) => {
                return Err(e).doing_with(|| format!("pausing job {id} ({what}) on the source"));
            }
        }
    }
    if !paused.is_empty() {
        events.note(
            Step::Copy,
            format!(
                "TimescaleDB: paused on the source while the copy runs: {}",
                paused.join(", ")
            ),
        );
    }
    Ok(paused.len())
}

/// Schedules again the source jobs recorded as paused for migration
/// `name`, and forgets them. Returns how many.
pub(crate) async fn resume(
    (source, target): (&Client, &Client),
    name: &str,
    events: &dyn Events,
) -> Result<usize> {
    let recorded = target
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass('pglive.paused_source_jobs')",
            &[],
        )
        .await
        .doing("reading pglive.paused_source_jobs")?;
    if recorded.is_none() {
        return Ok(0);
    }
    let ids: Vec<i32> = target
        .query(
            "SELECT job_id FROM pglive.paused_source_jobs WHERE migration = $1 ORDER BY job_id",
            &[&name],
        )
        .await
        .doing("reading pglive.paused_source_jobs")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    if has_jobs(source).await? {
        source
            .query(
                "SELECT alter_job(j.job_id, scheduled => true) \
                   FROM timescaledb_information.jobs j WHERE j.job_id = ANY($1)",
                &[&ids],
            )
            .await
            .doing("scheduling the source's paused TimescaleDB jobs again")?;
    }
    for id in &ids {
        forget(target, name, *id).await?;
    }
    events.note(
        Step::Copy,
        format!(
            "TimescaleDB: {} job(s) paused on the source for the copy scheduled again",
            ids.len()
        ),
    );
    Ok(ids.len())
}

/// Whether the source has TimescaleDB's jobs.
async fn has_jobs(source: &Client) -> Result<bool> {
    Ok(source
        .query_one(
            "SELECT pg_catalog.to_regclass('timescaledb_information.jobs') IS NOT NULL",
            &[],
        )
        .await
        .doing("reading whether the source has TimescaleDB")?
        .get(0))
}

/// Forgets the record of job `id`.
async fn forget(target: &Client, name: &str, id: i32) -> Result<()> {
    target
        .execute(
            "DELETE FROM pglive.paused_source_jobs WHERE migration = $1 AND job_id = $2",
            &[&name, &id],
        )
        .await
        .doing("updating pglive.paused_source_jobs")?;
    Ok(())
}
