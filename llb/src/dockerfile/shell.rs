//! Shell-style word expansion exactly as BuildKit's Dockerfile frontend does it
//! (`frontend/dockerfile/shell/lex.go`): quotes, the escape character, `$name`, `${name}` and
//! the `${name<op>word}` forms (`:-` `-` `:+` `+` `:?` `?` `#` `##` `%` `%%` `/` `//`), and
//! word splitting of unquoted expansions.
//!
//! BuildKit's behaviour is the specification, including its corners: a trailing escape is
//! dropped, `$` before a non-name is literal, `$1` expands to nothing, and an escape inside
//! double quotes only escapes `"`, `$` and itself.
//!
//! One deliberate difference: `${}` nested more than [`MAX_NESTING`] deep is an error
//! (BuildKit's Go stack grows without bound; ours does not, and each level recurses).

use std::collections::BTreeSet;
use std::iter::Peekable;
use std::str::Chars;

/// Where variables come from.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// No variables at all.
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
}

/// `KEY=VALUE` strings, the first occurrence of a key winning as in BuildKit's
/// `EnvsFromSlice` lookups (which scan in order).
impl Env for Vec<String> {
    fn get(&self, name: &str) -> Option<String> {
        self.iter().find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v.to_string()),
            None if kv == name => Some(String::new()),
            _ => None,
        })
    }
}

/// How deep `${...${...}}` may nest: far beyond any real Dockerfile, far within the stack.
pub const MAX_NESTING: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process \"{}\": {message}", shown(source_text))]
pub struct ShellError {
    pub source_text: String,
    pub message: String,
}

impl ShellError {
    /// The input nests `${}` more than [`MAX_NESTING`] deep.
    pub fn is_too_deep(&self) -> bool {
        self.message == too_deep()
    }
}

fn too_deep() -> String {
    format!("variable substitutions are nested more than {MAX_NESTING} deep")
}

/// The input as an error quotes it: a long one (a generated word can be megabytes) is cut.
fn shown(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// The lexer's options (BuildKit's `Lex`).
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the result.
    pub raw_quotes: bool,
    /// Keep escape characters in the result.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
}

/// The result of expanding one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The input as one word (quotes removed, variables expanded, no splitting).
    pub word: String,
    /// The input split into words: whitespace from unquoted text and unquoted expansions
    /// separates them.
    pub words: Vec<String>,
    /// Variables that were looked up and found, and those that were not.
    pub matched: BTreeSet<String>,
    pub unmatched: BTreeSet<String>,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Lexer { escape, raw_quotes: false, raw_escapes: false, skip_unset_env: false, skip_process_quotes: false }
    }

    /// Expands `input` against `env`.
    pub fn expand(&self, input: &str, env: &dyn Env) -> Result<Expansion, ShellError> {
        let mut word = ShellWord {
            chars: input.chars().peekable(),
            env,
            lexer: *self,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            depth: 0,
        };
        match word.process_until(&[], self.raw_escapes) {
            Ok((text, words)) => Ok(Expansion { word: text, words, matched: word.matched, unmatched: word.unmatched }),
            Err(message) => Err(ShellError { source_text: input.to_string(), message }),
        }
    }

    /// `input` as one word.
    pub fn process_word(&self, input: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.expand(input, env).map(|e| e.word)
    }

    /// `input` split into words.
    pub fn process_words(&self, input: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        self.expand(input, env).map(|e| e.words)
    }
}

/// Word splitting as the input is consumed (BuildKit's `wordsStruct`).
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, text: &str) {
        text.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, text: &str) {
        self.word.push_str(text);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct ShellWord<'a> {
    chars: Peekable<Chars<'a>>,
    env: &'a dyn Env,
    lexer: Lexer,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    /// How many `${` are open (each is a level of recursion).
    depth: usize,
}

type Step<T> = Result<T, String>;

