//! The hub's file storage: the bundle repository (TUF metadata, targets, online keys), the
//! release repository (inside it), run reports and failed-update reports, all behind one
//! `object_store` seam so several hub instances on one PostgreSQL share them.
//!
//! Two stores: the local file system under the bundle directory (the default, the layout
//! hubs always had, so an existing hub keeps its repository), or an S3-compatible bucket
//! (`--storage s3://bucket/prefix`, credentials from the standard `AWS_*` variables). Keys
//! are `/`-separated paths relative to the bundle directory or the bucket prefix:
//! `repo/metadata/…`, `repo/targets/…`, `repo/keys/…`, `runs/…`, `release-failures/…`.
//!
//! Atomicity: a `put` replaces a whole object at once in both stores (S3 makes a PUT visible
//! only when complete; `LocalFileSystem` writes a staging file and renames it over the
//! target), so a reader never sees half of `timestamp.json`. `create` is a conditional put
//! (`If-None-Match: *` on S3, a hard link on a local disk): it never overwrites, which the
//! repository lock, online keys and run reports (recorded once) rely on.
//!
//! Caching: none. Every request reads the store, so what one instance writes is what every
//! instance serves on the next request; metadata files are small and targets are streamed.
//!
//! This module must never print the S3 secret key (it lives in a [`Secret`]) and never send
//! credentials over plain HTTP to anything but a loopback address.

