//! `cargo xtask fresh-check`: proves that the README's first command works on a fresh Debian
//! machine holding only what the README names as prerequisites. It builds a minimal root of
//! this machine's Debian release with `debootstrap`, installs into it exactly the README's
//! `apt-get install --no-install-recommends …` line, mounts this machine's Rust toolchain
//! into it, clones the current commit inside and runs the README's first command there.
//!
//! Owns `target/fresh-check/`: the debootstrap base (downloaded once, then reused), a per-run
//! overlay on it, and two caches that are not installed state: downloaded `.deb` files and
//! the inside build's compiled crates. It must never change the host: everything it mounts
//! it unmounts, even on failure or timeout, and it never deletes a directory that still
//! has a mount under it (the cargo registry is mounted read-write).

use crate::util::{have, is_root, root};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT_VAR: &str = "EDGE_FRESH_CHECK_TIMEOUT_MINUTES";
const DEFAULT_TIMEOUT_MINUTES: u64 = 25;
const MIRROR_VAR: &str = "EDGE_FRESH_CHECK_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Written into a base root once debootstrap finished; a base without it is thrown away.
const COMPLETE_MARKER: &str = ".edge-fresh-check-complete";
/// Where the clone lives inside the root (also the target cache's mount point's parent).
const INSIDE_REPO: &str = "/root/edge-agent";
/// The PATH a root login on Debian has, plus rustup's `~/.cargo/bin` as its installer adds it.
const INSIDE_PATH: &str = "/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(args: &[&str]) -> Result<()> {
    if let Some(other) = args.first() {
        bail!("unknown fresh-check option {other:?}\nusage: cargo xtask fresh-check   (bounded by {TIMEOUT_VAR}, default {DEFAULT_TIMEOUT_MINUTES})");
    }
    let started = Instant::now();
    let deadline = started + timeout()?;
    check_host()?;
    let readme = std::fs::read_to_string(root().join("README.md")).context("reading README.md")?;
    let prerequisites = readme_prerequisites(&readme)?;
    let first_command = readme_first_command(&readme)?;
    let dir = root().join("target/fresh-check");
    let release = host_release()?;

    let base = ensure_base(&dir, &release, deadline)?;
    let run_dir = dir.join("run");
    unmount_under(&run_dir)?;
    remove_unmounted(&run_dir)?;
    for sub in ["upper", "work", "root"] {
        std::fs::create_dir_all(run_dir.join(sub))?;
    }
    let result = {
        let mut mounts = Mounts::default();
        let result = check_in_root(&mut mounts, &dir, &base, &run_dir, &prerequisites, &first_command, deadline);
        drop(mounts);
        result
    };
    // The per-run overlay is thrown away only once nothing is mounted under it.
    unmount_under(&run_dir)?;
    remove_unmounted(&run_dir)?;
    result?;
    println!("fresh-check passed in {} s: `{first_command}` works on a minimal {release} root with only the README's prerequisites", started.elapsed().as_secs());
    Ok(())
}

