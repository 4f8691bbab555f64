//! The hub keeps every role its online keys sign from lapsing: timestamp, snapshot, and the
//! targets roles (top-level, each tenant's, each release channel's), which otherwise change
//! only when someone publishes. Real repositories, real keys, and the agent's own
//! verification (`TrustStore` through `tough`, reading the views the hub serves) with the
//! real clock: roles signed already expired (a negative TTL) are refused before a refresh
//! and accepted after it.

use chrono::{TimeDelta, Utc};
use edge_bundle::codes;
use edge_bundle::release::ReleaseRequest;
use edge_bundle::repo::{KeyProblem, PublishRequest, Repo, RepoOptions};
use edge_bundle::verify::{TrustStore, Verified, VerifyError, Wanted};
use edge_bundle::{CpuArch, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use url::Url;

struct Fixture {
    dir: TempDir,
}

fn fixture(options: RepoOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture { dir };
    f.repo(options).init(&f.dir.path().join("root-keys"), 1, 1).unwrap();
    f
}

impl Fixture {
    fn repo_dir(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The repository as signed with `options` (the TTLs apply to what it signs next).
    fn repo(&self, options: RepoOptions) -> Repo {
        Repo::with_options(self.repo_dir(), options)
    }

    /// The repository as the hub opens it.
    fn hub(&self) -> Repo {
        Repo::new(self.repo_dir())
    }

    fn publish_bundle(&self, repo: &Repo, version: &str) -> String {
        let src = self.dir.path().join(format!("src-{version}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("main.sh"), format!("echo {version}\n")).unwrap();
        let request = PublishRequest {
            tenant: "acme".into(),
            bundle: "report".into(),
            version: version.into(),
            runtime: Runtime::Shell,
            cpu_arch: CpuArch::any(),
            entrypoint: None,
            source: src,
        };
        repo.publish(&request).unwrap().meta.sha256
    }

    fn publish_release(&self, repo: &Repo, version: &str) -> String {
        let binary = self.dir.path().join(format!("agent-{version}"));
        std::fs::write(&binary, format!("agent binary {version}")).unwrap();
        let request = ReleaseRequest {
            channel: "stable".into(),
            platform: "linux".into(),
            arch: "x86_64".into(),
            version: version.into(),
            notes: String::new(),
            rollout_percent: 100,
            source: binary,
        };
        repo.publish_release(&request).unwrap().meta.sha256
    }

    /// An agent's trust store (one per kind of view, as on a real agent).
    fn trust(&self, name: &str) -> TrustStore {
        let trust = TrustStore::new(self.dir.path().join(name));
        trust.install_root(&self.hub().root_json().unwrap()).unwrap();
        trust
    }

    /// What an agent of tenant `acme` verifies.
    async fn verify_tenant(&self, trust: &TrustStore) -> Result<Verified, VerifyError> {
        let view = View { repo: self.hub(), of: Of::Tenant("acme".into()) };
        trust.refresh(Url::parse("https://hub.invalid/v1/bundles/metadata/").unwrap(), view).await
    }

    /// What an agent following release channel `stable` verifies.
    async fn verify_channel(&self, trust: &TrustStore) -> Result<Verified, VerifyError> {
        let view = View { repo: self.hub(), of: Of::Channel("stable".into()) };
        trust.refresh(Url::parse("https://hub.invalid/v1/releases/stable/metadata/").unwrap(), view).await
    }

    /// Every file under `metadata/` and its bytes.
    fn metadata_files(&self) -> BTreeMap<String, Vec<u8>> {
        files_under(&self.repo_dir().join("metadata"))
    }
}

fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// Versions and signed content (targets and delegations) of every targets role, and the
/// snapshot and timestamp versions.
#[derive(Debug, PartialEq)]
struct State {
    versions: BTreeMap<String, u64>,
    content: BTreeMap<String, serde_json::Value>,
    snapshot: u64,
    timestamp: u64,
}

fn state(repo: &Repo) -> State {
    let current = repo.current().unwrap();
    let mut versions = BTreeMap::from([("targets".to_owned(), current.targets.signed.version.get())]);
    let content_of =
        |role: &tough::schema::Targets| serde_json::json!({ "targets": role.targets, "delegations": role.delegations });
    let mut content = BTreeMap::from([("targets".to_owned(), content_of(&current.targets.signed))]);
    for (name, role) in &current.tenants {
        versions.insert(name.clone(), role.signed.version.get());
        content.insert(name.clone(), content_of(&role.signed));
    }
    State {
        versions,
        content,
        snapshot: current.snapshot.signed.version.get(),
        timestamp: current.timestamp.signed.version.get(),
    }
}

/// Every targets role's expiry.
fn expiries(repo: &Repo) -> BTreeMap<String, chrono::DateTime<Utc>> {
    let current = repo.current().unwrap();
    let mut out = BTreeMap::from([("targets".to_owned(), current.targets.signed.expires)]);
    for (name, role) in &current.tenants {
        out.insert(name.clone(), role.signed.expires);
    }
    out
}

#[derive(Debug, Clone)]
enum Of {
    Tenant(String),
    Channel(String),
}

/// The hub's metadata routes: the view of one tenant or one release channel.
#[derive(Debug, Clone)]
struct View {
    repo: Repo,
    of: Of,
}

type Chunks = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<tough::Bytes, tough::TransportError>> + Send>>;

#[tough::async_trait]
impl tough::Transport for View {
    async fn fetch(&self, url: Url) -> Result<Chunks, tough::TransportError> {
        let file = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_owned();
        let view = match &self.of {
            Of::Tenant(tenant) => self.repo.tenant_view(tenant, &file),
            Of::Channel(channel) => self.repo.release_view(channel, &file),
        };
        match view {
            Ok(Some(bytes)) => Ok(Box::pin(futures_util::stream::iter([Ok(tough::Bytes::from(bytes))]))),
            Ok(None) => Err(tough::TransportError::new(tough::TransportErrorKind::FileNotFound, url)),
            Err(e) => Err(tough::TransportError::new_with_cause(tough::TransportErrorKind::Other, url, e)),
        }
    }
}

/// Top-level targets, the tenant's role and the channel's role, all signed already expired.
fn expired_targets() -> (Fixture, String, String) {
    let f = fixture(RepoOptions { targets_ttl: TimeDelta::seconds(-5), ..RepoOptions::default() });
    let signer = f.repo(RepoOptions { targets_ttl: TimeDelta::seconds(-5), ..RepoOptions::default() });
    let bundle = f.publish_bundle(&signer, "1.0.0");
    let release = f.publish_release(&signer, "1.0.0");
    (f, bundle, release)
}

async fn expect_expired(f: &Fixture, tenant: &TrustStore, channel: &TrustStore) {
    let err = match f.verify_tenant(tenant).await {
        Err(e) => e,
        Ok(v) => v.find("acme", "report", &Wanted::Latest).unwrap_err(),
    };
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
    let err = match f.verify_channel(channel).await {
        Err(e) => e,
        Ok(v) => v.find_release("stable", "linux", "x86_64").unwrap_err(),
    };
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
}

/// The hub's timer: the timestamp is fresh, but every targets role has expired. After the
/// refresh the agent's verification accepts the same bundle and release, past the roles'
/// original expiry, with every targets version one up and their content unchanged.
#[tokio::test]
async fn expired_targets_roles_are_re_signed_with_the_same_content() {
    let (f, bundle_sha, release_sha) = expired_targets();
    let (tenant, channel) = (f.trust("agent-tuf"), f.trust("agent-updates-tuf"));
    expect_expired(&f, &tenant, &channel).await;
    let before = state(&f.hub());

    let refreshed = f.hub().refresh_expiring_metadata().unwrap();

    assert!(refreshed.needs_operator.is_empty(), "{:?}", refreshed.needs_operator);
    let resigned: BTreeMap<String, u64> = refreshed.targets.iter().cloned().collect();
    let expected: BTreeMap<String, u64> = before.versions.iter().map(|(role, v)| (role.clone(), v + 1)).collect();
    assert_eq!(resigned, expected);
    assert_eq!(refreshed.targets[0].0, "targets", "top-level first, as logged");
    assert_eq!(refreshed.snapshot, Some(before.snapshot + 1));
    assert_eq!(refreshed.timestamp, Some(before.timestamp + 1));
    let after = state(&f.hub());
    assert_eq!(after.versions, expected);
    assert_eq!(after.content, before.content, "a refresh must not change what is signed");
    assert_eq!((after.snapshot, after.timestamp), (before.snapshot + 1, before.timestamp + 1));
    let year_less_a_day = Utc::now() + TimeDelta::days(364);
    for (role, expires) in expiries(&f.hub()) {
        assert!(expires > year_less_a_day, "{role} expires at {expires}");
    }

    let found = f.verify_tenant(&tenant).await.unwrap().find("acme", "report", &Wanted::Latest).unwrap();
    assert_eq!((found.bundle.version.to_string(), found.sha256), ("1.0.0".to_owned(), bundle_sha));
    let release = f.verify_channel(&channel).await.unwrap().find_release("stable", "linux", "x86_64").unwrap();
    let release = release.expect("the channel's release is offered again");
    assert_eq!((release.release.version.to_string(), release.sha256), ("1.0.0".to_owned(), release_sha));
    // An agent that never saw the expired roles verifies too.
    let fresh = f.trust("new-agent-tuf");
    f.verify_tenant(&fresh).await.unwrap().find("acme", "report", &Wanted::Latest).unwrap();

    // Done once: the next refresh finds nothing due and writes nothing.
    let files = f.metadata_files();
    assert!(!f.hub().refresh_expiring_metadata().unwrap().changed());
    assert_eq!(f.metadata_files(), files);
}

/// The request path (before serving `timestamp.json`): once the timestamp is due it renews
/// the due targets roles in the same commit.
#[tokio::test]
async fn renewing_a_due_timestamp_renews_due_targets_roles_too() {
    let short = RepoOptions {
        targets_ttl: TimeDelta::seconds(-5),
        timestamp_ttl: TimeDelta::seconds(-5),
        ..RepoOptions::default()
    };
    let f = fixture(short);
    let signer = f.repo(short);
    f.publish_bundle(&signer, "1.0.0");
    f.publish_release(&signer, "1.0.0");
    let (tenant, channel) = (f.trust("agent-tuf"), f.trust("agent-updates-tuf"));
    let err = f.verify_tenant(&tenant).await.err().unwrap();
    assert_eq!(err.code, codes::BUNDLE_EXPIRED, "{err}");
    let before = state(&f.hub());

    let refreshed = f.hub().refresh_online_metadata().unwrap();

    assert_eq!(refreshed.targets.len(), 3, "{:?}", refreshed.targets);
    assert_eq!(refreshed.timestamp, Some(before.timestamp + 1));
    assert_eq!(state(&f.hub()).content, before.content);
    f.verify_tenant(&tenant).await.unwrap().find("acme", "report", &Wanted::Latest).unwrap();
    f.verify_channel(&channel).await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();
}

/// Nothing near expiry: neither entry point writes anything, not even the lock.
#[tokio::test]
async fn a_refresh_with_nothing_near_expiry_changes_nothing() {
    let f = fixture(RepoOptions::default());
    f.publish_bundle(&f.hub(), "1.0.0");
    f.publish_release(&f.hub(), "1.0.0");
    let files = files_under(&f.repo_dir().join("metadata"));
    let before = state(&f.hub());

    let on_request = f.hub().refresh_online_metadata().unwrap();
    let on_timer = f.hub().refresh_expiring_metadata().unwrap();

    assert!(!on_request.changed() && on_request.targets.is_empty(), "{on_request:?}");
    assert!(!on_timer.changed() && on_timer.targets.is_empty(), "{on_timer:?}");
    assert!(on_timer.needs_operator.is_empty());
    assert_eq!(state(&f.hub()), before);
    assert_eq!(f.metadata_files(), files);
    assert!(!f.repo_dir().join(".lock").exists());
}

/// Only roles in the last half of their life are re-signed: a tenant's role signed for 100
/// days is (less than half of 365 left); top-level targets and the channel's role, signed
/// for 365 days afterwards, keep their versions.
#[tokio::test]
async fn only_roles_in_the_last_half_of_their_life_are_re_signed() {
    let f = fixture(RepoOptions::default());
    f.publish_bundle(&f.repo(RepoOptions { targets_ttl: TimeDelta::days(100), ..RepoOptions::default() }), "1.0.0");
    // Adding the channel's delegation re-signs top-level targets for a full year.
    f.publish_release(&f.hub(), "1.0.0");
    let before = state(&f.hub());

    let refreshed = f.hub().refresh_expiring_metadata().unwrap();

    assert_eq!(refreshed.targets, vec![("acme".to_owned(), before.versions["acme"] + 1)]);
    let after = state(&f.hub());
    assert_eq!(after.versions["targets"], before.versions["targets"]);
    assert_eq!(after.versions["_release-stable"], before.versions["_release-stable"]);
    assert_eq!(after.content, before.content);
    let tenant = f.trust("agent-tuf");
    f.verify_tenant(&tenant).await.unwrap().find("acme", "report", &Wanted::Latest).unwrap();
    assert!(expiries(&f.hub())["acme"] > Utc::now() + TimeDelta::days(364));
}

/// A due role whose key is not in the repository is left alone and reported (with the key's
/// path); every other due role is still renewed.
#[tokio::test]
async fn a_role_whose_key_is_gone_is_reported_and_the_others_are_renewed() {
    let (f, _, _) = expired_targets();
    std::fs::remove_file(f.repo_dir().join("keys/tenants/acme.pk8")).unwrap();
    let before = state(&f.hub());

    let refreshed = f.hub().refresh_expiring_metadata().unwrap();

    let roles: Vec<&str> = refreshed.targets.iter().map(|(role, _)| role.as_str()).collect();
    assert_eq!(roles, ["targets", "_release-stable"]);
    assert_eq!(refreshed.needs_operator.len(), 1, "{:?}", refreshed.needs_operator);
    let stale = &refreshed.needs_operator[0];
    assert_eq!((stale.role.as_str(), stale.problem), ("acme", KeyProblem::Missing));
    let message = stale.to_string();
    assert!(message.contains("keys/tenants/acme.pk8") && message.contains("backup"), "{message}");
    assert_eq!(state(&f.hub()).versions["acme"], before.versions["acme"]);
    let channel = f.trust("agent-updates-tuf");
    f.verify_channel(&channel).await.unwrap().find_release("stable", "linux", "x86_64").unwrap().unwrap();

    // Still reported on the next pass, which has nothing else to do.
    let again = f.hub().refresh_expiring_metadata().unwrap();
    assert!(!again.changed());
    assert_eq!(again.needs_operator.len(), 1);
}
