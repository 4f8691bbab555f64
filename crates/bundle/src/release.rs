//! Agent releases in the same TUF repository as bundles: one delegated role per channel
//! (`_release-<channel>`, confined to `_release/<channel>/*`), signed with an online key the
//! top-level targets role delegates to, exactly like a tenant's role. Each target is one
//! agent binary (or tray package, see [`PLATFORMS`]) for one platform and architecture, with its version, notes, rollout
//! percentage and pause flag in the signed custom metadata.
//!
//! Role and path names start with `_`, which no tenant slug can, so a release role can never
//! be mistaken for a tenant's and no tenant can sign a release. Agents read a per-channel
//! view (`Repo::release_view`) built like a tenant's view, so they verify it with the same
//! `tough` workflow, root and rollback protection as bundles.
//!
//! This module must never sign a target outside its channel's paths, never accept a version
//! lower than one already published for the same platform and architecture (a rollback to an
//! old code base is published as a new, higher version), and never change the bytes behind a
//! published version.

use crate::names::{parse_version, validate_slug, NameError};
use crate::repo::{hash_file, hex_decoded, io, nz, sign, Current, Repo, RepoError, SPEC_VERSION};
use chrono::Utc;
use semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use tough::schema::{Hashes, Target, Targets};
use tough::TargetName;

/// Delegated role names of release channels start with this (never a tenant slug).
pub const RELEASE_ROLE_PREFIX: &str = "_release-";
/// Target names of releases start with this.
pub const RELEASE_PATH_PREFIX: &str = "_release/";
/// URL prefix under which the hub serves releases (`<channel>/metadata/`, `targets/`).
pub const HTTP_PREFIX: &str = "/v1/releases";
/// What a release target is for: the headless agent binary of an operating system
/// (`linux`, `windows`, `macos`), or the tray app's package of one install kind
/// (`linux-deb`, `linux-rpm`), which the tray installs through the system's package manager.
/// Agents built before the package kinds skip those targets (an unknown platform is not a
/// release of theirs), so adding one never breaks an older client.
pub const PLATFORMS: [&str; 5] = ["linux", "windows", "macos", "linux-deb", "linux-rpm"];
pub const MAX_NOTES_CHARS: usize = 4000;

/// Checks a channel name: 1–32 of a-z 0-9 -, starting with a letter.
pub fn validate_channel(channel: &str) -> Result<(), NameError> {
    let bad = || NameError::BadSlug { kind: "channel", value: channel.to_owned() };
    let bytes = channel.as_bytes();
    if bytes.is_empty() || bytes.len() > 32 || !bytes[0].is_ascii_lowercase() {
        return Err(bad());
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err(bad());
    }
    Ok(())
}

/// The delegated role of a channel.
pub fn release_role(channel: &str) -> String {
    format!("{RELEASE_ROLE_PREFIX}{channel}")
}

/// The only paths a channel's role may sign.
pub fn release_path_pattern(channel: &str) -> String {
    format!("{RELEASE_PATH_PREFIX}{channel}/*")
}

/// The channel of a release role name, if it is one.
pub fn channel_of_role(role: &str) -> Option<&str> {
    role.strip_prefix(RELEASE_ROLE_PREFIX).filter(|c| validate_channel(c).is_ok())
}

/// The signed description of one release target (TUF custom metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseMeta {
    pub channel: String,
    pub platform: String,
    pub arch: String,
    pub version: String,
    #[serde(default)]
    pub notes: String,
    /// Share of agents (0–100) offered this release, chosen by a hash of their id.
    pub rollout_percent: u8,
    /// A paused release is offered to nobody (a newer one still can be).
    #[serde(default)]
    pub paused: bool,
    pub published_at: String,
    pub sha256: String,
}

/// One exact release: channel, platform, architecture, version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRef {
    pub channel: String,
    pub platform: String,
    pub arch: String,
    pub version: Version,
}

