//! Session state: cookies and localStorage of a site, in Playwright's `storageState` JSON
//! shape, encrypted with AES-256-GCM (`ring`) under a key kept in the OS keychain.
//!
//! File: `<dir>/<adapter>.state` = `EDGESTATE1` ‖ 12-byte random nonce ‖ ciphertext ‖ tag,
//! with the adapter name as associated data (a file cannot be replayed under another
//! site's name). This module must never write the plaintext anywhere, never log a cookie or
//! a storage value, and never print the key (its `Debug` is `***`).

use crate::checkpoint::write_atomically;
use crate::error::BrowserError;
use crate::locator::Driver;
use chromiumoxide::cdp::browser_protocol::network::{CookieParam, GetCookiesParams, SetCookiesParams};
use chromiumoxide::cdp::browser_protocol::page::AddScriptToEvaluateOnNewDocumentParams;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"EDGESTATE1";

/// The 256-bit session key. Wiped on drop; never shown.
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SessionKey {
        SessionKey(bytes)
    }

    pub fn generate() -> Result<SessionKey, String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| "the OS random source failed".to_owned())?;
        Ok(SessionKey(bytes))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, BrowserError> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| BrowserError::Io("bad session key".into()))
    }
}

impl Clone for SessionKey {
    fn clone(&self) -> Self {
        SessionKey(self.0)
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away.
            // SAFETY: a valid, aligned &mut u8.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(***)")
    }
}

/// Playwright's `storageState`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageState {
    pub cookies: Vec<StateCookie>,
    pub origins: Vec<OriginState>,
}

impl std::fmt::Debug for StorageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageState")
            .field("cookies", &self.cookies.len())
            .field("origins", &self.origins.iter().map(|o| &o.origin).collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    /// Unix seconds; -1 for a session cookie.
    pub expires: f64,
    pub http_only: bool,
    pub secure: bool,
    /// `Strict`, `Lax` or `None`.
    pub same_site: String,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginState {
    pub origin: String,
    pub local_storage: Vec<NameValue>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// Encrypts `plaintext` for `site`.
pub fn seal(key: &SessionKey, site: &str, plaintext: &[u8]) -> Result<Vec<u8>, BrowserError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| BrowserError::Io("the OS random source failed".into()))?;
    let mut buffer = plaintext.to_vec();
    key.aead()?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(site.as_bytes()), &mut buffer)
        .map_err(|_| BrowserError::Io("encryption failed".into()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buffer.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buffer);
    Ok(out)
}

/// Decrypts what [`seal`] wrote for the same site and key.
pub fn open(key: &SessionKey, site: &str, sealed: &[u8]) -> Result<Vec<u8>, BrowserError> {
    let body = sealed.strip_prefix(MAGIC).ok_or_else(|| BrowserError::Io("not an Edge session state file".into()))?;
    if body.len() < NONCE_LEN + 16 {
        return Err(BrowserError::Io("session state file is truncated".into()));
    }
    let (nonce, ciphertext) = body.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| BrowserError::Io("bad nonce".into()))?;
    let mut buffer = ciphertext.to_vec();
    let plain = key
        .aead()?
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(site.as_bytes()), &mut buffer)
        .map_err(|_| {
            BrowserError::Io("session state does not decrypt with this key (another key, or tampered)".into())
        })?;
    Ok(plain.to_vec())
}

/// Encrypted session files of one profile.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    pub fn new(dir: PathBuf) -> SessionStore {
        SessionStore { dir }
    }

    pub fn path(&self, site: &str) -> PathBuf {
        self.dir.join(format!("{site}.state"))
    }

    pub fn save(&self, site: &str, key: &SessionKey, state: &StorageState) -> Result<(), BrowserError> {
        let plain = serde_json::to_vec(state).map_err(|e| BrowserError::Io(e.to_string()))?;
        let sealed = seal(key, site, &plain)?;
        write_atomically(&self.path(site), &sealed)?;
        Ok(())
    }

    /// `None` when there is no file yet.
    pub fn load(&self, site: &str, key: &SessionKey) -> Result<Option<StorageState>, BrowserError> {
        let path = self.path(site);
        let sealed = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let plain = open(key, site, &sealed)?;
        serde_json::from_slice(&plain).map(Some).map_err(|e| BrowserError::Io(format!("session state: {e}")))
    }

    pub fn exists(&self, site: &str) -> bool {
        Path::new(&self.path(site)).is_file()
    }
}

