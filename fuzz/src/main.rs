//! `fledge-fuzz TARGET... [--runs N] [--seed S] [--corpus DIR] [--deadline SECS] [--crashes DIR]`
//!
//! Runs each target (`all` for every one) for N inputs, seeds first, in a supervised child
//! process, and reports executions and crashes; exits 1 if any input crashed. (`--child` is
//! the supervised loop itself.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fledge_fuzz::runner::{self, Plan};

const USAGE: &str = "usage: fledge-fuzz TARGET... [--runs N] [--seed S] [--corpus DIR] [--deadline SECS] [--crashes DIR]\n  targets: all, dockerfile, config, oci, layer, agent";

struct Args {
    targets: Vec<String>,
    runs: u64,
    seed: u64,
    corpus: PathBuf,
    deadline: u64,
    crashes: PathBuf,
    child: bool,
    start: u64,
    current: Option<PathBuf>,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = Args {
        targets: Vec::new(),
        runs: 10_000,
        seed: 1,
        corpus: here.join("corpus"),
        deadline: 60,
        crashes: here.join("crashes"),
        child: false,
        start: 0,
        current: None,
    };
    while let Some(arg) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |text: String, name: &str| text.parse::<u64>().map_err(|_| format!("{name} {text}: not a number"));
        match arg.as_str() {
            "--runs" => args.runs = number(value("--runs")?, "--runs")?,
            "--seed" => args.seed = number(value("--seed")?, "--seed")?,
            "--start" => args.start = number(value("--start")?, "--start")?,
            "--deadline" => args.deadline = number(value("--deadline")?, "--deadline")?,
            "--corpus" => args.corpus = value("--corpus")?.into(),
            "--crashes" => args.crashes = value("--crashes")?.into(),
            "--current" => args.current = Some(value("--current")?.into()),
            "--child" => args.child = true,
            "all" => args.targets.extend(fledge_fuzz::ALL.map(String::from)),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name if fledge_fuzz::target(name).is_some() => args.targets.push(name.to_string()),
            name => return Err(format!("unknown target {name}")),
        }
    }
    if args.targets.is_empty() {
        return Err("no target given".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.child { child(&args) } else { supervise(&args) }
}

fn child(args: &Args) -> ExitCode {
    let name = &args.targets[0];
    let mut target = fledge_fuzz::target(name).expect("checked when parsing");
    let corpus = match runner::load_corpus(&args.corpus, name) {
        Ok(corpus) => corpus,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let current = args.current.as_deref().expect("the supervisor passes --current");
    let status = runner::child(target.as_mut(), &corpus, args.seed, args.start, args.runs, current);
    ExitCode::from(status as u8)
}

fn supervise(args: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find this program to run it as a child: {e}");
            return ExitCode::from(2);
        }
    };
    // The seed (and the corpus) reproduce every input of the run.
    println!("seed {}, {} inputs per target, corpus {}", args.seed, args.runs, args.corpus.display());
    let (mut executions, mut crashes) = (0, 0);
    for target in &args.targets {
        let plan = Plan {
            target: target.clone(),
            runs: args.runs,
            seed: args.seed,
            corpus: args.corpus.clone(),
            deadline: Duration::from_secs(args.deadline),
            crashes: args.crashes.clone(),
        };
        match runner::supervise(&exe, &plan) {
            Ok(report) => {
                println!("{target}: {} executions, {} crashes", report.executions, report.crashes.len());
                executions += report.executions;
                crashes += report.crashes.len();
            }
            Err(e) => {
                eprintln!("error: {target}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    println!("total: {executions} executions, {crashes} crashes");
    if crashes == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
