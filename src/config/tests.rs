use std::fs;

use super::*;

fn load(text: &str) -> (tempfile::TempDir, Result<BuildConfig, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("agent"), b"x").unwrap();
    fs::create_dir(dir.path().join("data")).unwrap();
    let path = dir.path().join("fledge.toml");
    fs::write(&path, text).unwrap();
    let result = BuildConfig::load(&path);
    (dir, result)
}

#[test]
fn initramfs_defaults_match_the_original() {
    let (_d, c) = load("version = \"1\"\nstrategy = \"initramfs\"\n");
    let c = c.unwrap();
    assert_eq!(c.init, InitMode::Default);
    assert_eq!(c.agent, Some(AgentSource::Release { version: "latest".into(), checksum: None }));
    assert_eq!(
        c.source.busybox,
        BusyboxSource::Download {
            url: DEFAULT_BUSYBOX_URL.into(),
            sha256: Some(DEFAULT_BUSYBOX_SHA256.parse().unwrap())
        }
    );
    assert_eq!(c.compression, Some(Compression { compressor: Compressor::Gzip, level: Some(9) }));
    assert_eq!(c.filesystem.kind, None);
}

#[test]
fn oci_rootfs_defaults_and_its_agent() {
    let (_d, c) = load("version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"nginx:alpine\"\n");
    let c = c.unwrap();
    assert_eq!(c.filesystem.kind, Some(FsType::Squashfs));
    assert_eq!(c.filesystem.overlay_size, "1G");
    assert_eq!(c.compression, Some(Compression { compressor: Compressor::Xz, level: Some(15) }));
    // Fixed: the original left [agent] undefaulted for oci_rootfs and failed at build time.
    assert!(matches!(c.agent, Some(AgentSource::Release { .. })));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let (d, c) = load(
        "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[mappings]\n\"data\" = \"/srv/data\"\n\"agent\" = \"/srv/data/bin/tool\"\n",
    );
    let c = c.unwrap();
    assert_eq!(c.agent, Some(AgentSource::Local { path: d.path().join("agent") }));
    assert_eq!(c.dir, d.path());
    let dests: Vec<String> = c.mappings.iter().map(|m| m.dest.to_string()).collect();
    assert_eq!(dests, ["/srv/data", "/srv/data/bin/tool"], "mappings apply parents first");
    assert_eq!(c.mappings[0].source, d.path().join("data"));
}

#[test]
fn empty_init_table_is_default_mode_and_custom_needs_no_agent() {
    let (_d, c) = load("version = \"1\"\nstrategy = \"initramfs\"\n[init]\n");
    assert_eq!(c.unwrap().init, InitMode::Default);
    let (d, c) = load("version = \"1\"\nstrategy = \"initramfs\"\n[init]\npath = \"agent\"\n");
    let c = c.unwrap();
    assert_eq!(c.init, InitMode::Custom(d.path().join("agent")));
    assert_eq!(c.agent, None);
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let (_d, c) = load(
        "version = \"9\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"nope\"\n[mappings]\n\"agent\" = \"rel\"\n",
    );
    let ConfigError::Invalid(diags) = c.unwrap_err() else { panic!("expected validation errors") };
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 3, "{messages:?}");
}

#[test]
fn an_empty_busybox_checksum_keeps_the_pinned_one() {
    let (_d, c) = load("version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_sha256 = \"\"\n");
    let BusyboxSource::Download { sha256, .. } = c.unwrap().source.busybox else { panic!("download expected") };
    assert_eq!(sha256, Some(DEFAULT_BUSYBOX_SHA256.parse().unwrap()));
}
