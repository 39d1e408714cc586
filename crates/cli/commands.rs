//! Each command: flags into library options, the library call, its result
//! on stdout and as an exit status.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use pglive_migrate::human::{bytes, count};
use pglive_migrate::{
    Control, CutoverOptions, CutoverOutcome, DdlDecision, DdlMode, Findings, MigrateOptions,
    Outcome, Settings, Verification, VerifyOptions,
};
use pglive_postgres::ConnectConfig;

use crate::ExitStatus;
use crate::cli::{
    CleanArgs, CutoverArgs, Ddl, DdlArgs, DdlChoice, Hypertables, MigrateArgs, Servers, StatusArgs,
    VerifyArgs,
};
use crate::render::Renderer;

/// Parses a connection string given for `flag`; a malformed one is a
/// preflight failure (nothing has been touched yet).
pub(crate) fn conninfo(text: &str, flag: &str) -> Result<ConnectConfig> {
    ConnectConfig::parse(text).map_err(|e| {
        pglive_migrate::Error::Preflight(Findings::failure(format!("{flag}: {e}"))).into()
    })
}

/// Both servers of `servers`.
fn both(servers: &Servers) -> Result<(ConnectConfig, ConnectConfig)> {
    Ok((
        conninfo(&servers.source, "--source")?,
        conninfo(&servers.target, "--target")?,
    ))
}

/// The library's options for `args`.
pub(crate) fn migrate_options(args: &MigrateArgs) -> MigrateOptions {
    let mut options = MigrateOptions::new(args.servers.name.clone());
    options.slot = args.slot.clone();
    options.publication = args.publication.clone();
    options.jobs = args.jobs;
    options.index_jobs = args.index_jobs;
    options.apply_sessions = usize::from(args.apply_sessions);
    options.reuse_schema = args.reuse_schema;
    options.hypertables = args.hypertables == Hypertables::Auto;
    options.new_hypertables = args.new_hypertables.clone();
    options.settings = Settings {
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        keep_owners: !args.no_owner,
        keep_privileges: !args.no_acl,
    };
    options.copy_roles = args.roles;
    options.cutover_when_ready = args.cutover_when_ready;
    options.part_bytes = i64::from(args.part_size) << 20;
    options.ddl = match args.ddl {
        Ddl::Auto => DdlMode::Auto,
        Ddl::Capture => DdlMode::Capture,
        Ddl::Stop => DdlMode::Stop,
    };
    options
}

/// `pglive migrate`.
pub(crate) async fn migrate(
    args: MigrateArgs,
    renderer: Arc<Renderer>,
    control: Control,
) -> Result<ExitStatus> {
    let (source, target) = both(&args.servers)?;
    let options = migrate_options(&args);
    if args.join {
        let joined = pglive_migrate::join_copy(source, target, &options, renderer.clone()).await?;
        renderer.info(&format!(
            "joined migration {:?}: copied {} part(s), {} rows, {} in {:.1}s; {} part(s) still being copied by other processes",
            options.name,
            joined.parts,
            count(joined.rows),
            bytes(joined.bytes),
            joined.elapsed.as_secs_f64(),
            joined.remaining
        ));
        return Ok(ExitStatus::Success);
    }
    let outcome =
        pglive_migrate::migrate(source, target, &options, renderer.clone(), &control).await?;
    Ok(match outcome {
        Outcome::Stopped => {
            renderer.info("stopped at a transaction boundary; run the same command to resume");
            ExitStatus::Interrupted
        }
        Outcome::AlreadyDone { summary } => {
            renderer.info(&format!(
                "migration {:?} is already done: {summary}",
                options.name
            ));
            ExitStatus::Success
        }
        _ => ExitStatus::Success,
    })
}

/// `pglive cutover`.
pub(crate) async fn cutover(args: CutoverArgs, renderer: Arc<Renderer>) -> Result<ExitStatus> {
    let (source, target) = both(&args.servers)?;
    let name = &args.servers.name;
    if args.abort {
        renderer.info(
            if pglive_migrate::abort_cutover(source, target, name).await? {
                "cutover aborted; the fence is lifted: the source is writable again"
            } else {
                "cutover aborted (no fence was up)"
            },
        );
        return Ok(ExitStatus::Success);
    }
    let mut options = CutoverOptions::new(name.clone());
    options.fence = args.fence;
    options.timeout = Duration::from_secs(args.timeout);
    if let CutoverOutcome::AlreadyDone { summary } =
        pglive_migrate::cutover(source, target, &options, renderer).await?
    {
        println!("{summary}");
    }
    Ok(ExitStatus::Success)
}

/// `pglive status`.
pub(crate) async fn status(args: StatusArgs) -> Result<ExitStatus> {
    let target = conninfo(&args.target, "--target")?;
    let status = pglive_migrate::status(target, &args.name).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        crate::status::print(&status);
    }
    Ok(ExitStatus::Success)
}

/// `pglive verify`.
pub(crate) async fn verify(args: VerifyArgs, renderer: Arc<Renderer>) -> Result<ExitStatus> {
    let (source, target) = both(&args.servers)?;
    let mut options = VerifyOptions::default();
    options.full = args.full;
    options.jobs = usize::from(args.jobs);
    options.resume = args.resume;
    options.max_source_bytes_per_second = args.max_rate.map(|mb| u64::from(mb) * 1_000_000);
    options.part_bytes = i64::from(args.part_size) << 20;
    let verification =
        pglive_migrate::verify(source, target, &args.servers.name, &options, renderer).await?;
    print_verification(&verification, args.full);
    Ok(if verification.comparison.mismatches().is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

/// A verification as a table and a verdict.
pub(crate) fn print_verification(verification: &Verification, full: bool) {
    let comparison = &verification.comparison;
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
        for row in &t.differing_rows {
            println!("    {row}");
        }
    }
    if comparison.parts_resumed > 0 {
        println!(
            "continued a stopped verification: {} of its {} parts were compared before (each at the point recorded with it)",
            comparison.parts_resumed, comparison.parts
        );
    }
    match comparison.mismatches().len() {
        0 => println!(
            "verified {} tables: source and target are equal{}{}",
            comparison.tables.len(),
            if full {
                " (counts and checksums)"
            } else {
                " (counts)"
            },
            if verification.live {
                " at one consistent point of the live migration"
            } else {
                ""
            }
        ),
        n => println!("{n} table(s) differ"),
    }
}

/// `pglive ddl retry|skip`.
pub(crate) async fn ddl(args: DdlArgs) -> Result<ExitStatus> {
    let target = conninfo(&args.target, "--target")?;
    let decision = match args.decision {
        DdlChoice::Retry => DdlDecision::Retry,
        DdlChoice::Skip => DdlDecision::Skip,
    };
    let change = pglive_migrate::decide_ddl(target, &args.name, decision).await?;
    let what = match decision {
        DdlDecision::Retry => "will be replayed as captured",
        DdlDecision::Skip => "will be left out",
    };
    println!(
        "{} in the source transaction committed at {} {what}: {}",
        change.tag, change.lsn, change.command
    );
    println!("a running `pglive migrate` goes on within a second (or at its next start)");
    Ok(ExitStatus::Success)
}

/// `pglive clean`.
pub(crate) async fn clean(args: CleanArgs) -> Result<ExitStatus> {
    let (source, target) = both(&args.servers)?;
    let done = pglive_migrate::clean(source, target, &args.servers.name, args.force).await?;
    if done.is_empty() {
        println!("nothing to clean");
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitStatus::Success)
}
