//! Cutover: once writes stop, catch up to the source's position, carry over
//! what logical decoding does not (sequences, large objects, materialized
//! views), check row counts, and remove the slot and publication.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pglive_postgres::{Lsn, PgTimestamp, connect_sql};
use tokio_postgres::Client;

use crate::live::{self, Session};
use crate::migrate::Job;
use crate::report::{self, Reporter};
use crate::state::{self, Migration, Stage};
use crate::verify;

/// How long the stream must bring no new transaction before the source
/// counts as quiet.
const QUIET: Duration = Duration::from_secs(1);

async fn source_lsn(source: &Client) -> Result<Lsn> {
    let text: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .context("reading the source's WAL position")?
        .get(0);
    Ok(text.parse()?)
}

/// Makes the source database read-only for new transactions and ends the
/// other sessions on it, so no write can slip in after the last position.
pub async fn fence(source: &Client) -> Result<u64> {
    source
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database()); END $$",
        )
        .await
        .context("fencing the source (ALTER DATABASE … SET default_transaction_read_only)")?;
    let ended: i64 = source
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
               FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .context("ending the source's other sessions")?
        .get(0);
    Ok(ended as u64)
}

/// Undoes [`fence`].
pub async fn unfence(source: &Client) -> Result<()> {
    // This session itself starts read-only while the fence is up.
    source
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .context("lifting the fence on the source")?;
    source
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET default_transaction_read_only', current_database()); END $$",
        )
        .await
        .context("lifting the fence on the source")
}

