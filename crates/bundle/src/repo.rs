//! The hub's TUF repository on disk: keys, signing, publishing a bundle, re-signing
//! the metadata its online keys sign before it expires, rotating root.
//!
//! Layout under the repository directory:
//!
//! ```text
//! metadata/root.json, metadata/<N>.root.json     root, kept for every version (clients walk the chain)
//! metadata/timestamp.json                        the only file rewritten in place (atomic rename)
//! metadata/<N>.snapshot.json, <N>.targets.json, <N>.<tenant>.json   consistent snapshots
//! targets/<tenant>/<bundle>/<sha256>.<version>.zip
//! keys/timestamp.pk8, keys/snapshot.pk8, keys/targets.pk8, keys/tenants/<tenant>.pk8  (online keys)
//! ```
//!
//! Root keys are never stored here: they live in a directory the operator controls
//! (`--root-dir`) and are needed only for `keys init` and root rotation.
//!
//! Metadata is hand-built from `tough`'s schema types and signed here (Ed25519 over the
//! canonical JSON of `signed`, exactly what `tough` verifies), because `tough`'s editor
//! wants to own the whole repository life cycle including delegations we keep per tenant.
//! This module must never write a metadata file that a reader could see half-written
//! (every write is a temp file plus rename, `timestamp.json` last), never sign with a root
//! key it did not read from the operator's directory, and never let a tenant role list a
//! target outside `<tenant>/*`.

use crate::manifest::{manifest_signing_message, validate_entrypoint, BundleMeta, CpuArch, Runtime};
use crate::names::{tenant_path_pattern, validate_slug, BundleRef, NameError};
use crate::store::{DirStore, RepoStore};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{
    DelegatedRole, Delegations, Hashes, Metafile, PathPattern, PathSet, RoleKeys, RoleType, Root, Signature, Signed,
    Snapshot, Target, Targets, Timestamp,
};
use tough::TargetName;

pub const SPEC_VERSION: &str = "1.0.0";
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// A lock file older than this belongs to a crashed writer.
const STALE_LOCK: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the bundle repository at {0} is not initialised: run `edge-hub bundle keys init` first")]
    NotInitialised(String),
    #[error("{0} already exists; refusing to overwrite keys or metadata")]
    Exists(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is already published with different bytes; publish a new version instead")]
    VersionExists(String),
    #[error("key problem: {0}")]
    Key(String),
    /// The archive breaks a rule of the agent's safe unpack; carries the agent's own code.
    #[error("{0}; an agent would refuse this bundle, so nothing was published")]
    Unsafe(crate::unpack::UnpackError),
    #[error("another writer holds {0} (remove it if no edge-hub bundle command is running)")]
    Locked(String),
    /// The storage behind the repository failed (an object store refused or was unreachable).
    #[error("{0}")]
    Store(String),
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RepoError {
    let context = context.into();
    move |source| RepoError::Io { context, source }
}

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy)]
pub struct RepoOptions {
    pub root_ttl: TimeDelta,
    pub targets_ttl: TimeDelta,
    pub snapshot_ttl: TimeDelta,
    pub timestamp_ttl: TimeDelta,
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions {
            root_ttl: TimeDelta::days(365),
            targets_ttl: TimeDelta::days(365),
            snapshot_ttl: TimeDelta::days(30),
            timestamp_ttl: TimeDelta::days(1),
        }
    }
}

/// One Ed25519 signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    key: Key,
    keyid: Decoded<Hex>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.keyid_hex())
    }
}

impl Signer {
    /// A new key and its PKCS#8 document (what goes into the key file).
    pub fn generate() -> Result<(Signer, Vec<u8>), RepoError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| RepoError::Key("the system random source failed".into()))?;
        let signer = Signer::from_pkcs8(pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Signer, RepoError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| RepoError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let key = Key::Ed25519 {
            keyval: Ed25519Key { public: pair.public_key().as_ref().to_vec().into(), _extra: HashMap::new() },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        };
        let keyid = key.key_id().map_err(|e| RepoError::Key(e.to_string()))?;
        Ok(Signer { pair, key, keyid })
    }

    pub fn load(path: &Path) -> Result<Signer, RepoError> {
        let bytes = fs::read(path).map_err(io(format!("cannot read key {}", path.display())))?;
        Signer::from_pkcs8(&bytes).map_err(|e| RepoError::Key(format!("{}: {e}", path.display())))
    }

    /// An online key stored in the repository under `key`.
    fn load_stored(repo: &Repo, key: &str) -> Result<Option<Signer>, RepoError> {
        let Some(bytes) = repo.store.get(key)? else { return Ok(None) };
        Signer::from_pkcs8(&bytes).map(Some).map_err(|e| RepoError::Key(format!("{}/{key}: {e}", repo.location())))
    }

    pub fn tuf_key(&self) -> &Key {
        &self.key
    }

    pub fn keyid(&self) -> &Decoded<Hex> {
        &self.keyid
    }

    pub fn keyid_hex(&self) -> String {
        hex::encode(self.keyid.as_ref())
    }

    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// The canonical JSON (OLPC) of a value: the bytes TUF signatures cover.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, RepoError> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|e| RepoError::Invalid(format!("cannot canonicalise metadata: {e}")))?;
    Ok(out)
}

/// Signs `value` with every signer.
pub fn sign<T: Serialize>(value: T, signers: &[&Signer]) -> Result<Signed<T>, RepoError> {
    let message = canonical_json(&value)?;
    let signatures =
        signers.iter().map(|s| Signature { keyid: s.keyid.clone(), sig: s.sign_bytes(&message).into() }).collect();
    Ok(Signed { signed: value, signatures })
}

/// Writes a key file readable by its owner only.
pub(crate) fn write_key(path: &Path, pkcs8: &[u8]) -> Result<(), RepoError> {
    if path.exists() {
        return Err(RepoError::Exists(path.display().to_string()));
    }
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(format!("cannot create key {}", path.display())))?;
    file.write_all(pkcs8).and_then(|_| file.sync_all()).map_err(io(format!("cannot write key {}", path.display())))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), RepoError> {
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Temp file + fsync + rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let dir = path.parent().ok_or_else(|| RepoError::Invalid(format!("{} has no parent", path.display())))?;
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = fs::File::create(&temporary).map_err(io(format!("cannot create {}", temporary.display())))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io(format!("cannot write {}", temporary.display())))?;
    fs::rename(&temporary, path).map_err(io(format!("cannot replace {}", path.display())))
}

