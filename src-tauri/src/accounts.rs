//! Several accounts (hubs or creators) in one app, each its own agent.
//!
//! Every account is a whole `AgentService` with its own profile (keychain entry) and data
//! directory, so its consent, caps, quiet hours, pause, jobs and state are its own: the core
//! needs no notion of accounts, and one account can never act under another's consent. The
//! first account ("main") is the profile and data directory the app was started with, the
//! same one `edge-agent` on the command line uses. Accounts added later live under
//! `<data dir>/accounts/<id>/` with the profile `<profile>-<id>`.
//!
//! The window and the tray menu act on the *active* account; the tray can also pause or
//! resume them all. `accounts.json` in the main data directory remembers the added accounts
//! and which one is active; nothing in it is secret.

use crate::app::Agent;
use edge_agent::{AgentService, AgentSettings, AgentSnapshot, ConnectionState};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub const MAIN: &str = "main";
const FILE_NAME: &str = "accounts.json";
const ADDED_DIR: &str = "accounts";
const ADDED_PREFIX: &str = "acct-";
/// Each account is a connection, a runtime and a browser profile: a handful covers one
/// person's hubs and creators without letting a mistake start dozens.
pub const MAX_ACCOUNTS: usize = 8;

/// Why an account action was refused. Serialized like the core's errors (`{code,
/// message}`) so the window words it from its catalogue by code.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("there is no account {0:?} in this app; pick one from the list")]
    Unknown(String),
    #[error("the first account cannot be removed, only signed out (it is the command line's profile too)")]
    MainStays,
    #[error("this app already holds {MAX_ACCOUNTS} accounts; remove one before adding another")]
    TooMany,
    #[error("{0}")]
    Agent(#[from] edge_agent::AgentError),
    #[error("cannot write {path}: {source}")]
    Save { path: PathBuf, source: std::io::Error },
}

impl AccountError {
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::Unknown(_) => "unknown_account",
            AccountError::MainStays => "main_account_stays",
            AccountError::TooMany => "too_many_accounts",
            AccountError::Agent(err) => err.code(),
            AccountError::Save { .. } => "io",
        }
    }
}

impl Serialize for AccountError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // The core's own shape, hub error included.
            AccountError::Agent(err) => err.serialize(serializer),
            other => {
                use serde::ser::SerializeStruct;
                let mut s = serializer.serialize_struct("AccountError", 2)?;
                s.serialize_field("code", other.code())?;
                s.serialize_field("message", &other.to_string())?;
                s.end()
            }
        }
    }
}

/// `accounts.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Stored {
    /// The added accounts' ids, in the order they were added.
    added: Vec<String>,
    active: Option<String>,
}

/// One account as the window and the menu list it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub id: String,
    pub active: bool,
    pub logged_in: bool,
    pub hub_url: Option<String>,
    pub creator_id: Option<String>,
    pub paused: bool,
    pub connection: ConnectionState,
    pub busy: u32,
}

impl AccountView {
    fn of(id: &str, active: bool, s: &AgentSnapshot) -> AccountView {
        AccountView {
            id: id.to_owned(),
            active,
            logged_in: s.logged_in,
            hub_url: s.hub_url.clone(),
            creator_id: s.creator_id.clone(),
            paused: s.paused,
            connection: s.connection,
            busy: s.busy,
        }
    }

    /// "creator · hub host" for menus; `None` before the account is signed in.
    pub fn label(&self) -> Option<String> {
        let creator = self.creator_id.as_deref()?;
        let host = self.hub_url.as_deref().map(hub_host).unwrap_or_default();
        Some(if host.is_empty() { creator.to_owned() } else { format!("{creator} · {host}") })
    }
}

/// The host (and port) of a hub URL, for people: the scheme and path say nothing to them.
pub fn hub_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or_default().to_owned()
}

pub struct Account {
    pub id: String,
    pub agent: Agent,
}

struct Inner {
    list: Vec<Account>,
    active: String,
}

pub struct Accounts {
    /// The main account's settings; an added account's are these with its own profile
    /// and data directory.
    main: AgentSettings,
    inner: RwLock<Inner>,
    /// What the last `changed` call saw, so the window and menu hear only of real changes.
    last_views: Mutex<Vec<AccountView>>,
}

