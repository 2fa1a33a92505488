//! `fledge kernel build`: Fledge's guest kernel from a kernel source tarball (Debian's
//! `linux-source` by default) and the fragment in `kernel-config/`: `make tinyconfig`, the
//! fragment merged in, every option in it checked to have survived `olddefconfig`, then
//! `vmlinux` (PVH) and `bzImage`.
//!
//! Builds are cached by a key over the source tarball's digest, the fragment and this
//! recipe: `$FLEDGE_STATE_DIR/kernel/builds/<key>/` holds `vmlinux`, `bzImage` and `config`,
//! written to a temporary directory and renamed into place complete. A rebuild with the same
//! inputs only installs the cached result. Installing copies the three files to
//! `$FLEDGE_STATE_DIR/kernel/`, where kernel lookup finds them (and, with `--install-system`,
//! to `/var/lib/volant/kernel/` for every user). The source tree is unpacked in a temporary
//! directory beside the builds and removed afterwards, also on failure and Ctrl-C.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;
use crate::progress::Progress;

/// The fragment for every Fledge kernel.
pub const FRAGMENT: &str = include_str!("../kernel-config/fledge.config");
/// Added for Cloud Hypervisor, which powers off and hot-plugs through ACPI.
pub const ACPI_FRAGMENT: &str = include_str!("../kernel-config/acpi.config");
/// Bumped whenever the steps below change what they produce.
const RECIPE: &str = "fledge-kernel-recipe-1";
/// Where Debian's `linux-source` package puts its tarball.
const DEBIAN_SOURCES: &str = "/usr/src";

pub struct Request {
    pub source: Option<PathBuf>,
    pub acpi: bool,
    pub jobs: usize,
    pub install_system: bool,
}

/// The newest `linux-source-*.tar.xz` under /usr/src.
fn default_source() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(DEBIAN_SOURCES)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with("linux-source-") && name.ends_with(".tar.xz")
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!("no kernel source tarball in {DEBIAN_SOURCES}\n  = help: install Debian's kernel source (apt install linux-source), or pass --source linux-x.y.tar.xz")
    })
}

/// The fragment's options: `(name, wanted value)`, `None` for "is not set".
fn options(fragment: &str) -> Vec<(&str, Option<&str>)> {
    fragment
        .lines()
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("# ") {
                rest.strip_suffix(" is not set").filter(|n| n.starts_with("CONFIG_")).map(|n| (n, None))
            } else {
                l.split_once('=').filter(|(n, _)| n.starts_with("CONFIG_")).map(|(n, v)| (n, Some(v)))
            }
        })
        .collect()
}

/// Options of `fragment` the final `.config` does not have as asked (dependencies unmet).
fn dropped<'f>(fragment: &'f str, config: &str) -> Vec<&'f str> {
    let value = |name: &str| {
        config.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')).map(str::to_string))
    };
    options(fragment)
        .into_iter()
        .filter(|(name, wanted)| match wanted {
            Some(v) => value(name).as_deref() != Some(*v),
            None => value(name).is_some_and(|v| v != "n"),
        })
        .map(|(name, _)| name)
        .collect()
}

fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<()> {
    let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot run {what} (install build-essential, flex, bison, bc and libelf-dev)"))?;
    crate::interrupt::check()?;
    if !status.success() {
        let tail: Vec<String> = BufReader::new(fs::File::open(log)?).lines().map_while(Result::ok).collect();
        let tail = tail[tail.len().saturating_sub(25)..].join("\n");
        bail!("{what} failed ({status}); the end of its log:\n{tail}");
    }
    Ok(())
}

