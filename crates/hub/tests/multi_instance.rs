//! Several hub processes on one PostgreSQL schema, in one test process: work submitted to
//! one instance reaches an agent connected to another (LISTEN/NOTIFY), no job is leased
//! twice at once, cancels and sync waits cross instances, and the leases of an instance that
//! dies come back after the visibility timeout. (Process-level kill tests live in
//! tests/e2e.) Skipped like the conformance suite's PostgreSQL half when no PostgreSQL
//! answers, and failing instead when `EDGE_TEST_POSTGRES_URL` or `CI` is set.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn id(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_owned()
}

async fn three_hubs(tweak: impl FnOnce(&mut edge_hub::HubConfig)) -> Option<(TestHub, TestHub, TestHub)> {
    let db = TestDb::postgres().await?;
    let a = TestHub::start_on(db, |config| {
        // A long poll: delivery across instances must come from the notification.
        config.queue.poll_interval = Duration::from_secs(30);
        tweak(config);
    })
    .await;
    let b = a.sibling().await;
    let c = a.sibling().await;
    Some((a, b, c))
}

async fn next_assign(ws: &mut Ws) -> String {
    loop {
        let frame = recv(ws).await;
        if frame["t"] == "job_assign" {
            return frame["job"]["jobId"].as_str().expect("jobId").to_owned();
        }
    }
}

