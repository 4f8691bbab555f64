//! `tests/support/postgres.sh`, which `cargo xtask test` asks for the PostgreSQL of the test
//! run: an open port is not enough, the server there must answer a query on `test`. Against
//! something that is not PostgreSQL it fails, prints no URL and names the port and what to
//! do; against the real test server it prints the URL and nothing else.

use anyhow::{ensure, Context as _, Result};
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../support/postgres.sh")
}

/// Runs the script for `port` with its state file in `tmp`; killed after 60 s.
fn run_script(port: u16, tmp: &std::path::Path) -> Result<Output> {
    let mut child = Command::new("bash")
        .arg(script())
        .env("EDGE_PG_PORT", port.to_string())
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting bash tests/support/postgres.sh")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// A listener on 127.0.0.1 that answers every connection like a web server would, until
/// dropped (at most 2 minutes).
struct NotPostgres {
    port: u16,
    stop: Arc<AtomicBool>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl NotPostgres {
    fn start() -> Result<NotPostgres> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), connections.clone());
        thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut first = [0u8; 64];
                        let _ = stream.read(&mut first);
                        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(NotPostgres { port, stop, connections })
    }
}

impl Drop for NotPostgres {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_port_where_something_else_listens_is_a_clear_failure_not_a_url() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let impostor = NotPostgres::start()?;
    let out = run_script(impostor.port, tmp.path())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the script accepted a port that is not PostgreSQL:\n{stdout}\n{stderr}");
    ensure!(stdout.trim().is_empty(), "the script printed a URL for a port that is not PostgreSQL: {stdout}");
    ensure!(
        stderr.contains(&format!("127.0.0.1:{}", impostor.port)) && stderr.contains("not a PostgreSQL"),
        "the failure must name the port and what is wrong: {stderr}"
    );
    ensure!(stderr.contains("EDGE_PG_PORT"), "the failure must say what to do: {stderr}");
    // It asked the server (a query), not only whether the port is open.
    ensure!(impostor.connections.load(Ordering::Relaxed) >= 2, "the script never spoke to the listener");
    ensure!(!tmp.path().join(format!("edge-pg-{}.datadir", impostor.port)).exists(), "it started a cluster");
    Ok(())
}

#[test]
fn the_test_server_answers_and_its_url_is_the_only_output() -> Result<()> {
    if !edge_e2e::pg::check()? {
        return Ok(());
    }
    let Some(port) = edge_e2e::pg::loopback_port() else {
        eprintln!("the test PostgreSQL is not on 127.0.0.1, where the script looks; nothing to check");
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let out = run_script(port, tmp.path())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "the script failed against the test server: {stderr}");
    ensure!(stdout == format!("postgres://postgres@127.0.0.1:{port}/test\n"), "stdout: {stdout:?}\nstderr: {stderr}");
    ensure!(stderr.contains("answers queries"), "{stderr}");
    Ok(())
}
