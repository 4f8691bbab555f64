//! The `http_request` job: one HTTP request from the creator's machine, answered with
//! status, headers and the body.
//!
//! The response body is always returned base64 (`isBase64Encoded: true`), whatever its
//! content type: the hub and its callers get the exact bytes and never have to guess a
//! charset. Bodies are capped at [`MAX_RESPONSE_BODY_BYTES`] so the `job_result` frame fits
//! the protocol's 1 MiB frame limit after base64 (4/3) and JSON overhead.
//!
//! Errors: connection and TLS failures and too many redirects are `NETWORK`; the
//! `timeoutMs` deadline is `NAV_TIMEOUT`; a payload that does not describe a valid request is
//! `BAD_PAYLOAD`; an oversized body is `RESPONSE_TOO_LARGE` (fatal, retrying cannot help).
//! This module must never log the URL, headers or bodies: they are the creator's data.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edge_protocol::jobs::{HttpRequestPayload, HttpResponseData};
use edge_protocol::{ErrorCode, JobError, JobSpec};
use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// 640 KiB of body is ~853 KiB of base64: room for headers under the 1 MiB frame limit.
pub const MAX_RESPONSE_BODY_BYTES: usize = 640 * 1024;
pub const MAX_REDIRECTS: usize = 10;
/// The longest `timeoutMs` honoured; a job holding a slot for longer is a payload bug.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 60);

pub fn response_too_large_code() -> ErrorCode {
    ErrorCode::Other("RESPONSE_TOO_LARGE".to_owned())
}

/// The `http_request` runner, with the HTTP client it is handed.
pub struct HttpRequest {
    http: reqwest::Client,
}

impl HttpRequest {
    pub fn new(http: reqwest::Client) -> HttpRequest {
        HttpRequest { http }
    }
}

impl super::Runner for HttpRequest {
    fn run<'a>(&'a self, job: &'a JobSpec, _context: super::RunContext) -> BoxFuture<'a, super::RunOutcome> {
        Box::pin(async move { super::RunOutcome::of(run(&self.http, &job.payload).await) })
    }
}

/// The client `http_request` jobs use: redirects followed up to [`MAX_REDIRECTS`].
pub fn client() -> Result<reqwest::Client, crate::AgentError> {
    crate::tls::http_client_builder()?
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(crate::agent_version())
        .build()
        .map_err(|e| crate::AgentError::Internal(format!("HTTP client setup failed: {e}")))
}

pub async fn run(http: &reqwest::Client, payload: &Value) -> Result<Value, JobError> {
    let payload: HttpRequestPayload = serde_json::from_value(payload.clone())
        .map_err(|e| bad_payload(format!("payload is not an http_request payload: {e}")))?;
    let request = build_request(http, &payload)?;
    let deadline = Duration::from_millis(payload.timeout_ms).min(MAX_TIMEOUT);
    // One deadline for connect, redirects and the whole body, as the payload means it.
    match tokio::time::timeout(deadline, execute(http, request)).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(deadline)),
    }
}

fn build_request(http: &reqwest::Client, payload: &HttpRequestPayload) -> Result<reqwest::Request, JobError> {
    let url = reqwest::Url::parse(&payload.url).map_err(|e| bad_payload(format!("url is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad_payload(format!("url scheme {:?} is not http or https", url.scheme())));
    }
    let method = reqwest::Method::from_bytes(payload.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| bad_payload(format!("method {:?} is not an HTTP method", payload.method)))?;
    if payload.timeout_ms == 0 {
        return Err(bad_payload("timeoutMs must be greater than 0".into()));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &payload.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad_payload(format!("header name {name:?} is not valid")))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| bad_payload(format!("header {name} has an invalid value")))?;
        headers.append(name, value);
    }
    let mut builder = http.request(method, url).headers(headers);
    if let Some(body) = &payload.body {
        let bytes = BASE64.decode(body).map_err(|e| bad_payload(format!("body is not base64: {e}")))?;
        builder = builder.body(bytes);
    }
    builder.build().map_err(|e| bad_payload(format!("request cannot be built: {}", e.without_url())))
}

async fn execute(http: &reqwest::Client, request: reqwest::Request) -> Result<Value, JobError> {
    let mut response = http.execute(request).await.map_err(classify)?;
    let status_code = response.status().as_u16();
    let headers = flatten_headers(response.headers());
    if let Some(declared) = response.content_length() {
        if declared > MAX_RESPONSE_BODY_BYTES as u64 {
            return Err(too_large(declared));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BODY_BYTES {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    let data = HttpResponseData { status_code, headers, body: BASE64.encode(&body), is_base64_encoded: true };
    serde_json::to_value(data).map_err(|e| JobError::new(ErrorCode::Internal, format!("result encoding failed: {e}")))
}

/// Repeated headers are joined with ", " (RFC 9110 §5.3), except `set-cookie`, whose
/// values may contain commas and are joined with "\n".
fn flatten_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut flat: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let separator = if name == reqwest::header::SET_COOKIE { "\n" } else { ", " };
        flat.entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(separator);
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    flat
}

fn classify(error: reqwest::Error) -> JobError {
    if error.is_timeout() {
        return JobError::new(ErrorCode::NavTimeout, "the request timed out");
    }
    if error.is_redirect() {
        return JobError::new(ErrorCode::Network, format!("more than {MAX_REDIRECTS} redirects"));
    }
    if error.is_builder() {
        return bad_payload(crate::hub_client::describe_reqwest_error(&error.without_url()));
    }
    JobError::new(ErrorCode::Network, crate::hub_client::describe_reqwest_error(&error.without_url()))
}

fn bad_payload(message: String) -> JobError {
    JobError::new(ErrorCode::BadPayload, message)
}

fn timed_out(deadline: Duration) -> JobError {
    JobError::new(ErrorCode::NavTimeout, format!("no complete answer within {} ms", deadline.as_millis()))
}

fn too_large(size: u64) -> JobError {
    JobError::new(
        response_too_large_code(),
        format!("response body of {size} bytes or more is over the {MAX_RESPONSE_BODY_BYTES}-byte limit"),
    )
}
