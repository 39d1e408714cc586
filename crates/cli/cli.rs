//! The command line: flags, environment variables and help texts.

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  pglive demo
  pglive migrate --source postgresql://repl@old-db/shop --target postgresql://app@new-db/shop
  pglive status --target postgresql://app@new-db/shop
  pglive cutover --source postgresql://repl@old-db/shop --target postgresql://app@new-db/shop --fence
  pglive verify --source … --target … --full
  pglive clean --source … --target …

Connection strings are libpq's: key=value or URIs, with PG* variables, ~/.pgpass and sslmode
(disable … verify-full). Passwords never appear in output.

Exit codes: 0 success, 1 error, 2 bad usage, 3 preflight failed (nothing was changed),
4 verification found differences, 5 interrupted (state kept; run the same command to resume).";

/// Migrate a live PostgreSQL database to another server with seconds of downtime.
#[derive(Debug, Parser)]
#[command(name = "pglive", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log format for diagnostics on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// More diagnostics (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

/// How diagnostics are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines; progress bars on a terminal.
    Text,
    /// One JSON object per line, for machines; no progress bars.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy schema and data, then stream changes until cutover (resumes after any stop).
    #[command(
        after_help = "Example:\n  pglive migrate --source postgresql://repl@old-db/shop --target postgresql://app@new-db/shop --jobs 8\n\nWhile it streams on a terminal, type c + Enter to cut over (f + Enter to fence writes on the source first),\nor run `pglive cutover` from another shell."
    )]
    Migrate(MigrateArgs),
    /// Finish a migration: catch up, sync sequences, verify counts, drop the slot.
    #[command(
        after_help = "Example:\n  pglive cutover --source postgresql://repl@old-db/shop --target postgresql://app@new-db/shop --fence"
    )]
    Cutover(CutoverArgs),
    /// Show a migration's stage, copy progress, positions and lag (from the target).
    #[command(
        after_help = "Example:\n  pglive status --target postgresql://app@new-db/shop --json"
    )]
    Status(StatusArgs),
    /// Compare row counts (and with --full, checksums) of every table on both sides.
    #[command(
        after_help = "Example:\n  pglive verify --source postgresql://repl@old-db/shop --target postgresql://app@new-db/shop --full"
    )]
    Verify(VerifyArgs),
    /// Drop the slot, the publication and the migration state (idempotent).
    #[command(
        after_help = "Example:\n  pglive clean --source postgresql://repl@old-db/shop --target postgresql://app@new-db/shop"
    )]
    Clean(CleanArgs),
    /// Decide about a schema change that apply waits at (`pglive status` shows it).
    #[command(
        after_help = "Examples:\n  pglive ddl retry --target postgresql://app@new-db/shop\n  pglive ddl skip --target postgresql://app@new-db/shop   # after running an equivalent on the target by hand"
    )]
    Ddl(DdlArgs),
    /// Run a complete migration between two throwaway local clusters, with a live workload.
    Demo(DemoArgs),
}

