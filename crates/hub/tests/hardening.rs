//! Regression tests of the hub hardening review (issue 18, "Hub hardening"): each test is
//! an attack made the way an attacker would make it (another local user reading files, a
//! long-lived token, a forged run report…), and fails without its fix.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn database_file(db: &TestDb) -> PathBuf {
    PathBuf::from(db.url.strip_prefix("sqlite://").expect("a SQLite test database"))
}

/// Another local user must not read the database (it holds the JWT secret), its WAL, the
/// bundle keys or the run reports: created private, and loosened ones are fixed at start.
#[cfg(unix)]
#[tokio::test]
async fn the_database_and_keys_are_private_and_loose_ones_are_tightened_at_start() {
    let db = TestDb::sqlite();
    let file = database_file(&db);
    let folder = file.parent().expect("folder").to_path_buf();
    // An online key left readable by an older hub, beside the database.
    let keys = folder.join("bundles").join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("targets.pk8"), b"not a real key").unwrap();
    set_mode(&keys, 0o755);
    set_mode(&keys.join("targets.pk8"), 0o644);

    let mut hub = TestHub::start_on(db, |_| {}).await;
    let wal = PathBuf::from(format!("{}-wal", file.display()));
    assert_eq!(mode(&folder), 0o700, "the database folder");
    assert_eq!(mode(&file), 0o600, "the database file");
    assert_eq!(mode(&wal), 0o600, "the WAL file");
    assert_eq!(mode(&keys), 0o700, "the bundle keys folder");
    assert_eq!(mode(&keys.join("targets.pk8")), 0o600, "an online key");

    // Someone loosens them; the next start tightens them again.
    set_mode(&folder, 0o755);
    set_mode(&file, 0o644);
    set_mode(&keys.join("targets.pk8"), 0o664);
    hub.restart().await;
    assert_eq!(mode(&folder), 0o700, "the database folder after a restart");
    assert_eq!(mode(&file), 0o600, "the database file after a restart");
    assert_eq!(mode(&wal), 0o600, "the WAL file after a restart");
    assert_eq!(mode(&keys.join("targets.pk8")), 0o600, "the key after a restart");
    hub.shutdown().await;
}

/// A token signed with the hub's secret but living a year (minted by whoever got the
/// secret, or by a tool gone wrong) is refused, as is one without `iat`; a genuine one
/// is served, so the refusals are about the lifetime.
#[tokio::test]
async fn a_signed_token_without_iat_or_living_longer_than_the_maximum_is_refused() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let now = now_secs();
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .expect("jwt encodes")
    };
    let ids = |mut claims: serde_json::Value| {
        claims["agentId"] = agent.agent_id.clone().into();
        claims["creatorId"] = agent.creator_id.clone().into();
        claims
    };
    let year_long = sign(ids(json!({"iat": now, "exp": now + 365 * 24 * 3600})));
    let no_iat = sign(ids(json!({"exp": now + 600})));
    let genuine = sign(ids(json!({"iat": now, "exp": now + 600})));

    for (what, token) in [("a year-long token", &year_long), ("a token without iat", &no_iat)] {
        let mut ws = hub.connect(token).await;
        assert_eq!(recv(&mut ws).await["code"], "TOKEN_INVALID", "{what} over the WebSocket");
        assert_eq!(expect_close(&mut ws).await.0, edge_protocol::api::close_code::TOKEN_INVALID, "{what}");
        let response = hub
            .http
            .post(hub.url(edge_protocol::api::NOTIFY_PATH))
            .bearer_auth(token)
            .json(&json!({"run_id":"run_attack_0001","job_id":"job_x","status":"succeeded","stdout":"","stderr":"",
                          "exit_code":0,"duration_ms":1}))
            .send()
            .await
            .expect("notify request");
        assert_eq!(response.status().as_u16(), 401, "{what} on /edge/notify");
    }
    let mut ws = hub.connect(&genuine).await;
    send(&mut ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0","capabilities":["http_request"],"slots":1})).await;
    assert_eq!(recv(&mut ws).await["t"], "hello_ack", "the control token is served");
    hub.shutdown().await;
}