/// Builds (or finds cached) and installs the kernel; returns the installed directory.
pub fn build(request: &Request, state_dir: &Path, progress: &Progress) -> Result<PathBuf> {
    let source = match &request.source {
        Some(s) => s.clone(),
        None => default_source()?,
    };
    let file =
        fs::File::open(&source).with_context(|| format!("cannot open the kernel source {}", source.display()))?;
    let step = progress.step(format!("Hashing {}", source.display()), None);
    let (source_digest, _) = Sha256Digest::of_reader(file)?;
    step.finish(&source_digest.to_string());
    let fragment = if request.acpi { format!("{FRAGMENT}{ACPI_FRAGMENT}") } else { FRAGMENT.to_string() };
    let key = hex::encode(&Sha256::digest(format!("{RECIPE}\n{source_digest}\n{fragment}"))[..8]);

    let kernel_dir = state_dir.join("kernel");
    let builds = kernel_dir.join("builds");
    let cached = builds.join(&key);
    fs::create_dir_all(&builds)?;
    if cached.join("bzImage").is_file() {
        progress.say(&format!("Kernel {key} is built already ({})", cached.display()));
    } else {
        compile(&source, &fragment, request.jobs, &builds, &cached, progress)?;
    }
    install(&cached, &kernel_dir)?;
    if request.install_system {
        install(&cached, Path::new(fledge_vmm::kernel::SYSTEM_KERNEL_DIR))?;
    }
    Ok(kernel_dir)
}

fn compile(source: &Path, fragment: &str, jobs: usize, builds: &Path, dest: &Path, progress: &Progress) -> Result<()> {
    let work = tempfile::Builder::new().prefix("build-").tempdir_in(builds)?;
    let tree = work.path().join("linux");
    let log = work.path().join("build.log");
    fs::create_dir(&tree)?;
    let step = progress.step(format!("Unpacking {}", source.display()), None);
    run_logged(
        Command::new("tar").arg("-xf").arg(source).arg("-C").arg(&tree).arg("--strip-components=1"),
        &log,
        "unpacking the kernel source",
    )?;
    step.finish("done");

    let make = |args: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.current_dir(&tree).args(args);
        cmd
    };
    run_logged(&mut make(&["tinyconfig"]), &log, "make tinyconfig")?;
    let fragment_path = work.path().join("fledge.config");
    fs::write(&fragment_path, fragment)?;
    run_logged(
        Command::new("sh")
            .current_dir(&tree)
            .arg("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment_path),
        &log,
        "merging the Fledge config fragment",
    )?;
    run_logged(&mut make(&["olddefconfig"]), &log, "make olddefconfig")?;
    let config = fs::read_to_string(tree.join(".config"))?;
    let lost = dropped(fragment, &config);
    if !lost.is_empty() {
        bail!(
            "this kernel source does not accept {} of the fragment (their dependencies are not met): {}\n  = help: use the Linux 6.1 source (Debian 12's linux-source) or adjust kernel-config/fledge.config",
            lost.len(),
            lost.join(", ")
        );
    }

    let step = progress
        .step(format!("Compiling vmlinux and bzImage with {jobs} jobs (minutes; log: {})", log.display()), None);
    run_logged(&mut make(&[&format!("-j{jobs}"), "vmlinux", "bzImage"]), &log, "the kernel build")?;
    step.finish("done");

    let staged = work.path().join("out");
    fs::create_dir(&staged)?;
    fs::copy(tree.join("vmlinux"), staged.join("vmlinux"))?;
    fs::copy(tree.join("arch/x86/boot/bzImage"), staged.join("bzImage"))?;
    fs::write(staged.join("config"), config)?;
    fs::rename(&staged, dest).with_context(|| format!("cannot store the kernel in {}", dest.display()))?;
    Ok(())
}

/// Copies the kernel files from `from` into `dir`, each replaced atomically; an imported
/// kernel's modules go (Fledge's kernel has its drivers built in).
fn install(from: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match fs::remove_file(dir.join("modules.cpio")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    for name in ["vmlinux", "bzImage", "config"] {
        let tmp = dir.join(format!(".{name}.partial"));
        fs::copy(from.join(name), &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

/// Whether the kernel at `dir` (its `config`) was built with ACPI; `None` when unknown.
pub fn has_acpi(dir: &Path) -> Option<bool> {
    let config = fs::read_to_string(dir.join("config")).ok()?;
    Some(config.lines().any(|l| l == "CONFIG_ACPI=y"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_is_read_as_wanted_options() {
        let opts = options(FRAGMENT);
        assert!(opts.contains(&("CONFIG_VIRTIO_BLK", Some("y"))));
        assert!(opts.contains(&("CONFIG_MODULES", None)));
        assert!(opts.len() > 60, "{}", opts.len());
    }

    #[test]
    fn options_the_kernel_dropped_are_named() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=\"x\"\n";
        assert_eq!(dropped(fragment, config), ["CONFIG_B", "CONFIG_C"]);
    }
}
