//! `pglive demo`: a whole migration between two throwaway clusters, with a
//! live write workload, cutover and verification, then a summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pglive_migrate::human::{bytes, count};
use pglive_migrate::{Control, MigrateOptions, Outcome, VerifyOptions};
use pglive_postgres::{ConnectConfig, connect_sql};
use pglive_testkit::{Cluster, ClusterOptions, sample};

use crate::ExitStatus;
use crate::cli::DemoArgs;
use crate::render::Renderer;

struct Workload {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    /// Set when the cutover is asked for: from then on a refused write is
    /// the fence, and is retried.
    cutting_over: Arc<AtomicBool>,
    /// When the source first refused a write during the cutover.
    refused_at: Arc<std::sync::Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Writes to the source until stopped. Before the cutover a failed write is
/// an error; during it the fence refuses writes and ends the session, and
/// the workload keeps trying, as an application would.
fn start_workload(source: ConnectConfig) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cutting_over = Arc::new(AtomicBool::new(false));
    let refused_at = Arc::new(std::sync::Mutex::new(None));
    let task = {
        let (stop, done, cutting_over, refused_at) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&cutting_over),
            Arc::clone(&refused_at),
        );
        tokio::spawn(async move {
            let mut client = Some(connect_sql(&source).await?);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let written = match &client {
                    Some(c) => c.batch_execute(&sample::transaction(n)).await,
                    None => Ok(()),
                };
                if client.is_none() || written.is_err() {
                    if !cutting_over.load(Ordering::Relaxed) {
                        written.context("workload")?;
                    }
                    refused_at
                        .lock()
                        .expect("not poisoned")
                        .get_or_insert_with(Instant::now);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    client = connect_sql(&source).await.ok();
                    continue;
                }
                n += 1;
                done.store(n, Ordering::Relaxed);
                if n % 20 == 0 {
                    // About 400 transactions per second: busy, not saturating.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(())
        })
    };
    Workload {
        stop,
        done,
        cutting_over,
        refused_at,
        task,
    }
}

