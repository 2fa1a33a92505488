//! `.dockerignore`-style path patterns, with the semantics of moby's patternmatcher (Go's
//! `filepath.Match` per component, `**` across directories, `!` to re-include, the last
//! match winning): the embedded engine filters the build context with them, and the daemon
//! client applies them to what it sends buildkitd.

/// Shell-style matching of one name against one pattern component (`*`, `?`, `[a-z]`,
/// `[!x]`, `\` escapes), as Go's `filepath.Match` does it.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(close) = p.iter().position(|&c| c == ']') else { return false };
                let Some(&c) = n.first() else { return false };
                let class = &p[1..close];
                let (negate, class) = match class.first() {
                    Some('!' | '^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= (class[i]..=class[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[close + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
}

/// `.dockerignore`-style patterns: the last matching one wins, `!` re-includes, `**` spans
/// directories, and a matched directory excludes everything below it.
pub struct Excludes(Vec<(bool, Vec<String>)>);

impl Excludes {
    pub fn new(patterns: &[String]) -> Self {
        Excludes(
            patterns
                .iter()
                .map(|p| match p.strip_prefix('!') {
                    Some(rest) => (false, rest.split('/').map(String::from).collect()),
                    None => (true, p.split('/').map(String::from).collect()),
                })
                .collect(),
        )
    }

    /// Whether the context-relative `path` is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut excluded = false;
        for (exclude, pattern) in &self.0 {
            // A pattern matching the path or one of its parents applies.
            if (1..=parts.len()).any(|n| matches_path(pattern, &parts[..n])) {
                excluded = *exclude;
            }
        }
        excluded
    }
}

fn matches_path(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.first().map(String::as_str) {
        None => parts.is_empty(),
        Some("**") => (0..=parts.len()).any(|i| matches_path(&pattern[1..], &parts[i..])),
        Some(p) => !parts.is_empty() && glob_match(p, parts[0]) && matches_path(&pattern[1..], &parts[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_go() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "a.log"));
        assert!(glob_match("fi?e[0-9]", "file7"));
        assert!(glob_match("[!a]b", "xb") && !glob_match("[!a]b", "ab"));
        assert!(glob_match("a\\*", "a*") && !glob_match("a\\*", "ab"));
    }

    #[test]
    fn ignore_patterns_follow_the_last_match_and_cover_subtrees() {
        let e = Excludes::new(&["*.log".into(), "!keep.log".into(), "build".into(), "**/tmp".into()]);
        assert!(e.excludes("x.log"));
        assert!(!e.excludes("keep.log"));
        assert!(e.excludes("build/out/bin"));
        assert!(e.excludes("a/b/tmp/c"));
        assert!(!e.excludes("src/main.rs"));
    }
}
