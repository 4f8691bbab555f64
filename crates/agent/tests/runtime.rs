//! The runtime launcher on its own: shell happy path with secrets masked, and cancel
//! ending a whole tree including a daemon that double-forked and called setsid.
#![cfg(target_os = "linux")]

use edge_agent::runtime::{run_process, Ended, RunSpec, RuntimeSettings};
use edge_agent::Secret;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn fast() -> RuntimeSettings {
    RuntimeSettings {
        interrupt_grace: Duration::from_millis(300),
        terminate_grace: Duration::from_millis(300),
        ..RuntimeSettings::default()
    }
}

fn spec(dir: &std::path::Path, run_id: &str, script: &str, secret: Option<&str>) -> RunSpec {
    RunSpec {
        run_id: run_id.into(),
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        cwd: dir.to_path_buf(),
        env: vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("TOKEN".into(), secret.unwrap_or("").into()),
        ],
        secrets: secret.map(|s| vec![Secret::new(s.to_owned())]).unwrap_or_default(),
        timeout: Duration::from_secs(30),
        log_file: dir.join("run.log"),
    }
}

/// Processes whose command line contains `needle`.
fn alive_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rfind(')').is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

/// Waits until `done` holds (polling /proc every 20 ms), failing with `what` after 20 s: the
/// tests wait for processes to appear or go, never for a fixed time.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sleep` processes whose command line contains `needle`.
fn sleepers_with(needle: &str) -> usize {
    alive_with(needle)
        .into_iter()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| cmd.starts_with(b"sleep\0")))
        .count()
}

#[tokio::test]
async fn shell_output_is_captured_with_secrets_masked_and_env_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("AGENT_ONLY_SECRET", "leak");
    let script = r#"echo "token=$TOKEN"; echo "other=${AGENT_ONLY_SECRET:-none}"; echo err >&2; exit 0"#;
    let outcome = run_process(
        spec(dir.path(), "run_mask_test_1", script, Some("s3cr3t-value")),
        &fast(),
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(outcome.ended, Ended::Exited);
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.stdout.text, "token=***\nother=none\n");
    assert_eq!(outcome.stderr.text, "err\n");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(!log.contains("s3cr3t"), "{log}");
}

#[tokio::test]
async fn output_over_the_cap_is_truncated_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RuntimeSettings { output_cap: 1000, ..fast() };
    let outcome = run_process(
        spec(dir.path(), "run_cap_test_1", "head -c 5000 /dev/zero | tr '\\0' x", None),
        &settings,
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    assert!(outcome.stdout.truncated);
    assert_eq!(outcome.stdout.dropped_bytes, 4000);
    assert!(outcome.stdout.text.contains("output truncated: 4000 more bytes dropped"));
}

#[tokio::test]
async fn cancel_kills_children_grandchildren_and_a_daemonized_grandchild() {
    let dir = tempfile::tempdir().unwrap();
    // Unique sleep durations make the processes findable by their command line.
    let id = std::process::id();
    let tag = format!(".{id}7");
    // A child, a grandchild, and a double-forked setsid daemon that escapes the group.
    let script = format!(
        "sleep 301{tag} &\n\
         sh -c 'sleep 302{tag}; true' &\n\
         ( setsid sh -c 'sleep 303{tag}; true' & )\n\
         echo started; wait"
    );
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let watch_tag = tag.clone();
    // Cancel once all three sleepers run, so the cancel has the whole tree to end.
    let watcher = tokio::spawn(async move {
        wait_for("the three sleepers to start", || sleepers_with(&watch_tag) == 3).await;
        trigger.cancel();
    });
    let outcome =
        run_process(spec(dir.path(), "run_cancel_test_1", &script, None), &fast(), cancel, None).await.unwrap();
    watcher.await.unwrap();
    assert_eq!(outcome.ended, Ended::Cancelled);
    assert_eq!(outcome.stdout.text, "started\n");
    wait_for("every process of the tree to end", || alive_with(&tag).is_empty()).await;
}

#[tokio::test]
async fn the_tree_finder_sees_the_daemon_before_cancel() {
    // Guards the test above against passing vacuously: the processes do exist mid-run.
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(".{}9", std::process::id());
    let script = format!("( setsid sh -c 'sleep 305{tag}; true' & ) ; sleep 306{tag}");
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let probe_tag = tag.clone();
    let probe = tokio::spawn(async move {
        wait_for("the daemon and the sleeper to start", || sleepers_with(&probe_tag) == 2).await;
        let seen = alive_with(&probe_tag).len();
        trigger.cancel();
        seen
    });
    run_process(spec(dir.path(), "run_probe_test_1", &script, None), &fast(), cancel, None).await.unwrap();
    assert!(probe.await.unwrap() >= 2, "daemon and sleeper were running");
    wait_for("every process of the tree to end", || alive_with(&tag).is_empty()).await;
}

#[tokio::test]
async fn a_daemon_left_behind_by_a_finished_script_is_ended_too() {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!(".{}3", std::process::id());
    // The script finishes only once the daemon's sleeper exists (its pid is in `daemon`), so
    // there is a leftover to end.
    let script = format!(
        "( setsid sh -c 'sleep 304{tag} & echo $! > daemon.tmp; mv daemon.tmp daemon; wait' & ) ; \
         while [ ! -s daemon ]; do sleep 0.02; done; echo done"
    );
    let outcome =
        run_process(spec(dir.path(), "run_leftover_test_1", &script, None), &fast(), CancellationToken::new(), None)
            .await
            .unwrap();
    assert_eq!(outcome.exit_code, Some(0));
    let daemon = std::fs::read_to_string(dir.path().join("daemon")).unwrap();
    assert!(!daemon.trim().is_empty(), "the daemon started");
    wait_for("the leftover daemon to end", || alive_with(&tag).is_empty()).await;
}

#[tokio::test]
async fn a_timeout_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "run_timeout_test_1", "trap '' INT; sleep 30", None);
    s.timeout = Duration::from_millis(300);
    let outcome = run_process(s, &fast(), CancellationToken::new(), None).await.unwrap();
    assert_eq!(outcome.ended, Ended::TimedOut);
    // The ceiling is the behaviour: the 300 ms timeout ended the run, not `sleep 30`. Half of
    // that is room enough for a loaded machine.
    assert!(outcome.duration < Duration::from_secs(15), "{:?}", outcome.duration);
}
