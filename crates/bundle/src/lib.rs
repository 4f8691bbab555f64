//! Trusted bundles: what the hub and the agent must agree on so that code only runs when it
//! provably comes from the creator's tenant, unmodified, current and meant for the machine.
//!
//! This crate owns the bundle naming rules ([`names`]), the custom metadata of a bundle's TUF
//! target and the seed `manifest.json` view ([`manifest`]), building and signing the TUF
//! repository on the hub ([`repo`]) and each tenant's view of it ([`view`]), verifying it on
//! the agent through `tough` ([`verify`]), agent releases per channel ([`release`]), the
//! safe unzip ([`unpack`]) and the error codes
//! of every refusal ([`codes`]).
//!
//! It must never do network I/O (the agent brings its own `tough::Transport`), never trust
//! anything in a bundle before `verify` accepted the metadata and the bytes matched it, and
//! never write outside the directory it was asked to unpack into.

pub mod codes;
pub mod manifest;
pub mod names;
pub mod release;
pub mod repo;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod unpack;
pub mod verify;
pub mod view;

/// The `tough` this crate verifies with, for callers that implement its `Transport`.
pub use tough;

pub use manifest::{BundleMeta, CpuArch, ManifestView, Runtime};
pub use names::{BundleRef, NameError};

/// `sha256` of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
