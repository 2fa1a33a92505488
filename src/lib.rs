//! Fledge: builds microVM boot artifacts (initramfs archives, rootfs images) and their Volant
//! manifests from a configuration, an OCI image or a Dockerfile, with no Docker daemon and no
//! root. See `docs/architecture.md` for how the pieces fit.

pub mod accel;
pub mod agent;
pub mod btrfs;
pub mod build;
pub mod build_progress;
pub mod build_vm;
pub mod busybox;
pub mod cli;
pub mod commands;
pub mod compress;
pub mod config;
pub mod confined;
pub mod daemon_build;
pub mod diagnostic;
pub mod digest;
pub mod dirs;
pub mod dockerfile;
pub mod erofs;
pub mod ext4;
pub mod fetch;
pub mod guest_init;
pub mod guest_report;
pub mod image;
pub mod initramfs;
pub mod interrupt;
pub mod kernel_build;
pub mod kernel_import;
pub mod logging;
pub mod manifest;
pub mod mappings;
pub mod microvm;
pub mod output;
pub mod paths;
pub mod progress;
pub mod rootfs;
pub mod scratch;
pub mod shared_cache;
pub mod solver;
pub mod squashfs;
pub mod stage;
pub mod store;
pub mod tomlfile;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
