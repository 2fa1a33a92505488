//! Heredocs (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) on RUN, COPY and ADD lines, found the
//! way BuildKit finds them: the line is split into shell words (quotes and escapes kept), and
//! each word of the form `[fd]<<[-]NAME` opens a heredoc whose body is the following lines up
//! to one that is exactly NAME (after removing leading tabs for `<<-`).

use super::shell::{Lexer, NoEnv};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The terminator, quotes removed.
    pub name: String,
    /// The body, every line with its newline.
    pub content: String,
    /// Variables in the body are expanded (no part of the delimiter was quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are removed from the body's lines and the terminator.
    pub chomp: bool,
    /// `3<<EOF` redirects file descriptor 3.
    pub file_descriptor: u32,
}

/// The heredocs a line opens, in order.
pub fn from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lexer = Lexer { raw_quotes: true, raw_escapes: true, ..Lexer::new('\\') };
    // BuildKit ignores lexing errors here: a line that does not lex has no heredocs. A line
    // too deep for this lexer does lex in BuildKit, so that one is an error.
    let words = match lexer.process_words(line, &NoEnv) {
        Ok(words) => words,
        Err(e) if e.is_too_deep() => return Err(e.to_string()),
        Err(_) => Vec::new(),
    };
    words.iter().filter_map(|word| parse(word).transpose()).collect()
}

/// `word` as a heredoc opener (`^(\d*)<<(-?)([^<]*)$`), if it is one.
pub fn parse(word: &str) -> Result<Option<Heredoc>, String> {
    let digits = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
    let Some(rest) = word[digits..].strip_prefix("<<") else { return Ok(None) };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let lexer = Lexer { skip_unset_env: true, ..Lexer::new('\\') };
    let words = lexer.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    let [name] = words.as_slice() else { return Ok(None) };
    let raw = Lexer { raw_quotes: true, ..lexer }.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if raw.len() != words.len() {
        return Err(format!("internal lexing of heredoc produced inconsistent results: {rest}"));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some(Heredoc {
        name: name.clone(),
        content: String::new(),
        // Quotes that lexing removed mean part of the delimiter was quoted.
        expand: quotes(name) == quotes(&raw[0]),
        chomp,
        file_descriptor: word[..digits].parse().unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers_are_recognised_with_their_options() {
        let doc = parse("<<EOF").unwrap().unwrap();
        assert_eq!((doc.name.as_str(), doc.expand, doc.chomp, doc.file_descriptor), ("EOF", true, false, 0));
        let doc = parse("3<<-'END'").unwrap().unwrap();
        assert_eq!((doc.name.as_str(), doc.expand, doc.chomp, doc.file_descriptor), ("END", false, true, 3));
        assert!(!parse("<<\"E\"OF").unwrap().unwrap().expand);
        assert_eq!(parse("<<").unwrap(), None);
        assert_eq!(parse("a<<EOF").unwrap(), None);
        assert_eq!(parse("<<<EOF").unwrap(), None);
    }

    #[test]
    fn several_heredocs_on_one_line() {
        let names: Vec<String> =
            from_line("RUN <<A cat && 3<<-\"B\" cat").unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["A", "B"]);
    }
}
