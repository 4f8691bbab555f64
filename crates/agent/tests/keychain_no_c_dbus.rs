//! The headless agent and the hub build without C library headers: the keychain reaches
//! Secret Service through `keyring`'s zbus client (pure Rust D-Bus), not `libdbus-sys`,
//! which needs libdbus-1-dev and pkg-config. Only the tray app (tao) may pull it in.
//! Checked on the dependency graph Cargo.lock describes, with `cargo tree`.

use std::process::Command;

/// `cargo tree -e normal -p edge-agent -p edge-hub -i <krate>`: who pulls `krate` in.
fn dependents(krate: &str) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "tree",
            "--locked",
            "-e",
            "normal",
            "-p",
            "edge-agent",
            "-p",
            "edge-hub",
            "--prefix",
            "none",
            "-i",
            krate,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| format!("running {cargo} tree: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else if stderr.contains("did not match any packages") {
        // Not in the lock file at all: nothing depends on it.
        Ok(String::new())
    } else {
        Err(format!("cargo tree failed: {stderr}"))
    }
}

#[test]
fn agent_and_hub_do_not_depend_on_libdbus_sys() {
    let found = dependents("libdbus-sys").unwrap();
    assert!(
        found.trim().is_empty(),
        "edge-agent or edge-hub depends on libdbus-sys (C headers) again, through:\n{found}\n\
         keep keyring on its async-secret-service feature (zbus), not sync-secret-service"
    );
}

/// The same query finds what is there, so the check above can fail.
#[cfg(target_os = "linux")]
#[test]
fn the_query_finds_the_pure_rust_dbus_client() {
    let found = dependents("zbus@4").unwrap();
    assert!(found.contains("keyring") && found.contains("edge-agent"), "{found}");
}
