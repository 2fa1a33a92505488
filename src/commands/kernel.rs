//! `fledge kernel …`: the guest kernel.

use anyhow::{Context, Result};

use crate::cli::KernelCommand;
use crate::kernel_build::{Request, build};
use crate::progress::Progress;

pub fn run(command: &KernelCommand, progress: &Progress) -> Result<()> {
    match command {
        KernelCommand::Build { source, acpi, jobs, install_system } => {
            let state = crate::dirs::state_dir().context("no state directory: set FLEDGE_STATE_DIR (or HOME)")?;
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let request = Request { source: source.clone(), acpi: *acpi, jobs, install_system: *install_system };
            let dir = build(&request, &state, progress)?;
            progress.say(&format!("Installed {0}/vmlinux and {0}/bzImage", dir.display()));
            Ok(())
        }
        KernelCommand::Import { path } => {
            let state = crate::dirs::state_dir().context("no state directory: set FLEDGE_STATE_DIR (or HOME)")?;
            crate::kernel_import::import(path, &state, progress)?;
            Ok(())
        }
    }
}
