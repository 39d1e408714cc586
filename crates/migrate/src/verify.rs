//! `pglive verify`: the same counts and checksums computed on both sides,
//! at one consistent point, in parallel parts that are recorded as they
//! end (so a stopped verification continues), paced under a read limit;
//! where a part differs, the differing rows are named.

mod figures;
mod narrow;
mod parts;
mod record;
mod side;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use pglive_postgres::{ConnectConfig, QualifiedName};
use pglive_repl::{ReplicationClient, SlotOptions, SnapshotAction};
use pglive_schema::ObjectFilter;
use tokio_postgres::Client;

use crate::error::{Doing, Error, Result};
use crate::events::{Events, Step};
use crate::preflight;
use crate::state::{self, Stage, VerifyRequest};

use narrow::MAX_ROWS_NAMED;
pub(crate) use record::remove as forget;
pub(crate) use side::{ExportedSnapshot, Point};

/// One table's figures on both sides.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TableComparison {
    /// The table, quoted.
    pub table: String,
    /// Rows on the source.
    pub source_rows: u64,
    /// Rows on the target.
    pub target_rows: u64,
    /// The source's checksum (with `full`).
    pub source_checksum: Option<String>,
    /// The target's checksum (with `full`).
    pub target_checksum: Option<String>,
    /// Key ranges whose rows differ (integer keys only).
    pub differing_ranges: Vec<String>,
    /// The rows that differ, by key (integer keys only; at most
    /// 20): `id=42 changed`, `id=7 missing on the target`,
    /// `id=9 only on the target`.
    pub differing_rows: Vec<String>,
}

impl TableComparison {
    /// Whether counts (and checksums) are equal.
    pub fn matches(&self) -> bool {
        self.source_rows == self.target_rows && self.source_checksum == self.target_checksum
    }
}

impl fmt::Display for TableComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: source {} rows, target {} rows",
            self.table, self.source_rows, self.target_rows
        )?;
        if self.source_checksum != self.target_checksum {
            write!(f, ", checksums differ")?;
        }
        if !self.differing_ranges.is_empty() {
            write!(f, " (in key ranges {})", self.differing_ranges.join(", "))?;
        }
        Ok(())
    }
}

/// Every compared table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Comparison {
    /// One entry per table, in catalog order.
    pub tables: Vec<TableComparison>,
    /// Parts compared, in all.
    pub parts: usize,
    /// Parts a stopped verification had compared (with `resume`).
    pub parts_resumed: usize,
}

impl Comparison {
    /// The tables that differ.
    pub fn mismatches(&self) -> Vec<&TableComparison> {
        self.tables.iter().filter(|t| !t.matches()).collect()
    }
}

/// How a verification runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Checksums of every row, not only counts.
    pub full: bool,
    /// Parts compared at once, each by a session on either side.
    pub jobs: usize,
    /// Continue the migration's stopped verification: parts it compared
    /// are not read again (the rest are read at a new consistent point).
    pub resume: bool,
    /// The most bytes per second read from the source (estimated from
    /// table sizes), for busy sources; `None` reads as fast as it can.
    pub max_source_bytes_per_second: Option<u64>,
    /// About how many bytes of a table one part covers (tables with a
    /// single integer key are cut into key ranges of about this size).
    pub part_bytes: i64,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions {
            full: false,
            jobs: 4,
            resume: false,
            max_source_bytes_per_second: None,
            part_bytes: parts::PART_BYTES,
        }
    }
}

