//! Desktop notifications for what a person should know without opening the window: a job
//! started, finished or failed, the agent needs a new login, or browser jobs are paused,
//! need a site login, or cannot keep a site's session.
//!
//! Sent with notify-rust, which on Linux speaks D-Bus `org.freedesktop.Notifications`
//! directly. A missing notification server is normal on minimal desktops, so failures are
//! logged and never reach the caller.

use crate::i18n::{self, fill, Texts};
use edge_agent::{AgentError, AgentEvent};
use edge_protocol::jobs;
use tauri::{AppHandle, Runtime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub title: String,
    pub body: String,
    pub urgent: bool,
}

/// Which events deserve a notification, and in what words (the current language's).
pub fn note_for(event: &AgentEvent) -> Option<Note> {
    note_in(i18n::t(), event)
}

/// A job's kind in words; an unknown kind by its name.
fn kind(t: &Texts, job_type: &str) -> String {
    match job_type {
        jobs::HTTP_REQUEST => t.kind_http_request.to_owned(),
        jobs::BUNDLE => t.kind_bundle.to_owned(),
        jobs::SEND_DM => t.kind_send_dm.to_owned(),
        jobs::BROADCAST_DM => t.kind_broadcast_dm.to_owned(),
        jobs::SCHEDULE_POST => t.kind_schedule_post.to_owned(),
        jobs::SCRAPE_SUBS => t.kind_scrape_subs.to_owned(),
        other => fill(t.kind_other, &[("type", other)]),
    }
}

fn note_in(t: &Texts, event: &AgentEvent) -> Option<Note> {
    let note = |title: &str, body: String, urgent: bool| Some(Note { title: title.to_owned(), body, urgent });
    let job = |id: &str, job_type: &str| fill(t.job_body, &[("kind", &kind(t, job_type)), ("id", &short(id))]);
    match event {
        AgentEvent::JobStarted { id, job_type } => note(t.job_started, job(id, job_type), false),
        AgentEvent::JobFinished { id, job_type } => note(t.job_finished, job(id, job_type), false),
        AgentEvent::JobFailed { id, job_type, message, .. } => note(
            t.job_failed,
            fill(t.job_failed_body, &[("kind", &kind(t, job_type)), ("id", &short(id)), ("message", message)]),
            true,
        ),
        AgentEvent::LoginRequired { reason, .. } => note(t.login_required, reason.clone(), true),
        AgentEvent::BrowserPaused { reason, site, .. } => {
            note(t.browser_paused, fill(t.browser_paused_body, &[("site", site), ("reason", reason)]), true)
        }
        AgentEvent::BrowserResumed => note(t.browser_resumed, t.browser_resumed_body.to_owned(), false),
        AgentEvent::BrowserLoginRequired { site } => {
            note(&fill(t.site_login, &[("site", site)]), fill(t.site_login_body, &[("site", site)]), true)
        }
        AgentEvent::BrowserSessionVolatile { reason } => {
            note(t.volatile, fill(t.volatile_body, &[("reason", reason)]), true)
        }
        AgentEvent::UpdateReady { version } => {
            note(t.update_ready, fill(t.update_ready_body, &[("version", version)]), false)
        }
        AgentEvent::UpdateAvailable { version } => {
            note(t.update_available, fill(t.update_available_body, &[("version", version)]), false)
        }
        AgentEvent::UpdatesUnreachable { days } => {
            note(t.updates_unreachable, fill(t.updates_unreachable_body, &[("days", &days.to_string())]), true)
        }
        _ => None,
    }
}

/// Enough of a job id (`job_` + hex) to tell jobs apart in a notification bubble; the
/// window shows the whole id.
fn short(id: &str) -> String {
    const KEEP: usize = 12;
    if id.chars().count() > KEEP {
        format!("{}…", id.chars().take(KEEP).collect::<String>())
    } else {
        id.to_owned()
    }
}

pub fn notify_event<R: Runtime>(app: &AppHandle<R>, event: &AgentEvent) {
    if let Some(note) = note_for(event) {
        show(app, note);
    }
}

/// The stored login could not be read (keychain locked or missing): the app runs, but as
/// if logged out, which would be puzzling without a word.
pub fn notify_startup_error<R: Runtime>(app: &AppHandle<R>, error: &AgentError) {
    show(app, Note { title: i18n::t().startup_error.to_owned(), body: error.to_string(), urgent: true });
}

