//! `cargo xtask test`: installs what is missing, builds everything once, then runs every
//! test stage and prints one summary. A failing stage does not hide the stages after it.

use crate::deps::{ensure_apt, ensure_npm, APT_BUILD, APT_TEST};
use crate::util::{cargo, cargo_tool, checked, root};
use anyhow::{bail, Result};
use std::process::Command;
use std::time::Instant;

/// tauri-driver from crates.io, pinned: the WebDriver server in front of WebKitWebDriver
/// that the tray's end-to-end test (tests/e2e/tests/tray_webdriver.rs) drives the real app
/// through. The test names the same version in its install hint.
pub const TAURI_DRIVER_VERSION: &str = "2.0.5";

pub fn run(args: &[&str]) -> Result<()> {
    let started = Instant::now();
    if !args.contains(&"--skip-install") {
        ensure_apt(&[APT_BUILD, APT_TEST].concat())?;
    }
    ensure_npm()?;
    let ui = root().join("ui");
    checked(Command::new("npm").args(["run", "build"]).current_dir(&ui))?;
    // One build of every target up front, so test stages do not race each other to compile.
    checked(cargo().args(["build", "--workspace", "--all-targets"]))?;

    // Kept in target/tools across local runs; a fresh CI clone builds it once (about 50 s of
    // CPU). A failed build fails only the test that needs it, which says what to install.
    let tauri_driver = cargo_tool(&root().join("target/tools"), "tauri-driver", TAURI_DRIVER_VERSION, &["--locked"])
        .unwrap_or_else(|e| {
            eprintln!(
                "tauri-driver {TAURI_DRIVER_VERSION} could not be built ({e:#}); the tray's WebDriver test will fail"
            );
            root().join("target/tools/bin/tauri-driver")
        });

    let postgres_url = ensure_postgres()?;
    let session = root().join("tests/support/desktop-session.sh");
    let target = root().join("target/debug");
    let mut stages: Vec<(&str, Result<()>)> = Vec::new();

    // Rust tests run inside a desktop session so the keychain tests reach a real Secret
    // Service; the end-to-end tests pick the kernel keyring explicitly.
    stages.push((
        "rust: unit, integration, keychain and end-to-end tests",
        checked(
            Command::new(&session)
                .args(["cargo", "test", "--workspace", "--no-fail-fast"])
                .env("EDGE_TEST_SECRET_SERVICE", "1")
                .env("EDGE_TEST_KERNEL_KEYRING", "1")
                .env("EDGE_TEST_POSTGRES_URL", &postgres_url)
                .env("EDGE_TAURI_DRIVER", &tauri_driver)
                .current_dir(root()),
        ),
    ));
    stages.push(("ui: tray window in headless Chromium", checked(Command::new("npm").arg("test").current_dir(&ui))));
    let console = root().join("tests/operator-ui");
    stages.push((
        "hub operator page in headless Chromium",
        checked(Command::new("npm").arg("test").current_dir(&console).env("HUB_BIN", target.join("edge-hub"))),
    ));
    let out_dir = root().join("target/tray-smoke");
    stages.push((
        "tray: real app under Xvfb with a tray host and a notification daemon",
        checked(
            Command::new("bash")
                .arg(root().join("tests/tray/smoke.sh"))
                .env("HUB_BIN", target.join("edge-hub"))
                .env("AGENT_BIN", target.join("edge-agent"))
                .env("TRAY_BIN", target.join("edge-agent-tray"))
                .env("OUT_DIR", &out_dir),
        ),
    ));

    // The tray's packages as a person installs them (the debug build made above: the same
    // bundler and files, without a second, release, build of the tray).
    stages.push((
        "installers: deb and rpm from the Tauri bundler, installed, started and removed in a minimal Debian root",
        crate::release::run(&["--dry-run", "--debug"]),
    ));

    // Last: it proves the README's first command on a minimal Debian root, so a package
    // that only this machine happens to have cannot hide behind a green run.
    stages.push(("fresh machine: the README's first command in a minimal Debian root", crate::fresh_check::run(&[])));

    println!("\n== xtask test summary ({} s)", started.elapsed().as_secs());
    let failed: Vec<&str> = stages.iter().filter(|(_, r)| r.is_err()).map(|(name, _)| *name).collect();
    for (name, result) in &stages {
        match result {
            Ok(()) => println!("  ok      {name}"),
            Err(e) => println!("  FAILED  {name}: {e:#}"),
        }
    }
    println!("stages: {} passed, {} failed", stages.len() - failed.len(), failed.len());
    if !failed.is_empty() {
        bail!("{} test stage(s) failed", failed.len());
    }
    Ok(())
}

/// The URL of a PostgreSQL for the conformance suite: the one on 127.0.0.1:5432 when it
/// answers, else a throwaway cluster that tests/support/postgres.sh installs and starts.
pub(crate) fn ensure_postgres() -> Result<String> {
    if let Ok(url) = std::env::var("EDGE_TEST_POSTGRES_URL") {
        return Ok(url);
    }
    let out = Command::new("bash")
        .arg(root().join("tests/support/postgres.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("tests/support/postgres.sh could not provide a PostgreSQL (see its messages above)");
    }
    let url = String::from_utf8(out.stdout)?.trim().to_owned();
    eprintln!("PostgreSQL for the conformance suite: {url}");
    Ok(url)
}
