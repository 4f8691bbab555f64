//! Agent releases on the hub: `edge-hub release publish|pause|resume|rollout|list` as an
//! operator runs them (the real binary), the per-channel TUF view and the binaries served to
//! agents only, verified here with the agent's own verification code, and
//! `POST /v1/releases/failed` pausing a release once three distinct agents rolled it back.

mod common;

use common::TestHub;
use edge_bundle::repo::Repo;
use edge_bundle::tough;
use edge_bundle::verify::{TrustStore, Verified, VerifyError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_edge-hub");

fn release(bundle_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--database-url", "sqlite::memory:", "release", "--bundle-dir"])
        .arg(bundle_dir)
        .args(args)
        .env_remove("EDGE_HUB_BUNDLE_DIR")
        .output()
        .expect("edge-hub runs")
}

fn ok_json(out: Output) -> Value {
    assert!(out.status.success(), "edge-hub release failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn init(dir: &Path) -> PathBuf {
    let bundle_dir = dir.join("bundle-state");
    Repo::new(bundle_dir.join("repo")).init(&dir.join("root-keys"), 1, 1).expect("keys init");
    bundle_dir
}

fn binary(dir: &Path, content: &str) -> PathBuf {
    let path = dir.join(format!("agent-{}", edge_bundle::sha256_hex(content.as_bytes())));
    std::fs::write(&path, content).unwrap();
    path
}

fn publish(bundle_dir: &Path, file: &Path, version: &str, rollout: &str) -> Output {
    release(
        bundle_dir,
        &[
            "publish",
            file.to_str().unwrap(),
            "--version",
            version,
            "--platform",
            "linux",
            "--arch",
            "x86_64",
            "--rollout",
            rollout,
            "--notes",
            &format!("what changed in {version}"),
        ],
    )
}

fn which(version: &str) -> Vec<&str> {
    vec!["--version", version, "--platform", "linux", "--arch", "x86_64"]
}

#[test]
fn publish_pause_resume_rollout_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = init(dir.path());
    let v1 = ok_json(publish(&bundle_dir, &binary(dir.path(), "agent 1"), "1.0.0", "100"));
    assert_eq!((v1["version"].as_str(), v1["changed"].as_bool()), (Some("1.0.0"), Some(true)));
    assert_eq!(v1["sha256"], edge_bundle::sha256_hex(b"agent 1"));
    let v2 = ok_json(publish(&bundle_dir, &binary(dir.path(), "agent 2"), "2.0.0", "10"));
    assert_eq!((v2["rolloutPercent"].as_u64(), v2["paused"].as_bool()), (Some(10), Some(false)));
    assert_eq!(v2["notes"], "what changed in 2.0.0");

    let paused = ok_json(release(&bundle_dir, &[&["pause"][..], &which("2.0.0")].concat()));
    assert_eq!((paused["paused"].as_bool(), paused["changed"].as_bool()), (Some(true), Some(true)));
    let again = ok_json(release(&bundle_dir, &[&["pause"][..], &which("2.0.0")].concat()));
    assert_eq!(again["changed"], false, "pausing twice signs nothing new");
    let resumed = ok_json(release(&bundle_dir, &[&["resume"][..], &which("2.0.0")].concat()));
    assert_eq!(resumed["paused"], false);
    let wider = ok_json(release(&bundle_dir, &[&["rollout"][..], &which("2.0.0"), &["--percent", "50"]].concat()));
    assert_eq!(wider["rolloutPercent"], 50);

    let listed = ok_json(release(&bundle_dir, &["list", "--channel", "stable"]));
    let versions: Vec<_> = listed["releases"].as_array().unwrap().iter().map(|r| r["version"].clone()).collect();
    assert_eq!(versions, [json!("2.0.0"), json!("1.0.0")]);
    assert_eq!(listed["releases"][0]["rolloutPercent"], 50);

    // Refusals in words, nothing signed.
    let older = publish(&bundle_dir, &binary(dir.path(), "agent 1.5"), "1.5.0", "100");
    assert!(!older.status.success());
    let message = String::from_utf8_lossy(&older.stderr);
    assert!(message.contains("as a new version above 2.0.0"), "{message}");
    let bad = publish(&bundle_dir, &binary(dir.path(), "x"), "3.0.0", "101");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("percentage"), "{}", String::from_utf8_lossy(&bad.stderr));
    let unknown = release(&bundle_dir, &[&["pause"][..], &which("9.9.9")].concat());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("is not published"));
    let platform = release(
        &bundle_dir,
        &[
            "publish",
            binary(dir.path(), "y").to_str().unwrap(),
            "--version",
            "3.0.0",
            "--platform",
            "beos",
            "--arch",
            "x86_64",
        ],
    );
    assert!(String::from_utf8_lossy(&platform.stderr).contains("linux, windows, macos, linux-deb or linux-rpm"));
    let listed = ok_json(release(&bundle_dir, &["list"]));
    assert_eq!(listed["releases"].as_array().unwrap().len(), 2);
}

