//! Agent and BusyBox sourcing over a real loopback HTTP server: release URLs, checksums,
//! the content-addressed cache, offline reuse, and the FLEDGE_AGENT override.

mod common;

use std::collections::HashMap;
use std::fs;

use common::http::Server;
use common::*;

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn project(agent_table: &str) -> Project {
    let p = Project::new();
    p.write(
        "fledge.toml",
        &format!(
            "version = \"1\"\nstrategy = \"initramfs\"\n{agent_table}\n[source]\nbusybox_path = \"{}\"\n",
            busybox()
        ),
    );
    p.write("manifest.toml", "name = \"dl\"\nversion = \"1\"\nruntime = \"dl\"\n");
    p
}

/// The bytes of `/bin/kestrel` in the built archive.
fn kestrel_in(p: &Project) -> Vec<u8> {
    cpio_member(&decompress("gzip", &p.path("dl.cpio.gz")), "bin/kestrel")
}

fn agent_bytes() -> Vec<u8> {
    fs::read(agent_binary()).unwrap()
}

#[test]
fn release_latest_downloads_from_the_base_url_and_falls_back_to_the_cache_offline() {
    let agent = agent_bytes();
    let server = Server::start(HashMap::from([("/releases/latest/download/kestrel".to_string(), agent.clone())]));
    let p = project("");
    let base = format!("{}/releases", server.base);
    assert_success(&run(p.fledge().arg("build").env("FLEDGE_AGENT_BASE_URL", &base)));
    assert_eq!(kestrel_in(&p), agent);
    assert!(p.path(&format!("cache/downloads/sha256/{}", sha256(&agent))).exists(), "download cached by checksum");
    drop(server);

    // `latest` may move, so it tries the network first; with the server gone it reuses the cache.
    fs::remove_file(p.path("dl.cpio.gz")).unwrap();
    let out = run(p.fledge().arg("build").env("FLEDGE_AGENT_BASE_URL", &base));
    assert_success(&out);
    assert!(stderr(&out).contains("using the copy cached earlier"), "{}", stderr(&out));
    assert_eq!(kestrel_in(&p), agent);
}

#[test]
fn pinned_release_is_served_from_the_cache_without_the_network() {
    let agent = agent_bytes();
    let server = Server::start(HashMap::from([("/r/download/v1.2.3/kestrel".to_string(), agent.clone())]));
    let p = project("[agent]\nsource_strategy = \"release\"\nversion = \"v1.2.3\"\n");
    let base = format!("{}/r", server.base);
    assert_success(&run(p.fledge().arg("build").env("FLEDGE_AGENT_BASE_URL", &base)));
    let hits = server.hits();
    assert_success(&run(p.fledge().arg("build").env("FLEDGE_AGENT_BASE_URL", &base)));
    assert_eq!(server.hits(), hits, "a pinned version is not downloaded twice");
    assert_eq!(kestrel_in(&p), agent);
}

#[test]
fn http_agent_checksum_is_verified() {
    let agent = agent_bytes();
    let server = Server::start(HashMap::from([("/kestrel".to_string(), agent.clone())]));
    let url = format!("{}/kestrel", server.base);
    let good = project(&format!(
        "[agent]\nsource_strategy = \"http\"\nurl = \"{url}\"\nchecksum = \"sha256:{}\"\n",
        sha256(&agent)
    ));
    assert_success(&run(good.fledge().arg("build")));
    assert_eq!(kestrel_in(&good), agent);

    let wrong = "1".repeat(64);
    let bad = project(&format!("[agent]\nsource_strategy = \"http\"\nurl = \"{url}\"\nchecksum = \"{wrong}\"\n"));
    let out = run(bad.fledge().arg("build"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("checksum mismatch for {url}: expected sha256:{wrong}")),
        "{}",
        stderr(&out)
    );
    assert!(!bad.path("dl.cpio.gz").exists() && !bad.path("dl.manifest.json").exists());
    let blobs = bad.path("cache/downloads/sha256");
    assert_eq!(fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0), 0, "a rejected download is not cached");
}

#[test]
fn a_404_names_the_url() {
    let server = Server::start(HashMap::new());
    let p = project(&format!("[agent]\nsource_strategy = \"http\"\nurl = \"{}/missing\"\n", server.base));
    let out = run(p.fledge().arg("build"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("cannot download {}/missing", server.base)), "{}", stderr(&out));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn fledge_agent_overrides_every_strategy() {
    let p = project("[agent]\nsource_strategy = \"http\"\nurl = \"http://127.0.0.1:9/unreachable\"\n");
    let out = run(p.fledge().arg("build").env("FLEDGE_AGENT", agent_binary()));
    assert_success(&out);
    assert_eq!(kestrel_in(&p), agent_bytes());
}

#[test]
fn busybox_download_is_verified_cached_and_reused_offline() {
    let bb = fs::read(busybox()).unwrap();
    let server = Server::start(HashMap::from([("/busybox".to_string(), bb.clone())]));
    let p = Project::new();
    fs::copy(agent_binary(), p.path("init")).unwrap();
    let cfg = format!(
        "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_url = \"{}/busybox\"\nbusybox_sha256 = \"{}\"\n[mappings]\n\"init\" = \"/init\"\n",
        server.base,
        sha256(&bb)
    );
    p.write("fledge.toml", &cfg);
    p.write("manifest.toml", "name = \"bb\"\nversion = \"1\"\nruntime = \"bb\"\n");
    assert_success(&run(p.fledge().arg("build")));
    drop(server);
    fs::remove_file(p.path("bb.cpio.gz")).unwrap();
    let out = run(p.fledge().arg("build"));
    assert_success(&out);
    let listing = cpio_listing(&decompress("gzip", &p.path("bb.cpio.gz")));
    let line = entry(&listing, "bin/busybox").unwrap();
    assert!(line.contains(&format!(" {} ", bb.len())), "{line}");
}
