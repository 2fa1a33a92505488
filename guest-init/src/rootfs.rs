//! Booting a rootfs image: with `fledge.root=DEVICE` on the kernel command line, PID 1 mounts
//! that device read-only as the lower layer (`fledge.rootfstype=squashfs|erofs|ext4`, default
//! squashfs), a tmpfs as the writable upper layer (`fledge.overlay_size=SIZE`, default half the
//! RAM), an overlay of both, and switches into it before starting the workload. The image
//! itself is never written.

use std::fs;

use nix::mount::{MsFlags, mount};
use nix::unistd::{chdir, chroot};

/// What the kernel command line asks for, if it names a root device.
#[derive(Debug, PartialEq, Eq)]
pub struct RootSpec<'a> {
    pub device: &'a str,
    pub fstype: &'a str,
    pub overlay_size: Option<&'a str>,
}

fn param<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|arg| arg.strip_prefix(name)?.strip_prefix('=')).filter(|v| !v.is_empty())
}

pub fn requested(cmdline: &str) -> Option<RootSpec<'_>> {
    Some(RootSpec {
        device: param(cmdline, "fledge.root")?,
        fstype: param(cmdline, "fledge.rootfstype").unwrap_or("squashfs"),
        overlay_size: param(cmdline, "fledge.overlay_size"),
    })
}

const LOWER: &str = "/.fledge/lower";
const LAYERS: &str = "/.fledge/layers";
const NEW_ROOT: &str = "/.fledge/root";

fn step(what: &str, result: nix::Result<()>) -> Result<(), String> {
    result.map_err(|e| format!("{what}: {e}"))
}

/// Mounts the overlay root and makes it `/`.
pub fn switch(spec: &RootSpec<'_>) -> Result<(), String> {
    for dir in [LOWER, LAYERS, NEW_ROOT] {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    // A driver loaded as a module may still be probing the disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !std::path::Path::new(spec.device).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    step(
        &format!("mount {} ({}) read-only", spec.device, spec.fstype),
        mount(Some(spec.device), LOWER, Some(spec.fstype), MsFlags::MS_RDONLY, None::<&str>),
    )?;
    let size = spec.overlay_size.map(|s| format!("size={s},mode=0755")).unwrap_or_else(|| "mode=0755".into());
    step(
        "mount the tmpfs upper layer",
        mount(Some("tmpfs"), LAYERS, Some("tmpfs"), MsFlags::empty(), Some(size.as_str())),
    )?;
    for dir in ["upper", "work"] {
        fs::create_dir_all(format!("{LAYERS}/{dir}")).map_err(|e| format!("mkdir {LAYERS}/{dir}: {e}"))?;
    }
    let options = format!("lowerdir={LOWER},upperdir={LAYERS}/upper,workdir={LAYERS}/work");
    step(
        "mount the overlay",
        mount(Some("overlay"), NEW_ROOT, Some("overlay"), MsFlags::empty(), Some(options.as_str())),
    )?;
    step("enter the new root", chdir(NEW_ROOT))?;
    step("move the new root to /", mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>))?;
    step("chroot", chroot("."))?;
    step("chdir /", chdir("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_device_and_its_options_come_from_the_command_line() {
        assert_eq!(requested("console=ttyS0 quiet"), None);
        assert_eq!(
            requested("fledge.root=/dev/vda quiet fledge.rootfstype=erofs fledge.overlay_size=64M"),
            Some(RootSpec { device: "/dev/vda", fstype: "erofs", overlay_size: Some("64M") })
        );
        assert_eq!(requested("fledge.root=/dev/vdb").unwrap().fstype, "squashfs");
        assert_eq!(requested("fledge.root= x"), None);
    }
}
