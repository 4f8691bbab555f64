//! The tray app's own update, installed the way the person installed the app: the channel's
//! `linux-deb` or `linux-rpm` target, verified like the headless binary (the channel's TUF
//! view, then the signed length and SHA-256), then the package's own name and version must be
//! the installed package's name and the signed version, and only then handed to the system's
//! package manager: directly when the app runs as root, otherwise through `pkexec`, which asks
//! for the administrator's password in the desktop's own dialog. With neither, the error
//! names the command to run.
//!
//! It runs only when the person asks (the window's "Install now"), never by itself: a
//! package install asks for a password, and that dialog must answer a click. After it, the
//! package manager has put the new version under the running copy, which the updater's look
//! at its own file turns into "Update ready".
//!
//! This module must never hand a package to the package manager before every check above
//! passed, and never while a job runs.

use super::{Decision, UpdateError, UpdaterContext, UPDATE_VERSION_MISMATCH};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the package manager may take, password dialog included: the person may be
/// away from the keyboard when it shows.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A package format the tray can install itself from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageKind {
    Deb,
    Rpm,
}

/// The package this program was installed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    pub kind: PackageKind,
    /// The package's name in the package database (`edge-agent`).
    pub name: String,
}

impl PackageKind {
    pub const ALL: [PackageKind; 2] = [PackageKind::Deb, PackageKind::Rpm];

    /// The release platform its targets are published under (`edge_bundle::release::PLATFORMS`).
    pub fn platform(self) -> &'static str {
        match self {
            PackageKind::Deb => "linux-deb",
            PackageKind::Rpm => "linux-rpm",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            PackageKind::Deb => "deb",
            PackageKind::Rpm => "rpm",
        }
    }

    /// The command asking the package database for a package file's name and version.
    fn inspect_command(self, file: &Path) -> (&'static str, Vec<OsString>) {
        match self {
            PackageKind::Deb => {
                ("dpkg-deb", vec!["--show".into(), "--showformat=${Package} ${Version}".into(), file.into()])
            }
            PackageKind::Rpm => ("rpm", vec!["-qp".into(), "--queryformat=%{NAME} %{VERSION}".into(), file.into()]),
        }
    }

    /// The program and arguments that install `file`. As root the package manager runs
    /// directly; otherwise `pkexec` runs it after the person typed the administrator's
    /// password. `have` says whether a program is on this machine.
    pub fn install_command(
        self,
        file: &Path,
        is_root: bool,
        have: impl Fn(&str) -> bool,
    ) -> Result<Vec<OsString>, UpdateError> {
        let manager: Vec<OsString> = match self {
            // apt resolves any new dependency the package declares; `dpkg -i` would not.
            PackageKind::Deb => vec!["apt-get".into(), "install".into(), "-y".into(), file.into()],
            PackageKind::Rpm if have("dnf") => vec!["dnf".into(), "install".into(), "-y".into(), file.into()],
            PackageKind::Rpm if have("zypper") => {
                vec!["zypper".into(), "--non-interactive".into(), "install".into(), file.into()]
            }
            PackageKind::Rpm => vec!["rpm".into(), "-U".into(), file.into()],
        };
        if is_root {
            return Ok(manager);
        }
        if have("pkexec") {
            return Ok(std::iter::once(OsString::from("pkexec")).chain(manager).collect());
        }
        let shown: Vec<String> = manager.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        Err(UpdateError::Io(format!(
            "this computer has no pkexec to ask for the administrator's password; install the update with \
             your package manager: sudo {}",
            shown.join(" ")
        )))
    }
}

/// The release platforms a program looks at, in order: its package's (when it came from
/// one), then the headless binary's, which tells the same version. The periodic check and
/// "Install now" use the same list, so both leave the same offer in the updater's state.
pub fn release_platforms(package: Option<&InstalledPackage>) -> Vec<&'static str> {
    package.map(|p| p.kind.platform()).into_iter().chain([super::platform()]).collect()
}

