//! Forwards the core's events to the window (`agent://event`, `agent://state`), the tray
//! icon and desktop notifications. This is the only place that listens to the core.

use crate::app::Agent;
use crate::{notifications, tray};
use edge_agent::AgentEvent;
use tauri::{AppHandle, Emitter, Runtime};
use tokio::sync::broadcast::error::RecvError;

pub const STATE_EVENT: &str = "agent://state";
pub const AGENT_EVENT: &str = "agent://event";

/// Pushes the current snapshot to the window and the tray.
pub fn publish_state<R: Runtime>(app: &AppHandle<R>, agent: &Agent) {
    let snapshot = agent.snapshot();
    tray::update(app, &snapshot);
    notifications::notify_expiries(app, &snapshot, &agent.settings().data_dir);
    if let Err(err) = app.emit(STATE_EVENT, &snapshot) {
        tracing::warn!(error = %err, "could not send the state to the window");
    }
}

pub fn spawn_forwarder<R: Runtime>(app: AppHandle<R>, agent: Agent) {
    // Subscribe before the first publish so no change falls between the two.
    let mut rx = agent.subscribe();
    publish_state(&app, &agent);
    tauri::async_runtime::spawn(async move {
        // When the notifications' summary is due (`notifications::tick`).
        let mut due: Option<std::time::Instant> = None;
        loop {
            let received = match due {
                Some(at) => tokio::select! {
                    received = rx.recv() => received,
                    _ = tokio::time::sleep_until(at.into()) => {
                        due = notifications::tick(&app);
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match received {
                // The core already sends its whole snapshot; pass it on as the state.
                Ok(AgentEvent::StateChanged { snapshot }) => {
                    tray::update(&app, &snapshot);
                    notifications::notify_expiries(&app, &snapshot, &agent.settings().data_dir);
                    if let Err(err) = app.emit(STATE_EVENT, &snapshot) {
                        tracing::warn!(error = %err, "could not send the state to the window");
                    }
                }
                Ok(event) => {
                    if let Err(err) = app.emit(AGENT_EVENT, &event) {
                        tracing::warn!(error = %err, "could not send an agent event to the window");
                    }
                    notifications::notify_event(&app, &event, &agent.snapshot());
                    due = notifications::tick(&app);
                    if matches!(event, AgentEvent::LoginRequired { .. }) {
                        // The window is where the person logs in again.
                        crate::app::show_main_window(&app);
                    }
                    publish_state(&app, &agent);
                }
                // Missed events only matter for notifications; the snapshot is complete.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "tray fell behind the agent's events");
                    publish_state(&app, &agent);
                }
                Err(RecvError::Closed) => break,
            }
        }
        tracing::debug!("agent event stream ended");
    });
}
