//! TUF verification on the agent side against a repository built by the hub side, read
//! through `tough`'s file transport: each refusal has its code.

use chrono::TimeDelta;
use edge_bundle::codes;
use edge_bundle::repo::{PublishRequest, Repo, RepoOptions, Signer};
use edge_bundle::verify::{TrustStore, Verified, VerifyError, Wanted};
use edge_bundle::{CpuArch, Runtime};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tough::FilesystemTransport;
use url::Url;

struct Fixture {
    _dir: TempDir,
    repo: Repo,
    root_dir: PathBuf,
    trust: TrustStore,
    src: PathBuf,
}

fn fixture(options: RepoOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::with_options(dir.path().join("repo"), options);
    let root_dir = dir.path().join("root-keys");
    let report = repo.init(&root_dir, 3, 2).unwrap();
    assert_eq!(report.root_keyids.len(), 3);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.sh"), "echo hello\n").unwrap();
    let trust = TrustStore::new(dir.path().join("agent-tuf"));
    let fingerprint = trust.install_root(&repo.root_json().unwrap()).unwrap();
    assert_eq!(fingerprint, report.root_fingerprint);
    Fixture { _dir: dir, repo, root_dir, trust, src }
}

impl Fixture {
    fn publish(&self, tenant: &str, bundle: &str, version: &str) {
        std::fs::write(self.src.join("main.sh"), format!("echo {tenant} {bundle} {version}\n")).unwrap();
        let published = self
            .repo
            .publish(&PublishRequest {
                tenant: tenant.into(),
                bundle: bundle.into(),
                version: version.into(),
                runtime: Runtime::Shell,
                cpu_arch: CpuArch::any(),
                entrypoint: None,
                source: self.src.clone(),
            })
            .unwrap();
        assert!(published.changed);
    }

    async fn refresh(&self) -> Result<Verified, VerifyError> {
        let url = Url::from_directory_path(self.repo.metadata_dir()).unwrap();
        self.trust.refresh(url, FilesystemTransport).await
    }

    fn metadata(&self, name: &str) -> PathBuf {
        self.repo.metadata_dir().join(name)
    }
}

fn latest() -> Wanted {
    Wanted::Latest
}

#[tokio::test]
async fn published_bundles_are_found_by_version_and_latest() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    f.publish("acme", "report", "1.2.0");
    f.publish("acme", "report", "2.0.0-rc.1");
    let verified = f.refresh().await.unwrap();
    let found = verified.find("acme", "report", &latest()).unwrap();
    assert_eq!(found.bundle.version.to_string(), "1.2.0", "latest skips pre-releases");
    assert_eq!(found.meta.runtime, Runtime::Shell);
    assert_eq!(found.meta.entrypoint, "main.sh");
    let path = f.repo.targets_dir().join(&found.target_file);
    let (length, sha) = edge_bundle::repo::hash_file(&path).unwrap();
    assert_eq!((length, sha.as_str()), (found.length, found.sha256.as_str()));
    let exact = verified.find("acme", "report", &Wanted::parse("1.0.0").unwrap()).unwrap();
    assert_eq!(exact.bundle.version.to_string(), "1.0.0");
    assert_eq!(verified.find("acme", "nope", &latest()).unwrap_err().code, codes::BUNDLE_NOT_FOUND);
    assert_eq!(verified.find("nobody", "report", &latest()).unwrap_err().code, codes::BUNDLE_NOT_FOUND);
    // Publishing the same version with other bytes is refused on the hub side.
    std::fs::write(f.src.join("main.sh"), "echo changed\n").unwrap();
    let again = f.repo.publish(&PublishRequest {
        tenant: "acme".into(),
        bundle: "report".into(),
        version: "1.0.0".into(),
        runtime: Runtime::Shell,
        cpu_arch: CpuArch::any(),
        entrypoint: None,
        source: f.src.clone(),
    });
    assert!(matches!(again, Err(edge_bundle::repo::RepoError::VersionExists(_))));
}

