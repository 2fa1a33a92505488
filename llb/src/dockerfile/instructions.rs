//! Instructions with their flags checked: which flags each instruction takes, boolean flags
//! (`--link`, `--link=false`), repeatable ones (`--mount`, `--exclude`), and errors that
//! name the instruction and the flag. Arguments stay unexpanded here; expansion needs the
//! variables in scope where the instruction runs (see `convert`).

use std::collections::BTreeMap;

use super::parser::{Arg, Instruction};

/// The flags an instruction was given.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    values: BTreeMap<String, Vec<String>>,
}

impl Flags {
    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    /// Every value of a repeatable flag.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    /// A boolean flag: absent is false, bare is true, otherwise `true`/`false`.
    pub fn bool(&self, name: &str) -> Result<bool, String> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(format!("expecting boolean value for flag {name}, not: {other}")),
        }
    }
}

/// Flags `instruction` accepts: (name, repeatable).
fn allowed(keyword: &str) -> &'static [(&'static str, bool)] {
    match keyword {
        "from" => &[("platform", false)],
        "run" => &[("mount", true), ("network", false), ("security", false)],
        "copy" => &[
            ("from", false),
            ("chown", false),
            ("chmod", false),
            ("link", false),
            ("parents", false),
            ("exclude", true),
        ],
        "add" => &[
            ("chown", false),
            ("chmod", false),
            ("link", false),
            ("keep-git-dir", false),
            ("checksum", false),
            ("unpack", false),
            ("exclude", true),
        ],
        "healthcheck" => &[
            ("interval", false),
            ("timeout", false),
            ("start-period", false),
            ("start-interval", false),
            ("retries", false),
        ],
        _ => &[],
    }
}

/// The flags that mean `true` written without a value.
const BOOLEAN_FLAGS: &[&str] = &["link", "parents", "keep-git-dir", "unpack"];

/// Checks and collects `instruction`'s flags.
pub fn flags(instruction: &Instruction) -> Result<Flags, String> {
    let keyword = instruction.keyword();
    let known = allowed(&keyword);
    let mut flags = Flags::default();
    for flag in &instruction.flags {
        let body = flag.strip_prefix("--").unwrap_or(flag);
        let (name, value) = body.split_once('=').unwrap_or((body, ""));
        let Some(&(_, repeatable)) = known.iter().find(|(n, _)| *n == name) else {
            return Err(format!("unknown flag: --{name} (for {})", keyword.to_uppercase()));
        };
        // Only a boolean flag may stand alone, as in BuildKit's flag parser.
        if !body.contains('=') && !BOOLEAN_FLAGS.contains(&name) {
            return Err(format!("missing a value on flag: --{name}"));
        }
        let values = flags.values.entry(name.to_string()).or_default();
        if !repeatable && !values.is_empty() {
            return Err(format!("duplicate flag specified: --{name}"));
        }
        values.push(value.to_string());
    }
    Ok(flags)
}

/// The words of an instruction (ONBUILD's nested instruction is not a word).
pub fn words(instruction: &Instruction) -> Vec<String> {
    instruction
        .args
        .iter()
        .filter_map(|a| match a {
            Arg::Word(w) => Some(w.clone()),
            Arg::Nested(_) => None,
        })
        .collect()
}

/// The key/value pairs of ENV and LABEL (parsed as key, value, separator triples).
pub fn pairs(instruction: &Instruction) -> Vec<(String, String)> {
    words(instruction).chunks(3).map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default())).collect()
}

/// The instruction's arguments as written after the keyword and flags (shell form).
pub fn rest_of_line(instruction: &Instruction) -> String {
    words(instruction).join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn first(text: &str) -> Instruction {
        parse(text).unwrap().instructions.remove(0)
    }

    #[test]
    fn flags_are_checked_per_instruction() {
        let f = flags(&first("COPY --link --exclude=a --exclude=b x y")).unwrap();
        assert_eq!(f.bool("link"), Ok(true));
        assert_eq!(f.all("exclude"), ["a", "b"]);
        assert!(flags(&first("COPY --nope x y")).unwrap_err().contains("unknown flag: --nope"));
        assert!(flags(&first("COPY --from=a --from=b x y")).unwrap_err().contains("duplicate flag"));
        assert!(flags(&first("COPY --link=maybe x y")).unwrap().bool("link").is_err());
        assert!(flags(&first("WORKDIR --x=1 /a")).is_err());
        assert_eq!(flags(&first("ADD --chmod 777 f /d")).unwrap_err(), "missing a value on flag: --chmod");
        assert!(flags(&first("COPY --link --parents a /b/")).is_ok());
    }
}
