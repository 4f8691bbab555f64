//! The Edge-Agent wire protocol, shared by the agent and the hub so the two cannot drift.
//!
//! This crate owns the JSON shape of every WebSocket frame and every HTTP request/response
//! body the agent and hub exchange, plus the error taxonomy and its retry rules.
//! It must never do I/O: no sockets, no files, no clocks. Both sides decode through
//! [`codec`] so size limits and unknown-frame handling are identical everywhere.
//!
//! Compatibility: the frames of the original prototype (`job_assign`, `hb`, `hb_ack`,
//! `job_ack`, `job_result`, `circuit_breaker`) keep their exact JSON. Everything added
//! since is announced through the `hello` exchange ([`PROTOCOL_VERSION`]); a peer that
//! never says `hello` is a version-0 (prototype) peer and is spoken to in version-0 frames only.

pub mod api;
pub mod codec;
pub mod errors;
pub mod frames;
pub mod jobs;

pub use codec::{
    check_payload, decode_agent_frame, decode_hub_frame, encode, job_assign_id, FrameError, PayloadError,
    MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH,
};
pub use errors::{ErrorCode, JobError, RetryPolicy};
pub use frames::{
    AgentFrame, Availability, CircuitReason, HubFrame, HubLimits, JobSpec, JobStatus, LogStream, ProtocolErrorFrame,
};

/// Protocol version this build speaks. Version 0 is the prototype (no `hello`).
/// Version 1 adds `hello`/`hello_ack`, `job_progress`, `job_cancel`, `availability` and `error`.
/// Version 2 adds `job_log` (agent → hub output chunks of `bundle` jobs).
pub const PROTOCOL_VERSION: u32 = 2;

/// First version in which an agent may send `job_log`.
pub const JOB_LOG_VERSION: u32 = 2;

/// Oldest protocol version a hub built from this crate still serves.
pub const MIN_PROTOCOL_VERSION: u32 = 0;

/// Capabilities an agent may announce in `hello`. Unknown strings are kept, not rejected,
/// so a newer agent can talk to an older hub.
pub mod capability {
    pub const HTTP_REQUEST: &str = "http_request";
    pub const JOB_PROGRESS: &str = "job_progress";
    pub const JOB_CANCEL: &str = "job_cancel";
    pub const PAUSE: &str = "pause";
    pub const BUNDLE: &str = "bundle";
    pub const JOB_LOG: &str = "job_log";
    /// `browser:SITE`: the person granted browser flows on the site whose adapter is named
    /// SITE. Announced beside the browser job types, which it narrows.
    pub const BROWSER_SITE_PREFIX: &str = "browser:";
}
