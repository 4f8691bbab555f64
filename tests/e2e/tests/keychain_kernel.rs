//! The kernel keyring end to end, with the real binaries: it is what headless servers and
//! `cargo xtask demo` use, while the other end-to-end tests (`--keychain auto` inside the
//! test desktop session) reach Secret Service. A full login → run → job → status → logout,
//! the stress of issue #17 (login → run → first `hb_ack`, many times, several at once, on a
//! busy CPU, with processes in different session keyrings: not one false "not logged in"),
//! and blocked keyctl syscalls reported as such.

use anyhow::{bail, Result};
use edge_e2e::keyring::{with_keyctl_blocked, PersistentKeyringHolder};
use edge_e2e::site::Site;
use edge_e2e::{http_job, scratch_dir, wait_until, Agent, Binaries, Hub};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

const KEYCHAIN: &str = "kernel";

#[test]
fn kernel_keychain_login_run_job_status_logout() -> Result<()> {
    let dir = scratch_dir("kernel-keychain")?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let key = hub.api_key()?;
    let site = Site::start()?;
    let creator = "cr-kernel";
    let mut agent =
        Agent::new(&bins, &format!("e2e-kernel-{}", std::process::id()), KEYCHAIN, &dir.path().join("agent"));

    let login = agent.login(&hub.url, &hub.enroll_token(creator)?)?;
    agent.grant(&["http_request"])?;
    assert!(login.contains("keychain:   kernel"), "{login}");
    let (ok, status) = agent.oneshot(&["status"])?;
    assert!(ok, "{status}");
    assert!(status.contains("keychain:    kernel") && status.contains("logged in:   yes"), "{status}");
    assert!(status.contains(agent.agent_id()), "{status}");

    agent.allow_egress(&site.base_url);
    agent.run(&["--hb-interval-secs", "1"])?;
    hub.wait_agent_online(&key, agent.agent_id(), Duration::from_secs(30))
        .map_err(|e| e.context(format!("agent log:\n{}", agent.run_log())))?;
    let job = hub.run_job(&key, &http_job(creator, &site.url("/hello")), Duration::from_secs(30))?;
    assert_eq!(job["status"], "succeeded", "{job}\nagent log:\n{}", agent.run_log());
    assert_eq!(job["result"]["statusCode"], 200, "{job}");
    assert_eq!(job["agentId"], agent.agent_id());

    let (ok, status) = agent.oneshot(&["status"])?;
    assert!(ok && status.to_lowercase().contains("online"), "{status}");
    assert!(agent.shutdown(), "agent must exit on SIGTERM");

    let (ok, out) = agent.oneshot(&["logout"])?;
    assert!(ok, "{out}");
    let (ok, status) = agent.oneshot(&["status"])?;
    assert!(ok && status.contains("keychain:    kernel") && status.contains("logged in:   no"), "{status}");
    // Logged out means logged out, in this process and the next.
    agent.run(&[])?;
    let code = agent.wait_exit(Duration::from_secs(30))?;
    assert_ne!(code, Some(0), "run after logout must fail");
    assert!(agent.run_log().contains("not logged in"), "{}", agent.run_log());
    agent.agent_id = None; // nothing left to log out of
    Ok(())
}

