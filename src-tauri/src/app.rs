//! Builds and runs the Tauri app around its accounts, each an in-process `AgentService`.

use crate::accounts::Accounts;
use crate::settings::TrayOptions;
use crate::{commands, events, notifications, tray};
use edge_agent::AgentService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tauri::{AppHandle, Manager, RunEvent, Runtime, WindowEvent};

/// The core as Tauri state; commands, tray and event forwarder share it.
pub type Agent = Arc<AgentService>;

const MAIN_WINDOW: &str = "main";
/// How long Quit waits for the core to hand back running jobs and close its connection.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

static SHUT_DOWN: AtomicBool = AtomicBool::new(false);

/// Runs the app; returns the process exit code.
pub fn run() -> i32 {
    skip_gdk_gl_on_x11();
    let options = match TrayOptions::from_env_and_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("edge-agent-tray: invalid setting: {err}");
            return 2;
        }
    };

    let _log_guard = crate::logging::init(&options);

    // One tokio runtime for the core and for Tauri's async commands, so the core's
    // `tokio::spawn` works from any command and from setup.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("edge-agent-rt").build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "could not start the async runtime");
            eprintln!("edge-agent-tray: could not start the async runtime: {err}");
            return 1;
        }
    };
    tauri::async_runtime::set(runtime.handle().clone());
    let _enter = runtime.enter();

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        profile = %options.agent.profile,
        keychain = %options.agent.keychain,
        data_dir = %options.agent.data_dir.display(),
        "tray app starting"
    );
    // The tray's words (menu, notifications) in the person's language, before any is shown.
    crate::i18n::set_current(crate::preferences::Preferences::load(&options.agent.data_dir).language.resolve());
    // An enabled start at login follows the program if an update moved it.
    if let Err(err) = crate::autostart::reapply() {
        tracing::warn!(error = %err, "could not renew the start-at-login entry");
    }
    let accounts = Accounts::load(options.agent);
    // Checks and tells, never installs: see `updates`. The program is one for all the
    // accounts, so one account checks: the first, whose hub the app was installed for.
    let channel = std::env::var("EDGE_AGENT_UPDATE_CHANNEL")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| edge_agent::updater::DEFAULT_CHANNEL.to_owned());
    accounts.main_agent().enable_updates(edge_agent::updater::AutoUpdate::tell_only(channel));
    let show_at_start = options.show_window;

    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        tauri::Builder::default()
            // Must be the first plugin: a second launch hands over to the running one.
            .plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
                tracing::info!("second launch: showing the running instance's window");
                show_main_window(app);
            }))
            .plugin(tauri_plugin_opener::init())
            .manage(accounts)
            .manage(crate::events::Forwarders::default())
            .manage(crate::device_sign_in::DeviceSignIn::default())
            .manage(crate::updates::PlannedRestart::default())
            .manage(crate::notifications::Notifications::default())
            .invoke_handler(tauri::generate_handler![
                commands::get_state,
                commands::login,
                commands::logout,
                commands::pause,
                commands::resume,
                commands::cancel_job,
                commands::job_screenshot,
                commands::take_open_job,
                commands::start_device_login,
                commands::finish_device_login,
                commands::cancel_device_login,
                commands::open_approval_page,
                commands::get_consent,
                commands::grant_capability,
                commands::revoke_capability,
                commands::settings::get_settings,
                commands::settings::save_caps,
                commands::settings::set_quiet_hours,
                commands::settings::set_uploads_dir,
                commands::settings::set_start_at_login,
                commands::settings::set_language,
                commands::settings::open_log_folder,
                commands::settings::get_usage,
                commands::settings::log_in_to_site,
                commands::restart_for_update,
                commands::install_update,
                commands::accounts::list_accounts,
                commands::accounts::add_account,
                commands::accounts::switch_account,
                commands::accounts::remove_account,
                commands::accounts::pause_all,
                commands::accounts::resume_all,
            ])
            .on_window_event(|window, event| {
                // Closing the window destroys it (the agent keeps working in the tray, and
                // `ExitRequested` below keeps the app alive): a hidden webview would keep
                // WebKit's web and network processes, hundreds of MB, for nothing. The tray's
                // Open item, or launching the app again, builds a fresh window.
                if let WindowEvent::Destroyed = event {
                    tracing::info!(window = window.label(), "window closed; the agent keeps running in the tray");
                }
            })
            .setup(move |app| {
                setup(app.handle(), show_at_start);
                Ok(())
            })
            .build(tauri::generate_context!())
    }));

    let app = match built {
        Ok(Ok(app)) => app,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "could not start the tray app");
            eprintln!("edge-agent-tray: could not start: {err}");
            return 1;
        }
        // GTK/WebKit initialisation panics without a display; say so instead of a trace.
        Err(_) => {
            tracing::error!("the windowing system could not be initialised (is DISPLAY or WAYLAND_DISPLAY set?)");
            eprintln!(
                "edge-agent-tray: the windowing system could not be initialised (is DISPLAY or WAYLAND_DISPLAY set?)"
            );
            return 1;
        }
    };

    let code = app.run_return(move |app, event| match event {
        // The last window closing (or a desktop logout request) must not stop the agent;
        // only Quit, which exits with an explicit code, does.
        RunEvent::ExitRequested { code: None, api, .. } => api.prevent_exit(),
        RunEvent::Exit => shutdown_blocking(app),
        _ => {}
    });
    tracing::info!(code, "tray app exited");
    code
}

