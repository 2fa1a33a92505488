//! `fledge debug`: what the Dockerfile frontend makes of a file. `parse` prints the syntax
//! tree exactly as BuildKit's parser tests write it (`Node.Dump()`), so the output can be
//! compared line for line with BuildKit's.

use std::path::Path;

use anyhow::Result;

use crate::cli::DebugCommand;
use crate::dockerfile;

pub fn run(command: &DebugCommand) -> Result<()> {
    match command {
        DebugCommand::Parse { dockerfile } => {
            let ast = dockerfile::load(dockerfile)?;
            print!("{}", ast.dump());
            for warning in &ast.warnings {
                eprintln!("warning: {}:{}: {}", display(dockerfile), warning.line, warning.message);
            }
            Ok(())
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
