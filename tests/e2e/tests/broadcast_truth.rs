//! Issue 18, "jobs that tell the truth", end to end: real hub, real `edge-agent`, real
//! Chromium, and the local test site counting on its side what it received. The review found
//! that a `broadcast_dm` recipient whose send failed with HTTP 429, or was cut by a crash,
//! was reported in `sentRecipients`, never got the message, and the hub's ledger then
//! refused that recipient for 7 days. Now:
//! - the site throttles (429 and its banner) after two sends: the third recipient is not
//!   reported sent; the hub retries after the back-off with the recipients not yet messaged,
//!   and every recipient gets the message exactly once;
//! - the agent is killed (SIGKILL) while a send is at the site, on a site whose adapter
//!   cannot ask whether a message went out: after the restart that recipient is reported in
//!   `uncertainRecipients` only, is not messaged again, and the hub lists it as uncertain
//!   without refusing it for the cool-off.
//! - the same for `send_dm` (one recipient): killed while its send is at the site, the job
//!   fails `SEND_UNCERTAIN`, is never delivered again by the hub, the recipient is not
//!   messaged twice and the hub lists it as uncertain.

use anyhow::{Context, Result};
use edge_browser::testsite::Site;
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);
const QUICK: [(&str, &str); 3] = [
    ("EDGE_AGENT_BROWSER_PACING_MS", "0-0"),
    ("EDGE_AGENT_BROWSER_TYPING_MS", "1-2"),
    ("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "0-0"),
];

/// An agent of `creator` logged in to the site (headless, the site's auto-login page) with
/// `adapter_yaml` as its local adapter `fanhub`, running. Each agent has its own DM budget
/// (5 at once by default, which the person can only lower).
fn start_agent(
    bins: &Binaries,
    dir: &std::path::Path,
    hub: &Hub,
    key: &str,
    site: &Site,
    creator: &str,
) -> Result<Agent> {
    let mut agent = Agent::new(bins, &format!("{creator}-{}", std::process::id()), "auto", &dir.join(creator));
    agent.login(&hub.url, &hub.enroll_token(creator)?)?;
    agent.grant(&["browser:fanhub"])?;
    agent.allow_egress(&site.base_url);
    let without_check = site.adapter_yaml().replace("  sentMessage: \"#thread .message\"\n", "");
    assert_ne!(without_check, site.adapter_yaml(), "the test site's adapter changed: update this test");
    agent.install_adapter("fanhub", &without_check)?;
    agent.browser_login_headless(&site.auto_login_adapter())?;
    agent.run_with_env(&["--hb-interval-secs", "1"], &QUICK)?;
    hub.wait_agent_online(key, agent.agent_id(), TIMEOUT)?;
    Ok(agent)
}

fn broadcast(creator: &str, recipients: &[&str], text: &str) -> Value {
    json!({"type": "broadcast_dm", "creatorId": creator,
           "payload": {"adapter": {"local": "fanhub"}, "recipients": recipients, "params": {"text": text}}})
}

/// A hub with short leases for `job_type` (4 s) and quick retries, so a killed agent's job
/// comes back within the test.
fn quick_hub(bins: &Binaries, dir: &std::path::Path, job_type: &str) -> Result<Hub> {
    let visibility = format!("{job_type}=4");
    Hub::start(
        bins,
        &dir.join("hub"),
        &[],
        &["--hb-interval-secs", "1", "--job-visibility", &visibility, "--retry-base-ms", "200"],
    )
}

fn counts(site: &Site, recipients: &[&str]) -> Vec<usize> {
    recipients.iter().map(|r| site.messages_to(r).len()).collect()
}

#[test]
fn a_throttled_send_is_retried_and_a_send_cut_by_a_kill_is_uncertain_not_sent() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-broadcast-truth")?;
    let site = Site::start()?;
    let hub = quick_hub(&bins, dir.path(), "broadcast_dm")?;
    let key = hub.api_key()?;

    // 1. The site throttles after two sends.
    let creator = "creator-truth-throttled";
    let mut agent = start_agent(&bins, dir.path(), &hub, &key, &site, creator)?;
    site.set_rate_limit(Some((2, Duration::from_secs(60))));
    let fans = ["thr1", "thr2", "thr3", "thr4"];
    let job = hub.submit_job(&key, &broadcast(creator, &fans, "hello, slowly"))?;
    let id = job["id"].as_str().context("job id")?.to_owned();
    wait_until(TIMEOUT, || Ok(site.rate_limited_count() >= 1))
        .map_err(|e| e.context(format!("the site never throttled; agent log:\n{}", agent.run_log())))?;
    site.set_rate_limit(None);
    let done = hub.wait_job_done(&key, &id, TIMEOUT).map_err(|e| e.context(agent.run_log()))?;
    assert_eq!(done["status"], "succeeded", "{done}\nagent log:\n{}", agent.run_log());
    assert_eq!(counts(&site, &fans), [1, 1, 1, 1], "each recipient exactly once");
    assert_eq!(done["result"]["sentRecipients"], json!(fans), "{done}");
    assert_eq!(done["result"]["uncertainRecipients"], json!([]), "{done}");
    // The retry carried only the recipients the first delivery did not reach.
    assert_eq!(done["payload"]["recipients"], json!(["thr3", "thr4"]), "{done}");
    let attempts = hub.get(&key, &format!("/v1/jobs/{id}/attempts"))?;
    let first = &attempts["attempts"][0];
    assert_eq!(first["error"]["code"], "RATE_LIMITED", "{attempts}");
    agent.shutdown();

    // 2. Killed while a send is at the site, which cannot be asked afterwards.
    let creator = "creator-truth-killed";
    let mut agent = start_agent(&bins, dir.path(), &hub, &key, &site, creator)?;
    site.set_send_delay(Duration::from_millis(1500));
    let fans = ["kill1", "kill2", "kill3"];
    let received_before = site.sends_received();
    let job = hub.submit_job(&key, &broadcast(creator, &fans, "hello, interrupted"))?;
    let id = job["id"].as_str().context("job id")?.to_owned();
    // kill1 was confirmed; kill2's send has reached the site and waits there.
    wait_until(TIMEOUT, || Ok(site.sends_received() >= received_before + 2))
        .map_err(|e| e.context(format!("the second send never reached the site; agent log:\n{}", agent.run_log())))?;
    agent.kill();
    site.set_send_delay(Duration::ZERO);
    agent.run_with_env(&["--hb-interval-secs", "1"], &QUICK)?;
    let done = hub.wait_job_done(&key, &id, TIMEOUT).map_err(|e| e.context(agent.run_log()))?;
    assert_eq!(done["status"], "succeeded", "{done}\nagent log:\n{}", agent.run_log());
    assert_eq!(done["result"]["sentRecipients"], json!(["kill1", "kill3"]), "{done}");
    assert_eq!(done["result"]["uncertainRecipients"], json!(["kill2"]), "{done}");
    let delivered = counts(&site, &fans);
    assert_eq!((delivered[0], delivered[2]), (1, 1), "{delivered:?}");
    assert!(delivered[1] <= 1, "kill2 was messaged again on a guess: {delivered:?}");
    agent.shutdown();

    // The hub lists kill2 for the operator and does not refuse it; kill1 is refused.
    let listed = hub.get(&key, &format!("/v1/creators/{creator}/uncertain-recipients"))?;
    let recipients = listed["recipients"].as_array().context("recipients")?;
    assert_eq!(recipients.len(), 1, "{listed}");
    assert_eq!(
        (recipients[0]["recipient"].as_str(), recipients[0]["jobId"].as_str()),
        (Some("kill2"), Some(id.as_str()))
    );
    let again = hub.submit_job(&key, &broadcast(creator, &["kill1", "kill2"], "hello again"))?;
    assert_eq!(again["payload"]["recipients"], json!(["kill2"]), "{again}");
    assert_eq!(again["skippedRecipients"][0]["recipient"], "kill1", "{again}");
    Ok(())
}

