//! One tenant's view of the repository: the metadata an agent of that tenant is served.
//!
//! The repository on disk is one TUF repository whose top-level `targets.json` delegates to
//! every tenant and whose `snapshot.json` lists every tenant's role: served as they are, each
//! tenant would learn every other tenant's name (and download their roles, which `tough`
//! loads for every delegation). So the hub serves each tenant a view derived from those
//! files: the same versions and expiry, top-level targets with that tenant's delegation
//! only, a snapshot listing only that role, and a timestamp over that snapshot, each
//! re-signed with the same online key that signed the original. Root and the tenant's own
//! role are served unchanged, so the agent's verification does not change at all.
//!
//! Views are built on request and never stored: Ed25519 signatures are deterministic and the
//! bytes are canonical JSON, so a view of version N is the same bytes on every request and
//! on every hub instance sharing the repository, which is what the hashes in the snapshot
//! and timestamp pin. Because a view keeps the versions of the files it derives from, an
//! agent never sees a version go down, whichever files it was served before.
//! This module must never put another tenant's name or key into a tenant's view.

use crate::names::validate_slug;
use crate::repo::{canonical_json, metafile, sign, Repo, RepoError};
use std::collections::HashMap;
use tough::schema::{Signed, Snapshot, Targets, Timestamp};

/// What one metadata file name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataFile {
    /// `root.json` or `<N>.root.json`: the same for everyone, no tenant names in it.
    Root,
    Timestamp,
    Snapshot(u64),
    Targets(u64),
    /// `<N>.<role>.json`: a tenant's delegated role.
    Role(u64, String),
}

impl MetadataFile {
    /// `None` for a name that is not a repository metadata file.
    pub fn parse(file: &str) -> Option<MetadataFile> {
        let stem = file.strip_suffix(".json")?;
        match stem {
            "root" => return Some(MetadataFile::Root),
            "timestamp" => return Some(MetadataFile::Timestamp),
            _ => {}
        }
        let (version, role) = stem.split_once('.')?;
        if version.is_empty() || version.len() > 20 || !version.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let version: u64 = version.parse().ok()?;
        Some(match role {
            "root" => MetadataFile::Root,
            "snapshot" => MetadataFile::Snapshot(version),
            "targets" => MetadataFile::Targets(version),
            // `timestamp` has no versioned file; a tenant cannot be named like a top-level role.
            "timestamp" => return None,
            // A release channel's role (`_release-<channel>`), which no tenant slug can be.
            other if crate::release::channel_of_role(other).is_some() => MetadataFile::Role(version, other.to_owned()),
            other => {
                validate_slug("role", other).ok()?;
                MetadataFile::Role(version, other.to_owned())
            }
        })
    }
}

impl Repo {
    /// `file` as an agent of `tenant` sees it; `Ok(None)` when it is not part of that view
    /// (another tenant's role, a version that does not exist).
    pub fn tenant_view(&self, tenant: &str, file: &str) -> Result<Option<Vec<u8>>, RepoError> {
        validate_slug("tenant", tenant)?;
        self.role_view(tenant, file)
    }

    /// `file` as an agent following release `channel` sees it: the same derivation as a
    /// tenant's view, with the channel's release role as the only delegation.
    pub fn release_view(&self, channel: &str, file: &str) -> Result<Option<Vec<u8>>, RepoError> {
        crate::release::validate_channel(channel)?;
        self.role_view(&crate::release::release_role(channel), file)
    }

    /// The view whose only delegation is `role` (a tenant, or a release channel's role).
    fn role_view(&self, tenant: &str, file: &str) -> Result<Option<Vec<u8>>, RepoError> {
        self.check_initialised()?;
        match MetadataFile::parse(file) {
            None => Ok(None),
            Some(MetadataFile::Root) => self.read_metadata(file),
            Some(MetadataFile::Role(_, role)) if role != tenant => Ok(None),
            Some(MetadataFile::Role(..)) => self.read_metadata(file),
            Some(MetadataFile::Targets(version)) => self.view_targets(tenant, version),
            Some(MetadataFile::Snapshot(version)) => self.view_snapshot(tenant, version),
            Some(MetadataFile::Timestamp) => self.view_timestamp(tenant),
        }
    }

    fn read_signed<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<Option<Signed<T>>, RepoError> {
        let Some(bytes) = self.read_metadata(file)? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RepoError::Invalid(format!("{file} is not valid metadata: {e}")))
    }

    fn view_targets(&self, tenant: &str, version: u64) -> Result<Option<Vec<u8>>, RepoError> {
        let Some(full) = self.read_signed::<Targets>(&format!("{version}.targets.json"))? else { return Ok(None) };
        let mut signed = full.signed;
        if let Some(delegations) = signed.delegations.as_mut() {
            delegations.roles.retain(|role| role.name == tenant);
            let keyids: Vec<_> = delegations.roles.iter().flat_map(|r| r.keyids.iter().cloned()).collect();
            delegations.keys.retain(|id, _| keyids.contains(id));
        }
        canonical_json(&sign(signed, &[&self.online_signer("targets")?])?).map(Some)
    }

    fn view_snapshot(&self, tenant: &str, version: u64) -> Result<Option<Vec<u8>>, RepoError> {
        let Some(full) = self.read_signed::<Snapshot>(&format!("{version}.snapshot.json"))? else { return Ok(None) };
        let mut signed = full.signed;
        let targets = signed
            .meta
            .get("targets.json")
            .ok_or_else(|| RepoError::Invalid(format!("{version}.snapshot.json does not list targets.json")))?;
        let targets_version = targets.version.get();
        let targets_bytes = self.view_targets(tenant, targets_version)?.ok_or_else(|| {
            RepoError::Invalid(format!(
                "{version}.snapshot.json names targets version {targets_version}, which is missing"
            ))
        })?;
        let own_role = format!("{tenant}.json");
        signed.meta.retain(|name, _| name == &own_role);
        // Like the full snapshot: the hash pins the view's bytes, no length (see `commit`).
        let mut targets_meta = metafile(targets_version, Some(&targets_bytes))?;
        targets_meta.length = None;
        signed.meta.insert("targets.json".to_owned(), targets_meta);
        canonical_json(&sign(signed, &[&self.online_signer("snapshot")?])?).map(Some)
    }

    fn view_timestamp(&self, tenant: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let Some(full) = self.read_signed::<Timestamp>("timestamp.json")? else { return Ok(None) };
        let mut signed = full.signed;
        let snapshot_version = signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version.get())
            .ok_or_else(|| RepoError::Invalid("timestamp.json does not list snapshot.json".into()))?;
        let snapshot_bytes = self.view_snapshot(tenant, snapshot_version)?.ok_or_else(|| {
            RepoError::Invalid(format!("timestamp.json names snapshot version {snapshot_version}, which is missing"))
        })?;
        signed.meta = HashMap::from([("snapshot.json".to_owned(), metafile(snapshot_version, Some(&snapshot_bytes))?)]);
        canonical_json(&sign(signed, &[&self.online_signer("timestamp")?])?).map(Some)
    }
}