/// Performs the cutover on a connected session.
pub async fn perform(
    ctx: &Job,
    migration: &Migration,
    mut session: Session,
    fence_source: bool,
    reporter: &Arc<Reporter>,
) -> Result<String> {
    let target = connect_sql(&ctx.target).await?;
    let source = connect_sql(&ctx.source).await?;
    state::set_stage(&target, &ctx.name, Stage::Cutover).await?;
    let started = Instant::now();
    refuse_tables_not_carried(ctx, &source, &target).await?;
    if fence_source {
        let ended = fence(&source).await?;
        reporter.line(format!(
            "cutover: source fenced (read-only), {ended} session(s) ended"
        ));
    }

    // Wait until a catch-up round brings no new transaction for QUIET.
    reporter.line("cutover: waiting for the source to go quiet and the target to catch up");
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_change = Instant::now();
    let mut seen = session.applier.stats().transactions;
    let final_lsn = loop {
        let lsn = source_lsn(&source).await?;
        live::catch_up(&mut session, lsn, reporter).await?;
        let now_seen = session.applier.stats().transactions;
        if now_seen != seen {
            seen = now_seen;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            break lsn;
        }
        if Instant::now() > deadline {
            bail!(
                "the source did not go quiet within 10 minutes: stop the application's writes, or use --fence"
            );
        }
        // `pglive cutover --abort` moves the stage back.
        if let Ok(Some(m)) = state::load(&target, &ctx.name).await {
            if m.stage != Stage::Cutover {
                bail!("cutover aborted");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    reporter.streaming_finished();
    let stats = session.applier.stats().clone();
    let last_write = stats.applied_commit_time;
    state::save_stats(&target, &ctx.name, &stats, final_lsn, final_lsn, 0, 0.0).await?;
    reporter.line(format!(
        "cutover: target caught up with the source at {final_lsn}"
    ));

    // A table created between the check before the fence and the fence.
    if let Err(error) = refuse_tables_not_carried(ctx, &source, &target).await {
        if fence_source {
            unfence(&source).await?;
            reporter.line("cutover: the fence is lifted: the source is writable again");
        }
        return Err(error);
    }
    let sequences = pglive_schema::sync_sequences(&source, &target, &ctx.filter())
        .await
        .context("synchronizing sequences")?;
    reporter.line(format!(
        "cutover: {} sequence(s) synchronized",
        sequences.len()
    ));
    let large_objects = sync_large_objects(&source, &target, ctx.settings.keep_owners).await?;
    if large_objects > 0 {
        reporter.line(format!(
            "cutover: {large_objects} large object(s) synchronized"
        ));
    }
    let refreshed = refresh_materialized_views(&target).await?;
    if refreshed > 0 {
        reporter.line(format!(
            "cutover: {refreshed} materialized view(s) refreshed"
        ));
    }
    let restored = pglive_apply::restore_triggers(&target).await?;
    if restored > 0 {
        reporter.line(format!(
            "cutover: {restored} target trigger(s) enabled again"
        ));
    }
    let identities = pglive_apply::restore_identity_columns(&target).await?;
    if identities > 0 {
        reporter.line(format!(
            "cutover: {identities} identity column(s) made GENERATED ALWAYS again"
        ));
    }
    let keyless = keyless_tables_changed(&source, migration, &ctx.filter(), reporter).await?;
    for (table, changes) in &keyless {
        reporter.line(format!(
            "cutover: WARNING {table} has no primary key or replica identity and received {changes} UPDATE/DELETE(s) \
             on the source during the migration: they are not carried, so the target's copy differs; \
             copy the table again after the switch (e.g. TRUNCATE it on the target and COPY it from the source), \
             and give it a primary key before the next migration"
        ));
    }

    let comparison = verify::compare(&source, &target, &ctx.filter(), false).await?;
    // A keyless table reported above may differ: that is said already.
    let (expected, mismatches): (Vec<_>, Vec<_>) = comparison
        .mismatches()
        .into_iter()
        .partition(|m| keyless.iter().any(|(table, _)| *table == m.table));
    for m in &expected {
        reporter.line(format!(
            "cutover: {m} (a keyless table, see the warning above)"
        ));
    }
    if !mismatches.is_empty() {
        for m in &mismatches {
            reporter.line(format!("cutover: MISMATCH {m}"));
        }
        bail!(
            "row counts differ on {} table(s); the slot is kept so nothing is lost: investigate, then run `pglive cutover` again",
            mismatches.len()
        );
    }
    reporter.line(format!(
        "cutover: row counts match on {} of {} tables ({} rows)",
        comparison.tables.len() - expected.len(),
        comparison.tables.len(),
        report::count(comparison.tables.iter().map(|t| t.source_rows).sum())
    ));

    let mut replication = session.stream.stop().await?;
    replication
        .drop_slot(&migration.slot, true)
        .await
        .with_context(|| format!("dropping slot {:?}", migration.slot))?;
    replication.close().await.ok();
    crate::publication::drop(&source, &migration.publication).await?;

    // With a fence, writes were blocked from the fence on; without one,
    // they stopped at the last source commit.
    let since_last_write = last_write.and_then(|t| {
        PgTimestamp::now()
            .to_system_time()
            .duration_since(t.to_system_time())
            .ok()
    });
    let blocked = match (fence_source, since_last_write) {
        (false, Some(since)) => since,
        _ => started.elapsed(),
    };
    let summary = format!(
        "cut over at {final_lsn}: {} tables, {} rows verified by count; writes blocked for {:.1}s{}",
        comparison.tables.len(),
        report::count(comparison.tables.iter().map(|t| t.source_rows).sum()),
        blocked.as_secs_f64(),
        if fence_source {
            " (source stays read-only)"
        } else {
            ""
        }
    );
    let summary = match keyless.len() {
        0 => summary,
        n => format!(
            "{summary}; {n} keyless table(s) received updates or deletes that were not carried"
        ),
    };
    state::finish(&target, &ctx.name, &summary).await?;
    reporter.line(format!("cutover: slot and publications dropped; {summary}"));
    println!("switch your application now: the target is complete ({summary})");
    Ok(summary)
}

/// Fails when the source has selected tables this migration's copy does not
/// hold: `migrate` adopts them while it streams, and must run again.
async fn refuse_tables_not_carried(ctx: &Job, source: &Client, target: &Client) -> Result<()> {
    let not_carried =
        crate::publication::tables_not_carried(source, target, &ctx.name, &ctx.filter()).await?;
    if not_carried.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = not_carried.iter().map(ToString::to_string).collect();
    bail!(
        "table(s) {} were created on the source since streaming last looked; the slot is kept so nothing is lost: \
         run `pglive migrate` again (it copies them and streams them from there), then cut over",
        names.join(", ")
    )
}

/// The keyless tables whose UPDATE and DELETE count on the source grew
/// since the migration started (those changes are not published).
async fn keyless_tables_changed(
    source: &Client,
    migration: &Migration,
    filter: &pglive_schema::ObjectFilter,
    reporter: &Reporter,
) -> Result<Vec<(String, i64)>> {
    // Keyless when the migration started (a key added since does not bring
    // back what was not streamed) or now.
    let catalog = pglive_schema::Catalog::read(source, filter).await?;
    let mut tables: Vec<String> = migration.keyless_baseline.keys().cloned().collect();
    tables.extend(crate::publication::keyless_tables(&catalog));
    tables.sort();
    tables.dedup();
    let now = crate::publication::change_counts(source, &tables).await?;
    let mut changed = Vec::new();
    for (table, count) in now {
        let before = migration.keyless_baseline.get(&table).copied().unwrap_or(0);
        if count < before {
            reporter.line(format!(
                "cutover: WARNING the source's statistics of {table} were reset during the migration, so whether this \
                 keyless table received UPDATEs or DELETEs (which are not carried) cannot be told: compare it with \
                 `pglive verify --full`"
            ));
        } else if count > before {
            changed.push((table, count - before));
        }
    }
    Ok(changed)
}

async fn refresh_materialized_views(target: &Client) -> Result<usize> {
    let views: Vec<String> = target
        .query(
            "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews WHERE schemaname <> 'pglive'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for view in &views {
        target
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}"))
            .await
            .with_context(|| format!("refreshing {view}"))?;
    }
    Ok(views.len())
}

/// Large objects are not in the change stream: make the target's set equal
/// the source's (by OID and content) after writes stopped.
/// Makes the target's large objects the source's: their changes are not
/// in the stream. Contents are compared by digest; a changed one is
/// rewritten in place (keeping its owner and privileges), a new one is
/// created and given its source owner. The source is read through
/// `pg_largeobject` (preflight checks the role may), the target through
/// `lo_get`, which works for objects the role owns or may read.
async fn sync_large_objects(source: &Client, target: &Client, keep_owners: bool) -> Result<usize> {
    let read =
        |rows: Vec<tokio_postgres::Row>| -> std::collections::HashMap<i64, (String, String)> {
            rows.iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2))))
                .collect()
        };
    let any = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata)";
    let source_has: bool = source.query_one(any, &[]).await?.get(0);
    let target_has: bool = target.query_one(any, &[]).await?.get(0);
    if !source_has && !target_has {
        return Ok(0);
    }
    let on_source = read(
        source
            .query(
                "SELECT m.oid::int8, md5(coalesce(string_agg(p.data, ''::bytea ORDER BY p.pageno), ''::bytea)),
                        pg_get_userbyid(m.lomowner)::text
                   FROM pg_largeobject_metadata m LEFT JOIN pg_largeobject p ON p.loid = m.oid GROUP BY m.oid, m.lomowner",
                &[],
            )
            .await
            .context("reading the source's large objects (GRANT SELECT ON pg_catalog.pg_largeobject TO the source role)")?,
    );
    let on_target = read(
        target
            .query(
                "SELECT oid::int8, md5(lo_get(oid)), pg_get_userbyid(lomowner)::text FROM pg_largeobject_metadata",
                &[],
            )
            .await
            .context("reading the target's large objects")?,
    );
    let mut changed = 0;
    for oid in on_target.keys().filter(|oid| !on_source.contains_key(oid)) {
        target
            .execute("SELECT lo_unlink($1::int8::oid)", &[oid])
            .await?;
        changed += 1;
    }
    for (oid, (hash, owner)) in &on_source {
        if on_target.get(oid).map(|(h, _)| h) == Some(hash) {
            continue;
        }
        let data: Vec<u8> = source
            .query_one("SELECT lo_get($1::int8::oid)", &[oid])
            .await?
            .get(0);
        if on_target.contains_key(oid) {
            // Rewritten in place, in one transaction (131072 = INV_WRITE).
            target.batch_execute("BEGIN").await?;
            target
                .execute(
                    "SELECT lo_truncate(lo_open($1::int8::oid, 131072), 0)",
                    &[oid],
                )
                .await?;
            target
                .execute("SELECT lo_put($1::int8::oid, 0, $2)", &[oid, &data])
                .await?;
            target.batch_execute("COMMIT").await?;
        } else {
            target
                .execute("SELECT lo_from_bytea($1::int8::oid, $2)", &[oid, &data])
                .await?;
            if keep_owners {
                target
                    .batch_execute(&format!(
                        "ALTER LARGE OBJECT {oid} OWNER TO {}",
                        pglive_postgres::quote_ident(owner)
                    ))
                    .await
                    .with_context(|| format!("giving large object {oid} to {owner}"))?;
            }
        }
        changed += 1;
    }
    Ok(changed)
}