impl ReleaseRef {
    pub fn new(channel: &str, platform: &str, arch: &str, version: &str) -> Result<ReleaseRef, NameError> {
        validate_channel(channel)?;
        if !PLATFORMS.contains(&platform) {
            return Err(NameError::BadSlug {
                kind: "platform (linux, windows, macos, linux-deb or linux-rpm)",
                value: platform.to_owned(),
            });
        }
        validate_slug("arch", arch)?;
        Ok(ReleaseRef {
            channel: channel.to_owned(),
            platform: platform.to_owned(),
            arch: arch.to_owned(),
            version: parse_version(version)?,
        })
    }

    /// `_release/<channel>/<platform>/<arch>/<version>`: the TUF target name.
    pub fn target_name(&self) -> String {
        format!("{RELEASE_PATH_PREFIX}{}/{}/{}/{}", self.channel, self.platform, self.arch, self.version)
    }

    /// The file under the repository's targets directory (consistent-snapshot naming).
    pub fn target_file(&self, sha256_hex: &str) -> String {
        format!("{RELEASE_PATH_PREFIX}{}/{}/{}/{sha256_hex}.{}", self.channel, self.platform, self.arch, self.version)
    }

    pub fn parse_target_name(name: &str) -> Result<ReleaseRef, NameError> {
        let bad = || NameError::BadTargetName(name.to_owned());
        let rest = name.strip_prefix(RELEASE_PATH_PREFIX).ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [channel, platform, arch, version] = parts[..] else { return Err(bad()) };
        ReleaseRef::new(channel, platform, arch, version).map_err(|_| bad())
    }

    /// The same release with another version.
    pub fn with_version(&self, version: Version) -> ReleaseRef {
        ReleaseRef { version, ..self.clone() }
    }
}

impl std::fmt::Display for ReleaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}/{}", self.channel, self.version, self.platform, self.arch)
    }
}

/// A release to publish.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    pub channel: String,
    pub platform: String,
    pub arch: String,
    pub version: String,
    pub notes: String,
    pub rollout_percent: u8,
    /// The agent binary.
    pub source: PathBuf,
}

/// One signed release target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseEntry {
    pub target_name: String,
    pub target_file: String,
    pub length: u64,
    pub meta: ReleaseMeta,
    /// False when exactly these bytes were already published under this version.
    pub changed: bool,
}

/// A change to a published release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseChange {
    Pause,
    Resume,
    Rollout(u8),
}

fn meta_of(name: &str, target: &Target) -> Result<ReleaseMeta, RepoError> {
    serde_json::from_value(serde_json::Value::Object(target.custom.clone().into_iter().collect()))
        .map_err(|e| RepoError::Invalid(format!("metadata of release {name} is unreadable: {e}")))
}

fn custom_of(meta: &ReleaseMeta) -> Result<HashMap<String, serde_json::Value>, RepoError> {
    match serde_json::to_value(meta) {
        Ok(serde_json::Value::Object(map)) => Ok(map.into_iter().collect()),
        _ => Err(RepoError::Invalid("release metadata is not an object".into())),
    }
}

fn check_rollout(percent: u8) -> Result<(), RepoError> {
    if percent > 100 {
        return Err(RepoError::Invalid(format!("--rollout {percent} is not a percentage (0–100)")));
    }
    Ok(())
}

impl Repo {
    pub(crate) fn release_key_path(&self, channel: &str) -> String {
        format!("keys/releases/{channel}.pk8")
    }

