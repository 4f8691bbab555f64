//! The agent's end of the tunnel against a hub side made of the same pieces the hub uses
//! (`edge_tunnel`): a local WebSocket server that opens streams. Real sockets throughout.
//! Proves: streams reach an exposed service and nothing else on loopback; pausing ends every
//! open stream at once and the tunnel stays down until resumed; the person's per-stream
//! rate cap and daily byte cap hold; the bytes are on the meter under `tunnel`.

use edge_agent::consent::{Capability, Consent};
use edge_agent::egress::{EgressGate, Policy};
use edge_agent::local_settings::LocalSettings;
mod support;

use edge_agent::tunnel::{keep_up, TunnelContext};
use edge_tunnel::mux::{MuxStream, Opener};
use edge_tunnel::open::Target;
use std::time::{Duration, Instant};
use support::tunnel_hub::{dial, fake_tunnel_hub, open_to};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A local echo service (what the person exposes).
async fn echo_service() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    address
}

async fn round_trip(stream: &mut MuxStream, bytes: &[u8]) -> Vec<u8> {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back).await.unwrap();
    back
}

struct World {
    _dir: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    echo: std::net::SocketAddr,
    gate: EgressGate,
    tunnels: mpsc::UnboundedReceiver<Opener>,
    paused: watch::Sender<bool>,
    cancel: CancellationToken,
    state: edge_agent::state::StateHandle,
}

async fn world(caps: impl FnOnce(&mut LocalSettings), daily_cap: Option<u64>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let echo = echo_service().await;
    let mut settings = LocalSettings::default();
    settings.exposed.insert("echo".into(), echo.to_string());
    caps(&mut settings);
    settings.save(&data_dir).unwrap();
    Consent::new(&data_dir).grant(&Capability::Tunnel).unwrap();
    let gate = EgressGate::new(Policy::default(), Some(&data_dir), daily_cap);
    let (hub, tunnels) = fake_tunnel_hub().await;
    let (paused, paused_rx) = watch::channel(false);
    let cancel = CancellationToken::new();
    let state = edge_agent::state::StateHandle::new(data_dir.clone());
    let context = TunnelContext::new(gate.clone(), data_dir.clone(), paused_rx, Some(state.clone()));
    tokio::spawn(keep_up(dial(hub), context, cancel.clone()));
    World { _dir: dir, data_dir, echo, gate, tunnels, paused, cancel, state }
}

async fn next_tunnel(world: &mut World) -> Opener {
    tokio::time::timeout(Duration::from_secs(20), world.tunnels.recv()).await.expect("the agent connects").unwrap()
}

#[tokio::test]
async fn exposed_services_only_pause_ends_every_stream_and_resume_reconnects() {
    let mut world = world(|_| {}, None).await;
    let opener = next_tunnel(&mut world).await;

    let mut stream = open_to(&opener, Target::Service { name: "echo".into() }).await.expect("the exposed service");
    assert_eq!(round_trip(&mut stream, b"hello through the tunnel").await, b"hello through the tunnel");
    // The count follows within half a second (not per stream: see SHOW_STREAMS_EVERY).
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while world.state.snapshot().tunnel.streams != 1 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = world.state.snapshot().tunnel;
    assert_eq!((shown.state.as_str(), shown.streams), ("open", 1), "what the tray and status show");
    let echo = world.echo.to_string();
    assert_eq!(shown.exposed, [("echo".to_owned(), echo.clone())].into(), "the tray lists the exposed services");
    // Exposed from another process (the CLI writes settings.json): the tray sees it.
    let mut settings = LocalSettings::load(&world.data_dir).unwrap();
    settings.exposed.insert("web".into(), "127.0.0.1:8080".into());
    settings.save(&world.data_dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while world.state.snapshot().tunnel.exposed.len() != 2 {
        assert!(Instant::now() < deadline, "the new exposed service never reached the snapshot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exposed = world.state.snapshot().tunnel.exposed;
    assert_eq!(exposed.get("web").map(String::as_str), Some("127.0.0.1:8080"));
    assert_eq!(exposed.get("echo"), Some(&echo));
    // The same service by its address is loopback: refused by the egress gate.
    let by_address = Target::Connect { host: world.echo.ip().to_string(), port: world.echo.port() };
    let refused = open_to(&opener, by_address).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("EGRESS_DENIED"), "{refused:?}");
    let refused = open_to(&opener, Target::Service { name: "ssh".into() }).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("NOT_EXPOSED"), "{refused:?}");
    let refused = open_to(&opener, Target::Connect { host: "10.0.0.1".into(), port: 80 }).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("EGRESS_DENIED"), "{refused:?}");

    // Pause: the open stream ends at once and the tunnel goes down.
    world.paused.send(true).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok() && started.elapsed() < Duration::from_secs(2), "the stream outlived the pause");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(open_to(&opener, Target::Service { name: "echo".into() }).await.is_err(), "no stream while paused");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), world.tunnels.recv()).await.is_err(),
        "no tunnel while paused"
    );
    let shown = world.state.snapshot().tunnel;
    assert_eq!((shown.state.as_str(), shown.streams), ("off", 0), "paused");

    // Resume: a new tunnel, and it works.
    world.paused.send(false).unwrap();
    let opener = next_tunnel(&mut world).await;
    let mut stream = open_to(&opener, Target::Service { name: "echo".into() }).await.unwrap();
    assert_eq!(round_trip(&mut stream, b"again").await, b"again");
    let today = world.gate.meter().today();
    assert!(today.by_capability.get("tunnel").is_some_and(|t| t.bytes_in > 0 && t.bytes_out > 0), "{today:?}");

    // Revoking the grant takes the tunnel down too.
    Consent::new(&world.data_dir).revoke(&Capability::Tunnel).unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream outlived the revoke");
    world.cancel.cancel();
}

#[tokio::test]
async fn the_per_stream_rate_cap_and_the_daily_cap_hold() {
    let mut world = world(|s| s.caps.tunnel_bytes_per_second = Some(100_000), Some(600_000)).await;
    let opener = next_tunnel(&mut world).await;
    let stream = open_to(&opener, Target::Service { name: "echo".into() }).await.unwrap();
    // 200 KB each way at 100 KB/s: at least ~1.4 s (the first 64 KiB chunk is not held back).
    let body: Vec<u8> = (0..200_000u32).map(|n| n as u8).collect();
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sent = body.clone();
    let writing = tokio::spawn(async move { writer.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; body.len()];
    reader.read_exact(&mut back).await.unwrap();
    writing.await.unwrap();
    assert!(back == body);
    assert!(
        started.elapsed() >= Duration::from_millis(1300),
        "the rate cap let 200 KB through in {:?}",
        started.elapsed()
    );

    // 400 KB metered of a 600 KB cap; one more stream of 300 KB pushes past it, then new
    // streams are refused EGRESS_CAP.
    drop(reader);
    let mut stream = open_to(&opener, Target::Service { name: "echo".into() }).await.unwrap();
    let more = vec![7u8; 150_000];
    assert_eq!(round_trip(&mut stream, &more).await.len(), more.len());
    drop(stream);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match open_to(&opener, Target::Service { name: "echo".into() }).await {
                Err(answer) => return answer,
                Ok(stream) => drop(stream),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the daily cap refuses new streams");
    assert_eq!(refused.code.as_deref(), Some("EGRESS_CAP"), "{refused:?}");
    world.cancel.cancel();
}
