//! Installing a verified agent binary in place of the running one, and the probation that
//! brings the previous one back when the new one cannot reach the hub.
//!
//! The swap: the new binary is written beside the installed one (same directory, so the
//! rename is atomic), fsynced, the installed one is hard-linked (or copied) to
//! `<name>.previous`, and the new one renamed over it. Then a probation marker is written to
//! the person's data directory (`updates/probation.json`, never beside the binary). The new
//! version, when it starts, finds the marker naming its own version: the first start records
//! its time, the first `hb_ack` removes the marker. If the window passes first (or a later
//! start finds it already past), `.previous` is renamed back over the binary, the failure is
//! kept in `updates/failed.json` for the hub and the version is never installed again here.
//!
//! This module must never leave the installed path missing (every step is a rename over an
//! existing file), never restore a file other than the `.previous` it made, and never act on
//! a marker written for another version.

use super::UpdateError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Written when a new version is installed; removed by its first `hb_ack` or by the rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probation {
    pub version: String,
    pub previous_version: String,
    pub exe: PathBuf,
    pub previous: PathBuf,
    pub channel: String,
    pub platform: String,
    pub arch: String,
    pub window_secs: u64,
    /// Set by the new version's first start.
    pub first_start_unix: Option<i64>,
}

/// What a starting agent must do about an update in probation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartState {
    /// No update waiting for confirmation.
    Normal,
    /// This is a new version: it must see `hb_ack` within `remaining`, else roll back.
    Probation { remaining: Duration },
    /// The window had passed (a crash or a hang in an earlier start): the previous binary
    /// is back at `exe`; start it instead of going on.
    RolledBack { exe: PathBuf },
}

fn updates_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("updates")
}

pub fn marker_path(data_dir: &Path) -> PathBuf {
    updates_dir(data_dir).join("probation.json")
}

