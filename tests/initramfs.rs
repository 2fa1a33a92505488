//! End-to-end initramfs builds through the real `fledge` binary, read back with GNU cpio,
//! gzip, zstd and lz4.

mod common;

use std::fs;
use std::process::Command;

use common::*;

/// A project with the hello binary, a local agent and Debian's busybox.
fn hello_project(extra: &str) -> Project {
    let p = Project::new();
    let agent = agent_binary();
    fs::copy(&agent, p.path("agent")).unwrap();
    fs::copy(&agent, p.path("hello")).unwrap();
    p.write(
        "fledge.toml",
        &format!(
            "version = \"1\"\nstrategy = \"initramfs\"\n\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n\n[source]\nbusybox_path = \"{}\"\n\n[mappings]\n\"hello\" = \"/usr/bin/hello\"\n{extra}",
            busybox()
        ),
    );
    p.write(
        "manifest.toml",
        "name = \"hello\"\nversion = \"1.0.0\"\nruntime = \"hello\"\n\n[workload]\nentrypoint = \"/usr/bin/hello\"\n",
    );
    p
}

fn listing_of(p: &Project, artifact: &str) -> Vec<String> {
    cpio_listing(&decompress("gzip", &p.path(artifact)))
}

#[track_caller]
fn assert_entry(listing: &[String], name: &str, mode: &str) {
    let line = entry(listing, name).unwrap_or_else(|| panic!("{name} missing from archive:\n{}", listing.join("\n")));
    assert!(line.starts_with(mode), "{name}: expected mode {mode}, got {line}");
    assert!(line.contains(" root     root "), "{name} must be owned by root: {line}");
}

#[test]
fn default_mode_archive_lists_init_busybox_agent_and_mapping() {
    let p = hello_project("");
    assert_success(&run(p.fledge().args(["build", "-o", "hello.cpio.gz"])));
    let l = listing_of(&p, "hello.cpio.gz");
    assert_entry(&l, "init", "-rwxr-xr-x");
    assert_entry(&l, "bin/busybox", "-rwxr-xr-x");
    assert_entry(&l, "bin/kestrel", "-rwxr-xr-x");
    assert_entry(&l, "usr/bin/hello", "-rwxr-xr-x");
    assert_entry(&l, "dev/console", "crw-------");
    for dir in ["bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "usr/bin", "usr/sbin", "usr/lib", "var/log"] {
        assert_entry(&l, dir, "drwxr-xr-x");
    }
    for applet in ["sh", "ls", "mount", "vi"] {
        let line = entry(&l, &format!("bin/{applet}")).unwrap();
        assert!(line.starts_with("lrwxrwxrwx") && line.ends_with("-> busybox"), "{line}");
    }
    // Entries are sorted, so the archive order is the path order.
    let names: Vec<&str> = l.iter().map(|l| entry_name(l)).collect();
    let mut sorted = names.clone();
    sorted.sort_by_key(|n| n.split('/').map(str::to_string).collect::<Vec<_>>());
    assert_eq!(names, sorted);
    // The kernel creates entries in archive order without making parents: each must come first.
    for (i, name) in names.iter().enumerate() {
        if let Some((parent, _)) = name.rsplit_once('/') {
            assert!(names[..i].contains(&parent), "{name} comes before its directory {parent}");
        }
    }
    // GNU gzip accepts the parallel stream, CRC and length included.
    assert_success(&run(Command::new("gzip").args(["-t"]).arg(p.path("hello.cpio.gz"))));
    // The agent bytes are the ones we supplied.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(p.path("hello.manifest.json")).unwrap()).unwrap();
    let url = manifest["initramfs"]["url"].as_str().unwrap();
    assert_eq!(url, format!("file://{}", p.path("hello.cpio.gz").display()));
    assert_eq!(manifest["initramfs"]["format"], "cpio.gz");
    let sum = sha256_hex(&fs::read(p.path("hello.cpio.gz")).unwrap());
    assert_eq!(manifest["initramfs"]["checksum"], format!("sha256:{sum}"));
    assert_eq!(manifest["workload"]["entrypoint"], "/usr/bin/hello");
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        });
    String::from_utf8(out.unwrap().stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn the_embedded_init_is_a_static_executable() {
    let p = hello_project("");
    assert_success(&run(p.fledge().args(["build", "-o", "hello.cpio.gz"])));
    let extract = p.path("init");
    fs::write(&extract, cpio_member(&decompress("gzip", &p.path("hello.cpio.gz")), "init")).unwrap();
    fs::set_permissions(&extract, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let headers = run(Command::new("readelf").args(["--program-headers", "--wide"]).arg(&extract));
    assert_success(&headers);
    let text = String::from_utf8_lossy(&headers.stdout);
    assert!(!text.contains("INTERP"), "init must not need a dynamic loader:\n{text}");
    // Run outside PID 1 it refuses politely instead of taking over the machine.
    let out = run(&mut Command::new(&extract));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("must run as PID 1"));
}

#[test]
fn two_builds_are_byte_identical_even_when_input_mtimes_change() {
    let p = hello_project("");
    assert_success(&run(p.fledge().args(["build", "-o", "out/hello.cpio.gz"])));
    let first = (fs::read(p.path("out/hello.cpio.gz")).unwrap(), fs::read(p.path("out/hello.manifest.json")).unwrap());
    let touched = fs::File::options().write(true).open(p.path("hello")).unwrap();
    touched.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600)).unwrap();
    assert_success(&run(p.fledge().args(["build", "-o", "out/hello.cpio.gz"])));
    assert_eq!(fs::read(p.path("out/hello.cpio.gz")).unwrap(), first.0, "artifact differs between builds");
    assert_eq!(fs::read(p.path("out/hello.manifest.json")).unwrap(), first.1, "manifest differs between builds");
    assert_eq!(fs::read_dir(p.path("out")).unwrap().count(), 2, "no temporary files left behind");
}

