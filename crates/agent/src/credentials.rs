//! What an enrolled agent must remember (hub URL, agent id, creator id, Ed25519 device key)
//! and the [`CredentialStore`] seam where it is kept.
//!
//! This module owns the keychain JSON format `{hubUrl, agentId, creatorId, deviceKey}`.
//! It must never write credentials anywhere but a `CredentialStore`, and never give the
//! device key a `Debug`, `Display` or `Serialize` that shows it.

use crate::error::AgentError;
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The agent's Ed25519 identity. Only its public half ever leaves the process.
#[derive(Clone)]
pub struct DeviceKey(Secret<SigningKey>);

impl DeviceKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<DeviceKey, AgentError> {
        use rand::TryRngCore;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| AgentError::Internal(format!("the OS random source failed: {e}")))?;
        Ok(DeviceKey(Secret::new(SigningKey::from_bytes(&seed))))
    }

    pub fn from_seed_base64(seed: &str) -> Result<DeviceKey, String> {
        let bytes = BASE64.decode(seed.trim()).map_err(|e| format!("device key is not base64: {e}"))?;
        let seed: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| format!("device key is {} bytes, expected 32", b.len()))?;
        Ok(DeviceKey(Secret::new(SigningKey::from_bytes(&seed))))
    }

    pub fn seed_base64(&self) -> Secret<String> {
        Secret::new(BASE64.encode(self.0.expose().to_bytes()))
    }

    /// The public key as the hub wants it in `EnrollRequest`: 32 bytes, standard base64.
    pub fn public_key_base64(&self) -> String {
        BASE64.encode(self.0.expose().verifying_key().to_bytes())
    }

    /// Signature over `message`, standard base64.
    pub fn sign_base64(&self, message: &[u8]) -> String {
        BASE64.encode(self.0.expose().sign(message).to_bytes())
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeviceKey").field(&self.0).finish()
    }
}

/// Everything an enrolled agent needs to get tokens. `Debug` masks the key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub hub_url: String,
    pub agent_id: String,
    pub creator_id: String,
    pub device_key: DeviceKey,
}

/// The keychain entry's JSON. Lives only for the duration of a conversion.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeychainRecord {
    hub_url: String,
    agent_id: String,
    creator_id: String,
    device_key: String,
}

impl Credentials {
    /// The JSON stored in the keychain entry; it contains the device key, hence the wrapper.
    pub fn to_keychain_json(&self) -> Secret<String> {
        let record = KeychainRecord {
            hub_url: self.hub_url.clone(),
            agent_id: self.agent_id.clone(),
            creator_id: self.creator_id.clone(),
            device_key: self.device_key.seed_base64().expose().clone(),
        };
        // A struct of four strings always serialises.
        Secret::new(serde_json::to_string(&record).unwrap_or_default())
    }

    pub fn from_keychain_json(json: &str) -> Result<Credentials, String> {
        // serde_json's error names a position, never the content, so it is safe to show.
        let record: KeychainRecord = serde_json::from_str(json).map_err(|e| format!("not the expected JSON: {e}"))?;
        Ok(Credentials {
            device_key: DeviceKey::from_seed_base64(&record.device_key)?,
            hub_url: record.hub_url,
            agent_id: record.agent_id,
            creator_id: record.creator_id,
        })
    }
}

/// Where credentials are kept. The OS keychain ([`crate::keychain::Keychain`]) in
/// production; [`MemoryCredentialStore`] in tests and for embedders that manage storage
/// themselves. Methods may block (D-Bus, keychain prompts): call them off the async threads.
pub trait CredentialStore: Send + Sync {
    /// Short name of the backend for status output: `secret-service`, `kernel`, ...
    /// Resolving it may probe the system, so it can fail like any other call.
    fn backend_name(&self) -> Result<String, AgentError>;
    fn load(&self) -> Result<Option<Credentials>, AgentError>;
    fn save(&self, credentials: &Credentials) -> Result<(), AgentError>;
    /// Deleting what is not there is not an error.
    fn delete(&self) -> Result<(), AgentError>;
}

/// Keeps credentials in process memory only.
#[derive(Default)]
pub struct MemoryCredentialStore {
    stored: Mutex<Option<Credentials>>,
}

impl MemoryCredentialStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl CredentialStore for MemoryCredentialStore {
    fn backend_name(&self) -> Result<String, AgentError> {
        Ok("memory".to_owned())
    }

    fn load(&self) -> Result<Option<Credentials>, AgentError> {
        Ok(self.stored.lock().map_err(|_| poisoned())?.clone())
    }

    fn save(&self, credentials: &Credentials) -> Result<(), AgentError> {
        *self.stored.lock().map_err(|_| poisoned())? = Some(credentials.clone());
        Ok(())
    }

    fn delete(&self) -> Result<(), AgentError> {
        *self.stored.lock().map_err(|_| poisoned())? = None;
        Ok(())
    }
}

fn poisoned() -> AgentError {
    AgentError::Internal("credential store lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn keychain_json_round_trips_and_debug_hides_the_key() {
        let key = DeviceKey::generate().unwrap();
        let creds = Credentials {
            hub_url: "https://hub.example".into(),
            agent_id: "agt_1".into(),
            creator_id: "cr_1".into(),
            device_key: key.clone(),
        };
        let seed = key.seed_base64().expose().clone();
        assert!(!format!("{creds:?}").contains(&seed));
        assert!(format!("{creds:?}").contains("***"));
        assert_eq!(format!("{:?}", creds.to_keychain_json()), "***");

        let back = Credentials::from_keychain_json(creds.to_keychain_json().expose()).unwrap();
        assert_eq!(back.agent_id, "agt_1");
        assert_eq!(back.device_key.public_key_base64(), key.public_key_base64());
    }

    #[test]
    fn signatures_verify_with_the_published_public_key() {
        let key = DeviceKey::generate().unwrap();
        let message = edge_protocol::api::token_signing_message("agt_1", "nonce");
        let signature = key.sign_base64(&message);

        let public: [u8; 32] = BASE64.decode(key.public_key_base64()).unwrap().try_into().unwrap();
        let signature: [u8; 64] = BASE64.decode(signature).unwrap().try_into().unwrap();
        VerifyingKey::from_bytes(&public).unwrap().verify(&message, &Signature::from_bytes(&signature)).unwrap();
    }

    #[test]
    fn corrupt_records_fail_without_echoing_content() {
        let err =
            Credentials::from_keychain_json(r#"{"hubUrl":"h","agentId":"a","creatorId":"c","deviceKey":"c2VjcmV0"}"#)
                .unwrap_err();
        assert!(err.contains("expected 32"), "{err}");
        assert!(!err.contains("c2VjcmV0"));
    }
}
