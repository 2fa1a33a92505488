//! Input whose nesting or length the user controls never recurses with it: stage cycles are
//! BuildKit's "circular dependency detected on stage" error at the line that closes them,
//! `${}` nested thousands deep and `ONBUILD ONBUILD ...` are located errors, and thousands
//! of chained stages or instructions lower and serialise without exhausting the stack
//! (test threads have 2 MiB stacks, so any recursion on these depths would abort here).

use std::collections::BTreeMap;

use fledge_llb::dockerfile::{self, ConvertError, Converted, ImageResolver, Options, Platform, ResolvedImage};
use fledge_llb::graph;

/// The depth the issue reports as aborting.
const DEEP: usize = 20_000;

/// Every case builds on `scratch`; resolving an image is a test failure.
struct NoImages;

impl ImageResolver for NoImages {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, String> {
        Err(format!("the test resolved an image ({reference})"))
    }
}

fn convert(text: &str) -> Result<Converted, ConvertError> {
    let ast = dockerfile::parse(text).map_err(|e| ConvertError::new(e.line, e.message))?;
    let options = Options {
        target: None,
        build_args: BTreeMap::new(),
        platform: Platform::linux_amd64(),
        build_platform: Platform::linux_amd64(),
        session_id: None,
        excludes: Vec::new(),
        local_contexts: Vec::new(),
        resolver: &NoImages,
    };
    dockerfile::convert(&ast, &options)
}

fn error(text: &str) -> (usize, String) {
    match convert(text) {
        Ok(_) => panic!("converted without an error:\n{text}"),
        Err(e) => (e.line, e.message),
    }
}

fn cycle(stage: &str) -> String {
    format!("circular dependency detected on stage: {stage}")
}

#[test]
fn a_stage_copying_from_itself_is_a_cycle() {
    assert_eq!(error("FROM scratch AS b\nCOPY --from=b /a /b\n"), (2, cycle("b")));
    assert_eq!(error("FROM scratch\nCOPY --from=0 /a /b\n"), (2, cycle("stage-0")));
    assert_eq!(error("FROM scratch AS b\nRUN --mount=from=b,target=/m true\n"), (2, cycle("b")));
    assert_eq!(error("FROM scratch AS b\nRUN --mount=type=bind,FROM=b,target=/m true\n"), (2, cycle("b")));
    // A trailing `\` joins the next FROM into the COPY: the stage still copies from itself.
    assert_eq!(error("FROM scratch AS b\nCOPY a /a\nCOPY --from=b /a /b \\\nFROM scratch\n"), (3, cycle("b")));
}

/// BuildKit checks every stage, in file order, and names the first one a cycle is reached
/// from (`TestDockerfileCircularDependencies`).
#[test]
fn stages_copying_from_each_other_are_a_cycle() {
    let two = "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n";
    assert_eq!(error(two), (2, cycle("a")));
    let three = "FROM busybox AS stage0\nCOPY --from=stage2 f1 /sub/\nFROM busybox AS stage1\nCOPY --from=stage0 f2 /sub/\nFROM busybox AS stage2\nCOPY --from=stage1 f2 /sub/\n";
    assert_eq!(error(three), (2, cycle("stage0")));
    // Through a FROM: b builds on a, which copies from b.
    assert_eq!(error("FROM scratch AS a\nCOPY --from=b /x /x\nFROM a AS b\n"), (2, cycle("a")));
    // A cycle among stages the target does not need is still an error, as in BuildKit.
    assert_eq!(error("FROM scratch AS a\nCOPY --from=a /x /x\nFROM scratch AS out\nCOPY f /f\n"), (2, cycle("a")));
}

/// An ONBUILD trigger runs at the FROM of the stage built on it: copying from that stage
/// closes a cycle there.
#[test]
fn an_onbuild_trigger_copying_from_its_own_stage_is_a_cycle() {
    assert_eq!(error("FROM scratch AS a\nONBUILD COPY --from=b /x /x\nFROM a AS b\n"), (3, cycle("b")));
}

#[test]
fn nested_onbuild_is_a_parse_error_at_any_depth() {
    let text = format!("FROM scratch\n{}RUN true\n", "ONBUILD ".repeat(DEEP));
    let (line, message) = error(&text);
    assert_eq!(line, 2);
    assert!(message.contains("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"), "{message}");
}

#[test]
fn deeply_nested_substitutions_are_a_located_error() {
    let word = format!("{}x{}", "${a:-".repeat(DEEP), "}".repeat(DEEP));
    for text in [format!("FROM scratch\nENV v={word}\n"), format!("FROM scratch\nCOPY --chown=\"{word}\" a b\n")] {
        let (line, message) = error(&text);
        assert_eq!(line, 2);
        assert!(message.contains("nested more than"), "{}", &message[..message.len().min(300)]);
        assert!(message.len() < 1000, "the error quotes the whole 20,000-deep word: {} bytes", message.len());
    }
    // RUN's shell form is the shell's to expand (as in BuildKit); lexing it for the step's
    // name must not recurse, and a heredoc on it cannot be found, which is an error.
    let run = convert(&format!("FROM scratch\nCOPY a /a\nRUN echo {word}\n")).unwrap();
    assert!(run.result.is_some());
    let (line, message) = error(&format!("FROM scratch\nRUN echo {word} <<EOF\nbody\nEOF\n"));
    assert_eq!(line, 2);
    assert!(message.contains("nested more than"), "{}", &message[..message.len().min(300)]);
    // Moderate nesting still expands as BuildKit does.
    let word = format!("{}x{}", "${a:-".repeat(50), "}".repeat(50));
    let converted = convert(&format!("FROM scratch\nENV v={word}\n")).unwrap();
    assert_eq!(converted.image["config"]["Env"][1], "v=x");
}

#[test]
fn a_long_chain_of_stages_lowers() {
    let mut text = String::from("FROM scratch AS s0\nCOPY f /f\n");
    for i in 1..DEEP {
        text += &format!("FROM s{} AS s{i}\n", i - 1);
    }
    let converted = convert(&text).unwrap();
    let result = converted.result.expect("the copy");
    assert_eq!(graph::definition(&result, None).def.len(), 3, "context, copy, terminal");
}

#[test]
fn a_long_chain_of_copies_between_stages_lowers_and_serialises() {
    let mut text = String::from("FROM scratch AS s0\nCOPY f /f\n");
    for i in 1..DEEP {
        text += &format!("FROM scratch AS s{i}\nCOPY --from=s{} / /\n", i - 1);
    }
    let result = convert(&text).unwrap().result.expect("the last copy");
    assert_eq!(graph::definition(&result, None).def.len(), DEEP + 2, "context, every copy, terminal");
}

#[test]
fn a_long_chain_of_instructions_serialises_and_drops() {
    let text = format!("FROM scratch\n{}", "COPY f /f\n".repeat(DEEP));
    let result = convert(&text).unwrap().result.expect("the copies");
    assert_eq!(graph::definition(&result, None).def.len(), DEEP + 2, "context, every copy, terminal");
}
