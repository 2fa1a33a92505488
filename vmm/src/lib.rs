//! MicroVM layer for Fledge: guest kernel discovery now; the backend trait with its Cloud
//! Hypervisor (REST over a Unix socket) and QEMU (QMP) implementations and the hybrid-vsock
//! client join it with the microVM work.

pub mod kernel;

pub use kernel::{Kernel, KernelError, KernelOrigin};
