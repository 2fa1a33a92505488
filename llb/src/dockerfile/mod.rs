//! The Dockerfile frontend: parsing (with BuildKit's exact splitting rules, so
//! `fledge debug parse` prints what BuildKit's parser tests expect), and shell-style variable
//! expansion.

mod directives;
pub mod heredoc;
mod line_parsers;
pub mod parser;
pub mod shell;

pub use parser::{Arg, Ast, Instruction, ParseError, parse};