fn valid_added_id(id: &str) -> bool {
    // Read back from a file the person (or anything else) may edit: the id becomes a path
    // and a keychain entry name, so nothing but the form this module writes is accepted.
    id.strip_prefix(ADDED_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'))
}

impl Accounts {
    /// The main account and those `accounts.json` names. An unreadable file is logged and
    /// read as "no added accounts": their folders and keychain entries stay where they are.
    pub fn load(main: AgentSettings) -> Accounts {
        let stored = read_stored(&main.data_dir);
        let mut list = vec![Account { id: MAIN.to_owned(), agent: Arc::new(AgentService::new(main.clone())) }];
        for id in stored.added {
            if !valid_added_id(&id) || list.iter().any(|a| a.id == id) || list.len() >= MAX_ACCOUNTS {
                tracing::warn!(id, file = FILE_NAME, "skipping an account entry this app did not write");
                continue;
            }
            let agent = Arc::new(AgentService::new(added_settings(&main, &id)));
            list.push(Account { id, agent });
        }
        let active = stored.active.filter(|id| list.iter().any(|a| &a.id == id)).unwrap_or_else(|| MAIN.to_owned());
        Accounts { main, inner: RwLock::new(Inner { list, active }), last_views: Mutex::new(Vec::new()) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The main data directory: the tray's own preferences and the log folder live there.
    pub fn main_dir(&self) -> &Path {
        &self.main.data_dir
    }

    pub fn main_agent(&self) -> Agent {
        self.read().list[0].agent.clone()
    }

    pub fn active(&self) -> Agent {
        let inner = self.read();
        inner
            .list
            .iter()
            .find(|a| a.id == inner.active)
            .map_or_else(|| inner.list[0].agent.clone(), |a| a.agent.clone())
    }

    #[cfg(test)]
    fn active_id(&self) -> String {
        self.read().active.clone()
    }

    pub fn is_active(&self, id: &str) -> bool {
        self.read().active == id
    }

    pub fn len(&self) -> usize {
        self.read().list.len()
    }

    /// Every account's id and agent, in list order.
    pub fn all(&self) -> Vec<(String, Agent)> {
        self.read().list.iter().map(|a| (a.id.clone(), a.agent.clone())).collect()
    }

    pub fn views(&self) -> Vec<AccountView> {
        let inner = self.read();
        inner.list.iter().map(|a| AccountView::of(&a.id, a.id == inner.active, &a.agent.snapshot())).collect()
    }

    /// The views when they differ from the last call's (the first call always differs).
    pub fn changed(&self) -> Option<Vec<AccountView>> {
        let views = self.views();
        let mut last = self.last_views.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == views {
            return None;
        }
        last.clone_from(&views);
        Some(views)
    }

    /// The account's name for menus and notifications; `None` while it is signed out.
    pub fn label(&self, id: &str) -> Option<String> {
        let inner = self.read();
        let account = inner.list.iter().find(|a| a.id == id)?;
        AccountView::of(id, false, &account.agent.snapshot()).label()
    }

    /// The account whose recent tasks hold `job` (a clicked notification names a job, not
    /// an account).
    pub fn owner_of_job(&self, job: &str) -> Option<String> {
        self.read()
            .list
            .iter()
            .find(|a| a.agent.snapshot().recent_jobs.iter().any(|r| r.id == job))
            .map(|a| a.id.clone())
    }

    /// Pauses every signed-in account for `length` (a signed-out one runs nothing anyway).
    pub fn pause_all(&self, length: edge_agent::pause::PauseLength) {
        for (_, agent) in self.all() {
            if agent.snapshot().logged_in {
                agent.pause_for(length);
            }
        }
    }

    pub fn resume_all(&self) {
        for (_, agent) in self.all() {
            agent.resume();
        }
    }

    /// A new, signed-out account, made active: the window then shows its sign-in.
    pub fn add(&self) -> Result<(String, Agent), AccountError> {
        let mut inner = self.write();
        if inner.list.len() >= MAX_ACCOUNTS {
            return Err(AccountError::TooMany);
        }
        let id = (2..)
            .map(|n| format!("{ADDED_PREFIX}{n}"))
            .find(|id| !inner.list.iter().any(|a| &a.id == id))
            .unwrap_or_else(|| format!("{ADDED_PREFIX}{}", inner.list.len() + 1));
        let settings = added_settings(&self.main, &id);
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|source| AccountError::Save { path: settings.data_dir.clone(), source })?;
        let agent = Arc::new(AgentService::new(settings));
        inner.list.push(Account { id: id.clone(), agent: agent.clone() });
        let previous = std::mem::replace(&mut inner.active, id.clone());
        if let Err(err) = self.save(&inner) {
            inner.list.pop();
            inner.active = previous;
            return Err(err);
        }
        tracing::info!(account = id, "account added");
        Ok((id, agent))
    }

    pub fn switch(&self, id: &str) -> Result<Agent, AccountError> {
        let mut inner = self.write();
        let agent = inner.list.iter().find(|a| a.id == id).map(|a| a.agent.clone());
        let Some(agent) = agent else { return Err(AccountError::Unknown(id.to_owned())) };
        let previous = std::mem::replace(&mut inner.active, id.to_owned());
        if let Err(err) = self.save(&inner) {
            inner.active = previous;
            return Err(err);
        }
        tracing::info!(account = id, "switched account");
        Ok(agent)
    }

    /// Takes an added account out of the list (the main account stays) and makes the main
    /// account active if it was. The caller signs it out and stops it; its folder is
    /// removed by [`Accounts::forget_dir`] once it has stopped.
    pub fn remove(&self, id: &str) -> Result<Agent, AccountError> {
        if id == MAIN {
            return Err(AccountError::MainStays);
        }
        let mut inner = self.write();
        let Some(index) = inner.list.iter().position(|a| a.id == id) else {
            return Err(AccountError::Unknown(id.to_owned()));
        };
        let account = inner.list.remove(index);
        let previous_active = inner.active.clone();
        if inner.active == id {
            inner.active = MAIN.to_owned();
        }
        if let Err(err) = self.save(&inner) {
            inner.list.insert(index, account);
            inner.active = previous_active;
            return Err(err);
        }
        tracing::info!(account = id, "account removed");
        Ok(account.agent)
    }

    /// Deletes a removed account's folder (its consent, caps, logs of jobs, browser
    /// profile). Only ever a folder this module made: `<data dir>/accounts/acct-N`.
    pub fn forget_dir(&self, id: &str) {
        if !valid_added_id(id) {
            return;
        }
        let dir = self.main.data_dir.join(ADDED_DIR).join(id);
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %err, dir = %dir.display(), "could not delete a removed account's folder");
            }
        }
    }

    fn save(&self, inner: &Inner) -> Result<(), AccountError> {
        let stored = Stored {
            added: inner.list.iter().skip(1).map(|a| a.id.clone()).collect(),
            active: Some(inner.active.clone()),
        };
        let path = self.main.data_dir.join(FILE_NAME);
        let body = serde_json::to_vec_pretty(&stored)
            .map_err(|e| AccountError::Save { path: path.clone(), source: std::io::Error::other(e) })?;
        // Replaced whole: a crash never leaves half a file that would hide the added
        // accounts at the next start.
        Ok(edge_agent::files::replace(&path, &body)?)
    }
}