/// The agent's `tough` transport, reduced: GET with the agent's JWT.
#[derive(Debug, Clone)]
struct AgentTransport {
    http: reqwest::Client,
    token: String,
}

type Chunks = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<tough::Bytes, tough::TransportError>> + Send>>;

#[tough::async_trait]
impl tough::Transport for AgentTransport {
    async fn fetch(&self, url: url::Url) -> Result<Chunks, tough::TransportError> {
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| tough::TransportError::new_with_cause(tough::TransportErrorKind::Other, url.clone(), e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(tough::TransportError::new(tough::TransportErrorKind::FileNotFound, url));
        }
        let bytes = response
            .error_for_status()
            .map_err(|e| tough::TransportError::new_with_cause(tough::TransportErrorKind::Other, url.clone(), e))?
            .bytes()
            .await
            .map_err(|e| tough::TransportError::new_with_cause(tough::TransportErrorKind::Other, url.clone(), e))?;
        Ok(Box::pin(futures_util::stream::iter([Ok(bytes)])))
    }
}

async fn refresh(hub: &TestHub, trust: &TrustStore, token: &str) -> Result<Verified, VerifyError> {
    let url = url::Url::parse(&hub.url("/v1/releases/stable/metadata/")).unwrap();
    trust.refresh(url, AgentTransport { http: hub.http.clone(), token: token.to_owned() }).await
}

#[tokio::test]
async fn agents_read_their_channel_and_three_failures_pause_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = init(dir.path());
    ok_json(publish(&bundle_dir, &binary(dir.path(), "agent 1"), "1.0.0", "100"));
    ok_json(publish(&bundle_dir, &binary(dir.path(), "agent 2"), "2.0.0", "100"));
    let state = bundle_dir.clone();
    let hub = TestHub::start_on(common::TestDb::sqlite(), move |config| config.bundle_dir = Some(state)).await;
    let agents = [hub.enroll(common::CREATOR).await, hub.enroll(common::CREATOR).await, hub.enroll("creator-2").await];
    let mut tokens = Vec::new();
    for agent in &agents {
        tokens.push(hub.session_token(agent).await);
    }

    // Only agents (and operator keys) read releases.
    let anonymous = hub.http.get(hub.url("/v1/releases/stable/metadata/timestamp.json")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let trust = TrustStore::new(dir.path().join("agent-updates-tuf"));
    trust.install_root(&Repo::new(bundle_dir.join("repo")).root_json().unwrap()).unwrap();
    let found =
        refresh(&hub, &trust, &tokens[0]).await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!(found.release.version.to_string(), "2.0.0");
    assert_eq!(found.meta.notes, "what changed in 2.0.0");

    // The binary, by its consistent name, to agents only.
    let tail = found.target_file.strip_prefix("_release/").unwrap();
    let target = hub.url(&format!("/v1/releases/targets/{tail}"));
    let bytes = hub.http.get(&target).bearer_auth(&tokens[0]).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(edge_bundle::sha256_hex(&bytes), found.sha256);
    assert_eq!(hub.http.get(&target).send().await.unwrap().status(), 401);
    let ranged = hub.http.get(&target).bearer_auth(&tokens[0]).header("range", "bytes=6-").send().await.unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), b"2");
    let traversal = hub.url("/v1/releases/targets/stable/linux/x86_64/..%2F..%2Fkeys");
    assert_eq!(hub.http.get(traversal).bearer_auth(&tokens[0]).send().await.unwrap().status(), 404);

    // Failures: one per agent counts; an operator key cannot report; the third agent pauses.
    let report = json!({"channel": "stable", "platform": "linux", "arch": "x86_64", "version": "2.0.0",
                        "previousVersion": "1.0.0", "reason": "no hb_ack within 60 s of its first start"});
    let post = |token: String| {
        let request = hub.http.post(hub.url("/v1/releases/failed")).bearer_auth(token).json(&report);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(post(tokens[0].clone()).await, (200, json!({"failures": 1, "paused": false})));
    assert_eq!(post(tokens[0].clone()).await, (200, json!({"failures": 1, "paused": false})), "counted once");
    assert_eq!(post(hub.api_key.clone()).await.0, 403);
    assert_eq!(post(tokens[1].clone()).await, (200, json!({"failures": 2, "paused": false})));
    assert_eq!(post(tokens[2].clone()).await, (200, json!({"failures": 3, "paused": true})));

    // Agents now see 1.0.0 as the newest offered (not lower than what they run: their call).
    let found =
        refresh(&hub, &trust, &tokens[1]).await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!(found.release.version.to_string(), "1.0.0");
    let listed = ok_json(release(&bundle_dir, &["list"]));
    assert_eq!(listed["releases"][0]["paused"], true);
    let bad = hub
        .http
        .post(hub.url("/v1/releases/failed"))
        .bearer_auth(&tokens[0])
        .json(&json!({
        "channel": "stable", "platform": "linux", "arch": "x86_64", "version": "not-a-version",
        "previousVersion": "1.0.0", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    hub.shutdown().await;
}
