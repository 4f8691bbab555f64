//! `edge-loadgen`: drives a running `edge-hub` from a separate process for the benchmarks in
//! docs/benchmarks.md (`cargo xtask bench hub` runs it). It enrolls agents through the real
//! HTTP API (enroll → challenge → Ed25519 signature → JWT), holds their WebSocket sessions,
//! answers every `job_assign` with `job_ack` and an ok `job_result` at once, and submits jobs
//! through `POST /v1/jobs`.
//!
//! It owns nothing but sockets to 127.0.0.x; it must never run unbounded: every mode stops
//! after a job count or a duration, and every wait has a deadline. It prints one JSON line
//! with its measurements on stdout (progress goes to stderr).

use anyhow::{bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "edge-loadgen", about = "Load generator for edge-hub benchmarks")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// End-to-end throughput: submit `--jobs` as fast as possible, agents answer at once.
    Throughput(ThroughputArgs),
    /// Dispatch latency (submit → job_assign at the agent) at a fixed submission rate.
    Latency(LatencyArgs),
    /// Connect agents, say hello, heartbeat, and hold the sessions open.
    Idle(IdleArgs),
    /// Claim-and-complete throughput of the hub's store itself (no HTTP, no WebSocket):
    /// `--jobs` queued first, then `--workers` loops of claim → finish until none is left.
    Store(StoreArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// A database this run may fill (sqlite://… or postgres://…).
    #[arg(long)]
    database_url: String,
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    #[arg(long, default_value_t = 8)]
    workers: usize,
}

#[derive(Args, Clone)]
struct Common {
    /// Hub base URL, http://127.0.0.1:PORT.
    #[arg(long)]
    hub: String,
    /// Operator API key for submissions.
    #[arg(long, default_value = "")]
    api_key: String,
    /// File with one enrollment token per line (`edge-hub enroll-token create --count N`).
    #[arg(long)]
    tokens: std::path::PathBuf,
    /// Agents to enroll and connect (at most the number of tokens).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Jobs each agent runs at once (announced in hello).
    #[arg(long, default_value_t = 8)]
    slots: u32,
    /// Spread client sockets over 127.0.0.1 … 127.0.0.N so one source address does not
    /// run out of ephemeral ports.
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Parallel enrollments and connection attempts.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Creator the jobs are submitted for (the tokens' creator).
    #[arg(long, default_value = "bench")]
    creator: String,
    /// How long every connected session has to get its `hello_ack` (longer under emulation).
    #[arg(long, default_value_t = 120)]
    hello_timeout_secs: u64,
}

#[derive(Args)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Concurrent HTTP submitters.
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// Jobs per request: 1 submits through `POST /v1/jobs`, more through `POST /v1/jobs/batch`
    /// (at most 100).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    batch: u64,
    /// Give up after this long.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[derive(Args)]
struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Submit at the same rate for this long first, unmeasured: the HTTP client's
    /// connections are opened and both processes' first-use costs paid, as in a hub that has
    /// been running.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Also write every job as a CSV line (submitted at, µs since the first submission;
    /// dispatch latency, µs), to see whether slow jobs come together.
    #[arg(long)]
    samples_out: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Keep the sessions this long after all are connected, then exit.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    raise_fd_limit();
    // Fails only if a provider is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().mode {
        Mode::Throughput(args) => throughput(args).await,
        Mode::Latency(args) => latency(args).await,
        Mode::Idle(args) => idle(args).await,
        Mode::Store(args) => store_bench(args).await,
    }
}

/// Tens of thousands of sockets need more descriptors than the usual default: ask for a
/// million, else settle for the hard limit (raising that needs CAP_SYS_RESOURCE).
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = libc::rlimit { rlim_cur: 1_048_576, rlim_max: 1_048_576 };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    eprintln!("descriptor limit: {} (raising it further needs CAP_SYS_RESOURCE)", limit.rlim_max);
}

// ---- enrollment ---------------------------------------------------------------------------

struct Identity {
    jwt: String,
}

