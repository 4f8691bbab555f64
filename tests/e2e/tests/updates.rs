//! Agent updates end to end with real processes and one build stamped as several versions
//! (`edge-agent update stamp`): the operator publishes with `edge-hub release publish`; the
//! installed agent is a copy of the build in a scratch `bin/` (never the build output).
//!
//! Refusals first, on demand (`edge-agent update apply --json`, no agent running): an older
//! build re-signed as a newer version, a tampered target, expired metadata. Then a running
//! v1 with a release paused: a long job starts, the release is resumed, and the update waits
//! for the job; v1 → v2 then reaches `hb_ack` and stays. Then v3, which never reaches the
//! hub (test hook), is rolled back to v2 after its probation window and the hub, told by
//! `update_failed`, pauses v3 (threshold 1 here).

use anyhow::{bail, Context, Result};
use edge_e2e::{scratch_dir, stamp_agent, stamp_data_dir, wait_until, Agent, Binaries, Hub};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CREATOR: &str = "creator-updates";
const KEYCHAIN: &str = "auto";
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the binary at `path` says it is.
fn version_of(path: &Path) -> Result<String> {
    let out = Command::new(path).arg("--data-dir").arg(stamp_data_dir(path)).args(["update", "self-test"]).output()?;
    if !out.status.success() {
        bail!("{} self-test: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn change(hub: &Hub, what: &str, version: &str) -> Result<Value> {
    hub.release_cli(&[what, "--version", version, "--platform", "linux", "--arch", std::env::consts::ARCH])
}

/// `edge-agent update apply --json` on the installed copy; (success, output).
fn apply(agent: &Agent) -> Result<(bool, String)> {
    agent.oneshot(&["update", "apply", "--json"])
}

fn agent_version_on_hub(hub: &Hub, key: &str, agent_id: &str) -> Result<Option<String>> {
    let agents = hub.agents(key)?;
    Ok(agents["agents"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["agentId"] == agent_id && a["online"] == true))
        .and_then(|a| a["version"].as_str().map(str::to_owned)))
}

fn wait_version(hub: &Hub, key: &str, agent: &Agent, version: &str) -> Result<()> {
    let wanted = format!("agent-{version}");
    wait_until(TIMEOUT, || Ok(agent_version_on_hub(hub, key, agent.agent_id())?.as_deref() == Some(&wanted)))
        .map_err(|e| e.context(format!("the hub never saw {wanted} online; agent log:\n{}", agent.run_log())))
}

#[test]
fn updates_are_verified_wait_for_jobs_and_roll_back_when_the_new_version_never_connects() -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("this test installs a Linux binary; run it on Linux");
    }
    let dir = scratch_dir("updates")?;
    let build = Binaries::locate()?;
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let installed = bin_dir.join("edge-agent");
    stamp_agent(&build.agent, &installed, "1.0.0")?;
    let releases = dir.path().join("releases");
    std::fs::create_dir_all(&releases)?;
    let [old_as_new, v2, v3] = ["1.0.0", "2.0.0", "3.0.0"].map(|v| releases.join(format!("edge-agent-{v}")));
    stamp_agent(&build.agent, &old_as_new, "1.0.0")?;
    stamp_agent(&build.agent, &v2, "2.0.0")?;
    stamp_agent(&build.agent, &v3, "3.0.0")?;

    let bins = Binaries { hub: build.hub.clone(), agent: installed.clone() };
    let hub_dir = dir.path().join("hub");
    let mut hub =
        Hub::start(&bins, &hub_dir, &[("EDGE_HUB_RELEASE_FAILURE_THRESHOLD", "1")], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let root_dir = hub_dir.join("root-keys");
    hub.bundle_cli(&["keys", "init", "--root-dir", root_dir.to_str().context("non-UTF-8 path")?])?;
    let profile = format!("e2e-updates-{}", std::process::id());
    let mut agent = Agent::new(&bins, &profile, KEYCHAIN, &dir.path().join("agent"));
    agent.login(&hub.url, &hub.enroll_token(CREATOR)?)?;
    agent.grant(&["bundle"])?;

    // 1. An older build re-signed as a newer version: the signature is fine, the version
    // inside is not.
    hub.publish_release(&old_as_new, "1.5.0")?;
    let (ok, out) = apply(&agent)?;
    assert!(!ok && out.contains("UPDATE_VERSION_MISMATCH"), "{out}");
    assert_eq!(version_of(&installed)?, "1.0.0");
    // Paused, so the running agent below does not download it again and again.
    change(&hub, "pause", "1.5.0")?;

    // 2. A tampered target: the hub's stored file no longer matches the signed hash.
    let published = hub.publish_release(&v2, "2.0.0")?;
    let stored = repo_dir(&hub_dir)?.join("targets").join(published["file"].as_str().context("file")?);
    let original = std::fs::read(&stored)?;
    let mut tampered = original.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&stored, &tampered)?;
    let (ok, out) = apply(&agent)?;
    assert!(!ok && out.contains("BUNDLE_TAMPERED"), "{out}");
    assert_eq!(version_of(&installed)?, "1.0.0");
    std::fs::write(&stored, &original)?;

    // 3. Expired metadata (a freeze): the channel's role was signed with an expiry that has
    // passed (the hub re-signs timestamp and snapshot by itself, never a release role).
    sign_role(&hub_dir, chrono::TimeDelta::hours(-1))?;
    let (ok, out) = apply(&agent)?;
    assert!(!ok && out.contains("BUNDLE_EXPIRED"), "{out}");
    assert_eq!(version_of(&installed)?, "1.0.0");
    sign_role(&hub_dir, chrono::TimeDelta::days(365))?;

    // 4. v1 runs with 2.0.0 paused; a long job starts; 2.0.0 is resumed: the update waits
    // for the job, then v2 takes over and stays.
    change(&hub, "pause", "2.0.0")?;
    let env = [("EDGE_AGENT_TEST_NEVER_CONNECT_VERSION", "3.0.0")];
    agent.run_with_env(&["--update-interval-secs", "1", "--update-probation-secs", "12"], &env)?;
    wait_version(&hub, &key, &agent, "1.0.0")?;
    let marker = dir.path().join("job-finished.txt");
    let source = dir.path().join("slow-bundle");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("main.sh"), "sleep 4\necho done > \"$1\"\n")?;
    hub.publish_shell_dir(CREATOR, "slow", "1.0.0", &source)?;
    let job = hub.submit_job(
        &key,
        &json!({"type": "bundle", "creatorId": CREATOR,
                "payload": {"bundle": "slow", "version": "1.0.0", "args": [marker.to_str().context("path")?]}}),
    )?;
    let job_id = job["id"].as_str().context("job id")?.to_owned();
    wait_until(TIMEOUT, || Ok(hub.job(&key, &job_id)?["status"] == "running"))?;
    change(&hub, "resume", "2.0.0")?;
    wait_version(&hub, &key, &agent, "2.0.0")?;
    let done = hub.wait_job_done(&key, &job_id, TIMEOUT)?;
    assert_eq!(done["status"], "succeeded", "the job was not interrupted by the update: {done}");
    assert!(marker.is_file(), "the job ran to its end before the restart");
    assert_eq!(version_of(&installed)?, "2.0.0");
    assert_eq!(version_of(&bin_dir.join("edge-agent.previous"))?, "1.0.0");
    let probation = agent.data_dir.join("updates").join("probation.json");
    wait_until(TIMEOUT, || Ok(!probation.exists()))
        .map_err(|e| e.context(format!("v2 was never confirmed; log:\n{}", agent.run_log())))?;

    // 5. v3 never reaches the hub: after its window v2 is back, and the hub paused v3.
    hub.publish_release(&v3, "3.0.0")?;
    wait_until(TIMEOUT, || {
        let listed = hub.release_cli(&["list"])?;
        Ok(listed["releases"]
            .as_array()
            .is_some_and(|all| all.iter().any(|r| r["version"] == "3.0.0" && r["paused"] == true)))
    })
    .map_err(|e| e.context(format!("the hub never paused 3.0.0; agent log:\n{}", agent.run_log())))?;
    wait_version(&hub, &key, &agent, "2.0.0")?;
    assert_eq!(version_of(&installed)?, "2.0.0");
    let log = agent.run_log();
    assert!(log.contains("update rolled back"), "{log}");
    let failures = repo_dir(&hub_dir)?.parent().context("bundle dir")?.join("release-failures/stable/linux");
    assert!(failures.is_dir(), "the hub keeps the failure report under {}", failures.display());
    // Failed here once: never installed again, even if it were resumed.
    let (ok, out) = agent.oneshot(&["update", "check", "--json"])?;
    assert!(ok, "{out}");
    assert!(out.contains("\"up_to_date\"") || out.contains("\"failed_before\""), "{out}");

    assert!(agent.shutdown(), "the agent stops cleanly");
    hub.shutdown();
    Ok(())
}

/// The hub's repository: `bundles/repo` beside its SQLite file.
fn repo_dir(hub_dir: &Path) -> Result<PathBuf> {
    let candidates = [hub_dir.join("bundles").join("repo")];
    candidates
        .into_iter()
        .find(|p| p.join("metadata").is_dir())
        .with_context(|| format!("no bundle repository under {}", hub_dir.display()))
}

/// Re-signs the stable channel's role (through a rollout change of 2.0.0) with an expiry
/// `ttl` from now, as an operator's signing would.
fn sign_role(hub_dir: &Path, ttl: chrono::TimeDelta) -> Result<()> {
    use edge_bundle::release::ReleaseChange;
    let options = edge_bundle::repo::RepoOptions { targets_ttl: ttl, ..Default::default() };
    let repo = edge_bundle::repo::Repo::with_options(repo_dir(hub_dir)?, options);
    // Two changes, so the role is re-signed even if the percentage was already 100.
    for percent in [99, 100] {
        repo.change_release("stable", "linux", std::env::consts::ARCH, "2.0.0", ReleaseChange::Rollout(percent))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
