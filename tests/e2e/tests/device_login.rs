//! Device sign-in end to end (issue 20): the real `edge-agent login --device` process against
//! a real `edge-hub serve`, the code approved or denied through the hub's approval API with a
//! creator's API key (as the /device page does), then the agent runs and takes a job. The
//! expiry case uses the hub's hidden short code lifetime rather than waiting 10 minutes.

use anyhow::{Context, Result};
use edge_e2e::{scratch_dir, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

const CREATOR: &str = "creator-device";
const KEYCHAIN: &str = "auto";

fn decide(hub: &Hub, key: &str, path: &str, body: Value) -> Result<Value> {
    let response =
        ureq::post(&format!("{}{path}", hub.url)).set("Authorization", &format!("Bearer {key}")).send_json(body);
    match response {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => anyhow::bail!("HTTP {code}: {}", r.into_string().unwrap_or_default()),
        Err(e) => Err(e.into()),
    }
}

fn setup(name: &str, hub_args: &[&str]) -> Result<(tempfile::TempDir, Hub, Agent)> {
    let dir = scratch_dir(name)?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], hub_args)?;
    let profile = format!("e2e-{name}-{}", std::process::id());
    let agent = Agent::new(&bins, &profile, KEYCHAIN, &dir.path().join("agent"));
    Ok((dir, hub, agent))
}

#[test]
fn a_device_approved_on_the_hub_joins_the_creator_and_runs_a_job() -> Result<()> {
    let (_dir, hub, mut agent) =
        setup("device-approved", &["--hb-interval-secs", "1", "--device-code-interval-secs", "1"])?;
    let creator_key = hub.creator_key(CREATOR)?;
    let login = agent.start_device_login(&hub.url)?;
    let code = login.user_code.clone().with_context(|| format!("no code printed:\n{}", login.output.join("\n")))?;
    let printed = login.output.join("\n");
    assert!(printed.contains(&format!("{}/device", hub.url)), "the page is printed: {printed}");
    assert_eq!(
        login.complete_url.as_deref(),
        Some(format!("{}/device?user_code={code}", hub.url).as_str()),
        "{printed}"
    );

    // What the page shows before approval, then the approval itself.
    let seen = decide(&hub, &creator_key, "/v1/device/lookup", json!({"user_code": code}))?;
    assert_eq!(seen["status"], "pending", "{seen}");
    assert_eq!(seen["creatorId"], CREATOR, "{seen}");
    assert!(seen["version"].as_str().is_some_and(|v| v.starts_with("agent-")), "{seen}");
    let approved = decide(&hub, &creator_key, "/v1/device/approve", json!({"user_code": code, "approve": true}))?;
    assert_eq!(approved["status"], "approved");

    let (ok, out) = login.finish(Duration::from_secs(30))?;
    assert!(ok, "login --device succeeds: {out}");
    assert!(out.contains(&format!("joined creator {CREATOR}")), "{out}");
    let agent_id = out
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("agt_"))
        .with_context(|| format!("no agent id printed: {out}"))?
        .to_owned();
    agent.agent_id = Some(agent_id.clone());

    // The stored credentials work as a token login's do: the agent connects and runs a job.
    let (ok, status) = agent.oneshot(&["status"])?;
    assert!(ok && status.contains(&agent_id), "{status}");
    agent.grant(&["http_request"])?;
    agent.run(&["--hb-interval-secs", "1"])?;
    hub.wait_agent_online(&creator_key, &agent_id, Duration::from_secs(30))
        .map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))?;
    Ok(())
}

#[test]
fn a_denied_device_says_so_and_stores_nothing() -> Result<()> {
    let (_dir, hub, agent) = setup("device-denied", &["--device-code-interval-secs", "1"])?;
    let creator_key = hub.creator_key(CREATOR)?;
    let login = agent.start_device_login(&hub.url)?;
    let code = login.user_code.clone().context("no code printed")?;
    decide(&hub, &creator_key, "/v1/device/approve", json!({"user_code": code, "approve": false}))?;
    let (ok, out) = login.finish(Duration::from_secs(30))?;
    assert!(!ok, "{out}");
    assert!(out.contains("denied on the hub's page"), "{out}");
    let (_, status) = agent.oneshot(&["status"])?;
    assert!(
        status.lines().any(|l| l.starts_with("logged in:") && l.trim_end().ends_with("no")),
        "nothing stored: {status}"
    );
    Ok(())
}

#[test]
fn an_unapproved_code_expires_and_the_agent_says_to_start_again() -> Result<()> {
    let (_dir, hub, agent) =
        setup("device-expired", &["--device-code-ttl-secs", "3", "--device-code-interval-secs", "1"])?;
    let started = std::time::Instant::now();
    let login = agent.start_device_login(&hub.url)?;
    assert!(login.user_code.is_some(), "{}", login.output.join("\n"));
    let (ok, out) = login.finish(Duration::from_secs(30))?;
    assert!(!ok, "{out}");
    assert!(out.contains("expired before it was approved") && out.contains("start the sign-in again"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(15), "stopped at expiry, not later: {:?}", started.elapsed());
    Ok(())
}

#[test]
fn an_unreachable_or_foreign_hub_is_a_sentence_with_what_to_do() -> Result<()> {
    let (_dir, hub, agent) = setup("device-unknown-hub", &[])?;
    // Nothing listens on this port (bound, never listening).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>()?.into())?;
    let port = socket.local_addr()?.as_socket().context("IPv4 address")?.port();
    let login = agent.start_device_login(&format!("http://127.0.0.1:{port}"))?;
    let (ok, out) = login.finish(Duration::from_secs(30))?;
    assert!(!ok, "{out}");
    assert!(out.contains("check the hub's address"), "{out}");
    // An address that answers, but not as a hub offering device sign-in (a path under the
    // hub, where every API call is 404).
    let login = agent.start_device_login(&format!("{}/not-a-hub", hub.url))?;
    let (ok, out) = login.finish(Duration::from_secs(30))?;
    assert!(!ok, "{out}");
    assert!(out.contains("does not offer device sign-in") && out.contains("--token"), "{out}");
    Ok(())
}
