//! `http_request` jobs against a real HTTP server on 127.0.0.1.

mod support;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edge_agent::runners::http_request::{self, HttpRequest};
use edge_agent::runners::Runners;
use edge_protocol::jobs::HttpResponseData;
use edge_protocol::{ErrorCode, JobError, JobSpec};
use serde_json::{json, Value};

async fn target() -> String {
    support::serve(support::targets()).await
}

async fn run(payload: Value) -> Result<HttpResponseData, JobError> {
    run_typed("http_request", payload).await
}

async fn run_typed(job_type: &str, payload: Value) -> Result<HttpResponseData, JobError> {
    let mut runners = Runners::default();
    runners.register("http_request", HttpRequest::new(http_request::client().unwrap()));
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