/// Compares every table `filter` selects (as the source lists them) at
/// `source` and `target`, in parts, `options.jobs` at once. With `record`
/// (the migration's name) each part's figures are kept on the target as
/// they end, and `options.resume` continues from them; `point` is recorded
/// with them.
pub(crate) async fn compare(
    (source, target): (Point<'_>, Point<'_>),
    filter: &ObjectFilter,
    options: &VerifyOptions,
    (record, point): (Option<&str>, Option<String>),
    events: &dyn Events,
) -> Result<Comparison> {
    let (main_source, main_target) = tokio::try_join!(source.open(), target.open())?;
    let mut catalog = main_source.side().catalog(filter).await?;
    main_target
        .side()
        .within(async |client| {
            crate::timescale::mark_target_hypertables(&mut catalog, client).await
        })
        .await?;
    let tables: Vec<_> = catalog.tables_with_rows().collect();
    let (plan, known) = match record {
        Some(name) if options.resume => {
            let recorded = record::stopped(main_target.client(), name).await?;
            if recorded.full != options.full {
                return Err(Error::VerifyResume {
                    name: name.to_owned(),
                    reason: format!(
                        "it was started {} --full; run it the same way",
                        if recorded.full { "with" } else { "without" }
                    ),
                });
            }
            let (mut plan, mut known): (Vec<_>, Vec<_>) = recorded.parts.into_iter().unzip();
            let new: Vec<_> = tables
                .iter()
                .filter(|t| !plan.iter().any(|p| p.table == t.name))
                .copied()
                .collect();
            let added = parts::plan(main_source.side(), &new, options.part_bytes).await?;
            record::add(main_target.client(), name, &added).await?;
            known.extend(added.iter().map(|_| None));
            plan.extend(added);
            (plan, known)
        }
        _ => {
            let plan = parts::plan(main_source.side(), &tables, options.part_bytes).await?;
            if let Some(name) = record {
                record::start(main_target.client(), name, options.full, &plan).await?;
            }
            let known = vec![None; plan.len()];
            (plan, known)
        }
    };
    let parts_resumed = known.iter().flatten().count();
    let run = parts::Run {
        tables: tables.iter().map(|t| (t.name.clone(), *t)).collect(),
        full: options.full,
        jobs: options.jobs,
        pace: options.max_source_bytes_per_second.map(parts::Pace::new),
        record,
        point,
        events,
    };
    let resumed: Vec<bool> = known.iter().map(Option::is_some).collect();
    let mut figures = run.compare(source, target, &plan, known).await?;
    // A part that differed at an earlier point is compared again at this
    // one, where its rows are narrowed down.
    for (i, part) in plan.iter().enumerate() {
        if resumed[i] && !figures[i].equal() {
            figures[i] = run
                .figures(main_source.side(), main_target.side(), part)
                .await?;
        }
    }
    let mut by_table: HashMap<&QualifiedName, Vec<(&record::PartPlan, &record::Figures)>> =
        HashMap::new();
    for (part, figures) in plan.iter().zip(&figures) {
        by_table
            .entry(&part.table)
            .or_default()
            .push((part, figures));
    }
    let mut compared = Vec::new();
    for table in &tables {
        let name = table.name.to_string();
        let mut parts = by_table.remove(&table.name).unwrap_or_default();
        parts.sort_by_key(|(p, _)| p.number);
        let sum = |pick: fn(&record::Figures) -> Option<&String>| {
            let sums: Option<Vec<&String>> = parts.iter().map(|(_, f)| pick(f)).collect();
            sums.and_then(|s| figures::add_checksums(s.into_iter().map(String::as_str)))
        };
        let mut comparison = TableComparison {
            table: name.clone(),
            source_rows: parts.iter().map(|(_, f)| f.source_rows as u64).sum(),
            target_rows: parts.iter().map(|(_, f)| f.target_rows as u64).sum(),
            source_checksum: options
                .full
                .then(|| sum(|f| f.source_sum.as_ref()))
                .flatten(),
            target_checksum: options
                .full
                .then(|| sum(|f| f.target_sum.as_ref()))
                .flatten(),
            differing_ranges: Vec::new(),
            differing_rows: Vec::new(),
        };
        for (part, figures) in &parts {
            let differs = !figures.equal();
            let want = MAX_ROWS_NAMED - comparison.differing_rows.len();
            if !differs || want == 0 {
                continue;
            }
            let found = narrow::narrow(
                main_source.side(),
                main_target.side(),
                table,
                part.range.condition().as_deref(),
                want,
            )
            .await?;
            comparison.differing_ranges.extend(found.ranges);
            comparison.differing_rows.extend(found.rows);
        }
        compared.push(comparison);
    }
    if let Some(name) = record {
        record::finish(main_target.client(), name).await?;
    }
    Ok(Comparison {
        tables: compared,
        parts: plan.len(),
        parts_resumed,
    })
}

/// A finished verification.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Verification {
    /// The figures per table.
    pub comparison: Comparison,
    /// Whether both sides were compared at one consistent point of a live
    /// migration (apply paused there).
    pub live: bool,
}

