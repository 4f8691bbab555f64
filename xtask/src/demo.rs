//! `cargo xtask demo`: the whole product on one machine, for real. Builds the hub and the
//! headless agent, starts the hub on a temporary SQLite file, publishes a signed bundle,
//! enrolls and logs in an agent through the OS keychain, runs three `http_request` jobs
//! against a page served on 127.0.0.1, the signed bundle, and (when Chromium is installed) a
//! browser flow against a local creator-site look-alike; prints each result as the hub
//! recorded it, and shuts everything down. It prints one line per job and a closing table;
//! `--verbose` adds each job record's full JSON. It installs what it needs (as root on
//! Debian) but never Chromium: without it only the browser flow is skipped.

use crate::deps::{ensure_apt, APT_DEMO, CHROMIUM_INSTALL};
use crate::util::{cargo, checked, have, root};
use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use edge_e2e::site::Site;
use edge_e2e::{http_job, scratch_dir, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CREATOR: &str = "demo-creator";

const USAGE: &str = "usage: cargo xtask demo [--verbose]";

/// How the demo reports jobs: one line each, or (`--verbose`) the full record too.
struct Report {
    verbose: bool,
    jobs: Vec<JobLine>,
}

pub fn run(args: &[&str]) -> Result<()> {
    let mut report = Report { verbose: false, jobs: Vec::new() };
    for arg in args {
        match *arg {
            "--verbose" | "-v" => report.verbose = true,
            other => bail!("unknown demo option {other:?}\n{USAGE}"),
        }
    }
    step("checking what the demo needs");
    ensure_apt(APT_DEMO).context("the demo builds the hub and the agent with a C toolchain")?;
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

    // A fresh install allows nothing: the person grants what the demo uses, one capability
    // at a time, reading what each allows (the same text is stored with the grant).
    step("granting what the demo uses (`edge-agent consent grant ...`; a fresh install runs nothing)");
    for capability in ["http_request", "bundle", "browser:fanhub"] {
        let (ok, out) = agent.oneshot(&["consent", "grant", capability])?;
        if !ok {
            bail!("edge-agent consent grant {capability} failed: {out}");
        }
        println!("   $ edge-agent consent grant {capability}");
        for line in out.lines() {
            println!("   {line}");
        }
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
    for (what, body) in jobs {
        let started = Instant::now();
        let submitted = hub.submit_job(&key, &body)?;
        let id = submitted["id"].as_str().context("hub answered without a job id")?.to_owned();
        let done = hub.wait_job_done(&key, &id, Duration::from_secs(30))?;
        report.job(what, &done, started.elapsed());
    }

    step("running the signed bundle (the agent verifies TUF metadata, SHA-256 and expiry first)");
    let started = Instant::now();
    let job = hub.submit_job(
        &key,
        &json!({ "type": "bundle", "creatorId": CREATOR,
                 "payload": { "bundle": "hello", "version": "latest", "args": ["demo"] } }),
    )?;
    let done = hub.wait_job_done(&key, job["id"].as_str().context("job id")?, Duration::from_secs(60))?;
    report.job("signed shell bundle", &done, started.elapsed());

    let browser_failed = browser_flow(&hub, &key, &agent, &browser_site, &mut report)?;

    step("shutting down");
    let agent_clean = agent.shutdown();
    let (_, out) = agent.oneshot(&["logout"])?;
    println!("   agent stopped{}; {}", if agent_clean { " cleanly" } else { " (had to be killed)" }, out.trim());
    let hub_clean = hub.shutdown();
    println!("   hub stopped{}", if hub_clean { " cleanly" } else { " (had to be killed)" });
    step("jobs");
    print!("{}", report.table());
    let failures = report.jobs.iter().filter(|j| j.status != "succeeded").count() + usize::from(browser_failed);
    if failures > 0 {
        bail!("{failures} demo job(s) did not succeed; logs are in the lines above");
    }
    println!("\ndemo finished: every job ran on this machine and was recorded by the hub.");
    Ok(())
}

/// A `send_dm` browser flow against the local creator-site look-alike, in the Chromium
/// installed on this machine. Returns whether the site's record disagrees with the job's
/// (the job's own status is in the report); false when skipped.
fn browser_flow(
    hub: &Hub,
    key: &str,
    agent: &Agent,
    site: &edge_browser::testsite::Site,
    report: &mut Report,
) -> Result<bool> {
    if !["chromium", "chromium-browser", "google-chrome", "microsoft-edge"].iter().any(|b| have(b)) {
        step(&chromium_missing());
        return Ok(false);
    }
    step("a browser flow: send_dm on a local creator site, in this machine's Chromium");
    println!("   creator site look-alike: {}", site.url("/"));
    // A person logs in once in a visible browser window (`edge-agent browser login`); the
    // demo site's auto-login page stands in for them, so this runs headless.
    let login = site.auto_login_adapter();
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
    let started = Instant::now();
    let job = hub.submit_job(
        key,
        &json!({ "type": "send_dm", "creatorId": CREATOR, "payload": {
            "adapter": {"local": "fanhub"}, "recipient": "ann",
            "params": { "text": "Hi Ann, thanks for subscribing!" } } }),
    )?;
    let done = hub.wait_job_done(key, job["id"].as_str().context("job id")?, Duration::from_secs(90))?;
    report.job("send_dm through the browser", &done, started.elapsed());
    println!("   the site received for ann: {:?}", site.messages_to("ann"));
    Ok(done["status"] == "succeeded" && site.messages_to("ann").len() != 1)
}

/// What the demo says when no Chromium-family browser is on PATH.
fn chromium_missing() -> String {
    format!("skipping the browser flow: Chromium is not installed; add it with: {CHROMIUM_INSTALL}")
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

impl Report {
    /// Records a finished job and prints its line (and, verbose, its full record).
    fn job(&mut self, what: &str, record: &Value, took: Duration) {
        let line = JobLine::new(what, record, took);
        println!("   {}", line.render());
        if self.verbose {
            print_record(record);
        }
        self.jobs.push(line);
    }

    /// The closing table: one row per job, then the count that succeeded.
    fn table(&self) -> String {
        let width =
            |f: fn(&JobLine) -> usize, head: &str| self.jobs.iter().map(f).chain([head.len()]).max().unwrap_or(0);
        let (w_what, w_type, w_status) =
            (width(|j| j.what.len(), "job"), width(|j| j.job_type.len(), "type"), width(|j| j.status.len(), "status"));
        let mut out =
            format!("   {:w_what$}  {:w_type$}  {:w_status$}  {:>6}  result\n", "job", "type", "status", "secs");
        for j in &self.jobs {
            out += &format!(
                "   {:w_what$}  {:w_type$}  {:w_status$}  {:>6.1}  {}\n",
                j.what,
                j.job_type,
                j.status,
                j.took.as_secs_f64(),
                j.summary
            );
        }
        let ok = self.jobs.iter().filter(|j| j.status == "succeeded").count();
        out += &format!("   {ok} of {} jobs succeeded\n", self.jobs.len());
        out
    }
}

/// One finished job, as the demo reports it.
struct JobLine {
    what: String,
    job_type: String,
    status: String,
    took: Duration,
    summary: String,
}

/// A result longer than this is cut: the line is for reading at a glance.
const SUMMARY_CHARS: usize = 60;

impl JobLine {
    fn new(what: &str, record: &Value, took: Duration) -> Self {
        JobLine {
            what: what.to_owned(),
            job_type: record["type"].as_str().unwrap_or("?").to_owned(),
            status: record["status"].as_str().unwrap_or("?").to_owned(),
            took,
            summary: summarize(record),
        }
    }

    fn render(&self) -> String {
        format!(
            "{}: {} {} in {:.1} s: {}",
            self.what,
            self.job_type,
            self.status,
            self.took.as_secs_f64(),
            self.summary
        )
    }
}

/// The result of a job in a few words: the error's code and message, an HTTP status and
/// the start of the body, a bundle's exit code and output, else the result's first fields.
fn summarize(record: &Value) -> String {
    let error = &record["error"];
    if !error.is_null() {
        let code = error["code"].as_str().unwrap_or("error");
        let message = error["message"].as_str().unwrap_or_default();
        return shorten(&format!("{code}: {message}"));
    }
    let result = if record["result"]["data"].is_object() { &record["result"]["data"] } else { &record["result"] };
    if let Some(status) = result["statusCode"].as_u64() {
        let body = decoded_body(result).unwrap_or_default();
        return shorten(&format!("HTTP {status}, {} bytes: {}", body.len(), one_line(&body)));
    }
    if let Some(code) = result["exitCode"].as_i64() {
        return shorten(&format!("exit {code}: {}", one_line(result["stdout"].as_str().unwrap_or_default())));
    }
    if let Some(sent) = result["sentRecipients"].as_array() {
        let names: Vec<&str> = sent.iter().filter_map(Value::as_str).collect();
        return shorten(&format!("sent to {}", names.join(", ")));
    }
    if result.is_null() {
        return "no result recorded".to_owned();
    }
    shorten(&one_line(&result.to_string()))
}

fn decoded_body(result: &Value) -> Option<String> {
    let body = result["body"].as_str()?;
    if result["isBase64Encoded"] == true {
        B64.decode(body).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
    } else {
        Some(body.to_owned())
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= SUMMARY_CHARS {
        return text.to_owned();
    }
    let cut: String = text.chars().take(SUMMARY_CHARS - 1).collect();
    format!("{cut}…")
}

/// The job record as the hub keeps it, with an HTTP body also shown decoded.
fn print_record(job: &Value) {
    let mut shown = job.clone();
    if let Some(text) = decoded_body(&job["result"]) {
        shown["result"]["bodyDecoded"] = Value::String(text);
    }
    let pretty = serde_json::to_string_pretty(&shown).unwrap_or_default();
    for line in pretty.lines() {
        println!("      {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deps::apt_install_command;

    fn http_record() -> Value {
        json!({ "id": "j1", "type": "http_request", "status": "succeeded", "error": null,
                "result": { "statusCode": 200, "headers": { "content-type": "text/html" },
                            "body": B64.encode("<h1>hello\n from   the demo site</h1>"), "isBase64Encoded": true } })
    }

    #[test]
    fn an_http_job_is_one_short_line_with_status_and_body() {
        let line = JobLine::new("GET a page", &http_record(), Duration::from_millis(1234)).render();
        assert_eq!(
            line,
            "GET a page: http_request succeeded in 1.2 s: HTTP 200, 36 bytes: <h1>hello from the demo site</h1>"
        );
    }

    #[test]
    fn a_failed_job_shows_its_error_code_and_message_cut_short() {
        let record = json!({ "type": "bundle", "status": "failed", "result": null,
            "error": { "code": "RUN_FAILED", "message": "the bundle exited 3: ".to_owned() + &"x".repeat(200) } });
        let summary = summarize(&record);
        assert!(summary.starts_with("RUN_FAILED: the bundle exited 3"), "{summary}");
        assert_eq!(summary.chars().count(), SUMMARY_CHARS, "{summary}");
    }

    #[test]
    fn a_bundle_run_shows_exit_code_and_output() {
        let record = json!({ "type": "bundle", "status": "succeeded", "error": null,
            "result": { "data": { "exitCode": 0, "stdout": "hello from a signed bundle, demo\n" } } });
        assert_eq!(summarize(&record), "exit 0: hello from a signed bundle, demo");
    }

    #[test]
    fn a_browser_message_job_names_who_got_it() {
        let record = json!({ "type": "send_dm", "status": "succeeded", "error": null,
            "result": { "sentRecipients": ["ann"], "dryRun": false, "skippedSteps": [] } });
        assert_eq!(summarize(&record), "sent to ann");
    }

    #[test]
    fn the_closing_table_has_a_row_per_job_and_a_count() {
        let mut failed = http_record();
        failed["status"] = json!("failed");
        let report = Report {
            verbose: false,
            jobs: vec![
                JobLine::new("GET a page", &http_record(), Duration::from_secs(1)),
                JobLine::new("follow a redirect", &failed, Duration::from_secs(2)),
            ],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].split_whitespace().eq(["job", "type", "status", "secs", "result"]), "{table}");
        assert!(lines[2].contains("follow a redirect  http_request  failed"), "{table}");
        assert_eq!(lines[3].trim(), "1 of 2 jobs succeeded");
    }

    #[test]
    fn without_chromium_the_demo_names_the_install_command() {
        assert!(chromium_missing().ends_with("add it with: apt-get install --no-install-recommends chromium"));
        assert!(apt_install_command(&["chromium"]).contains("--no-install-recommends"));
    }
}
