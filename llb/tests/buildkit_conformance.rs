//! BuildKit's own test tables, read at test time from the shared conformance data
//! (`../shared/conformance/buildkit-dockerfile`, or `FLEDGE_CONFORMANCE_DIR`):
//! - `parser/*`: each Dockerfile parses to exactly its `result` (BuildKit's `Node.Dump()`);
//! - `parser-negative/*`: each Dockerfile is an error;
//! - `shell/envVarTest`: single-word expansion in BuildKit's test environment;
//! - `shell/wordsTest`: word splitting, with the `ENV` lines of the table.

use std::path::PathBuf;

use fledge_llb::dockerfile::parse;
use fledge_llb::dockerfile::shell::Lexer;

fn conformance() -> PathBuf {
    let dir = std::env::var_os("FLEDGE_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"));
    let dir = dir.join("buildkit-dockerfile");
    assert!(
        dir.is_dir(),
        "{} is missing: the shared conformance data sits beside the repository (../shared), or set FLEDGE_CONFORMANCE_DIR",
        dir.display()
    );
    dir
}

fn cases(kind: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(conformance().join(kind)).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no {kind} cases");
    dirs
}

#[test]
fn every_parser_case_dumps_exactly_its_result() {
    let mut failures = Vec::new();
    for case in cases("parser") {
        let dockerfile = std::fs::read(case.join("Dockerfile")).unwrap();
        let expected = std::fs::read_to_string(case.join("result")).unwrap().replace("\r\n", "\n");
        match parse(&String::from_utf8_lossy(&dockerfile)) {
            Ok(ast) if ast.dump() == expected => {}
            Ok(ast) => failures.push(format!("{}:\n--- expected\n{expected}--- got\n{}", case.display(), ast.dump())),
            Err(e) => failures.push(format!("{}: {e}", case.display())),
        }
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_negative_parser_case_is_an_error() {
    for case in cases("parser-negative") {
        let dockerfile = std::fs::read(case.join("Dockerfile")).unwrap();
        let parsed = parse(&String::from_utf8_lossy(&dockerfile));
        assert!(parsed.is_err(), "{} parsed: {:?}", case.display(), parsed.map(|a| a.dump()));
    }
}

#[test]
fn every_env_var_expansion_case_passes() {
    let table = std::fs::read_to_string(conformance().join("shell/envVarTest")).unwrap();
    let env: Vec<String> = ["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="].map(String::from).into();
    let lexer = Lexer::new('\\');
    let mut checked = 0;
    for (number, line) in table.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 3, "line {number}: {line}");
        let (platform, source, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        if platform == "W" {
            continue; // Windows only
        }
        let got = lexer.process_word(source, &env);
        if expected == "error" {
            assert!(got.is_err(), "line {number}: {source:?} should fail, gave {got:?}");
        } else {
            assert_eq!(got.as_deref(), Ok(expected), "line {number}: {source:?}");
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} cases read");
}

#[test]
fn every_word_splitting_case_passes() {
    let table = std::fs::read_to_string(conformance().join("shell/wordsTest")).unwrap();
    let lexer = Lexer::new('\\');
    let mut env: Vec<String> = Vec::new();
    for (number, line) in table.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            env.push(assignment.trim_start_matches(' ').to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {number}: {line}");
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        let got = lexer.process_words(fields[0].trim(), &env).unwrap_or_else(|_| vec!["error".into()]);
        assert_eq!(got, expected, "line {number}: {:?}", fields[0].trim());
    }
}
