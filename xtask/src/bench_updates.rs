//! `cargo xtask bench updates`: what agent updates cost, on the builds that ship (the agent's
//! `release-agent` profile; the hub built the same way to spare a second release build) over
//! loopback:
//!
//! - an update check as `edge-agent update check` runs it (process start, keychain, token,
//!   the channel's TUF refresh): the first one, which fetches the whole chain, and later ones,
//!   where only `timestamp.json` is new to fetch;
//! - the hub's side of the check every agent makes once a day: `GET timestamp.json` with an
//!   agent token on a fresh connection each time (an agent's daily check opens one), its CPU
//!   time per check read from /proc, and what that makes for 50,000 agents;
//! - `edge-agent update apply`: download, verify (length, SHA-256, the version inside, the
//!   self-test) and swap, for the shipped binary's size.
//!
//! Plain HTTP: TLS adds the same handshake to every check, which the hub's TLS numbers in
//! docs/benchmarks.md already give.

use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_e2e::{mint_jwt, scratch_dir, stamp_agent, Agent, Binaries, Hub};
use std::time::{Duration, Instant};

const CREATOR: &str = "bench";
/// Sequential warm checks against the hub; bounded in count, and in time by the hub's answers.
const HUB_CHECKS: usize = 2000;
const CLI_CHECKS: usize = 5;
const APPLIES: usize = 3;
const FLEET: f64 = 50_000.0;
/// At least 32 bytes, as the hub requires; only this benchmark's hub uses it.
const JWT_SECRET: &str = "bench-updates-jwt-secret-not-used-anywhere-else";

/// CPU time (user + system) the process has used, in ms; /proc counts in clock ticks.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the hub is gone")?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')').context("unreadable /proc stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1000.0 / per_second)
}

fn timed(what: &str, agent: &Agent, args: &[&str]) -> Result<f64> {
    let started = Instant::now();
    let (ok, out) = agent.oneshot(args)?;
    if !ok {
        bail!("{what} failed: {out}");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run() -> Result<()> {
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent", "-p", "edge-hub"]))?;
    let built = root().join("target/release-agent");
    let dir = scratch_dir("bench-updates")?;
    let bin_dir = dir.path().join("bin");
    let releases = dir.path().join("releases");
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::create_dir_all(&releases)?;
    let installed = bin_dir.join("edge-agent");
    stamp_agent(&built.join("edge-agent"), &installed, "1.0.0")?;
    let size_mb = std::fs::metadata(&installed)?.len() as f64 / 1e6;

    let bins = Binaries { hub: built.join("edge-hub"), agent: installed.clone() };
    let hub_dir = dir.path().join("hub");
    let hub = Hub::start(&bins, &hub_dir, &[("EDGE_HUB_JWT_SECRET", JWT_SECRET)], &[])?;
    let root_dir = hub_dir.join("root-keys");
    hub.bundle_cli(&["keys", "init", "--root-dir", root_dir.to_str().context("non-UTF-8 path")?])?;
    let agent_data = dir.path().join("agent");
    let mut agent = Agent::new(&bins, &format!("bench-updates-{}", std::process::id()), "kernel", &agent_data);
    agent.login(&hub.url, &hub.enroll_token(CREATOR)?)?;
    let offered = releases.join("edge-agent-2.0.0");
    stamp_agent(&built.join("edge-agent"), &offered, "2.0.0")?;
    hub.publish_release(&offered, "2.0.0")?;

    // 1. The check as the CLI makes it.
    let cold = timed("the first update check", &agent, &["update", "check", "--json"])?;
    let mut warm: Vec<f64> = (0..CLI_CHECKS)
        .map(|_| timed("an update check", &agent, &["update", "check", "--json"]))
        .collect::<Result<_>>()?;
    let warm = median(&mut warm);

    // 2. The hub's side of a daily check.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let token = mint_jwt(JWT_SECRET.as_bytes(), agent.agent_id(), CREATOR, now + 600);
    let url = format!("{}/v1/releases/stable/metadata/timestamp.json", hub.url);
    let pid = hub.pid().context("the hub is not running")?;
    let mut latencies = Vec::with_capacity(HUB_CHECKS);
    let mut bytes = 0usize;
    let cpu_before = cpu_ms(pid)?;
    let started = Instant::now();
    for _ in 0..HUB_CHECKS {
        // A new client each time: no connection is reused, as between two agents' checks.
        let client = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        let sent = Instant::now();
        let response = client.get(&url).set("Authorization", &format!("Bearer {token}")).call();
        let body = match response {
            Ok(response) => response.into_string()?,
            Err(e) => bail!("GET {url}: {e}"),
        };
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_per_check_ms = (cpu_ms(pid)? - cpu_before) / HUB_CHECKS as f64;
    latencies.sort_by(f64::total_cmp);
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];

    // 3. Download, verify and swap.
    let mut applies = Vec::new();
    for round in 0..APPLIES {
        let version = format!("{}.0.0", round + 2);
        if round > 0 {
            let file = releases.join(format!("edge-agent-{version}"));
            stamp_agent(&built.join("edge-agent"), &file, &version)?;
            hub.publish_release(&file, &version)?;
            // The previous round's install waits for its first start and hb_ack; this
            // benchmark never starts it, so its probation marker goes.
            std::fs::remove_file(agent_data.join("updates/probation.json"))
                .context("the previous apply left no probation marker")?;
        }
        applies.push(timed(&format!("update apply to {version}"), &agent, &["update", "apply", "--json"])?);
    }
    let apply = median(&mut applies);

    println!("| Update cost (`cargo xtask bench updates`) | measured |");
    println!("|---|---|");
    println!("| first `edge-agent update check` (process, keychain, token, whole TUF chain) | {cold:.0} ms |");
    println!("| later checks (only `timestamp.json` new), median of {CLI_CHECKS} | {warm:.0} ms |");
    println!(
        "| hub: `GET timestamp.json`, new connection each, {HUB_CHECKS} in a row | {:.0} checks/s, p50 {p50:.2} ms, p99 {p99:.2} ms, {bytes} bytes |",
        HUB_CHECKS as f64 / wall
    );
    println!("| hub CPU per check | {:.3} ms |", cpu_per_check_ms);
    println!(
        "| 50,000 agents, one check a day each | {:.0} s of hub CPU a day; all 50,000 at once (after an outage) in {:.0} s at this rate on one connection at a time |",
        cpu_per_check_ms * FLEET / 1000.0,
        FLEET / (HUB_CHECKS as f64 / wall)
    );
    println!("| `edge-agent update apply` ({size_mb:.1} MB: download, length, SHA-256, version inside, self-test, swap), median of {APPLIES} | {apply:.0} ms |");
    agent.shutdown();
    Ok(())
}