fn check_in_root(
    mounts: &mut Mounts,
    dir: &Path,
    base: &Path,
    run_dir: &Path,
    prerequisites: &[String],
    first_command: &str,
    deadline: Instant,
) -> Result<()> {
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
    // What the Debian installer leaves on every machine and debootstrap does not.
    std::fs::write(root_dir.join("etc/hosts"), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")?;
    std::fs::copy("/etc/resolv.conf", root_dir.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf into the root")?;
    mounts.rbind(Path::new("/dev"), &root_dir.join("dev"))?;
    mounts.rbind(Path::new("/sys"), &root_dir.join("sys"))?;
    // A cache of downloaded packages, so a second run does not download them again; what is
    // installed still starts from the bare base every run.
    mounts.bind(&ensure_dir(&dir.join("apt-archives"))?, &root_dir.join("var/cache/apt/archives"), false)?;

    let started = Instant::now();
    // dpkg's progress is hundreds of lines; it is shown only when the install fails.
    let install = format!(
        "{{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}; }} \
         >/tmp/prerequisites.log 2>&1 || {{ cat /tmp/prerequisites.log; exit 1; }}",
        prerequisites.join(" ")
    );
    in_root(&root_dir, "installing the README's prerequisites", &install, deadline)?;
    println!("fresh-check: prerequisites installed in {} s", started.elapsed().as_secs());

    // Rust as rustup installs it: the toolchains read-only, the crate downloads shared so
    // they are not fetched again (a cache, like the .deb files).
    let (rustup_home, cargo_home) = toolchain_homes()?;
    mounts.bind(&rustup_home, &root_dir.join("root/.rustup"), true)?;
    mounts.bind(&cargo_home.join("bin"), &root_dir.join("root/.cargo/bin"), true)?;
    mounts.bind(&ensure_dir(&cargo_home.join("registry"))?, &root_dir.join("root/.cargo/registry"), false)?;
    if cargo_home.join("git").is_dir() {
        mounts.bind(&cargo_home.join("git"), &root_dir.join("root/.cargo/git"), false)?;
    }

    // The current commit, not the working tree: what a clone would get.
    let bundle = root_dir.join("tmp/edge-agent.bundle");
    let out = Command::new("git").args(["bundle", "create"]).arg(&bundle).arg("HEAD").current_dir(root()).output()?;
    if !out.status.success() {
        bail!(
            "fresh-check: `git bundle create` of this checkout's HEAD failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    in_root(
        &root_dir,
        "cloning the repository",
        &format!("git -c advice.detachedHead=false clone -q /tmp/edge-agent.bundle {INSIDE_REPO}"),
        deadline,
    )?;
    // Compiled crates persist between runs under target/fresh-check (a build cache, not
    // installed state): a from-scratch build of the demo takes most of the CI budget.
    let inside_target = root_dir.join(INSIDE_REPO.trim_start_matches('/')).join("target");
    let cache = ensure_dir(&dir.join("target-cache"))?;
    seed_target_cache(&cache, deadline)?;
    mounts.bind(&cache, &inside_target, false)?;

    let started = Instant::now();
    in_root(
        &root_dir,
        &format!("running the README's first command `{first_command}`"),
        &format!("cd {INSIDE_REPO} && {first_command}"),
        deadline,
    )?;
    println!("fresh-check: `{first_command}` passed in {} s", started.elapsed().as_secs());
    Ok(())
}

/// Fills an empty target cache with a copy of this checkout's compiled crates: the same
/// toolchain and the same crate downloads at the same paths, so cargo reuses every crate
/// built with the same features, and a first run on a CI machine does not compile the
/// demo's dependencies a second time. A copy, not links: the inside build must not write
/// into this machine's target directory.
fn seed_target_cache(cache: &Path, deadline: Instant) -> Result<()> {
    let outside = root().join("target/debug");
    if cache.join("debug").exists() || !outside.join("deps").is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(cache.join("debug"))?;
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg("--reflink=auto");
    for sub in [".fingerprint", "build", "deps"] {
        if outside.join(sub).is_dir() {
            cmd.arg(outside.join(sub));
        }
    }
    cmd.arg(cache.join("debug"));
    bounded("seeding the inside build's cache with this checkout's compiled crates", &mut cmd, deadline)
}

/// Runs `script` as root inside the root, in its own PID namespace so nothing it starts
/// outlives it, with the environment of a fresh root login (nothing of this machine's).
fn in_root(root_dir: &Path, step: &str, script: &str, deadline: Instant) -> Result<()> {
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

/// Runs `cmd` with its output streamed under a `fresh|` prefix; kills its process group
/// when the deadline passes. The error names the step.
fn bounded(step: &str, cmd: &mut Command, deadline: Instant) -> Result<()> {
    println!("fresh-check: {step}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child =
        cmd.spawn().with_context(|| format!("fresh-check step {step:?}: could not start {:?}", cmd.get_program()))?;
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
        Some(status) => bail!("fresh-check step {step:?} failed ({status}); its output is above, prefixed `fresh|`"),
        None => bail!(
            "fresh-check step {step:?} did not finish before the deadline ({TIMEOUT_VAR}, default {DEFAULT_TIMEOUT_MINUTES} minutes); it was killed"
        ),
    }
}

fn prefix_lines(stream: Option<Box<dyn Read + Send>>) -> Option<std::thread::JoinHandle<()>> {
    let stream = stream?;
    Some(std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(std::io::Result::ok) {
            println!("fresh| {line}");
        }
    }))
}

fn timeout() -> Result<Duration> {
    let minutes = match std::env::var(TIMEOUT_VAR) {
        Ok(v) => v.trim().parse::<u64>().ok().filter(|m| *m > 0).with_context(|| {
            format!("{TIMEOUT_VAR}={v:?} is not a whole number of minutes above 0; set it to e.g. 25")
        })?,
        Err(_) => DEFAULT_TIMEOUT_MINUTES,
    };
    Ok(Duration::from_secs(minutes * 60))
}

fn check_host() -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("fresh-check builds a Debian root with debootstrap and chroot; it runs on Linux only");
    }
    if !is_root() {
        bail!("fresh-check mounts and chroots, so it runs as root: sudo cargo xtask fresh-check");
    }
    for tool in ["debootstrap", "unshare", "chroot", "mount", "umount", "git"] {
        if !have(tool) {
            bail!("fresh-check needs `{tool}`; on Debian: apt-get install --no-install-recommends debootstrap util-linux git coreutils");
        }
    }
    Ok(())
}

/// This machine's Debian release codename (bookworm…), so the root matches the host.
fn host_release() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME; fresh-check needs a Debian release it can debootstrap")
}

