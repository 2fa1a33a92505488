use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use fledge::cli::{Cli, Command};
use fledge::progress::Progress;
use fledge::{commands, interrupt, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.quiet, cli.verbose);
    interrupt::install();
    let progress = Progress::new(cli.quiet);
    let done = |r: anyhow::Result<()>| r.map(|()| 0);
    let result = match &cli.command {
        Command::Build(args) => done(commands::build::run(args, &progress)),
        Command::Image(command) => done(commands::image::run(command, &progress)),
        Command::Run(args) => commands::run::run(args, cli.verbose, &progress),
        Command::Kernel(command) => done(commands::kernel::run(command, &progress)),
        Command::Prune => done(commands::image::prune(&progress)),
        Command::Debug(command) => done(commands::debug::run(command, &progress)),
        Command::Version => {
            commands::version::run();
            Ok(0)
        }
    };
    fledge::scratch::release_all();
    match result {
        Ok(status) => ExitCode::from(status),
        Err(_) if interrupt::requested() => {
            let _ = writeln!(std::io::stderr(), "error: interrupted; nothing was written");
            ExitCode::from(interrupt::exit_status())
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {}", render_error(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message already contains (our
/// errors often quote their cause and add a hint after it).
fn render_error(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}
