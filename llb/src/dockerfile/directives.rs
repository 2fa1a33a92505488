//! Parser directives (`# syntax=`, `# escape=`, `# check=`): only at the very top of the
//! file, before any instruction, blank line or other comment; each at most once. A `#!`
//! first line is skipped. The escape directive changes the escape character and with it the
//! line continuation character.

/// The directives BuildKit knows; other `# key=value` comments end the directive block.
const KNOWN: [&str; 3] = ["syntax", "escape", "check"];

#[derive(Debug)]
pub struct Directives {
    escape: char,
    lines_seen: usize,
    done: bool,
    parsed: Vec<(String, String)>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives { escape: '\\', lines_seen: 0, done: false, parsed: Vec::new() }
    }
}

/// `# key = value`: BuildKit's `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then(|| (key.to_ascii_lowercase(), value.to_string()))
}

impl Directives {
    pub fn escape(&self) -> char {
        self.escape
    }

    /// The directives found, in order.
    pub fn parsed(&self) -> Vec<(String, String)> {
        self.parsed.clone()
    }

    /// BuildKit's `processLine`: the line without its newline (and leading whitespace when
    /// it starts an instruction), empty if it is a comment; a directive on it is applied.
    pub fn process_line(&mut self, raw: &str, strip_left: bool) -> Result<String, String> {
        let mut token = raw.trim_end_matches(['\r', '\n']);
        if strip_left {
            token = token.trim_start();
        }
        self.consider(token)?;
        let is_comment = token.trim_start().starts_with('#');
        Ok(if is_comment { String::new() } else { token.to_string() })
    }

    fn consider(&mut self, line: &str) -> Result<(), String> {
        self.lines_seen += 1;
        if self.done {
            return Ok(());
        }
        if self.lines_seen == 1 && line.trim_start().starts_with("#!") {
            return Ok(());
        }
        let Some((key, value)) = directive(line).filter(|(key, _)| KNOWN.contains(&key.as_str())) else {
            self.done = true;
            return Ok(());
        };
        if self.parsed.iter().any(|(k, _)| *k == key) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        if key == "escape" {
            self.escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => return Err(format!("invalid escape token '{value}' does not match ` or \\")),
            };
        }
        self.parsed.push((key, value));
        Ok(())
    }

    /// Removes a line-continuation escape (the escape character at the end, possibly
    /// followed by blanks, and not itself escaped); `true` when the line is complete.
    pub fn trim_continuation(&self, line: &str) -> (String, bool) {
        let body = line.trim_end_matches([' ', '\t']);
        if let Some(before) = body.strip_suffix(self.escape)
            && !before.ends_with(self.escape)
        {
            return (before.to_string(), false);
        }
        (line.to_string(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_recognised_like_buildkit() {
        assert_eq!(directive("# syntax=docker/dockerfile:1"), Some(("syntax".into(), "docker/dockerfile:1".into())));
        assert_eq!(directive("#ESCAPE = `  "), Some(("escape".into(), "`".into())));
        assert_eq!(directive("# 1key=v"), None);
        assert_eq!(directive("# key="), None);
        assert_eq!(directive("#key value"), None);
    }

    #[test]
    fn continuation_needs_an_unescaped_escape() {
        let d = Directives::default();
        assert_eq!(d.trim_continuation("a \\  "), ("a ".to_string(), false));
        assert_eq!(d.trim_continuation("\\"), (String::new(), false));
        assert_eq!(d.trim_continuation("a\\\\"), ("a\\\\".to_string(), true));
        assert_eq!(d.trim_continuation("a"), ("a".to_string(), true));
    }
}