    /// Stores and signs one agent binary as a release of a channel.
    pub fn publish_release(&self, request: &ReleaseRequest) -> Result<ReleaseEntry, RepoError> {
        let release = ReleaseRef::new(&request.channel, &request.platform, &request.arch, &request.version)?;
        check_rollout(request.rollout_percent)?;
        if request.notes.chars().count() > MAX_NOTES_CHARS {
            return Err(RepoError::Invalid(format!("--notes is longer than {MAX_NOTES_CHARS} characters")));
        }
        let source = fs::metadata(&request.source).map_err(io(format!("cannot read {}", request.source.display())))?;
        if !source.is_file() || source.len() == 0 {
            return Err(RepoError::Invalid(format!("{} is not a non-empty file", request.source.display())));
        }
        let _lock = self.lock()?;
        let current = self.current()?;
        let role_name = release_role(&release.channel);
        let existing = current.tenants.get(&role_name);

        // Copy into staging first, then hash the copy and store exactly it: what is signed
        // is exactly what is served, even if the operator's file changes meanwhile.
        let cleanup = self.staging_file("bin")?;
        let temporary = cleanup.0.clone();
        fs::copy(&request.source, &temporary).map_err(io(format!("cannot read {}", request.source.display())))?;
        let (length, sha256) = hash_file(&temporary)?;
        let target_name = release.target_name();
        let target_file = release.target_file(&sha256);

        if let Some(role) = existing {
            for (name, target) in &role.signed.targets {
                let Ok(other) = ReleaseRef::parse_target_name(name.raw()) else { continue };
                if other.platform != release.platform || other.arch != release.arch {
                    continue;
                }
                if other.version == release.version {
                    if hex::encode(target.hashes.sha256.as_ref()) == sha256 {
                        let meta = meta_of(name.raw(), target)?;
                        return Ok(ReleaseEntry { target_name, target_file, length, meta, changed: false });
                    }
                    return Err(RepoError::VersionExists(target_name));
                }
                if other.version > release.version {
                    return Err(RepoError::Invalid(format!(
                        "{} is already published for {}/{} on channel {}; agents never install an older version, \
                         so publish a rollback to an older code base as a new version above {}",
                        other.version, release.platform, release.arch, release.channel, other.version
                    )));
                }
            }
        }

        self.store().put_file(&Repo::target_key(&target_file), &temporary)?;
        drop(cleanup);

        let meta = ReleaseMeta {
            channel: release.channel.clone(),
            platform: release.platform.clone(),
            arch: release.arch.clone(),
            version: release.version.to_string(),
            notes: request.notes.clone(),
            rollout_percent: request.rollout_percent,
            paused: false,
            published_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            sha256: sha256.clone(),
        };
        let target = Target {
            length,
            hashes: Hashes { sha256: hex_decoded(&sha256)?, _extra: HashMap::new() },
            custom: custom_of(&meta)?,
            _extra: HashMap::new(),
        };
        let name = TargetName::new(target_name.clone()).map_err(|e| RepoError::Invalid(e.to_string()))?;
        self.sign_release_role(&current, &release.channel, |role| {
            role.targets.insert(name, target);
            Ok(())
        })?;
        Ok(ReleaseEntry { target_name, target_file, length, meta, changed: true })
    }

    /// Pauses, resumes or changes the rollout of one published release; re-signs its role.
    pub fn change_release(
        &self,
        channel: &str,
        platform: &str,
        arch: &str,
        version: &str,
        change: ReleaseChange,
    ) -> Result<ReleaseEntry, RepoError> {
        let release = ReleaseRef::new(channel, platform, arch, version)?;
        if let ReleaseChange::Rollout(percent) = change {
            check_rollout(percent)?;
        }
        let _lock = self.lock()?;
        let current = self.current()?;
        let target_name = release.target_name();
        let missing = || RepoError::Invalid(format!("release {release} is not published (edge-hub release list)"));
        let role = current.tenants.get(&release_role(channel)).ok_or_else(missing)?;
        let name = TargetName::new(target_name.clone()).map_err(|e| RepoError::Invalid(e.to_string()))?;
        let target = role.signed.targets.get(&name).ok_or_else(missing)?;
        let mut meta = meta_of(&target_name, target)?;
        let before = meta.clone();
        match change {
            ReleaseChange::Pause => meta.paused = true,
            ReleaseChange::Resume => meta.paused = false,
            ReleaseChange::Rollout(percent) => meta.rollout_percent = percent,
        }
        let entry = ReleaseEntry {
            target_file: release.target_file(&meta.sha256),
            target_name,
            length: target.length,
            meta: meta.clone(),
            changed: meta != before,
        };
        if !entry.changed {
            return Ok(entry);
        }
        let mut target = target.clone();
        target.custom = custom_of(&meta)?;
        self.sign_release_role(&current, channel, |role| {
            role.targets.insert(name, target);
            Ok(())
        })?;
        Ok(entry)
    }

