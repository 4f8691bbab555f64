//! Desktop notifications for what a person should know without opening the window: a job
//! started, finished or failed, the agent needs a new login, or browser jobs are paused,
//! need a site login, or cannot keep a site's session.
//!
//! Sent with notify-rust, which on Linux speaks D-Bus `org.freedesktop.Notifications`
//! directly. A missing notification server is normal on minimal desktops, so failures are
//! logged and never reach the caller.

use edge_agent::{AgentError, AgentEvent};
use tauri::{AppHandle, Runtime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub title: String,
    pub body: String,
    pub urgent: bool,
}

/// Which events deserve a notification, and in what words.
pub fn note_for(event: &AgentEvent) -> Option<Note> {
    let note = |title: &str, body: String, urgent: bool| Some(Note { title: title.to_owned(), body, urgent });
    match event {
        AgentEvent::JobStarted { id, job_type } => {
            note("Job started", format!("{job_type} {} is running.", short(id)), false)
        }
        AgentEvent::JobFinished { id, job_type } => {
            note("Job finished", format!("{job_type} {} succeeded.", short(id)), false)
        }
        AgentEvent::JobFailed { id, job_type, message, .. } => {
            note("Job failed", format!("{job_type} {} failed: {message}", short(id)), true)
        }
        AgentEvent::LoginRequired { reason, .. } => note("Edge Agent needs you to log in again", reason.clone(), true),
        AgentEvent::BrowserPaused { reason, site, .. } => note(
            "Browser jobs paused",
            format!("{site} kept answering {reason}; browser jobs wait for a cool-down, then resume by themselves."),
            true,
        ),
        AgentEvent::BrowserResumed => note("Browser jobs resumed", "The cool-down is over.".to_owned(), false),
        AgentEvent::BrowserLoginRequired { site } => note(
            "Log in to the site",
            format!(
                "{site} shows its logged-out page. Log in with `edge-agent browser login --site {site}`, then retry."
            ),
            true,
        ),
        AgentEvent::BrowserSessionVolatile { reason } => note(
            "Site logins will not be kept",
            format!("No keychain key for browser sessions ({reason}); site logins last until the agent stops."),
            true,
        ),
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
    show(app, Note { title: "Edge Agent cannot read its login".to_owned(), body: error.to_string(), urgent: true });
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

    #[test]
    fn job_events_and_login_required_notify_others_do_not() {
        let started = AgentEvent::JobStarted { id: "job_5d9ef9d230b38dda".into(), job_type: "http_request".into() };
        assert_eq!(note_for(&started).unwrap().body, "http_request job_5d9ef9d2… is running.");
        let failed = AgentEvent::JobFailed {
            id: "x".into(),
            job_type: "http_request".into(),
            code: "timeout".into(),
            message: "timed out".into(),
        };
        let note = note_for(&failed).unwrap();
        assert!(note.urgent && note.body.ends_with("failed: timed out"));
        assert!(note_for(&AgentEvent::Paused).is_none());
        let relogin = AgentEvent::LoginRequired { reason: "the hub revoked this agent".into() };
        assert_eq!(note_for(&relogin).unwrap().body, "the hub revoked this agent");
    }

    #[test]
    fn browser_pauses_and_site_logins_notify() {
        let paused = AgentEvent::BrowserPaused { reason: "RATE_LIMITED".into(), site: "fanhub".into(), until_ms: 1 };
        let note = note_for(&paused).unwrap();
        assert!(note.urgent && note.body.contains("fanhub") && note.body.contains("RATE_LIMITED"), "{note:?}");
        let login = note_for(&AgentEvent::BrowserLoginRequired { site: "fanhub".into() }).unwrap();
        assert!(login.body.contains("edge-agent browser login --site fanhub"), "{login:?}");
        assert!(note_for(&AgentEvent::BrowserResumed).is_some());
        assert!(note_for(&AgentEvent::BrowserSessionVolatile { reason: "no keychain".into() }).unwrap().urgent);
        assert!(note_for(&AgentEvent::BrowserLoggedIn { site: "fanhub".into() }).is_none());
    }
}
