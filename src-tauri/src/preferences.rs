//! The tray's own preferences, `<data dir>/tray-preferences.json`: today only the language.
//!
//! It owns that file. The agent's settings (caps, quiet hours, consent) live in the core's
//! settings.json, not here: this file holds nothing that changes what the agent does.

use crate::i18n::Lang;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "tray-preferences.json";

/// The language the person chose, or the system's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LanguageChoice {
    #[default]
    System,
    En,
    Fr,
}

impl LanguageChoice {
    pub fn resolve(self) -> Lang {
        match self {
            LanguageChoice::System => Lang::system(),
            LanguageChoice::En => Lang::En,
            LanguageChoice::Fr => Lang::Fr,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Preferences {
    pub language: LanguageChoice,
}

#[derive(Debug, thiserror::Error)]
pub enum PreferencesError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    /// The file could not be replaced; the message names it.
    #[error("{0}")]
    Replace(edge_agent::AgentError),
}

impl Preferences {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// The saved preferences; the defaults when there are none or the file is damaged (a
    /// language is not worth refusing to start over; the damage is logged).
    pub fn load(data_dir: &Path) -> Preferences {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, path = %path.display(), "unreadable tray preferences; using the defaults");
                Preferences::default()
            }),
            Err(_) => Preferences::default(),
        }
    }

    /// Replaces the file (a temporary file renamed over it, so a crash leaves the old one).
    pub fn save(&self, data_dir: &Path) -> Result<(), PreferencesError> {
        let path = Self::path(data_dir);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| PreferencesError::Write { path: path.clone(), source: std::io::Error::other(e) })?;
        edge_agent::files::replace(&path, &json).map_err(PreferencesError::Replace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_choice_is_kept_and_defaults_to_the_system() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Preferences::load(dir.path()).language, LanguageChoice::System);
        Preferences { language: LanguageChoice::Fr }.save(dir.path()).unwrap();
        assert_eq!(Preferences::load(dir.path()).language, LanguageChoice::Fr);
        assert!(std::fs::read_to_string(Preferences::path(dir.path())).unwrap().contains("\"fr\""));
        std::fs::write(Preferences::path(dir.path()), b"{damaged").unwrap();
        assert_eq!(Preferences::load(dir.path()), Preferences::default());
        assert_eq!(LanguageChoice::En.resolve(), Lang::En);
        assert_eq!(LanguageChoice::Fr.resolve(), Lang::Fr);
    }
}
