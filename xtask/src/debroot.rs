//! A minimal Debian root for checks that must not trust this machine's packages: one
//! `debootstrap --variant=minbase` base of this machine's release, made once under
//! `target/fresh-check/` and reused; per run a throw-away overlay on it, with this
//! machine's /dev and /sys, a shared cache of downloaded `.deb` files, and commands run
//! chrooted in their own PID namespace under a deadline. Used by `fresh-check` (the README's
//! first command) and `release --dry-run` (installing the built packages).
//!
//! It must never change the host: everything it mounts it unmounts, even on failure or
//! timeout, and it never deletes a directory that still has a mount under it.

use crate::util::root;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIRROR_VAR: &str = "EDGE_FRESH_CHECK_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Written into a base root once debootstrap finished; a base without it is thrown away.
const COMPLETE_MARKER: &str = ".edge-fresh-check-complete";
/// The PATH a root login on Debian has, plus rustup's `~/.cargo/bin` as its installer adds it.
const INSIDE_PATH: &str = "/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the base, the package cache and the per-run overlays live.
pub fn dir() -> PathBuf {
    root().join("target/fresh-check")
}

/// A fresh overlay on the base at `run_dir/root`, ready to chroot into: the Debian
/// installer's /etc/hosts, this machine's resolver, /dev and /sys, and the shared cache of
/// downloaded packages (what is installed still starts from the bare base every run).
pub fn overlay(mounts: &mut Mounts, base: &Path, run_dir: &Path) -> Result<PathBuf> {
    unmount_under(run_dir)?;
    remove_unmounted(run_dir)?;
    for sub in ["upper", "work", "root"] {
        std::fs::create_dir_all(run_dir.join(sub))?;
    }
    let root_dir = run_dir.join("root");
    mounts.mount(
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!(
                "lowerdir={},upperdir={},workdir={}",
                base.display(),
                run_dir.join("upper").display(),
                run_dir.join("work").display()
            ),
        ],
        &root_dir,
    )?;
    std::fs::write(root_dir.join("etc/hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    std::fs::copy("/etc/resolv.conf", root_dir.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the root")?;
    mounts.rbind(Path::new("/dev"), &root_dir.join("dev"))?;
    mounts.rbind(Path::new("/sys"), &root_dir.join("sys"))?;
    mounts.bind(&ensure_dir(&dir().join("apt-archives"))?, &root_dir.join("var/cache/apt/archives"), false)?;
    Ok(root_dir)
}

/// Throws a run's overlay away once nothing is mounted under it.
pub fn discard(run_dir: &Path) -> Result<()> {
    unmount_under(run_dir)?;
    remove_unmounted(run_dir)
}

/// This machine's Debian release codename (bookworm…), so the root matches the host.
pub fn host_release() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME; the Debian root needs a release it can debootstrap")
}

