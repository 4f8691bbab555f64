//! The last screenshot of each recent browser job, for the tray window's Jobs screen.
//!
//! The browser runtime writes screenshots into one artifacts folder, where the next job
//! may overwrite a file of the same name; the screenshot a job reports is copied here at
//! once, as `<data dir>/screenshots/<hex of the job id>.png`, and only the newest
//! [`KEEP`] are kept. It owns that folder. It must never read a file outside it for a
//! caller: a screenshot is asked for by job id, never by path, so the window cannot use it
//! to read any other file of the person's.

use crate::error::AgentError;
use std::path::{Path, PathBuf};

/// How many screenshots are kept (the snapshot's recent jobs).
pub const KEEP: usize = crate::state::RECENT_JOBS;

/// Larger files are not kept: a window-sized PNG is far smaller.
pub const MAX_BYTES: u64 = 8 * 1024 * 1024;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Screenshots {
    dir: PathBuf,
}

impl Screenshots {
    pub fn new(data_dir: &Path) -> Screenshots {
        Screenshots { dir: data_dir.join("screenshots") }
    }

    /// The one file a job id may name: hex, so no id can point elsewhere.
    fn path(&self, job_id: &str) -> PathBuf {
        let hex: String = job_id.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.png"))
    }

    /// Copies the PNG at `source` as the job's screenshot, then forgets the oldest beyond
    /// [`KEEP`]. Anything but a PNG of at most [`MAX_BYTES`] is refused.
    pub fn keep(&self, job_id: &str, source: &Path) -> Result<(), AgentError> {
        let bytes = std::fs::read(source)
            .map_err(|e| AgentError::io(format!("cannot read the screenshot {}", source.display()), e))?;
        if bytes.len() as u64 > MAX_BYTES || !bytes.starts_with(PNG_MAGIC) {
            return Err(AgentError::Internal(format!(
                "{} is not a PNG screenshot of at most {MAX_BYTES} bytes",
                source.display()
            )));
        }
        crate::files::replace(&self.path(job_id), &bytes)?;
        self.prune();
        Ok(())
    }

    /// The job's last screenshot (PNG bytes), `None` when it has none (any more).
    pub fn get(&self, job_id: &str) -> Result<Option<Vec<u8>>, AgentError> {
        let path = self.path(job_id);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= KEEP {
            return;
        }
        files.sort();
        for (_, old) in &files[..files.len() - KEEP] {
            let _ = std::fs::remove_file(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(dir: &Path, name: &str, tail: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, [PNG_MAGIC, tail].concat()).unwrap();
        path
    }

    #[test]
    fn a_jobs_screenshot_is_copied_by_id_and_only_the_newest_are_kept() {
        let data = tempfile::tempdir().unwrap();
        let shots = Screenshots::new(data.path());
        let artifacts = tempfile::tempdir().unwrap();
        let first = png(artifacts.path(), "screenshot.png", b"first");
        shots.keep("job_1", &first).unwrap();
        // The runtime overwrites its file with the next job's: the first job keeps its own.
        let second = png(artifacts.path(), "screenshot.png", b"second");
        shots.keep("job_2", &second).unwrap();
        assert!(shots.get("job_1").unwrap().unwrap().ends_with(b"first"));
        assert!(shots.get("job_2").unwrap().unwrap().ends_with(b"second"));
        assert_eq!(shots.get("job_3").unwrap(), None);
        // An id is never a path.
        assert_eq!(shots.get("../../etc/passwd").unwrap(), None);
        assert!(shots.path("../x").starts_with(&shots.dir));

        let not_png = artifacts.path().join("notes.txt");
        std::fs::write(&not_png, "secret").unwrap();
        assert!(shots.keep("job_4", &not_png).is_err());
        assert_eq!(shots.get("job_4").unwrap(), None);

        for n in 0..KEEP + 3 {
            shots.keep(&format!("many_{n}"), &first).unwrap();
        }
        let kept = std::fs::read_dir(&shots.dir).unwrap().count();
        assert!(kept <= KEEP, "{kept} kept");
    }
}
