//! What this agent trusts that ends on a date, so that the person hears of it weeks before
//! it stops the agent rather than through failing jobs.
//!
//! The agent's login itself does not expire (a device key, with 15-minute tokens fetched
//! silently). What does are the roots of the hub's two signed repositories: the bundle
//! repository's (`<data dir>/tuf/root.json`) and the release repository's
//! (`<data dir>/updates/tuf/root.json`). Each store keeps the newest root its last refresh
//! reached through the chain of signed roots, so the file on disk is the record: it survives
//! a restart, and a root the operator renews replaces it at the agent's next refresh.
//!
//! This module owns reading those ends into the snapshot's `expiries` and keeping them
//! current (at login, after every job, after each verified update check, and every
//! [`LOOK_EVERY`] so a warning starts while the agent sits idle). While the bundle root is
//! near or past its end it also refreshes the bundle metadata now and then, so a root the
//! operator renewed is picked up without waiting for a bundle job. The warning rule itself
//! is `state::expiry_warning`. It must never change a trust store except through
//! `TrustStore::refresh` (which only stores a root `tough` verified through the chain).

use crate::bundles::{BundleContext, HubTransport};
use crate::state::{expiry_warning, AgentEvent, Expiring, Expiry, StateHandle};
use chrono::{DateTime, SecondsFormat, Utc};
use edge_bundle::verify::TrustStore;
use std::path::Path;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often the snapshot's expiries are read again and judged against the clock.
pub const LOOK_EVERY: Duration = Duration::from_secs(10 * 60);

/// While the bundle root is near or past its end, its metadata is refreshed this often (a
/// bundle job refreshes it anyway), so a renewed root clears the warning by itself.
pub const REFRESH_WHILE_WARNED: Duration = Duration::from_secs(6 * 3600);

/// The ends of what this agent trusts, judged at `now`; what has no stored root (a hub
/// without a bundle repository, an agent that never checked for updates) is left out.
pub fn read(data_dir: &Path, now: DateTime<Utc>) -> Vec<Expiry> {
    let stores = [
        (Expiring::BundleRoot, crate::bundles::trust_store(data_dir)),
        (Expiring::ReleaseRoot, crate::updater::release_trust_store(data_dir)),
    ];
    stores.iter().filter_map(|(what, store)| judged(*what, store, now)).collect()
}

fn judged(what: Expiring, store: &TrustStore, now: DateTime<Utc>) -> Option<Expiry> {
    let expires = store.root_expires()?;
    Some(Expiry {
        what,
        expires_at: expires.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        warning: expiry_warning(expires, now),
    })
}

/// Brings the snapshot's expiries in line with the trust stores and the clock; a snapshot
/// goes out only when something changed.
pub fn publish(state: &StateHandle, data_dir: &Path) {
    let current = state.snapshot();
    let expiries = if current.logged_in { read(data_dir, Utc::now()) } else { Vec::new() };
    if current.expiries != expiries {
        for expiry in expiries.iter().filter(|e| e.warning.is_some()) {
            tracing::warn!(what = ?expiry.what, expires_at = %expiry.expires_at, warning = ?expiry.warning,
                "a root of the hub's signed repositories is near or past its end; the hub's operator must renew it");
        }
        state.update(|s| s.expiries = expiries);
    }
}