impl ShellWord<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        let value = self.env.get(name);
        let seen = if value.is_some() { &mut self.matched } else { &mut self.unmatched };
        seen.insert(name.to_string());
        value
    }

    /// Consumes input up to (and including) one of `stops`, or to the end when `stops` is
    /// empty; an end of input before a stop is an error.
    fn process_until(&mut self, stops: &[char], raw_escapes: bool) -> Step<(String, Vec<String>)> {
        let saved = self.lexer.raw_escapes;
        if raw_escapes {
            self.lexer.raw_escapes = true;
        }
        let result = self.process_until_inner(stops);
        self.lexer.raw_escapes = saved;
        result
    }

    fn process_until_inner(&mut self, stops: &[char]) -> Step<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stops.contains(&ch) {
                self.chars.next();
                return Ok((result, words.finish()));
            }
            let quoted = !self.lexer.skip_process_quotes && (ch == '\'' || ch == '"');
            if ch == '$' || quoted {
                let text = match ch {
                    '$' => self.process_dollar()?,
                    '\'' => self.process_single_quote()?,
                    _ => self.process_double_quote()?,
                };
                result.push_str(&text);
                if ch == '$' {
                    words.add_string(&text);
                } else {
                    words.add_raw_string(&text);
                }
                continue;
            }
            self.chars.next();
            if ch == self.lexer.escape {
                if self.lexer.raw_escapes {
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                // The escape character escapes the next one; at the end it is dropped.
                let Some(escaped) = self.chars.next() else { break };
                words.add_raw_char(escaped);
                result.push(escaped);
            } else {
                words.add_char(ch);
                result.push(ch);
            }
        }
        if !stops.is_empty() {
            return Err(format!(
                "unexpected end of statement while looking for matching {}",
                stops.iter().collect::<String>()
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Step<String> {
        let mut result = String::new();
        let open = self.chars.next().expect("called on a quote");
        if self.lexer.raw_quotes {
            result.push(open);
        }
        loop {
            match self.chars.next() {
                None => return Err("unexpected end of statement while looking for matching single-quote".into()),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    fn process_double_quote(&mut self) -> Step<String> {
        let mut result = String::new();
        let open = self.chars.next().expect("called on a quote");
        if self.lexer.raw_quotes {
            result.push(open);
        }
        loop {
            match self.peek() {
                None => return Err("unexpected end of statement while looking for matching double-quote".into()),
                Some('"') => {
                    self.chars.next();
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(mut ch) => {
                    self.chars.next();
                    if ch == self.lexer.escape {
                        if self.lexer.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue, // an escape at the end of the word is dropped
                            // Only these can be escaped; other escapes stay as written.
                            Some(next) if next == '"' || next == '$' || next == self.lexer.escape => {
                                ch = next;
                                self.chars.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Step<String> {
        self.chars.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.chars.next();
        if self.depth == MAX_NESTING {
            return Err(too_deep());
        }
        self.depth += 1;
        let result = self.process_braces();
        self.depth -= 1;
        result
    }

    /// `${...}` after the `${`.
    fn process_braces(&mut self) -> Step<String> {
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(mut op) = self.chars.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let mut written = op.to_string();
        match op {
            '}' => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = op == ':';
                if null_is_unset {
                    op = self.chars.next().unwrap_or('\0');
                    written.push(op);
                }
                let pattern_op = op == '#' || op == '%';
                if null_is_unset && pattern_op || !matches!(op, '+' | '-' | '?' | '#' | '%') {
                    return Err(format!("unsupported modifier ({written}) in substitution"));
                }
                let (word, _) = self.process_until(&['}'], pattern_op).map_err(|e| self.at_end("}", e))?;
                let value = self.lookup(&name);
                if self.lexer.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{written}{word}}}"));
                }
                let empty = |v: &Option<String>| v.is_none() || null_is_unset && v.as_deref() == Some("");
                match op {
                    '-' => Ok(if empty(&value) { word } else { value.unwrap_or_default() }),
                    '+' => Ok(if empty(&value) { String::new() } else { word }),
                    '?' => match value {
                        None => Err(format!("{name}: {}", or(word, "is not allowed to be unset"))),
                        Some(v) if null_is_unset && v.is_empty() => {
                            Err(format!("{name}: {}", or(word, "is not allowed to be empty")))
                        }
                        Some(v) => Ok(v),
                    },
                    _ => {
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let value = value.unwrap_or_default();
                        if op == '%' {
                            trim_suffix(&pattern, &value, greedy)
                        } else {
                            trim_prefix(&pattern, &value, greedy)
                        }
                    }
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.chars.next();
                }
                let (pattern, _) = self.process_until(&['/'], true).map_err(|e| self.at_end("/' in ${}", e))?;
                let (replacement, _) = self.process_until(&['}'], true).map_err(|e| self.at_end("}", e))?;
                let value = self.lookup(&name);
                if self.lexer.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let re = pattern_regex(&pattern, true, false)?;
                Ok(if all {
                    re.replace_all(&value, regex::NoExpand(&replacement)).into_owned()
                } else {
                    re.replace(&value, regex::NoExpand(&replacement)).into_owned()
                })
            }
            _ => Err(format!("unsupported modifier ({written}) in substitution")),
        }
    }

    /// BuildKit reports a missing closing character as a syntax error when the input ran out.
    fn at_end(&mut self, closing: &str, error: String) -> String {
        if self.peek().is_none() { format!("syntax error: missing '{closing}") } else { error }
    }

    /// A variable name: letters, digits and `_`; a run of digits (positional); or one special
    /// parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(digit) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(digit);
                    self.chars.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.chars.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.chars.next();
        }
        name
    }
}

fn or(word: String, default: &str) -> String {
    if word.is_empty() { default.to_string() } else { word }
}

/// A shell glob (`*`, `?`, `\` escapes) as a regular expression; `*` is lazy unless
/// `greedy`.
fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Step<regex::Regex> {
    let mut out = String::from(if anchored { "^" } else { "" });
    let mut chars = pattern.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '*' => out.push_str(if greedy { ".*" } else { ".*?" }),
            '?' => out.push('.'),
            '\\' => {
                // `}` and `/` are escaped inside ${} but the escape is not part of the pattern.
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(escaped @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(escaped);
                    }
                    other => {
                        let shown = other.map(String::from).unwrap_or_default();
                        return Err(format!("invalid pattern ({pattern}) in substitution: invalid escape '\\{shown}'"));
                    }
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    regex::Regex::new(&out).map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Step<String> {
    let re = pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(found) => value[found.end()..].to_string(),
        None => value.to_string(),
    })
}

/// A pattern reversed character by character, each escape kept in front of what it escapes.
fn reverse_pattern(pattern: &str) -> String {
    let mut units: Vec<String> = Vec::new();
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        match (ch, ch == '\\') {
            (_, true) => units.push(chars.next().map_or_else(|| "\\".to_string(), |next| format!("\\{next}"))),
            (ch, false) => units.push(ch.to_string()),
        }
    }
    units.into_iter().rev().collect()
}

/// Regular expressions find leftmost matches, so the shortest (or longest) suffix is found
/// as a prefix of the reversed value with the reversed pattern.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Step<String> {
    let reversed: String = value.chars().rev().collect();
    Ok(trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(input: &str, env: &[&str]) -> Result<String, ShellError> {
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        Lexer::new('\\').process_word(input, &env)
    }

    /// Pattern and modifier forms the shared tables lack. Every expected value (and every
    /// error) was produced by BuildKit's own lexer (commit 73ed6825c4b7, `shell.NewLex('\\')`,
    /// `ProcessWord`) for these inputs and this environment.
    #[test]
    fn prefix_suffix_and_replacement_patterns() {
        let env = ["F=foo/bar/baz.tar.gz", "X=aaa", "E="];
        for (input, expected) in [
            ("${F#*/}", "bar/baz.tar.gz"),
            ("${F##*/}", "baz.tar.gz"),
            ("${F%.*}", "foo/bar/baz.tar"),
            ("${F%%.*}", "foo/bar/baz"),
            ("${F%/*}", "foo/bar"),
            ("${F#nomatch}", "foo/bar/baz.tar.gz"),
            ("${X/a/b}", "baa"),
            ("${X//a/b}", "bbb"),
            ("${F/\\//_}", "foo_bar/baz.tar.gz"),
            ("${F//\\//_}", "foo_bar_baz.tar.gz"),
            ("${F/b?r/X}", "foo/X/baz.tar.gz"),
            ("${X#a\\*}", "aaa"),
            ("${UNSET#a}", ""),
            ("${E:-default}", "default"),
            ("${E-default}", ""),
            ("${E:+alt}", ""),
            ("${E+alt}", "alt"),
            ("${X/*/Z}", "Z"),
            ("${X//?/Z}", "ZZZ"),
            ("${F#\"foo/\"}", "bar/baz.tar.gz"),
            ("${F%'.gz'}", "foo/bar/baz.tar"),
        ] {
            assert_eq!(expand(input, &env).as_deref(), Ok(expected), "{input}");
        }
        for (bad, message) in [
            ("${F:#a}", "unsupported modifier (:#) in substitution"),
            ("${F:%a}", "unsupported modifier (:%) in substitution"),
            ("${F/a}", "syntax error: missing '/' in ${}"),
            ("${X//}", "syntax error: missing '/' in ${}"),
            ("${F#\\q}", "invalid pattern (\\q) in substitution: invalid escape '\\q'"),
            ("${F%\\.gz}", "invalid pattern (zg\\.) in substitution: invalid escape '\\.'"),
            ("${UNSET:?custom message}", "UNSET: custom message"),
            ("${E:?}", "E: is not allowed to be empty"),
        ] {
            assert_eq!(expand(bad, &env).map_err(|e| e.message), Err(message.to_string()), "{bad}");
        }
    }

    #[test]
    fn pattern_reversal_keeps_escapes_in_front() {
        assert_eq!(reverse_pattern("a\\*b"), "b\\*a");
        assert_eq!(reverse_pattern("*."), ".*");
    }
}
