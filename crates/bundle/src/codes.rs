//! Error codes of every bundle refusal. They travel as `err.code` of a `job_result`
//! (`ErrorCode::Other`) and in `/edge/notify`, so they are part of the wire contract: never
//! rename one. All of them are fatal for the hub's retry rules except those marked retryable
//! in `docs/bundles.md` (network-level failures use the protocol's `NETWORK`).

/// No such bundle or version in the tenant's signed targets.
pub const BUNDLE_NOT_FOUND: &str = "BUNDLE_NOT_FOUND";
/// Metadata signatures do not reach the threshold of trusted keys (wrong key, forged file).
pub const BUNDLE_UNTRUSTED: &str = "BUNDLE_UNTRUSTED";
/// Some metadata is past its expiry: a freeze attack or a hub that stopped signing.
pub const BUNDLE_EXPIRED: &str = "BUNDLE_EXPIRED";
/// A metadata version went down compared to what this agent already saw.
pub const BUNDLE_ROLLBACK: &str = "BUNDLE_ROLLBACK";
/// Metadata files do not agree with each other (snapshot/timestamp/targets mix-and-match).
pub const BUNDLE_INCONSISTENT: &str = "BUNDLE_INCONSISTENT";
/// The downloaded bytes do not hash to the signed SHA-256 (or are shorter than signed).
pub const BUNDLE_TAMPERED: &str = "BUNDLE_TAMPERED";
/// The server sent more bytes than the signed length.
pub const BUNDLE_TOO_LARGE: &str = "BUNDLE_TOO_LARGE";
/// The job asked for another tenant's bundle, or a target sits outside its tenant's paths.
pub const TENANT_MISMATCH: &str = "TENANT_MISMATCH";
/// The bundle is built for another CPU architecture; refused before downloading.
pub const CPU_ARCH_MISMATCH: &str = "CPU_ARCH_MISMATCH";
/// The runtime the bundle needs does not exist on this machine (yet).
pub const RUNTIME_UNAVAILABLE: &str = "RUNTIME_UNAVAILABLE";
/// The agent has no trusted root.json (enrolled before bundles existed): log in again.
pub const TRUST_ROOT_MISSING: &str = "TRUST_ROOT_MISSING";
/// The repository metadata could not be read as TUF (not a transport problem).
pub const BUNDLE_METADATA_INVALID: &str = "BUNDLE_METADATA_INVALID";

/// Safe-unpack refusals.
pub const ZIP_ABSOLUTE_PATH: &str = "ZIP_ABSOLUTE_PATH";
pub const ZIP_PATH_TRAVERSAL: &str = "ZIP_PATH_TRAVERSAL";
pub const ZIP_SYMLINK: &str = "ZIP_SYMLINK";
pub const ZIP_SPECIAL_FILE: &str = "ZIP_SPECIAL_FILE";
pub const ZIP_DUPLICATE_ENTRY: &str = "ZIP_DUPLICATE_ENTRY";
pub const ZIP_TOO_MANY_FILES: &str = "ZIP_TOO_MANY_FILES";
pub const ZIP_TOO_LARGE: &str = "ZIP_TOO_LARGE";
pub const ZIP_BOMB: &str = "ZIP_BOMB";
pub const ZIP_INVALID: &str = "ZIP_INVALID";

/// Runs.
pub const RUN_FAILED: &str = "RUN_FAILED";
pub const RUN_TIMEOUT: &str = "RUN_TIMEOUT";
pub const RUN_SETUP_FAILED: &str = "RUN_SETUP_FAILED";
