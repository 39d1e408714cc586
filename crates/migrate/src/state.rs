//! The migration's own state in the target (`pglive.migration`): which stage
//! it reached, its slot and publication, and requests from other pglive
//! processes (cutover). The libraries keep their own tables beside it.

use std::collections::BTreeMap;

use crate::error::{Doing, Error, Result};
use pglive_postgres::{Lsn, QualifiedName, StateSchema};
use pglive_schema::ObjectFilter;
use tokio_postgres::Client;

/// How far a migration got; each stage is complete when the next begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The slot exists; the schema is being created.
    Schema,
    /// Tables are being copied.
    Copy,
    /// Indexes and constraints are being built.
    PostData,
    /// Changes are streaming.
    Streaming,
    /// Cutover is under way.
    Cutover,
    /// The migration is finished.
    Done,
}

impl Stage {
    /// The name stored in `pglive.migration.stage` and shown by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Schema => "schema",
            Stage::Copy => "copy",
            Stage::PostData => "post-data",
            Stage::Streaming => "streaming",
            Stage::Cutover => "cutover",
            Stage::Done => "done",
        }
    }

    fn parse(text: &str) -> Result<Stage> {
        Ok(match text {
            "schema" => Stage::Schema,
            "copy" => Stage::Copy,
            "post-data" => Stage::PostData,
            "streaming" => Stage::Streaming,
            "cutover" => Stage::Cutover,
            "done" => Stage::Done,
            other => {
                return Err(Error::State {
                    reason: format!("unknown stage {other:?} in pglive.migration"),
                });
            }
        })
    }
}

/// One migration's row.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub name: String,
    pub slot: String,
    pub publication: String,
    pub stage: Stage,
    /// Where the slot's stream begins (its consistent point).
    pub start_lsn: Lsn,
    /// The source, described without password.
    pub source: String,
    pub cutover_requested: bool,
    /// The cutover was asked for with a fence.
    pub fence: bool,
    /// The fence may be up on the source: recorded before it is raised,
    /// cleared once lifted (and kept after a fenced cutover finished).
    pub fence_raised: bool,
    /// The source database's own `default_transaction_read_only` setting
    /// before the fence (`None`: it had none), restored when it is lifted.
    pub fence_prior: Option<String>,
    /// A cutover whose checks passed, about to drop the slot: its summary.
    /// A process that stops between dropping the slot and recording
    /// `done` leaves this, and the next one finishes the cutover.
    pub finishing: Option<String>,
    /// Why the last cutover was withdrawn, for the `pglive cutover` that
    /// asked for it.
    pub cutover_error: Option<String>,
    /// The slot's WAL figures as last seen while streaming.
    pub slot_wal: Option<serde_json::Value>,
    /// Why apply waits, while it does.
    pub apply_waiting: Option<String>,
    pub summary: Option<String>,
    /// A `pglive verify` request, where its handshake is.
    pub verify_request: Option<VerifyRequest>,
    /// What the migration was started with; every later command uses it.
    pub settings: Settings,
    /// Whether `settings` were recorded (a migration started by an earlier
    /// pglive has none: its first resume records the flags it is given).
    pub settings_recorded: bool,
    /// UPDATEs plus DELETEs the source's statistics counted for each keyless
    /// table when the migration started (see `publication::keyless_changes`).
    pub keyless_baseline: BTreeMap<String, i64>,
}

/// The choices a migration is started with that every later command
/// (resume, cutover, verify) must keep.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// `--include` patterns.
    pub include: Vec<String>,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// Owners are restored (not `--no-owner`).
    pub keep_owners: bool,
    /// Privileges are restored (not `--no-acl`).
    pub keep_privileges: bool,
}

impl Default for Settings {
    /// Every table, with owners and privileges.
    fn default() -> Settings {
        Settings {
            include: Vec::new(),
            exclude: Vec::new(),
            keep_owners: true,
            keep_privileges: true,
        }
    }
}

impl Settings {
    /// The table filter of these settings.
    pub fn filter(&self) -> ObjectFilter {
        let mut filter = ObjectFilter::new();
        filter.include_tables = self.include.clone();
        filter.exclude_tables = self.exclude.clone();
        filter
    }
}

