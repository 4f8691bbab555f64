//! A throw-away X server (Xvfb) for tests that need a real display, such as the headful
//! browser login, and a look at the windows on it (`xwininfo`).
//!
//! It owns one Xvfb process and stops it when dropped. It must never touch a display it did
//! not start: Xvfb picks a free display number itself (`-displayfd`) and listens on no TCP
//! port. Both tools come from Debian packages `cargo xtask test` installs (xvfb,
//! x11-utils); a missing one is an error naming its package, never a skipped test.

use crate::stop;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running Xvfb.
pub struct Xvfb {
    child: Child,
    /// `:N`, what `DISPLAY` must say to reach this server.
    pub display: String,
    log: PathBuf,
}

impl Xvfb {
    /// Starts Xvfb on a free display, with its log in `dir/xvfb.log`; returns once the
    /// server accepts connections.
    pub fn start(dir: &Path) -> Result<Xvfb> {
        let binary = on_path("Xvfb")
            .ok_or_else(|| anyhow!("no Xvfb on PATH: install the Debian package xvfb (`cargo xtask test` does)"))?;
        fs::create_dir_all(dir)?;
        let log = dir.join("xvfb.log");
        let log_file = File::create(&log)?;
        // Xvfb writes the display number it chose into this file. Rust opens files
        // close-on-exec; the flag is cleared in the forked child only, so no other process
        // the tests spawn meanwhile inherits the descriptor.
        let display_file = tempfile::tempfile()?;
        let fd = display_file.as_raw_fd();
        let mut command = Command::new(&binary);
        // -noreset: by default an X server resets whenever its last client disconnects, and a
        // client that connects during the reset is refused. The tests' own `xwininfo` polls
        // are often that last client, so a browser starting meanwhile could find "no X server"
        // (about 2 % of connections in a loop like the tests').
        command
            .args(["-displayfd", &fd.to_string(), "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-noreset"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: the hook only calls fcntl(2), which is async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        // From here on, Drop stops the server whatever goes wrong.
        let mut xvfb = Xvfb { child, display: String::new(), log };
        let deadline = Instant::now() + START_TIMEOUT;
        let number = loop {
            let mut buf = [0u8; 16];
            let len = display_file.read_at(&mut buf, 0)?;
            let text = String::from_utf8_lossy(&buf[..len]);
            if let Some((number, _)) = text.split_once('\n') {
                break number.trim().to_owned();
            }
            if let Some(status) = xvfb.child.try_wait()? {
                bail!("Xvfb exited ({status}) before it chose a display; its log:\n{}", xvfb.log_text());
            }
            if Instant::now() >= deadline {
                bail!("Xvfb chose no display within {START_TIMEOUT:?}; its log:\n{}", xvfb.log_text());
            }
            thread::sleep(Duration::from_millis(20));
        };
        xvfb.display = format!(":{number}");
        let socket = format!("/tmp/.X11-unix/X{number}");
        crate::wait_until(START_TIMEOUT, || Ok(UnixStream::connect(&socket).is_ok())).with_context(|| {
            format!("Xvfb on {} never accepted a connection; its log:\n{}", xvfb.display, xvfb.log_text())
        })?;
        Ok(xvfb)
    }

    /// Lines of `xwininfo -root -tree` that contain `needle` and whose window is mapped and
    /// viewable (a window that exists but was never shown does not count).
    pub fn viewable_windows(&self, needle: &str) -> Result<Vec<String>> {
        let tree = self.xwininfo(&["-root", "-tree"])?;
        let mut viewable = Vec::new();
        for line in tree.lines().map(str::trim).filter(|l| l.starts_with("0x") && l.contains(needle)) {
            let id = line.split_whitespace().next().unwrap_or_default();
            if self.xwininfo(&["-id", id])?.contains("Map State: IsViewable") {
                viewable.push(line.to_owned());
            }
        }
        Ok(viewable)
    }

    fn xwininfo(&self, args: &[&str]) -> Result<String> {
        // A window can vanish between the tree and the question about it; that is not an error.
        Ok(String::from_utf8_lossy(&self.x11_utils("xwininfo", args)?.stdout).into_owned())
    }

    /// Runs one of the x11-utils tools against this display.
    fn x11_utils(&self, tool: &str, args: &[&str]) -> Result<std::process::Output> {
        Command::new(tool).args(args).env("DISPLAY", &self.display).output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!("no {tool} on PATH: install the Debian package x11-utils (`cargo xtask test` does)")
            } else {
                anyhow!("running {tool}: {e}")
            }
        })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server reset clears the root window's properties, so a property that outlives its
    /// only client proves that no reset happened (and none can refuse the next client).
    #[test]
    fn the_server_does_not_reset_when_its_last_client_leaves() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let xvfb = Xvfb::start(dir.path())?;
        let set = xvfb.x11_utils("xprop", &["-root", "-f", "_EDGE_PROBE", "8s", "-set", "_EDGE_PROBE", "kept"])?;
        assert!(set.status.success(), "xprop -set failed: {}", String::from_utf8_lossy(&set.stderr));
        // xprop has exited: it was the last client. Give a reset, if any, time to happen.
        thread::sleep(Duration::from_millis(300));
        let read = xvfb.x11_utils("xprop", &["-root", "_EDGE_PROBE"])?;
        let text = String::from_utf8_lossy(&read.stdout);
        assert!(text.contains("\"kept\""), "the root window lost its property, so the server reset: {text}");
        Ok(())
    }
}
