//! The hub's idle-session row inside a QEMU guest, for machines that will not give one
//! process the descriptors 50,000 sessions need (this container: hard limit 20,000, no
//! CAP_SYS_RESOURCE to raise it). A guest has its own kernel, where the limit is ours to
//! set. The guest is Debian's cloud kernel and an initramfs holding busybox, the release
//! `edge-hub` and `edge-loadgen` with the libraries they link, and `xtask/guest/idle-init.sh`
//! as `/init`, which runs the same steps as the xtask's own idle run and prints one line.
//!
//! Everything comes from Debian's archive: QEMU, busybox and the kernel package, which is
//! downloaded with `apt-get download` and unpacked (not installed) under `target/bench-vm`.

use crate::bench_hub::{hub_cli, write_tokens};
use crate::deps::ensure_apt;
use crate::util::{checked, root};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio"];

/// Debian's kernel for virtual machines: the serial console, initramfs and loopback
/// networking the guest uses are built in, so no modules have to be loaded.
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// Guest RAM: the hub (≈ 0.5 GiB at 50,000 sessions), the load generator's 50,000 client
/// sessions, both ends' socket buffers and the in-memory database and archive.
const GUEST_MEMORY_MIB: u32 = 8192;

/// Software emulation by default: on this machine kind `/dev/kvm` opens, but a KVM guest
/// stops right after the boot loader (a VM nested in a Firecracker VM). The idle row measures
/// memory, which emulation does not change; it only makes enrolling and connecting slower.
/// `EDGE_BENCH_VM_ACCEL=kvm` uses KVM where it works.
const DEFAULT_ACCEL: &str = "tcg,thread=multi";

/// The whole guest run, boot to power-off (50,000 enrollments take about ten minutes under
/// emulation).
const GUEST_DEADLINE_SECS: u32 = 45 * 60;

const RESULT_MARK: &str = "EDGE_IDLE_RESULT ";
const FAILURE_MARK: &str = "EDGE_IDLE_FAILED ";

pub struct GuestIdle {
    pub connected: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// The guest kernel's package, for the row.
    pub kernel: String,
}

/// Boots a guest that holds `agents` idle sessions against `hub` and reports the hub's RSS.
pub fn idle_in_guest(hub: &Path, loadgen: &Path, agents: usize) -> Result<GuestIdle> {
    ensure_apt(PACKAGES)?;
    let work = root().join("target/bench-vm");
    std::fs::create_dir_all(&work)?;
    let (kernel, kernel_package) = guest_kernel(&work)?;
    let initrd = build_initrd(&work, hub, loadgen, agents)?;
    let accel = std::env::var("EDGE_BENCH_VM_ACCEL").unwrap_or_else(|_| DEFAULT_ACCEL.to_owned());
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut qemu = Command::new("timeout");
    qemu.arg(GUEST_DEADLINE_SECS.to_string())
        .arg("qemu-system-x86_64")
        .args(["-accel", &accel, "-smp", &cpus.to_string(), "-m", &GUEST_MEMORY_MIB.to_string()])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(["-nographic", "-no-reboot", "-net", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("$ {}", crate::util::describe(&qemu));
    let mut child = qemu.spawn().context("qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("piped")?;
    let mut outcome = None;
    let mut tail = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(at) = line.find(RESULT_MARK) {
            outcome = Some(Ok(line[at + RESULT_MARK.len()..].trim().to_owned()));
        } else if let Some(at) = line.find(FAILURE_MARK) {
            outcome = Some(Err(line[at + FAILURE_MARK.len()..].trim().to_owned()));
        }
        eprintln!("guest: {line}");
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    let text = match outcome {
        Some(Ok(text)) => text,
        Some(Err(reason)) => bail!("the guest's idle run failed: {reason}"),
        None => bail!("the guest ended ({status}) without a result; its last lines:\n{}", tail.join("\n")),
    };
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("guest result {text:?}"))?;
    let field = |name: &str| value[name].as_u64().with_context(|| format!("guest result without {name}: {text}"));
    Ok(GuestIdle {
        connected: field("connected")?,
        rss_kib: field("rss_kib")?,
        peak_rss_kib: field("peak_rss_kib")?,
        kernel: kernel_package,
    })
}

/// The kernel image, unpacked once from the package [`KERNEL_PACKAGE`] currently names.
fn guest_kernel(work: &Path) -> Result<(PathBuf, String)> {
    let depends = Command::new("apt-cache").args(["depends", "--important", KERNEL_PACKAGE]).output()?;
    let text = String::from_utf8_lossy(&depends.stdout);
    let package = text
        .split_whitespace()
        .find(|word| word.starts_with("linux-image-") && *word != KERNEL_PACKAGE)
        .with_context(|| format!("apt-cache does not know {KERNEL_PACKAGE}; run apt-get update"))?
        .to_owned();
    let unpacked = work.join(&package);
    let image = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir.join("boot"))
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
    };
    if let Some(found) = image(&unpacked) {
        return Ok((found, package));
    }
    // As root into a directory the `_apt` user cannot write: say so, instead of apt warning.
    checked(Command::new("apt-get").args(["-o", "APT::Sandbox::User=root", "download", &package]).current_dir(work))?;
    let deb = std::fs::read_dir(work)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with(&format!("{package}_")) && name.ends_with(".deb")
        })
        .with_context(|| format!("apt-get download {package} left no .deb in {}", work.display()))?;
    checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let found = image(&unpacked).with_context(|| format!("{package} holds no boot/vmlinuz-*"))?;
    Ok((found, package))
}

