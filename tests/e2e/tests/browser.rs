//! Browser jobs end to end: real hub, real `edge-agent`, real Chromium, and the local test
//! site counting messages on its side. Proves: `edge-agent browser login` opens a real window
//! (on a private Xvfb display: no `--headless`, a viewable window of its profile) and fixes
//! LOGIN_REQUIRED, which the agent's status lists until the retry succeeds; dry-run sends
//! nothing; a broadcast killed mid-way resumes after the agent restarts and messages every
//! recipient exactly once; the encrypted session survives the restart; repeated rate limits
//! trip the circuit breaker, which the hub records (`circuitOpenUntil`) and `edge-agent
//! status --json` shows. `edge-agent status` and `edge-agent browser status`, text and JSON,
//! agree on the sites needing a login at every step (also right after a login made from
//! another process while the agent runs) and print the circuit breaker's end as a local
//! RFC 3339 time, not epoch milliseconds. The first agent's jobs name the site adapter its
//! person put in their adapters folder (`{"local": "fanhub"}`); the second agent's person
//! turned inline adapters on (`edge-agent settings inline-adapters on`) and its jobs carry
//! the adapter itself.

use anyhow::Context;
use edge_browser::testsite::Site;
use edge_e2e::xvfb::Xvfb;
use edge_e2e::{procfs, scratch_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn agent_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("EDGE_AGENT_BROWSER_PACING_MS", "0-0"),
        ("EDGE_AGENT_BROWSER_TYPING_MS", "1-3"),
        ("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "200-200"),
        ("EDGE_AGENT_BROWSER_BREAKER", "2,60,20"),
    ]
}