/// The migration's tables, by version (see [`StateSchema`]).
const STATE: StateSchema = StateSchema {
    component: "migrate",
    steps: &[
        VERSION_1, VERSION_2, VERSION_3, VERSION_4, VERSION_5, VERSION_6, VERSION_7,
    ],
};

/// Version 1, which also brings the layouts made before versions were kept
/// (no settings, no keyless baseline) up to it.
const VERSION_1: &str = "
CREATE TABLE IF NOT EXISTS pglive.migration (
    name text PRIMARY KEY,
    slot text NOT NULL,
    publication text NOT NULL,
    stage text NOT NULL,
    start_lsn pg_lsn NOT NULL,
    source text NOT NULL,
    cutover_requested boolean NOT NULL DEFAULT false,
    fence boolean NOT NULL DEFAULT false,
    summary text,
    progress jsonb,
    verify_lsn pg_lsn,
    verify_state text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS settings jsonb;
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS keyless_baseline jsonb;
CREATE TABLE IF NOT EXISTS pglive.adopting (
    migration text NOT NULL,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    PRIMARY KEY (migration, table_schema, table_name)
);";

/// Version 2: the fence as raised (with the setting it replaced), the
/// summary of a cutover about to drop its slot, and why the last cutover
/// was withdrawn.
const VERSION_2: &str = "
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS fence_raised boolean NOT NULL DEFAULT false;
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS fence_prior text;
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS finishing text;
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS cutover_error text;";

/// Version 3: the slot's WAL figures as last seen on the source.
const VERSION_3: &str = "ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS slot_wal jsonb;";

/// Version 4: the snapshot the running copy reads, for processes joining it.
const VERSION_4: &str = "
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS copy_snapshot text;
ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS copy_snapshot_lsn pg_lsn;";

/// Version 5: why apply waits (a source table's shape the target does not
/// match yet).
const VERSION_5: &str = "ALTER TABLE pglive.migration ADD COLUMN IF NOT EXISTS apply_waiting text;";

/// Version 6: where each continuous aggregate's history (copied from the
/// source) ends: the source's oldest raw chunk start at the copy's
/// snapshot, in TimescaleDB's internal time (NULL: it had no raw chunk).
const VERSION_6: &str = "
CREATE TABLE IF NOT EXISTS pglive.aggregate_history (
    migration text NOT NULL,
    view_schema text NOT NULL,
    view_name text NOT NULL,
    cut bigint,
    PRIMARY KEY (migration, view_schema, view_name)
);";

/// Version 7: the source's TimescaleDB jobs a copy paused, until it
/// schedules them again (see `source_jobs`).
const VERSION_7: &str = "
CREATE TABLE IF NOT EXISTS pglive.paused_source_jobs (
    migration text NOT NULL,
    job_id integer NOT NULL,
    PRIMARY KEY (migration, job_id)
);";

/// Records (or, with `None`, clears) why apply waits.
pub(crate) async fn set_apply_waiting(
    client: &Client,
    name: &str,
    why: Option<&str>,
) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET apply_waiting = $2 WHERE name = $1",
            &[&name, &why],
        )
        .await
        .doing("recording why apply waits")?;
    Ok(())
}

/// Records (or, with `None`, clears) the snapshot the running copy reads,
/// so that other processes may join it.
pub(crate) async fn set_copy_snapshot(
    client: &Client,
    name: &str,
    snapshot: Option<&pglive_snapshot::Snapshot>,
) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET copy_snapshot = $2, copy_snapshot_lsn = $3::text::pg_lsn WHERE name = $1",
            &[
                &name,
                &snapshot.map(|s| s.name.clone()),
                &snapshot.map(|s| s.lsn.to_string()),
            ],
        )
        .await
        .doing("recording the copy's snapshot")?;
    Ok(())
}

