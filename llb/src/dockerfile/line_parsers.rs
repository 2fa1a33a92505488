//! Splitting one logical line into keyword, flags and arguments, per instruction, as
//! BuildKit's `parser/line_parsers.go` does. Quotes and escapes are kept in the words here;
//! expansion happens later, against the build's variables.

use super::directives::Directives;
use super::parser::{Arg, Instruction};

type Parsed = Result<(Vec<Arg>, bool), String>;

/// Parses `line` (continuations already joined) into an instruction. Unknown keywords parse
/// (to one empty argument) and are rejected later, with the instruction's line.
pub fn instruction(line: &str, directives: &Directives) -> Result<Instruction, String> {
    let trimmed = line.trim_matches(is_go_space);
    let (command, rest) = match trimmed.find(is_split_space) {
        Some(at) => (&trimmed[..at], trimmed[at..].trim_start_matches(is_split_space)),
        None => (trimmed, ""),
    };
    let (rest, flags) = if rest.is_empty() { (String::new(), Vec::new()) } else { builder_flags(rest) };
    let rest = rest.trim_matches(is_go_space);
    let (args, json) = match command.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => maybe_json_to_list(rest)?,
        "run" | "cmd" | "entrypoint" | "shell" => maybe_json(rest)?,
        "arg" => (words(rest, directives.escape()).into_iter().map(Arg::Word).collect(), false),
        "env" => (name_values(rest, "ENV", directives.escape())?, false),
        "label" => (name_values(rest, "LABEL", directives.escape())?, false),
        "expose" | "from" => (whitespace_delimited(rest), false),
        "healthcheck" => health_config(rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (string(rest), false),
        "onbuild" => (sub_command(rest, directives)?, false),
        _ => (vec![Arg::Word(String::new())], false),
    };
    Ok(Instruction {
        command: command.to_string(),
        flags,
        args,
        json,
        original: line.to_string(),
        heredocs: Vec::new(),
        start_line: 0,
        end_line: 0,
        comments: Vec::new(),
    })
}

/// Go's `unicode.IsSpace`.
fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's `[\t\v\f\r ]+` separator (no newline).
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

/// Leading `--flag[=value]` words; `--` ends them. Returns the rest of the line and the
/// flags. Works on bytes as BuildKit does (flags are ASCII in practice).
fn builder_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(u8),
    }
    let bytes = line.as_bytes();
    let (mut words, mut word, mut phase, mut blank_ok) = (Vec::new(), String::new(), Phase::Spaces, false);
    let mut pos = 0;
    while pos <= bytes.len() {
        let ch = bytes.get(pos).copied();
        if phase == Phase::Spaces {
            let Some(c) = ch else { break };
            if (c as char).is_ascii_whitespace() || c == 0x0b {
                pos += 1;
                continue;
            }
            if c != b'-' || bytes.get(pos + 1) != Some(&b'-') {
                return (line[pos..].to_string(), words);
            }
            phase = Phase::Word;
        }
        let Some(c) = ch else {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        };
        match phase {
            Phase::Word if (c as char).is_ascii_whitespace() || c == 0x0b => {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[pos..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
            }
            Phase::Word if c == b'\'' || c == b'"' => {
                phase = Phase::Quote(c);
                blank_ok = true;
            }
            Phase::Quote(quote) if c == quote => phase = Phase::Word,
            _ => {
                let mut c = c;
                if c == b'\\' {
                    if pos + 1 == bytes.len() {
                        if matches!(phase, Phase::Quote(_)) {
                            phase = Phase::Word;
                        }
                        pos += 1;
                        continue;
                    }
                    pos += 1;
                    c = bytes[pos];
                }
                word.push(c as char);
            }
        }
        pos += 1;
    }
    (String::new(), words)
}

