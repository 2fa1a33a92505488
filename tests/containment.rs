//! Nothing outside the build context reaches an image: every symlink of a context (and of a
//! named local context, a `.dockerignore`, the Dockerfile itself) resolves inside that
//! directory, as BuildKit resolves it, so a link to `/etc/shadow` means `<context>/etc/shadow`.
//! A symlink inside a copied tree stays a symlink. ADD's archive entries land inside the
//! destination, whatever their names say. Builds run on the host only (no VM); the results are
//! read back with unsquashfs.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// A file outside every context, whose content must never appear in an image.
const SECRET: &str = "HOST-SECRET-6f1c";

struct Case {
    p: Project,
}

impl Case {
    /// A project with `outside/secret.txt` (the host file an attacker aims at) and a `ctx/`.
    fn new() -> Self {
        let p = Project::new();
        p.write("outside/secret.txt", SECRET);
        p.write("outside/ignore", "keep.txt\n");
        p.write("outside/Dockerfile", "FROM scratch\nCOPY keep.txt /k\n");
        std::fs::create_dir_all(p.path("ctx")).unwrap();
        Self { p }
    }

    fn outside(&self, name: &str) -> String {
        self.p.path("outside").join(name).display().to_string()
    }

    fn link(&self, target: &str, at: &str) {
        let at = self.p.path(at);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(target, at).unwrap();
    }

    fn build(&self, dockerfile: &str, extra: &[&str]) -> Output {
        self.p.write("ctx/Dockerfile", dockerfile);
        self.build_file("ctx/Dockerfile", extra)
    }

    fn build_file(&self, dockerfile: &str, extra: &[&str]) -> Output {
        let _ = std::fs::remove_file(self.p.path("out.squashfs"));
        let mut cmd = self.p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary())
            .args(["build", dockerfile, "--context", "ctx", "-o", "out.squashfs", "--progress", "plain"])
            .args(extra);
        run(&mut cmd)
    }

    fn artifact(&self) -> std::path::PathBuf {
        self.p.path("out.squashfs")
    }
}

/// Every byte of the image's files, extracted (as an unprivileged listing would not show
/// contents): the secret must be in none of them.
fn assert_no_secret(image: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    let out = run(Command::new("unsquashfs").arg("-no-xattrs").arg("-d").arg(&dest).arg(image));
    assert_success(&out);
    let grep = run(Command::new("grep").args(["-r", "-l", SECRET]).arg(&dest));
    assert!(grep.stdout.is_empty(), "the host's secret reached the image: {}", String::from_utf8_lossy(&grep.stdout));
}

/// A failed build: non-zero, the message says the path is not found, no artifact.
#[track_caller]
fn assert_not_found(case: &Case, out: &Output, what: &str) {
    let err = stderr(out);
    if out.status.success() {
        assert_no_secret(&case.artifact());
        panic!("{what}: the build succeeded; BuildKit resolves the link inside the context and fails:\n{err}");
    }
    assert!(err.contains("not found"), "{what}: {err}");
    assert!(!err.contains(SECRET), "{what}: the error shows the secret: {err}");
    assert!(!case.artifact().exists(), "{what}: an artifact was left");
}

