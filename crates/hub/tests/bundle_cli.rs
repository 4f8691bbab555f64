//! `edge-hub bundle …` and `edge-hub serve` as an operator runs them (the real binary):
//! `bundle publish` refuses every archive the agent's safe unpack would refuse, with the
//! agent's own code, and signs nothing; `serve --bundle-dir` (what docs/bundles.md tells
//! the operator) serves the repository in that directory.

mod common;

use edge_bundle::codes;
use edge_bundle::testing::{rename_in_place, write_many_empty_files, write_zip, Entry};
use edge_bundle::unpack::{unpack_zip, UnpackLimits};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_edge-hub");

struct Hub {
    dir: tempfile::TempDir,
}

impl Hub {
    fn new() -> Hub {
        let hub = Hub { dir: tempfile::tempdir().unwrap() };
        let root_dir = hub.dir.path().join("root-keys");
        let init = hub.bundle(&["keys", "init", "--root-dir", root_dir.to_str().unwrap()]);
        assert!(init.status.success(), "keys init: {}", String::from_utf8_lossy(&init.stderr));
        hub
    }

    /// Not beside the database, so only `--bundle-dir` can lead the hub there.
    fn bundle_dir(&self) -> PathBuf {
        self.dir.path().join("bundle-state")
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.dir.path().join("db").join("hub.db").display())
    }

    fn bundle(&self, args: &[&str]) -> Output {
        std::fs::create_dir_all(self.dir.path().join("db")).unwrap();
        Command::new(BIN)
            .args(["--database-url", &self.database_url(), "bundle", "--bundle-dir"])
            .arg(self.bundle_dir())
            .args(args)
            .env_remove("EDGE_HUB_BUNDLE_DIR")
            .output()
            .expect("edge-hub runs")
    }

    fn publish(&self, version: &str, zip: &Path) -> Output {
        let zip = zip.to_str().unwrap();
        self.bundle(&[
            "publish",
            "--tenant",
            "acme",
            "--name",
            "report",
            "--version",
            version,
            "--runtime",
            "shell",
            zip,
        ])
    }

    fn listed(&self) -> Value {
        let out = self.bundle(&["list", "--tenant", "acme"]);
        assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Zip files stored under the repository's targets (staging included).
    fn stored_zips(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.bundle_dir().join("repo").join("targets")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }
}

const FILE: u32 = 0o644;
const MAIN: Entry<'static> = Entry::File { name: "main.sh", data: b"echo hi\n", mode: FILE };

/// Each hostile archive, with the code the agent refuses it with.
fn hostile_archives(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let cases: Vec<(&str, Vec<Entry<'_>>, &'static str)> = vec![
        ("slip", vec![MAIN, Entry::File { name: "../evil.sh", data: b"x", mode: FILE }], codes::ZIP_PATH_TRAVERSAL),
        ("absolute", vec![MAIN, Entry::File { name: "/etc/evil", data: b"x", mode: FILE }], codes::ZIP_ABSOLUTE_PATH),
        ("link", vec![MAIN, Entry::Symlink { name: "etc", target: "/etc" }], codes::ZIP_SYMLINK),
        ("device", vec![MAIN, Entry::Special { name: "dev", mode: 0o020_644 }], codes::ZIP_SPECIAL_FILE),
        ("case", vec![MAIN, Entry::File { name: "MAIN.sh", data: b"x", mode: FILE }], codes::ZIP_DUPLICATE_ENTRY),
        ("bomb", vec![MAIN, Entry::File { name: "zeros", data: &zeros, mode: FILE }], codes::ZIP_BOMB),
    ];
    let mut out = Vec::new();
    for (name, entries, code) in cases {
        let path = dir.join(format!("{name}.zip"));
        write_zip(&path, &entries).unwrap();
        out.push((path, code));
    }
    // An exact duplicate name (the zip crate would hide one of the two).
    let duplicate = dir.join("duplicate.zip");
    write_zip(&duplicate, &[MAIN, Entry::File { name: "mainXsh", data: b"x", mode: FILE }]).unwrap();
    rename_in_place(&duplicate, "mainXsh", "main.sh").unwrap();
    out.push((duplicate, codes::ZIP_DUPLICATE_ENTRY));
    // One entry over the agent's default cap.
    let many = dir.join("many.zip");
    write_many_empty_files(&many, UnpackLimits::default().max_files as u32 + 1).unwrap();
    out.push((many, codes::ZIP_TOO_MANY_FILES));
    out
}

#[test]
fn publish_refuses_what_the_agent_would_refuse_with_the_agents_code() {
    let hub = Hub::new();
    let sources = tempfile::tempdir().unwrap();
    for (i, (zip, code)) in hostile_archives(sources.path()).into_iter().enumerate() {
        // What the agent's unpack says about this archive, so "same code" is checked, not assumed.
        let agent = unpack_zip(&zip, &sources.path().join(format!("agent-{i}")), &UnpackLimits::default())
            .expect_err("the agent refuses it");
        assert_eq!(agent.code, code, "{}: {agent}", zip.display());

        let out = hub.publish(&format!("1.0.{i}"), &zip);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was published: {}", zip.display(), String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains(code), "{}: the refusal names {code}: {stderr}", zip.display());
        assert!(stderr.contains("nothing was published"), "{stderr}");
        assert!(out.stdout.is_empty(), "no JSON result on a refusal: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(hub.listed()["bundles"], serde_json::json!([]), "nothing was signed");
    assert!(hub.stored_zips().is_empty(), "nothing was stored: {:?}", hub.stored_zips());

    // Control: a clean archive goes through the same command.
    let good = sources.path().join("good.zip");
    write_zip(&good, &[MAIN, Entry::File { name: "lib/util.sh", data: b"true\n", mode: FILE }]).unwrap();
    let out = hub.publish("2.0.0", &good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let published: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(published["changed"], true, "{published}");
    assert_eq!(hub.listed()["bundles"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn serve_takes_the_bundle_dir_the_docs_name() {
    use tokio::io::AsyncBufReadExt as _;
    // The documented line, so docs and CLI cannot drift apart again.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/bundles.md")).unwrap();
    assert!(docs.contains("edge-hub serve --bundle-dir DIR"), "docs/bundles.md names the serve flag");

    let hub = Hub::new();
    let mut serve = tokio::process::Command::new(BIN)
        .args(["--database-url", &hub.database_url(), "serve", "--listen", "127.0.0.1:0", "--bundle-dir"])
        .arg(hub.bundle_dir())
        .env_remove("EDGE_HUB_BUNDLE_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("edge-hub serve starts");
    let mut stdout = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let line =
        tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await.expect("the hub says where it listens");
    let Some(line) = line.unwrap() else {
        let out = serve.wait_with_output().await.unwrap();
        panic!("edge-hub serve --bundle-dir exited: {}", String::from_utf8_lossy(&out.stderr));
    };
    let base = line.strip_prefix("edge-hub listening on ").expect("listening line").to_owned();
    let response = common::http_client().get(format!("{base}/v1/bundles/root.json")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the repository in --bundle-dir is served");
    let served = response.bytes().await.unwrap();
    let stored = std::fs::read(hub.bundle_dir().join("repo").join("metadata").join("root.json")).unwrap();
    assert_eq!(served.as_ref(), stored.as_slice());
    let _ = serve.kill().await;
}
