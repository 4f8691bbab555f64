//! The OS keychain as a [`CredentialStore`]: one entry per profile (service `edge-agent`,
//! user = profile) holding the credentials JSON.
//!
//! This module owns choosing a backend (`--keychain auto|secret-service|kernel`) and turning
//! keychain failures into sentences that say what to install or run. OS specifics live in one
//! `platform` module per OS. It must never fall back to a plain file, and never put the
//! entry's content into an error or log line.

use crate::credentials::{CredentialStore, Credentials};
use crate::error::AgentError;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

#[cfg_attr(target_os = "linux", path = "linux.rs")]
#[cfg_attr(target_os = "macos", path = "macos.rs")]
#[cfg_attr(target_os = "windows", path = "windows.rs")]
#[cfg_attr(not(any(target_os = "linux", target_os = "macos", target_os = "windows")), path = "unsupported.rs")]
mod platform;

/// Keychain entry service name; the user name is the profile.
pub const KEYCHAIN_SERVICE: &str = "edge-agent";

/// What the person asked for (`--keychain`, `EDGE_AGENT_KEYCHAIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeychainChoice {
    /// Linux: Secret Service when a session bus is set and the service answers, else the
    /// kernel keyring. macOS: Keychain. Windows: Credential Manager.
    #[default]
    Auto,
    /// freedesktop Secret Service over D-Bus (gnome-keyring, KWallet). Linux only.
    SecretService,
    /// The Linux kernel keyring (keyutils); for servers without a session bus. Its entries
    /// do not survive a reboot.
    Kernel,
}

impl KeychainChoice {
    pub const NAMES: [&'static str; 3] = ["auto", "secret-service", "kernel"];

    pub fn as_str(self) -> &'static str {
        match self {
            KeychainChoice::Auto => "auto",
            KeychainChoice::SecretService => "secret-service",
            KeychainChoice::Kernel => "kernel",
        }
    }
}

impl FromStr for KeychainChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(KeychainChoice::Auto),
            "secret-service" | "secret_service" | "secretservice" => Ok(KeychainChoice::SecretService),
            "kernel" | "keyutils" => Ok(KeychainChoice::Kernel),
            other => Err(format!("unknown keychain {other:?}; expected one of auto, secret-service, kernel")),
        }
    }
}

impl fmt::Display for KeychainChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backend actually in use once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeychainBackend {
    SecretService,
    Kernel,
    MacosKeychain,
    WindowsCredentialManager,
}

impl KeychainBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            KeychainBackend::SecretService => "secret-service",
            KeychainBackend::Kernel => "kernel",
            KeychainBackend::MacosKeychain => "macos-keychain",
            KeychainBackend::WindowsCredentialManager => "windows-credential-manager",
        }
    }
}

impl fmt::Display for KeychainBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The OS keychain for one profile. Resolving `auto` probes D-Bus, so it happens on first
/// use (off the async threads, see [`CredentialStore`]) and is remembered.
pub struct Keychain {
    choice: KeychainChoice,
    profile: String,
    resolved: Mutex<Option<KeychainBackend>>,
}

impl Keychain {
    pub fn new(choice: KeychainChoice, profile: impl Into<String>) -> Keychain {
        Keychain { choice, profile: profile.into(), resolved: Mutex::new(None) }
    }

    pub fn backend(&self) -> Result<KeychainBackend, AgentError> {
        let mut resolved = self.resolved.lock().map_err(|_| AgentError::Internal("keychain lock poisoned".into()))?;
        if let Some(backend) = *resolved {
            return Ok(backend);
        }
        let backend = platform::resolve(self.choice, KEYCHAIN_SERVICE, &self.profile)?;
        tracing::debug!(choice = %self.choice, backend = %backend, "keychain backend chosen");
        *resolved = Some(backend);
        Ok(backend)
    }

    fn entry(&self) -> Result<(KeychainBackend, keyring::Entry), AgentError> {
        let backend = self.backend()?;
        let entry = platform::entry(backend, KEYCHAIN_SERVICE, &self.profile).map_err(|e| unavailable(backend, &e))?;
        Ok((backend, entry))
    }
}

impl CredentialStore for Keychain {
    fn backend_name(&self) -> Result<String, AgentError> {
        Ok(self.backend()?.as_str().to_owned())
    }

    fn load(&self) -> Result<Option<Credentials>, AgentError> {
        let (backend, entry) = self.entry()?;
        match entry.get_password() {
            Ok(json) => Credentials::from_keychain_json(&json)
                .map(Some)
                .map_err(|reason| AgentError::CorruptCredentials { profile: self.profile.clone(), reason }),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(keyring::Error::BadEncoding(_)) => Err(AgentError::CorruptCredentials {
                profile: self.profile.clone(),
                reason: "the entry is not UTF-8".into(),
            }),
            Err(keyring::Error::Ambiguous(found)) => Err(AgentError::CorruptCredentials {
                profile: self.profile.clone(),
                reason: format!("{} entries match service {KEYCHAIN_SERVICE:?}", found.len()),
            }),
            Err(e) => Err(unavailable(backend, &e)),
        }
    }

    fn save(&self, credentials: &Credentials) -> Result<(), AgentError> {
        let (backend, entry) = self.entry()?;
        entry.set_password(credentials.to_keychain_json().expose()).map_err(|e| unavailable(backend, &e))
    }

