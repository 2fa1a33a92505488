//! Finding the guest kernel. Lookup order (first hit wins):
//! 1. `FLEDGE_KERNEL_VMLINUX` / `FLEDGE_KERNEL_BZIMAGE` (either or both; a set variable
//!    naming a missing file is an error, never silently skipped);
//! 2. `$FLEDGE_STATE_DIR/kernel/{vmlinux,bzImage}`;
//! 3. the original Fledge's `/var/lib/volant/kernel/{vmlinux,bzImage}`.

use std::path::{Path, PathBuf};

pub const VMLINUX_VAR: &str = "FLEDGE_KERNEL_VMLINUX";
pub const BZIMAGE_VAR: &str = "FLEDGE_KERNEL_BZIMAGE";
pub const SYSTEM_KERNEL_DIR: &str = "/var/lib/volant/kernel";

/// Where a kernel was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelOrigin {
    Environment,
    StateDir,
    System,
}

/// A guest kernel: a PVH-capable ELF `vmlinux`, a `bzImage`, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub vmlinux: Option<PathBuf>,
    pub bzimage: Option<PathBuf>,
    pub origin: KernelOrigin,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("{var}={path} does not exist")]
    MissingOverride { var: &'static str, path: String },
    #[error("no guest kernel found (looked in {})\n  = help: set FLEDGE_KERNEL_VMLINUX or FLEDGE_KERNEL_BZIMAGE to a kernel image", .tried.join(", "))]
    NotFound { tried: Vec<String> },
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn in_dir(dir: &Path, origin: KernelOrigin) -> Option<Kernel> {
    let vmlinux = existing(dir.join("vmlinux"));
    let bzimage = existing(dir.join("bzImage"));
    (vmlinux.is_some() || bzimage.is_some()).then_some(Kernel { vmlinux, bzimage, origin })
}

/// Finds the kernel; `env` reads environment variables (injected for tests).
pub fn discover(state_dir: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Kernel, KernelError> {
    discover_in(state_dir, Path::new(SYSTEM_KERNEL_DIR), env)
}

/// [`discover`] with `system_dir` standing for [`SYSTEM_KERNEL_DIR`] (injected for tests).
fn discover_in(
    state_dir: Option<&Path>,
    system_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Kernel, KernelError> {
    let mut from_env = Kernel { vmlinux: None, bzimage: None, origin: KernelOrigin::Environment };
    for (var, slot) in [(VMLINUX_VAR, &mut from_env.vmlinux), (BZIMAGE_VAR, &mut from_env.bzimage)] {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(&value);
            if !path.is_file() {
                return Err(KernelError::MissingOverride { var, path: value });
            }
            *slot = Some(path);
        }
    }
    if from_env.vmlinux.is_some() || from_env.bzimage.is_some() {
        return Ok(from_env);
    }
    let mut tried = Vec::new();
    let candidates = state_dir
        .map(|s| (s.join("kernel"), KernelOrigin::StateDir))
        .into_iter()
        .chain([(system_dir.to_path_buf(), KernelOrigin::System)]);
    for (dir, origin) in candidates {
        if let Some(kernel) = in_dir(&dir, origin) {
            return Ok(kernel);
        }
        tried.push(dir.display().to_string());
    }
    Err(KernelError::NotFound { tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn environment_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let vmlinux = dir.path().join("vmlinux-custom");
        std::fs::write(&vmlinux, b"elf").unwrap();
        let v = vmlinux.display().to_string();
        let k = discover(None, |var| (var == VMLINUX_VAR).then(|| v.clone())).unwrap();
        assert_eq!((k.vmlinux.as_deref(), k.origin), (Some(vmlinux.as_path()), KernelOrigin::Environment));
        let err = discover(None, |var| (var == BZIMAGE_VAR).then(|| "/nope/bzImage".to_string())).unwrap_err();
        assert_eq!(err, KernelError::MissingOverride { var: BZIMAGE_VAR, path: "/nope/bzImage".into() });
    }

    #[test]
    fn state_dir_kernel_is_found() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(state.path().join("kernel")).unwrap();
        std::fs::write(state.path().join("kernel/bzImage"), b"bz").unwrap();
        let k = discover(Some(state.path()), no_env).unwrap();
        assert_eq!(k.origin, KernelOrigin::StateDir);
        assert_eq!(k.bzimage, Some(state.path().join("kernel/bzImage")));
        assert_eq!(k.vmlinux, None);
    }

    #[test]
    fn not_found_lists_where_it_looked() {
        let state = tempfile::tempdir().unwrap();
        let system = tempfile::tempdir().unwrap();
        let err = discover_in(Some(state.path()), system.path(), no_env).unwrap_err().to_string();
        assert!(
            err.contains(&state.path().join("kernel").display().to_string())
                && err.contains(&system.path().display().to_string()),
            "{err}"
        );
    }
}