/// Keeps the expiries current until `cancel` (see the module doc); the service runs one per
/// connection loop, with the loop's bundle context.
pub async fn watch(
    state: StateHandle,
    data_dir: std::path::PathBuf,
    bundles: Option<BundleContext>,
    cancel: CancellationToken,
) {
    let mut last_refresh: Option<tokio::time::Instant> = None;
    // The updater refreshes the release metadata (and may store a renewed release root)
    // without knowing of this room: its verified check shows in the snapshot, and that is
    // the cue to look again.
    let mut events = state.subscribe();
    let mut checked = state.snapshot().updates.last_verified_check;
    loop {
        publish(&state, &data_dir);
        let warned = state.snapshot().expiries.iter().any(|e| e.what == Expiring::BundleRoot && e.warning.is_some());
        let due = last_refresh.is_none_or(|at| at.elapsed() >= REFRESH_WHILE_WARNED);
        if let (true, true, Some(ctx)) = (warned, due, bundles.as_ref()) {
            last_refresh = Some(tokio::time::Instant::now());
            refresh_bundle_metadata(ctx).await;
            publish(&state, &data_dir);
        }
        let next_look = tokio::time::sleep(LOOK_EVERY);
        tokio::pin!(next_look);
        loop {
            let now_checked = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut next_look => break,
                event = events.recv() => match event {
                    Ok(AgentEvent::StateChanged { snapshot }) => snapshot.updates.last_verified_check,
                    Ok(_) => continue,
                    // Missed changes: the snapshot has the latest.
                    Err(broadcast::error::RecvError::Lagged(_)) => state.snapshot().updates.last_verified_check,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if now_checked != checked {
                checked = now_checked;
                break;
            }
        }
    }
}

/// One refresh of the bundle repository's metadata, as a bundle job starts with: a root
/// the operator renewed is verified through the chain and stored.
async fn refresh_bundle_metadata(ctx: &BundleContext) {
    let url = match url::Url::parse(&format!("{}{}", ctx.hub_base, edge_protocol::api::BUNDLE_METADATA_PATH)) {
        Ok(url) => url,
        Err(e) => return tracing::warn!(error = %e, "cannot build the bundle metadata address"),
    };
    match ctx.trust().refresh(url, HubTransport::new(ctx.http.clone(), ctx.auth.clone())).await {
        Ok(_) => tracing::info!("bundle metadata refreshed to look for a renewed root"),
        Err(e) if e.code == edge_bundle::codes::BUNDLE_EXPIRED => {
            tracing::warn!(error = %e, "the hub's bundle root is still expired")
        }
        Err(e) => tracing::warn!(error = %e, "cannot refresh the bundle metadata to look for a renewed root"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ExpiryWarning, EXPIRY_WARNING_DAYS};
    use chrono::TimeDelta;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_warning_starts_thirty_days_before_the_end_and_turns_to_expired_after_it() {
        let end = at("2027-03-01T12:00:00Z");
        let days = |n: i64| end - TimeDelta::days(n);
        assert_eq!(expiry_warning(end, days(31)), None);
        assert_eq!(expiry_warning(end, days(30) - TimeDelta::seconds(1)), None);
        assert_eq!(expiry_warning(end, days(30)), Some(ExpiryWarning::Soon));
        assert_eq!(expiry_warning(end, days(29)), Some(ExpiryWarning::Soon));
        assert_eq!(EXPIRY_WARNING_DAYS, 30);
        // `tough` still accepts metadata at its very instant of expiry, and refuses after.
        assert_eq!(expiry_warning(end, end), Some(ExpiryWarning::Soon));
        assert_eq!(expiry_warning(end, end + TimeDelta::seconds(1)), Some(ExpiryWarning::Expired));
        assert_eq!(expiry_warning(end, end + TimeDelta::days(400)), Some(ExpiryWarning::Expired));
    }

    #[test]
    fn the_warning_follows_this_machines_clock_as_tough_does() {
        let end = at("2027-03-01T12:00:00Z");
        // The hub's clock says the root has two minutes left; this machine's runs three
        // minutes ahead: `tough` here refuses already, so the window says expired.
        let hub_now = end - TimeDelta::minutes(2);
        let ahead = hub_now + TimeDelta::minutes(3);
        assert_eq!(expiry_warning(end, ahead), Some(ExpiryWarning::Expired));
        // A clock three minutes behind still sees (and verifies) a root that is about to end.
        assert_eq!(expiry_warning(end, hub_now - TimeDelta::minutes(3)), Some(ExpiryWarning::Soon));
        // A clock left at 1970 (a dead RTC battery) warns of nothing, and does not panic;
        // neither do the extreme dates a hostile root could carry.
        assert_eq!(expiry_warning(end, DateTime::<Utc>::UNIX_EPOCH), None);
        assert_eq!(expiry_warning(DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC), None);
        assert_eq!(expiry_warning(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC), Some(ExpiryWarning::Expired));
    }

    #[test]
    fn nothing_is_read_without_a_stored_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), Utc::now()), Vec::new());
        // A damaged root.json is not a date to warn about (bundle jobs say what is wrong).
        std::fs::create_dir_all(dir.path().join("tuf")).unwrap();
        std::fs::write(dir.path().join("tuf").join("root.json"), b"{not json").unwrap();
        assert_eq!(read(dir.path(), Utc::now()), Vec::new());
    }
}
