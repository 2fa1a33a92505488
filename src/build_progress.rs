//! The progress display of a Dockerfile build, in BuildKit's modes: `plain` numbers each step
//! (`#3 [2/4] RUN ...`), prefixes its output with the seconds since it started, and ends it
//! with `#3 DONE 1.2s`, `#3 CACHED` or `#3 ERROR: ...`; `tty` shows the running steps as live
//! lines with their output printed above them; `rawjson` writes one JSON status per event on
//! stdout, shaped like BuildKit's `SolveStatus` (vertexes, logs with base64 data), for tools.
//! `auto` is `tty` on a terminal and `plain` otherwise. A summary line closes the build.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::ProgressMode;
use crate::solver::{Outcome, Reporter, Stream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Plain,
    Tty,
    Rawjson,
}

pub struct BuildDisplay {
    mode: Mode,
    began: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Step number (in the order steps start) and start time of each step.
    steps: HashMap<String, (usize, Instant)>,
    /// Output not yet ended by a newline, per step and stream.
    partial: HashMap<(String, Stream), Vec<u8>>,
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    ran: usize,
    cached: usize,
}

impl BuildDisplay {
    pub fn new(mode: ProgressMode, quiet: bool) -> Self {
        let mode = match mode {
            ProgressMode::Rawjson => Mode::Rawjson,
            _ if quiet => Mode::Quiet,
            ProgressMode::Plain => Mode::Plain,
            ProgressMode::Tty => Mode::Tty,
            ProgressMode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            ProgressMode::Auto => Mode::Plain,
        };
        let state = State { multi: (mode == Mode::Tty).then(MultiProgress::new), ..State::default() };
        BuildDisplay { mode, began: Instant::now(), state: Mutex::new(state) }
    }

    /// The closing line: how long the build took and how many steps ran or were cached.
    pub fn summary(&self) {
        let state = self.state.lock().expect("display lock");
        let line = format!(
            "Solved {} step(s) in {:.1}s: {} ran, {} cached",
            state.ran + state.cached,
            self.began.elapsed().as_secs_f64(),
            state.ran,
            state.cached
        );
        match self.mode {
            Mode::Plain => say(format_args!("\n{line}")),
            Mode::Tty => say(format_args!("{line}")),
            Mode::Quiet | Mode::Rawjson => {}
        }
    }
}

/// A line on stderr; a closed stderr (`fledge build 2>&1 | head`) must not stop the build.
fn say(line: std::fmt::Arguments) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Now, as RFC 3339 UTC (BuildKit's timestamps).
fn timestamp() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

fn rawjson(status: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{status}");
    let _ = out.flush();
}

impl State {
    fn number(&self, id: &str) -> (usize, Instant) {
        self.steps.get(id).copied().unwrap_or((0, Instant::now()))
    }

    /// Prints a line of a step's output.
    fn line(&self, mode: Mode, id: &str, text: &[u8]) {
        let (n, started) = self.number(id);
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end_matches('\r');
        match (mode, &self.multi) {
            (Mode::Tty, Some(multi)) => {
                let _ = multi.println(format!("#{n} {text}"));
            }
            _ => say(format_args!("#{n} {:.3} {text}", started.elapsed().as_secs_f64())),
        }
    }

    /// Prints what is left of a step's output when it ends.
    fn flush(&mut self, mode: Mode, id: &str) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(rest) = self.partial.remove(&(id.to_string(), stream))
                && !rest.is_empty()
            {
                self.line(mode, id, &rest);
            }
        }
    }
}

impl Reporter for BuildDisplay {
    fn started(&self, id: &str, name: &str) {
        let mut state = self.state.lock().expect("display lock");
        let n = state.steps.len() + 1;
        state.steps.insert(id.to_string(), (n, Instant::now()));
        match self.mode {
            Mode::Plain => say(format_args!("\n#{n} {name}")),
            Mode::Tty => {
                let bar = ProgressBar::new_spinner()
                    .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
                let bar = state.multi.as_ref().expect("tty mode").add(bar);
                bar.set_message(format!("#{n} {name}"));
                bar.enable_steady_tick(Duration::from_millis(100));
                state.bars.insert(id.to_string(), bar);
            }
            Mode::Rawjson => {
                rawjson(serde_json::json!({"vertexes": [{"digest": id, "name": name, "started": timestamp()}]}))
            }
            Mode::Quiet => {}
        }
    }

    fn output(&self, id: &str, stream: Stream, data: &[u8]) {
        let mut state = self.state.lock().expect("display lock");
        match self.mode {
            Mode::Rawjson => {
                let data = base64::engine::general_purpose::STANDARD.encode(data);
                let log =
                    serde_json::json!({"vertex": id, "stream": stream as u8, "data": data, "timestamp": timestamp()});
                rawjson(serde_json::json!({ "logs": [log] }));
            }
            Mode::Plain | Mode::Tty => {
                let key = (id.to_string(), stream);
                let mut buffered = state.partial.remove(&key).unwrap_or_default();
                buffered.extend_from_slice(data);
                let mut lines = buffered.split(|&b| b == b'\n').collect::<Vec<_>>();
                let rest = lines.pop().unwrap_or_default().to_vec();
                for line in lines {
                    state.line(self.mode, id, line);
                }
                state.partial.insert(key, rest);
            }
            Mode::Quiet => {}
        }
    }

    fn finished(&self, id: &str, name: &str, outcome: &Outcome, seconds: f64) {
        let mut state = self.state.lock().expect("display lock");
        state.flush(self.mode, id);
        match outcome {
            Outcome::Cached => state.cached += 1,
            Outcome::Done => state.ran += 1,
            Outcome::Failed(_) => {}
        }
        let (n, _) = state.number(id);
        let verdict = match outcome {
            Outcome::Cached => "CACHED".to_string(),
            Outcome::Done => format!("DONE {seconds:.1}s"),
            Outcome::Failed(error) => format!("ERROR: {error}"),
        };
        match self.mode {
            Mode::Plain => say(format_args!("#{n} {verdict}")),
            Mode::Tty => {
                if let Some(bar) = state.bars.remove(id) {
                    let mark = if matches!(outcome, Outcome::Failed(_)) { "✘" } else { "✔" };
                    bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
                    bar.finish_with_message(format!("{mark} #{n} {name} {verdict}"));
                }
            }
            Mode::Rawjson => {
                let mut vertex = serde_json::json!({
                    "digest": id,
                    "name": name,
                    "cached": matches!(outcome, Outcome::Cached),
                    "completed": timestamp(),
                    "duration": seconds,
                });
                if let Outcome::Failed(error) = outcome {
                    vertex["error"] = error.clone().into();
                }
                rawjson(serde_json::json!({ "vertexes": [vertex] }));
            }
            Mode::Quiet => {}
        }
    }
}
