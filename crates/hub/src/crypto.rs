//! Owns randomness, identifiers, credential hashing and the clock helpers the hub uses.
//! It must never keep a credential around: callers get a [`Secret`] or a hash and decide
//! what to store (only hashes) and what to show (once, on the CLI).

use crate::error::HubError;
use crate::secret::Secret;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

fn random_bytes<const N: usize>() -> Result<[u8; N], HubError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| HubError::Random(e.to_string()))?;
    Ok(bytes)
}

/// `agt_` + 20 hex digits: long enough to be unguessable in practice, short enough to read in logs.
pub fn new_agent_id() -> Result<String, HubError> {
    Ok(format!("agt_{}", hex::encode(random_bytes::<10>()?)))
}

/// `job_` + the creation time (Unix ms, 12 hex digits, as in UUIDv7) + 20 random hex digits.
/// Time first, so a new job's id sorts after older ones: inserts land on the last page of
/// every index keyed by job id instead of a random one, and a group of submissions dirties a
/// few pages instead of one per job. 80 random bits keep ids of the same millisecond apart;
/// they come from the thread's CSPRNG (seeded from the OS) rather than a system call per
/// job, so making one cannot fail.
pub fn new_job_id() -> String {
    use rand::RngCore as _;
    let created = u64::try_from(now_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    format!("job_{created:012x}{}", hex::encode(random))
}

pub fn new_nonce() -> Result<String, HubError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// A device code (RFC 8628): 32 random bytes, URL-safe base64. The agent's polling secret.
pub fn new_device_code() -> Result<Secret, HubError> {
    Ok(Secret::new(format!("edc_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))))
}

/// Letters and digits a person cannot confuse when copying from a screen (no 0/O, 1/I):
/// 32 symbols, so one random byte masked to 5 bits picks one without bias.
pub const USER_CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// The code a person types on the approval page: 8 symbols (40 bits), shown `XXXX-XXXX`.
pub fn new_user_code() -> Result<String, HubError> {
    let bytes = random_bytes::<8>()?;
    let symbols: String = bytes.iter().map(|b| char::from(USER_CODE_ALPHABET[usize::from(b & 31)])).collect();
    Ok(format!("{}-{}", &symbols[..4], &symbols[4..]))
}

/// The prefix lets a person (and secret scanners) tell an enrollment token from an API key.
pub fn new_enrollment_token() -> Result<Secret, HubError> {
    Ok(Secret::new(format!("et_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))))
}

pub fn new_api_key() -> Result<Secret, HubError> {
    Ok(Secret::new(format!("ehk_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))))
}

pub fn new_jwt_secret() -> Result<Secret, HubError> {
    Ok(Secret::new(URL_SAFE_NO_PAD.encode(random_bytes::<48>()?)))
}

/// Lowercase hex SHA-256: what the database keeps instead of a token or key.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

pub fn now_ms() -> i64 {
    // A clock before 1970 is a broken machine; treating it as the epoch keeps the hub up.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// RFC 3339 UTC with millisecond precision, e.g. `2025-01-02T03:04:05.678Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefixes_and_differ() {
        let a = new_agent_id().unwrap();
        assert!(a.starts_with("agt_") && a.len() == 24, "{a}");
        assert_ne!(a, new_agent_id().unwrap());
        assert!(new_enrollment_token().unwrap().expose().starts_with("et_"));
        assert!(new_api_key().unwrap().expose().starts_with("ehk_"));
    }

    #[test]
    fn job_ids_sort_by_creation_time_and_differ_within_a_millisecond() {
        let first = new_job_id();
        assert!(first.starts_with("job_") && first.len() == 36, "{first}");
        let created = i64::from_str_radix(&first[4..16], 16).unwrap();
        assert!((now_ms() - created).abs() < 60_000, "{first} does not start with the time");
        let same_instant: std::collections::HashSet<String> = (0..1000).map(|_| new_job_id()).collect();
        assert_eq!(same_instant.len(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = new_job_id();
        assert!(later > first && same_instant.iter().all(|id| *id < later), "{later} sorts before an older id");
    }

    #[test]
    fn hashes_and_timestamps_are_stable() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
