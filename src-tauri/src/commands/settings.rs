//! The Settings screen and the Home screen's usage: thin commands over the core's settings
//! (settings.json through `LocalSettings`), the tray's preferences and start at login.
//! Every change answers with the whole [`SettingsView`] so the window shows what was kept.

use super::ActiveAgent;
use crate::app::Agent;
use crate::autostart;
use crate::i18n::{self, Lang};
use crate::preferences::{LanguageChoice, Preferences};
use edge_agent::consent::Capability;
use edge_agent::local_settings::{LocalSettings, QuietHours};
use edge_agent::{AgentError, AgentSnapshot};
use serde::Serialize;
use std::time::Duration;
use tauri::{AppHandle, Runtime};
use tauri_plugin_opener::OpenerExt;

/// How long a site login window may stay open before the agent gives up on it.
const SITE_LOGIN_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapsView {
    pub jobs_per_hour: Option<u32>,
    pub messages_per_hour: Option<u32>,
    pub bytes_per_day: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    pub caps: CapsView,
    pub quiet_hours: Option<QuietHours>,
    pub uploads_dir: Option<String>,
    pub start_at_login: bool,
    /// `system`, `en` or `fr`: what the person chose.
    pub language: LanguageChoice,
    /// What the app speaks now.
    pub effective_language: Lang,
    /// Sites the person allowed browser tasks on: each gets a "Log in" button.
    pub sites: Vec<String>,
}

/// Today's usage against the caps, for Home.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub jobs_today: u32,
    pub bytes_today: u64,
    pub caps: CapsView,
}

fn caps_view(local: &LocalSettings) -> CapsView {
    CapsView {
        jobs_per_hour: local.caps.jobs_per_hour,
        messages_per_hour: local.caps.messages_per_hour,
        bytes_per_day: local.caps.bytes_per_day,
    }
}

fn view(agent: &ActiveAgent) -> Result<SettingsView, AgentError> {
    let data_dir = &agent.settings().data_dir;
    let local = LocalSettings::load(data_dir)?;
    let sites = super::browser_grants(&super::consent(agent))?
        .into_iter()
        .filter_map(|capability| match capability {
            Capability::Browser { site } => Some(site),
            _ => None,
        })
        .collect();
    Ok(SettingsView {
        caps: caps_view(&local),
        quiet_hours: local.quiet_hours.clone(),
        uploads_dir: local.uploads_dir.as_ref().map(|p| p.display().to_string()),
        start_at_login: autostart::is_enabled(),
        // The tray's preferences are the app's, not an account's.
        language: Preferences::load(agent.main_dir()).language,
        effective_language: i18n::current(),
        sites,
    })
}

/// Loads settings.json, applies `change`, saves it and hands it to the running agent.
fn change(agent: &Agent, change: impl FnOnce(&mut LocalSettings) -> Result<(), AgentError>) -> Result<(), AgentError> {
    let data_dir = &agent.settings().data_dir;
    let mut local = LocalSettings::load(data_dir)?;
    change(&mut local)?;
    local.save(data_dir)?;
    agent.apply_local_settings()
}

#[tauri::command]
pub fn get_settings(agent: ActiveAgent) -> Result<SettingsView, AgentError> {
    view(&agent)
}

/// The three caps of the screen; an absent value is no cap of the person's own. The
/// tunnel's bandwidth cap is left as it is (the CLI sets it).
#[tauri::command]
pub fn save_caps(
    agent: ActiveAgent,
    jobs_per_hour: Option<u32>,
    messages_per_hour: Option<u32>,
    bytes_per_day: Option<u64>,
) -> Result<SettingsView, AgentError> {
    if jobs_per_hour == Some(0) || messages_per_hour == Some(0) || bytes_per_day == Some(0) {
        return Err(AgentError::InvalidSetting(
            "a cap of 0 would stop everything; use Pause for that, or leave the field empty for no cap".into(),
        ));
    }
    change(&agent, |local| {
        local.caps.jobs_per_hour = jobs_per_hour;
        local.caps.messages_per_hour = messages_per_hour;
        local.caps.bytes_per_day = bytes_per_day;
        Ok(())
    })?;
    view(&agent)
}

/// Quiet hours from `start` to `end` (`HH:MM`), or none when either is absent.
#[tauri::command]
pub fn set_quiet_hours(
    agent: ActiveAgent,
    start: Option<String>,
    end: Option<String>,
) -> Result<SettingsView, AgentError> {
    let hours = match (start, end) {
        (Some(start), Some(end)) => Some(QuietHours::new(&start, &end)?),
        _ => None,
    };
    change(&agent, |local| {
        local.quiet_hours = hours;
        Ok(())
    })?;
    view(&agent)
}

/// The one folder browser tasks may upload from; none when `path` is absent or empty.
#[tauri::command]
pub fn set_uploads_dir(agent: ActiveAgent, path: Option<String>) -> Result<SettingsView, AgentError> {
    let data_dir = agent.settings().data_dir.clone();
    change(&agent, |local| {
        match path.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(folder) => {
                local.set_uploads_dir(std::path::Path::new(folder), &data_dir)?;
            }
            None => local.uploads_dir = None,
        }
        Ok(())
    })?;
    view(&agent)
}

#[tauri::command]
pub fn set_start_at_login(agent: ActiveAgent, enabled: bool) -> Result<SettingsView, AgentError> {
    autostart::set_enabled(enabled).map_err(|e| AgentError::InvalidSetting(e.to_string()))?;
    view(&agent)
}

/// The language of the window, the tray menu and the notifications; kept for next time.
#[tauri::command]
pub fn set_language<R: Runtime>(
    app: AppHandle<R>,
    agent: ActiveAgent,
    language: LanguageChoice,
) -> Result<SettingsView, AgentError> {
    Preferences { language }.save(agent.main_dir()).map_err(|e| AgentError::Internal(e.to_string()))?;
    i18n::set_current(language.resolve());
    // The menu and tooltip follow at once.
    crate::events::publish_state(&app);
    view(&agent)
}

/// Opens the agent's log folder in the file manager: that folder and nothing else.
#[tauri::command]
pub fn open_log_folder<R: Runtime>(app: AppHandle<R>, agent: ActiveAgent) -> Result<(), AgentError> {
    // One log for the app, every account's lines in it.
    let dir = edge_agent::logging::log_dir(agent.main_dir());
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::Internal(format!("cannot create {}: {e}", dir.display())))?;
    app.opener()
        .open_path(dir.display().to_string(), None::<&str>)
        .map_err(|e| AgentError::Internal(format!("could not open {}: {e}", dir.display())))
}

#[tauri::command]
pub fn get_usage(agent: ActiveAgent) -> Result<UsageView, AgentError> {
    let local = LocalSettings::load(&agent.settings().data_dir)?;
    let today = edge_agent::state::utc_day_now();
    let bytes_today = agent.egress().map(|gate| gate.meter().today().total()).unwrap_or(0);
    Ok(UsageView { jobs_today: agent.snapshot().usage.jobs_on(&today), bytes_today, caps: caps_view(&local) })
}

/// Opens a visible browser window on the site's login page (the core's site login); the
/// session is kept once the site shows the person logged in.
#[tauri::command]
pub async fn log_in_to_site(agent: ActiveAgent, site: String) -> Result<AgentSnapshot, AgentError> {
    let adapter = agent.browser_site(site.trim())?;
    agent.browser_login(&adapter, true, SITE_LOGIN_TIMEOUT).await?;
    Ok(agent.snapshot())
}
