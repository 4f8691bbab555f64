//! Replacing a small file whole, so a reader never sees half of it.
//!
//! One way for every file the agent rewrites (state, pause, settings, screenshots, the data
//! meter): a temporary in the same directory, then a rename over the file. The temporary's
//! name is unique per write (tempfile's), not per process: one process runs several agents
//! (the tray's accounts) and several tasks that rewrite the same file at once, and a name
//! they shared would let one rename the other's half-written temporary away. The temporary
//! is created readable by its owner only, so a private file is never briefly public.

use crate::AgentError;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary and a rename. For files rewritten often
/// (state, pause, meter): a crash may lose the last write, never half of it.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    write(path, bytes, false)
}

/// As [`replace`], and on disk before it returns: for what the person decided (settings,
/// consent), which a crash right after must not undo.
pub fn replace_synced(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    write(path, bytes, true)
}

fn write(path: &Path, bytes: &[u8], sync: bool) -> Result<(), AgentError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(format!("cannot create {}", dir.display()), e))?;
    let mut temporary = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| AgentError::io(format!("cannot create a temporary file in {}", dir.display()), e))?;
    temporary
        .write_all(bytes)
        .and_then(|()| temporary.flush())
        .and_then(|()| if sync { temporary.as_file().sync_all() } else { Ok(()) })
        .map_err(|e| AgentError::io(format!("cannot write {}", temporary.path().display()), e))?;
    temporary.persist(path).map_err(|e| AgentError::io(format!("cannot replace {}", path.display()), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_writers_of_one_file_at_once_each_replace_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::thread::scope(|scope| {
            for writer in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        replace(path, &[writer; 4096]).unwrap();
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]), "two writers' bytes mixed in one file");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("state.json")], "temporaries left behind");
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_its_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        replace(&path, b"{}").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_path_whose_folder_cannot_be_made_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let err = replace(&blocker.join("state.json"), b"{}").unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err}");
    }
}
