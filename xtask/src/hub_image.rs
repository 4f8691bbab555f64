//! The hub for operators, made and checked by `release --dry-run` (docs/hub_operations.md):
//!
//! - the systemd unit `installer/hub/edge-hub.service`, verified by `systemd-analyze verify`
//!   in a scratch root holding the built binary where the unit expects it (any warning is a
//!   failure, so a misspelt key cannot slip through as "ignoring"), and its sandboxing scored
//!   by `systemd-analyze security` below a fixed threshold;
//! - an OCI image of `edge-hub` made without pulling a base image: a static layout (the
//!   binary, exactly the shared libraries `ldd` names, Debian's CA roots, a passwd entry for
//!   an unprivileged user, the state directory) packed into an OCI image layout by Debian's
//!   `umoci`, and written as an `oci-archive` tarball `podman load` / `skopeo` take;
//! - then that image unpacked again from the tarball's layout and the hub started from the
//!   unpacked root the way its config says (entrypoint, user, environment), chrooted, as
//!   the image's user: it must answer `/health`, and its SQLite file must land in the
//!   image's state directory.
//!
//! No container runtime runs here (the sandbox has no daemon); the chroot is the runtime's
//! view of the same root, user and environment.

use crate::util::{cargo, checked, root};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = "installer/hub/edge-hub.service";
/// Where the unit and the image both put the binary.
const BINARY: &str = "/usr/local/bin/edge-hub";
/// The image's unprivileged user (the same number distroless images use for "nonroot").
const UID: u32 = 65532;
const STATE_DIR: &str = "/var/lib/edge-hub";
/// `systemd-analyze security`'s exposure score (0 safest, 10 none) the unit must stay under.
const EXPOSURE_THRESHOLD: &str = "25";

pub fn check(debug: bool, deadline: Instant) -> Result<()> {
    for (tool, package) in
        [("systemd-analyze", "systemd"), ("umoci", "umoci"), ("ldd", "libc-bin"), ("chroot", "coreutils")]
    {
        if !crate::util::have(tool) {
            bail!("the release dry run needs `{tool}`: apt-get install --no-install-recommends {package}");
        }
    }
    let mut build = cargo();
    build.args(["build", "--quiet", "-p", "edge-hub"]);
    if !debug {
        build.arg("--release");
    }
    checked(&mut build)?;
    let profile = if debug { "debug" } else { "release" };
    let hub = root().join("target").join(profile).join("edge-hub");
    check_unit(&hub)?;
    let out = root().join("target").join(profile).join("hub-image");
    let archive = build_image(&hub, &out)?;
    run_image(&archive, &out, deadline)?;
    Ok(())
}

fn output(cmd: &mut Command) -> Result<std::process::Output> {
    cmd.output().with_context(|| format!("running {}", crate::util::describe(cmd)))
}

/// `systemd-analyze verify` and `security` in a scratch root: the host's unit library (for
/// the targets the unit names), the binary at the unit's path, the unit itself.
fn check_unit(hub: &Path) -> Result<()> {
    let scratch = edge_e2e::scratch_dir("hub-unit")?;
    let dir = scratch.path();
    let library = ["/lib/systemd/system", "/usr/lib/systemd/system"]
        .into_iter()
        .find(|p| Path::new(p).join("sysinit.target").exists())
        .context("systemd's unit library (sysinit.target) is not on this machine: apt-get install systemd")?;
    std::fs::create_dir_all(dir.join("lib/systemd"))?;
    checked(Command::new("cp").arg("-r").arg(library).arg(dir.join("lib/systemd/")))?;
    install(hub, &dir.join(BINARY.trim_start_matches('/')), 0o755)?;
    let unit = dir.join("etc/systemd/system/edge-hub.service");
    install(&root().join(UNIT), &unit, 0o644)?;
    let verify =
        output(Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", dir.display())).arg(&unit))?;
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    ensure!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify {UNIT}:\n{said}");
    let security = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--threshold={EXPOSURE_THRESHOLD}"))
            .arg(format!("--root={}", dir.display()))
            .arg(&unit),
    )?;
    let report = String::from_utf8_lossy(&security.stdout);
    let level = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("no overall level printed");
    ensure!(
        security.status.success(),
        "{UNIT} is less sandboxed than allowed (exposure above {}): {level}\n{report}{}",
        EXPOSURE_THRESHOLD.parse::<f64>().unwrap_or(0.0) / 10.0,
        String::from_utf8_lossy(&security.stderr)
    );
    println!("release: {UNIT} verified; {}", level.trim_start_matches(|c: char| !c.is_alphanumeric()));
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The shared objects `binary` loads, as `ldd` resolves them here, and its interpreter.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listed = output(Command::new("ldd").arg(binary))?;
    ensure!(listed.status.success(), "ldd {}: {}", binary.display(), String::from_utf8_lossy(&listed.stderr));
    let mut libraries = Vec::new();
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let line = line.trim();
        if line.starts_with("linux-vdso") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, "")) | Some((name, " not found")) => {
                bail!("{} needs {name}, which is not installed", binary.display())
            }
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
            _ => bail!("cannot read ldd's line {line:?}"),
        }
    }
    Ok(libraries)
}

