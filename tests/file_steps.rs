//! COPY and ADD as the embedded engine runs them on the host (no VM): owners by name from
//! the image's /etc/passwd and /etc/group, symbolic and octal --chmod, copies from another
//! stage, two heredocs in one step, ADD unpacking a local archive and copying a plain file,
//! ADD from a URL (checksum verified, then served from the cache with the server gone).
//! The base image comes from a real local registry; the result is read back with unsquashfs.

mod common;

use std::process::Command;

use common::*;

/// `unsquashfs -lln` of `image` as (path → "mode owner") pairs, with `squashfs-root` dropped.
fn listing(image: &std::path::Path) -> Vec<(String, String)> {
    let out = run(Command::new("unsquashfs").arg("-lln").arg(image));
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5)?.strip_prefix("squashfs-root")?;
            Some((path.to_string(), format!("{} {}", fields[0], fields[1])))
        })
        .collect()
}

fn cat(image: &std::path::Path, path: &str) -> String {
    let out = run(Command::new("unsquashfs").arg("-cat").arg(image).arg(path));
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn copy_and_add_honour_owners_modes_stages_and_archives() {
    let registry = need!(registry::start());
    let p = Project::new();
    let base = oci::tar_layer(&[
        oci::Entry::Dir("etc", 0o755),
        oci::Entry::File("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n"),
        oci::Entry::File("etc/group", 0o644, b"root:x:0:\nstaff:x:777:app\n"),
    ]);
    let layout = p.path("layout");
    let manifest = oci::add_image(&layout, "amd64", &[base], serde_json::json!({}));
    oci::finish_layout(&layout, "v1", vec![manifest]);
    registry.push(&layout, "v1", "fledge/passwd", false);
    let image = format!("{}/fledge/passwd:v1", registry.host);

    p.write("ctx/notes.txt", "notes\n");
    p.write_mode("ctx/tool.sh", b"#!/bin/sh\n", 0o700);
    p.write_mode("ctx/dir/inner.txt", b"inner\n", 0o640);
    p.write_mode("ctx/dir/run.sh", b"run\n", 0o750);
    // An archive to unpack: a directory and a file owned by 42.
    let archive = oci::tar_gz(&[oci::Entry::Owned {
        path: "pkg/readme",
        mode: 0o640,
        data: b"unpacked\n",
        uid: 42,
        gid: 42,
        xattrs: &[],
    }]);
    std::fs::write(p.path("ctx/pkg.tar.gz"), archive).unwrap();
    let payload = b"downloaded\n".to_vec();
    let checksum = format!("sha256:{}", oci::sha256(&payload));
    let server = http::Server::start([("/files/tool.txt".to_string(), payload)].into());
    let url = format!("{}/files/tool.txt", server.base);
    p.write(
        "ctx/Dockerfile",
        &format!(
            "FROM {image} AS tools\n\
             COPY --chmod=755 tool.sh /opt/tool.sh\n\
             FROM {image}\n\
             COPY --chown=app notes.txt /srv/by-name.txt\n\
             COPY --chown=app:staff notes.txt /srv/by-names.txt\n\
             COPY --chown=1500 notes.txt /srv/by-id.txt\n\
             COPY --chmod=u+x,go-r notes.txt /srv/symbolic.txt\n\
             COPY --chmod=a=rX dir /srv/dir\n\
             COPY --from=tools /opt/tool.sh /srv/tool.sh\n\
             COPY <<one <<two /srv/heredocs/\nfirst\none\nsecond\ntwo\n\
             ADD --chown=app pkg.tar.gz /srv/unpacked/\n\
             ADD pkg.tar.gz /srv/kept/\n\
             ADD notes.txt /srv/added.txt\n\
             ADD --checksum={checksum} {url} /srv/\n"
        ),
    );
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_AGENT", agent_binary()).args([
        "build",
        "ctx/Dockerfile",
        "-o",
        "out.squashfs",
        "--progress",
        "plain",
    ]);
    let out = run(&mut cmd);
    assert_success(&out);
    let artifact = p.path("out.squashfs");
    let entries = listing(&artifact);
    let get = |path: &str| {
        entries
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("{path} in {entries:?}"))
    };

    assert_eq!(get("/srv/by-name.txt"), "-rw-r--r-- 1234/2345", "a user alone brings its primary group");
    assert_eq!(get("/srv/by-names.txt"), "-rw-r--r-- 1234/777");
    assert_eq!(get("/srv/by-id.txt"), "-rw-r--r-- 1500/1500", "a numeric user alone is its own group, as in BuildKit");
    assert_eq!(get("/srv/symbolic.txt"), "-rwx------ 0/0");
    // The directory the copy makes is 0755 whatever a symbolic --chmod says, as BuildKit's
    // (parity case copy-chmod-symbolic); what is copied into it gets the mode.
    assert_eq!(get("/srv/dir"), "drwxr-xr-x 0/0", "the destination made for the contents");
    assert_eq!(get("/srv/dir/inner.txt"), "-r--r--r-- 0/0", "X leaves files without execute alone");
    assert_eq!(get("/srv/dir/run.sh"), "-r-xr-xr-x 0/0");
    assert_eq!(get("/srv/tool.sh"), "-rwxr-xr-x 0/0");
    assert_eq!(cat(&artifact, "/srv/tool.sh"), "#!/bin/sh\n");
    assert_eq!(cat(&artifact, "/srv/heredocs/one"), "first\n");
    assert_eq!(cat(&artifact, "/srv/heredocs/two"), "second\n");
    assert_eq!(get("/srv/unpacked/pkg/readme"), "-rw-r----- 1234/2345", "--chown reaches unpacked files");
    assert_eq!(get("/srv/kept/pkg/readme"), "-rw-r----- 42/42", "unpacked files keep the archive's owners");
    assert_eq!(cat(&artifact, "/srv/kept/pkg/readme"), "unpacked\n");
    assert_eq!(cat(&artifact, "/srv/added.txt"), "notes\n", "a plain file is copied");
    assert_eq!(get("/srv/tool.txt"), "-rw------- 0/0", "downloads are 0600, as in Docker");
    assert_eq!(cat(&artifact, "/srv/tool.txt"), "downloaded\n");

    // With its checksum pinned, the download comes from the cache once the server is gone.
    drop(server);
    std::fs::remove_file(&artifact).unwrap();
    assert_success(&run(p.fledge().env("FLEDGE_AGENT", agent_binary()).args([
        "build",
        "ctx/Dockerfile",
        "-o",
        "out.squashfs",
    ])));
    assert_eq!(cat(&artifact, "/srv/tool.txt"), "downloaded\n");

    // A name the image does not know is root, as BuildKit has it, with a warning naming it.
    p.write("ctx/Dockerfile", &format!("FROM {image}\nCOPY --chown=nobody notes.txt /x\n"));
    let out =
        run(p.fledge().env("FLEDGE_AGENT", agent_binary()).args(["build", "ctx/Dockerfile", "-o", "unknown.squashfs"]));
    assert_success(&out);
    assert!(stderr(&out).contains("user \"nobody\" is not in the image's /etc/passwd"), "{}", stderr(&out));
    let entries = listing(&p.path("unknown.squashfs"));
    assert!(entries.iter().any(|(path, meta)| path == "/x" && meta.ends_with(" 0/0")), "{entries:?}");
}
