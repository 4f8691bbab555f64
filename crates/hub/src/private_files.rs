//! Owns the file modes of what the hub keeps on disk that another local user must not
//! read: the SQLite database (it holds the JWT signing secret and the key hashes), its WAL
//! and shared-memory files, the bundle repository's online keys and the run reports. Files
//! are `0600` and folders `0700`; ones found looser at start are tightened with a log line.
//! It must never loosen a mode, and never change a folder the hub does not own or that is
//! shared by design (a sticky folder such as `/tmp`, the home folder, `/`).

use std::path::Path;
use tracing::warn;

/// Creates `dir` and any missing parents, each new one `0700`.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `file` empty with mode `0600` unless it exists, so the database's first bytes
/// are never readable by others (SQLite would create it `0644` under the usual umask).
pub fn create_private_file(file: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Tightens the SQLite database `file`, its `-wal`/`-shm`/`-journal` companions and its
/// folder. SQLite gives the companions the database file's mode, so fixing the database
/// fixes them for the future too.
pub fn secure_database(file: &Path) {
    tighten_file(file, "database");
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = file.as_os_str().to_owned();
        companion.push(suffix);
        tighten_file(Path::new(&companion), "database");
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        tighten_dir(dir, file, "database");
    }
}

/// Tightens the bundle directory: the folder itself, the online keys (`keys/`, `*.pk8`)
/// and the run reports (`runs/`). Metadata and targets are served to agents by the hub
/// itself, so nobody else needs to read them from the disk either.
pub fn secure_bundle_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    tighten_owned_dir(dir, "bundle");
    for sub in ["keys", "keys/tenants", "runs"] {
        let folder = dir.join(sub);
        if !folder.is_dir() {
            continue;
        }
        tighten_owned_dir(&folder, "bundle");
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                tighten_file(&entry.path(), "bundle");
            }
        }
    }
}

/// `0600` at most; a missing file is fine (it is created private).
pub fn tighten_file(path: &Path, what: &str) {
    tighten(path, 0o600, what);
}

/// `0700` for a folder the hub made its own (the bundle folder and below).
fn tighten_owned_dir(dir: &Path, what: &str) {
    tighten(dir, 0o700, what);
}

/// `0700` for the database's folder, but only when `owner_of` (the database file) has the
/// same owner and the folder is not shared by design: tightening `/tmp` or someone's home
/// folder would break other programs, so those get a warning instead.
fn tighten_dir(dir: &Path, owner_of: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let (Ok(folder), Ok(file)) = (std::fs::metadata(dir), std::fs::metadata(owner_of)) else { return };
        let shared = folder.mode() & 0o1000 != 0
            || folder.uid() != file.uid()
            || dir.parent().is_none()
            || dirs::home_dir().is_some_and(|home| same_file(&home, dir));
        if shared {
            if folder.mode() & 0o077 != 0 {
                warn!(
                    path = %dir.display(),
                    mode = format!("{:o}", folder.mode() & 0o7777),
                    "the {what} sits in a folder other users can open; move it into a folder of its own \
                     (the hub then keeps that folder 0700)"
                );
            }
            return;
        }
    }
    tighten(dir, 0o700, what);
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(unix)]
fn tighten(path: &Path, allowed: u32, what: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    // symlink_metadata: a link planted in the folder must not make the hub chmod its target.
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    let tightened = mode & allowed;
    if tightened == mode {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened)) {
        Ok(()) => warn!(
            path = %path.display(),
            from = format!("{mode:o}"),
            to = format!("{tightened:o}"),
            "{what} file permissions were too open; tightened"
        ),
        Err(e) => warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            error = %e,
            "{what} file permissions are too open and cannot be tightened; run `chmod {allowed:o}` on it"
        ),
    }
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _allowed: u32, _what: &str) {
    // Windows: the data directory under the user's profile is private by its ACL.
}
