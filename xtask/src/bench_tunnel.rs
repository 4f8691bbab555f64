//! `cargo xtask bench tunnel`: our tunnel side by side with rathole, in one run, on loopback.
//!
//! - Throughput: iperf3 through a forwarded service (our `--forward-listen` to a service the
//!   agent's person exposed; rathole's server service to its client's local service), 1 and
//!   16 streams, for our tunnel over TLS (raw fast path and WebSocket) and rathole over Noise
//!   and over plain TCP.
//! - Memory: the agent's and the hub's RSS with the tunnel idle and with 1,000 open idle
//!   streams (rathole's client and server the same way), and from that the agent's bytes per
//!   idle stream.
//!
//! - Latency (also alone: `cargo xtask bench tunnel latency`): small HTTP requests through
//!   the same forwarded paths to one small keep-alive HTTP service (hyper, in this process)
//!   at 1, 1,000, 2,000 and 4,000 requests/s (rathole's published table), p50 and p99, with
//!   the service reached directly as the floor. `oha` sends at a fixed rate (open loop) on 50
//!   keep-alive connections for 10 s per rate and measures each request from the moment it
//!   was due (`--latency-correction`), so a stall counts against every request it delayed
//!   (no coordinated omission).
//! - Our proxy path: `curl -p -x http://agent-<id>:<key>@hub` (HTTP CONNECT) to a local site
//!   the agent's person allowed (`--allow-egress` of that one address), 100 times in a row,
//!   and `oha -x` at 1,000 requests/s through the same port (oha uses CONNECT only for
//!   https URLs: for this http site it is the plain forward proxy, a new connection per
//!   request since the hub closes plain-HTTP proxy connections after one).
//!
//! rathole and oha are built from crates.io into `target/bench-tools/` (pinned versions;
//! rathole with its server, client and Noise features only: no OpenSSL); iperf3, curl and
//! openssl come from Debian.

use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_e2e::procfs::rss_kib;
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const RATHOLE_VERSION: &str = "0.5.0";
const OHA_VERSION: &str = "1.16.0";
const SECONDS: &str = "5";
const IDLE_STREAMS: usize = 1000;
/// rathole's published latency table: requests per second.
const RATES: [u32; 4] = [1, 1000, 2000, 4000];
/// Seconds of load per rate: a run sends rate × this many requests.
const RATE_SECONDS: u32 = 10;
/// Keep-alive connections the load generator spreads its requests over.
const CONNECTIONS: u32 = 50;
/// `curl` runs through CONNECT, one after the other.
const CURL_RUNS: usize = 100;
/// The load generator's rate through the proxy port.
const PROXY_RATE: u32 = 1000;
/// The HTTP service's whole answer body.
const BODY: &str = "Hello, world!";

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `tool version_arg` must succeed, else the error says what to install.
fn need(tool: &str, version_arg: &str, package: &str) -> Result<()> {
    let found = Command::new(tool).arg(version_arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !matches!(found, Ok(status) if status.success()) {
        bail!("{tool} is needed for this benchmark: apt-get install --no-install-recommends {package}");
    }
    Ok(())
}

/// `name` `version` from crates.io, built into `target/bench-tools/` once.
fn bench_tool(name: &str, version: &str, options: &[&str]) -> Result<PathBuf> {
    crate::util::cargo_tool(&root().join("target/bench-tools"), name, version, options)
}

fn rathole() -> Result<PathBuf> {
    // Not `--locked`: rathole 0.5.0's lock file pins `time` 0.3.29, which no longer compiles
    // on current Rust; its semver ranges resolve to ones that do.
    bench_tool("rathole", RATHOLE_VERSION, &["--no-default-features", "--features", "server,client,noise"])
}

fn oha() -> Result<PathBuf> {
    bench_tool("oha", OHA_VERSION, &["--locked"])
}

/// The small HTTP service behind every path: HTTP/1.1 with keep-alive, a 13-byte answer to
/// any request, on its own thread and single-threaded runtime (what it costs is the same for
/// every row).
fn http_service() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return eprintln!("the benchmark's HTTP service could not listen: {e}"),
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(BODY.to_owned()))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                        .await;
                });
            }
        })
    });
    Ok(port)
}

