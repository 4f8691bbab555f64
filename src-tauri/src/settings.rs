//! Start-up options of the tray app, read from the environment and the command line.
//!
//! The core's settings use the same variables as the `edge-agent` CLI so that a profile
//! logged in with `edge-agent login` is the one the tray runs.

use std::path::PathBuf;
use std::time::Duration;

/// Why the environment could not be turned into settings. Reported once at start; the
/// app then refuses to run rather than guess (a wrong keychain or profile would look
/// like "logged out" to the person).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
}

#[derive(Debug)]
pub struct TrayOptions {
    pub agent: edge_agent::AgentSettings,
    /// Show the window at start even when logged in (tests, screenshots).
    pub show_window: bool,
}

const DEFAULT_SLOTS: u32 = 1;

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(var: &'static str) -> Result<Option<T>, SettingsError>
where
    T::Err: std::fmt::Display,
{
    env(var)
        .map(|raw| raw.parse::<T>().map_err(|e| SettingsError::Invalid { var, reason: format!("{raw:?}: {e}") }))
        .transpose()
}

fn truthy(value: &str) -> bool {
    matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl TrayOptions {
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Self, SettingsError> {
        let profile = env("EDGE_AGENT_PROFILE").unwrap_or_else(|| edge_agent::service::DEFAULT_PROFILE.to_owned());
        let keychain = parse_env::<edge_agent::KeychainChoice>("EDGE_AGENT_KEYCHAIN")?.unwrap_or_default();
        let data_dir = match env("EDGE_AGENT_DATA_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => edge_agent::default_data_dir().ok_or(SettingsError::Invalid {
                var: "EDGE_AGENT_DATA_DIR",
                reason: "not set and the OS reports no home directory".into(),
            })?,
        };
        let hb_secs = parse_env::<u64>("EDGE_AGENT_HB_INTERVAL_SECS")?
            .unwrap_or(edge_agent::service::DEFAULT_HB_INTERVAL.as_secs());
        if hb_secs == 0 {
            return Err(SettingsError::Invalid {
                var: "EDGE_AGENT_HB_INTERVAL_SECS",
                reason: "must be at least 1".into(),
            });
        }
        let slots = parse_env::<u32>("EDGE_AGENT_SLOTS")?.unwrap_or(DEFAULT_SLOTS).max(1);

        let show_window =
            env("EDGE_AGENT_SHOW_WINDOW").is_some_and(|v| truthy(&v)) || args.into_iter().any(|a| a == "--show");

        Ok(TrayOptions {
            agent: edge_agent::AgentSettings {
                profile,
                keychain,
                data_dir,
                hb_interval: Duration::from_secs(hb_secs),
                slots,
                // The tray's person allows destinations in settings.json (allowEgress).
                allow_egress: Vec::new(),
            },
            show_window,
        })
    }
}
