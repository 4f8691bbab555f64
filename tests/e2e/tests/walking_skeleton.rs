//! End to end with real processes: `edge-hub serve` on SQLite, `edge-agent` logged in through
//! the OS keychain (Secret Service in the test desktop session), jobs fetched from a site on
//! 127.0.0.1. Each test has its own hub, database, agent profile and data dir, so they run
//! in parallel.

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use edge_e2e::site::{Site, HELLO_BODY};
use edge_e2e::{http_job, mint_jwt, scratch_dir, ws_close_for_token, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CREATOR: &str = "creator-e2e";
// `auto`: Secret Service inside the desktop session `cargo xtask test` provides, the kernel
// keyring elsewhere.
const KEYCHAIN: &str = "auto";
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);

struct World {
    _dir: tempfile::TempDir,
    hub: Hub,
    agent: Agent,
    key: String,
    site: Site,
}

fn world(name: &str, hub_env: &[(&str, &str)]) -> Result<World> {
    let dir = scratch_dir(name)?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), hub_env, &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let profile = format!("e2e-{name}-{}", std::process::id());
    let mut agent = Agent::new(&bins, &profile, KEYCHAIN, &dir.path().join("agent"));
    let site = Site::start()?;
    // The local site is granted as its person would; the gate refuses everything else local.
    agent.allow_egress(&site.base_url);
    Ok(World { site, _dir: dir, hub, agent, key })
}

impl World {
    fn login_and_run(&mut self) -> Result<()> {
        let token = self.hub.enroll_token(CREATOR)?;
        self.agent.login(&self.hub.url, &token)?;
        self.agent.grant(&["http_request"])?;
        self.agent.run(&["--hb-interval-secs", "1"])?;
        self.wait_online()
    }

    fn wait_online(&self) -> Result<()> {
        self.hub
            .wait_agent_online(&self.key, self.agent.agent_id(), ONLINE_TIMEOUT)
            .map_err(|e| e.context(format!("agent log:\n{}", self.agent.run_log())))
    }

    fn submit(&self, body: Value) -> Result<String> {
        let job = self.hub.submit_job(&self.key, &body)?;
        Ok(job["id"].as_str().expect("job id").to_owned())
    }

    fn finish(&self, id: &str) -> Result<Value> {
        self.hub
            .wait_job_done(&self.key, id, JOB_TIMEOUT)
            .map_err(|e| e.context(format!("agent log:\n{}", self.agent.run_log())))
    }
}

