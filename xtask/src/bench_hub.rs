//! `cargo xtask bench hub`: the hub's numbers in docs/benchmarks.md. Release builds of
//! `edge-hub` and `edge-loadgen` (a separate process: agents and submitters never share the
//! hub's two cores with its own runtime), loopback only, every run bounded by a job count or
//! a duration. Prints Markdown rows to paste into the "Hub" section.
//!
//! Runs: end-to-end jobs/s with 1,000 agents on SQLite and on PostgreSQL; dispatch latency
//! at 1,000 jobs/s; idle agent sessions and the hub's RSS; claim-and-complete of our
//! PostgreSQL store against graphile-worker (npm) on the same server with the same count.

use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_e2e::pg::TempDatabase;
use edge_e2e::procfs::{peak_rss_kib, rss_kib};
use edge_e2e::{scratch_dir, Binaries, Hub};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Sizes; `EDGE_BENCH_QUICK=1` shrinks them for a smoke run.
struct Sizes {
    agents: usize,
    /// Jobs of a PostgreSQL throughput run.
    jobs: u64,
    /// Jobs of a SQLite throughput run: at 20,000 jobs/s a 20,000-job run lasts a second,
    /// much of it the load generator's connections warming up; this many last about five.
    sqlite_jobs: u64,
    /// SQLite throughput runs per row; the row reports their median and lists each, since
    /// the same run varies by ±10 % on this kind of machine.
    sqlite_runs: usize,
    latency_secs: u64,
    idle_agents: usize,
    store_jobs: u64,
}

fn sizes() -> Sizes {
    if std::env::var_os("EDGE_BENCH_QUICK").is_some() {
        Sizes {
            agents: 100,
            jobs: 2_000,
            sqlite_jobs: 2_000,
            sqlite_runs: 1,
            latency_secs: 3,
            idle_agents: 1_000,
            store_jobs: 2_000,
        }
    } else {
        // The idle run is bounded by the descriptor limit this process may give its
        // children (see `fd_budget`); 50,000 needs `ulimit -n` ≥ 51,000 for both processes.
        Sizes {
            agents: 1_000,
            jobs: 20_000,
            sqlite_jobs: 100_000,
            sqlite_runs: 3,
            latency_secs: 10,
            idle_agents: 50_000,
            store_jobs: 20_000,
        }
    }
}

struct Tools {
    bins: Binaries,
    loadgen: PathBuf,
}

fn build_tools() -> Result<Tools> {
    checked(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "edge-hub",
        "-p",
        "edge-agent",
        "-p",
        "edge-loadgen",
    ]))?;
    let dir = root().join("target/release");
    Ok(Tools {
        bins: Binaries { hub: dir.join("edge-hub"), agent: dir.join("edge-agent") },
        loadgen: dir.join("edge-loadgen"),
    })
}

/// `cargo xtask bench hub-guest [N]`: only the idle row in a QEMU guest, with N sessions
/// (50,000 unless given).
pub fn guest_idle_only(agents: Option<&str>) -> Result<()> {
    let agents = match agents {
        Some(text) => text.parse().with_context(|| format!("hub-guest takes a session count, not {text:?}"))?,
        None => sizes().idle_agents,
    };
    let tools = build_tools()?;
    println!("| {} | {} | ≤ 1 GiB at 50,000 |", guest_row_name(agents, fd_budget()), guest_row(&tools, agents)?);
    Ok(())
}

fn guest_row_name(agents: usize, budget: usize) -> String {
    format!(
        "the same with {agents} sessions, in a QEMU guest with its own descriptor limit (this machine's is {budget})"
    )
}

fn guest_row(tools: &Tools, agents: usize) -> Result<String> {
    let guest = crate::bench_vm::idle_in_guest(&tools.bins.hub, &tools.loadgen, agents)?;
    Ok(format!(
        "{:.0} MB for {} sessions ({:.1} KiB each); peak while they connected {:.0} MB (guest kernel {})",
        guest.rss_kib as f64 / 1024.0,
        guest.connected,
        guest.rss_kib as f64 / guest.connected.max(1) as f64,
        guest.peak_rss_kib as f64 / 1024.0,
        guest.kernel
    ))
}

