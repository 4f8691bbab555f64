//! Small helpers for running commands from tasks with readable failures.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent dir").to_path_buf()
}

/// Runs `cmd`, echoing it first, and fails with its exit status if it fails.
pub fn checked(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("could not start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// `cargo install NAME --version VERSION OPTIONS --root DIR` unless DIR/bin/NAME exists
/// already: tools the tests and benchmarks use from crates.io, pinned, kept in target/.
pub fn cargo_tool(dir: &Path, name: &str, version: &str, options: &[&str]) -> Result<PathBuf> {
    let bin = dir.join("bin").join(name);
    if !bin.exists() {
        eprintln!("building {name} {version} from crates.io into {}", dir.display());
        let started = Instant::now();
        checked(cargo().args(["install", name, "--version", version]).args(options).arg("--root").arg(dir))?;
        eprintln!("built {name} {version} in {} s", started.elapsed().as_secs());
    }
    Ok(bin)
}

pub fn is_root() -> bool {
    // SAFETY-free alternative to libc::geteuid: `id -u` is on every Debian machine.
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Waits for `child` to exit for at most `timeout`; past it, kills it and returns `None`.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on 127.0.0.1:`port` over a plain socket (xtask carries no HTTP client): the
/// whole answer, status line to body, read until the server closes.
pub fn loopback_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_get_sends_the_path_and_returns_the_whole_answer() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request_line = String::new();
            BufReader::new(&socket).read_line(&mut request_line).unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            request_line
        });
        let answer = loopback_get(port, "/health").unwrap();
        assert_eq!(server.join().unwrap(), "GET /health HTTP/1.1\r\n");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    }
}
