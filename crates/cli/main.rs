//! The `pglive` command: the definition of the command-line interface and
//! the glue that composes the libraries. Nothing here is meant to be
//! embedded; see the `pglive-*` crates for that.

mod cli;
mod commands;
mod demo;
mod keys;
mod render;
mod status;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pglive_migrate::Control;

use crate::cli::{Cli, Command, LogFormat};
use crate::render::{Renderer, Style};

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
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
    let style = match cli.log_format {
        LogFormat::Json => Style::Json,
        LogFormat::Text => Style::Text,
    };
    let control = Control::new();
    let keys_listening =
        matches!(cli.command, Command::Migrate(_) | Command::Demo(_)) && keys::listen(&control);
    let renderer = Arc::new(Renderer::new(style, keys_listening));
    // Nothing of these is lost by stopping at once: a verification
    // continues with --resume, a joined copy's unfinished parts roll back
    // and go to the other processes.
    let stops_at_once = matches!(&cli.command, Command::Verify(_))
        || matches!(&cli.command, Command::Migrate(args) if args.join);
    {
        let control = control.clone();
        let renderer = Arc::clone(&renderer);
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if stops_at_once {
                    renderer.info("Ctrl-C: stopping now");
                    std::process::exit(ExitStatus::Interrupted as i32);
                }
                if control.stop_requested() {
                    renderer.info("second Ctrl-C: stopping now");
                    std::process::exit(ExitStatus::Interrupted as i32);
                }
                renderer
                    .info("Ctrl-C: stopping at the next transaction boundary (again to stop now)");
                control.stop();
            }
        });
    }
    let result = match cli.command {
        Command::Migrate(args) => commands::migrate(args, Arc::clone(&renderer), control).await,
        Command::Cutover(args) => commands::cutover(args, Arc::clone(&renderer)).await,
        Command::Status(args) => commands::status(args).await,
        Command::Verify(args) => commands::verify(args, Arc::clone(&renderer)).await,
        Command::Clean(args) => commands::clean(args).await,
        Command::Ddl(args) => commands::ddl(args).await,
        Command::Demo(args) => demo::run(args, Arc::clone(&renderer), control).await,
    };
    match result {
        Ok(status) => status,
        Err(error) => {
            if let Some(pglive_migrate::Error::Preflight(findings)) = error.downcast_ref() {
                renderer.error(findings.to_string().trim_end());
                for warning in &findings.warnings {
                    renderer.line("warn", warning, serde_json::json!({"event": "warning"}));
                }
                return ExitStatus::Preflight;
            }
            renderer.error(&pglive_migrate::chain(error.as_ref()));
            ExitStatus::Error
        }
    }
}
