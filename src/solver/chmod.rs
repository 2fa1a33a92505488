//! Symbolic modes (`COPY --chmod=u+x,go-w`), with BSD setmode(3)'s rules and a umask of 0,
//! which is how BuildKit applies them: comma-separated clauses of who (`ugoa`; none means
//! all), then operations (`+`, `-`, `=`) with permissions (`rwxXst`) or another class's bits
//! to copy (`u`, `g`, `o`). `X` sets execute only on directories and on files that had an
//! execute bit to begin with; `s` and `t` are ignored for "other" alone.

use anyhow::Result;

/// setuid, setgid and every rwx bit (not sticky).
const STANDARD: u32 = 0o6777;
const STICKY: u32 = 0o1000;
const OTHER: u32 = 0o0007;

/// `mode` (permission bits with setuid, setgid, sticky) changed by the symbolic `spec`.
pub fn apply(spec: &str, mode: u32, is_dir: bool) -> Result<u32> {
    let syntax = || {
        anyhow::anyhow!(
            "--chmod={spec} is not a mode (expected octal such as 755, or symbolic such as u+x,go-w or a=rX)"
        )
    };
    let mut change = Change { mode: mode & 0o7777, execute_allowed: is_dir || mode & 0o111 != 0 };
    let s = spec.as_bytes();
    let mut i = 0;
    loop {
        let mut who = 0;
        while let Some(c) = s.get(i) {
            who |= match c {
                b'a' => STANDARD,
                b'u' => 0o4700,
                b'g' => 0o2070,
                b'o' => OTHER,
                _ => break,
            };
            i += 1;
        }
        loop {
            let op = *s.get(i).filter(|c| matches!(c, b'+' | b'-' | b'=')).ok_or_else(syntax)?;
            i += 1;
            who &= !STICKY;
            let (mut perm, mut execute_if, mut equal_done) = (0, false, false);
            while let Some(&c) = s.get(i).filter(|c| !matches!(c, b',' | b'+' | b'-' | b'=')) {
                let not_other_only = who == 0 || who & !OTHER != 0;
                match c {
                    b'r' => perm |= 0o444,
                    b'w' => perm |= 0o222,
                    b'x' => perm |= 0o111,
                    b'X' if op == b'-' => perm |= 0o111,
                    b'X' => execute_if = true,
                    b's' if not_other_only => perm |= 0o6000,
                    b't' if not_other_only => {
                        who |= STICKY;
                        perm |= STICKY;
                    }
                    b's' | b't' => {}
                    b'u' | b'g' | b'o' => {
                        if perm != 0 {
                            change.op(op, who, perm);
                            perm = 0;
                        }
                        equal_done |= op == b'=';
                        if execute_if {
                            change.execute(who);
                            execute_if = false;
                        }
                        change.copy(c, who, op);
                    }
                    _ => return Err(syntax()),
                }
                i += 1;
            }
            if perm != 0 || (op == b'=' && !equal_done) {
                change.op(op, who, perm);
            }
            if execute_if {
                change.execute(who);
            }
            match s.get(i) {
                None => return Ok(change.mode),
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

struct Change {
    mode: u32,
    /// `X` adds execute: the entry is a directory or had an execute bit before any change.
    execute_allowed: bool,
}

impl Change {
    /// The bits of `perm` that `who` selects (everything when no class was named).
    fn selected(who: u32, perm: u32) -> u32 {
        if who == 0 { perm } else { who & perm }
    }

    fn op(&mut self, op: u8, who: u32, perm: u32) {
        match op {
            b'+' => self.mode |= Self::selected(who, perm),
            b'-' => self.mode &= !Self::selected(who, perm),
            _ => {
                self.mode &= !(if who == 0 { STANDARD } else { who });
                self.mode |= Self::selected(who, perm);
            }
        }
    }

    fn execute(&mut self, who: u32) {
        if self.execute_allowed {
            self.mode |= Self::selected(who, 0o111);
        }
    }

    /// `g=u` and the like: the rwx bits of class `from`, applied to the classes in `who`.
    fn copy(&mut self, from: u8, who: u32, op: u8) {
        let shift = match from {
            b'u' => 6,
            b'g' => 3,
            _ => 0,
        };
        let value = self.mode >> shift & 7;
        for (class_read_bit, to) in [(0o400, 6), (0o040, 3), (0o004, 0)] {
            if who != 0 && who & class_read_bit == 0 {
                continue;
            }
            if op != b'+' {
                let clear = if op == b'=' { 7 } else { value };
                self.mode &= !(clear << to);
            }
            if op != b'-' {
                self.mode |= value << to;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::apply;

    /// What coreutils' chmod makes of `spec` on a file (or directory) of `mode`, umask 0.
    fn chmod(spec: &str, mode: u32, is_dir: bool) -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        if is_dir {
            std::fs::create_dir(&path).unwrap();
        } else {
            std::fs::write(&path, "").unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask 0 && chmod -- '{spec}' '{}'", path.display()))
            .status()
            .unwrap();
        assert!(status.success(), "chmod {spec}");
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn symbolic_modes_do_what_chmod_does() {
        let specs = [
            "u+x",
            "go-w",
            "a=rX",
            "=r",
            "+x",
            "u=rwx,g=rx,o=",
            "+t",
            "ug+s",
            "g=u",
            "o=g-w",
            "u-x+s",
            "a-rwx",
            "+X",
            "u+r,g+X",
            "go=u-w",
        ];
        for spec in specs {
            for (mode, is_dir) in [(0o644, false), (0o755, false), (0o600, false), (0o750, true), (0o700, true)] {
                assert_eq!(
                    apply(spec, mode, is_dir).unwrap(),
                    chmod(spec, mode, is_dir),
                    "{spec} on {mode:o} ({})",
                    if is_dir { "dir" } else { "file" }
                );
            }
        }
    }

    /// Where BSD's rules (BuildKit's) and coreutils differ.
    #[test]
    fn set_id_and_sticky_are_ignored_for_other_alone() {
        assert_eq!(apply("o+t", 0o644, false).unwrap(), 0o644);
        assert_eq!(apply("o+s", 0o644, false).unwrap(), 0o644);
        assert_eq!(apply("a+t", 0o644, false).unwrap(), 0o1644);
    }

    #[test]
    fn nonsense_is_refused() {
        for spec in ["", "u", "rwx", "u+q", "z+x", "u+x,"] {
            assert!(apply(spec, 0o644, false).is_err(), "{spec}");
        }
    }
}
