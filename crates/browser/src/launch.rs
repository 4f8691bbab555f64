//! Finding the installed browser and keeping one warm instance per creator profile.
//!
//! This module owns the search path for Chrome, Chromium and Edge on Windows, macOS and
//! Linux, the exact launch arguments, and restarting a browser that died. It must never
//! download a browser, never pass a flag that hides automation from the site, and passes
//! `--no-sandbox` only when the agent runs as root on Linux (Chromium refuses to start
//! sandboxed as root; that is our CI, not a creator's machine).

use crate::confine::Origins;
use crate::error::BrowserError;
use crate::fence::{Fence, Refusal};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::page::SetInterceptFileChooserDialogParams;
use chromiumoxide::cdp::browser_protocol::target::{CreateBrowserContextParams, CreateTargetParams};
use chromiumoxide::Page;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Arguments every launch gets. Background networking, component updates and sync are off
/// so the browser talks to nobody but the sites a flow visits.
pub const BASE_ARGS: &[&str] = &[
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--password-store=basic",
    "--metrics-recording-only",
    "--mute-audio",
];

const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools command may take before chromiumoxide gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where browsers usually live, most specific first.
fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if cfg!(target_os = "windows") {
        let roots: Vec<PathBuf> = ["PROGRAMFILES", "PROGRAMFILES(X86)", "LOCALAPPDATA"]
            .iter()
            .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
            .collect();
        for root in roots {
            out.push(root.join(r"Google\Chrome\Application\chrome.exe"));
            out.push(root.join(r"Chromium\Application\chrome.exe"));
            out.push(root.join(r"Microsoft\Edge\Application\msedge.exe"));
        }
    } else if cfg!(target_os = "macos") {
        for app in [
            "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
            "/Applications/Chromium.app/Contents/MacOS/Chromium",
            "/Applications/Microsoft Edge.app/Contents/MacOS/Microsoft Edge",
        ] {
            out.push(PathBuf::from(app));
            if let Some(home) = std::env::var_os("HOME") {
                out.push(PathBuf::from(home).join(app.trim_start_matches('/')));
            }
        }
    } else {
        for path in [
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
            "/usr/bin/google-chrome-stable",
            "/opt/google/chrome/chrome",
            "/usr/bin/microsoft-edge",
            "/usr/bin/microsoft-edge-stable",
            "/snap/bin/chromium",
        ] {
            out.push(PathBuf::from(path));
        }
    }
    out
}

/// The browser to drive: `configured` when given (it must exist), else the first installed
/// Chrome, Chromium or Edge.
pub fn find_browser(configured: Option<&Path>) -> Result<PathBuf, BrowserError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(BrowserError::NotInstalled(format!(
                "the browser set in the settings ({}) does not exist; fix the path or remove the setting",
                path.display()
            )))
        };
    }
    candidates().into_iter().find(|p| p.is_file()).ok_or_else(|| {
        let what = if cfg!(target_os = "linux") {
            "install Chromium (Debian/Ubuntu: `apt-get install --no-install-recommends chromium`) or Google Chrome"
        } else {
            "install Google Chrome, Chromium or Microsoft Edge"
        };
        BrowserError::NotInstalled(format!(
            "no Chrome, Chromium or Edge found in the usual places: {what}, or set the browser path in the settings (EDGE_AGENT_BROWSER)"
        ))
    })
}

/// Whether Chromium would refuse to start sandboxed: root on Linux.
pub fn needs_no_sandbox() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// How to start one browser.
#[derive(Debug, Clone)]
pub struct BrowserLaunch {
    pub executable: PathBuf,
    pub user_data_dir: PathBuf,
    /// A visible window (first login, debugging); headless otherwise.
    pub headful: bool,
    /// Appended last (the agent's egress proxy flags).
    pub extra_args: Vec<String>,
}