/// The debootstrap base for `release`, made once (about a minute) and reused after.
fn ensure_base(dir: &Path, release: &str, deadline: Instant) -> Result<PathBuf> {
    let base = dir.join(format!("base-{release}"));
    if base.join(COMPLETE_MARKER).is_file() {
        println!("fresh-check: reusing the minimal {release} root in {}", base.display());
        return Ok(base);
    }
    let partial = dir.join(format!("base-{release}.partial"));
    for stale in [&base, &partial] {
        unmount_under(stale)?;
        remove_unmounted(stale)?;
    }
    std::fs::create_dir_all(dir)?;
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

fn toolchain_homes() -> Result<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
    let rustup = std::env::var_os("RUSTUP_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".rustup"));
    let cargo = std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cargo"));
    if !rustup.join("toolchains").is_dir() || !cargo.join("bin/cargo").is_file() {
        bail!(
            "fresh-check mounts this machine's rustup toolchain, but found none in {} and {}; install Rust with rustup",
            rustup.display(),
            cargo.display()
        );
    }
    Ok((rustup, cargo))
}

fn ensure_dir(path: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// The packages of the README's `apt-get install --no-install-recommends …` line: the one
/// list of what a fresh machine needs before the first command.
pub fn readme_prerequisites(readme: &str) -> Result<Vec<String>> {
    const PREFIX: &str = "apt-get install --no-install-recommends ";
    let line = readme
        .lines()
        .find_map(|l| l.split_once(PREFIX).map(|(_, packages)| packages))
        .with_context(|| format!("README.md has no line starting `{PREFIX}…` naming the prerequisites"))?;
    let packages: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    if packages.is_empty()
        || packages
            .iter()
            .any(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:".contains(c)) || p.starts_with('-'))
    {
        bail!("README.md's prerequisites line `{PREFIX}{line}` should list package names only, nothing after them");
    }
    Ok(packages)
}

/// The first line of the README's first code block.
pub fn readme_first_command(readme: &str) -> Result<String> {
    let mut lines = readme.lines().skip_while(|l| !l.trim_start().starts_with("```"));
    lines.next().context("README.md has no code block")?;
    lines
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with("```"))
        .context("README.md's first code block is empty")
}

/// Mount points this run made, unmounted in reverse order when dropped.
#[derive(Default)]
struct Mounts {
    points: Vec<PathBuf>,
}

impl Mounts {
    fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        ensure_dir(target)?;
        run_mount(Command::new("mount").args(args).arg(target))?;
        self.points.push(target.to_path_buf());
        Ok(())
    }

    fn bind(&mut self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
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
    fn rbind(&mut self, source: &Path, target: &Path) -> Result<()> {
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
                eprintln!("fresh-check: warning: {e:#}");
            }
        }
    }
}

fn run_mount(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("fresh-check: {cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
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
fn unmount_under(dir: &Path) -> Result<()> {
    for point in mounts_under(dir)? {
        unmount(&point)?;
    }
    Ok(())
}

/// Removes `dir` only when nothing is mounted under it: a leftover bind of the cargo
/// registry must never be deleted through.
fn remove_unmounted(dir: &Path) -> Result<()> {
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!(
            "fresh-check: {} still has mounts under it ({left:?}); unmount them (umount -R -l) and run again",
            dir.display()
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readme() -> String {
        std::fs::read_to_string(root().join("README.md")).unwrap()
    }

    #[test]
    fn the_readme_starts_with_the_two_commands_and_fresh_check_runs_the_first() {
        let text = readme();
        let block: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("```")).skip(1).take(2).collect();
        assert_eq!(block, ["cargo xtask demo", "cargo xtask test"]);
        assert_eq!(readme_first_command(&text).unwrap(), "cargo xtask demo");
    }

    #[test]
    fn the_readme_names_a_c_toolchain_and_git_among_the_prerequisites() {
        // cargo links through `cc`, and ring, SQLite and mimalloc compile C: a machine with
        // rustup alone cannot build xtask. The clone needs git.
        let packages = readme_prerequisites(&readme()).unwrap();
        for needed in ["git", "gcc", "libc6-dev", "ca-certificates"] {
            assert!(packages.iter().any(|p| p == needed), "README prerequisites {packages:?} lack {needed}");
        }
    }

    #[test]
    fn the_demo_needs_nothing_the_readme_does_not_name() {
        let packages = readme_prerequisites(&readme()).unwrap();
        for needed in crate::deps::APT_DEMO {
            assert!(packages.iter().any(|p| p == needed), "the demo installs {needed}, which the README does not name");
        }
    }

    #[test]
    fn a_readme_without_a_prerequisites_line_is_a_clear_error() {
        let err = readme_prerequisites("# x\n```sh\ncargo xtask demo\n```\n").unwrap_err().to_string();
        assert!(err.contains("apt-get install --no-install-recommends"), "{err}");
        assert!(readme_prerequisites("apt-get install --no-install-recommends -y git\n").is_err());
    }

    #[test]
    fn mounts_under_finds_only_paths_below_the_directory() {
        // /proc is mounted on every Linux machine; nothing is mounted under a fresh temp dir.
        assert!(mounts_under(Path::new("/proc")).unwrap().contains(&PathBuf::from("/proc")));
        let dir = std::env::temp_dir().join(format!("fresh-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(mounts_under(&dir).unwrap().is_empty());
        remove_unmounted(&dir).unwrap();
        assert!(!dir.exists());
    }
}