fn body_of(job: &Value) -> Vec<u8> {
    let result = &job["result"];
    let body = result["body"].as_str().expect("result body");
    if result["isBase64Encoded"] == true {
        B64.decode(body).expect("base64 body")
    } else {
        body.as_bytes().to_vec()
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn enroll_login_and_three_jobs_succeed() -> Result<()> {
    let mut w = world("three-jobs", &[])?;
    w.login_and_run()?;

    let get = w.submit(http_job(CREATOR, &w.site.url("/hello")))?;
    let post = w.submit(json!({
        "type": "http_request", "creatorId": CREATOR,
        "payload": { "url": w.site.url("/echo"), "method": "POST",
                     "headers": { "content-type": "application/octet-stream" },
                     "body": B64.encode([0u8, 159, 146, 150, 255]), "timeoutMs": 10_000 }
    }))?;
    let redirect = w.submit(json!({ "type": "http_request", "agentId": w.agent.agent_id(),
                                    "payload": { "url": w.site.url("/redirect") } }))?;

    let get = w.finish(&get)?;
    assert_eq!(get["status"], "succeeded", "{get}");
    assert_eq!(get["result"]["statusCode"], 200);
    assert_eq!(body_of(&get), HELLO_BODY.as_bytes());
    assert_eq!(get["agentId"], w.agent.agent_id());

    let post = w.finish(&post)?;
    assert_eq!(post["status"], "succeeded", "{post}");
    assert_eq!(body_of(&post), [0u8, 159, 146, 150, 255], "binary body must survive both ways");

    let redirect = w.finish(&redirect)?;
    assert_eq!(redirect["result"]["statusCode"], 200, "redirects are followed: {redirect}");
    assert_eq!(body_of(&redirect), HELLO_BODY.as_bytes());
    assert_eq!(w.site.hits("/redirect"), 1);
    assert_eq!(w.site.hits("/hello"), 2, "each job ran exactly once");
    // The first scrape of a fresh hub process counts what happened before it.
    assert_eq!(w.hub.metric(&w.key, "edge_hub_jobs_completed_total")?, 3.0);
    assert_eq!(w.hub.metric(&w.key, "edge_hub_jobs_assigned_total")?, 3.0);

    // `status` reports the running agent without printing the device key.
    let (ok, status) = w.agent.oneshot(&["status"])?;
    assert!(ok, "{status}");
    assert!(status.contains(w.agent.agent_id()), "{status}");
    assert!(status.to_lowercase().contains("online"), "{status}");

    assert!(w.agent.shutdown(), "agent must exit on SIGTERM");
    let (ok, out) = w.agent.oneshot(&["logout"])?;
    assert!(ok, "{out}");
    let (ok, out) = w.agent.oneshot(&["run"])?;
    assert!(!ok, "run after logout must fail");
    assert!(out.to_lowercase().contains("login"), "the error must say to log in: {out}");
    Ok(())
}

#[test]
fn network_failures_and_timeouts_map_to_their_codes() -> Result<()> {
    let mut w = world("errors", &[])?;
    // A port nothing listens on, held bound (never listening) for the whole test: a port
    // bound and closed again could be taken by another test's server meanwhile. Granted, so
    // that what fails is the connection, not the egress gate.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    held.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let closed = held.local_addr()?.as_socket().context("the held port has an IPv4 address")?;
    w.agent.allow_egress(&closed.to_string());
    w.login_and_run()?;
    // Both codes are retried with backoff; one delivery each makes the job dead (the
    // dead-letter list) after the first failure instead of after five.
    let mut refused_job = http_job(CREATOR, &format!("http://{closed}/"));
    refused_job["maxReceiveCount"] = json!(1);
    let refused = w.submit(refused_job)?;
    let slow = w.submit(json!({ "type": "http_request", "creatorId": CREATOR, "maxReceiveCount": 1,
                                "payload": { "url": w.site.url("/slow"), "timeoutMs": 300 } }))?;
    let refused = w.finish(&refused)?;
    assert_eq!(refused["status"], "dead", "{refused}");
    assert_eq!(refused["error"]["code"], "NETWORK", "{refused}");
    let slow = w.finish(&slow)?;
    assert_eq!(slow["status"], "dead", "{slow}");
    assert_eq!(slow["error"]["code"], "NAV_TIMEOUT", "{slow}");
    Ok(())
}

/// The security review's attack, through the public job API: jobs naming this machine's
/// other services (an ungranted local port, IPv6 loopback, the cloud metadata address, the
/// LAN) fail `EGRESS_DENIED` at once, are not retried, and the local service sees nothing.
/// The granted site stays reachable beside them.
#[test]
fn jobs_naming_local_or_lan_addresses_are_refused_by_the_egress_gate() -> Result<()> {
    let mut w = world("egress", &[])?;
    let other = Site::start()?;
    w.login_and_run()?;
    let port = w.site.base_url.rsplit(':').next().unwrap_or_default().to_owned();
    let mut ids = Vec::new();
    for url in [
        other.url("/hello"),
        format!("http://[::1]:{port}/hello"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        ids.push((w.submit(http_job(CREATOR, &url))?, url));
    }
    for (id, url) in ids {
        let done = w.finish(&id)?;
        assert_eq!(done["status"], "failed", "{url}: {done}");
        assert_eq!(done["error"]["code"], "EGRESS_DENIED", "{url}: {done}");
        let message = done["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("refused by the egress gate"), "{url}: {message}");
    }
    assert_eq!(other.total_hits(), 0, "the ungranted local service was never reached");
    let granted = w.finish(&w.submit(http_job(CREATOR, &w.site.url("/hello")))?)?;
    assert_eq!(granted["status"], "succeeded", "{granted}");
    // The person's local log names each refusal (address and rule), written before the result.
    edge_e2e::wait_until(Duration::from_secs(10), || {
        let log = w.agent.run_log();
        Ok(log.contains("egress refused") && log.contains("169.254.169.254:80") && log.contains("cloud metadata"))
    })
    .map_err(|e| e.context(format!("no refusal line in the agent log:\n{}", w.agent.run_log())))?;
    Ok(())
}

#[test]
fn killed_agent_reconnects_and_takes_the_next_job() -> Result<()> {
    let mut w = world("agent-restart", &[])?;
    w.login_and_run()?;
    let first = w.submit(http_job(CREATOR, &w.site.url("/hello")))?;
    assert_eq!(w.finish(&first)?["status"], "succeeded");

    w.agent.kill();
    edge_e2e::wait_until(Duration::from_secs(15), || {
        let agents = w.hub.agents(&w.key)?;
        Ok(agents["agents"].as_array().unwrap().iter().all(|a| a["online"] == false))
    })?;
    let next = w.submit(http_job(CREATOR, &w.site.url("/hello")))?;
    assert_eq!(w.hub.job(&w.key, &next)?["status"], "pending", "no agent online: the job waits");

    w.agent.run(&["--hb-interval-secs", "1"])?;
    w.wait_online()?;
    let next = w.finish(&next)?;
    assert_eq!(next["status"], "succeeded", "{next}");
    assert_eq!(w.site.hits("/hello"), 2);
    Ok(())
}

#[test]
fn pending_job_survives_a_hub_crash() -> Result<()> {
    let mut w = world("hub-restart", &[])?;
    w.login_and_run()?;
    w.agent.kill();
    let pending = w.submit(http_job(CREATOR, &w.site.url("/hello")))?;

    w.hub.kill();
    w.hub.restart()?;
    assert_eq!(w.hub.job(&w.key, &pending)?["status"], "pending");
    w.agent.run(&["--hb-interval-secs", "1"])?;
    let pending = w.finish(&pending)?;
    assert_eq!(pending["status"], "succeeded", "{pending}");

    // The agent rides out a hub crash by itself and takes work from the new process.
    w.hub.kill();
    w.hub.restart()?;
    w.wait_online()?;
    let after = w.submit(http_job(CREATOR, &w.site.url("/hello")))?;
    assert_eq!(w.finish(&after)?["status"], "succeeded");
    assert_eq!(w.site.hits("/hello"), 2, "no job ran twice");
    Ok(())
}

#[test]
fn expired_and_forged_tokens_are_refused() -> Result<()> {
    let secret = "e2e-secret-that-the-test-knows-0123456789";
    let mut w = world("jwt", &[("EDGE_HUB_JWT_SECRET", secret)])?;
    let token = w.hub.enroll_token(CREATOR)?;
    w.agent.login(&w.hub.url, &token)?;
    let agent_id = w.agent.agent_id().to_owned();
    let addr = w.hub.addr().to_owned();

    let expired = mint_jwt(secret.as_bytes(), &agent_id, CREATOR, now() - 30);
    let (code, reason) = ws_close_for_token(&addr, &expired)?;
    assert_eq!(code, 4401, "expired token: {reason}");
    assert!(reason.to_lowercase().contains("expired"), "{reason}");

    let forged = mint_jwt(b"not-the-hub-secret", &agent_id, CREATOR, now() + 600);
    let (code, reason) = ws_close_for_token(&addr, &forged)?;
    assert_eq!(code, 4403, "forged token: {reason}");

    let (code, _) = ws_close_for_token(&addr, "not.a.jwt")?;
    assert_eq!(code, 4403);

    // Control: the same path with a genuine token is served, so the refusals above are
    // about the tokens and nothing else.
    let genuine = mint_jwt(secret.as_bytes(), &agent_id, CREATOR, now() + 600);
    let first = edge_e2e::ws_first_frame(&addr, &genuine)?;
    assert_eq!(first["t"], "hello_ack", "{first}");

    // And the real agent, which gets its tokens by signing a hub nonce, comes online.
    w.agent.run(&["--hb-interval-secs", "1"])?;
    w.wait_online()?;
    Ok(())
}