/// A `POST /edge/notify` as an agent sends it, with `stdout` of `size` bytes.
async fn notify(hub: &TestHub, token: &str, run_id: &str, job_id: &str, size: usize) -> (u16, serde_json::Value) {
    let response = hub
        .http
        .post(hub.url(edge_protocol::api::NOTIFY_PATH))
        .bearer_auth(token)
        .json(&json!({"run_id": run_id, "job_id": job_id, "status": "succeeded", "stdout": "o".repeat(size),
                      "stderr": "", "exit_code": 0, "duration_ms": 5}))
        .send()
        .await
        .expect("notify request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// A bundle job leased to a fresh agent of `creator`; returns the agent's JWT and the job id.
async fn leased_bundle_job(hub: &TestHub, creator: &str) -> (String, String) {
    let agent = hub.enroll(creator).await;
    let mut ws = hub.hello(&agent, json!({"capabilities":["bundle"],"slots":1})).await;
    let job = hub
        .submit_job(json!({"type":"bundle","payload":{"bundle":"report","version":"1.0.0"},"agentId":agent.agent_id}))
        .await;
    let assign = recv(&mut ws).await;
    assert_eq!(assign["job"]["jobId"], job["id"], "{assign}");
    send(&mut ws, json!({"t":"job_ack","id":job["id"]})).await;
    // The session stays open in the background so the lease holds.
    tokio::spawn(async move {
        let _keep = ws;
        std::future::pending::<()>().await
    });
    (hub.session_token(&agent).await, job["id"].as_str().expect("job id").to_owned())
}

/// Another agent (of another creator) reports a run under a job it never held: refused
/// before anything is written, so the operator finds no such run.
#[tokio::test]
async fn a_run_report_for_a_job_the_agent_never_held_writes_nothing() {
    let hub = TestHub::start().await;
    let (_owner_token, job_id) = leased_bundle_job(&hub, CREATOR).await;
    let intruder = hub.enroll("creator-2").await;
    let intruder_token = hub.session_token(&intruder).await;

    let (status, body) = notify(&hub, &intruder_token, "run_planted_0001", &job_id, 100).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("job_not_held")), "{body}");
    let (status, body) = notify(&hub, &intruder_token, "run_planted_0002", "job_that_never_was", 100).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("job_not_held")), "{body}");
    for run in ["run_planted_0001", "run_planted_0002"] {
        let (status, _) = hub.operator_get(&format!("/v1/bundles/runs/{run}")).await;
        assert_eq!(status, 404, "{run} must not be recorded");
    }
    assert_eq!(hub.job(&job_id).await["status"], "running", "the owner's job is untouched");
    hub.shutdown().await;
}

/// One agent cannot fill the hub's disk with run reports: past its cap a new report
/// answers 507 (and is kept by the agent for later); a report already stored is still
/// acknowledged.
#[tokio::test]
async fn run_reports_are_capped_per_agent() {
    let hub = TestHub::start_on(TestDb::sqlite(), |c| c.run_bytes_per_agent = 4_000).await;
    let (token, job_id) = leased_bundle_job(&hub, CREATOR).await;
    let (status, body) = notify(&hub, &token, "run_capped_0001", &job_id, 1_500).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = notify(&hub, &token, "run_capped_0002", &job_id, 3_000).await;
    assert_eq!((status, body["error"].as_str()), (507, Some("run_storage_full")), "{body}");
    let (status, _) = hub.operator_get("/v1/bundles/runs/run_capped_0002").await;
    assert_eq!(status, 404, "the refused report is not stored");
    let (status, body) = notify(&hub, &token, "run_capped_0001", &job_id, 1_500).await;
    assert_eq!((status, body["duplicate"].as_bool()), (200, Some(true)), "{body}");
    // Another agent has its own budget.
    let (other_token, other_job) = leased_bundle_job(&hub, CREATOR).await;
    let (status, body) = notify(&hub, &other_token, "run_capped_0003", &other_job, 3_000).await;
    assert_eq!(status, 200, "{body}");
    hub.shutdown().await;
}

