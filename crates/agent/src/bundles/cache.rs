//! The bundle cache, `<data dir>/EdgeFlows/<tenant>/<bundle>/<version>/` holding `bundle/`
//! (the unpacked files), `venv/` (python) and `.sha256` / `.last-used` markers, and its
//! garbage collection. A version directory appears only by an atomic rename of a fully
//! unpacked temporary directory. GC keeps the newest 3 versions of each bundle and every
//! version used in the last 30 days. It must never delete a version a run is using (runs
//! touch `.last-used` first) or anything outside `EdgeFlows/`.

use semver::Version;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const KEEP_VERSIONS: usize = 3;
pub const KEEP_USED_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);
pub const GC_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);

pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("EdgeFlows")
}

pub fn version_dir(data_dir: &Path, tenant: &str, bundle: &str, version: &str) -> PathBuf {
    root(data_dir).join(tenant).join(bundle).join(version)
}

/// Marks a version as used now.
pub fn touch(version_dir: &Path) {
    let _ = std::fs::write(version_dir.join(".last-used"), crate::now_rfc3339());
}

fn last_used(version_dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(version_dir.join(".last-used")).and_then(|m| m.modified()).ok()
}

/// What a GC pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<PathBuf>,
    pub kept: usize,
}

/// One pass over the cache at time `now`.
pub fn gc(data_dir: &Path, now: SystemTime) -> GcReport {
    let mut report = GcReport::default();
    let Ok(tenants) = std::fs::read_dir(root(data_dir)) else { return report };
    for tenant in tenants.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
        let Ok(bundles) = std::fs::read_dir(tenant.path()) else { continue };
        for bundle in bundles.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            let Ok(entries) = std::fs::read_dir(bundle.path()) else { continue };
            let mut versions: Vec<(Version, PathBuf)> = Vec::new();
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if name.starts_with(".tmp-") {
                    // An unpack that died midway; old ones are garbage.
                    let old = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(24 * 3600));
                    if old && std::fs::remove_dir_all(&path).is_ok() {
                        report.removed.push(path);
                    }
                } else if let Ok(version) = Version::parse(&name) {
                    versions.push((version, path));
                }
            }
            versions.sort_by(|a, b| b.0.cmp(&a.0));
            for (i, (_, path)) in versions.into_iter().enumerate() {
                let recent = last_used(&path)
                    .and_then(|t| now.duration_since(t).ok().or(Some(Duration::ZERO)))
                    .is_some_and(|age| age <= KEEP_USED_WITHIN);
                if i < KEEP_VERSIONS || recent {
                    report.kept += 1;
                } else if std::fs::remove_dir_all(&path).is_ok() {
                    report.removed.push(path);
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(data: &Path, version: &str, used_days_ago: Option<u64>, now: SystemTime) -> PathBuf {
        let dir = version_dir(data, "acme", "report", version);
        std::fs::create_dir_all(dir.join("bundle")).unwrap();
        if let Some(days) = used_days_ago {
            touch(&dir);
            let file = std::fs::File::options().write(true).open(dir.join(".last-used")).unwrap();
            file.set_modified(now - Duration::from_secs(days * 24 * 3600)).unwrap();
        }
        dir
    }

    #[test]
    fn gc_keeps_the_newest_three_and_anything_used_in_thirty_days() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let v = |s: &str, used| make(tmp.path(), s, used, now);
        let old_unused = v("1.0.0", Some(90));
        let old_recent = v("1.1.0", Some(29));
        let never_used = v("1.2.0", None);
        let keep_a = v("2.0.0", Some(400));
        let keep_b = v("2.1.0", None);
        let keep_c = v("10.0.0", Some(1));
        let report = gc(tmp.path(), now);
        assert!(!old_unused.exists());
        assert!(!never_used.exists());
        assert!(old_recent.exists(), "used 29 days ago");
        for dir in [&keep_a, &keep_b, &keep_c] {
            assert!(dir.exists(), "{} is among the newest three (semver order, not text order)", dir.display());
        }
        assert_eq!(report.removed.len(), 2);
        assert_eq!(report.kept, 4);
    }
}
