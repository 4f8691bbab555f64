//! `cargo xtask bench [agent|tray|hub|bundles|browser|egress|tunnel [latency|rounds]|updates]`: the numbers in docs/benchmarks.md, measured on release
//! builds over loopback. Prints Markdown rows to paste into that file.

use crate::deps::{ensure_apt, APT_BUILD, APT_TEST};
use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_e2e::procfs::{rss_kib, tree_pss_kib, tree_rss_kib};
use edge_e2e::{scratch_dir, Agent, Binaries, Hub};
use std::process::Command;
use std::time::Duration;

/// The line the agent logs when the hub acknowledges its first heartbeat.
const FIRST_HB_ACK: &str = "first hb_ack";
const STARTUP_RUNS: usize = 7;

pub fn run(args: &[&str]) -> Result<()> {
    let skip_install = args.contains(&"--skip-install");
    let args: Vec<&str> = args.iter().copied().filter(|a| *a != "--skip-install").collect();
    let which = args.first().copied().unwrap_or("all");
    // The same machine set-up as `cargo xtask test`: a fresh machine lacks the headers the
    // agent links against (D-Bus for the keychain), Chromium, Node and a PostgreSQL.
    if !skip_install {
        ensure_apt(&[APT_BUILD, APT_TEST].concat())?;
    }
    if which == "hub" {
        // Hands back EDGE_TEST_POSTGRES_URL itself when that is already set.
        let url = crate::test::ensure_postgres()?;
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("EDGE_TEST_POSTGRES_URL", url);
    }
    match which {
        "agent" => agent(),
        "tray" => tray(),
        "hub" => crate::bench_hub::run(),
        "hub-guest" => crate::bench_hub::guest_idle_only(args.get(1).copied()),
        "bundles" => crate::bench_bundles::run(),
        "browser" => crate::bench_browser::run(),
        "egress" => crate::bench_egress::run(),
        "tunnel" => crate::bench_tunnel::run(args.get(1).copied()),
        "updates" => crate::bench_updates::run(),
        "all" => agent().and_then(|_| tray()),
        other => {
            bail!("unknown benchmark {other:?}: expected agent, tray, hub, hub-guest, bundles, browser, egress, tunnel, updates or all")
        }
    }
}

pub(crate) fn release_bins() -> Result<Binaries> {
    checked(cargo().args(["build", "--release", "--quiet", "-p", "edge-hub", "-p", "edge-agent"]))?;
    let dir = root().join("target/release");
    Ok(Binaries { hub: dir.join("edge-hub"), agent: dir.join("edge-agent") })
}

fn agent() -> Result<()> {
    // The agent as it ships: the size-optimised `release-agent` profile (Cargo.toml). The
    // hub is built the same way here only to spare a second release build: this benchmark
    // measures the agent.
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent", "-p", "edge-hub"]))?;
    let dir = root().join("target/release-agent");
    let bins = Binaries { hub: dir.join("edge-hub"), agent: dir.join("edge-agent") };
    let dir = scratch_dir("bench-agent")?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &[])?;
    let key = hub.api_key()?;
    let mut agent = Agent::new(&bins, &format!("bench-{}", std::process::id()), "kernel", &dir.path().join("agent"));
    agent.login(&hub.url, &hub.enroll_token("bench")?)?;
    agent.grant(&["http_request"])?;

    // Startup: process spawn → keychain read → token (challenge + signature) → WebSocket →
    // hello → first hb → hb_ack, as the person experiences it.
    let mut samples = Vec::new();
    for _ in 0..STARTUP_RUNS {
        let took = agent.run_until_line(&[], FIRST_HB_ACK, Duration::from_secs(30))?;
        samples.push(took.as_secs_f64() * 1000.0);
        agent.shutdown();
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];

    agent.run(&[])?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))?;
    // The peer the target is set against, idling in the same minute: rathole's client
    // holding one service open to its server on loopback.
    let rathole = RatholeIdle::start(&dir.path().join("rathole"))?;
    std::thread::sleep(Duration::from_secs(60));
    let pid = agent.pid().context("agent not running")?;
    let rss = rss_kib(pid)?;
    let smaps = smaps_rollup(pid).unwrap_or_default();
    let rathole_rss = rss_kib(rathole.client.id())?;
    drop(rathole);
    agent.shutdown();

    println!("\n| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| `edge-agent run` → first `hb_ack`, loopback, median of {STARTUP_RUNS} (min {:.1}, max {:.1}) | {median:.1} ms | ≤ 150 ms |",
        samples[0],
        samples[samples.len() - 1]
    );
    println!("| headless agent idle RSS after 60 s online | {:.1} MB | ≤ 8 MB |", rss as f64 / 1024.0);
    println!(
        "| rathole {RATHOLE_VERSION} client idle RSS after 60 s, one service, same run | {:.1} MB | (peer) |",
        rathole_rss as f64 / 1024.0
    );
    println!("\nagent /proc/PID/smaps_rollup at the measurement:\n{smaps}");
    Ok(())
}

/// The rathole release the agent's idle memory is compared with (`cargo install`ed from
/// crates.io into target/, built here like everything else).
const RATHOLE_VERSION: &str = "0.5.0";