/// Compares the tables migration `name` carries (every table when the
/// target records no such migration): after cutover, or without a
/// migration, each side at a snapshot of its own; while it streams, at one
/// consistent point: a temporary slot exports a source snapshot and its
/// exact LSN, the running [`crate::migrate`] applies up to that LSN and
/// holds while a target session takes its snapshot, then goes on while
/// both snapshots are compared. The parts are recorded on the target as
/// they end (when the role may create pglive's state there), so
/// `options.resume` continues a stopped verification.
pub async fn verify(
    source: ConnectConfig,
    target: ConnectConfig,
    name: &str,
    options: &VerifyOptions,
    events: Arc<dyn Events>,
) -> Result<Verification> {
    let source_client = preflight::connect(&source, "source").await?;
    let target_client = preflight::connect(&target, "target").await?;
    let recorded = state::load(&target_client, name).await?;
    // The tables the migration moved, not every table of the database.
    let filter = recorded
        .as_ref()
        .map(|m| m.settings.filter())
        .unwrap_or_default();
    let live = match recorded {
        Some(m) if m.stage < Stage::Cutover => {
            if !state::is_running(&target_client, name).await? {
                return Err(Error::NotRunning {
                    name: name.to_owned(),
                    stage: m.stage,
                });
            }
            if m.stage != Stage::Streaming {
                return Err(Error::WrongStage {
                    name: name.to_owned(),
                    stage: m.stage,
                    needs: "verify once it streams",
                });
            }
            true
        }
        _ => false,
    };
    let record = recording(&target_client, name, options, events.as_ref()).await?;
    // Both are large futures: on the heap.
    let comparison = if live {
        Box::pin(compare_live(
            (&source, &target),
            &target_client,
            name,
            (&filter, options, record),
            events.as_ref(),
        ))
        .await?
    } else {
        let (at_source, at_target) = tokio::try_join!(
            ExportedSnapshot::take(&source),
            ExportedSnapshot::take(&target)
        )?;
        Box::pin(compare(
            (at_source.point(), at_target.point()),
            &filter,
            options,
            (record, None),
            events.as_ref(),
        ))
        .await?
    };
    drop(source_client);
    Ok(Verification { comparison, live })
}