/// `edge-agent browser login` with a window on `xvfb`; `adapter_file` points the login at
/// the site's auto-login page, which fills the form by itself in place of the person.
/// While the command runs, it watches that the window was real: the browser process started
/// without `--headless`, and a viewable window of its profile appeared on this display.
/// (The display is proved by the window, not by the process's environment: Chromium sets its
/// process title over the memory /proc/PID/environ reads, so that reading races the start.)
/// Returns the command's output.
fn browser_login(agent: &Agent, xvfb: &Xvfb, adapter_file: &Path) -> anyhow::Result<String> {
    let profile_dir = agent.data_dir.join("browser").join("login-profiles").join(&agent.profile);
    let profile_arg = format!("--user-data-dir={}", profile_dir.display());
    // Chromium puts a profile dir other than its default into its windows' class name,
    // so this matches the login browser's windows and nothing else.
    let window_class = format!("({})\"", profile_dir.display());
    let site = adapter_file.display().to_string();
    let finished = AtomicBool::new(false);
    let mut browser: Option<Vec<String>> = None;
    let mut window: Option<String> = None;
    let login = std::thread::scope(|scope| -> anyhow::Result<(bool, String)> {
        let login = scope.spawn(|| {
            let result = agent.oneshot_with_env(
                &["browser", "login", "--site", &site, "--timeout-secs", "30"],
                &[("DISPLAY", &xvfb.display)],
            );
            finished.store(true, Ordering::SeqCst);
            result
        });
        while !finished.load(Ordering::SeqCst) {
            if browser.is_none() {
                // The browser itself; its helper processes (renderer, GPU, zygote) carry `--type=`.
                browser = procfs::processes_with_arg(&profile_arg)
                    .into_iter()
                    .find(|(_, args)| !args.iter().any(|a| a.starts_with("--type=")))
                    .map(|(_, args)| args);
            }
            if window.is_none() {
                window = xvfb.viewable_windows(&window_class)?.into_iter().next();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        login.join().map_err(|_| anyhow::anyhow!("the login thread panicked"))?
    });
    let (ok, out) = login?;
    assert!(ok, "browser login failed: {out}");
    let args =
        browser.with_context(|| format!("no browser process with {profile_arg} was seen during the login: {out}"))?;
    assert!(!args.iter().any(|a| a.starts_with("--headless")), "the login browser ran headless: {args:?}");
    window.with_context(|| format!("the login browser showed no window on {}: {out}", xvfb.display))?;
    Ok(out)
}

#[test]
fn browser_jobs_through_hub_and_agent() -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-browser")?;
    let site = Site::start()?;
    let xvfb = Xvfb::start(dir.path())?;
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
    agent.grant(&["browser:fanhub"])?;
    // The local site, granted as its person would; the egress gate stays on.
    agent.allow_egress(&site.base_url);
    agent.install_adapter("fanhub", &site.adapter_yaml())?;
    let env = agent_env();
    agent.run_with_env(&["--hb-interval-secs", "1"], &env)?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))?;
    let adapter = json!({"local": "fanhub"});
    let site_name = json!(site.adapter().name);

    // Logged out: LOGIN_REQUIRED (fatal, not retried).
    let done = hub.run_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipient": "ann", "params": {"text": "hello ann"}}}),
        Duration::from_secs(60),
    )?;
    assert_eq!(done["error"]["code"], json!("LOGIN_REQUIRED"), "{done}");
    assert_eq!(login_required(&agent)?, json!([site_name]));
    assert_eq!(sites_needing_login(&agent)?, json!([site_name]));

    // The login command in a window, then the retry succeeds.
    let login_adapter = site.auto_login_adapter();
    let adapter_file = dir.path().join("fanhub.json");
    std::fs::write(&adapter_file, serde_json::to_vec(&login_adapter)?)?;
    let out = browser_login(&agent, &xvfb, &adapter_file)?;
    assert!(out.contains("\"savedEncrypted\":true"), "{out}");
    // What opened was shown first: the adapter file and the site's origin.
    let shown = format!("adapter: the local file {}", std::fs::canonicalize(&adapter_file)?.display());
    assert!(out.contains(&shown) && out.contains(&format!("opens:   {} (its login page)", site.base_url)), "{out}");
    // The login was made by another process; both status commands know at once.
    assert_eq!(sites_needing_login(&agent)?, json!([]));
    let done = hub.run_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipient": "ann", "params": {"text": "hello ann"}}}),
        Duration::from_secs(60),
    )?;
    assert_eq!(done["status"], json!("succeeded"), "{done}");
    assert_eq!(site.messages_to("ann"), vec!["hello ann".to_owned()]);
    // The login happened in another process: the running agent learns of it from the job.
    assert_eq!(login_required(&agent)?, json!([]));

    // Dry run: nothing reaches the site.
    let done = hub.run_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-b",
        "payload": {"adapter": adapter, "recipient": "dry", "dryRun": true, "params": {"text": "never"}}}),
        Duration::from_secs(60),
    )?;
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
    // The job browser's traffic went through the egress gate's proxy: it is on the meter.
    let (ok, out) = agent.oneshot(&["status", "--json"])?;
    let status: Value = serde_json::from_str(&out).with_context(|| format!("status --json printed {out}"))?;
    let browser_bytes = &status["egress"]["today"]["byCapability"]["browser"];
    assert!(
        browser_bytes["in"].as_u64().unwrap_or(0) > 0 && browser_bytes["out"].as_u64().unwrap_or(0) > 0,
        "no browser bytes crossed the egress gate (ok={ok}): {}",
        status["egress"]
    );

    // Rate limits twice within the window: circuit breaker; the hub records it and the
    // status shows the pause. A second agent, so it has its own DM budget.
    let mut agent =
        Agent::new(&bins, &format!("e2e-browser-b-{}", std::process::id()), "auto", &dir.path().join("agent-b"));
    agent.login(&hub.url, &hub.enroll_token("creator-c")?)?;
    agent.grant(&["browser:fanhub"])?;
    agent.allow_egress(&site.base_url);
    let (ok, out) = agent.oneshot(&["settings", "inline-adapters", "on"])?;
    assert!(ok && out.contains("inline adapters: on"), "{out}");
    let adapter: Value = serde_json::to_value(site.adapter())?;
    browser_login(&agent, &xvfb, &adapter_file)?;
    agent.run_with_env(&["--hb-interval-secs", "1"], &env)?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))?;
    site.set_rate_limit(Some((0, Duration::from_secs(60))));
    let done = hub.run_job(
        &key,
        &json!({"type": "send_dm", "creatorId": "creator-c", "maxReceiveCount": 2,
        "payload": {"adapter": adapter, "recipient": "zed", "params": {"text": "slow down"}}}),
        Duration::from_secs(60),
    )?;
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
    // People read the pause's end as a time in their zone, the same in both commands.
    let until_ms = status["browser"]["circuitOpenUntilMs"].as_i64().context("no circuitOpenUntilMs")?;
    let kolkata = [("TZ", "Asia/Kolkata")];
    let (_, text) = agent.oneshot_with_env(&["status"], &kolkata)?;
    let (_, browser_text) = agent.oneshot_with_env(&["browser", "status"], &kolkata)?;
    let paused = |t: &str| t.lines().find(|l| l.starts_with("browser:")).map(str::to_owned);
    assert_eq!(paused(&text), paused(&browser_text), "{text}\n---\n{browser_text}");
    let line = paused(&text).context("no browser line")?;
    assert!(!line.contains("epoch") && !line.contains(&until_ms.to_string()), "{line}");
    let shown = line.rsplit(' ').next().unwrap_or_default();
    assert!(
        line.starts_with("browser:     paused by the circuit breaker (RATE_LIMITED) until ")
            && shown.ends_with("+05:30"),
        "{line}"
    );
    let instant = edge_browser::runtime::resolve_time(shown, None)?;
    assert_eq!(instant.timestamp_millis(), until_ms / 1000 * 1000, "{line} is not {until_ms} ms");
    let (_, json_text) = agent.oneshot(&["browser", "status", "--json"])?;
    let browser: Value = serde_json::from_str(&json_text)?;
    let utc = browser["circuitOpenUntil"].as_str().context("no circuitOpenUntil")?;
    assert_eq!(edge_browser::runtime::resolve_time(utc, None)?, instant, "{utc}");
    // While open, the hub holds browser jobs back: a job submitted now is first leased only
    // once the circuit's cool-down is over (the hub's own timestamps, so no fixed wait).
    let open_until = agents["agents"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["agentId"] == json!(agent.agent_id())))
        .map(|a| unix_ms(&a["circuitOpenUntil"]))
        .context("the agent's circuitOpenUntil")??;
    site.set_rate_limit(None);
    let job = hub
        .submit_job(&key, &json!({"type": "scrape_subs", "creatorId": "creator-c", "payload": {"adapter": adapter}}))?;
    let job_id = job["id"].as_str().unwrap_or_default().to_owned();
    assert!(unix_ms(&job["createdAt"])? < open_until, "submitted after the circuit closed: {job}");
    assert_eq!(hub.job(&key, &job_id)?["status"], json!("pending"));
    let done = hub.wait_job_done(&key, &job_id, Duration::from_secs(60))?;
    assert_eq!(done["result"]["count"], json!(25), "{done}");
    let attempts = hub.get(&key, &format!("/v1/jobs/{job_id}/attempts"))?;
    let first_lease = unix_ms(&attempts["attempts"][0]["leasedAt"])?;
    assert!(first_lease >= open_until, "leased while the circuit was open: {attempts} (open until {open_until})");
    agent.shutdown();
    Ok(())
}

