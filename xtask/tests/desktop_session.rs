//! tests/support/desktop-session.sh, the session every Rust test of `cargo xtask test` runs
//! in: its exit code is the command's, it ends every process it started, and a clean-up
//! failure is a warning, never a red run (issue 17 §1: a document portal's FUSE mount made a
//! green run fail).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/desktop-session.sh")
}

/// Runs `body` (bash) inside a new desktop session, even when this test already runs in one.
fn session(body: &str) -> Output {
    let out = Command::new(script())
        .args(["bash", "-c", body])
        .env_remove("EDGE_IN_DESKTOP_SESSION")
        .output()
        .expect("tests/support/desktop-session.sh needs bash, dbus-run-session (Debian: dbus-bin) and gnome-keyring-daemon (gnome-keyring)");
    eprintln!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn alive(pid: u32) -> bool {
    // A killed child of a dead parent is reaped by init at once; a zombie would still have
    // its /proc entry but no longer a command line.
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| !c.is_empty()).unwrap_or(false)
}

fn require_root(why: &str) {
    let uid = Command::new("id").arg("-u").output().expect("id").stdout;
    assert_eq!(String::from_utf8_lossy(&uid).trim(), "0", "this test runs as root: {why}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("desktop-session-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_session_ends_its_processes_and_mounts_and_keeps_the_command_exit_code() {
    require_root("it mounts a tmpfs where the document portal mounts its FUSE file system");
    let out_dir = scratch("procs");
    // A process that ignores SIGTERM (as a stuck portal would), left running in the
    // background, and a mount under XDG_RUNTIME_DIR where xdg-document-portal puts its own:
    // rm -rf cannot remove a mount point.
    let body = format!(
        r#"set -e
        (trap '' TERM; exec sleep 300) &
        echo $! > {dir}/stubborn.pid
        for p in $(pgrep -x gnome-keyring-d); do
          if grep -qzxF "EDGE_SESSION_HOME=$EDGE_SESSION_HOME" /proc/$p/environ; then echo $p > {dir}/keyring.pid; fi
        done
        echo "$HOME" > {dir}/home
        mkdir -p "$XDG_RUNTIME_DIR/doc"
        mount -t tmpfs edge-test-portal "$XDG_RUNTIME_DIR/doc"
        mkdir "$XDG_RUNTIME_DIR/doc/by-app"
        exit 7"#,
        dir = out_dir.display()
    );
    let started = Instant::now();
    let out = session(&body);
    assert_eq!(out.status.code(), Some(7), "the session's exit code must be the command's");
    assert!(started.elapsed() < Duration::from_secs(60), "the clean-up is bounded (5 s TERM, 5 s KILL)");

    let read_pid = |name: &str| -> u32 {
        std::fs::read_to_string(out_dir.join(name)).unwrap().trim().parse().unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let stubborn = read_pid("stubborn.pid");
    assert!(!alive(stubborn), "a process that ignores SIGTERM outlived the session: {stubborn}");
    let keyring = read_pid("keyring.pid");
    assert!(!alive(keyring), "gnome-keyring-daemon outlived the session: {keyring}");
    let home = std::fs::read_to_string(out_dir.join("home")).unwrap().trim().to_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&home), "a mount under the session's HOME survived:\n{mountinfo}");
    assert!(!Path::new(&home).exists(), "the session's HOME {home} was not removed");
    std::fs::remove_dir_all(&out_dir).unwrap();
}

#[test]
fn a_clean_up_failure_is_a_warning_not_a_failed_run() {
    require_root("it makes a file immutable (chattr +i) so the clean-up's rm fails with EPERM");
    let out_dir = scratch("cleanup");
    let body = format!(
        r#"set -e
        echo "$HOME" > {dir}/home
        touch "$HOME/stuck"
        chattr +i "$HOME/stuck"
        exit 0"#,
        dir = out_dir.display()
    );
    let out = session(&body);
    let home = std::fs::read_to_string(out_dir.join("home")).unwrap().trim().to_owned();
    // Undo before asserting, so a failure does not leave an undeletable file behind.
    let _ = Command::new("chattr").args(["-i", &format!("{home}/stuck")]).status();
    let _ = std::fs::remove_dir_all(&home);
    std::fs::remove_dir_all(&out_dir).unwrap();
    assert_eq!(out.status.code(), Some(0), "a green command must stay green when the clean-up fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: could not remove"), "the clean-up failure must be reported: {stderr}");
}
