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

use crate::debroot::{self, ensure_dir, in_root, Mounts};
use crate::util::{have, is_root, root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT_VAR: &str = "EDGE_FRESH_CHECK_TIMEOUT_MINUTES";
const DEFAULT_TIMEOUT_MINUTES: u64 = 25;
/// Where the clone lives inside the root (also the target cache's mount point's parent).
const INSIDE_REPO: &str = "/root/edge-agent";

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
    let dir = debroot::dir();
    let release = debroot::host_release()?;

    let base = debroot::ensure_base(&release, deadline).context(format!("bounded by {TIMEOUT_VAR}"))?;
    let run_dir = dir.join("run");
    let result = {
        let mut mounts = Mounts::default();
        let result = debroot::overlay(&mut mounts, &base, &run_dir)
            .and_then(|root_dir| check_in_root(&mut mounts, &dir, &root_dir, &prerequisites, &first_command, deadline));
        drop(mounts);
        result
    };
    debroot::discard(&run_dir)?;
    result.with_context(|| {
        format!("fresh-check (bounded by {TIMEOUT_VAR}, default {DEFAULT_TIMEOUT_MINUTES} minutes)")
    })?;
    println!("fresh-check passed in {} s: `{first_command}` works on a minimal {release} root with only the README's prerequisites", started.elapsed().as_secs());
    Ok(())
}

fn check_in_root(
    mounts: &mut Mounts,
    dir: &Path,
    root_dir: &Path,
    prerequisites: &[String],
    first_command: &str,
    deadline: Instant,
) -> Result<()> {
    let root_dir = root_dir.to_path_buf();
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
    seed_target_cache(&cache, deadline);
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

/// Fills an empty target cache with a copy of this checkout's compiled libraries: the same
/// toolchain and the same crate downloads at the same paths, so cargo reuses every crate
/// built with the same features, and a first run on a CI machine does not compile the
/// demo's dependencies a second time. A copy, not links: the inside build must not write
/// into this machine's target directory.
///
/// Only what a build can reuse is copied: fingerprints, build-script outputs, and in `deps`
/// the libraries (`lib*`) and their dep-info (`*.d`). The test and program executables are
/// more than half of `deps` (2.8 of 5.2 GB after a workspace build here) and the inside build
/// relinks what it needs; copying them once filled a CI machine's disk.
///
/// The copy goes to a temporary folder renamed into place when complete, so a copy cut
/// short (a full disk, the deadline) is never taken for a cache. A failed copy is not a
/// failed check: the inside build then compiles everything itself.
fn seed_target_cache(cache: &Path, deadline: Instant) {
    let outside = root().join("target/debug");
    let seeded = cache.join("debug");
    if seeded.exists() || !outside.join("deps").is_dir() {
        return;
    }
    let partial = cache.join("debug.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let copied = copy_reusable(&outside, &partial, deadline).and_then(|()| Ok(std::fs::rename(&partial, &seeded)?));
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&partial);
        println!("fresh-check: not seeding the build cache ({e:#}); the inside build compiles every crate itself");
    }
}

fn copy_reusable(outside: &Path, to: &Path, deadline: Instant) -> Result<()> {
    const STEP: &str = "seeding the inside build's cache with this checkout's compiled libraries";
    std::fs::create_dir_all(to.join("deps"))?;
    let mut whole = Command::new("cp");
    whole.arg("-a").arg("--reflink=auto");
    for sub in [".fingerprint", "build"] {
        if outside.join(sub).is_dir() {
            whole.arg(outside.join(sub));
        }
    }
    whole.arg(to);
    debroot::bounded(STEP, &mut whole, deadline)?;
    // `find … -exec cp … {} +` passes as many names per `cp` as fit on its command line.
    let mut libraries = Command::new("find");
    libraries
        .arg(outside.join("deps"))
        .args(["-maxdepth", "1", "-type", "f", "(", "-name", "lib*", "-o", "-name", "*.d", ")"])
        .args(["-exec", "cp", "-a", "--reflink=auto", "-t"])
        .arg(to.join("deps"))
        .args(["{}", "+"]);
    debroot::bounded(STEP, &mut libraries, deadline)
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
}
