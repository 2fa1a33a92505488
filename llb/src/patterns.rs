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

    /// Whether some pattern (`!...`) takes paths back: then what is below an excluded
    /// directory may still be in.
    pub fn has_exceptions(&self) -> bool {
        self.0.iter().any(|(exclude, _)| !exclude)
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

/// Include patterns (`COPY --parents`, fsutil's include filter): a path is included when a
/// pattern matches it or one of its parents; a directory is walked when a pattern may match
/// below it.
pub struct Includes(Vec<Vec<String>>);

impl Includes {
    pub fn new(patterns: &[String]) -> Self {
        Includes(
            patterns
                .iter()
                .map(|p| p.trim_start_matches("./").trim_matches('/').split('/').map(String::from).collect())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the relative `path` is included (always, without patterns).
    pub fn includes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        self.is_empty() || self.0.iter().any(|pattern| (1..=parts.len()).any(|n| matches_path(pattern, &parts[..n])))
    }

    /// Whether a pattern may match something below the directory `dir`.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        self.is_empty() || self.0.iter().any(|pattern| prefix_matches(pattern, &parts))
    }
}

/// Whether `parts` can be the start of a path `pattern` matches.
fn prefix_matches(pattern: &[String], parts: &[&str]) -> bool {
    match (pattern.first().map(String::as_str), parts.first()) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some("**"), _) => true,
        (Some(p), Some(part)) => glob_match(p, part) && prefix_matches(&pattern[1..], &parts[1..]),
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
    fn includes_cover_matches_their_subtrees_and_the_way_to_them() {
        let i = Includes::new(&["app/lib/m.py".into(), "docs/*.md".into(), "deep/**/x".into()]);
        assert!(i.includes("app/lib/m.py") && i.includes("docs/r.md") && i.includes("deep/a/b/x"));
        assert!(!i.includes("app/lib/n.py") && !i.includes("docs/r.txt") && !i.includes("app"));
        assert!(i.may_include_below("app") && i.may_include_below("app/lib") && i.may_include_below("deep/a"));
        assert!(!i.may_include_below("other") && !i.may_include_below("app/bin"));
        assert!(Includes::new(&[]).includes("anything"));
    }

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
