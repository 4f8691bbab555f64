//! `<data dir>/state.json`: the running agent's snapshot for `edge-agent status`.
//!
//! It owns the file's shape and the atomic replace. It must never contain a secret, which
//! holds by construction: it serialises only [`AgentSnapshot`], which has no secret fields.

use super::AgentSnapshot;
use crate::error::AgentError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE_NAME: &str = "state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    pub pid: u32,
    /// False once the agent that wrote the file shut down cleanly.
    pub running: bool,
    pub updated_at: String,
    pub snapshot: AgentSnapshot,
}

impl StateFile {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(STATE_FILE_NAME)
    }

    pub fn read(data_dir: &Path) -> Result<Option<StateFile>, AgentError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                AgentError::Internal(format!("{} is not a state file of this agent: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Write to a temporary file and rename, so a reader never sees half a file.
    pub fn write(&self, data_dir: &Path) -> Result<(), AgentError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| AgentError::Internal(e.to_string()))?;
        crate::files::replace(&Self::path(data_dir), &json)
    }

    /// Whether the process that wrote the file still exists (best effort; Linux only,
    /// elsewhere trusts `running`).
    pub fn writer_alive(&self) -> bool {
        if !self.running {
            return false;
        }
        if cfg!(target_os = "linux") {
            Path::new(&format!("/proc/{}", self.pid)).exists()
        } else {
            true
        }
    }
}
