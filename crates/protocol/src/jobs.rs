//! Payload and result shapes of the job types both sides know.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Job type names.
pub const HTTP_REQUEST: &str = "http_request";

/// Payload of `http_request`, the proxy prototype's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequestPayload {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default = "default_timeout_ms", rename = "timeoutMs")]
    pub timeout_ms: u64,
}

fn default_method() -> String {
    "GET".to_owned()
}

/// 30 s, the prototype's default.
pub const DEFAULT_HTTP_TIMEOUT_MS: u64 = 30_000;

fn default_timeout_ms() -> u64 {
    DEFAULT_HTTP_TIMEOUT_MS
}

/// `data` of a successful `http_request` result. A non-2xx answer from the target site is
/// still a success of the job: the agent did what it was asked and reports the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpResponseData {
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    pub headers: BTreeMap<String, String>,
    /// Response body, base64 when `isBase64Encoded` is true, else UTF-8 text.
    pub body: String,
    #[serde(rename = "isBase64Encoded")]
    pub is_base64_encoded: bool,
}
