//! Where a repository's files live: the one seam [`crate::repo::Repo`] reads and writes
//! through, so the same signing code runs on a local directory (this module's
//! [`DirStore`], the default and what tests and tools use) or on a shared object store (the
//! hub's `blobs` module, over the `object_store` crate, for several hub instances).
//!
//! Keys are `/`-separated paths relative to the repository (`metadata/timestamp.json`,
//! `targets/<tenant>/…`, `keys/targets.pk8`), exactly the directory layout of a local
//! repository, so a directory copied into a bucket is the same repository.
//!
//! Every implementation must make [`RepoStore::put`] atomic per key (a reader sees the old
//! bytes or the new ones, never a part), because TUF metadata is rewritten in place
//! (`timestamp.json`) and agents read it at any moment; and [`RepoStore::create`] must fail
//! with `Ok(false)` rather than overwrite, because the writers' lock and the online keys
//! rely on it.

use crate::repo::{io, RepoError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The storage a repository lives in. Calls block: the hub calls them from blocking tasks.
pub trait RepoStore: Send + Sync + std::fmt::Debug {
    /// Where this is, for messages ("/var/lib/edge-hub/bundles/repo", "s3://bucket/prefix/repo").
    fn location(&self) -> String;
    /// The bytes under `key`; `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError>;
    /// Stores `bytes` under `key`, replacing what was there, atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), RepoError>;
    /// Stores `bytes` under `key` only if nothing is there: `Ok(false)` when something is.
    /// Private keys go through here (readable by the hub's user only on a local disk).
    fn create(&self, key: &str, bytes: &[u8], private: bool) -> Result<bool, RepoError>;
    /// Stores the local file `path` under `key` (a bundle or release binary), atomically.
    fn put_file(&self, key: &str, path: &Path) -> Result<(), RepoError>;
    /// Removes `key`; no error when it is absent.
    fn delete(&self, key: &str) -> Result<(), RepoError>;
    /// When `key` was last written; `None` when it is absent.
    fn modified(&self, key: &str) -> Result<Option<SystemTime>, RepoError>;
    /// A local directory for packing an archive before [`RepoStore::put_file`].
    fn staging_dir(&self) -> PathBuf;
}

/// A repository in a local directory: the layout documented in [`crate::repo`].
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }
}

impl RepoStore for DirStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io { context: format!("cannot read {}", path.display()), source: e }),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), RepoError> {
        crate::repo::write_atomic(&self.path(key), bytes)
    }

    fn create(&self, key: &str, bytes: &[u8], private: bool) -> Result<bool, RepoError> {
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            if private {
                crate::repo::create_private_dir(parent)?;
            } else {
                std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = match options.open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(RepoError::Io { context: format!("cannot create {}", path.display()), source: e }),
        };
        file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io(format!("cannot write {}", path.display())))?;
        Ok(true)
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<(), RepoError> {
        let target = self.path(key);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
        }
        // The staging directory is inside the repository: one file system, so a rename.
        std::fs::rename(path, &target).map_err(io(format!("cannot store {}", target.display())))
    }

    fn delete(&self, key: &str) -> Result<(), RepoError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RepoError::Io { context: format!("cannot remove {}", path.display()), source: e }),
        }
    }

    fn modified(&self, key: &str) -> Result<Option<SystemTime>, RepoError> {
        let path = self.path(key);
        match std::fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(time) => Ok(Some(time)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io { context: format!("cannot read {}", path.display()), source: e }),
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.dir.join("targets").join(".staging")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Repo;
    use std::sync::Arc;

    /// A store that cannot be reached, like a bucket behind a network outage.
    #[derive(Debug)]
    struct Unreachable;

    impl RepoStore for Unreachable {
        fn location(&self) -> String {
            "s3://bucket/prefix/repo".into()
        }
        fn get(&self, _: &str) -> Result<Option<Vec<u8>>, RepoError> {
            Err(RepoError::Store("the store does not answer".into()))
        }
        fn put(&self, _: &str, _: &[u8]) -> Result<(), RepoError> {
            Err(RepoError::Store("the store does not answer".into()))
        }
        fn create(&self, _: &str, _: &[u8], _: bool) -> Result<bool, RepoError> {
            Err(RepoError::Store("the store does not answer".into()))
        }
        fn put_file(&self, _: &str, _: &Path) -> Result<(), RepoError> {
            Err(RepoError::Store("the store does not answer".into()))
        }
        fn delete(&self, _: &str) -> Result<(), RepoError> {
            Err(RepoError::Store("the store does not answer".into()))
        }
        fn modified(&self, _: &str) -> Result<Option<SystemTime>, RepoError> {
            Err(RepoError::Store("the store does not answer".into()))
        }
        fn staging_dir(&self) -> PathBuf {
            std::env::temp_dir()
        }
    }

    #[test]
    fn an_unreachable_store_is_reported_as_such_never_as_an_uninitialised_repository() {
        let repo = Repo::with_store(Arc::new(Unreachable), Default::default());
        assert!(!repo.is_initialised());
        for error in [repo.current().err(), repo.tenant_view("acme", "timestamp.json").err()] {
            assert!(matches!(error, Some(RepoError::Store(_))), "{error:?}");
        }
        assert!(matches!(repo.root_json(), Err(RepoError::Store(_))));
    }

    #[test]
    fn a_directory_store_creates_once_and_keeps_private_files_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        assert!(store.create("keys/a.pk8", b"one", true).unwrap());
        assert!(!store.create("keys/a.pk8", b"two", true).unwrap());
        assert_eq!(store.get("keys/a.pk8").unwrap().as_deref(), Some(&b"one"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys/a.pk8")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        store.put("metadata/timestamp.json", b"x").unwrap();
        assert!(store.modified("metadata/timestamp.json").unwrap().is_some());
        store.delete("metadata/timestamp.json").unwrap();
        store.delete("metadata/timestamp.json").unwrap();
        assert!(store.get("metadata/timestamp.json").unwrap().is_none());
    }
}
