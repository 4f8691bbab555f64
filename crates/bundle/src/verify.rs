//! The agent's side of trust: the stored `root.json`, refreshing the repository through
//! `tough` (signature thresholds, expiry, rollback, snapshot consistency), and finding one
//! bundle of one tenant in the verified metadata.
//!
//! `tough` does the TUF client workflow. This module adds what `tough` 0.18 leaves out for
//! delegated roles: their expiry, their version never going down, and that the delegation
//! of a tenant covers exactly `<tenant>/*`. It must never return a bundle whose metadata did
//! not pass all of these, never look outside the requested tenant's own role, and never
//! replace the stored root except with one `tough` verified through the chain.

use crate::codes;
use crate::manifest::BundleMeta;
use crate::names::{parse_version, tenant_path_pattern, validate_slug, BundleRef};
use crate::repo::{canonical_json, write_atomic};
use semver::Version;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use tough::schema::{PathSet, Root, Signed};
use tough::{ExpirationEnforcement, Limits, Repository, RepositoryLoader, Transport, TransportErrorKind};
use url::Url;

/// A refusal with its stable code (see [`codes`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct VerifyError {
    pub code: &'static str,
    pub message: String,
}

impl VerifyError {
    pub fn new(code: &'static str, message: impl Into<String>) -> VerifyError {
        VerifyError { code, message: message.into() }
    }
}

/// `NETWORK` is the protocol's retryable code; the agent maps it to `ErrorCode::Network`.
pub const NETWORK: &str = "NETWORK";

/// Which version a job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    Latest,
    Exact(Version),
}

impl Wanted {
    pub fn parse(value: &str) -> Result<Wanted, crate::NameError> {
        if value.trim().eq_ignore_ascii_case("latest") {
            Ok(Wanted::Latest)
        } else {
            parse_version(value).map(Wanted::Exact)
        }
    }
}

/// A bundle version the metadata vouches for.
#[derive(Debug, Clone)]
pub struct FoundBundle {
    pub bundle: BundleRef,
    pub length: u64,
    pub sha256: String,
    pub meta: BundleMeta,
    /// Path under the repository's `targets/` (consistent-snapshot name).
    pub target_file: String,
}

/// Where the agent keeps its trust: `root.json`, `tough`'s datastore and our role versions.
#[derive(Debug, Clone)]
pub struct TrustStore {
    dir: PathBuf,
}

const ROLE_VERSIONS: &str = "role-versions.json";

impl TrustStore {
    pub fn new(dir: impl Into<PathBuf>) -> TrustStore {
        TrustStore { dir: dir.into() }
    }

    pub fn root_path(&self) -> PathBuf {
        self.dir.join("root.json")
    }

    fn datastore(&self) -> PathBuf {
        self.dir.join("datastore")
    }

    pub fn has_root(&self) -> bool {
        self.root_path().is_file()
    }

    /// Stores the root received at enrollment, after checking it is a root signed by its
    /// own threshold of keys. It is public data; what matters is that the person can compare
    /// its fingerprint with the operator's.
    pub fn install_root(&self, bytes: &[u8]) -> Result<String, VerifyError> {
        let root = parse_root(bytes)?;
        fs::create_dir_all(&self.dir).map_err(|e| {
            VerifyError::new(codes::TRUST_ROOT_MISSING, format!("cannot create {}: {e}", self.dir.display()))
        })?;
        write_atomic(&self.root_path(), bytes)
            .map_err(|e| VerifyError::new(codes::TRUST_ROOT_MISSING, e.to_string()))?;
        fingerprint(&root)
    }

    /// Fingerprint of the stored root, if there is one.
    pub fn fingerprint(&self) -> Option<String> {
        let bytes = fs::read(self.root_path()).ok()?;
        parse_root(&bytes).ok().and_then(|root| fingerprint(&root).ok())
    }

    /// When the stored root expires. [`TrustStore::refresh`] keeps the newest root the
    /// chain walk reached, so this is the expiry of the newest root this store trusts: past
    /// it, every refresh fails until the hub signs a newer root (`None`: no root stored, or
    /// one that does not verify).
    pub fn root_expires(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let bytes = fs::read(self.root_path()).ok()?;
        parse_root(&bytes).ok().map(|root| root.signed.expires)
    }