#[test]
fn source_date_epoch_sets_every_timestamp() {
    let p = hello_project("");
    assert_success(&run(p.fledge().args(["build", "-o", "a.cpio.gz"]).env("SOURCE_DATE_EPOCH", "86400")));
    let l = listing_of(&p, "a.cpio.gz");
    assert!(l.iter().all(|line| line.contains("Jan  2  1970")), "{}", l.join("\n"));
    let bad = run(p.fledge().args(["build", "-o", "b.cpio.gz"]).env("SOURCE_DATE_EPOCH", "yesterday"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("SOURCE_DATE_EPOCH=yesterday"), "{}", stderr(&bad));
    assert!(!p.path("b.cpio.gz").exists());
}

#[test]
fn non_root_user_can_build() {
    if !nix::unistd::Uid::effective().is_root() {
        // Already unprivileged: a plain build proves the point.
        let p = hello_project("");
        assert_success(&run(p.fledge().args(["build", "-o", "hello.cpio.gz"])));
        return;
    }
    let p = hello_project("");
    for f in ["agent", "hello"] {
        fs::set_permissions(p.path(f), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", FLEDGE, "build"])
        .current_dir(p.dir.path())
        .env("HOME", p.path("home"))
        .env("FLEDGE_CACHE_DIR", p.path("cache"))
        .env_remove("FLEDGE_AGENT");
    let out = run(&mut cmd);
    assert_success(&out);
    let meta = fs::metadata(p.path("hello.cpio.gz")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534, "built by the unprivileged user");
    assert!(p.path("hello.manifest.json").exists());
    assert_entry(&listing_of(&p, "hello.cpio.gz"), "usr/bin/hello", "-rwxr-xr-x");
}

#[test]
fn custom_init_mode_supervises_the_users_init() {
    let p = hello_project("");
    p.write_mode("my-init.sh", b"#!/bin/sh\necho custom\n", 0o755);
    let cfg = fs::read_to_string(p.path("fledge.toml"))
        .unwrap()
        .replace("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n", "[init]\npath = \"my-init.sh\"\n");
    p.write("fledge.toml", &cfg);
    assert_success(&run(p.fledge().args(["build", "-o", "c.cpio.gz"])));
    let archive = decompress("gzip", &p.path("c.cpio.gz"));
    let l = cpio_listing(&archive);
    assert_entry(&l, "init", "-rwxr-xr-x");
    assert_entry(&l, "usr/libexec/fledge/init", "-rwxr-xr-x");
    assert_entry(&l, ".volant_init", "-rw-r--r--");
    assert!(entry(&l, "bin/kestrel").is_none(), "no agent in custom mode");
    assert!(String::from_utf8_lossy(&archive).contains(".volant_init\0"));
}

#[test]
fn none_mode_installs_no_init_but_a_mapping_can_provide_it() {
    let p = hello_project("\"my-init\" = \"/init\"\n");
    p.write_mode("my-init", b"#!/bin/sh\nexec /usr/bin/hello\n", 0o755);
    let cfg = fs::read_to_string(p.path("fledge.toml"))
        .unwrap()
        .replace("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n", "[init]\nnone = true\n");
    p.write("fledge.toml", &cfg);
    assert_success(&run(p.fledge().args(["build", "-o", "n.cpio.gz"])));
    let l = listing_of(&p, "n.cpio.gz");
    let init = entry(&l, "init").unwrap();
    assert!(init.contains(" 30 "), "/init is the user's 30-byte script: {init}");
    assert!(entry(&l, "bin/kestrel").is_none());
}

#[test]
fn directory_mappings_keep_symlinks_and_private_modes() {
    let p = hello_project("\"tree\" = \"/opt/app\"\n");
    p.write_mode("tree/run.sh", b"#!/bin/sh\n", 0o744);
    p.write_mode("tree/secret.key", b"k", 0o600);
    p.write_mode("tree/conf/app.conf", b"x=1\n", 0o664);
    std::os::unix::fs::symlink("/etc/passwd", p.path("tree/passwd-link")).unwrap();
    assert_success(&run(p.fledge().args(["build", "-o", "d.cpio.gz"])));
    let l = listing_of(&p, "d.cpio.gz");
    assert_entry(&l, "opt/app/run.sh", "-rwxr-xr-x");
    assert_entry(&l, "opt/app/secret.key", "-rw-------");
    assert_entry(&l, "opt/app/conf/app.conf", "-rw-r--r--");
    assert_entry(&l, "opt/app/conf", "drwxr-xr-x");
    let link = entry(&l, "opt/app/passwd-link").unwrap();
    assert!(
        link.starts_with("lrwxrwxrwx") && link.ends_with("-> /etc/passwd"),
        "symlink kept, host file not read: {link}"
    );
}

#[test]
fn zstd_lz4_and_uncompressed_archives_decode_with_standard_tools() {
    for (compression, tool, suffix) in [("zstd", "zstd", "cpio.zst"), ("lz4", "lz4", "cpio.lz4"), ("none", "", "cpio")]
    {
        let p = hello_project(&format!("\n[filesystem]\ncompression = \"{compression}\"\n"));
        let cfg = fs::read_to_string(p.path("fledge.toml")).unwrap();
        // [filesystem] must come before [mappings] entries are read as its keys: rewrite order.
        let (head, mappings) = cfg.split_once("[mappings]").unwrap();
        let (mappings, fs_table) = mappings.split_once("\n[filesystem]").unwrap();
        p.write("fledge.toml", &format!("{head}[filesystem]{fs_table}\n[mappings]{mappings}"));
        let out = run(p.fledge().args(["build", "-o", "art"]));
        assert_success(&out);
        let artifact = p.path(&format!("art.{suffix}"));
        assert!(artifact.exists(), "{compression}: suffix follows the compressor");
        let data = if tool.is_empty() { fs::read(&artifact).unwrap() } else { decompress(tool, &artifact) };
        assert_entry(&cpio_listing(&data), "usr/bin/hello", "-rwxr-xr-x");
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(p.path("art.manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["initramfs"]["format"], suffix);
    }
}

#[test]
fn missing_manifest_toml_falls_back_to_defaults_with_a_warning() {
    let p = hello_project("");
    fs::remove_file(p.path("manifest.toml")).unwrap();
    let out = run(p.fledge().args(["build"]));
    assert_success(&out);
    assert!(stderr(&out).contains("manifest.toml not found"), "{}", stderr(&out));
    let name = p.dir.path().file_name().unwrap().to_string_lossy().to_lowercase();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(p.path(&format!("{name}.manifest.json"))).unwrap()).unwrap();
    assert_eq!(manifest["name"], name.as_str());
    assert_eq!(manifest["resources"]["memory_mb"], 256);
}

#[test]
fn host_hard_links_stay_hard_links_and_are_stored_once() {
    let p = hello_project("\"linked\" = \"/data\"\n");
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    p.write_mode("linked/a.bin", &big, 0o644);
    fs::hard_link(p.path("linked/a.bin"), p.path("linked/b.bin")).unwrap();
    assert_success(&run(p.fledge().args(["build", "-o", "h.cpio.gz"])));
    let archive = decompress("gzip", &p.path("h.cpio.gz"));
    let l = cpio_listing(&archive);
    for name in ["data/a.bin", "data/b.bin"] {
        let line = entry(&l, name).unwrap();
        assert!(line.split_whitespace().nth(1) == Some("2"), "{name} has two links: {line}");
    }
    let sizes: Vec<&str> =
        ["data/a.bin", "data/b.bin"].iter().map(|n| entry(&l, n).unwrap().split_whitespace().nth(4).unwrap()).collect();
    assert_eq!(sizes, [big.len().to_string().as_str(), "0"], "the data is stored once, with the first link");
    let out = p.path("extracted");
    fs::create_dir(&out).unwrap();
    assert_success(&pipe_through(Command::new("cpio").args(["-id", "--quiet"]).current_dir(&out), &archive));
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (fs::metadata(out.join("data/a.bin")).unwrap(), fs::metadata(out.join("data/b.bin")).unwrap());
    assert_eq!(a.ino(), b.ino(), "GNU cpio recreates the hard link");
    assert_eq!(fs::read(out.join("data/b.bin")).unwrap(), big);
}

#[test]
fn ctrl_c_stops_the_build_and_leaves_nothing_behind() {
    let p = hello_project("\"big\" = \"/data/big\"\n");
    // A sparse 2 GiB file: cheap to create, slow enough to pack that SIGINT lands mid-build.
    fs::File::create(p.path("big")).unwrap().set_len(2 << 30).unwrap();
    let child =
        p.fledge().args(["build", "-o", "out/big.cpio.gz"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait until packing has started (the temporary file exists), then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_dir(p.path("out")).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "packing never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(p.path("out")).unwrap().count(), 0, "no artifact, manifest or temporary file left");
}

#[test]
fn a_merged_usr_tree_mapped_to_the_root_keeps_busybox_and_the_agent_reachable() {
    let p = hello_project("\"rootfs\" = \"/\"\n");
    fs::create_dir_all(p.path("rootfs/usr/bin")).unwrap();
    std::os::unix::fs::symlink("usr/bin", p.path("rootfs/bin")).unwrap();
    p.write_mode("rootfs/usr/bin/tool", b"#!/bin/sh\n", 0o755);
    assert_success(&run(p.fledge().args(["build", "-o", "m.cpio.gz"])));
    let l = listing_of(&p, "m.cpio.gz");
    let bin = entry(&l, "bin").unwrap();
    assert!(bin.starts_with("lrwxrwxrwx") && bin.ends_with("-> usr/bin"), "{bin}");
    for moved in ["usr/bin/busybox", "usr/bin/kestrel", "usr/bin/tool"] {
        assert_entry(&l, moved, "-rwxr-xr-x");
    }
    assert!(entry(&l, "usr/bin/sh").is_some_and(|s| s.ends_with("-> busybox")));
    assert!(entry(&l, "bin/busybox").is_none(), "nothing is left under the old directory");
}