/// `target/bench-tools/bin/rathole`, installed once with only its Noise transport (no
/// OpenSSL), the variant the tunnel benchmark compares against too.
pub(crate) fn rathole_bin() -> Result<std::path::PathBuf> {
    let tools = root().join("target/bench-tools");
    let bin = tools.join("bin/rathole");
    if !bin.is_file() {
        // Not `--locked`: rathole 0.5.0's lock file pins a `time` release that today's
        // compiler rejects (type inference, E0282); cargo picks the newest compatible ones.
        checked(cargo().args(["install", "--quiet", "--root"]).arg(&tools).args([
            "rathole",
            "--version",
            RATHOLE_VERSION,
            "--no-default-features",
            "--features",
            "server,client,noise",
        ]))?;
    }
    Ok(bin)
}

/// A rathole server and client on loopback with one forwarded service; killed on drop.
struct RatholeIdle {
    server: std::process::Child,
    client: std::process::Child,
}

impl RatholeIdle {
    fn start(dir: &std::path::Path) -> Result<RatholeIdle> {
        let bin = rathole_bin()?;
        std::fs::create_dir_all(dir)?;
        let port = |_: ()| -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let (control, exposed, local) = (port(())?, port(())?, port(())?);
        let server_toml = dir.join("server.toml");
        let client_toml = dir.join("client.toml");
        std::fs::write(
            &server_toml,
            format!(
                "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\n\
                 [server.services.svc]\nbind_addr = \"127.0.0.1:{exposed}\"\n"
            ),
        )?;
        std::fs::write(
            &client_toml,
            format!(
                "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\n\
                 [client.services.svc]\nlocal_addr = \"127.0.0.1:{local}\"\n"
            ),
        )?;
        let quiet = || std::process::Stdio::null();
        let server = Command::new(&bin).arg("--server").arg(&server_toml).stdout(quiet()).stderr(quiet()).spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        let client = Command::new(&bin).arg("--client").arg(&client_toml).stdout(quiet()).stderr(quiet()).spawn()?;
        Ok(RatholeIdle { server, client })
    }
}

impl Drop for RatholeIdle {
    fn drop(&mut self) {
        for child in [&mut self.client, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `/proc/PID/smaps_rollup`: where the resident pages are (file-backed code and data against
/// anonymous heap and stacks).
fn smaps_rollup(pid: u32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok(text
        .lines()
        .filter(|l| ["Rss:", "Pss:", "Pss_Anon:", "Pss_File:", "Anonymous:"].iter().any(|k| l.starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Starts the real tray app (release build) in a throwaway desktop session under Xvfb,
/// logged in to a hub: the script measures the whole process tree 30 s after start with the
/// window closed (`xtask tree-rss` and `xtask tree-pss`), then opens the window and measures
/// its PSS again (`xtask tree-pss`).
fn tray() -> Result<()> {
    let bins = release_bins()?;
    checked(Command::new("npm").args(["run", "build"]).current_dir(root().join("ui")))?;
    checked(cargo().args(["build", "--release", "--quiet", "-p", "edge-agent-tray"]))?;
    checked(
        Command::new(root().join("tests/support/desktop-session.sh"))
            .arg("bash")
            .arg(root().join("tests/tray/idle-rss.sh"))
            .env("HUB_BIN", &bins.hub)
            .env("AGENT_BIN", &bins.agent)
            .env("TRAY_BIN", root().join("target/release/edge-agent-tray"))
            .env("RSS_TOOL", std::env::current_exe()?),
    )
}

/// `xtask tree-pss <pid> <state> <target MB>`: prints the PSS of a process tree (the tray
/// and the WebKit processes it started) as Markdown rows.
pub fn tree_pss(args: &[&str]) -> Result<()> {
    let usage = "usage: xtask tree-pss <pid> <state, e.g. \"window open\"> <target MB>";
    let pid: u32 = args.first().and_then(|p| p.parse().ok()).context(usage)?;
    let (state, target) = (args.get(1).context(usage)?, args.get(2).context(usage)?);
    let (total, members) = tree_pss_kib(pid)?;
    println!("| tray app PSS, all processes, {state} | {:.1} MB | ≤ {target} MB |", total as f64 / 1024.0);
    for (pid, name, pss) in members {
        println!("| &nbsp;&nbsp;{name} ({pid}) | {:.1} MB | |", pss as f64 / 1024.0);
    }
    Ok(())
}

/// `xtask tree-rss <pid>`: prints the RSS of a process tree as Markdown rows.
pub fn tree_rss(args: &[&str]) -> Result<()> {
    let pid: u32 = args.first().and_then(|p| p.parse().ok()).context("usage: xtask tree-rss <pid>")?;
    let (total, members) = tree_rss_kib(pid)?;
    println!("| tray app idle RSS, all processes, window closed | {:.1} MB | ≤ 80 MB |", total as f64 / 1024.0);
    for (pid, name, rss) in members {
        println!("| &nbsp;&nbsp;{name} ({pid}) | {:.1} MB | |", rss as f64 / 1024.0);
    }
    Ok(())
}
