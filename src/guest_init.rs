//! The guest-init binary (`guest-init/`), built statically by `build.rs` and embedded here so
//! every `fledge` binary carries the exact init it installs: no separate file to find.

/// The static `fledge-init` executable placed at `/init` of artifacts (without the agent).
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fledge-init"));
/// The same init with the agent that build VMs serve (`fledge.agent_port=`).
pub static WITH_AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fledge-init-agent"));
