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

impl UpdaterContext {
    /// The releases' own trust store; its root starts as the bundles' one (same hub root).
    pub fn trust(&self) -> Result<TrustStore, UpdateError> {
        let store = TrustStore::new(self.data_dir.join("updates").join("tuf"));
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
    let mut state = load_state(data_dir);
    if !state.failed_versions.iter().any(|v| v == version) {
        state.failed_versions.push(version.to_owned());
    }
    install::write_json(&state_path(data_dir), &state)
}

/// Refreshes the channel's metadata and decides.
pub async fn check(ctx: &UpdaterContext) -> Result<(CheckReport, Option<FoundRelease>), UpdateError> {
    let url =
        url::Url::parse(&format!("{}{}{}/metadata/", ctx.hub_base, edge_protocol::api::RELEASES_PATH, ctx.channel))
            .map_err(|e| UpdateError::Io(format!("hub URL: {e}")))?;
    let verified = ctx.trust()?.refresh(url, HubTransport::new(ctx.http.clone(), ctx.auth.clone())).await?;
    let found = verified.find_release(&ctx.channel, platform(), arch())?;
    let mut state = load_state(&ctx.data_dir);
    state.last_verified_check = Some(crate::now_rfc3339());
    install::write_json(&state_path(&ctx.data_dir), &state)?;
    let running = running_version();
    let decision = decide(&running, found.as_ref(), &ctx.agent_id, &state.failed_versions);
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
        platform: platform().into(),
        arch: arch().into(),
        decision,
        offered,
    };
    Ok((report, found))
}

/// Downloads the release, checks its signed length and SHA-256, the version inside it and
/// that it runs here; returns the verified file.
pub async fn download(ctx: &UpdaterContext, found: &FoundRelease) -> Result<PathBuf, UpdateError> {
    let url = format!("{}{}targets/{}", ctx.hub_base, edge_protocol::api::RELEASES_PATH, release_url_tail(found));
    let signed = Signed { length: found.length, sha256: &found.sha256, extension: "bin", what: "update" };
    let downloads = ctx.data_dir.join("updates").join("downloads");
    let file = download::fetch_signed(&ctx.http, &ctx.auth, &url, &signed, &downloads).await?;
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

/// How the running agent updates itself.
#[derive(Debug, Clone)]
pub struct AutoUpdate {
    pub channel: String,
    pub interval: Duration,
    pub probation: Duration,
    /// Notified once an update is installed and the agent should restart into it.
    pub restart: std::sync::Arc<tokio::sync::Notify>,
}

impl AutoUpdate {
    pub fn new(channel: String, probation: Duration) -> AutoUpdate {
        AutoUpdate { channel, interval: CHECK_EVERY, probation, restart: Default::default() }
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

/// The running agent's updater: reports a kept failure, then checks at start and every
/// `interval` (jittered); installs when idle and asks for a restart. Never while the
/// installed version is on probation.
pub(crate) async fn run(
    ctx: UpdaterContext,
    options: AutoUpdate,
    state: crate::state::StateHandle,
    cancel: tokio_util::sync::CancellationToken,
) {
    let exe = match install::installed_exe() {
        Ok(exe) => exe,
        Err(e) => return tracing::warn!(error = %e, "automatic updates are off"),
    };
    if let Err(e) = send_failure_report(&ctx).await {
        tracing::warn!(error = %e, "cannot report the failed update yet");
    }
    loop {
        // Not while this version is on probation: it must first prove it reaches the hub.
        let on_probation =
            install::probation(&ctx.data_dir).ok().flatten().is_some_and(|m| m.version == running_version());
        if !on_probation {
            let busy = || state.snapshot().busy > 0;
            match apply(&ctx, &exe, options.probation, busy).await {
                Ok(report) => match (&report.installed, &report.check.decision) {
                    (Some(version), _) => {
                        tracing::info!(version, "restarting into the installed update");
                        options.restart.notify_one();
                        return;
                    }
                    (None, decision) => tracing::info!(?decision, running = %report.check.running, "update check"),
                },
                Err(UpdateError::Busy) => {
                    // Try again soon rather than in a day.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(options.interval.min(Duration::from_secs(30))) => continue,
                    }
                }
                Err(e) => tracing::warn!(error = %e, "update check failed"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(jittered(options.interval)) => {}
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
    fn jitter_stays_within_two_hours_of_a_day() {
        for _ in 0..100 {
            let next = jittered(CHECK_EVERY);
            assert!(next >= CHECK_EVERY - CHECK_JITTER && next < CHECK_EVERY + CHECK_JITTER, "{next:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
