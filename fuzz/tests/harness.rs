//! The harness through its binary: a deterministic pass over the committed corpus finds no
//! crash; crashes of every kind (panic, abort, stack overflow, hang) are caught with their
//! exact input; and every crash fixed so far (`regressions/TARGET-*`) stays fixed.

use std::path::{Path, PathBuf};
use std::process::Command;

const FUZZ: &str = env!("CARGO_BIN_EXE_fledge-fuzz");

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A few thousand inputs per target from the committed seeds, with a fixed seed (seconds).
#[test]
fn corpus_pass() {
    let crashes = tempfile::tempdir().unwrap();
    let out = Command::new(FUZZ)
        .args(["all", "--runs", "2000", "--seed", "1", "--corpus"])
        .arg(here().join("corpus"))
        .arg("--crashes")
        .arg(crashes.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let saved: Vec<_> =
        std::fs::read_dir(crashes.path()).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(out.status.success(), "crashes saved: {saved:?}\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for target in fledge_fuzz::ALL {
        assert!(stdout.contains(&format!("{target}: 2000 executions, 0 crashes")), "{stdout}");
    }
    assert!(stdout.contains("total: 10000 executions, 0 crashes"), "{stdout}");
}

#[test]
fn crashes_of_every_kind_are_saved_with_their_input() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("corpus/selftest");
    std::fs::create_dir_all(&seeds).unwrap();
    let kinds = ["fine", "panic", "abort", "deep", "hang"];
    for (i, kind) in kinds.iter().enumerate() {
        std::fs::write(seeds.join(i.to_string()), kind).unwrap();
    }
    let crashes = dir.path().join("crashes");
    // The deadline only has to outlast a healthy input; the hanging one never ends.
    let out = Command::new(FUZZ)
        .args(["selftest", "--runs", "8", "--deadline", "3", "--corpus"])
        .arg(dir.path().join("corpus"))
        .arg("--crashes")
        .arg(&crashes)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("selftest: 8 executions, 4 crashes"), "{stdout}{stderr}");
    for (index, what) in [(1, "panicked"), (2, "crashed"), (3, "crashed"), (4, "hung")] {
        assert!(stderr.contains(&format!("input {index} {what}")), "{stderr}");
    }
    let mut saved: Vec<String> =
        std::fs::read_dir(&crashes).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    saved.sort();
    assert_eq!(saved, ["abort", "deep", "hang", "panic"]);
}

/// Every input under `regressions/` once crashed its target (named by the file's prefix).
#[test]
fn fixed_crashes_stay_fixed() {
    let dir = here().join("regressions");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert!(!paths.is_empty(), "no regression inputs in {}", dir.display());
    for path in &paths {
        run_regression(path);
    }
}

fn run_regression(path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy();
    let target_name = name.split('-').next().unwrap();
    let mut target = fledge_fuzz::target(target_name).unwrap_or_else(|| panic!("{name}: no target {target_name}"));
    // A panic fails this test, naming the input; an abort fails the whole test binary.
    eprintln!("regression {name}");
    target.run(&std::fs::read(path).unwrap());
}
