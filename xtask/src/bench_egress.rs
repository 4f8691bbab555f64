//! `cargo xtask bench egress`: what the egress gate costs, measured in one run against the
//! same work without it.
//!
//! `http_request`: the release agent's hidden `bench-egress` command runs the job both ways,
//! interleaved, against a local site: through the gate (the runner the agent uses, its meter
//! on disk, the site granted as a person would) and as the job ran before the gate (same
//! payload handling and result, one shared reqwest client that resolves and follows
//! redirects itself; a function only this benchmark calls, not a switch in the agent).
//!
//! Browser: warm `send_dm` flows in the job browser behind the gate's proxy (served by the
//! release agent's `bench-egress --proxy`) against a browser without a proxy, in rounds.

use crate::bench_browser;
use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_browser::runtime::BrowserRuntime;
use edge_e2e::scratch_dir;
use edge_e2e::site::Site;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: &str = "2000";

pub fn run() -> Result<()> {
    // The agent as it ships (the `release-agent` profile, as `bench agent` measures it).
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent"]))?;
    let agent = root().join("target/release-agent/edge-agent");
    let site = Site::start()?;
    let dir = scratch_dir("bench-egress")?;
    let authority = site.base_url.trim_start_matches("http://").to_owned();
    let output = Command::new(&agent)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["bench-egress", "--url", &site.url("/hello"), "--allow", &authority, "--runs", RUNS])
        .output()
        .context("running edge-agent bench-egress")?;
    if !output.status.success() {
        bail!("edge-agent bench-egress failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("bench-egress printed {:?}", String::from_utf8_lossy(&output.stdout)))?;
    let number = |key: &str| report[key].as_u64().with_context(|| format!("no {key} in {report}"));
    let cost = |gated: u64, direct: u64| (gated as f64 / direct.max(1) as f64 - 1.0) * 100.0;
    let (gp50, gp99, dp50, dp99) =
        (number("gatedP50Us")?, number("gatedP99Us")?, number("directP50Us")?, number("directP99Us")?);
    println!("\n| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| `http_request` p50, gate vs none ({RUNS} GETs over loopback, interleaved) | {gp50} µs vs {dp50} µs ({:+.1} %) | ≤ 5 % |",
        cost(gp50, dp50)
    );
    println!("| `http_request` p99, gate vs none | {gp99} µs vs {dp99} µs ({:+.1} %) | ≤ 5 % |", cost(gp99, dp99));
    let (plain, gated) = browser_half(&agent, dir.path())?;
    println!(
        "| browser flow steps/s, warm `send_dm` ({} jobs each way in {ROUNDS} rounds), gate vs none | {gated:.1} vs {plain:.1} steps/s ({:+.1} %) | ≥ −5 % |",
        ROUNDS * JOBS_PER_ROUND,
        (gated / plain - 1.0) * 100.0
    );
    Ok(())
}

/// Rounds of the browser comparison; each runs `JOBS_PER_ROUND` warm `send_dm` jobs on the
/// browser without the gate, then as many on the browser behind it.
const ROUNDS: usize = 5;
const JOBS_PER_ROUND: usize = 6;

/// Flow steps per second of warm `send_dm` jobs in the job browser behind the gate's proxy
/// (the agent's own proxy, served by the release agent, the site granted as a person would)
/// against the same jobs in a browser without it, interleaved by rounds.
fn browser_half(agent: &Path, dir: &Path) -> Result<(f64, f64)> {
    let site = edge_browser::testsite::Site::start()?;
    let authority = site.base_url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut proxy = Command::new(agent)
        .arg("--data-dir")
        .arg(dir.join("proxy"))
        .args(["bench-egress", "--proxy", "--allow", &authority])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting edge-agent bench-egress --proxy")?;
    let mut line = String::new();
    BufReader::new(proxy.stdout.take().context("proxy stdout")?).read_line(&mut line)?;
    let announced: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("bench-egress --proxy printed {line:?}"))?;
    let chromium_args: Vec<String> = serde_json::from_value(announced["chromiumArgs"].clone())
        .with_context(|| format!("no chromiumArgs in {announced}"))?;

    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let measured = tokio.block_on(async {
        let runtime = |data: PathBuf, args: Vec<String>| {
            let mut settings = bench_browser::settings(&data);
            settings.job_browser_args = args;
            BrowserRuntime::new(settings, Arc::new(bench_browser::FixedKey), Arc::new(bench_browser::Quiet))
        };
        let plain = runtime(dir.join("browser-plain"), Vec::new());
        let gated = runtime(dir.join("browser-gated"), chromium_args);
        if !plain.available() {
            bail!("no Chromium found: install chromium (apt-get install --no-install-recommends chromium)");
        }
        let adapter = site.adapter();
        let login = site.auto_login_adapter();
        let (mut totals, mut n) = ([(0u64, 0f64); 2], 0);
        for (side, rt) in [&plain, &gated].into_iter().enumerate() {
            rt.interactive_login(&login, false, Duration::from_secs(30)).await.context("scripted login")?;
            // The first job launches the browser.
            let warm = json!({"adapter": {}, "recipient": format!("warm{side}"), "params": {"text": "hi"}});
            bench_browser::job(rt, &adapter, "send_dm", &format!("warm{side}"), warm).await?;
        }
        for _ in 0..ROUNDS {
            for (side, rt) in [&plain, &gated].into_iter().enumerate() {
                let started = Instant::now();
                for _ in 0..JOBS_PER_ROUND {
                    n += 1;
                    let payload = json!({"adapter": {}, "recipient": format!("r{n}"),
                        "params": {"text": "Hello there, thanks for subscribing!"}});
                    let result = bench_browser::job(rt, &adapter, "send_dm", &format!("dm{n}"), payload).await?;
                    totals[side].0 += bench_browser::steps(&result);
                }
                totals[side].1 += started.elapsed().as_secs_f64();
            }
        }
        plain.shutdown().await;
        gated.shutdown().await;
        Ok(totals.map(|(steps, secs)| steps as f64 / secs))
    });
    drop(proxy.stdin.take());
    let _ = proxy.wait();
    let [plain, gated] = measured?;
    Ok((plain, gated))
}