    /// Every release of `channel` (or of every channel), newest version first per platform.
    pub fn releases(&self, channel: Option<&str>) -> Result<Vec<ReleaseEntry>, RepoError> {
        if let Some(channel) = channel {
            validate_channel(channel)?;
        }
        let current = self.current()?;
        let mut out = Vec::new();
        for (role_name, role) in &current.tenants {
            let Some(role_channel) = channel_of_role(role_name) else { continue };
            if channel.is_some_and(|c| c != role_channel) {
                continue;
            }
            for (name, target) in &role.signed.targets {
                let release = ReleaseRef::parse_target_name(name.raw())
                    .map_err(|e| RepoError::Invalid(format!("release role {role_name}: {e}")))?;
                let meta = meta_of(name.raw(), target)?;
                out.push((
                    release.clone(),
                    ReleaseEntry {
                        target_name: name.raw().to_owned(),
                        target_file: release.target_file(&meta.sha256),
                        length: target.length,
                        meta,
                        changed: false,
                    },
                ));
            }
        }
        out.sort_by(|(a, _), (b, _)| {
            (&a.channel, &a.platform, &a.arch).cmp(&(&b.channel, &b.platform, &b.arch)).then(b.version.cmp(&a.version))
        });
        Ok(out.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Edits the channel's role, signs it with the channel key (created with the delegation
    /// on first use), then snapshot and timestamp. Caller holds the lock.
    fn sign_release_role(
        &self,
        current: &Current,
        channel: &str,
        edit: impl FnOnce(&mut Targets) -> Result<(), RepoError>,
    ) -> Result<(), RepoError> {
        let role_name = release_role(channel);
        let now = Utc::now();
        let (key, targets) = self.delegate(
            &current.targets,
            &role_name,
            &self.release_key_path(channel),
            release_path_pattern(channel),
            now,
        )?;
        // `delegate` signs a new top-level targets only when it added the delegation.
        let targets_changed = targets.signed.version != current.targets.signed.version;
        let mut role = match current.tenants.get(&role_name) {
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
        edit(&mut role)?;
        role.version = nz(current.tenants.get(&role_name).map_or(1, |t| t.signed.version.get() + 1));
        role.expires = now + self.options.targets_ttl;
        let role = sign(role, &[&key])?;
        let mut versions: BTreeMap<String, u64> =
            current.tenants.iter().map(|(name, signed)| (name.clone(), signed.signed.version.get())).collect();
        versions.insert(role_name.clone(), role.signed.version.get());
        self.commit(
            &targets,
            targets_changed,
            &versions,
            Some((&role_name, &role)),
            current.snapshot.signed.version.get() + 1,
            current.timestamp.signed.version.get() + 1,
            &self.online_signer("snapshot")?,
            &self.online_signer("timestamp")?,
            now,
        )
    }

    /// The store key of a release file (see [`Repo::target_key`]), if `file` is a valid name
    /// of one (`<sha256>.<version>` under `_release/<channel>/<platform>/<arch>/`).
    pub fn release_file_key(channel: &str, platform: &str, arch: &str, file: &str) -> Option<String> {
        let (sha, version) = file.split_once('.')?;
        let valid_sha = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let release = ReleaseRef::new(channel, platform, arch, version).ok()?;
        valid_sha.then(|| Repo::target_key(&release.target_file(sha)))
    }
}
