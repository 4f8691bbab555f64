//! The version stamped into the agent binary: a fixed-size slot in a static that the
//! binary reads at run time, so one build can be stamped as any version (the release
//! pipeline and the tests do it with `edge-agent update stamp`) and the updater can read the
//! version inside a downloaded binary before it installs it.
//!
//! Layout: 24 bytes of marker, then the version in ASCII, NUL-padded to [`SLOT_LEN`]. The
//! build fills the slot with `CARGO_PKG_VERSION`. The marker bytes exist once in a binary
//! because the code never names them anywhere else: it reads them out of the static itself.
//! This module must never report a version it did not read from a slot found exactly once.

use std::path::Path;

const MARKER_LEN: usize = 24;
/// Marker plus room for the version.
pub const SLOT_LEN: usize = 64;

const fn initial_slot() -> [u8; SLOT_LEN] {
    let marker = *b"EDGE-AGENT-VERSION-SLOT:";
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let mut out = [0u8; SLOT_LEN];
    let mut i = 0;
    while i < MARKER_LEN {
        out[i] = marker[i];
        i += 1;
    }
    let mut j = 0;
    while j < version.len() && MARKER_LEN + j < SLOT_LEN {
        out[MARKER_LEN + j] = version[j];
        j += 1;
    }
    out
}

/// Patched in copies of the binary; read with a volatile load so the compiler never folds
/// the build-time value into the code.
#[used]
static SLOT: [u8; SLOT_LEN] = initial_slot();

fn slot() -> [u8; SLOT_LEN] {
    // SAFETY: `SLOT` is a valid, aligned, initialised static of exactly this type.
    unsafe { std::ptr::read_volatile(&SLOT) }
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not an edge-agent binary with a version slot (the slot marker occurs {1} times, not once)")]
    NoSlot(String, usize),
    #[error("{0:?} is not a version that fits the slot (a semantic version of at most 40 characters)")]
    BadVersion(String),
}

fn parse(slot: &[u8]) -> Option<String> {
    let version = &slot[MARKER_LEN..];
    let end = version.iter().position(|b| *b == 0).unwrap_or(version.len());
    let text = std::str::from_utf8(&version[..end]).ok()?;
    (!text.is_empty()).then(|| text.to_owned())
}

/// The version this binary runs as.
pub fn running_version() -> String {
    parse(&slot()).unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

fn find_slot(bytes: &[u8], path: &Path) -> Result<usize, SlotError> {
    let own = slot();
    let marker = &own[..MARKER_LEN];
    let mut found = Vec::new();
    let mut start = 0;
    while let Some(i) = bytes[start..].windows(MARKER_LEN).position(|w| w == marker) {
        found.push(start + i);
        start += i + 1;
        if found.len() > 1 {
            break;
        }
    }
    match found[..] {
        [one] if one + SLOT_LEN <= bytes.len() => Ok(one),
        _ => Err(SlotError::NoSlot(path.display().to_string(), found.len())),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SlotError> {
    std::fs::read(path).map_err(|source| SlotError::Io { path: path.display().to_string(), source })
}

/// The version stamped into the binary at `path`.
pub fn version_of(path: &Path) -> Result<String, SlotError> {
    let bytes = read(path)?;
    let at = find_slot(&bytes, path)?;
    parse(&bytes[at..at + SLOT_LEN]).ok_or_else(|| SlotError::NoSlot(path.display().to_string(), 0))
}

/// Writes a copy of the binary at `source` to `out` with `version` in its slot (executable).
pub fn stamp(source: &Path, out: &Path, version: &str) -> Result<(), SlotError> {
    let valid = version.len() <= SLOT_LEN - MARKER_LEN
        && semver::Version::parse(version).is_ok_and(|v| v.build.is_empty() && v.to_string() == version);
    if !valid {
        return Err(SlotError::BadVersion(version.to_owned()));
    }
    let mut bytes = read(source)?;
    let at = find_slot(&bytes, source)?;
    let field = &mut bytes[at + MARKER_LEN..at + SLOT_LEN];
    field.fill(0);
    field[..version.len()].copy_from_slice(version.as_bytes());
    let io = |source| SlotError::Io { path: out.display().to_string(), source };
    std::fs::write(out, &bytes).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_stamps_its_package_version() {
        assert_eq!(running_version(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn a_stamped_copy_reads_back_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = dir.path().join("agent");
        stamp(&exe, &out, "7.1.0-rc.1").unwrap();
        assert_eq!(version_of(&out).unwrap(), "7.1.0-rc.1");
        assert_eq!(version_of(&exe).unwrap(), env!("CARGO_PKG_VERSION"));
        assert!(matches!(stamp(&exe, &out, "1.0.0+build"), Err(SlotError::BadVersion(_))));
        assert!(matches!(stamp(&exe, &out, &format!("1.0.0-{}", "x".repeat(40))), Err(SlotError::BadVersion(_))));
        let other = dir.path().join("not-an-agent");
        std::fs::write(&other, b"#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(version_of(&other), Err(SlotError::NoSlot(_, 0))));
    }
}