pub fn failed_path(data_dir: &Path) -> PathBuf {
    updates_dir(data_dir).join("failed.json")
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> UpdateError {
    move |e| UpdateError::Io(format!("{context}: {e}"))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), UpdateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| UpdateError::Io(e.to_string()))?;
    edge_bundle::repo::write_atomic(path, &bytes).map_err(|e| UpdateError::Io(e.to_string()))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, UpdateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| UpdateError::Io(format!("{} is unreadable ({e}); delete it to go on", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UpdateError::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

pub fn probation(data_dir: &Path) -> Result<Option<Probation>, UpdateError> {
    read_json(&marker_path(data_dir))
}

/// The path this process was started from (Linux reports a replaced binary as
/// "<path> (deleted)"; the path is what matters, not the inode).
pub fn installed_exe() -> Result<PathBuf, UpdateError> {
    let exe = std::env::current_exe().map_err(io("cannot find this program's own path".into()))?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Folders whose programs belong to the system's package manager: a copy there is updated
/// through it (even when this process could write there, as root can), never swapped
/// underneath it, which would leave the package database describing other bytes.
const SYSTEM_DIRS: &[&str] = &["/usr/", "/opt/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/snap/"];

/// Whether the program at `exe` may replace itself; the reason when not.
pub fn self_replaceable(exe: &Path) -> Result<(), &'static str> {
    let text = exe.to_string_lossy();
    if cfg!(unix) && SYSTEM_DIRS.iter().any(|dir| text.starts_with(dir)) {
        return Err("installed by the system's package manager: update it through the package manager");
    }
    let dir = exe.parent().ok_or("it has no folder")?;
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let probe = dir.join(format!(".{name}.write-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(_) => Err(
            "its folder is not writable by this user: install a per-user copy, or update it the way it was installed",
        ),
    }
}

pub fn previous_path(exe: &Path) -> PathBuf {
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "edge-agent".into());
    exe.with_file_name(format!("{name}.previous"))
}

fn sync_dir(dir: &Path) {
    // Makes the renames durable; not possible (nor needed) on every platform.
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Puts `new_binary` at `exe`, keeping the old one as `<exe>.previous`; returns that path.
pub fn swap(exe: &Path, new_binary: &Path) -> Result<PathBuf, UpdateError> {
    let dir = exe.parent().ok_or_else(|| UpdateError::Io(format!("{} has no directory", exe.display())))?;
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staged = dir.join(format!(".{name}.new"));
    let previous = previous_path(exe);
    let cannot_write = |what: &Path| {
        format!(
            "cannot write {} (the agent updates itself only where its own user may write; install a per-user \
             copy or update through your package manager)",
            what.display()
        )
    };
    {
        let mut input = std::fs::File::open(new_binary).map_err(io(format!("cannot read {}", new_binary.display())))?;
        let mut output = std::fs::File::create(&staged).map_err(io(cannot_write(&staged)))?;
        std::io::copy(&mut input, &mut output).map_err(io(cannot_write(&staged)))?;
        output.flush().and_then(|_| output.sync_all()).map_err(io(cannot_write(&staged)))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).map_err(io(cannot_write(&staged)))?;
    }
    // The old binary stays as `.previous`: a hard link (no copy, same bytes), or a copy
    // where links are not possible. Built under a temporary name, then renamed.
    let previous_tmp = dir.join(format!(".{name}.previous.tmp"));
    let _ = std::fs::remove_file(&previous_tmp);
    if std::fs::hard_link(exe, &previous_tmp).is_err() {
        std::fs::copy(exe, &previous_tmp).map_err(io(cannot_write(&previous_tmp)))?;
    }
    std::fs::rename(&previous_tmp, &previous).map_err(io(cannot_write(&previous)))?;
    std::fs::rename(&staged, exe).map_err(io(cannot_write(exe)))?;
    sync_dir(dir);
    Ok(previous)
}

/// Writes the marker the new version will find at its first start.
pub fn begin_probation(data_dir: &Path, marker: &Probation) -> Result<(), UpdateError> {
    write_json(&marker_path(data_dir), marker)
}

/// Called once at start, before connecting.
pub fn on_start(
    data_dir: &Path,
    running_version: &str,
    window: Duration,
    now_unix: i64,
) -> Result<StartState, UpdateError> {
    let Some(mut marker) = probation(data_dir)? else { return Ok(StartState::Normal) };
    if marker.version != running_version {
        // Installed but this is still (or again) another version: a restart that did not
        // happen yet, or a package reinstall. The marker waits for the version it names.
        return Ok(StartState::Normal);
    }
    let window_secs = window.as_secs().max(1);
    let first = match marker.first_start_unix {
        Some(first) => first,
        None => {
            marker.first_start_unix = Some(now_unix);
            marker.window_secs = window_secs;
            begin_probation(data_dir, &marker)?;
            now_unix
        }
    };
    let elapsed = now_unix.saturating_sub(first).max(0) as u64;
    if elapsed >= marker.window_secs {
        let reason = format!(
            "version {} did not reach the hub (no hb_ack) within {} s of its first start",
            marker.version, marker.window_secs
        );
        let exe = roll_back(data_dir, &marker, &reason)?;
        return Ok(StartState::RolledBack { exe });
    }
    Ok(StartState::Probation { remaining: Duration::from_secs(marker.window_secs - elapsed) })
}

/// The new version reached `hb_ack`: it stays.
pub fn confirm(data_dir: &Path, running_version: &str) -> Result<bool, UpdateError> {
    match probation(data_dir)? {
        Some(marker) if marker.version == running_version => {
            std::fs::remove_file(marker_path(data_dir)).map_err(io("cannot remove the probation marker".into()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Puts `.previous` back, keeps the failure for the hub and for the next checks, removes
/// the marker; returns the path to start.
pub fn roll_back(data_dir: &Path, marker: &Probation, reason: &str) -> Result<PathBuf, UpdateError> {
    if !marker.previous.is_file() {
        return Err(UpdateError::Io(format!(
            "version {} failed its probation but {} is missing, so the previous version cannot be restored; \
             reinstall the agent",
            marker.version,
            marker.previous.display()
        )));
    }
    // `.previous` is kept (a hard link or copy of what is restored), so a second failure
    // can still be undone.
    let dir = marker.exe.parent().unwrap_or(Path::new("."));
    let name = marker.exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let restoring = dir.join(format!(".{name}.restore"));
    let _ = std::fs::remove_file(&restoring);
    if std::fs::hard_link(&marker.previous, &restoring).is_err() {
        std::fs::copy(&marker.previous, &restoring).map_err(io(format!("cannot write {}", restoring.display())))?;
    }
    std::fs::rename(&restoring, &marker.exe).map_err(io(format!("cannot restore {}", marker.exe.display())))?;
    sync_dir(dir);
    let report = edge_protocol::api::UpdateFailedRequest {
        channel: marker.channel.clone(),
        platform: marker.platform.clone(),
        arch: marker.arch.clone(),
        version: marker.version.clone(),
        previous_version: marker.previous_version.clone(),
        reason: reason.to_owned(),
    };
    write_json(&failed_path(data_dir), &report)?;
    super::remember_failed(data_dir, &marker.version)?;
    let _ = std::fs::remove_file(marker_path(data_dir));
    tracing::error!(version = %marker.version, previous = %marker.previous_version, reason, "update rolled back");
    Ok(marker.exe.clone())
}

/// Replaces this process with the program at `exe`, same arguments (Unix: same process id,
/// so a service manager sees no exit). Returns only on failure.
pub fn restart(exe: &Path) -> UpdateError {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(exe).args(&args).exec();
        UpdateError::Io(format!("cannot start {}: {error}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        match std::process::Command::new(exe).args(&args).spawn() {
            Ok(_) => std::process::exit(0),
            Err(error) => UpdateError::Io(format!("cannot start {}: {error}", exe.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(dir: &Path, version: &str) -> Probation {
        Probation {
            version: version.into(),
            previous_version: "1.0.0".into(),
            exe: dir.join("bin/edge-agent"),
            previous: dir.join("bin/edge-agent.previous"),
            channel: "stable".into(),
            platform: "linux".into(),
            arch: "x86_64".into(),
            window_secs: 60,
            first_start_unix: None,
        }
    }

    fn installed(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let exe = dir.join("bin/edge-agent");
        std::fs::write(&exe, "old").unwrap();
        let new = dir.join("download");
        std::fs::write(&new, "new").unwrap();
        assert_eq!(swap(&exe, &new).unwrap(), dir.join("bin/edge-agent.previous"));
        exe
    }

    #[test]
    fn the_swap_keeps_the_old_binary_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let exe = installed(dir.path());
        assert_eq!(std::fs::read_to_string(&exe).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(previous_path(&exe)).unwrap(), "old");
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("bin")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn hb_ack_in_the_window_keeps_the_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let exe = installed(dir.path());
        begin_probation(&data, &marker(dir.path(), "2.0.0")).unwrap();
        // Another version starting (the old process before its restart) ignores the marker.
        assert_eq!(on_start(&data, "1.0.0", Duration::from_secs(60), 1000).unwrap(), StartState::Normal);
        let state = on_start(&data, "2.0.0", Duration::from_secs(60), 1000).unwrap();
        assert_eq!(state, StartState::Probation { remaining: Duration::from_secs(60) });
        // A restart 20 s later keeps the first start's deadline.
        let state = on_start(&data, "2.0.0", Duration::from_secs(60), 1020).unwrap();
        assert_eq!(state, StartState::Probation { remaining: Duration::from_secs(40) });
        assert!(confirm(&data, "2.0.0").unwrap());
        assert_eq!(on_start(&data, "2.0.0", Duration::from_secs(60), 5000).unwrap(), StartState::Normal);
        assert_eq!(std::fs::read_to_string(&exe).unwrap(), "new");
    }

    #[test]
    fn a_start_after_the_window_restores_the_previous_binary_and_keeps_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let exe = installed(dir.path());
        begin_probation(&data, &marker(dir.path(), "2.0.0")).unwrap();
        on_start(&data, "2.0.0", Duration::from_secs(60), 1000).unwrap();
        let state = on_start(&data, "2.0.0", Duration::from_secs(60), 1061).unwrap();
        assert_eq!(state, StartState::RolledBack { exe: exe.clone() });
        assert_eq!(std::fs::read_to_string(&exe).unwrap(), "old");
        assert!(!marker_path(&data).exists());
        let failed: edge_protocol::api::UpdateFailedRequest = read_json(&failed_path(&data)).unwrap().unwrap();
        assert_eq!((failed.version.as_str(), failed.previous_version.as_str()), ("2.0.0", "1.0.0"));
        assert!(failed.reason.contains("hb_ack"), "{}", failed.reason);
        assert!(super::super::failed_versions(&data).contains(&"2.0.0".to_owned()));
    }

    #[test]
    fn a_rollback_without_the_previous_binary_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let m = marker(dir.path(), "2.0.0");
        let err = roll_back(&data, &m, "test").unwrap_err().to_string();
        assert!(err.contains("cannot be restored"), "{err}");
    }
}