impl BrowserLaunch {
    /// The full argument list, as passed to the browser (also shown by tests and status).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = BASE_ARGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", self.user_data_dir.display()));
        args.push("--remote-debugging-port=0".to_owned());
        if !self.headful {
            args.push("--headless=new".to_owned());
            args.push("--hide-scrollbars".to_owned());
        }
        if needs_no_sandbox() {
            args.push("--no-sandbox".to_owned());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// Chromium's `SingletonLock` is a symlink to `<host>-<pid>`; if that pid is still a browser
/// on `profile`, it is ours from an earlier agent process and is stopped.
fn end_stale_browser(profile: &Path) {
    #[cfg(target_os = "linux")]
    {
        let Ok(target) = std::fs::read_link(profile.join("SingletonLock")) else { return };
        let Some(pid) = target.to_string_lossy().rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = format!("--user-data-dir={}", profile.display());
        if pid > 1 && String::from_utf8_lossy(&cmdline).split('\0').any(|arg| arg == needle) {
            tracing::warn!(pid, "a browser from an earlier agent process still runs on this profile; stopping it");
            // SAFETY: kill(2) on a pid whose command line names our own profile dir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = profile;
    }
}

/// A launched browser and the task pumping its DevTools connection.
pub struct RunningBrowser {
    pub browser: Browser,
    handler: JoinHandle<()>,
    /// The fence's task ([`crate::fence::guard`]) for a browser that runs jobs.
    fence: Option<JoinHandle<()>>,
    pub args: Vec<String>,
    pub headful: bool,
    pub launched_in: Duration,
}

impl RunningBrowser {
    pub async fn launch(spec: &BrowserLaunch) -> Result<RunningBrowser, BrowserError> {
        std::fs::create_dir_all(&spec.user_data_dir)
            .map_err(|e| BrowserError::Launch(format!("cannot create {}: {e}", spec.user_data_dir.display())))?;
        // A browser left running by a killed agent still holds this profile: end it (only a
        // process whose command line names this very profile dir), then clear its locks,
        // which would make the next browser exit at once.
        end_stale_browser(&spec.user_data_dir);
        for lock in ["SingletonLock", "SingletonSocket", "SingletonCookie"] {
            let _ = std::fs::remove_file(spec.user_data_dir.join(lock));
        }
        let args = spec.args();
        let mut builder = BrowserConfig::builder()
            .chrome_executable(&spec.executable)
            .disable_default_args()
            .launch_timeout(LAUNCH_TIMEOUT)
            .request_timeout(REQUEST_TIMEOUT)
            .viewport(None)
            .user_data_dir(&spec.user_data_dir)
            // chromiumoxide tells every page to ignore certificate errors unless asked not to;
            // a job restores the person's session cookies into its page, so a site that
            // cannot prove who it is must never get them.
            .respect_https_errors()
            // chromiumoxide adds its own headless flags unless told the browser is headful;
            // ours are in `args`.
            .with_head();
        // Our list carries --user-data-dir and the port too; chromiumoxide checks for the
        // port before adding its own and we set the data dir through the builder.
        for arg in args.iter().filter(|a| !a.starts_with("--user-data-dir=")) {
            let arg = arg.trim_start_matches("--");
            builder = match arg.split_once('=') {
                Some((key, value)) => builder.arg((key, value)),
                None => builder.arg(arg),
            };
        }
        let config = builder.build().map_err(BrowserError::Launch)?;
        let started = Instant::now();
        let (browser, mut handler) = Browser::launch(config)
            .await
            .map_err(|e| BrowserError::Launch(format!("{} did not start: {e}", spec.executable.display())))?;
        let handler = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(e) = event {
                    // Unknown events from a newer browser are harmless; a dead socket ends the loop.
                    tracing::trace!(error = %e, "devtools handler");
                }
            }
        });
        Ok(RunningBrowser {
            browser,
            handler,
            fence: None,
            args,
            headful: spec.headful,
            launched_in: started.elapsed(),
        })
    }

    /// False once the process exited or the DevTools connection ended.
    pub fn is_alive(&mut self) -> bool {
        if self.handler.is_finished() {
            return false;
        }
        matches!(self.browser.try_wait(), Ok(None))
    }

