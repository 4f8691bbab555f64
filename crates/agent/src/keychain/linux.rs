//! Linux keychains: Secret Service over the session D-Bus (`keyring`'s zbus client, no C
//! library), or the kernel keyring ([`kernel`], our own store on `linux-keyutils`).

#[path = "kernel.rs"]
mod kernel;

use super::{KeychainBackend, KeychainChoice};
use crate::error::AgentError;
use keyring::secret_service::SsCredential;
use keyring::Entry;

use kernel::KernelCredential;

const SECRET_SERVICE_REMEDY: &str = "no Secret Service with an unlocked default (login) keyring answered on the session bus: install gnome-keyring and create or unlock the login keyring \
     (`gnome-keyring-daemon --unlock`), or use --keychain kernel";

pub(super) fn resolve(choice: KeychainChoice, service: &str, user: &str) -> Result<KeychainBackend, AgentError> {
    match choice {
        KeychainChoice::SecretService => {
            probe_secret_service(service, user).map_err(AgentError::KeychainUnavailable)?;
            Ok(KeychainBackend::SecretService)
        }
        KeychainChoice::Kernel => {
            probe_kernel(service, user).map_err(AgentError::KeychainUnavailable)?;
            Ok(KeychainBackend::Kernel)
        }
        KeychainChoice::Auto => {
            let secret_service = probe_secret_service(service, user);
            match secret_service {
                Ok(()) => Ok(KeychainBackend::SecretService),
                Err(why_not) => {
                    tracing::info!(reason = %why_not, "Secret Service not usable, using the kernel keyring");
                    probe_kernel(service, user).map_err(|kernel| {
                        AgentError::KeychainUnavailable(format!("no keychain is usable. {why_not}. {kernel}"))
                    })?;
                    Ok(KeychainBackend::Kernel)
                }
            }
        }
    }
}

pub(super) fn entry(backend: KeychainBackend, service: &str, user: &str) -> keyring::Result<Entry> {
    match backend {
        KeychainBackend::Kernel => Ok(Entry::new_with_credential(Box::new(KernelCredential::new(service, user)))),
        _ => Ok(Entry::new_with_credential(Box::new(SsCredential::new_with_target(None, service, user)?))),
    }
}

/// The sentence for a failed keychain call: the kernel store's errors already say what
/// happened and what to do; Secret Service errors get the general advice.
pub(super) fn failure(backend: KeychainBackend, error: &keyring::Error) -> String {
    if let keyring::Error::PlatformFailure(inner) = error {
        if let Some(kernel) = inner.downcast_ref::<kernel::KernelKeyringError>() {
            return kernel.to_string();
        }
    }
    match backend {
        KeychainBackend::Kernel => format!("kernel keyring failed ({error})"),
        _ => format!("{backend} keychain failed ({error}): {SECRET_SERVICE_REMEDY}"),
    }
}

/// A lookup of our own entry: "found" and "no such entry" both prove the service answers.
fn probe_secret_service(service: &str, user: &str) -> Result<(), String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|v| v.is_empty()) {
        return Err(format!("DBUS_SESSION_BUS_ADDRESS is not set; {SECRET_SERVICE_REMEDY}"));
    }
    let probe = entry(KeychainBackend::SecretService, service, user).and_then(|entry| entry.get_password());
    match probe {
        Ok(_) | Err(keyring::Error::NoEntry) => Ok(()),
        // Several matching items still means the service answered; `load` reports the mess.
        Err(keyring::Error::Ambiguous(_)) | Err(keyring::Error::BadEncoding(_)) => Ok(()),
        Err(e) => Err(format!("Secret Service failed ({e}); {SECRET_SERVICE_REMEDY}")),
    }
}

/// The keyctl calls work and this user's persistent and user keyrings answer. The entry
/// itself is not read here: a revoked or forbidden entry is `load`'s error to report.
fn probe_kernel(service: &str, user: &str) -> Result<(), String> {
    KernelCredential::new(service, user).probe().map_err(|e| e.to_string())
}
