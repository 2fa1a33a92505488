//! What a guest tells the host on its serial console: guest-init's exit-status line, or, when
//! the image runs its own init (`[init] none`), the kernel's panic when that init exits. The
//! console is untrusted input: a line is only believed if it parses exactly.

/// guest-init's line: `FLEDGE_EXIT_STATUS=N`.
pub const EXIT_STATUS_PREFIX: &str = "FLEDGE_EXIT_STATUS=";
/// The kernel's words when PID 1 exits: `Attempted to kill init! exitcode=0x00000100`.
const KILLED_INIT: &str = "Attempted to kill init! exitcode=0x";

/// The workload's exit status, if `line` reports one.
pub fn exit_status(line: &str) -> Option<u8> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(n) = line.strip_prefix(EXIT_STATUS_PREFIX) {
        return n.parse::<u8>().ok();
    }
    let (_, hex) = line.split_once(KILLED_INIT)?;
    let code = u32::from_str_radix(hex.get(..8)?, 16).ok()?;
    // A wait status: the exit code in bits 8–15, or a terminating signal in bits 0–6.
    Some(match code & 0x7f {
        0 => (code >> 8) as u8,
        signal => 128 + signal as u8,
    })
}

/// Splits console bytes into lines for [`exit_status`], however the reads cut them.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Feeds `bytes`; returns the last status reported in the lines they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<u8> {
        let mut status = None;
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                status = exit_status(&line).or(status);
            } else if self.partial.len() < 4096 {
                self.partial.push(b);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_init_status_lines_are_read_exactly() {
        assert_eq!(exit_status("FLEDGE_EXIT_STATUS=0\r\n"), Some(0));
        assert_eq!(exit_status("FLEDGE_EXIT_STATUS=137"), Some(137));
        assert_eq!(exit_status("FLEDGE_EXIT_STATUS=300"), None);
        assert_eq!(exit_status("echo FLEDGE_EXIT_STATUS=3"), None, "only at the start of a line");
    }

    #[test]
    fn a_kernel_panic_on_init_exit_carries_the_status() {
        let line = "[    1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000300";
        assert_eq!(exit_status(line), Some(3));
        assert_eq!(exit_status("Attempted to kill init! exitcode=0x00000009"), Some(137), "SIGKILL");
        assert_eq!(exit_status("Attempted to kill init! exitcode=0x0"), None);
    }

    #[test]
    fn lines_survive_arbitrary_read_boundaries() {
        let mut lines = Lines::default();
        assert_eq!(lines.feed(b"hello\nFLEDGE_EXIT_"), None);
        assert_eq!(lines.feed(b"STATUS=4"), None);
        assert_eq!(lines.feed(b"2\r\nmore\n"), Some(42));
        assert_eq!(lines.feed(b"FLEDGE_EXIT_STATUS=0\nFLEDGE_EXIT_STATUS=5\n"), Some(5), "the last report wins");
    }
}
