//! Owns the hub's request rate limits (GCRA, `governor`): the agent credential exchanges
//! (`enroll`, `challenge`, `token`) per source address, and the job API per API key. Over
//! the limit a request is answered 429 with `Retry-After` before its handler runs. It must
//! never keep unbounded state (idle keys are forgotten) and never key on a raw API key:
//! keys are counted by their hash.

use super::{bearer_token, AppState};
use crate::crypto::sha256_hex;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_protocol::api::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

/// Past this many tracked keys, the ones whose budget is full again are forgotten.
const RETAIN_ABOVE: usize = 10_000;

/// Requests allowed, each also the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `enroll` + `challenge` + `token` per source address per minute. An agent logging in
    /// makes three; one refreshing its token, two.
    pub auth_per_minute_per_address: NonZeroU32,
    /// Job API requests (`/v1/jobs…`) per API key per second.
    pub jobs_per_second_per_key: NonZeroU32,
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits {
            auth_per_minute_per_address: NonZeroU32::new(120).expect("non-zero"),
            jobs_per_second_per_key: NonZeroU32::new(1000).expect("non-zero"),
        }
    }
}

pub struct Limiters {
    auth: DefaultKeyedRateLimiter<IpAddr>,
    jobs: DefaultKeyedRateLimiter<String>,
    limits: RateLimits,
}

impl Limiters {
    pub fn new(limits: RateLimits) -> Limiters {
        Limiters {
            auth: RateLimiter::keyed(Quota::per_minute(limits.auth_per_minute_per_address)),
            jobs: RateLimiter::keyed(Quota::per_second(limits.jobs_per_second_per_key)),
            limits,
        }
    }
}

/// Seconds until `limiter` lets `key` through, or `None` when it does now.
fn wait_secs<K: Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Option<u64> {
    if limiter.len() > RETAIN_ABOVE {
        limiter.retain_recent();
    }
    match limiter.check_key(key) {
        Ok(()) => None,
        // Rounded up: a client that waits exactly this long is let through.
        Err(not_until) => Some(not_until.wait_time_from(DefaultClock::default().now()).as_secs() + 1),
    }
}

fn too_many(retry_after: u64, message: String) -> Response {
    let mut response =
        (StatusCode::TOO_MANY_REQUESTS, Json(ApiError { error: "rate_limited".to_owned(), message })).into_response();
    if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Layer of the credential exchanges: per source address.
pub async fn per_address(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match wait_secs(&app.limiters.auth, &peer.ip()) {
        None => next.run(request).await,
        Some(secs) => {
            tracing::warn!(address = %peer.ip(), "credential requests over the rate limit");
            too_many(
                secs,
                format!(
                    "more than {} credential requests (enroll, challenge, token, device sign-in) a minute from this address; retry after {secs} s",
                    app.limiters.limits.auth_per_minute_per_address
                ),
            )
        }
    }
}

/// Layer of the job API: per API key (by its hash). Requests without a key pass to the
/// handler, which answers 401.
pub async fn per_key(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = bearer_token(request.headers()) else { return next.run(request).await };
    match wait_secs(&app.limiters.jobs, &sha256_hex(key)) {
        None => next.run(request).await,
        Some(secs) => too_many(
            secs,
            format!(
                "more than {} job API requests a second with this API key; retry after {secs} s",
                app.limiters.limits.jobs_per_second_per_key
            ),
        ),
    }
}
