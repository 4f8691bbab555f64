//! The real tray app driven end to end through WebDriver: `tauri-driver` in front of
//! `WebKitWebDriver` (Debian `webkit2gtk-driver`) starts the debug `edge-agent-tray` on a
//! private Xvfb display, inside the desktop session of `tests/support/desktop-session.sh`
//! (session bus, unlocked gnome-keyring), with dunst as the notification server and a real
//! hub and a small website on loopback. The test does what a person does, by element ids
//! that the window keeps stable:
//!
//! - signs in by code: types the hub's address, reads the code the window shows, approves
//!   it on the hub's own approval page in headless Chromium with the creator's API key;
//! - ticks "send web requests" on the consent screen, and only that is granted;
//! - a web request job to the local site runs, its row shows in the window, and its
//!   "started"/"finished" notifications go over org.freedesktop.Notifications;
//! - a broadcast to three fans of a local fan site (the browser crate's test site, its
//!   adapter installed in the agent's folder), after "Log in to fanhub" in Settings opened
//!   a visible browser window: the Tasks screen shows it part-way (1/3 or 2/3), then 3/3;
//!   each fan got the message once;
//! - Pause: a job submitted while paused is not taken; Resume, and it runs;
//! - a second account, added from Settings and signed in with an enrollment token of
//!   another creator: its own consent (nothing granted), its own agent at the hub, its own
//!   settings (its job to the site the first account allowed is refused); back to the first
//!   account through the bar; Pause all and Resume all reach both accounts;
//! - Settings: French; the window's words are then the French catalogue's;
//! - screenshots of every screen in both languages go to docs/screenshots/ (the README
//!   links them); see [`shoot`] for why they come from the X server.
//!
//! Not here: the tray menu's own items (the accounts submenu, pause all); a WebDriver
//! session reaches the webview only. `tests/tray/smoke.sh` runs the app with its tray.
//!
//! Needs: `cargo build -p edge-hub -p edge-agent -p edge-agent-tray` (with ui/ built), the
//! Debian packages xvfb, dunst, dbus-bin (dbus-monitor), webkit2gtk-driver and chromium,
//! and tauri-driver (`cargo xtask test` installs all of them). Run it as
//! `tests/support/desktop-session.sh cargo test -p edge-e2e --test tray_webdriver`.

use anyhow::{anyhow, bail, Context, Result};
use edge_browser::launch::{BrowserLaunch, RunningBrowser};
use edge_e2e::site::Site;
use edge_e2e::webdriver::Session;
use edge_e2e::xvfb::Xvfb;
use edge_e2e::{procfs, scratch_dir, wait_until, Binaries, Hub};
use serde_json::{json, Value};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// tauri-driver's version; xtask installs exactly this one (xtask/src/test.rs).
const TAURI_DRIVER_INSTALL: &str = "cargo install tauri-driver --version 2.0.5 --locked --root target/tools";
const CREATOR: &str = "c-webdriver";
/// The creator of the second account.
const SECOND: &str = "c-second";
/// The fan site's adapter name (the browser crate's test site).
const FAN_SITE: &str = "fanhub";
/// Every wait of this test; the whole run takes well under a minute on a quiet machine.
const WAIT: Duration = Duration::from_secs(45);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A program from `var`, else `default` when it exists, else an error that says how to get it.
fn tool(var: &str, default: &Path, install: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| default.to_path_buf());
    if !path.is_file() {
        bail!("{} is missing: {install} (or set {var})", path.display());
    }
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process and everything it started (tauri-driver → WebKitWebDriver → the app),
/// ended together when dropped: SIGTERM to each, then SIGKILL to what is left.
struct Tree(Child);