    /// Closes the browser and reaps its process.
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.browser.close()).await;
        if tokio::time::timeout(Duration::from_secs(3), self.browser.wait()).await.is_err() {
            let _ = self.browser.kill().await;
        }
        self.handler.abort();
        if let Some(fence) = self.fence.take() {
            fence.abort();
        }
    }
}

/// One isolated browsing context (fresh cookie jar) with one page, for one job.
pub struct JobContext {
    pub page: Page,
    /// What the fence refused in this context (never anything in the person's own window).
    pub refusal: Refusal,
    context_id: Option<chromiumoxide::cdp::browser_protocol::browser::BrowserContextId>,
    owner: Arc<Mutex<Option<RunningBrowser>>>,
    fence: Option<Fence>,
}

impl JobContext {
    /// Closes the page and forgets the context with all its cookies and storage.
    pub async fn dispose(self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.page.close()).await;
        if let (Some(fence), Some(id)) = (&self.fence, &self.context_id) {
            fence.unregister(id);
        }
        if let Some(id) = self.context_id {
            let guard = self.owner.lock().await;
            if let Some(running) = guard.as_ref() {
                let _ = tokio::time::timeout(Duration::from_secs(3), running.browser.dispose_browser_context(id)).await;
            }
        }
    }
}

/// The warm browser of one creator profile: launched on first use, reused by every job,
/// launched again when it died. Each job gets its own browser context, so nothing a job
/// leaves behind (cookies, storage) reaches the next one except through the encrypted
/// session state. The job contexts are fenced ([`crate::fence`]): their documents come only
/// from the job's origins, they open no windows and download nothing.
#[derive(Clone)]
pub struct WarmBrowser {
    spec: BrowserLaunch,
    running: Arc<Mutex<Option<RunningBrowser>>>,
    /// `None` for the person's own window ([`WarmBrowser::for_person`]).
    fence: Option<Fence>,
}

impl WarmBrowser {
    /// A browser for jobs: every context it opens is fenced.
    pub fn new(spec: BrowserLaunch) -> WarmBrowser {
        WarmBrowser { spec, running: Arc::new(Mutex::new(None)), fence: Some(Fence::default()) }
    }

    /// A browser the person drives by hand (the site login window): its first page is
    /// checked against the adapter's origins by the caller, after that the person goes where
    /// they choose (a login often passes through another origin, sometimes in a popup), so
    /// it is not fenced.
    pub fn for_person(spec: BrowserLaunch) -> WarmBrowser {
        WarmBrowser { spec, running: Arc::new(Mutex::new(None)), fence: None }
    }

    pub fn spec(&self) -> &BrowserLaunch {
        &self.spec
    }

    /// Launches the browser unless a live one is there. Returns whether it launched.
    pub async fn ensure(&self) -> Result<bool, BrowserError> {
        let mut guard = self.running.lock().await;
        if let Some(running) = guard.as_mut() {
            if running.is_alive() {
                return Ok(false);
            }
            tracing::warn!("the warm browser died; starting it again");
            if let Some(dead) = guard.take() {
                dead.shutdown().await;
            }
        }
        let mut running = RunningBrowser::launch(&self.spec).await?;
        if let Some(fence) = &self.fence {
            // Fenced before any job context exists: no document is ever loaded unjudged.
            let watch = match crate::fence::arm(&running.browser).await {
                Ok(watch) => watch,
                Err(e) => {
                    running.shutdown().await;
                    return Err(e);
                }
            };
            running.fence = Some(tokio::spawn(crate::fence::guard(fence.clone(), Arc::clone(&self.running), watch)));
        }
        tracing::info!(
            launched_ms = running.launched_in.as_millis() as u64,
            headful = running.headful,
            "browser started"
        );
        *guard = Some(running);
        Ok(true)
    }

