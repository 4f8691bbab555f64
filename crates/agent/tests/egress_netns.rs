//! The egress gate against real network namespaces (root; `ip` from iproute2): an "internet"
//! host and a "LAN" host, each in a namespace this test creates, reached from here over veth
//! pairs, and a DNS server (a UDP responder in this test) whose name answers the internet
//! host, then the LAN host. Nothing routes beyond the namespaces.
//!
//! The "internet" host has an address of the benchmarking range `198.18.0.0/15`: not one the
//! gate refuses (it routes nowhere on the real internet), so it stands for a public host
//! without this test granting anything; the LAN host is in `10.0.0.0/8`.
//!
//! The resolver here is the gate's `Lookup` asking the test's DNS server over real UDP; the
//! system resolver path (`getaddrinfo`) is the same one call per connection.

mod support;

use edge_agent::egress::proxy::GateProxy;
use edge_agent::egress::{EgressGate, Lookup, Policy};
use edge_agent::runners::http_request;
use edge_protocol::ErrorCode;
use edge_tunnel::open::Target;
use futures_util::future::BoxFuture;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::tunnel_hub::open_to;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}): this test needs iproute2 (Debian: apt-get install --no-install-recommends iproute2) and root")
    });
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A namespace with one veth pair to this one; removed (with its veth) when dropped.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(tag: &str, host: &str, inside: &str) -> Namespace {
        let id = std::process::id() % 100_000;
        let name = format!("eg{tag}{id}");
        let (outer, inner) = (format!("eo{tag}{id}"), format!("ei{tag}{id}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let namespace = Namespace { name: name.clone() };
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{inside}/30"), "dev", &inner]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &inner, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        namespace
    }

    /// An HTTP server on `address:80` inside the namespace: `/hello` answers `who`, `/to/X`
    /// redirects to `http://X/hello`. Serves at most 200 connections.
    fn serve(&self, address: &'static str, who: &'static str) {
        let path = format!("/var/run/netns/{}", self.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace file");
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            let entered = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            let listener = std::net::TcpListener::bind((address, 80)).expect("bind port 80 in the namespace");
            ready_tx.send(()).unwrap();
            for stream in listener.incoming().take(200) {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut buffer = [0u8; 4096];
                let n = stream.read(&mut buffer).unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let target = request.split(' ').nth(1).unwrap_or("/").to_owned();
                let answer = match target.strip_prefix("/to/") {
                    Some(to) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://{to}/hello\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    ),
                    None => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{who}",
                        who.len()
                    ),
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the namespace's server started");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it ours.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A DNS server on 127.0.0.1: every A query is answered with the next address of `answers`
/// (the last one repeats) — a name that rebinds between queries.
fn dns_server(answers: Vec<Ipv4Addr>) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        for _ in 0..200 {
            let Ok((n, peer)) = socket.recv_from(&mut buffer) else { return };
            let query = &buffer[..n];
            let question_end = 12 + query[12..].iter().position(|b| *b == 0).unwrap() + 1 + 4;
            let k = count.fetch_add(1, Ordering::SeqCst);
            let answer = answers[k.min(answers.len() - 1)];
            let mut reply = Vec::with_capacity(question_end + 16);
            reply.extend_from_slice(&query[..2]);
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..question_end]);
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            reply.extend_from_slice(&answer.octets());
            let _ = socket.send_to(&reply, peer);
        }
    });
    (address, served)
}

/// The gate's resolver, asking the test's DNS server over UDP (one query per call).
struct UdpDns(SocketAddr);

impl Lookup for UdpDns {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        let server = self.0;
        Box::pin(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in host.trim_end_matches('.').split('.') {
                query.push(label.len() as u8);
                query.extend_from_slice(label.as_bytes());
            }
            query.extend_from_slice(&[0, 0, 1, 0, 1]);
            socket.send_to(&query, server).await?;
            let mut buffer = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
                .await
                .map_err(|_| std::io::Error::other("the test DNS server did not answer"))??;
            let rdata = &buffer[n - 4..n];
            Ok(vec![SocketAddr::from((Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]), port))])
        })
    }
}

const INTERNET: &str = "198.18.77.2";
const LAN: &str = "10.199.77.2";