/// Loads every `*.pk8` key in an operator's root-key directory.
pub fn load_key_dir(dir: &Path) -> Result<Vec<Signer>, RepoError> {
    let mut keys = Vec::new();
    let entries = fs::read_dir(dir).map_err(io(format!("cannot read root key directory {}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.extension().is_some_and(|e| e == "pk8") {
            keys.push(Signer::load(&path)?);
        }
    }
    Ok(keys)
}

/// The fingerprint people compare out of band: SHA-256 of the canonical JSON of the root
/// role's `signed` part, so whitespace and signature order do not change it.
pub fn root_fingerprint(root: &Signed<Root>) -> Result<String, RepoError> {
    Ok(crate::sha256_hex(&canonical_json(&root.signed)?))
}

/// What `keys init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub root_keyids: Vec<String>,
    pub threshold: u64,
    pub root_fingerprint: String,
}

/// What `publish` recorded.
#[derive(Debug, Clone)]
pub struct Published {
    pub target_name: String,
    pub target_file: String,
    pub length: u64,
    pub meta: BundleMeta,
    /// False when exactly these bytes were already published under this version.
    pub changed: bool,
}

/// A bundle to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub tenant: String,
    pub bundle: String,
    pub version: String,
    pub runtime: Runtime,
    pub cpu_arch: CpuArch,
    pub entrypoint: Option<String>,
    /// A directory (zipped here) or a `.zip` file.
    pub source: PathBuf,
}

/// The current, signed state of the repository.
pub struct Current {
    pub root: Signed<Root>,
    pub timestamp: Signed<Timestamp>,
    pub snapshot: Signed<Snapshot>,
    pub targets: Signed<Targets>,
    pub tenants: BTreeMap<String, Signed<Targets>>,
}

/// What a refresh re-signed; empty when nothing was due.
#[derive(Debug, Clone, Default)]
pub struct Refreshed {
    /// Targets roles re-signed (`targets`, then tenant and channel roles) with their new version.
    pub targets: Vec<(String, u64)>,
    /// The new snapshot version, if one was signed.
    pub snapshot: Option<u64>,
    /// The new timestamp version, if one was signed.
    pub timestamp: Option<u64>,
    /// Roles in the last half of their life that the hub cannot re-sign.
    pub needs_operator: Vec<StaleRole>,
}

impl Refreshed {
    /// Whether anything was written.
    pub fn changed(&self) -> bool {
        self.timestamp.is_some()
    }
}

/// A targets role near (or past) its expiry whose key the hub does not hold.
#[derive(Debug, Clone)]
pub struct StaleRole {
    /// `targets`, a tenant, or a release channel's role (`_release-<channel>`).
    pub role: String,
    pub expires: DateTime<Utc>,
    /// Where in the repository its key should be.
    pub key: String,
    pub problem: KeyProblem,
}

/// Why the hub cannot use a role's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// No key file at the role's key path.
    Missing,
    /// A key is there, but root (or the delegation) names another one.
    NotDelegated,
    /// The file is not an Ed25519 PKCS#8 key.
    Unreadable,
}

impl std::fmt::Display for StaleRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let problem = match self.problem {
            KeyProblem::Missing => "is not in the repository",
            KeyProblem::NotDelegated => "is not the key root or the delegation names for it",
            KeyProblem::Unreadable => "is not a readable Ed25519 key",
        };
        write!(
            f,
            "the {} role expires at {} and its key {} {problem}, so the hub cannot re-sign it: \
             put the role's key file back at {} from your backup; agents refuse the role once it expires",
            self.role,
            self.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.key,
            self.key
        )
    }
}

#[derive(Default)]
struct RefreshPlan {
    timestamp_due: bool,
    snapshot_due: bool,
    /// The key of top-level targets when it is due (and the key is usable).
    targets_key: Option<Signer>,
    /// Delegated roles due, with their current content and key.
    roles_due: Vec<(String, Targets, Signer)>,
    needs_operator: Vec<StaleRole>,
}

impl RefreshPlan {
    fn writes(&self) -> bool {
        self.timestamp_due || self.snapshot_due || self.targets_key.is_some() || !self.roles_due.is_empty()
    }
}

/// Whether metadata signed to live `ttl` has half of that or less left (or has expired):
/// re-signing then leaves clients a whole half-life of margin for a hub that was down.
fn in_last_half(expires: DateTime<Utc>, ttl: TimeDelta, now: DateTime<Utc>) -> bool {
    expires - now <= ttl / 2
}

/// URL path prefix under which the hub serves the repository (`metadata/`, `targets/`).
pub const HTTP_PREFIX: &str = "/v1/bundles";

/// A repository: its files in a [`RepoStore`] (a local directory unless the hub was given
/// an object store).
#[derive(Debug, Clone)]
pub struct Repo {
    /// The local directory of a [`DirStore`] repository; empty for any other store.
    dir: PathBuf,
    store: Arc<dyn RepoStore>,
    pub options: RepoOptions,
}

impl Repo {
    pub fn new(dir: impl Into<PathBuf>) -> Repo {
        Repo::with_options(dir, RepoOptions::default())
    }

    pub fn with_options(dir: impl Into<PathBuf>, options: RepoOptions) -> Repo {
        let dir = dir.into();
        Repo { store: Arc::new(DirStore::new(dir.clone())), dir, options }
    }

    /// A repository in any store (the hub's object store).
    pub fn with_store(store: Arc<dyn RepoStore>, options: RepoOptions) -> Repo {
        Repo { dir: PathBuf::new(), store, options }
    }

    /// Where the repository is, for messages and the CLI's output.
    pub fn location(&self) -> String {
        self.store.location()
    }

    pub fn store(&self) -> &Arc<dyn RepoStore> {
        &self.store
    }