/// An initramfs (cpio, newc) with busybox, `hub` and `loadgen`, the libraries they link,
/// `/init`, and in `/data` a hub database with an API key and `agents` enrollment tokens,
/// made here by `hub`.
fn build_initrd(work: &Path, hub: &Path, loadgen: &Path, agents: usize) -> Result<PathBuf> {
    let staging = work.join("initrd-root");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    for dir in ["bin", "proc", "sys", "dev", "tmp", "data"] {
        std::fs::create_dir_all(staging.join(dir))?;
    }
    prepare_hub_data(hub, &staging.join("data"), agents)?;
    let busybox = Path::new("/bin/busybox");
    if !linked_libraries(busybox)?.is_empty() {
        bail!("/bin/busybox is not the static build; install busybox-static");
    }
    std::fs::copy(busybox, staging.join("bin/busybox"))?;
    for binary in [hub, loadgen] {
        let name = binary.file_name().context("binary without a name")?;
        std::fs::copy(binary, staging.join("bin").join(name))
            .with_context(|| format!("copying {} into the guest", binary.display()))?;
        for library in linked_libraries(binary)? {
            let inside = staging.join(library.strip_prefix("/")?);
            std::fs::create_dir_all(inside.parent().context("library path")?)?;
            std::fs::copy(&library, &inside).with_context(|| format!("copying {}", library.display()))?;
        }
    }
    let init = staging.join("init");
    std::fs::write(&init, include_str!("../guest/idle-init.sh"))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let archive = work.join("initrd.cpio");
    let file = std::fs::File::create(&archive)?;
    checked(
        Command::new("sh")
            .args(["-c", "find . | cpio --quiet -o -H newc"])
            .current_dir(&staging)
            .stdout(Stdio::from(file)),
    )?;
    Ok(archive)
}

/// `hub.db` with an operator key (`api-key`) and `agents` tokens (`tokens.txt`, one per line).
fn prepare_hub_data(hub: &Path, data: &Path, agents: usize) -> Result<()> {
    let database = format!("sqlite://{}", data.join("hub.db").display());
    let key = hub_cli(hub, &database, &["api-key", "create", "--name", "idle"])?;
    let key = String::from_utf8_lossy(&key).lines().last().unwrap_or_default().trim().to_owned();
    std::fs::write(data.join("api-key"), key)?;
    write_tokens(hub, &database, data, agents)?;
    Ok(())
}

/// The shared libraries `binary` loads, as `ldd` resolves them (none for a static binary).
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