pub fn run() -> Result<()> {
    let tools = build_tools()?;
    let budget = fd_budget();
    let sizes = sizes();
    let pg = edge_e2e::pg::available();
    // A measurement that fails or runs out of time becomes a row saying so; the rest run.
    let mut rows = Vec::new();
    let mut row = |what: String, result: Result<String>, target: &str| {
        let result = result.unwrap_or_else(|e| format!("failed: {e:#}"));
        rows.push(format!("| {what} | {result} | {target} |"));
    };

    row(
        format!(
            "end-to-end jobs/s, SQLite, {} agents, {} jobs (submit → assign → ack → result), median of {} runs",
            sizes.agents, sizes.sqlite_jobs, sizes.sqlite_runs
        ),
        median_rate(&tools, &sizes, 1),
        "≥ 20,000",
    );
    row(
        "the same, submitted through `POST /v1/jobs/batch`, 100 jobs per request".to_owned(),
        median_rate(&tools, &sizes, 100),
        "≥ 20,000",
    );
    if pg {
        for batch in [1, 100] {
            let db = TempDatabase::create("bench_e2e")?;
            row(
                format!(
                    "end-to-end jobs/s, PostgreSQL, {} agents, {} jobs, {batch} job(s) per submit request",
                    sizes.agents, sizes.jobs
                ),
                throughput(&tools, Some(&db.url), &sizes, sizes.jobs, batch).map(|v| rate(&v)),
                "—",
            );
        }
    }
    for rate in [1000, 200] {
        row(
            format!(
                "dispatch latency, submit → `job_assign` at the agent, {rate} jobs/s for {} s after {LATENCY_WARMUP_SECS} s unmeasured, {} agents: p50 / p99 / max",
                sizes.latency_secs, sizes.agents
            ),
            latency(&tools, &sizes, rate).map(|v| {
                let ms = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                format!(
                    "{:.2} / {:.2} / {:.2} ms (achieved {:.0} jobs/s)",
                    ms("p50_ms"),
                    ms("p99_ms"),
                    ms("max_ms"),
                    ms("achieved_rate")
                )
            }),
            if rate == 1000 { "p99 ≤ 5 ms" } else { "—" },
        );
    }
    let idle_agents = sizes.idle_agents.min(budget.saturating_sub(500));
    row(
        format!("hub RSS with {idle_agents} idle agent sessions (hello + heartbeats)"),
        idle(&tools, idle_agents).map(|idle| {
            let per_session = idle.rss_kib as f64 / idle.connected.max(1) as f64;
            format!(
                "{:.0} MB for {} sessions ({per_session:.1} KiB each; ×50,000 ≈ {:.0} MB); peak while they connected {:.0} MB",
                idle.rss_kib as f64 / 1024.0,
                idle.connected,
                per_session * 50_000.0 / 1024.0,
                idle.peak_rss_kib as f64 / 1024.0
            )
        }),
        "≤ 1 GiB at 50,000",
    );
    if idle_agents < sizes.idle_agents {
        row(guest_row_name(sizes.idle_agents, budget), guest_row(&tools, sizes.idle_agents), "≤ 1 GiB at 50,000");
    }
    if pg {
        row(
            format!(
                "claim-and-complete, PostgreSQL, {} queued jobs, 8 workers: edge-hub store / graphile-worker",
                sizes.store_jobs
            ),
            store_vs_graphile(&tools, &sizes).map(|(ours, theirs)| {
                let (a, b) =
                    (ours["jobs_per_sec"].as_f64().unwrap_or(0.0), theirs["jobs_per_sec"].as_f64().unwrap_or(0.0));
                let version = theirs["version"].as_str().unwrap_or("?");
                format!(
                    "{a:.0} / {b:.0} jobs/s (graphile-worker {version}; ratio {:.2})",
                    if b > 0.0 { a / b } else { f64::NAN }
                )
            }),
            "—",
        );
    }

    println!("\n| measurement | result | target |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// `sizes.sqlite_runs` SQLite throughput runs: `median jobs/s (runs: a, b, c)`.
fn median_rate(tools: &Tools, sizes: &Sizes, batch: u32) -> Result<String> {
    let mut rates = Vec::new();
    for _ in 0..sizes.sqlite_runs {
        let report = throughput(tools, None, sizes, sizes.sqlite_jobs, batch)?;
        if report["recorded"].as_u64() < report["accepted"].as_u64() {
            // A run that hit its deadline is not a rate; say so instead of averaging it in.
            return Ok(rate(&report));
        }
        rates.push(report["jobs_per_sec"].as_f64().unwrap_or(0.0));
    }
    let runs = rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    rates.sort_by(f64::total_cmp);
    Ok(format!("{:.0} jobs/s (runs: {runs})", rates[rates.len() / 2]))
}

/// `N jobs/s` (`, partial: M of K recorded` when the run hit its deadline).
fn rate(report: &Value) -> String {
    let per_sec = report["jobs_per_sec"].as_f64().unwrap_or(0.0);
    let (recorded, accepted) = (report["recorded"].as_u64().unwrap_or(0), report["accepted"].as_u64().unwrap_or(0));
    if recorded < accepted {
        format!(
            "{per_sec:.0} jobs/s (deadline hit: {recorded} of {accepted} recorded in {:.0} s)",
            report["elapsed_secs"].as_f64().unwrap_or(0.0)
        )
    } else {
        format!("{per_sec:.0} jobs/s")
    }
}

/// Raises this process's descriptor limit (inherited by the hub and the load generator) to
/// a million, or to the hard limit when raising that is not allowed (no CAP_SYS_RESOURCE),
/// and returns what children get. The idle run is sized to fit.
fn fd_budget() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid pointers to local structs.
    let soft = unsafe {
        let wanted = libc::rlimit { rlim_cur: 1_048_576, rlim_max: 1_048_576 };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 && libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    };
    let budget = usize::try_from(soft).unwrap_or(usize::MAX);
    eprintln!("descriptor limit for the hub and the load generator: {budget}");
    budget
}

/// A hub for one run, logging warnings only (per-job info lines would measure the log).
fn start_hub(tools: &Tools, dir: &Path, database_url: Option<&str>) -> Result<Hub> {
    // Thousands of load-generator agents log in from one address, and one key submits at
    // full speed: the rate limits are for hostile clients, not for what is measured here.
    let env = [
        ("EDGE_HUB_LOG", "warn"),
        ("EDGE_HUB_AUTH_RATE_PER_MINUTE", "1000000"),
        ("EDGE_HUB_JOBS_RATE_PER_SECOND", "1000000"),
    ];
    let args = ["--hb-interval-secs", "25"];
    match database_url {
        Some(url) => Hub::start_with_database(&tools.bins, dir, url, &env, &args),
        None => Hub::start(&tools.bins, dir, &env, &args),
    }
}

/// `count` enrollment tokens for creator `bench`, written one per line to a file.
fn tokens_file(tools: &Tools, hub: &Hub, dir: &Path, count: usize) -> Result<PathBuf> {
    write_tokens(&tools.bins.hub, &hub.database_url, dir, count)
}

/// `count` enrollment tokens for creator `bench` in the hub database at `database_url` (the
/// hub need not run), written one per line to `dir/tokens.txt`.
pub(crate) fn write_tokens(hub: &Path, database_url: &str, dir: &Path, count: usize) -> Result<PathBuf> {
    let tokens =
        hub_cli(hub, database_url, &["enroll-token", "create", "--creator", "bench", "--count", &count.to_string()])?;
    let path = dir.join("tokens.txt");
    std::fs::write(&path, tokens)?;
    Ok(path)
}

/// What `edge-hub --database-url DATABASE_URL ARGS…` printed, or its error output as the error.
pub(crate) fn hub_cli(hub: &Path, database_url: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(hub)
        .args(["--database-url", database_url])
        .args(args)
        .output()
        .with_context(|| format!("running edge-hub {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("edge-hub {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Runs the load generator and returns the last JSON line it printed.
fn loadgen(tools: &Tools, args: &[String]) -> Result<Value> {
    eprintln!("$ edge-loadgen {}", args.join(" "));
    let out = Command::new(&tools.loadgen).args(args).stderr(Stdio::inherit()).output().context("edge-loadgen")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.starts_with('{')).context("no JSON from edge-loadgen")?;
    let value: Value = serde_json::from_str(last)?;
    eprintln!("{value}");
    if !out.status.success() && value["recorded"].is_null() {
        bail!("edge-loadgen failed: {value}");
    }
    Ok(value)
}

fn common_args(hub: &Hub, key: &str, tokens: &Path, agents: usize) -> Vec<String> {
    vec![
        "--hub".into(),
        hub.url.clone(),
        "--api-key".into(),
        key.into(),
        "--tokens".into(),
        tokens.display().to_string(),
        "--agents".into(),
        agents.to_string(),
    ]
}

fn throughput(tools: &Tools, database_url: Option<&str>, sizes: &Sizes, jobs: u64, batch: u32) -> Result<Value> {
    let dir = scratch_dir("bench-hub-e2e")?;
    let hub = start_hub(tools, &dir.path().join("hub"), database_url)?;
    let key = hub.api_key()?;
    let tokens = tokens_file(tools, &hub, dir.path(), sizes.agents)?;
    let mut args = vec!["throughput".to_owned()];
    args.extend(common_args(&hub, &key, &tokens, sizes.agents));
    args.extend([
        "--jobs".into(),
        jobs.to_string(),
        "--submitters".into(),
        // Batches are large enough that a few requests in flight keep the hub busy.
        (if batch > 1 { "8" } else { "64" }).into(),
        "--batch".into(),
        batch.to_string(),
        "--slots".into(),
        "8".into(),
        // Bounded: a slow engine reports what it recorded by then.
        "--timeout-secs".into(),
        "120".into(),
    ]);
    loadgen(tools, &args)
}

/// Seconds the latency runs submit at their rate before measuring, so the load generator's
/// HTTP connections are open and first-use costs paid, as in a hub that has been running.
const LATENCY_WARMUP_SECS: u64 = 1;

fn latency(tools: &Tools, sizes: &Sizes, rate: u32) -> Result<Value> {
    let dir = scratch_dir("bench-hub-latency")?;
    let hub = start_hub(tools, &dir.path().join("hub"), None)?;
    let key = hub.api_key()?;
    let tokens = tokens_file(tools, &hub, dir.path(), sizes.agents)?;
    let mut args = vec!["latency".to_owned()];
    args.extend(common_args(&hub, &key, &tokens, sizes.agents));
    args.extend(["--rate".into(), rate.to_string(), "--duration-secs".into(), sizes.latency_secs.to_string()]);
    args.extend(["--warmup-secs".into(), LATENCY_WARMUP_SECS.to_string()]);
    loadgen(tools, &args)
}

struct Idle {
    connected: u64,
    /// The hub's RSS 10 s after the last session said hello.
    rss_kib: u64,
    /// The hub's largest RSS until then: all sessions connect at once, so their handshakes
    /// and `hello` writes overlap, as when every agent reconnects after a hub restart.
    peak_rss_kib: u64,
}

/// Connects `agents` idle sessions and measures the hub's memory (see [`Idle`]).
fn idle(tools: &Tools, agents: usize) -> Result<Idle> {
    let dir = scratch_dir("bench-hub-idle")?;
    let hub = start_hub(tools, &dir.path().join("hub"), None)?;
    let key = hub.api_key()?;
    let tokens = tokens_file(tools, &hub, dir.path(), agents)?;
    let mut args = vec!["idle".to_owned()];
    args.extend(common_args(&hub, &key, &tokens, agents));
    // Several source addresses: one would run out of ephemeral ports near 28,000.
    args.extend(["--source-ips".into(), "8".into(), "--slots".into(), "1".into(), "--hold-secs".into(), "20".into()]);
    eprintln!("$ edge-loadgen {}", args.join(" "));
    let mut child = Command::new(&tools.loadgen).args(&args).stdout(Stdio::piped()).spawn().context("edge-loadgen")?;
    let stdout = child.stdout.take().context("piped")?;
    let mut connected = None;
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    for line in lines.by_ref() {
        let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(n) = value["connected"].as_u64() {
            connected = Some(n);
            break;
        }
    }
    let Some(connected) = connected else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("edge-loadgen never reported its sessions connected");
    };
    std::thread::sleep(Duration::from_secs(10));
    let pid = hub.pid().context("hub not running")?;
    let (rss, peak) = (rss_kib(pid)?, peak_rss_kib(pid)?);
    // Read the rest, so the load generator's last line never hits a closed pipe.
    for _ in lines {}
    let status = child.wait()?;
    if !status.success() {
        bail!("edge-loadgen idle failed ({status})");
    }
    Ok(Idle { connected, rss_kib: rss, peak_rss_kib: peak })
}

fn store_vs_graphile(tools: &Tools, sizes: &Sizes) -> Result<(Value, Value)> {
    let ours_db = TempDatabase::create("bench_store")?;
    let ours = loadgen(
        tools,
        &[
            "store".into(),
            "--database-url".into(),
            ours_db.url.clone(),
            "--jobs".into(),
            sizes.store_jobs.to_string(),
            "--workers".into(),
            "8".into(),
        ],
    )?;
    let graphile_dir = root().join("benches/graphile");
    if !graphile_dir.join("node_modules/graphile-worker").is_dir() {
        checked(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&graphile_dir))?;
    }
    let theirs_db = TempDatabase::create("bench_graphile")?;
    eprintln!("$ node benches/graphile/bench.mjs");
    let out = Command::new("node")
        .arg("bench.mjs")
        .current_dir(&graphile_dir)
        .env("DATABASE_URL", &theirs_db.url)
        .env("JOBS", sizes.store_jobs.to_string())
        .env("CONCURRENCY", "8")
        .stderr(Stdio::inherit())
        .output()
        .context("node bench.mjs")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs: Value = serde_json::from_str(text.lines().last().context("no output from bench.mjs")?)?;
    eprintln!("{theirs}");
    if !out.status.success() {
        bail!("graphile-worker run failed: {theirs}");
    }
    Ok((ours, theirs))
}
