//! What a bundle's TUF target says about it beyond length and hash: the runtime, the CPU
//! architecture, the entry point, and the seed manifest fields (`edge_url`, `sha256`,
//! `signature`, `version`). Lives in the target's `custom` object, so it is covered by the
//! tenant role's signature. It must never be read from anywhere but verified metadata.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a bundle is run on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `sh` on Unix, PowerShell on Windows.
    Shell,
    /// A venv per bundle version; dependencies only from the bundle's `wheelhouse/`.
    Python,
    /// A native binary built for the declared `cpu_arch`.
    Exec,
    /// A flow file for the browser runtime (not available yet).
    Browser,
    /// AutoHotkey, Windows only.
    Ahk,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Shell => "shell",
            Runtime::Python => "python",
            Runtime::Exec => "exec",
            Runtime::Browser => "browser",
            Runtime::Ahk => "ahk",
        }
    }

    /// The entry point used when publishing does not name one.
    pub fn default_entrypoint(self) -> &'static str {
        match self {
            Runtime::Shell => "main.sh",
            Runtime::Python => "main.py",
            Runtime::Exec => "main",
            Runtime::Browser => "flow.json",
            Runtime::Ahk => "main.ahk",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Runtime, String> {
        // The prototype called the browser runtime after its engine.
        match s.trim().to_ascii_lowercase().as_str() {
            "shell" | "sh" => Ok(Runtime::Shell),
            "python" => Ok(Runtime::Python),
            "exec" => Ok(Runtime::Exec),
            "browser" | "playwright" => Ok(Runtime::Browser),
            "ahk" => Ok(Runtime::Ahk),
            other => Err(format!("unknown runtime {other:?}: expected shell, python, exec, browser or ahk")),
        }
    }
}

/// A CPU architecture in Rust's `std::env::consts::ARCH` spelling, or `any` for bundles
/// that carry no native code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CpuArch(pub String);

impl CpuArch {
    pub const ANY: &'static str = "any";

    pub fn any() -> CpuArch {
        CpuArch(Self::ANY.to_owned())
    }

    pub fn host() -> CpuArch {
        CpuArch(std::env::consts::ARCH.to_owned())
    }

    /// Normalises common aliases (`amd64`, `arm64`) to Rust's names.
    pub fn parse(value: &str) -> Result<CpuArch, String> {
        let v = value.trim().to_ascii_lowercase();
        let v = match v.as_str() {
            "amd64" | "x64" => "x86_64".to_owned(),
            "arm64" => "aarch64".to_owned(),
            _ => v,
        };
        if v.is_empty() || v.len() > 32 || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("cpu_arch {value:?} is not an architecture name like x86_64 or aarch64"));
        }
        Ok(CpuArch(v))
    }

    pub fn runs_on(&self, host: &CpuArch) -> bool {
        self.0 == Self::ANY || self.0 == host.0
    }
}

impl fmt::Display for CpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `custom` object of a bundle target. Field names are the seed's (snake_case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMeta {
    pub tenant: String,
    pub name: String,
    pub version: String,
    pub runtime: Runtime,
    pub cpu_arch: CpuArch,
    /// Path inside the bundle, `/`-separated, relative.
    pub entrypoint: String,
    /// Where the seed's tools download the zip (the hub's consistent target URL path).
    pub edge_url: String,
    /// Lower-case hex SHA-256 of the zip; equal to the TUF target hash.
    pub sha256: String,
    /// Ed25519 signature, base64, by the tenant's targets key over [`manifest_signing_message`].
    pub signature: String,
}

/// The bytes the tenant key signs for the seed manifest's `signature`. Domain-separated so
/// the signature cannot be replayed as anything else.
pub fn manifest_signing_message(meta: &BundleMeta) -> Vec<u8> {
    format!(
        "edge-bundle/manifest/v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        meta.tenant, meta.name, meta.version, meta.runtime, meta.cpu_arch, meta.entrypoint, meta.sha256
    )
    .into_bytes()
}

/// The seed's `manifest.json` shape, served for tools that expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestView {
    pub edge_url: String,
    pub sha256: String,
    pub runtime: Runtime,
    pub cpu_arch: CpuArch,
    pub version: String,
    pub signature: String,
    pub entrypoint: String,
    pub length: u64,
}

impl ManifestView {
    pub fn new(meta: &BundleMeta, length: u64) -> ManifestView {
        ManifestView {
            edge_url: meta.edge_url.clone(),
            sha256: meta.sha256.clone(),
            runtime: meta.runtime,
            cpu_arch: meta.cpu_arch.clone(),
            version: meta.version.clone(),
            signature: meta.signature.clone(),
            entrypoint: meta.entrypoint.clone(),
            length,
        }
    }
}

/// Checks an entry point: relative, `/`-separated, no `..`, no empty or dot components.
pub fn validate_entrypoint(entrypoint: &str) -> Result<(), String> {
    let bad = || format!("entrypoint {entrypoint:?} must be a relative path inside the bundle, like bin/run");
    if entrypoint.is_empty() || entrypoint.len() > 512 || entrypoint.starts_with('/') || entrypoint.contains('\\') {
        return Err(bad());
    }
    if entrypoint.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.contains(':')) {
        return Err(bad());
    }
    Ok(())
}
