//! The ends of the hub's signing roots, against a real TUF repository built with the hub's
//! own signing code (`edge_bundle::repo::Repo`, what `edge-hub bundle init` and `root
//! rotate` call) and served over loopback HTTP to the agent's own transport.
//!
//! What the snapshot records is the end of the NEWEST root the agent trusts after walking
//! the chain of rotations (not the one received at enrollment), it survives a restart (it
//! is read from the stored root), and a root the operator renews clears the warning by
//! itself, without a bundle job and without a new login.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, TimeDelta, Utc};
use edge_agent::bundles::{BundleContext, HubAuth};
use edge_agent::state::{Expiring, Expiry, ExpiryWarning, StateHandle};
use edge_bundle::repo::{Repo, RepoOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn metadata(State(repo): State<Arc<Repo>>, UrlPath(file): UrlPath<String>) -> Response {
    if file.contains("..") || file.contains('/') {
        return StatusCode::NOT_FOUND.into_response();
    }
    match tokio::fs::read(repo.metadata_dir().join(file)).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

struct Hub {
    dir: tempfile::TempDir,
    root_keys: PathBuf,
    base: String,
}

impl Hub {
    /// A bundle repository whose first root lives `root_ttl`, served on loopback.
    async fn start(root_ttl: TimeDelta) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let root_keys = dir.path().join("root-keys");
        let hub = Hub { dir, root_keys, base: String::new() };
        hub.repo(root_ttl).init(&hub.root_keys, 1, 1).unwrap();
        let app =
            Router::new().route("/v1/bundles/metadata/{file}", get(metadata)).with_state(Arc::new(hub.repo(root_ttl)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hub { base, ..hub }
    }

    /// The repository as the operator's next command sees it: new roots live `root_ttl`.
    fn repo(&self, root_ttl: TimeDelta) -> Repo {
        Repo::with_options(self.dir.path().join("repo"), RepoOptions { root_ttl, ..RepoOptions::default() })
    }

    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// What enrollment does: the agent stores the hub's current root.
    fn enroll(&self) {
        let root = self.repo(TimeDelta::days(1)).root_json().unwrap();
        edge_agent::bundles::trust_store(&self.agent_dir()).install_root(&root).unwrap();
    }

    /// The `expires` of the hub's current root, as signed.
    fn current_root_expires(&self) -> DateTime<Utc> {
        let root: serde_json::Value =
            serde_json::from_slice(&self.repo(TimeDelta::days(1)).root_json().unwrap()).unwrap();
        DateTime::parse_from_rfc3339(root["signed"]["expires"].as_str().unwrap()).unwrap().with_timezone(&Utc)
    }

    fn context(&self) -> BundleContext {
        BundleContext::new(self.agent_dir(), self.base.clone(), "acme".into()).unwrap().with_auth(HubAuth::None)
    }
}

fn bundle_root(expiries: &[Expiry]) -> Expiry {
    let found: Vec<&Expiry> = expiries.iter().filter(|e| e.what == Expiring::BundleRoot).collect();
    assert_eq!(found.len(), 1, "one bundle root: {expiries:?}");
    found[0].clone()
}

fn instant(expiry: &Expiry) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&expiry.expires_at).unwrap().with_timezone(&Utc)
}

/// The core's expiry task over a logged-in agent's snapshot, as the service runs it.
struct Watch {
    state: StateHandle,
    changes: tokio::sync::broadcast::Receiver<edge_agent::state::AgentEvent>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(state: &StateHandle, data_dir: &Path, ctx: BundleContext) -> Watch {
        // Subscribed before the task starts, so no change falls between a look and the wait.
        let changes = state.subscribe();
        let cancel = CancellationToken::new();
        let task =
            tokio::spawn(edge_agent::expiry::watch(state.clone(), data_dir.to_path_buf(), Some(ctx), cancel.clone()));
        Watch { state: state.clone(), changes, cancel, task }
    }

    /// The expiries once `done` holds, within `within`.
    async fn until(&mut self, within: Duration, done: impl Fn(&[Expiry]) -> bool) -> Vec<Expiry> {
        let waited = tokio::time::timeout(within, async {
            loop {
                let expiries = self.state.snapshot().expiries;
                if done(&expiries) {
                    return expiries;
                }
                let _ = self.changes.recv().await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("the expiries never got there: {:?}", self.state.snapshot().expiries))
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// The snapshot of a logged-in agent, watched by the core's expiry task until `done`.
async fn watched_until(
    state: &StateHandle,
    data_dir: &Path,
    ctx: BundleContext,
    done: impl Fn(&[Expiry]) -> bool,
) -> Vec<Expiry> {
    let mut watch = Watch::start(state, data_dir, ctx);
    let expiries = watch.until(Duration::from_secs(30), done).await;
    watch.stop().await;
    expiries
}

fn logged_in(data_dir: &Path) -> StateHandle {
    let state = StateHandle::new(data_dir.to_path_buf());
    state.update(|s| s.logged_in = true);
    state
}

#[tokio::test]
async fn the_recorded_end_is_the_newest_roots_after_a_chain_of_rotations() {
    let hub = Hub::start(TimeDelta::days(10)).await;
    hub.enroll();
    let enrolled = hub.current_root_expires();
    let now = Utc::now();
    let first = bundle_root(&edge_agent::expiry::read(&hub.agent_dir(), now));
    assert_eq!(instant(&first), enrolled, "the enrollment root's end, to the nanosecond");
    assert_eq!(first.warning, Some(ExpiryWarning::Soon), "10 days left is within the 30-day warning");

    // The operator rotates twice: new keys (root 2), then the new keys re-sign (root 3).
    let new_keys = hub.dir.path().join("root-keys-2");
    hub.repo(TimeDelta::days(200)).rotate_root(&hub.root_keys, Some(&new_keys), 1, 1).unwrap();
    let second = hub.current_root_expires();
    hub.repo(TimeDelta::days(300)).rotate_root(&new_keys, None, 0, 0).unwrap();
    let newest = hub.current_root_expires();
    assert!(newest > second && second > enrolled);

    // The agent sits idle (no bundle job): its expiry task sees the warning, refreshes the
    // metadata, walks 1 → 2 → 3 and records root 3's end; the warning is gone.
    let state = logged_in(&hub.agent_dir());
    let expiries =
        watched_until(&state, &hub.agent_dir(), hub.context(), |e| e.iter().any(|e| e.warning.is_none())).await;
    let recorded = bundle_root(&expiries);
    assert_eq!(instant(&recorded), newest, "root 3's end, not root 2's ({second}) nor the first ({enrolled})");
    assert_eq!(recorded.warning, None);

    // A restart reads the same from disk, before any connection.
    assert_eq!(bundle_root(&edge_agent::expiry::read(&hub.agent_dir(), Utc::now())), recorded);
    // The release root is left out until the updater has one of its own.
    assert!(expiries.iter().all(|e| e.what == Expiring::BundleRoot), "{expiries:?}");
}

#[tokio::test]
async fn an_expired_root_is_an_error_until_the_operator_renews_it_then_clears_by_itself() {
    // A root that ended an hour ago: every bundle job would fail verification.
    let hub = Hub::start(TimeDelta::hours(-1)).await;
    hub.enroll();
    let ended = hub.current_root_expires();
    let state = logged_in(&hub.agent_dir());
    edge_agent::expiry::publish(&state, &hub.agent_dir());
    let expired = bundle_root(&state.snapshot().expiries);
    assert_eq!((instant(&expired), expired.warning), (ended, Some(ExpiryWarning::Expired)));
    // Refreshing does not help while the hub has nothing newer: still expired.
    let refused = hub
        .context()
        .trust()
        .refresh(
            url::Url::parse(&format!("{}/v1/bundles/metadata/", hub.base)).unwrap(),
            edge_agent::bundles::HubTransport::new(hub.context().http, HubAuth::None),
        )
        .await
        .err()
        .expect("an expired root is refused");
    assert_eq!(refused.code, edge_bundle::codes::BUNDLE_EXPIRED);

    // The operator re-signs the root with the same keys for another year: the agent picks it
    // up by itself (an expired trusted root may still vouch for its successor).
    hub.repo(TimeDelta::days(365)).rotate_root(&hub.root_keys, None, 0, 0).unwrap();
    let renewed = hub.current_root_expires();
    let expiries = watched_until(&state, &hub.agent_dir(), hub.context(), |e| {
        !e.is_empty() && e.iter().all(|e| e.warning.is_none())
    })
    .await;
    assert_eq!(instant(&bundle_root(&expiries)), renewed);
}

#[tokio::test]
async fn a_logged_out_agent_shows_no_expiry() {
    let hub = Hub::start(TimeDelta::days(3)).await;
    hub.enroll();
    let state = StateHandle::new(hub.agent_dir());
    edge_agent::expiry::publish(&state, &hub.agent_dir());
    assert_eq!(state.snapshot().expiries, Vec::new());
}

#[tokio::test]
async fn a_verified_update_check_brings_the_release_roots_end_at_once() {
    let hub = Hub::start(TimeDelta::days(100)).await;
    hub.enroll();
    let state = logged_in(&hub.agent_dir());
    let mut watch = Watch::start(&state, &hub.agent_dir(), hub.context());
    let first = watch.until(Duration::from_secs(30), |e| !e.is_empty()).await;
    assert_eq!(first.iter().map(|e| e.what).collect::<Vec<_>>(), [Expiring::BundleRoot], "no update check yet");

    // What the updater's first check does: its own trust store starts from the hub's root,
    // then its verified check shows in the snapshot.
    let root = edge_bundle::repo::Repo::new(hub.dir.path().join("repo")).root_json().unwrap();
    edge_agent::updater::release_trust_store(&hub.agent_dir()).install_root(&root).unwrap();
    state.update(|s| s.updates.last_verified_check = Some(Utc::now().to_rfc3339()));
    // At once, not at the next look ten minutes later.
    assert!(edge_agent::expiry::LOOK_EVERY >= Duration::from_secs(600));
    let both = watch.until(Duration::from_secs(5), |e| e.len() == 2).await;
    watch.stop().await;
    let release = both.iter().find(|e| e.what == Expiring::ReleaseRoot).expect("the release root");
    assert_eq!(instant(release), hub.current_root_expires());
    assert_eq!(release.warning, None, "100 days left");
}