/// The image's root, packed by umoci into an OCI layout under `out`; returns the
/// `oci-archive` tarball of that layout.
fn build_image(hub: &Path, out: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{chown, PermissionsExt};
    let version = hub_version(hub)?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let layout = out.join("oci");
    let image = format!("{}:{version}", layout.display());
    checked(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    checked(Command::new("umoci").args(["new", "--image", &image]))?;
    let bundle = out.join("bundle");
    checked(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    install(hub, &rootfs.join(BINARY.trim_start_matches('/')), 0o755)?;
    for library in shared_libraries(hub)? {
        // The path the loader looks under, with the content behind any symlink.
        install(&library, &rootfs.join(library.strip_prefix("/")?), 0o755)?;
    }
    let roots = Path::new("/etc/ssl/certs/ca-certificates.crt");
    ensure!(roots.is_file(), "{} is missing: apt-get install ca-certificates", roots.display());
    install(roots, &rootfs.join("etc/ssl/certs/ca-certificates.crt"), 0o644)?;
    let files = [
        (
            "etc/passwd",
            format!("root:x:0:0:root:/root:/sbin/nologin\nedge-hub:x:{UID}:{UID}:Edge hub:{STATE_DIR}:/sbin/nologin\n"),
        ),
        ("etc/group", format!("root:x:0:\nedge-hub:x:{UID}:\n")),
        ("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n".to_owned()),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
    ];
    for (path, text) in files {
        let path = rootfs.join(path);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, text)?;
    }
    let docs = rootfs.join("usr/share/doc/edge-hub");
    std::fs::create_dir_all(&docs)?;
    std::fs::copy(root().join("docs/hub_operations.md"), docs.join("hub_operations.md"))?;
    let state = rootfs.join(STATE_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&state)?;
    chown(&state, Some(UID), Some(UID))?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750))?;
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    checked(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle))?;
    checked(
        Command::new("umoci")
            .args(["config", "--image", &image])
            .args(["--config.entrypoint", BINARY, "--config.cmd", "serve"])
            .args(["--config.user", &format!("{UID}:{UID}")])
            .args(["--config.env", &format!("EDGE_HUB_DATABASE_URL=sqlite://{STATE_DIR}/hub.db")])
            .args(["--config.env", "EDGE_HUB_LISTEN=0.0.0.0:8787"])
            .args(["--config.env", "EDGE_HUB_LOG=info"])
            .args(["--config.exposedports", "8787/tcp", "--config.volume", STATE_DIR])
            .args(["--config.workingdir", STATE_DIR])
            .args(["--config.label", "org.opencontainers.image.title=edge-hub"])
            .args(["--config.label", &format!("org.opencontainers.image.version={version}")])
            .args(["--author", "Edge-Agent"]),
    )?;
    checked(Command::new("umoci").args(["tag", "--image", &image, "latest"]))?;
    checked(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    std::fs::remove_dir_all(&bundle)?;
    let archive = out.join(format!("edge-hub-{version}.oci.tar"));
    checked(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg("."))?;
    let size = std::fs::metadata(&archive)?.len();
    println!("release: OCI image {} ({} KB), built from no base image", archive.display(), size / 1024);
    Ok(archive)
}

fn hub_version(hub: &Path) -> Result<String> {
    let printed = output(Command::new(hub).arg("--version"))?;
    let text = String::from_utf8_lossy(&printed.stdout);
    text.split_whitespace().nth(1).map(str::to_owned).with_context(|| format!("edge-hub --version printed {text:?}"))
}

/// Unpacks the tarball's image afresh and starts the hub from it as its config says.
fn run_image(archive: &Path, out: &Path, deadline: Instant) -> Result<()> {
    let layout = out.join("check-layout");
    std::fs::create_dir_all(&layout)?;
    checked(Command::new("tar").arg("-C").arg(&layout).arg("-xf").arg(archive))?;
    let bundle = out.join("check-bundle");
    checked(
        Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:latest", layout.display())).arg(&bundle),
    )?;
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)
        .context("umoci's runtime config.json is not JSON")?;
    let process = &config["process"];
    let args: Vec<&str> = process["args"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
    ensure!(args == [BINARY, "serve"], "the image starts {args:?}, not {BINARY} serve");
    let uid = process["user"]["uid"].as_u64();
    ensure!(uid == Some(u64::from(UID)), "the image runs as uid {uid:?}, not the unprivileged {UID}");
    let env: Vec<(String, String)> = process["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let rootfs = bundle.join("rootfs");
    let mut hub = Command::new("chroot")
        .arg(format!("--userspec={UID}:{UID}"))
        .arg(&rootfs)
        .args(&args)
        .env_clear()
        .envs(env)
        // The container's port, published on loopback here.
        .env("EDGE_HUB_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the hub inside the unpacked image")?;
    let healthy = (|| -> Result<bool> {
        let until = (Instant::now() + Duration::from_secs(30)).min(deadline);
        while Instant::now() < until {
            if let Some(status) = hub.try_wait()? {
                bail!("the hub in the image exited at once ({status})");
            }
            if crate::util::loopback_get(port, "/health").is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(false)
    })();
    let _ = hub.kill();
    let finished = hub.wait_with_output()?;
    let log = format!("{}{}", String::from_utf8_lossy(&finished.stdout), String::from_utf8_lossy(&finished.stderr));
    match healthy {
        Ok(true) => {}
        Ok(false) => bail!("the hub in the image never answered /health in 30 s; its log:\n{log}"),
        Err(e) => bail!("{e:#}; its log:\n{log}"),
    }
    let database = rootfs.join(STATE_DIR.trim_start_matches('/')).join("hub.db");
    ensure!(database.is_file(), "the hub in the image kept no database at {STATE_DIR}/hub.db");
    std::fs::remove_dir_all(&bundle)?;
    std::fs::remove_dir_all(&layout)?;
    println!("release: the OCI image unpacked and started as uid {UID}: /health answered, database in {STATE_DIR}");
    Ok(())
}
