//! The tray icon: its image and tooltip follow the agent's state, its menu offers Open,
//! Pause/Resume and Quit, in the current language (`i18n`).
//!
//! Platform tray support is the least reliable part of a desktop (no tray host, missing
//! appindicator library, a StatusNotifier host that vanishes), so creation failures are
//! returned, never panicked on, and every later update is best effort.

use crate::app::{self, Agent};
use crate::i18n::{self, fill, Lang, Texts};
use edge_agent::{AgentSnapshot, ConnectionState};
use std::sync::Mutex;
use tauri::image::Image;
use tauri::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tauri::tray::{MouseButton, MouseButtonState, TrayIcon, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Manager, Runtime};

const TRAY_ID: &str = "edge-agent";
const MENU_OPEN: &str = "open";
const MENU_PAUSE: &str = "pause-toggle";
const MENU_QUIT: &str = "quit";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayState {
    Offline,
    Online,
    Busy,
    Paused,
    Error,
}

impl TrayState {
    /// What the icon says at a glance. Paused wins over busy (a running job finishes but
    /// no new one starts), and an error only shows while the agent is not online.
    pub fn from_snapshot(s: &AgentSnapshot) -> Self {
        if !s.logged_in {
            return if s.last_error.is_some() { TrayState::Error } else { TrayState::Offline };
        }
        if s.paused {
            TrayState::Paused
        } else if s.busy > 0 {
            TrayState::Busy
        } else if s.connection == ConnectionState::Online {
            TrayState::Online
        } else if s.last_error.is_some() {
            TrayState::Error
        } else {
            TrayState::Offline
        }
    }

    fn icon_bytes(self) -> &'static [u8] {
        match self {
            TrayState::Offline => include_bytes!("../../icons/tray-offline.png"),
            TrayState::Online => include_bytes!("../../icons/tray-online.png"),
            TrayState::Busy => include_bytes!("../../icons/tray-busy.png"),
            TrayState::Paused => include_bytes!("../../icons/tray-paused.png"),
            TrayState::Error => include_bytes!("../../icons/tray-error.png"),
        }
    }
}

pub fn tooltip(s: &AgentSnapshot) -> String {
    tooltip_in(i18n::t(), s)
}

fn tooltip_in(t: &Texts, s: &AgentSnapshot) -> String {
    let detail = match TrayState::from_snapshot(s) {
        TrayState::Offline if !s.logged_in => t.tip_signed_out.to_owned(),
        TrayState::Offline if s.connection == ConnectionState::Connecting => t.tip_connecting.to_owned(),
        TrayState::Offline => t.tip_offline.to_owned(),
        TrayState::Online => match &s.quiet_until {
            Some(time) => fill(t.tip_quiet, &[("time", time)]),
            None => t.tip_online.to_owned(),
        },
        TrayState::Busy => t.tip_busy.to_owned(),
        TrayState::Paused => t.tip_paused.to_owned(),
        TrayState::Error => fill(t.tip_error, &[("error", s.last_error.as_deref().unwrap_or_default())]),
    };
    fill(t.tooltip, &[("state", &detail)])
}

#[derive(Debug, thiserror::Error)]
pub enum TrayError {
    #[error("tray icon could not be created: {0}")]
    Tauri(#[from] tauri::Error),
    #[error("tray icon image is not a valid PNG: {0}")]
    Image(String),
    #[error("the platform tray code panicked: {0}")]
    Panicked(String),
}

/// Handles kept to update the tray later; absent when there is no tray.
struct TrayHandles<R: Runtime> {
    icon: TrayIcon<R>,
    open_item: MenuItem<R>,
    pause_item: MenuItem<R>,
    quit_item: MenuItem<R>,
    /// What the platform shows now; snapshots arrive often and most change nothing here.
    shown: Mutex<Shown>,
}

#[derive(Debug, Clone, PartialEq)]
struct Shown {
    state: TrayState,
    tooltip: String,
    paused: bool,
    logged_in: bool,
    lang: Lang,
}

impl Shown {
    fn of(s: &AgentSnapshot) -> Shown {
        Shown {
            state: TrayState::from_snapshot(s),
            tooltip: tooltip(s),
            paused: s.paused,
            logged_in: s.logged_in,
            lang: i18n::current(),
        }
    }
}

fn image(state: TrayState) -> Result<Image<'static>, TrayError> {
    Image::from_bytes(state.icon_bytes()).map_err(|e| TrayError::Image(e.to_string()))
}

/// Creates the tray icon. Some platform layers (the Linux appindicator loader) panic when
/// their library is missing; that is caught here so the app can fall back to its window.
pub fn create<R: Runtime>(app: &AppHandle<R>, snapshot: &AgentSnapshot) -> Result<(), TrayError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(app, snapshot))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(TrayError::Panicked(what))
        }
    }
}

fn build<R: Runtime>(app: &AppHandle<R>, snapshot: &AgentSnapshot) -> Result<(), TrayError> {
    let shown = Shown::of(snapshot);
    let open = MenuItem::with_id(app, MENU_OPEN, i18n::t().menu_open, true, None::<&str>)?;
    let pause_item =
        MenuItem::with_id(app, MENU_PAUSE, pause_label(snapshot.paused), snapshot.logged_in, None::<&str>)?;
    let separator = PredefinedMenuItem::separator(app)?;
    let quit = MenuItem::with_id(app, MENU_QUIT, i18n::t().menu_quit, true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&open, &pause_item, &separator, &quit])?;

    let icon = TrayIconBuilder::with_id(TRAY_ID)
        .icon(image(shown.state)?)
        .tooltip(&shown.tooltip)
        .menu(&menu)
        // Left click opens the window where the platform reports clicks (Windows, macOS);
        // Linux appindicator only has the menu, which has "Open".
        .show_menu_on_left_click(false)
        .on_menu_event(on_menu_event)
        .on_tray_icon_event(|tray, event| {
            if let TrayIconEvent::Click { button: MouseButton::Left, button_state: MouseButtonState::Up, .. } = event {
                app::show_main_window(tray.app_handle());
            }
        })
        .build(app)?;

    app.manage(TrayHandles { icon, open_item: open, pause_item, quit_item: quit, shown: Mutex::new(shown) });
    Ok(())
}

