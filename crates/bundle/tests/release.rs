//! Agent releases in the bundle repository: publishing, pausing, the per-channel view the
//! hub serves, and the agent's verification of it (expiry, rollback, confinement) through
//! the same `tough` workflow as bundles.

use chrono::TimeDelta;
use edge_bundle::codes;
use edge_bundle::release::{ReleaseChange, ReleaseRequest};
use edge_bundle::repo::{Repo, RepoError, RepoOptions};
use edge_bundle::verify::{TrustStore, Verified, VerifyError};
use std::path::PathBuf;
use tempfile::TempDir;
use url::Url;

struct Fixture {
    dir: TempDir,
    repo: Repo,
    trust: TrustStore,
}

fn fixture(options: RepoOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::with_options(dir.path().join("repo"), options);
    repo.init(&dir.path().join("root-keys"), 1, 1).unwrap();
    let trust = TrustStore::new(dir.path().join("agent-updates-tuf"));
    trust.install_root(&repo.root_json().unwrap()).unwrap();
    Fixture { dir, repo, trust }
}

impl Fixture {
    fn binary(&self, content: &str) -> PathBuf {
        let path = self.dir.path().join(format!("bin-{}", edge_bundle::sha256_hex(content.as_bytes())));
        std::fs::write(&path, content).unwrap();
        path
    }

    fn publish(&self, version: &str, rollout: u8) -> Result<edge_bundle::release::ReleaseEntry, RepoError> {
        self.repo.publish_release(&ReleaseRequest {
            channel: "stable".into(),
            platform: "linux".into(),
            arch: "x86_64".into(),
            version: version.into(),
            notes: format!("notes of {version}"),
            rollout_percent: rollout,
            source: self.binary(&format!("agent binary {version}")),
        })
    }

    async fn refresh(&self, channel: &str) -> Result<Verified, VerifyError> {
        let transport = ReleaseView { repo: self.repo.clone(), channel: channel.into() };
        let url = Url::parse(&format!("https://hub.invalid/v1/releases/{channel}/metadata/")).unwrap();
        self.trust.refresh(url, transport).await
    }
}

/// What the hub serves an agent following `channel`.
#[derive(Debug, Clone)]
struct ReleaseView {
    repo: Repo,
    channel: String,
}

type Chunks = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<tough::Bytes, tough::TransportError>> + Send>>;

#[tough::async_trait]
impl tough::Transport for ReleaseView {
    async fn fetch(&self, url: Url) -> Result<Chunks, tough::TransportError> {
        let file = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned();
        match self.repo.release_view(&self.channel, &file) {
            Ok(Some(bytes)) => Ok(Box::pin(futures_util::stream::iter([Ok(tough::Bytes::from(bytes))]))),
            Ok(None) => Err(tough::TransportError::new(tough::TransportErrorKind::FileNotFound, url)),
            Err(e) => Err(tough::TransportError::new_with_cause(tough::TransportErrorKind::Other, url, e)),
        }
    }
}

#[tokio::test]
async fn the_newest_unpaused_release_of_the_platform_is_offered() {
    let f = fixture(RepoOptions::default());
    assert!(f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap().is_none());
    f.publish("1.0.0", 100).unwrap();
    let v2 = f.publish("2.0.0", 25).unwrap();
    assert!(v2.changed);
    let found = f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!(found.release.version.to_string(), "2.0.0");
    assert_eq!(found.meta.rollout_percent, 25);
    assert_eq!(found.meta.notes, "notes of 2.0.0");
    assert_eq!(found.sha256, v2.meta.sha256);
    assert_eq!(found.length, "agent binary 2.0.0".len() as u64);
    assert!(f.repo.targets_dir().join(&found.target_file).is_file());
    // Another platform or architecture has nothing.
    let verified = f.refresh("stable").await.unwrap();
    assert!(verified.find_release("stable", "windows", "x86_64").unwrap().is_none());
    assert!(verified.find_release("stable", "linux", "aarch64").unwrap().is_none());

    // Paused: the previous one is offered; resumed: the newest again.
    f.repo.change_release("stable", "linux", "x86_64", "2.0.0", ReleaseChange::Pause).unwrap();
    let found = f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!(found.release.version.to_string(), "1.0.0");
    f.repo.change_release("stable", "linux", "x86_64", "2.0.0", ReleaseChange::Resume).unwrap();
    f.repo.change_release("stable", "linux", "x86_64", "2.0.0", ReleaseChange::Rollout(60)).unwrap();
    let found = f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!((found.release.version.to_string(), found.meta.rollout_percent), ("2.0.0".into(), 60));

    let listed = f.repo.releases(Some("stable")).unwrap();
    let versions: Vec<_> = listed.iter().map(|e| e.meta.version.as_str()).collect();
    assert_eq!(versions, ["2.0.0", "1.0.0"]);
}

