//! Edge Agent tray app: a thin Tauri shell around the `edge-agent` core.
//!
//! The core (crates/agent) does the work and knows nothing of Tauri; this crate only
//! wires it to a window (commands + events), a tray icon and desktop notifications.

mod accounts;
mod app;
mod autostart;
mod commands;
mod device_sign_in;
mod events;
mod i18n;
mod logging;
mod notifications;
mod preferences;
mod settings;
mod tray;
mod updates;

pub use app::run;