    /// Logging out forgets everything the profile keeps in the keychain: its credentials and
    /// the browser session key (without which the saved, encrypted browser session is
    /// unreadable, which is the point).
    fn delete(&self) -> Result<(), AgentError> {
        self.delete_secret(BROWSER_KEY_SERVICE)?;
        self.delete_secret(KEYCHAIN_SERVICE)
    }
}

/// Service name of the second keychain entry of a profile: the browser session key.
pub const BROWSER_KEY_SERVICE: &str = "edge-agent-browser";

impl Keychain {
    /// Reads a secret kept beside the credentials, in entry (`service`, profile). `None`
    /// when there is none. The value never leaves through an error or a log line.
    pub fn read_secret(&self, service: &str) -> Result<Option<crate::Secret<String>>, AgentError> {
        let backend = self.backend()?;
        let entry = platform::entry(backend, service, &self.profile).map_err(|e| unavailable(backend, &e))?;
        match entry.get_password() {
            Ok(value) => Ok(Some(crate::Secret::new(value))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(unavailable(backend, &e)),
        }
    }

    pub fn write_secret(&self, service: &str, value: &crate::Secret<String>) -> Result<(), AgentError> {
        let backend = self.backend()?;
        let entry = platform::entry(backend, service, &self.profile).map_err(|e| unavailable(backend, &e))?;
        entry.set_password(value.expose()).map_err(|e| unavailable(backend, &e))
    }

    pub fn delete_secret(&self, service: &str) -> Result<(), AgentError> {
        let backend = self.backend()?;
        let entry = platform::entry(backend, service, &self.profile).map_err(|e| unavailable(backend, &e))?;
        match entry.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(unavailable(backend, &e)),
        }
    }
}

fn unavailable(backend: KeychainBackend, error: &keyring::Error) -> AgentError {
    AgentError::KeychainUnavailable(platform::failure(backend, error))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::credentials::DeviceKey;

    fn sample(profile: &str) -> Credentials {
        Credentials {
            hub_url: "https://hub.example".into(),
            agent_id: format!("agt-{profile}"),
            creator_id: "cr-1".into(),
            device_key: DeviceKey::generate().unwrap(),
        }
    }

    fn round_trip(keychain: &Keychain, profile: &str) {
        keychain.delete().unwrap();
        assert!(keychain.load().unwrap().is_none());
        let creds = sample(profile);
        keychain.save(&creds).unwrap();
        let loaded = keychain.load().unwrap().expect("stored entry");
        assert_eq!(loaded.agent_id, creds.agent_id);
        assert_eq!(loaded.device_key.public_key_base64(), creds.device_key.public_key_base64());
        keychain.write_secret(BROWSER_KEY_SERVICE, &crate::Secret::new("browser-key".to_owned())).unwrap();
        assert!(keychain.read_secret(BROWSER_KEY_SERVICE).unwrap().is_some());
        keychain.delete().unwrap();
        assert!(keychain.load().unwrap().is_none());
        assert!(keychain.read_secret(BROWSER_KEY_SERVICE).unwrap().is_none(), "logout must forget the browser key");
        keychain.delete().unwrap();
    }

    /// Required (a failure, not a skip) under `cargo xtask test` (`EDGE_TEST_KERNEL_KEYRING=1`)
    /// and in CI: the kernel keyring is what headless servers and the demo use.
    #[test]
    fn keychain_kernel_round_trip() {
        let profile = format!("test-kernel-{}", std::process::id());
        let keychain = Keychain::new(KeychainChoice::Kernel, &profile);
        match keychain.backend() {
            Ok(backend) => assert_eq!(backend, KeychainBackend::Kernel),
            Err(e) if kernel_keyring_required() => {
                panic!("EDGE_TEST_KERNEL_KEYRING=1 (or CI) requires the kernel keyring, and it is not usable here: {e}")
            }
            Err(e) => {
                println!("SKIPPED: the kernel keyring is not usable here ({e}); EDGE_TEST_KERNEL_KEYRING=1 makes this a failure");
                return;
            }
        }
        round_trip(&keychain, &profile);
    }

    fn kernel_keyring_required() -> bool {
        std::env::var("EDGE_TEST_KERNEL_KEYRING").as_deref() == Ok("1") || std::env::var_os("CI").is_some()
    }

    /// Needs a session bus with an unlocked Secret Service, e.g.
    /// `dbus-run-session -- sh -c 'echo -n test | gnome-keyring-daemon --unlock --components=secrets; EDGE_TEST_SECRET_SERVICE=1 cargo test -p edge-agent keychain'`.
    #[test]
    fn keychain_secret_service_round_trip() {
        if std::env::var("EDGE_TEST_SECRET_SERVICE").as_deref() != Ok("1") {
            println!("skipped: set EDGE_TEST_SECRET_SERVICE=1 inside a D-Bus session with gnome-keyring");
            return;
        }
        let profile = format!("test-ss-{}", std::process::id());
        let keychain = Keychain::new(KeychainChoice::SecretService, &profile);
        assert_eq!(keychain.backend().unwrap(), KeychainBackend::SecretService);
        round_trip(&keychain, &profile);
        // With a session bus and a working service, auto must pick it.
        assert_eq!(Keychain::new(KeychainChoice::Auto, &profile).backend().unwrap(), KeychainBackend::SecretService);
    }

    #[test]
    fn choice_parses_the_cli_spellings() {
        for name in KeychainChoice::NAMES {
            assert_eq!(name.parse::<KeychainChoice>().unwrap().as_str(), name);
        }
        assert!("vault".parse::<KeychainChoice>().unwrap_err().contains("auto, secret-service, kernel"));
    }
}
