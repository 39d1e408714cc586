//! `pglive verify`: the same counts and checksums computed on both sides.
//!
//! The checksum of a table is the sum of the first 60 bits of each row's
//! md5 (of its text form, under the pinned session settings): independent of
//! row order, so no sort, and bounded memory on any table size. On a
//! mismatch of a table with a single integer key, the key space is split
//! into ranges to say where the rows differ.

use std::fmt;

use anyhow::{Context, Result};
use pglive_schema::{Catalog, ObjectFilter, Table};
use tokio_postgres::Client;

/// One table's figures on both sides.
#[derive(Debug, Clone)]
pub struct TableComparison {
    pub table: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub source_checksum: Option<String>,
    pub target_checksum: Option<String>,
    /// Key ranges whose rows differ (integer keys only).
    pub differing_ranges: Vec<String>,
}

impl TableComparison {
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

#[derive(Debug, Clone)]
pub struct Comparison {
    pub tables: Vec<TableComparison>,
}

impl Comparison {
    pub fn mismatches(&self) -> Vec<&TableComparison> {
        self.tables.iter().filter(|t| !t.matches()).collect()
    }
}

fn checksum_sql(table: &Table, condition: &str) -> String {
    // Generated columns are computed on each side; compare only copied ones.
    let columns: Vec<String> = table
        .copied_columns()
        .map(|c| pglive_postgres::quote_ident(&c.name))
        .collect();
    let row = if columns.is_empty() {
        "''".to_owned()
    } else {
        format!("ROW({})::text", columns.join(", "))
    };
    format!(
        "SELECT count(*)::int8, coalesce(sum(('x' || substr(md5({row}), 1, 15))::bit(60)::int8::numeric), 0)::text FROM ONLY {} t{condition}",
        table.name.quoted()
    )
}

async fn figures(client: &Client, sql: &str, full: bool) -> Result<(u64, Option<String>)> {
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| format!("running {sql}"))?;
    let count: i64 = row.get(0);
    Ok((count as u64, full.then(|| row.get(1))))
}

/// Compares every table the filter selects; `full` adds checksums.
pub async fn compare(
    source: &Client,
    target: &Client,
    filter: &ObjectFilter,
    full: bool,
) -> Result<Comparison> {
    let catalog = Catalog::read(source, filter).await?;
    let mut tables = Vec::new();
    for table in catalog.tables_with_rows() {
        let sql = if full {
            checksum_sql(table, "")
        } else {
            format!(
                "SELECT count(*)::int8, '' FROM ONLY {}",
                table.name.quoted()
            )
        };
        let (source_rows, source_checksum) = figures(source, &sql, full).await?;
        let (target_rows, target_checksum) = figures(target, &sql, full)
            .await
            .with_context(|| format!("reading {} on the target", table.name))?;
        let mut comparison = TableComparison {
            table: table.name.to_string(),
            source_rows,
            target_rows,
            source_checksum,
            target_checksum,
            differing_ranges: Vec::new(),
        };
        if !comparison.matches() {
            comparison.differing_ranges = differing_ranges(source, target, table).await?;
        }
        tables.push(comparison);
    }
    Ok(Comparison { tables })
}

/// Splits an integer key's span into 16 ranges and lists those that differ.
async fn differing_ranges(source: &Client, target: &Client, table: &Table) -> Result<Vec<String>> {
    let Some(key) = table.integer_key() else {
        return Ok(Vec::new());
    };
    let key = pglive_postgres::quote_ident(key);
    let bounds = format!(
        "SELECT min({key})::int8, max({key})::int8 FROM ONLY {}",
        table.name.quoted()
    );
    let (s, t) = (
        source.query_one(&bounds, &[]).await?,
        target.query_one(&bounds, &[]).await?,
    );
    let lows = [s.get::<_, Option<i64>>(0), t.get::<_, Option<i64>>(0)];
    let highs = [s.get::<_, Option<i64>>(1), t.get::<_, Option<i64>>(1)];
    let (Some(low), Some(high)) = (lows.iter().flatten().min(), highs.iter().flatten().max())
    else {
        return Ok(Vec::new());
    };
    let step = ((high - low) / 16).max(1);
    let mut ranges = Vec::new();
    let mut start = *low;
    while start <= *high {
        let end = start.saturating_add(step);
        let sql = checksum_sql(table, &format!(" WHERE {key} >= {start} AND {key} < {end}"));
        if figures(source, &sql, true).await? != figures(target, &sql, true).await? {
            ranges.push(format!("[{start}, {end})"));
        }
        start = end;
    }
    Ok(ranges)
}

