//! Small path and value vocabularies shared by config, mappings and packers.

use std::fmt;

/// A normalised absolute path inside an image: no `.`/`..` components, no empty components.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImagePath(Vec<String>);

impl ImagePath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Validates a user-written destination. `..` is rejected as a component (so `a..b` is a
    /// fine name), `.` and repeated slashes are dropped.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if !s.starts_with('/') {
            return Err("must be an absolute path (start with /)");
        }
        if s.contains('\0') {
            return Err("contains a NUL byte");
        }
        let mut parts = Vec::new();
        for part in s.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err("contains '..' which is not allowed"),
                name => parts.push(name.to_string()),
            }
        }
        Ok(Self(parts))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn join(&self, name: &str) -> Self {
        let mut parts = self.0.clone();
        parts.push(name.to_string());
        Self(parts)
    }

    pub fn parent(&self) -> Option<Self> {
        (!self.0.is_empty()).then(|| Self(self.0[..self.0.len() - 1].to_vec()))
    }

    pub fn file_name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// True if `self` is `dir` or lies below it.
    pub fn starts_with(&self, dir: &ImagePath) -> bool {
        self.0.starts_with(&dir.0)
    }

    pub fn from_components(parts: Vec<String>) -> Self {
        Self(parts)
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for part in &self.0 {
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

pub fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Parses sizes such as `1G`, `512M`, `2048K`, `4096` (bytes); binary units, optional `i`/`B`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let unit = unit.trim_end_matches(['B', 'b']).trim_end_matches('i');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    (number > 0).then_some(number).and_then(|n| n.checked_mul(1 << shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_normalise_and_reject_parent_components() {
        assert_eq!(ImagePath::parse("/usr//bin/./hello").unwrap().to_string(), "/usr/bin/hello");
        assert_eq!(ImagePath::parse("/a..b").unwrap().to_string(), "/a..b");
        assert!(ImagePath::parse("/usr/../etc").unwrap_err().contains(".."));
        assert!(ImagePath::parse("usr/bin").unwrap_err().contains("absolute"));
        assert!(ImagePath::parse("/").unwrap().is_root());
    }

    #[test]
    fn parents_sort_before_children() {
        let mut v = [
            ImagePath::parse("/usr/bin").unwrap(),
            ImagePath::parse("/usr-x").unwrap(),
            ImagePath::parse("/usr").unwrap(),
        ];
        v.sort();
        assert_eq!(v.iter().map(ToString::to_string).collect::<Vec<_>>(), ["/usr", "/usr/bin", "/usr-x"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1X"), None);
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("G"), None);
    }
}