#[test]
fn a_send_dm_cut_by_a_kill_fails_send_uncertain_and_is_not_sent_again() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-send-dm-truth")?;
    let site = Site::start()?;
    let hub = quick_hub(&bins, dir.path(), "send_dm")?;
    let key = hub.api_key()?;
    let creator = "creator-truth-send-dm";
    let mut agent = start_agent(&bins, dir.path(), &hub, &key, &site, creator)?;
    site.set_send_delay(Duration::from_millis(1500));
    let received_before = site.sends_received();
    let job = hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": creator,
                "payload": {"adapter": {"local": "fanhub"}, "recipient": "solo1", "params": {"text": "hello, cut"}}}),
    )?;
    let id = job["id"].as_str().context("job id")?.to_owned();
    // The send has reached the site and waits there: the agent dies mid-send.
    wait_until(TIMEOUT, || Ok(site.sends_received() > received_before))
        .map_err(|e| e.context(format!("the send never reached the site; agent log:\n{}", agent.run_log())))?;
    agent.kill();
    site.set_send_delay(Duration::ZERO);
    // The restarted agent resumes the job from its checkpoint. (Before send_dm had one, the
    // job stayed `running` for ever: the restarted agent, under the same agent id, kept its
    // lease alive with its heartbeats and knew nothing of the job.)
    agent.run_with_env(&["--hb-interval-secs", "1"], &QUICK)?;
    let done = hub.wait_job_done(&key, &id, TIMEOUT).map_err(|e| e.context(agent.run_log()))?;
    assert_eq!(done["status"], "failed", "{done}\nagent log:\n{}", agent.run_log());
    assert_eq!(done["error"]["code"], "SEND_UNCERTAIN", "{done}");
    // The restarted agent (resuming from its checkpoint, or given the job again when the
    // lease ran out) did not send it again, and the hub does not retry it.
    let attempts = hub.get(&key, &format!("/v1/jobs/{id}/attempts"))?;
    let attempts = attempts["attempts"].as_array().context("attempts")?.clone();
    assert!(attempts.len() <= 2, "{attempts:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hub.job(&key, &id)?["status"], "failed", "not retried");
    assert!(site.messages_to("solo1").len() <= 1, "solo1 was messaged again on a guess");
    assert_eq!(site.sends_received(), received_before + 1, "exactly one send reached the site");
    agent.shutdown();

    let listed = hub.get(&key, &format!("/v1/creators/{creator}/uncertain-recipients"))?;
    let recipients = listed["recipients"].as_array().context("recipients")?;
    assert_eq!(recipients.len(), 1, "{listed}");
    assert_eq!(
        (recipients[0]["recipient"].as_str(), recipients[0]["jobId"].as_str()),
        (Some("solo1"), Some(id.as_str()))
    );
    Ok(())
}
