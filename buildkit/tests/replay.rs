//! A whole daemon-mode build replayed without a daemon: a stand-in buildkitd answers each
//! call with the bytes a real buildkitd sent when the build was captured
//! (`tests/fixtures/session/`, see its README): Info, Status, Solve, and the session, whose
//! body is the daemon's half of the nested HTTP/2 connection in which it reads the
//! `dockerfile` and `context` directories through FileSync (STAT, REQ, DATA, FIN) and sends
//! the exported OCI tarball back through FileSend. (The daemon health-checks a session every
//! 5 s; this build is over before the first check, so the recording has none.) The client
//! under test is the real one; what it sent back (its session headers and its half of the
//! nested connection) is checked from its own bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fledge_buildkit::pb::control;
use fledge_buildkit::pb::fsutil_types::{Packet, packet::PacketType};
use fledge_buildkit::{Daemon, Session};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/session")
}

/// One recorded response: status, headers, body chunks, trailers.
struct Recorded {
    headers: Vec<(String, String)>,
    body: Vec<Bytes>,
    trailers: Vec<(String, String)>,
}

fn recorded(method: &str) -> Recorded {
    let dir = fixtures().join("recorded");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&format!("-moby.buildkit.v1.Control-{method}.json")))
        .unwrap_or_else(|| panic!("no recording of {method}"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let pairs = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array().unwrap().iter().map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into())).collect()
    };
    let body = json["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Bytes::from(base64::engine::general_purpose::STANDARD.decode(c.as_str().unwrap()).unwrap()))
        .collect();
    Recorded { headers: pairs(&json["headers"]), body, trailers: pairs(&json["trailers"]) }
}

/// `recorded` as a response. With `session`, the body stays open after the recording (the
/// daemon keeps a session until the client ends it) and `session.0` is told once it is all
/// sent; `session.1` says the client has ended its side.
fn response(
    recorded: Recorded,
    session: Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>,
) -> hyper::Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(64);
    let Recorded { headers, body, trailers } = recorded;
    tokio::spawn(async move {
        for chunk in body {
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
        if let Some((sent, client_ended)) = session {
            sent.notify_one();
            client_ended.notified().await;
        }
        if !trailers.is_empty() {
            let mut map = hyper::HeaderMap::new();
            for (k, v) in trailers {
                map.insert(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            let _ = tx.send(Ok(Frame::trailers(map))).await;
        }
    });
    let mut response = hyper::Response::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed());
    for (k, v) in headers {
        response.headers_mut().insert(hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    response
}

/// The gRPC messages in a body (5-byte prefix each).
fn grpc_messages(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        if bytes.len() < 5 + len {
            break;
        }
        messages.push(bytes[5..5 + len].to_vec());
        bytes = &bytes[5 + len..];
    }
    messages
}

/// The payloads of the DATA frames in an HTTP/2 byte stream (after the client preface, if any).
fn h2_data(mut bytes: &[u8]) -> HashMap<u32, Vec<u8>> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    bytes = bytes.strip_prefix(PREFACE).unwrap_or(bytes);
    let mut streams: HashMap<u32, Vec<u8>> = HashMap::new();
    while bytes.len() >= 9 {
        let len = (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        let (kind, flags) = (bytes[3], bytes[4]);
        let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) & 0x7fff_ffff;
        if bytes.len() < 9 + len {
            break;
        }
        let mut payload = &bytes[9..9 + len];
        if kind == 0 {
            if flags & 0x8 != 0 {
                let pad = usize::from(payload[0]);
                payload = &payload[1..payload.len() - pad];
            }
            streams.entry(stream).or_default().extend_from_slice(payload);
        }
        bytes = &bytes[9 + len..];
    }
    streams
}

/// The recorded session without the daemon's RST_STREAM frames. Live, the daemon resets a
/// stream only after the client's answer on it; replayed all at once, a reset would arrive
/// first and cancel the answer. Every other frame is sent as the daemon sent it (re-chunked
/// into the tunnel's messages, which carry bytes only).
fn without_resets(mut session: Recorded) -> Recorded {
    let outer: Vec<u8> = session.body.iter().flat_map(|c| c.to_vec()).collect();
    let inner: Vec<u8> =
        grpc_messages(&outer).into_iter().flat_map(|m| control::BytesMessage::decode(&m[..]).unwrap().data).collect();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut rest = inner.strip_prefix(PREFACE).expect("the daemon opens with the HTTP/2 preface");
    let mut kept = PREFACE.to_vec();
    while rest.len() >= 9 {
        let len = 9 + ((usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]));
        if rest[3] != 3 {
            kept.extend_from_slice(&rest[..len]);
        }
        rest = &rest[len..];
    }
    let message = control::BytesMessage { data: kept }.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    session.body = vec![Bytes::from(framed)];
    session
}

