//! The Dockerfile parser: lines, continuations, comments, parser directives and heredocs into
//! a list of instructions, each with its flags and arguments split the way BuildKit's parser
//! (`frontend/dockerfile/parser/parser.go`) splits them, so that [`Ast::dump`] prints exactly
//! BuildKit's `Node.Dump()`.

use super::directives::Directives;
use super::heredoc::{self, Heredoc};
use super::line_parsers;

/// One parsed instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The instruction keyword as written (`RUN`, `run`, ...).
    pub command: String,
    /// `--name=value` flags before the arguments, as written.
    pub flags: Vec<String>,
    pub args: Vec<Arg>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// The whole logical line (continuations joined).
    pub original: String,
    pub heredocs: Vec<Heredoc>,
    /// 1-based first and last line in the file.
    pub start_line: usize,
    pub end_line: usize,
    /// The comment lines right above the instruction.
    pub comments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Word(String),
    /// ONBUILD's instruction.
    Nested(Box<Instruction>),
}

impl Instruction {
    /// The keyword in lower case.
    pub fn keyword(&self) -> String {
        self.command.to_ascii_lowercase()
    }

    /// BuildKit's `Node.Dump()` of this instruction.
    pub fn dump(&self) -> String {
        let mut out = self.keyword();
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            out += &format!(" [{}]", flags.join(" "));
        }
        for arg in &self.args {
            match arg {
                Arg::Word(word) => out += &format!(" {}", go_quote(word)),
                Arg::Nested(inner) => out += &format!(" ({})", inner.dump()),
            }
        }
        out.trim().to_string()
    }

    /// Whether heredocs on this line are bodies (RUN, COPY, ADD, also under ONBUILD; not
    /// in exec form).
    fn can_contain_heredoc(&self) -> bool {
        let target = match (self.keyword().as_str(), self.args.first()) {
            ("onbuild", Some(Arg::Nested(inner))) => inner,
            _ => self,
        };
        matches!(target.keyword().as_str(), "run" | "copy" | "add") && !target.json
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    pub instructions: Vec<Instruction>,
    pub directives: Vec<(String, String)>,
    pub escape: char,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl Ast {
    /// BuildKit's `Node.Dump()` of the whole file: one line per instruction, in parentheses.
    pub fn dump(&self) -> String {
        self.instructions.iter().map(|i| format!("({})\n", i.dump())).collect()
    }
}

/// A parse error at a 1-based line (and column, 0 when the whole line is meant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ParseError {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> Self {
        ParseError { line, column: 0, message: message.into() }
    }
}

/// Lines with their newline kept (heredoc bodies need it), as BuildKit's scanner splits them.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    trim_newline(line).trim_start().starts_with('#')
}

fn is_empty_continuation_line(line: &str) -> bool {
    trim_newline(line).trim_start().is_empty()
}

/// Parses a Dockerfile's text.
pub fn parse(text: &str) -> Result<Ast, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut directives = Directives::default();
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let all = lines(text);
    let mut next = 0;
    let mut current_line = 0;

    while next < all.len() {
        let raw = all[next];
        next += 1;
        if is_comment(raw) {
            let comment = trim_newline(raw).trim_start()[1..].trim().to_string();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment);
            }
        }
        let line = directives.process_line(raw, true).map_err(|e| ParseError::at(current_line + 1, e))?;
        current_line += 1;
        let start_line = current_line;
        let (line, mut complete) = directives.trim_continuation(&line);
        if complete && line.is_empty() {
            continue;
        }
        let mut joined = line;
        let mut empty_continuation = false;
        while !complete && next < all.len() {
            let raw = all[next];
            next += 1;
            let line = directives.process_line(raw, false).map_err(|e| ParseError::at(current_line + 1, e))?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if is_empty_continuation_line(&line) {
                empty_continuation = true;
                continue;
            }
            let (line, done) = directives.trim_continuation(&line);
            complete = done;
            joined.push_str(&line);
        }
        if empty_continuation {
            warnings.push(Warning {
                line: start_line,
                message: "Empty continuation line found in: ".to_string() + &joined,
            });
        }

        let mut instruction = line_parsers::instruction(&joined, &directives).map_err(|message| ParseError {
            line: start_line,
            column: 0,
            message,
        })?;
        if instruction.can_contain_heredoc() && joined.contains("<<") {
            let docs = heredoc::from_line(&joined).map_err(|message| ParseError::at(start_line, message))?;
            for mut doc in docs {
                let mut terminated = false;
                while next < all.len() {
                    let raw = all[next];
                    next += 1;
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(raw);
                }
                if !terminated {
                    return Err(ParseError::at(start_line, "unterminated heredoc"));
                }
                instruction.heredocs.push(doc);
            }
        }
        instruction.start_line = start_line;
        instruction.end_line = current_line;
        instruction.comments = std::mem::take(&mut comments);
        instructions.push(instruction);
    }
    if instructions.is_empty() {
        return Err(ParseError::at(current_line.max(1), "file with no instructions"));
    }
    Ok(Ast { instructions, escape: directives.escape(), directives: directives.parsed(), warnings })
}