/// The snapshot the running copy reads, if one is recorded.
pub(crate) async fn copy_snapshot(
    client: &Client,
    name: &str,
) -> Result<Option<pglive_snapshot::Snapshot>> {
    let row = client
        .query_opt(
            "SELECT copy_snapshot, copy_snapshot_lsn::text FROM pglive.migration WHERE name = $1",
            &[&name],
        )
        .await
        .doing("reading the copy's snapshot")?;
    let Some(row) = row else { return Ok(None) };
    match (
        row.get::<_, Option<String>>(0),
        row.get::<_, Option<String>>(1),
    ) {
        (Some(name), Some(lsn)) => Ok(Some(pglive_snapshot::Snapshot {
            name,
            lsn: lsn.parse()?,
        })),
        _ => Ok(None),
    }
}

/// Creates or upgrades the migration's tables on the target.
pub(crate) async fn create_tables(client: &Client) -> Result<()> {
    STATE.upgrade(client).await?;
    Ok(())
}

/// The migration called `name`, if the target has one. State written by
/// an earlier pglive is brought up to this one's version first.
pub(crate) async fn load(client: &Client, name: &str) -> Result<Option<Record>> {
    const SELECT: &str = "SELECT name, slot, publication, stage, start_lsn::text, source, cutover_requested, fence, summary,
                verify_lsn::text, verify_state, settings::text, keyless_baseline::text,
                fence_raised, fence_prior, finishing, cutover_error, slot_wal::text, apply_waiting
           FROM pglive.migration WHERE name = $1";
    let row = match client.query_opt(SELECT, &[&name]).await {
        Ok(row) => row,
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => return Ok(None),
        // A column of a later version: an earlier pglive's state.
        Err(e) if e.code().map(|c| c.code()) == Some("42703") => {
            create_tables(client).await?;
            client
                .query_opt(SELECT, &[&name])
                .await
                .doing("reading pglive.migration")?
        }
        Err(e) => return Err(e).doing("reading pglive.migration"),
    };
    row.map(|r| {
        Ok(Record {
            name: r.get(0),
            slot: r.get(1),
            publication: r.get(2),
            stage: Stage::parse(r.get(3))?,
            start_lsn: r.get::<_, String>(4).parse()?,
            source: r.get(5),
            cutover_requested: r.get(6),
            fence: r.get(7),
            fence_raised: r.get(13),
            fence_prior: r.get(14),
            finishing: r.get(15),
            cutover_error: r.get(16),
            slot_wal: r
                .get::<_, Option<String>>(17)
                .and_then(|text| serde_json::from_str(&text).ok()),
            apply_waiting: r.get(18),
            summary: r.get(8),
            verify_request: verify_request_of(r.get(9), r.get(10))?,
            settings_recorded: r.get::<_, Option<String>>(11).is_some(),
            settings: json_or_default(r.get(11), "settings")?,
            keyless_baseline: json_or_default(r.get(12), "keyless_baseline")?,
        })
    })
    .transpose()
}

/// Adds tables to the migration's keyless baseline (tables adopted mid-run).
pub(crate) async fn add_keyless_baseline(
    client: &Client,
    name: &str,
    counts: &BTreeMap<String, i64>,
) -> Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE pglive.migration
                SET keyless_baseline = coalesce(keyless_baseline, '{}'::jsonb) || $2::text::jsonb
              WHERE name = $1",
            &[&name, &serde_json::to_string(counts)?],
        )
        .await
        .doing("recording the keyless baseline")?;
    Ok(())
}

/// Records the settings of a migration started before they were kept.
pub(crate) async fn save_settings(client: &Client, name: &str, settings: &Settings) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET settings = $2::text::jsonb WHERE name = $1",
            &[&name, &serde_json::to_string(settings)?],
        )
        .await
        .doing("recording the migration's settings")?;
    Ok(())
}

/// A JSON column's value, or the default when the column is NULL (a
/// migration recorded before the column existed).
fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    text: Option<String>,
    column: &str,
) -> Result<T> {
    match text {
        None => Ok(T::default()),
        Some(text) => {
            serde_json::from_str(&text).doing_with(|| format!("reading pglive.migration.{column}"))
        }
    }
}

