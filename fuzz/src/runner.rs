//! Running a target: the mutation loop (in a child process) and its supervisor.
//!
//! The child writes each input to a file before running it (an 8-byte little-endian input
//! number, then the input), so when it dies (an abort or stack overflow takes the whole
//! process), panics (caught and turned into exit status [`PANICKED`]) or stops making
//! progress for longer than the deadline (a hang; the supervisor kills it), the supervisor
//! knows the exact input. It saves it as `CRASHES/TARGET-HASH` and starts a new child at the
//! next input number: inputs depend only on the seed and their number, so the run goes on
//! as if nothing had happened.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use crate::{Rng, Target, input_hash};

/// The child's exit status after a caught panic.
pub const PANICKED: i32 = 70;

/// At most this many mutations are stacked on one corpus input.
const MAX_STACK: usize = 6;

/// What one run of a target is given.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: String,
    pub runs: u64,
    pub seed: u64,
    pub corpus: PathBuf,
    /// How long one input may run before it counts as a hang.
    pub deadline: Duration,
    pub crashes: PathBuf,
}

/// A crashing input, saved.
#[derive(Debug, Clone)]
pub struct Crash {
    pub index: u64,
    pub kind: String,
    pub saved: PathBuf,
}

#[derive(Debug, Default)]
pub struct Report {
    pub executions: u64,
    pub crashes: Vec<Crash>,
}

/// The seed inputs of `target`: the files in `corpus/TARGET/`, by name.
pub fn load_corpus(corpus: &Path, target: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let dir = corpus.join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().filter(|p| p.is_file()).map(std::fs::read).collect::<Result<_, _>>()?;
    if seeds.is_empty() {
        return Err(std::io::Error::other(format!("{}: no seed inputs", dir.display())));
    }
    Ok(seeds)
}

/// Input `index`: the seeds first, as they are, then mutations of them.
pub fn input(target: &dyn Target, corpus: &[Vec<u8>], seed: u64, index: u64) -> Vec<u8> {
    if let Some(seed_input) = corpus.get(index as usize) {
        return seed_input.clone();
    }
    let mut rng = Rng::for_input(seed, index);
    let mut data = rng.pick(corpus).clone();
    for _ in 0..=rng.below(MAX_STACK) {
        data = target.mutate(&data, corpus, &mut rng);
    }
    data
}

/// The child's loop: inputs `start..runs`, each written to `current` before it runs. Returns
/// the exit status (0, or [`PANICKED`]).
pub fn child(target: &mut dyn Target, corpus: &[Vec<u8>], seed: u64, start: u64, runs: u64, current: &Path) -> i32 {
    for index in start..runs {
        let data = input(target, corpus, seed, index);
        if let Err(e) = record(current, index, &data) {
            eprintln!("fledge-fuzz: cannot write {}: {e}", current.display());
            return 1;
        }
        if catch_unwind(AssertUnwindSafe(|| target.run(&data))).is_err() {
            return PANICKED;
        }
    }
    0
}

fn record(current: &Path, index: u64, data: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(current)?;
    file.write_all(&index.to_le_bytes())?;
    file.write_all(data)
}

/// Runs `plan` in child processes of `exe` (this program), restarting after each crash.
pub fn supervise(exe: &Path, plan: &Plan) -> std::io::Result<Report> {
    let work = tempfile::tempdir()?;
    let current = work.path().join("current");
    let mut report = Report::default();
    let mut start = 0;
    while start < plan.runs {
        let _ = std::fs::remove_file(&current);
        let mut child = spawn(exe, plan, start, &current)?;
        let Some(kind) = watch(&mut child, &current, plan.deadline)? else {
            report.executions += plan.runs - start;
            break;
        };
        let recorded = std::fs::read(&current)?;
        let (number, data) = recorded.split_at(8.min(recorded.len()));
        let index = u64::from_le_bytes(number.try_into().map_err(|_| std::io::Error::other("no input recorded"))?);
        std::fs::create_dir_all(&plan.crashes)?;
        let saved = plan.crashes.join(format!("{}-{}", plan.target, input_hash(data)));
        std::fs::write(&saved, data)?;
        eprintln!("fledge-fuzz: {}: input {index} {kind}; saved as {}", plan.target, saved.display());
        report.executions += index + 1 - start;
        report.crashes.push(Crash { index, kind, saved });
        start = index + 1;
    }
    Ok(report)
}

fn spawn(exe: &Path, plan: &Plan, start: u64, current: &Path) -> std::io::Result<Child> {
    Command::new(exe)
        .arg("--child")
        .arg(&plan.target)
        .args(["--runs", &plan.runs.to_string(), "--seed", &plan.seed.to_string(), "--start", &start.to_string()])
        .arg("--corpus")
        .arg(&plan.corpus)
        .arg("--current")
        .arg(current)
        .spawn()
}

/// Waits for the child; `None` when it finished every input, else what went wrong.
fn watch(child: &mut Child, current: &Path, deadline: Duration) -> std::io::Result<Option<String>> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(match (status.code(), status.success()) {
                (_, true) => None,
                (Some(PANICKED), _) => Some("panicked".into()),
                _ => Some(format!("crashed ({status})")),
            });
        }
        // Progress is the input file being rewritten; before the first one, the start.
        let last = std::fs::metadata(current).and_then(|m| m.modified()).ok();
        let idle = match last {
            Some(time) => SystemTime::now().duration_since(time).unwrap_or_default(),
            None => started.elapsed(),
        };
        if idle > deadline {
            child.kill()?;
            child.wait()?;
            return Ok(Some(format!("hung (no progress for {}s)", deadline.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