/// One `GET /` to `port` on a fresh connection: whether the service answered 200 with its body.
fn http_get(port: u16) -> Result<bool> {
    let answer = crate::util::loopback_get(port, "/")?;
    Ok(answer.starts_with("HTTP/1.1 200") && answer.ends_with(BODY))
}

/// Waits until the service answers through `port` (a tunnel that is still connecting).
fn wait_http(port: u16, what: &str) -> Result<()> {
    wait_until(Duration::from_secs(60), || http_get(port))
        .with_context(|| format!("{what}: the HTTP service never answered through port {port}"))
}

/// What one fixed-rate run measured.
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    /// Requests that did not end in a 200 (errors, timeouts, other statuses).
    failed: u64,
}

impl Latency {
    fn cell(&self) -> String {
        let failed = if self.failed > 0 { format!(" ({} failed)", self.failed) } else { String::new() };
        format!("{:.2} / {:.2} ms{failed}", self.p50_ms, self.p99_ms)
    }
}

/// `oha` sending `rate` requests/s for `seconds` to `url` on `CONNECTIONS` keep-alive
/// connections, each request's latency counted from when it was due. Bounded in time: a run
/// that has not ended at three times its length is killed and reported.
fn load(oha: &Path, dir: &Path, url: &str, rate: u32, seconds: u32, extra: &[&str]) -> Result<Latency> {
    let requests = rate * seconds;
    let report_path = dir.join("oha.json");
    let _ = std::fs::remove_file(&report_path);
    let stderr = std::fs::File::create(dir.join("oha.stderr"))?;
    let mut child = Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "--latency-correction"])
        .args(["-q", &rate.to_string(), "-n", &requests.to_string(), "-c", &CONNECTIONS.to_string()])
        .args(["-t", "10s", "-o"])
        .arg(&report_path)
        .args(extra)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("starting oha")?;
    let Some(status) = crate::util::wait_or_kill(&mut child, Duration::from_secs(u64::from(seconds) * 3 + 30))? else {
        bail!("oha at {rate} requests/s to {url} did not end in time");
    };
    let errors = std::fs::read_to_string(dir.join("oha.stderr")).unwrap_or_default();
    if !status.success() {
        bail!("oha at {rate} requests/s to {url} failed ({status}): {errors}");
    }
    let text = std::fs::read_to_string(&report_path).context("reading oha's report")?;
    let report: serde_json::Value = serde_json::from_str(&text).context("oha's report is not JSON")?;
    let ok = report["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let latency = &report["metrics"]["latency_ms"];
    let (Some(p50_ms), Some(p99_ms)) = (latency["p50"].as_f64(), latency["p99"].as_f64()) else {
        bail!("oha's report has no latency percentiles: {text}");
    };
    if ok == 0 {
        bail!("no request to {url} succeeded at {rate} requests/s: {}", report["errorDistribution"]);
    }
    if ok < u64::from(requests) {
        eprintln!(
            "oha at {rate}/s to {url}: {ok} of {requests} answered 200; statuses {}, errors {}",
            report["statusCodeDistribution"], report["errorDistribution"]
        );
    }
    Ok(Latency { p50_ms, p99_ms, failed: u64::from(requests).saturating_sub(ok) })
}

/// Every rate of [`RATES`] to `url`, with a line on stderr each.
fn latency_row(oha: &Path, dir: &Path, label: &str, url: &str, extra: &[&str]) -> Result<Vec<Latency>> {
    RATES
        .iter()
        .map(|&rate| {
            let measured = load(oha, dir, url, rate, RATE_SECONDS, extra)?;
            eprintln!("{label}, {rate} requests/s: {}", measured.cell());
            Ok(measured)
        })
        .collect()
}

/// `curl` `CURL_RUNS` times in a row with `args` before the URL: the mean of curl's own
/// `time_total` in ms (process start-up not included), every run checked for a 200.
fn curl_mean(args: &[&str], url: &str) -> Result<f64> {
    let mut total = 0.0;
    for _ in 0..CURL_RUNS {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "10", "--noproxy", "", "-o", "/dev/null"])
            .args(["-w", "%{time_total}"])
            .args(args)
            .arg(url)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!("curl {args:?} {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("curl's time_total")?;
        total += seconds;
    }
    Ok(total * 1000.0 / CURL_RUNS as f64)
}

