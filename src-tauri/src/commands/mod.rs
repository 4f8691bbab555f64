//! One thin `#[tauri::command]` per window action. Each just calls the core and answers
//! with the fresh snapshot so the window can render without waiting for the event.
//! Errors are the core's `AgentError`, which serializes as `{code, message}`.

use crate::app::Agent;
use edge_agent::{AgentError, AgentSnapshot};
use tauri::State;

#[tauri::command]
pub fn get_state(agent: State<'_, Agent>) -> AgentSnapshot {
    agent.snapshot()
}

#[tauri::command]
pub async fn login(agent: State<'_, Agent>, hub_url: String, token: String) -> Result<AgentSnapshot, AgentError> {
    agent.login(&hub_url, &token).await?;
    Ok(agent.snapshot())
}

#[tauri::command]
pub async fn logout(agent: State<'_, Agent>) -> Result<AgentSnapshot, AgentError> {
    agent.logout().await?;
    Ok(agent.snapshot())
}

#[tauri::command]
pub fn pause(agent: State<'_, Agent>) -> AgentSnapshot {
    agent.pause();
    agent.snapshot()
}

#[tauri::command]
pub fn resume(agent: State<'_, Agent>) -> AgentSnapshot {
    agent.resume();
    agent.snapshot()
}
