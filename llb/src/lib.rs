//! BuildKit LLB for Fledge: the vocabulary the Dockerfile frontend lowers to and the solver
//! executes. It starts with image references (the normalised form is what LLB
//! `docker-image://` source identifiers carry); the `pb` protobuf types, digests and the
//! Dockerfile frontend join it as the frontend lands.

pub mod dockerfile;
pub mod graph;
pub mod patterns;
pub mod pb;
pub mod reference;

pub use reference::{ImageRef, ReferenceError};