fn show<R: Runtime>(app: &AppHandle<R>, note: Note) {
    let app_name = app.package_info().name.clone();
    // The D-Bus call blocks until the server answers; keep it off the event loop.
    tauri::async_runtime::spawn_blocking(move || {
        let mut n = notify_rust::Notification::new();
        n.appname(&app_name).summary(&note.title).body(&note.body);
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            n.icon("dialog-information");
            if note.urgent {
                n.urgency(notify_rust::Urgency::Critical);
            }
        }
        match n.show() {
            Ok(_) => tracing::debug!(title = %note.title, "notification shown"),
            Err(err) => tracing::warn!(error = %err, title = %note.title, "could not show a desktop notification"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::{EN, FR};

    #[test]
    fn job_events_and_login_required_notify_in_words_others_do_not() {
        let started = AgentEvent::JobStarted { id: "job_5d9ef9d230b38dda".into(), job_type: "http_request".into() };
        let note = note_in(&EN, &started).unwrap();
        assert_eq!((note.title.as_str(), note.body.as_str()), ("Task started", "Web request (job_5d9ef9d2…)"));
        let note = note_in(&FR, &started).unwrap();
        assert_eq!((note.title.as_str(), note.body.as_str()), ("Tâche démarrée", "Requête web (job_5d9ef9d2…)"));
        let failed = AgentEvent::JobFailed {
            id: "x".into(),
            job_type: "http_request".into(),
            code: "timeout".into(),
            message: "timed out".into(),
        };
        let note = note_in(&EN, &failed).unwrap();
        assert!(note.urgent && note.body == "Web request (x): timed out", "{note:?}");
        assert_eq!(note_in(&FR, &failed).unwrap().body, "Requête web (x) : timed out");
        let other = AgentEvent::JobFinished { id: "y".into(), job_type: "resize_photos".into() };
        assert_eq!(note_in(&FR, &other).unwrap().body, "Tâche resize_photos (y)");
        assert!(note_in(&EN, &AgentEvent::Paused).is_none());
        let relogin = AgentEvent::LoginRequired { reason: "the hub revoked this agent".into() };
        assert_eq!(note_in(&EN, &relogin).unwrap().body, "the hub revoked this agent");
        assert_eq!(note_in(&FR, &relogin).unwrap().title, "Edge Agent a besoin que vous vous reconnectiez");
    }

    #[test]
    fn browser_pauses_and_site_logins_notify_in_both_languages() {
        let paused = AgentEvent::BrowserPaused { reason: "RATE_LIMITED".into(), site: "fanhub".into(), until_ms: 1 };
        for t in [&EN, &FR] {
            let note = note_in(t, &paused).unwrap();
            assert!(note.urgent && note.body.contains("fanhub") && note.body.contains("RATE_LIMITED"), "{note:?}");
            assert!(note_in(t, &AgentEvent::BrowserResumed).is_some());
            assert!(note_in(t, &AgentEvent::BrowserSessionVolatile { reason: "no keychain".into() }).unwrap().urgent);
            assert!(note_in(t, &AgentEvent::BrowserLoggedIn { site: "fanhub".into() }).is_none());
        }
        let login = note_in(&EN, &AgentEvent::BrowserLoginRequired { site: "fanhub".into() }).unwrap();
        assert_eq!(login.title, "Log in to fanhub");
        assert!(login.body.contains("choose “Log in to fanhub”"), "{login:?}");
        assert!(!login.body.contains("edge-agent browser login"), "no command to copy: {login:?}");
        let login = note_in(&FR, &AgentEvent::BrowserLoginRequired { site: "fanhub".into() }).unwrap();
        assert_eq!(login.title, "Connectez-vous à fanhub");
    }

    #[test]
    fn updates_notify_in_words_with_no_command_to_copy() {
        let ready = note_in(&EN, &AgentEvent::UpdateReady { version: "1.4.0".into() }).unwrap();
        assert_eq!(ready.title, "Update ready");
        assert!(ready.body.contains("1.4.0") && ready.body.contains("Restart now or tonight"), "{ready:?}");
        let available = note_in(&FR, &AgentEvent::UpdateAvailable { version: "1.4.0".into() }).unwrap();
        assert!(available.body.starts_with("Edge Agent 1.4.0 est sorti"), "{available:?}");
        assert!(!available.body.contains("apt") && !available.body.contains("sudo"), "{available:?}");
        let stale = note_in(&EN, &AgentEvent::UpdatesUnreachable { days: 9 }).unwrap();
        assert!(stale.urgent && stale.body.contains("for 9 days"), "{stale:?}");
        assert!(note_in(&FR, &AgentEvent::UpdatesUnreachable { days: 9 }).unwrap().body.contains("depuis 9 jours"));
    }
}