/// The two servers.
#[derive(Debug, Clone, Args)]
pub(crate) struct Servers {
    /// The database to migrate (libpq connection string or URI).
    #[arg(long, env = "PGLIVE_SOURCE", hide_env_values = true)]
    pub(crate) source: String,
    /// The database to migrate into.
    #[arg(long, env = "PGLIVE_TARGET", hide_env_values = true)]
    pub(crate) target: String,
    /// The migration's name: names its slot, publication and state.
    #[arg(long, default_value = "pglive")]
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    pub(crate) servers: Servers,
    /// Parallel copy workers.
    #[arg(long, default_value_t = 4)]
    pub(crate) jobs: usize,
    /// Parallel index and constraint builds.
    #[arg(long, default_value_t = 4)]
    pub(crate) index_jobs: usize,
    /// Target sessions that apply the change stream; batches are spread over them by row key.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) apply_sessions: u16,
    /// Only these tables or schemas (pg_dump patterns: 'public.*', 'sales.orders'); repeatable.
    #[arg(long = "include", value_name = "PATTERN")]
    pub(crate) include: Vec<String>,
    /// Leave out these tables (pg_dump patterns); repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub(crate) exclude: Vec<String>,
    /// Create TimescaleDB hypertables on the target before the data (auto: when the source has them).
    #[arg(long, value_enum, default_value_t = Hypertables::Auto)]
    pub(crate) hypertables: Hypertables,
    /// Make a plain source table a TimescaleDB hypertable on the target: TABLE:TIME_COLUMN[:INTERVAL] (e.g. 'public.metrics:ts:1 day'); repeatable.
    #[arg(long = "hypertable", value_name = "TABLE:COLUMN[:INTERVAL]")]
    pub(crate) new_hypertables: Vec<pglive_migrate::NewHypertable>,
    /// Replication slot name (default: the migration's name).
    #[arg(long)]
    pub(crate) slot: Option<String>,
    /// Publication name (default: the migration's name).
    #[arg(long)]
    pub(crate) publication: Option<String>,
    /// Cut over by itself as soon as the copy is done and the stream has caught up.
    #[arg(long)]
    pub(crate) cutover_when_ready: bool,
    /// Use tables that already exist on the target instead of requiring an empty target.
    #[arg(long)]
    pub(crate) reuse_schema: bool,
    /// Do not restore the source's owners: the target role owns everything (as pg_dump's --no-owner).
    #[arg(long)]
    pub(crate) no_owner: bool,
    /// Do not restore privileges (GRANT/REVOKE, default privileges), as pg_dump's --no-acl.
    #[arg(long)]
    pub(crate) no_acl: bool,
    /// Create on the target the source's roles it lacks, without passwords (needs CREATEROLE there).
    #[arg(long)]
    pub(crate) roles: bool,
    /// The size aimed at for each part of a large table's copy, in MB (tables above four parts' size are split).
    #[arg(long, value_name = "MB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) part_size: u32,
    /// Schema changes on the source while the migration runs: capture them and replay them on the target in stream order (auto: when the source role is a superuser on PostgreSQL 14 or later and every table is migrated), or stop apply at a changed table, with the ALTER to run on the target.
    #[arg(long, value_enum, default_value_t = Ddl::Auto)]
    pub(crate) ddl: Ddl,
    /// Join the copy of this migration, run by a `pglive migrate` elsewhere (same --source, --target, --name): take its pending parts with --jobs workers, then exit.
    #[arg(long, conflicts_with_all = ["cutover_when_ready", "reuse_schema", "roles", "include", "exclude", "no_owner", "no_acl", "slot", "publication"])]
    pub(crate) join: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Hypertables {
    /// Create hypertables when the source uses TimescaleDB.
    Auto,
    /// Copy hypertables as plain tables.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Ddl {
    /// Capture when the source role may; else stop.
    Auto,
    /// Capture (preflight refuses a source role that cannot).
    Capture,
    /// Do not capture: a changed table stops apply until the target matches.
    Stop,
}

#[derive(Debug, Args)]
pub(crate) struct DdlArgs {
    /// What to do with the schema change apply waits at.
    #[arg(value_enum)]
    pub(crate) decision: DdlChoice,
    /// The target database holding the migration state.
    #[arg(long, env = "PGLIVE_TARGET", hide_env_values = true)]
    pub(crate) target: String,
    /// The migration's name.
    #[arg(long, default_value = "pglive")]
    pub(crate) name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DdlChoice {
    /// Replay it as captured (after fixing what made it fail on the target, or for a command pglive does not replay by itself).
    Retry,
    /// Leave it out: an equivalent was run on the target by hand.
    Skip,
}

#[derive(Debug, Args)]
pub(crate) struct CutoverArgs {
    #[command(flatten)]
    pub(crate) servers: Servers,
    /// Make the source database read-only for its application roles while cutting over.
    #[arg(long)]
    pub(crate) fence: bool,
    /// Undo a --fence (make the source writable again) and stop waiting.
    #[arg(long)]
    pub(crate) abort: bool,
    /// Seconds to wait for the source to go quiet and the target to catch up.
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout: u64,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The target database holding the migration state.
    #[arg(long, env = "PGLIVE_TARGET", hide_env_values = true)]
    pub(crate) target: String,
    /// The migration's name.
    #[arg(long, default_value = "pglive")]
    pub(crate) name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) servers: Servers,
    /// Compare checksums of every row, not only counts.
    #[arg(long)]
    pub(crate) full: bool,
    /// Parts compared at once (each reads with one session on either side).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=128))]
    pub(crate) jobs: u16,
    /// Continue the stopped verification of this migration: parts it already compared are not read again.
    #[arg(long)]
    pub(crate) resume: bool,
    /// At most this many MB per second read from the source (for busy sources); unlimited by default.
    #[arg(long, value_name = "MB_PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_rate: Option<u32>,
    /// About how many MB of a table one part covers (tables with a single integer key are cut into key ranges).
    #[arg(long, value_name = "MB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) part_size: u32,
}

#[derive(Debug, Args)]
pub(crate) struct CleanArgs {
    #[command(flatten)]
    pub(crate) servers: Servers,
    /// Clean even while a migrate seems to be running.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Approximate size of the sample database, in MB.
    #[arg(long, default_value_t = 300)]
    pub(crate) size_mb: u64,
    /// Seconds of live workload before cutting over.
    #[arg(long, default_value_t = 20)]
    pub(crate) workload_seconds: u64,
}
