//! yamux over the tunnel's byte stream: the hub's side opens streams ([`client`]), the
//! agent's side answers them ([`serve`]).
//!
//! yamux's `Connection` makes progress only while it is polled, so each side runs one task
//! that owns it: on the hub that task also opens the streams asked for through an
//! [`Opener`]; on the agent it hands every inbound stream to a callback. When the task ends
//! (the byte stream closed or failed, or the hub dropped every `Opener`), the connection is
//! dropped and every stream of it ends at once on both sides, which is what the agent's
//! clients must see when a session dies.

use futures_util::future::poll_fn;
use std::task::Poll;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// A tunnel stream as tokio I/O.
pub type MuxStream = Compat<yamux::Stream>;

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the tunnel to this agent is closed")]
    Closed,
    #[error("the tunnel failed: {0}")]
    Connection(#[from] yamux::ConnectionError),
}

/// Streams at most open on one tunnel; more are refused by yamux until some end.
pub const MAX_STREAMS: usize = 8192;

/// The yamux settings of both sides. The total receive window of a connection is left
/// unbounded so every stream's window can grow to its bandwidth-delay product (yamux grows
/// a window only up to twice the bytes actually read, which bounds what a peer can make us
/// buffer).
pub fn config() -> yamux::Config {
    let mut config = yamux::Config::default();
    // In this order: yamux checks the stream count against the window limit already set.
    config.set_max_connection_receive_window(None);
    config.set_max_num_streams(MAX_STREAMS);
    config
}

/// Bytes of yamux output held back until yamux flushes. yamux writes each frame as two
/// writes, its 12-byte header and then its body, and over TLS each write becomes a record and
/// a send of its own (over the WebSocket, a message of its own): a request of a few hundred
/// bytes cost two records and two packets each way. Buffered, a small frame leaves as one
/// write at yamux's flush, which it does after every frame it sends. A body larger than this
/// goes out directly after the buffered header, as before, so bulk throughput is unchanged,
/// and a tunnel holds only this much more memory on each side.
const COALESCE: usize = 4 * 1024;

/// `io` with its writes held until the next flush (see [`COALESCE`]); reads pass through.
fn coalesced<T>(io: T) -> futures_util::io::BufWriter<T>
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin,
{
    futures_util::io::BufWriter::with_capacity(COALESCE, io)
}

type OpenRequest = oneshot::Sender<Result<yamux::Stream, MuxError>>;

/// Opens streams on one tunnel (the hub's side); cheap to clone.
#[derive(Debug, Clone)]
pub struct Opener {
    requests: mpsc::UnboundedSender<OpenRequest>,
}

impl Opener {
    /// A new stream to the agent; write its [`crate::open::Open`] header next.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(reply).map_err(|_| MuxError::Closed)?;
        answer.await.map_err(|_| MuxError::Closed)?.map(FuturesAsyncReadCompatExt::compat)
    }

    /// The tunnel's task has ended: no stream will open any more.
    pub fn is_closed(&self) -> bool {
        self.requests.is_closed()
    }
}

/// The hub's side of a tunnel over `io`: the [`Opener`], and the task to spawn that drives
/// the connection until `io` ends or every `Opener` is dropped.
pub fn client<T>(io: T) -> (Opener, impl std::future::Future<Output = Result<(), MuxError>> + Send)
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin + Send + 'static,
{
    let (requests, mut incoming) = mpsc::unbounded_channel::<OpenRequest>();
    let mut connection = yamux::Connection::new(coalesced(io), config(), yamux::Mode::Client);
    let driver = async move {
        let mut waiting: std::collections::VecDeque<OpenRequest> = Default::default();
        let mut openers_gone = false;
        poll_fn(|cx| {
            while !openers_gone {
                match incoming.poll_recv(cx) {
                    Poll::Ready(Some(request)) => waiting.push_back(request),
                    Poll::Ready(None) => openers_gone = true,
                    Poll::Pending => break,
                }
            }
            while !waiting.is_empty() {
                match connection.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(request) = waiting.pop_front() {
                            let _ = request.send(Ok(stream));
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        for request in waiting.drain(..) {
                            let _ = request.send(Err(MuxError::Closed));
                        }
                        return Poll::Ready(Err(MuxError::Connection(e)));
                    }
                    Poll::Pending => break,
                }
            }
            // Inbound polling is what moves every frame; the agent opens no streams, so
            // one that arrives anyway is dropped (reset).
            loop {
                match connection.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => drop(stream),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(MuxError::Connection(e))),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            if openers_gone && waiting.is_empty() {
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
        .await
    };
    (Opener { requests }, driver)
}

/// The agent's side of a tunnel over `io`: every stream the hub opens goes to `on_stream`
/// (which should spawn its handling), until `io` ends. Dropping the returned future drops
/// the connection and ends every stream.
pub async fn serve<T, F>(io: T, mut on_stream: F) -> Result<(), MuxError>
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin + Send + 'static,
    F: FnMut(MuxStream),
{
    let mut connection = yamux::Connection::new(coalesced(io), config(), yamux::Mode::Server);
    loop {
        match poll_fn(|cx| connection.poll_next_inbound(cx)).await {
            Some(Ok(stream)) => on_stream(stream.compat()),
            Some(Err(e)) => return Err(MuxError::Connection(e)),
            None => return Ok(()),
        }
    }
}
