//! Forwards the core's events to the window (`agent://event`, `agent://state`,
//! `agent://accounts`), the tray icon and desktop notifications. This is the only place
//! that listens to the core: one forwarder per account.
//!
//! The window and the tray's icon follow the active account; notifications come from every
//! account, each naming its account once there are several.

use crate::accounts::{AccountError, Accounts};
use crate::app::Agent;
use crate::{notifications, tray};
use edge_agent::{AgentEvent, AgentSnapshot};
use std::collections::HashMap;
use std::sync::Mutex;
use tauri::{AppHandle, Emitter, Manager, Runtime};
use tokio::sync::broadcast::error::RecvError;

pub const STATE_EVENT: &str = "agent://state";
pub const AGENT_EVENT: &str = "agent://event";
pub const ACCOUNTS_EVENT: &str = "agent://accounts";

/// Pushes the active account's snapshot to the window and the tray, and the account list
/// when it changed.
pub fn publish_state<R: Runtime>(app: &AppHandle<R>) {
    let Some(accounts) = app.try_state::<Accounts>() else { return };
    send_state(app, &accounts.active().snapshot());
    publish_accounts(app, &accounts);
}

fn send_state<R: Runtime>(app: &AppHandle<R>, snapshot: &AgentSnapshot) {
    tray::update(app, snapshot);
    if let Err(err) = app.emit(STATE_EVENT, snapshot) {
        tracing::warn!(error = %err, "could not send the state to the window");
    }
}

/// The account list to the window and the tray menu, when it changed since last told.
fn publish_accounts<R: Runtime>(app: &AppHandle<R>, accounts: &Accounts) {
    if let Some(views) = accounts.changed() {
        tray::set_accounts(app, &views);
        if let Err(err) = app.emit(ACCOUNTS_EVENT, &views) {
            tracing::warn!(error = %err, "could not send the accounts to the window");
        }
    }
}

/// Makes `id` the account the window and menu act on. A device sign-in in progress
/// belongs to the account it started on: it is cancelled, never finished into another.
pub fn switch_to<R: Runtime>(app: &AppHandle<R>, id: &str) -> Result<AgentSnapshot, AccountError> {
    let accounts = app.state::<Accounts>();
    if accounts.is_active(id) {
        return Ok(accounts.active().snapshot());
    }
    let agent = accounts.switch(id)?;
    cancel_sign_in(app);
    publish_state(app);
    Ok(agent.snapshot())
}

/// A new signed-out account, made active (the window shows its sign-in), with its forwarder.
pub fn add_account<R: Runtime>(app: &AppHandle<R>) -> Result<AgentSnapshot, AccountError> {
    let (id, agent) = app.state::<Accounts>().add()?;
    cancel_sign_in(app);
    spawn_forwarder(app.clone(), id, agent.clone());
    Ok(agent.snapshot())
}

/// A device sign-in in progress belonged to the account shown before: it ends.
fn cancel_sign_in<R: Runtime>(app: &AppHandle<R>) {
    if let Some(sign_in) = app.try_state::<crate::device_sign_in::DeviceSignIn>() {
        let _ = sign_in.cancel();
    }
}

/// The running forwarder of each account, so a removed account's stops with it.
#[derive(Default)]
pub struct Forwarders(Mutex<HashMap<String, tauri::async_runtime::JoinHandle<()>>>);

pub fn stop_forwarder<R: Runtime>(app: &AppHandle<R>, id: &str) {
    if let Some(forwarders) = app.try_state::<Forwarders>() {
        if let Some(task) = forwarders.0.lock().ok().and_then(|mut map| map.remove(id)) {
            task.abort();
        }
    }
}

pub fn spawn_forwarder<R: Runtime>(app: AppHandle<R>, id: String, agent: Agent) {
    // Subscribe before the first publish so no change falls between the two.
    let mut rx = agent.subscribe();
    publish_state(&app);
    notifications::notify_expiries(&app, &agent.snapshot(), &agent.settings().data_dir);
    let key = id.clone();
    let forwarding = app.clone();
    let task = tauri::async_runtime::spawn(async move {
        let app = forwarding;
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
            let Some(accounts) = app.try_state::<Accounts>() else { break };
            let active = accounts.is_active(&id);
            match received {
                // The core already sends its whole snapshot; pass it on as the state.
                Ok(AgentEvent::StateChanged { snapshot }) => {
                    // Every account's signing keys, each remembered in its own folder.
                    notifications::notify_expiries(&app, &snapshot, &agent.settings().data_dir);
                    if active {
                        send_state(&app, &snapshot);
                    }
                    publish_accounts(&app, &accounts);
                }
                Ok(event) => {
                    if active {
                        if let Err(err) = app.emit(AGENT_EVENT, &event) {
                            tracing::warn!(error = %err, "could not send an agent event to the window");
                        }
                    }
                    // With several accounts, each notification says whose it is.
                    let label = if accounts.len() > 1 { accounts.label(&id) } else { None };
                    notifications::notify_event(&app, &event, &agent.snapshot(), label.as_deref());
                    due = notifications::tick(&app);
                    if active && matches!(event, AgentEvent::LoginRequired { .. }) {
                        // The window is where the person logs in again.
                        crate::app::show_main_window(&app);
                    }
                    if active {
                        publish_state(&app);
                    } else {
                        publish_accounts(&app, &accounts);
                    }
                }
                // Missed events only matter for notifications; the snapshot is complete.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, account = id, "tray fell behind the agent's events");
                    publish_state(&app);
                }
                Err(RecvError::Closed) => break,
            }
        }
        tracing::debug!(account = id, "agent event stream ended");
    });
    if let Some(forwarders) = app.try_state::<Forwarders>() {
        if let Ok(mut map) = forwarders.0.lock() {
            if let Some(previous) = map.insert(key, task) {
                previous.abort();
            }
        }
    }
}