fn unsquashfs_cat(image: &Path, path: &str) -> String {
    let out = run(Command::new("unsquashfs").arg("-cat").arg(image).arg(path));
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unsquashfs_list(image: &Path) -> String {
    let out = run(Command::new("unsquashfs").arg("-lln").arg(image));
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn context_symlinks_never_reach_host_files() {
    let case = Case::new();
    let secret = case.outside("secret.txt");
    let outside_dir = case.outside("");
    case.link(&secret, "ctx/abs");
    case.link(&format!("../../../../../../../../../..{secret}"), "ctx/rel");
    case.link(outside_dir.trim_end_matches('/'), "ctx/dir");
    for (what, dockerfile) in [
        ("an absolute link to a host file", "FROM scratch\nCOPY abs /s\n"),
        ("a relative link climbing out", "FROM scratch\nCOPY rel /s\n"),
        ("a directory link used as a parent", "FROM scratch\nCOPY dir/secret.txt /s\n"),
        ("a directory link copied whole", "FROM scratch\nCOPY dir /s\n"),
        ("ADD of a link", "FROM scratch\nADD abs /s\n"),
    ] {
        let out = case.build(dockerfile, &[]);
        assert_not_found(&case, &out, what);
    }
    // A wildcard that matches nothing copies nothing (BuildKit allows it in COPY).
    let out = case.build("FROM scratch\nCOPY dir/*.txt /s/\n", &[]);
    assert_success(&out);
    assert_no_secret(&case.artifact());
}

#[test]
fn context_symlinks_resolve_inside_the_context() {
    let case = Case::new();
    let p = &case.p;
    // An absolute link means the same path inside the context, as in BuildKit.
    p.write("ctx/data/real.txt", "inside\n");
    case.link("/data/real.txt", "ctx/abs");
    case.link("../../../data/real.txt", "ctx/climb");
    case.link("/data", "ctx/datalink");
    // A link inside a copied directory is copied as a link, pointing wherever it points.
    p.write("ctx/tree/file", "file\n");
    case.link(&case.outside("secret.txt"), "ctx/tree/escape");
    let out = case.build(
        "FROM scratch\nCOPY abs /a\nCOPY climb /c\nCOPY datalink/real.txt /d\nCOPY datalink/*.txt /w/\nCOPY tree /tree\n",
        &[],
    );
    assert_success(&out);
    let image = case.artifact();
    assert_eq!(unsquashfs_cat(&image, "/a"), "inside\n");
    assert_eq!(unsquashfs_cat(&image, "/c"), "inside\n");
    assert_eq!(unsquashfs_cat(&image, "/d"), "inside\n");
    assert_eq!(unsquashfs_cat(&image, "/w/real.txt"), "inside\n");
    let listing = unsquashfs_list(&image);
    let escape = format!("squashfs-root/tree/escape -> {}", case.outside("secret.txt"));
    assert!(listing.contains(&escape), "the link inside the tree stays a link: {listing}");
    assert_no_secret(&image);
}

#[test]
fn cache_keys_never_read_host_files() {
    // The cache key of a copy is computed before the copy: it must resolve links the same
    // way, so editing the host file busts nothing and the build fails the same way twice.
    let case = Case::new();
    case.link(&case.outside("secret.txt"), "ctx/abs");
    let first = case.build("FROM scratch\nCOPY abs /s\n", &[]);
    assert_not_found(&case, &first, "first build");
    case.p.write("outside/secret.txt", &format!("{SECRET} changed"));
    let second = case.build("FROM scratch\nCOPY abs /s\n", &[]);
    assert_not_found(&case, &second, "second build");
}

#[test]
fn named_local_contexts_are_contained_too() {
    let case = Case::new();
    let p = &case.p;
    p.write("assets/inside.txt", "asset\n");
    case.link(&case.outside("secret.txt"), "assets/abs");
    case.link(case.outside("").trim_end_matches('/'), "assets/dir");
    let assets = format!("assets={}", p.path("assets").display());
    for (what, dockerfile) in [
        ("a link in a named context", "FROM scratch\nCOPY --from=assets abs /s\n"),
        ("a directory link in a named context", "FROM scratch\nCOPY --from=assets dir/secret.txt /s\n"),
    ] {
        let out = case.build(dockerfile, &["--build-context", &assets]);
        assert_not_found(&case, &out, what);
    }
}

#[test]
fn dockerignore_and_dockerfile_links_stay_inside() {
    let case = Case::new();
    let p = &case.p;
    p.write("ctx/keep.txt", "kept\n");
    // A .dockerignore linked out of the context would exclude keep.txt if it were read.
    case.link(&case.outside("ignore"), "ctx/.dockerignore");
    let out = case.build("FROM scratch\nCOPY keep.txt /k\n", &[]);
    assert_success(&out);
    assert_eq!(unsquashfs_cat(&case.artifact(), "/k"), "kept\n");

    // A Dockerfile that is a link out of its directory is not read through the link.
    case.link(&case.outside("Dockerfile"), "ctx/Linked.Dockerfile");
    let out = case.build_file("ctx/Linked.Dockerfile", &[]);
    assert!(!out.status.success(), "a Dockerfile linked out of its directory was read: {}", stderr(&out));
    assert!(stderr(&out).contains("Linked.Dockerfile"), "the error names the file: {}", stderr(&out));
    assert!(!case.artifact().exists());
}

/// A tar archive of (name, link target) entries written as raw headers, so names keep their
/// `..` and leading `/` (the tar crate would refuse them).
fn raw_tar(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, link) in entries {
        let mut header = tar::Header::new_gnu();
        let data = format!("{name}\n");
        header.set_entry_type(if link.is_some() { tar::EntryType::Symlink } else { tar::EntryType::Regular });
        header.set_mode(0o644);
        header.set_size(if link.is_some() { 0 } else { data.len() as u64 });
        header.set_mtime(0);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, if link.is_some() { &b""[..] } else { data.as_bytes() }).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn add_archives_cannot_climb_out_of_the_destination() {
    // Each archive either unpacks entirely inside /dest or is refused naming the entry (as
    // BuildKit refuses a breakout); nothing else of the image changes.
    let case = Case::new();
    let p = &case.p;
    p.write("ctx/marker", "m\n");
    for (what, entries) in [
        ("a '..' name", &[("../../climbed", None)][..]),
        ("an absolute name", &[("/absolute", None)][..]),
        ("a write through an absolute link", &[("etc", Some("/etc")), ("etc/written", None)][..]),
        ("a write through a climbing link", &[("up", Some("../../..")), ("up/escaped", None)][..]),
    ] {
        std::fs::write(p.path("ctx/evil.tar"), raw_tar(entries)).unwrap();
        let out = case.build("FROM scratch\nCOPY marker /etc/marker\nADD evil.tar /dest/\n", &[]);
        if !out.status.success() {
            let err = stderr(&out);
            assert!(err.contains("evil.tar"), "{what}: the error names the archive: {err}");
            assert!(!case.artifact().exists(), "{what}: an artifact was left");
            continue;
        }
        let listing = unsquashfs_list(&case.artifact());
        for line in listing.lines() {
            let Some(name) = line.split_whitespace().nth(5) else { continue };
            let inside = ["squashfs-root", "squashfs-root/etc", "squashfs-root/etc/marker", "squashfs-root/dest"]
                .contains(&name)
                || name.starts_with("squashfs-root/dest/");
            assert!(inside, "{what}: an archive entry landed outside /dest: {name}\n{listing}");
        }
    }
}

#[test]
fn copy_from_a_stage_resolves_links_inside_that_stage() {
    let case = Case::new();
    let p = &case.p;
    p.write("ctx/real.txt", "stage file\n");
    // Links inside a copied directory stay links in the stage: one to a path of the stage,
    // one to the host's secret (which, in the stage, does not exist).
    std::fs::create_dir_all(p.path("ctx/links")).unwrap();
    case.link("/data/real.txt", "ctx/links/abs");
    case.link(&case.outside("secret.txt"), "ctx/links/escape");
    let stage = "FROM scratch AS files\nCOPY real.txt /data/real.txt\nCOPY links /\n";
    let out = case.build(&format!("{stage}FROM scratch\nCOPY --from=files /abs /out\n"), &[]);
    assert_success(&out);
    assert_eq!(unsquashfs_cat(&case.artifact(), "/out"), "stage file\n");
    let out = case.build(&format!("{stage}FROM scratch\nCOPY --from=files /escape /out\n"), &[]);
    assert!(!out.status.success(), "a stage's link was resolved outside the stage: {}", stderr(&out));
    assert!(!stderr(&out).contains(SECRET));
    assert!(!case.artifact().exists());
}
