//! `fledge debug parse` and `fledge debug llb` through the real binary: BuildKit's dump
//! format, LLB for a Dockerfile whose base image comes from a local registry (and then from
//! the store, offline), the raw `pb.Definition`, and errors that point at the line.

mod common;

use common::*;

#[test]
fn debug_parse_prints_buildkits_dump_and_points_at_errors() {
    let p = Project::new();
    p.write("Dockerfile", "FROM busybox AS b\nENV a=1 b=\"2 3\"\nONBUILD RUN echo hi\nCMD [\"sh\"]\n");
    let out = run(p.fledge().args(["debug", "parse", "Dockerfile"]));
    assert_success(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "(from \"busybox\" \"AS\" \"b\")\n(env \"a\" \"1\" \"=\" \"b\" \"\\\"2 3\\\"\" \"=\")\n(onbuild (run \"echo hi\"))\n(cmd \"sh\")\n"
    );
    p.write("Bad", "FROM busybox\n\nENV lonely\n");
    let out = run(p.fledge().args(["debug", "parse", "Bad"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ENV must have two arguments") && stderr(&out).contains("Bad:3:1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn debug_llb_lowers_a_dockerfile_with_a_registry_base_image() {
    let mut registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/frontend");
    let p = Project::new();
    p.write("Dockerfile", &format!("FROM {image} AS base\nARG V=1\nWORKDIR /app\nCOPY notes.txt .\nRUN --mount=type=cache,target=/c cat notes.txt\nFROM base\nCOPY --from=base /app/notes.txt /copy\n"));
    p.write("notes.txt", "n");
    p.write(".dockerignore", "*.log\n");
    let out = run(p.fledge().args(["debug", "llb", "Dockerfile"]));
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let source = &lines[0]["op"]["Source"]["identifier"];
    assert!(source.as_str().unwrap().starts_with(&format!("docker-image://{image}@sha256:")), "{source}");
    let context = lines.iter().find(|l| l["op"]["Source"]["identifier"] == "local://context").expect("context");
    assert_eq!(context["op"]["Source"]["attrs"]["local.followpaths"], "[\"notes.txt\"]");
    assert_eq!(context["op"]["Source"]["attrs"]["local.excludepatterns"], "[\"*.log\"]");
    assert!(stdout.contains("\"args\":[\"/bin/sh\",\"-c\",\"cat notes.txt\"]"), "{stdout}");
    let config = &lines.last().unwrap()["image_config"]["config"];
    assert_eq!(config["WorkingDir"], "/app");

    // The base is in the store now: the same LLB without the registry, and as raw pb.
    registry.stop();
    let again = run(p.fledge().args(["debug", "llb", "Dockerfile"]));
    assert_success(&again);
    assert_eq!(again.stdout, out.stdout, "offline from the store, identical");
    let pb = run(p.fledge().args(["debug", "llb", "--format", "pb", "Dockerfile"]));
    assert_success(&pb);
    let definition = <fledge_llb::pb::Definition as prost::Message>::decode(&pb.stdout[..]).unwrap();
    assert_eq!(definition.def.len(), lines.len() - 1, "every op plus the terminal op");

    let out = run(p.fledge().args(["debug", "llb", "--target", "nope", "Dockerfile"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("target stage \"nope\" could not be found"), "{}", stderr(&out));
}

/// Stage cycles and user-controlled nesting are located errors from both commands, before
/// any image, VM or network is needed (every stage is `FROM scratch`), never an abort.
#[test]
fn stage_cycles_and_deep_nesting_are_located_errors_not_aborts() {
    let p = Project::new();
    let deep = format!("{}x{}", "${a:-".repeat(20_000), "}".repeat(20_000));
    let cases = [
        (
            "Cycle",
            "FROM scratch AS b\nCOPY --from=b /a /b\n".to_string(),
            "circular dependency detected on stage: b",
            2,
        ),
        (
            "Mutual",
            "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n".to_string(),
            "circular dependency detected on stage: a",
            2,
        ),
        (
            "Joined",
            "FROM scratch AS b\nCOPY --from=b /a /b \\\nFROM scratch\n".to_string(),
            "circular dependency detected on stage: b",
            2,
        ),
        ("Nested", format!("FROM scratch\nENV v={deep}\n"), "nested more than", 2),
    ];
    for (file, text, message, line) in cases {
        p.write(file, &text);
        let listing = || -> Vec<String> {
            // The state directory (the store) is Fledge's own, opened before lowering.
            p.listing().into_iter().filter(|n| !["state", "cache", "home"].contains(&n.as_str())).collect()
        };
        let before = listing();
        for args in [vec!["debug", "llb", file], vec!["build", file, "-o", "out.squashfs"]] {
            let out = run(p.fledge().args(&args));
            let err = stderr(&out);
            let shown = &err[..err.len().min(2000)];
            assert_eq!(out.status.code(), Some(1), "{args:?}: {shown}");
            assert!(err.contains(message) && err.contains(&format!("{file}:{line}:")), "{args:?}: {shown}");
            assert!(!err.contains("overflow") && !err.contains("panicked"), "{args:?}: {shown}");
            assert_eq!(listing(), before, "{args:?} left files behind");
        }
    }
}
