//! Records what buildkitd sends during one build, for the replay test's fixtures: a proxy
//! between a client (Fledge in daemon mode) and a real buildkitd that forwards every gRPC
//! call and writes the daemon's side of each (its response headers, body bytes exactly as
//! they came, and trailers) to `DIR/NN-Service-Method.json`. The session's body holds the
//! daemon's half of the nested HTTP/2 connection in which it calls the client's services.
//!
//! usage: cargo run -p fledge-buildkit --example capture -- LISTEN.sock unix:///run/buildkit/buildkitd.sock DIR
//! then, in another shell: FLEDGE_BUILDKIT_MODE=daemon FLEDGE_BUILDKIT_ADDR=unix://LISTEN.sock fledge build ...

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, daemon, dir] = args.as_slice() else {
        eprintln!("usage: capture LISTEN.sock unix:///path/to/buildkitd.sock DIR");
        std::process::exit(2);
    };
    let daemon = PathBuf::from(daemon.strip_prefix("unix://").expect("a unix:// daemon address"));
    let dir = Arc::new(PathBuf::from(dir));
    std::fs::create_dir_all(dir.as_path()).unwrap();
    let _ = std::fs::remove_file(listen);
    let listener = tokio::net::UnixListener::bind(listen).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    loop {
        let (client, _) = listener.accept().await.unwrap();
        let (daemon, dir, calls) = (daemon.clone(), dir.clone(), calls.clone());
        tokio::spawn(async move {
            let upstream = tokio::net::UnixStream::connect(&daemon).await.unwrap();
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream)).await.unwrap();
            tokio::spawn(connection);
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (mut sender, dir, calls) = (sender.clone(), dir.clone(), calls.clone());
                async move { forward(&mut sender, request, &dir, calls.fetch_add(1, Ordering::SeqCst)).await }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(client), service)
                .await;
        });
    }
}

/// Forwards one call and records the daemon's response as it streams back.
async fn forward(
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    request: hyper::Request<Incoming>,
    dir: &std::path::Path,
    number: usize,
) -> Result<hyper::Response<Body>, hyper::Error> {
    let method = request.uri().path().trim_start_matches('/').replace('/', "-");
    let (parts, body) = request.into_parts();
    let request = hyper::Request::from_parts(parts, body.boxed());
    let response = sender.send_request(request).await?;
    let (parts, mut body) = response.into_parts();
    let (status, response_headers) = (parts.status, parts.headers.clone());
    let headers: Vec<(String, String)> =
        parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(16);
    let path = dir.join(format!("{number:02}-{method}.json"));
    tokio::spawn(async move {
        let (mut chunks, mut trailers) = (Vec::new(), Vec::new());
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                chunks.push(base64::engine::general_purpose::STANDARD.encode(data));
            }
            if let Some(t) = frame.trailers_ref() {
                trailers = t.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
            }
            if tx.send(Ok(frame)).await.is_err() {
                break;
            }
        }
        let record =
            serde_json::json!({"status": status.as_u16(), "headers": headers, "body": chunks, "trailers": trailers});
        std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(response)
}
