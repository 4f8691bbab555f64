//! Trusted bundles end to end with real processes: the operator publishes with
//! `edge-hub bundle publish`, a `bundle` job goes in through `POST /v1/jobs`, a real
//! `edge-agent run` verifies, downloads, unpacks and runs it, and the result comes back
//! through the job and through `/edge/notify` (`GET /v1/bundles/runs/{run_id}`).
//!
//! The crash tests kill the agent (test hooks in `edge_agent::bundles`) at the two points
//! where a finished run is most easily lost or doubled, restart it, and check that the hub
//! recorded the run exactly once, the job reached its final state, and nothing ran twice.

use anyhow::{bail, Context, Result};
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CREATOR: &str = "creator-bundles";
// `auto`: Secret Service inside the desktop session `cargo xtask test` provides, the kernel
// keyring elsewhere.
const KEYCHAIN: &str = "auto";
const TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_AFTER_JOURNAL: &str = "EDGE_AGENT_TEST_EXIT_AFTER_JOURNAL";
const EXIT_AFTER_NOTIFY: &str = "EDGE_AGENT_TEST_EXIT_AFTER_NOTIFY";

struct World {
    dir: tempfile::TempDir,
    hub: Hub,
    agent: Agent,
    key: String,
}

/// A hub with an initialised bundle repository and one published shell bundle
/// (`hello` 1.0.0) that appends a line to the file named by its first argument, and an agent
/// logged in after the repository existed (so it holds the root).
fn world(name: &str) -> Result<World> {
    let dir = scratch_dir(name)?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    // $1: a marker file; each run adds one line, so a test can count runs.
    let script = "echo \"ran $EDGE_RUN_ID\" >> \"$1\"\necho \"hello from the bundle, $2\"\n";
    let bundle = hub.publish_shell_bundle(CREATOR, "hello", "1.0.0", script)?;
    let (fingerprint, published) = (bundle.root_fingerprint, bundle.published);
    assert_eq!(published["changed"], true, "{published}");
    assert_eq!(published["target"], format!("{CREATOR}/hello/1.0.0.zip"), "{published}");

    let profile = format!("e2e-{name}-{}", std::process::id());
    let mut agent = Agent::new(&bins, &profile, KEYCHAIN, &dir.path().join("agent"));
    let token = hub.enroll_token(CREATOR)?;
    agent.login(&hub.url, &token)?;
    agent.grant(&["bundle"])?;
    // The agent stored the hub's root at enrollment and shows the same fingerprint.
    let (ok, status) = agent.oneshot(&["status"])?;
    assert!(ok, "{status}");
    assert!(
        status.contains(&fingerprint),
        "`edge-agent status` must show the root fingerprint {fingerprint}: {status}"
    );
    Ok(World { dir, hub, agent, key })
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a non-UTF-8 temp path")
}

impl World {
    fn marker(&self) -> PathBuf {
        self.dir.path().join("runs.txt")
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.marker()).map(|s| s.lines().count()).unwrap_or(0)
    }

    fn wait_online(&self) -> Result<()> {
        self.hub
            .wait_agent_online(&self.key, self.agent.agent_id(), TIMEOUT)
            .map_err(|e| e.context(format!("agent log:\n{}", self.agent.run_log())))
    }

    fn submit_hello(&self) -> Result<String> {
        let marker = self.marker();
        let job = self.hub.submit_job(
            &self.key,
            &json!({ "type": "bundle", "creatorId": CREATOR,
                     "payload": { "bundle": "hello", "version": "latest", "args": [path_str(&marker)?, "e2e"] } }),
        )?;
        Ok(job["id"].as_str().context("job id")?.to_owned())
    }

    fn finish(&self, id: &str) -> Result<Value> {
        self.hub
            .wait_job_done(&self.key, id, TIMEOUT)
            .map_err(|e| e.context(format!("agent log:\n{}", self.agent.run_log())))
    }

    fn run_record(&self, run_id: &str) -> Result<Value> {
        self.hub.get(&self.key, &format!("/v1/bundles/runs/{run_id}"))
    }

    /// Run ids of the journal entries the agent has not had acknowledged yet.
    fn journal(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.agent.data_dir.join("journal")) else { return Vec::new() };
        let mut ids: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
            .filter(|name| !name.starts_with('.'))
            .collect();
        ids.sort();
        ids
    }

    fn job_status(&self, id: &str) -> Result<String> {
        Ok(self.hub.job(&self.key, id)?["status"].as_str().unwrap_or_default().to_owned())
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "dead" | "cancelled")
}

