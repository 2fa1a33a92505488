//! `strategy = "oci_rootfs"` end to end: an image built by the tests (whiteouts, an opaque
//! directory, hard links, symlinks, owners, xattrs) pushed to a real registry, pulled,
//! flattened and written as squashfs, checked with `unsquashfs`.

mod common;

use std::fs;
use std::process::Command;

use common::oci::{add_image, finish_layout, raw_name_layer};
use common::*;
use serde_json::{Value, json};

fn project_for(image: &str) -> Project {
    let p = Project::new();
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("extra.conf", "x=1\n");
    p.write(
        "fledge.toml",
        &format!("version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"{image}\"\n[filesystem]\ncompression = \"zstd\"\n[mappings]\n\"extra.conf\" = \"/etc/extra.conf\"\n"),
    );
    p.write("manifest.toml", "name = \"web\"\nversion = \"1\"\nruntime = \"web\"\n");
    p
}

/// `unsquashfs -lln` as (path, line) pairs, paths relative to the image root.
fn listing(image: &std::path::Path) -> Vec<(String, String)> {
    let out = run(Command::new("unsquashfs").arg("-lln").arg(image));
    assert_success(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let at = l.find("squashfs-root")?;
            let path = l[at + "squashfs-root".len()..].split(" -> ").next().unwrap().to_string();
            Some((path, l.to_string()))
        })
        .collect()
}

fn line<'a>(list: &'a [(String, String)], path: &str) -> Option<&'a str> {
    list.iter().find(|(p, _)| p == path).map(|(_, l)| l.as_str())
}