pub(crate) async fn run(
    args: DemoArgs,
    renderer: Arc<Renderer>,
    control: Control,
) -> Result<ExitStatus> {
    let started = Instant::now();
    renderer.info("demo: starting two throwaway PostgreSQL clusters");
    let (source_cluster, target_cluster, databases) =
        tokio::task::spawn_blocking(|| -> Result<_> {
            let source =
                Cluster::start(ClusterOptions::bulk()).context("starting the source cluster")?;
            let target =
                Cluster::start(ClusterOptions::bulk()).context("starting the target cluster")?;
            let databases = (
                source.create_database("shop")?,
                target.create_database("shop")?,
            );
            Ok((source, target, databases))
        })
        .await??;
    let (source_db, target_db) = databases;
    let source_info = source_cluster.conninfo(&source_db);
    let target_info = target_cluster.conninfo(&target_db);
    let source = ConnectConfig::parse(&source_info)?;
    let units = args.size_mb.max(1);
    renderer.info(&format!(
        "demo: loading a sample database of about {units} MB on the source"
    ));
    let load_started = Instant::now();
    {
        let client = connect_sql(&source).await?;
        client
            .batch_execute(sample::SCHEMA)
            .await
            .context("creating the sample schema")?;
        client
            .batch_execute(&sample::load(units))
            .await
            .context("loading the sample data")?;
    }
    let source_size = source_cluster.database_size(&source_db)?;
    renderer.info(&format!(
        "demo: source database is {} (loaded in {:.1}s)",
        bytes(source_size),
        load_started.elapsed().as_secs_f64()
    ));

    renderer.info("demo: starting a live write workload on the source");
    let workload = start_workload(source.clone());
    let mut options = MigrateOptions::new("demo");
    options.index_jobs = 2;
    let target = ConnectConfig::parse(&target_info)?;
    let migration_started = Instant::now();
    let migrate_task = {
        let (source, target, renderer, control) = (
            source.clone(),
            target.clone(),
            Arc::clone(&renderer),
            control.clone(),
        );
        tokio::spawn(async move {
            pglive_migrate::migrate(source, target, &options, renderer, &control).await
        })
    };

    // Let the workload run while streaming, then cut over.
    let mut streaming_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if migrate_task.is_finished() || control.stop_requested() {
            break;
        }
        let stage = pglive_migrate::status(target.clone(), "demo")
            .await
            .ok()
            .map(|s| s.stage);
        if stage == Some("streaming") {
            let since = *streaming_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(args.workload_seconds) {
                break;
            }
        }
    }
    if migrate_task.is_finished() || control.stop_requested() {
        workload.stop.store(true, Ordering::Relaxed);
        let outcome = migrate_task.await?;
        bail!(
            "the migration stopped before cutover: {:?}",
            outcome.map(|_| ())
        );
    }
    // As in production: cut over with the source fenced while the
    // application writes; its writes are refused from the fence on.
    renderer.info("demo: cutting over with the source fenced while the workload writes");
    workload.cutting_over.store(true, Ordering::Relaxed);
    control.request_cutover(true);
    let outcome = migrate_task.await;
    // Stopped whatever the outcome.
    workload.stop.store(true, Ordering::Relaxed);
    let outcome = outcome??;
    let switched = Instant::now();
    workload.stop.store(true, Ordering::Relaxed);
    workload.task.await??;
    let transactions = workload.done.load(Ordering::Relaxed);
    let downtime = workload
        .refused_at
        .lock()
        .expect("not poisoned")
        .map(|refused| switched.duration_since(refused));
    let Outcome::CutOver { summary } = outcome else {
        bail!("migrate ended without a cutover: {outcome:?}");
    };

    renderer.info("demo: verifying every table (counts and checksums)");
    let mut full = VerifyOptions::default();
    full.full = true;
    let verification =
        pglive_migrate::verify(source.clone(), target.clone(), "demo", &full, renderer).await?;
    crate::commands::print_verification(&verification, true);
    let comparison = verification.comparison;
    let status = pglive_migrate::status(target.clone(), "demo").await?;
    let copied_rows: i64 = status.copy.per_table.iter().map(|t| t.rows).sum();
    let copied_bytes: i64 = status.copy.per_table.iter().map(|t| t.bytes).sum();
    let progress = status.streaming.unwrap_or_default();
    let applied = ["rows_inserted", "rows_updated", "rows_deleted"]
        .iter()
        .map(|k| progress[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    let equal = comparison.mismatches().is_empty();
    println!();
    println!("pglive demo summary");
    println!("  source database        {}", bytes(source_size));
    println!(
        "  copied                 {} rows, {} of COPY data",
        count(copied_rows as u64),
        bytes(copied_bytes as u64)
    );
    println!(
        "  live workload          {} source transactions during the migration",
        count(transactions)
    );
    println!(
        "  applied from stream    {} rows ({} transactions)",
        count(applied),
        count(progress["transactions"].as_u64().unwrap_or(0))
    );
    println!(
        "  write downtime         {} (first refused write → cutover complete)",
        downtime.map_or_else(
            || "none (no write was refused)".to_owned(),
            |d| format!("{:.1}s", d.as_secs_f64())
        )
    );
    println!(
        "  migration time         {:.1}s",
        migration_started.elapsed().as_secs_f64()
    );
    println!("  cutover                {summary}");
    println!(
        "  verification           {}",
        if equal {
            format!(
                "equal: {} tables, counts and checksums",
                comparison.tables.len()
            )
        } else {
            format!("{} table(s) DIFFER", comparison.mismatches().len())
        }
    );
    println!(
        "  total                  {:.1}s; the throwaway clusters are removed now",
        started.elapsed().as_secs_f64()
    );
    tokio::task::spawn_blocking(move || {
        drop(source_cluster);
        drop(target_cluster);
    })
    .await?;
    Ok(if equal {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}
