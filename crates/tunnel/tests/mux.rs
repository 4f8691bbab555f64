//! The tunnel's byte stream and multiplexing, end to end in memory: a hub side opening
//! streams through WebSocket-like binary messages to an agent side that answers them.

use bytes::Bytes;
use edge_tunnel::mux::{self, MuxStream};
use edge_tunnel::open::{self, Answer, Open, Target};
use edge_tunnel::ws::MessageBytes;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two ends of a message channel, each a `MessageBytes` (what a WebSocket pair gives).
fn message_pipe() -> (
    impl futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin + Send + 'static,
    impl futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin + Send + 'static,
) {
    let (a_tx, a_rx) = futures_channel::mpsc::channel::<Bytes>(64);
    let (b_tx, b_rx) = futures_channel::mpsc::channel::<Bytes>(64);
    let end = |tx: futures_channel::mpsc::Sender<Bytes>, rx: futures_channel::mpsc::Receiver<Bytes>| {
        let sink = tx.sink_map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e));
        let stream = rx.map(Ok::<Bytes, io::Error>);
        MessageBytes::new(Duplex { stream, sink })
    };
    (end(a_tx, b_rx), end(b_tx, a_rx))
}

/// A stream and a sink as one value (what `StreamExt::split` undoes).
struct Duplex<St, Si> {
    stream: St,
    sink: Si,
}

impl<St: futures_util::Stream + Unpin, Si: Unpin> futures_util::Stream for Duplex<St, Si> {
    type Item = St::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<St::Item>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl<St: Unpin, Si: futures_util::Sink<Bytes, Error = io::Error> + Unpin> futures_util::Sink<Bytes> for Duplex<St, Si> {
    type Error = io::Error;
    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.sink).poll_ready(cx)
    }
    fn start_send(mut self: std::pin::Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        std::pin::Pin::new(&mut self.sink).start_send(item)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.sink).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.sink).poll_close(cx)
    }
}

/// The agent's side for these tests: answers `ok` and echoes every stream back.
async fn echo(mut stream: MuxStream) {
    let opened: Open = open::read(&mut stream).await.expect("header");
    if opened.target == Target::Ping {
        let _ = open::write(&mut stream, &Answer::ok()).await;
        return;
    }
    open::write(&mut stream, &Answer::ok()).await.expect("answer");
    let (mut reader, mut writer) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
    let _ = writer.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_streams_carry_exact_bytes_and_end_with_their_session() {
    let (hub_io, agent_io) = message_pipe();
    let (opener, driver) = mux::client(hub_io);
    let hub = tokio::spawn(driver);
    let agent = tokio::spawn(mux::serve(agent_io, |stream| {
        tokio::spawn(echo(stream));
    }));

    // 200 streams at once, each with its own 64 KiB of distinct bytes.
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let opener = opener.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = opener.open().await.expect("open");
            open::write(&mut stream, &Open { v: 1, target: Target::Service { name: format!("s{i}") } }).await.unwrap();
            let answer: Answer = open::read(&mut stream).await.unwrap();
            assert!(answer.ok);
            let body: Vec<u8> = (0..64 * 1024).map(|n| (n as u32 ^ i) as u8).collect();
            let (mut reader, mut writer) = tokio::io::split(stream);
            let sent = body.clone();
            let write = tokio::spawn(async move {
                writer.write_all(&sent).await.unwrap();
                writer.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            reader.read_to_end(&mut back).await.unwrap();
            write.await.unwrap();
            assert!(back == body, "stream {i} came back different");
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await.expect("in time").expect("stream task");
    }

    // A stream open while the agent's side goes away ends at once.
    let mut stream = opener.open().await.unwrap();
    open::write(&mut stream, &Open { v: 1, target: Target::Service { name: "long".into() } }).await.unwrap();
    let _: Answer = open::read(&mut stream).await.unwrap();
    agent.abort();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream must end when its session dies");
    let _ = tokio::time::timeout(Duration::from_secs(5), hub).await.expect("the hub's driver ends too");
    assert!(opener.open().await.is_err(), "no stream opens on a dead tunnel");
    assert!(opener.is_closed());
}