/// Runs the real `edge-hub` binary on `database`; its stdout, or its stderr as the error.
fn cli(database: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_edge-hub"))
        .arg("--database-url")
        .arg(database)
        .args(args)
        .env("EDGE_HUB_LOG", "warn")
        .output()
        .expect("edge-hub runs");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

/// A leaked key can be found and revoked: `api-key list` names every key (never the key
/// itself), `api-key revoke` makes it refused, and other keys keep working.
#[tokio::test]
async fn api_keys_are_listed_without_secrets_and_a_revoked_key_is_refused() {
    let db = TestDb::sqlite();
    let leaked = cli(&db.url, &["api-key", "create", "--name", "leaked"]).expect("create");
    let kept = cli(&db.url, &["api-key", "create", "--name", "kept", "--creator", CREATOR]).expect("create");
    let hub = TestHub::start_on(db, |_| {}).await;

    let listing = cli(&hub.db.url, &["api-key", "list"]).expect("list");
    assert!(!listing.contains(&leaked) && !listing.contains(&kept), "the listing shows no key: {listing}");
    let keys: Vec<serde_json::Value> = serde_json::from_str(&listing).expect("a JSON array");
    assert_eq!(keys.len(), 3, "two created here, one by the harness: {listing}");
    let entry = |name: &str| keys.iter().find(|k| k["name"] == name).cloned().expect("listed");
    assert_eq!(entry("leaked")["creatorId"], serde_json::Value::Null, "an operator key");
    assert_eq!(entry("kept")["creatorId"], CREATOR);
    let leaked_id = entry("leaked")["id"].as_str().expect("id").to_owned();

    let revoked = cli(&hub.db.url, &["api-key", "revoke", &leaked_id]).expect("revoke");
    assert!(revoked.contains(&leaked_id), "{revoked}");
    let (status, body) = hub.request(reqwest::Method::GET, "/v1/jobs", &leaked, None).await;
    assert_eq!(status, 401, "the revoked key is refused: {body}");
    let (status, body) = hub.request(reqwest::Method::GET, "/v1/jobs", &kept, None).await;
    assert_eq!(status, 200, "the other key still works: {body}");

    let unknown = cli(&hub.db.url, &["api-key", "revoke", &leaked_id]).expect_err("revoked twice");
    assert!(unknown.contains("api-key list"), "the error says where ids come from: {unknown}");
    let wildcard = cli(&hub.db.url, &["api-key", "revoke", "%"]).expect_err("a LIKE wildcard names no key");
    assert!(wildcard.contains("no API key"), "{wildcard}");
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&cli(&hub.db.url, &["api-key", "list"]).unwrap()).unwrap().len(),
        2
    );
    hub.shutdown().await;
}

/// With `--tls-cert`/`--tls-key` the hub speaks only TLS: a client trusting the certificate
/// enrolls and opens the agent WebSocket with its JWT in the `Authorization` header, and a
/// plain-HTTP client (an eavesdropper's view of the same request) gets no answer.
#[tokio::test]
async fn the_hub_serves_tls_itself_and_refuses_plain_http_on_that_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_certificates(dir.path());
    let hub = TestHub::start_on(TestDb::sqlite(), |c| {
        c.tls = Some(edge_hub::tls::TlsFiles { cert: cert.clone(), key: key.clone() })
    })
    .await;
    let addr = hub.hub().local_addr();
    let pem = std::fs::read(&ca).unwrap();
    let https = http_client_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM"))
        .build()
        .expect("client");
    let health = https.get(format!("https://{addr}/health")).send().await.expect("HTTPS answers");
    assert_eq!(health.status().as_u16(), 200);

    let plain = hub.http.get(format!("http://{addr}/health")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP must not be served on the TLS port");

    // The agent API answers over TLS as over plain HTTP.
    let answer = https
        .post(format!("https://{addr}/v1/agent/challenge"))
        .json(&json!({"agentId": "agt_nobody"}))
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(answer.status().as_u16(), 404);
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(body["error"], "unknown_agent", "{body}");
    hub.shutdown().await;
}

