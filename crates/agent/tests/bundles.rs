//! The agent's `bundle` job path (the `bundle` runner in the executor, which journals each
//! run's report) against an in-process HTTP
//! server that serves a real TUF repository built with the hub's publishing code
//! (`edge_bundle::repo::Repo::publish`, what `edge-hub bundle publish` calls).
//!
//! Refusals, each with its error code, through verify → arch check → download → unpack:
//! tampered target bytes, more bytes than the signed length, a foreign `cpu_arch` (refused
//! before any target request), another tenant's bundle, an expired timestamp, an archive
//! the agent's unpack limits refuse (nothing left in the cache afterwards). Happy paths
//! for the `shell`, `python` (a wheel from the bundle's wheelhouse, installed offline into
//! the version's venv) and `exec` (a native binary compiled here with `cc`) runtimes.
#![cfg(target_os = "linux")]

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::TimeDelta;
use edge_agent::bundles::{cache, BundleContext};
use edge_agent::executor::journal::{Entry, Journal};
use edge_agent::executor::{Executor, ExecutorConfig};
use edge_agent::runners::{bundle::Bundle, Runners};
use edge_agent::state::StateHandle;
use edge_bundle::codes;
use edge_bundle::repo::{PublishRequest, Repo, RepoOptions};
use edge_bundle::{CpuArch, Runtime};
use edge_protocol::{AgentFrame, JobError, JobSpec, JobStatus};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "acme";

/// How the server answers target requests.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Serve {
    Honest,
    /// One byte in the middle changed: same length, other hash.
    FlipByte,
    /// The real bytes plus 4 KiB more than the metadata allows.
    Append,
}

struct Served {
    repo: Repo,
    mode: Mutex<Serve>,
    target_requests: AtomicUsize,
}

fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// Only plain file names under the repository (the hub validates names the same way).
fn plain(name: &str) -> bool {
    !name.is_empty() && !name.contains("..") && !name.contains('/')
}

async fn metadata(State(s): State<Arc<Served>>, UrlPath(file): UrlPath<String>) -> Response {
    if !plain(&file) {
        return not_found();
    }
    match tokio::fs::read(s.repo.metadata_dir().join(file)).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => not_found(),
    }
}

async fn target(
    State(s): State<Arc<Served>>,
    UrlPath((tenant, bundle, file)): UrlPath<(String, String, String)>,
) -> Response {
    s.target_requests.fetch_add(1, Ordering::SeqCst);
    if ![&tenant, &bundle, &file].iter().all(|p| plain(p)) {
        return not_found();
    }
    let Ok(mut bytes) = tokio::fs::read(s.repo.targets_dir().join(tenant).join(bundle).join(file)).await else {
        return not_found();
    };
    match *s.mode.lock().unwrap() {
        Serve::Honest => {}
        Serve::FlipByte => {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
        }
        Serve::Append => bytes.extend(std::iter::repeat_n(b'x', 4096)),
    }
    bytes.into_response()
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: Repo,
    served: Arc<Served>,
    ctx: BundleContext,
    journal: Journal,
    jobs: AtomicUsize,
}

async fn fixture(options: RepoOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::with_options(dir.path().join("hub").join("repo"), options);
    repo.init(&dir.path().join("root-keys"), 1, 1).unwrap();
    let served =
        Arc::new(Served { repo: repo.clone(), mode: Mutex::new(Serve::Honest), target_requests: AtomicUsize::new(0) });
    let app = Router::new()
        .route("/v1/bundles/metadata/{file}", get(metadata))
        .route("/v1/bundles/targets/{tenant}/{bundle}/{file}", get(target))
        .with_state(Arc::clone(&served));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ctx = BundleContext::new(dir.path().join("agent"), format!("http://{addr}"), TENANT.into()).unwrap();
    // What enrollment does: the agent stores the hub's root.
    ctx.trust().install_root(&repo.root_json().unwrap()).unwrap();
    let journal = Journal::new(&ctx.data_dir);
    Fixture { dir, repo, served, ctx, journal, jobs: AtomicUsize::new(0) }
}

