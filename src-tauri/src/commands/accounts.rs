//! Several accounts: list, add, switch, remove, and pause or resume them all. Thin: the
//! list is `accounts::Accounts`, the switching and telling is `events`.

use crate::accounts::{AccountError, AccountView, Accounts};
use crate::events;
use edge_agent::pause::PauseLength;
use edge_agent::AgentSnapshot;
use tauri::{AppHandle, Runtime, State};

#[tauri::command]
pub fn list_accounts(accounts: State<'_, Accounts>) -> Vec<AccountView> {
    accounts.views()
}

/// A new signed-out account, made active: the window shows its sign-in.
#[tauri::command]
pub fn add_account<R: Runtime>(app: AppHandle<R>) -> Result<AgentSnapshot, AccountError> {
    events::add_account(&app)
}

#[tauri::command]
pub fn switch_account<R: Runtime>(app: AppHandle<R>, id: String) -> Result<AgentSnapshot, AccountError> {
    events::switch_to(&app, &id)
}

/// Signs the account out on this computer (its keychain entry is deleted), stops it and
/// deletes its folder; the window goes back to the first account if it showed this one.
#[tauri::command]
pub async fn remove_account<R: Runtime>(
    app: AppHandle<R>,
    accounts: State<'_, Accounts>,
    id: String,
) -> Result<AgentSnapshot, AccountError> {
    let agent = accounts.remove(&id)?;
    events::stop_forwarder(&app, &id);
    let signed_out = agent.logout().await;
    agent.shutdown().await;
    accounts.forget_dir(&id);
    events::publish_state(&app);
    // Told after the account is gone either way: it is no longer in the list, and a
    // keychain that refused is worth the person's knowing.
    signed_out?;
    Ok(accounts.active().snapshot())
}

/// Pauses every account; `length` as for `pause`.
#[tauri::command]
pub fn pause_all(accounts: State<'_, Accounts>, length: Option<PauseLength>) -> Vec<AccountView> {
    accounts.pause_all(length.unwrap_or(PauseLength::UntilResumed));
    accounts.views()
}

#[tauri::command]
pub fn resume_all(accounts: State<'_, Accounts>) -> Vec<AccountView> {
    accounts.resume_all();
    accounts.views()
}
