//! Unix process trees: each run is its own process group; on Linux the agent is also a
//! child subreaper, and the tree is found through `/proc` (the group, every descendant by
//! parent pid, every process carrying the run's marker variable, and orphans reparented to
//! the agent), so a daemon that double-forked and called `setsid` is still found and killed.
//! It must never signal a process that is not part of the run, and never `waitpid` a child
//! that tokio owns.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Environment variable every process of a run inherits (a daemon that scrubs it is still
/// caught as an orphan of the subreaper).
pub const RUN_MARKER: &str = "EDGE_RUN_ID";

/// Root pids of runs in progress: orphans reparented to the agent that are none of these
/// belong to some run and are swept.
static ROOTS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Held from spawning a run's root until it is in [`ROOTS`], and by a sweep while it scans
/// and signals: a child spawned but not yet registered (its own group, parent the agent)
/// would otherwise look like an adopted orphan and be killed by another run's sweep.
static SPAWNING: Mutex<()> = Mutex::new(());

/// Hold across `spawn` and [`Tree::attach`].
pub fn spawn_guard() -> std::sync::MutexGuard<'static, ()> {
    SPAWNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Once per process: become a child subreaper (Linux), so orphans of a run are reparented to
/// the agent instead of init and can be found and reaped.
pub fn prepare_agent_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only changes this process's attributes.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

pub fn configure(command: &mut Command) {
    command.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe prctl.
    #[cfg(target_os = "linux")]
    unsafe {
        command.pre_exec(|| {
            // setuid binaries cannot raise privileges in the run.
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            // If the agent dies, its run dies with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
}

pub struct Tree {
    root: i32,
    marker: String,
}

impl Tree {
    pub fn attach(child: &Child, run_id: &str) -> Tree {
        let root = child.id().map(|p| p as i32).unwrap_or(0);
        prepare_agent_process();
        if let Ok(mut roots) = ROOTS.lock() {
            roots.push(root);
        }
        Tree { root, marker: format!("{RUN_MARKER}={run_id}") }
    }

    /// Every live process of the run, the root included while it lives.
    pub fn members(&self) -> Vec<i32> {
        members(self.root, &self.marker)
    }

    fn signal(&self, signal: i32) {
        let _no_spawns = spawn_guard();
        if self.root > 0 {
            // SAFETY: kill(2) on the run's own process group.
            unsafe {
                libc::kill(-self.root, signal);
            }
        }
        for pid in self.members() {
            // SAFETY: kill(2) on a process identified as part of this run.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// Interrupt, wait, terminate, wait, kill everything; returns the root's exit status.
    pub async fn ladder(
        &self,
        child: &mut Child,
        interrupt_grace: Duration,
        terminate_grace: Duration,
    ) -> Option<std::process::ExitStatus> {
        for (signal, grace) in [(libc::SIGINT, interrupt_grace), (libc::SIGTERM, terminate_grace)] {
            self.signal(signal);
            if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
                self.sweep(Duration::ZERO).await;
                return Some(status);
            }
        }
        self.kill_all().await;
        child.wait().await.ok()
    }

    /// After the root exited: terminate what it left behind, then kill it.
    pub async fn sweep(&self, grace: Duration) {
        if self.members().is_empty() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && !self.members().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reap_orphans();
        }
        self.kill_all().await;
    }

    async fn kill_all(&self) {
        // Repeat: a process may fork between the scan and the kill.
        for _ in 0..50 {
            self.signal(libc::SIGKILL);
            tokio::time::sleep(Duration::from_millis(10)).await;
            reap_orphans();
            if self.members().iter().all(|&p| p == self.root) {
                break;
            }
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Last resort if the run future is dropped mid-run (agent shutdown): no survivors.
        if !self.members().is_empty() {
            for _ in 0..3 {
                self.signal(libc::SIGKILL);
            }
        }
        if let Ok(mut roots) = ROOTS.lock() {
            roots.retain(|&r| r != self.root);
        }
        reap_orphans();
    }
}

/// Reaps children of the agent that tokio does not own (orphans adopted as subreaper).
fn reap_orphans() {
    #[cfg(target_os = "linux")]
    {
        let me = std::process::id() as i32;
        let roots: HashSet<i32> = ROOTS.lock().map(|r| r.iter().copied().collect()).unwrap_or_default();
        for (pid, ppid, _) in processes() {
            if ppid == me && !roots.contains(&pid) && is_zombie(pid) {
                let mut status = 0;
                // SAFETY: waitpid on one specific zombie child that tokio did not spawn.
                unsafe {
                    libc::waitpid(pid, &mut status, libc::WNOHANG);
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z")))
        .unwrap_or(false)
}

/// (pid, ppid, pgrp) of every process.
#[cfg(target_os = "linux")]
fn processes() -> Vec<(i32, i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces and parentheses: parse after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") {
                return None;
            }
            Some((pid, fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?))
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn members(root: i32, marker: &str) -> Vec<i32> {
    let all = processes();
    let me = std::process::id() as i32;
    let roots: HashSet<i32> = ROOTS.lock().map(|r| r.iter().copied().collect()).unwrap_or_default();
    // SAFETY: getpgrp has no preconditions.
    let my_group = unsafe { libc::getpgrp() };
    let mut set: HashSet<i32> = HashSet::new();
    for &(pid, ppid, pgrp) in &all {
        if pid == me {
            continue;
        }
        // Adopted by the subreaper: left its group (setsid) and belongs to no live run's
        // group. Children the agent spawned itself stay in the agent's group and are spared.
        let orphan = ppid == me && pgrp != my_group && !roots.contains(&pid) && !roots.contains(&pgrp);
        if pid == root || (root > 0 && pgrp == root) || orphan || has_marker(pid, marker) {
            set.insert(pid);
        }
    }
    // Close over descendants.
    loop {
        let before = set.len();
        for &(pid, ppid, _) in &all {
            if set.contains(&ppid) && pid != me {
                set.insert(pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.into_iter().collect()
}

#[cfg(target_os = "linux")]
fn has_marker(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        .unwrap_or(false)
}

/// Other Unix systems: the process group only (no `/proc`); documented in docs/bundles.md.
#[cfg(not(target_os = "linux"))]
fn members(root: i32, _marker: &str) -> Vec<i32> {
    // SAFETY: kill with signal 0 only checks that the group exists.
    let alive = root > 0 && unsafe { libc::kill(-root, 0) } == 0;
    if alive {
        vec![root]
    } else {
        Vec::new()
    }
}