#[tokio::test]
async fn three_instances_share_one_queue_without_double_leases() {
    let Some((a, b, c)) = three_hubs(|_| {}).await else { return };
    let (_on_b, mut b_ws) = b.connected_agent(CREATOR, 4).await;

    // Submitted to A, delivered by B within a notification's time. The ceiling is the
    // behaviour (the notification, not B's 30 s poll, brought the job); a third of the poll
    // interval tells the two apart with room for a loaded machine.
    let started = std::time::Instant::now();
    let job = a.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR})).await;
    let delivered = tokio::time::timeout(Duration::from_secs(10), next_assign(&mut b_ws))
        .await
        .unwrap_or_else(|_| panic!("not delivered through the notification within 10 s"));
    assert_eq!(delivered, id(&job));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    send(&mut b_ws, json!({"t":"job_result","id":id(&job),"status":"ok"})).await;
    a.wait_for_job_status(&id(&job), "succeeded").await;

    // Two agents on two other instances race for 40 jobs submitted to A.
    let (_on_c, mut c_ws) = c.connected_agent(CREATOR, 4).await;
    let submitted: HashSet<String> = futures_util::future::join_all(
        (0..40).map(|i| a.submit_job(json!({"type":CUSTOM,"payload":{"i":i},"creatorId":CREATOR}))),
    )
    .await
    .iter()
    .map(id)
    .collect();
    let mut received: HashMap<String, u32> = HashMap::new();
    while received.len() < submitted.len() {
        tokio::select! {
            frame = recv(&mut b_ws) => if frame["t"] == "job_assign" {
                let job_id = frame["job"]["jobId"].as_str().unwrap().to_owned();
                *received.entry(job_id.clone()).or_default() += 1;
                send(&mut b_ws, json!({"t":"job_result","id":job_id,"status":"ok","data":{"by":"b"}})).await;
            },
            frame = recv(&mut c_ws) => if frame["t"] == "job_assign" {
                let job_id = frame["job"]["jobId"].as_str().unwrap().to_owned();
                *received.entry(job_id.clone()).or_default() += 1;
                send(&mut c_ws, json!({"t":"job_result","id":job_id,"status":"ok","data":{"by":"c"}})).await;
            },
        }
    }
    assert!(received.values().all(|n| *n == 1), "a job was delivered twice: {received:?}");
    assert_eq!(received.keys().cloned().collect::<HashSet<_>>(), submitted);
    for job_id in &submitted {
        a.wait_for_job_status(job_id, "succeeded").await;
        let (_, history) = a.operator_get(&format!("/v1/jobs/{job_id}/attempts")).await;
        assert_eq!(history["attempts"].as_array().unwrap().len(), 1, "one lease per job: {history}");
    }
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn cancel_and_sync_cross_instances() {
    let Some((a, b, c)) = three_hubs(|_| {}).await else { return };
    let (_agent, mut b_ws) = b.connected_agent(CREATOR, 2).await;

    // Sync on A, answered by the agent on B.
    let request = a
        .http
        .post(a.url("/v1/jobs?sync=true&timeoutMs=5000"))
        .bearer_auth(&a.api_key)
        .json(&json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR}))
        .send();
    let agent = async {
        let job_id = next_assign(&mut b_ws).await;
        send(&mut b_ws, json!({"t":"job_result","id":job_id,"status":"ok","data":{"answer":42}})).await;
    };
    let (response, ()) = tokio::join!(request, agent);
    let response = response.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"answer":42}));

    // Cancel through C reaches the agent on B.
    let job = a.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR})).await;
    assert_eq!(next_assign(&mut b_ws).await, id(&job));
    let (status, _) = c.operator_post(&format!("/v1/jobs/{}/cancel", id(&job)), json!({})).await;
    assert_eq!(status, 202);
    let frame = recv(&mut b_ws).await;
    assert_eq!((frame["t"].as_str(), frame["id"].as_str()), (Some("job_cancel"), Some(id(&job).as_str())));
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_dead_instances_leases_come_back_after_the_visibility_timeout() {
    let Some((a, b, c)) = three_hubs(|config| {
        config.queue.visibility_timeout = Duration::from_millis(1500);
    })
    .await
    else {
        return;
    };
    let agent = c.enroll(CREATOR).await;
    let mut on_c = c.hello(&agent, json!({"slots":1})).await;
    let job = a.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR})).await;
    assert_eq!(next_assign(&mut on_c).await, id(&job));
    send(&mut on_c, json!({"t":"job_ack","id":id(&job)})).await;
    a.wait_for_job_status(&id(&job), "running").await;

    // C dies: nothing is released, the lease stays until it runs out.
    c.crash().await;
    // A dying process may or may not get a close frame out; either way the socket ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt as _;
        while let Some(Ok(message)) = on_c.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the dead instance's socket must end");

    // The agent reconnects to B and gets the job back as delivery 2 once the lease expires.
    let mut on_b = b.hello(&agent, json!({"slots":1})).await;
    assert_eq!(next_assign(&mut on_b).await, id(&job));
    let again = a.job(&id(&job)).await;
    assert_eq!(again["attempts"], 2, "{again}");
    // The crash released nothing: the first lease ended by expiring, a whole visibility
    // timeout after it began (the hub's own timestamps, so a slow machine cannot fake it).
    let (_, history) = a.operator_get(&format!("/v1/jobs/{}/attempts", id(&job))).await;
    let first = &history["attempts"][0];
    assert_eq!(first["outcome"], "expired", "{history}");
    let held_ms = unix_ms(&first["endedAt"]) - unix_ms(&first["leasedAt"]);
    assert!(held_ms >= 1500, "the lease ended {held_ms} ms after it began: {history}");
    send(&mut on_b, json!({"t":"job_result","id":id(&job),"status":"ok"})).await;
    a.wait_for_job_status(&id(&job), "succeeded").await;
    b.shutdown().await;
    a.shutdown().await;
}

// ---- Tunnel streams across instances (issue 19) ----

use edge_tunnel::open::{self, Answer, Open, Target};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An agent's side of the tunnel made of edge-tunnel pieces, connected to one hub: `echo.test`
/// is answered `ok` and echoed until the client ends its side; any other destination is
/// refused with `EGRESS_DENIED`. `streams` counts the streams asked for (pings aside).
struct TunnelAgent {
    task: tokio::task::JoinHandle<()>,
    streams: Arc<AtomicUsize>,
}

impl Drop for TunnelAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tunnel_agent(hub: &TestHub, agent: &TestAgent) -> TunnelAgent {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let token = hub.session_token(agent).await;
    let url = format!("{}{}", hub.base.replacen("http://", "ws://", 1), edge_tunnel::TUNNEL_PATH);
    let mut request = url.into_client_request().expect("tunnel URL");
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().expect("header value"));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("the tunnel's WebSocket connects");
    serve_tunnel(socket)
}