/// Issue #17: `edge-agent run` said "login required: not logged in" right after a good
/// login, a few times in ten on a loaded machine. 50 cycles of login → run → first
/// `hb_ack` → stop → logout, ten at once, with every core kept busy, rotating through
/// processes with the test's keyrings, with a session keyring of their own, and mixes of
/// the two, while another process of this user holds the persistent keyring in its session
/// keyring. Not one may read as "not logged in".
///
/// The old store lost the race in a process without a session keyring (as under `cargo
/// xtask test`) only when tokio started a second blocking thread for `run`'s second read,
/// a few percent of runs here; this test caught it in most runs, not all. The deterministic
/// check of that cause is `a_login_is_found_from_every_thread_and_session_keyring` in
/// crates/agent/tests/keychain_kernel.rs.
#[test]
fn kernel_keychain_login_run_cycles_never_lose_the_login() -> Result<()> {
    const CYCLES: usize = 50;
    const AT_ONCE: usize = 10;
    const HB_ACK_TIMEOUT: Duration = Duration::from_secs(60);
    let deadline = Instant::now() + Duration::from_secs(600);

    let dir = scratch_dir("kernel-stress")?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &["--hb-interval-secs", "1"])?;
    let _holder = PersistentKeyringHolder::start()?;

    let stop_load = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let completed = AtomicUsize::new(0);
    // Twice as many spinning threads as cores: the agents' threads wait for a core, which is
    // what made the old store's race show (a blocking thread not back in tokio's pool yet).
    let busy_threads = 2 * thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);

    thread::scope(|scope| {
        for _ in 0..busy_threads {
            scope.spawn(|| {
                let mut x = 0u64;
                while !stop_load.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                }
            });
        }
        let workers: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                scope.spawn(|| loop {
                    let cycle = next.fetch_add(1, Ordering::Relaxed);
                    if cycle >= CYCLES {
                        return;
                    }
                    if Instant::now() >= deadline {
                        failures.lock().unwrap().push(format!("cycle {cycle}: not started, the 600 s budget ran out"));
                        continue;
                    }
                    match one_cycle(&bins, &hub, dir.path(), cycle, HB_ACK_TIMEOUT) {
                        Ok(()) => {
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(format!("cycle {cycle}: {e:#}")),
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.join();
        }
        stop_load.store(true, Ordering::Relaxed);
    });

    let failures = failures.into_inner().unwrap();
    let false_logouts = failures.iter().filter(|f| f.contains("not logged in")).count();
    if !failures.is_empty() {
        bail!(
            "{} of {CYCLES} cycles failed, {false_logouts} of them with a false \"not logged in\":\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
    assert_eq!(completed.load(Ordering::Relaxed), CYCLES);
    Ok(())
}

/// One login → run → first `hb_ack` → stop → logout, in the session keyring arrangement
/// `cycle` picks.
fn one_cycle(bins: &Binaries, hub: &Hub, dir: &std::path::Path, cycle: usize, timeout: Duration) -> Result<()> {
    // (login in its own session keyring, run in its own session keyring). Runs that inherit
    // the test's keyrings come up most: without a session keyring (as under `cargo xtask
    // test`) they are the ones the old store failed.
    let (login_own, run_own) = match cycle % 5 {
        0 => (false, false),
        1 => (true, false),
        2 => (false, false),
        3 => (true, true),
        _ => (false, true),
    };
    let profile = format!("e2e-stress-{}-{cycle}", std::process::id());
    let mut agent = Agent::new(bins, &profile, KEYCHAIN, &dir.join(format!("agent-{cycle}")));
    agent.own_session_keyring = login_own;
    agent.login(&hub.url, &hub.enroll_token(&format!("cr-stress-{cycle}"))?)?;
    agent.own_session_keyring = run_own;
    agent.run(&["--hb-interval-secs", "1"])?;
    let seen = wait_until(timeout, || {
        let log = agent.run_log();
        Ok(log.contains("first hb_ack") || log.contains("not logged in") || !agent.is_running())
    });
    let log = agent.run_log();
    agent.shutdown();
    let (logged_out, out) = agent.oneshot(&["logout"])?;
    if log.contains("not logged in") {
        bail!(
            "login in own session keyring: {login_own}, run in own: {run_own}: not logged in right after login:\n{log}"
        );
    }
    seen?;
    if !log.contains("first hb_ack") {
        bail!("the agent stopped before its first hb_ack:\n{log}");
    }
    if !logged_out {
        bail!("logout failed: {out}");
    }
    agent.agent_id = None;
    Ok(())
}

/// Containers often block the keyctl syscalls. The agent must say that, and what to do,
/// instead of "not logged in" or a bare errno.
#[test]
fn blocked_keyctl_syscalls_are_reported_with_the_way_out() -> Result<()> {
    let dir = scratch_dir("kernel-blocked")?;
    let bins = Binaries::locate()?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &[])?;
    for (errno, name) in [(libc::ENOSYS, "ENOSYS"), (libc::EPERM, "EPERM")] {
        let agent_dir = dir.path().join(format!("agent-{name}"));
        let token = hub.enroll_token("cr-blocked")?;
        for args in [vec!["status"], vec!["login", "--hub", hub.url.as_str(), "--token", token.as_str()], vec!["run"]] {
            let mut cmd = std::process::Command::new(&bins.agent);
            cmd.args(["--profile", "e2e-blocked", "--keychain", KEYCHAIN, "--data-dir"])
                .arg(&agent_dir)
                .args(&args)
                .env_remove("DBUS_SESSION_BUS_ADDRESS");
            with_keyctl_blocked(&mut cmd, errno);
            let out = cmd.output()?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(!out.status.success(), "{args:?} with keyctl blocked by {name} succeeded: {text}");
            assert!(
                text.contains(name) && text.contains("blocked") && text.contains("--keychain secret-service"),
                "{args:?} with keyctl blocked by {name} must say so and what to do: {text}"
            );
            assert!(!text.contains("not logged in"), "{args:?}: {text}");
        }
        // `auto` without a session bus falls back to the kernel keyring, and says why
        // neither works.
        let mut cmd = std::process::Command::new(&bins.agent);
        cmd.args(["--profile", "e2e-blocked", "--keychain", "auto", "--data-dir"])
            .arg(&agent_dir)
            .arg("status")
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        with_keyctl_blocked(&mut cmd, errno);
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("DBUS_SESSION_BUS_ADDRESS is not set") && text.contains(name), "{text}");
    }
    Ok(())
}
