//! Progress on stderr: a spinner or byte bar on a terminal, one plain line per step
//! otherwise (CI logs), nothing with `-q`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Plain,
    Tty,
}

pub struct Progress {
    mode: Mode,
}

/// One step of a build; finishing it prints its duration.
pub struct Step {
    mode: Mode,
    name: String,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let mode = match () {
            _ if quiet => Mode::Quiet,
            _ if std::io::stderr().is_terminal() => Mode::Tty,
            _ => Mode::Plain,
        };
        Self { mode }
    }

    pub fn is_quiet(&self) -> bool {
        self.mode == Mode::Quiet
    }

    /// Starts a step; `total_bytes` turns a terminal spinner into a byte bar.
    pub fn step(&self, name: impl Into<String>, total_bytes: Option<u64>) -> Step {
        let name = name.into();
        let bar = match self.mode {
            Mode::Tty => {
                let bar = match total_bytes {
                    Some(total) => ProgressBar::new(total).with_style(
                        ProgressStyle::with_template(
                            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner(),
                };
                bar.set_message(name.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                Some(bar)
            }
            Mode::Plain => {
                let _ = writeln!(std::io::stderr(), "=> {name}");
                None
            }
            Mode::Quiet => None,
        };
        Step { mode: self.mode, name, started: Instant::now(), bar }
    }

    /// A line that is always worth showing (unless quiet), e.g. the final result.
    pub fn say(&self, line: &str) {
        if self.mode != Mode::Quiet {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

impl Step {
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    pub fn finish(self, detail: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let line = if detail.is_empty() {
            format!("{} ({secs:.1}s)", self.name)
        } else {
            format!("{} ({detail}, {secs:.1}s)", self.name)
        };
        match (self.mode, self.bar) {
            (_, Some(bar)) => {
                bar.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
                bar.finish_with_message(line);
            }
            (Mode::Plain, None) => {
                let _ = writeln!(std::io::stderr(), "   done: {line}");
            }
            _ => {}
        }
    }
}
