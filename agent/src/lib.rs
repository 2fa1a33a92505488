//! The service guest-init serves in build VMs, defined by `proto/fledge/agent/v1/agent.proto`.
//!
//! Guest-init implements [`pb::agent_server::Agent`]; the host talks to it with
//! [`client::AgentClient`] (feature `client`), which treats every message from the guest as
//! untrusted: sizes are bounded, stream order and value ranges are checked, and a guest that
//! breaks the protocol gets an error, never a panic or unbounded memory.

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("fledge.agent.v1");
}

pub mod chunks;
#[cfg(feature = "client")]
pub mod client;

/// The vsock port guest-init serves the agent on when the kernel command line asks for it
/// with `fledge.agent_port=` and the host has no reason to pick another.
pub const DEFAULT_PORT: u32 = 1024;

/// Files guest-init writes for build steps, which the host binds into a step's root: the
/// hosts file every step gets (BuildKit's, naming `buildkitsandbox`), and the resolver of a
/// VM with a network.
pub const STEP_HOSTS: &str = "/run/fledge-step/hosts";
pub const STEP_RESOLV_CONF: &str = "/run/fledge-net/resolv.conf";

/// Data moves in chunks of this size (file bodies, tar streams, process output).
pub const CHUNK: usize = 64 * 1024;

/// The largest message either side decodes: a chunk plus framing, with room to spare. A
/// peer sending more is cut off rather than buffered.
pub const MAX_MESSAGE: usize = 4 * CHUNK;