/// `edge-hub serve` on a non-loopback address without TLS says loudly, on stderr, that
/// credentials cross the network in clear; on loopback it does not.
#[tokio::test]
async fn plain_http_on_a_non_loopback_address_is_announced_loudly() {
    async fn serve_stderr(listen: &str) -> String {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
        let dir = tempfile::tempdir().expect("temp dir");
        let database = format!("sqlite://{}", dir.path().join("hub.db").display());
        let mut hub = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-hub"))
            .args(["--database-url", &database, "serve", "--listen", listen])
            .env("EDGE_HUB_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("edge-hub serve starts");
        let mut stdout = tokio::io::BufReader::new(hub.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), stdout.next_line())
            .await
            .expect("the hub says where it listens")
            .expect("stdout")
            .expect("a line");
        assert!(line.starts_with("edge-hub listening on http://"), "{line}");
        hub.start_kill().expect("kill");
        let mut stderr = String::new();
        let mut pipe = hub.stderr.take().expect("stderr");
        tokio::time::timeout(std::time::Duration::from_secs(10), pipe.read_to_string(&mut stderr))
            .await
            .expect("stderr ends with the process")
            .expect("stderr");
        stderr
    }
    let exposed = serve_stderr("0.0.0.0:0").await;
    assert!(exposed.contains("WARNING: edge-hub serves PLAIN HTTP"), "{exposed}");
    assert!(exposed.contains("--tls-cert"), "the warning says what to do: {exposed}");
    let local = serve_stderr("127.0.0.1:0").await;
    assert!(!local.contains("PLAIN HTTP"), "no warning on loopback: {local}");
}

/// An attacker guessing enrollment tokens (or flooding the challenge table) from one
/// address is cut off with 429 and `Retry-After`; a flood of job API calls with one key
/// likewise, while another key is still served.
#[tokio::test]
async fn credential_exchanges_per_address_and_the_job_api_per_key_are_rate_limited() {
    let hub = TestHub::start_on(TestDb::sqlite(), |c| {
        c.rate_limits.auth_per_minute_per_address = std::num::NonZeroU32::new(5).expect("non-zero");
        c.rate_limits.jobs_per_second_per_key = std::num::NonZeroU32::new(5).expect("non-zero");
    })
    .await;
    let guess =
        |n: usize| json!({"token": format!("guess-{n}"), "publicKey": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="});
    let mut answers = Vec::new();
    for n in 0..8 {
        let response = hub.http.post(hub.url("/v1/agent/enroll")).json(&guess(n)).send().await.expect("request");
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        answers.push((response.status().as_u16(), retry_after));
    }
    assert!(answers[..5].iter().all(|(s, _)| *s == 401), "the first five guesses are answered: {answers:?}");
    assert!(
        answers[5..].iter().all(|(s, r)| *s == 429 && r.as_deref().is_some_and(|r| r.parse::<u64>().unwrap() >= 1)),
        "then 429 with Retry-After: {answers:?}"
    );
    // challenge and token share the address's budget.
    let (status, body) = hub.post("/v1/agent/challenge", json!({"agentId": "agt_nobody"})).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("rate_limited")), "{body}");

    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(hub.request(reqwest::Method::GET, "/v1/jobs", &hub.api_key, None).await.0);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "a flood with one key is cut off: {statuses:?}");
    let other = hub.creator_key(CREATOR).await;
    assert_eq!(
        hub.request(reqwest::Method::GET, "/v1/jobs", &other, None).await.0,
        200,
        "another key has its own budget"
    );
    hub.shutdown().await;
}

/// Publishes `<tenant>/<bundle>` 1.0.0 (a shell bundle) into the repository `repo`.
fn publish_shell(repo: &edge_bundle::repo::Repo, source: &Path, tenant: &str, bundle: &str) -> String {
    std::fs::create_dir_all(source).unwrap();
    std::fs::write(source.join("main.sh"), format!("echo {tenant}\n")).unwrap();
    let published = repo
        .publish(&edge_bundle::repo::PublishRequest {
            tenant: tenant.into(),
            bundle: bundle.into(),
            version: "1.0.0".into(),
            runtime: edge_bundle::Runtime::Shell,
            cpu_arch: edge_bundle::CpuArch::any(),
            entrypoint: None,
            source: source.to_path_buf(),
        })
        .expect("publish");
    format!("/v1/bundles/targets/{}", published.target_file)
}

