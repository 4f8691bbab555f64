//! `cargo xtask bench browser`: the "Browser" numbers in docs/benchmarks.md. Engine overhead
//! with pacing and typing cadence off, against the local test site (`edge_browser::testsite`)
//! in the system's Chromium, headless.
//!
//! Measures, in this process through the `edge-browser` library (as the agent embeds it):
//! steps per second of warm `send_dm` and `scrape_subs` jobs; job time on a warm browser vs
//! a cold start (a fresh runtime that launches Chromium for the job); RSS of this process +
//! its Chromium tree during a 100-recipient `broadcast_dm`. The library lets an embedder set
//! the caps directly; the agent cannot (its settings and the environment only lower the DM
//! cap of 20/h, burst 5), so the 100-recipient run is in-process. Then, through a release
//! `edge-hub` + `edge-agent`: the agent process tree (agent + Chromium) during a broadcast of
//! 5 recipients, the agent's whole DM burst.

use crate::bench::release_bins;
use anyhow::{bail, Context, Result};
use edge_browser::confine::Uploads;
use edge_browser::guard::{BreakerSettings, Cap, Caps};
use edge_browser::locator::Cadence;
use edge_browser::runtime::{BrowserEvent, BrowserRuntime, BrowserSettings, KeyStore, Notifier};
use edge_browser::session::SessionKey;
use edge_browser::testsite::Site;
use edge_browser::Adapter;
use edge_e2e::procfs::{process_tree, rss_kib, tree_rss_kib};
use edge_e2e::{scratch_dir, Agent, Hub};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARM_JOBS: usize = 30;
const COLD_JOBS: usize = 5;
const BROADCAST: usize = 100;

pub(crate) struct FixedKey;
impl KeyStore for FixedKey {
    fn session_key(&self) -> Result<SessionKey, String> {
        Ok(SessionKey::from_bytes([9u8; 32]))
    }
}

pub(crate) struct Quiet;
impl Notifier for Quiet {
    fn notify(&self, _event: BrowserEvent) {}
}

pub(crate) fn settings(dir: &Path) -> BrowserSettings {
    let mut s = BrowserSettings::new(dir.to_path_buf(), "bench".into());
    s.pacing = Cadence::OFF;
    s.typing = Cadence::OFF;
    s.recipient_pacing = Cadence::OFF;
    let big = Cap { per_hour: 1_000_000, burst: 10_000 };
    s.caps = Caps(["dm", "post", "scrape"].iter().map(|a| ((*a).to_owned(), big)).collect());
    s.breaker = BreakerSettings { threshold: 1000, window_ms: 1000, cooldown_ms: 1000 };
    s
}

fn runtime(dir: &Path) -> BrowserRuntime {
    BrowserRuntime::new(settings(dir), Arc::new(FixedKey), Arc::new(Quiet))
}

/// Runs one job; its result (an error fails the bench).
pub(crate) async fn job(
    rt: &BrowserRuntime,
    adapter: &Adapter,
    job_type: &str,
    id: &str,
    payload: Value,
) -> Result<Value> {
    let payload = serde_json::from_value(payload)?;
    let outcome = rt.run_job(job_type, id, &payload, adapter, &Uploads::none()).await;
    outcome.result.map_err(|e| anyhow::anyhow!("{job_type} {id}: {} {}", e.code, e.message.unwrap_or_default()))
}

pub(crate) fn steps(result: &Value) -> u64 {
    result["stepsRun"].as_u64().unwrap_or(0)
}

