//! Windows process trees: each run is assigned to its own Job Object created with
//! `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, so every process it starts (detached ones included)
//! belongs to the job and dies when the job is terminated or its handle closes. The ladder's
//! interrupt and terminate steps are a CTRL_BREAK to the run's process group; the final step
//! is `TerminateJobObject`. It must never terminate a job it did not create.
//!
//! Not compiled or tested on the Linux CI machine; see docs/bundles.md.

use std::time::Duration;
use tokio::process::{Child, Command};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation, SetInformationJobObject,
    TerminateJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{
    OpenProcess, CREATE_NEW_PROCESS_GROUP, PROCESS_SET_QUOTA, PROCESS_TERMINATE,
};

pub const RUN_MARKER: &str = "EDGE_RUN_ID";

pub fn prepare_agent_process() {}

static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held across `spawn` and [`Tree::attach`] (the Unix sweep needs it; here it only keeps the
/// launcher's code the same on both platforms).
pub fn spawn_guard() -> std::sync::MutexGuard<'static, ()> {
    SPAWNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn configure(command: &mut Command) {
    command.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

pub struct Tree {
    job: HANDLE,
    pid: u32,
}

// SAFETY: the job handle is only used through thread-safe Win32 calls.
unsafe impl Send for Tree {}
unsafe impl Sync for Tree {}

impl Tree {
    pub fn attach(child: &Child, _run_id: &str) -> Tree {
        let pid = child.id().unwrap_or(0);
        // SAFETY: plain Win32 calls on handles we own; failures leave `job` null and the
        // ladder falls back to the process group.
        unsafe {
            let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if !job.is_null() {
                let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
                info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
                SetInformationJobObject(
                    job,
                    JobObjectExtendedLimitInformation,
                    &info as *const _ as *const _,
                    std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                );
                let process = OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, 0, pid);
                if !process.is_null() {
                    AssignProcessToJobObject(job, process);
                    CloseHandle(process);
                }
            }
            Tree { job, pid }
        }
    }

    pub fn members(&self) -> Vec<i32> {
        Vec::new()
    }

    fn interrupt(&self) {
        // SAFETY: CTRL_BREAK to the run's own process group.
        unsafe {
            GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.pid);
        }
    }

    fn kill_all(&self) {
        if !self.job.is_null() {
            // SAFETY: terminating the job this tree created.
            unsafe {
                TerminateJobObject(self.job, 1);
            }
        }
    }

    pub async fn ladder(
        &self,
        child: &mut Child,
        interrupt_grace: Duration,
        terminate_grace: Duration,
    ) -> Option<std::process::ExitStatus> {
        for grace in [interrupt_grace, terminate_grace] {
            self.interrupt();
            if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
                self.kill_all();
                return Some(status);
            }
        }
        self.kill_all();
        let _ = child.start_kill();
        child.wait().await.ok()
    }

    pub async fn sweep(&self, _grace: Duration) {
        self.kill_all();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.job.is_null() {
            // SAFETY: closing our job handle kills what is left (KILL_ON_JOB_CLOSE).
            unsafe {
                CloseHandle(self.job);
            }
        }
    }
}
