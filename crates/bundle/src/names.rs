//! Bundle naming: tenant and bundle slugs, semver versions, and the TUF target names built
//! from them. Every name that reaches a path on disk or a URL passes through here first, so
//! nothing derived from input can contain `/`, `..`, or a character a file system treats
//! specially. It must never accept a name it could not round-trip.

use semver::Version;
use std::fmt;

pub const MAX_SLUG_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} {value:?} is not a slug: use 1–64 of a-z 0-9 . _ - starting with a letter or digit")]
    BadSlug { kind: &'static str, value: String },
    #[error("version {0:?} is not a semantic version (e.g. 1.4.2)")]
    BadVersion(String),
    #[error("target name {0:?} is not <tenant>/<bundle>/<version>.zip")]
    BadTargetName(String),
}

/// Checks a tenant or bundle slug.
pub fn validate_slug(kind: &'static str, value: &str) -> Result<(), NameError> {
    let bad = || NameError::BadSlug { kind, value: value.to_owned() };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_SLUG_CHARS || value.contains("..") {
        return Err(bad());
    }
    if !bytes[0].is_ascii_lowercase() && !bytes[0].is_ascii_digit() {
        return Err(bad());
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(bad());
    }
    Ok(())
}

pub fn parse_version(value: &str) -> Result<Version, NameError> {
    let version = Version::parse(value.trim()).map_err(|_| NameError::BadVersion(value.to_owned()))?;
    // Build metadata (`+…`) is ignored by semver ordering, so two different files could
    // claim the same precedence; refuse it rather than guess.
    if !version.build.is_empty() {
        return Err(NameError::BadVersion(value.to_owned()));
    }
    Ok(version)
}

/// One exact bundle version of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRef {
    pub tenant: String,
    pub bundle: String,
    pub version: Version,
}

impl BundleRef {
    pub fn new(tenant: &str, bundle: &str, version: &str) -> Result<BundleRef, NameError> {
        validate_slug("tenant", tenant)?;
        validate_slug("bundle", bundle)?;
        Ok(BundleRef { tenant: tenant.to_owned(), bundle: bundle.to_owned(), version: parse_version(version)? })
    }

    /// `<tenant>/<bundle>/<version>.zip`: the TUF target name.
    pub fn target_name(&self) -> String {
        format!("{}/{}/{}.zip", self.tenant, self.bundle, self.version)
    }

    /// The target's file under the repository's targets directory with consistent-snapshot
    /// naming (`<dir>/<sha256>.<basename>`), so a new upload never replaces bytes a client
    /// is downloading.
    pub fn target_file(&self, sha256_hex: &str) -> String {
        format!("{}/{}/{}.{}.zip", self.tenant, self.bundle, sha256_hex, self.version)
    }

    pub fn parse_target_name(name: &str) -> Result<BundleRef, NameError> {
        let bad = || NameError::BadTargetName(name.to_owned());
        let mut parts = name.split('/');
        let (Some(tenant), Some(bundle), Some(file), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let version = file.strip_suffix(".zip").ok_or_else(bad)?;
        BundleRef::new(tenant, bundle, version).map_err(|_| bad())
    }
}

impl fmt::Display for BundleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.tenant, self.bundle, self.version)
    }
}

/// The delegated role of a tenant is named after it and may only sign `<tenant>/*`.
pub fn tenant_path_pattern(tenant: &str) -> String {
    format!("{tenant}/*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_refuse_anything_path_like() {
        for bad in ["", "A", "-x", ".x", "a/b", "a..b", "a b", "ä", "..", &"x".repeat(65)] {
            assert!(validate_slug("tenant", bad).is_err(), "{bad:?}");
        }
        for good in ["acme", "a", "0day", "my-flow_2.x"] {
            validate_slug("tenant", good).unwrap();
        }
    }

    #[test]
    fn target_names_round_trip() {
        let r = BundleRef::new("acme", "report", "1.2.3-rc.1").unwrap();
        assert_eq!(r.target_name(), "acme/report/1.2.3-rc.1.zip");
        assert_eq!(BundleRef::parse_target_name(&r.target_name()).unwrap(), r);
        assert!(BundleRef::parse_target_name("acme/../x/1.0.0.zip").is_err());
        assert!(BundleRef::parse_target_name("acme/x/1.0.0+b.zip").is_err());
    }
}
