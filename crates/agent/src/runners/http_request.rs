//! The `http_request` job: one HTTP request from the creator's machine, answered with
//! status, headers and the body.
//!
//! Every hop goes through the egress gate (`crate::egress`): the gate resolves the hop's host
//! once, judges every address it got, and the hop's connection goes to exactly those
//! addresses. Redirects are followed here, not by reqwest, so that each hop is judged the same
//! way before anything connects to it.
//!
//! The response body is always returned base64 (`isBase64Encoded: true`), whatever its
//! content type: the hub and its callers get the exact bytes and never have to guess a
//! charset. Bodies are capped at [`MAX_RESPONSE_BODY_BYTES`] so the `job_result` frame fits
//! the protocol's 1 MiB frame limit after base64 (4/3) and JSON overhead.
//!
//! Errors: connection and TLS failures and too many redirects are `NETWORK`; the
//! `timeoutMs` deadline is `NAV_TIMEOUT`; a payload that does not describe a valid request is
//! `BAD_PAYLOAD`; an oversized body is `RESPONSE_TOO_LARGE` (fatal, retrying cannot help); a
//! destination the gate refuses is `EGRESS_DENIED`, a reached daily cap `EGRESS_CAP`.
//! This module must never log the URL, headers or bodies: they are the creator's data.

use crate::egress::{Allowance, Capability, EgressGate};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edge_protocol::jobs::{HttpRequestPayload, HttpResponseData};
use edge_protocol::{ErrorCode, JobError, JobSpec};
use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
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

/// The `http_request` runner, with the egress gate its connections pass.
pub struct HttpRequest {
    gate: EgressGate,
}

impl HttpRequest {
    pub fn new(gate: EgressGate) -> HttpRequest {
        HttpRequest { gate }
    }
}

impl super::Runner for HttpRequest {
    fn run<'a>(&'a self, job: &'a JobSpec, _context: super::RunContext) -> BoxFuture<'a, super::RunOutcome> {
        Box::pin(async move { super::RunOutcome::of(run(&self.gate, &job.payload).await) })
    }
}

/// One hop's request, kept so the next hop can be built from it.
struct Hop {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

pub async fn run(gate: &EgressGate, payload: &Value) -> Result<Value, JobError> {
    let narrowing = crate::egress::narrowing_of(payload).map_err(bad_payload)?;
    let (hop, deadline) = parse(payload)?;
    // One deadline for connect, redirects and the whole body, as the payload means it.
    match tokio::time::timeout(deadline, execute(gate, hop, narrowing.as_deref())).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(deadline)),
    }
}

/// The job as it ran before the egress gate existed: the same payload handling, response
/// reading and result, through one shared client that resolves names itself and follows
/// redirects itself. Only `cargo xtask bench egress` calls it, as the "without the gate"
/// side of its comparison; no job reaches it (the runner calls [`run`]).
pub async fn run_ungated_for_benchmark(client: &reqwest::Client, payload: &Value) -> Result<Value, JobError> {
    let (hop, deadline) = parse(payload)?;
    let exchange = async {
        let mut builder = client.request(hop.method, hop.url).headers(hop.headers);
        if let Some(body) = hop.body {
            builder = builder.body(body);
        }
        let response = builder.send().await.map_err(classify)?;
        let (headers, body, status_code) = read_response(response).await?;
        result(&headers, &body, status_code)
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(deadline)),
    }
}

/// The first hop and the job's deadline.
fn parse(payload: &Value) -> Result<(Hop, Duration), JobError> {
    let payload = HttpRequestPayload::deserialize(payload)
        .map_err(|e| bad_payload(format!("payload is not an http_request payload: {e}")))?;
    let hop = first_hop(&payload)?;
    Ok((hop, Duration::from_millis(payload.timeout_ms).min(MAX_TIMEOUT)))
}

fn result(headers: &HeaderMap, body: &[u8], status_code: u16) -> Result<Value, JobError> {
    let data = HttpResponseData {
        status_code,
        headers: flatten_headers(headers),
        body: BASE64.encode(body),
        is_base64_encoded: true,
    };
    serde_json::to_value(data).map_err(|e| JobError::new(ErrorCode::Internal, format!("result encoding failed: {e}")))
}