pub(crate) async fn insert(client: &Client, m: &Record) -> Result<()> {
    client
        .execute(
            "INSERT INTO pglive.migration (name, slot, publication, stage, start_lsn, source, settings, keyless_baseline)
             VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, $7::text::jsonb, $8::text::jsonb)",
            &[
                &m.name,
                &m.slot,
                &m.publication,
                &m.stage.as_str(),
                &m.start_lsn.to_string(),
                &m.source,
                &serde_json::to_string(&m.settings)?,
                &serde_json::to_string(&m.keyless_baseline)?,
            ],
        )
        .await
        .doing("recording the migration in pglive.migration")?;
    Ok(())
}

pub(crate) async fn set_stage(client: &Client, name: &str, stage: Stage) -> Result<()> {
    // Durable even on a target set to synchronous_commit = off: a stage
    // lost in a crash would leave a streaming migration recorded as
    // post-data, and no cutover could be asked for.
    let updated = client
        .batch_execute(&format!(
            "BEGIN;
             SELECT pg_catalog.set_config('synchronous_commit', 'on', true)
              WHERE pg_catalog.current_setting('synchronous_commit') IN ('off', 'local');
             UPDATE pglive.migration SET stage = {}, updated_at = now() WHERE name = {};
             COMMIT",
            pglive_postgres::quote_literal(stage.as_str()),
            pglive_postgres::quote_literal(name)
        ))
        .await;
    if updated.is_err() {
        client.batch_execute("ROLLBACK").await.ok();
    }
    updated.doing("updating pglive.migration")?;
    Ok(())
}

/// Records a cutover under way (asked for here or elsewhere), so that a
/// process that stops in the middle resumes it.
pub(crate) async fn begin_cutover(client: &Client, name: &str, fence: bool) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET stage = 'cutover', cutover_requested = true, fence = fence OR $2,
                    updated_at = now() WHERE name = $1",
            &[&name, &fence],
        )
        .await
        .doing("recording the cutover in pglive.migration")?;
    Ok(())
}

pub(crate) async fn request_cutover(client: &Client, name: &str, fence: bool) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET cutover_requested = true, fence = $2, cutover_error = NULL, updated_at = now() WHERE name = $1",
            &[&name, &fence],
        )
        .await
        .doing("requesting cutover")?;
    Ok(())
}

/// Withdraws a cutover request (and its fence) and moves a cutover under
/// way back to streaming; `reason` says why, when it failed.
/// False when the cutover's checks had passed (it is finishing, and only
/// finishing is left): nothing is changed then.
pub(crate) async fn abort_cutover(
    client: &Client,
    name: &str,
    reason: Option<&str>,
) -> Result<bool> {
    let changed = client
        .execute(
            "UPDATE pglive.migration SET cutover_requested = false, fence = false, cutover_error = $2,
                    stage = CASE WHEN stage = 'cutover' THEN 'streaming' ELSE stage END
              WHERE name = $1 AND finishing IS NULL",
            &[&name, &reason],
        )
        .await
        .doing("withdrawing the cutover request")?;
    Ok(changed == 1)
}

/// Records that the fence is about to be raised, with the database's own
/// setting it replaces (kept when a fence is already recorded).
/// False, recording nothing, when the cutover was withdrawn meanwhile (or
/// is finishing): the fence must not go up then.
pub(crate) async fn record_fence(client: &Client, name: &str, prior: Option<&str>) -> Result<bool> {
    let changed = client
        .execute(
            "UPDATE pglive.migration
                SET fence_prior = CASE WHEN fence_raised THEN fence_prior ELSE $2 END,
                    fence_raised = true, updated_at = now()
              WHERE name = $1 AND stage = 'cutover' AND cutover_requested AND finishing IS NULL",
            &[&name, &prior],
        )
        .await
        .doing("recording the fence in pglive.migration")?;
    Ok(changed == 1)
}

/// Records that the fence was lifted.
pub(crate) async fn record_fence_lifted(client: &Client, name: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET fence_raised = false, fence_prior = NULL, updated_at = now() WHERE name = $1",
            &[&name],
        )
        .await
        .doing("recording the lifted fence in pglive.migration")?;
    Ok(())
}