/// What the client sent on the session: its request headers, and the bytes of its half of
/// the nested connection.
#[derive(Default)]
struct Sent {
    headers: Vec<(String, String)>,
    bytes: Vec<u8>,
}

/// A stand-in buildkitd on `socket` that answers with the recordings (or, with
/// `unimplemented`, answers every call as a daemon without it would).
async fn stand_in(socket: &Path, unimplemented: bool) -> Arc<Mutex<Sent>> {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let sent = Arc::new(Mutex::new(Sent::default()));
    let (session_sent, client_ended) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let seen = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (seen, session_sent, client_ended) = (seen.clone(), session_sent.clone(), client_ended.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (seen, session_sent, client_ended) = (seen.clone(), session_sent.clone(), client_ended.clone());
                    async move {
                        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
                        if method == "Session" {
                            seen.lock().unwrap().headers = request
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                                .collect();
                        }
                        let mut body = request.into_body();
                        let reply = match method.as_str() {
                            _ if unimplemented => {
                                let mut reply =
                                    hyper::Response::new(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
                                reply.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
                                reply.headers_mut().insert("grpc-status", "12".parse().unwrap());
                                reply.headers_mut().insert("grpc-message", "unknown method".parse().unwrap());
                                reply
                            }
                            "Session" => {
                                let ended = client_ended.clone();
                                tokio::spawn(async move {
                                    while let Some(Ok(frame)) = body.frame().await {
                                        if let Some(data) = frame.data_ref() {
                                            seen.lock().unwrap().bytes.extend_from_slice(data);
                                        }
                                    }
                                    ended.notify_one();
                                });
                                response(without_resets(recorded("Session")), Some((session_sent, client_ended)))
                            }
                            // Solve answers once the session's recording is out (and the
                            // client has had a moment with it), as the daemon answers after
                            // the export.
                            "Solve" => {
                                let _ = tokio::time::timeout(Duration::from_secs(10), session_sent.notified()).await;
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                response(recorded("Solve"), None)
                            }
                            other => {
                                while body.frame().await.is_some() {}
                                response(recorded(other), None)
                            }
                        };
                        Ok::<_, std::convert::Infallible>(reply)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_daemon_exchange_replays_against_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("buildkitd.sock");
    let sent = stand_in(&socket, false).await;
    let mut daemon = Daemon::connect(&format!("unix://{}", socket.display()), None).await.unwrap();
    assert!(!daemon.info().await.unwrap().package.is_empty(), "Info answers with the daemon's package");

    let context = fixtures().join("context");
    // The export streams to a reader as it arrives, as Fledge imports it.
    let (tarball, mut arriving) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let received = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(chunk) = arriving.recv().await {
            all.extend(chunk);
        }
        all
    });
    let session = Session {
        dirs: HashMap::from([("context".to_string(), context.clone()), ("dockerfile".to_string(), context)]),
        outputs: HashMap::from([("0".to_string(), fledge_buildkit::Output::stream(tarball))]),
        ..Session::default()
    };
    let request = control::SolveRequest {
        frontend: "dockerfile.v0".into(),
        frontend_attrs: [("filename".to_string(), "Dockerfile".to_string())].into(),
        exporters: vec![control::Exporter { r#type: "oci".into(), attrs: Default::default() }],
        ..Default::default()
    };
    let (events, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let solved = tokio::time::timeout(Duration::from_secs(30), daemon.solve(request, session, events))
        .await
        .expect("the replay finishes")
        .unwrap();
    assert!(solved.exporter_response.contains_key("containerimage.digest"), "{solved:?}");

    // The daemon's status reached the client.
    let mut names = Vec::new();
    while let Ok(update) = updates.try_recv() {
        names.extend(update.vertexes.into_iter().map(|v| v.name));
    }
    assert!(names.iter().any(|n| n.contains("COPY hello.txt")), "{names:?}");

    // FileSend: the exported tarball arrived whole (an OCI layout with the copied file), and
    // the stream ended with it.
    let tarball = tokio::time::timeout(Duration::from_secs(5), received).await.expect("the stream ends").unwrap();
    let mut archive = tar::Archive::new(&tarball[..]);
    let entries: Vec<String> =
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert!(entries.iter().any(|e| e == "index.json") && entries.iter().any(|e| e == "oci-layout"), "{entries:?}");

    // FileSync: what the client sent, from its own bytes: STATs in fsutil's order, without
    // what .dockerignore leaves out, and the files' DATA.
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    // The session's headers: its id, shared key, and every method it serves.
    let header =
        |name: &str| sent.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(header("x-docker-expose-session-uuid").len(), 1, "{:?}", sent.headers);
    assert_eq!(header("x-docker-expose-session-sharedkey").len(), 1, "{:?}", sent.headers);
    for method in
        ["/grpc.health.v1.Health/Check", "/moby.filesync.v1.FileSync/DiffCopy", "/moby.filesync.v1.FileSend/DiffCopy"]
    {
        assert!(header("x-docker-expose-session-grpc-method").contains(&method), "{method} in {:?}", sent.headers);
    }
    let tunnel: Vec<u8> = grpc_messages(&sent.bytes)
        .into_iter()
        .flat_map(|m| control::BytesMessage::decode(&m[..]).unwrap().data)
        .collect();
    // One STAT list per DiffCopy call: each only what the daemon asked for (its follow
    // paths), in fsutil's order, and never what .dockerignore leaves out.
    let mut lists = Vec::new();
    let mut data = Vec::new();
    for (_, payload) in h2_data(&tunnel) {
        let mut stats = Vec::new();
        for message in grpc_messages(&payload) {
            let Ok(packet) = Packet::decode(&message[..]) else { continue };
            match PacketType::try_from(packet.r#type) {
                Ok(PacketType::PacketStat) => stats.extend(packet.stat.map(|s| s.path).filter(|p| !p.is_empty())),
                Ok(PacketType::PacketData) => data.extend(packet.data),
                _ => {}
            }
        }
        if !stats.is_empty() {
            lists.push(stats);
        }
    }
    lists.sort();
    assert_eq!(lists, [vec![".dockerignore"], vec!["Dockerfile"], vec!["hello.txt", "tool.sh"]]);
    let data = String::from_utf8_lossy(&data);
    for content in ["FROM scratch", "ignored.log", "hello from the context", "echo tool"] {
        assert!(data.contains(content), "{content:?} sent in DATA: {data}");
    }
    assert!(!data.contains("never sent"), "ignored.log's content stays here");
}

/// A daemon without the calls Fledge needs: a clear error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_without_the_needed_calls_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("buildkitd.sock");
    stand_in(&socket, true).await;
    let mut daemon = Daemon::connect(&format!("unix://{}", socket.display()), None).await.unwrap();
    let error = daemon.info().await.unwrap_err().to_string();
    assert!(error.contains("cannot report its version") && error.contains("BuildKit v0.13 or newer"), "{error}");
}
