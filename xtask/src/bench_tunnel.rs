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
//! rathole is built from crates.io into `target/bench-tools/` (pinned version, its server,
//! client and Noise features only: no OpenSSL); iperf3 and openssl come from Debian.
//! Latency at fixed request rates (rathole's published table) is not measured here yet.

use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_e2e::procfs::rss_kib;
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const RATHOLE_VERSION: &str = "0.5.0";
const SECONDS: &str = "5";
const IDLE_STREAMS: usize = 1000;

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

fn rathole() -> Result<PathBuf> {
    let tools = root().join("target/bench-tools");
    let bin = tools.join("bin/rathole");
    if !bin.exists() {
        eprintln!("building rathole {RATHOLE_VERSION} from crates.io into {}", tools.display());
        checked(
            cargo()
                .args([
                    "install",
                    "rathole",
                    "--version",
                    RATHOLE_VERSION,
                    // Not `--locked`: rathole 0.5.0's lock file pins `time` 0.3.29, which no
                    // longer compiles on current Rust; its semver ranges resolve to ones that do.
                    "--no-default-features",
                    "--features",
                    "server,client,noise",
                    "--root",
                ])
                .arg(&tools),
        )?;
    }
    Ok(bin)
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

pub fn run() -> Result<()> {
    raise_open_files();
    need("iperf3", "--version", "iperf3")?;
    need("openssl", "version", "openssl")?;
    checked(cargo().args(["build", "--release", "--quiet", "-p", "edge-hub"]))?;
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent"]))?;
    let bins =
        Binaries { hub: root().join("target/release/edge-hub"), agent: root().join("target/release-agent/edge-agent") };
    let rathole = rathole()?;
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
    let mut rows: Vec<String> = Vec::new();

    // ---- ours: hub with TLS, the agent trusting the hub's CA, services exposed by name ----
    let raw = free_port()?;
    let tls = ["--tls-cert".to_owned(), cert.display().to_string(), "--tls-key".to_owned(), key.display().to_string()];
    let mut hub = Hub::start(&bins, &dir.path().join("hub"), &[], &tls.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut agent =
        Agent::new(&bins, &format!("bench-tunnel-{}", std::process::id()), "kernel", &dir.path().join("agent"));
    agent.env.push(("EDGE_AGENT_HUB_CA".into(), ca.display().to_string()));
    agent.login(&hub.url, &hub.enroll_token("bench")?)?;
    agent.grant(&["tunnel"])?;
    for (name, port) in [("iperf", iperf_port), ("hold", hold_port)] {
        let (ok, out) = agent.oneshot(&["expose", name, &format!("127.0.0.1:{port}")])?;
        if !ok {
            bail!("edge-agent expose {name}: {out}");
        }
    }
    let id = agent.agent_id().to_owned();
    let (fwd_iperf, fwd_hold) = (free_port()?, free_port()?);
    let forwards = |with_raw: bool| -> Vec<String> {
        let mut args = tls.to_vec();
        args.extend([
            "--forward-listen".into(),
            format!("127.0.0.1:{fwd_iperf}={id}/iperf"),
            "--forward-listen".into(),
            format!("127.0.0.1:{fwd_hold}={id}/hold"),
        ]);
        if with_raw {
            args.extend(["--tunnel-listen".into(), format!("127.0.0.1:{raw}")]);
        }
        args
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
        let one = iperf(fwd_iperf, 1)?;
        let sixteen = iperf(fwd_iperf, 16)?;
        eprintln!("ours ({label}): {one:.2} Gbit/s on 1 stream, {sixteen:.2} on 16");
        ours.push((label, one, sixteen));
    }
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
    agent.shutdown();
    hub.shutdown();

    // ---- rathole: Noise and plain TCP ----
    let keys = Command::new(&rathole).arg("--genkey").output().context("rathole --genkey")?;
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let mut lines = keys.lines().map(str::trim).filter(|l| !l.is_empty() && !l.ends_with(':'));
    let (private, public) = (lines.next().unwrap_or_default().to_owned(), lines.next().unwrap_or_default().to_owned());
    if private.is_empty() || public.is_empty() {
        bail!("rathole --genkey printed no key pair: {keys}");
    }
    let mut theirs = Vec::new();
    let mut rathole_memory = None;
    for transport in ["noise", "tcp"] {
        let (control, svc_iperf, svc_hold) = (free_port()?, free_port()?, free_port()?);
        let (server_noise, client_noise) = if transport == "noise" {
            (
                format!("[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
                format!("[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
            )
        } else {
            (String::new(), String::new())
        };
        let server = dir.path().join(format!("rathole-server-{transport}.toml"));
        std::fs::write(
            &server,
            format!(
                "[server]\nbind_addr = \"127.0.0.1:{control}\"\n[server.transport]\ntype = \"{transport}\"\n{server_noise}\
                 [server.services.iperf]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{svc_iperf}\"\n\
                 [server.services.hold]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{svc_hold}\"\n"
            ),
        )?;
        let client = dir.path().join(format!("rathole-client-{transport}.toml"));
        std::fs::write(
            &client,
            format!(
                "[client]\nremote_addr = \"127.0.0.1:{control}\"\n[client.transport]\ntype = \"{transport}\"\n{client_noise}\
                 [client.services.iperf]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{iperf_port}\"\n\
                 [client.services.hold]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{hold_port}\"\n"
            ),
        )?;
        let spawn = |role: &str, config: &Path| -> Result<Running> {
            let child = Command::new(&rathole)
                .arg(role)
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting rathole {role}"))?;
            Ok(Running(child))
        };
        let server_process = spawn("--server", &server)?;
        let client_process = spawn("--client", &client)?;
        let one = iperf(svc_iperf, 1)?;
        let sixteen = iperf(svc_iperf, 16)?;
        eprintln!("rathole ({transport}): {one:.2} Gbit/s on 1 stream, {sixteen:.2} on 16");
        theirs.push((transport, one, sixteen));
        if transport == "noise" {
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
        rows.push(format!("| rathole {RATHOLE_VERSION}, {transport} | {one:.2} Gbit/s | {sixteen:.2} Gbit/s | — |"));
    }
    rows.push(String::new());
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
    println!();
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