/// [`tunnel_agent`] to a hub serving TLS with a certificate `ca` signed, with `token` (an
/// agent's JWT from any instance: they share the secret).
async fn tls_tunnel_agent(hub: &TestHub, token: &str, ca: &std::path::Path) -> TunnelAgent {
    use rustls::pki_types::pem::PemObject as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).expect("CA PEM")).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = hub.hub().local_addr();
    let tcp = TcpStream::connect(addr).await.expect("the TLS hub accepts");
    let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string()).expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let mut request = format!("wss://{addr}{}", edge_tunnel::TUNNEL_PATH).into_client_request().expect("tunnel URL");
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().expect("header value"));
    let (socket, _) = tokio_tungstenite::client_async(request, tls).await.expect("the tunnel's WebSocket connects");
    serve_tunnel(socket)
}

fn serve_tunnel<S>(socket: tokio_tungstenite::WebSocketStream<S>) -> TunnelAgent
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(AtomicUsize::new(0));
    let counted = streams.clone();
    let task = tokio::spawn(async move {
        let _ = edge_tunnel::mux::serve(edge_tunnel::ws::over_websocket(socket), move |mut stream| {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(opened) = open::read::<_, Open>(&mut stream).await else { return };
                match opened.target {
                    Target::Ping => {
                        let _ = open::write(&mut stream, &Answer::ok()).await;
                    }
                    Target::Connect { host, .. } if host == "echo.test" => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        if open::write(&mut stream, &Answer::ok()).await.is_ok() {
                            let (mut from, mut to) = tokio::io::split(stream);
                            let _ = tokio::io::copy(&mut from, &mut to).await;
                            let _ = to.shutdown().await;
                        }
                    }
                    other => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let answer =
                            Answer::refused("EGRESS_DENIED", format!("{other} is not on this agent's allow list"));
                        let _ = open::write(&mut stream, &answer).await;
                    }
                }
            });
        })
        .await;
    });
    TunnelAgent { task, streams }
}

/// Waits until `on` lists `agent`'s tunnel as held by the instance at `base`.
async fn wait_for_route(on: &TestHub, agent: &TestAgent, base: &str) -> edge_hub::store::TunnelRoute {
    let store = on.store();
    wait_until(Duration::from_secs(10), "the tunnel's route", || {
        let store = store.clone();
        async move {
            store
                .tunnel_routes(0)
                .await
                .expect("routes")
                .into_iter()
                .find(|r| r.agent_id == agent.agent_id && r.relay_url == base)
        }
    })
    .await
}

/// Reads an HTTP response head (up to the blank line) byte by byte; "" when the connection ends first.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read_u8().await {
            Ok(byte) => head.push(byte),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A CONNECT through `hub`'s proxy port as `agent-<id>` with the hub's API key; returns the
/// connection and the response head.
async fn connect_through(hub: &TestHub, user: &str, destination: &str) -> (TcpStream, String) {
    use base64::Engine as _;
    let proxy = hub.hub().proxy_addr().expect("the hub has a proxy port");
    let mut client = TcpStream::connect(proxy).await.expect("proxy port answers");
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", hub.api_key));
    let request = format!(
        "CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\nProxy-Authorization: Basic {credentials}\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.expect("request sent");
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut client))
        .await
        .unwrap_or_else(|_| panic!("no answer to CONNECT {destination} within 10 s"));
    (client, head)
}

/// Sends `payload`, ends the sending side, and returns everything that comes back until the
/// far side ends: the echo proves the bytes and the half-close crossed both instances.
async fn echo_round_trip(client: TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut from, mut to) = client.into_split();
    let sending = async {
        to.write_all(payload).await.expect("payload sent");
        to.shutdown().await.expect("half-close");
    };
    let mut back = Vec::new();
    let receiving = from.read_to_end(&mut back);
    let ((), received) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(sending, receiving) })
        .await
        .expect("the echo ends within 20 s");
    received.expect("echo read");
    back
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