fn read_stored(dir: &Path) -> Stored {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::warn!(error = %err, file = %path.display(), "accounts file unreadable; only the first account is loaded");
            Stored::default()
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Stored::default(),
        Err(err) => {
            tracing::warn!(error = %err, file = %path.display(), "accounts file unreadable; only the first account is loaded");
            Stored::default()
        }
    }
}

fn added_settings(main: &AgentSettings, id: &str) -> AgentSettings {
    AgentSettings {
        profile: format!("{}-{id}", main.profile),
        data_dir: main.data_dir.join(ADDED_DIR).join(id),
        ..main.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> AgentSettings {
        AgentSettings { profile: "p".into(), ..AgentSettings::new(dir.to_path_buf()) }
    }

    #[test]
    fn added_accounts_get_their_own_profile_and_folder_and_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::load(settings(dir.path()));
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts.active_id(), MAIN);

        let (id, agent) = accounts.add().unwrap();
        assert_eq!(id, "acct-2");
        assert_eq!(agent.settings().profile, "p-acct-2");
        assert_eq!(agent.settings().data_dir, dir.path().join("accounts").join("acct-2"));
        assert!(agent.settings().data_dir.is_dir());
        assert_eq!(accounts.active_id(), "acct-2", "a new account is the one the window signs in");
        assert!(Arc::ptr_eq(&accounts.active(), &agent));
        let (third, _) = accounts.add().unwrap();
        assert_eq!(third, "acct-3");
        accounts.switch("acct-2").unwrap();

        let again = Accounts::load(settings(dir.path()));
        assert_eq!(again.all().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), [MAIN, "acct-2", "acct-3"]);
        assert_eq!(again.active_id(), "acct-2");
        assert_eq!(again.main_agent().settings().profile, "p", "the first account is the command line's profile");
    }

    #[test]
    fn removing_an_account_forgets_it_and_its_folder_but_the_first_account_stays() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::load(settings(dir.path()));
        let (id, agent) = accounts.add().unwrap();
        let folder = agent.settings().data_dir.clone();
        std::fs::write(folder.join("settings.json"), "{}").unwrap();
        assert!(matches!(accounts.remove(MAIN), Err(AccountError::MainStays)));
        assert!(matches!(accounts.remove("acct-9"), Err(AccountError::Unknown(_))));
        accounts.remove(&id).unwrap();
        accounts.forget_dir(&id);
        assert!(!folder.exists());
        assert_eq!(accounts.active_id(), MAIN, "removing the active account goes back to the first");
        assert_eq!(Accounts::load(settings(dir.path())).len(), 1);
        // The next account takes the free number again.
        assert_eq!(accounts.add().unwrap().0, "acct-2");
    }

    #[test]
    fn switching_to_an_unknown_account_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::load(settings(dir.path()));
        let Err(err) = accounts.switch("acct-2") else { panic!("switched to an account that does not exist") };
        assert_eq!(err.code(), "unknown_account");
        assert!(err.to_string().contains("pick one from the list"), "{err}");
        assert_eq!(accounts.active_id(), MAIN);
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["code"], "unknown_account");
    }

    #[test]
    fn no_more_than_the_maximum_of_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::load(settings(dir.path()));
        for _ in 1..MAX_ACCOUNTS {
            accounts.add().unwrap();
        }
        assert!(matches!(accounts.add(), Err(AccountError::TooMany)));
        assert_eq!(accounts.len(), MAX_ACCOUNTS);
    }

    #[test]
    fn a_tampered_accounts_file_cannot_name_a_folder_outside_the_apps_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"added": ["../../etc", "acct-2", "acct-2", "acct-02", "main", "acct-", "acct-99999"], "active": "../../etc"}"#,
        )
        .unwrap();
        let accounts = Accounts::load(settings(dir.path()));
        assert_eq!(accounts.all().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), [MAIN, "acct-2"]);
        assert_eq!(accounts.active_id(), MAIN);
        // Not even removal reaches outside.
        accounts.forget_dir("../../etc");
        assert!(dir.path().exists());

        std::fs::write(dir.path().join(FILE_NAME), "not json").unwrap();
        assert_eq!(Accounts::load(settings(dir.path())).len(), 1, "an unreadable file leaves the first account");
    }

    #[test]
    fn views_name_each_account_and_change_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Accounts::load(settings(dir.path()));
        let first = accounts.changed().expect("the first call reports the list");
        assert_eq!(first.len(), 1);
        assert!(first[0].active && !first[0].logged_in);
        assert_eq!(first[0].label(), None, "a signed-out account has no name yet");
        assert!(accounts.changed().is_none());
        accounts.add().unwrap();
        let second = accounts.changed().unwrap();
        assert_eq!(second.iter().filter(|v| v.active).map(|v| v.id.as_str()).collect::<Vec<_>>(), ["acct-2"]);

        let mut view = second[0].clone();
        view.creator_id = Some("c-ann".into());
        view.hub_url = Some("https://hub.example.com:8443/base".into());
        assert_eq!(view.label().unwrap(), "c-ann · hub.example.com:8443");
        assert_eq!(hub_host("http://127.0.0.1:41877"), "127.0.0.1:41877");
    }
}
