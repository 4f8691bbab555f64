//! Owns `GET /v1/creators/{id}/uncertain-recipients`: the dedupe ledger's uncertain entries,
//! messages an agent could not tell were delivered (a send cut by a crash on a site that
//! cannot be asked). The operator decides whether to message those people again; the hub
//! neither refuses them for the cool-off nor resends by itself. It must never show one
//! creator's recipients to another creator's key.

use super::{AppState, Caller, Failure};
use crate::crypto::rfc3339;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UncertainQuery {
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UncertainRecipientView {
    /// Normalised (trimmed, lower-case) as in the ledger.
    pub recipient: String,
    /// The job that perhaps messaged them.
    pub job_id: String,
    /// When the agent reported it (RFC 3339).
    pub reported_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UncertainRecipientList {
    pub creator_id: String,
    /// Newest first.
    pub recipients: Vec<UncertainRecipientView>,
}

#[utoipa::path(
    get, path = "/v1/creators/{id}/uncertain-recipients", tag = "creators", security(("api_key" = [])),
    params(
        ("id" = String, Path, description = "Creator id"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 100"),
    ),
    responses(
        (status = 200, description = "Recipients whose message may or may not have been delivered, newest first; the cool-off does not refuse them", body = UncertainRecipientList),
        (status = 400, description = "A query parameter is not valid", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 404, description = "Not this creator key's creator", body = super::openapi::ErrorBody),
    )
)]
pub async fn list_uncertain(
    State(app): State<AppState>,
    caller: Caller,
    Path(creator_id): Path<String>,
    query: Result<Query<UncertainQuery>, QueryRejection>,
) -> Result<Json<UncertainRecipientList>, Failure> {
    let Query(query) = query.map_err(|e| Failure::bad_request(format!("bad query string: {}", e.body_text())))?;
    if !caller.may_see(&creator_id) {
        return Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no creator {creator_id:?} on this hub")));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Failure::bad_request(format!("`limit` must be between 1 and {MAX_LIMIT}")));
    }
    let entries = app.store.uncertain_recipients(Some(&creator_id), limit).await?;
    let recipients = entries
        .into_iter()
        .map(|e| UncertainRecipientView {
            recipient: e.recipient,
            job_id: e.job_id,
            reported_at: rfc3339(e.reported_at),
        })
        .collect();
    Ok(Json(UncertainRecipientList { creator_id, recipients }))
}
