//! The header that opens a tunnel stream, and its answer.
//!
//! Both are one frame: a big-endian `u16` length, then that many bytes of JSON. The hub
//! writes an [`Open`], the agent reads it, decides, and writes an [`Answer`]; only after an
//! `ok` answer do the stream's own bytes flow. A header over [`MAX_HEADER_BYTES`] or not
//! valid JSON is an error, never a guess.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest header either side reads.
pub const MAX_HEADER_BYTES: usize = 4096;

/// Where a stream goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// An outside host, by name or address: judged by the agent's egress gate.
    Connect { host: String, port: u16 },
    /// A local service the person exposed under this name (`edge-agent expose`).
    Service { name: String },
    /// Liveness: the agent answers `ok` at once and the stream ends.
    Ping,
}

/// `host:port`, `service NAME` or `ping`: what a log line says (never more of the stream).
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Connect { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Connect { host, port } => write!(f, "{host}:{port}"),
            Target::Service { name } => write!(f, "service {name}"),
            Target::Ping => f.write_str("ping"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Open {
    /// [`crate::OPEN_VERSION`] of the opener; an agent refuses a version it does not know.
    pub v: u32,
    pub target: Target,
}

/// The agent's answer: `ok`, or a refusal with a protocol error code (`EGRESS_DENIED`,
/// `EGRESS_CAP`, `CAPABILITY_NOT_GRANTED`, `PAUSED`, `NETWORK`, `NOT_EXPOSED`,
/// `BAD_PAYLOAD`) and a sentence for the person or operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer { ok: true, code: None, message: None }
    }

    pub fn refused(code: impl Into<String>, message: impl Into<String>) -> Answer {
        Answer { ok: false, code: Some(code.into()), message: Some(message.into()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the tunnel stream ended before its header: {0}")]
    Io(#[from] std::io::Error),
    #[error("a tunnel header of {0} bytes is over the {MAX_HEADER_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the tunnel header is not valid: {0}")]
    Invalid(String),
}

/// Writes one header frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(writer: &mut W, header: &T) -> Result<(), HeaderError> {
    let json = serde_json::to_vec(header).map_err(|e| HeaderError::Invalid(e.to_string()))?;
    if json.len() > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLarge(json.len()));
    }
    let mut frame = Vec::with_capacity(json.len() + 2);
    frame.extend_from_slice(&(json.len() as u16).to_be_bytes());
    frame.extend_from_slice(&json);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one header frame.
pub async fn read<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(reader: &mut R) -> Result<T, HeaderError> {
    let mut length = [0u8; 2];
    reader.read_exact(&mut length).await?;
    let length = u16::from_be_bytes(length) as usize;
    if length > MAX_HEADER_BYTES {
        return Err(HeaderError::TooLarge(length));
    }
    let mut json = vec![0u8; length];
    reader.read_exact(&mut json).await?;
    serde_json::from_slice(&json).map_err(|e| HeaderError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn headers_round_trip_and_bad_ones_are_named() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let open = Open { v: 1, target: Target::Connect { host: "example.com".into(), port: 443 } };
        write(&mut a, &open).await.unwrap();
        assert_eq!(read::<_, Open>(&mut b).await.unwrap(), open);
        write(&mut a, &Answer::refused("EGRESS_DENIED", "no")).await.unwrap();
        let answer: Answer = read(&mut b).await.unwrap();
        assert_eq!(answer.code.as_deref(), Some("EGRESS_DENIED"));

        // A length over the limit is refused before anything is allocated for it.
        a.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read::<_, Open>(&mut b).await, Err(HeaderError::TooLarge(65535))));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 3, b'{', b'x', b'}']).await.unwrap();
        assert!(matches!(read::<_, Open>(&mut b).await, Err(HeaderError::Invalid(_))));
        drop(a);
        assert!(matches!(read::<_, Open>(&mut b).await, Err(HeaderError::Io(_))));
        let json = serde_json::to_string(&Open { v: 1, target: Target::Service { name: "web".into() } }).unwrap();
        assert_eq!(json, r#"{"v":1,"target":{"service":{"name":"web"}}}"#);
    }
}