#[tokio::test]
async fn the_lan_host_is_refused_by_every_path_and_the_internet_host_is_reached() {
    let internet = Namespace::create("i", "198.18.77.1", INTERNET);
    internet.serve(INTERNET, "internet");
    let lan = Namespace::create("l", "10.199.77.1", LAN);
    lan.serve(LAN, "lan");

    let (dns, queries) = dns_server(vec![INTERNET.parse().unwrap(), LAN.parse().unwrap()]);
    let gate = EgressGate::with_lookup(Policy::default(), None, None, Arc::new(UdpDns(dns)));
    let job = |url: String| serde_json::json!({ "url": url, "timeoutMs": 10_000 });
    let body = |data: serde_json::Value| {
        use base64::Engine;
        let encoded = data["body"].as_str().unwrap_or_default().to_owned();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
    };

    // http_request: the internet host by address, the LAN host by address.
    let reached = http_request::run(&gate, &job(format!("http://{INTERNET}/hello"))).await.unwrap();
    assert_eq!(body(reached), "internet");
    let refused = http_request::run(&gate, &job(format!("http://{LAN}/hello"))).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::EgressDenied, "{refused:?}");
    assert!(refused.message.unwrap().contains("10.199.77.2:80"));

    // A redirect from the internet host to the LAN host.
    let refused = http_request::run(&gate, &job(format!("http://{INTERNET}/to/{LAN}"))).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::EgressDenied, "the redirect hop is judged: {refused:?}");

    // Rebinding: the name answers the internet host first (reached), the LAN host next.
    let first = http_request::run(&gate, &job("http://rebind.test/hello".into())).await.unwrap();
    assert_eq!(body(first), "internet");
    assert_eq!(queries.load(Ordering::SeqCst), 1, "one lookup for the first connection");
    let second = http_request::run(&gate, &job("http://rebind.test/hello".into())).await.unwrap_err();
    assert_eq!(second.code, ErrorCode::EgressDenied, "the rebound name is refused: {second:?}");
    assert_eq!(queries.load(Ordering::SeqCst), 2, "one lookup for the second: no other");

    // The browser's path: its proxy, over CONNECT and plain HTTP.
    let proxy = GateProxy::start(gate.clone()).await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let browser = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.address())).unwrap())
        .redirect(reqwest::redirect::Policy::limited(3))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let page = browser.get(format!("http://{INTERNET}/hello")).send().await.unwrap();
    assert_eq!(page.text().await.unwrap(), "internet");
    let page = browser.get(format!("http://{LAN}/hello")).send().await.unwrap();
    assert_eq!(page.status(), 403);
    let page = browser.get(format!("http://{INTERNET}/to/{LAN}")).send().await.unwrap();
    assert_eq!(page.status(), 403, "the browser's redirect to the LAN is refused at the proxy");
    let page = browser.get("http://rebind.test/hello").send().await.unwrap();
    assert_eq!(page.status(), 403, "the name still answers the LAN host");

    // The tunnel's path: streams the hub opens through the agent, with a fresh rebinding name.
    let (dns, queries) = dns_server(vec![INTERNET.parse().unwrap(), LAN.parse().unwrap()]);
    let gate = EgressGate::with_lookup(Policy::default(), None, None, Arc::new(UdpDns(dns)));
    let data = tempfile::tempdir().unwrap();
    edge_agent::consent::Consent::new(data.path()).grant(&edge_agent::consent::Capability::Tunnel).unwrap();
    let (hub, mut tunnels) = support::tunnel_hub::fake_tunnel_hub().await;
    let (_paused, paused) = tokio::sync::watch::channel(false);
    let context = edge_agent::tunnel::TunnelContext::new(gate, data.path().to_path_buf(), paused, None);
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(edge_agent::tunnel::keep_up(support::tunnel_hub::dial(hub), context, cancel.clone()));
    let opener = tokio::time::timeout(Duration::from_secs(20), tunnels.recv()).await.unwrap().unwrap();
    let through = |host: &str| Target::Connect { host: host.to_owned(), port: 80 };
    let mut stream = open_to(&opener, through(INTERNET)).await.expect("the internet host through the tunnel");
    stream.write_all(b"GET /hello HTTP/1.0\r\n\r\n").await.unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    assert!(page.ends_with("internet"), "{page}");
    let refused = open_to(&opener, through(LAN)).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("EGRESS_DENIED"), "{refused:?}");
    assert!(refused.message.unwrap_or_default().contains("10.199.77.2:80"));
    let first = open_to(&opener, through("rebind.test")).await;
    assert!(first.is_ok(), "the name's first answer is the internet host: {:?}", first.err());
    let second = open_to(&opener, through("rebind.test")).await.unwrap_err();
    assert_eq!(second.code.as_deref(), Some("EGRESS_DENIED"), "the rebound name is refused: {second:?}");
    assert_eq!(queries.load(Ordering::SeqCst), 2, "one lookup per stream");
    cancel.cancel();
    drop((internet, lan));
}
