//! Desktop notifications for what a person should know without opening the window: a job
//! started, moved on, finished or failed, the agent needs a new login, or browser jobs are
//! paused, need a site login, or cannot keep a site's session.
//!
//! Grouped, never a storm ([`Grouper`], a pure function of the events and a clock):
//! - A job gets ONE notification, which its start, its progress and its end update in place
//!   (the same notification id, freedesktop `replaces_id`): a broadcast to 40 fans is one
//!   bubble that counts 12/40, not forty. Progress updates it at most every
//!   [`PROGRESS_EVERY`]; its end always does.
//! - At most one job per [`NEW_JOB_EVERY`] gets its own notification. A job that starts
//!   sooner after another is silent while it runs, and when it ends it is counted in the one
//!   summary notification ("12 tasks finished, 1 failed"), shown at most every
//!   [`SUMMARY_EVERY`] and updated in place. Its counts add up until no job ended for
//!   [`QUIET_RESETS`]: a failure is never dropped from it, and a summary with a failure is
//!   urgent.
//! - Any other notification (a login needed, browser tasks paused) is shown once per
//!   [`SAME_NOTE_EVERY`] for the same words.
//!
//! - The hub's signing keys ([`ExpiryMemory`]): once when the 30-day warning starts and once
//!   when they have expired, kept in `<data dir>/tray-expiry-warnings.json`, so neither a
//!   restart nor every new snapshot says it again.
//!
//! 100 jobs in 10 seconds thus make a handful of notifications. Clicking one opens the
//! window on that job (its "default" action; the summary opens the Jobs screen).
//!
//! Sent with notify-rust, which on Linux speaks D-Bus `org.freedesktop.Notifications`
//! directly. A missing notification server is normal on minimal desktops, so failures are
//! logged and never reach the caller.

use crate::i18n::{self, fill, Texts};
use edge_agent::state::{Expiring, Expiry, ExpiryWarning, JobProgress, JobSummary};
use edge_agent::{AgentError, AgentEvent, AgentSnapshot, JobRecord};
use edge_protocol::jobs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tauri::{AppHandle, Emitter, Manager, Runtime};

/// At most one job per this gets a notification of its own.
pub const NEW_JOB_EVERY: Duration = Duration::from_secs(10);
/// A job's own notification follows its progress at most this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The summary of the jobs without their own notification, at most this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// The summary's counts start again after this long without a job ending.
pub const QUIET_RESETS: Duration = Duration::from_secs(60);
/// The same words (a login needed, browser tasks paused) once per this.
pub const SAME_NOTE_EVERY: Duration = Duration::from_secs(60);

/// The window's event asking it to show a job (`null`: the Jobs screen).
pub const OPEN_JOB_EVENT: &str = "agent://open-job";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub title: String,
    pub body: String,
    pub urgent: bool,
}

/// What a job does, in words, from the core's neutral summary; its kind when the summary
/// says too little (no site yet, another job type).
pub fn job_words(
    t: &Texts,
    job_type: &str,
    summary: &JobSummary,
    progress: Option<JobProgress>,
    ended: bool,
) -> String {
    let Some(site) = summary.site.as_deref() else { return kind(t, job_type) };
    match job_type {
        jobs::SEND_DM => match summary.recipient.as_deref() {
            Some(recipient) => fill(
                if ended { t.words_dm_done } else { t.words_dm_running },
                &[("recipient", recipient), ("site", site)],
            ),
            None => kind(t, job_type),
        },
        jobs::BROADCAST_DM => {
            let total = progress.map(|p| p.total).or(summary.recipients).unwrap_or(0).to_string();
            match progress {
                Some(p) => fill(
                    t.words_broadcast_progress,
                    &[("total", &total), ("site", site), ("done", &p.done.to_string())],
                ),
                None => fill(t.words_broadcast, &[("total", &total), ("site", site)]),
            }
        }
        jobs::SCHEDULE_POST => fill(t.words_post, &[("site", site)]),
        jobs::SCRAPE_SUBS => fill(t.words_scrape, &[("site", site)]),
        _ => kind(t, job_type),
    }
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

/// Which events deserve a notification, and in what words (`t`'s language), before
/// grouping.
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

/// Which notification a [`Show`] puts up or updates: one per job, one summary, one per
/// title for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Slot {
    Job(String),
    Summary,
    Other(String),
}