    /// Runs the TUF client workflow against `metadata_url` (ending in `/`).
    pub async fn refresh<T: Transport + Send + Sync + 'static>(
        &self,
        metadata_url: Url,
        transport: T,
    ) -> Result<Verified, VerifyError> {
        let root_bytes = fs::read(self.root_path()).map_err(|_| {
            VerifyError::new(
                codes::TRUST_ROOT_MISSING,
                "this agent has no trusted root.json; log in again to receive the hub's root",
            )
        })?;
        let stored = parse_root(&root_bytes)?;
        let datastore = self.datastore();
        fs::create_dir_all(&datastore).map_err(|e| {
            VerifyError::new(codes::BUNDLE_METADATA_INVALID, format!("cannot create {}: {e}", datastore.display()))
        })?;
        // Targets are downloaded by the agent itself (resumable, streamed); tough only needs
        // a syntactically valid base.
        let targets_url = metadata_url.join("../targets/").unwrap_or_else(|_| metadata_url.clone());
        let repo = RepositoryLoader::new(&root_bytes, metadata_url, targets_url)
            .transport(transport)
            .datastore(datastore)
            .limits(Limits::default())
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(|e| classify(&e))?;
        // Keep the newest verified root so the next refresh starts from it (rotation).
        if repo.root().signed.version > stored.signed.version {
            match serde_json::to_vec_pretty(repo.root()) {
                Ok(bytes) => {
                    if let Err(e) = write_atomic(&self.root_path(), &bytes) {
                        return Err(VerifyError::new(
                            codes::BUNDLE_METADATA_INVALID,
                            format!("cannot store the rotated root: {e}"),
                        ));
                    }
                }
                Err(e) => return Err(VerifyError::new(codes::BUNDLE_METADATA_INVALID, e.to_string())),
            }
        }
        Ok(Verified { repo, store: self.clone() })
    }

    fn role_versions(&self) -> BTreeMap<String, u64> {
        fs::read(self.dir.join(ROLE_VERSIONS)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save_role_versions(&self, versions: &BTreeMap<String, u64>) -> Result<(), VerifyError> {
        let bytes = serde_json::to_vec(versions)
            .map_err(|e| VerifyError::new(codes::BUNDLE_METADATA_INVALID, e.to_string()))?;
        write_atomic(&self.dir.join(ROLE_VERSIONS), &bytes)
            .map_err(|e| VerifyError::new(codes::BUNDLE_METADATA_INVALID, e.to_string()))
    }
}

/// A repository `tough` accepted.
pub struct Verified {
    repo: Repository,
    store: TrustStore,
}

impl Verified {
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn root_version(&self) -> u64 {
        self.repo.root().signed.version.get()
    }

    /// Finds `bundle` of `tenant` in that tenant's own delegated role only.
    pub fn find(&self, tenant: &str, bundle: &str, wanted: &Wanted) -> Result<FoundBundle, VerifyError> {
        validate_slug("tenant", tenant).map_err(|e| VerifyError::new(codes::TENANT_MISMATCH, e.to_string()))?;
        validate_slug("bundle", bundle).map_err(|e| VerifyError::new(codes::BUNDLE_NOT_FOUND, e.to_string()))?;
        let not_found = |what: String| VerifyError::new(codes::BUNDLE_NOT_FOUND, what);
        let role = self
            .repo
            .targets()
            .signed
            .delegations
            .as_ref()
            .and_then(|d| d.roles.iter().find(|r| r.name == tenant))
            .ok_or_else(|| not_found(format!("tenant {tenant:?} has no signed bundles on this hub")))?;
        // The delegation must confine the role to its own tenant's paths, nothing wider.
        let expected = tenant_path_pattern(tenant);
        let confined = matches!(&role.paths, PathSet::Paths(paths) if paths.len() == 1 && paths[0].value() == expected);
        if !confined {
            return Err(VerifyError::new(
                codes::TENANT_MISMATCH,
                format!("the delegation of tenant {tenant:?} is not limited to {expected:?}; refusing its targets"),
            ));
        }
        let signed =
            role.targets.as_ref().ok_or_else(|| not_found(format!("tenant {tenant:?} role was not loaded")))?;
        self.check_role_fresh(tenant, &format!("tenant {tenant:?}"), signed)?;

        let mut candidates: Vec<(BundleRef, &tough::schema::Target)> = signed
            .signed
            .targets
            .iter()
            .filter_map(|(name, target)| BundleRef::parse_target_name(name.raw()).ok().map(|r| (r, target)))
            .filter(|(r, _)| r.tenant == tenant && r.bundle == bundle)
            .collect();
        candidates.sort_by(|a, b| a.0.version.cmp(&b.0.version));
        let chosen = match wanted {
            Wanted::Exact(version) => candidates.into_iter().find(|(r, _)| &r.version == version),
            Wanted::Latest => {
                let stable = candidates.iter().rposition(|(r, _)| r.version.pre.is_empty());
                match stable {
                    Some(i) => candidates.into_iter().nth(i),
                    None => candidates.into_iter().last(),
                }
            }
        };
        let (bundle_ref, target) = chosen.ok_or_else(|| {
            not_found(match wanted {
                Wanted::Latest => format!("tenant {tenant:?} has no bundle {bundle:?}"),
                Wanted::Exact(v) => format!("tenant {tenant:?} has no version {v} of bundle {bundle:?}"),
            })
        })?;
        let sha256 = hex::encode(target.hashes.sha256.as_ref());
        let meta: BundleMeta = serde_json::from_value(serde_json::Value::Object(
            target.custom.clone().into_iter().collect(),
        ))
        .map_err(|e| {
            VerifyError::new(codes::BUNDLE_METADATA_INVALID, format!("{bundle_ref}: custom metadata unreadable: {e}"))
        })?;
        let consistent = meta.tenant == bundle_ref.tenant
            && meta.name == bundle_ref.bundle
            && meta.version == bundle_ref.version.to_string()
            && meta.sha256 == sha256;
        if !consistent {
            return Err(VerifyError::new(
                codes::BUNDLE_INCONSISTENT,
                format!("{bundle_ref}: its custom metadata does not match its target name and hash"),
            ));
        }
        let target_file = bundle_ref.target_file(&sha256);
        Ok(FoundBundle { bundle: bundle_ref, length: target.length, sha256, meta, target_file })
    }
}

impl Verified {
    /// What `tough` 0.18 leaves out for a delegated role: its expiry, and its version never
    /// going below the highest this trust store has seen (kept in `role-versions.json`).
    fn check_role_fresh(
        &self,
        role: &str,
        what: &str,
        signed: &Signed<tough::schema::Targets>,
    ) -> Result<(), VerifyError> {
        if signed.signed.expires <= chrono::Utc::now() {
            return Err(VerifyError::new(
                codes::BUNDLE_EXPIRED,
                format!("the signed targets of {what} expired at {}", signed.signed.expires),
            ));
        }
        let mut versions = self.store.role_versions();
        let seen = versions.get(role).copied().unwrap_or(0);
        let now_version = signed.signed.version.get();
        if now_version < seen {
            return Err(VerifyError::new(
                codes::BUNDLE_ROLLBACK,
                format!("{what} targets went from version {seen} back to {now_version}"),
            ));
        }
        if now_version > seen {
            versions.insert(role.to_owned(), now_version);
            self.store.save_role_versions(&versions)?;
        }
        Ok(())
    }

    /// The newest release of `channel` for this platform and architecture that is not
    /// paused, from the channel's own role only; `Ok(None)` when the channel has none.
    /// Staging by rollout percentage and the comparison with the running version are the
    /// caller's: this only says what the signed metadata offers.
    pub fn find_release(&self, channel: &str, platform: &str, arch: &str) -> Result<Option<FoundRelease>, VerifyError> {
        use crate::release::{release_path_pattern, release_role, validate_channel, ReleaseMeta, ReleaseRef};
        validate_channel(channel).map_err(|e| VerifyError::new(codes::BUNDLE_NOT_FOUND, e.to_string()))?;
        let role_name = release_role(channel);
        let Some(role) =
            self.repo.targets().signed.delegations.as_ref().and_then(|d| d.roles.iter().find(|r| r.name == role_name))
        else {
            return Ok(None);
        };
        let expected = release_path_pattern(channel);
        let confined = matches!(&role.paths, PathSet::Paths(paths) if paths.len() == 1 && paths[0].value() == expected);
        if !confined {
            return Err(VerifyError::new(
                codes::TENANT_MISMATCH,
                format!("the delegation of release channel {channel:?} is not limited to {expected:?}; refusing it"),
            ));
        }
        let signed = role.targets.as_ref().ok_or_else(|| {
            VerifyError::new(codes::BUNDLE_METADATA_INVALID, format!("release channel {channel:?} was not loaded"))
        })?;
        self.check_role_fresh(&role_name, &format!("release channel {channel:?}"), signed)?;
        let mut best: Option<(ReleaseRef, &tough::schema::Target, ReleaseMeta)> = None;
        for (name, target) in &signed.signed.targets {
            let Ok(release) = ReleaseRef::parse_target_name(name.raw()) else { continue };
            if release.channel != channel || release.platform != platform || release.arch != arch {
                continue;
            }
            let meta: ReleaseMeta =
                serde_json::from_value(serde_json::Value::Object(target.custom.clone().into_iter().collect()))
                    .map_err(|e| {
                        VerifyError::new(
                            codes::BUNDLE_METADATA_INVALID,
                            format!("release {release}: metadata unreadable: {e}"),
                        )
                    })?;
            let sha256 = hex::encode(target.hashes.sha256.as_ref());
            let consistent = meta.channel == release.channel
                && meta.platform == release.platform
                && meta.arch == release.arch
                && meta.version == release.version.to_string()
                && meta.sha256 == sha256
                && meta.rollout_percent <= 100;
            if !consistent {
                return Err(VerifyError::new(
                    codes::BUNDLE_INCONSISTENT,
                    format!("release {release}: its custom metadata does not match its target name and hash"),
                ));
            }
            if meta.paused {
                continue;
            }
            if best.as_ref().is_none_or(|(b, _, _)| release.version > b.version) {
                best = Some((release, target, meta));
            }
        }
        Ok(best.map(|(release, target, meta)| {
            let sha256 = hex::encode(target.hashes.sha256.as_ref());
            FoundRelease { target_file: release.target_file(&sha256), release, length: target.length, sha256, meta }
        }))
    }
}

/// A release the metadata vouches for.
#[derive(Debug, Clone)]
pub struct FoundRelease {
    pub release: crate::release::ReleaseRef,
    pub length: u64,
    pub sha256: String,
    pub meta: crate::release::ReleaseMeta,
    /// Path under the repository's `targets/` (consistent-snapshot name).
    pub target_file: String,
}

fn parse_root(bytes: &[u8]) -> Result<Signed<Root>, VerifyError> {
    let root: Signed<Root> = serde_json::from_slice(bytes).map_err(|e| {
        VerifyError::new(codes::BUNDLE_METADATA_INVALID, format!("root.json is not TUF root metadata: {e}"))
    })?;
    root.signed.verify_role(&root).map_err(|e| {
        VerifyError::new(codes::BUNDLE_UNTRUSTED, format!("root.json is not signed by its own root keys: {e}"))
    })?;
    Ok(root)
}

/// See [`crate::repo::root_fingerprint`]; the same value on both sides.
pub fn fingerprint(root: &Signed<Root>) -> Result<String, VerifyError> {
    canonical_json(&root.signed)
        .map(|bytes| crate::sha256_hex(&bytes))
        .map_err(|e| VerifyError::new(codes::BUNDLE_METADATA_INVALID, e.to_string()))
}

/// Fingerprint of a root.json file's bytes.
pub fn fingerprint_of(bytes: &[u8]) -> Result<String, VerifyError> {
    fingerprint(&parse_root(bytes)?)
}

/// Maps a `tough` failure to a refusal code people and the hub can act on.
pub fn classify(error: &tough::error::Error) -> VerifyError {
    use tough::error::Error as E;
    let message = describe(error);
    let code = match error {
        E::ExpiredMetadata { .. } | E::SystemTimeSteppedBackward { .. } => codes::BUNDLE_EXPIRED,
        E::OlderMetadata { .. } => codes::BUNDLE_ROLLBACK,
        E::VerifyMetadata { .. } | E::VerifyTrustedMetadata { .. } | E::VerifyRoleMetadata { .. } => {
            codes::BUNDLE_UNTRUSTED
        }
        E::VersionMismatch { .. }
        | E::MetaMissing { .. }
        | E::RoleNotInMeta { .. }
        | E::DelegatedRolesNotConsistent { .. } => codes::BUNDLE_INCONSISTENT,
        E::HashMismatch { .. } => codes::BUNDLE_INCONSISTENT,
        // A delegated role listing a target outside its paths: another tenant's name.
        E::InvalidPath { .. } | E::InvalidPathPermission { .. } => codes::TENANT_MISMATCH,
        E::MaxSizeExceeded { .. } => codes::BUNDLE_TOO_LARGE,
        E::Transport { source, .. } => classify_transport(source),
        _ => codes::BUNDLE_METADATA_INVALID,
    };
    VerifyError { code, message }
}

fn classify_transport(error: &tough::TransportError) -> &'static str {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(inner) = cause.downcast_ref::<tough::error::Error>() {
            match inner {
                tough::error::Error::HashMismatch { .. } => return codes::BUNDLE_INCONSISTENT,
                tough::error::Error::MaxSizeExceeded { .. } => return codes::BUNDLE_TOO_LARGE,
                _ => {}
            }
        }
        source = cause.source();
    }
    match error.kind() {
        TransportErrorKind::FileNotFound => codes::BUNDLE_METADATA_INVALID,
        _ => NETWORK,
    }
}

fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// `true` when `path` is inside `dir` (both must exist).
pub fn is_within(dir: &Path, path: &Path) -> bool {
    match (dir.canonicalize(), path.canonicalize()) {
        (Ok(d), Ok(p)) => p.starts_with(d),
        _ => false,
    }
}
