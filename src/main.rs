use std::process::ExitCode;

use clap::Parser;
use fledge::cli::{Cli, Command};
use fledge::progress::Progress;
use fledge::{commands, interrupt};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, true) => "debug",
        (false, false) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("FLEDGE_LOG").unwrap_or_else(|_| EnvFilter::new(level)))
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    interrupt::install();
    let progress = Progress::new(cli.quiet);
    let result = match &cli.command {
        Command::Build(args) => commands::build::run(args, &progress),
        Command::Version => {
            commands::version::run();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