#[tokio::test]
async fn the_tray_packages_are_releases_of_their_own_beside_the_binary() {
    let f = fixture(RepoOptions::default());
    f.publish("2.0.0", 100).unwrap();
    let deb = f
        .repo
        .publish_release(&ReleaseRequest {
            channel: "stable".into(),
            platform: "linux-deb".into(),
            arch: "x86_64".into(),
            version: "2.1.0".into(),
            notes: String::new(),
            rollout_percent: 100,
            source: f.binary("a deb of 2.1.0"),
        })
        .unwrap();
    let verified = f.refresh("stable").await.unwrap();
    // Each platform sees only its own: the headless agent is never offered the tray's deb.
    let binary = verified.find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!(binary.release.version.to_string(), "2.0.0");
    let package = verified.find_release("stable", "linux-deb", "x86_64").unwrap().unwrap();
    assert_eq!(
        (package.release.version.to_string(), package.sha256.as_str()),
        ("2.1.0".into(), deb.meta.sha256.as_str())
    );
    assert_eq!(package.meta.platform, "linux-deb");
    assert!(verified.find_release("stable", "linux-rpm", "x86_64").unwrap().is_none());
}

#[tokio::test]
async fn publishing_refuses_older_versions_changed_bytes_and_bad_input() {
    let f = fixture(RepoOptions::default());
    f.publish("2.0.0", 100).unwrap();
    // The same bytes again are a no-op; other bytes under the same version are refused.
    let again = f.repo.publish_release(&ReleaseRequest {
        channel: "stable".into(),
        platform: "linux".into(),
        arch: "x86_64".into(),
        version: "2.0.0".into(),
        notes: String::new(),
        rollout_percent: 100,
        source: f.binary("agent binary 2.0.0"),
    });
    assert!(!again.unwrap().changed);
    let other = f.repo.publish_release(&ReleaseRequest {
        channel: "stable".into(),
        platform: "linux".into(),
        arch: "x86_64".into(),
        version: "2.0.0".into(),
        notes: String::new(),
        rollout_percent: 100,
        source: f.binary("other bytes"),
    });
    assert!(matches!(other, Err(RepoError::VersionExists(_))), "{other:?}");
    let older = f.publish("1.5.0", 100).unwrap_err().to_string();
    assert!(older.contains("as a new version above 2.0.0"), "{older}");
    assert!(f.publish("3.0.0", 101).unwrap_err().to_string().contains("percentage"));
    assert!(f.publish("3.0.0+build", 100).is_err());
    let bad_channel = f.repo.publish_release(&ReleaseRequest {
        channel: "Stable/../x".into(),
        platform: "linux".into(),
        arch: "x86_64".into(),
        version: "3.0.0".into(),
        notes: String::new(),
        rollout_percent: 100,
        source: f.binary("x"),
    });
    assert!(bad_channel.unwrap_err().to_string().contains("channel"));
}

