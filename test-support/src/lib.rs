//! Skipping a test that cannot run (a tool, a kernel or a privilege it needs is missing), so
//! that it never passes silently. Every test crate of the workspace skips through here.
//!
//! Guarantees of [`skip`]:
//! - it prints `SKIPPED <binary>::<test>: <reason>` to stderr;
//! - with `FLEDGE_TEST_SKIPS` naming a directory, it records the skip there as a file named
//!   `<binary>::<test>` holding the reasons, one a line (`make test` counts these files);
//! - with `CI` set (to anything but empty, `0` or `false`) it panics, failing the test, unless
//!   [`ALLOWED_SKIPS`] lists the test with a reason the skip's reason starts with. A skip that
//!   fails the test is not recorded.
//!
//! The only way to get a [`Skipped`] is [`skip`], so a helper returning `Result<T, Skipped>`
//! has said why and been counted; [`need!`] and [`skip_unless!`] then return from the test.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::Write;
use std::path::Path;

/// The tests CI may skip, one a line: `<binary>::<test>  <reason>`; `#` starts a comment.
pub const ALLOWED_SKIPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/allowed-skips.txt");

/// Proof that the running test was reported and recorded as skipped.
#[derive(Debug)]
#[must_use = "return from the test (need! does)"]
pub struct Skipped(());

/// Skips the running test because of `reason` (see the module's guarantees); the caller
/// returns from the test.
pub fn skip(reason: impl Display) -> Skipped {
    let test = current_test();
    let reason = reason.to_string();
    if ci() {
        let list = std::fs::read_to_string(ALLOWED_SKIPS).unwrap_or_else(|e| panic!("{ALLOWED_SKIPS}: {e}"));
        match allowed(&test, &reason, &list) {
            Ok(true) => {}
            Ok(false) => panic!(
                "{test} cannot run in CI: {reason}\n  = help: install what it needs (scripts/install-deps.sh, \
                 the Makefile), or list it with the reason in tests/allowed-skips.txt if CI can never run it"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(dir) = std::env::var_os("FLEDGE_TEST_SKIPS").filter(|d| !d.is_empty()) {
        record(Path::new(&dir), &test, &reason);
    }
    Skipped(())
}

/// Returns from the test when `$result` is `Err(Skipped)`; else its `Ok` value.
#[macro_export]
macro_rules! need {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(skipped) => {
                let _: $crate::Skipped = skipped;
                return;
            }
        }
    };
}

/// Skips (with the `format!` reason that follows) and returns from the test unless `$cond`.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            let _: $crate::Skipped = $crate::skip(format!($($reason)+));
            return;
        }
    };
}

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`).
pub fn ci() -> bool {
    is_ci(std::env::var_os("CI").as_deref())
}

/// Whether the `CI` variable's value means a CI run.
fn is_ci(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !["", "0", "false"].contains(&v.to_string_lossy().as_ref()))
}

/// `<binary>::<test>`: the test binary's name without cargo's hash, and the test's name,
/// which libtest gives the thread running it.
fn current_test() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_deref().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let thread = std::thread::current();
    format!("{}::{}", binary_name(&stem), thread.name().unwrap_or("unnamed"))
}

/// `kernel-0123456789abcdef` → `kernel`.
fn binary_name(file_name: &str) -> &str {
    match file_name.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name,
        _ => file_name,
    }
}

/// Whether `list` (the allowed-skips file's text) lets `test` skip for `reason`; `Err` names
/// a line without a reason.
fn allowed(test: &str, reason: &str, list: &str) -> Result<bool, String> {
    for (number, line) in list.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (name, listed) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let listed = listed.trim();
        if listed.is_empty() {
            return Err(format!(
                "{ALLOWED_SKIPS}:{}: `{name}` has no reason\n  = help: write `<binary>::<test>  <reason>`, the reason \
                 being how the test's skip message starts",
                number + 1
            ));
        }
        if name == test && reason.starts_with(listed) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Appends `reason` to `dir/<test>`.
fn record(dir: &Path, test: &str, reason: &str) {
    let path = dir.join(test);
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(file, "{reason}")
    });
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_any_value_but_empty_0_or_false() {
        let ci = |v: Option<&str>| is_ci(v.map(OsStr::new));
        assert_eq!([ci(None), ci(Some("")), ci(Some("0")), ci(Some("false"))], [false; 4]);
        assert_eq!([ci(Some("true")), ci(Some("1")), ci(Some("yes"))], [true; 3]);
    }

    #[test]
    fn the_binary_name_loses_cargos_hash_only() {
        assert_eq!(binary_name("kernel-0123456789abcdef"), "kernel");
        assert_eq!(binary_name("fledge_vmm-fedcba9876543210"), "fledge_vmm");
        assert_eq!(binary_name("shared-cache"), "shared-cache");
        assert_eq!(binary_name("x-0123456789abcdeg"), "x-0123456789abcdeg");
    }

    #[test]
    fn the_test_is_named_after_its_binary_and_thread() {
        let name = current_test();
        assert!(name.starts_with("fledge_test_support::"), "{name}");
        assert!(name.ends_with("the_test_is_named_after_its_binary_and_thread"), "{name}");
    }

    #[test]
    fn a_listed_test_may_skip_only_for_its_listed_reason() {
        let list = "# why\n\ndaemon::a_test  no buildkitd  # comment\nvmm::other no binary\n";
        assert_eq!(allowed("daemon::a_test", "no buildkitd (put one on PATH)", list), Ok(true));
        assert_eq!(allowed("daemon::a_test", "docker-registry is not installed", list), Ok(false));
        assert_eq!(allowed("daemon::b_test", "no buildkitd", list), Ok(false));
        assert_eq!(allowed("vmm::other", "no binary here", list), Ok(true));
    }

    #[test]
    fn a_listed_test_without_a_reason_is_an_error_naming_the_line() {
        let err = allowed("x::y", "r", "\nx::y\n").unwrap_err();
        assert!(err.contains("allowed-skips.txt:2: `x::y` has no reason"), "{err}");
    }

    #[test]
    fn the_committed_list_is_well_formed() {
        let list = std::fs::read_to_string(ALLOWED_SKIPS).unwrap();
        assert_eq!(allowed("", "", &list), Ok(false));
    }

    #[test]
    fn a_skip_is_recorded_once_per_test_with_its_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("skips");
        record(&records, "boot::t", "no kernel");
        record(&records, "boot::t", "no qemu");
        record(&records, "boot::u", "no kernel");
        let mut files: Vec<_> = std::fs::read_dir(&records).unwrap().map(|e| e.unwrap().file_name()).collect();
        files.sort();
        assert_eq!(files, ["boot::t", "boot::u"]);
        assert_eq!(std::fs::read_to_string(records.join("boot::t")).unwrap(), "no kernel\nno qemu\n");
    }
}
