//! The egress gate's browser proxy against real sockets on 127.0.0.1: what it relays, what
//! it refuses, what it meters. (`http_request` through the gate: tests/http_request.rs.)

mod support;

use edge_agent::egress::proxy::GateProxy;
use edge_agent::egress::{EgressGate, MeterDay, Policy};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn site() -> (String, String) {
    let base = support::serve(support::targets()).await;
    let authority = base.trim_start_matches("http://").to_owned();
    (base, authority)
}

fn through(proxy: &GateProxy) -> reqwest::Client {
    // The test's own client (the browser's stand-in) needs a rustls provider chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.address())).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends one raw request head to the proxy and returns the answer's status line and body.
async fn raw(proxy: &GateProxy, head: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy.address()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn the_proxy_relays_an_allowed_local_site_and_meters_it() {
    let (base, authority) = site().await;
    let data = tempfile::tempdir().unwrap();
    let gate = EgressGate::new(Policy::parse([authority.as_str()]).unwrap(), Some(data.path()), None);
    let proxy = GateProxy::start(gate.clone()).await.unwrap();
    let answer = through(&proxy).get(format!("{base}/target/hello")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "hello world");
    // The meter is written when the relayed connection ends, which the proxy forces.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let day = MeterDay::read(data.path());
        if let Some(browser) = day.by_capability.get("browser") {
            assert!(browser.bytes_in >= 11 && browser.bytes_out > 0, "{day:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the browser bytes were never metered: {day:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_proxy_refuses_loopback_lan_and_metadata_on_every_path() {
    let (base, authority) = site().await;
    let gate = EgressGate::new(Policy::default(), None, None);
    let proxy = GateProxy::start(gate).await.unwrap();
    // Plain HTTP through the proxy: the local site itself, not granted here.
    let answer = through(&proxy).get(format!("{base}/target/hello")).send().await.unwrap();
    assert_eq!(answer.status(), 403);
    let body = answer.text().await.unwrap();
    assert!(body.contains(&authority) && body.contains("loopback"), "{body}");
    // CONNECT (what TLS and wss use) to LAN, metadata, IPv6 loopback, a mapped form.
    for (target, rule) in [
        ("10.0.0.1:443", "RFC 1918"),
        ("169.254.169.254:80", "cloud metadata"),
        ("[::1]:443", "IPv6 loopback"),
        ("[::ffff:127.0.0.1]:443", "IPv4-mapped"),
        ("2130706433:443", "loopback"),
        (&authority, "loopback"),
    ] {
        let (status, body) = raw(&proxy, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")).await;
        assert!(status.contains("403"), "{target}: {status}");
        assert!(body.contains(rule), "{target}: {body}");
    }
    // A scheme the gate does not pass, in absolute form.
    let (status, _) = raw(&proxy, "GET ftp://93.184.215.14/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status.contains("403"), "{status}");
}

#[tokio::test]
async fn a_granted_port_does_not_open_its_neighbour() {
    let (_, authority) = site().await;
    let (other_base, _) = site().await;
    let gate = EgressGate::new(Policy::parse([authority.as_str()]).unwrap(), None, None);
    let proxy = GateProxy::start(gate).await.unwrap();
    let answer = through(&proxy).get(format!("{other_base}/target/hello")).send().await.unwrap();
    assert_eq!(answer.status(), 403, "only the granted address:port passes");
}

#[tokio::test]
async fn chromium_is_told_to_send_loopback_through_the_proxy_too() {
    let proxy = GateProxy::start(EgressGate::new(Policy::default(), None, None)).await.unwrap();
    let args = proxy.chromium_args();
    assert_eq!(args[0], format!("--proxy-server=http://{}", proxy.address()));
    assert!(args.contains(&"--proxy-bypass-list=<-loopback>".to_owned()), "{args:?}");
}
