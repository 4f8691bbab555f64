//! `http_request` jobs against a real HTTP server on 127.0.0.1, through the egress gate.
//! Each test grants the server's exact `127.0.0.1:PORT` the way a person would
//! (`--allow-egress`); nothing turns the gate off.

mod support;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edge_agent::egress::{EgressGate, Policy};
use edge_agent::runners::http_request::HttpRequest;
use edge_agent::runners::Runners;
use edge_protocol::jobs::HttpResponseData;
use edge_protocol::{ErrorCode, JobError, JobSpec};
use serde_json::{json, Value};

async fn target() -> String {
    support::serve(support::targets()).await
}

/// `127.0.0.1:PORT` of a base URL: the grant a person would give for that local site.
fn authority(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// A gate that allows the site at `base` (a person's `--allow-egress`).
fn granting(base: &str) -> EgressGate {
    EgressGate::new(Policy::parse([authority(base).as_str()]).unwrap_or_default(), None, None)
}

async fn run(payload: Value) -> Result<HttpResponseData, JobError> {
    let url = payload["url"].as_str().unwrap_or_default().to_owned();
    let base = url.split('/').take(3).collect::<Vec<_>>().join("/");
    run_through(&granting(&base), "http_request", payload).await
}

async fn run_typed(job_type: &str, payload: Value) -> Result<HttpResponseData, JobError> {
    run_through(&EgressGate::new(Policy::default(), None, None), job_type, payload).await
}

async fn run_through(gate: &EgressGate, job_type: &str, payload: Value) -> Result<HttpResponseData, JobError> {
    let mut runners = Runners::default();
    runners.register("http_request", HttpRequest::new(gate.clone()));
    let job = JobSpec { job_id: "job-1".into(), job_type: job_type.into(), payload };
    runners.run_detached(&job).await.map(|data| serde_json::from_value(data).unwrap())
}

fn body(data: &HttpResponseData) -> Vec<u8> {
    assert!(data.is_base64_encoded);
    BASE64.decode(&data.body).unwrap()
}

#[tokio::test]
async fn follows_redirects_and_returns_the_final_answer() {
    let base = target().await;
    let data = run(json!({"url": format!("{base}/target/redirect/3")})).await.unwrap();
    assert_eq!(data.status_code, 200);
    assert_eq!(body(&data), b"hello world");
    assert!(data.headers.contains_key("content-type"));
}

#[tokio::test]
async fn more_than_ten_redirects_is_a_network_error() {
    let base = target().await;
    let err = run(json!({"url": format!("{base}/target/loop")})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Network, "{err:?}");
}

#[tokio::test]
async fn request_body_and_headers_round_trip_as_base64() {
    let base = target().await;
    let sent: Vec<u8> = (0u8..=255).collect();
    let data = run(json!({
        "url": format!("{base}/target/echo"),
        "method": "put",
        "headers": {"x-marker": "m-42"},
        "body": BASE64.encode(&sent),
    }))
    .await
    .unwrap();
    assert_eq!(data.status_code, 201);
    assert_eq!(body(&data), sent);
    assert_eq!(data.headers["x-echo-marker"], "m-42");
    assert_eq!(data.headers["x-echo-method"], "PUT");
}

#[tokio::test]
async fn a_non_2xx_answer_is_still_a_successful_job() {
    let base = target().await;
    let data = run(json!({"url": format!("{base}/target/teapot")})).await.unwrap();
    assert_eq!(data.status_code, 418);
}

#[tokio::test]
async fn timeout_is_nav_timeout() {
    let base = target().await;
    let started = std::time::Instant::now();
    let err = run(json!({"url": format!("{base}/target/slow/30000"), "timeoutMs": 200})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NavTimeout, "{err:?}");
    // The ceiling is the behaviour: the job's 200 ms timeout ended it, not the server's
    // 30 s answer. Half of that leaves a loaded machine all the room it needs.
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connection_refused_is_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = run(json!({"url": format!("http://127.0.0.1:{port}/")})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Network, "{err:?}");
}

#[tokio::test]
async fn oversized_bodies_fail_with_a_clear_error() {
    let base = target().await;
    let err = run(json!({"url": format!("{base}/target/big")})).await.unwrap_err();
    assert_eq!(err.code.as_str(), "RESPONSE_TOO_LARGE");
    assert!(err.message.unwrap().contains("limit"));
}

#[tokio::test]
async fn bad_payloads_are_bad_payload() {
    for payload in [
        json!({"nourl": true}),
        json!({"url": "not a url"}),
        json!({"url": "ftp://127.0.0.1/x"}),
        json!({"url": "http://127.0.0.1/", "method": "GE T"}),
        json!({"url": "http://127.0.0.1/", "body": "***not base64***"}),
        json!({"url": "http://127.0.0.1/", "headers": {"bad header": "x"}}),
        json!({"url": "http://127.0.0.1/", "timeoutMs": 0}),
    ] {
        let err = run(payload.clone()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadPayload, "{payload}: {err:?}");
    }
}

#[tokio::test]
async fn unknown_job_types_are_unsupported() {
    let err = run_typed("screenshot", json!({})).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UnsupportedJob);
}

