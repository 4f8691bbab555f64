//! Owns the operating surface of the hub: `/metrics`, the OpenAPI document at `/v1/openapi.json`, and the operator
//! page itself (static files under `/ui/`, compiled into the binary).
//!
//! It must never change the queue: every handler here only reads. The page's files carry
//! no credential; the page asks the person for an operator API key and keeps it in the
//! tab's sessionStorage.

use super::{AppState, Failure};
use crate::crypto::now_ms;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// How long a scrape waits for the dispatcher's count of live sessions.
const CONNECTED_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Prometheus metrics (text exposition format 0.0.4). No ids in labels.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer", body = super::openapi::ErrorBody),
    )
)]
pub async fn metrics(State(app): State<AppState>) -> Response {
    // Gauges come from the store at scrape time, so every instance reports the shared queue.
    let queues = match app.store.queue_depths().await {
        Ok(queues) => queues,
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot read queue statistics");
            return Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "cannot read the queue for metrics; see the hub's log",
            )
            .into_response();
        }
    };
    // The dispatcher answers between passes; a scrape must not wait behind a busy queue.
    let connected = tokio::time::timeout(CONNECTED_WAIT, app.dispatcher.online_agents()).await.ok().map(|a| a.len());
    let body = crate::metrics::install().render(&queues, connected, now_ms());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| super::openapi::document().to_json().unwrap_or_else(|_| "{}".to_owned()));
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], doc.clone()).into_response()
}

// The operator page: plain files, no build step, compiled in so the hub stays one binary.
const UI_INDEX: &str = include_str!("../../ui/index.html");
const UI_SCRIPT: &str = include_str!("../../ui/app.js");
const UI_STYLE: &str = include_str!("../../ui/app.css");

pub async fn ui_root() -> Redirect {
    Redirect::permanent("/ui/")
}

pub async fn ui_index() -> Response {
    static_file("text/html; charset=utf-8", UI_INDEX)
}

pub async fn ui_script() -> Response {
    static_file("text/javascript; charset=utf-8", UI_SCRIPT)
}

pub async fn ui_style() -> Response {
    static_file("text/css; charset=utf-8", UI_STYLE)
}

pub(super) fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The page only talks to this hub; nothing from elsewhere may run in it.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
