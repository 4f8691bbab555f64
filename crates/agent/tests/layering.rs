//! The agent core's rooms import only downwards: [`LAYERS`] lists the modules of `src/lib.rs`
//! bottom to top, and a module may name (`crate::x`) only modules listed before it. A new
//! import that points up (or sideways into a later room) fails here with the file and line,
//! before it can grow into a cycle like the one the old `connection` module sat in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module of the crate, bottom to top (docs/architecture.md, "The core's rooms").
const LAYERS: &[&str] = &[
    // Foundations: types and clients every room may use.
    "error",
    // Replaces a file whole; everything that rewrites one uses it.
    "files",
    "trim",
    "secret",
    "hub_url",
    "tls",
    "logging",
    "credentials",
    "keychain",
    "hub_client",
    "device_login",
    "backoff",
    "runtime",
    "state",
    // The person's pause, and the last screenshot of each recent browser job.
    "pause",
    "screenshots",
    "local_settings",
    "consent",
    "limits",
    "outbox",
    // Every connection the hub causes passes here; the browser resource and the runners use it.
    "egress",
    // Resources handed to runners.
    "bundles",
    "browser",
    // The rooms.
    "tunnel",
    "runners",
    "executor",
    // Agent updates: uses the bundles' trust and download and the state; the session asks it
    // for the running version, the service starts it.
    "updater",
    // The ends of the hub's signing roots: reads the bundles' and the updater's trust stores.
    "expiry",
    "session",
    "service",
];

/// The modules declared in `lib.rs`.
fn declared() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut modules: Vec<String> = lib
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            let l = l.strip_prefix("pub ").or_else(|| l.strip_prefix("pub(crate) ")).unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect();
    modules.sort();
    modules
}

fn files_of(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        return vec![file];
    }
    let mut found = Vec::new();
    let mut stack = vec![src().join(module)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("module {module}: {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// `crate::name` and `crate::{a, b::c}` references on one line of code.
fn referenced(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                names.push(name);
            }
        } else {
            names.push(after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
        rest = after;
    }
    names
}

#[test]
fn every_module_has_a_place_in_the_layers() {
    let mut listed: Vec<String> = LAYERS.iter().map(|m| (*m).to_owned()).collect();
    listed.sort();
    assert_eq!(declared(), listed, "lib.rs and LAYERS must name the same modules: give a new module its place");
}

#[test]
fn every_import_points_down() {
    let layers = LAYERS;
    let rank: HashMap<&str, usize> = layers.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut violations = Vec::new();
    for (index, module) in layers.iter().enumerate() {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for name in referenced(code) {
                    // Items of lib.rs itself (agent_version, now_rfc3339) sit below every room.
                    let Some(&target) = rank.get(name.as_str()) else { continue };
                    if target >= index && name != **module {
                        violations.push(format!(
                            "{}:{}: `{module}` imports `{name}`, which lib.rs lists after it",
                            file.strip_prefix(src()).unwrap().display(),
                            number + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports that point up:\n{}", violations.join("\n"));
}

#[test]
fn the_check_reads_imports_the_way_they_are_written() {
    assert_eq!(referenced("use crate::state::{AgentEvent, StateHandle};"), ["state"]);
    assert_eq!(referenced("use crate::{executor, session::run};"), ["executor", "session"]);
    assert_eq!(
        referenced("let x = crate::bundles::inside(a, b); crate::agent_version()"),
        ["bundles", "agent_version"]
    );
    // The rooms named in the architecture are all in the list, in their order.
    let position = |m: &str| LAYERS.iter().position(|l| *l == m).unwrap_or_else(|| panic!("{m} not in LAYERS"));
    assert!(position("runners") < position("executor"));
    assert!(position("executor") < position("session"));
    assert!(position("session") < position("service"));
}