#[test]
fn a_published_shell_bundle_runs_through_a_bundle_job() -> Result<()> {
    let mut w = world("bundle-shell")?;
    w.agent.run(&["--hb-interval-secs", "1"])?;
    w.wait_online()?;
    let id = w.submit_hello()?;
    let job = w.finish(&id)?;
    assert_eq!(job["status"], "succeeded", "{job}\nagent log:\n{}", w.agent.run_log());
    let result = &job["result"];
    assert_eq!(result["stdout"], "hello from the bundle, e2e\n", "{job}");
    assert_eq!(result["exitCode"], 0, "{job}");
    assert_eq!(result["bundle"], "hello");
    assert_eq!(result["version"], "1.0.0");
    let run_id = result["runId"].as_str().context("runId")?;
    assert_eq!(w.runs(), 1);

    // The full report reaches /edge/notify (on its own schedule, after the frame) once, and
    // the journal is empty again.
    wait_until(Duration::from_secs(10), || Ok(w.run_record(run_id).is_ok()))?;
    let record = w.run_record(run_id)?;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["jobId"], id.as_str());
    assert_eq!(record["agentId"], w.agent.agent_id());
    assert_eq!(record["deliveries"], 1, "{record}");
    wait_until(Duration::from_secs(10), || Ok(w.journal().is_empty()))?;

    // The cache serves the second run: the same version is not downloaded again.
    let again = w.finish(&w.submit_hello()?)?;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(w.runs(), 2);
    let version_dir = w.agent.data_dir.join("EdgeFlows").join(CREATOR).join("hello").join("1.0.0");
    assert!(version_dir.join("bundle").join("main.sh").is_file(), "cache at {}", version_dir.display());
    Ok(())
}

#[test]
fn agent_killed_after_the_run_before_reporting_reports_once_after_restart() -> Result<()> {
    let mut w = world("bundle-crash-journal")?;
    w.agent.run_with_env(&["--hb-interval-secs", "1"], &[(EXIT_AFTER_JOURNAL, "1")])?;
    w.wait_online()?;
    let id = w.submit_hello()?;
    let code = w.agent.wait_exit(TIMEOUT)?;
    assert_eq!(code, Some(86), "the hook exits with 86 right after journaling; log:\n{}", w.agent.run_log());
    assert_eq!(w.runs(), 1, "the bundle ran before the crash");

    // The run finished but nothing reached the hub: one journal entry, no run record, the
    // job still held by the (dead) agent.
    let journal = w.journal();
    let [run_id] = journal.as_slice() else { bail!("expected one journal entry, found {journal:?}") };
    let status = w.job_status(&id)?;
    assert!(!is_final(&status), "the job must not be final before the report: {status}");
    assert!(w.run_record(run_id).is_err(), "no run record before the restart");

    w.agent.run(&["--hb-interval-secs", "1"])?;
    let job = w.finish(&id)?;
    assert_eq!(job["status"], "succeeded", "{job}\nagent log:\n{}", w.agent.run_log());
    assert_eq!(job["result"]["runId"], run_id.as_str(), "the journaled run, not a new one: {job}");
    assert_eq!(job["result"]["stdout"], "hello from the bundle, e2e\n");

    wait_until(Duration::from_secs(20), || Ok(w.run_record(run_id).is_ok() && w.journal().is_empty()))
        .context("the journal entry must be reported and removed")?;
    let record = w.run_record(run_id)?;
    assert_eq!(record["deliveries"], 1, "recorded exactly once: {record}");
    assert_eq!(record["status"], "succeeded");
    // A moment for any late replay to show up as a second delivery or a second run.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.run_record(run_id)?["deliveries"], 1);
    assert_eq!(w.runs(), 1, "the bundle must not run again after the restart");
    let attempts = w.hub.get(&w.key, &format!("/v1/jobs/{id}/attempts"))?;
    let attempts = attempts["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 1, "one delivery of the job: {attempts:?}");
    Ok(())
}

#[test]
fn agent_killed_after_notify_before_the_job_result_still_finishes_the_job() -> Result<()> {
    let mut w = world("bundle-crash-notify")?;
    w.agent.run_with_env(&["--hb-interval-secs", "1"], &[(EXIT_AFTER_NOTIFY, "1")])?;
    w.wait_online()?;
    let id = w.submit_hello()?;
    let code = w.agent.wait_exit(TIMEOUT)?;
    assert_eq!(code, Some(87), "the hook exits with 87 after the notify ack; log:\n{}", w.agent.run_log());
    assert!(w.journal().is_empty(), "the acknowledged entry is gone: {:?}", w.journal());

    // No job_result frame was ever sent, and no agent is running: /edge/notify alone must
    // have finished the job.
    let job = w.hub.job(&w.key, &id)?;
    assert_eq!(job["status"], "succeeded", "{job}\nagent log:\n{}", w.agent.run_log());
    let run_id = job["result"]["runId"].as_str().context("runId in the job result")?.to_owned();
    assert_eq!(job["result"]["stdout"], "hello from the bundle, e2e\n", "{job}");
    assert_eq!(w.run_record(&run_id)?["deliveries"], 1);

    // A restarted agent has nothing to replay and does not run the job again.
    w.agent.run(&["--hb-interval-secs", "1"])?;
    w.wait_online()?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.job_status(&id)?, "succeeded");
    assert_eq!(w.run_record(&run_id)?["deliveries"], 1);
    assert_eq!(w.runs(), 1, "ran exactly once");
    Ok(())
}