/// A CA and a certificate for 127.0.0.1 it signed (what a self-hosted hub with its own CA has).
fn certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=bench CA",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ])?;
    Ok((dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key")))
}

/// iperf3 through `port` with `streams` parallel streams: received Gbit/s. Retried while the
/// path comes up.
fn iperf(port: u16, streams: usize) -> Result<f64> {
    let mut last = String::new();
    for _ in 0..20 {
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-t", SECONDS, "-P", &streams.to_string(), "-J"])
            .output()
            .context("running iperf3")?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bits) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bits / 1e9);
        }
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("iperf3 through port {port} never completed: {last}")
}

/// Opens `count` connections to `port` and keeps them (each one a tunnel stream to the held
/// service); waits until the far side has them.
fn idle_streams(
    port: u16,
    count: usize,
    held: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<Vec<TcpStream>> {
    let before = held.load(std::sync::atomic::Ordering::SeqCst);
    let streams = (0..count).map(|_| TcpStream::connect(("127.0.0.1", port))).collect::<std::io::Result<Vec<_>>>()?;
    wait_until(Duration::from_secs(60), || Ok(held.load(std::sync::atomic::Ordering::SeqCst) >= before + count))
        .context("the idle streams never all reached the held service")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(streams)
}

/// A local service that accepts connections and holds them open (the idle streams' end).
fn holding_service() -> Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = held.clone();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            kept.push(stream);
        }
    });
    Ok((port, held))
}

/// One memory row: RSS idle, with the idle streams, and the difference per stream.
fn memory_row(name: &str, idle_kib: u64, busy_kib: u64) -> String {
    let per_stream_kb = busy_kib.saturating_sub(idle_kib) as f64 * 1024.0 / IDLE_STREAMS as f64 / 1024.0;
    format!(
        "| {name} | {:.1} MB | {:.1} MB | {per_stream_kb:.1} KB |",
        idle_kib as f64 / 1024.0,
        busy_kib as f64 / 1024.0
    )
}

