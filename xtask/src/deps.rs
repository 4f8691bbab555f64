//! Installs what the tests need on a Debian machine, and only what is missing. Not root or
//! not Debian: it prints the exact command to run and stops, never half-installs.

use crate::util::{checked, have, is_root, root};
use anyhow::{bail, Result};
use std::process::Command;

/// Build dependencies of the tray app (WebKitGTK, tray, notifications, D-Bus headers for tao).
/// The hub and the headless agent need no library headers from this list (their D-Bus
/// client, for Secret Service, is zbus).
pub const APT_BUILD: &[&str] = &[
    "build-essential",
    "pkg-config",
    "file",
    "libwebkit2gtk-4.1-dev",
    "libayatana-appindicator3-dev",
    "librsvg2-dev",
    "libssl-dev",
    "libxdo-dev",
    "libdbus-1-dev",
];

/// What the tests run against: a virtual display, a session bus with a real keyring, a
/// notification daemon, an XEmbed tray host and Debian's Chromium. Not `dbus-x11`: it
/// autolaunches stray buses that outlive the tests.
pub const APT_TEST: &[&str] = &[
    "xvfb",
    "xauth",
    "dbus",
    "dbus-bin",
    "keyutils",
    "gnome-keyring",
    "dunst",
    "trayer",
    "chromium",
    // The browser tests' self-signed TLS site (`openssl s_server`).
    "openssl",
    "fonts-dejavu-core",
    "x11-utils",
    "imagemagick",
    // The tray's WebDriver test: WebKitWebDriver, which tauri-driver hands the session to.
    "webkit2gtk-driver",
    // The tray smoke test types into the real window and reads it back through the clipboard.
    "xdotool",
    "xclip",
    "nodejs",
    "npm",
    // `cargo xtask fresh-check` builds a minimal Debian root with it.
    "debootstrap",
    // The tunnel tests use a standard proxy client: CONNECT, forward proxy and SOCKS5.
    "curl",
    // `cargo xtask release --dry-run` reads the rpm's file list and requirements.
    "rpm",
    // The hub's systemd unit is checked with systemd-analyze, its OCI image packed with umoci.
    "systemd",
    "umoci",
];

/// What `cargo xtask demo` itself needs (checked, installed when root): the C toolchain its
/// builds of the hub and the agent use (the `cc` build scripts of ring, SQLite and
/// mimalloc). A fresh machine has it already, as the README's prerequisites name it: cargo
/// cannot even link xtask without `cc`; a test holds the two lists in step. Chromium is optional: without it the demo skips
/// only the browser flow and prints [`CHROMIUM_INSTALL`].
pub const APT_DEMO: &[&str] = &["gcc", "libc6-dev"];

/// The command that adds the browser the demo's browser flow and the tests use.
pub const CHROMIUM_INSTALL: &str = "apt-get install --no-install-recommends chromium";

/// The `apt-get` line that installs `packages`; every install this project does or prints
/// goes through it, so none pulls Debian's recommended packages (`xdg-desktop-portal` and
/// its FUSE document store came that way and broke the test session's clean-up).
pub fn apt_install_command(packages: &[&str]) -> String {
    format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    if !have("dpkg-query") {
        bail!(
            "this is not a Debian-family machine; install the equivalents of these Debian packages, then run again:\n  {}",
            packages.join(" ")
        );
    }
    // Node may come from elsewhere (nvm, NodeSource); do not fight it with Debian's npm.
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !(matches!(*p, "nodejs" | "npm") && have("node") && have("npm")))
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = apt_install_command(&missing);
    if !is_root() {
        bail!("missing Debian packages: {}\nrun as root:\n  {command}", missing.join(" "));
    }
    eprintln!("installing missing Debian packages: {}", missing.join(" "));
    checked(Command::new("apt-get").args(["update", "-qq"]))?;
    checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The npm packages the tests use: the tray window and the operator page tests.
pub const NPM_PACKAGES: &[&str] = &["ui", "tests/operator-ui"];

/// `npm ci` in each npm package whose node_modules is missing or older than its lock file.
pub fn ensure_npm() -> Result<()> {
    for package in NPM_PACKAGES {
        let dir = root().join(package);
        let lock = dir.join("package-lock.json");
        let marker = dir.join("node_modules/.package-lock.json");
        let stale = match (
            std::fs::metadata(&lock).and_then(|m| m.modified()),
            std::fs::metadata(&marker).and_then(|m| m.modified()),
        ) {
            (Ok(lock), Ok(installed)) => lock > installed,
            _ => true,
        };
        if stale {
            checked(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir))?;
        }
    }
    Ok(())
}
