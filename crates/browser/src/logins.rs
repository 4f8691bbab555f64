//! Which sites need the person to log in again: one small file per site under
//! `<dir>/login-required/`, written when a job meets the site's logged-out marker and removed
//! when a login or a job on the site succeeds.
//!
//! It lives on disk, not in the runtime's memory, because more than one process asks: the
//! running agent learns that a login is needed, `edge-agent browser login` (another process)
//! fixes it, and `edge-agent status` and `edge-agent browser status` (two more) report it; all
//! of them read the same files, so they cannot disagree, and a restart forgets nothing. One
//! file per site makes each change a single atomic create or remove, so two processes
//! touching different sites never undo each other. It must never hold anything about the
//! session itself (no cookie, no key): a site's name and a time only.

use crate::checkpoint::write_atomically;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    site: String,
    /// When a job first met the logged-out marker (Unix ms).
    since_ms: i64,
}

/// The login-required list of one profile.
#[derive(Debug, Clone)]
pub struct LoginsNeeded {
    dir: PathBuf,
}

impl LoginsNeeded {
    /// `dir` is the browser dir (`<data dir>/browser`).
    pub fn new(dir: &Path) -> LoginsNeeded {
        LoginsNeeded { dir: dir.join("login-required") }
    }

    fn path(&self, site: &str) -> PathBuf {
        // Adapter names are letters, digits, `-`, `_`, `.`; the suffix keeps `..` a plain name.
        self.dir.join(format!("{site}.json"))
    }

    /// Records that `site` needs a login (keeps the first time when already recorded).
    pub fn mark(&self, site: &str, now_ms: i64) {
        if self.path(site).is_file() {
            return;
        }
        let entry = Entry { site: site.to_owned(), since_ms: now_ms };
        let written = serde_json::to_vec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomically(&self.path(site), &bytes));
        if let Err(e) = written {
            tracing::warn!(site, error = %e, "cannot record that the site needs a login");
        }
    }

    /// `site` is logged in again.
    pub fn clear(&self, site: &str) {
        match std::fs::remove_file(self.path(site)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(site, error = %e, "cannot clear the site's login-required mark"),
        }
    }

    /// The sites that need a login, by name, with the time each was first seen logged out.
    /// A damaged file still counts (its site is named by the file), since the mark exists.
    pub fn sites(&self) -> BTreeMap<String, i64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return BTreeMap::new() };
        let mut out = BTreeMap::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            // `write_atomically`'s temporary files end in `.tmp` and are skipped here.
            let Some(site) = file_name.strip_suffix(".json") else { continue };
            let since = std::fs::read(entry.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok())
                .map_or(0, |e| e.since_ms);
            out.insert(site.to_owned(), since);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_a_new_instance_and_clear_one_site_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = LoginsNeeded::new(dir.path());
        first.mark("fanhub", 1_000);
        first.mark("althub", 2_000);
        first.mark("fanhub", 3_000);
        // Another process (a new instance over the same dir) sees the same list.
        let other = LoginsNeeded::new(dir.path());
        assert_eq!(other.sites(), BTreeMap::from([("althub".to_owned(), 2_000), ("fanhub".to_owned(), 1_000)]));
        other.clear("fanhub");
        other.clear("never-marked");
        assert_eq!(first.sites().into_keys().collect::<Vec<_>>(), vec!["althub".to_owned()]);
        // A site named `..` stays inside the list's folder.
        first.mark("..", 4_000);
        assert!(dir.path().join("login-required").join("...json").is_file());
        assert!(first.sites().contains_key(".."));
    }
}
