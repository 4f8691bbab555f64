//! One thin `#[tauri::command]` per window action. Each just calls the core and answers
//! with the fresh snapshot so the window can render without waiting for the event.
//! Errors are the core's `AgentError`, which serializes as `{code, message}`.

pub mod accounts;
pub mod settings;

use crate::accounts::Accounts;
use crate::app::Agent;
use crate::device_sign_in::{DeviceSignIn, DeviceSignInView};
use edge_agent::consent::{Capability, Consent, Standing};
use edge_agent::pause::PauseLength;
use edge_agent::{AgentError, AgentSnapshot};
use serde::Serialize;
use std::path::PathBuf;
use tauri::ipc::{CommandArg, CommandItem, InvokeError};
use tauri::{AppHandle, Manager, Runtime, State};
use tauri_plugin_opener::OpenerExt;

/// The agent of the account the window shows, as a command argument: every window action
/// acts on that account and no other. Taken when the command is called, so a long command
/// (a device sign-in's wait) finishes on the account it started on.
pub struct ActiveAgent {
    agent: Agent,
    /// Where the tray's own preferences and the log folder live (the first account's).
    main_dir: PathBuf,
}

impl ActiveAgent {
    pub fn main_dir(&self) -> &std::path::Path {
        &self.main_dir
    }
}

impl std::ops::Deref for ActiveAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl<'de, R: Runtime> CommandArg<'de, R> for ActiveAgent {
    fn from_command(command: CommandItem<'de, R>) -> Result<Self, InvokeError> {
        let accounts =
            command.message.webview_ref().try_state::<Accounts>().ok_or_else(|| {
                InvokeError::from(format!("the accounts are not set up (command `{}`)", command.name))
            })?;
        Ok(ActiveAgent { agent: accounts.active(), main_dir: accounts.main_dir().to_path_buf() })
    }
}

#[tauri::command]
pub fn get_state(agent: ActiveAgent) -> AgentSnapshot {
    agent.snapshot()
}

#[tauri::command]
pub async fn login(agent: ActiveAgent, hub_url: String, token: String) -> Result<AgentSnapshot, AgentError> {
    agent.login(&hub_url, &token).await?;
    Ok(agent.snapshot())
}

#[tauri::command]
pub async fn logout(agent: ActiveAgent) -> Result<AgentSnapshot, AgentError> {
    agent.logout().await?;
    Ok(agent.snapshot())
}

/// `length`: `untilResumed` (the default), `oneHour` or `untilTomorrow`.
#[tauri::command]
pub fn pause(agent: ActiveAgent, length: Option<PauseLength>) -> AgentSnapshot {
    agent.pause_for(length.unwrap_or(PauseLength::UntilResumed));
    agent.snapshot()
}

/// "Update ready — restart now / tonight": restarts when that time has come and no job runs.
#[tauri::command]
pub fn restart_for_update<R: Runtime>(app: AppHandle<R>, when: edge_agent::updater::RestartWhen) {
    crate::updates::plan(&app, when);
}

/// "Install now" for the app's own package (deb, rpm): the core checks the channel,
/// verifies the package and hands it to the package manager; the new version then shows as
/// ready to restart into.
#[tauri::command]
pub async fn install_update(agent: ActiveAgent) -> Result<AgentSnapshot, edge_agent::updater::UpdateError> {
    agent.install_update().await?;
    Ok(agent.snapshot())
}

/// The person's Cancel on the Jobs screen: the core ends the job and tells the hub.
#[tauri::command]
pub async fn cancel_job(agent: ActiveAgent, id: String) -> Result<AgentSnapshot, AgentError> {
    agent.cancel_job(&id).await?;
    Ok(agent.snapshot())
}

/// What a clicked notification asked the window to show, once: `{"job": id}` (null: the
/// Jobs screen), or null when nothing was clicked.
#[tauri::command]
pub fn take_open_job(notifications: State<'_, crate::notifications::Notifications>) -> Option<OpenJob> {
    notifications.take_open_job().map(|job| OpenJob { job })
}

#[derive(Debug, Serialize)]
pub struct OpenJob {
    job: Option<String>,
}

/// The last screenshot of a browser job as a `data:image/png;base64,…` URL, or null. By
/// job id only: the window cannot name a file to read.
#[tauri::command]
pub fn job_screenshot(agent: ActiveAgent, id: String) -> Result<Option<String>, AgentError> {
    use base64::Engine;
    let png = agent.job_screenshot(&id)?;
    Ok(png.map(|bytes| format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))))
}