/// Reads the site's cookies and, when the page is on `origin`, its localStorage.
pub async fn capture(
    driver: &Driver,
    origin: &str,
    previous: Option<&StorageState>,
) -> Result<StorageState, BrowserError> {
    let params = GetCookiesParams::builder().url(format!("{origin}/")).build();
    let cookies = driver.page.execute(params).await.map_err(|e| BrowserError::from_cdp("reading cookies", e))?;
    let cookies = cookies
        .result
        .cookies
        .iter()
        .map(|c| {
            let raw = serde_json::to_value(c).unwrap_or_default();
            StateCookie {
                name: c.name.clone(),
                value: c.value.clone(),
                domain: c.domain.clone(),
                path: c.path.clone(),
                expires: if c.session { -1.0 } else { c.expires },
                http_only: c.http_only,
                secure: c.secure,
                same_site: raw.get("sameSite").and_then(|v| v.as_str()).unwrap_or("Lax").to_owned(),
            }
        })
        .collect();
    let here: String = driver.eval("location.origin").await.unwrap_or_default();
    let mut origins: Vec<OriginState> = previous.map(|p| p.origins.clone()).unwrap_or_default();
    if here == origin {
        let entries: Vec<(String, String)> =
            driver.eval("Object.keys(localStorage).map(k => [k, localStorage.getItem(k)])").await.unwrap_or_default();
        origins.retain(|o| o.origin != origin);
        origins.push(OriginState {
            origin: origin.to_owned(),
            local_storage: entries.into_iter().map(|(name, value)| NameValue { name, value }).collect(),
        });
    }
    Ok(StorageState { cookies, origins })
}

/// Puts a saved state into the page's (fresh) browser context before the flow starts:
/// cookies now, localStorage on the first document of each origin (keys the page already
/// has are left alone).
pub async fn restore(driver: &Driver, state: &StorageState) -> Result<(), BrowserError> {
    if !state.cookies.is_empty() {
        let params: Vec<CookieParam> = state
            .cookies
            .iter()
            .filter_map(|c| {
                let mut value = serde_json::json!({
                    "name": c.name, "value": c.value, "domain": c.domain, "path": c.path,
                    "secure": c.secure, "httpOnly": c.http_only, "sameSite": c.same_site,
                });
                if c.expires > 0.0 {
                    value["expires"] = serde_json::json!(c.expires);
                }
                serde_json::from_value(value).ok()
            })
            .collect();
        driver
            .page
            .execute(SetCookiesParams::new(params))
            .await
            .map_err(|e| BrowserError::from_cdp("restoring cookies", e))?;
    }
    for origin in &state.origins {
        if origin.local_storage.is_empty() {
            continue;
        }
        let entries: Vec<(&str, &str)> =
            origin.local_storage.iter().map(|nv| (nv.name.as_str(), nv.value.as_str())).collect();
        let source = format!(
            "(() => {{ if (location.origin !== {origin}) return; for (const [k, v] of {entries}) {{ if (localStorage.getItem(k) === null) localStorage.setItem(k, v); }} }})()",
            origin = serde_json::to_string(&origin.origin).unwrap_or_default(),
            entries = serde_json::to_string(&entries).unwrap_or_default(),
        );
        driver
            .page
            .execute(AddScriptToEvaluateOnNewDocumentParams::new(source))
            .await
            .map_err(|e| BrowserError::from_cdp("restoring localStorage", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_state_round_trips_and_is_bound_to_key_and_site() {
        let key = SessionKey::generate().unwrap();
        let sealed = seal(&key, "fanhub", b"{\"cookies\":[{\"value\":\"SECRET-COOKIE\"}]}").unwrap();
        assert!(!sealed.windows(13).any(|w| w == b"SECRET-COOKIE"));
        assert_eq!(open(&key, "fanhub", &sealed).unwrap(), b"{\"cookies\":[{\"value\":\"SECRET-COOKIE\"}]}");
        assert!(open(&key, "othersite", &sealed).is_err());
        assert!(open(&SessionKey::generate().unwrap(), "fanhub", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open(&key, "fanhub", &tampered).is_err());
        assert_eq!(format!("{key:?}"), "SessionKey(***)");
    }
}