/// Which package (if any) installed the program file `exe`: the package database that
/// owns it, asked with `dpkg-query -S` or `rpm -qf`. A copy nobody's package database owns
/// (a developer's build, the headless binary) is not one the tray may update this way.
pub fn installed_package(exe: &Path) -> Option<InstalledPackage> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let ask = |program: &str, args: &[&std::ffi::OsStr]| -> Option<String> {
        let out = std::process::Command::new(program).args(args).stderr(std::process::Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // `dpkg-query -S /usr/bin/x` prints `edge-agent: /usr/bin/x`.
    if let Some(owner) = ask("dpkg-query", &["-S".as_ref(), exe.as_os_str()]) {
        let name = owner.split(':').next().unwrap_or_default().trim();
        if !name.is_empty() && !name.contains(',') {
            return Some(InstalledPackage { kind: PackageKind::Deb, name: name.to_owned() });
        }
    }
    if let Some(name) = ask("rpm", &["-qf".as_ref(), "--queryformat=%{NAME}".as_ref(), exe.as_os_str()]) {
        if !name.is_empty() && !name.contains(char::is_whitespace) {
            return Some(InstalledPackage { kind: PackageKind::Rpm, name });
        }
    }
    None
}

/// A package file's own name and version, as its package manager reads them.
pub fn name_and_version(kind: PackageKind, file: &Path) -> Result<(String, String), UpdateError> {
    let (program, args) = kind.inspect_command(file);
    let out = std::process::Command::new(program)
        .args(&args)
        .output()
        .map_err(|e| UpdateError::Io(format!("cannot run {program} to read the downloaded package: {e}")))?;
    let printed = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), printed.trim().split_once(' ')) {
        (true, Some((name, version))) if !name.is_empty() && !version.is_empty() => {
            Ok((name.to_owned(), version.to_owned()))
        }
        _ => Err(UpdateError::Refused {
            code: super::UPDATE_BROKEN,
            message: format!(
                "the downloaded file is not a readable .{} package: {}",
                kind.extension(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

/// Downloads the offered package and checks it: signed length and SHA-256, then its own
/// name and version. Returns the verified file.
pub async fn download(
    ctx: &UpdaterContext,
    found: &edge_bundle::verify::FoundRelease,
    package: &InstalledPackage,
) -> Result<PathBuf, UpdateError> {
    let file = super::fetch_release(ctx, found, package.kind.extension()).await?;
    let checked = check_package(package, &file, &found.release.version.to_string());
    if checked.is_err() {
        let _ = std::fs::remove_file(&file);
    }
    checked.map(|()| file)
}

/// The package must be the installed package (its name) at the signed version: bytes of
/// another package, or an older build re-signed as newer, are never installed.
pub fn check_package(package: &InstalledPackage, file: &Path, signed_version: &str) -> Result<(), UpdateError> {
    let (name, version) = name_and_version(package.kind, file)?;
    if name != package.name {
        return Err(UpdateError::Refused {
            code: UPDATE_VERSION_MISMATCH,
            message: format!("the release is the package {name:?}, but this app was installed as {:?}", package.name),
        });
    }
    if version != signed_version {
        return Err(UpdateError::Refused {
            code: UPDATE_VERSION_MISMATCH,
            message: format!(
                "the release signed as version {signed_version} is package version {version}: an older build \
                 presented as new is never installed"
            ),
        });
    }
    Ok(())
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// The package manager installed this version; it runs from the next start.
    Version(String),
    /// Nothing newer is offered to this machine for this package.
    NothingNewer,
}

/// The person's "Install now": check the channel for this package's target, download,
/// verify, and hand it to the package manager. `busy` is asked first and again right
/// before the package manager runs.
pub async fn install(
    ctx: &UpdaterContext,
    package: &InstalledPackage,
    busy: impl Fn() -> bool,
) -> Result<Installed, UpdateError> {
    if busy() {
        return Err(UpdateError::Busy);
    }
    let (report, found) = super::check_platforms(ctx, &release_platforms(Some(package))).await?;
    let (Decision::Available { version }, Some(found)) = (report.decision, found) else {
        return Ok(Installed::NothingNewer);
    };
    // Newer only as the headless binary: nothing this copy can install.
    if found.meta.platform != package.kind.platform() {
        return Ok(Installed::NothingNewer);
    }
    let file = download(ctx, &found, package).await?;
    if busy() {
        let _ = std::fs::remove_file(&file);
        return Err(UpdateError::Busy);
    }
    let command = package.kind.install_command(&file, is_root(), |program| which::which(program).is_ok());
    let outcome = match command {
        Ok(command) => run_package_manager(&command).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&file);
    outcome?;
    tracing::info!(version, package = package.name, "update installed by the package manager");
    Ok(Installed::Version(version))
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid(2) reads the process's effective user id; no memory is involved.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

async fn run_package_manager(command: &[OsString]) -> Result<(), UpdateError> {
    let (program, args) = command.split_first().ok_or_else(|| UpdateError::Io("empty install command".into()))?;
    let shown = command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    tracing::info!(command = shown, "handing the update to the package manager");
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| UpdateError::Io(format!("cannot start `{shown}`: {e}")))?;
    let output = tokio::time::timeout(INSTALL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            UpdateError::Io(format!("`{shown}` did not finish within 15 minutes; nothing is known to be installed"))
        })?
        .map_err(|e| UpdateError::Io(format!("`{shown}`: {e}")))?;
    match output.status.code() {
        Some(0) => Ok(()),
        // pkexec: the person closed the dialog (126) or was not allowed (127).
        Some(126) if program == "pkexec" => {
            Err(UpdateError::Io("the password dialog was closed; nothing was installed".into()))
        }
        Some(127) if program == "pkexec" => Err(UpdateError::Io(
            "this account may not install software (pkexec refused); ask the computer's administrator".into(),
        )),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            Err(UpdateError::Io(format!(
                "the package manager did not install the update ({}): {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &[OsString]) -> Vec<String> {
        command.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn root_runs_the_package_manager_and_others_go_through_pkexec() {
        let file = Path::new("/home/ann/.local/share/edge-agent/updates/downloads/x.deb");
        let everything = |_: &str| true;
        assert_eq!(
            args(&PackageKind::Deb.install_command(file, true, everything).unwrap()),
            ["apt-get", "install", "-y", file.to_str().unwrap()]
        );
        assert_eq!(
            args(&PackageKind::Deb.install_command(file, false, everything).unwrap()),
            ["pkexec", "apt-get", "install", "-y", file.to_str().unwrap()]
        );
        let rpm = Path::new("/tmp/x.rpm");
        assert_eq!(args(&PackageKind::Rpm.install_command(rpm, true, everything).unwrap())[..2], ["dnf", "install"]);
        let no_dnf = |p: &str| p != "dnf";
        assert_eq!(
            args(&PackageKind::Rpm.install_command(rpm, false, no_dnf).unwrap()),
            ["pkexec", "zypper", "--non-interactive", "install", "/tmp/x.rpm"]
        );
        let only_rpm = |p: &str| p == "rpm";
        assert_eq!(args(&PackageKind::Rpm.install_command(rpm, true, only_rpm).unwrap()), ["rpm", "-U", "/tmp/x.rpm"]);
    }

    /// A real deb, made by `dpkg-deb` (Debian's `dpkg`, on every machine these tests run on).
    fn deb(dir: &Path, name: &str, version: &str) -> PathBuf {
        let tree = dir.join(format!("{name}-{version}"));
        std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/edge-agent-tray"), b"#!/bin/sh\n").unwrap();
        std::fs::write(
            tree.join("DEBIAN/control"),
            format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"),
        )
        .unwrap();
        let out = dir.join(format!("{name}_{version}.deb"));
        let made = std::process::Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&tree)
            .arg(&out)
            .output()
            .unwrap();
        assert!(made.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&made.stderr));
        out
    }

    /// A real rpm, made by `rpmbuild` (Debian's `rpm`).
    fn rpm(dir: &Path, name: &str, version: &str) -> PathBuf {
        let top = dir.join("rpmbuild");
        let spec = dir.join(format!("{name}.spec"));
        std::fs::write(
            &spec,
            format!(
                "Name: {name}\nVersion: {version}\nRelease: 1\nSummary: t\nLicense: MIT\nBuildArch: noarch\n\
                 %description\nt\n%install\nmkdir -p %{{buildroot}}/usr/bin\n\
                 printf '#!/bin/sh\\n' > %{{buildroot}}/usr/bin/edge-agent-tray\n\
                 %files\n/usr/bin/edge-agent-tray\n"
            ),
        )
        .unwrap();
        let made = std::process::Command::new("rpmbuild")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .args(["--quiet", "-bb"])
            .arg(&spec)
            .output()
            .unwrap();
        assert!(made.status.success(), "rpmbuild: {}", String::from_utf8_lossy(&made.stderr));
        top.join(format!("RPMS/noarch/{name}-{version}-1.noarch.rpm"))
    }

    fn refused_code(result: Result<(), UpdateError>) -> &'static str {
        match result {
            Err(UpdateError::Refused { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_package_is_taken_only_as_the_installed_package_at_the_signed_version() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, make) in [(PackageKind::Deb, deb as fn(&Path, &str, &str) -> PathBuf), (PackageKind::Rpm, rpm)] {
            let ours = InstalledPackage { kind, name: "edge-agent".into() };
            let newer = make(dir.path(), "edge-agent", "1.5.0");
            assert_eq!(name_and_version(kind, &newer).unwrap(), ("edge-agent".into(), "1.5.0".into()));
            check_package(&ours, &newer, "1.5.0").unwrap();
            // Old bytes signed as a newer version.
            let old = make(dir.path(), "edge-agent", "1.3.0");
            assert_eq!(refused_code(check_package(&ours, &old, "1.5.0")), UPDATE_VERSION_MISMATCH, "{kind:?}");
            // Another package altogether, at the right version.
            let other = make(dir.path(), "something-else", "1.5.0");
            assert_eq!(refused_code(check_package(&ours, &other, "1.5.0")), UPDATE_VERSION_MISMATCH, "{kind:?}");
            // Not a package: a truncated download that still had to pass the hash, say.
            let junk = dir.path().join(format!("junk.{}", kind.extension()));
            std::fs::write(&junk, b"not a package").unwrap();
            assert_eq!(refused_code(check_package(&ours, &junk, "1.5.0")), super::super::UPDATE_BROKEN, "{kind:?}");
        }
    }

    #[test]
    fn without_root_or_pkexec_the_error_names_the_command() {
        let err = PackageKind::Deb.install_command(Path::new("/tmp/x.deb"), false, |_| false).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("sudo apt-get install -y /tmp/x.deb"), "{message}");
        assert!(message.contains("no pkexec"), "{message}");
    }
}
