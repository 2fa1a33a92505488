//! The session tunnel: `Control.Session` is a bidirectional stream of byte chunks that both
//! sides treat as one connection. Inside it, the client is the HTTP/2 (prior knowledge, no
//! TLS) gRPC server and the daemon the client. [`Tunnel`] turns the stream into
//! `AsyncRead + AsyncWrite` so tonic's server can serve it like a socket.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::PollSender;

use crate::pb::control::BytesMessage;

/// The largest chunk written into the tunnel (the daemon accepts 16 MiB messages).
const CHUNK: usize = 1 << 20;

/// One side of the session stream as a connection.
pub struct Tunnel<S> {
    incoming: S,
    /// What was received and not yet read.
    pending: Vec<u8>,
    offset: usize,
    outgoing: PollSender<BytesMessage>,
    /// Told (once) when the daemon ends the stream, with the reason if it failed.
    ended: Option<tokio::sync::oneshot::Sender<Option<String>>>,
}

impl<S> Tunnel<S> {
    /// A connection reading `incoming` and writing into `outgoing` (the request stream of the
    /// `Session` call).
    pub fn new(incoming: S, outgoing: mpsc::Sender<BytesMessage>) -> Self {
        Tunnel { incoming, pending: Vec::new(), offset: 0, outgoing: PollSender::new(outgoing), ended: None }
    }

    /// Says on the returned channel when the daemon ends the session.
    pub fn watch_end(&mut self) -> tokio::sync::oneshot::Receiver<Option<String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ended = Some(tx);
        rx
    }
}

impl<S> AsyncRead for Tunnel<S>
where
    S: Stream<Item = Result<BytesMessage, tonic::Status>> + Unpin,
{
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        while self.offset == self.pending.len() {
            match ready!(Pin::new(&mut self.incoming).poll_next(cx)) {
                Some(Ok(message)) => {
                    self.pending = message.data;
                    self.offset = 0;
                }
                Some(Err(status)) => {
                    let reason = status.message().to_string();
                    if let Some(ended) = self.ended.take() {
                        let _ = ended.send(Some(reason.clone()));
                    }
                    return Poll::Ready(Err(std::io::Error::other(format!("the session ended: {reason}"))));
                }
                None => {
                    if let Some(ended) = self.ended.take() {
                        let _ = ended.send(None);
                    }
                    return Poll::Ready(Ok(())); // end of stream
                }
            }
        }
        let n = buf.remaining().min(self.pending.len() - self.offset);
        let start = self.offset;
        buf.put_slice(&self.pending[start..start + n]);
        self.offset += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: Unpin> AsyncWrite for Tunnel<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let closed = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        ready!(self.outgoing.poll_reserve(cx)).map_err(|_| closed())?;
        let n = data.len().min(CHUNK);
        self.outgoing.send_item(BytesMessage { data: data[..n].to_vec() }).map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.outgoing.close();
        Poll::Ready(Ok(()))
    }
}

impl<S> tonic::transport::server::Connected for Tunnel<S> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_cross_the_tunnel_in_both_directions() {
        let (to_us, from_daemon) = mpsc::channel::<Result<BytesMessage, tonic::Status>>(4);
        let (to_daemon, mut sent) = mpsc::channel(4);
        let mut tunnel = Tunnel::new(tokio_stream::wrappers::ReceiverStream::new(from_daemon), to_daemon);
        to_us.send(Ok(BytesMessage { data: b"hel".to_vec() })).await.unwrap();
        to_us.send(Ok(BytesMessage { data: b"lo".to_vec() })).await.unwrap();
        drop(to_us);
        let mut read = String::new();
        tunnel.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "hello");
        tunnel.write_all(b"back").await.unwrap();
        assert_eq!(sent.recv().await.unwrap().data, b"back");
        tunnel.shutdown().await.unwrap();
        assert!(sent.recv().await.is_none(), "shutdown ends the outgoing stream");
    }
}
