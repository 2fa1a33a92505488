//! A slow registry for tests: a loopback TCP proxy in front of a real one that holds each
//! reply back for a fixed latency and then sends it at a bounded rate per connection
//! (requests pass at full speed), so pulls take long enough for concurrent builds to overlap
//! and for a test to stop one mid-download, and a build finds the store changed between
//! asking for a blob and receiving it. It stops by itself when dropped: the listener and every connection end
//! within half a second.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked reads look at the stop flag.
const POLL: Duration = Duration::from_millis(500);
/// The proxy sends at most this much at once, then waits for its share of time.
const CHUNK: usize = 16 * 1024;

pub struct Throttle {
    /// `127.0.0.1:PORT`: use it where the registry's host would go.
    pub host: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttle {
    /// Forwards to `upstream` (`host:port`), starting each reply `latency` after it arrives
    /// and sending it at `bytes_per_sec` per connection.
    pub fn start(upstream: &str, bytes_per_sec: usize, latency: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, flag) = (upstream.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => connect(client, &upstream, Pace { bytes_per_sec, latency }, &flag),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        });
        Self { host, stop, thread: Some(thread) }
    }
}

/// How replies are slowed down.
#[derive(Clone, Copy)]
struct Pace {
    bytes_per_sec: usize,
    latency: Duration,
}

/// Joins `client` to a new connection to `upstream`, one thread per direction.
fn connect(client: TcpStream, upstream: &str, pace: Pace, stop: &Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let _ = client.set_nonblocking(false);
    for s in [&client, &server] {
        let _ = s.set_read_timeout(Some(POLL));
        let _ = s.set_nodelay(true);
    }
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else { return };
    // Set when a request went up and its reply has not started yet.
    let asked = Arc::new(AtomicBool::new(false));
    let (stop2, asked2) = (stop.clone(), asked.clone());
    std::thread::spawn(move || pipe(client2, server2, None, &asked2, &stop2));
    let stop = stop.clone();
    std::thread::spawn(move || pipe(server, client, Some(pace), &asked, &stop));
}

/// Copies `from` to `to` until either side closes or the proxy stops; then closes both.
/// Without a pace (requests) it marks `asked` after each write; with one (replies) it holds
/// the first chunk after a request back for the latency, and pauses after each chunk so
/// that at most the rate passes.
fn pipe(mut from: TcpStream, mut to: TcpStream, pace: Option<Pace>, asked: &AtomicBool, stop: &AtomicBool) {
    let mut buf = vec![0; CHUNK];
    while !stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue;
            }
            Err(_) => break,
        };
        let Some(pace) = pace else {
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            asked.store(true, Ordering::SeqCst);
            continue;
        };
        if asked.swap(false, Ordering::SeqCst) {
            std::thread::sleep(pace.latency);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_secs_f64(n as f64 / pace.bytes_per_sec as f64));
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