fn first_hop(payload: &HttpRequestPayload) -> Result<Hop, JobError> {
    let url = Url::parse(&payload.url).map_err(|e| bad_payload(format!("url is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad_payload(format!("url scheme {:?} is not http or https", url.scheme())));
    }
    let method = Method::from_bytes(payload.method.to_ascii_uppercase().as_bytes())
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
    let body = match &payload.body {
        Some(body) => Some(BASE64.decode(body).map_err(|e| bad_payload(format!("body is not base64: {e}")))?),
        None => None,
    };
    Ok(Hop { method, url, headers, body })
}

/// Bytes of a header block as sent or received (`name: value\r\n`), for the meter.
fn header_bytes(headers: &HeaderMap) -> u64 {
    headers.iter().map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64).sum()
}

async fn execute(gate: &EgressGate, mut hop: Hop, narrowing: Option<&[Allowance]>) -> Result<Value, JobError> {
    let mut redirects = 0;
    loop {
        let addresses = gate
            .admit_url(&hop.url, narrowing, false, Capability::HttpRequest)
            .await
            .map_err(|refusal| refusal.to_job_error())?;
        let http =
            gate.pinned_client(&hop.url, &addresses).map_err(|e| JobError::new(ErrorCode::Internal, e.to_string()))?;
        let mut builder = http.request(hop.method.clone(), hop.url.clone()).headers(hop.headers.clone());
        if let Some(body) = &hop.body {
            builder = builder.body(body.clone());
        }
        let request =
            builder.build().map_err(|e| bad_payload(format!("request cannot be built: {}", e.without_url())))?;
        let sent = header_bytes(request.headers())
            + hop.url.as_str().len() as u64
            + hop.body.as_ref().map_or(0, |b| b.len() as u64);
        let response = http.execute(request).await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                gate.record(Capability::HttpRequest, 0, sent);
                return Err(classify(e));
            }
        };
        if let Some(next) = redirect_target(&hop, &response) {
            gate.record(Capability::HttpRequest, header_bytes(response.headers()), sent);
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(JobError::new(ErrorCode::Network, format!("more than {MAX_REDIRECTS} redirects")));
            }
            hop = next;
            continue;
        }
        let result = read_response(response).await;
        let received = result.as_ref().map_or(0, |(headers, body, _)| header_bytes(headers) + body.len() as u64);
        gate.record(Capability::HttpRequest, received, sent);
        let (headers, body, status_code) = result?;
        return self::result(&headers, &body, status_code);
    }
}

/// The next hop of a redirect answer, the way browsers and reqwest follow one: 303 (and
/// 301/302 after a POST) becomes a GET without body; 307/308 keep method and body;
/// credentials are dropped when the origin changes. `None` when the answer is final
/// (no redirect status, or no usable `Location`, in which case the 3xx itself is the answer).
fn redirect_target(hop: &Hop, response: &reqwest::Response) -> Option<Hop> {
    let status = response.status();
    if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(reqwest::header::LOCATION)?.to_str().ok()?;
    let url = hop.url.join(location).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let mut headers = hop.headers.clone();
    let (method, body) = match status {
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => (hop.method.clone(), hop.body.clone()),
        StatusCode::SEE_OTHER if hop.method == Method::HEAD => (Method::HEAD, None),
        StatusCode::SEE_OTHER => (Method::GET, None),
        _ if hop.method == Method::POST => (Method::GET, None),
        _ => (hop.method.clone(), hop.body.clone()),
    };
    if body.is_none() {
        for name in [reqwest::header::CONTENT_TYPE, reqwest::header::CONTENT_LENGTH, reqwest::header::CONTENT_ENCODING]
        {
            headers.remove(name);
        }
    }
    if url.origin() != hop.url.origin() {
        for name in [reqwest::header::AUTHORIZATION, reqwest::header::COOKIE, reqwest::header::PROXY_AUTHORIZATION] {
            headers.remove(name);
        }
    }
    Some(Hop { method, url, headers, body })
}

async fn read_response(mut response: reqwest::Response) -> Result<(HeaderMap, Vec<u8>, u16), JobError> {
    let status_code = response.status().as_u16();
    let headers = response.headers().clone();
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
    Ok((headers, body, status_code))
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
