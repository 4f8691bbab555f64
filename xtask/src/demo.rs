//! `cargo xtask demo`: the whole product on one machine, for real. Builds the hub and the
//! headless agent, starts the hub on a temporary SQLite file, enrolls and logs in an agent
//! through the OS keychain, runs three `http_request` jobs against a page served on
//! 127.0.0.1, prints each result as the hub recorded it, and shuts everything down.

use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use edge_e2e::site::Site;
use edge_e2e::{http_job, scratch_dir, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

const CREATOR: &str = "demo-creator";

pub fn run() -> Result<()> {
    step("building edge-hub and edge-agent");
    checked(cargo().args(["build", "--quiet", "-p", "edge-hub", "-p", "edge-agent"]))?;
    let target = root().join("target/debug");
    let bins = Binaries { hub: target.join("edge-hub"), agent: target.join("edge-agent") };

    let dir = scratch_dir("demo")?;
    step("starting the hub on a temporary SQLite database");
    let mut hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "5"])?;
    println!("   hub: {}  database: {}", hub.url, hub.database_url);
    let site = Site::start()?;
    println!("   demo site: {}", site.base_url);

    step("creating an enrollment token and an operator API key");
    let token = hub.enroll_token(CREATOR)?;
    let key = hub.api_key()?;
    // Secrets are never echoed, not even in part.
    println!("   enrollment token for {CREATOR} created (single use, expires in 24 h)");

    let (keychain, why) = choose_keychain();
    step(&format!("logging a headless agent in (keychain: {keychain}, {why})"));
    let profile = format!("demo-{}", std::process::id());
    let mut agent = Agent::new(&bins, &profile, keychain, &dir.path().join("agent"));
    let login = agent
        .login(&hub.url, &token)
        .context("agent login failed; if the keychain is the problem, the message above says what to install")?;
    for line in login.lines() {
        println!("   {line}");
    }

    step("starting `edge-agent run`");
    agent.run(&["--hb-interval-secs", "5"])?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))
        .with_context(|| format!("agent log:\n{}", agent.run_log()))?;
    println!("   agent {} is online", agent.agent_id());

    step("submitting three http_request jobs");
    let jobs = [
        ("GET a page", http_job(CREATOR, &site.url("/hello"))),
        (
            "POST a body and get it echoed",
            json!({ "type": "http_request", "creatorId": CREATOR, "payload": {
                "url": site.url("/echo"), "method": "POST",
                "headers": { "content-type": "text/plain" },
                "body": B64.encode("hello, hub"), "timeoutMs": 10_000 } }),
        ),
        ("follow a redirect", http_job(CREATOR, &site.url("/redirect"))),
    ];
    let mut failures = 0;
    for (what, body) in jobs {
        let submitted = hub.submit_job(&key, &body)?;
        let id = submitted["id"].as_str().context("hub answered without a job id")?.to_owned();
        let done = hub.wait_job_done(&key, &id, Duration::from_secs(30))?;
        if done["status"] != "succeeded" {
            failures += 1;
        }
        print_job(what, &done);
    }

    step("shutting down");
    let agent_clean = agent.shutdown();
    let (_, out) = agent.oneshot(&["logout"])?;
    println!("   agent stopped{}; {}", if agent_clean { " cleanly" } else { " (had to be killed)" }, out.trim());
    let hub_clean = hub.shutdown();
    println!("   hub stopped{}", if hub_clean { " cleanly" } else { " (had to be killed)" });
    if failures > 0 {
        bail!("{failures} demo job(s) did not succeed; logs are in the lines above");
    }
    println!("\ndemo finished: 3 jobs ran on this machine's network and were recorded by the hub.");
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}

/// The desktop keychain when a session bus exists, else the kernel keyring, which needs no
/// daemon and so works on servers and in containers.
fn choose_keychain() -> (&'static str, &'static str) {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        ("auto", "a desktop session bus is present, so Secret Service is tried first")
    } else {
        ("kernel", "no desktop session bus here, so the Linux kernel keyring holds the credentials")
    }
}

fn print_job(what: &str, job: &Value) {
    println!("\n   {what}: job {} {}", job["id"].as_str().unwrap_or("?"), job["status"].as_str().unwrap_or("?"));
    let mut shown = job.clone();
    // The body is base64 in the record; show it decoded as well so a person can read it.
    if let Some(body) = job["result"]["body"].as_str() {
        let text = if job["result"]["isBase64Encoded"] == true {
            B64.decode(body).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
        } else {
            Some(body.to_owned())
        };
        if let Some(text) = text {
            shown["result"]["bodyDecoded"] = Value::String(text);
        }
    }
    let pretty = serde_json::to_string_pretty(&shown).unwrap_or_default();
    for line in pretty.lines() {
        println!("   {line}");
    }
}
