//! Failure tests of the hub's queue with real processes (issue 3): a `kill -9` under load,
//! an agent connection cut mid-job, and agents racing for jobs through several hub
//! processes on one PostgreSQL database. Each test owns its hub(s), database and agents, so
//! they run in parallel; each stays well under a minute.

use anyhow::{bail, ensure, Context as _, Result};
use edge_e2e::pg::TempDatabase;
use edge_e2e::sim::{SimAgent, SimIdentity};
use edge_e2e::site::Site;
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CREATOR: &str = "creator-failures";
const JWT_SECRET: &str = "e2e-failure-tests-secret-0123456789abcdef";

fn get_json(url: &str, key: &str) -> Result<Value> {
    Ok(ureq::get(url)
        .set("Authorization", &format!("Bearer {key}"))
        .timeout(Duration::from_secs(10))
        .call()?
        .into_json()?)
}

/// All jobs of `status` (at most 1000), by id.
fn jobs_in(hub_url: &str, key: &str, status: &str) -> Result<HashMap<String, Value>> {
    let page = get_json(&format!("{hub_url}/v1/jobs?status={status}&limit=1000"), key)?;
    let jobs = page["jobs"].as_array().context("jobs array")?;
    Ok(jobs.iter().filter_map(|j| Some((j["id"].as_str()?.to_owned(), j.clone()))).collect())
}

