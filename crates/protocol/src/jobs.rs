//! Payload and result shapes of the job types both sides know.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Job type names.
pub const HTTP_REQUEST: &str = "http_request";
pub const BUNDLE: &str = "bundle";

/// The optional `egress` key of any job's payload: a list of destinations
/// (`ADDRESS[/PREFIX][:PORT]`, for example `203.0.113.7:443` or `198.51.100.0/24`) the job
/// is limited to. It only narrows: a destination must pass the agent's own egress policy
/// *and* match this list; nothing here can open what the agent's person has not. Older
/// agents ignore it (an unknown payload key).
pub const EGRESS_FIELD: &str = "egress";

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

/// Payload of `bundle`: run a TUF-verified bundle of the agent's own tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundlePayload {
    /// Bundle slug.
    pub bundle: String,
    /// A semantic version, or `latest` (highest version without a pre-release tag).
    #[serde(default = "latest")]
    pub version: String,
    /// Arguments passed to the entry point.
    #[serde(default)]
    pub args: Vec<String>,
    /// The tenant whose bundle this is. The agent only runs its own tenant's bundles, so
    /// this may only repeat the agent's creator id; absent means that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Wall-clock limit of the run, default [`DEFAULT_BUNDLE_TIMEOUT_MS`].
    #[serde(default, rename = "timeoutMs", skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Job-scoped secrets, handed to the run as environment variables and masked in every
    /// log and output the agent keeps or sends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

fn latest() -> String {
    "latest".to_owned()
}

/// 10 minutes.
pub const DEFAULT_BUNDLE_TIMEOUT_MS: u64 = 600_000;
/// 24 hours.
pub const MAX_BUNDLE_TIMEOUT_MS: u64 = 86_400_000;

/// `data` of a finished `bundle` run that exited 0 (a non-zero exit is a `RUN_FAILED` error
/// whose full output is in the `/edge/notify` record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRunData {
    pub run_id: String,
    pub bundle: String,
    pub version: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Tails of the captured output (the whole capture is in `/edge/notify`).
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Browser job types (issue 5): flows the agent runs in the creator's own browser.
pub const SEND_DM: &str = "send_dm";
pub const BROADCAST_DM: &str = "broadcast_dm";
pub const SCHEDULE_POST: &str = "schedule_post";
pub const SCRAPE_SUBS: &str = "scrape_subs";
/// Every browser job type; the hub stops assigning these to an agent whose circuit breaker is open.
pub const BROWSER_JOB_TYPES: [&str; 4] = [SEND_DM, BROADCAST_DM, SCHEDULE_POST, SCRAPE_SUBS];
/// The browser job types that message people (checked against the hub's dedupe ledger).
pub const MESSAGE_JOB_TYPES: [&str; 2] = [SEND_DM, BROADCAST_DM];

/// Payload of the browser job types. `adapter` is a reference to a site adapter in a bundle
/// of the agent's tenant (`{"bundle": "name", "version": "latest", "path": "adapter.yaml"}`),
/// one of the person's local adapters (`{"local": "name"}`), or an inline site adapter (see
/// `docs/flows.md`), which an agent takes only when its person allowed inline adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserJobPayload {
    pub adapter: serde_json::Value,
    /// Flow parameters (`text`, `at`, `timeZone`, `media`, `maxPages`…).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Run up to, not including, the final submit actions: nothing is sent or scheduled.
    #[serde(default)]
    pub dry_run: bool,
    /// `send_dm`: who gets the message (top level, where the hub's dedupe ledger looks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// `broadcast_dm`: who gets the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// `broadcast_dm`: key of the per-recipient checkpoint; default the job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idem_key: Option<String>,
    /// Give up (`RATE_LIMITED` with `retryAfterMs`) when the local budget cannot start the
    /// job by then; Unix ms. Default: `timeoutMs` after the job arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A lower rate cap for this job; the agent never goes above its user's own cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BrowserRateCap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserRateCap {
    pub per_hour: u32,
    pub burst: u32,
}
