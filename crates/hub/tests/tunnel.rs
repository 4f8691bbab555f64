//! The hub's end of the tunnel with an agent side made of `edge_tunnel` pieces over a real
//! WebSocket, and a client speaking raw HTTP CONNECT and SOCKS5 to the proxy port: the
//! agent's answers reach the client (bytes both ways, its refusal code in
//! `X-Edge-Refusal`), the operator's agent list shows the tunnel and its bytes today, the
//! metrics count streams and refusals, and a tunnel without a valid token is refused.

mod common;

use base64::Engine as _;
use common::*;
use edge_tunnel::mux::MuxStream;
use edge_tunnel::open::{self, Answer, Open, Target};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The agent's side: echoes streams to `echo.test`, refuses everything else like a gate.
async fn agent_side(stream: MuxStream) {
    let mut stream = stream;
    let Ok(opened) = open::read::<_, Open>(&mut stream).await else { return };
    match opened.target {
        Target::Ping => {
            let _ = open::write(&mut stream, &Answer::ok()).await;
        }
        Target::Connect { host, .. } if host == "echo.test" => {
            let _ = open::write(&mut stream, &Answer::ok()).await;
            let (mut r, mut w) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        other => {
            let refusal = Answer::refused("EGRESS_DENIED", format!("{other} is refused by this agent's gate"));
            let _ = open::write(&mut stream, &refusal).await;
        }
    }
}

async fn connect_tunnel(hub: &TestHub, jwt: &str) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = hub.url(edge_tunnel::TUNNEL_PATH).replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert("Authorization", format!("Bearer {jwt}").parse().expect("header"));
    let (ws, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| e.to_string())?;
    tokio::spawn(edge_tunnel::mux::serve(edge_tunnel::ws::over_websocket(ws), |stream| {
        tokio::spawn(agent_side(stream));
    }));
    Ok(())
}

async fn head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn connect_via(proxy: std::net::SocketAddr, user: &str, key: &str, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.expect("proxy");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let answer = head(&mut stream).await;
    (stream, answer)
}

#[tokio::test]
async fn proxy_clients_reach_the_agents_answers_and_the_operator_sees_the_tunnel() {
    let hub =
        TestHub::start_on(TestDb::sqlite(), |c| c.proxy_listen = Some("127.0.0.1:0".parse().expect("address"))).await;
    let proxy = hub.hub().proxy_addr().expect("bound");
    let agent = hub.enroll("creator-tun").await;
    let jwt = hub.session_token(&agent).await;
    let user = format!("agent-{}", agent.agent_id);

    // No token, or a forged one: no tunnel.
    assert!(connect_tunnel(&hub, "not-a-token").await.is_err());
    let forged = mint_jwt("another-secret-entirely-32-bytes!!", &agent, now_secs() + 300);
    assert!(connect_tunnel(&hub, &forged).await.is_err());
    let (_, answer) = connect_via(proxy, &user, &hub.api_key, "echo.test:80").await;
    assert!(answer.starts_with("HTTP/1.1 502") && answer.contains("X-Edge-Refusal: NO_AGENT"), "{answer}");

    connect_tunnel(&hub, &jwt).await.expect("the agent's tunnel");
    let open = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (stream, answer) = connect_via(proxy, &user, &hub.api_key, "echo.test:80").await;
            if answer.starts_with("HTTP/1.1 200") {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the tunnel registers");
    let mut stream = open;
    let payload: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
    stream.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert!(back == payload, "bytes came back different");
    drop(stream);

    // The agent's refusal, with its code.
    let (_, answer) = connect_via(proxy, &user, &hub.api_key, "10.0.0.1:80").await;
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("X-Edge-Refusal: EGRESS_DENIED"), "{answer}");

    // SOCKS5 with username/password, by domain name.
    let mut socks = TcpStream::connect(proxy).await.unwrap();
    socks.write_all(&[5, 1, 2]).await.unwrap();
    let mut reply = [0u8; 2];
    socks.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [5, 2], "username/password is the method");
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(hub.api_key.len() as u8);
    auth.extend_from_slice(hub.api_key.as_bytes());
    socks.write_all(&auth).await.unwrap();
    socks.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [1, 0], "credentials accepted");
    let mut request = vec![5, 1, 0, 3, 9];
    request.extend_from_slice(b"echo.test");
    request.extend_from_slice(&80u16.to_be_bytes());
    socks.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    socks.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "SOCKS5 success");
    socks.write_all(b"socks hello").await.unwrap();
    let mut back = [0u8; 11];
    socks.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"socks hello");
    drop(socks);

    // The operator's list shows the tunnel and its bytes today.
    let shown = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (status, agents) = hub.operator_get("/v1/agents").await;
            assert_eq!(status, 200);
            let tunnel = agents["agents"][0]["tunnel"].clone();
            if tunnel["bytesToday"].as_u64().unwrap_or(0) >= 200_000 {
                return tunnel;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the bytes are counted once the streams close");
    assert_eq!(shown["open"], true, "{shown}");
    let metrics = hub.operator_get_text("/metrics").await;
    assert!(metrics.contains("edge_hub_tunnel_refusals_total{reason=\"EGRESS_DENIED\"}"), "{metrics}");
    assert!(metrics.contains("edge_hub_tunnel_streams_total"), "{metrics}");
    hub.shutdown().await;
}