/// The sites needing a login as `edge-agent status` and `edge-agent browser status` print them,
/// in JSON and in text; fails unless all four agree.
fn sites_needing_login(agent: &Agent) -> anyhow::Result<Value> {
    let json = |args: &[&str]| -> anyhow::Result<Value> {
        let (ok, out) = agent.oneshot(args)?;
        assert!(ok, "{args:?}: {out}");
        serde_json::from_str(&out).with_context(|| format!("{args:?} printed no JSON: {out}"))
    };
    let status = json(&["status", "--json"])?["browser"]["loginRequired"].clone();
    let browser = json(&["browser", "status", "--json"])?["loginRequired"].clone();
    assert_eq!(status, browser, "`status --json` and `browser status --json` disagree");
    let line = |args: &[&str]| -> anyhow::Result<String> {
        let (ok, out) = agent.oneshot(args)?;
        assert!(ok, "{args:?}: {out}");
        out.lines().find(|l| l.starts_with("login needed:")).map(str::to_owned).context(format!("{args:?}: {out}"))
    };
    let text = line(&["status"])?;
    assert_eq!(text, line(&["browser", "status"])?, "`status` and `browser status` disagree");
    let names: Vec<&str> = status.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let expected = if names.is_empty() {
        "login needed: none".to_owned()
    } else {
        format!("login needed: {} (edge-agent browser login --site NAME)", names.join(", "))
    };
    assert_eq!(text, expected);
    Ok(status)
}

/// An RFC 3339 timestamp as the hub writes them, in Unix ms.
fn unix_ms(value: &Value) -> anyhow::Result<i64> {
    let text = value.as_str().with_context(|| format!("not a timestamp: {value}"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("not RFC 3339: {text}"))?.timestamp_millis())
}

/// The sites the running agent's snapshot says need a login (`edge-agent status --json`).
fn login_required(agent: &Agent) -> anyhow::Result<Value> {
    let (ok, status) = agent.oneshot(&["status", "--json"])?;
    assert!(ok, "{status}");
    let status: Value = serde_json::from_str(&status)?;
    Ok(status["state"]["snapshot"]["browser"]["loginRequired"].clone())
}
