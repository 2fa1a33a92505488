//! The guest-init binary (`guest-init/`), built statically by `build.rs` and embedded here so
//! every `fledge` binary carries the exact init it installs: no separate file to find.

/// The static `fledge-init` executable placed at `/init`.
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fledge-init"));
