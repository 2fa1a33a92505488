//! The host side of a hybrid vsock: a Unix socket on which the host writes `CONNECT <port>\n`
//! and the VMM (Cloud Hypervisor, or `vhost-device-vsock` for QEMU) answers `OK <n>\n` once the
//! guest accepted the connection on that vsock port. Until the guest listens, the VMM closes
//! the connection instead; [`connect`] retries with a growing pause until its deadline.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::VmmError;

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// One attempt: the stream if the guest accepted.
fn attempt(uds: &Path, port: u32, deadline: Instant) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(uds).ok()?;
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_read_timeout(Some(wait)).ok()?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).ok()?;
    // Byte by byte, so nothing the guest sends after the reply is consumed here.
    let mut reply = Vec::new();
    let mut reader = BufReader::with_capacity(1, &stream);
    reader.read_until(b'\n', &mut reply).ok()?;
    if !reply.starts_with(b"OK ") {
        return None;
    }
    stream.set_read_timeout(None).ok()?;
    Some(stream)
}

/// Connects to vsock `port` in the guest through the VMM's hybrid socket `uds`, retrying
/// until `timeout` or until `cancelled` is set (whoever waited is gone: the attempts stop
/// within a pause, so a runtime shutting down does not wait for the timeout).
pub fn connect(uds: &Path, port: u32, timeout: Duration, cancelled: &AtomicBool) -> Result<UnixStream, VmmError> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if cancelled.load(Ordering::SeqCst) {
            return Err(VmmError::Protocol(format!("connecting to vsock port {port} was cancelled")));
        }
        if let Some(stream) = attempt(uds, port, deadline) {
            return Ok(stream);
        }
        if Instant::now() + pause >= deadline {
            return Err(VmmError::Protocol(format!(
                "the guest did not accept vsock port {port} within {} s (through {})",
                timeout.as_secs_f32(),
                uds.display()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A stand-in for the VMM's socket: refuses the first `refusals` connections (as a VMM
    /// does while the guest is not listening), then accepts and sends a greeting.
    fn vmm(dir: &Path, refusals: usize) -> std::path::PathBuf {
        let path = dir.join("vsock.uds");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                if i >= refusals {
                    conn.write_all(b"OK 1073741824\nhello from the guest").unwrap();
                    return;
                }
            }
        });
        path
    }

    #[test]
    fn retries_until_the_guest_listens_and_keeps_what_follows_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let uds = vmm(dir.path(), 3);
        let mut stream = connect(&uds, 1024, Duration::from_secs(5), &AtomicBool::new(false)).unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello from the guest");
    }

    #[test]
    fn gives_up_at_the_deadline_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let err = connect(&dir.path().join("absent.uds"), 1024, Duration::from_millis(300), &AtomicBool::new(false))
            .unwrap_err();
        assert!(err.to_string().contains("did not accept vsock port 1024"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
