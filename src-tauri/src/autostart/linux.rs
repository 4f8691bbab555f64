//! XDG autostart (freedesktop.org "Desktop Application Autostart"): desktop entries in
//! `$XDG_CONFIG_DIRS/autostart/` (the package installs `/etc/xdg/autostart/edge-agent.desktop`)
//! and `$XDG_CONFIG_HOME/autostart/`, which GNOME, KDE, Xfce and others start at login. A
//! person's entry of the same name overrides the system's: `Hidden=true` there turns the
//! package's entry off for that person only.

use super::AutostartError;
use std::path::{Path, PathBuf};

/// The package's entry name: the person's entry must carry the same one to override it.
const ENTRY_NAME: &str = "edge-agent.desktop";

/// Where the person's entry goes and where system entries are looked for.
#[derive(Debug, Clone)]
pub struct Places {
    pub user: PathBuf,
    pub system: Vec<PathBuf>,
}

impl Places {
    /// `$XDG_CONFIG_HOME/autostart` (else `~/.config/autostart`) and every
    /// `$XDG_CONFIG_DIRS` entry's `autostart` (else `/etc/xdg/autostart`).
    pub fn from_env() -> Result<Places, AutostartError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let config = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))
            .ok_or(AutostartError::NoConfigDir)?;
        let system = var("XDG_CONFIG_DIRS")
            .map(|dirs| std::env::split_paths(&dirs).map(|d| d.join("autostart")).collect())
            .unwrap_or_else(|| vec![PathBuf::from("/etc/xdg/autostart")]);
        Ok(Places { user: config.join("autostart"), system })
    }

    /// Whether the app starts at login: the person's entry decides when there is one, else
    /// a system entry.
    pub fn is_enabled(&self) -> bool {
        match std::fs::read_to_string(self.user.join(ENTRY_NAME)) {
            Ok(entry) => !turned_off(&entry),
            Err(_) => self
                .system
                .iter()
                .any(|dir| std::fs::read_to_string(dir.join(ENTRY_NAME)).is_ok_and(|entry| !turned_off(&entry))),
        }
    }

    /// Writes the person's entry: starting `exe`, or turned off (`Hidden=true`, which also
    /// turns off the package's entry of the same name).
    pub fn set(&self, enabled: bool, exe: &Path) -> Result<(), AutostartError> {
        let path = self.user.join(ENTRY_NAME);
        let entry = format!(
            "[Desktop Entry]\nType=Application\nName=Edge Agent\nComment=Edge Agent in the tray\nExec={}\nIcon=edge-agent-tray\nTerminal=false\nHidden={}\nX-GNOME-Autostart-enabled={}\n",
            quote_exec(&exe.to_string_lossy()),
            !enabled,
            enabled
        );
        std::fs::create_dir_all(&self.user)
            .and_then(|()| std::fs::write(&path, entry))
            .map_err(|source| AutostartError::Write { path, source })
    }

    /// At start: the person's own enabled entry is written again with this program's path
    /// (an update may have moved it). The package's entry is the package's business.
    pub fn reapply(&self, exe: &Path) -> Result<(), AutostartError> {
        match std::fs::read_to_string(self.user.join(ENTRY_NAME)) {
            Ok(entry) if !turned_off(&entry) => self.set(true, exe),
            _ => Ok(()),
        }
    }
}

/// `Hidden=true` or `X-GNOME-Autostart-enabled=false`: the entry starts nothing.
fn turned_off(entry: &str) -> bool {
    entry.lines().map(str::trim).any(|line| line == "Hidden=true" || line == "X-GNOME-Autostart-enabled=false")
}

fn current_exe() -> Result<PathBuf, AutostartError> {
    std::env::current_exe().map_err(AutostartError::NoExecutable)
}

pub fn is_enabled() -> bool {
    Places::from_env().is_ok_and(|places| places.is_enabled())
}

pub fn set_enabled(enabled: bool) -> Result<(), AutostartError> {
    Places::from_env()?.set(enabled, &current_exe()?)
}

pub fn reapply() -> Result<(), AutostartError> {
    Places::from_env()?.reapply(&current_exe()?)
}

/// A program path as an `Exec` argument: quoted, with the characters the desktop entry
/// spec reserves inside quotes escaped, so a path with spaces still starts.
fn quote_exec(path: &str) -> String {
    let mut out = String::from("\"");
    for c in path.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            out.push('\\');
        }
        if c == '%' {
            out.push('%');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(root: &Path) -> Places {
        Places { user: root.join("home/autostart"), system: vec![root.join("etc/xdg/autostart")] }
    }

    #[test]
    fn the_persons_entry_starts_the_program_and_turns_off_the_packages() {
        let root = tempfile::tempdir().unwrap();
        let places = places(root.path());
        assert!(!places.is_enabled(), "no entry anywhere");
        // What the package installs.
        std::fs::create_dir_all(&places.system[0]).unwrap();
        std::fs::write(
            places.system[0].join(ENTRY_NAME),
            include_str!("../../../installer/linux/edge-agent-autostart.desktop"),
        )
        .unwrap();
        assert!(places.is_enabled(), "the package's entry starts it");

        places.set(false, Path::new("/usr/bin/edge-agent-tray")).unwrap();
        assert!(!places.is_enabled(), "the person's Hidden=true overrides the package's entry");
        places.reapply(Path::new("/elsewhere/edge-agent-tray")).unwrap();
        assert!(!places.is_enabled(), "a turned-off entry stays off at start");

        places.set(true, Path::new("/opt/Edge Agent/edge-agent-tray")).unwrap();
        assert!(places.is_enabled());
        let entry = std::fs::read_to_string(places.user.join(ENTRY_NAME)).unwrap();
        assert!(entry.starts_with("[Desktop Entry]\n"), "{entry}");
        assert!(entry.contains("\nExec=\"/opt/Edge Agent/edge-agent-tray\"\n"), "{entry}");
        assert!(entry.contains("\nHidden=false\n"), "{entry}");

        places.reapply(Path::new("/usr/lib/edge-agent/edge-agent-tray")).unwrap();
        let entry = std::fs::read_to_string(places.user.join(ENTRY_NAME)).unwrap();
        assert!(entry.contains("\nExec=\"/usr/lib/edge-agent/edge-agent-tray\"\n"), "follows the program: {entry}");
    }

    #[test]
    fn reserved_characters_in_the_path_are_escaped() {
        assert_eq!(quote_exec(r#"/a "b"/$c`d\e%f"#), r#""/a \"b\"/\$c\`d\\e%%f""#);
    }
}
