//! Start at login: whether the tray app starts with the person's session.
//!
//! It owns the platform's autostart entry for this app and nothing else; it never starts or
//! stops the app itself. An enabled entry is written again at every start, so it follows the
//! program if an update moved it.

#[cfg_attr(target_os = "linux", path = "linux.rs")]
#[cfg_attr(not(target_os = "linux"), path = "other.rs")]
mod platform;
pub use platform::*;

#[derive(Debug, thiserror::Error)]
pub enum AutostartError {
    #[error("cannot write the autostart entry {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
    #[error("no autostart folder: neither XDG_CONFIG_HOME nor HOME is set")]
    NoConfigDir,
    #[error("cannot tell where this program is ({0}), so it cannot be started at login")]
    NoExecutable(std::io::Error),
    #[error("start at login is not available on this system yet")]
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Unsupported,
}