/// 1,000 idle streams are 2,000 sockets in this process (both ends) and 1,000 more in the
/// agent and the hub: the soft limit goes up to the hard one, which the children inherit.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Everything, or with `latency` only the latency and proxy-path part.
pub fn run(part: Option<&str>) -> Result<()> {
    let throughput = match part {
        None => true,
        Some("latency") => false,
        Some("rounds") => return rounds(),
        Some(other) => bail!("unknown part {other:?} of `bench tunnel`: give none (everything), `latency` or `rounds`"),
    };
    raise_open_files();
    need("iperf3", "--version", "iperf3")?;
    need("openssl", "version", "openssl")?;
    need("curl", "--version", "curl")?;
    checked(cargo().args(["build", "--release", "--quiet", "-p", "edge-hub"]))?;
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent"]))?;
    let bins =
        Binaries { hub: root().join("target/release/edge-hub"), agent: root().join("target/release-agent/edge-agent") };
    let rathole = rathole()?;
    let oha = oha()?;
    let dir = scratch_dir("bench-tunnel")?;
    let (ca, cert, key) = certificates(dir.path())?;
    let iperf_port = free_port()?;
    let _iperf = Running(
        Command::new("iperf3")
            .args(["-s", "-p", &iperf_port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    let (hold_port, held) = holding_service()?;
    // The service behind the tunnels, and a second one as the proxy path's "local site".
    let (http_port, site_port) = (http_service()?, http_service()?);
    let site_url = format!("http://127.0.0.1:{site_port}/");
    let mut rows: Vec<String> = Vec::new();
    let mut latencies: Vec<(String, Vec<Latency>)> = Vec::new();
    let mut proxy_rows: Vec<String> = Vec::new();

    // The floor: the same load straight to the service, no tunnel.
    wait_http(http_port, "direct")?;
    let direct = latency_row(&oha, dir.path(), "direct", &format!("http://127.0.0.1:{http_port}/"), &[])?;
    latencies.push(("direct to the service (no tunnel)".into(), direct));
    let curl_direct = curl_mean(&[], &site_url)?;
    let oha_direct = load(&oha, dir.path(), &site_url, PROXY_RATE, RATE_SECONDS, &[])?;
    proxy_rows.push(format!(
        "| straight to the site (no proxy) | {curl_direct:.2} ms | {} (keep-alive) |",
        oha_direct.cell()
    ));

    // ---- ours: hub with TLS, the agent trusting the hub's CA, services exposed by name ----
    let raw = free_port()?;
    let proxy = free_port()?;
    let tls = ["--tls-cert".to_owned(), cert.display().to_string(), "--tls-key".to_owned(), key.display().to_string()];
    let mut hub = Hub::start(&bins, &dir.path().join("hub"), &[], &tls.iter().map(String::as_str).collect::<Vec<_>>())?;
    let api_key = hub.api_key()?;
    let mut agent =
        Agent::new(&bins, &format!("bench-tunnel-{}", std::process::id()), "kernel", &dir.path().join("agent"));
    agent.env.push(("EDGE_AGENT_HUB_CA".into(), ca.display().to_string()));
    // The proxy path's site: the person allows that one address, nothing else on loopback.
    agent.allow_egress(&site_url);
    agent.login(&hub.url, &hub.enroll_token("bench")?)?;
    agent.grant(&["tunnel"])?;
    for (name, port) in [("iperf", iperf_port), ("hold", hold_port), ("http", http_port)] {
        let (ok, out) = agent.oneshot(&["expose", name, &format!("127.0.0.1:{port}")])?;
        if !ok {
            bail!("edge-agent expose {name}: {out}");
        }
    }
    let id = agent.agent_id().to_owned();
    let (fwd_iperf, fwd_hold, fwd_http) = (free_port()?, free_port()?, free_port()?);
    let forwards = |with_raw: bool| -> Vec<String> {
        let mut args = tls.to_vec();
        args.extend([
            "--forward-listen".into(),
            format!("127.0.0.1:{fwd_iperf}={id}/iperf"),
            "--forward-listen".into(),
            format!("127.0.0.1:{fwd_hold}={id}/hold"),
            "--forward-listen".into(),
            format!("127.0.0.1:{fwd_http}={id}/http"),
            "--proxy-listen".into(),
            format!("127.0.0.1:{proxy}"),
        ]);
        if with_raw {
            args.extend(["--tunnel-listen".into(), format!("127.0.0.1:{raw}")]);
        }
        args
    };
    let user = format!("agent-{id}");
    let proxy_url = format!("http://{user}:{api_key}@127.0.0.1:{proxy}");
    let proxy_auth = {
        use base64::Engine as _;
        format!(
            "Proxy-Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{api_key}"))
        )
    };
    let mut ours = Vec::new();
    for (label, with_raw) in [("raw TLS", true), ("WebSocket TLS", false)] {
        let args = forwards(with_raw);
        hub.restart_with(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        agent.shutdown();
        agent.run(&[])?;
        // (This harness's HTTP client does not trust the test CA: the agent's log says when.)
        wait_until(Duration::from_secs(60), || Ok(agent.run_log().contains("tunnel open")))
            .with_context(|| format!("the agent's tunnel never opened: {}", agent.run_log()))?;
        if throughput {
            let one = iperf(fwd_iperf, 1)?;
            let sixteen = iperf(fwd_iperf, 16)?;
            eprintln!("ours ({label}): {one:.2} Gbit/s on 1 stream, {sixteen:.2} on 16");
            ours.push((label, one, sixteen));
        }
        let name = format!("Edge tunnel, {label}");
        wait_http(fwd_http, &name)?;
        latencies
            .push((name.clone(), latency_row(&oha, dir.path(), &name, &format!("http://127.0.0.1:{fwd_http}/"), &[])?));
        let connect = curl_mean(&["-p", "-x", &proxy_url], &site_url)?;
        eprintln!("{name}: curl through CONNECT, mean {connect:.2} ms");
        let forward = load(
            &oha,
            dir.path(),
            &site_url,
            PROXY_RATE,
            RATE_SECONDS,
            &["-x", &format!("http://127.0.0.1:{proxy}"), "--proxy-header", &proxy_auth],
        )?;
        eprintln!("{name}: oha through the forward proxy at {PROXY_RATE}/s: {}", forward.cell());
        proxy_rows.push(format!("| Edge hub proxy port, {label} tunnel | {connect:.2} ms | {} |", forward.cell()));
    }
    let mut memory = None;
    if throughput {
        // Memory with the last configuration (WebSocket): idle, then 1,000 idle streams.
        let agent_pid = agent.pid().context("the agent runs")?;
        let hub_pid = hub.pid().context("the hub runs")?;
        std::thread::sleep(Duration::from_secs(2));
        let (agent_idle, hub_idle) = (rss_kib(agent_pid)?, rss_kib(hub_pid)?);
        let streams = idle_streams(fwd_hold, IDLE_STREAMS, &held)?;
        let (agent_busy, hub_busy) = (rss_kib(agent_pid)?, rss_kib(hub_pid)?);
        drop(streams);
        eprintln!("{}", memory_row("Edge agent (WebSocket TLS)", agent_idle, agent_busy));
        eprintln!("{}", memory_row("Edge hub", hub_idle, hub_busy));
        memory = Some((agent_idle, agent_busy, hub_idle, hub_busy));
    }
    agent.shutdown();
    hub.shutdown();
    // ---- rathole: Noise and plain TCP ----
    let keys = rathole_keys(&rathole)?;
    let mut theirs = Vec::new();
    let mut rathole_memory = None;
    for transport in ["noise", "tcp"] {
        let (server_process, client_process, ports) = start_rathole(
            &rathole,
            dir.path(),
            transport,
            &keys,
            &[("iperf", iperf_port), ("hold", hold_port), ("http", http_port)],
        )?;
        let (svc_iperf, svc_hold, svc_http) = (ports[0], ports[1], ports[2]);
        if throughput {
            let one = iperf(svc_iperf, 1)?;
            let sixteen = iperf(svc_iperf, 16)?;
            eprintln!("rathole ({transport}): {one:.2} Gbit/s on 1 stream, {sixteen:.2} on 16");
            theirs.push((transport, one, sixteen));
        }
        let name = format!("rathole {RATHOLE_VERSION}, {transport}");
        wait_http(svc_http, &name)?;
        latencies
            .push((name.clone(), latency_row(&oha, dir.path(), &name, &format!("http://127.0.0.1:{svc_http}/"), &[])?));
        if throughput && transport == "noise" {
            std::thread::sleep(Duration::from_secs(2));
            let (client_pid, server_pid) = (client_process.0.id(), server_process.0.id());
            let (client_idle, server_idle) = (rss_kib(client_pid)?, rss_kib(server_pid)?);
            // rathole's side of the comparison: when its streams do not all come up in time
            // the row says so instead of losing the whole run.
            match idle_streams(svc_hold, IDLE_STREAMS, &held) {
                Ok(streams) => {
                    let (client_busy, server_busy) = (rss_kib(client_pid)?, rss_kib(server_pid)?);
                    drop(streams);
                    rathole_memory = Some((client_idle, server_idle, client_busy, server_busy));
                }
                Err(e) => eprintln!("rathole's idle streams were not measured: {e:#}"),
            }
        }
    }

    if throughput {
        let noise = theirs.iter().find(|t| t.0 == "noise").map(|t| (t.1, t.2)).unwrap_or((f64::NAN, f64::NAN));
        rows.push("| throughput through a forwarded service (iperf3, loopback) | 1 stream | 16 streams | vs rathole-Noise (target ≥ 1.2×) |".into());
        rows.push("|---|---|---|---|".into());
        for (label, one, sixteen) in &ours {
            rows.push(format!(
                "| Edge tunnel, {label} | {one:.2} Gbit/s | {sixteen:.2} Gbit/s | {:.2}× / {:.2}× |",
                one / noise.0,
                sixteen / noise.1
            ));
        }
        for (transport, one, sixteen) in &theirs {
            rows.push(format!(
                "| rathole {RATHOLE_VERSION}, {transport} | {one:.2} Gbit/s | {sixteen:.2} Gbit/s | — |"
            ));
        }
        rows.push(String::new());
    }
    if let Some((agent_idle, agent_busy, hub_idle, hub_busy)) = memory {
        rows.push(format!(
            "| memory (RSS) | idle | with {IDLE_STREAMS} idle streams | per idle stream (target ≤ 10 KB, agent) |"
        ));
        rows.push("|---|---|---|---|".into());
        rows.push(memory_row("Edge agent (WebSocket TLS)", agent_idle, agent_busy));
        rows.push(memory_row("Edge hub", hub_idle, hub_busy));
        if let Some((client_idle, server_idle, client_busy, server_busy)) = rathole_memory {
            rows.push(memory_row("rathole client (Noise)", client_idle, client_busy));
            rows.push(memory_row("rathole server (Noise)", server_idle, server_busy));
        }
        rows.push(String::new());
    }
    rows.push(format!(
        "| latency, p50 / p99 (oha, {CONNECTIONS} keep-alive connections, {RATE_SECONDS} s per rate, from each request's due time) | {} |",
        RATES.map(|r| format!("{r} req/s")).join(" | ")
    ));
    rows.push(format!("|---|{}", "---|".repeat(RATES.len())));
    for (label, row) in &latencies {
        rows.push(format!("| {label} | {} |", row.iter().map(Latency::cell).collect::<Vec<_>>().join(" | ")));
    }
    let p99_at_top = |label: &str| {
        latencies.iter().find(|(l, _)| l == label).and_then(|(_, row)| row.last()).map_or(f64::NAN, |l| l.p99_ms)
    };
    let rathole_noise = p99_at_top(&format!("rathole {RATHOLE_VERSION}, noise"));
    let top = RATES[RATES.len() - 1];
    for label in ["raw TLS", "WebSocket TLS"] {
        let ours = p99_at_top(&format!("Edge tunnel, {label}"));
        let verdict = if ours <= rathole_noise { "met" } else { "not met" };
        rows.push(format!(
            "\np99 at {top} req/s, Edge tunnel {label}: {ours:.2} ms vs rathole-Noise {rathole_noise:.2} ms (target ≤): {verdict}"
        ));
    }
    rows.push(String::new());
    rows.push(format!(
        "| our proxy path to a local site the person allowed | curl through CONNECT, mean of {CURL_RUNS} (curl's time_total) | oha through the forward proxy, {PROXY_RATE} req/s for {RATE_SECONDS} s, p50 / p99 |"
    ));
    rows.push("|---|---|---|".into());
    rows.extend(proxy_rows);
    println!();
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// A Noise key pair from `rathole --genkey`: (private, public).
fn rathole_keys(rathole: &Path) -> Result<(String, String)> {
    let keys = Command::new(rathole).arg("--genkey").output().context("rathole --genkey")?;
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let mut lines = keys.lines().map(str::trim).filter(|l| !l.is_empty() && !l.ends_with(':'));
    let (private, public) = (lines.next().unwrap_or_default().to_owned(), lines.next().unwrap_or_default().to_owned());
    if private.is_empty() || public.is_empty() {
        bail!("rathole --genkey printed no key pair: {keys}");
    }
    Ok((private, public))
}

/// A rathole server and client on loopback over `transport` (`noise` with `keys`, or
/// `tcp`), carrying each of `services` (name, port of the local service): the two processes
/// and, in the same order, the server's port for each service.
fn start_rathole(
    rathole: &Path,
    dir: &Path,
    transport: &str,
    (private, public): &(String, String),
    services: &[(&str, u16)],
) -> Result<(Running, Running, Vec<u16>)> {
    let control = free_port()?;
    let ports = services.iter().map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
    let (mut server, mut client) = (
        format!("[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.transport]\ntype = \"{transport}\"\n"),
        format!("[client]\nremote_addr = \"127.0.0.1:{control}\"\n[client.transport]\ntype = \"{transport}\"\n"),
    );
    if transport == "noise" {
        server.push_str(&format!("[server.transport.noise]\nlocal_private_key = \"{private}\"\n"));
        client.push_str(&format!("[client.transport.noise]\nremote_public_key = \"{public}\"\n"));
    }
    for ((name, local), port) in services.iter().zip(&ports) {
        server.push_str(&format!("[server.services.{name}]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{port}\"\n"));
        client.push_str(&format!("[client.services.{name}]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{local}\"\n"));
    }
    let spawn = |role: &str, config: String| -> Result<Running> {
        let path = dir.join(format!("rathole-{}-{transport}.toml", role.trim_start_matches('-')));
        std::fs::write(&path, config)?;
        let child = Command::new(rathole)
            .arg(role)
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting rathole {role}"))?;
        Ok(Running(child))
    };
    Ok((spawn("--server", server)?, spawn("--client", client)?, ports))
}

/// Rounds of the top rate, each one rathole-Noise then our raw TLS then our WebSocket
/// transport (`cargo xtask bench tunnel rounds`, `EDGE_BENCH_ROUNDS`, default 6). The p99 of a
/// single 10 s run on this 2-core VM moves by ten times from one run to the next with the
/// host's steal time (vmstat's `st` at 10-16 % with nothing of ours running), so one run
/// each cannot say which tunnel has the shorter tail; interleaving puts every tunnel through
/// the same stretches of noise, and the median of the rounds is what the comparison uses.
fn rounds() -> Result<()> {
    raise_open_files();
    need("openssl", "version", "openssl")?;
    checked(cargo().args(["build", "--release", "--quiet", "-p", "edge-hub"]))?;
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent"]))?;
    let bins =
        Binaries { hub: root().join("target/release/edge-hub"), agent: root().join("target/release-agent/edge-agent") };
    let rounds: usize = std::env::var("EDGE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
    let rate = RATES[RATES.len() - 1];
    let (rathole, oha) = (rathole()?, oha()?);
    let dir = scratch_dir("bench-tunnel-rounds")?;
    let (ca, cert, key) = certificates(dir.path())?;
    let http_port = http_service()?;
    let (raw, fwd_http) = (free_port()?, free_port()?);
    let tls = ["--tls-cert".to_owned(), cert.display().to_string(), "--tls-key".to_owned(), key.display().to_string()];
    let mut hub = Hub::start(&bins, &dir.path().join("hub"), &[], &tls.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut agent =
        Agent::new(&bins, &format!("bench-rounds-{}", std::process::id()), "kernel", &dir.path().join("agent"));
    agent.env.push(("EDGE_AGENT_HUB_CA".into(), ca.display().to_string()));
    agent.login(&hub.url, &hub.enroll_token("bench")?)?;
    agent.grant(&["tunnel"])?;
    let (ok, out) = agent.oneshot(&["expose", "http", &format!("127.0.0.1:{http_port}")])?;
    if !ok {
        bail!("edge-agent expose http: {out}");
    }
    let id = agent.agent_id().to_owned();
    // rathole with Noise, up for the whole run.
    let keys = rathole_keys(&rathole)?;
    let (_server, _client, ports) = start_rathole(&rathole, dir.path(), "noise", &keys, &[("http", http_port)])?;
    let svc_http = ports[0];
    wait_http(svc_http, "rathole")?;
    let rathole_label = format!("rathole {RATHOLE_VERSION}, Noise");
    let mut measured: Vec<(String, Latency)> = Vec::new();
    for round in 1..=rounds {
        let theirs = load(&oha, dir.path(), &format!("http://127.0.0.1:{svc_http}/"), rate, RATE_SECONDS, &[])?;
        eprintln!("round {round}, {rathole_label}: {}", theirs.cell());
        measured.push((rathole_label.clone(), theirs));
        for (label, with_raw) in [("Edge tunnel, raw TLS", true), ("Edge tunnel, WebSocket TLS", false)] {
            let mut args = tls.to_vec();
            args.extend(["--forward-listen".into(), format!("127.0.0.1:{fwd_http}={id}/http")]);
            if with_raw {
                args.extend(["--tunnel-listen".into(), format!("127.0.0.1:{raw}")]);
            }
            hub.restart_with(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
            agent.shutdown();
            agent.run(&[])?;
            wait_until(Duration::from_secs(60), || Ok(agent.run_log().contains("tunnel open")))
                .with_context(|| format!("the agent's tunnel never opened: {}", agent.run_log()))?;
            wait_http(fwd_http, label)?;
            let ours = load(&oha, dir.path(), &format!("http://127.0.0.1:{fwd_http}/"), rate, RATE_SECONDS, &[])?;
            eprintln!("round {round}, {label}: {}", ours.cell());
            measured.push((label.to_owned(), ours));
        }
    }
    agent.shutdown();
    hub.shutdown();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!("| {rate} req/s, {rounds} interleaved rounds | p99 of each round (ms) | median p99 | median p50 |");
    println!("|---|---|---|---|");
    for label in [rathole_label.as_str(), "Edge tunnel, raw TLS", "Edge tunnel, WebSocket TLS"] {
        let runs: Vec<&Latency> = measured.iter().filter(|(l, _)| l == label).map(|(_, m)| m).collect();
        let p99s: Vec<String> = runs.iter().map(|m| format!("{:.2}", m.p99_ms)).collect();
        let mut p99: Vec<f64> = runs.iter().map(|m| m.p99_ms).collect();
        let mut p50: Vec<f64> = runs.iter().map(|m| m.p50_ms).collect();
        println!("| {label} | {} | {:.2} | {:.2} |", p99s.join(", "), median(&mut p99), median(&mut p50));
    }
    Ok(())
}