/// `kill -9` of the hub while 1,000 jobs flow through a real agent; after a restart on the
/// same database every job ends succeeded exactly once, and the site saw each job's
/// request exactly once. Submissions that hit the dead hub are retried with the same
/// `Idempotency-Key`, so none is lost and none is created twice.
#[test]
fn kill_9_under_load_every_job_ends_exactly_once() -> Result<()> {
    const JOBS: usize = 1000;
    let started = Instant::now();
    let dir = scratch_dir("kill9")?;
    let bins = Binaries::locate()?;
    let site = Site::start()?;
    let mut hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let mut agent = Agent::new(&bins, &format!("e2e-kill9-{}", std::process::id()), "auto", &dir.path().join("agent"));
    agent.allow_egress(&site.base_url);
    agent.login(&hub.url, &hub.enroll_token(CREATOR)?)?;
    agent.grant(&["http_request"])?;
    agent.run(&["--hb-interval-secs", "1", "--slots", "16"])?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30)).map_err(|e| e.context(agent.run_log()))?;

    // Four submitters share the work; each retries a failed submission (hub down) with the
    // same idempotency key until it gets an answer.
    let ids: Arc<Mutex<HashMap<usize, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut submitters = Vec::new();
    for worker in 0..4 {
        let (url, key, site_url, ids) = (hub.url.clone(), key.clone(), site.base_url.clone(), ids.clone());
        submitters.push(thread::spawn(move || -> Result<()> {
            for n in (worker..JOBS).step_by(4) {
                let body = json!({"type":"http_request","creatorId":CREATOR,
                                  "payload":{"url":format!("{site_url}/k9/{n}"),"timeoutMs":10_000}});
                loop {
                    let answer = ureq::post(&format!("{url}/v1/jobs"))
                        .set("Authorization", &format!("Bearer {key}"))
                        .set("Idempotency-Key", &format!("kill9-{n}"))
                        .timeout(Duration::from_secs(5))
                        .send_json(body.clone());
                    match answer {
                        Ok(response) => {
                            let job: Value = response.into_json()?;
                            let id = job["id"].as_str().context("job id")?.to_owned();
                            ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(n, id);
                            break;
                        }
                        Err(ureq::Error::Status(code, response)) if code < 500 => {
                            bail!("job {n} refused ({code}): {}", response.into_string().unwrap_or_default())
                        }
                        Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                        Err(e) => return Err(e).context(format!("job {n} never accepted")),
                    }
                }
            }
            Ok(())
        }));
    }

    // Kill in the thick of it: some jobs done, many running or queued.
    wait_until(Duration::from_secs(30), || Ok(site.total_hits() >= 300)).context("jobs never started running")?;
    hub.kill();
    let hits_at_kill = site.total_hits();
    thread::sleep(Duration::from_millis(300));
    hub.restart()?;
    for submitter in submitters {
        submitter.join().map_err(|_| anyhow::anyhow!("submitter panicked"))??;
    }
    let ids = ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    ensure!(ids.len() == JOBS, "{} of {JOBS} submissions were answered", ids.len());
    let distinct: HashSet<&String> = ids.values().collect();
    ensure!(distinct.len() == JOBS, "an idempotency key created two jobs");

    let mut succeeded = HashMap::new();
    wait_until(Duration::from_secs(40), || {
        succeeded = jobs_in(&hub.url, &key, "succeeded")?;
        Ok(succeeded.len() >= JOBS)
    })
    .with_context(|| format!("only {} of {JOBS} jobs succeeded; agent log:\n{}", succeeded.len(), agent.run_log()))?;

    for (n, id) in &ids {
        ensure!(succeeded.contains_key(id), "job {id} (#{n}) did not succeed");
        let hits = site.hits(&format!("/k9/{n}"));
        ensure!(hits == 1, "job {id} (#{n}) ran {hits} times at the site");
    }
    ensure!(site.total_hits() == JOBS as u64, "the site saw {} requests for {JOBS} jobs", site.total_hits());
    for status in ["pending", "leased", "running", "failed", "dead", "cancelled"] {
        let stragglers = jobs_in(&hub.url, &key, status)?;
        ensure!(stragglers.is_empty(), "{} jobs are {status}", stragglers.len());
    }
    eprintln!(
        "kill -9 after {hits_at_kill} of {JOBS} requests; all {JOBS} succeeded once in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An agent acks a job and its connection is cut: no heartbeat extends the lease, so it
/// expires, the job goes to another agent and completes there, and the first agent's late
/// result (sent after it reconnects) is kept in the history as `stale` without touching
/// the job.
#[test]
fn cut_connection_lease_expires_job_is_redelivered_and_late_result_is_stale() -> Result<()> {
    let dir = scratch_dir("lease-cut")?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(
        &bins,
        &dir.path().join("hub"),
        &[("EDGE_HUB_JWT_SECRET", JWT_SECRET)],
        &["--hb-interval-secs", "1", "--visibility-timeout-secs", "2"],
    )?;
    let key = hub.api_key()?;
    let first = SimIdentity::enroll(&hub.url, &hub.enroll_token(CREATOR)?)?;
    let second = SimIdentity::enroll(&hub.url, &hub.enroll_token(CREATOR)?)?;

    let mut a = SimAgent::connect(hub.addr(), &first, JWT_SECRET, 1)?;
    let job = hub.submit_job(
        &key,
        &json!({"type":"http_request","agentId":null,"creatorId":CREATOR,
                                             "payload":{"url":"http://127.0.0.1:9/lease"}}),
    )?;
    let job_id = job["id"].as_str().context("job id")?.to_owned();
    let assigned = a.next_job(Duration::from_secs(10))?;
    ensure!(assigned["jobId"] == job_id.as_str(), "first agent got {assigned}");
    a.ack(&job_id)?;
    let mut running = Value::Null;
    wait_until(Duration::from_secs(10), || {
        running = hub.job(&key, &job_id)?;
        Ok(running["status"] == "running")
    })
    .with_context(|| format!("acked job should be running: {running}"))?;
    a.cut();
    let cut_at = Instant::now();

    let mut b = SimAgent::connect(hub.addr(), &second, JWT_SECRET, 1)?;
    let again = b.next_job(Duration::from_secs(15))?;
    ensure!(again["jobId"] == job_id.as_str(), "second agent got {again}");
    let redelivered_after = cut_at.elapsed();
    b.ack(&job_id)?;
    b.succeed(&job_id, json!({"statusCode":200,"headers":{},"body":"second","isBase64Encoded":false}))?;
    let done = hub.wait_job_done(&key, &job_id, Duration::from_secs(10))?;
    ensure!(done["status"] == "succeeded" && done["agentId"] == second.agent_id.as_str(), "{done}");
    ensure!(done["attempts"] == 2, "two deliveries: {done}");

    // The first agent comes back and reports its (late) result.
    let mut a = SimAgent::connect(hub.addr(), &first, JWT_SECRET, 1)?;
    a.succeed(&job_id, json!({"statusCode":200,"headers":{},"body":"first","isBase64Encoded":false}))?;
    let mut history = Value::Null;
    wait_until(Duration::from_secs(10), || {
        let _ = a.recv(Duration::from_millis(10))?;
        history = hub.get(&key, &format!("/v1/jobs/{job_id}/attempts"))?;
        Ok(history["attempts"]
            .as_array()
            .is_some_and(|all| all.iter().any(|t| t["outcome"] == "stale" && t["agentId"] == first.agent_id.as_str())))
    })
    .with_context(|| format!("no stale attempt recorded: {history}"))?;
    let after = hub.job(&key, &job_id)?;
    ensure!(after["result"]["body"] == "second", "the stale result overwrote the job: {after}");
    eprintln!("lease expired and the job was redelivered {:.1} s after the cut", redelivered_after.as_secs_f64());
    Ok(())
}

/// Three hub processes on one PostgreSQL database, two agents on different hubs, jobs
/// submitted through all three: every job is leased once, to one agent, and succeeds.
#[test]
fn agents_on_three_hubs_over_postgres_never_share_a_lease() -> Result<()> {
    const JOBS: usize = 300;
    // Under `cargo xtask test` (or CI) a missing PostgreSQL is a failure, never a skip.
    if !edge_e2e::pg::check()? {
        return Ok(());
    }
    let db = TempDatabase::create("race")?;
    let dir = scratch_dir("pg-race")?;
    let bins = Binaries::locate()?;
    let env = [("EDGE_HUB_JWT_SECRET", JWT_SECRET)];
    let mut hubs = Vec::new();
    for i in 0..3 {
        hubs.push(Hub::start_with_database(
            &bins,
            &dir.path().join(format!("hub{i}")),
            &db.url,
            &env,
            &["--hb-interval-secs", "1"],
        )?);
    }
    let key = hubs[0].api_key()?;
    let identities = [
        SimIdentity::enroll(&hubs[0].url, &hubs[0].enroll_token(CREATOR)?)?,
        SimIdentity::enroll(&hubs[1].url, &hubs[1].enroll_token(CREATOR)?)?,
    ];

    // Each agent runs in its own thread on its own hub, holds every job 0–4 ms, and logs
    // (job, leased at, finished at) as it saw them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut runners = Vec::new();
    for (i, identity) in identities.iter().enumerate() {
        let (addr, identity, stop) = (hubs[i].addr().to_owned(), identity.clone(), stop.clone());
        runners.push(thread::spawn(move || -> Result<Vec<(String, Instant, Instant)>> {
            let mut agent = SimAgent::connect(&addr, &identity, JWT_SECRET, 4)?;
            let mut held: Vec<(String, Instant, Instant)> = Vec::new();
            let mut log = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(frame) = agent.recv(Duration::from_millis(2))? {
                    if frame["t"] == "job_assign" {
                        let id = frame["job"]["jobId"].as_str().context("jobId")?.to_owned();
                        agent.ack(&id)?;
                        n += 1;
                        held.push((id, Instant::now(), Instant::now() + Duration::from_millis(n % 5)));
                    }
                }
                let now = Instant::now();
                let (due, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, _, at)| *at <= now);
                held = rest;
                for (id, leased_at, _) in due {
                    agent.succeed(&id, json!({"statusCode":200}))?;
                    log.push((id, leased_at, Instant::now()));
                }
            }
            Ok(log)
        }));
    }

    let mut submitted = HashSet::new();
    for n in 0..JOBS {
        let job = hubs[n % 3].submit_job(
            &key,
            &json!({"type":"http_request","creatorId":CREATOR,
                                                        "payload":{"url":format!("http://127.0.0.1:9/race/{n}")}}),
        )?;
        submitted.insert(job["id"].as_str().context("job id")?.to_owned());
    }
    let mut succeeded = HashMap::new();
    let waited = wait_until(Duration::from_secs(40), || {
        succeeded = jobs_in(&hubs[2].url, &key, "succeeded")?;
        Ok(succeeded.len() >= JOBS)
    });
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for runner in runners {
        logs.push(runner.join().map_err(|_| anyhow::anyhow!("agent thread panicked"))??);
    }
    waited.with_context(|| format!("only {} of {JOBS} jobs succeeded", succeeded.len()))?;

    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (agent, log) in logs.iter().enumerate() {
        for (id, _, _) in log {
            if let Some(other) = seen.insert(id.as_str(), agent) {
                bail!("job {id} was leased to agent {other} and to agent {agent}");
            }
        }
    }
    ensure!(seen.len() == JOBS, "the agents saw {} distinct jobs of {JOBS}", seen.len());
    ensure!(logs.iter().all(|l| !l.is_empty()), "one agent got no job at all: the race did not happen");
    for id in &submitted {
        let job = succeeded.get(id).with_context(|| format!("job {id} did not succeed"))?;
        ensure!(job["attempts"] == 1, "job {id} was delivered more than once: {job}");
    }
    eprintln!("agent 0 ran {} jobs, agent 1 ran {}", logs[0].len(), logs[1].len());
    Ok(())
}