#[test]
fn an_image_from_the_registry_becomes_a_squashfs_with_layers_applied() {
    let mut registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/rootfs");
    let p = project_for(&image);
    assert_success(&run(p.fledge().args(["build", "-o", "out/web"])));
    let artifact = p.path("out/web.squashfs");
    let list = listing(&artifact);

    for gone in ["/etc/hostname", "/data/a", "/data/b"] {
        assert!(line(&list, gone).is_none(), "{gone} is whited out:\n{list:#?}");
    }
    assert!(line(&list, "/data/c").is_some() && line(&list, "/etc/motd").is_some());
    assert!(line(&list, "/bin/sh").unwrap().starts_with("lrwxrwxrwx 0/0"), "{list:#?}");
    assert!(line(&list, "/bin/sh").unwrap().ends_with("-> busybox"));
    assert!(line(&list, "/bin/kestrel").unwrap().starts_with("-rwxr-xr-x 0/0"), "agent installed");
    assert!(line(&list, "/etc/extra.conf").unwrap().starts_with("-rw-r--r-- 0/0"), "mapping applied");
    assert!(line(&list, "/home/user/notes").unwrap().starts_with("-rw------- 1000/1000"), "owner kept: {list:#?}");
    assert!(line(&list, "/home/user").unwrap().starts_with("drwx------"), "directory mode kept");
    assert!(line(&list, "/dev/null").unwrap().starts_with("crw-rw-rw- 0/0"), "device node: {list:#?}");
    assert!(line(&list, "/dev/initctl").unwrap().starts_with("prw-rw-rw- 0/0"), "fifo: {list:#?}");
    assert!(list.iter().all(|(_, l)| l.contains("2024-01-01 00:00")), "fixed timestamps");

    // Hard links and xattrs survive: extract (as root) and look.
    if nix::unistd::Uid::effective().is_root() {
        let dir = p.path("x");
        assert_success(&run(Command::new("unsquashfs").arg("-d").arg(&dir).arg(&artifact)));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(dir.join("bin/ls")).unwrap().ino(),
            fs::metadata(dir.join("bin/busybox")).unwrap().ino()
        );
        let xattr = run(Command::new("python3")
            .args(["-c", "import os,sys; print(os.getxattr(sys.argv[1], 'user.fledge').decode())"])
            .arg(dir.join("home/user/notes")));
        assert_success(&xattr);
        assert_eq!(String::from_utf8_lossy(&xattr.stdout).trim(), "yes");
    }

    // The manifest takes the workload from the image config.
    let m: Value = serde_json::from_slice(&fs::read(p.path("out/web.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["rootfs"]["format"], "squashfs");
    assert_eq!(m["workload"]["entrypoint"], "/bin/sh");
    assert_eq!(m["workload"]["args"], json!(["-c", "cat /etc/motd"]));
    assert_eq!(m["workload"]["workdir"], "/home/user");
    assert_eq!(m["env"]["GREETING"], "hi");

    // Offline: the registry is gone, the store has everything, and the result is identical.
    let first = (fs::read(&artifact).unwrap(), fs::read(p.path("out/web.manifest.json")).unwrap());
    registry.stop();
    fs::remove_dir_all(p.path("out")).unwrap();
    assert_success(&run(p.fledge().args(["build", "-o", "out/web"])));
    assert_eq!(fs::read(&artifact).unwrap(), first.0, "byte-identical squashfs");
    assert_eq!(fs::read(p.path("out/web.manifest.json")).unwrap(), first.1, "byte-identical manifest");
}

#[test]
fn a_layer_with_parent_paths_is_refused_and_nothing_is_written() {
    let registry = need!(registry::start());
    let p = Project::new();
    let layout = p.path("layout");
    let manifest = add_image(&layout, "amd64", &[raw_name_layer("../../escape", b"x")], json!({}));
    finish_layout(&layout, "v1", vec![manifest]);
    registry.push(&layout, "v1", "fledge/hostile", false);
    let q = project_for(&format!("{}/fledge/hostile:v1", registry.host));
    let before = q.listing();
    let out = run(q.fledge().args(["build"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("entry '../../escape' has a '..' component; the layer was refused"), "{err}");
    let after: Vec<String> = q.listing().into_iter().filter(|n| n != "state" && n != "cache" && n != "home").collect();
    assert_eq!(after, before, "no artifact or manifest");
}

#[test]
fn a_non_root_user_pulls_and_builds_squashfs() {
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/nonroot");
    let p = project_for(&image);
    let mut cmd = if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", FLEDGE]);
        c
    } else {
        Command::new(FLEDGE)
    };
    cmd.args(["build", "-o", "nr.squashfs"])
        .current_dir(p.dir.path())
        .env("HOME", p.path("home"))
        .env("FLEDGE_STATE_DIR", p.path("state"))
        .env("FLEDGE_CACHE_DIR", p.path("cache"));
    assert_success(&run(&mut cmd));
    let list = listing(&p.path("nr.squashfs"));
    assert!(line(&list, "/home/user/notes").unwrap().starts_with("-rw------- 1000/1000"), "owners kept without root");
}

#[test]
fn an_initramfs_overlays_the_image_under_busybox_init_and_agent() {
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/overlay");
    let p = Project::new();
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write(
        "fledge.toml",
        &format!("version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"{image}\"\nbusybox_path = \"{}\"\n", busybox()),
    );
    p.write("manifest.toml", "name = \"ov\"\nversion = \"1\"\nruntime = \"ov\"\n");
    assert_success(&run(p.fledge().args(["build", "-o", "ov.cpio.gz"])));
    let l = cpio_listing(&decompress("gzip", &p.path("ov.cpio.gz")));
    assert!(entry(&l, "etc/motd").is_some() && entry(&l, "etc/hostname").is_none() && entry(&l, "data/a").is_none());
    let numeric = pipe_through(
        Command::new("cpio").args(["-itv", "--quiet", "--numeric-uid-gid"]),
        &decompress("gzip", &p.path("ov.cpio.gz")),
    );
    let numeric: Vec<String> = String::from_utf8_lossy(&numeric.stdout).lines().map(str::to_string).collect();
    let notes = entry(&numeric, "home/user/notes").unwrap();
    assert!(notes.starts_with("-rw-------") && notes.contains(" 1000     1000 "), "image owner kept: {notes}");
    assert!(entry(&l, "init").unwrap().starts_with("-rwxr-xr-x"));
    assert!(entry(&l, "bin/kestrel").unwrap().starts_with("-rwxr-xr-x"));
    assert!(entry(&l, "bin/sh").unwrap().ends_with("-> busybox"), "the image's own /bin/sh is kept");
    let m: Value = serde_json::from_slice(&fs::read(p.path("ov.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["workload"]["entrypoint"], "/bin/sh", "workload from the image config");
}

fn debugfs(image: &std::path::Path, request: &str) -> String {
    let out = run(Command::new("debugfs").arg("-R").arg(request).arg(image));
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ext4_images_keep_owners_modes_links_and_xattrs_without_root() {
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/ext4");
    let p = project_for(&image);
    let cfg = fs::read_to_string(p.path("fledge.toml")).unwrap().replace("compression = \"zstd\"", "type = \"ext4\"");
    p.write("fledge.toml", &cfg);
    let as_user = |out: &str| assert_success(&build_as(&p, true, out));
    as_user("a.img");
    let img = p.path("a.img");
    let fsck = run(Command::new("e2fsck").args(["-fn"]).arg(&img));
    assert_success(&fsck);

    let home = debugfs(&img, "stat /home/user/notes");
    assert!(home.contains("Mode:  0600") && home.contains("User:  1000   Group:  1000"), "{home}");
    assert!(home.contains("mtime: 0x65920080"), "mtime is SOURCE_DATE_EPOCH's default: {home}");
    let ls = debugfs(&img, "stat /bin/ls");
    assert!(ls.contains("Links: 2"), "hard link kept: {ls}");
    assert!(debugfs(&img, "ea_get /home/user/notes user.fledge").contains("yes"));
    let etc = debugfs(&img, "ls -l /etc");
    assert!(etc.contains("motd") && etc.contains("extra.conf") && !etc.contains("hostname"), "{etc}");
    assert!(debugfs(&img, "stat /bin/kestrel").contains("Mode:  0755"));
    let null = debugfs(&img, "stat /dev/null");
    assert!(
        null.contains("Type: character special") && null.contains("Device major/minor number: 01:03"),
        "device node made without root: {null}"
    );
    assert!(debugfs(&img, "stat /dev/initctl").contains("Type: FIFO"));

    as_user("b.img");
    assert_eq!(fs::read(&img).unwrap(), fs::read(p.path("b.img")).unwrap(), "byte-identical ext4 images");
    kernel_reads("ext4", &img, &p.path("mnt"), true);
    let m: Value = serde_json::from_slice(&fs::read(p.path("a.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["rootfs"]["format"], "ext4");
}

/// The kernel must read what the checkers accept: mount the image read-only through a loop
/// device (the test's own privilege; Fledge never mounts) and check the layered test image's
/// owners, xattrs, hard links, devices and whiteouts.
fn kernel_reads(fstype: &str, img: &std::path::Path, mnt: &std::path::Path, devices: bool) {
    skip_unless!(nix::unistd::Uid::effective().is_root(), "the kernel mount check needs root for a loop device");
    fs::create_dir_all(mnt).unwrap();
    let mount = run(Command::new("mount").args(["-t", fstype, "-o", "loop,ro"]).arg(img).arg(mnt));
    skip_unless!(
        mount.status.success(),
        "the kernel mount check cannot mount {fstype}: {}",
        String::from_utf8_lossy(&mount.stderr).trim()
    );
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = |p: &str| fs::symlink_metadata(mnt.join(p));
    let checks = std::panic::catch_unwind(|| {
        let notes = meta("home/user/notes").unwrap();
        assert_eq!((notes.mode() & 0o7777, notes.uid(), notes.gid()), (0o600, 1000, 1000));
        assert_eq!(lgetxattr(&mnt.join("home/user/notes"), "user.fledge"), b"yes");
        assert_eq!(meta("bin/ls").unwrap().nlink(), 2);
        if devices {
            let null = meta("dev/null").unwrap();
            assert!(null.file_type().is_char_device() && null.rdev() == nix::sys::stat::makedev(1, 3));
        }
        assert!(meta("dev/initctl").unwrap().file_type().is_fifo());
        let etc: Vec<String> =
            fs::read_dir(mnt.join("etc")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(etc.contains(&"motd".to_string()) && !etc.contains(&"hostname".to_string()), "{etc:?}");
    });
    assert_success(&run(Command::new("umount").arg(mnt)));
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
}

fn lgetxattr(path: &std::path::Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut value = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of the length passed.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    assert!(n >= 0, "lgetxattr: {}", std::io::Error::last_os_error());
    value.truncate(n as usize);
    value
}

fn dump_erofs(image: &std::path::Path, args: &[&str]) -> String {
    let out = run(Command::new("dump.erofs").args(args).arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_as(p: &Project, unprivileged: bool, out: &str) -> std::process::Output {
    let mut cmd = if unprivileged && nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", FLEDGE]);
        c
    } else {
        Command::new(FLEDGE)
    };
    // Each user gets a store of their own (another user's store is, rightly, not writable).
    let state = if unprivileged { "state-user" } else { "state" };
    cmd.args(["build", "-o", out])
        .current_dir(p.dir.path())
        .env("HOME", p.path("home"))
        .env("FLEDGE_STATE_DIR", p.path(state))
        .env("FLEDGE_CACHE_DIR", p.path("cache"));
    run(&mut cmd)
}

#[test]
fn erofs_images_have_full_fidelity_as_root_and_say_why_not_otherwise() {
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/erofs");
    let p = project_for(&image);
    let cfg = fs::read_to_string(p.path("fledge.toml")).unwrap().replace("compression = \"zstd\"", "type = \"erofs\"");
    p.write("fledge.toml", &cfg);

    if nix::unistd::Uid::effective().is_root() {
        assert_success(&build_as(&p, false, "a.erofs"));
        let img = p.path("a.erofs");
        assert_success(&run(Command::new("fsck.erofs").arg(&img)));
        let notes = dump_erofs(&img, &["--path=/home/user/notes"]);
        assert!(notes.contains("Uid: 1000   Gid: 1000") && notes.contains("Access: 0600"), "{notes}");
        let stats = dump_erofs(&img, &["-S"]);
        assert!(stats.contains("char dev count:\t\t1") && stats.contains("FIFO file count:\t\t1"), "{stats}");
        assert!(dump_erofs(&img, &["--path=/bin/ls"]).contains("Links: 2"), "hard link kept");
        assert!(!dump_erofs(&img, &["--path=/etc/hostname"]).contains("File :"), "whiteout applied");
        // fsck.erofs 1.5 does not extract xattrs: check that the inode carries one, by name.
        assert!(!notes.contains("Xattr size: 0"), "{notes}");
        assert!(fs::read(&img).unwrap().windows(6).any(|w| w == b"fledge"), "the user.fledge xattr is stored");
        assert_success(&build_as(&p, false, "b.erofs"));
        assert_eq!(fs::read(&img).unwrap(), fs::read(p.path("b.erofs")).unwrap(), "byte-identical erofs images");
    }

    // Without root the device node and the foreign owner cannot be kept: a clear refusal.
    let refused = build_as(&p, true, "n.erofs");
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(refused.status.code(), Some(1));
        let err = stderr(&refused);
        assert!(
            err.contains("an erofs image of this tree needs root: /dev/null is a device node")
                && err.contains("squashfs"),
            "{err}"
        );
        assert!(!p.path("n.erofs").exists());
    }
}

#[test]
fn erofs_builds_without_root_when_the_image_needs_no_privilege() {
    let p = Project::new();
    let layout = p.path("layout");
    let bb = fs::read(busybox()).unwrap();
    let layer = common::oci::tar_layer(&[
        common::oci::Entry::Dir("bin", 0o755),
        common::oci::Entry::File("bin/busybox", 0o755, &bb),
        common::oci::Entry::Symlink("bin/sh", "busybox"),
    ]);
    let manifest = add_image(&layout, "amd64", &[layer], json!({}));
    finish_layout(&layout, "v1", vec![manifest]);
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("fledge.toml", "version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"oci-layout:layout:v1\"\n[filesystem]\ntype = \"erofs\"\ncompression = \"lz4hc\"\n");
    p.write("manifest.toml", "name = \"e\"\nversion = \"1\"\nruntime = \"e\"\n");
    assert_success(&build_as(&p, true, "plain.erofs"));
    let img = p.path("plain.erofs");
    assert_success(&run(Command::new("fsck.erofs").arg(&img)));
    assert!(dump_erofs(&img, &["--path=/bin/kestrel"]).contains("Uid: 0   Gid: 0"), "root-owned via --all-root");
}

#[test]
fn long_names_escaping_links_and_a_merged_usr_bin_stay_inside_the_image() {
    let p = Project::new();
    let layout = p.path("layout");
    let long = format!("opt/{}/{}", "d".repeat(90), "f".repeat(80));
    let victim = tempfile::tempdir().unwrap();
    let escape_target = format!("../../../../../../..{}", victim.path().display());
    let lower = common::oci::tar_layer(&[
        common::oci::Entry::Dir("usr", 0o755),
        common::oci::Entry::Dir("usr/bin", 0o755),
        common::oci::Entry::Symlink("bin", "usr/bin"),
        common::oci::Entry::File(&long, 0o644, b"long"),
        common::oci::Entry::Symlink("escape", &escape_target),
    ]);
    let upper = common::oci::tar_layer(&[common::oci::Entry::File("escape/pwned", 0o644, b"gotcha")]);
    let manifest = add_image(&layout, "amd64", &[lower, upper], json!({}));
    finish_layout(&layout, "v1", vec![manifest]);
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("manifest.toml", "name = \"x\"\nversion = \"1\"\nruntime = \"x\"\n");
    for (kind, out) in [("squashfs", "x.squashfs"), ("ext4", "x.img")] {
        p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"oci-layout:layout:v1\"\n[filesystem]\ntype = \"{kind}\"\n"));
        assert_success(&run(p.fledge().args(["build", "-o", out])));
        assert_eq!(fs::read_dir(victim.path()).unwrap().count(), 0, "{kind}: nothing written outside the image");
    }
    let list = listing(&p.path("x.squashfs"));
    assert!(line(&list, &format!("/{long}")).is_some(), "long name kept: {list:#?}");
    let confined = format!("{}/pwned", victim.path().display());
    assert!(line(&list, &confined).is_some(), "the escaping link resolved inside the image: {list:#?}");
    assert!(line(&list, "/bin").unwrap().contains("-> usr/bin"), "/bin stays a symlink");
    assert!(line(&list, "/usr/bin/kestrel").unwrap().starts_with("-rwxr-xr-x"), "agent placed through /bin -> usr/bin");
    let ext4_long = debugfs(&p.path("x.img"), &format!("stat /{long}"));
    assert!(ext4_long.contains("Size: 4"), "{ext4_long}");
    assert!(debugfs(&p.path("x.img"), &format!("stat {confined}")).contains("Size: 6"));

    // SOURCE_DATE_EPOCH sets every timestamp of a rootfs image too.
    p.write("fledge.toml", "version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"oci-layout:layout:v1\"\n");
    assert_success(&run(p.fledge().args(["build", "-o", "epoch.squashfs"]).env("SOURCE_DATE_EPOCH", "86400")));
    let list = listing(&p.path("epoch.squashfs"));
    assert!(list.iter().all(|(_, l)| l.contains("1970-01-02 00:00")), "{list:#?}");
}

/// The config of a build of `oci-layout:layout:v1` packed as `kind` (an initramfs, or a
/// rootfs of that filesystem type).
fn layout_config(kind: &str) -> String {
    let agent = "[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n";
    match kind {
        "initramfs" => format!(
            "version = \"1\"\nstrategy = \"initramfs\"\n{agent}[source]\nimage = \"oci-layout:layout:v1\"\nbusybox_path = \"{}\"\n",
            busybox()
        ),
        _ => format!(
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n{agent}[source]\nimage = \"oci-layout:layout:v1\"\n[filesystem]\ntype = \"{kind}\"\n"
        ),
    }
}

#[test]
fn every_packer_refuses_names_linux_cannot_hold_and_writes_nothing() {
    let name = "n".repeat(300);
    let target = format!("/{}", "t".repeat(5000));
    let deep: Vec<String> = (0..25).map(|i| format!("{i:02}{}", "d".repeat(198))).collect();
    let deep = format!("opt/{}/f", deep.join("/"));
    let long_name = format!("opt/{name}");
    // (what is wrong, the layer's entry, what the error must say)
    let defects: [(&str, common::oci::Entry<'_>, [&str; 2]); 3] = [
        ("a 300-byte name", common::oci::Entry::File(&long_name, 0o644, b"x"), ["/opt/nnnnnnnnnn", "255 bytes"]),
        ("a 5000-byte link target", common::oci::Entry::Symlink("opt/link", &target), ["/opt/link", "4095 bytes"]),
        ("a 5000-byte path", common::oci::Entry::File(&deep, 0o644, b"x"), ["/opt/00dddddddd", "4095 bytes"]),
    ];
    let mut failures = Vec::new();
    for (defect, entry, expect) in defects {
        let p = Project::new();
        let manifest = add_image(&p.path("layout"), "amd64", &[common::oci::tar_layer(&[entry])], json!({}));
        finish_layout(&p.path("layout"), "v1", vec![manifest]);
        fs::copy(agent_binary(), p.path("agent")).unwrap();
        p.write("manifest.toml", "name = \"x\"\nversion = \"1\"\nruntime = \"x\"\n");
        for (kind, out) in
            [("squashfs", "x.squashfs"), ("ext4", "x.img"), ("erofs", "x.erofs"), ("initramfs", "x.cpio.gz")]
        {
            p.write("fledge.toml", &layout_config(kind));
            let outputs = || -> Vec<String> {
                p.listing().into_iter().filter(|n| !["cache", "home", "state"].contains(&n.as_str())).collect()
            };
            let before = outputs();
            let result = run(p.fledge().args(["build", "-o", out]));
            let stderr = String::from_utf8_lossy(&result.stderr);
            let after = outputs();
            if result.status.code() != Some(1) || !expect.iter().all(|e| stderr.contains(e)) || after != before {
                failures.push(format!(
                    "{kind} with {defect}: exit {:?}, files {after:?} (before {before:?}), expected {expect:?} in:\n{stderr}",
                    result.status.code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What a layer is, the layer, and the error it must get (or `None`: it must build).
type LimitCase = (&'static str, Vec<u8>, Option<[&'static str; 2]>);

/// A layer of `entries` tar entries: directories `d0000`… of up to 1023 empty files each.
fn wide_layer(entries: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::with_capacity(entries * 512 + 1024));
    let (mut written, mut dir) = (0, 0);
    while written < entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        builder.append_data(&mut h, format!("d{dir:04}"), &[][..]).unwrap();
        written += 1;
        for file in 0..1023.min(entries - written) {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            builder.append_data(&mut h, format!("d{dir:04}/f{file:04}"), &[][..]).unwrap();
            written += 1;
        }
        dir += 1;
    }
    builder.into_inner().unwrap()
}

/// A layer of `n` files `/cI/d/d/…/f`, each 2041 components deep, in separate chains.
fn chains_layer(n: usize) -> Vec<u8> {
    let paths: Vec<String> = (0..n).map(|i| format!("c{i}/{}f", "d/".repeat(2039))).collect();
    let entries: Vec<_> = paths.iter().map(|p| common::oci::Entry::File(p, 0o644, b"")).collect();
    common::oci::tar_layer(&entries)
}

/// Starts `fledge build -o x.img` in `p`, sends SIGTERM 300 ms after the progress line
/// starting with `phase`, and returns what went wrong: the build must exit 143 within a
/// deadline that only catches a hang (the time it took is printed) and leave nothing beside
/// its output.
fn stopped_while(p: &Project, phase: &str) -> Option<String> {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let mut child = p
        .fledge()
        .args(["build", "--progress", "plain", "-o", "x.img"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    if !lines.by_ref().map_while(Result::ok).any(|l| l.starts_with(phase)) {
        return Some(format!("the build never printed {phase:?}: {:?}", child.wait()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            return Some(format!("SIGTERM during {phase:?}: still running after 60 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("SIGTERM during {phase:?}: stopped after {:?}", signalled.elapsed());
    let left: Vec<_> = fs::read_dir(p.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("x.") || name.starts_with(".x."))
        .collect();
    (status.code() != Some(143) || !left.is_empty())
        .then(|| format!("SIGTERM during {phase:?}: {status}, left beside the output: {left:?}"))
}

#[test]
fn layers_at_the_limits_flatten_and_one_past_them_is_refused() {
    // "/d" 2046 times and "/ff": a 4095-byte path 2047 components deep, the deepest a path
    // of one-byte names can be. One byte more, or one component more, is past the limit.
    let deep = |dirs: usize, last: &str| format!("{}{last}", "d/".repeat(dirs));
    let (at_limit, longer, deeper) = (deep(2046, "ff"), deep(2046, "fff"), deep(2047, "f"));
    let max_entries = 1 << 20;
    let cases: Vec<LimitCase> = vec![
        (
            "a 4095-byte path, 2047 deep",
            common::oci::tar_layer(&[common::oci::Entry::File(&at_limit, 0o644, b"x")]),
            None,
        ),
        (
            "a 4096-byte path",
            common::oci::tar_layer(&[common::oci::Entry::File(&longer, 0o644, b"x")]),
            Some(["4096 bytes", "at most 4095"]),
        ),
        (
            "a path 2048 deep",
            common::oci::tar_layer(&[common::oci::Entry::File(&deeper, 0o644, b"x")]),
            Some(["4096 bytes", "at most 4095"]),
        ),
        ("1048576 entries", wide_layer(max_entries), None),
        ("1048577 entries", wide_layer(max_entries + 1), Some(["more than 1048576 entries", "entry 1048577"])),
        // A few KiB of layer per chain imply 2041 directories each: the directories count as
        // entries the layer adds, and their paths (4 MiB a chain) count towards the image's.
        (
            "1024 chains 2041 deep",
            chains_layer(1024),
            Some(["adds more than 1048576 entries", "parent directories its entries imply"]),
        ),
        (
            "40 chains 2041 deep",
            chains_layer(40),
            Some(["paths add up to more than 134217728 bytes", "nest the content less deeply"]),
        ),
    ];
    let mut failures = Vec::new();
    for (what, layer, refused) in cases {
        let p = Project::new();
        let manifest = common::oci::add_plain_image(&p.path("layout"), &[layer]);
        finish_layout(&p.path("layout"), "v1", vec![manifest]);
        fs::copy(agent_binary(), p.path("agent")).unwrap();
        p.write("manifest.toml", "name = \"x\"\nversion = \"1\"\nruntime = \"x\"\n");
        p.write("fledge.toml", &layout_config("ext4"));
        if what == "1048576 entries" {
            // The layer is large enough to stop in the middle of each phase.
            for phase in ["=> Flattening", "=> Writing"] {
                failures.extend(stopped_while(&p, phase));
            }
        }
        let started = std::time::Instant::now();
        let out = run(p.fledge().args(["build", "-o", "x.img"]));
        eprintln!("{what}: {:?}", started.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let built = p.path("x.img").exists();
        match refused {
            None if !out.status.success() || !built => failures.push(format!("{what}: did not build:\n{stderr}")),
            Some(expect) if out.status.code() != Some(1) || built || !expect.iter().all(|e| stderr.contains(e)) => {
                failures.push(format!(
                    "{what}: exit {:?}, artifact {built}, expected {expect:?} in:\n{stderr}",
                    out.status.code()
                ))
            }
            _ => {}
        }
        if refused.is_none() && built && what.contains("deep") {
            let listing = debugfs(&p.path("x.img"), &format!("stat /{at_limit}"));
            if !listing.contains("Type: regular") {
                failures.push(format!("{what}: /{} is not in the image:\n{listing}", &at_limit[..40]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn btrfs_needs_root_and_xfs_says_why_it_is_not_available() {
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/legacy");
    let p = project_for(&image);
    let cfg = fs::read_to_string(p.path("fledge.toml")).unwrap();
    p.write("fledge.toml", &cfg.replace("compression = \"zstd\"", "type = \"xfs\""));
    let out = run(p.fledge().args(["build", "-o", "x.img"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("type = \"xfs\" is not available: Debian's mkfs.xfs"));

    p.write("fledge.toml", &cfg.replace("compression = \"zstd\"", "type = \"btrfs\""));
    let out = build_as(&p, true, "user.img");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("btrfs images need root"), "{out:?}");
    assert!(!p.path("user.img").exists() && !p.path("user.manifest.json").exists());
    skip_unless!(nix::unistd::Uid::effective().is_root(), "the btrfs build needs root");
    let out = build_as(&p, false, "dev.img");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/null is a device node"), "{out:?}");

    // The same tree without the device node builds, and the kernel reads it back.
    let bb = fs::read(busybox()).unwrap();
    let layer = common::oci::tar_layer(&[
        common::oci::Entry::Dir("bin", 0o755),
        common::oci::Entry::File("bin/busybox", 0o755, &bb),
        common::oci::Entry::HardLink("bin/ls", "bin/busybox"),
        common::oci::Entry::Dir("etc", 0o755),
        common::oci::Entry::File("etc/motd", 0o644, b"motd\n"),
        common::oci::Entry::Dir("dev", 0o755),
        common::oci::Entry::Special("dev/initctl", tar::EntryType::Fifo, 0, 0),
        common::oci::Entry::Dir("home", 0o755),
        common::oci::Entry::Dir("home/user", 0o700),
        common::oci::Entry::Owned {
            path: "home/user/notes",
            mode: 0o600,
            data: b"private\n",
            uid: 1000,
            gid: 1000,
            xattrs: &[("user.fledge", b"yes")],
        },
    ]);
    let manifest = add_image(&p.path("layout"), "amd64", &[layer], json!({}));
    finish_layout(&p.path("layout"), "v1", vec![manifest]);
    p.write(
        "fledge.toml",
        &cfg.replace("compression = \"zstd\"", "type = \"btrfs\"").replace(&image, "oci-layout:layout:v1"),
    );
    assert_success(&build_as(&p, false, "root.img"));
    assert_success(&run(Command::new("btrfs").args(["check", "--readonly"]).arg(p.path("root.img"))));
    kernel_reads("btrfs", &p.path("root.img"), &p.path("mnt"), false);
}
