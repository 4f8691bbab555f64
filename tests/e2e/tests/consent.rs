//! Consent end to end, with the real hub and agent: a fresh install runs nothing, a grant made
//! with `edge-agent consent grant` is announced at the next connection, a browser job on a
//! site the person did not grant and a job whose capability was revoked while the agent runs
//! fail `CAPABILITY_NOT_GRANTED` once, never retried.

use anyhow::{Context, Result};
use edge_e2e::site::Site;
use edge_e2e::{http_job, scratch_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

const CREATOR: &str = "creator-consent";
const TIMEOUT: Duration = Duration::from_secs(30);

/// A job's final state, asserted failed with `CAPABILITY_NOT_GRANTED` after one delivery.
fn not_granted(hub: &Hub, key: &str, agent: &Agent, body: Value, capability: &str) -> Result<()> {
    let done = hub.run_job(key, &body, TIMEOUT).map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))?;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "CAPABILITY_NOT_GRANTED", "{done}");
    assert_eq!(done["attempts"], 1, "CAPABILITY_NOT_GRANTED must not be retried: {done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("edge-agent consent grant {capability}")), "{done}");
    Ok(())
}

#[test]
fn only_what_the_person_granted_runs() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-consent")?;
    let site = Site::start()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let mut agent =
        Agent::new(&bins, &format!("e2e-consent-{}", std::process::id()), "auto", &dir.path().join("agent"));
    agent.login(&hub.url, &hub.enroll_token(CREATOR)?)?;
    // The local site, allowed through the egress gate as its person would.
    agent.allow_egress(&site.base_url);

    // A fresh install grants nothing; the agent connects but announces no job type, so a job
    // for it waits in the queue instead of being assigned.
    let (ok, out) = agent.oneshot(&["consent", "show"])?;
    assert!(ok && out.contains("granted: nothing"), "{out}");
    agent.run(&["--hb-interval-secs", "1"])?;
    hub.wait_agent_online(&key, agent.agent_id(), TIMEOUT)?;
    let waiting = hub.submit_job(&key, &http_job(CREATOR, &site.url("/hello")))?;
    let waiting = waiting["id"].as_str().context("job id")?.to_owned();
    wait_until(TIMEOUT, || Ok(agent.run_log().contains("no capability is granted")))
        .map_err(|e| e.context(format!("the agent must say it runs nothing; log:\n{}", agent.run_log())))?;
    let job = hub.job(&key, &waiting)?;
    assert_eq!(job["status"], "pending", "nothing was granted, so nothing is assigned: {job}");
    assert!(agent.shutdown(), "the agent stops on SIGTERM");

    // The person reads and grants what they allow; the agent announces it when it connects
    // again, and the job that waited runs on its first delivery.
    let (ok, out) = agent.oneshot(&["consent", "show", "http_request"])?;
    assert!(ok && out.contains("your IP address") && out.contains("status: not granted"), "{out}");
    for capability in ["http_request", "browser:fanhub"] {
        let (ok, out) = agent.oneshot(&["consent", "grant", capability])?;
        assert!(ok && out.contains(&format!("granted: {capability}")), "{out}");
    }
    let (ok, out) = agent.oneshot(&["consent", "show", "--json"])?;
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out)?;
    assert_eq!(shown["grants"]["http_request"]["state"], "granted", "{shown}");
    assert!(shown["grants"]["http_request"]["grant"]["text"].as_str().unwrap_or_default().contains("IP address"));
    agent.run(&["--hb-interval-secs", "1"])?;
    let done = hub.wait_job_done(&key, &waiting, TIMEOUT).map_err(|e| e.context(agent.run_log()))?;
    assert_eq!((&done["status"], &done["attempts"]), (&json!("succeeded"), &json!(1)), "{done}");

    // Browser flows are granted per site: a job on another site is refused before a browser
    // opens (the adapter is the person's own, so only consent stands in the way).
    agent
        .install_adapter("elsewhere", "name: elsewhere\nbaseUrl: https://elsewhere.example\nurls: {login: /login}\n")?;
    let elsewhere = json!({"type": "send_dm", "creatorId": CREATOR,
        "payload": {"adapter": {"local": "elsewhere"}, "recipient": "ann", "params": {"text": "hi"}}});
    not_granted(&hub, &key, &agent, elsewhere, "browser:elsewhere")?;

    // Revoked while the agent runs: the next job is refused, without a restart.
    let (ok, out) = agent.oneshot(&["consent", "revoke", "http_request"])?;
    assert!(ok && out.contains("revoked: http_request"), "{out}");
    not_granted(&hub, &key, &agent, http_job(CREATOR, &site.url("/hello")), "http_request")?;
    agent.shutdown();
    Ok(())
}

#[test]
fn a_capability_that_does_not_exist_is_refused_with_the_list() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-consent-bad")?;
    let agent = Agent::new(&bins, "e2e-consent-bad", "auto", &dir.path().join("agent"));
    for (name, needle) in [("proxy", "the capabilities are"), ("browser:*", "no browser:* on purpose")] {
        let (ok, out) = agent.oneshot(&["consent", "grant", name])?;
        assert!(!ok && out.contains(needle), "{name}: {out}");
    }
    let (ok, out) = agent.oneshot(&["consent", "show"])?;
    assert!(ok && out.contains("granted: nothing"), "a refused grant records nothing: {out}");
    Ok(())
}
