//! Browser jobs end to end: real hub, real `edge-agent`, real Chromium, and the local test
//! site counting messages on its side. Proves: the headful-login command (scripted, headless
//! here; `--headless` only drops the window flag) fixes LOGIN_REQUIRED and the job then
//! succeeds on retry; dry-run sends nothing; a broadcast killed mid-way resumes after the
//! agent restarts and messages every recipient exactly once; the encrypted session survives
//! the restart; repeated rate limits trip the circuit breaker, which the hub records
//! (`circuitOpenUntil`) and `edge-agent status --json` shows.

use edge_browser::testsite::Site;
use edge_e2e::{scratch_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

fn agent_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("EDGE_AGENT_BROWSER_PACING_MS", "0-0"),
        ("EDGE_AGENT_BROWSER_TYPING_MS", "1-3"),
        ("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "200-200"),
        ("EDGE_AGENT_BROWSER_BREAKER", "2,60,20"),
    ]
}

#[test]
fn browser_jobs_through_hub_and_agent() -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-browser")?;
    let site = Site::start()?;
    let hub = Hub::start(
        &bins,
        &dir.path().join("hub"),
        &[],
        &["--job-visibility", "broadcast_dm=4", "--retry-base-ms", "200"],
    )?;
    let key = hub.api_key()?;
    let mut agent =
        Agent::new(&bins, &format!("e2e-browser-{}", std::process::id()), "auto", &dir.path().join("agent"));
    agent.login(&hub.url, &hub.enroll_token("creator-b")?)?;
    let env = agent_env();
    agent.run_with_env(&["--hb-interval-secs", "1"], &env)?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))?;
    let adapter: Value = serde_json::to_value(site.adapter())?;

    // Logged out: LOGIN_REQUIRED (fatal, not retried).
    let job = hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipient": "ann", "params": {"text": "hello ann"}}}),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().unwrap_or_default(), Duration::from_secs(60))?;
    assert_eq!(done["error"]["code"], json!("LOGIN_REQUIRED"), "{done}");

    // The login command (scripted: the site's auto-login page), then the retry succeeds.
    let mut login_adapter = site.adapter();
    login_adapter.urls.insert("login".into(), "/login?auto=1".into());
    let adapter_file = dir.path().join("fanhub.json");
    std::fs::write(&adapter_file, serde_json::to_vec(&login_adapter)?)?;
    let (ok, out) = agent.oneshot(&[
        "browser",
        "login",
        "--site",
        &adapter_file.display().to_string(),
        "--headless",
        "--timeout-secs",
        "30",
    ])?;
    assert!(ok, "{out}");
    assert!(out.contains("\"savedEncrypted\":true"), "{out}");
    let job = hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipient": "ann", "params": {"text": "hello ann"}}}),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().unwrap_or_default(), Duration::from_secs(60))?;
    assert_eq!(done["status"], json!("succeeded"), "{done}");
    assert_eq!(site.messages_to("ann"), vec!["hello ann".to_owned()]);

    // Dry run: nothing reaches the site.
    let job = hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipient": "dry", "dryRun": true, "params": {"text": "never"}}}),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().unwrap_or_default(), Duration::from_secs(60))?;
    assert_eq!(done["status"], json!("succeeded"), "{done}");
    assert!(site.messages_to("dry").is_empty());

    // Broadcast, killed mid-way (SIGKILL), resumed after restart: exactly once each.
    site.set_send_delay(Duration::from_millis(600));
    // (Three recipients: with the sends above that is the default burst of 5 DMs.)
    let fans: Vec<String> = (1..=3).map(|i| format!("bfan{i}")).collect();
    let job = hub.submit_job(
        &key,
        &json!({"type": "broadcast_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipients": fans, "params": {"text": "broadcast!"}}}),
    )?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    wait_until(Duration::from_secs(60), || Ok(site.counts_of(&fans).values().sum::<usize>() >= 1))?;
    agent.kill();
    let sent_before = site.counts_of(&fans).values().sum::<usize>();
    assert!(sent_before < 3, "the broadcast finished before the kill; make the site slower");
    site.set_send_delay(Duration::ZERO);
    agent.run_with_env(&["--hb-interval-secs", "1"], &env)?;
    let done = hub.wait_job_done(&key, &id, Duration::from_secs(90))?;
    assert_eq!(done["status"], json!("succeeded"), "{done}");
    let counts = site.counts_of(&fans);
    assert!(counts.values().all(|n| *n == 1), "every recipient exactly once: {counts:?}");
    assert_eq!(done["result"]["sentRecipients"].as_array().map(Vec::len), Some(3), "{done}");
    // The session came back from the encrypted file after the restart: no new login.
    assert_eq!(site.logins(), 1);

    agent.shutdown();

    // Rate limits twice within the window: circuit breaker; the hub records it and the
    // status shows the pause. A second agent, so it has its own DM budget.
    let mut agent =
        Agent::new(&bins, &format!("e2e-browser-b-{}", std::process::id()), "auto", &dir.path().join("agent-b"));
    agent.login(&hub.url, &hub.enroll_token("creator-c")?)?;
    let (ok, out) = agent.oneshot(&[
        "browser",
        "login",
        "--site",
        &adapter_file.display().to_string(),
        "--headless",
        "--timeout-secs",
        "30",
    ])?;
    assert!(ok, "{out}");
    agent.run_with_env(&["--hb-interval-secs", "1"], &env)?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))?;
    site.set_rate_limit(Some((0, Duration::from_secs(60))));
    let job = hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-c", "maxReceiveCount": 2,
        "payload": {"adapter": adapter, "recipient": "zed", "params": {"text": "slow down"}}}),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().unwrap_or_default(), Duration::from_secs(60))?;
    assert_eq!(done["error"]["code"], json!("RATE_LIMITED"), "{done}");
    let mut agents = Value::Null;
    wait_until(Duration::from_secs(10), || {
        agents = hub.agents(&key)?;
        let list = agents["agents"].as_array().cloned().unwrap_or_default();
        Ok(list.iter().any(|a| a["agentId"] == json!(agent.agent_id()) && a["circuitOpenUntil"].is_string()))
    })?;
    let (_, status) = agent.oneshot(&["status", "--json"])?;
    let status: Value = serde_json::from_str(&status)?;
    assert!(status["state"]["snapshot"]["browser"]["circuitOpenUntilMs"].is_number(), "{status}");
    // While open, the hub holds browser jobs back (the job stays pending).
    site.set_rate_limit(None);
    let job = hub
        .submit_job(&key, &json!({"type": "scrape_subs", "creatorId": "creator-c", "payload": {"adapter": adapter}}))?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hub.job(&key, job["id"].as_str().unwrap_or_default())?["status"], json!("pending"));
    let done = hub.wait_job_done(&key, job["id"].as_str().unwrap_or_default(), Duration::from_secs(60))?;
    assert_eq!(done["result"]["count"], json!(25), "{done}");
    agent.shutdown();
    Ok(())
}
