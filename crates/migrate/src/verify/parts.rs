//! A verification's work: each table cut into parts (key ranges of about
//! [`PART_BYTES`] where the table has a single integer key, else the whole
//! table), compared by several pairs of sessions at once, each part's
//! figures recorded as it ends, the source's reads paced under a limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::try_join_all;
use pglive_postgres::QualifiedName;
use pglive_schema::Table;
use pglive_snapshot::PartRange;
use tokio::time::Instant;

use super::figures::{self, figures_sql};
use super::record::{self, Figures, PartPlan};
use super::side::{Point, Side};
use crate::error::Result;
use crate::events::{Event, Events, VerifyProgress};

/// About how much of a table one part covers by default: small enough to spread a
/// large table over every job, to pace the reads smoothly and to lose
/// little when a verification stops.
pub(crate) const PART_BYTES: i64 = 256 << 20;

/// The parts of `tables`, largest first, planned from the source's sizes
/// and key statistics as of `source`'s snapshot: about `part_bytes` each.
pub(crate) async fn plan(
    source: Side<'_>,
    tables: &[&Table],
    part_bytes: i64,
) -> Result<Vec<PartPlan>> {
    let part_bytes = part_bytes.max(1);
    let mut parts = Vec::new();
    for table in tables {
        let pieces = (table.bytes + part_bytes - 1) / part_bytes;
        let ranges = match table.integer_key() {
            Some(key) if pieces > 1 => {
                source
                    .within(async |client| {
                        Ok(pglive_snapshot::key_ranges(client, table, key, pieces).await?)
                    })
                    .await?
            }
            _ => vec![PartRange::Whole],
        };
        let count = ranges.len() as i64;
        parts.extend(ranges.into_iter().enumerate().map(|(i, range)| PartPlan {
            table: table.name.clone(),
            number: i as i32,
            range,
            estimated_bytes: table.bytes / count,
        }));
    }
    pglive_snapshot::largest_first(&mut parts);
    Ok(parts)
}

/// Keeps the bytes read from the source per second under a limit: each
/// part waits for its turn, its estimated size ahead of the next.
pub(crate) struct Pace {
    bytes_per_second: f64,
    next: Mutex<Instant>,
}

impl Pace {
    /// At most `bytes_per_second`.
    pub fn new(bytes_per_second: u64) -> Pace {
        Pace {
            bytes_per_second: bytes_per_second.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more may be read.
    async fn wait(&self, bytes: i64) {
        let start = {
            let mut next = self.next.lock().expect("not poisoned");
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes.max(0) as f64 / self.bytes_per_second);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// What the parts are compared with and where their figures go.
pub(crate) struct Run<'a> {
    /// The tables, by name.
    pub tables: HashMap<QualifiedName, &'a Table>,
    /// Checksums too, not only counts.
    pub full: bool,
    /// Pairs of sessions at once.
    pub jobs: usize,
    /// The source's read limit, if any.
    pub pace: Option<Pace>,
    /// The migration whose verification records its parts, if recorded.
    pub record: Option<&'a str>,
    /// The consistent point, as recorded with each part (the LSN when live).
    pub point: Option<String>,
    /// Where progress goes.
    pub events: &'a dyn Events,
}

/// Shared between the workers of one run.
struct Board {
    queue: Vec<usize>,
    results: Vec<Option<Figures>>,
    parts_done: usize,
    bytes_done: u64,
}

impl Run<'_> {
    /// Compares every part that has no figures yet, `jobs` at once, each
    /// job on sessions of its own at `source` and `target`; returns every
    /// part's figures.
    pub async fn compare(
        &self,
        source: Point<'_>,
        target: Point<'_>,
        parts: &[PartPlan],
        known: Vec<Option<Figures>>,
    ) -> Result<Vec<Figures>> {
        let mut queue: Vec<usize> = (0..parts.len()).filter(|i| known[*i].is_none()).collect();
        // Largest first: popped from the end.
        queue.reverse();
        let done_before: Vec<&PartPlan> = parts
            .iter()
            .zip(&known)
            .filter_map(|(p, f)| f.as_ref().map(|_| p))
            .collect();
        let board = Mutex::new(Board {
            parts_done: done_before.len(),
            bytes_done: done_before.iter().map(|p| p.estimated_bytes as u64).sum(),
            queue,
            results: known,
        });
        let total_bytes: u64 = parts.iter().map(|p| p.estimated_bytes.max(0) as u64).sum();
        let workers = self.jobs.max(1).min(parts.len().max(1));
        let report = |table: Option<&str>, board: &Board| {
            self.events.event(Event::Verify(VerifyProgress {
                parts_done: board.parts_done,
                parts: parts.len(),
                bytes_done: board.bytes_done,
                bytes: total_bytes,
                table: table.map(str::to_owned),
            }));
        };
        report(None, &board.lock().expect("not poisoned"));
        let worker = async || -> Result<()> {
            if board.lock().expect("not poisoned").queue.is_empty() {
                return Ok(());
            }
            let (source, target) = tokio::try_join!(source.open(), target.open())?;
            loop {
                let Some(i) = board.lock().expect("not poisoned").queue.pop() else {
                    return Ok(());
                };
                let part = &parts[i];
                if let Some(pace) = &self.pace {
                    pace.wait(part.estimated_bytes).await;
                }
                let figures = self.figures(source.side(), target.side(), part).await?;
                if let Some(name) = self.record {
                    record::save(target.client(), name, part, &figures, self.point.as_deref())
                        .await?;
                }
                let mut board = board.lock().expect("not poisoned");
                board.results[i] = Some(figures);
                board.parts_done += 1;
                board.bytes_done += part.estimated_bytes.max(0) as u64;
                report(Some(&part.table.to_string()), &board);
            }
        };
        try_join_all((0..workers).map(|_| worker())).await?;
        Ok(board
            .into_inner()
            .expect("not poisoned")
            .results
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect())
    }

    /// One part's figures, both sides read at once.
    pub async fn figures(
        &self,
        source: Side<'_>,
        target: Side<'_>,
        part: &PartPlan,
    ) -> Result<Figures> {
        let Some(table) = self.tables.get(&part.table) else {
            return Ok(Figures::default());
        };
        let sql = figures_sql(table, part.range.condition().as_deref(), self.full);
        let ((source_rows, source_sum), (target_rows, target_sum)) = tokio::try_join!(
            figures::read(source, &sql, self.full),
            figures::read(target, &sql, self.full)
        )?;
        Ok(Figures {
            source_rows,
            target_rows,
            source_sum,
            target_sum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_spreads_reads_over_time() {
        let pace = Pace::new(100);
        let start = Instant::now();
        for _ in 0..5 {
            pace.wait(100).await;
        }
        // Five parts of one second each: the fifth starts after four.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(4), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