fn pause_label(paused: bool) -> &'static str {
    if paused {
        i18n::t().menu_resume
    } else {
        i18n::t().menu_pause
    }
}

fn on_menu_event<R: Runtime>(app: &AppHandle<R>, event: MenuEvent) {
    match event.id().as_ref() {
        MENU_OPEN => app::show_main_window(app),
        MENU_PAUSE => {
            let agent = app.state::<Agent>();
            // The core's Paused/Resumed event updates tray and window through the forwarder.
            if agent.snapshot().paused {
                agent.resume();
            } else {
                agent.pause();
            }
        }
        MENU_QUIT => app::quit(app),
        other => tracing::debug!(id = other, "unknown tray menu item"),
    }
}

/// Brings icon, tooltip and menu label in line with the snapshot; only what changed is
/// sent to the platform.
pub fn update<R: Runtime>(app: &AppHandle<R>, snapshot: &AgentSnapshot) {
    let Some(handles) = app.try_state::<TrayHandles<R>>() else { return };
    let next = Shown::of(snapshot);
    // Swap under the lock, talk to the platform after it: the platform calls wait for the
    // event-loop thread, which may itself be waiting for this lock.
    let shown = match handles.shown.lock() {
        Ok(mut shown) => std::mem::replace(&mut *shown, next.clone()),
        Err(_) => return,
    };
    if shown.state != next.state {
        match image(next.state) {
            Ok(img) => {
                if let Err(err) = handles.icon.set_icon(Some(img)) {
                    tracing::warn!(error = %err, "could not change the tray icon");
                }
            }
            Err(err) => tracing::warn!(error = %err, "tray icon image"),
        }
    }
    if shown.tooltip != next.tooltip {
        if let Err(err) = handles.icon.set_tooltip(Some(&next.tooltip)) {
            tracing::warn!(error = %err, "could not change the tray tooltip");
        }
    }
    if shown.paused != next.paused || shown.lang != next.lang {
        if let Err(err) = handles.pause_item.set_text(pause_label(next.paused)) {
            tracing::warn!(error = %err, "could not change the tray menu");
        }
    }
    if shown.lang != next.lang {
        let t = next.lang.texts();
        for (item, text) in [(&handles.open_item, t.menu_open), (&handles.quit_item, t.menu_quit)] {
            if let Err(err) = item.set_text(text) {
                tracing::warn!(error = %err, "could not change the tray menu");
            }
        }
    }
    if shown.logged_in != next.logged_in {
        if let Err(err) = handles.pause_item.set_enabled(next.logged_in) {
            tracing::warn!(error = %err, "could not change the tray menu");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> AgentSnapshot {
        serde_json::from_value(serde_json::json!({
            "loggedIn": true, "hubUrl": "http://127.0.0.1:1", "agentId": "agt_1", "creatorId": "c1",
            "connection": "online", "paused": false, "busy": 0, "lastError": null,
            "keychainBackend": "kernel", "recentJobs": []
        }))
        .unwrap()
    }

    #[test]
    fn icon_follows_the_state_with_paused_over_busy_over_connection() {
        let mut s = snapshot();
        assert_eq!(TrayState::from_snapshot(&s), TrayState::Online);
        s.busy = 2;
        assert_eq!(TrayState::from_snapshot(&s), TrayState::Busy);
        s.paused = true;
        assert_eq!(TrayState::from_snapshot(&s), TrayState::Paused);
        assert_eq!(tooltip_in(&i18n::EN, &s), "Edge Agent — paused, no new tasks");
        assert_eq!(tooltip_in(&i18n::FR, &s), "Edge Agent — en pause, aucune nouvelle tâche");

        let mut s = snapshot();
        s.connection = ConnectionState::Offline;
        assert_eq!(TrayState::from_snapshot(&s), TrayState::Offline);
        s.last_error = Some("hub unreachable".into());
        assert_eq!(TrayState::from_snapshot(&s), TrayState::Error);
        assert_eq!(tooltip_in(&i18n::EN, &s), "Edge Agent — error: hub unreachable");
        assert_eq!(tooltip_in(&i18n::FR, &s), "Edge Agent — erreur : hub unreachable");

        let mut s = snapshot();
        s.logged_in = false;
        s.connection = ConnectionState::Offline;
        assert_eq!(tooltip_in(&i18n::EN, &s), "Edge Agent — not signed in");
        assert_eq!(tooltip_in(&i18n::FR, &s), "Edge Agent — non connecté");

        let mut s = snapshot();
        s.quiet_until = Some("07:00".into());
        assert_eq!(tooltip_in(&i18n::EN, &s), "Edge Agent — quiet hours until 07:00");
        assert_eq!(tooltip_in(&i18n::FR, &s), "Edge Agent — heures calmes jusqu'à 07:00");
    }

    #[test]
    fn every_state_icon_decodes() {
        for state in [TrayState::Offline, TrayState::Online, TrayState::Busy, TrayState::Paused, TrayState::Error] {
            let img = image(state).unwrap();
            assert_eq!((img.width(), img.height()), (32, 32));
        }
    }
}
