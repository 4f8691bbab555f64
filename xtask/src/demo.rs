//! `cargo xtask demo`: the whole product on one machine, for real. Builds the hub and the
//! headless agent, starts the hub on a temporary SQLite file, publishes a signed bundle,
//! enrolls and logs in an agent through the OS keychain, runs three `http_request` jobs
//! against a page served on 127.0.0.1, the signed bundle, and (when Chromium is installed) a
//! browser flow against a local creator-site look-alike; prints each result as the hub
//! recorded it, and shuts everything down.

use crate::util::{cargo, checked, have, root};
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

    step("creating the bundle repository's root keys and publishing a signed shell bundle");
    let bundle = hub.publish_shell_bundle(
        CREATOR,
        "hello",
        "1.0.0",
        "echo \"hello from a signed bundle, $1 (run $EDGE_RUN_ID)\"\n",
    )?;
    println!("   root keys in {} (kept offline by the operator)", bundle.root_dir.display());
    println!("   root fingerprint: {}", bundle.root_fingerprint);
    println!("   published {}", bundle.published["target"].as_str().unwrap_or("?"));

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

    // The demo's local sites are on 127.0.0.1, which the egress gate refuses unless the
    // person allows it: the demo allows exactly those two addresses and says so.
    let browser_site = edge_browser::testsite::Site::start()?;
    agent.allow_egress(&site.base_url).allow_egress(&browser_site.base_url);
    step(&format!("starting `edge-agent run --allow-egress {}`", agent.allow_egress.join(" --allow-egress ")));
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

    step("running the signed bundle (the agent verifies TUF metadata, SHA-256 and expiry first)");
    let job = hub.submit_job(
        &key,
        &json!({ "type": "bundle", "creatorId": CREATOR,
                 "payload": { "bundle": "hello", "version": "latest", "args": ["demo"] } }),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().context("job id")?, Duration::from_secs(60))?;
    if done["status"] != "succeeded" {
        failures += 1;
    }
    print_job("signed shell bundle", &done);

    failures += browser_flow(&hub, &key, &agent, &browser_site)?;

    step("shutting down");
    let agent_clean = agent.shutdown();
    let (_, out) = agent.oneshot(&["logout"])?;
    println!("   agent stopped{}; {}", if agent_clean { " cleanly" } else { " (had to be killed)" }, out.trim());
    let hub_clean = hub.shutdown();
    println!("   hub stopped{}", if hub_clean { " cleanly" } else { " (had to be killed)" });
    if failures > 0 {
        bail!("{failures} demo job(s) did not succeed; logs are in the lines above");
    }
    println!("\ndemo finished: every job ran on this machine and was recorded by the hub.");
    Ok(())
}

/// A `send_dm` browser flow against the local creator-site look-alike, in the Chromium
/// installed on this machine. Returns the number of failed jobs (0 when skipped).
fn browser_flow(hub: &Hub, key: &str, agent: &Agent, site: &edge_browser::testsite::Site) -> Result<u32> {
    if !["chromium", "chromium-browser", "google-chrome", "microsoft-edge"].iter().any(|b| have(b)) {
        step("skipping the browser flow: no Chrome, Chromium or Edge here (Debian: apt-get install chromium)");
        return Ok(0);
    }
    step("a browser flow: send_dm on a local creator site, in this machine's Chromium");
    println!("   creator site look-alike: {}", site.url("/"));
    // A person logs in once in a visible browser window (`edge-agent browser login`); the
    // demo site's auto-login page stands in for them, so this runs headless.
    let mut login = site.adapter();
    login.urls.insert("login".into(), "/login?auto=1".into());
    let adapter_file = agent.data_dir.join("demo-site-adapter.json");
    std::fs::write(&adapter_file, serde_json::to_vec_pretty(&login)?)?;
    let (ok, out) = agent.oneshot(&["browser", "login", "--site", path_str(&adapter_file)?, "--headless"])?;
    if !ok {
        bail!("browser login failed: {out}");
    }
    println!("   logged in to the site; the session is saved encrypted (key in the keychain)");
    // Jobs name a site adapter the person keeps in their adapters folder (or one of a signed
    // bundle); the agent takes none sent inside a job unless the person allows it.
    let adapters = agent.data_dir.join("adapters");
    std::fs::create_dir_all(&adapters)?;
    std::fs::write(adapters.join("fanhub.yaml"), site.adapter_yaml())?;
    println!("   the site's adapter is the person's own: {}", adapters.join("fanhub.yaml").display());
    let job = hub.submit_job(
        key,
        &json!({ "type": "send_dm", "creatorId": CREATOR, "payload": {
            "adapter": {"local": "fanhub"}, "recipient": "ann",
            "params": { "text": "Hi Ann, thanks for subscribing!" } } }),
    )?;
    let done = hub.wait_job_done(key, job["id"].as_str().context("job id")?, Duration::from_secs(90))?;
    print_job("send_dm through the browser", &done);
    println!("   the site received for ann: {:?}", site.messages_to("ann"));
    Ok(u32::from(done["status"] != "succeeded" || site.messages_to("ann").len() != 1))
}

fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str().context("a temp path that is not UTF-8")
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