use crate::secret::Secret;
use bytes::Bytes;
use edge_bundle::repo::RepoError;
use edge_bundle::store::RepoStore;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Where the hub keeps its files, as given by `--storage` / `EDGE_HUB_STORAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// The local file system under this directory (the bundle directory).
    Local(PathBuf),
    S3(S3Config),
}

/// An S3-compatible bucket. `Debug` shows the access key id, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `AWS_ENDPOINT_URL`; `None`: AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    Config(String),
    #[error("the S3 store at {location} refused the credentials for {key}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and that they may read and write the bucket ({detail})")]
    Denied { location: String, key: String, detail: String },
    #[error("the store at {location} failed on {key}: {detail} (check that the store is reachable at AWS_ENDPOINT_URL and the bucket exists)")]
    Store { location: String, key: String, detail: String },
}

impl From<BlobError> for RepoError {
    fn from(e: BlobError) -> RepoError {
        RepoError::Store(e.to_string())
    }
}

impl StorageConfig {
    /// `storage` (`--storage`): empty or absent for the local directory `bundle_dir`, or
    /// `s3://bucket[/prefix]` with the credentials read from the environment.
    pub fn parse(storage: Option<&str>, bundle_dir: PathBuf) -> Result<StorageConfig, BlobError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        StorageConfig::parse_with(storage, bundle_dir, &env)
    }

    fn parse_with(
        storage: Option<&str>,
        bundle_dir: PathBuf,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StorageConfig, BlobError> {
        let Some(storage) = storage.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(StorageConfig::Local(bundle_dir));
        };
        if let Some(path) = storage.strip_prefix("file://") {
            return Ok(StorageConfig::Local(PathBuf::from(path)));
        }
        let Some(rest) = storage.strip_prefix("s3://") else {
            return Err(BlobError::Config(format!(
                "--storage {storage:?} is not a storage URL: use s3://BUCKET/PREFIX for an S3-compatible store, or \
                 leave it out for the local bundle directory"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(BlobError::Config(format!(
                "--storage: {bucket:?} is not an S3 bucket name (3–63 characters of a-z 0-9 . -)"
            )));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
            return Err(BlobError::Config(format!("--storage: the prefix {prefix:?} has an empty, . or .. part")));
        }
        let missing = |name: &str| {
            BlobError::Config(format!(
                "--storage {storage} needs {name} in the environment (the S3 credentials are read from \
                 AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for a store other than AWS, \
                 AWS_ENDPOINT_URL)"
            ))
        };
        let access_key_id = env("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
        let secret_access_key =
            Secret::new(env("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?);
        let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".to_owned());
        let endpoint = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT_URL_S3"));
        if let Some(endpoint) = &endpoint {
            let url = url::Url::parse(endpoint)
                .map_err(|e| BlobError::Config(format!("AWS_ENDPOINT_URL {endpoint:?} is not a URL: {e}")))?;
            match url.scheme() {
                "https" => {}
                "http" if is_loopback(&url) => {}
                "http" => {
                    return Err(BlobError::Config(format!(
                        "AWS_ENDPOINT_URL {endpoint} is plain HTTP to a host other than this machine: the S3 \
                         credentials and every bundle would cross the network unencrypted; use https://"
                    )))
                }
                other => {
                    return Err(BlobError::Config(format!(
                    "AWS_ENDPOINT_URL {endpoint} has scheme {other}; use https:// (or http:// to a loopback address)"
                )))
                }
            }
        }
        Ok(StorageConfig::S3(S3Config {
            bucket: bucket.to_owned(),
            prefix,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
        }))
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// One object as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Relative to the hub's storage root, like every key here.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A ranged read: the bytes of `start..=end` of an object of `length` bytes, streamed.
pub struct Ranged {
    pub length: u64,
    pub start: u64,
    pub end: u64,
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// The hub's store. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix` or the local directory, for messages.
    location: String,
    /// Key prefix inside the bucket (empty for a local directory, whose root is the prefix).
    prefix: String,
    /// The local directory, to keep private keys private on disk.
    local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("location", &self.location).finish_non_exhaustive()
    }
}

impl Blobs {
    pub fn open(config: &StorageConfig) -> Result<Blobs, BlobError> {
        match config {
            StorageConfig::Local(dir) => {
                // New folders private: the bundle directory holds online keys and run reports.
                crate::private_files::create_private_dir(dir).map_err(|e| {
                    BlobError::Config(format!(
                        "cannot create the bundle directory {}: {e} (choose another with --bundle-dir)",
                        dir.display()
                    ))
                })?;
                let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
                    BlobError::Config(format!("cannot use {} as the hub's storage: {e}", dir.display()))
                })?;
                Ok(Blobs {
                    store: Arc::new(store),
                    location: dir.display().to_string(),
                    prefix: String::new(),
                    local_root: Some(dir.clone()),
                })
            }
            StorageConfig::S3(s3) => {
                // reqwest is built without a bundled crypto provider (the workspace keeps to
                // ring); an earlier install by another part of the process is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(s3.secret_access_key.expose());
                let mut location = format!("s3://{}/{}", s3.bucket, s3.prefix);
                if let Some(endpoint) = &s3.endpoint {
                    // Path-style requests: S3-compatible servers rarely have per-bucket DNS.
                    // Plain HTTP only where `parse` allowed it (a loopback endpoint).
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(endpoint.starts_with("http://"));
                    location = format!("{location} at {endpoint}");
                }
                let store = builder
                    .build()
                    .map_err(|e| BlobError::Config(format!("cannot configure the S3 store {location}: {e}")))?;
                Ok(Blobs { store: Arc::new(store), location, prefix: s3.prefix.clone(), local_root: None })
            }
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, key: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(key)
        } else {
            StorePath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn relative(&self, path: &StorePath) -> String {
        let full = path.as_ref();
        if self.prefix.is_empty() {
            full.to_owned()
        } else {
            full.strip_prefix(&self.prefix).map(|k| k.trim_start_matches('/')).unwrap_or(full).to_owned()
        }
    }

    fn failure(&self, key: &str, error: object_store::Error) -> BlobError {
        let detail = error.to_string();
        match error {
            object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => {
                BlobError::Denied { location: self.location.clone(), key: key.to_owned(), detail }
            }
            // Some S3 errors (a LIST refused, a server's own codes) reach object_store as a
            // generic error carrying the status and S3 code only in its text.
            _ if detail.contains("403")
                || detail.contains("SignatureDoesNotMatch")
                || detail.contains("InvalidAccessKeyId") =>
            {
                BlobError::Denied { location: self.location.clone(), key: key.to_owned(), detail }
            }
            _ => BlobError::Store { location: self.location.clone(), key: key.to_owned(), detail },
        }
    }

    /// The whole object; `None` when absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        match self.store.get(&self.path(key)).await {
            Ok(result) => result.bytes().await.map(Some).map_err(|e| self.failure(key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    /// Size and modification time; `None` when absent.
    pub async fn head(&self, key: &str) -> Result<Option<(u64, SystemTime)>, BlobError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some((meta.size, meta.last_modified.into()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    /// `start..=end` of the object (the whole of it for `None`); `Ok(None)` when absent.
    /// A range past the end is an error the caller turns into 416 (it checks with `head`).
    pub async fn get_range(&self, key: &str, range: Option<(u64, u64)>) -> Result<Option<Ranged>, BlobError> {
        let options =
            GetOptions { range: range.map(|(start, end)| GetRange::Bounded(start..end + 1)), ..GetOptions::default() };
        match self.store.get_opts(&self.path(key), options).await {
            Ok(result) => {
                let length = result.meta.size;
                let (start, end) = (result.range.start, result.range.end.saturating_sub(1));
                let body = result.into_stream().map_err(std::io::Error::other).boxed();
                Ok(Some(Ranged { length, start, end, body }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    /// Replaces the object at once (see the module doc for why that is atomic).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.store.put(&self.path(key), PutPayload::from(bytes)).await.map(|_| ()).map_err(|e| self.failure(key, e))
    }

    /// Stores the object only if none is there: `Ok(false)` when one is.
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, BlobError> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&self.path(key), PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    /// Removes the object; absent is fine.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failure(key, e)),
        }
    }

    /// Every object under `prefix/` (recursively).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, BlobError> {
        let path = self.path(prefix.trim_end_matches('/'));
        let mut listing = self.store.list(Some(&path));
        let mut out = Vec::new();
        while let Some(item) = listing.next().await {
            match item {
                Ok(meta) => out.push(Listed {
                    key: self.relative(&meta.location),
                    size: meta.size,
                    modified: meta.last_modified.into(),
                }),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.failure(prefix, e)),
            }
        }
        Ok(out)
    }

    /// Makes a private key readable by the hub's user only (local disk; the bucket's
    /// policy governs an S3 store).
    fn make_private(&self, key: &str) {
        #[cfg(unix)]
        if let Some(root) = &self.local_root {
            use std::os::unix::fs::PermissionsExt;
            let path = root.join(key);
            if let Some(parent) = path.parent() {
                let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
            }
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }

    /// The repository under `repo/`, for `edge_bundle::repo::Repo`, whose calls block: they
    /// must come from a blocking task (`spawn_blocking`), never from an async task itself.
    pub fn repo_store(&self) -> Arc<dyn RepoStore> {
        Arc::new(BlobRepoStore { blobs: self.clone(), handle: tokio::runtime::Handle::current() })
    }
}

/// [`RepoStore`] over [`Blobs`], under `repo/`.
#[derive(Debug)]
struct BlobRepoStore {
    blobs: Blobs,
    handle: tokio::runtime::Handle,
}

impl BlobRepoStore {
    fn key(key: &str) -> String {
        format!("repo/{key}")
    }
}

impl RepoStore for BlobRepoStore {
    fn location(&self) -> String {
        match &self.blobs.local_root {
            Some(dir) => dir.join("repo").display().to_string(),
            None => format!("{}/repo", self.blobs.location.trim_end_matches('/')),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        Ok(self.handle.block_on(self.blobs.get(&Self::key(key)))?.map(|b| b.to_vec()))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), RepoError> {
        Ok(self.handle.block_on(self.blobs.put(&Self::key(key), Bytes::copy_from_slice(bytes)))?)
    }

    fn create(&self, key: &str, bytes: &[u8], private: bool) -> Result<bool, RepoError> {
        let key = Self::key(key);
        let created = self.handle.block_on(self.blobs.create(&key, Bytes::copy_from_slice(bytes)))?;
        if created && private {
            self.blobs.make_private(&key);
        }
        Ok(created)
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<(), RepoError> {
        // Bundles and agent binaries are megabytes: one PUT of the whole file.
        let bytes = std::fs::read(path)
            .map_err(|e| RepoError::Io { context: format!("cannot read {}", path.display()), source: e })?;
        self.put(key, &bytes)
    }

    fn delete(&self, key: &str) -> Result<(), RepoError> {
        Ok(self.handle.block_on(self.blobs.delete(&Self::key(key)))?)
    }

    fn modified(&self, key: &str) -> Result<Option<SystemTime>, RepoError> {
        Ok(self.handle.block_on(self.blobs.head(&Self::key(key)))?.map(|(_, modified)| modified))
    }

    fn staging_dir(&self) -> PathBuf {
        match &self.blobs.local_root {
            // On one file system with the targets, like a local repository's staging.
            Some(dir) => dir.join("repo").join("targets").join(".staging"),
            None => std::env::temp_dir().join("edge-hub-staging"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn no_storage_is_the_local_bundle_directory() {
        let config = StorageConfig::parse_with(None, PathBuf::from("/var/lib/hub/bundles"), &env_of(&[])).unwrap();
        assert_eq!(config, StorageConfig::Local(PathBuf::from("/var/lib/hub/bundles")));
        let config = StorageConfig::parse_with(Some(""), PathBuf::from("/b"), &env_of(&[])).unwrap();
        assert_eq!(config, StorageConfig::Local(PathBuf::from("/b")));
    }

    #[test]
    fn s3_storage_reads_the_credentials_and_never_prints_the_secret() {
        const VARS: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "edge"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret-value"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ];
        let config =
            StorageConfig::parse_with(Some("s3://edge-hub/prod/eu/"), PathBuf::from("/b"), &env_of(VARS)).unwrap();
        let StorageConfig::S3(s3) = &config else { panic!("{config:?}") };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str(), s3.region.as_str()), ("edge-hub", "prod/eu", "us-east-1"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret-value") && shown.contains("edge"), "{shown}");
    }

    #[test]
    fn bad_storage_settings_are_refused_with_what_to_do() {
        let refuse = |storage: &str, vars: &'static [(&'static str, &'static str)]| {
            StorageConfig::parse_with(Some(storage), PathBuf::from("/b"), &env_of(vars)).unwrap_err().to_string()
        };
        const CREDS: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")];
        assert!(refuse("gs://bucket", CREDS).contains("s3://BUCKET/PREFIX"));
        assert!(refuse("s3://Bad_Bucket", CREDS).contains("bucket name"));
        assert!(refuse("s3://bucket/../x", CREDS).contains(".."));
        assert!(refuse("s3://bucket", &[("AWS_ACCESS_KEY_ID", "a")]).contains("AWS_SECRET_ACCESS_KEY"));
        const REMOTE_HTTP: &[(&str, &str)] =
            &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b"), ("AWS_ENDPOINT_URL", "http://10.0.0.5:9000")];
        assert!(refuse("s3://bucket", REMOTE_HTTP).contains("unencrypted"));
        const LOCAL_HTTP: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_ENDPOINT_URL", "http://localhost:9000"),
        ];
        assert!(StorageConfig::parse_with(Some("s3://bucket"), PathBuf::from("/b"), &env_of(LOCAL_HTTP)).is_ok());
    }
}