async fn three_proxy_hubs() -> Option<(TestHub, TestHub, TestHub)> {
    three_hubs(|config| config.proxy_listen = Some("127.0.0.1:0".parse().expect("literal address"))).await
}

#[tokio::test]
async fn proxy_clients_on_any_instance_reach_an_agent_tunnelled_to_another() {
    let Some((a, b, c)) = three_proxy_hubs().await else { return };
    let agent = b.enroll(CREATOR).await;
    let on_b = tunnel_agent(&b, &agent).await;
    let route = wait_for_route(&a, &agent, &b.base).await;
    assert_eq!(route.creator_id, CREATOR);
    // The operator's agent list on A shows the tunnel B holds.
    let (status, agents) = a.operator_get("/v1/agents").await;
    assert_eq!(status, 200);
    let listed = agents["agents"].as_array().unwrap().iter().find(|v| v["agentId"] == agent.agent_id.as_str()).cloned();
    let tunnel = listed.map(|v| v["tunnel"].clone()).unwrap_or_default();
    assert_eq!(tunnel["open"], true, "{agents}");
    assert_eq!(tunnel["instanceId"], route.instance_id.as_str(), "{agents}");

    // From A and from C, through B, byte-exact both ways, the half-close included.
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 + i / 251) as u8).collect();
    let user = format!("agent-{}", agent.agent_id);
    for hub in [&a, &c] {
        let (client, head) = connect_through(hub, &user, "echo.test:7").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(echo_round_trip(client, &payload).await == payload, "the echo through B differs");
    }
    // The creator selector chooses among every instance's tunnels (the creator came with
    // the route; C asked B nothing to choose).
    let (client, head) = connect_through(&c, &format!("creator-{CREATOR}"), "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo_round_trip(client, b"by creator").await, b"by creator");

    // The agent's refusal keeps its code across the link.
    let (_, head) = connect_through(&a, &user, "denied.test:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(header(&head, "X-Edge-Refusal"), Some("EGRESS_DENIED"), "{head}");
    assert_eq!(on_b.streams.load(Ordering::SeqCst), 4);

    // B stops: A's open stream through it ends, and a new client gets NO_AGENT at once.
    let (mut open_stream, head) = connect_through(&a, &user, "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    open_stream.write_all(b"ping").await.unwrap();
    let mut four = [0u8; 4];
    open_stream.read_exact(&mut four).await.unwrap();
    assert_eq!(&four, b"ping");
    b.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        let _ = open_stream.read_to_end(&mut rest).await;
    })
    .await;
    assert!(ended.is_ok(), "A's stream through the stopped B must end");
    let started = std::time::Instant::now();
    let (_, head) = connect_through(&a, &user, "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(header(&head, "X-Edge-Refusal"), Some("NO_AGENT"), "{head}");
    // "At once" is the behaviour: a refused loopback connection answers in milliseconds,
    // and 3 s stays below the link's 5 s connect timeout, the wait this proves is not taken.
    assert!(started.elapsed() < Duration::from_secs(3), "NO_AGENT took {:?}", started.elapsed());
    drop(on_b);

    // The agent reconnects to C: A reaches it through C.
    let on_c = tunnel_agent(&c, &agent).await;
    wait_for_route(&a, &agent, &c.base).await;
    let (client, head) = connect_through(&a, &user, "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(echo_round_trip(client, &payload).await == payload, "the echo through C differs");
    assert_eq!(on_c.streams.load(Ordering::SeqCst), 1);
    drop(on_c);
    c.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_dead_instances_leftover_routes_do_not_fail_clients_of_the_live_ones() {
    let Some((a, b, c)) = three_proxy_hubs().await else { return };
    // Two agents of one creator: one tunnelled to B, the other's tunnel was on an instance
    // that was killed (no shutdown, so its route stays until it goes stale).
    let live = b.enroll(CREATOR).await;
    let on_b = tunnel_agent(&b, &live).await;
    wait_for_route(&a, &live, &b.base).await;
    let lost = c.enroll(CREATOR).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let orphan = edge_hub::store::NewTunnelRoute {
        agent_id: lost.agent_id.clone(),
        tunnel_id: "hub_killed/1".into(),
        instance_id: "hub_killed".into(),
        relay_url: dead_url,
    };
    a.store().put_tunnel_route(&orphan, edge_hub::crypto::now_ms()).await.unwrap();

    // Clients of A and C choosing by creator (round robin, and sticky sessions that may
    // hash to the dead one) all get through, every time.
    for round in 0..6 {
        for hub in [&a, &c] {
            let user = if round % 2 == 0 {
                format!("creator-{CREATOR}")
            } else {
                format!("creator-{CREATOR}-session-s{round}")
            };
            let (client, head) = connect_through(hub, &user, "echo.test:7").await;
            assert!(head.starts_with("HTTP/1.1 200"), "round {round} through {}: {head}", hub.base);
            assert_eq!(echo_round_trip(client, b"still here").await, b"still here");
        }
    }
    assert_eq!(on_b.streams.load(Ordering::SeqCst), 12, "every stream went through the live agent");
    // Asked for by name, the lost agent is an immediate NO_AGENT, not a hang.
    let (_, head) = connect_through(&a, &format!("agent-{}", lost.agent_id), "echo.test:7").await;
    assert_eq!(header(&head, "X-Edge-Refusal"), Some("NO_AGENT"), "{head}");
    drop(on_b);
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

/// Instances serving TLS link over https://, verifying the other's certificate against
/// `--instance-ca`; without that CA the link refuses the certificate and opens nothing.
#[tokio::test]
async fn instances_serving_tls_link_over_https_and_verify_each_other() {
    let Some(db) = TestDb::postgres().await else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_certificates(dir.path());
    let proxy = Some("127.0.0.1:0".parse().expect("literal address"));
    // A serves plain HTTP on loopback for the test's own calls; B serves TLS. A trusts the CA.
    let a = TestHub::start_on(db, |c| {
        c.proxy_listen = proxy;
        c.instance_ca = Some(ca.clone());
    })
    .await;
    let b = a.sibling_with(|c| c.tls = Some(edge_hub::tls::TlsFiles { cert: cert.clone(), key: key.clone() })).await;
    let doubting = a.sibling_with(|c| c.instance_ca = None).await;
    assert!(b.base.starts_with("https://"), "{}", b.base);

    let agent = a.enroll(CREATOR).await;
    let token = a.session_token(&agent).await;
    let on_b = tls_tunnel_agent(&b, &token, &ca).await;
    let route = wait_for_route(&a, &agent, &b.base).await;
    assert!(route.relay_url.starts_with("https://"), "B advertises https: {}", route.relay_url);

    let user = format!("agent-{}", agent.agent_id);
    let payload: Vec<u8> = (0..128 * 1024).map(|i| (i * 13 + i / 97) as u8).collect();
    let (client, head) = connect_through(&a, &user, "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(echo_round_trip(client, &payload).await == payload, "the echo over the TLS link differs");

    // An instance without the CA does not trust B's certificate: it says so and opens nothing.
    let (mut refused, head) = connect_through(&doubting, &user, "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let mut why = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), refused.read_to_string(&mut why)).await;
    assert!(why.contains("TLS failed") && why.contains("--instance-ca"), "the answer says what to fix: {why}");
    assert_eq!(on_b.streams.load(Ordering::SeqCst), 1, "only the trusted link opened a stream");
    drop(on_b);
    doubting.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

/// Sends the link's upgrade request to `hub` with `bearer` (if any); returns the connection
/// and the status code.
async fn relay_request(hub: &TestHub, bearer: Option<&str>) -> (TcpStream, u16) {
    let mut link = TcpStream::connect(hub.hub().local_addr()).await.expect("hub answers");
    let authorization = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: upgrade\r\nUpgrade: {}\r\n{authorization}\r\n",
        edge_hub::tunnel::link::RELAY_PATH,
        hub.hub().local_addr(),
        edge_hub::tunnel::link::UPGRADE_TOKEN
    );
    link.write_all(request.as_bytes()).await.expect("request sent");
    let head = read_head(&mut link).await;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {head:?}"));
    (link, status)
}

#[tokio::test]
async fn the_instance_link_refuses_a_missing_forged_or_replayed_credential_and_opens_nothing() {
    let Some((a, b, c)) = three_proxy_hubs().await else { return };
    let agent = b.enroll(CREATOR).await;
    let on_b = tunnel_agent(&b, &agent).await;
    let route = wait_for_route(&a, &agent, &b.base).await;
    let echo = Target::Connect { host: "echo.test".into(), port: 7 };

    let (_, status) = relay_request(&b, None).await;
    assert_eq!(status, 401, "no credential");
    let forger = edge_hub::tunnel::link::LinkKeys::new(&edge_hub::Secret::new("another-secret-".repeat(4)));
    let forged = forger.issue("hub_evil", &route.instance_id, &agent.agent_id, &echo).expect("token");
    let (_, status) = relay_request(&b, Some(&forged)).await;
    assert_eq!(status, 401, "a token signed with another secret");
    // The agent's own session token is signed with the JWT secret itself: still no link token.
    let session = b.session_token(&agent).await;
    let (_, status) = relay_request(&b, Some(&session)).await;
    assert_eq!(status, 401, "an agent's session token");
    let shared = edge_hub::tunnel::link::LinkKeys::new(&edge_hub::Secret::new(JWT_SECRET));
    let elsewhere = shared.issue("hub_a", "hub_someone_else", &agent.agent_id, &echo).expect("token");
    let (_, status) = relay_request(&b, Some(&elsewhere)).await;
    assert_eq!(status, 401, "a token for another instance");
    assert_eq!(on_b.streams.load(Ordering::SeqCst), 0, "a refused link opened a stream");

    // A token signed with the shared secret for B opens one stream, once.
    let good = shared.issue("hub_a", &route.instance_id, &agent.agent_id, &echo).expect("token");
    let (mut link, status) = relay_request(&b, Some(&good)).await;
    assert_eq!(status, 101);
    let answer: Answer = open::read(&mut link).await.expect("the agent's answer");
    assert!(answer.ok, "{answer:?}");
    link.write_all(b"hello").await.unwrap();
    let mut five = [0u8; 5];
    link.read_exact(&mut five).await.unwrap();
    assert_eq!(&five, b"hello");
    let (_, status) = relay_request(&b, Some(&good)).await;
    assert_eq!(status, 401, "a replayed token");
    assert_eq!(on_b.streams.load(Ordering::SeqCst), 1);

    // An instance that died without removing its route: A's client gets NO_AGENT at once
    // (its address refuses the connection) instead of hanging.
    let other = a.enroll(CREATOR).await;
    // A route at A's own address under another instance id is an earlier run of A that
    // died: skipped, never dialled.
    let previous = edge_hub::store::NewTunnelRoute {
        agent_id: other.agent_id.clone(),
        tunnel_id: "hub_previous/1".into(),
        instance_id: "hub_previous".into(),
        relay_url: a.base.clone(),
    };
    a.store().put_tunnel_route(&previous, edge_hub::crypto::now_ms()).await.unwrap();
    let (_, head) = connect_through(&a, &format!("agent-{}", other.agent_id), "echo.test:7").await;
    assert_eq!(header(&head, "X-Edge-Refusal"), Some("NO_AGENT"), "{head}");
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let orphan = edge_hub::store::NewTunnelRoute {
        agent_id: other.agent_id.clone(),
        tunnel_id: "hub_dead/1".into(),
        instance_id: "hub_dead".into(),
        relay_url: dead_url,
    };
    a.store().put_tunnel_route(&orphan, edge_hub::crypto::now_ms()).await.unwrap();
    let started = std::time::Instant::now();
    let (_, head) = connect_through(&a, &format!("agent-{}", other.agent_id), "echo.test:7").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(header(&head, "X-Edge-Refusal"), Some("NO_AGENT"), "{head}");
    // "At once" is the behaviour: a refused loopback connection answers in milliseconds,
    // and 3 s stays below the link's 5 s connect timeout, the wait this proves is not taken.
    assert!(started.elapsed() < Duration::from_secs(3), "NO_AGENT took {:?}", started.elapsed());
    drop(link);
    drop(on_b);
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}