impl Drop for Tree {
    fn drop(&mut self) {
        let members = procfs::process_tree(self.0.id());
        for pid in members.iter().rev() {
            // SAFETY: kill(2) on processes this test started (the tree below its own child).
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && members.iter().any(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = self.0.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in &members {
            // SAFETY: as above; a pid already gone is ESRCH, harmless.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}

fn spawn_logged(mut command: Command, log: &Path) -> Result<Tree> {
    let file = fs::File::create(log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    Ok(Tree(child))
}

fn bus_name_owned(name: &str) -> bool {
    Command::new("dbus-send")
        .args(["--session", "--print-reply", "--dest=org.freedesktop.DBus", "/", "org.freedesktop.DBus.GetNameOwner"])
        .arg(format!("string:{name}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `key: "text",` entries of a UI catalogue (ui/src/i18n/*.ts), so the test knows the
/// French words without copying them.
fn catalogue(lang: &str) -> Result<std::collections::HashMap<String, String>> {
    let path = workspace_root().join(format!("ui/src/i18n/{lang}.ts"));
    let source = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut entries = std::collections::HashMap::new();
    for line in source.lines().map(str::trim) {
        let Some((key, rest)) = line.split_once(": \"") else { continue };
        if key.chars().all(|c| c.is_ascii_alphanumeric()) {
            if let Some(text) = rest.strip_suffix("\",") {
                entries.insert(key.to_owned(), text.replace("\\\"", "\""));
            }
        }
    }
    Ok(entries)
}

/// The English and French words of one entry of the tray's Rust catalogue
/// (src-tauri/src/i18n.rs: `key: "English", "Français";`).
fn tray_words(key: &str) -> Result<(String, String)> {
    let path = workspace_root().join("src-tauri/src/i18n.rs");
    let source = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let prefix = format!("{key}: \"");
    let line = source
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| anyhow!("no {key} in {}", path.display()))?;
    let (en, rest) = line.split_once("\", \"").ok_or_else(|| anyhow!("{key} in {} has no French", path.display()))?;
    Ok((en.to_owned(), rest.trim_end_matches("\";").to_owned()))
}

/// The app's window as the person sees it, as PNG. Not WebDriver's screenshot command:
/// WebKitWebDriver's (WebKitGTK 2.50) never answers when GDK's OpenGL is off, and the app
/// turns it off on X11 (src-tauri/src/app.rs, about 50 MB less while idle). Debian's
/// MiniBrowser hangs the same way with `GDK_GL=disable` or `WEBKIT_DISABLE_COMPOSITING_MODE=1`;
/// with `GDK_GL=always` both answer. The test drives the app as it ships, so the X server's
/// copy of the window is taken instead, with ImageMagick's `import`. A short pause first
/// lets the page paint what the last command changed.
fn shoot(xvfb: &Xvfb, path: &Path) -> Result<()> {
    std::thread::sleep(Duration::from_millis(400));
    let tree = Command::new("xwininfo")
        .args(["-root", "-tree"])
        .env("DISPLAY", &xvfb.display)
        .output()
        .context("running xwininfo (install the Debian package x11-utils)")?;
    let tree = String::from_utf8_lossy(&tree.stdout);
    let id = tree
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("0x") && l.contains("\"Edge Agent\""))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| anyhow!("no window titled Edge Agent on {}", xvfb.display))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let out = Command::new("import")
        .args(["-window", id])
        .arg(path)
        .env("DISPLAY", &xvfb.display)
        .output()
        .context("running import (install the Debian package imagemagick)")?;
    if !out.status.success() {
        bail!("import -window {id} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    if !fs::read(path)?.starts_with(b"\x89PNG") {
        bail!("{} is not a PNG", path.display());
    }
    Ok(())
}

/// Waits until the consent box `selector` shows ticked and no longer greyed out. The core
/// writes a grant before its answer reaches the window, and the answer draws the list anew
/// and puts the focus back on the box, which scrolls the page; WebDriver clicks at a point on
/// the screen, so the next click waits for the list to settle, as a person would.
fn wait_ticked(window: &Session, selector: &str) -> Result<()> {
    wait_until(WAIT, || {
        Ok(window.script(
            "const b = document.querySelector(arguments[0]); return !!b && b.checked && !b.disabled;",
            json!([selector]),
        )? == json!(true))
    })
    .with_context(|| format!("the window never showed {selector} ticked and settled"))
}

/// Waits until `selector` is shown in the window.
fn wait_shown(window: &Session, selector: &str) -> Result<()> {
    wait_until(WAIT, || window.shown(selector)).with_context(|| format!("waiting for {selector} in the window"))
}

/// The job's status at the hub.
fn job_status(hub: &Hub, key: &str, id: &str) -> Result<String> {
    Ok(hub.job(key, id)?["status"].as_str().unwrap_or_default().to_owned())
}

fn web_request(hub: &Hub, key: &str, url: &str) -> Result<String> {
    web_request_for(hub, key, CREATOR, url)
}

fn web_request_for(hub: &Hub, key: &str, creator: &str, url: &str) -> Result<String> {
    let job =
        hub.submit_job(key, &json!({ "type": "http_request", "creatorId": creator, "payload": { "url": url } }))?;
    job["id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no job id in {job}"))
}

/// The hub's approval page in headless Chromium, as the creator: the code comes prefilled
/// from the complete verification URL, the creator's key is typed, the page names the
/// creator the device joins, Approve.
fn approve_in_chromium(dir: &Path, page_url: &str, user_code: &str, creator_key: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let spec = BrowserLaunch {
            executable: edge_browser::find_browser(None).map_err(|e| anyhow!("{e} (install the Debian package chromium)"))?,
            user_data_dir: dir.join("chromium"),
            headful: false,
            extra_args: Vec::new(),
        };
        let browser = RunningBrowser::launch(&spec).await.map_err(|e| anyhow!("{e}"))?;
        let approved = async {
            let page = browser.browser.new_page(page_url).await?;
            let eval = |script: String| {
                let page = page.clone();
                async move { anyhow::Ok(page.evaluate(script).await?.into_value::<Value>()?) }
            };
            let until = |what: &'static str, script: &'static str| {
                let eval = &eval;
                async move {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        if eval(script.to_owned()).await? == json!(true) {
                            return anyhow::Ok(());
                        }
                        if Instant::now() > deadline {
                            bail!("the hub's approval page never showed {what}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            until("its form", "!!document.getElementById('api-key')").await?;
            let prefilled = eval("document.getElementById('user-code').value".into()).await?;
            if prefilled != json!(user_code) {
                bail!("the approval page has {prefilled} for the code, the window showed {user_code}");
            }
            eval(format!(
                "(() => {{ const k = document.getElementById('api-key'); k.value = {}; k.dispatchEvent(new Event('input', {{ bubbles: true }})); document.querySelector('[data-testid=lookup]').click(); return true; }})()",
                json!(creator_key)
            ))
            .await?;
            until("the device to approve", "!document.getElementById('confirm').hidden").await?;
            let joins = eval("document.getElementById('joins').textContent".into()).await?;
            if !joins.as_str().unwrap_or_default().contains(CREATOR) {
                bail!("the approval page does not say the device joins {CREATOR}: {joins}");
            }
            eval("(() => { document.getElementById('approve').click(); return true; })()".into()).await?;
            until("that the device was approved", "!document.getElementById('done').hidden").await?;
            anyhow::Ok(())
        }
        .await;
        browser.shutdown().await;
        approved
    })
}

#[test]
fn the_real_tray_app_signs_in_by_code_asks_consent_runs_a_job_pauses_and_speaks_french() -> Result<()> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        bail!("no session bus: run this test inside tests/support/desktop-session.sh (cargo xtask test does)");
    }
    let dir = scratch_dir("tray-webdriver")?;
    // The app's own log (it writes to the driver's output) is what one reads after a failure.
    drive(dir.path()).map_err(|e| {
        let log = fs::read_to_string(dir.path().join("tauri-driver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        e.context(format!("last lines of tauri-driver, WebKitWebDriver and the app:\n{}", tail.join("\n")))
    })
}

fn drive(dir: &Path) -> Result<()> {
    let root = workspace_root();
    let bins = Binaries::locate()?;
    let tray = tool(
        "EDGE_TRAY_BIN",
        &bins.hub.with_file_name("edge-agent-tray"),
        "build it with `cd ui && npm ci && npm run build`, then `cargo build -p edge-agent-tray`",
    )?;
    let tauri_driver = tool("EDGE_TAURI_DRIVER", &root.join("target/tools/bin/tauri-driver"), TAURI_DRIVER_INSTALL)?;
    let native_driver = tool(
        "EDGE_WEBKIT_WEBDRIVER",
        Path::new("/usr/bin/WebKitWebDriver"),
        "install the Debian package webkit2gtk-driver",
    )?;
    let shots = root.join("docs/screenshots");
    let en = catalogue("en")?;
    let fr = catalogue("fr")?;

    let xvfb = Xvfb::start(dir)?;
    let mut dunst = Command::new("dunst");
    dunst.env("DISPLAY", &xvfb.display);
    let _dunst =
        spawn_logged(dunst, &dir.join("dunst.log")).context("starting dunst (install the Debian package dunst)")?;
    wait_until(WAIT, || Ok(bus_name_owned("org.freedesktop.Notifications")))
        .context("no notification server on the session bus")?;
    let notifications_log = dir.join("notifications.log");
    let mut monitor = Command::new("dbus-monitor");
    monitor.args(["--session", "interface='org.freedesktop.Notifications'"]);
    let _monitor = spawn_logged(monitor, &notifications_log).context("starting dbus-monitor (Debian dbus-bin)")?;

    let hub = Hub::start(&bins, &dir.join("hub"), &[], &["--device-code-interval-secs", "1"])?;
    let operator_key = hub.api_key()?;
    let creator_key = hub.creator_key(CREATOR)?;
    let site = Site::start()?;
    let site_addr = site.base_url.trim_start_matches("http://").to_owned();
    // A fan site (the browser crate's test site) for a broadcast with progress.
    let fans = edge_browser::testsite::Site::start().context("starting the fan site")?;
    let fans_addr = fans.base_url.trim_start_matches("http://").trim_end_matches('/').to_owned();

    // A fresh profile whose person allowed the local site (the egress gate refuses loopback
    // otherwise); settings.json is where a person keeps that list.
    let data_dir = dir.join("agent-data");
    fs::create_dir_all(&data_dir)?;
    let settings_path = data_dir.join("settings.json");
    fs::write(&settings_path, json!({ "allowEgress": [site_addr, fans_addr] }).to_string())?;
    // The fan site's adapter, installed as a person installs one: a file in the agent's
    // adapters folder. Its login page is the site's auto-login page, which stands in for the
    // person typing their password into the login window the app opens.
    let adapters = data_dir.join("adapters");
    fs::create_dir_all(&adapters)?;
    let adapter = fans.adapter_yaml();
    let auto_login = adapter.replace("  login: /login\n", "  login: /login?auto=1\n");
    assert_ne!(auto_login, adapter, "the test site's adapter changed: update this test");
    fs::write(adapters.join(format!("{FAN_SITE}.yaml")), auto_login)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&settings_path, fs::Permissions::from_mode(0o600))?;
    }
    let granted = |name: &str| -> Result<bool> {
        let settings: Value = serde_json::from_str(&fs::read_to_string(&settings_path)?)?;
        Ok(settings["grants"].get(name).is_some())
    };

    // tauri-driver starts WebKitWebDriver, which starts the app: all three get this environment.
    let (port, native_port) = (free_port()?, free_port()?);
    let mut driver = Command::new(&tauri_driver);
    driver
        .args(["--port", &port.to_string(), "--native-port", &native_port.to_string()])
        .arg("--native-driver")
        .arg(&native_driver)
        .env("DISPLAY", &xvfb.display)
        .env("EDGE_AGENT_KEYCHAIN", "secret-service")
        .env("EDGE_AGENT_PROFILE", "webdriver")
        .env("EDGE_AGENT_DATA_DIR", &data_dir)
        .env("EDGE_AGENT_HB_INTERVAL_SECS", "5")
        .env("EDGE_AGENT_LOG", "info")
        // Quick typing and page pacing, and 1.5 s between recipients: the broadcast's
        // progress is on screen long enough to be seen.
        .env("EDGE_AGENT_BROWSER_PACING_MS", "0-0")
        .env("EDGE_AGENT_BROWSER_TYPING_MS", "1-2")
        .env("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS", "1500-1500")
        // English first: the app follows the system language until the person picks one.
        .env("LC_ALL", "C.UTF-8")
        .env("LANG", "C.UTF-8")
        .env_remove("LANGUAGE")
        .env_remove("LC_MESSAGES")
        .env_remove("WAYLAND_DISPLAY")
        // WebKitGTK on a bare X server: no GPU, no DMA-BUF.
        .env("WEBKIT_DISABLE_COMPOSITING_MODE", "1")
        .env("WEBKIT_DISABLE_DMABUF_RENDERER", "1")
        .env("LIBGL_ALWAYS_SOFTWARE", "1");
    let _driver = spawn_logged(driver, &dir.join("tauri-driver.log"))?;
    let driver_url = format!("http://127.0.0.1:{port}");
    wait_until(WAIT, || Ok(ureq::get(&format!("{driver_url}/status")).call().is_ok()))
        .context("tauri-driver never answered /status")?;

    let window = Session::start(
        &driver_url,
        json!({ "tauri:options": { "application": tray, "args": ["--show"] } }),
        Duration::from_secs(90),
    )?;

    // --- sign in by code ------------------------------------------------------------------
    wait_shown(&window, "#login-view")?;
    shoot(&xvfb, &shots.join("tray-en-sign-in.png"))?;
    window.type_into("#hub-url", &hub.url)?;
    window.click("#login-submit")?;
    wait_shown(&window, "#device-panel")?;
    let mut code = String::new();
    wait_until(WAIT, || {
        code = window.text("#device-code")?;
        Ok(code.len() == 9 && code.as_bytes()[4] == b'-')
    })
    .context("the window shows no XXXX-XXXX code")?;
    let page = window.text("#verification-uri")?;
    assert!(page.starts_with(&format!("{}/device", hub.url)), "the window names {page:?} as the approval page");
    assert_eq!(window.text("#device-title")?, en["deviceTitle"], "the window speaks English first");
    shoot(&xvfb, &shots.join("tray-en-sign-in-code.png"))?;
    approve_in_chromium(dir, &format!("{}/device?user_code={code}", hub.url), &code, &creator_key)?;

    // --- consent: nothing is granted until ticked -----------------------------------------
    wait_shown(&window, "#consent-view")?;
    assert!(!granted("http_request")?, "http_request was granted before anyone ticked it");
    shoot(&xvfb, &shots.join("tray-en-consent.png"))?;
    let http_box = "#consent-list input[data-capability=\"http_request\"]";
    window.click(http_box)?;
    wait_until(WAIT, || granted("http_request")).context("ticking the box did not grant http_request")?;
    assert!(!granted("bundle")?, "ticking one box granted another capability");
    wait_ticked(&window, http_box)?;
    // Browser tasks on the fan site: typed, then ticked like the others.
    let fan_capability = format!("browser:{FAN_SITE}");
    window.type_into("#site-name", FAN_SITE)?;
    window.click("#site-add")?;
    let fan_box = format!("#consent-list input[data-capability=\"{fan_capability}\"]");
    wait_shown(&window, &fan_box)?;
    assert!(!granted(&fan_capability)?, "typing a site granted it before it was ticked");
    window.click(&fan_box)?;
    wait_until(WAIT, || granted(&fan_capability)).context("ticking the fan site granted nothing")?;
    wait_ticked(&window, &fan_box)?;
    window.click("#consent-done")?;
    wait_shown(&window, "#status-view")?;
    let agents = hub.get(&operator_key, "/v1/agents")?;
    let agent = agents["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["creatorId"] == CREATOR))
        .ok_or_else(|| anyhow!("no agent of {CREATOR} at the hub: {agents}"))?;
    let agent_id = agent["agentId"].as_str().unwrap_or_default().to_owned();
    wait_until(WAIT, || Ok(window.text("#agent-id-value")? == agent_id))
        .context("the window does not show the agent")?;

    // --- a job: its row in the window, its notifications on the bus -------------------------
    // /slow answers after 5 s, so the window shows the job running before it is done.
    let job = web_request(&hub, &creator_key, &site.url("/slow"))?;
    let row = format!("#jobs-body tr[data-job-id=\"{job}\"]");
    let row_status = |s: &str| -> Result<bool> {
        Ok(window.script(
            "const r = document.querySelector(arguments[0]); return !!r && r.dataset.status === arguments[1];",
            json!([row, s]),
        )? == json!(true))
    };
    wait_until(WAIT, || row_status("running")).context("the job's row never showed it running")?;
    wait_until(WAIT, || Ok(job_status(&hub, &creator_key, &job)? == "succeeded")).context("the job did not succeed")?;
    wait_until(WAIT, || row_status("succeeded")).context("the job's row never showed it done")?;
    assert_eq!(site.hits("/slow"), 1, "the site served the job's request once");
    // The job's one notification, put up at its start and updated at its end, says what it
    // did in words (its kind here: a web request has no site or recipient), never its id.
    let (started, finished) = (tray_words("job_started")?.0, tray_words("job_finished")?.0);
    let kind = tray_words("kind_http_request")?.0;
    wait_until(WAIT, || {
        let log = fs::read_to_string(&notifications_log)?;
        Ok(log.contains("member=Notify") && log.contains(&finished) && log.contains(&kind))
    })
    .with_context(|| format!("no '{finished}' notification saying '{kind}' on the bus"))?;
    let log = fs::read_to_string(&notifications_log)?;
    assert!(log.contains(&started), "no '{started}' notification:\n{log}");
    window.script("window.scrollTo(0, 0); return true;", json!([]))?;
    shoot(&xvfb, &shots.join("tray-en-home.png"))?;
    // The Tasks screen: the job in words, done.
    window.click("#open-jobs")?;
    wait_shown(&window, "#jobs-view")?;
    wait_until(WAIT, || Ok(window.shown(&format!("#jobs-list li[data-job-id=\"{job}\"]"))?))
        .context("the Tasks screen does not list the job")?;
    window.click("#jobs-back")?;
    wait_shown(&window, "#status-view")?;

    // --- a broadcast on the fan site: log in from Settings, its progress in Tasks ------------
    // "Log in to fanhub" opens a visible browser window on the site's login page (on this
    // X display); the auto-login page logs in, and the app keeps the session.
    window.click("#open-settings")?;
    wait_shown(&window, "#settings-view")?;
    window.click(&format!("#site-logins button[data-site=\"{FAN_SITE}\"]"))?;
    let logged_in = en["siteLoggedIn"].replace("{site}", FAN_SITE);
    wait_until(Duration::from_secs(90), || Ok(window.text("#site-login-status")? == logged_in))
        .with_context(|| format!("the window never said '{logged_in}'"))?;
    assert!(fans.logins() >= 1, "the fan site saw no login");
    window.click("#settings-done")?;
    wait_shown(&window, "#status-view")?;
    window.click("#open-jobs")?;
    wait_shown(&window, "#jobs-view")?;
    let recipients = ["ann", "bob", "cyd"];
    let broadcast = hub.submit_job(
        &creator_key,
        &json!({ "type": "broadcast_dm", "creatorId": CREATOR,
                 "payload": { "adapter": { "local": FAN_SITE }, "recipients": recipients,
                              "params": { "text": "Hello from the tray test" } } }),
    )?;
    let broadcast = broadcast["id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no job id in {broadcast}"))?;
    // Part-way: the task's bar and count say how many of the three are sent.
    let count = format!("#jobs-list li[data-job-id=\"{broadcast}\"] .job-progress-count");
    wait_until(Duration::from_secs(90), || {
        let shown = window
            .script("const c = document.querySelector(arguments[0]); return c ? c.textContent : '';", json!([count]))?;
        Ok(matches!(shown.as_str(), Some("1/3") | Some("2/3")))
    })
    .context("the Tasks screen never showed the broadcast part-way (1/3 or 2/3)")?;
    shoot(&xvfb, &shots.join("tray-en-tasks.png"))?;
    wait_until(Duration::from_secs(90), || Ok(job_status(&hub, &creator_key, &broadcast)? == "succeeded"))
        .context("the broadcast did not succeed")?;
    for fan in recipients {
        assert_eq!(fans.messages_to(fan).len(), 1, "{fan} got the message once");
    }
    wait_until(WAIT, || {
        Ok(window
            .script("const c = document.querySelector(arguments[0]); return c ? c.textContent : '';", json!([count]))?
            == json!("3/3"))
    })
    .context("the Tasks screen never showed the broadcast at 3/3")?;
    window.click("#jobs-back")?;
    wait_shown(&window, "#status-view")?;

    // --- pause stops dispatch; resume and the job runs --------------------------------------
    window.click("#pause-toggle")?;
    wait_until(WAIT, || {
        Ok(window.script("return document.getElementById('pause-toggle').getAttribute('aria-pressed');", json!([]))?
            == json!("true"))
    })
    .context("Pause did not take")?;
    // The agent tells the hub at once over its open connection; a moment for it to land.
    std::thread::sleep(Duration::from_secs(1));
    let held = web_request(&hub, &creator_key, &site.url("/hello"))?;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let status = job_status(&hub, &creator_key, &held)?;
        assert_eq!(status, "pending", "a job submitted while paused was taken");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(site.hits("/hello"), 0, "the site was asked while paused");
    window.click("#pause-toggle")?;
    wait_until(WAIT, || Ok(job_status(&hub, &creator_key, &held)? == "succeeded"))
        .context("the held job did not run after Resume")?;
    assert_eq!(site.hits("/hello"), 1);

    // --- a second account: its own sign-in, consent and settings; switch back; pause all ----
    // Added from Settings, signed in with an enrollment token of another creator on the
    // same hub. Its folder is its own: nothing granted, and the local site the first
    // account's person allowed is not allowed here.
    let second_token = hub.enroll_token(SECOND)?;
    let second_key = hub.creator_key(SECOND)?;
    window.click("#open-settings")?;
    wait_shown(&window, "#settings-view")?;
    window.click("#account-add")?;
    wait_shown(&window, "#login-view")?;
    wait_shown(&window, "#account-bar")?;
    window.click("#login-mode")?;
    wait_shown(&window, "#token-field")?;
    window.type_into("#hub-url", &hub.url)?;
    window.type_into("#token", &second_token)?;
    window.click("#login-submit")?;
    wait_shown(&window, "#consent-view")?;
    let second_dir = data_dir.join("accounts").join("acct-2");
    let second_settings = second_dir.join("settings.json");
    let second_granted = |name: &str| -> Result<bool> {
        let Ok(text) = fs::read_to_string(&second_settings) else { return Ok(false) };
        Ok(serde_json::from_str::<Value>(&text)?["grants"].get(name).is_some())
    };
    assert!(!second_granted("http_request")?, "the new account started with the first one's grants");
    window.click(http_box)?;
    wait_until(WAIT, || second_granted("http_request")).context("the second account's tick granted nothing")?;
    wait_ticked(&window, http_box)?;
    window.click("#consent-done")?;
    wait_shown(&window, "#status-view")?;
    let second_agent = {
        let agents = hub.get(&operator_key, "/v1/agents")?;
        agents["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["creatorId"] == SECOND))
            .and_then(|a| a["agentId"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no agent of {SECOND} at the hub: {agents}"))?
    };
    assert_ne!(second_agent, agent_id);
    wait_until(WAIT, || Ok(window.text("#agent-id-value")? == second_agent))
        .context("the window does not show the second account's agent")?;
    // Its job runs on its own agent, under its own settings: the local site is refused.
    let refused = web_request_for(&hub, &second_key, SECOND, &site.url("/hello"))?;
    let refused_row = format!("#jobs-body tr[data-job-id=\"{refused}\"]");
    wait_until(WAIT, || {
        Ok(window.script(
            "const r = document.querySelector(arguments[0]); return !!r && r.dataset.status === 'failed';",
            json!([refused_row]),
        )? == json!(true))
    })
    .context("the second account's window never showed its job refused")?;
    assert_eq!(site.hits("/hello"), 1, "the second account reached the site only the first allowed");
    assert!(fs::read_to_string(&settings_path)?.contains(&site_addr), "the first account's settings changed");
    window.script("window.scrollTo(0, 0); return true;", json!([]))?;
    shoot(&xvfb, &shots.join("tray-en-accounts.png"))?;

    // Back to the first account through the bar.
    window.click("#account-select option[value=\"main\"]")?;
    wait_until(WAIT, || Ok(window.text("#agent-id-value")? == agent_id))
        .context("switching back did not show the first account")?;
    // Pause all: both accounts keep the pause; Resume all: neither does.
    let paused_in = |dir: &Path| -> Result<bool> {
        let Ok(text) = fs::read_to_string(dir.join("pause.json")) else { return Ok(false) };
        Ok(serde_json::from_str::<Value>(&text)?["paused"] == json!(true))
    };
    assert_eq!(window.text("#pause-all")?, en["pauseAll"]);
    window.click("#pause-all")?;
    wait_until(WAIT, || Ok(paused_in(&data_dir)? && paused_in(&second_dir)?))
        .context("Pause all did not pause both accounts")?;
    wait_until(WAIT, || Ok(window.text("#pause-all")? == en["resumeAll"]))
        .context("the button did not turn to Resume all")?;
    // Home redraws when the shown account's own state says paused, which comes after the
    // command's answer and moves the buttons; WebDriver clicks at a point on the screen, so
    // the next click waits for that, as a person's eye would.
    let pressed = |value: &str| -> Result<bool> {
        Ok(window.script("return document.getElementById('pause-toggle').getAttribute('aria-pressed');", json!([]))?
            == json!(value))
    };
    wait_until(WAIT, || pressed("true")).context("Home did not show the account paused")?;
    window.click("#pause-all")?;
    wait_until(WAIT, || Ok(!paused_in(&data_dir)? && !paused_in(&second_dir)?)).with_context(|| {
        format!(
            "Resume all did not resume both accounts (pause.json: {:?} and {:?}; the button says {:?})",
            fs::read_to_string(data_dir.join("pause.json")).ok(),
            fs::read_to_string(second_dir.join("pause.json")).ok(),
            window.text("#pause-all").ok(),
        )
    })?;
    wait_until(WAIT, || Ok(window.text("#pause-all")? == en["pauseAll"])).context("the button did not turn back")?;
    wait_until(WAIT, || pressed("false")).context("Home did not show the account running again")?;

    // --- settings, then French ---------------------------------------------------------------
    window.click("#open-settings")?;
    wait_shown(&window, "#settings-view")?;
    assert_eq!(window.text("#settings-title")?, en["settingsTitle"]);
    shoot(&xvfb, &shots.join("tray-en-settings.png"))?;
    window.click("#language option[value=\"fr\"]")?;
    wait_until(WAIT, || Ok(window.text("#settings-title")? == fr["settingsTitle"]))
        .context("the settings title did not turn French")?;
    assert_eq!(window.script("return document.documentElement.lang;", json!([]))?, json!("fr"));
    shoot(&xvfb, &shots.join("tray-fr-settings.png"))?;
    window.click("#settings-done")?;
    wait_shown(&window, "#status-view")?;
    assert_eq!(window.text("#usage-title")?, fr["usageTitle"]);
    shoot(&xvfb, &shots.join("tray-fr-home.png"))?;
    window.click("#open-jobs")?;
    wait_shown(&window, "#jobs-view")?;
    assert_eq!(window.text("#jobs-view-title")?, fr["jobsTitle"]);
    shoot(&xvfb, &shots.join("tray-fr-tasks.png"))?;
    window.click("#jobs-back")?;
    wait_shown(&window, "#status-view")?;
    window.click("#open-permissions")?;
    wait_shown(&window, "#consent-view")?;
    assert_eq!(window.text("#consent-title")?, fr["consentTitle"]);
    shoot(&xvfb, &shots.join("tray-fr-consent.png"))?;
    window.click("#consent-done")?;
    wait_shown(&window, "#status-view")?;
    // Log out: the sign-in screens, in French too.
    window.click("#logout")?;
    wait_shown(&window, "#login-view")?;
    assert_eq!(window.text("#login-title")?, fr["loginTitle"]);
    shoot(&xvfb, &shots.join("tray-fr-sign-in.png"))?;
    window.type_into("#hub-url", &hub.url)?;
    window.click("#login-submit")?;
    wait_shown(&window, "#device-panel")?;
    wait_until(WAIT, || Ok(window.text("#device-code")?.len() == 9)).context("no second code")?;
    assert_eq!(window.text("#device-title")?, fr["deviceTitle"]);
    shoot(&xvfb, &shots.join("tray-fr-sign-in-code.png"))?;
    window.click("#device-cancel")?;
    wait_shown(&window, "#login-start")?;

    window.end()?;
    Ok(())
}
