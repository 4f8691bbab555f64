//! The security review's three browser and file attacks, end to end the way an attacker holding
//! an API key would make them: jobs through the real hub to a real `edge-agent` driving real
//! Chromium, against the local test site (a second one on another port plays the attacker's
//! site). Each fails without the confinement:
//! - a `scrape_subs` adapter whose subscribers page is `file:///etc/passwd` returned the file's
//!   lines; now the job fails `POLICY_VIOLATION` whichever way the adapter arrives (inline,
//!   from a signed bundle, or with the URL rendered from a parameter), and nothing of the file
//!   is in any answer;
//! - `params.mediaPaths` took any absolute path and uploaded the file to the job's site; now
//!   only files of the uploads folder the person chose (`edge-agent settings uploads-dir`)
//!   go, a link leaving it and `..` are refused, and nothing else reaches the site;
//! - an inline adapter was saved over the stored one of the same name, so a later `edge-agent
//!   browser login --site NAME` opened the login page the job's author chose; now inline
//!   adapters are refused unless the person allows them, are never stored, adapters a job
//!   left before this release are moved aside, and the login shows which adapter and origin
//!   it opens before opening anything (an adapter whose login page is off its origins is
//!   refused).

use anyhow::{Context, Result};
use edge_browser::testsite::Site;
use edge_e2e::{scratch_dir, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const QUICK: [(&str, &str); 3] = [
    ("EDGE_AGENT_BROWSER_PACING_MS", "0-0"),
    ("EDGE_AGENT_BROWSER_TYPING_MS", "1-2"),
    ("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "0-0"),
];

/// A hub, and an agent of `creator` running with quick pacing, its person allowing the
/// local sites at `grants` (base URLs) through the egress gate.
fn hub_and_agent(
    bins: &Binaries,
    dir: &std::path::Path,
    creator: &str,
    grants: &[&str],
) -> Result<(Hub, String, Agent)> {
    let hub = Hub::start(bins, &dir.join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let agent = start_agent(bins, dir, &hub, &key, creator, grants)?;
    Ok((hub, key, agent))
}

fn start_agent(
    bins: &Binaries,
    dir: &std::path::Path,
    hub: &Hub,
    key: &str,
    creator: &str,
    grants: &[&str],
) -> Result<Agent> {
    let mut agent = Agent::new(bins, &format!("{creator}-{}", std::process::id()), "auto", &dir.join("agent"));
    for grant in grants {
        agent.allow_egress(grant);
    }
    agent.login(&hub.url, &hub.enroll_token(creator)?)?;
    // The sites these tests drive: what is refused here is refused by the confinement, not
    // for want of consent.
    agent.grant(&["browser:fanhub", "browser:peek"])?;
    agent.run_with_env(&["--hb-interval-secs", "1"], &QUICK)?;
    hub.wait_agent_online(key, agent.agent_id(), TIMEOUT)?;
    Ok(agent)
}

/// A job's final state, asserted failed with `code` after one delivery (never retried).
fn refused(hub: &Hub, key: &str, agent: &Agent, body: Value, code: &str) -> Result<Value> {
    let done = hub.run_job(key, &body, TIMEOUT).map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))?;
    assert_eq!(done["status"], "failed", "{done}\nagent log:\n{}", agent.run_log());
    assert_eq!(done["error"]["code"], code, "{done}\nagent log:\n{}", agent.run_log());
    assert_eq!(done["attempts"], 1, "{code} must not be retried: {done}");
    Ok(done)
}

#[test]
fn scrape_subs_cannot_read_a_local_file() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-confine-scrape")?;
    let site = Site::start()?;
    let creator = "creator-confine-scrape";
    // The adapter of the review: the page is shown in a <pre>, each of whose rows became a
    // "subscriber" carrying a line of the file.
    let peek = |subscribers: &str| {
        json!({"name": "peek", "baseUrl": site.base_url, "urls": {"subscribers": subscribers},
               "markers": {"loggedIn": "pre"}, "selectors": {"nextPage": "a.next"},
               "lists": {"subscribers": {"row": "pre", "fields": {"line": {}}}}})
    };
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    // The same adapter in a bundle signed for the agent's tenant (what a hostile hub can do);
    // published before the agent logs in, which is when it receives the repository's root.
    let root_dir = dir.path().join("root-keys");
    hub.bundle_cli(&["keys", "init", "--root-dir", root_dir.to_str().context("utf-8 path")?])?;
    let src = dir.path().join("peek-src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("adapter.json"), serde_json::to_vec(&peek("file:///etc/passwd"))?)?;
    std::fs::write(src.join("flow.json"), r#"{"adapter": "adapter.json", "flow": "scrape_subs"}"#)?;
    let src = src.to_str().context("utf-8 path")?;
    hub.bundle_cli(&[
        "publish",
        "--tenant",
        creator,
        "--name",
        "peek",
        "--version",
        "1.0.0",
        "--runtime",
        "browser",
        src,
    ])?;
    let mut agent = start_agent(&bins, dir.path(), &hub, &key, creator, &[&site.base_url])?;
    let inline = peek("file:///etc/passwd");
    let job = |adapter: Value, params: Value| json!({"type": "scrape_subs", "creatorId": creator, "payload": {"adapter": adapter, "params": params}});
    let leaks = |done: &Value| done.to_string().contains("root:");

    // The signed bundle's adapter: refused when it is read, naming the URL and the rule.
    let bundled = json!({"bundle": "peek", "version": "1.0.0", "path": "adapter.json"});
    let done = refused(&hub, &key, &agent, job(bundled, json!({})), "POLICY_VIOLATION")?;
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("urls.subscribers") && message.contains("file:///etc/passwd is a file: URL"), "{done}");
    assert!(!leaks(&done), "{done}");

    // Inline adapters are off by default: refused before anything runs.
    let done = refused(&hub, &key, &agent, job(inline.clone(), json!({})), "POLICY_VIOLATION")?;
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("inline adapters are off") && message.contains("inline-adapters on"), "{done}");

    // The person allows inline adapters: the file: URL itself is refused, named with the rule.
    let (ok, out) = agent.oneshot(&["settings", "inline-adapters", "on"])?;
    assert!(ok, "{out}");
    let done = refused(&hub, &key, &agent, job(inline, json!({})), "POLICY_VIOLATION")?;
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("urls.subscribers") && message.contains("file:///etc/passwd is a file: URL"), "{done}");
    assert!(!leaks(&done), "{done}");

    // The URL rendered from a parameter passes the adapter's check; the navigation is refused.
    let templated = peek("{{params.page}}");
    let done = refused(&hub, &key, &agent, job(templated, json!({"page": "file:///etc/passwd"})), "POLICY_VIOLATION")?;
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("is a file: URL"), "{done}");
    assert!(!leaks(&done), "{done}");
    // Stopped, not killed: its browser closes with it.
    agent.shutdown();
    Ok(())
}