/// Prints a comparison as a table.
pub fn print(comparison: &Comparison, full: bool) {
    println!(
        "{:<48} {:>14} {:>14}  {}",
        "table",
        "source rows",
        "target rows",
        if full { "checksum" } else { "" }
    );
    for t in &comparison.tables {
        let verdict = if t.matches() { "ok" } else { "DIFFERENT" };
        println!(
            "{:<48} {:>14} {:>14}  {verdict}",
            t.table, t.source_rows, t.target_rows
        );
        if !t.differing_ranges.is_empty() {
            println!(
                "    differing key ranges: {}",
                t.differing_ranges.join(", ")
            );
        }
    }
}

/// `pglive verify`: after cutover (or without a migration) a direct
/// comparison; while a migration streams, a comparison at one consistent
/// point: a temporary slot exports a source snapshot and its exact LSN, the
/// running `migrate` applies up to that LSN and pauses, both sides are
/// compared, and apply resumes.
pub async fn command(args: crate::cli::VerifyArgs) -> Result<crate::ExitStatus> {
    let source_config = crate::parse_conninfo(&args.servers.source, "--source")?;
    let target_config = crate::parse_conninfo(&args.servers.target, "--target")?;
    let name = &args.servers.name;
    let source = crate::preflight::connect(&source_config, "source").await?;
    let target = crate::preflight::connect(&target_config, "target").await?;
    let recorded = crate::state::load(&target, name).await?;
    // The tables the migration moved, not every table of the database.
    let filter = recorded
        .as_ref()
        .map(|m| m.settings.filter())
        .unwrap_or_default();
    let live = match recorded {
        Some(m) if m.stage < crate::state::Stage::Cutover => {
            if !crate::state::is_running(&target, name).await? {
                anyhow::bail!(
                    "migration {name:?} is live (stage {}) but no `pglive migrate` runs for it: start it, and verify pauses it at a consistent point; or verify after cutover",
                    m.stage.as_str()
                );
            }
            if m.stage != crate::state::Stage::Streaming {
                anyhow::bail!(
                    "migration {name:?} is still at stage {}: verify once it streams",
                    m.stage.as_str()
                );
            }
            true
        }
        _ => false,
    };
    let comparison = if live {
        compare_live(&source_config, &source, &target, name, &filter, args.full).await?
    } else {
        compare(&source, &target, &filter, args.full).await?
    };
    print(&comparison, args.full);
    let mismatches = comparison.mismatches().len();
    if mismatches == 0 {
        println!(
            "verified {} tables: source and target are equal{}{}",
            comparison.tables.len(),
            if args.full {
                " (counts and checksums)"
            } else {
                " (counts)"
            },
            if live {
                " at one consistent point of the live migration"
            } else {
                ""
            }
        );
        Ok(crate::ExitStatus::Success)
    } else {
        println!("{mismatches} table(s) differ");
        Ok(crate::ExitStatus::Mismatch)
    }
}

async fn compare_live(
    source_config: &pglive_postgres::ConnectConfig,
    source: &Client,
    target: &Client,
    name: &str,
    filter: &ObjectFilter,
    full: bool,
) -> Result<Comparison> {
    use pglive_repl::{ReplicationClient, SlotOptions, SnapshotAction};
    for _attempt in 0..5 {
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
            .context("creating a temporary slot for the verification snapshot")?;
        let snapshot = slot.snapshot_name.clone().context("no snapshot exported")?;
        crate::state::request_verify(target, name, slot.consistent_point).await?;
        eprintln!(
            "verify: waiting for apply to reach {} and pause",
            slot.consistent_point
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        let answer = loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match crate::state::verify_request(target, name).await? {
                Some((_, state)) if state == "requested" => {}
                Some((_, state)) => break state,
                None => anyhow::bail!("the running migrate dropped the verification request"),
            }
            if std::time::Instant::now() > deadline {
                crate::state::set_verify_state(target, name, None).await?;
                anyhow::bail!(
                    "apply did not reach {} within an hour",
                    slot.consistent_point
                );
            }
        };
        if answer == "missed" {
            crate::state::set_verify_state(target, name, None).await?;
            replication.close().await.ok();
            continue;
        }
        let result = async {
            source
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
                    pglive_postgres::quote_literal(&snapshot)
                ))
                .await
                .context("importing the verification snapshot")?;
            let comparison = compare(source, target, filter, full).await;
            source.batch_execute("COMMIT").await.ok();
            comparison
        }
        .await;
        crate::state::set_verify_state(target, name, None).await?;
        replication.close().await.ok();
        return result;
    }
    anyhow::bail!("apply kept passing the verification snapshot; try again")
}
