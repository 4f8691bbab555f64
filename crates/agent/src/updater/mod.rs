//! Agent updates: find a newer release of the agent in the hub's signed release metadata,
//! decide whether this machine takes it (version, rollout stage, earlier failures), download
//! and verify it, swap it in and hold it on probation until it reaches the hub
//! ([`install`]). Checks run at start, every 24 h with up to 2 h of jitter, and on demand
//! (`edge-agent update check|apply`).
//!
//! Trust is the bundles' machinery (`edge_bundle::verify`): the channel's TUF view under
//! the root this agent received at enrollment, with `tough`'s signature, expiry and rollback
//! checks, the highest metadata versions kept in the person's data directory
//! (`<data dir>/updates/tuf/`, which no package install or reinstall touches), then the
//! target's signed length and SHA-256, then the version stamped inside the downloaded binary
//! (`version_slot`), which must equal the signed version: old bytes re-signed as a newer
//! version are refused. An offered version not above the running one is never installed.
//!
//! This module owns those decisions and the updater's files under `<data dir>/updates/`. It
//! imports only downward (bundles' transport and download, the protocol); it must never
//! install while a job runs, never run or install a byte that failed a check, and never
//! install a version that already failed its probation on this machine.

pub mod install;
pub mod package;
pub mod version_slot;

use crate::bundles::download::{self, Signed};
use crate::bundles::{HubAuth, HubTransport};
use edge_bundle::verify::{FoundRelease, TrustStore, VerifyError};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use version_slot::running_version;

pub const DEFAULT_CHANNEL: &str = "stable";
pub const CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);
pub const CHECK_JITTER: Duration = Duration::from_secs(2 * 3600);
/// The new version must reach `hb_ack` within this long of its first start.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(60);
/// How long the candidate binary gets to print its version before it is installed.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The downloaded binary says it is another version than the signed metadata does.
pub const UPDATE_VERSION_MISMATCH: &str = "UPDATE_VERSION_MISMATCH";
/// The downloaded binary does not run on this machine (truncated, wrong format).
pub const UPDATE_BROKEN: &str = "UPDATE_BROKEN";

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A trust check failed; `code` is one of `edge_bundle::codes` or the `UPDATE_*` above.
    #[error("update refused ({code}): {message}")]
    Refused { code: &'static str, message: String },
    #[error("a job is running; updates never start in the middle of a job, try again when it has finished")]
    Busy,
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Agent(#[from] crate::AgentError),
}

impl UpdateError {
    /// A stable code for the window, which words each kind in the person's language.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::Refused { .. } => "update_refused",
            UpdateError::Busy => "update_busy",
            UpdateError::Io(_) => "update_failed",
            UpdateError::Agent(e) => e.code(),
        }
    }
}

/// `{code, message}`, like `AgentError`: what a window command's failure carries.
impl Serialize for UpdateError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let UpdateError::Agent(e) = self {
            return e.serialize(serializer);
        }
        use serde::ser::SerializeStruct;
        let mut state = serializer.serialize_struct("UpdateError", 2)?;
        state.serialize_field("code", self.code())?;
        state.serialize_field("message", &self.to_string())?;
        state.end()
    }
}

impl From<VerifyError> for UpdateError {
    fn from(e: VerifyError) -> UpdateError {
        UpdateError::Refused { code: e.code, message: e.message }
    }
}

/// The platform name releases are published under.
pub fn platform() -> &'static str {
    match std::env::consts::OS {
        "macos" => "macos",
        "windows" => "windows",
        _ => "linux",
    }
}

pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// What an update check needs; cheap to clone.
#[derive(Clone)]
pub struct UpdaterContext {
    pub data_dir: PathBuf,
    /// `http(s)://host:port` of the hub, no trailing slash.
    pub hub_base: String,
    pub http: reqwest::Client,
    pub auth: HubAuth,
    pub agent_id: String,
    pub channel: String,
}

/// The releases' own trust store (`<data dir>/updates/tuf/`), with the newest release root
/// this agent verified; none before the first update check.
pub fn release_trust_store(data_dir: &Path) -> TrustStore {
    TrustStore::new(data_dir.join("updates").join("tuf"))
}

impl UpdaterContext {
    /// The releases' own trust store; its root starts as the bundles' one (same hub root).
    pub fn trust(&self) -> Result<TrustStore, UpdateError> {
        let store = release_trust_store(&self.data_dir);
        if !store.has_root() {
            let root = std::fs::read(crate::bundles::trust_store(&self.data_dir).root_path()).map_err(|_| {
                UpdateError::Refused {
                    code: edge_bundle::codes::TRUST_ROOT_MISSING,
                    message: "this agent has no trusted root.json from its hub; log in again to receive it".into(),
                }
            })?;
            store.install_root(&root)?;
        }
        Ok(store)
    }
}