#[tauri::command]
pub fn resume(agent: ActiveAgent) -> AgentSnapshot {
    agent.resume();
    agent.snapshot()
}

/// Device sign-in, step 1: ask the hub for a code; the window shows it with the QR code.
#[tauri::command]
pub async fn start_device_login(
    agent: ActiveAgent,
    sign_in: State<'_, DeviceSignIn>,
    hub_url: String,
) -> Result<DeviceSignInView, AgentError> {
    let login = agent.device_login(hub_url.trim(), None).await?;
    sign_in.begin(login)
}

/// Device sign-in, step 2: wait (the core polls the hub) until the code is approved, then
/// start the agent. `None` when the person cancelled.
#[tauri::command]
pub async fn finish_device_login(
    agent: ActiveAgent,
    sign_in: State<'_, DeviceSignIn>,
) -> Result<Option<AgentSnapshot>, AgentError> {
    let (login, cancelled) = sign_in.take()?;
    let outcome = tokio::select! {
        outcome = agent.finish_device_login(login) => outcome,
        // Fired or dropped (a newer sign-in replaced this one): stop polling.
        _ = cancelled => return Ok(None),
    };
    sign_in.finished();
    outcome?;
    agent.start()?;
    Ok(Some(agent.snapshot()))
}

#[tauri::command]
pub fn cancel_device_login(sign_in: State<'_, DeviceSignIn>) -> Result<(), AgentError> {
    sign_in.cancel()?;
    Ok(())
}

/// Opens the pending sign-in's approval page in the person's browser; nothing else.
#[tauri::command]
pub fn open_approval_page<R: Runtime>(
    app: AppHandle<R>,
    sign_in: State<'_, DeviceSignIn>,
    url: String,
) -> Result<(), AgentError> {
    let url = sign_in.approval_page(&url)?;
    app.opener()
        .open_url(url, None::<&str>)
        .map_err(|e| AgentError::Internal(format!("could not open the browser: {e}")))
}

/// The consent screen: every capability with where the person stands on it.
#[tauri::command]
pub fn get_consent(agent: ActiveAgent) -> Result<Vec<ConsentItem>, AgentError> {
    consent_items(&agent)
}

#[tauri::command]
pub async fn grant_capability(agent: ActiveAgent, name: String) -> Result<Vec<ConsentItem>, AgentError> {
    consent(&agent).grant(&Capability::parse(&name)?)?;
    agent.reannounce_when_idle().await?;
    consent_items(&agent)
}

#[tauri::command]
pub async fn revoke_capability(agent: ActiveAgent, name: String) -> Result<Vec<ConsentItem>, AgentError> {
    consent(&agent).revoke(&Capability::parse(&name)?)?;
    agent.reannounce_when_idle().await?;
    consent_items(&agent)
}

/// One line of the consent screen. `text` is the core's consent text, stored with a grant:
/// the window shows it under its own plain words, so what is recorded is what was shown.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentItem {
    pub name: String,
    pub granted: bool,
    /// Granted under an older text: it counts only once granted again.
    pub outdated: bool,
    pub text: String,
}

/// Every site the person granted browser tasks on (under the current text or an older one).
fn browser_grants(consent: &Consent) -> Result<Vec<Capability>, AgentError> {
    Ok(consent
        .grants()?
        .into_iter()
        .filter_map(|(name, _)| Capability::parse(&name).ok())
        .filter(|c| matches!(c, Capability::Browser { .. }))
        .collect())
}

fn consent(agent: &Agent) -> Consent {
    Consent::new(&agent.settings().data_dir)
}

/// The fixed capabilities, then every site the person granted browser tasks on.
fn consent_items(agent: &Agent) -> Result<Vec<ConsentItem>, AgentError> {
    let consent = consent(agent);
    let mut capabilities = vec![Capability::HttpRequest, Capability::Bundle, Capability::Tunnel];
    capabilities.extend(browser_grants(&consent)?);
    capabilities
        .into_iter()
        .map(|capability| {
            let standing = consent.standing(&capability)?;
            Ok(ConsentItem {
                name: capability.name(),
                granted: matches!(standing, Standing::Granted(_)),
                outdated: matches!(standing, Standing::Outdated(_)),
                text: capability.text(),
            })
        })
        .collect()
}