#[tokio::test]
async fn a_channel_view_names_no_tenant_and_a_tenant_view_no_release() {
    let f = fixture(RepoOptions::default());
    f.publish("1.0.0", 100).unwrap();
    let src = f.dir.path().join("bundle");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.sh"), "echo hi\n").unwrap();
    f.repo
        .publish(&edge_bundle::repo::PublishRequest {
            tenant: "acme".into(),
            bundle: "report".into(),
            version: "1.0.0".into(),
            runtime: edge_bundle::Runtime::Shell,
            cpu_arch: edge_bundle::CpuArch::any(),
            entrypoint: None,
            source: src,
        })
        .unwrap();
    let version = f.repo.current().unwrap().targets.signed.version.get();
    let release_targets =
        String::from_utf8(f.repo.release_view("stable", &format!("{version}.targets.json")).unwrap().unwrap()).unwrap();
    assert!(!release_targets.contains("acme"), "{release_targets}");
    let tenant_targets =
        String::from_utf8(f.repo.tenant_view("acme", &format!("{version}.targets.json")).unwrap().unwrap()).unwrap();
    assert!(!tenant_targets.contains("_release"), "{tenant_targets}");
    assert!(f.repo.tenant_view("acme", "1._release-stable.json").unwrap().is_none());
    assert!(f.repo.release_view("stable", "1.acme.json").unwrap().is_none());
    // The agent of the channel still verifies and finds its release with bundles published.
    let found = f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    assert_eq!(found.release.version.to_string(), "1.0.0");
}

#[tokio::test]
async fn expired_timestamp_is_a_freeze_and_refused() {
    let f = fixture(RepoOptions { timestamp_ttl: TimeDelta::hours(-1), ..RepoOptions::default() });
    f.publish("1.0.0", 100).unwrap();
    let err = f.refresh("stable").await.err().unwrap();
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
}

#[tokio::test]
async fn an_expired_release_role_is_refused() {
    let f = fixture(RepoOptions { targets_ttl: TimeDelta::seconds(-5), ..RepoOptions::default() });
    f.publish("1.0.0", 100).unwrap();
    let err = match f.refresh("stable").await {
        Err(e) => e,
        Ok(v) => v.find_release("stable", "linux", "x86_64").unwrap_err(),
    };
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
}

#[tokio::test]
async fn an_older_release_role_is_a_rollback_even_with_a_fresh_snapshot() {
    let f = fixture(RepoOptions::default());
    f.publish("1.0.0", 100).unwrap();
    f.publish("2.0.0", 100).unwrap();
    f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
    // A compromised snapshot key re-points the channel at an older role with fresh versions
    // of everything else; the trust store has seen a higher role version.
    f.repo
        .rewrite_for_tests(|_, roles| {
            roles.get_mut("_release-stable").unwrap().targets.retain(|name, _| name.raw().ends_with("/1.0.0"));
        })
        .unwrap();
    std::fs::write(f.trust.root_path().with_file_name("role-versions.json"), r#"{"_release-stable":9}"#).unwrap();
    let err = f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap_err();
    assert_eq!(err.code, codes::BUNDLE_ROLLBACK, "{err}");
}

#[tokio::test]
async fn an_older_timestamp_is_a_rollback() {
    let f = fixture(RepoOptions::default());
    f.publish("1.0.0", 100).unwrap();
    let old = std::fs::read(f.repo.metadata_dir().join("timestamp.json")).unwrap();
    f.publish("2.0.0", 100).unwrap();
    f.refresh("stable").await.unwrap();
    // The hub (or a mirror) serves the older timestamp again.
    std::fs::write(f.repo.metadata_dir().join("timestamp.json"), &old).unwrap();
    let err = f.refresh("stable").await.err().unwrap();
    assert_eq!(err.code, codes::BUNDLE_ROLLBACK, "{err}");
}

#[tokio::test]
async fn metadata_whose_custom_fields_disagree_with_the_target_is_inconsistent() {
    let f = fixture(RepoOptions::default());
    f.publish("1.0.0", 100).unwrap();
    f.repo
        .rewrite_for_tests(|_, roles| {
            for target in roles.get_mut("_release-stable").unwrap().targets.values_mut() {
                target.custom.insert("version".into(), serde_json::json!("9.0.0"));
            }
        })
        .unwrap();
    let err = f.refresh("stable").await.unwrap().find_release("stable", "linux", "x86_64").unwrap_err();
    assert_eq!(err.code, codes::BUNDLE_INCONSISTENT, "{err}");
}