/// The share bucket (0–99) of this agent for one version: a release at rollout P% is
/// offered to the agents whose bucket is below P. Salted with the version so the first
/// agents of each release are not always the same machines.
pub fn rollout_bucket(agent_id: &str, version: &str) -> u8 {
    let digest = sha2::Sha256::digest(format!("edge-agent/rollout/v1\n{agent_id}\n{version}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// What this machine does with what the metadata offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Decision {
    /// Nothing above the running version is offered.
    UpToDate,
    /// A newer version exists but this agent's bucket is not in its rollout yet.
    NotYetInRollout {
        version: String,
        bucket: u8,
        rollout_percent: u8,
    },
    /// A newer version that already failed its probation here; never installed again.
    FailedBefore {
        version: String,
    },
    Available {
        version: String,
    },
}

/// The offered release against the running version, rollout and earlier failures.
pub fn decide(running: &str, offered: Option<&FoundRelease>, agent_id: &str, failed: &[String]) -> Decision {
    let Some(found) = offered else { return Decision::UpToDate };
    let version = found.release.version.to_string();
    let newer = semver::Version::parse(running).map_or(true, |running| found.release.version > running);
    if !newer {
        return Decision::UpToDate;
    }
    if failed.contains(&version) {
        return Decision::FailedBefore { version };
    }
    let bucket = rollout_bucket(agent_id, &version);
    if bucket >= found.meta.rollout_percent {
        return Decision::NotYetInRollout { version, bucket, rollout_percent: found.meta.rollout_percent };
    }
    Decision::Available { version }
}

/// One check's outcome, as `edge-agent update check --json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub running: String,
    pub channel: String,
    pub platform: String,
    pub arch: String,
    pub decision: Decision,
    /// The newest release offered to this platform, whatever the decision.
    pub offered: Option<Offer>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    pub version: String,
    pub notes: String,
    pub rollout_percent: u8,
    pub length: u64,
    pub sha256: String,
    pub published_at: String,
}

/// The updater's own memory (`updates/state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdaterState {
    /// Versions that failed their probation on this machine.
    #[serde(default)]
    pub failed_versions: Vec<String>,
    /// Last time the hub's release metadata was read and verified (RFC 3339).
    #[serde(default)]
    pub last_verified_check: Option<String>,
    /// The same, in Unix seconds (what the unreachable warning counts from).
    #[serde(default)]
    pub last_verified_unix: Option<i64>,
    /// First failed check since the last verified one (Unix seconds): a copy that never
    /// reached its updates counts from its first try.
    #[serde(default)]
    pub failing_since_unix: Option<i64>,
    /// A newer version offered to this machine that this copy does not install itself.
    #[serde(default)]
    pub available: Option<String>,
    /// The offer is a package of the kind this program was installed from, which the
    /// tray installs when the person asks ([`package::install`]).
    #[serde(default)]
    pub installable: bool,
}

impl UpdaterState {
    /// Whole days without a verified check, once more than [`UNREACHABLE_WARNING`].
    pub fn unreachable_days(&self, now_unix: i64) -> Option<u32> {
        let since = self.last_verified_unix.or(self.failing_since_unix)?;
        let elapsed = now_unix.saturating_sub(since);
        (elapsed > UNREACHABLE_WARNING.as_secs() as i64).then_some((elapsed / 86_400) as u32)
    }
}

/// Updates not verified for longer than this: the person is told (tray, `edge-agent status`).
pub const UNREACHABLE_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the running program looks at its own file for a version installed underneath
/// it (a package upgrade), between the daily checks.
const LOOK_AT_DISK_EVERY: Duration = Duration::from_secs(10 * 60);

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// What the person should know, from the updater's memory and the version of the program
/// file on disk (`version_slot::version_of` of its path).
pub fn status(data_dir: &Path, on_disk: Option<String>, now_unix: i64) -> crate::state::UpdateStatus {
    let state = load_state(data_dir);
    let running = running_version();
    let newer = |version: &String| match (semver::Version::parse(version), semver::Version::parse(&running)) {
        (Ok(offered), Ok(running)) => offered > running,
        _ => false,
    };
    crate::state::UpdateStatus {
        // Any other version on disk is what the next start runs, newer or not.
        ready: on_disk.filter(|on_disk| *on_disk != running),
        available: state.available.clone().filter(newer),
        installable: state.installable && state.available.as_ref().is_some_and(newer),
        last_verified_check: state.last_verified_check.clone(),
        unreachable_days: state.unreachable_days(now_unix),
    }
}

