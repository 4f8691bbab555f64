//! Decoding with limits. Both sides decode every incoming text frame here so that an
//! oversized, malformed or unknown frame is classified the same way and answered with an
//! `error` frame instead of a panic or a silent disconnect.

use crate::frames::{AgentFrame, HubFrame, ProtocolErrorFrame, AGENT_FRAME_TYPES, HUB_FRAME_TYPES};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest text frame either side accepts: 1 MiB. Job payloads larger than this belong in
/// a bundle download, not in a frame.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Largest job payload, serialised: it must fit in one `job_assign` frame with room for
/// the envelope. The hub refuses a bigger one at submit; the agent answers one with
/// `BAD_PAYLOAD`.
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - 4 * 1024;

/// Deepest nesting of objects and arrays in a job payload. serde_json refuses input nested
/// deeper than 128 levels, and a `job_assign` frame wraps the payload in two more (the
/// frame, `job`): a payload the hub accepted near that limit could not be read by the
/// agent at all. 64 leaves a wide margin and is far beyond any real job's shape.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// Why a job payload is over the shared limits (see [`check_payload`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("`payload` is {size} bytes; a job payload may be at most {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("`payload` is nested more than {limit} levels deep (objects and arrays); flatten it")]
    TooDeep { limit: usize },
}

/// The limits both sides apply to a job payload: the hub at submit, the agent on
/// `job_assign`, so a job one side accepts the other can read.
pub fn check_payload(payload: &serde_json::Value) -> Result<(), PayloadError> {
    if payload_depth_over(payload, MAX_PAYLOAD_DEPTH) {
        return Err(PayloadError::TooDeep { limit: MAX_PAYLOAD_DEPTH });
    }
    let size = serde_json::to_string(payload).map(|s| s.len()).unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge { size, limit: MAX_PAYLOAD_BYTES });
    }
    Ok(())
}

/// Whether `value` nests objects and arrays more than `limit` levels deep (a scalar is 0,
/// `{}` is 1). An explicit stack: the check must not itself recurse on hostile input.
fn payload_depth_over(value: &serde_json::Value, limit: usize) -> bool {
    use serde_json::Value;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > limit {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

/// The id of a `job_assign` that does not decode, if one can be read: a job the agent
/// cannot parse is still answered by its id (`BAD_PAYLOAD`), so the hub ends it instead of
/// holding it. Skipped values are stepped over without nesting limits (serde_json's
/// `IgnoredAny` does not recurse), so even a payload too deep for any parser yields its id.
pub fn job_assign_id(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        t: String,
        job: ProbeJob,
    }
    #[derive(serde::Deserialize)]
    struct ProbeJob {
        #[serde(rename = "jobId")]
        job_id: String,
    }
    if text.len() > MAX_FRAME_BYTES {
        return None;
    }
    let probe: Probe = serde_json::from_str(text).ok()?;
    (probe.t == "job_assign" && !probe.job.job_id.is_empty()).then_some(probe.job.job_id)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("frame is not a JSON object with a string field \"t\": {0}")]
    NotAFrame(String),
    #[error("unknown frame type \"{0}\"")]
    UnknownType(String),
    #[error("frame \"{t}\" is malformed: {detail}")]
    Malformed { t: String, detail: String },
    #[error("binary frames are not part of the protocol")]
    Binary,
}

impl FrameError {
    /// The `code` of the `error` frame that answers this error.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "FRAME_TOO_LARGE",
            FrameError::NotAFrame(_) | FrameError::Malformed { .. } | FrameError::Binary => "BAD_FRAME",
            FrameError::UnknownType(_) => "UNKNOWN_TYPE",
        }
    }

    pub fn to_error_frame(&self) -> ProtocolErrorFrame {
        ProtocolErrorFrame { code: self.code().to_owned(), message: self.to_string() }
    }
}

pub fn decode_agent_frame(text: &str) -> Result<AgentFrame, FrameError> {
    decode(text, AGENT_FRAME_TYPES)
}

pub fn decode_hub_frame(text: &str) -> Result<HubFrame, FrameError> {
    decode(text, HUB_FRAME_TYPES)
}

pub fn encode<T: Serialize>(frame: &T) -> String {
    // Frames are plain data with string keys; serialising them cannot fail.
    serde_json::to_string(frame).expect("protocol frames always serialise")
}

fn decode<T: DeserializeOwned>(text: &str, known: &[&str]) -> Result<T, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { size: text.len(), limit: MAX_FRAME_BYTES });
    }
    // Most frames are well-formed: read them straight into their type. Only a frame that
    // does not read takes the slower path below, which names what is wrong with it.
    if let Ok(frame) = serde_json::from_str::<T>(text) {
        return Ok(frame);
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError::NotAFrame(e.to_string()))?;
    let t = value
        .get("t")
        .and_then(|t| t.as_str())
        .ok_or_else(|| FrameError::NotAFrame("missing \"t\"".to_owned()))?
        .to_owned();
    if !known.contains(&t.as_str()) {
        return Err(FrameError::UnknownType(t));
    }
    serde_json::from_value(value).map_err(|e| FrameError::Malformed { t, detail: e.to_string() })
}