/// One notification to put up, or to update in place when its slot has one already.
#[derive(Debug, Clone, PartialEq)]
pub struct Show {
    pub slot: Slot,
    pub note: Note,
}

/// The grouping rule of the module doc, as a pure function of the events and a clock.
#[derive(Debug, Default)]
pub struct Grouper {
    /// Jobs with their own notification, and when it last followed their progress.
    own: HashMap<String, Option<Instant>>,
    last_new_job: Option<Instant>,
    /// The summary's counts since the last quiet spell.
    finished: u32,
    failed: u32,
    /// The counts changed since the summary was last shown.
    unshown: bool,
    last_summary: Option<Instant>,
    last_end: Option<Instant>,
    /// Other notifications' words, and when they were last shown.
    others: HashMap<(String, String), Instant>,
}

impl Grouper {
    /// What `event` puts up or updates at `now`; `record` is the job's record in the
    /// snapshot, for its words (absent: the job's kind).
    pub fn on_event(&mut self, t: &Texts, now: Instant, event: &AgentEvent, record: Option<&JobRecord>) -> Vec<Show> {
        let summary = record.map(|r| r.summary.clone()).unwrap_or_default();
        let progress = record.and_then(|r| r.progress);
        let job_note = |title: &str, job_type: &str, progress: Option<JobProgress>, ended: bool, urgent: bool| Note {
            title: title.to_owned(),
            body: job_words(t, job_type, &summary, progress, ended),
            urgent,
        };
        match event {
            AgentEvent::JobStarted { id, job_type } => {
                if self.last_new_job.is_some_and(|at| now.duration_since(at) < NEW_JOB_EVERY) {
                    return Vec::new();
                }
                self.last_new_job = Some(now);
                self.own.insert(id.clone(), None);
                vec![Show {
                    slot: Slot::Job(id.clone()),
                    note: job_note(t.job_started, job_type, progress, false, false),
                }]
            }
            AgentEvent::JobProgress { id, job_type, done, total } => {
                let Some(last) = self.own.get_mut(id) else { return Vec::new() };
                if last.is_some_and(|at| now.duration_since(at) < PROGRESS_EVERY) {
                    return Vec::new();
                }
                *last = Some(now);
                let progress = Some(JobProgress { done: *done, total: *total });
                vec![Show {
                    slot: Slot::Job(id.clone()),
                    note: job_note(t.job_progress, job_type, progress, false, false),
                }]
            }
            AgentEvent::JobFinished { id, job_type } | AgentEvent::JobFailed { id, job_type, .. } => {
                let failed = matches!(event, AgentEvent::JobFailed { .. });
                if self.own.remove(id).is_some() {
                    let mut note = if failed {
                        job_note(t.job_failed, job_type, progress, true, true)
                    } else {
                        job_note(t.job_finished, job_type, progress, true, false)
                    };
                    if let AgentEvent::JobFailed { message, .. } = event {
                        if !message.is_empty() {
                            note.body = format!("{}\n{message}", note.body);
                        }
                    }
                    return vec![Show { slot: Slot::Job(id.clone()), note }];
                }
                if self.last_end.is_some_and(|at| now.duration_since(at) >= QUIET_RESETS) {
                    self.finished = 0;
                    self.failed = 0;
                }
                self.last_end = Some(now);
                if failed {
                    self.failed += 1;
                } else {
                    self.finished += 1;
                }
                self.unshown = true;
                self.tick(t, now)
            }
            other => {
                let Some(note) = note_in(t, other) else { return Vec::new() };
                let key = (note.title.clone(), note.body.clone());
                if self.others.get(&key).is_some_and(|at| now.duration_since(*at) < SAME_NOTE_EVERY) {
                    return Vec::new();
                }
                self.others.retain(|_, at| now.duration_since(*at) < SAME_NOTE_EVERY);
                self.others.insert(key, now);
                vec![Show { slot: Slot::Other(note.title.clone()), note }]
            }
        }
    }

    /// The summary, when it has news and its time has come.
    pub fn tick(&mut self, t: &Texts, now: Instant) -> Vec<Show> {
        if !self.unshown || self.last_summary.is_some_and(|at| now.duration_since(at) < SUMMARY_EVERY) {
            return Vec::new();
        }
        self.unshown = false;
        self.last_summary = Some(now);
        let note = Note {
            title: t.summary_title.to_owned(),
            body: summary_words(t, self.finished, self.failed),
            urgent: self.failed > 0,
        };
        vec![Show { slot: Slot::Summary, note }]
    }