/// Peak of `sample()` (KiB) on a thread every 100 ms until the returned guard is dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(sample: impl Fn() -> u64 + Send + 'static) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(sample(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler { stop, peak, thread: Some(thread) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Summed PSS of a process tree in KiB (`/proc/PID/smaps_rollup`): shared pages (Chromium's
/// zygote children share most of theirs) counted once in total instead of once per process.
fn tree_pss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|text| {
            let line = text.lines().find(|l| l.starts_with("Pss:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn run() -> Result<()> {
    let mut rows = Vec::new();
    let site = Site::start()?;
    let dir = scratch_dir("bench-browser")?;
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    tokio.block_on(in_process(&site, dir.path(), &mut rows))?;
    drop(tokio);
    // The library numbers first, so they survive a failure of the agent run.
    eprintln!("{}", rows.join("\n"));
    through_agent(&site, dir.path(), &mut rows)?;

    println!("\n| measurement | result | target |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

async fn in_process(site: &Site, dir: &Path, rows: &mut Vec<String>) -> Result<()> {
    let adapter = site.adapter();
    let data = dir.join("lib");
    let me = std::process::id();
    let baseline = rss_kib(me)?;

    // Log in once (the site's auto-login page stands in for the person); the encrypted
    // session is reused by every runtime on this data dir.
    let rt = runtime(&data);
    if !rt.available() {
        bail!("no Chromium found: install chromium or set EDGE_AGENT_BROWSER");
    }
    let login = site.auto_login_adapter();
    rt.interactive_login(&login, false, Duration::from_secs(30)).await.context("scripted login")?;

    // Warm: the first job launches the browser; then WARM_JOBS of each kind on it.
    job(&rt, &adapter, "send_dm", "warmup", json!({"adapter": {}, "recipient": "warm", "params": {"text": "hi"}}))
        .await?;
    let mut dm_steps = 0;
    let started = Instant::now();
    for i in 0..WARM_JOBS {
        let r = job(
            &rt,
            &adapter,
            "send_dm",
            &format!("dm{i}"),
            json!({"adapter": {}, "recipient": format!("w{i}"), "params": {"text": "Hello there, thanks for subscribing!"}}),
        )
        .await?;
        dm_steps += steps(&r);
    }
    let dm_secs = started.elapsed().as_secs_f64();
    let mut pages = 0;
    let started = Instant::now();
    for i in 0..WARM_JOBS {
        let r = job(&rt, &adapter, "scrape_subs", &format!("scrape{i}"), json!({"adapter": {}})).await?;
        pages += r["pages"].as_u64().unwrap_or(0);
    }
    let scrape_secs = started.elapsed().as_secs_f64();
    rows.push(format!(
        "| steps/s, warm `send_dm` ({WARM_JOBS} jobs, {} steps each; pacing and typing off) | {:.1} steps/s ({:.0} ms per job) | — |",
        dm_steps / WARM_JOBS as u64,
        dm_steps as f64 / dm_secs,
        dm_secs * 1000.0 / WARM_JOBS as f64
    ));
    rows.push(format!(
        "| warm `scrape_subs` ({WARM_JOBS} jobs, {} pages of subscribers each) | {:.1} pages/s ({:.0} ms per job) | — |",
        pages / WARM_JOBS as u64,
        pages as f64 / scrape_secs,
        scrape_secs * 1000.0 / WARM_JOBS as f64
    ));
    let warm_ms = dm_secs * 1000.0 / WARM_JOBS as f64;

    // 100-recipient broadcast on the warm browser, this process + Chromium sampled.
    let recipients: Vec<String> = (0..BROADCAST).map(|i| format!("fan{i:03}")).collect();
    let sampler = Sampler::start(move || tree_rss_kib(me).map(|(t, _)| t).unwrap_or(0));
    let pss_sampler = Sampler::start(move || tree_pss_kib(me));
    let started = Instant::now();
    let r = job(
        &rt,
        &adapter,
        "broadcast_dm",
        "broadcast",
        json!({"adapter": {}, "recipients": recipients, "params": {"text": "New post is up!"}}),
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    let peak = sampler.finish();
    let peak_pss = pss_sampler.finish();
    let (after, members) = tree_rss_kib(me)?;
    let own = rss_kib(me)?;
    let sent = r["sentRecipients"].as_array().map_or(0, Vec::len);
    let counted: usize = site.counts_of(&recipients).values().sum();
    if sent != BROADCAST || counted != BROADCAST {
        bail!("broadcast sent {sent}, the site counted {counted}, expected {BROADCAST}");
    }
    rows.push(format!(
        "| {BROADCAST}-recipient `broadcast_dm`, warm, no pacing: time | {:.1} s ({:.0} ms per recipient) | — |",
        took,
        took * 1000.0 / BROADCAST as f64
    ));
    rows.push(format!(
        "| same: peak memory of the runtime's process + all Chromium processes ({} processes at the end): summed RSS / summed PSS | {:.0} MB / {:.0} MB (RSS at the end {:.0} MB, of which Chromium {:.0} MB; the bench process was {:.0} MB before Chromium started) | — |",
        members.len(),
        mb(peak),
        mb(peak_pss),
        mb(after),
        mb(after.saturating_sub(own)),
        mb(baseline)
    ));
    rt.shutdown().await;

    // Cold: a fresh runtime (no warm browser) per job, same data dir and session.
    let mut cold = Vec::new();
    for i in 0..COLD_JOBS {
        let rt = runtime(&data);
        let started = Instant::now();
        job(&rt, &adapter, "send_dm", &format!("cold{i}"), json!({"adapter": {}, "recipient": format!("c{i}"), "params": {"text": "Hello there, thanks for subscribing!"}}))
            .await?;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
        rt.shutdown().await;
    }
    cold.sort_by(f64::total_cmp);
    rows.push(format!(
        "| `send_dm` job time: warm browser (mean of {WARM_JOBS}) vs cold start (launch Chromium + job, median of {COLD_JOBS}, min {:.0}, max {:.0}) | {warm_ms:.0} ms vs {:.0} ms | — |",
        cold[0],
        cold[cold.len() - 1],
        cold[cold.len() / 2]
    ));
    Ok(())
}

/// The release agent through a real hub: agent process tree (agent + its Chromium) while it
/// sends a broadcast of `burst` recipients, pacing off.
fn through_agent(site: &Site, dir: &Path, rows: &mut Vec<String>) -> Result<()> {
    let bins = release_bins()?;
    let hub = Hub::start(&bins, &dir.join("hub"), &[], &[])?;
    let key = hub.api_key()?;
    let mut agent = Agent::new(&bins, &format!("bench-browser-{}", std::process::id()), "kernel", &dir.join("agent"));
    agent.login(&hub.url, &hub.enroll_token("bench-browser")?)?;
    agent.grant(&["browser:fanhub"])?;
    // The bench site is local: allowed through the egress gate as a person would.
    agent.allow_egress(&site.base_url);
    agent.browser_login_headless(&site.auto_login_adapter())?;
    let env = [
        ("EDGE_AGENT_BROWSER_PACING_MS", "0-0"),
        ("EDGE_AGENT_BROWSER_TYPING_MS", "0-0"),
        ("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "0-0"),
    ];
    agent.run_with_env(&[], &env)?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))?;
    let pid = agent.pid().context("agent not running")?;
    let idle = tree_rss_kib(pid)?.0;
    let adapter = serde_json::to_value(site.adapter())?;
    let burst = Cap::DM.burst as usize;
    let fans: Vec<String> = (0..burst).map(|i| format!("agentfan{i}")).collect();
    let sampler = Sampler::start(move || tree_rss_kib(pid).map(|(t, _)| t).unwrap_or(0));
    let pss_sampler = Sampler::start(move || tree_pss_kib(pid));
    let started = Instant::now();
    let job = hub.submit_job(
        &key,
        &json!({"type": "broadcast_dm", "creatorId": "bench-browser",
                "payload": {"adapter": adapter, "recipients": fans, "params": {"text": "New post is up!"}}}),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().unwrap_or_default(), Duration::from_secs(120))?;
    let took = started.elapsed().as_secs_f64();
    let peak = sampler.finish();
    let peak_pss = pss_sampler.finish();
    let (after, members) = tree_rss_kib(pid)?;
    agent.shutdown();
    if done["status"] != json!("succeeded") {
        bail!("broadcast through the agent: {done}\n{}", agent.run_log());
    }
    rows.push(format!(
        "| release `edge-agent` through the hub, `broadcast_dm` of {burst} recipients (its whole DM burst), no pacing: submit → done | {:.2} s (includes Chromium launch) | — |",
        took
    ));
    rows.push(format!(
        "| same: agent process tree (agent + {} Chromium processes), peak during the broadcast: summed RSS / summed PSS | {:.0} MB / {:.0} MB (agent alone before: {:.1} MB RSS; tree RSS after: {:.0} MB) | — |",
        members.len().saturating_sub(1),
        mb(peak),
        mb(peak_pss),
        mb(idle),
        mb(after)
    ));
    Ok(())
}
