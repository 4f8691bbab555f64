//! The confinement of browser jobs, in real Chromium (`/usr/bin/chromium` or
//! `EDGE_AGENT_BROWSER`), against hostile pages of the local test site that try to leave it by
//! themselves: a script assigning `location`, a redirect, an iframe (same process and another
//! process), a `data:` frame, a link opening a new window, `window.open`, a form posting to
//! another origin, a download. A second site on another port, and the same one under the name
//! `localhost` (another site for Chromium, so its frames get their own process), stand for the
//! origins the adapter did not declare; they count every request that reaches them, which
//! must stay zero. Then the adapter's own URLs and steps: every scheme but http(s) and every
//! undeclared origin is refused before the navigation; an `origins` entry lets a page through.
//! Uploads: only files inside the folders the job may use, links leaving them refused.
//! A site with a certificate the browser cannot trust (a self-signed `openssl s_server`) is
//! not loaded. The hostile pages share one test function, so one warm browser serves them.

use edge_browser::confine::Uploads;
use edge_browser::flow::{parse_flow, Adapter};
use edge_browser::runtime::BrowserRuntime;
use edge_browser::testsite::{quick_settings, FixedKey, Quiet, Site};
use edge_protocol::jobs::BrowserJobPayload;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Runs `steps` (flow YAML) on the site's adapter; the error's code and message, or "OK".
async fn run(runtime: &BrowserRuntime, adapter: &Adapter, steps: &str, uploads: &Uploads) -> (String, String) {
    let flow = parse_flow(&format!("name: hostile\nsteps:\n{steps}")).unwrap();
    match runtime.run_flow_document(adapter, &flow, &Map::new(), false, uploads).await {
        Ok(output) => ("OK".into(), output.to_string()),
        Err(e) => (e.code().to_string(), e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_cannot_take_a_job_off_its_origins() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let site = Site::start().unwrap();
    let other = Site::start().unwrap();
    // Another site for Chromium (another host), so its frames live in another process.
    let far = other.base_url.replace("127.0.0.1", "localhost");
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        BrowserRuntime::new(quick_settings(dir.path(), "confine"), Arc::new(FixedKey([3; 32])), Arc::new(Quiet));
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = site.adapter();
    let none = Uploads::none();
    let hostile = |kind: &str, to: &str| format!("/hostile/{kind}?to={}", urlencode(to));

    // What the page starts by itself. Each is refused before its request leaves the browser:
    // the job fails POLICY_VIOLATION naming the origin and the rule, and the other site never
    // sees a request.
    for (what, steps, needle) in [
        (
            "a script assigning location",
            format!("  - goto: '{}'\n  - waitFor: {{selector: '#landed', timeoutMs: 4000}}\n", hostile("assign", &format!("{far}/landing"))),
            format!("{far} is not one of the adapter's origins"),
        ),
        (
            "a redirect",
            format!("  - goto: '{}'\n", hostile("redirect", &format!("{}/landing", other.base_url))),
            format!("{} is not one of the adapter's origins", other.base_url),
        ),
        (
            "an iframe of another process",
            format!("  - goto: '{}'\n  - waitFor: {{selector: '#frame', timeoutMs: 4000}}\n  - waitFor: {{selector: '#never', timeoutMs: 1500}}\n", hostile("iframe", &format!("{far}/landing"))),
            format!("{far} is not one of the adapter's origins"),
        ),
        (
            "an iframe in the same process",
            format!("  - goto: '{}'\n  - waitFor: {{selector: '#never', timeoutMs: 1500}}\n", hostile("iframe", &format!("{}/landing", other.base_url))),
            format!("{} is not one of the adapter's origins", other.base_url),
        ),
        (
            "a link opening a new window",
            format!("  - goto: '{}'\n  - click: '#go'\n  - waitFor: {{selector: '#never', timeoutMs: 1500}}\n", hostile("link-popup", &format!("{far}/landing"))),
            "the page opened a new window".to_owned(),
        ),
        (
            "a form posting to another origin",
            format!("  - goto: '{}'\n  - click: '#go'\n  - waitFor: {{selector: '#landed', timeoutMs: 4000}}\n", hostile("form", &format!("{far}/landing"))),
            format!("{far} is not one of the adapter's origins"),
        ),
    ] {
        let (code, message) = run(&runtime, &adapter, &steps, &none).await;
        assert_eq!(code, "POLICY_VIOLATION", "{what}: {message}");
        assert!(message.starts_with("navigation refused: ") && message.contains(&needle), "{what}: {message}");
        assert_eq!(other.landings(), 0, "{what}: a request reached the other origin");
    }

    // A new window is refused even on the site's own origin (a job works in one page), and
    // closed before its request left.
    let (code, message) = run(
        &runtime,
        &adapter,
        &format!(
            "  - goto: '{}'\n  - click: '#go'\n  - waitFor: {{selector: '#never', timeoutMs: 1500}}\n",
            hostile("window-open", &site.url("/landing"))
        ),
        &none,
    )
    .await;
    assert_eq!(code, "POLICY_VIOLATION", "{message}");
    assert!(message.contains("opened a new window"), "{message}");
    assert_eq!(site.landings(), 0, "the new window's request left the browser");

    // A data: frame sends no request; it is caught when it commits.
    let (code, message) = run(
        &runtime,
        &adapter,
        &format!(
            "  - goto: '{}'\n  - waitFor: {{selector: '#never', timeoutMs: 1500}}\n",
            hostile("iframe", "data:text/html,<p id=inner>x</p>")
        ),
        &none,
    )
    .await;
    assert_eq!(code, "POLICY_VIOLATION", "{message}");
    assert!(message.contains("is a data: URL"), "{message}");

    // Chromium itself never lets a web page open a local file; the job goes on, on the site.
    let (code, output) = run(
        &runtime,
        &adapter,
        &format!(
            "  - goto: '{}'\n  - waitFor: {{selector: '#never', timeoutMs: 800, optional: true}}\n  - assert: {{urlContains: '/hostile/assign'}}\n  - extract: {{selector: body, into: text}}\n",
            hostile("assign", "file:///etc/passwd")
        ),
        &none,
    )
    .await;
    assert_eq!(code, "OK", "{output}");
    assert!(!output.contains("root:"), "{output}");

    // The flow's own navigations: refused before anything is loaded, whatever the scheme,
    // also when the URL comes from a parameter.
    for (url, needle) in [
        ("file:///etc/passwd", "file:///etc/passwd is a file: URL"),
        ("data:text/html,<p>x</p>", "is a data: URL"),
        ("chrome://version", "chrome://version is a chrome: URL"),
        ("javascript:alert(1)", "is a javascript: URL"),
        ("view-source:http://127.0.0.1/", "is a view-source: URL"),
        (&format!("{far}/landing"), "is not one of the adapter's origins"),
    ] {
        let (code, message) = run(&runtime, &adapter, &format!("  - goto: '{url}'\n"), &none).await;
        assert_eq!(code, "POLICY_VIOLATION", "{url}: {message}");
        assert!(message.contains(needle) && message.contains(&site.base_url), "{url}: {message}");
    }
    let flow = parse_flow("name: p\nsteps:\n  - goto: '{{params.target}}'\n").unwrap();
    let params: Map<String, Value> = json!({"target": "file:///etc/passwd"}).as_object().unwrap().clone();
    let refused = runtime.run_flow_document(&adapter, &flow, &params, false, &none).await.unwrap_err();
    assert_eq!(refused.code().as_str(), "POLICY_VIOLATION", "{refused}");
    assert_eq!(other.landings(), 0);

    // The security review's scrape_subs attack, with the URL rendered from a parameter so it
    // passes the adapter's own check: refused before the page is opened.
    let mut scraping = adapter.clone();
    scraping.urls.insert("subscribers".into(), "{{params.page}}".into());
    let out = runtime
        .run_job(
            "scrape_subs",
            "scrape_passwd",
            &payload(json!({"adapter": {}, "params": {"page": "file:///etc/passwd"}})),
            &scraping,
            &none,
        )
        .await;
    let error = out.result.unwrap_err();
    assert_eq!(error.code.as_str(), "POLICY_VIOLATION", "{error:?}");
    assert!(error.message.unwrap_or_default().contains("file: URL"));

    // Declared origins are allowed: the same hostile page, with `far` in `origins`, lands.
    let mut wider = adapter.clone();
    wider.origins.push(far.clone());
    let (code, output) = run(
        &runtime,
        &wider,
        &format!("  - goto: '{}'\n  - waitFor: '#landed'\n", hostile("assign", &format!("{far}/landing"))),
        &none,
    )
    .await;
    assert_eq!(code, "OK", "{output}");
    assert_eq!(other.landings(), 1);
    let (code, output) = run(
        &runtime,
        &adapter,
        &format!(
            "  - goto: '{}'\n  - waitFor: {{selector: '#frame', timeoutMs: 4000}}\n",
            hostile("iframe", &site.url("/landing"))
        ),
        &none,
    )
    .await;
    assert_eq!(code, "OK", "a frame of the site's own origin: {output}");

    // Downloads are off: the site's attachment is never written anywhere.
    let (code, output) = run(
        &runtime,
        &adapter,
        "  - goto: '/hostile/download'\n  - click: '#go'\n  - waitFor: {selector: '#never', timeoutMs: 1500, optional: true}\n",
        &none,
    )
    .await;
    assert_eq!(code, "OK", "{output}");
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
    for (folder, depth) in [(home.join("Downloads"), 2), (home.clone(), 0), (dir.path().to_path_buf(), 8)] {
        assert!(!find(&folder, "secret.txt", depth), "the download was written under {}", folder.display());
    }

    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_come_only_from_the_jobs_folders() {
    let site = Site::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        BrowserRuntime::new(quick_settings(dir.path(), "confine"), Arc::new(FixedKey([3; 32])), Arc::new(Quiet));
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = site.adapter();
    let login = site.auto_login_adapter();
    runtime.interactive_login(&login, false, Duration::from_secs(20)).await.unwrap();

    let home = tempfile::tempdir().unwrap();
    let uploads_dir = home.path().join("Uploads");
    let secrets = home.path().join("secrets");
    std::fs::create_dir_all(&uploads_dir).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(uploads_dir.join("teaser.png"), b"teaser bytes").unwrap();
    std::fs::write(secrets.join("id_ed25519"), b"PRIVATE KEY").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(secrets.join("id_ed25519"), uploads_dir.join("cover.png")).unwrap();
    let uploads = Uploads::none().allow(&uploads_dir, "the uploads folder");
    let post = |media_paths: Value| {
        payload(
            json!({"adapter": {}, "params": {"text": "Upload", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris",
            "mediaPaths": media_paths}}),
        )
    };

    // The security review's attack: any absolute path. Refused before the page is opened,
    // with or without an uploads folder, and nothing reaches the site.
    for (paths, allowed) in [
        (json!(["/etc/passwd"]), &Uploads::none()),
        (json!([secrets.join("id_ed25519").display().to_string()]), &uploads),
        (json!([uploads_dir.join("../secrets/id_ed25519").display().to_string()]), &uploads),
        (json!(["/etc/passwd"]), &uploads),
    ] {
        let out = runtime.run_job("schedule_post", "up_refused", &post(paths.clone()), &adapter, allowed).await;
        let error = out.result.unwrap_err();
        assert_eq!(error.code.as_str(), "POLICY_VIOLATION", "{paths}: {error:?}");
        assert!(error.message.unwrap_or_default().contains("upload refused"), "{paths}");
    }
    #[cfg(unix)]
    {
        let out = runtime.run_job("schedule_post", "up_link", &post(json!(["cover.png"])), &adapter, &uploads).await;
        let error = out.result.unwrap_err();
        assert_eq!(error.code.as_str(), "POLICY_VIOLATION", "{error:?}");
        assert!(error.message.unwrap_or_default().contains("symbolic link"));
    }
    assert!(site.posts().is_empty(), "a refused upload reached the site: {:?}", site.posts());

    // A flow naming a file itself (a bundle's, an adapter's override) is held to the same rule.
    let flow = parse_flow(
        "name: f\nsteps:\n  - goto: '{{urls.scheduler}}'\n  - setInputFiles: {selector: '#post-media', files: ['/etc/passwd']}\n",
    )
    .unwrap();
    let refused = runtime.run_flow_document(&adapter, &flow, &Map::new(), false, &uploads).await.unwrap_err();
    assert_eq!(refused.code().as_str(), "POLICY_VIOLATION", "{refused}");

    // A file inside the folder goes, under its own name.
    let out = runtime.run_job("schedule_post", "up_ok", &post(json!(["teaser.png"])), &adapter, &uploads).await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(site.posts().pop().unwrap().media, vec![("teaser.png".to_owned(), 12)]);
    runtime.shutdown().await;
}

fn payload(v: Value) -> BrowserJobPayload {
    serde_json::from_value(v).unwrap()
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Whether a file called `name` is somewhere under `dir` (at most `depth` folders down).
fn find(dir: &std::path::Path, name: &str, depth: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        let path = entry.path();
        entry.file_name() == name
            || (depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) && find(&path, name, depth - 1))
    })
}

/// An `openssl s_server` on loopback, ended when dropped.
struct TlsServer(std::process::Child);
impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A job restores the person's session cookies into its page, so a site that cannot prove who
/// it is (here a self-signed certificate, as a network attacker would present) must get
/// nothing: the page does not load and the job fails NETWORK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_cannot_prove_who_it_is_is_not_loaded() {
    let openssl = |args: &[&str], dir: &std::path::Path| {
        std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("the openssl command is needed for this test (Debian: apt-get install --no-install-recommends openssl): {e}")
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let made = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        dir.path(),
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let accept = format!("127.0.0.1:{port}");
    let _server = TlsServer(
        std::process::Command::new("openssl")
            .args(["s_server", "-accept", &accept, "-cert", "cert.pem", "-key", "key.pem", "-www", "-quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(&accept).is_err() {
        assert!(std::time::Instant::now() < deadline, "openssl s_server did not listen on {accept}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let runtime =
        BrowserRuntime::new(quick_settings(dir.path(), "confine"), Arc::new(FixedKey([3; 32])), Arc::new(Quiet));
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = edge_browser::flow::parse_adapter(&format!("name: tls\nbaseUrl: https://{accept}\n")).unwrap();
    let (code, message) =
        run(&runtime, &adapter, "  - goto: '/'\n  - extract: {selector: body, into: page}\n", &Uploads::none()).await;
    assert_eq!(code, "NETWORK", "{message}");
    assert!(message.contains("ERR_CERT"), "{message}");
    runtime.shutdown().await;
}