/// The attacks of the security review (issue 18): the hub names a local or LAN address in
/// every spelling; the gate refuses each before connecting, naming address and rule.
#[tokio::test]
async fn loopback_and_lan_are_refused_in_every_spelling_without_a_grant() {
    let base = target().await;
    let port = authority(&base).rsplit(':').next().unwrap().to_owned();
    let nothing_granted = EgressGate::new(Policy::default(), None, None);
    for (url, rule) in [
        (format!("{base}/target/hello"), "loopback"),
        (format!("http://[::1]:{port}/target/hello"), "IPv6 loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/target/hello"), "IPv4-mapped"),
        (format!("http://2130706433:{port}/target/hello"), "loopback"),
        (format!("http://0177.0.0.1:{port}/target/hello"), "loopback"),
        (format!("http://0x7f.1:{port}/target/hello"), "loopback"),
        (format!("http://localhost:{port}/target/hello"), "loopback"),
        ("http://10.0.0.1/".to_owned(), "RFC 1918"),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "cloud metadata"),
        ("http://100.64.0.1/".to_owned(), "carrier-grade NAT"),
    ] {
        let error = run_through(&nothing_granted, "http_request", json!({"url": url})).await.unwrap_err();
        assert_eq!(error.code, ErrorCode::EgressDenied, "{url}: {error:?}");
        let message = error.message.unwrap();
        assert!(message.contains(rule) && message.contains("--allow-egress"), "{url}: {message}");
        assert!(!error.code.is_retryable());
    }
}

/// A site whose `/jump` redirects to `to`, and a gate allowing it and `granted` only.
async fn redirect_to(to: &str, granted: &str) -> (String, EgressGate) {
    let to = to.to_owned();
    let app = axum::Router::new()
        .route("/jump", axum::routing::get(move || async move { axum::response::Redirect::temporary(&to) }));
    let jumping = support::serve(app).await;
    let gate = EgressGate::new(
        Policy::parse([authority(granted).as_str(), authority(&jumping).as_str()]).unwrap(),
        None,
        None,
    );
    (jumping, gate)
}

#[tokio::test]
async fn a_redirect_to_another_local_port_is_judged_again_and_refused() {
    let granted = target().await;
    let other = target().await;
    let (jumping, gate) = redirect_to(&format!("{other}/target/hello"), &granted).await;
    let error = run_through(&gate, "http_request", json!({"url": format!("{jumping}/jump")})).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::EgressDenied, "{error:?}");
    assert!(error.message.unwrap().contains(&authority(&other)));
    // The same redirect to the granted one is followed.
    let (jumping, gate) = redirect_to(&format!("{granted}/target/hello"), &granted).await;
    let data = run_through(&gate, "http_request", json!({"url": format!("{jumping}/jump")})).await.unwrap();
    assert_eq!(body(&data), b"hello world");
}

#[tokio::test]
async fn the_hub_can_narrow_a_job_but_not_widen_it() {
    let base = target().await;
    let gate = granting(&base);
    let narrowed = json!({"url": format!("{base}/target/hello"), "egress": ["203.0.113.7:443"]});
    let error = run_through(&gate, "http_request", narrowed).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::EgressDenied);
    assert!(error.message.unwrap().contains("job's egress list"));
    let listed = json!({"url": format!("{base}/target/hello"), "egress": [authority(&base)]});
    run_through(&gate, "http_request", listed).await.unwrap();
    let nothing_granted = EgressGate::new(Policy::default(), None, None);
    let widening = json!({"url": format!("{base}/target/hello"), "egress": [authority(&base)]});
    let error = run_through(&nothing_granted, "http_request", widening).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::EgressDenied, "a job's list cannot open loopback");
    let bad = json!({"url": format!("{base}/target/hello"), "egress": ["not-an-address"]});
    assert_eq!(run_through(&gate, "http_request", bad).await.unwrap_err().code, ErrorCode::BadPayload);
}

#[tokio::test]
async fn bytes_are_metered_and_the_daily_cap_refuses_new_connections() {
    let base = target().await;
    let data = tempfile::tempdir().unwrap();
    let gate = EgressGate::new(Policy::parse([authority(&base).as_str()]).unwrap(), Some(data.path()), Some(200));
    let job = json!({"url": format!("{base}/target/echo"), "method": "POST", "body": BASE64.encode([7u8; 150])});
    run_through(&gate, "http_request", job.clone()).await.unwrap();
    let today = edge_agent::egress::MeterDay::read(data.path());
    let counted = today.by_capability["http_request"];
    assert!(counted.bytes_out >= 150 && counted.bytes_in >= 150, "{today:?}");
    let error = run_through(&gate, "http_request", job).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::EgressCap, "{error:?}");
    assert!(error.message.unwrap().contains("bytesPerDay"));
}