fn remember(data_dir: &Path, change: impl FnOnce(&mut UpdaterState)) -> Result<(), UpdateError> {
    let mut state = load_state(data_dir);
    change(&mut state);
    install::write_json(&state_path(data_dir), &state)
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("updates").join("state.json")
}

pub fn load_state(data_dir: &Path) -> UpdaterState {
    install::read_json(&state_path(data_dir)).ok().flatten().unwrap_or_default()
}

pub fn failed_versions(data_dir: &Path) -> Vec<String> {
    load_state(data_dir).failed_versions
}

pub(crate) fn remember_failed(data_dir: &Path, version: &str) -> Result<(), UpdateError> {
    remember(data_dir, |state| {
        if !state.failed_versions.iter().any(|v| v == version) {
            state.failed_versions.push(version.to_owned());
        }
    })
}

/// A check that did not verify: the unreachable warning counts from the first one.
fn remember_check_failed(data_dir: &Path, now_unix: i64) {
    let kept = remember(data_dir, |state| {
        state.failing_since_unix.get_or_insert(now_unix);
    });
    if let Err(e) = kept {
        tracing::warn!(error = %e, "cannot remember the failed update check");
    }
}

/// Refreshes the channel's metadata and decides, for this program's headless binary.
pub async fn check(ctx: &UpdaterContext) -> Result<(CheckReport, Option<FoundRelease>), UpdateError> {
    check_platforms(ctx, &[platform()]).await
}

/// Refreshes the channel's metadata and decides on the newest release of the first of
/// `platforms` the channel has one for (the tray: its package's, else the headless
/// binary's, which tells the same version). The state remembers whether the offer is a
/// package this program can install (`installable`).
pub async fn check_platforms(
    ctx: &UpdaterContext,
    platforms: &[&str],
) -> Result<(CheckReport, Option<FoundRelease>), UpdateError> {
    let url =
        url::Url::parse(&format!("{}{}{}/metadata/", ctx.hub_base, edge_protocol::api::RELEASES_PATH, ctx.channel))
            .map_err(|e| UpdateError::Io(format!("hub URL: {e}")))?;
    let verified = ctx.trust()?.refresh(url, HubTransport::new(ctx.http.clone(), ctx.auth.clone())).await?;
    let mut found = None;
    for platform in platforms {
        found = verified.find_release(&ctx.channel, platform, arch())?;
        if found.is_some() {
            break;
        }
    }
    let running = running_version();
    let mut state = load_state(&ctx.data_dir);
    let decision = decide(&running, found.as_ref(), &ctx.agent_id, &state.failed_versions);
    state.last_verified_check = Some(crate::now_rfc3339());
    state.last_verified_unix = Some(now_unix());
    state.failing_since_unix = None;
    state.available = match &decision {
        Decision::Available { version } => Some(version.clone()),
        _ => None,
    };
    state.installable = state.available.is_some()
        && found.as_ref().is_some_and(|f| package::PackageKind::ALL.iter().any(|k| k.platform() == f.meta.platform));
    install::write_json(&state_path(&ctx.data_dir), &state)?;
    let offered = found.as_ref().map(|f| Offer {
        version: f.release.version.to_string(),
        notes: f.meta.notes.clone(),
        rollout_percent: f.meta.rollout_percent,
        length: f.length,
        sha256: f.sha256.clone(),
        published_at: f.meta.published_at.clone(),
    });
    let report = CheckReport {
        running,
        channel: ctx.channel.clone(),
        platform: found
            .as_ref()
            .map_or_else(|| platforms.first().copied().unwrap_or_default().into(), |f| f.meta.platform.clone()),
        arch: arch().into(),
        decision,
        offered,
    };
    Ok((report, found))
}

/// Downloads the release, checks its signed length and SHA-256, the version inside it and
/// that it runs here; returns the verified file.
pub async fn download(ctx: &UpdaterContext, found: &FoundRelease) -> Result<PathBuf, UpdateError> {
    let file = fetch_release(ctx, found, "bin").await?;
    let expected = found.release.version.to_string();
    let refuse = |code: &'static str, message: String| {
        let _ = std::fs::remove_file(&file);
        UpdateError::Refused { code, message }
    };
    match version_slot::version_of(&file) {
        Ok(inside) if inside == expected => {}
        Ok(inside) => {
            return Err(refuse(
                UPDATE_VERSION_MISMATCH,
                format!(
                    "the release signed as version {expected} contains version {inside}: an older build \
                     presented as new is never installed"
                ),
            ))
        }
        Err(e) => return Err(refuse(UPDATE_VERSION_MISMATCH, e.to_string())),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755));
    }
    match self_test(&file, &ctx.data_dir.join("updates").join("self-test")).await {
        Ok(printed) if printed == expected => Ok(file),
        Ok(printed) => {
            Err(refuse(UPDATE_BROKEN, format!("the new binary reports version {printed:?}, not {expected}")))
        }
        Err(e) => Err(refuse(UPDATE_BROKEN, format!("the new binary does not run on this machine: {e}"))),
    }
}