async fn enroll_all(http: &reqwest::Client, common: &Common) -> Result<Vec<Identity>> {
    let text = std::fs::read_to_string(&common.tokens)
        .with_context(|| format!("reading enrollment tokens from {}", common.tokens.display()))?;
    let tokens: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    if tokens.len() < common.agents {
        bail!("{} agents need {} tokens; the file has {}", common.agents, common.agents, tokens.len());
    }
    let started = Instant::now();
    let results = futures_util::stream::iter(tokens.into_iter().take(common.agents))
        .map(|token| enroll_one(http, &common.hub, token))
        .buffer_unordered(common.parallel)
        .collect::<Vec<_>>()
        .await;
    let identities = results.into_iter().collect::<Result<Vec<_>>>()?;
    eprintln!("enrolled {} agents in {:.1} s", identities.len(), started.elapsed().as_secs_f64());
    Ok(identities)
}

async fn post_json(http: &reqwest::Client, url: String, body: Value) -> Result<Value> {
    let response = http.post(&url).json(&body).send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn enroll_one(http: &reqwest::Client, hub: &str, token: String) -> Result<Identity> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("random device key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let public_key = B64.encode(key.verifying_key().as_bytes());
    let enrolled = post_json(
        http,
        format!("{hub}{}", edge_protocol::api::ENROLL_PATH),
        json!({"token": token, "publicKey": public_key, "name": "loadgen", "version": "agent-loadgen"}),
    )
    .await?;
    let agent_id = enrolled["agentId"].as_str().context("agentId")?.to_owned();
    let challenge =
        post_json(http, format!("{hub}{}", edge_protocol::api::CHALLENGE_PATH), json!({"agentId": agent_id})).await?;
    let nonce = challenge["nonce"].as_str().context("nonce")?.to_owned();
    let signature = B64.encode(key.sign(&edge_protocol::api::token_signing_message(&agent_id, &nonce)).to_bytes());
    let token = post_json(
        http,
        format!("{hub}{}", edge_protocol::api::TOKEN_PATH),
        json!({"agentId": agent_id, "nonce": nonce, "signature": signature}),
    )
    .await?;
    Ok(Identity { jwt: token["token"].as_str().context("token")?.to_owned() })
}

// ---- simulated agents ---------------------------------------------------------------------

/// What every agent task reports into.
#[derive(Default)]
struct Shared {
    connected: AtomicU64,
    assigned: AtomicU64,
    results: AtomicU64,
    failures: AtomicU64,
    /// Latency mode: job id → when its assignment arrived (waiting for the submit answer).
    assigned_at: Mutex<HashMap<String, Instant>>,
    /// Latency mode: job id → when its submission started (waiting for the assignment);
    /// None for a warm-up job, which is not measured.
    submitted_at: Mutex<HashMap<String, Option<Instant>>>,
    /// Latency mode: (submitted at, µs since `epoch`; dispatch latency, µs) per measured job.
    timeline: Mutex<Vec<(u64, u64)>>,
    /// When a latency run began; None in the modes that measure no latency.
    epoch: Option<Instant>,
    /// Latency mode: how long each `POST /v1/jobs` took to answer (part of the above).
    submit_us: Mutex<Vec<u64>>,
}

impl Shared {
    fn on_assigned(&self, job_id: &str, at: Instant) {
        if self.epoch.is_none() {
            return;
        }
        let started = self.submitted_at.lock().ok().and_then(|mut s| s.remove(job_id));
        match started {
            Some(Some(started)) => self.record(started, at.duration_since(started)),
            Some(None) => {}
            None => {
                if let Ok(mut assigned) = self.assigned_at.lock() {
                    assigned.insert(job_id.to_owned(), at);
                }
            }
        }
    }

    /// `started` is None for a warm-up job.
    fn on_submitted(&self, job_id: &str, started: Option<Instant>) {
        let assigned = self.assigned_at.lock().ok().and_then(|mut a| a.remove(job_id));
        match assigned {
            Some(at) => {
                if let Some(started) = started {
                    self.record(started, at.saturating_duration_since(started));
                }
            }
            None => {
                if let Ok(mut submitted) = self.submitted_at.lock() {
                    submitted.insert(job_id.to_owned(), started);
                }
            }
        }
    }

    fn record(&self, started: Instant, latency: Duration) {
        if let (Some(epoch), Ok(mut timeline)) = (self.epoch, self.timeline.lock()) {
            timeline.push((micros(started.saturating_duration_since(epoch)), micros(latency)));
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[derive(Deserialize)]
struct Incoming {
    t: String,
    #[serde(default)]
    job: Option<IncomingJob>,
    #[serde(default, rename = "hbIntervalMs")]
    hb_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
struct IncomingJob {
    #[serde(rename = "jobId")]
    job_id: String,
}

fn ws_addr(hub: &str) -> Result<(String, SocketAddr)> {
    let host_port = hub.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = host_port.parse().with_context(|| format!("hub must be http://IP:PORT, got {hub}"))?;
    Ok((format!("ws://{host_port}{}", edge_protocol::api::WS_PATH), addr))
}

async fn connect_all(
    common: &Common,
    identities: Vec<Identity>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let (ws_url, addr) = ws_addr(&common.hub)?;
    let started = Instant::now();
    let total = identities.len();
    let connections = futures_util::stream::iter(identities.into_iter().enumerate())
        .map(|(i, identity)| {
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(common.source_ips.max(1))) as u8);
            let url = format!("{ws_url}?token={}", identity.jwt);
            let (shared, stop, slots) = (shared.clone(), stop.clone(), common.slots);
            // Each agent says hello as soon as its own socket is open, as a real agent does:
            // a socket left silent past the hub's grace is served as a version 0 agent.
            async move {
                let ws = connect_one(&url, addr, source).await?;
                anyhow::Ok(tokio::spawn(run_agent(ws, slots, shared, stop)))
            }
        })
        .buffer_unordered(common.parallel)
        .collect::<Vec<_>>()
        .await;
    let mut tasks = Vec::with_capacity(total);
    for task in connections {
        tasks.push(task?);
    }
    let deadline = Instant::now() + Duration::from_secs(common.hello_timeout_secs);
    while shared.connected.load(Ordering::Relaxed) < total as u64 {
        if Instant::now() > deadline {
            bail!("only {} of {total} agents got hello_ack", shared.connected.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("connected {total} agents in {:.1} s", started.elapsed().as_secs_f64());
    Ok(tasks)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Reads in 4 KiB chunks: tungstenite's default 128 KiB read buffer is zeroed before every
/// read (a sixth of the load generator's CPU), and the frames here are a few hundred bytes.
fn agent_socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024)
}

async fn connect_one(url: &str, hub: SocketAddr, source: Ipv4Addr) -> Result<Ws> {
    let mut last = None;
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        match socket.connect(hub).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(agent_socket_config()))
                    .await
                    .context("WebSocket handshake")?;
                return Ok(ws);
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("cannot connect")))
}

async fn run_agent(ws: Ws, slots: u32, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"t":"hello","protocol":1,"v":"agent-loadgen","capabilities":["http_request"],"slots":slots});
    if sink.send(Message::text(hello.to_string())).await.is_err() {
        shared.failures.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut hb = tokio::time::interval(Duration::from_secs(20));
    hb.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = hb.tick() => {
                let frame = json!({"t":"hb","v":"agent-loadgen","ts":unix_secs()});
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
            message = stream.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    _ => {
                        shared.failures.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                let Ok(frame) = serde_json::from_str::<Incoming>(text.as_str()) else { continue };
                match (frame.t.as_str(), frame.job) {
                    ("hello_ack", _) => {
                        if let Some(ms) = frame.hb_interval_ms {
                            // Stay well inside the hub's idle limit (3 intervals).
                            hb = tokio::time::interval(Duration::from_millis(ms.clamp(1000, 20_000)));
                            hb.tick().await;
                        }
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    ("job_assign", Some(job)) => {
                        shared.assigned.fetch_add(1, Ordering::Relaxed);
                        shared.on_assigned(&job.job_id, Instant::now());
                        let ack = json!({"t":"job_ack","id":job.job_id});
                        let result = json!({"t":"job_result","id":job.job_id,"status":"ok","data":{"statusCode":200}});
                        let sent = async {
                            sink.feed(Message::text(ack.to_string())).await?;
                            sink.feed(Message::text(result.to_string())).await?;
                            sink.flush().await
                        };
                        if sent.await.is_err() {
                            shared.failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        shared.results.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = sink.close().await;
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---- submission ---------------------------------------------------------------------------

fn job_body(creator: &str, n: u64) -> Value {
    // The simulated agents never fetch it; the URL only has to pass validation.
    json!({"type":"http_request","creatorId":creator,"payload":{"url":format!("http://127.0.0.1:9/bench/{n}")}})
}

async fn submit(http: &reqwest::Client, hub: &str, key: &str, body: &Value) -> Result<String> {
    let response = http.post(format!("{hub}/v1/jobs")).bearer_auth(key).json(body).send().await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("submit: {status}: {text}");
    }
    // Only the id is read: the rest of the answer is skipped, not built.
    #[derive(Deserialize)]
    struct Submitted {
        id: String,
    }
    Ok(serde_json::from_str::<Submitted>(&text).context("submit answer without a job id")?.id)
}

/// Submits jobs `first..first + count` in one `POST /v1/jobs/batch`; returns how many the
/// hub refused.
async fn submit_batch(
    http: &reqwest::Client,
    hub: &str,
    key: &str,
    creator: &str,
    first: u64,
    count: u64,
) -> Result<u64> {
    let jobs: Vec<Value> = (first..first + count).map(|n| job_body(creator, n)).collect();
    let response =
        http.post(format!("{hub}/v1/jobs/batch")).bearer_auth(key).json(&json!({ "jobs": jobs })).send().await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("batch submit: {status}: {text}");
    }
    // Only the count is read: the hundred job views are skipped, not built.
    #[derive(Deserialize)]
    struct BatchAnswer {
        failed: u64,
    }
    Ok(serde_json::from_str::<BatchAnswer>(&text).context("batch answer without `failed`")?.failed)
}

/// `edge_hub_jobs_completed_total` as the hub reports it (0 before the first completion).
async fn completed_total(http: &reqwest::Client, hub: &str) -> Result<u64> {
    let text = http.get(format!("{hub}/metrics")).timeout(Duration::from_secs(5)).send().await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("edge_hub_jobs_completed_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0))
}

fn http_client(pool: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn throughput(args: ThroughputArgs) -> Result<()> {
    let common = args.common;
    let http = http_client(args.submitters.max(common.parallel))?;
    let identities = enroll_all(&http, &common).await?;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = connect_all(&common, identities, shared.clone(), stop_rx).await?;
    let baseline = completed_total(&http, &common.hub).await?;

    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..args.submitters {
        let (http, hub, key, creator) =
            (http.clone(), common.hub.clone(), common.api_key.clone(), common.creator.clone());
        let (next, errors, total, batch) = (next.clone(), errors.clone(), args.jobs, args.batch);
        submitters.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                let count = batch.min(total - first);
                let refused = if batch == 1 {
                    submit(&http, &hub, &key, &job_body(&creator, first)).await.map(|_| 0)
                } else {
                    submit_batch(&http, &hub, &key, &creator, first, count).await
                };
                match refused {
                    Ok(0) => {}
                    Ok(refused) => {
                        errors.fetch_add(refused, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(count, Ordering::Relaxed) < 5 {
                            eprintln!("{e:#}");
                        }
                    }
                }
            }
        }));
    }
    for submitter in submitters {
        let _ = submitter.await;
    }
    let submitted_in = started.elapsed();
    let accepted = args.jobs - errors.load(Ordering::Relaxed);
    eprintln!("submitted {accepted} jobs in {:.2} s", submitted_in.as_secs_f64());

    let deadline = started + Duration::from_secs(args.timeout_secs);
    while shared.results.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let results_in = started.elapsed();
    // The agents sent every result; the run ends when the hub has recorded them all.
    // A busy hub may answer a scrape slowly; that is a retry, not a failure.
    let mut recorded = 0;
    loop {
        if let Ok(total) = completed_total(&http, &common.hub).await {
            recorded = total.saturating_sub(baseline);
        }
        if recorded >= accepted || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let report = json!({
        "mode": "throughput",
        "agents": common.agents,
        "slots": common.slots,
        "jobs": args.jobs,
        "batch": args.batch,
        "accepted": accepted,
        "submit_errors": errors.load(Ordering::Relaxed),
        "recorded": recorded,
        "submit_secs": submitted_in.as_secs_f64(),
        "results_secs": results_in.as_secs_f64(),
        "elapsed_secs": elapsed.as_secs_f64(),
        "jobs_per_sec": recorded as f64 / elapsed.as_secs_f64(),
        "agent_failures": shared.failures.load(Ordering::Relaxed),
    });
    println!("{report}");
    if recorded < accepted {
        bail!("the hub recorded {recorded} of {accepted} results before the deadline");
    }
    Ok(())
}

async fn latency(args: LatencyArgs) -> Result<()> {
    let common = args.common;
    let http = http_client(256)?;
    let identities = enroll_all(&http, &common).await?;
    let shared = Arc::new(Shared { epoch: Some(Instant::now()), ..Shared::default() });
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = connect_all(&common, identities, shared.clone(), stop_rx).await?;

    let warmup = args.rate * args.warmup_secs;
    let total = args.rate * args.duration_secs;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    // All failed submissions (the first few are printed), and those of measured jobs.
    let (errors, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut started = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for n in 0..warmup + total {
        ticker.tick().await;
        let measured = n >= warmup;
        if n == warmup {
            started = Instant::now();
        }
        let (http, hub, key, creator, shared, errors, failed) = (
            http.clone(),
            common.hub.clone(),
            common.api_key.clone(),
            common.creator.clone(),
            shared.clone(),
            errors.clone(),
            failed.clone(),
        );
        inflight.spawn(async move {
            let at = Instant::now();
            match submit(&http, &hub, &key, &job_body(&creator, n)).await {
                Ok(id) if measured => {
                    if let Ok(mut answered) = shared.submit_us.lock() {
                        answered.push(micros(at.elapsed()));
                    }
                    shared.on_submitted(&id, Some(at))
                }
                Ok(id) => shared.on_submitted(&id, None),
                Err(e) => {
                    if measured {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("{e:#}");
                    }
                }
            }
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = total - failed.load(Ordering::Relaxed);
    while (shared.timeline.lock().map(|t| t.len()).unwrap_or(0) as u64) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let mut timeline = shared.timeline.lock().map(|t| t.clone()).unwrap_or_default();
    let mut samples: Vec<u64> = timeline.iter().map(|(_, latency)| *latency).collect();
    samples.sort_unstable();
    if let Some(path) = &args.samples_out {
        timeline.sort_unstable();
        let first = timeline.first().map_or(0, |(at, _)| *at);
        let csv: String = std::iter::once("submitted_at_us,latency_us\n".to_owned())
            .chain(timeline.iter().map(|(at, latency)| format!("{},{latency}\n", at - first)))
            .collect();
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut submit_samples = shared.submit_us.lock().map(|l| l.clone()).unwrap_or_default();
    submit_samples.sort_unstable();
    let pct = |p: f64| percentile_ms(&samples, p);
    let report = json!({
        "mode": "latency",
        "agents": common.agents,
        "rate": args.rate,
        "achieved_rate": achieved,
        "jobs": total,
        "measured": samples.len(),
        "warmup_secs": args.warmup_secs,
        "submit_errors": failed.load(Ordering::Relaxed),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "submit_answer_p50_ms": percentile_ms(&submit_samples, 0.50),
        "submit_answer_p99_ms": percentile_ms(&submit_samples, 0.99),
    });
    println!("{report}");
    Ok(())
}

/// The `p` quantile (0..=1) of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)] as f64 / 1000.0
}

async fn idle(args: IdleArgs) -> Result<()> {
    let common = args.common;
    let http = http_client(common.parallel)?;
    let identities = enroll_all(&http, &common).await?;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = connect_all(&common, identities, shared.clone(), stop_rx).await?;
    // The xtask waits for this line, then measures the hub.
    println!("{}", json!({"mode": "idle", "connected": shared.connected.load(Ordering::Relaxed)}));
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let failures = shared.failures.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    println!("{}", json!({"mode": "idle", "dropped": failures}));
    Ok(())
}

// ---- store --------------------------------------------------------------------------------

async fn store_bench(args: StoreArgs) -> Result<()> {
    use edge_hub::store::{ClaimRequest, FinishOutcome, FinishRequest, NewAgent, NewJob, Transition};
    let store = edge_hub::open_store(&args.database_url).await?;
    let now = || edge_hub::crypto::now_ms();
    // One enrolled agent per worker, all of one creator (claims are per agent).
    let mut agents = Vec::new();
    for _ in 0..args.workers {
        let token = edge_hub::create_enrollment_token(&*store, "bench-store", Duration::from_secs(3600)).await?;
        let agent = NewAgent {
            id: edge_hub::crypto::new_agent_id()?,
            public_key: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".to_owned(),
            name: Some("loadgen".to_owned()),
            version: None,
        };
        let record = store
            .enroll_agent(&edge_hub::crypto::sha256_hex(token.expose()), agent, now())
            .await?
            .context("enrollment token refused")?;
        agents.push(record);
    }
    // Queue everything first, untimed, with the workers' parallelism.
    let queued = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = tokio::task::JoinSet::new();
    for _ in 0..args.workers {
        let (store, next, total) = (store.clone(), next.clone(), args.jobs);
        fillers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let t = edge_hub::crypto::now_ms();
                let job = NewJob {
                    id: edge_hub::crypto::new_job_id(),
                    job_type: "http_request".to_owned(),
                    payload: json!({"url": format!("http://127.0.0.1:9/store/{n}")}),
                    creator_id: "bench-store".to_owned(),
                    target_agent_id: None,
                    labels: Vec::new(),
                    priority: 0,
                    run_at: t,
                    idempotency_key: None,
                    max_receive_count: 5,
                    visibility_timeout_ms: 120_000,
                    skipped_recipients: None,
                    final_state: None,
                };
                store.insert_job(job, t).await?;
            }
        });
    }
    while let Some(done) = fillers.join_next().await {
        done??;
    }
    eprintln!("queued {} jobs in {:.1} s", args.jobs, queued.elapsed().as_secs_f64());

    let completed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for agent in agents {
        let (store, completed) = (store.clone(), completed.clone());
        workers.spawn(async move {
            let request = ClaimRequest {
                agent_id: agent.id.clone(),
                creator_id: agent.creator_id.clone(),
                labels: Vec::new(),
                job_types: None,
            };
            while let Some(job) = store.claim_job(&request, edge_hub::crypto::now_ms()).await? {
                let finish = FinishRequest {
                    job_id: job.id.clone(),
                    agent_id: agent.id.clone(),
                    lease_token: job.lease_token,
                    transition: Transition::Succeeded,
                    result: None,
                    error: None,
                    sent_recipients: Vec::new(),
                    uncertain_recipients: Vec::new(),
                };
                match store.finish_job(finish, edge_hub::crypto::now_ms()).await? {
                    FinishOutcome::Recorded(_) => {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    other => anyhow::bail!("job {} not completed: {other:?}", job.id),
                }
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = completed.load(Ordering::Relaxed);
    store.close().await;
    println!(
        "{}",
        json!({"engine": store.engine(), "jobs": args.jobs, "completed": done, "workers": args.workers,
               "elapsed_secs": elapsed, "jobs_per_sec": done as f64 / elapsed})
    );
    if done != args.jobs {
        bail!("{done} of {} jobs completed", args.jobs);
    }
    Ok(())
}