/// GTK 3 opens an OpenGL context (on machines without a GPU driver, Mesa's llvmpipe: about
/// 50 MB) when it starts on X11, before any window exists. The tray needs none, and the
/// webview brings its own EGL when a window opens, so on X11 GDK's GL is switched off unless
/// the person set `GDK_GL` themselves. Wayland sessions are left alone: there the webview
/// presents through GDK's GL.
fn skip_gdk_gl_on_x11() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("GDK_GL").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        // Called first thing in `run`, before any thread exists, so nothing reads the
        // environment concurrently.
        std::env::set_var("GDK_GL", "disable");
    }
}

fn setup<R: Runtime>(app: &AppHandle<R>, show_at_start: bool) {
    let accounts = app.state::<Accounts>();
    let has_tray = match tray::create(app, &accounts.active().snapshot()) {
        Ok(()) => {
            tracing::info!("tray icon created");
            true
        }
        Err(err) => {
            tracing::warn!(error = %err, "no tray icon; showing the window instead");
            false
        }
    };
    for (id, agent) in accounts.all() {
        events::spawn_forwarder(app.clone(), id, agent);
    }
    quit_on_signal(app);
    if show_at_start || !has_tray {
        show_main_window(app);
    }

    // The keychain may block (an unlock prompt) or fail; keep that off the event loop.
    for (id, agent) in accounts.all() {
        let app = app.clone();
        tauri::async_runtime::spawn(async move {
            let logged_in = match agent.reload_credentials().await {
                Ok(snapshot) => {
                    tracing::info!(account = id, logged_in = snapshot.logged_in, keychain = ?snapshot.keychain_backend, "stored login read");
                    snapshot.logged_in
                }
                Err(err) => {
                    tracing::warn!(account = id, error = %err, code = err.code(), "could not read the stored login");
                    // The window only shows the login form; say why the login was not found.
                    notifications::notify_startup_error(&app, &err);
                    false
                }
            };
            let active = app.state::<Accounts>().is_active(&id);
            if logged_in {
                if let Err(err) = agent.start() {
                    tracing::error!(account = id, error = %err, "could not start the agent");
                }
            } else if active {
                // Nothing to run until someone logs in: the window is where that happens.
                show_main_window(&app);
            }
            events::publish_state(&app);
        });
    }
}

/// Shows the window, creating it on first use. It is not created at start (`"create":
/// false` in tauri.conf.json): a logged-in agent usually runs with its window closed, and
/// the webview's processes cost far more memory than the rest of the app.
pub fn show_main_window<R: Runtime>(app: &AppHandle<R>) {
    let handle = app.clone();
    // Window creation belongs on the event-loop thread; callers come from tokio tasks too.
    let result = app.run_on_main_thread(move || {
        if let Err(err) = show_or_create(&handle) {
            tracing::warn!(error = %err, "could not show the window");
        }
    });
    if let Err(err) = result {
        tracing::warn!(error = %err, "could not reach the event loop to show the window");
    }
}

fn show_or_create<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    let window = match app.get_webview_window(MAIN_WINDOW) {
        Some(window) => window,
        None => {
            let config = app
                .config()
                .app
                .windows
                .iter()
                .find(|w| w.label == MAIN_WINDOW)
                .cloned()
                .ok_or_else(|| tauri::Error::WindowNotFound)?;
            tauri::WebviewWindowBuilder::from_config(app, &config)?.build()?
        }
    };
    for (what, result) in [("show", window.show()), ("unminimize", window.unminimize()), ("focus", window.set_focus())]
    {
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not {what} the window");
        }
    }
    Ok(())
}

/// SIGTERM (session logout, `kill`) and Ctrl-C take the same way out as the Quit item, so
/// running jobs are handed back and `state.json` says the agent stopped.
#[cfg(unix)]
fn quit_on_signal<R: Runtime>(app: &AppHandle<R>) {
    use tokio::signal::unix::{signal, SignalKind};
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "cannot watch for termination signals");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: quitting"),
            _ = int.recv() => tracing::info!("SIGINT: quitting"),
        }
        quit(&app);
    });
}

#[cfg(not(unix))]
fn quit_on_signal<R: Runtime>(_app: &AppHandle<R>) {}

/// Tray "Quit": stop the core cleanly, then leave the event loop.
pub fn quit<R: Runtime>(app: &AppHandle<R>) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        shutdown(&app.state::<Accounts>()).await;
        app.exit(0);
    });
}

/// Stops the core before the process restarts into an update (Tauri's restart skips the
/// `Exit` event's clean-up).
pub async fn shutdown_for_restart(accounts: &Accounts) {
    shutdown(accounts).await;
}

/// Every account at once: the grace is for all of them, not for each in turn.
async fn shutdown(accounts: &Accounts) {
    if SHUT_DOWN.swap(true, Ordering::SeqCst) {
        return;
    }
    let stopping: Vec<_> = accounts
        .all()
        .into_iter()
        .map(|(_, agent)| tauri::async_runtime::spawn(async move { agent.shutdown().await }))
        .collect();
    let all = async {
        for task in stopping {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!("the agents did not shut down within {SHUTDOWN_GRACE:?}");
    }
}

fn shutdown_blocking<R: Runtime>(app: &AppHandle<R>) {
    if !SHUT_DOWN.load(Ordering::SeqCst) {
        tauri::async_runtime::block_on(shutdown(&app.state::<Accounts>()));
    }
}