/// Records a cutover whose checks passed, before its slot is dropped;
/// [`Error::CutoverAborted`] when it was withdrawn meanwhile (by `--abort`
/// or a `pglive cutover` that timed out), which then wins.
pub(crate) async fn set_finishing(client: &Client, name: &str, summary: &str) -> Result<()> {
    let changed = client
        .execute(
            "UPDATE pglive.migration SET finishing = $2, updated_at = now()
              WHERE name = $1 AND stage = 'cutover' AND cutover_requested AND finishing IS NULL",
            &[&name, &summary],
        )
        .await
        .doing("recording the cutover's summary in pglive.migration")?;
    if changed == 1 {
        Ok(())
    } else {
        Err(Error::CutoverAborted)
    }
}

pub(crate) async fn finish(client: &Client, name: &str, summary: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET stage = 'done', summary = $2, cutover_requested = false, updated_at = now()
              WHERE name = $1",
            &[&name, &summary],
        )
        .await
        .doing("recording the end of the migration")?;
    Ok(())
}

/// Where a live verification's handshake with the running `migrate` is
/// (`verify_state`, `verify_lsn`): verify asks apply to hold; migrate holds
/// at a transaction boundary; verify takes the source's snapshot (whose
/// point is then ahead of everything applied) and asks apply to go on to
/// exactly that point; migrate pauses there while the target's snapshot is
/// taken. Either side may give up a step (`Missed`) and verify starts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VerifyRequest {
    /// Verify asks apply to hold.
    Hold,
    /// Apply holds; verify is taking the source's snapshot.
    Held,
    /// Apply is to go on to this point and pause there.
    Requested(Lsn),
    /// Apply is paused at this point.
    Paused(Lsn),
    /// The step was given up: verify starts over.
    Missed,
}

impl VerifyRequest {
    fn state(self) -> &'static str {
        match self {
            VerifyRequest::Hold => "hold",
            VerifyRequest::Held => "held",
            VerifyRequest::Requested(_) => "requested",
            VerifyRequest::Paused(_) => "paused",
            VerifyRequest::Missed => "missed",
        }
    }

    fn lsn(self) -> Option<String> {
        match self {
            VerifyRequest::Requested(lsn) | VerifyRequest::Paused(lsn) => Some(lsn.to_string()),
            _ => None,
        }
    }
}

/// Asks the running migrate to hold apply for a verification (replacing
/// any earlier request).
pub(crate) async fn ask_verify_hold(client: &Client, name: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET verify_lsn = NULL, verify_state = 'hold' WHERE name = $1",
            &[&name],
        )
        .await
        .doing("asking apply to hold for a verification")?;
    Ok(())
}

/// The pending verification request, if any.
pub(crate) async fn verify_request(client: &Client, name: &str) -> Result<Option<VerifyRequest>> {
    let row = client
        .query_opt(
            "SELECT verify_lsn::text, verify_state FROM pglive.migration WHERE name = $1",
            &[&name],
        )
        .await
        .doing("reading the verification request")?;
    match row {
        Some(r) => verify_request_of(r.get(0), r.get(1)),
        None => Ok(None),
    }
}

/// The verification request from the `verify_lsn` and `verify_state`
/// columns (an unknown state, written by another pglive, reads as none).
fn verify_request_of(lsn: Option<String>, state: Option<String>) -> Result<Option<VerifyRequest>> {
    let lsn = lsn.map(|l| l.parse::<Lsn>()).transpose()?;
    Ok(match (state.as_deref(), lsn) {
        (Some("hold"), _) => Some(VerifyRequest::Hold),
        (Some("held"), _) => Some(VerifyRequest::Held),
        (Some("requested"), Some(lsn)) => Some(VerifyRequest::Requested(lsn)),
        (Some("paused"), Some(lsn)) => Some(VerifyRequest::Paused(lsn)),
        (Some("missed"), _) => Some(VerifyRequest::Missed),
        _ => None,
    })
}

/// Moves the verification request from state `from` to `to`; false when it
/// was no longer in `from` (the other side moved it first).
pub(crate) async fn move_verify_request(
    client: &Client,
    name: &str,
    from: VerifyRequest,
    to: VerifyRequest,
) -> Result<bool> {
    let moved = client
        .execute(
            "UPDATE pglive.migration SET verify_state = $3, verify_lsn = $4::text::pg_lsn
              WHERE name = $1 AND verify_state = $2",
            &[&name, &from.state(), &to.state(), &to.lsn()],
        )
        .await
        .doing("answering the verification request")?;
    Ok(moved == 1)
}