#[tokio::test]
async fn metadata_signed_by_the_wrong_key_is_untrusted() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    // Re-sign timestamp.json with a key root does not know.
    let path = f.metadata("timestamp.json");
    let mut signed: tough::schema::Signed<tough::schema::Timestamp> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    signed.signed.version = std::num::NonZeroU64::new(signed.signed.version.get() + 1).unwrap();
    let (stranger, _) = Signer::generate().unwrap();
    let forged = edge_bundle::repo::sign(signed.signed, &[&stranger]).unwrap();
    std::fs::write(&path, serde_json::to_vec(&forged).unwrap()).unwrap();
    assert_eq!(f.refresh().await.err().unwrap().code, codes::BUNDLE_UNTRUSTED);
}

#[tokio::test]
async fn a_forged_root_is_refused_at_install() {
    let f = fixture(RepoOptions::default());
    let mut root: tough::schema::Signed<tough::schema::Root> =
        serde_json::from_slice(&f.repo.root_json().unwrap()).unwrap();
    root.signed.consistent_snapshot = false; // any change breaks the root keys' signatures
    let err = f.trust.install_root(&serde_json::to_vec(&root).unwrap()).unwrap_err();
    assert_eq!(err.code, codes::BUNDLE_UNTRUSTED);
}

#[tokio::test]
async fn an_expired_timestamp_is_a_freeze_and_refused() {
    let options = RepoOptions { timestamp_ttl: TimeDelta::hours(-1), ..RepoOptions::default() };
    let f = fixture(options);
    f.publish("acme", "report", "1.0.0");
    let err = f.refresh().await.err().unwrap();
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
}

#[tokio::test]
async fn an_expired_tenant_role_is_refused() {
    let options = RepoOptions { targets_ttl: TimeDelta::seconds(-5), ..RepoOptions::default() };
    let f = fixture(options);
    f.publish("acme", "report", "1.0.0");
    // tough refuses the expired top-level targets first; either way it is a freeze.
    let err = match f.refresh().await {
        Err(e) => e,
        Ok(v) => v.find("acme", "report", &latest()).unwrap_err(),
    };
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
}

#[tokio::test]
async fn older_timestamp_snapshot_or_targets_are_a_rollback() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    let old_timestamp = std::fs::read(f.metadata("timestamp.json")).unwrap();
    f.publish("acme", "report", "1.1.0");
    f.refresh().await.unwrap();
    // The hub (or a mirror) now serves the older timestamp: its snapshot is older too.
    std::fs::write(f.metadata("timestamp.json"), &old_timestamp).unwrap();
    let err = f.refresh().await.err().unwrap();
    assert_eq!(err.code, codes::BUNDLE_ROLLBACK, "{err}");
}

#[tokio::test]
async fn an_older_tenant_role_behind_a_newer_snapshot_is_a_rollback() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    f.publish("acme", "report", "1.1.0");
    let verified = f.refresh().await.unwrap();
    verified.find("acme", "report", &latest()).unwrap();
    // A compromised snapshot key re-points acme at its version 1 with fresh versions of
    // everything else: tough alone would accept it.
    f.repo
        .rewrite_for_tests(|_, tenants| {
            let acme = tenants.get_mut("acme").unwrap();
            acme.targets.retain(|name, _| name.raw() == "acme/report/1.0.0.zip");
        })
        .unwrap();
    // Rewrite bumps the role to version 3; fake the agent having seen version 9.
    std::fs::write(f.trust.root_path().with_file_name("role-versions.json"), r#"{"acme":9}"#).unwrap();
    let verified = f.refresh().await.unwrap();
    assert_eq!(verified.find("acme", "report", &latest()).unwrap_err().code, codes::BUNDLE_ROLLBACK);
}

#[tokio::test]
async fn a_snapshot_that_does_not_match_the_timestamp_is_inconsistent() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    f.publish("acme", "report", "1.1.0");
    // Mix and match: serve the older snapshot's bytes under the newer snapshot's name.
    let current = f.repo.current().unwrap();
    let v = current.snapshot.signed.version.get();
    let older = std::fs::read(f.metadata(&format!("{}.snapshot.json", v - 1))).unwrap();
    std::fs::write(f.metadata(&format!("{v}.snapshot.json")), older).unwrap();
    let err = f.refresh().await.err().unwrap();
    assert_eq!(err.code, codes::BUNDLE_INCONSISTENT, "{err}");
}