    /// When [`Grouper::tick`] has something to show; `None`: nothing waits.
    pub fn next_due(&self) -> Option<Instant> {
        if !self.unshown {
            return None;
        }
        Some(self.last_summary.map_or_else(Instant::now, |at| at + SUMMARY_EVERY))
    }
}

/// "12 tasks finished, 1 failed".
fn summary_words(t: &Texts, finished: u32, failed: u32) -> String {
    let count =
        |one: &str, many: &str, n: u32| if n == 1 { one.to_owned() } else { fill(many, &[("count", &n.to_string())]) };
    let finished_words = count(t.summary_finished_one, t.summary_finished_many, finished);
    match (finished, failed) {
        (_, 0) => finished_words,
        (0, n) => count(t.summary_failed_only_one, t.summary_failed_only_many, n),
        (_, n) => fill(
            t.summary_both,
            &[("finished", &finished_words), ("failed", &count(t.summary_failed_one, t.summary_failed_many, n))],
        ),
    }
}

/// The app's notifications: the grouping, and the server's id of each slot's notification.
#[derive(Default)]
pub struct Notifications {
    grouper: Mutex<Grouper>,
    ids: Mutex<HashMap<Slot, u32>>,
    /// The job a clicked notification asked for, until the window takes it (a window
    /// built by the click is not listening yet when the click arrives).
    open_job: Mutex<Option<Option<String>>>,
    /// To the one thread that talks to the notification server, started on first use.
    queue: Mutex<Option<std::sync::mpsc::Sender<Show>>>,
    /// The task waiting for a click on each slot's notification. The server tells the
    /// connection of the latest update only, so an update replaces the slot's waiter.
    waiters: Mutex<HashMap<Slot, tauri::async_runtime::JoinHandle<()>>>,
    /// Which signing-key warnings were shown, per account folder: loaded from its file on
    /// first use and kept here too, so a file that cannot be written does not mean a
    /// notification per snapshot.
    expiries: Mutex<HashMap<PathBuf, ExpiryMemory>>,
}

/// Past this many slots, those of older jobs are forgotten (their notifications stay up, but
/// are no longer updated or followed by a click).
const SLOTS_KEPT: usize = 64;

impl Notifications {
    /// What the window should show after a notification was clicked, once.
    pub fn take_open_job(&self) -> Option<Option<String>> {
        self.open_job.lock().ok().and_then(|mut job| job.take())
    }
}

/// `account`: the account's name, when the app holds several; the notifications of a job
/// or a need then say whose they are (the summary counts all accounts' tasks).
pub fn notify_event<R: Runtime>(
    app: &AppHandle<R>,
    event: &AgentEvent,
    snapshot: &AgentSnapshot,
    account: Option<&str>,
) {
    let Some(notifications) = app.try_state::<Notifications>() else { return };
    let id = match event {
        AgentEvent::JobStarted { id, .. }
        | AgentEvent::JobProgress { id, .. }
        | AgentEvent::JobFinished { id, .. }
        | AgentEvent::JobFailed { id, .. } => Some(id),
        _ => None,
    };
    let record = id.and_then(|id| snapshot.recent_jobs.iter().find(|r| &r.id == id));
    let shows = match notifications.grouper.lock() {
        Ok(mut grouper) => grouper.on_event(i18n::t(), Instant::now(), event, record),
        Err(_) => return,
    };
    for show in shows {
        show_in_slot(app, with_account(i18n::t(), show, account));
    }
}

fn with_account(t: &Texts, mut show: Show, account: Option<&str>) -> Show {
    if let (Some(account), Slot::Job(_) | Slot::Other(_)) = (account, &show.slot) {
        show.note.title = fill(t.note_account, &[("title", &show.note.title), ("account", account)]);
    }
    show
}

/// The file of [`ExpiryMemory`], in the agent's data directory.
pub const EXPIRY_MEMORY_FILE: &str = "tray-expiry-warnings.json";

/// The signing-key warnings already shown: for each thing that expires, the end and the
/// warning (soon, expired) it was shown for, and the local day it was shown. A warning is
/// shown once per end and kind: a renewed key (another end) starts afresh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryMemory {
    #[serde(default)]
    shown: BTreeMap<String, Warned>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Warned {
    expires_at: String,
    warning: ExpiryWarning,
    /// `YYYY-MM-DD`, this machine's day: when the person was told.
    day: String,
}

