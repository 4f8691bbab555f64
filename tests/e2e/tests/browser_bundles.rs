//! Browser flows shipped in a signed bundle, end to end: real hub, real `edge-agent`, real
//! Chromium, the local test site counting messages on its side. The operator publishes a
//! `browser` bundle (adapter + flow document) with `edge-hub bundle publish`; the agent
//! verifies, downloads and unpacks it and:
//! - runs its flow document through the `browser` bundle runtime for a `bundle` job (`args`
//!   become flow parameters; `dryRun=true` sends nothing);
//! - loads a browser job's adapter from it (`{"bundle","version","path"}`), after which
//!   `edge-agent browser login --site NAME` opens that site and says it comes from the bundle.

use anyhow::{Context, Result};
use edge_browser::testsite::Site;
use edge_e2e::{scratch_dir, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

const CREATOR: &str = "creator-browser-bundles";
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_signed_browser_bundle_runs_its_flow_and_lends_its_adapter() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-browser-bundles")?;
    let site = Site::start()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let root_dir = dir.path().join("root-keys");
    hub.bundle_cli(&["keys", "init", "--root-dir", root_dir.to_str().context("utf-8 path")?])?;

    // The bundle: the site's adapter and a flow document running the built-in send_dm.
    let src = dir.path().join("fanhub-src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("adapter.yaml"), site.adapter_yaml())?;
    std::fs::write(
        src.join("flow.json"),
        serde_json::to_vec(
            &json!({"adapter": "adapter.yaml", "flow": "send_dm", "params": {"text": "from the bundle"}}),
        )?,
    )?;
    let published = hub.bundle_cli(&[
        "publish",
        "--tenant",
        CREATOR,
        "--name",
        "fanhub-flows",
        "--version",
        "1.0.0",
        "--runtime",
        "browser",
        src.to_str().context("utf-8 path")?,
    ])?;
    assert_eq!(published["entrypoint"], "flow.json", "{published}");

    let mut agent =
        Agent::new(&bins, &format!("e2e-browser-bundles-{}", std::process::id()), "auto", &dir.path().join("agent"));
    agent.login(&hub.url, &hub.enroll_token(CREATOR)?)?;
    agent.grant(&["bundle", "browser:fanhub"])?;
    // The local site, granted as its person would; the egress gate stays on.
    agent.allow_egress(&site.base_url);
    // Log in to the site once (scripted: the auto-login page); the bundle's adapter has the
    // same site name, so its jobs reuse the saved session.
    agent.browser_login_headless(&site.auto_login_adapter())?;
    let env = [
        ("EDGE_AGENT_BROWSER_PACING_MS", "0-0"),
        ("EDGE_AGENT_BROWSER_TYPING_MS", "1-3"),
        ("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "0-0"),
    ];
    agent.run_with_env(&["--hb-interval-secs", "1"], &env)?;
    hub.wait_agent_online(&key, agent.agent_id(), TIMEOUT)?;
    let finish = |job: Value| -> Result<Value> {
        let id = job["id"].as_str().context("job id")?;
        hub.wait_job_done(&key, id, TIMEOUT).map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))
    };

    // A `bundle` job: the browser runtime runs the bundle's flow document; `args` are params.
    let done = finish(hub.submit_job(
        &key,
        &json!({"type": "bundle", "creatorId": CREATOR,
                "payload": {"bundle": "fanhub-flows", "version": "latest", "args": ["recipient=bundlefan"]}}),
    )?)?;
    assert_eq!(done["status"], "succeeded", "{done}\nagent log:\n{}", agent.run_log());
    assert_eq!(done["result"]["bundle"], "fanhub-flows", "{done}");
    assert_eq!(done["result"]["version"], "1.0.0", "{done}");
    assert_eq!(done["result"]["exitCode"], 0, "{done}");
    let output: Value = serde_json::from_str(done["result"]["stdout"].as_str().context("stdout")?)?;
    assert_eq!(output["flow"], "send_dm", "{output}");
    assert_eq!(output["dryRun"], false, "{output}");
    assert!(output["stepsRun"].as_u64().unwrap_or(0) > 0, "{output}");
    assert_eq!(site.messages_to("bundlefan"), vec!["from the bundle".to_owned()]);

    // `dryRun=true` among the args: everything but the submit, nothing reaches the site.
    let done = finish(hub.submit_job(
        &key,
        &json!({"type": "bundle", "creatorId": CREATOR,
                "payload": {"bundle": "fanhub-flows", "args": ["recipient=dryfan", "dryRun=true"]}}),
    )?)?;
    assert_eq!(done["status"], "succeeded", "{done}");
    let output: Value = serde_json::from_str(done["result"]["stdout"].as_str().context("stdout")?)?;
    assert_eq!(output["dryRun"], true, "{output}");
    assert!(!output["skippedSteps"].as_array().cloned().unwrap_or_default().is_empty(), "{output}");
    assert!(site.messages_to("dryfan").is_empty());

    // A browser job whose adapter comes from the verified bundle.
    let done = finish(hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": CREATOR,
                "payload": {"adapter": {"bundle": "fanhub-flows", "version": "1.0.0", "path": "adapter.yaml"},
                            "recipient": "adapterfan", "params": {"text": "adapter from a bundle"}}}),
    )?)?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["sentRecipients"], json!(["adapterfan"]), "{done}");
    assert_eq!(site.messages_to("adapterfan"), vec!["adapter from a bundle".to_owned()]);

    // `browser login --site fanhub` now finds the site through that signed bundle and says
    // so, with the origin it opens, before it opens anything (the bundle's login page waits
    // for a person, so this one gives up at once).
    let (ok, out) = agent.oneshot(&["browser", "login", "--site", "fanhub", "--headless", "--timeout-secs", "1"])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("adapter: adapter.yaml of the signed bundle fanhub-flows 1.0.0 (tenant {CREATOR})"))
            && out.contains(&format!("opens:   {} (its login page)", site.base_url)),
        "{out}"
    );

    // A path outside the bundle is refused before anything runs.
    let done = finish(hub.submit_job(
        &key,
        &json!({"type": "send_dm", "creatorId": CREATOR,
                "payload": {"adapter": {"bundle": "fanhub-flows", "path": "../../../fanhub.json"},
                            "recipient": "escapee", "params": {"text": "never"}}}),
    )?)?;
    assert_eq!(done["error"]["code"], "BAD_PAYLOAD", "{done}");
    assert!(site.messages_to("escapee").is_empty());
    // One login in all: every job ran on the session the login saved.
    assert_eq!(site.logins(), 1);
    agent.shutdown();
    Ok(())
}
