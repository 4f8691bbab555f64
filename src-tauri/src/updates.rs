//! Restarting into an update the person chose to take now or tonight.
//!
//! The tray never installs updates by itself (see `edge_agent::updater::AutoUpdate::tell_only`):
//! its package manager or installer puts the new version on disk (for a deb or rpm, on the
//! person's "Install now", `edge_agent::updater::package`), the core notices the file changed
//! underneath the running copy and says "Update ready", and the person picks when the restart
//! happens. It owns only that wait and the restart: when is the core's
//! [`RestartPlan`], the restart itself is Tauri's (which releases the single-instance lock
//! before the new process starts).

use crate::accounts::Accounts;
use edge_agent::updater::{RestartPlan, RestartWhen};
use std::sync::Mutex;
use std::time::Duration;
use tauri::{AppHandle, Manager, Runtime};

/// How often a planned restart looks at the clock and the running jobs.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The one planned restart; a new choice replaces it.
#[derive(Default)]
pub struct PlannedRestart(Mutex<Option<tauri::async_runtime::JoinHandle<()>>>);

pub fn plan<R: Runtime>(app: &AppHandle<R>, when: RestartWhen) {
    let plan = RestartPlan::new(when, chrono_now());
    tracing::info!(?when, not_before = ?plan.not_before(), "restart into the installed update planned");
    let app_for_task = app.clone();
    let task = tauri::async_runtime::spawn(async move {
        // The restart stops every account: it waits until none runs a job.
        let busy = |app: &AppHandle<R>| app.state::<Accounts>().all().iter().map(|(_, a)| a.snapshot().busy).sum();
        while !plan.due(chrono_now(), busy(&app_for_task)) {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        tracing::info!("restarting into the installed update");
        crate::app::shutdown_for_restart(&app_for_task.state::<Accounts>()).await;
        app_for_task.restart();
    });
    let planned = app.state::<PlannedRestart>();
    let mut slot = planned.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(previous) = slot.replace(task) {
        previous.abort();
    }
}

fn chrono_now() -> chrono::NaiveDateTime {
    chrono::Local::now().naive_local()
}