/// Clears the verification request.
pub(crate) async fn clear_verify_request(client: &Client, name: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET verify_state = NULL, verify_lsn = NULL WHERE name = $1",
            &[&name],
        )
        .await
        .doing("clearing the verification request")?;
    Ok(())
}

/// Records the slot's WAL figures (see `slot::SlotWal`).
pub(crate) async fn save_slot_wal(
    client: &Client,
    name: &str,
    wal: &serde_json::Value,
) -> Result<()> {
    client
        .execute(
            "UPDATE pglive.migration SET slot_wal = $2::text::jsonb WHERE name = $1",
            &[&name, &wal.to_string()],
        )
        .await
        .doing("recording the slot's WAL in pglive.migration")?;
    Ok(())
}

/// Records the streaming progress (for `pglive status` from anywhere).
pub(crate) async fn save_progress(
    client: &Client,
    name: &str,
    progress: &pglive_apply::Progress,
) -> Result<()> {
    save_stats(
        client,
        name,
        &progress.stats,
        progress.received_lsn,
        progress.source_lsn,
        progress.lag_bytes,
        progress.lag_seconds,
    )
    .await
}

/// Records the applier's counters with the given positions and lag.
pub(crate) async fn save_stats(
    client: &Client,
    name: &str,
    stats: &pglive_apply::ApplyStats,
    received: Lsn,
    source: Lsn,
    lag_bytes: u64,
    lag_seconds: f64,
) -> Result<()> {
    let json = serde_json::json!({
        "applied_lsn": stats.applied_lsn.to_string(),
        "received_lsn": received.to_string(),
        "source_lsn": source.to_string(),
        "lag_bytes": lag_bytes,
        "lag_seconds": lag_seconds,
        "transactions": stats.transactions,
        "rows_inserted": stats.inserted,
        "rows_updated": stats.updated,
        "rows_deleted": stats.deleted,
        "batches": stats.batches,
    });
    client
        .execute(
            "UPDATE pglive.migration SET progress = $2::text::jsonb, updated_at = now() WHERE name = $1",
            &[&name, &json.to_string()],
        )
        .await
        .doing("recording progress")?;
    Ok(())
}

/// The last recorded streaming progress, as JSON text.
pub(crate) async fn load_progress(
    client: &Client,
    name: &str,
) -> Result<Option<serde_json::Value>> {
    let row = client
        .query_opt(
            "SELECT progress::text, extract(epoch FROM now() - updated_at)::float8 FROM pglive.migration WHERE name = $1",
            &[&name],
        )
        .await
        .doing("reading progress")?;
    Ok(row.and_then(|r| {
        let text: Option<String> = r.get(0);
        let mut value: serde_json::Value = serde_json::from_str(&text?).ok()?;
        value["seconds_since_update"] = serde_json::json!(r.get::<_, f64>(1));
        Some(value)
    }))
}

/// Tables created on the source mid-run whose adoption began (they may be
/// copied) but has not finished (their post-data may be missing).
pub(crate) async fn adopting(client: &Client, name: &str) -> Result<Vec<QualifiedName>> {
    match client
        .query(
            "SELECT table_schema, table_name FROM pglive.adopting WHERE migration = $1",
            &[&name],
        )
        .await
    {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect()),
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(Vec::new()),
        Err(e) => Err(e).doing("reading pglive.adopting"),
    }
}

/// Records that the adoption of `tables` began (`done` false) or finished.
pub(crate) async fn set_adopting(
    client: &Client,
    name: &str,
    tables: &[QualifiedName],
    done: bool,
) -> Result<()> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let sql = if done {
        "DELETE FROM pglive.adopting a USING unnest($2::text[], $3::text[]) AS t(s, n)
          WHERE a.migration = $1 AND a.table_schema = t.s AND a.table_name = t.n"
    } else {
        "INSERT INTO pglive.adopting SELECT $1, s, n FROM unnest($2::text[], $3::text[]) AS t(s, n)
         ON CONFLICT DO NOTHING"
    };
    client
        .execute(sql, &[&name, &schemas, &names])
        .await
        .doing("recording an adoption in pglive.adopting")?;
    Ok(())
}