/// Go's `strconv.Quote`: the form BuildKit's dumps use.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`: graphic characters and the ASCII space, approximated outside
/// ASCII by excluding controls, other spaces and the invisible format characters.
fn is_go_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !c.is_control()
        && !c.is_whitespace()
        && !matches!(c, '\u{ad}' | '\u{600}'..='\u{605}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
        && !('\u{e000}'..='\u{f8ff}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quoting_matches_strconv_quote() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(go_quote("\x01\x7f"), r#""\x01\x7f""#);
        assert_eq!(go_quote("한국어 ü"), "\"한국어 ü\"");
        assert_eq!(go_quote("\u{a0}\u{feff}"), r#""\u00a0\ufeff""#);
    }

    /// Heredoc cases (the shared tables have none); the expected names, flags and bodies are
    /// what BuildKit's parser (commit 73ed6825c4b7, `parser.Parse`) reports for them.
    #[test]
    fn heredocs_match_buildkits_parser() {
        let docs = |text: &str| {
            let ast = parse(text).unwrap();
            let last = ast.instructions.last().unwrap().clone();
            let found: Vec<(String, bool, bool, u32, String)> = last
                .heredocs
                .iter()
                .map(|d| (d.name.clone(), d.expand, d.chomp, d.file_descriptor, d.content.clone()))
                .collect();
            (last.dump(), last.end_line, found)
        };
        let one = |n: &str, e, c, fd, body: &str| (n.to_string(), e, c, fd, body.to_string());
        assert_eq!(
            docs("FROM busybox\nRUN <<EOF\necho hello\necho world\nEOF\n"),
            ("run \"<<EOF\"".into(), 5, vec![one("EOF", true, false, 0, "echo hello\necho world\n")])
        );
        assert_eq!(
            docs("FROM busybox\nRUN <<-EOT sh\n\techo tabbed\n\tEOT\n"),
            ("run \"<<-EOT sh\"".into(), 4, vec![one("EOT", true, true, 0, "\techo tabbed\n")])
        );
        assert_eq!(
            docs("FROM busybox\nCOPY <<\"EOF\" /quoted.txt\nliteral $HOME\nEOF\n").2,
            vec![one("EOF", false, false, 0, "literal $HOME\n")]
        );
        assert_eq!(
            docs("FROM busybox\nRUN <<A cat && 3<<'B' cat >&3\nfirst\nA\nsecond $x\nB\n").2,
            vec![one("A", true, false, 0, "first\n"), one("B", false, false, 3, "second $x\n")]
        );
        assert_eq!(docs("FROM busybox\nRUN [\"echo\", \"<<EOF\"]\n").2, vec![]);
        assert_eq!(
            docs("FROM busybox\nCOPY <<file1 <<file2 /dest/\none\nfile1\ntwo\nfile2\n").2,
            vec![one("file1", true, false, 0, "one\n"), one("file2", true, false, 0, "two\n")]
        );
        assert_eq!(docs("FROM busybox\nRUN cat <<E'O'F\nx\nEOF\n").2, vec![one("EOF", false, false, 0, "x\n")]);
        let err = parse("FROM busybox\nRUN <<EOF\nnever terminated\n").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (2, "unterminated heredoc"));
    }

    #[test]
    fn lines_and_columns_are_reported() {
        let err = parse("FROM a\nENV x\n").unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (2, "ENV must have two arguments"));
        assert_eq!(parse("# only a comment\n").unwrap_err().message, "file with no instructions");
    }
}