/// A live process as first seen: its pid and its start time (field 22 of /proc/PID/stat), so a
/// pid the kernel hands to a new process later is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Process {
    pid: u32,
    started: u64,
}

impl Process {
    /// `None` when the process is gone or a zombie (dead, only waiting to be reaped).
    fn find(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // After the command name: state is field 3, start time field 22.
        if fields.first() == Some(&"Z") {
            return None;
        }
        Some(Process { pid, started: fields.get(19)?.parse().ok()? })
    }

    fn alive(&self) -> bool {
        Process::find(self.pid) == Some(*self)
    }
}

/// Kills whatever of a tree is still alive when the test ends, so a failing test leaves no
/// `sleep 600` behind.
struct Reaper(Vec<Process>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for process in self.0.iter().filter(|p| p.alive()) {
            // SAFETY: kill(2) on a pid whose start time still matches the one we recorded.
            unsafe {
                libc::kill(process.pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// A running `bundle` job cancelled through the hub (`POST /v1/jobs/{id}/cancel`): the agent
/// ends the script's whole process tree (a child, a grandchild, and a daemon that left the
/// process group with setsid), and the job ends `cancelled`.
#[test]
fn cancelling_a_running_bundle_job_through_the_hub_ends_its_whole_process_tree() -> Result<()> {
    const MEMBERS: usize = 5;
    let mut w = world("bundle-cancel")?;
    // Each process of the tree writes its own pid into the file named by $1.
    let script = r#"pids="$1"
echo $$ >> "$pids"
sleep 600 &
echo $! >> "$pids"
sh -c 'echo $$ >> "$1"; sleep 600 & echo $! >> "$1"; wait' tree "$pids" &
( setsid sh -c 'echo $$ >> "$1"; exec sleep 600' daemon "$pids" & )
wait
"#;
    let published = w.hub.publish_shell_bundle(CREATOR, "tree", "1.0.0", script)?.published;
    assert_eq!(published["changed"], true, "{published}");
    w.agent.run(&["--hb-interval-secs", "1"])?;
    w.wait_online()?;

    let pid_file = w.dir.path().join("tree-pids.txt");
    let job = w.hub.submit_job(
        &w.key,
        &json!({ "type": "bundle", "creatorId": CREATOR,
                 "payload": { "bundle": "tree", "version": "1.0.0", "args": [path_str(&pid_file)?], "timeoutMs": 300_000 } }),
    )?;
    let id = job["id"].as_str().context("job id")?.to_owned();

    // The whole tree is up and running before the cancel.
    let mut tree = Reaper(Vec::new());
    wait_until(TIMEOUT, || {
        let pids: Vec<u32> = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        tree.0 = pids.iter().filter_map(|pid| Process::find(*pid)).collect();
        Ok(pids.len() == MEMBERS && tree.0.len() == MEMBERS)
    })
    .with_context(|| format!("the tree never came up: {:?}\nagent log:\n{}", tree.0, w.agent.run_log()))?;
    wait_until(TIMEOUT, || Ok(w.job_status(&id)? == "running"))?;

    let answer = ureq::post(&format!("{}/v1/jobs/{id}/cancel", w.hub.url))
        .set("Authorization", &format!("Bearer {}", w.key))
        .timeout(Duration::from_secs(10))
        .call()
        .context("POST /v1/jobs/{id}/cancel")?;
    assert_eq!(answer.status(), 202, "a running job's cancel goes to the agent");
    let answer: Value = answer.into_json()?;
    assert_eq!(answer["cancelRequested"], true, "{answer}");

    // Interrupt, terminate, kill: the ladder takes about 10 s by default.
    wait_until(Duration::from_secs(60), || Ok(tree.0.iter().all(|p| !p.alive()))).with_context(|| {
        let survivors: Vec<_> = tree.0.iter().filter(|p| p.alive()).collect();
        format!("processes of the cancelled job still alive: {survivors:?}\nagent log:\n{}", w.agent.run_log())
    })?;
    let done = w.finish(&id)?;
    assert_eq!(done["status"], "cancelled", "{done}\nagent log:\n{}", w.agent.run_log());
    assert!(w.agent.is_running(), "the agent itself survived the cancel");
    Ok(())
}
