//! A byte stream over WebSocket binary messages, which is what yamux runs on.
//!
//! The caller maps its WebSocket type (axum's on the hub, tungstenite's on the agent) to a
//! stream of binary payloads and a sink taking them; this module does the rest. Each write
//! becomes one message; reads hand out the bytes of one message at a time. A stream that
//! ends is the end of the byte stream; a non-binary message is the caller's to drop before
//! it gets here (pings and pongs are the WebSocket's business, not the tunnel's).

use bytes::Bytes;
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// `futures::io::AsyncRead + AsyncWrite` over binary messages.
pub struct MessageBytes<S> {
    inner: S,
    /// What is left of the last message read.
    unread: Bytes,
}

impl<S> MessageBytes<S> {
    pub fn new(inner: S) -> MessageBytes<S> {
        MessageBytes { inner, unread: Bytes::new() }
    }
}

impl<S> futures_util::io::AsyncRead for MessageBytes<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(message)) => this.unread = message,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(0)),
            }
        }
        let n = buf.len().min(this.unread.len());
        buf[..n].copy_from_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(n))
    }
}

impl<S> futures_util::io::AsyncWrite for MessageBytes<S>
where
    S: Sink<Bytes, Error = io::Error> + Unpin,
{
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_ready(cx))?;
        Pin::new(&mut this.inner).start_send(Bytes::copy_from_slice(buf))?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

/// A tokio-tungstenite WebSocket as a stream of binary payloads and a sink of them, the
/// shape [`MessageBytes`] takes. Text, ping and pong messages are skipped (tungstenite
/// answers pings itself); a close message ends the stream.
pub struct Binary<S> {
    ws: tokio_tungstenite::WebSocketStream<S>,
    closed: bool,
}

/// The tunnel's byte stream over a WebSocket.
pub fn over_websocket<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> MessageBytes<Binary<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    MessageBytes::new(Binary { ws, closed: false })
}

impl<S> Stream for Binary<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        use tokio_tungstenite::tungstenite::Message;
        let this = self.get_mut();
        loop {
            if this.closed {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => return Poll::Ready(Some(Ok(bytes))),
                Some(Ok(Message::Close(_))) | None => this.closed = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Some(Err(io::Error::other(e)))),
            }
        }
    }
}

impl<S> Sink<Bytes> for Binary<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_ready(cx).map_err(io::Error::other)
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Pin::new(&mut self.get_mut().ws)
            .start_send(tokio_tungstenite::tungstenite::Message::Binary(item))
            .map_err(io::Error::other)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(io::Error::other)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(io::Error::other)
    }
}
