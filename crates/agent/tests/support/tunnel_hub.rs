//! The hub's side of the tunnel for agent tests, made of the pieces the hub itself uses
//! (`edge_tunnel`): a local WebSocket server handing each tunnel the agent opens to the test
//! as an `Opener`, and the agent's dial to it.
#![allow(dead_code)]

use edge_tunnel::mux::{MuxStream, Opener};
use edge_tunnel::open::{self, Answer, Open, Target};
use edge_tunnel::transport::BoxedIo;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A hub that accepts tunnels: its address, and every tunnel as it opens.
pub async fn fake_tunnel_hub() -> (SocketAddr, mpsc::UnboundedReceiver<Opener>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
                let (opener, driver) = edge_tunnel::mux::client(edge_tunnel::ws::over_websocket(ws));
                let _ = tx.send(opener);
                let _ = driver.await;
            });
        }
    });
    (address, rx)
}

/// The agent's dial to `hub` (plain WebSocket, no token: this hub asks for none).
pub fn dial(hub: SocketAddr) -> impl Fn() -> futures_util::future::BoxFuture<'static, Result<BoxedIo, String>> {
    move || {
        Box::pin(async move {
            let tcp = TcpStream::connect(hub).await.map_err(|e| e.to_string())?;
            let url = format!("ws://{hub}{}", edge_tunnel::TUNNEL_PATH);
            let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::new(edge_tunnel::ws::over_websocket(ws)) as BoxedIo)
        })
    }
}

/// A stream to `target` past the agent's answer, or the refusal.
pub async fn open_to(opener: &Opener, target: Target) -> Result<MuxStream, Answer> {
    let mut stream = opener.open().await.map_err(|e| Answer::refused("CLOSED", e.to_string()))?;
    open::write(&mut stream, &Open { v: 1, target }).await.map_err(|e| Answer::refused("CLOSED", e.to_string()))?;
    let answer: Answer = open::read(&mut stream).await.map_err(|e| Answer::refused("CLOSED", e.to_string()))?;
    if answer.ok {
        Ok(stream)
    } else {
        Err(answer)
    }
}