#[test]
fn media_paths_upload_only_files_of_the_uploads_folder() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-confine-uploads")?;
    let site = Site::start()?;
    let creator = "creator-confine-uploads";
    let (hub, key, mut agent) = hub_and_agent(&bins, dir.path(), creator, &[&site.base_url])?;
    agent.install_adapter("fanhub", &site.adapter_yaml())?;
    // A session on the site, as after the person's login.
    let login = site.auto_login_adapter();
    let login_file = dir.path().join("fanhub-login.json");
    std::fs::write(&login_file, serde_json::to_vec(&login)?)?;
    let (ok, out) = agent.oneshot(&[
        "browser",
        "login",
        "--site",
        login_file.to_str().context("utf-8")?,
        "--headless",
        "--timeout-secs",
        "30",
    ])?;
    assert!(ok, "{out}");

    let home = dir.path().join("home");
    let uploads = home.join("Uploads");
    let secrets = home.join("secrets");
    std::fs::create_dir_all(&uploads)?;
    std::fs::create_dir_all(&secrets)?;
    std::fs::write(uploads.join("teaser.png"), b"a teaser image")?;
    let secret = secrets.join("notes.txt");
    std::fs::write(&secret, b"SECRET-NOTES-0123456789")?;
    std::os::unix::fs::symlink(&secret, uploads.join("cover.png"))?;
    let post = |paths: Value| {
        json!({"type": "schedule_post", "creatorId": creator, "payload": {"adapter": {"local": "fanhub"},
            "params": {"text": "New set", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris", "mediaPaths": paths}}})
    };
    let upload_refused = |done: &Value| {
        let message = done["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("upload refused"), "{done}");
        message
    };

    // No uploads folder (the default): no file of the machine goes, whichever it is.
    for path in ["/etc/passwd".to_owned(), secret.display().to_string()] {
        let done = refused(&hub, &key, &agent, post(json!([path])), "POLICY_VIOLATION")?;
        assert!(upload_refused(&done).contains("allowed here: none"), "{done}");
    }
    assert!(site.posts().is_empty(), "a refused upload reached the site: {:?}", site.posts());

    // The person chooses an uploads folder; its files go, nothing outside it does.
    let uploads_arg = uploads.to_str().context("utf-8")?;
    let (ok, out) = agent.oneshot(&["settings", "uploads-dir", uploads_arg])?;
    assert!(ok && out.contains("uploads folder:"), "{out}");
    for path in [
        "/etc/passwd".to_owned(),
        secret.display().to_string(),
        format!("{uploads_arg}/../secrets/notes.txt"),
        uploads.join("cover.png").display().to_string(),
    ] {
        let done = refused(&hub, &key, &agent, post(json!([path])), "POLICY_VIOLATION")?;
        upload_refused(&done);
    }
    assert!(site.posts().is_empty(), "a refused upload reached the site: {:?}", site.posts());
    let done =
        hub.run_job(&key, &post(json!([uploads.join("teaser.png").display().to_string(), "teaser.png"])), TIMEOUT)?;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", agent.run_log());
    let posts = site.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].media, vec![("teaser.png".to_owned(), 14), ("teaser (2).png".to_owned(), 14)]);

    // Off again: the folder no longer is one.
    let (ok, out) = agent.oneshot(&["settings", "uploads-dir", "--none"])?;
    assert!(ok, "{out}");
    refused(&hub, &key, &agent, post(json!(["teaser.png"])), "POLICY_VIOLATION")?;
    assert_eq!(site.posts().len(), 1);
    // Stopped, not killed: its browser closes with it.
    agent.shutdown();
    Ok(())
}

#[test]
fn a_job_never_chooses_the_page_a_login_opens() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-confine-login")?;
    let site = Site::start()?;
    // The job author's look-alike, on another origin.
    let evil = Site::start()?;
    let creator = "creator-confine-login";
    let agent_dir = dir.path().join("agent");
    // Before this release a job's adapter was kept here, and a login opened it.
    let planted = evil.auto_login_adapter();
    let remembered = agent_dir.join("browser").join("adapters");
    std::fs::create_dir_all(&remembered)?;
    std::fs::write(remembered.join("fanhub.json"), serde_json::to_vec(&planted)?)?;

    let (hub, key, mut agent) = hub_and_agent(&bins, dir.path(), creator, &[&site.base_url, &evil.base_url])?;
    assert!(!remembered.exists(), "the adapters a job could plant are still where a login reads them");
    assert!(agent_dir.join("browser").join("adapters-from-jobs.unused").join("fanhub.json").is_file());
    // The person's own adapter of the site (its login page logs in by itself for the test).
    let own = site.adapter_yaml().replace("login: /login", "login: /login?auto=1");
    let own_file = agent.install_adapter("fanhub", &own)?;
    let own_file = std::fs::canonicalize(own_file)?;

    // An inline adapter of the same name whose login page is the author's.
    let inline = json!({"type": "send_dm", "creatorId": creator, "payload": {
        "adapter": serde_json::to_value(&planted)?, "recipient": "ann", "params": {"text": "hi"}}});
    let done = refused(&hub, &key, &agent, inline.clone(), "POLICY_VIOLATION")?;
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("inline adapters are off"), "{done}");
    // Allowed by the person, it runs (on the author's site, which wants a login) and is not kept.
    let (ok, out) = agent.oneshot(&["settings", "inline-adapters", "on"])?;
    assert!(ok, "{out}");
    let done = refused(&hub, &key, &agent, inline, "LOGIN_REQUIRED")?;
    assert_eq!(done["error"]["code"], "LOGIN_REQUIRED");

    // The login says what it opens before opening it: the person's adapter, their site.
    let (ok, out) = agent.oneshot(&["browser", "login", "--site", "fanhub", "--headless", "--timeout-secs", "30"])?;
    assert!(ok, "{out}");
    let shown = out.find("opens:").context("no `opens:` line")?;
    assert!(
        out.contains(&format!("adapter: the local file {}", own_file.display()))
            && out.contains(&format!("opens:   {} (its login page)", site.base_url)),
        "{out}"
    );
    assert!(shown < out.find("savedEncrypted").unwrap_or(usize::MAX), "printed after the login: {out}");
    assert_eq!((site.logins(), evil.logins()), (1, 0), "the login opened the job author's page");

    // Without the person's adapter the name is unknown: the job's never became one.
    std::fs::remove_file(agent.data_dir.join("adapters").join("fanhub.yaml"))?;
    let (ok, out) = agent.oneshot(&["browser", "login", "--site", "fanhub", "--headless", "--timeout-secs", "5"])?;
    assert!(!ok && out.contains("no adapter \"fanhub\""), "{out}");
    assert_eq!(evil.logins(), 0);

    // An adapter whose login page is not on its own origins is refused before anything opens.
    let mut value = serde_json::to_value(site.adapter())?;
    value["urls"]["login"] = json!(format!("{}/login?auto=1", evil.base_url));
    let crooked_file = dir.path().join("crooked.json");
    std::fs::write(&crooked_file, serde_json::to_vec(&value)?)?;
    let (ok, out) = agent.oneshot(&[
        "browser",
        "login",
        "--site",
        crooked_file.to_str().context("utf-8")?,
        "--headless",
        "--timeout-secs",
        "5",
    ])?;
    assert!(!ok && out.contains("urls.login") && out.contains("is not one of the adapter's origins"), "{out}");
    assert!(!out.contains("opens:"), "{out}");
    assert_eq!(evil.logins(), 0);
    // Stopped, not killed: its browser closes with it.
    agent.shutdown();
    Ok(())
}