/// The debootstrap base for `release`, made once (about a minute) and reused after.
pub fn ensure_base(release: &str, deadline: Instant) -> Result<PathBuf> {
    let dir = dir();
    let base = dir.join(format!("base-{release}"));
    if base.join(COMPLETE_MARKER).is_file() {
        println!("debian root: reusing the minimal {release} root in {}", base.display());
        return Ok(base);
    }
    let partial = dir.join(format!("base-{release}.partial"));
    for stale in [&base, &partial] {
        unmount_under(stale)?;
        remove_unmounted(stale)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mirror = std::env::var(MIRROR_VAR).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    bounded(
        &format!("debootstrap --variant=minbase {release} from {mirror}"),
        Command::new("debootstrap").args(["--variant=minbase", release]).arg(&partial).arg(&mirror),
        deadline,
    )?;
    std::fs::write(partial.join(COMPLETE_MARKER), "")?;
    std::fs::rename(&partial, &base)?;
    Ok(base)
}

/// Runs `script` as root inside the root, in its own PID namespace so nothing it starts
/// outlives it, with the environment of a fresh root login (nothing of this machine's).
pub fn in_root(root_dir: &Path, step: &str, script: &str, deadline: Instant) -> Result<()> {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child"])
        .arg(format!("--mount-proc={}", root_dir.join("proc").display()))
        .arg("chroot")
        .arg(root_dir)
        .args(["/usr/bin/env", "-i", &format!("PATH={INSIDE_PATH}"), "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"])
        // Build tuning only, no dependency: incremental files would bloat the target cache.
        .args(["CARGO_INCREMENTAL=0", "CARGO_TERM_COLOR=never"])
        .args(["/bin/sh", "-c", &format!("exec 2>&1; {script}")]);
    bounded(step, &mut cmd, deadline)
}

/// Runs `cmd` with its output streamed under a `root|` prefix; kills its process group
/// when the deadline passes. The error names the step.
pub fn bounded(step: &str, cmd: &mut Command, deadline: Instant) -> Result<()> {
    println!("debian root: {step}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("step {step:?}: could not start {:?}", cmd.get_program()))?;
    let readers = [
        prefix_lines(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
        prefix_lines(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>)),
    ];
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on the process group we created; no memory is involved.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("step {step:?} failed ({status}); its output is above, prefixed `root|`"),
        None => bail!("step {step:?} did not finish before its deadline; it was killed"),
    }
}

fn prefix_lines(stream: Option<Box<dyn Read + Send>>) -> Option<std::thread::JoinHandle<()>> {
    let stream = stream?;
    Some(std::thread::spawn(move || {
        // Bytes, not `lines()`: a line that is not UTF-8 (a file name, a compiler's
        // message) would end `lines()`, close the pipe and kill the step with SIGPIPE.
        for line in BufReader::new(stream).split(b'\n').map_while(std::io::Result::ok) {
            println!("root| {}", String::from_utf8_lossy(&line));
        }
    }))
}

pub fn ensure_dir(path: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// Mount points this run made, unmounted in reverse order when dropped.
#[derive(Default)]
pub struct Mounts {
    points: Vec<PathBuf>,
}

impl Mounts {
    pub fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        ensure_dir(target)?;
        run_mount(Command::new("mount").args(args).arg(target))?;
        self.points.push(target.to_path_buf());
        Ok(())
    }

    pub fn bind(&mut self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        ensure_dir(target)?;
        run_mount(Command::new("mount").arg("--bind").arg(source).arg(target))?;
        self.points.push(target.to_path_buf());
        if read_only {
            run_mount(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(target))?;
        }
        Ok(())
    }

    /// A recursive bind that does not propagate back: unmounting it must not unmount the
    /// host's own /dev/pts or cgroup mounts.
    pub fn rbind(&mut self, source: &Path, target: &Path) -> Result<()> {
        ensure_dir(target)?;
        run_mount(Command::new("mount").arg("--rbind").arg(source).arg(target))?;
        self.points.push(target.to_path_buf());
        run_mount(Command::new("mount").arg("--make-rslave").arg(target))
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for point in self.points.iter().rev() {
            if let Err(e) = unmount(point) {
                eprintln!("debian root: warning: {e:#}");
            }
        }
    }
}

fn run_mount(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `umount -R`, then lazily if something still holds it (a process that has not exited yet).
fn unmount(point: &Path) -> Result<()> {
    if run_mount(Command::new("umount").arg("-R").arg(point)).is_ok() {
        return Ok(());
    }
    run_mount(Command::new("umount").args(["-R", "-l"]).arg(point))
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal; our paths have none.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

/// Unmounts whatever an earlier, interrupted run left mounted under `dir`.
pub fn unmount_under(dir: &Path) -> Result<()> {
    for point in mounts_under(dir)? {
        unmount(&point)?;
    }
    Ok(())
}

/// Removes `dir` only when nothing is mounted under it: a leftover bind of the cargo
/// registry must never be deleted through.
pub fn remove_unmounted(dir: &Path) -> Result<()> {
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!("{} still has mounts under it ({left:?}); unmount them (umount -R -l) and run again", dir.display());
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_finds_only_paths_below_the_directory() {
        // /proc is mounted on every Linux machine; nothing is mounted under a fresh temp dir.
        assert!(mounts_under(Path::new("/proc")).unwrap().contains(&PathBuf::from("/proc")));
        let dir = std::env::temp_dir().join(format!("debroot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(mounts_under(&dir).unwrap().is_empty());
        remove_unmounted(&dir).unwrap();
        assert!(!dir.exists());
    }
}