/// Words separated by whitespace, quotes and escapes kept (BuildKit's `parseWords`).
pub fn words(rest: &str, escape: char) -> Vec<String> {
    let (mut words, mut word) = (Vec::new(), String::new());
    let (mut in_word, mut quote, mut blank_ok) = (false, None::<char>, false);
    let mut chars = rest.chars().peekable();
    while let Some(ch) = chars.next() {
        if let Some(q) = quote {
            if ch == q {
                quote = None;
            }
            // The escape character escapes anything except inside single quotes.
            if ch == escape && q != '\'' {
                match chars.next() {
                    None => {
                        quote = None;
                        continue;
                    }
                    Some(next) => {
                        word.push(ch);
                        word.push(next);
                        continue;
                    }
                }
            }
            word.push(ch);
            continue;
        }
        if !in_word {
            if ch.is_whitespace() {
                continue;
            }
            in_word = true;
        }
        if ch.is_whitespace() {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            in_word = false;
            blank_ok = false;
            continue;
        }
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        }
        if ch == escape {
            match chars.next() {
                None => continue, // an escape at the end of the line is dropped
                Some(next) => {
                    word.push(ch);
                    word.push(next);
                    continue;
                }
            }
        }
        word.push(ch);
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// ENV and LABEL: `key value` (legacy, one pair) or `key=value ...`; each pair becomes the
/// key, the value and the separator (`=` or empty for the legacy form).
fn name_values(rest: &str, keyword: &str, escape: char) -> Result<Vec<Arg>, String> {
    let parts = words(rest, escape);
    let Some(first) = parts.first() else { return Ok(Vec::new()) };
    let triple = |k: &str, v: &str, sep: &str| [k, v, sep].map(|s| Arg::Word(s.to_string()));
    if !first.contains('=') {
        let mut split = rest.splitn(2, is_split_space).filter(|s| !s.is_empty());
        let key = split.next().unwrap_or_default();
        let Some(value) = split.next().map(|v| v.trim_start_matches(is_split_space)) else {
            return Err(format!("{keyword} must have two arguments"));
        };
        return Ok(triple(key, value, "").into());
    }
    let mut args = Vec::new();
    for word in &parts {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                super::parser::go_quote(word)
            ));
        };
        args.extend(triple(key, value, "="));
    }
    Ok(args)
}

fn whitespace_delimited(rest: &str) -> Vec<Arg> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_split_space).filter(|s| !s.is_empty()).map(|s| Arg::Word(s.to_string())).collect()
}

fn string(rest: &str) -> Vec<Arg> {
    if rest.is_empty() { Vec::new() } else { vec![Arg::Word(rest.to_string())] }
}

/// A JSON array of strings: `Ok(Some)`; not JSON: `Ok(None)`; JSON holding something other
/// than strings: an error.
fn json_array(rest: &str) -> Result<Option<Vec<Arg>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else { return Ok(None) };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(Arg::Word(s)),
            _ => Err("dockerfile: exec form must be a JSON array of strings".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn maybe_json(rest: &str) -> Parsed {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    Ok(match json_array(rest)? {
        Some(args) => (args, true),
        None => (vec![Arg::Word(rest.to_string())], false),
    })
}

fn maybe_json_to_list(rest: &str) -> Parsed {
    Ok(match json_array(rest)? {
        Some(args) => (args, true),
        None => (whitespace_delimited(rest), false),
    })
}

/// `HEALTHCHECK TYPE rest`: the type, then the rest as RUN parses its arguments.
fn health_config(rest: &str) -> Parsed {
    let sep = rest.find(|c: char| c.is_ascii_whitespace() || c == '\x0b').unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let (kind, command) = (&rest[..sep], rest[sep..].trim_start());
    let (mut args, json) = maybe_json(command)?;
    args.insert(0, Arg::Word(kind.to_string()));
    Ok((args, json))
}

/// ONBUILD's instruction. BuildKit's parser nests `ONBUILD ONBUILD ...` (and its instruction
/// parser then rejects it); rejecting it here keeps the nesting one level deep whatever the
/// line says.
fn sub_command(rest: &str, directives: &Directives) -> Result<Vec<Arg>, String> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let keyword = rest.split(is_split_space).next().unwrap_or_default();
    if keyword.eq_ignore_ascii_case("onbuild") {
        return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
    }
    Ok(vec![Arg::Nested(Box::new(instruction(rest, directives)?))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_end_at_the_first_non_flag_or_double_dash() {
        assert_eq!(builder_flags("--a=1 --b x y"), ("x y".to_string(), vec!["--a=1".to_string(), "--b".to_string()]));
        assert_eq!(builder_flags("--a -- --b"), (" --b".to_string(), vec!["--a".to_string()]));
        assert_eq!(builder_flags("--m=\"a b\" c"), ("c".to_string(), vec!["--m=a b".to_string()]));
        assert_eq!(builder_flags("plain"), ("plain".to_string(), vec![]));
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(words(r#"a="b c" d\ e 'f\'"#, '\\'), vec![r#"a="b c""#, r"d\ e", r"'f\'"]);
    }
}