/// Whether this verification is recorded on the target (returning the
/// name it is recorded under), after taking its lock there: a role that may
/// not create pglive's state verifies unrecorded, with a warning, unless
/// it was asked to resume.
async fn recording<'a>(
    target: &Client,
    name: &'a str,
    options: &VerifyOptions,
    events: &dyn Events,
) -> Result<Option<&'a str>> {
    if !state::try_lock_verify(target, name).await? {
        return Err(Error::VerifyBusy {
            name: name.to_owned(),
        });
    }
    match record::create_tables(target).await {
        Ok(()) => Ok(Some(name)),
        Err(e) if !options.resume && e.is_privilege() => {
            events.warn(
                Step::Verify,
                format!(
                    "this verification is not recorded on the target, so it cannot be resumed if it stops: {}",
                    crate::error::chain(&e)
                ),
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How long the running migrate may take to hold apply (it looks for
/// requests every second, between batches).
const HOLD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long apply may take to reach the verification's point.
const POINT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// How many times a live verification asks apply to hold before giving up.
const HOLD_ATTEMPTS: usize = 5;

/// The live comparison: both sides at one consistent point, which apply
/// stops at only for as long as the target's snapshot takes (see
/// [`VerifyRequest`] for the handshake with the running migrate).
async fn compare_live(
    (source_config, target_config): (&ConnectConfig, &ConnectConfig),
    target: &Client,
    name: &str,
    (filter, options, record): (&ObjectFilter, &VerifyOptions, Option<&str>),
    events: &dyn Events,
) -> Result<Comparison> {
    for _attempt in 0..HOLD_ATTEMPTS {
        let held = hold_at_point(source_config, target_config, target, name, events).await;
        let held = match held {
            Ok(held) => held,
            Err(error) => {
                state::clear_verify_request(target, name).await.ok();
                return Err(error);
            }
        };
        let Some((replication, slot, target_at_point)) = held else {
            continue;
        };
        let snapshot = slot.snapshot_name.clone().unwrap_or_default();
        let at_source = Point {
            config: source_config,
            snapshot: &snapshot,
        };
        let result = compare(
            (at_source, target_at_point.point()),
            filter,
            options,
            (record, Some(slot.consistent_point.to_string())),
            events,
        )
        .await;
        replication.close().await.ok();
        return result;
    }
    Err(Error::VerifyPoint {
        reason: format!(
            "apply could not be held at one point: {HOLD_ATTEMPTS} times the source's snapshot took longer than apply holds \
             (transactions open on the source delay it); try again when they end"
        ),
    })
}

/// One attempt of the live handshake: apply holds; a temporary slot exports
/// the source's snapshot (its point ahead of everything applied); apply
/// goes on to exactly that point and pauses while the target's snapshot is
/// taken, then resumes. Returns the slot's connection (which keeps the
/// source's snapshot), the slot and the target's snapshot; `None` when the
/// migrate gave the attempt up.
async fn hold_at_point(
    source_config: &ConnectConfig,
    target_config: &ConnectConfig,
    target: &Client,
    name: &str,
    events: &dyn Events,
) -> Result<
    Option<(
        ReplicationClient,
        pglive_repl::CreatedSlot,
        ExportedSnapshot,
    )>,
> {
    let unanswered = |reason: &str| Error::VerifyPoint {
        reason: reason.to_owned(),
    };
    state::ask_verify_hold(target, name).await?;
    events.note(Step::Verify, "verify: asking apply to hold");
    let waited =
        wait_for_migrate(target, name, |r| r != VerifyRequest::Hold, HOLD_PATIENCE).await?;
    match waited {
        VerifyRequest::Held => {}
        VerifyRequest::Missed => return Ok(None),
        other => {
            return Err(unanswered(&format!(
                "the running migrate answered {other:?} to a hold"
            )));
        }
    }
    let mut replication = ReplicationClient::connect(source_config).await?;
    let slot = replication
        .create_slot(
            &format!("pglive_verify_{}", std::process::id()),
            &SlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..SlotOptions::default()
            },
        )
        .await
        .doing("creating a temporary slot for the verification snapshot")?;
    if slot.snapshot_name.is_none() {
        return Err(unanswered("the temporary slot exported no snapshot"));
    }
    let point = slot.consistent_point;
    let asked = state::move_verify_request(
        target,
        name,
        VerifyRequest::Held,
        VerifyRequest::Requested(point),
    )
    .await?;
    if !asked {
        // The migrate stopped holding: the point may be behind apply.
        replication.close().await.ok();
        return Ok(None);
    }
    // Apply may first have to work through a backlog to get there.
    let reached = wait_for_migrate(
        target,
        name,
        |r| r != VerifyRequest::Requested(point),
        POINT_PATIENCE,
    );
    match reached.await? {
        VerifyRequest::Paused(at) if at == point => {}
        VerifyRequest::Missed => {
            replication.close().await.ok();
            return Ok(None);
        }
        other => {
            return Err(unanswered(&format!(
                "the running migrate answered {other:?} to a pause at {point}"
            )));
        }
    }
    // Apply holds only while the target's snapshot is taken.
    let target_at_point = ExportedSnapshot::take(target_config).await;
    state::clear_verify_request(target, name).await?;
    events.note(
        Step::Verify,
        format!(
            "verify: both sides' snapshots taken at {point}; apply goes on while they are compared"
        ),
    );
    Ok(Some((replication, slot, target_at_point?)))
}

/// Waits up to `patience` until `answered` accepts the verification
/// request; fails at once when the migrate stops running.
async fn wait_for_migrate(
    target: &Client,
    name: &str,
    answered: impl Fn(VerifyRequest) -> bool,
    patience: std::time::Duration,
) -> Result<VerifyRequest> {
    let deadline = std::time::Instant::now() + patience;
    let mut polls: u32 = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        polls += 1;
        // About every second: a migrate that went away answers nothing.
        if polls % 50 == 0 && !state::is_running(target, name).await? {
            return Err(Error::VerifyPoint {
                reason: "the migrate running this migration stopped".to_owned(),
            });
        }
        match state::verify_request(target, name).await? {
            Some(request) if answered(request) => return Ok(request),
            Some(_) => {}
            None => {
                return Err(Error::VerifyPoint {
                    reason: "the running migrate dropped the verification request (it stopped?)"
                        .to_owned(),
                });
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::VerifyPoint {
                reason: format!(
                    "the running migrate did not answer within {} s",
                    patience.as_secs()
                ),
            });
        }
    }
}