impl Fixture {
    /// Publishes `files` (name, bytes, executable) as one bundle version.
    fn publish(&self, tenant: &str, name: &str, version: &str, runtime: Runtime, arch: CpuArch, files: &[File<'_>]) {
        let src = self.dir.path().join("src").join(format!("{tenant}-{name}-{version}"));
        for (path, bytes, executable) in files {
            let full = src.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, bytes).unwrap();
            if *executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let published = self
            .repo
            .publish(&PublishRequest {
                tenant: tenant.into(),
                bundle: name.into(),
                version: version.into(),
                runtime,
                cpu_arch: arch,
                entrypoint: None,
                source: src,
            })
            .unwrap();
        assert!(published.changed);
    }

    fn serve(&self, mode: Serve) {
        *self.served.mode.lock().unwrap() = mode;
    }

    fn target_requests(&self) -> usize {
        self.served.target_requests.load(Ordering::SeqCst)
    }

    async fn run(&self, payload: Value) -> Result<Value, JobError> {
        let n = self.jobs.fetch_add(1, Ordering::SeqCst);
        let job = JobSpec { job_id: format!("job_bundle_test_{n}"), job_type: "bundle".into(), payload };
        let mut runners = Runners::default();
        runners.register("bundle", Bundle::new(self.ctx.clone()));
        let (frames, mut results) = tokio::sync::mpsc::unbounded_channel();
        let executor = Executor::spawn(ExecutorConfig {
            state: StateHandle::new(self.ctx.data_dir.clone()),
            runners,
            slots: 1,
            frames,
            paused: tokio::sync::watch::channel(false).1,
            journal: self.journal.clone(),
            reports_to: None,
            after_job: None,
            jobs_per_hour: None,
            quiet_hours: None,
            screenshots: None,
            cancel: CancellationToken::new(),
        });
        executor.assign(job.clone());
        // Results of earlier runs still in the journal are replayed first: skip them.
        loop {
            match results.recv().await.expect("the executor ended without a result") {
                AgentFrame::JobResult { id, status, data, err } if id == job.job_id => {
                    return match status {
                        JobStatus::Ok => Ok(data.unwrap()),
                        JobStatus::Error => Err(err.unwrap()),
                    }
                }
                _ => {}
            }
        }
    }

    fn version_dir(&self, bundle: &str, version: &str) -> PathBuf {
        cache::version_dir(&self.ctx.data_dir, TENANT, bundle, version)
    }

    /// Files left in the download directory (partial or complete).
    fn downloads(&self) -> Vec<PathBuf> {
        let dir = cache::root(&self.ctx.data_dir).join(".downloads");
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
    }

    /// The journaled report of the last run with this job's outcome.
    fn journaled(&self) -> Vec<Entry> {
        self.journal.entries()
    }
}

type File<'a> = (&'a str, &'a [u8], bool);

const HELLO_SH: File<'static> = ("main.sh", b"echo \"hello $1\"\n", false);

fn code_of(result: Result<Value, JobError>) -> String {
    match result {
        Ok(data) => panic!("the job must be refused, but it succeeded: {data}"),
        Err(e) => e.code.to_string(),
    }
}

fn foreign_arch() -> CpuArch {
    CpuArch(if std::env::consts::ARCH == "aarch64" { "x86_64" } else { "aarch64" }.into())
}

#[tokio::test]
async fn tampered_bytes_are_refused_and_nothing_is_kept() {
    let f = fixture(RepoOptions::default()).await;
    f.publish(TENANT, "report", "1.0.0", Runtime::Shell, CpuArch::any(), &[HELLO_SH]);
    f.serve(Serve::FlipByte);
    let err = f.run(json!({ "bundle": "report", "args": ["x"] })).await.unwrap_err();
    assert_eq!(err.code.to_string(), codes::BUNDLE_TAMPERED, "{err:?}");
    assert_eq!(f.target_requests(), 1);
    assert!(!f.version_dir("report", "1.0.0").exists(), "nothing may be unpacked");
    assert!(f.downloads().is_empty(), "the bad download is deleted: {:?}", f.downloads());
    // The refusal is journaled (and would be reported) like any result.
    let journal = f.journaled();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].notify.status, "failed");
    assert_eq!(journal[0].notify.error_code.as_deref(), Some(codes::BUNDLE_TAMPERED));
    assert_eq!(journal[0].notify.error.as_ref().map(|e| e.code.to_string()), Some(codes::BUNDLE_TAMPERED.into()));

    // Control: the same job with the real bytes runs, so the refusal was about the bytes.
    f.serve(Serve::Honest);
    let data = f.run(json!({ "bundle": "report", "args": ["world"] })).await.unwrap();
    assert_eq!(data["stdout"], "hello world\n", "{data}");
}

