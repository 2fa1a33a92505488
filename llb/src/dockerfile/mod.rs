//! The Dockerfile frontend: parsing (with BuildKit's exact splitting rules, so
//! `fledge debug parse` prints what BuildKit's parser tests expect), shell-style variable
//! expansion, and lowering to LLB with the image configuration (`convert`).

pub mod convert;
mod copy;
mod directives;
mod exec;
pub mod heredoc;
pub mod image;
pub mod instructions;
mod line_parsers;
pub mod parser;
pub mod shell;
mod stage_graph;

pub use convert::{ConvertError, Converted, LocalContext, Options, convert};
pub use image::{ImageResolver, Platform, ResolvedImage};
pub use parser::{Arg, Ast, Instruction, ParseError, parse};
