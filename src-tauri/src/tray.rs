//! The tray icon: its image and tooltip follow the active account's state, its menu offers
//! the state line, Open, the accounts (switch, add), Pause for 1 hour / until tomorrow
//! (08:00) / until resumed, Resume, with several accounts Pause all / Resume all, and Quit,
//! in the current language (`i18n`). The pause lengths are the core's (`edge_agent::pause`),
//! which keeps the pause and its end across restarts.
//!
//! Platform tray support is the least reliable part of a desktop (no tray host, missing
//! appindicator library, a StatusNotifier host that vanishes), so creation failures are
//! returned, never panicked on, and every later update is best effort.

use crate::accounts::{AccountView, Accounts};
use crate::app;
use crate::i18n::{self, fill, Lang, Texts};
use edge_agent::pause::PauseLength;
use edge_agent::{AgentSnapshot, ConnectionState};
use std::sync::Mutex;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{MouseButton, MouseButtonState, TrayIcon, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Manager, Runtime};

const TRAY_ID: &str = "edge-agent";
const MENU_OPEN: &str = "open";
const MENU_STATE: &str = "state";
const MENU_PAUSE_HOUR: &str = "pause-hour";
const MENU_PAUSE_TOMORROW: &str = "pause-tomorrow";
const MENU_PAUSE: &str = "pause";
const MENU_RESUME: &str = "resume";
const MENU_QUIT: &str = "quit";
const MENU_ACCOUNTS: &str = "accounts";
/// Followed by the account's id.
const MENU_ACCOUNT_PREFIX: &str = "account:";
const MENU_ADD_ACCOUNT: &str = "add-account";
const MENU_PAUSE_ALL: &str = "pause-all";
const MENU_RESUME_ALL: &str = "resume-all";

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
    fill(t.tooltip, &[("state", &state_line_in(t, s))])
}