#[tokio::test]
async fn more_bytes_than_the_signed_length_are_refused() {
    let f = fixture(RepoOptions::default()).await;
    f.publish(TENANT, "report", "1.0.0", Runtime::Shell, CpuArch::any(), &[HELLO_SH]);
    f.serve(Serve::Append);
    let code = code_of(f.run(json!({ "bundle": "report" })).await);
    assert_eq!(code, codes::BUNDLE_TOO_LARGE);
    assert!(!f.version_dir("report", "1.0.0").exists());
    assert!(f.downloads().is_empty(), "{:?}", f.downloads());
}

/// Everything under `EdgeFlows/` (relative paths), to see what a job left behind.
fn tree(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map(|d| d.filter_map(Result::ok).collect::<Vec<_>>()).unwrap_or_default() {
            let path = entry.path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn a_refused_unpack_leaves_no_download_and_no_empty_folders() {
    let mut f = fixture(RepoOptions::default()).await;
    // The hub signs with the default limits; this agent allows two entries only, so the
    // signed, untampered bundle is refused at unpack, after its download.
    f.ctx.unpack_limits.max_files = 2;
    f.publish(
        TENANT,
        "report",
        "1.0.0",
        Runtime::Shell,
        CpuArch::any(),
        &[HELLO_SH, ("a.txt", b"a", false), ("b.txt", b"b", false)],
    );
    let root = cache::root(&f.ctx.data_dir);
    let code = code_of(f.run(json!({ "bundle": "report" })).await);
    assert_eq!(code, codes::ZIP_TOO_MANY_FILES);
    assert_eq!(f.target_requests(), 1, "refused after the download, not before");
    assert!(f.downloads().is_empty(), "the refused download is deleted: {:?}", f.downloads());
    // `.downloads` itself may stay (the download area); no tenant, bundle or version folder.
    assert_eq!(tree(&root), vec![".downloads".to_owned()], "left behind under {}", root.display());

    // Control: with the default limits the same signed bundle unpacks and runs, so the
    // refusal was the limit's, and the folders appear when a version is really installed.
    f.ctx.unpack_limits = edge_bundle::unpack::UnpackLimits::default();
    let data = f.run(json!({ "bundle": "report", "args": ["again"] })).await.unwrap();
    assert_eq!(data["stdout"], "hello again\n", "{data}");
    assert!(f.version_dir("report", "1.0.0").join("bundle").join("main.sh").is_file());
    assert!(f.downloads().is_empty(), "{:?}", f.downloads());
}

#[tokio::test]
async fn a_foreign_cpu_arch_is_refused_before_any_download() {
    let f = fixture(RepoOptions::default()).await;
    f.publish(TENANT, "native", "1.0.0", Runtime::Exec, foreign_arch(), &[("main", b"#!/bin/sh\necho no\n", true)]);
    let err = f.run(json!({ "bundle": "native", "version": "1.0.0" })).await.unwrap_err();
    assert_eq!(err.code.to_string(), codes::CPU_ARCH_MISMATCH, "{err:?}");
    assert_eq!(f.target_requests(), 0, "the bundle file must not even be requested");
    assert!(f.downloads().is_empty());
    // Control: the same bundle for this machine's architecture is downloaded and run.
    f.publish(TENANT, "native", "1.1.0", Runtime::Exec, CpuArch::host(), &[("main", b"#!/bin/sh\necho yes\n", true)]);
    let data = f.run(json!({ "bundle": "native", "version": "1.1.0" })).await.unwrap();
    assert_eq!(data["stdout"], "yes\n");
    assert_eq!(f.target_requests(), 1);
}

#[tokio::test]
async fn another_tenants_bundle_is_refused() {
    let f = fixture(RepoOptions::default()).await;
    f.publish("evil", "payload", "1.0.0", Runtime::Shell, CpuArch::any(), &[("main.sh", b"echo pwned\n", false)]);
    f.publish(TENANT, "report", "1.0.0", Runtime::Shell, CpuArch::any(), &[HELLO_SH]);

    // A job naming another tenant is refused before anything is fetched.
    let code = code_of(f.run(json!({ "bundle": "payload", "tenant": "evil" })).await);
    assert_eq!(code, codes::TENANT_MISMATCH);
    // Without a tenant the agent looks only in its own tenant's role: evil's bundle is not there.
    let code = code_of(f.run(json!({ "bundle": "payload" })).await);
    assert_eq!(code, codes::BUNDLE_NOT_FOUND);
    assert_eq!(f.target_requests(), 0);

    // evil's role (signed with evil's own key) lists a target under acme's path: the
    // metadata refresh is refused as a whole.
    f.repo
        .rewrite_for_tests(|_, tenants| {
            let evil = tenants.get_mut("evil").unwrap();
            let (_, target) = evil.targets.iter().next().map(|(n, t)| (n.clone(), t.clone())).unwrap();
            evil.targets.insert(edge_bundle::tough::TargetName::new("acme/report/9.9.9.zip").unwrap(), target);
        })
        .unwrap();
    let code = code_of(f.run(json!({ "bundle": "report", "version": "9.9.9" })).await);
    assert_eq!(code, codes::TENANT_MISMATCH);
    assert_eq!(f.target_requests(), 0, "nothing may be downloaded on forged metadata");
}

#[tokio::test]
async fn an_expired_timestamp_is_refused() {
    // A hub (or a mirror) frozen an hour after its timestamp ran out.
    let f = fixture(RepoOptions { timestamp_ttl: TimeDelta::hours(-1), ..RepoOptions::default() }).await;
    f.publish(TENANT, "report", "1.0.0", Runtime::Shell, CpuArch::any(), &[HELLO_SH]);
    let code = code_of(f.run(json!({ "bundle": "report" })).await);
    assert_eq!(code, codes::BUNDLE_EXPIRED);
    assert_eq!(f.target_requests(), 0);
}

#[tokio::test]
async fn shell_bundle_runs_with_args_in_its_scratch_dir() {
    let f = fixture(RepoOptions::default()).await;
    let script: &[u8] =
        b"echo \"args: $*\"\necho \"scratch: $(pwd)\"\necho \"home of bundle: $EDGE_BUNDLE_DIR\"\necho warn >&2\n";
    f.publish(TENANT, "report", "1.0.0", Runtime::Shell, CpuArch::any(), &[("main.sh", script, false)]);
    let data = f.run(json!({ "bundle": "report", "version": "latest", "args": ["a", "b c"] })).await.unwrap();
    let stdout = data["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("args: a b c\n"), "{stdout}");
    let run_id = data["runId"].as_str().unwrap();
    assert!(stdout.contains(&format!("runs/{run_id}")), "cwd is the run's scratch dir: {stdout}");
    assert!(stdout.contains(&format!("{}/bundle", f.version_dir("report", "1.0.0").display())), "{stdout}");
    assert_eq!(data["stderr"], "warn\n");
    assert_eq!(data["exitCode"], 0);
    assert_eq!(data["version"], "1.0.0");
    let journal = f.journaled();
    assert_eq!(journal.len(), 1, "journaled until the hub acknowledges it");
    assert_eq!(journal[0].notify.result.as_ref(), Some(&data), "the notify carries the job result");
}

/// A pure-Python wheel, written by hand (METADATA, WHEEL, RECORD, one module): nothing
/// from the network.
fn build_wheel(dir: &Path) -> PathBuf {
    let wheel = dir.join("edgegreet-0.1.0-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "edgegreet/__init__.py": "def greet(name):\n    return 'hello ' + name + ' from a wheel'\n",
    "edgegreet-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: edgegreet\nVersion: 0.1.0\n",
    "edgegreet-0.1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: edge-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(text.encode())}")
record.append("edgegreet-0.1.0.dist-info/RECORD,,")
files["edgegreet-0.1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
"#;
    let status = std::process::Command::new("python3").arg("-c").arg(script).arg(&wheel).status().unwrap();
    assert!(status.success());
    wheel
}

#[tokio::test]
async fn python_bundle_installs_its_wheelhouse_offline_into_its_venv() {
    let f = fixture(RepoOptions::default()).await;
    let wheel = std::fs::read(build_wheel(f.dir.path())).unwrap();
    let main: &[u8] = b"import sys, edgegreet\nprint(edgegreet.greet(sys.argv[1]))\nprint('venv' if sys.prefix != sys.base_prefix else 'system')\nprint(edgegreet.__file__)\n";
    f.publish(
        TENANT,
        "greeter",
        "1.0.0",
        Runtime::Python,
        CpuArch::any(),
        &[
            ("main.py", main, false),
            ("requirements.txt", b"edgegreet==0.1.0\n", false),
            ("wheelhouse/edgegreet-0.1.0-py3-none-any.whl", &wheel, false),
        ],
    );
    let data = f.run(json!({ "bundle": "greeter", "args": ["edge"] })).await.unwrap();
    let stdout = data["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["hello edge from a wheel", "venv"], "{data}");
    let venv = f.version_dir("greeter", "1.0.0").join("venv");
    assert!(lines[2].starts_with(&venv.display().to_string()), "imported from the version's venv: {stdout}");
    // The venv is kept with the version: the second run reuses it.
    assert!(f.version_dir("greeter", "1.0.0").join(".venv-ready").exists());
    let again = f.run(json!({ "bundle": "greeter", "args": ["again"] })).await.unwrap();
    assert!(again["stdout"].as_str().unwrap().starts_with("hello again from a wheel\n"), "{again}");
}

#[tokio::test]
async fn exec_bundle_runs_a_native_binary_for_this_arch() {
    let f = fixture(RepoOptions::default()).await;
    let c = f.dir.path().join("main.c");
    std::fs::write(
        &c,
        "#include <stdio.h>\n#include <stdlib.h>\nint main(int argc, char **argv) {\n  printf(\"native %s run=%s\\n\", argc > 1 ? argv[1] : \"-\", getenv(\"EDGE_RUN_ID\") ? \"set\" : \"unset\");\n  return 0;\n}\n",
    )
    .unwrap();
    let binary = f.dir.path().join("main");
    let status = std::process::Command::new("cc").arg("-O1").arg("-o").arg(&binary).arg(&c).status().unwrap();
    assert!(status.success(), "cc failed");
    let bytes = std::fs::read(&binary).unwrap();
    f.publish(TENANT, "native", "2.0.0", Runtime::Exec, CpuArch::host(), &[("main", &bytes, true)]);
    let data = f.run(json!({ "bundle": "native", "args": ["binary"] })).await.unwrap();
    assert_eq!(data["stdout"], "native binary run=set\n", "{data}");
    // The executable bit survived zip and unpack.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.version_dir("native", "2.0.0").join("bundle").join("main")).unwrap().permissions();
    assert_ne!(mode.mode() & 0o111, 0);
}
