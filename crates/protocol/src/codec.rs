//! Decoding with limits. Both sides decode every incoming text frame here so that an
//! oversized, malformed or unknown frame is classified the same way and answered with an
//! `error` frame instead of a panic or a silent disconnect.

use crate::frames::{AgentFrame, HubFrame, ProtocolErrorFrame, AGENT_FRAME_TYPES, HUB_FRAME_TYPES};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest text frame either side accepts: 1 MiB. Job payloads larger than this belong in
/// a bundle download, not in a frame.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

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