#[tokio::test]
async fn another_tenant_cannot_sign_for_this_tenant() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    f.publish("evil", "report", "1.0.0");
    // evil's role lists a target under acme's path, signed with evil's own key.
    f.repo
        .rewrite_for_tests(|_, tenants| {
            let evil = tenants.get_mut("evil").unwrap();
            let (_, target) = evil.targets.iter().next().map(|(n, t)| (n.clone(), t.clone())).unwrap();
            evil.targets.insert(tough::TargetName::new("acme/report/9.9.9.zip").unwrap(), target);
        })
        .unwrap();
    // tough refuses the whole refresh: a role may only list targets under its paths.
    let err = f.refresh().await.err().unwrap();
    assert_eq!(err.code, codes::TENANT_MISMATCH, "{err}");

    // A delegation wider than `<tenant>/*` (a compromised targets key) is refused outright.
    f.repo
        .rewrite_for_tests(|top, tenants| {
            tenants.get_mut("evil").unwrap().targets.retain(|name, _| name.raw().starts_with("evil/"));
            let role = top.delegations.as_mut().unwrap().roles.iter_mut().find(|r| r.name == "evil").unwrap();
            role.paths = tough::schema::PathSet::Paths(vec![tough::schema::PathPattern::new("*").unwrap()]);
        })
        .unwrap();
    let verified = f.refresh().await.unwrap();
    assert_eq!(verified.find("evil", "report", &latest()).unwrap_err().code, codes::TENANT_MISMATCH);
}

#[tokio::test]
async fn root_rotation_is_followed_and_stored() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    let before = f.trust.fingerprint().unwrap();
    let new_dir = f.root_dir.with_file_name("root-keys-2");
    let report = f.repo.rotate_root(&f.root_dir, Some(&new_dir), 2, 2).unwrap();
    let verified = f.refresh().await.unwrap();
    assert_eq!(verified.root_version(), 2);
    assert_eq!(f.trust.fingerprint().unwrap(), report.root_fingerprint);
    assert_ne!(before, report.root_fingerprint);
    // The old keys alone can no longer sign a root.
    assert!(f.repo.rotate_root(&f.root_dir, None, 0, 0).is_err());
    f.repo.rotate_root(&new_dir, None, 0, 0).unwrap();
    assert_eq!(f.refresh().await.unwrap().root_version(), 3);
}

#[test]
fn keys_init_refuses_to_overwrite_and_checks_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path().join("repo"));
    assert!(repo.init(Path::new(&dir.path().join("r")), 2, 3).is_err());
    repo.init(&dir.path().join("r"), 1, 1).unwrap();
    assert!(repo.init(&dir.path().join("r2"), 1, 1).is_err());
}

/// What the hub serves an agent of `tenant`: that tenant's view of the repository.
#[derive(Debug, Clone)]
struct ViewTransport {
    repo: Repo,
    tenant: String,
}

type Chunks = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<tough::Bytes, tough::TransportError>> + Send>>;

#[tough::async_trait]
impl tough::Transport for ViewTransport {
    async fn fetch(&self, url: Url) -> Result<Chunks, tough::TransportError> {
        let file = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned();
        match self.repo.tenant_view(&self.tenant, &file) {
            Ok(Some(bytes)) => Ok(Box::pin(futures_util::stream::iter([Ok(tough::Bytes::from(bytes))]))),
            Ok(None) => Err(tough::TransportError::new(tough::TransportErrorKind::FileNotFound, url)),
            Err(e) => Err(tough::TransportError::new_with_cause(tough::TransportErrorKind::Other, url, e)),
        }
    }
}

impl Fixture {
    fn view(&self, tenant: &str) -> ViewTransport {
        ViewTransport { repo: self.repo.clone(), tenant: tenant.into() }
    }

