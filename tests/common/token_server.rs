//! A token server for registry tests: Docker's token authentication, where the registry
//! answers 401 with a Bearer challenge and the client fetches a JWT here with Basic
//! credentials. Tokens are RS256-signed (by `openssl`) with a self-signed certificate the
//! registry trusts (`rootcertbundle`); each grants what was asked to `user:password`. Every
//! scope asked for is recorded. Stops when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub const SERVICE: &str = "fledge-test-registry";
pub const ISSUER: &str = "fledge-test-issuer";

pub struct TokenServer {
    pub realm: String,
    /// The certificate that signs tokens, for the registry's `rootcertbundle`.
    pub cert: PathBuf,
    /// Every `scope` asked for, in order.
    pub scopes: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed for token tests");
    child.stdin.take().unwrap().write_all(input.unwrap_or_default()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn start(user: &str, password: &str) -> TokenServer {
    let dir = tempfile::tempdir().unwrap();
    let new_certificate =
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=fledge-test-token -keyout key.pem -out cert.pem";
    openssl(dir.path(), &new_certificate.split(' ').collect::<Vec<_>>(), None);
    let der = openssl(dir.path(), &["x509", "-in", "cert.pem", "-outform", "DER"], None);
    let signer = Signer { dir: dir.path().to_path_buf(), x5c: STANDARD.encode(der) };
    let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let scopes = Arc::new(Mutex::new(Vec::new()));
    let (stop2, scopes2, user) = (stop.clone(), scopes.clone(), user.to_string());
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(stream) = stream {
                let _ = serve(stream, &signer, &expected, &user, &scopes2);
            }
        }
    });
    TokenServer {
        realm: format!("http://{addr}/token"),
        cert: dir.path().join("cert.pem"),
        scopes,
        stop,
        addr,
        thread: Some(thread),
        _dir: dir,
    }
}

struct Signer {
    dir: PathBuf,
    x5c: String,
}

impl Signer {
    /// A JWT granting `access` to `user`.
    fn token(&self, user: &str, access: serde_json::Value) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", rand_suffix()), "access": access,
        });
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = openssl(&self.dir, &["dgst", "-sha256", "-sign", "key.pem"], Some(signed.as_bytes()));
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(
    stream: TcpStream,
    signer: &Signer,
    expected: &str,
    user: &str,
    scopes: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut authorization = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = value.trim().to_string();
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let asked: Vec<String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "scope")
        .map(|(_, value)| percent_decode(value))
        .collect();
    scopes.lock().unwrap().extend(asked.iter().cloned());
    let mut stream = stream;
    if authorization != expected {
        return write!(stream, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let access: Vec<serde_json::Value> = asked
        .iter()
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let body = serde_json::json!({"token": signer.token(user, serde_json::Value::Array(access))}).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
