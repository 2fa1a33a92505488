//! One module per subcommand.

pub mod build;
pub mod debug;
pub mod image;
pub mod kernel;
pub mod run;
pub mod version;