/// Downloads a release target into `<data dir>/updates/downloads/` as `*.<extension>` and
/// checks its signed length and SHA-256; what is inside is the caller's to check.
async fn fetch_release(ctx: &UpdaterContext, found: &FoundRelease, extension: &str) -> Result<PathBuf, UpdateError> {
    let url = format!("{}{}targets/{}", ctx.hub_base, edge_protocol::api::RELEASES_PATH, release_url_tail(found));
    let signed = Signed { length: found.length, sha256: &found.sha256, extension, what: "update" };
    let downloads = ctx.data_dir.join("updates").join("downloads");
    Ok(download::fetch_signed(&ctx.http, &ctx.auth, &url, &signed, &downloads).await?)
}

fn release_url_tail(found: &FoundRelease) -> String {
    // `_release/<channel>/<platform>/<arch>/<sha>.<version>` is served under `targets/`
    // without its `_release/` prefix.
    found.target_file.strip_prefix(edge_bundle::release::RELEASE_PATH_PREFIX).unwrap_or(&found.target_file).to_owned()
}

/// Runs `<binary> update self-test` (its logs in `data_dir`, away from the person's) and
/// returns what it printed.
async fn self_test(binary: &Path, data_dir: &Path) -> Result<String, String> {
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["update", "self-test"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| e.to_string())?;
    let output = tokio::time::timeout(SELF_TEST_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("it did not answer within {} s", SELF_TEST_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("it exited with {}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What [`apply`] did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    pub check: CheckReport,
    /// The version now installed at `exe`, when one was installed by this call.
    pub installed: Option<String>,
    pub exe: PathBuf,
    /// The previous binary, kept for the rollback.
    pub previous: Option<PathBuf>,
    /// Seconds the new version has, from its first start, to reach the hub.
    pub probation_secs: u64,
}

/// Check, and when the decision is `Available`: download, verify, swap the binary at `exe`
/// and put it on probation. `busy` is asked right before the swap.
pub async fn apply(
    ctx: &UpdaterContext,
    exe: &Path,
    probation: Duration,
    busy: impl Fn() -> bool,
) -> Result<ApplyReport, UpdateError> {
    if busy() {
        return Err(UpdateError::Busy);
    }
    let (check, found) = check(ctx).await?;
    let mut report = ApplyReport {
        check: check.clone(),
        installed: None,
        exe: exe.to_path_buf(),
        previous: None,
        probation_secs: probation.as_secs(),
    };
    let (Decision::Available { version }, Some(found)) = (&check.decision, found) else { return Ok(report) };
    // Installed already (by `edge-agent update apply` beside a running agent) but not
    // started yet: nothing to download, the restart is what is missing (the running agent
    // restarts into it when idle).
    if version_slot::version_of(exe).ok().as_deref() == Some(version.as_str()) {
        report.installed = Some(version.clone());
        return Ok(report);
    }
    if install::probation(&ctx.data_dir)?.is_some() {
        return Err(UpdateError::Io(
            "an installed update is still on probation (waiting for its first start and hb_ack); restart the agent \
             first"
                .into(),
        ));
    }
    let file = download(ctx, &found).await?;
    if busy() {
        return Err(UpdateError::Busy);
    }
    let previous = install::swap(exe, &file)?;
    let _ = std::fs::remove_file(&file);
    install::begin_probation(
        &ctx.data_dir,
        &install::Probation {
            version: version.clone(),
            previous_version: check.running.clone(),
            exe: exe.to_path_buf(),
            previous: previous.clone(),
            channel: ctx.channel.clone(),
            platform: platform().into(),
            arch: arch().into(),
            window_secs: probation.as_secs().max(1),
            first_start_unix: None,
        },
    )?;
    tracing::info!(version, previous = %previous.display(), "update installed; it runs from the next start");
    report.installed = Some(version.clone());
    report.previous = Some(previous);
    Ok(report)
}

/// Sends a kept `update_failed` report; removes it once the hub has it (or cannot take it:
/// an older hub answers 404).
pub async fn send_failure_report(ctx: &UpdaterContext) -> Result<bool, UpdateError> {
    let path = install::failed_path(&ctx.data_dir);
    let Some(report) = install::read_json::<edge_protocol::api::UpdateFailedRequest>(&path)? else {
        return Ok(false);
    };
    let url = format!("{}{}", ctx.hub_base, edge_protocol::api::UPDATE_FAILED_PATH);
    let request = ctx.auth.authorize(ctx.http.post(&url).json(&report)).await?;
    let response = request.send().await.map_err(|e| {
        UpdateError::Io(format!(
            "cannot report the failed update: {}",
            crate::hub_client::describe_reqwest_error(&e.without_url())
        ))
    })?;
    let status = response.status();
    if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
        let _ = std::fs::remove_file(&path);
        tracing::info!(version = %report.version, %status, "failed update reported to the hub");
        return Ok(status.is_success());
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        ctx.auth.refused().await;
    }
    Err(UpdateError::Io(format!("the hub answered {status} to the failed-update report; it is kept for later")))
}

/// How the running program updates itself.
#[derive(Debug, Clone)]
pub struct AutoUpdate {
    pub channel: String,
    pub interval: Duration,
    pub probation: Duration,
    /// Whether this program installs the releases it finds by itself. The headless agent
    /// does; the tray app does not: it is installed as a package (deb, rpm, MSI, dmg), so it
    /// tells the person what is offered, installs its own deb or rpm only when they press
    /// "Install now" ([`package`]), and restarts when they say.
    pub self_replace: bool,
    /// Notified once an update is installed and the agent should restart into it (only
    /// when it replaces itself; otherwise the person chooses when).
    pub restart: std::sync::Arc<tokio::sync::Notify>,
    /// Wakes the updater to look at its program file now rather than at its next look
    /// (after the person's "Install now" put a new version there).
    pub look: std::sync::Arc<tokio::sync::Notify>,
}

impl AutoUpdate {
    pub fn new(channel: String, probation: Duration) -> AutoUpdate {
        AutoUpdate {
            channel,
            interval: CHECK_EVERY,
            probation,
            self_replace: true,
            restart: Default::default(),
            look: Default::default(),
        }
    }

    /// Checks and tells, never installs (the tray app; see [`AutoUpdate::self_replace`]).
    pub fn tell_only(channel: String) -> AutoUpdate {
        AutoUpdate { self_replace: false, ..AutoUpdate::new(channel, DEFAULT_PROBATION) }
    }
}

/// The hour (this machine's clock) of a restart put off to "tonight": late enough that the
/// person is rarely at the machine.
pub const TONIGHT_HOUR: u32 = 3;

/// When the person wants to restart into an installed update: now, or tonight. Either way
/// only when no job runs (the caller asks [`RestartPlan::due`] with the busy count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RestartWhen {
    Now,
    Tonight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPlan {
    /// Local wall-clock time; `None`: as soon as no job runs.
    not_before: Option<chrono::NaiveDateTime>,
}

impl RestartPlan {
    pub fn new(when: RestartWhen, now: chrono::NaiveDateTime) -> RestartPlan {
        RestartPlan {
            not_before: match when {
                RestartWhen::Now => None,
                RestartWhen::Tonight => Some(tonight_after(now)),
            },
        }
    }

    /// Compared with the wall clock rather than counted down, so a machine that sleeps
    /// through the night restarts at its first idle moment after waking, not hours late.
    pub fn due(&self, now: chrono::NaiveDateTime, busy: u32) -> bool {
        busy == 0 && self.not_before.is_none_or(|at| now >= at)
    }

    pub fn not_before(&self) -> Option<chrono::NaiveDateTime> {
        self.not_before
    }
}

/// The first [`TONIGHT_HOUR`]:00 after `now`.
pub fn tonight_after(now: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
    let today = now.date().and_hms_opt(TONIGHT_HOUR, 0, 0).unwrap_or(now);
    if today > now {
        today
    } else {
        today + chrono::Duration::days(1)
    }
}

fn jittered(interval: Duration) -> Duration {
    let jitter = CHECK_JITTER.min(interval / 4);
    let spread = jitter.as_millis() as u64;
    if spread == 0 {
        return interval;
    }
    let offset = rand::random::<u64>() % (2 * spread);
    (interval + Duration::from_millis(offset)).saturating_sub(jitter)
}

/// The program file as last looked at: its size and time, and the version inside.
type FileSeen = (u64, Option<std::time::SystemTime>, Option<String>);

/// Keeps the snapshot's update status current and announces each new piece once.
struct Announcer {
    state: crate::state::StateHandle,
    exe: Option<PathBuf>,
    data_dir: PathBuf,
    /// Reading the version means reading the whole program (tens of MB): done only when
    /// its size or time changed. At start the file is taken to be what runs.
    seen: Option<FileSeen>,
}

impl Announcer {
    fn new(state: crate::state::StateHandle, exe: Option<PathBuf>, data_dir: PathBuf) -> Announcer {
        let seen = exe
            .as_deref()
            .and_then(|exe| std::fs::metadata(exe).ok())
            .map(|m| (m.len(), m.modified().ok(), Some(running_version())));
        Announcer { state, exe, data_dir, seen }
    }

    fn on_disk(&mut self) -> Option<String> {
        let exe = self.exe.as_deref()?;
        let meta = std::fs::metadata(exe).ok()?;
        let key = (meta.len(), meta.modified().ok());
        match &self.seen {
            Some((len, modified, version)) if (*len, *modified) == key => version.clone(),
            _ => {
                let version = version_slot::version_of(exe).ok();
                self.seen = Some((key.0, key.1, version.clone()));
                version
            }
        }
    }

    fn publish(&mut self) {
        let on_disk = self.on_disk();
        let status = status(&self.data_dir, on_disk, now_unix());
        let before = self.state.snapshot().updates;
        if status == before {
            return;
        }
        self.state.update(|s| s.updates = status.clone());
        use crate::state::AgentEvent;
        if let Some(version) = status.ready.clone().filter(|v| before.ready.as_ref() != Some(v)) {
            self.state.emit(AgentEvent::UpdateReady { version });
        }
        if let Some(version) = status.available.clone().filter(|v| before.available.as_ref() != Some(v)) {
            self.state.emit(AgentEvent::UpdateAvailable { version });
        }
        if let (Some(days), None) = (status.unreachable_days, before.unreachable_days) {
            self.state.emit(AgentEvent::UpdatesUnreachable { days });
        }
    }
}

/// The running program's updater: reports a kept failure, then checks at start and every
/// `interval` (jittered), and between checks looks at its own file for a version installed
/// underneath it. Where it replaces itself, it installs when idle and asks for a restart;
/// never while the installed version is on probation.
pub(crate) async fn run(
    ctx: UpdaterContext,
    options: AutoUpdate,
    state: crate::state::StateHandle,
    cancel: tokio_util::sync::CancellationToken,
) {
    let exe = match install::installed_exe() {
        Ok(exe) => Some(exe),
        Err(e) => {
            tracing::warn!(error = %e, "this program cannot find its own file: it only checks for updates");
            None
        }
    };
    let installs = match exe.as_deref() {
        Some(exe) if options.self_replace => match install::self_replaceable(exe) {
            Ok(()) => Some(exe.to_path_buf()),
            Err(why) => {
                tracing::info!(exe = %exe.display(), why, "updates are checked and shown, not installed by this copy");
                None
            }
        },
        _ => None,
    };
    // A copy that does not replace itself but came from a package (the tray's deb or rpm)
    // looks for its package's release first: the person can install that one from the window.
    let package = exe.as_deref().filter(|_| !options.self_replace).and_then(package::installed_package);
    let platforms = package::release_platforms(package.as_ref());
    let mut announcer = Announcer::new(state.clone(), exe.clone(), ctx.data_dir.clone());
    if let Err(e) = send_failure_report(&ctx).await {
        tracing::warn!(error = %e, "cannot report the failed update yet");
    }
    let mut next_check = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_check {
            next_check = tokio::time::Instant::now() + jittered(options.interval);
            // Not while this version is on probation: it must first prove it reaches the hub.
            let on_probation =
                install::probation(&ctx.data_dir).ok().flatten().is_some_and(|m| m.version == running_version());
            let outcome = match (&installs, on_probation) {
                (_, true) => None,
                (Some(exe), false) => {
                    let busy = || state.snapshot().busy > 0;
                    Some(apply(&ctx, exe, options.probation, busy).await.map(|r| (r.check.decision, r.installed)))
                }
                (None, false) => {
                    Some(check_platforms(&ctx, &platforms).await.map(|(report, _)| (report.decision, None)))
                }
            };
            match outcome {
                None => {}
                Some(Ok((_, Some(version)))) => {
                    tracing::info!(version, "restarting into the installed update");
                    announcer.publish();
                    options.restart.notify_one();
                    return;
                }
                Some(Ok((decision, None))) => tracing::info!(?decision, "update check"),
                // Try again soon rather than in a day.
                Some(Err(UpdateError::Busy)) => {
                    next_check = tokio::time::Instant::now() + options.interval.min(Duration::from_secs(30))
                }
                // A hub that never gave this agent a root has no signed releases to offer:
                // nothing is unreachable, so nothing to warn about.
                Some(Err(UpdateError::Refused { code: edge_bundle::codes::TRUST_ROOT_MISSING, .. })) => {
                    tracing::info!("the hub gave no signing root at login: it offers no updates");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "update check failed");
                    remember_check_failed(&ctx.data_dir, now_unix());
                }
            }
        }
        announcer.publish();
        let nap = next_check.saturating_duration_since(tokio::time::Instant::now()).min(LOOK_AT_DISK_EVERY);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(nap) => {}
            _ = options.look.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_bundle::release::{ReleaseMeta, ReleaseRef};

    fn offered(version: &str, rollout: u8) -> FoundRelease {
        FoundRelease {
            release: ReleaseRef::new("stable", "linux", "x86_64", version).unwrap(),
            length: 1,
            sha256: "0".repeat(64),
            meta: ReleaseMeta {
                channel: "stable".into(),
                platform: "linux".into(),
                arch: "x86_64".into(),
                version: version.into(),
                notes: String::new(),
                rollout_percent: rollout,
                paused: false,
                published_at: String::new(),
                sha256: "0".repeat(64),
            },
            target_file: String::new(),
        }
    }

    #[test]
    fn only_a_newer_version_is_installed() {
        assert_eq!(decide("2.0.0", None, "agt_1", &[]), Decision::UpToDate);
        assert_eq!(decide("2.0.0", Some(&offered("2.0.0", 100)), "agt_1", &[]), Decision::UpToDate);
        // An older version offered as the newest (a stale or hostile channel) is not taken.
        assert_eq!(decide("2.0.0", Some(&offered("1.9.9", 100)), "agt_1", &[]), Decision::UpToDate);
        assert_eq!(
            decide("2.0.0", Some(&offered("2.0.1-rc.1", 100)), "agt_1", &[]),
            Decision::Available { version: "2.0.1-rc.1".into() }
        );
    }

    #[test]
    fn a_version_that_failed_here_is_never_taken_again() {
        let failed = vec!["3.0.0".to_owned()];
        assert_eq!(
            decide("2.0.0", Some(&offered("3.0.0", 100)), "agt_1", &failed),
            Decision::FailedBefore { version: "3.0.0".into() }
        );
        assert!(matches!(decide("2.0.0", Some(&offered("3.0.1", 100)), "agt_1", &failed), Decision::Available { .. }));
    }

    #[test]
    fn rollout_stages_agents_by_a_stable_hash() {
        assert_eq!(rollout_bucket("agt_1", "3.0.0"), rollout_bucket("agt_1", "3.0.0"));
        let buckets: Vec<u8> = (0..1000).map(|i| rollout_bucket(&format!("agt_{i}"), "3.0.0")).collect();
        assert!(buckets.iter().all(|b| *b < 100));
        let in_ten = buckets.iter().filter(|b| **b < 10).count();
        assert!((50..=150).contains(&in_ten), "about 10% of 1000 agents, got {in_ten}");
        for i in 0..50 {
            let agent = format!("agt_{i}");
            let bucket = rollout_bucket(&agent, "3.0.0");
            let at = |percent| decide("2.0.0", Some(&offered("3.0.0", percent)), &agent, &[]);
            assert_eq!(at(0), Decision::NotYetInRollout { version: "3.0.0".into(), bucket, rollout_percent: 0 });
            assert!(matches!(at(100), Decision::Available { .. }));
            // Raising the rollout never removes an agent that was in.
            let first_in = (0..=100u8).find(|p| matches!(at(*p), Decision::Available { .. })).unwrap();
            assert_eq!(first_in, bucket + 1);
        }
    }

    #[test]
    fn unreachable_updates_are_told_after_seven_days_only() {
        const DAY: i64 = 86_400;
        let now = 100 * DAY;
        let state = |verified: Option<i64>, failing: Option<i64>| UpdaterState {
            last_verified_unix: verified,
            failing_since_unix: failing,
            ..UpdaterState::default()
        };
        // Never checked at all (a fresh install that has not tried yet): nothing to tell.
        assert_eq!(state(None, None).unreachable_days(now), None);
        assert_eq!(state(Some(now - 6 * DAY), Some(now - DAY)).unreachable_days(now), None);
        assert_eq!(state(Some(now - 7 * DAY), None).unreachable_days(now), None);
        assert_eq!(state(Some(now - 8 * DAY - 5), Some(now - 8 * DAY)).unreachable_days(now), Some(8));
        // Never verified: counted from the first failed try.
        assert_eq!(state(None, Some(now - 10 * DAY)).unreachable_days(now), Some(10));
        assert_eq!(state(None, Some(now - 2 * DAY)).unreachable_days(now), None);
    }

    #[test]
    fn status_tells_a_version_installed_underneath_and_only_newer_offers() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        // The running build on disk: nothing is ready.
        assert_eq!(status(dir.path(), Some(running_version()), 0).ready, None);
        assert_eq!(status(dir.path(), Some("99.1.0".into()), 0).ready.as_deref(), Some("99.1.0"));

        // The program file, looked at as the running updater does: a package manager puts
        // another build at its path while it runs.
        let program = dir.path().join("edge-agent-tray");
        std::fs::copy(&exe, &program).unwrap();
        let state = crate::state::StateHandle::new(dir.path().to_path_buf());
        let mut events = state.subscribe();
        let mut announcer = Announcer::new(state.clone(), Some(program.clone()), dir.path().to_path_buf());
        announcer.publish();
        assert_eq!(state.snapshot().updates.ready, None);
        version_slot::stamp(&exe, &program, "99.1.0").unwrap();
        announcer.publish();
        assert_eq!(state.snapshot().updates.ready.as_deref(), Some("99.1.0"));
        let mut ready_events = 0;
        while let Ok(event) = events.try_recv() {
            ready_events += usize::from(matches!(event, crate::state::AgentEvent::UpdateReady { .. }));
        }
        announcer.publish();
        assert!(events.try_recv().is_err(), "said once, not at every look");
        assert_eq!(ready_events, 1);
        // A file that is not ours is not an update.
        std::fs::write(&program, b"#!/bin/sh\n").unwrap();
        announcer.publish();
        assert_eq!(state.snapshot().updates.ready, None);

        remember(dir.path(), |s| s.available = Some("99.2.0".into())).unwrap();
        assert_eq!(status(dir.path(), None, 0).available.as_deref(), Some("99.2.0"));
        // Remembered before this copy was upgraded past it: no longer news.
        remember(dir.path(), |s| s.available = Some("0.0.1".into())).unwrap();
        assert_eq!(status(dir.path(), None, 0).available, None);

        remember_check_failed(dir.path(), 1_000);
        remember_check_failed(dir.path(), 2_000);
        assert_eq!(load_state(dir.path()).failing_since_unix, Some(1_000), "counted from the first failure");
        assert_eq!(status(dir.path(), None, 1_000 + 9 * 86_400).unreachable_days, Some(9));
    }

    #[test]
    fn system_installs_never_replace_themselves() {
        assert!(install::self_replaceable(Path::new("/usr/bin/edge-agent-tray")).is_err());
        assert!(install::self_replaceable(Path::new("/opt/edge-agent/edge-agent")).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(install::self_replaceable(&dir.path().join("edge-agent")), Ok(()));
        assert!(install::self_replaceable(&dir.path().join("missing-folder/edge-agent")).is_err());
        // The write probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_restart_tonight_waits_for_three_oclock_and_no_job() {
        let at = |d: u32, h: u32, m: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap().and_hms_opt(h, m, 0).unwrap()
        };
        assert_eq!(tonight_after(at(6, 18, 30)), at(7, 3, 0));
        assert_eq!(tonight_after(at(6, 1, 0)), at(6, 3, 0));
        assert_eq!(tonight_after(at(6, 3, 0)), at(7, 3, 0));
        let tonight = RestartPlan::new(RestartWhen::Tonight, at(6, 18, 30));
        assert!(!tonight.due(at(6, 23, 0), 0));
        assert!(tonight.due(at(7, 3, 0), 0));
        assert!(!tonight.due(at(7, 3, 0), 1), "never in the middle of a job");
        // Asleep at three: the first idle moment after waking.
        assert!(tonight.due(at(7, 9, 15), 0));
        let now = RestartPlan::new(RestartWhen::Now, at(6, 18, 30));
        assert!(now.due(at(6, 18, 30), 0) && !now.due(at(6, 18, 30), 2));
    }

    #[test]
    fn jitter_stays_within_two_hours_of_a_day() {
        for _ in 0..100 {
            let next = jittered(CHECK_EVERY);
            assert!(next >= CHECK_EVERY - CHECK_JITTER && next < CHECK_EVERY + CHECK_JITTER, "{next:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