impl ExpiryMemory {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(EXPIRY_MEMORY_FILE)
    }

    /// What was shown; nothing when the file is missing or damaged (at worst a warning is
    /// shown once more).
    pub fn load(data_dir: &Path) -> ExpiryMemory {
        std::fs::read(Self::path(data_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Replaces the file whole (`edge_agent::files::replace`).
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| AgentError::Internal(e.to_string()))?;
        edge_agent::files::replace(&Self::path(data_dir), &json)
    }

    /// The notifications `expiries` call for on `today` that were not shown yet, each in its
    /// own slot; they are remembered as shown.
    pub fn due(&mut self, t: &Texts, expiries: &[Expiry], today: &str) -> Vec<Show> {
        let mut shows = Vec::new();
        for expiry in expiries {
            let (Some(warning), Some(key)) = (expiry.warning, expiry_key(expiry.what)) else { continue };
            let seen = self.shown.get(key).is_some_and(|w| w.expires_at == expiry.expires_at && w.warning == warning);
            if seen {
                continue;
            }
            let Some(note) = expiry_note(t, expiry.what, warning, &local_date(&expiry.expires_at)) else { continue };
            self.shown.insert(
                key.to_owned(),
                Warned { expires_at: expiry.expires_at.clone(), warning, day: today.to_owned() },
            );
            shows.push(Show { slot: Slot::Other(format!("expiry:{key}")), note });
        }
        shows
    }
}

/// The memory's key of each thing that expires; `None` for one this build cannot name.
fn expiry_key(what: Expiring) -> Option<&'static str> {
    match what {
        Expiring::BundleRoot => Some("bundleRoot"),
        Expiring::ReleaseRoot => Some("releaseRoot"),
        Expiring::Other => None,
    }
}

