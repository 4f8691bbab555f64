//! Streaming download of a verified bundle target: one pass that hashes while it writes,
//! never more bytes than the signed length, resumable with `Range` from a `.part` file, with
//! connect and read timeouts. It must never keep a file whose length and SHA-256 do not
//! match the metadata: a mismatch deletes the partial file.

use edge_bundle::codes;
use edge_bundle::verify::{FoundBundle, VerifyError};
use futures_util::StreamExt;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for metadata and targets: no overall timeout (a bundle may be large), but
/// connect and per-read timeouts.
pub fn client() -> Result<reqwest::Client, crate::AgentError> {
    crate::tls::hub_http_client_builder()?
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(crate::agent_version())
        .build()
        .map_err(|e| crate::AgentError::Internal(format!("HTTP client setup failed: {e}")))
}

fn network(message: String) -> VerifyError {
    VerifyError::new(edge_bundle::verify::NETWORK, message)
}

/// Downloads `found` from `url` into `<downloads>/<sha256>.zip` and returns that path.
pub async fn fetch(
    http: &reqwest::Client,
    auth: &super::HubAuth,
    url: &str,
    found: &FoundBundle,
    downloads: &Path,
) -> Result<PathBuf, VerifyError> {
    let signed = Signed { length: found.length, sha256: &found.sha256, extension: "zip", what: "bundle" };
    fetch_signed(http, auth, url, &signed, downloads).await
}

/// What the signed metadata says of a file to download (a bundle, an agent release).
pub struct Signed<'a> {
    pub length: u64,
    pub sha256: &'a str,
    /// Of the finished file, `<sha256>.<extension>`.
    pub extension: &'a str,
    /// For messages: "bundle", "update".
    pub what: &'a str,
}

/// Downloads `found` from `url` into `<downloads>/<sha256>.<extension>` and returns that
/// path; never keeps a file that is not exactly the signed length and SHA-256.
pub async fn fetch_signed(
    http: &reqwest::Client,
    auth: &super::HubAuth,
    url: &str,
    found: &Signed<'_>,
    downloads: &Path,
) -> Result<PathBuf, VerifyError> {
    let what = found.what;
    tokio::fs::create_dir_all(downloads).await.map_err(|e| {
        VerifyError::new(codes::BUNDLE_METADATA_INVALID, format!("cannot create {}: {e}", downloads.display()))
    })?;
    let done = downloads.join(format!("{}.{}", found.sha256, found.extension));
    let part = downloads.join(format!("{}.part", found.sha256));
    if tokio::fs::metadata(&done).await.is_ok_and(|m| m.len() == found.length) {
        // Already complete from an earlier job; hash again (cheap next to trusting a file).
        let (length, sha) = hash_existing(&done).await?;
        if length == found.length && sha == found.sha256 {
            return Ok(done);
        }
        let _ = tokio::fs::remove_file(&done).await;
    }
    let mut hasher = sha2::Sha256::new();
    let mut have: u64 = 0;
    if let Ok(meta) = tokio::fs::metadata(&part).await {
        if meta.len() <= found.length {
            // Resume: the bytes on disk are hashed once, the rest as it arrives.
            let (length, state) = hash_prefix(&part).await?;
            have = length;
            hasher = state;
        } else {
            let _ = tokio::fs::remove_file(&part).await;
        }
    }
    let mut request =
        auth.authorize(http.get(url)).await.map_err(|e| network(format!("cannot download the {what}: {e}")))?;
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let response = if have == found.length {
        None
    } else {
        Some(request.send().await.map_err(|e| {
            network(format!(
                "cannot download the {what}: {}",
                crate::hub_client::describe_reqwest_error(&e.without_url())
            ))
        })?)
    };
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&part).await.map_err(|e| {
        VerifyError::new(codes::BUNDLE_METADATA_INVALID, format!("cannot write {}: {e}", part.display()))
    })?;
    if let Some(response) = response {
        let status = response.status();
        if status == reqwest::StatusCode::OK && have > 0 {
            // The server ignored the range: start over.
            file.set_len(0).await.map_err(|e| network(e.to_string()))?;
            hasher = sha2::Sha256::new();
            have = 0;
        } else if !(status.is_success()) {
            return Err(network(format!("the hub answered {status} for the {what} file")));
        }
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                network(format!(
                    "{what} download interrupted: {}",
                    crate::hub_client::describe_reqwest_error(&e.without_url())
                ))
            })?;
            if have + chunk.len() as u64 > found.length {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(VerifyError::new(
                    codes::BUNDLE_TOO_LARGE,
                    format!("the hub sent more than the {} bytes the signed metadata allows", found.length),
                ));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| network(format!("cannot write the {what}: {e}")))?;
            have += chunk.len() as u64;
        }
    }
    file.sync_all().await.map_err(|e| network(format!("cannot write the {what}: {e}")))?;
    drop(file);
    let sha = hex::encode(hasher.finalize());
    if have != found.length || sha != found.sha256 {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(VerifyError::new(
            codes::BUNDLE_TAMPERED,
            format!(
                "the downloaded {what} ({have} bytes, sha256 {sha}) is not the signed one ({} bytes, sha256 {})",
                found.length, found.sha256
            ),
        ));
    }
    tokio::fs::rename(&part, &done).await.map_err(|e| network(format!("cannot keep the {what}: {e}")))?;
    Ok(done)
}

async fn hash_prefix(path: &Path) -> Result<(u64, sha2::Sha256), VerifyError> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| network(e.to_string()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buffer).await.map_err(|e| network(e.to_string()))?;
        if n == 0 {
            return Ok((length, hasher));
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
}

async fn hash_existing(path: &Path) -> Result<(u64, String), VerifyError> {
    let (length, hasher) = hash_prefix(path).await?;
    Ok((length, hex::encode(hasher.finalize())))
}
