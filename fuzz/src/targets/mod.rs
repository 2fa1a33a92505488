//! The targets, one module each.

pub mod agent;
pub mod config;
pub mod dockerfile;
pub mod layer;
pub mod oci;
pub mod selftest;