/// The state in a few words: the tooltip's and the menu's first line.
fn state_line_in(t: &Texts, s: &AgentSnapshot) -> String {
    match TrayState::from_snapshot(s) {
        TrayState::Offline if !s.logged_in => t.tip_signed_out.to_owned(),
        TrayState::Offline if s.connection == ConnectionState::Connecting => t.tip_connecting.to_owned(),
        TrayState::Offline => t.tip_offline.to_owned(),
        TrayState::Online => match &s.quiet_until {
            Some(time) => fill(t.tip_quiet, &[("time", time)]),
            None => t.tip_online.to_owned(),
        },
        TrayState::Busy => t.tip_busy.to_owned(),
        TrayState::Paused => match s.paused_until.as_deref().and_then(edge_agent::pause::local_hh_mm) {
            Some(time) => fill(t.tip_paused_until, &[("time", &time)]),
            None => t.tip_paused.to_owned(),
        },
        TrayState::Error => fill(t.tip_error, &[("error", s.last_error.as_deref().unwrap_or_default())]),
    }
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

/// The menu's items that change after it was built.
struct MenuItems<R: Runtime> {
    state_item: MenuItem<R>,
    /// For 1 hour, until tomorrow, until resumed: offered while logged in (a new pause
    /// replaces the one before, so they stay while paused).
    pause_items: [MenuItem<R>; 3],
    resume_item: MenuItem<R>,
}

/// Handles kept to update the tray later; absent when there is no tray.
struct TrayHandles<R: Runtime> {
    icon: TrayIcon<R>,
    /// Replaced with the menu when it is built anew (another language, the accounts).
    items: Mutex<MenuItems<R>>,
    /// What the platform shows now; snapshots arrive often and most change nothing here.
    shown: Mutex<Shown>,
    /// The accounts the menu lists.
    accounts: Mutex<Vec<AccountView>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Shown {
    state: TrayState,
    tooltip: String,
    line: String,
    paused: bool,
    logged_in: bool,
    lang: Lang,
}

impl Shown {
    fn of(s: &AgentSnapshot) -> Shown {
        Shown {
            state: TrayState::from_snapshot(s),
            tooltip: tooltip(s),
            line: state_line_in(i18n::t(), s),
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

/// An account's line in the Accounts submenu.
fn account_line(t: &Texts, account: &AccountView) -> String {
    let name = account.label().unwrap_or_else(|| t.account_signed_out.to_owned());
    if account.paused && account.logged_in {
        fill(t.account_paused, &[("account", &name)])
    } else {
        name
    }
}

/// The whole menu: state line, Open, Accounts, the pause lengths, Resume, (with several
/// accounts) pause or resume all, Quit.
fn build_menu<R: Runtime>(
    app: &AppHandle<R>,
    shown: &Shown,
    accounts: &[AccountView],
) -> Result<(Menu<R>, MenuItems<R>), TrayError> {
    let t = shown.lang.texts();
    // The state line is words, not an action: shown disabled.
    let state_item = MenuItem::with_id(app, MENU_STATE, &shown.line, false, None::<&str>)?;
    let open = MenuItem::with_id(app, MENU_OPEN, t.menu_open, true, None::<&str>)?;
    let logged_in = shown.logged_in;
    let pause_items = [
        MenuItem::with_id(app, MENU_PAUSE_HOUR, t.menu_pause_hour, logged_in, None::<&str>)?,
        MenuItem::with_id(app, MENU_PAUSE_TOMORROW, t.menu_pause_tomorrow, logged_in, None::<&str>)?,
        MenuItem::with_id(app, MENU_PAUSE, t.menu_pause, logged_in, None::<&str>)?,
    ];
    let resume = MenuItem::with_id(app, MENU_RESUME, t.menu_resume, logged_in && shown.paused, None::<&str>)?;

    let account_menu = Submenu::with_id(app, MENU_ACCOUNTS, t.menu_accounts, true)?;
    for account in accounts {
        let item = CheckMenuItem::with_id(
            app,
            format!("{MENU_ACCOUNT_PREFIX}{}", account.id),
            account_line(t, account),
            true,
            account.active,
            None::<&str>,
        )?;
        account_menu.append(&item)?;
    }
    account_menu.append(&PredefinedMenuItem::separator(app)?)?;
    account_menu.append(&MenuItem::with_id(
        app,
        MENU_ADD_ACCOUNT,
        t.menu_add_account,
        accounts.len() < crate::accounts::MAX_ACCOUNTS,
        None::<&str>,
    )?)?;

    let menu = Menu::new(app)?;
    menu.append_items(&[&state_item, &PredefinedMenuItem::separator(app)?, &open, &account_menu])?;
    let [hour, tomorrow, until_resumed] = &pause_items;
    menu.append_items(&[hour, tomorrow, until_resumed, &resume])?;
    if accounts.len() > 1 {
        let signed_in = accounts.iter().any(|a| a.logged_in);
        let any_paused = accounts.iter().any(|a| a.logged_in && a.paused);
        menu.append(&MenuItem::with_id(app, MENU_PAUSE_ALL, t.menu_pause_all, signed_in, None::<&str>)?)?;
        menu.append(&MenuItem::with_id(app, MENU_RESUME_ALL, t.menu_resume_all, any_paused, None::<&str>)?)?;
    }
    menu.append_items(&[
        &PredefinedMenuItem::separator(app)?,
        &MenuItem::with_id(app, MENU_QUIT, t.menu_quit, true, None::<&str>)?,
    ])?;
    Ok((menu, MenuItems { state_item, pause_items, resume_item: resume }))
}

fn build<R: Runtime>(app: &AppHandle<R>, snapshot: &AgentSnapshot) -> Result<(), TrayError> {
    let shown = Shown::of(snapshot);
    let accounts = app.try_state::<Accounts>().map(|a| a.views()).unwrap_or_default();
    let (menu, items) = build_menu(app, &shown, &accounts)?;

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

    app.manage(TrayHandles {
        icon,
        items: Mutex::new(items),
        shown: Mutex::new(shown),
        accounts: Mutex::new(accounts),
    });
    Ok(())
}

/// The pause a menu item asks for; `None` for any other item.
fn pause_length(id: &str) -> Option<PauseLength> {
    match id {
        MENU_PAUSE_HOUR => Some(PauseLength::OneHour),
        MENU_PAUSE_TOMORROW => Some(PauseLength::UntilTomorrow),
        MENU_PAUSE => Some(PauseLength::UntilResumed),
        _ => None,
    }
}

fn on_menu_event<R: Runtime>(app: &AppHandle<R>, event: MenuEvent) {
    let id = event.id().as_ref();
    let Some(accounts) = app.try_state::<Accounts>() else { return };
    // The core's Paused/Resumed event and its new snapshot update tray and window through
    // the forwarder. The pause lengths and Resume act on the account the window shows.
    if let Some(length) = pause_length(id) {
        accounts.active().pause_for(length);
        return;
    }
    if let Some(account) = id.strip_prefix(MENU_ACCOUNT_PREFIX) {
        // A real switch changes the list, and the menu is built anew with it. A check item
        // ticks or unticks itself when clicked, though, so when the list stays as it was
        // (the shown account clicked again, or a refused switch) the menu is built anew here.
        let was_shown = accounts.is_active(account);
        let switched = crate::events::switch_to(app, account);
        if let Err(err) = &switched {
            tracing::warn!(error = %err, "could not switch accounts from the tray");
        }
        if was_shown || switched.is_err() {
            rebuild(app);
        }
        return;
    }
    match id {
        MENU_OPEN => app::show_main_window(app),
        MENU_RESUME => accounts.active().resume(),
        MENU_PAUSE_ALL => accounts.pause_all(PauseLength::UntilResumed),
        MENU_RESUME_ALL => accounts.resume_all(),
        MENU_ADD_ACCOUNT => {
            if let Err(err) = crate::events::add_account(app) {
                tracing::warn!(error = %err, "could not add an account from the tray");
            }
            // The window is where the new account signs in.
            app::show_main_window(app);
        }
        MENU_QUIT => app::quit(app),
        other => tracing::debug!(id = other, "unknown tray menu item"),
    }
}

/// Builds the menu anew from what is shown and the accounts.
fn rebuild<R: Runtime>(app: &AppHandle<R>) {
    let Some(handles) = app.try_state::<TrayHandles<R>>() else { return };
    let shown = match handles.shown.lock() {
        Ok(shown) => shown.clone(),
        Err(_) => return,
    };
    let accounts = match handles.accounts.lock() {
        Ok(accounts) => accounts.clone(),
        Err(_) => return,
    };
    match build_menu(app, &shown, &accounts) {
        Ok((menu, items)) => {
            if let Err(err) = handles.icon.set_menu(Some(menu)) {
                tracing::warn!(error = %err, "could not change the tray menu");
                return;
            }
            if let Ok(mut current) = handles.items.lock() {
                *current = items;
            }
        }
        Err(err) => tracing::warn!(error = %err, "could not build the tray menu"),
    }
}

/// The accounts changed (added, removed, switched, signed in, paused): the menu lists
/// them anew.
pub fn set_accounts<R: Runtime>(app: &AppHandle<R>, views: &[AccountView]) {
    let Some(handles) = app.try_state::<TrayHandles<R>>() else { return };
    let changed = match handles.accounts.lock() {
        Ok(mut accounts) if accounts.as_slice() != views => {
            *accounts = views.to_vec();
            true
        }
        _ => false,
    };
    if changed {
        rebuild(app);
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
    if shown.lang != next.lang {
        // Every label changes: the menu is built anew in the new language.
        rebuild(app);
        return;
    }
    let Ok(items) = handles.items.lock() else { return };
    let menu_failed = |err: tauri::Error| tracing::warn!(error = %err, "could not change the tray menu");
    if shown.line != next.line {
        items.state_item.set_text(&next.line).unwrap_or_else(menu_failed);
    }
    if shown.logged_in != next.logged_in {
        for item in &items.pause_items {
            item.set_enabled(next.logged_in).unwrap_or_else(menu_failed);
        }
    }
    if (shown.logged_in && shown.paused) != (next.logged_in && next.paused) {
        items.resume_item.set_enabled(next.logged_in && next.paused).unwrap_or_else(menu_failed);
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
        s.paused = true;
        s.paused_until = Some("2026-12-06T17:00:00Z".into());
        let local = edge_agent::pause::local_hh_mm("2026-12-06T17:00:00Z").unwrap();
        assert_eq!(tooltip_in(&i18n::EN, &s), format!("Edge Agent — paused until {local}, no new tasks"));
        assert_eq!(tooltip_in(&i18n::FR, &s), format!("Edge Agent — en pause jusqu'à {local}, aucune nouvelle tâche"));
        assert_eq!(state_line_in(&i18n::EN, &s), format!("paused until {local}, no new tasks"));

        let mut s = snapshot();
        s.quiet_until = Some("07:00".into());
        assert_eq!(tooltip_in(&i18n::EN, &s), "Edge Agent — quiet hours until 07:00");
        assert_eq!(tooltip_in(&i18n::FR, &s), "Edge Agent — heures calmes jusqu'à 07:00");
    }

    #[test]
    fn the_menus_pause_items_are_the_cores_lengths() {
        assert_eq!(pause_length(MENU_PAUSE_HOUR), Some(PauseLength::OneHour));
        assert_eq!(pause_length(MENU_PAUSE_TOMORROW), Some(PauseLength::UntilTomorrow));
        assert_eq!(pause_length(MENU_PAUSE), Some(PauseLength::UntilResumed));
        assert_eq!(pause_length(MENU_RESUME), None);
        assert_eq!(pause_length(MENU_OPEN), None);
    }

    #[test]
    fn the_accounts_menu_names_each_account_and_says_which_are_paused() {
        let view = |creator: Option<&str>, paused: bool| AccountView {
            id: "acct-2".into(),
            active: false,
            logged_in: creator.is_some(),
            hub_url: Some("https://hub.example.com/".into()),
            creator_id: creator.map(str::to_owned),
            paused,
            connection: ConnectionState::Online,
            busy: 0,
        };
        assert_eq!(account_line(&i18n::EN, &view(Some("c-ann"), false)), "c-ann · hub.example.com");
        assert_eq!(account_line(&i18n::FR, &view(Some("c-ann"), true)), "c-ann · hub.example.com (en pause)");
        assert_eq!(account_line(&i18n::EN, &view(None, false)), "New account (not signed in)");
        // A signed-out account is never said to be paused: it runs nothing either way.
        assert_eq!(account_line(&i18n::FR, &view(None, true)), "Nouveau compte (non connecté)");
    }

    #[test]
    fn every_state_icon_decodes() {
        for state in [TrayState::Offline, TrayState::Online, TrayState::Busy, TrayState::Paused, TrayState::Error] {
            let img = image(state).unwrap();
            assert_eq!((img.width(), img.height()), (32, 32));
        }
    }
}