    async fn refresh_view(&self, tenant: &str) -> Result<Verified, VerifyError> {
        let url = Url::parse("https://hub.invalid/v1/bundles/metadata/").unwrap();
        self.trust.refresh(url, self.view(tenant)).await
    }

    /// Every metadata file of `tenant`'s view the agent would read, as text.
    fn view_files(&self, tenant: &str) -> Vec<(String, String)> {
        let read = |file: &str| {
            let bytes = self.repo.tenant_view(tenant, file).unwrap().unwrap_or_else(|| panic!("{file} missing"));
            String::from_utf8(bytes).unwrap()
        };
        let timestamp = read("timestamp.json");
        let version = |text: &str, name: &str| -> u64 {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            value["signed"]["meta"][name]["version"].as_u64().unwrap()
        };
        let snapshot_file = format!("{}.snapshot.json", version(&timestamp, "snapshot.json"));
        let snapshot = read(&snapshot_file);
        let targets_file = format!("{}.targets.json", version(&snapshot, "targets.json"));
        let role_file = format!("{}.{tenant}.json", version(&snapshot, &format!("{tenant}.json")));
        let mut files = vec![("timestamp.json".to_owned(), timestamp), (snapshot_file, snapshot)];
        for file in [targets_file, role_file, "root.json".to_owned()] {
            let text = read(&file);
            files.push((file, text));
        }
        files
    }
}

/// The hub serves each tenant a view of the one repository: the agent verifies it with the
/// same code and root, finds its own bundles, and nothing it reads names another tenant.
#[tokio::test]
async fn a_tenant_view_verifies_and_names_no_other_tenant() {
    let f = fixture(RepoOptions::default());
    f.publish("acme", "report", "1.0.0");
    f.publish("globex", "secret-plan", "1.0.0");

    // An agent that read the whole repository before (an older hub) moves to its view:
    // same versions, so nothing looks like a rollback.
    f.refresh().await.unwrap();
    let verified = f.refresh_view("acme").await.unwrap();
    assert_eq!(verified.find("acme", "report", &latest()).unwrap().bundle.version.to_string(), "1.0.0");
    let other = verified.find("globex", "secret-plan", &latest()).unwrap_err();
    assert_eq!(other.code, codes::BUNDLE_NOT_FOUND, "{other}");
    for (file, text) in f.view_files("acme") {
        assert!(!text.contains("globex") && !text.contains("secret-plan"), "{file} names the other tenant: {text}");
    }
    // The other tenant's role is not part of this view, whatever its version.
    assert_eq!(f.repo.tenant_view("acme", "1.globex.json").unwrap(), None);
    assert!(f.repo.tenant_view("globex", "1.globex.json").unwrap().is_some());
    // The full targets does name both (what an operator reads).
    let full = std::fs::read_to_string(f.metadata("3.targets.json")).unwrap();
    assert!(full.contains("globex") && full.contains("acme"), "{full}");

    // Same bytes on every request (the hashes in snapshot and timestamp pin them).
    assert_eq!(f.view_files("acme"), f.view_files("acme"));

    // A new version is seen through the view, and the other tenant sees only its own.
    f.publish("acme", "report", "1.1.0");
    let verified = f.refresh_view("acme").await.unwrap();
    assert_eq!(verified.find("acme", "report", &latest()).unwrap().bundle.version.to_string(), "1.1.0");
    let trust_b = TrustStore::new(f._dir.path().join("agent-b-tuf"));
    trust_b.install_root(&f.repo.root_json().unwrap()).unwrap();
    let verified_b = trust_b.refresh(Url::parse("https://hub.invalid/m/").unwrap(), f.view("globex")).await.unwrap();
    assert!(verified_b.find("globex", "secret-plan", &latest()).is_ok());
    assert_eq!(verified_b.find("acme", "report", &latest()).unwrap_err().code, codes::BUNDLE_NOT_FOUND);
    for (file, text) in f.view_files("globex") {
        assert!(!text.contains("acme"), "{file} names the other tenant: {text}");
    }
}