    /// The local directory (tests and tools on a [`DirStore`] repository only).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `metadata/` of a local repository (tests and tools; the repository reads through its store).
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// `targets/` of a local repository (tests and tools; the repository reads through its store).
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// The store key of a file in `metadata/`.
    pub fn metadata_key(file: &str) -> String {
        format!("metadata/{file}")
    }

    /// The store key of a file in `targets/` (a `target_file` of a bundle or release).
    pub fn target_key(target_file: &str) -> String {
        format!("targets/{target_file}")
    }

    /// Reads a metadata file; `None` when absent.
    pub fn read_metadata(&self, file: &str) -> Result<Option<Vec<u8>>, RepoError> {
        self.store.get(&Repo::metadata_key(file))
    }

    fn write_metadata(&self, file: &str, bytes: &[u8]) -> Result<(), RepoError> {
        self.store.put(&Repo::metadata_key(file), bytes)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<T, RepoError> {
        let bytes = self
            .read_metadata(file)?
            .ok_or_else(|| RepoError::Invalid(format!("{}/metadata/{file} is missing", self.location())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Invalid(format!("{}/metadata/{file} is not valid metadata: {e}", self.location())))
    }

    /// The online key at `key` (under `keys/`), made and stored on first use.
    pub(crate) fn key_or_create(&self, key: &str) -> Result<Signer, RepoError> {
        if let Some(signer) = Signer::load_stored(self, key)? {
            return Ok(signer);
        }
        let (signer, pkcs8) = Signer::generate()?;
        if self.store.create(key, &pkcs8, true)? {
            return Ok(signer);
        }
        // Another writer made it first: use theirs.
        Signer::load_stored(self, key)?.ok_or_else(|| RepoError::Key(format!("{}/{key} vanished", self.location())))
    }

    /// Packs into a local temporary file; the caller stores it with `store_target`.
    pub(crate) fn staging_file(&self, extension: &str) -> Result<TempPath, RepoError> {
        let staging = self.store.staging_dir();
        fs::create_dir_all(&staging).map_err(io(format!("cannot create {}", staging.display())))?;
        Ok(TempPath(staging.join(format!("{}-{}.{extension}", std::process::id(), unique_suffix()))))
    }

    /// The key of the delegated role `name` (made and stored at `key_path` on first use), and
    /// top-level targets delegating the paths of `pattern` to it: re-signed, one version up,
    /// only when the delegation is new. Tenants and release channels both go through here.
    pub(crate) fn delegate(
        &self,
        current: &Signed<Targets>,
        name: &str,
        key_path: &str,
        pattern: String,
        now: DateTime<Utc>,
    ) -> Result<(Signer, Signed<Targets>), RepoError> {
        let key = self.key_or_create(key_path)?;
        let mut targets = current.clone();
        let delegations =
            targets.signed.delegations.get_or_insert_with(|| Delegations { keys: HashMap::new(), roles: Vec::new() });
        if delegations.roles.iter().any(|r| r.name == name) {
            return Ok((key, targets));
        }
        let pattern = PathPattern::new(pattern).map_err(|e| RepoError::Invalid(e.to_string()))?;
        delegations.keys.insert(key.keyid.clone(), key.key.clone());
        delegations.roles.push(DelegatedRole {
            name: name.to_owned(),
            keyids: vec![key.keyid.clone()],
            threshold: nz(1),
            paths: PathSet::Paths(vec![pattern]),
            terminating: true,
            targets: None,
        });
        delegations.roles.sort_by(|a, b| a.name.cmp(&b.name));
        let mut signed = targets.signed;
        signed.version = nz(signed.version.get() + 1);
        signed.expires = now + self.options.targets_ttl;
        Ok((key, sign(signed, &[&self.online_signer("targets")?])?))
    }

    fn tenant_key_path(&self, tenant: &str) -> String {
        format!("keys/tenants/{tenant}.pk8")
    }

    /// Whether `timestamp.json` exists; a store that cannot be read counts as not
    /// initialised here (see [`Repo::check_initialised`] for its error).
    pub fn is_initialised(&self) -> bool {
        self.store.modified(&Repo::metadata_key("timestamp.json")).is_ok_and(|m| m.is_some())
    }

    /// `NotInitialised` when there is no `timestamp.json`; the store's own error (an
    /// unreachable bucket, refused credentials) when it cannot tell, so an outage is never
    /// reported as "run keys init".
    pub(crate) fn check_initialised(&self) -> Result<(), RepoError> {
        match self.store.modified(&Repo::metadata_key("timestamp.json"))? {
            Some(_) => Ok(()),
            None => Err(RepoError::NotInitialised(self.location())),
        }
    }

    /// Creates root keys in `root_dir` (offline, for the operator to move away), online keys
    /// in the repository, and signs version 1 of every role.
    pub fn init(&self, root_dir: &Path, root_keys: usize, threshold: u64) -> Result<InitReport, RepoError> {
        if root_keys == 0 || threshold == 0 || threshold > root_keys as u64 {
            return Err(RepoError::Invalid(format!(
                "need 1 ≤ threshold ({threshold}) ≤ number of root keys ({root_keys})"
            )));
        }
        if self.store.modified(&Repo::metadata_key("root.json"))?.is_some() {
            return Err(RepoError::Exists(format!("{}/metadata/root.json", self.location())));
        }
        let _lock = self.lock()?;
        let mut roots = Vec::new();
        for i in 1..=root_keys {
            let (signer, pkcs8) = Signer::generate()?;
            write_key(&root_dir.join(format!("root-{i}.pk8")), &pkcs8)?;
            roots.push(signer);
        }
        let mut online = Vec::new();
        for role in ["timestamp", "snapshot", "targets"] {
            let (signer, pkcs8) = Signer::generate()?;
            let key = format!("keys/{role}.pk8");
            if !self.store.create(&key, &pkcs8, true)? {
                return Err(RepoError::Exists(format!("{}/{key}", self.location())));
            }
            online.push(signer);
        }
        let [timestamp_key, snapshot_key, targets_key] =
            <[Signer; 3]>::try_from(online).map_err(|_| RepoError::Invalid("expected three online keys".into()))?;
        let now = Utc::now();
        let root = self.root_metadata(1, &roots, threshold, &timestamp_key, &snapshot_key, &targets_key, now)?;
        let root_refs: Vec<&Signer> = roots.iter().collect();
        let root = sign(root, &root_refs)?;
        self.write_root(&root)?;

        let targets = Targets {
            spec_version: SPEC_VERSION.into(),
            version: nz(1),
            expires: now + self.options.targets_ttl,
            targets: HashMap::new(),
            delegations: Some(Delegations { keys: HashMap::new(), roles: Vec::new() }),
            _extra: HashMap::new(),
        };
        let targets = sign(targets, &[&targets_key])?;
        self.commit(&targets, true, &BTreeMap::new(), None, 1, 1, &snapshot_key, &timestamp_key, now)?;
        Ok(InitReport {
            root_keyids: roots.iter().map(Signer::keyid_hex).collect(),
            threshold,
            root_fingerprint: root_fingerprint(&root)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn root_metadata(
        &self,
        version: u64,
        roots: &[Signer],
        threshold: u64,
        timestamp: &Signer,
        snapshot: &Signer,
        targets: &Signer,
        now: DateTime<Utc>,
    ) -> Result<Root, RepoError> {
        let mut keys = HashMap::new();
        for signer in roots.iter().chain([timestamp, snapshot, targets]) {
            keys.insert(signer.keyid.clone(), signer.key.clone());
        }
        let role = |ids: Vec<Decoded<Hex>>, threshold: u64| RoleKeys {
            keyids: ids,
            threshold: nz(threshold),
            _extra: HashMap::new(),
        };
        let mut roles = HashMap::new();
        roles.insert(RoleType::Root, role(roots.iter().map(|s| s.keyid.clone()).collect(), threshold));
        roles.insert(RoleType::Timestamp, role(vec![timestamp.keyid.clone()], 1));
        roles.insert(RoleType::Snapshot, role(vec![snapshot.keyid.clone()], 1));
        roles.insert(RoleType::Targets, role(vec![targets.keyid.clone()], 1));
        Ok(Root {
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: true,
            version: nz(version),
            expires: now + self.options.root_ttl,
            keys,
            roles,
            _extra: HashMap::new(),
        })
    }

    fn write_root(&self, root: &Signed<Root>) -> Result<(), RepoError> {
        let bytes = to_json(root)?;
        self.write_metadata(&format!("{}.root.json", root.signed.version), &bytes)?;
        self.write_metadata("root.json", &bytes)
    }

    /// The current root.json bytes (what agents get at enrollment).
    pub fn root_json(&self) -> Result<Vec<u8>, RepoError> {
        self.read_metadata("root.json")?.ok_or_else(|| RepoError::NotInitialised(self.location()))
    }

    /// Reads the signed state the current `timestamp.json` points at.
    pub fn current(&self) -> Result<Current, RepoError> {
        self.check_initialised()?;
        let root: Signed<Root> = self.read_json("root.json")?;
        let timestamp: Signed<Timestamp> = self.read_json("timestamp.json")?;
        let snapshot_version = meta_version(&timestamp.signed.meta, "snapshot.json")?;
        let snapshot: Signed<Snapshot> = self.read_json(&format!("{snapshot_version}.snapshot.json"))?;
        let targets_version = meta_version(&snapshot.signed.meta, "targets.json")?;
        let targets: Signed<Targets> = self.read_json(&format!("{targets_version}.targets.json"))?;
        let mut tenants = BTreeMap::new();
        for role in targets.signed.delegations.iter().flat_map(|d| d.roles.iter()) {
            let version = meta_version(&snapshot.signed.meta, &format!("{}.json", role.name))?;
            let signed: Signed<Targets> = self.read_json(&format!("{version}.{}.json", role.name))?;
            tenants.insert(role.name.clone(), signed);
        }
        Ok(Current { root, timestamp, snapshot, targets, tenants })
    }

    pub(crate) fn online_signer(&self, role: &str) -> Result<Signer, RepoError> {
        Signer::load_stored(self, &format!("keys/{role}.pk8"))?
            .ok_or_else(|| RepoError::NotInitialised(self.location()))
    }

    /// Packs (if a directory), stores and signs one bundle version for a tenant.
    pub fn publish(&self, request: &PublishRequest) -> Result<Published, RepoError> {
        let bundle_ref = BundleRef::new(&request.tenant, &request.bundle, &request.version)?;
        let entrypoint = request.entrypoint.clone().unwrap_or_else(|| request.runtime.default_entrypoint().to_owned());
        validate_entrypoint(&entrypoint).map_err(RepoError::Invalid)?;
        if request.runtime == Runtime::Exec && request.cpu_arch.0 == CpuArch::ANY {
            return Err(RepoError::Invalid("an exec bundle must declare its --cpu-arch (e.g. x86_64)".into()));
        }
        let _lock = self.lock()?;
        let current = self.current()?;

        // Pack into a local temp file (under targets/ for a local repository, so storing it
        // is a rename on one file system), check and hash it, then store exactly those bytes.
        let cleanup = self.staging_file("zip")?;
        let temporary = cleanup.0.clone();
        if request.source.is_dir() {
            zip_dir(&request.source, &temporary)?;
        } else {
            fs::copy(&request.source, &temporary).map_err(io(format!("cannot read {}", request.source.display())))?;
        }
        // The agent's own checks and limits: signing an archive every agent refuses would
        // only move the failure from the operator's terminal to every run.
        crate::unpack::check_zip(&temporary, &crate::unpack::UnpackLimits::default()).map_err(RepoError::Unsafe)?;
        check_zip_has(&temporary, &entrypoint)?;
        let (length, sha256) = hash_file(&temporary)?;
        let target_name = bundle_ref.target_name();
        let target_file = bundle_ref.target_file(&sha256);

        let tenant = &bundle_ref.tenant;
        if let Some(existing) = current.tenants.get(tenant) {
            let name = TargetName::new(target_name.clone()).map_err(|e| RepoError::Invalid(e.to_string()))?;
            if let Some(target) = existing.signed.targets.get(&name) {
                if hex::encode(target.hashes.sha256.as_ref()) == sha256 {
                    let meta: BundleMeta =
                        serde_json::from_value(serde_json::Value::Object(target.custom.clone().into_iter().collect()))
                            .map_err(|e| {
                                RepoError::Invalid(format!("stored metadata of {target_name} is unreadable: {e}"))
                            })?;
                    return Ok(Published { target_name, target_file, length, meta, changed: false });
                }
                return Err(RepoError::VersionExists(target_name));
            }
        }

        self.store.put_file(&Repo::target_key(&target_file), &temporary)?;
        drop(cleanup);

        // A tenant's first bundle creates its key and its delegation in top-level targets.
        let now = Utc::now();
        let (tenant_key, targets) =
            self.delegate(&current.targets, tenant, &self.tenant_key_path(tenant), tenant_path_pattern(tenant), now)?;
        // `delegate` signs a new top-level targets only when it added the delegation.
        let targets_changed = targets.signed.version != current.targets.signed.version;

        let mut meta = BundleMeta {
            tenant: tenant.clone(),
            name: bundle_ref.bundle.clone(),
            version: bundle_ref.version.to_string(),
            runtime: request.runtime,
            cpu_arch: request.cpu_arch.clone(),
            entrypoint,
            edge_url: format!("{HTTP_PREFIX}/targets/{target_file}"),
            sha256: sha256.clone(),
            signature: String::new(),
        };
        meta.signature = BASE64.encode(tenant_key.sign_bytes(&manifest_signing_message(&meta)));
        let custom = match serde_json::to_value(&meta) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().collect(),
            _ => return Err(RepoError::Invalid("bundle metadata is not an object".into())),
        };
        let target = Target {
            length,
            hashes: Hashes { sha256: hex_decoded(&sha256)?, _extra: HashMap::new() },
            custom,
            _extra: HashMap::new(),
        };
        let mut role = match current.tenants.get(tenant) {
            Some(existing) => existing.signed.clone(),
            None => Targets {
                spec_version: SPEC_VERSION.into(),
                version: nz(1),
                expires: now,
                targets: HashMap::new(),
                delegations: None,
                _extra: HashMap::new(),
            },
        };
        role.targets
            .insert(TargetName::new(target_name.clone()).map_err(|e| RepoError::Invalid(e.to_string()))?, target);
        let next_version = current.tenants.get(tenant).map_or(1, |t| t.signed.version.get() + 1);
        role.version = nz(next_version);
        role.expires = now + self.options.targets_ttl;
        let role = sign(role, &[&tenant_key])?;

        let mut tenant_versions: BTreeMap<String, u64> =
            current.tenants.iter().map(|(name, signed)| (name.clone(), signed.signed.version.get())).collect();
        tenant_versions.insert(tenant.clone(), role.signed.version.get());
        self.commit(
            &targets,
            targets_changed,
            &tenant_versions,
            Some((tenant, &role)),
            current.snapshot.signed.version.get() + 1,
            current.timestamp.signed.version.get() + 1,
            &self.online_signer("snapshot")?,
            &self.online_signer("timestamp")?,
            now,
        )?;
        Ok(Published { target_name, target_file, length, meta, changed: true })
    }

    /// Writes changed role files, then a new snapshot, then `timestamp.json` last.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit(
        &self,
        targets: &Signed<Targets>,
        write_targets: bool,
        tenant_versions: &BTreeMap<String, u64>,
        tenant_role: Option<(&String, &Signed<Targets>)>,
        snapshot_version: u64,
        timestamp_version: u64,
        snapshot_key: &Signer,
        timestamp_key: &Signer,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        if let Some((name, role)) = tenant_role {
            self.write_metadata(&format!("{}.{name}.json", role.signed.version), &to_json(role)?)?;
        }
        let targets_file = format!("{}.targets.json", targets.signed.version);
        let targets_bytes = match self.read_metadata(&targets_file)? {
            Some(stored) if !write_targets => stored,
            _ => {
                let bytes = to_json(targets)?;
                self.write_metadata(&targets_file, &bytes)?;
                bytes
            }
        };
        let mut meta = HashMap::new();
        // No `length` for targets.json: tough 0.18 reuses that length as the size cap of
        // every delegated role file, which would refuse any tenant role larger than the
        // top-level targets. The hash still pins the exact bytes.
        let mut targets_meta = metafile(targets.signed.version.get(), Some(&targets_bytes))?;
        targets_meta.length = None;
        meta.insert("targets.json".to_owned(), targets_meta);
        for (name, version) in tenant_versions {
            meta.insert(format!("{name}.json"), metafile(*version, None)?);
        }
        let snapshot = Snapshot {
            spec_version: SPEC_VERSION.into(),
            version: nz(snapshot_version),
            expires: now + self.options.snapshot_ttl,
            meta,
            _extra: HashMap::new(),
        };
        let snapshot = sign(snapshot, &[snapshot_key])?;
        let snapshot_bytes = to_json(&snapshot)?;
        self.write_metadata(&format!("{snapshot_version}.snapshot.json"), &snapshot_bytes)?;
        self.write_timestamp(&snapshot_bytes, snapshot_version, timestamp_version, timestamp_key, now)
    }

    fn write_timestamp(
        &self,
        snapshot_bytes: &[u8],
        snapshot_version: u64,
        timestamp_version: u64,
        key: &Signer,
        now: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let mut meta = HashMap::new();
        meta.insert("snapshot.json".to_owned(), metafile(snapshot_version, Some(snapshot_bytes))?);
        let timestamp = Timestamp {
            spec_version: SPEC_VERSION.into(),
            version: nz(timestamp_version),
            expires: now + self.options.timestamp_ttl,
            meta,
            _extra: HashMap::new(),
        };
        // Last, and atomic per object in every store: a reader sees the previous timestamp
        // (whose snapshot and roles are all still there) or this one, never a part.
        self.write_metadata("timestamp.json", &to_json(&sign(timestamp, &[key])?)?)
    }

    /// Cheap enough to call before serving every `timestamp.json`: reads only the timestamp,
    /// and when it is in the last half of its life does what
    /// [`Repo::refresh_expiring_metadata`] does. Targets roles live far longer than a
    /// timestamp, so checking them whenever the timestamp is renewed (and on the hub's timer)
    /// is often enough, without reading every role on every request.
    pub fn refresh_online_metadata(&self) -> Result<Refreshed, RepoError> {
        let peek: Signed<Timestamp> = self.read_json("timestamp.json")?;
        if !in_last_half(peek.signed.expires, self.options.timestamp_ttl, Utc::now()) {
            return Ok(Refreshed::default());
        }
        self.refresh_expiring_metadata()
    }

    /// Re-signs, with the online keys, every role in the last half of its life: each targets
    /// role (top-level and every delegated one, tenants and release channels alike) keeping
    /// its content with its version one up, then a new snapshot naming those versions and a
    /// new timestamp; or only the timestamp (and snapshot) when no targets role is due. One
    /// commit under the lock, `timestamp.json` last. Nothing is written when nothing is due,
    /// so calling it often costs reads only. A due role whose key is not in the repository is
    /// left alone and listed in [`Refreshed::needs_operator`].
    pub fn refresh_expiring_metadata(&self) -> Result<Refreshed, RepoError> {
        // Decide without the lock first: the common answer is "nothing to do", and taking the
        // lock is a write on an object store.
        let plan = self.plan_refresh(&self.current()?, Utc::now())?;
        if !plan.writes() {
            return Ok(Refreshed { needs_operator: plan.needs_operator, ..Refreshed::default() });
        }
        let _lock = self.lock()?;
        let now = Utc::now();
        let current = self.current()?;
        let plan = self.plan_refresh(&current, now)?;
        if !plan.writes() {
            return Ok(Refreshed { needs_operator: plan.needs_operator, ..Refreshed::default() });
        }
        let mut done = Refreshed { needs_operator: plan.needs_operator, ..Refreshed::default() };
        let timestamp_key = self.online_signer("timestamp")?;
        let next_timestamp = current.timestamp.signed.version.get() + 1;
        let mut versions: BTreeMap<String, u64> =
            current.tenants.iter().map(|(name, signed)| (name.clone(), signed.signed.version.get())).collect();
        // Delegated roles first: new versioned files nobody reads until the timestamp names them.
        for (name, mut role, key) in plan.roles_due {
            role.version = nz(role.version.get() + 1);
            role.expires = now + self.options.targets_ttl;
            let signed = sign(role, &[&key])?;
            self.write_metadata(&format!("{}.{name}.json", signed.signed.version), &to_json(&signed)?)?;
            versions.insert(name.clone(), signed.signed.version.get());
            done.targets.push((name, signed.signed.version.get()));
        }
        let targets_resigned = plan.targets_key.is_some();
        let targets = match &plan.targets_key {
            Some(key) => {
                let mut top = current.targets.signed.clone();
                top.version = nz(top.version.get() + 1);
                top.expires = now + self.options.targets_ttl;
                let signed = sign(top, &[key])?;
                done.targets.insert(0, ("targets".to_owned(), signed.signed.version.get()));
                signed
            }
            None => current.targets.clone(),
        };
        if !done.targets.is_empty() || plan.snapshot_due {
            let snapshot_version = current.snapshot.signed.version.get() + 1;
            self.commit(
                &targets,
                targets_resigned,
                &versions,
                None,
                snapshot_version,
                next_timestamp,
                &self.online_signer("snapshot")?,
                &timestamp_key,
                now,
            )?;
            done.snapshot = Some(snapshot_version);
        } else {
            let version = current.snapshot.signed.version.get();
            let file = format!("{version}.snapshot.json");
            let bytes = self
                .read_metadata(&file)?
                .ok_or_else(|| RepoError::Invalid(format!("{}/metadata/{file} is missing", self.location())))?;
            self.write_timestamp(&bytes, version, next_timestamp, &timestamp_key, now)?;
        }
        done.timestamp = Some(next_timestamp);
        Ok(done)
    }

    /// Which roles are due, and the keys to re-sign them. A key is usable only if it is in
    /// the repository and is the one root (top-level targets) or the delegation (a tenant or
    /// channel role) names: signing with any other would publish metadata every agent refuses.
    fn plan_refresh(&self, current: &Current, now: DateTime<Utc>) -> Result<RefreshPlan, RepoError> {
        let ttl = self.options.targets_ttl;
        let mut plan = RefreshPlan {
            timestamp_due: in_last_half(current.timestamp.signed.expires, self.options.timestamp_ttl, now),
            snapshot_due: in_last_half(current.snapshot.signed.expires, self.options.snapshot_ttl, now),
            ..RefreshPlan::default()
        };
        if in_last_half(current.targets.signed.expires, ttl, now) {
            let key_path = "keys/targets.pk8".to_owned();
            let allowed = current.root.signed.roles.get(&RoleType::Targets).map(|r| r.keyids.clone());
            match self.usable_key(&key_path, allowed.as_deref().unwrap_or_default())? {
                Ok(key) => plan.targets_key = Some(key),
                Err(problem) => plan.needs_operator.push(StaleRole {
                    role: "targets".to_owned(),
                    expires: current.targets.signed.expires,
                    key: key_path,
                    problem,
                }),
            }
        }
        let delegations = current.targets.signed.delegations.iter().flat_map(|d| d.roles.iter());
        for delegation in delegations {
            let Some(role) = current.tenants.get(&delegation.name) else { continue };
            if !in_last_half(role.signed.expires, ttl, now) {
                continue;
            }
            let key_path = match crate::release::channel_of_role(&delegation.name) {
                Some(channel) => self.release_key_path(channel),
                None => self.tenant_key_path(&delegation.name),
            };
            match self.usable_key(&key_path, &delegation.keyids)? {
                Ok(key) => plan.roles_due.push((delegation.name.clone(), role.signed.clone(), key)),
                Err(problem) => plan.needs_operator.push(StaleRole {
                    role: delegation.name.clone(),
                    expires: role.signed.expires,
                    key: key_path,
                    problem,
                }),
            }
        }
        Ok(plan)
    }

    /// The stored key at `key_path` if it is one of `allowed`; otherwise what is wrong with it.
    fn usable_key(&self, key_path: &str, allowed: &[Decoded<Hex>]) -> Result<Result<Signer, KeyProblem>, RepoError> {
        // A damaged key file stops this one role, not the renewal of everything else.
        Ok(match Signer::load_stored(self, key_path) {
            Ok(None) => Err(KeyProblem::Missing),
            Ok(Some(key)) if allowed.contains(&key.keyid) => Ok(key),
            Ok(Some(_)) => Err(KeyProblem::NotDelegated),
            Err(RepoError::Key(_)) => Err(KeyProblem::Unreadable),
            Err(e) => return Err(e),
        })
    }

    /// Signs root version N+1. The old root's threshold of keys must be in `old_root_dir`;
    /// with `new_root_dir`, fresh keys are generated there (`keys` of them, `threshold`
    /// needed) and the new root is signed by them too. Without it the same keys re-sign
    /// (to extend the expiry). Online keys are kept.
    pub fn rotate_root(
        &self,
        old_root_dir: &Path,
        new_root_dir: Option<&Path>,
        keys: usize,
        threshold: u64,
    ) -> Result<InitReport, RepoError> {
        let _lock = self.lock()?;
        let current: Signed<Root> = self.read_json("root.json")?;
        let root_role = current
            .signed
            .roles
            .get(&RoleType::Root)
            .ok_or_else(|| RepoError::Invalid("root.json has no root role".into()))?;
        let old: Vec<Signer> =
            load_key_dir(old_root_dir)?.into_iter().filter(|s| root_role.keyids.contains(&s.keyid)).collect();
        if (old.len() as u64) < root_role.threshold.get() {
            return Err(RepoError::Key(format!(
                "{} holds {} of the current root keys; {} are needed",
                old_root_dir.display(),
                old.len(),
                root_role.threshold
            )));
        }
        let (new_keys, new_threshold) = match new_root_dir {
            Some(dir) => {
                if keys == 0 || threshold == 0 || threshold > keys as u64 {
                    return Err(RepoError::Invalid(format!("need 1 ≤ threshold ({threshold}) ≤ keys ({keys})")));
                }
                let mut fresh = Vec::new();
                for i in 1..=keys {
                    let (signer, pkcs8) = Signer::generate()?;
                    write_key(&dir.join(format!("root-{i}.pk8")), &pkcs8)?;
                    fresh.push(signer);
                }
                (fresh, threshold)
            }
            None => (Vec::new(), root_role.threshold.get()),
        };
        let mut next = current.signed.clone();
        next.version = nz(current.signed.version.get() + 1);
        next.expires = Utc::now() + self.options.root_ttl;
        if !new_keys.is_empty() {
            for id in &root_role.keyids {
                next.keys.remove(id);
            }
            for signer in &new_keys {
                next.keys.insert(signer.keyid.clone(), signer.key.clone());
            }
            next.roles.insert(
                RoleType::Root,
                RoleKeys {
                    keyids: new_keys.iter().map(|s| s.keyid.clone()).collect(),
                    threshold: nz(new_threshold),
                    _extra: HashMap::new(),
                },
            );
        }
        // The new root must verify under the old root (chain of trust) and under itself.
        let signers: Vec<&Signer> = old.iter().chain(new_keys.iter()).collect();
        let signed = sign(next, &signers)?;
        self.write_root(&signed)?;
        let ids = signed.signed.roles.get(&RoleType::Root).map(|r| r.keyids.clone()).unwrap_or_default();
        Ok(InitReport {
            root_keyids: ids.iter().map(|id| hex::encode(id.as_ref())).collect(),
            threshold: new_threshold,
            root_fingerprint: root_fingerprint(&signed)?,
        })
    }

    /// Every bundle target of a tenant, from the current signed metadata.
    pub fn tenant_targets(&self, tenant: &str) -> Result<Vec<(String, u64, BundleMeta)>, RepoError> {
        validate_slug("tenant", tenant)?;
        let current = self.current()?;
        let Some(role) = current.tenants.get(tenant) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, target) in &role.signed.targets {
            let meta: BundleMeta =
                serde_json::from_value(serde_json::Value::Object(target.custom.clone().into_iter().collect()))
                    .map_err(|e| RepoError::Invalid(format!("metadata of {} is unreadable: {e}", name.raw())))?;
            out.push((name.raw().to_owned(), target.length, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// One writer at a time, across processes and hub instances: `.lock` is created only if
    /// absent (`O_EXCL` on a local disk, a conditional put on an object store), so two
    /// writers never both hold it. A lock older than [`STALE_LOCK`] belonged to a crashed
    /// writer and is taken over.
    pub(crate) fn lock(&self) -> Result<LockGuard, RepoError> {
        let started = Instant::now();
        let owner = format!("{} {}", std::process::id(), unique_suffix());
        loop {
            if self.store.create(LOCK_KEY, owner.as_bytes(), false)? {
                return Ok(LockGuard(self.store.clone()));
            }
            let stale =
                self.store.modified(LOCK_KEY)?.and_then(|t| t.elapsed().ok()).is_some_and(|age| age > STALE_LOCK);
            if stale {
                self.store.delete(LOCK_KEY)?;
                continue;
            }
            if started.elapsed() > LOCK_WAIT {
                return Err(RepoError::Locked(format!("{}/{LOCK_KEY}", self.location())));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

const LOCK_KEY: &str = ".lock";

pub(crate) struct LockGuard(Arc<dyn RepoStore>);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.delete(LOCK_KEY);
    }
}

pub(crate) struct TempPath(pub(crate) PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

pub(crate) fn unique_suffix() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes);
    hex::encode(bytes)
}

pub(crate) fn nz(value: u64) -> NonZeroU64 {
    NonZeroU64::new(value).unwrap_or(NonZeroU64::MIN)
}

pub(crate) fn hex_decoded(hex_str: &str) -> Result<Decoded<Hex>, RepoError> {
    hex::decode(hex_str).map(Decoded::from).map_err(|e| RepoError::Invalid(format!("bad hex digest: {e}")))
}

pub(crate) fn metafile(version: u64, bytes: Option<&[u8]>) -> Result<Metafile, RepoError> {
    Ok(Metafile {
        length: bytes.map(|b| b.len() as u64),
        hashes: match bytes {
            Some(b) => Some(Hashes { sha256: hex_decoded(&crate::sha256_hex(b))?, _extra: HashMap::new() }),
            None => None,
        },
        version: nz(version),
        _extra: HashMap::new(),
    })
}

fn meta_version(meta: &HashMap<String, Metafile>, name: &str) -> Result<u64, RepoError> {
    meta.get(name).map(|m| m.version.get()).ok_or_else(|| RepoError::Invalid(format!("metadata does not list {name}")))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, RepoError> {
    serde_json::to_vec_pretty(value).map_err(|e| RepoError::Invalid(format!("cannot encode metadata: {e}")))
}

/// Length and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String), RepoError> {
    let mut file = fs::File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
    Ok((length, hex::encode(hasher.finalize())))
}

/// Zips a directory: regular files and directories only, sorted, executable bits kept.
pub fn zip_dir(source: &Path, out: &Path) -> Result<(), RepoError> {
    use zip::write::SimpleFileOptions;
    let file = fs::File::create(out).map_err(io(format!("cannot create {}", out.display())))?;
    let mut writer = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let mut stack = vec![PathBuf::new()];
    let mut files = Vec::new();
    while let Some(relative) = stack.pop() {
        let dir = source.join(&relative);
        let mut entries: Vec<_> =
            fs::read_dir(&dir).map_err(io(format!("cannot read {}", dir.display())))?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(RepoError::Invalid(format!("{} has a file name that is not UTF-8", dir.display())));
            };
            let path = relative.join(name);
            let kind = entry.file_type().map_err(io(format!("cannot stat {}", entry.path().display())))?;
            if kind.is_symlink() {
                return Err(RepoError::Invalid(format!(
                    "{} is a symlink; bundles carry regular files only",
                    entry.path().display()
                )));
            } else if kind.is_dir() {
                stack.push(path.clone());
                files.push((path, true));
            } else if kind.is_file() {
                files.push((path, false));
            } else {
                return Err(RepoError::Invalid(format!("{} is not a regular file", entry.path().display())));
            }
        }
    }
    files.sort();
    for (path, is_dir) in files {
        let name =
            path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
        let full = source.join(&path);
        #[cfg(unix)]
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(&full).map(|m| m.permissions().mode()).unwrap_or(0o644)
        };
        #[cfg(not(unix))]
        let mode = if is_dir { 0o755 } else { 0o644 };
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(if is_dir || mode & 0o111 != 0 { 0o755 } else { 0o644 })
            .large_file(fs::metadata(&full).map(|m| m.len() >= u32::MAX as u64).unwrap_or(false));
        let zip_err = |e: zip::result::ZipError| RepoError::Invalid(format!("cannot zip {name}: {e}"));
        if is_dir {
            writer.add_directory(format!("{name}/"), options).map_err(zip_err)?;
        } else {
            writer.start_file(name.clone(), options).map_err(zip_err)?;
            let mut input = fs::File::open(&full).map_err(io(format!("cannot read {}", full.display())))?;
            std::io::copy(&mut input, &mut writer).map_err(io(format!("cannot zip {}", full.display())))?;
        }
    }
    let mut inner = writer.finish().map_err(|e| RepoError::Invalid(format!("cannot finish the zip: {e}")))?;
    inner.flush().map_err(io(format!("cannot write {}", out.display())))
}

fn check_zip_has(zip_path: &Path, entrypoint: &str) -> Result<(), RepoError> {
    let file = fs::File::open(zip_path).map_err(io(format!("cannot open {}", zip_path.display())))?;
    let archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| RepoError::Invalid(format!("the bundle is not a zip archive: {e}")))?;
    if archive.index_for_name(entrypoint).is_none() {
        return Err(RepoError::Invalid(format!("the bundle has no entrypoint {entrypoint:?}")));
    }
    Ok(())
}

impl Repo {
    /// Re-signs top-level targets and every tenant role after `change` edited them, with
    /// new versions, then snapshot and timestamp. For tests that need metadata a correct hub
    /// never writes (a tenant role listing another tenant's path, a too-wide delegation).
    #[doc(hidden)]
    pub fn rewrite_for_tests(
        &self,
        change: impl FnOnce(&mut Targets, &mut BTreeMap<String, Targets>),
    ) -> Result<(), RepoError> {
        let _lock = self.lock()?;
        let current = self.current()?;
        let now = Utc::now();
        let mut top = current.targets.signed.clone();
        let mut tenants: BTreeMap<String, Targets> =
            current.tenants.iter().map(|(k, v)| (k.clone(), v.signed.clone())).collect();
        change(&mut top, &mut tenants);
        top.version = nz(current.targets.signed.version.get() + 1);
        let top = sign(top, &[&self.online_signer("targets")?])?;
        let mut versions = BTreeMap::new();
        for (name, mut role) in tenants {
            let old = current.tenants.get(&name).map_or(0, |r| r.signed.version.get());
            role.version = nz(old + 1);
            let key_path = match crate::release::channel_of_role(&name) {
                Some(channel) => self.release_key_path(channel),
                None => self.tenant_key_path(&name),
            };
            let key = self.key_or_create(&key_path)?;
            let signed = sign(role, &[&key])?;
            self.write_metadata(&format!("{}.{name}.json", signed.signed.version), &to_json(&signed)?)?;
            versions.insert(name, signed.signed.version.get());
        }
        self.commit(
            &top,
            true,
            &versions,
            None,
            current.snapshot.signed.version.get() + 1,
            current.timestamp.signed.version.get() + 1,
            &self.online_signer("snapshot")?,
            &self.online_signer("timestamp")?,
            now,
        )
    }

    /// The tenant's online key (tests use it to add a delegation by hand).
    #[doc(hidden)]
    pub fn tenant_signer_for_tests(&self, tenant: &str) -> Result<Signer, RepoError> {
        let key = self.tenant_key_path(tenant);
        Signer::load_stored(self, &key)?.ok_or_else(|| RepoError::Key(format!("{}/{key} is missing", self.location())))
    }
}
