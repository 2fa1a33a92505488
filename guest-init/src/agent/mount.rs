//! `Mount`, `MountOverlay` and `Unmount`: the kernel's mount calls, targets created first.

use std::path::Path;

use fledge_agent::pb;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use tonic::Status;

fn create_target(target: &str) -> Result<(), Status> {
    std::fs::create_dir_all(target)
        .map_err(|e| Status::failed_precondition(format!("cannot create the mount point {target}: {e}")))
}

/// Creates the mount point `target` (a directory, or an empty file to bind a file onto),
/// returning what did not exist, parents first.
fn create_mount_point(target: &Path, file: bool) -> Result<Vec<String>, Status> {
    let failed = |e: std::io::Error| {
        Status::failed_precondition(format!("cannot create the mount point {}: {e}", target.display()))
    };
    let mut missing: Vec<&Path> = target.ancestors().take_while(|p| p.symlink_metadata().is_err()).collect();
    missing.reverse();
    for (i, path) in missing.iter().enumerate() {
        if file && i + 1 == missing.len() {
            std::fs::File::create(path).map_err(failed)?;
        } else {
            std::fs::create_dir(path).map_err(failed)?;
        }
    }
    Ok(missing.iter().map(|p| p.display().to_string()).collect())
}

/// `serial:NAME`: the virtio disk whose serial is NAME, as `/dev/vdX`.
fn device(source: &str) -> Result<String, Status> {
    let Some(serial) = source.strip_prefix("serial:") else { return Ok(source.to_string()) };
    let disks = std::fs::read_dir("/sys/block").map_err(|e| Status::internal(format!("/sys/block: {e}")))?;
    for disk in disks.flatten() {
        let found = std::fs::read_to_string(disk.path().join("serial")).unwrap_or_default();
        if found.trim() == serial {
            return Ok(format!("/dev/{}", disk.file_name().to_string_lossy()));
        }
    }
    Err(Status::not_found(format!("no disk has the serial {serial}")))
}

pub fn mount_fs(request: &pb::MountRequest) -> Result<pb::MountResponse, Status> {
    let failed = |e: nix::Error| {
        Status::failed_precondition(format!("mount {} ({}) on {}: {e}", request.source, request.fstype, request.target))
    };
    let source = device(&request.source)?;
    let target = Path::new(&request.target);
    if request.bind && target.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        return Ok(pb::MountResponse { created: Vec::new(), mounted: false });
    }
    let file = request.bind && Path::new(&source).is_file();
    let created = create_mount_point(Path::new(&request.target), file)?;
    let read_only = if request.read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    if request.bind {
        mount(Some(source.as_str()), request.target.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(failed)?;
        if request.read_only {
            // A bind mount is made read-only by remounting it.
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, request.target.as_str(), None::<&str>, flags, None::<&str>).map_err(failed)?;
        }
    } else {
        let options = (!request.options.is_empty()).then_some(request.options.as_str());
        mount(Some(source.as_str()), request.target.as_str(), Some(request.fstype.as_str()), read_only, options)
            .map_err(failed)?;
    }
    Ok(pb::MountResponse { created, mounted: true })
}

/// The overlay's option string; lower directories are joined with `:` so none may hold one
/// (or a comma, which separates options).
fn overlay_options(request: &pb::MountOverlayRequest) -> Result<String, Status> {
    let all = request.lower.iter().chain([&request.upper, &request.work]);
    if let Some(bad) = all.clone().find(|dir| dir.contains([':', ','])) {
        return Err(Status::invalid_argument(format!("overlay directory {bad} contains ':' or ','")));
    }
    if request.lower.is_empty() {
        return Err(Status::invalid_argument("an overlay needs at least one lower directory"));
    }
    let mut options = format!("lowerdir={}", request.lower.join(":"));
    if !request.upper.is_empty() {
        options += &format!(",upperdir={},workdir={}", request.upper, request.work);
    }
    Ok(options)
}

pub fn mount_overlay(request: &pb::MountOverlayRequest) -> Result<(), Status> {
    let options = overlay_options(request)?;
    for dir in [&request.upper, &request.work].into_iter().filter(|d| !d.is_empty()) {
        create_target(dir)?;
    }
    create_target(&request.target)?;
    mount(Some("overlay"), request.target.as_str(), Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| Status::failed_precondition(format!("mount overlay ({options}) on {}: {e}", request.target)))
}

pub fn unmount(request: &pb::UnmountRequest) -> Result<(), Status> {
    umount2(request.target.as_str(), MntFlags::empty())
        .map_err(|e| Status::failed_precondition(format!("unmount {}: {e}", request.target)))?;
    for path in request.remove.iter().rev() {
        // Only what is still empty goes: anything a step put there stays.
        let _ = std::fs::remove_dir(path).or_else(|_| match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() && meta.len() == 0 => std::fs::remove_file(path),
            _ => Ok(()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_keep_the_lower_order_and_refuse_separators() {
        let request = |lower: &[&str], upper: &str| pb::MountOverlayRequest {
            lower: lower.iter().map(|s| s.to_string()).collect(),
            upper: upper.into(),
            work: if upper.is_empty() { String::new() } else { "/w".into() },
            target: "/t".into(),
        };
        assert_eq!(overlay_options(&request(&["/a", "/b"], "")).unwrap(), "lowerdir=/a:/b");
        assert_eq!(overlay_options(&request(&["/a"], "/u")).unwrap(), "lowerdir=/a,upperdir=/u,workdir=/w");
        assert!(overlay_options(&request(&["/a:b"], "/u")).is_err());
        assert!(overlay_options(&request(&[], "/u")).is_err());
    }
}