/// The day an RFC 3339 instant falls on, on this machine's clock (`YYYY-MM-DD`); the text
/// as it came when it is not a date.
fn local_date(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|d| d.with_timezone(&chrono::Local).format("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

/// A signing-key warning in words: which keys, on which day, what stops, what to do.
fn expiry_note(t: &Texts, what: Expiring, warning: ExpiryWarning, date: &str) -> Option<Note> {
    let (keys, effect) = match what {
        Expiring::BundleRoot => (t.expiry_keys_bundles, t.expiry_effect_bundles),
        Expiring::ReleaseRoot => (t.expiry_keys_updates, t.expiry_effect_updates),
        Expiring::Other => return None,
    };
    let values = [("keys", keys), ("date", date), ("effect", effect)];
    Some(match warning {
        ExpiryWarning::Soon => {
            Note { title: t.expiry_soon.to_owned(), body: fill(t.expiry_soon_body, &values), urgent: false }
        }
        ExpiryWarning::Expired => {
            Note { title: t.expiry_expired.to_owned(), body: fill(t.expiry_expired_body, &values), urgent: true }
        }
    })
}

/// Shows the signing-key warnings of `snapshot` not shown before (see [`ExpiryMemory`]);
/// `data_dir` holds the memory.
pub fn notify_expiries<R: Runtime>(app: &AppHandle<R>, snapshot: &AgentSnapshot, data_dir: &Path) {
    // Most snapshots carry no warning: no file is read for them.
    if snapshot.expiries.iter().all(|e| e.warning.is_none()) {
        return;
    }
    let Some(notifications) = app.try_state::<Notifications>() else { return };
    let shows = {
        let Ok(mut memory) = notifications.expiries.lock() else { return };
        let memory = memory.entry(data_dir.to_path_buf()).or_insert_with(|| ExpiryMemory::load(data_dir));
        let today = chrono::Local::now().format("%Y-%m-%d").to_string();
        // Each account's warnings in their own notification slots (one account's does not
        // replace another's).
        let shows: Vec<Show> = memory
            .due(i18n::t(), &snapshot.expiries, &today)
            .into_iter()
            .map(|show| match show.slot {
                Slot::Other(key) => Show { slot: Slot::Other(format!("{key}@{}", data_dir.display())), ..show },
                slot => Show { slot, ..show },
            })
            .collect();
        if !shows.is_empty() {
            if let Err(err) = memory.save(data_dir) {
                tracing::warn!(error = %err, "cannot keep which signing-key warnings were shown; a restart shows them again");
            }
        }
        shows
    };
    for show in shows {
        show_in_slot(app, show);
    }
}

/// Shows the summary if its time has come; when to ask again.
pub fn tick<R: Runtime>(app: &AppHandle<R>) -> Option<Instant> {
    let notifications = app.try_state::<Notifications>()?;
    let (shows, next) = match notifications.grouper.lock() {
        Ok(mut grouper) => (grouper.tick(i18n::t(), Instant::now()), grouper.next_due()),
        Err(_) => return None,
    };
    for show in shows {
        show_in_slot(app, show);
    }
    next
}

/// What a click on the notification of `slot` opens: its job, or the Jobs screen.
fn opens(slot: &Slot) -> Option<Option<String>> {
    match slot {
        Slot::Job(id) => Some(Some(id.clone())),
        Slot::Summary => Some(None),
        Slot::Other(_) => None,
    }
}

/// Hands `show` to the notifications thread. One thread, in order: an update in place
/// must know the id the server gave its slot's first notification (a job's start and end
/// come milliseconds apart), and the D-Bus calls block, so they stay off the event loop.
fn show_in_slot<R: Runtime>(app: &AppHandle<R>, show: Show) {
    let Some(notifications) = app.try_state::<Notifications>() else { return };
    let Ok(mut queue) = notifications.queue.lock() else { return };
    if queue.is_none() {
        let (sender, shows) = std::sync::mpsc::channel::<Show>();
        let app = app.clone();
        // A plain thread, not the async runtime's blocking pool, which the runtime waits for
        // when it shuts down; it ends with the process.
        let spawned = std::thread::Builder::new().name("notifications".into()).spawn(move || {
            for show in shows {
                put_up(&app, show);
            }
        });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start the notifications thread");
            return;
        }
        *queue = Some(sender);
    }
    if let Some(sender) = queue.as_ref() {
        let _ = sender.send(show);
    }
}

/// Puts one notification up, or updates its slot's in place.
fn put_up<R: Runtime>(app: &AppHandle<R>, show: Show) {
    let app = app.clone();
    let app_name = app.package_info().name.clone();
    let open_label = i18n::t().notification_open;
    {
        let Some(notifications) = app.try_state::<Notifications>() else { return };
        let Show { slot, note } = show;
        let previous = notifications.ids.lock().ok().and_then(|ids| ids.get(&slot).copied());
        let mut n = notify_rust::Notification::new();
        n.appname(&app_name).summary(&note.title).body(&note.body);
        if let Some(id) = previous {
            n.id(id);
        }
        let opens = opens(&slot);
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            n.icon("dialog-information");
            if note.urgent {
                n.urgency(notify_rust::Urgency::Critical);
            }
            if opens.is_some() {
                n.action("default", open_label);
            }
        }
        let _ = open_label;
        let handle = match n.show() {
            Ok(handle) => handle,
            Err(err) => {
                tracing::warn!(error = %err, title = %note.title, "could not show a desktop notification");
                return;
            }
        };
        tracing::debug!(title = %note.title, "notification shown");
        let id = handle.id();
        let waiting_slot = slot.clone();
        if let Ok(mut ids) = notifications.ids.lock() {
            if ids.len() >= SLOTS_KEPT {
                let old: Vec<Slot> = ids.keys().filter(|s| matches!(s, Slot::Job(_)) && **s != slot).cloned().collect();
                for gone in &old {
                    ids.remove(gone);
                }
                if let Ok(mut waiters) = notifications.waiters.lock() {
                    for gone in &old {
                        if let Some(waiter) = waiters.remove(gone) {
                            waiter.abort();
                        }
                    }
                }
            }
            ids.insert(slot, id);
        }
        // A task (not a thread: it can be stopped) waits for the click on the slot's latest
        // notification, which is the one the server tells.
        #[cfg(all(unix, not(target_os = "macos")))]
        if let Some(target) = opens {
            let clicked = app.clone();
            let waiter = tauri::async_runtime::spawn(async move {
                handle
                    .wait_for_action_async(|response| {
                        if matches!(response, notify_rust::NotificationResponse::Default) {
                            open_on(&clicked, target);
                        }
                    })
                    .await;
            });
            if let Ok(mut waiters) = notifications.waiters.lock() {
                if let Some(previous) = waiters.insert(waiting_slot, waiter) {
                    previous.abort();
                }
            }
        }
        #[cfg(not(all(unix, not(target_os = "macos"))))]
        let _ = (opens, handle);
    }
}

