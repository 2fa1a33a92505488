//! Container images: the OCI format, the registry client, and pulling into the store.

pub mod auth;
pub mod built;
pub mod diff_ids;
pub mod export;
pub mod flatten;
pub mod import;
mod prescan;
pub mod pull;
pub mod registry;
pub mod source;
pub mod spec;
pub mod stored;
