//! `Mount`, `MountOverlay` and `Unmount`: the kernel's mount calls, targets created first.

use fledge_agent::pb;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use tonic::Status;

fn create_target(target: &str) -> Result<(), Status> {
    std::fs::create_dir_all(target)
        .map_err(|e| Status::failed_precondition(format!("cannot create the mount point {target}: {e}")))
}

pub fn mount_fs(request: &pb::MountRequest) -> Result<(), Status> {
    create_target(&request.target)?;
    let flags = if request.read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    let options = (!request.options.is_empty()).then_some(request.options.as_str());
    mount(Some(request.source.as_str()), request.target.as_str(), Some(request.fstype.as_str()), flags, options)
        .map_err(|e| {
            Status::failed_precondition(format!(
                "mount {} ({}) on {}: {e}",
                request.source, request.fstype, request.target
            ))
        })
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
        .map_err(|e| Status::failed_precondition(format!("unmount {}: {e}", request.target)))
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