/// GET `path` with `bearer` (or none): status and body as text.
async fn get_as(hub: &TestHub, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = http_client().get(hub.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

/// What an agent's TUF client reads, in order: timestamp, snapshot, targets, its own role.
async fn metadata_walk(hub: &TestHub, bearer: &str, tenant: &str) -> Vec<(String, String)> {
    let version = |text: &str, name: &str| -> u64 {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        value["signed"]["meta"][name]["version"].as_u64().unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let mut files = Vec::new();
    let fetch = |file: String| async move {
        let (status, text) = get_as(hub, &format!("/v1/bundles/metadata/{file}"), Some(bearer)).await;
        assert_eq!(status, 200, "{file}: {text}");
        (file, text)
    };
    let timestamp = fetch("timestamp.json".into()).await;
    let snapshot = fetch(format!("{}.snapshot.json", version(&timestamp.1, "snapshot.json"))).await;
    let targets = fetch(format!("{}.targets.json", version(&snapshot.1, "targets.json"))).await;
    let role = fetch(format!("{}.{tenant}.json", version(&snapshot.1, &format!("{tenant}.json")))).await;
    files.extend([timestamp, snapshot, targets, role]);
    files
}

/// The review found every tenant's bundle zips and delegated metadata served to anyone who
/// could reach the hub. Now an agent (its JWT) or a creator key reads its own tenant's view
/// and bundles only, another tenant's answer 404 like missing ones and its name appears in
/// nothing it can read, an operator key reads everything, and no credential reads nothing
/// but the public root.
#[tokio::test]
async fn a_tenants_bundles_and_metadata_are_served_only_to_that_tenant() {
    let db = TestDb::sqlite();
    let folder = database_file(&db).parent().expect("folder").to_path_buf();
    let repo = edge_bundle::repo::Repo::new(folder.join("bundles").join("repo"));
    repo.init(&folder.join("root-keys"), 1, 1).expect("keys init");
    let zip_a = publish_shell(&repo, &folder.join("src-a"), "tenant-a", "report");
    let zip_b = publish_shell(&repo, &folder.join("src-b"), "tenant-b", "secret-plan");
    let hub = TestHub::start_on(db, |_| {}).await;

    // No credential: only root.json, which names no tenant.
    let (status, root) = get_as(&hub, "/v1/bundles/root.json", None).await;
    assert_eq!(status, 200, "{root}");
    assert!(!root.contains("tenant-"), "root.json names a tenant: {root}");
    for path in ["/v1/bundles/metadata/timestamp.json", "/v1/bundles/metadata/1.targets.json", &zip_b, &zip_a] {
        let (status, body) = get_as(&hub, path, None).await;
        assert_eq!(status, 401, "{path} without credentials: {body}");
    }
    let (status, body) = get_as(&hub, &zip_b, Some("not-a-token")).await;
    assert_eq!(status, 401, "a made-up bearer: {body}");

    // An agent of tenant A, with its own JWT, the way a modified agent would ask.
    let agent = hub.enroll("tenant-a").await;
    let jwt = hub.session_token(&agent).await;
    for (file, text) in metadata_walk(&hub, &jwt, "tenant-a").await {
        assert!(
            !text.contains("tenant-b") && !text.contains("secret-plan"),
            "{file} served to tenant A names tenant B: {text}"
        );
    }
    let (status, _) = get_as(&hub, &zip_a, Some(&jwt)).await;
    assert_eq!(status, 200, "tenant A's own bundle");
    let missing = get_as(&hub, "/v1/bundles/metadata/1.tenant-c.json", Some(&jwt)).await;
    for path in ["/v1/bundles/metadata/1.tenant-b.json", "/v1/bundles/metadata/2.tenant-b.json"] {
        assert_eq!(get_as(&hub, path, Some(&jwt)).await, missing, "{path}: like a missing file");
    }
    let (status, body) = get_as(&hub, &zip_b, Some(&jwt)).await;
    assert_eq!(status, 404, "tenant B's bundle to tenant A's agent: {body}");
    let (status, body) = get_as(&hub, "/v1/bundles/tenant-b/secret-plan/latest/manifest.json", Some(&jwt)).await;
    assert_eq!(status, 404, "tenant B's manifest to tenant A's agent: {body}");
    let (status, body) = get_as(&hub, "/v1/bundles/tenant-a/report/latest/manifest.json", Some(&jwt)).await;
    assert_eq!(status, 200, "tenant A's own manifest: {body}");

    // A creator key of tenant B reads B's view, not A's.
    let key_b = hub.creator_key("tenant-b").await;
    for (file, text) in metadata_walk(&hub, &key_b, "tenant-b").await {
        assert!(!text.contains("tenant-a"), "{file} served to tenant B names tenant A: {text}");
    }
    assert_eq!(get_as(&hub, &zip_b, Some(&key_b)).await.0, 200);
    assert_eq!(get_as(&hub, &zip_a, Some(&key_b)).await.0, 404);

    // The operator reads the whole repository, every tenant in it.
    let (status, targets) = get_as(&hub, "/v1/bundles/metadata/3.targets.json", Some(&hub.api_key)).await;
    assert_eq!(status, 200, "{targets}");
    assert!(targets.contains("tenant-a") && targets.contains("tenant-b"), "{targets}");
    assert_eq!(get_as(&hub, &zip_b, Some(&hub.api_key)).await.0, 200);
    hub.shutdown().await;
}

/// The tunnel's raw fast path answers only an agent's valid JWT: no preamble, another first
/// line, or a forged token is answered `ERR …` and closed, and no tunnel is registered;
/// a good token is answered `OK`. `GET /v1/agent/tunnel/endpoints` tells agents (and only
/// agents) the bound address.
#[tokio::test]
async fn the_raw_tunnel_port_opens_nothing_without_an_agents_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub =
        TestHub::start_on(TestDb::sqlite(), |c| c.tunnel_listen = Some("127.0.0.1:0".parse().expect("address"))).await;
    let raw = hub.hub().tunnel_addr().expect("bound");
    let agent = hub.enroll("creator-raw").await;
    let jwt = hub.session_token(&agent).await;

    let (status, _) = hub.request(reqwest::Method::GET, "/v1/agent/tunnel/endpoints", "nope", None).await;
    assert_eq!(status, 401);
    let (status, endpoints) = hub.request(reqwest::Method::GET, "/v1/agent/tunnel/endpoints", &jwt, None).await;
    assert_eq!((status, endpoints["raw"].as_str()), (200, Some(raw.to_string().as_str())), "{endpoints}");

    let answer = |first_line: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(raw).await.expect("connect");
        tcp.write_all(first_line.as_bytes()).await.expect("write");
        let mut text = String::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_string(&mut text)).await;
        text
    };
    let forged = mint_jwt("another-secret-entirely-32-bytes!!", &agent, now_secs() + 300);
    for (line, why) in [
        ("GET / HTTP/1.1\r\n\r\n".to_owned(), "not the preamble"),
        (format!("EDGE-TUNNEL/1 {forged}\n"), "a token signed with another secret"),
        ("EDGE-TUNNEL/1 \n".to_owned(), "no token"),
    ] {
        let text = answer(line).await;
        assert!(text.starts_with("ERR "), "{why}: {text:?}");
    }
    assert!(hub.hub().proxy_addr().is_none());
    let mut tcp = tokio::net::TcpStream::connect(raw).await.expect("connect");
    tcp.write_all(format!("EDGE-TUNNEL/1 {jwt}\n").as_bytes()).await.expect("write");
    let mut ok = [0u8; 3];
    tcp.read_exact(&mut ok).await.expect("answer");
    assert_eq!(&ok, b"OK\n");
    hub.shutdown().await;
}
