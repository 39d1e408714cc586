//! The `pglive` command: the definition of the command-line interface and
//! the glue that composes the libraries. Nothing here is meant to be
//! embedded; see the `pglive-*` crates for that.

mod adopt;
mod clean;
mod cli;
mod cutover;
mod demo;
mod keys;
mod latch;
mod live;
mod migrate;
mod preflight;
mod publication;
mod report;
mod state;
mod status;
mod verify;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pglive_postgres::ConnectConfig;

use crate::cli::{Cli, Command, LogFormat};
use crate::latch::Latch;
use crate::preflight::{Findings, PreflightFailed};

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything asked for was done.
    Success = 0,
    /// An error stopped the command (the message says what to do).
    Error = 1,
    /// Preflight found problems; nothing was changed on either server.
    Preflight = 3,
    /// `verify` (or the demo) found tables that differ.
    Mismatch = 4,
    /// Ctrl-C: stopped at a transaction boundary, resumable.
    Interrupted = 5,
}

/// Ctrl-C, seen by every stage.
#[derive(Clone, Default)]
pub struct Interrupt(Latch<()>);

impl Interrupt {
    /// Records a Ctrl-C and wakes every waiter.
    pub fn trigger(&self) {
        self.0.set(());
    }

    /// Whether Ctrl-C was pressed.
    pub fn requested(&self) -> bool {
        self.0.get().is_some()
    }

    /// Completes once Ctrl-C was pressed.
    pub async fn wait(&self) {
        self.0.wait().await;
    }
}

/// Parses a connection string given for `flag`; a malformed one is a
/// preflight failure (nothing has been touched yet).
pub fn parse_conninfo(text: &str, flag: &str) -> anyhow::Result<ConnectConfig> {
    ConnectConfig::parse(text).map_err(|e| {
        PreflightFailed(Findings {
            failures: vec![format!("{flag}: {e}")],
            warnings: Vec::new(),
            notes: Vec::new(),
        })
        .into()
    })
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.verbose {
        0 => "warn",
        1 => "info,pglive=debug",
        _ => "debug,pglive=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.without_time().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(ExitStatus::Error as u8);
        }
    };
    let status = runtime.block_on(run(cli));
    ExitCode::from(status as u8)
}

async fn run(cli: Cli) -> ExitStatus {
    let interrupt = Interrupt::default();
    {
        let interrupt = interrupt.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if interrupt.requested() {
                    eprintln!("second Ctrl-C: stopping now");
                    std::process::exit(ExitStatus::Interrupted as i32);
                }
                eprintln!("Ctrl-C: stopping at the next transaction boundary (again to stop now)");
                interrupt.trigger();
            }
        });
    }
    let reporter = Arc::new(report::Reporter::new(cli.log_format == LogFormat::Json));
    let result = match cli.command {
        Command::Migrate(args) => {
            Box::pin(migrate::run(args, Arc::clone(&reporter), interrupt.clone())).await
        }
        Command::Cutover(args) => cutover::command(args, Arc::clone(&reporter)).await,
        Command::Status(args) => status::run(args).await.map(|()| ExitStatus::Success),
        Command::Verify(args) => verify::command(args).await,
        Command::Clean(args) => clean::run(args).await.map(|done| {
            if done.is_empty() {
                println!("nothing to clean");
            }
            for line in done {
                println!("{line}");
            }
            ExitStatus::Success
        }),
        Command::Demo(args) => demo::run(args, Arc::clone(&reporter), interrupt.clone()).await,
    };
    match result {
        Ok(status) => status,
        Err(error) => {
            if let Some(failed) = error.downcast_ref::<PreflightFailed>() {
                eprint!("error: {failed}");
                for warning in &failed.0.warnings {
                    eprintln!("  warning: {warning}");
                }
                return ExitStatus::Preflight;
            }
            eprintln!("error: {}", preflight::chain(error.as_ref()));
            ExitStatus::Error
        }
    }
}