/// How many migrations other than `name` the target's state holds.
pub(crate) async fn others(client: &Client, name: &str) -> Result<i64> {
    match client
        .query_one(
            "SELECT count(*) FROM pglive.migration WHERE name <> $1",
            &[&name],
        )
        .await
    {
        Ok(row) => Ok(row.get(0)),
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(0),
        Err(e) => Err(e).doing("reading pglive.migration"),
    }
}

/// Removes one migration's row; the state schema goes with the last
/// migration it holds. Returns whether the schema was dropped.
pub(crate) async fn remove(client: &Client, name: &str) -> Result<bool> {
    client
        .batch_execute(&format!(
            "DELETE FROM pglive.migration WHERE name = {0}; DELETE FROM pglive.adopting WHERE migration = {0}; \
             DO $$ BEGIN IF to_regclass('pglive.aggregate_history') IS NOT NULL THEN \
                 DELETE FROM pglive.aggregate_history WHERE migration = {0}; END IF; \
                 IF to_regclass('pglive.paused_source_jobs') IS NOT NULL THEN \
                 DELETE FROM pglive.paused_source_jobs WHERE migration = {0}; END IF; END $$",
            pglive_postgres::quote_literal(name)
        ))
        .await
        .doing("removing the migration from pglive.migration")?;
    let others: i64 = client
        .query_one("SELECT count(*) FROM pglive.migration", &[])
        .await
        .doing("reading pglive.migration")?
        .get(0);
    if others > 0 {
        return Ok(false);
    }
    client
        .batch_execute("DROP SCHEMA IF EXISTS pglive CASCADE")
        .await
        .doing("dropping the pglive schema on the target")?;
    Ok(true)
}

/// The advisory lock a running `migrate` holds on the target for the life
/// of its state session, so other commands know it is running.
fn lock_key(name: &str) -> i64 {
    // FNV-1a: stable across runs and machines.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("pglive:{name}").bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// Takes the migration's lock; false when another process holds it.
pub(crate) async fn try_lock(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(name)])
        .await
        .doing("taking the migration lock")?;
    Ok(row.get(0))
}

/// Takes the lock of migration `name`'s verification for the session;
/// false when another `pglive verify` holds it.
pub(crate) async fn try_lock_verify(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&lock_key(&format!("verify {name}"))],
        )
        .await
        .doing("taking the verification's lock")?;
    Ok(row.get(0))
}

/// Whether a process (a running `migrate`, or a `cutover` doing the work
/// itself) holds the migration's lock. Read from `pg_locks`, without taking
/// the lock: a migrate taking it again after losing its session must not
/// find it held by a look.
pub(crate) async fn is_running(client: &Client, name: &str) -> Result<bool> {
    lock_held(client, lock_key(name))
        .await
        .doing("reading the migration lock")
}

/// Whether a `pglive verify` of migration `name` holds its lock.
pub(crate) async fn verify_is_running(client: &Client, name: &str) -> Result<bool> {
    lock_held(client, lock_key(&format!("verify {name}")))
        .await
        .doing("reading the verification's lock")
}

/// Whether some session holds the advisory lock `key` in this database.
async fn lock_held(client: &Client, key: i64) -> std::result::Result<bool, tokio_postgres::Error> {
    // A bigint advisory key shows as classid (high half) and objid (low
    // half) with objsubid 1.
    let key = key as u64;
    let (high, low) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
                             WHERE locktype = 'advisory' AND granted AND objsubid = 1
                               AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                               AND classid = $1::int8::oid AND objid = $2::int8::oid)",
            &[&high, &low],
        )
        .await?;
    Ok(row.get(0))
}

/// Takes the migration's lock, waiting up to `patience` for a previous
/// holder's session to end (a process that just exited).
pub(crate) async fn lock(
    client: &Client,
    name: &str,
    patience: std::time::Duration,
) -> Result<bool> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if try_lock(client, name).await? {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

pub(crate) async fn unlock(client: &Client, name: &str) -> Result<()> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&lock_key(name)])
        .await
        .doing("releasing the migration lock")?;
    Ok(())
}
