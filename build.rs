//! Builds `guest-init` as a static executable, with and without the build VMs' agent, and
//! places both in `OUT_DIR` for
//! `src/guest_init.rs` to embed. It runs a nested `cargo build` with its own target directory
//! (so it never waits on the outer build's lock) and with `+crt-static`, which glibc
//! supports for the calls guest-init makes (no NSS lookups).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target = env::var("TARGET").expect("set by cargo");
    for watched in ["guest-init/src", "guest-init/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", manifest_dir.join(watched).display());
    }

    let target_dir = shared_target_dir(&out_dir).join("guest-init");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Paths of the sources (ours and the crates') end up in panic messages: map them to fixed
    // names so the embedded init, and every artifact, is the same whoever builds Fledge.
    let remap = format!("--remap-path-prefix={}=/fledge", manifest_dir.display());
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let remap_cargo = cargo_home.map(|h| format!("--remap-path-prefix={}=/cargo", h.display())).unwrap_or_default();
    let rustflags =
        ["-Ctarget-feature=+crt-static", "-Cstrip=symbols", "-Copt-level=s", remap.as_str(), remap_cargo.as_str()]
            .join("\x1f");
    // Two variants: artifacts get the init without the agent, build VMs the one with it.
    for (features, name) in [(None, "fledge-init"), (Some("agent"), "fledge-init-agent")] {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&manifest_dir)
            .args(["build", "--release", "--package", "fledge-guest-init", "--bin", "fledge-init"])
            .args(["--no-default-features", "--features", features.unwrap_or_default()])
            .args(["--target", &target, "--target-dir"])
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", &rustflags);
        for var in
            ["RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"]
        {
            cmd.env_remove(var);
        }
        let status = cmd.status().expect("cannot run cargo to build guest-init");
        assert!(status.success(), "building guest-init (static, {name}) failed; see the output above");
        let built = target_dir.join(&target).join("release").join("fledge-init");
        std::fs::copy(&built, out_dir.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
}

/// `<target>/` from `<target>/<profile>/build/<pkg>-<hash>/out`, so all profiles share one
/// guest-init build; falls back to `OUT_DIR` for unusual layouts.
fn shared_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .filter(|p| p.join("CACHEDIR.TAG").exists())
        .map_or_else(|| out_dir.to_path_buf(), Path::to_path_buf)
}