    /// A fresh context and page in the warm browser (started or restarted as needed), whose
    /// documents must come from `origins` (a job's; the person's window is not fenced).
    pub async fn new_context(&self, origins: Origins) -> Result<JobContext, BrowserError> {
        self.ensure().await?;
        let guard = self.running.lock().await;
        let running = guard.as_ref().ok_or_else(|| BrowserError::Launch("the browser is not running".into()))?;
        let context_id = running
            .browser
            .create_browser_context(CreateBrowserContextParams::default())
            .await
            .map_err(|e| BrowserError::from_cdp("creating a browser context", e))?;
        let refusal = match &self.fence {
            Some(fence) => fence.register(context_id.clone(), origins.clone()),
            None => Refusal::default(),
        };
        let opened = async {
            if self.fence.is_some() {
                crate::fence::deny_downloads(&running.browser, Some(context_id.clone())).await?;
            }
            let mut params = CreateTargetParams::new("about:blank");
            params.browser_context_id = Some(context_id.clone());
            let page =
                running.browser.new_page(params).await.map_err(|e| BrowserError::from_cdp("opening a page", e))?;
            if let Some(fence) = &self.fence {
                fence.set_page(&context_id, page.clone());
                crate::fence::watch_frames(&page, origins, refusal.clone()).await?;
                // A page that opens a file chooser gets no dialog: files reach a site only
                // through `setInputFiles` and its folder rules.
                page.execute(SetInterceptFileChooserDialogParams::new(true))
                    .await
                    .map_err(|e| BrowserError::from_cdp("turning file choosers off", e))?;
            }
            Ok::<Page, BrowserError>(page)
        }
        .await;
        match opened {
            Ok(page) => Ok(JobContext {
                page,
                refusal,
                context_id: Some(context_id),
                owner: Arc::clone(&self.running),
                fence: self.fence.clone(),
            }),
            Err(e) => {
                if let Some(fence) = &self.fence {
                    fence.unregister(&context_id);
                }
                let _ = running.browser.dispose_browser_context(context_id).await;
                Err(e)
            }
        }
    }

    /// The launch arguments of the running browser, if any.
    pub async fn running_args(&self) -> Option<Vec<String>> {
        self.running.lock().await.as_ref().map(|r| r.args.clone())
    }

    /// The browser's process id, for memory measurements.
    pub async fn pid(&self) -> Option<u32> {
        let mut guard = self.running.lock().await;
        guard.as_mut().and_then(|r| r.browser.get_mut_child().and_then(|c| c.as_mut_inner().id()))
    }

    /// Kills the browser process (tests use it to prove a dead browser is replaced).
    pub async fn kill_for_test(&self) {
        let mut guard = self.running.lock().await;
        if let Some(running) = guard.as_mut() {
            let _ = running.browser.kill().await;
        }
    }

    pub async fn shutdown(&self) {
        if let Some(running) = self.running.lock().await.take() {
            running.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_args_carry_the_quiet_flags_and_the_profile_dir() {
        let spec = BrowserLaunch {
            executable: "/usr/bin/chromium".into(),
            user_data_dir: "/tmp/edge-profile".into(),
            headful: false,
            extra_args: vec!["--proxy-server=http://127.0.0.1:1".into()],
        };
        let args = spec.args();
        for flag in
            ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
        {
            assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
        }
        assert!(args.contains(&"--headless=new".to_owned()));
        assert!(args.contains(&"--user-data-dir=/tmp/edge-profile".to_owned()));
        assert_eq!(args.contains(&"--no-sandbox".to_owned()), needs_no_sandbox());
        assert_eq!(args.last().map(String::as_str), Some("--proxy-server=http://127.0.0.1:1"));
        let headful = BrowserLaunch { headful: true, ..spec }.args();
        assert!(!headful.iter().any(|a| a.starts_with("--headless")));
        // Nothing that hides automation from the site.
        assert!(!args.iter().any(|a| a.contains("AutomationControlled")));
    }

    #[test]
    fn a_missing_configured_browser_says_so() {
        let error = find_browser(Some(Path::new("/nonexistent/chrome"))).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/chrome"));
    }
}