/// `pglive cutover`: asks a running `migrate` to cut over and waits for it,
/// or, when none runs, cuts over itself.
pub async fn command(
    args: crate::cli::CutoverArgs,
    reporter: Arc<Reporter>,
) -> Result<crate::ExitStatus> {
    let source_config = crate::parse_conninfo(&args.servers.source, "--source")?;
    let target_config = crate::parse_conninfo(&args.servers.target, "--target")?;
    let name = args.servers.name.clone();
    let target = crate::preflight::connect(&target_config, "target").await?;
    let Some(migration) = state::load(&target, &name).await? else {
        bail!(
            "no migration named {name:?} on {}",
            target_config.describe()
        );
    };
    if args.abort {
        if migration.fence {
            let source = crate::preflight::connect(&source_config, "source").await?;
            unfence(&source).await?;
            reporter.line("cutover aborted: the source is writable again");
        }
        target
            .execute(
                "UPDATE pglive.migration SET cutover_requested = false, fence = false,
                        stage = CASE WHEN stage = 'cutover' THEN 'streaming' ELSE stage END
                  WHERE name = $1",
                &[&name],
            )
            .await?;
        return Ok(crate::ExitStatus::Success);
    }
    match migration.stage {
        Stage::Done => {
            println!("{}", migration.summary.unwrap_or_default());
            return Ok(crate::ExitStatus::Success);
        }
        Stage::Streaming | Stage::Cutover => {}
        other => bail!(
            "migration {name:?} is still at stage {}: cutover needs the copy and indexes done (let `pglive migrate` get to streaming)",
            other.as_str()
        ),
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    if !state::try_lock(&target, &name).await? {
        // A migrate runs: ask it, and wait for the result.
        state::request_cutover(&target, &name, args.fence).await?;
        reporter.line("cutover requested from the running `pglive migrate`; waiting");
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let current = state::load(&target, &name)
                .await?
                .context("the migration disappeared")?;
            if current.stage == Stage::Done {
                println!(
                    "switch your application now: {}",
                    current.summary.unwrap_or_default()
                );
                return Ok(crate::ExitStatus::Success);
            }
            if !state::is_running(&target, &name).await? {
                bail!(
                    "the running `pglive migrate` stopped before the cutover finished: its output says why; \
                     run `pglive cutover` again once that is fixed"
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "cutover did not finish within {} s (see `pglive status`)",
                    args.timeout
                );
            }
        }
    }
    // The tail after writes stopped is short: one session.
    let ctx = Job::for_recorded(source_config, target_config, &migration);
    let session = live::connect(&ctx, &migration, &Default::default()).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        perform(&ctx, &migration, session, args.fence, &reporter),
    )
    .await;
    state::unlock(&target, &name).await.ok();
    match result {
        Ok(summary) => summary.map(|_| crate::ExitStatus::Success),
        Err(_) => bail!(
            "cutover did not finish within {} s; run it again to continue",
            args.timeout
        ),
    }
}
