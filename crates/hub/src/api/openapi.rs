//! Owns the OpenAPI 3.1 document served at `/v1/openapi.json`. It is generated from the
//! handlers' `#[utoipa::path]` attributes and the body types' `ToSchema` derives, so a
//! changed handler or body changes the document; `tests/operating.rs` checks real answers
//! against it. It must never list an endpoint by hand that has no handler.
//!
//! A new operator endpoint joins the document by adding its handler to `paths(…)` below.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The `{"error","message"}` body of every 4xx/5xx answer (`edge_protocol::api::ApiError`).
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = ApiError)]
pub struct ErrorBody {
    /// A stable machine code, e.g. `bad_request`, `unauthorized`, `not_found`.
    pub error: String,
    /// A sentence for people, naming the field when a field is at fault.
    pub message: String,
}

// Shapes of answers the handlers build with `json!`: described here so the document is
// complete; `tests/operating.rs` checks the real answers against them, so they cannot drift.

/// `GET /v1/jobs` and `GET /v1/dead-letter`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobPage {
    pub jobs: Vec<super::jobs::JobView>,
    /// Pass as `before` for the next page; `null` on the last one.
    pub next_before: Option<String>,
}

/// `GET /v1/jobs/{id}/attempts`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptList {
    pub job_id: String,
    pub attempts: Vec<super::jobs::AttemptView>,
}

/// `GET /v1/agents`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<super::operator::AgentView>,
}

/// `/health`: `ok`/`ok`, or with 503 `error`/`unavailable` plus `error` and `message`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub database: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/jobs?sync=true` when the job did not succeed in time (502, 504).
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncOutcome {
    pub error: String,
    pub message: String,
    pub job_id: String,
    pub status: String,
    /// The job's error (502 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_error: Option<serde_json::Value>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Edge-Agent hub",
        description = "Operator API of the Edge-Agent hub. Authenticate with `Authorization: Bearer <api key>`."
    ),
    paths(
        super::jobs::submit_job,
        super::jobs::submit_batch,
        super::jobs::list_jobs,
        super::jobs::get_job,
        super::jobs::job_attempts,
        super::jobs::cancel_job,
        super::dead_letter::list_dead,
        super::dead_letter::start_redrive,
        super::dead_letter::get_redrive,
        super::creators::get_limits,
        super::creators::put_limits,
        super::recipients::list_uncertain,
        super::operator::list_agents,
        super::operator::health,
        super::console::metrics,
        super::console::openapi,
        super::prototype::submit,
    ),
    components(schemas(ErrorBody)),
    modifiers(&ApiKeyAuth),
    tags(
        (name = "jobs", description = "Submit, list and inspect jobs"),
        (name = "dead-letter", description = "Dead jobs and redrives"),
        (name = "creators", description = "Per-creator limits"),
        (name = "agents", description = "The fleet of creator machines"),
        (name = "operations", description = "Health, metrics and this document"),
        (name = "prototype", description = "The residential-proxy prototype's route, kept for its services"),
    )
)]
struct HubApi;

/// Declares the `api_key` bearer scheme the paths refer to.
struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some("An operator API key from `edge-hub api-key create` (`ehk_…`).".to_owned());
        components.add_security_scheme("api_key", SecurityScheme::Http(http));
        let header = ApiKey::Header(ApiKeyValue::with_description(
            "X-API-Key",
            "The same operator or creator API key, in the header the prototype's services send (`POST /jobs` only).",
        ));
        components.add_security_scheme("x_api_key", SecurityScheme::ApiKey(header));
    }
}

/// The document, with this build's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = HubApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}