/// The three attacks exactly as the review made them, on an agent its person never configured:
/// inline adapters, an absolute `mediaPaths`, then a login by the site's name. The agent before
/// this change answered the first with the lines of `/etc/passwd`, uploaded the second to the
/// site, and opened the job author's login page for the third.
#[test]
fn the_reviews_attacks_as_they_were_made_are_refused() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-confine-review")?;
    let site = Site::start()?;
    let evil = Site::start()?;
    let creator = "creator-confine-review";
    let (hub, key, mut agent) = hub_and_agent(&bins, dir.path(), creator, &[&site.base_url, &evil.base_url])?;
    let login = site.auto_login_adapter();
    let login_file = dir.path().join("fanhub-login.json");
    std::fs::write(&login_file, serde_json::to_vec(&login)?)?;
    let (ok, out) = agent.oneshot(&[
        "browser",
        "login",
        "--site",
        login_file.to_str().context("utf-8")?,
        "--headless",
        "--timeout-secs",
        "30",
    ])?;
    assert!(ok, "{out}");

    let peek = json!({"name": "peek", "baseUrl": site.base_url, "urls": {"subscribers": "file:///etc/passwd"},
        "markers": {"loggedIn": "pre"}, "selectors": {"nextPage": "a.next"},
        "lists": {"subscribers": {"row": "pre", "fields": {"line": {}}}}});
    let done = refused(
        &hub,
        &key,
        &agent,
        json!({"type": "scrape_subs", "creatorId": creator, "payload": {"adapter": peek}}),
        "POLICY_VIOLATION",
    )?;
    assert!(!done.to_string().contains("root:"), "{done}");

    let upload = json!({"type": "schedule_post", "creatorId": creator, "payload": {
        "adapter": serde_json::to_value(site.adapter())?,
        "params": {"text": "x", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris", "mediaPaths": ["/etc/passwd"]}}});
    refused(&hub, &key, &agent, upload, "POLICY_VIOLATION")?;
    assert!(site.posts().is_empty(), "{:?}", site.posts());

    let planted = evil.auto_login_adapter();
    let inline = json!({"type": "send_dm", "creatorId": creator, "payload": {
        "adapter": serde_json::to_value(&planted)?, "recipient": "ann", "params": {"text": "hi"}}});
    refused(&hub, &key, &agent, inline, "POLICY_VIOLATION")?;
    let (ok, out) = agent.oneshot(&["browser", "login", "--site", "fanhub", "--headless", "--timeout-secs", "20"])?;
    assert!(!ok && out.contains("no adapter \"fanhub\""), "{out}");
    assert_eq!(evil.logins(), 0, "the login opened the job author's page: {out}");
    // Stopped, not killed: its browser closes with it.
    agent.shutdown();
    Ok(())
}

/// The job browser's connections pass the egress gate, proved with real Chromium: a flow on
/// a site whose address the person did not allow (a loopback port here, as a LAN service or
/// the person's own would be) fails `EGRESS_DENIED` naming that address and is not retried,
/// and the site never sees a request. The control: once the person allows that address, the
/// same job reaches the site.
#[test]
fn a_job_browser_cannot_reach_an_address_the_person_did_not_allow() -> Result<()> {
    let bins = Binaries::locate()?;
    let dir = scratch_dir("e2e-confine-egress")?;
    let site = Site::start()?;
    let creator = "creator-confine-egress";
    let (hub, key, mut agent) = hub_and_agent(&bins, dir.path(), creator, &[])?;
    agent.install_adapter("fanhub", &site.adapter_yaml())?;
    let scrape = json!({"type": "scrape_subs", "creatorId": creator, "payload": {"adapter": {"local": "fanhub"}}});

    let done = refused(&hub, &key, &agent, scrape.clone(), "EGRESS_DENIED")?;
    let message = done["error"]["message"].as_str().unwrap_or_default();
    let authority = site.base_url.trim_start_matches("http://");
    assert!(message.contains(authority) && message.contains("loopback"), "names the address and the rule: {done}");
    assert_eq!(site.requests(), 0, "nothing of the job reached the site");
    let log = agent.run_log();
    assert!(log.contains("egress refused") && log.contains(authority), "the local log says so: {log}");

    // The person allows the site: the same job reaches it.
    agent.shutdown();
    agent.allow_egress(&site.base_url);
    agent.run_with_env(&["--hb-interval-secs", "1"], &QUICK)?;
    hub.wait_agent_online(&key, agent.agent_id(), TIMEOUT)?;
    let done = hub.run_job(&key, &scrape, TIMEOUT)?;
    assert_ne!(done["error"]["code"], "EGRESS_DENIED", "{done}");
    assert!(site.requests() > 0, "the allowed site was reached: {done}");
    Ok(())
}