/// Opens the window on a job (or the Jobs screen): kept for a window that is being built,
/// and told to one that is open.
fn open_on<R: Runtime>(app: &AppHandle<R>, job: Option<String>) {
    tracing::info!(job = job.as_deref().unwrap_or("(all)"), "notification clicked: showing its task");
    // The job is another account's: the window shows that account.
    let owner = job.as_deref().and_then(|job| app.try_state::<crate::accounts::Accounts>()?.owner_of_job(job));
    if let Some(owner) = owner {
        if let Err(err) = crate::events::switch_to(app, &owner) {
            tracing::warn!(error = %err, "could not show the account of a clicked notification");
        }
    }
    if let Some(notifications) = app.try_state::<Notifications>() {
        if let Ok(mut open) = notifications.open_job.lock() {
            *open = Some(job.clone());
        }
    }
    crate::app::show_main_window(app);
    if let Err(err) = app.emit(OPEN_JOB_EVENT, &job) {
        tracing::warn!(error = %err, "could not ask the window to show the job");
    }
}

/// The stored login could not be read (keychain locked or missing): the app runs, but as
/// if logged out, which would be puzzling without a word.
pub fn notify_startup_error<R: Runtime>(app: &AppHandle<R>, error: &AgentError) {
    let note = Note { title: i18n::t().startup_error.to_owned(), body: error.to_string(), urgent: true };
    show_in_slot(app, Show { slot: Slot::Other(note.title.clone()), note });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::{EN, FR};

    #[test]
    fn with_several_accounts_a_tasks_notification_names_its_account_but_the_summary_counts_all() {
        let note = |title: &str| Note { title: title.to_owned(), body: "b".into(), urgent: false };
        let job = Show { slot: Slot::Job("job_1".into()), note: note("Task finished") };
        assert_eq!(
            with_account(&EN, job, Some("c-ann · hub.example.com")).note.title,
            "Task finished — c-ann · hub.example.com"
        );
        let other = Show { slot: Slot::Other("x".into()), note: note("Log in to FanDeck") };
        assert_eq!(with_account(&FR, other, Some("c-bob")).note.title, "Log in to FanDeck — c-bob");
        let summary = Show { slot: Slot::Summary, note: note("Tasks") };
        assert_eq!(with_account(&EN, summary, Some("c-ann")).note.title, "Tasks");
        let alone = Show { slot: Slot::Job("job_2".into()), note: note("Task finished") };
        assert_eq!(with_account(&EN, alone, None).note.title, "Task finished", "one account: no name");
    }

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

    fn record(id: &str, job_type: &str, summary: JobSummary, progress: Option<JobProgress>) -> JobRecord {
        serde_json::from_value::<JobRecord>(serde_json::json!({
            "id": id, "jobType": job_type, "status": "running", "startedAt": "2026-12-06T10:00:00Z",
            "finishedAt": null, "errorCode": null, "message": null,
        }))
        .map(|mut r| {
            r.summary = summary;
            r.progress = progress;
            r
        })
        .unwrap()
    }

    fn started(id: &str) -> AgentEvent {
        AgentEvent::JobStarted { id: id.into(), job_type: "http_request".into() }
    }

    fn ended(id: &str, failed: bool) -> AgentEvent {
        if failed {
            AgentEvent::JobFailed {
                id: id.into(),
                job_type: "http_request".into(),
                code: "NETWORK".into(),
                message: "unreachable".into(),
            }
        } else {
            AgentEvent::JobFinished { id: id.into(), job_type: "http_request".into() }
        }
    }

    #[test]
    fn a_hundred_jobs_in_ten_seconds_make_a_handful_of_notifications_and_lose_no_failure() {
        let mut grouper = Grouper::default();
        let start = Instant::now();
        let mut shows = Vec::new();
        let failing = |n: u32| n % 9 == 4;
        // 100 jobs, one every 100 ms, each ending 50 ms after it started.
        for n in 0..100u32 {
            let at = start + Duration::from_millis(100 * u64::from(n));
            let id = format!("job_{n}");
            shows.extend(grouper.on_event(&EN, at, &started(&id), None));
            shows.extend(grouper.tick(&EN, at));
            let end = at + Duration::from_millis(50);
            shows.extend(grouper.on_event(&EN, end, &ended(&id, failing(n)), None));
        }
        // The clock runs on until the summary has shown everything.
        let mut now = start + Duration::from_secs(10);
        while let Some(due) = grouper.next_due() {
            now = now.max(due);
            shows.extend(grouper.tick(&EN, now));
        }
        let slots: std::collections::HashSet<_> = shows.iter().map(|s| s.slot.clone()).collect();
        assert!(shows.len() <= 6, "{} notifications: {shows:#?}", shows.len());
        assert!(slots.len() <= 3, "{slots:?}");
        // Every failure is in a job's own notification or in the last summary.
        let failures = (0..100).filter(|n| failing(*n)).count();
        let own_failures = shows.iter().filter(|s| s.note.title == EN.job_failed).count();
        let last_summary = shows.iter().rev().find(|s| s.slot == Slot::Summary).expect("a summary");
        let in_summary = failures - own_failures;
        assert!(
            last_summary.note.body.ends_with(&format!("{in_summary} failed")),
            "{} (want {in_summary} failed)",
            last_summary.note.body
        );
        assert!(last_summary.note.urgent, "a summary with a failure is urgent");
        let own_jobs = slots.iter().filter(|s| matches!(s, Slot::Job(_))).count();
        let finished = 100 - failures - (own_jobs - own_failures);
        assert!(
            last_summary.note.body.starts_with(&format!("{finished} tasks finished")),
            "{}",
            last_summary.note.body
        );
    }

    #[test]
    fn a_broadcast_is_one_notification_updated_in_place() {
        let mut grouper = Grouper::default();
        let start = Instant::now();
        let summary = JobSummary { site: Some("FanDeck".into()), recipients: Some(40), ..JobSummary::default() };
        let begin = AgentEvent::JobStarted { id: "b".into(), job_type: "broadcast_dm".into() };
        let mut shows = grouper.on_event(&EN, start, &begin, Some(&record("b", "broadcast_dm", summary.clone(), None)));
        assert_eq!(shows[0].note.body, "Broadcast to 40 fans on FanDeck");
        // Forty recipients, one every 500 ms: the bubble follows at most every 2 s.
        for done in 1..=40u32 {
            let at = start + Duration::from_millis(500 * u64::from(done));
            let event = AgentEvent::JobProgress { id: "b".into(), job_type: "broadcast_dm".into(), done, total: 40 };
            let progress = Some(JobProgress { done, total: 40 });
            shows.extend(grouper.on_event(
                &EN,
                at,
                &event,
                Some(&record("b", "broadcast_dm", summary.clone(), progress)),
            ));
        }
        let end = AgentEvent::JobFinished { id: "b".into(), job_type: "broadcast_dm".into() };
        let progress = Some(JobProgress { done: 40, total: 40 });
        let at = start + Duration::from_secs(21);
        shows.extend(grouper.on_event(&EN, at, &end, Some(&record("b", "broadcast_dm", summary.clone(), progress))));
        assert!(shows.iter().all(|s| s.slot == Slot::Job("b".into())), "one notification: {shows:#?}");
        assert!(shows.len() <= 12, "{} updates", shows.len());
        assert!(shows.iter().any(|s| s.note.body == "Broadcast to 40 fans on FanDeck: 13/40 sent"), "{shows:#?}");
        let last = shows.last().unwrap();
        assert_eq!(
            (last.note.title.as_str(), last.note.body.as_str()),
            ("Task finished", "Broadcast to 40 fans on FanDeck: 40/40 sent")
        );
        let fr = job_words(&FR, "broadcast_dm", &summary, Some(JobProgress { done: 12, total: 40 }), false);
        assert_eq!(fr, "Envoi à 40 fans sur FanDeck : 12/40 envoyés");
    }

    #[test]
    fn a_message_is_said_in_words_in_both_languages() {
        let summary =
            JobSummary { site: Some("FanDeck".into()), recipient: Some("@ann".into()), ..JobSummary::default() };
        assert_eq!(job_words(&EN, "send_dm", &summary, None, true), "Sent a message to @ann on FanDeck");
        assert_eq!(job_words(&FR, "send_dm", &summary, None, true), "Message envoyé à @ann sur FanDeck");
        assert_eq!(job_words(&EN, "send_dm", &summary, None, false), "Sending a message to @ann on FanDeck");
        // No site yet: the kind.
        assert_eq!(job_words(&EN, "send_dm", &JobSummary::default(), None, false), "Message");
        assert_eq!(summary_words(&FR, 12, 1), "12 tâches terminées, 1 en échec");
        assert_eq!(summary_words(&EN, 1, 0), "1 task finished");
        assert_eq!(summary_words(&EN, 0, 3), "3 tasks failed");
    }

    #[test]
    fn the_same_other_notification_is_shown_once_a_minute() {
        let mut grouper = Grouper::default();
        let start = Instant::now();
        let login = AgentEvent::BrowserLoginRequired { site: "fanhub".into() };
        assert_eq!(grouper.on_event(&EN, start, &login, None).len(), 1);
        assert!(grouper.on_event(&EN, start + Duration::from_secs(5), &login, None).is_empty());
        assert_eq!(grouper.on_event(&EN, start + SAME_NOTE_EVERY, &login, None).len(), 1);
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
    fn a_signing_key_warning_is_shown_when_it_starts_and_when_it_expires_and_never_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let end = "2027-01-05T12:00:00.123456789Z";
        let bundles = |at: &str, warning| Expiry { what: Expiring::BundleRoot, expires_at: at.into(), warning };
        let soon = [bundles(end, Some(ExpiryWarning::Soon))];
        let mut memory = ExpiryMemory::load(dir.path());
        // Far from its end: nothing to say.
        assert!(memory.due(&EN, &[bundles(end, None)], "2026-11-01").is_empty());

        // The warning starts: one notification, in words, naming what, when and what to do.
        let shows = memory.due(&EN, &soon, "2026-12-06");
        assert_eq!(shows.len(), 1, "{shows:?}");
        let date = local_date(end);
        assert!(date.starts_with("2027-01-0"), "the local day of the end: {date}");
        assert_eq!(shows[0].note.title, "Your hub's signing keys expire soon");
        assert!(!shows[0].note.urgent);
        assert_eq!(
            shows[0].note.body,
            format!(
                "The keys of signed scripts expire on {date}. Ask whoever runs your hub to renew its signing keys; \
                 Edge Agent picks up the new ones by itself, with nothing to reinstall."
            )
        );
        memory.save(dir.path()).unwrap();
        // Every later snapshot saying the same: nothing more.
        assert!(memory.due(&EN, &soon, "2026-12-06").is_empty());
        // A restart the same day, or any later day, reads what was shown: nothing more.
        assert!(ExpiryMemory::load(dir.path()).due(&FR, &soon, "2026-12-06").is_empty());
        let mut restarted = ExpiryMemory::load(dir.path());
        assert!(restarted.due(&EN, &soon, "2026-12-20").is_empty());
        assert!(std::fs::read_to_string(ExpiryMemory::path(dir.path())).unwrap().contains("\"day\": \"2026-12-06\""));

        // It expires: said once more, urgent, with what stops.
        let expired = [bundles(end, Some(ExpiryWarning::Expired))];
        let shows = restarted.due(&FR, &expired, "2027-01-06");
        assert_eq!(shows.len(), 1);
        assert!(shows[0].note.urgent);
        assert_eq!(shows[0].note.title, "Les clés de signature de votre hub ont expiré");
        assert!(
            shows[0].note.body.starts_with(&format!(
                "Les clés des scripts signés ont expiré le {date} : les scripts signés sont refusés"
            )),
            "{}",
            shows[0].note.body
        );
        assert!(shows[0].note.body.contains("sans rien réinstaller"), "{}", shows[0].note.body);
        assert!(restarted.due(&FR, &expired, "2027-01-06").is_empty());

        // Renewed, for only three weeks: the new end is another warning; the update keys
        // have their own, in their own slot (one does not replace the other's bubble).
        let renewed = "2027-01-27T12:00:00Z";
        let release =
            Expiry { what: Expiring::ReleaseRoot, expires_at: renewed.into(), warning: Some(ExpiryWarning::Soon) };
        let shows = restarted.due(&EN, &[bundles(renewed, Some(ExpiryWarning::Soon)), release], "2027-01-07");
        assert_eq!(shows.len(), 2, "{shows:?}");
        assert_ne!(shows[0].slot, shows[1].slot);
        assert!(shows[1].note.body.starts_with("The keys of updates expire on"), "{}", shows[1].note.body);
        // Something this build cannot name is not put in words it does not have.
        let other = Expiry { what: Expiring::Other, expires_at: renewed.into(), warning: Some(ExpiryWarning::Expired) };
        assert!(restarted.due(&EN, &[other], "2027-01-07").is_empty());

        // A damaged memory forgets, rather than failing: at worst a warning shows once more.
        std::fs::write(ExpiryMemory::path(dir.path()), b"{damaged").unwrap();
        assert_eq!(ExpiryMemory::load(dir.path()), ExpiryMemory::default());
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
