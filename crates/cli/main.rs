//! The `pglive` command: the definition of the command-line interface and
//! the glue that composes the libraries. Nothing here is meant to be
//! embedded; see the `pglive-*` crates for that.

use clap::Parser;

/// Migrate a live PostgreSQL database to another server with seconds of downtime.
#[derive(Debug, Parser)]
#[command(name = "pglive", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {}

fn main() {
    let cli = Cli::parse();
    if cli.command.is_none() {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        println!();
    }
}
