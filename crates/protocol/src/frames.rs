//! Every WebSocket frame, by direction. Field names are the prototype's (camelCase inside
//! `job`, short keys at the top level); do not rename a field without a new protocol version.

use crate::errors::JobError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job as the hub hands it to an agent: `{"jobId":"…","type":"…","payload":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    #[serde(rename = "jobId")]
    pub job_id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Ok,
    Error,
}

/// Why an agent tripped its circuit breaker. Unknown reasons are kept as strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CircuitReason {
    RateLimited,
    QuotaExceeded,
    #[serde(untagged)]
    Other(String),
}

/// Whether the agent takes new jobs right now (the person may pause it from the tray).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub paused: bool,
    /// How many jobs it runs at once when not paused.
    pub slots: u32,
}

/// Which output stream a `job_log` chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// The body of an `error` frame: a peer sent something we could not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolErrorFrame {
    /// `BAD_FRAME`, `UNKNOWN_TYPE`, `FRAME_TOO_LARGE`, `UNSUPPORTED_VERSION`, `NOT_YOUR_JOB`…
    pub code: String,
    pub message: String,
}

/// Frames the agent sends to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum AgentFrame {
    /// First frame of a protocol ≥ 1 agent.
    Hello {
        /// Highest protocol version the agent speaks.
        protocol: u32,
        /// Agent build, `agent-x.y.z` as in `hb`.
        v: String,
        #[serde(default)]
        capabilities: Vec<String>,
        /// Jobs it runs at once.
        #[serde(default = "one")]
        slots: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        #[serde(default)]
        paused: bool,
        /// The jobs this agent is still running (protocol 2, optional): the hub lets the
        /// leases of every other job it holds for this agent run out, so a job the agent lost
        /// in a crash is retried instead of kept alive by the new process's heartbeats.
        /// Absent (older agents): nothing is released.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        running: Option<Vec<String>>,
    },
    /// Heartbeat: `{"t":"hb","v":"agent-x.y.z","ts":1690000000}` (ts in Unix seconds).
    Hb {
        v: String,
        ts: i64,
    },
    JobAck {
        id: String,
    },
    JobProgress {
        id: String,
        /// 0–100 when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pct: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg: Option<String>,
    },
    JobResult {
        id: String,
        status: JobStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        err: Option<JobError>,
    },
    CircuitBreaker {
        reason: CircuitReason,
        /// How long the agent pauses the jobs behind the breaker (its browser jobs), in ms.
        /// Optional and unknown to prototype hubs, which ignore it; the hub uses its own
        /// default when absent.
        #[serde(default, rename = "cooldownMs", skip_serializing_if = "Option::is_none")]
        cooldown_ms: Option<u64>,
    },
    Availability(Availability),
    /// Version 2: a chunk of a running job's output, already masked and capped by the agent.
    /// `seq` counts chunks of one job from 0 across both streams, so the hub can order them
    /// and spot a gap.
    JobLog {
        id: String,
        stream: LogStream,
        seq: u64,
        data: String,
    },
    Error(ProtocolErrorFrame),
}

fn one() -> u32 {
    1
}

/// What a hub may ask of an agent's caps in `hello_ack`. Lowering only: an agent applies
/// `min(person's cap, hub's)`, so a hub value above the person's changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_per_hour: Option<u32>,
}

/// Frames the hub sends to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum HubFrame {
    /// Answer to `hello`: the version both sides now speak and the heartbeat interval the
    /// hub expects (the agent uses the smaller of this and its own setting).
    HelloAck {
        protocol: u32,
        /// Hub build, `hub-x.y.z`.
        hub: String,
        #[serde(rename = "agentId")]
        agent_id: String,
        #[serde(rename = "hbIntervalMs")]
        hb_interval_ms: u64,
        /// Limits the hub sets for this agent. Each can only lower the person's own cap
        /// (the agent takes the smaller); absent from older hubs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limits: Option<HubLimits>,
    },
    JobAssign {
        job: JobSpec,
    },
    HbAck {
        /// Echo of the heartbeat's `ts`.
        ts: i64,
        /// Hub wall clock, Unix seconds.
        #[serde(default, rename = "serverTs", skip_serializing_if = "Option::is_none")]
        server_ts: Option<i64>,
    },
    JobCancel {
        id: String,
    },
    Error(ProtocolErrorFrame),
}

impl AgentFrame {
    /// The frame's `t`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentFrame::Hello { .. } => "hello",
            AgentFrame::Hb { .. } => "hb",
            AgentFrame::JobAck { .. } => "job_ack",
            AgentFrame::JobProgress { .. } => "job_progress",
            AgentFrame::JobResult { .. } => "job_result",
            AgentFrame::CircuitBreaker { .. } => "circuit_breaker",
            AgentFrame::Availability(_) => "availability",
            AgentFrame::JobLog { .. } => "job_log",
            AgentFrame::Error(_) => "error",
        }
    }
}

impl HubFrame {
    pub fn kind(&self) -> &'static str {
        match self {
            HubFrame::HelloAck { .. } => "hello_ack",
            HubFrame::JobAssign { .. } => "job_assign",
            HubFrame::HbAck { .. } => "hb_ack",
            HubFrame::JobCancel { .. } => "job_cancel",
            HubFrame::Error(_) => "error",
        }
    }

    pub fn error(code: &str, message: impl Into<String>) -> HubFrame {
        HubFrame::Error(ProtocolErrorFrame { code: code.to_owned(), message: message.into() })
    }
}

pub const AGENT_FRAME_TYPES: &[&str] =
    &["hello", "hb", "job_ack", "job_progress", "job_result", "circuit_breaker", "availability", "job_log", "error"];
pub const HUB_FRAME_TYPES: &[&str] = &["hello_ack", "job_assign", "hb_ack", "job_cancel", "error"];
