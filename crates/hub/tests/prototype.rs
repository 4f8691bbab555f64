//! The residential-proxy prototype's `POST /jobs` over real sockets, as its internal
//! services call it: an `http_request` body, an API key, `?sync=true`, and the answer's
//! `message`/`jobId`/`requestId`/`result` shape (issue 17).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// A prototype service's request: `X-API-Key`, an optional `X-Request-Id`, a JSON body.
async fn call(
    hub: &TestHub,
    path: &str,
    key: Option<&str>,
    request_id: Option<&str>,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = hub.http.post(hub.url(path)).json(&body);
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    if let Some(id) = request_id {
        request = request.header("X-Request-Id", id);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body, headers)
}

/// A refused request: path, key, request id, body; then the status, the error code and a
/// word the message must contain.
type Refusal<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Value, u16, &'a str, &'a str);

fn keys(value: &Value) -> BTreeSet<&str> {
    value.as_object().expect("an object").keys().map(String::as_str).collect()
}

/// Answers the next job the agent gets with `result` and returns the assign frame.
async fn run_next(ws: &mut Ws, result: Value) -> Value {
    let assign = recv(ws).await;
    assert_eq!(assign["t"], "job_assign", "{assign}");
    let id = assign["job"]["jobId"].clone();
    send(ws, json!({"t":"job_ack","id":id})).await;
    let mut frame = result;
    frame["t"] = json!("job_result");
    frame["id"] = id;
    send(ws, frame).await;
    assign
}

#[tokio::test]
async fn the_prototype_route_runs_an_http_request_and_answers_in_its_shape() {
    let hub = TestHub::start().await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let body =
        json!({"url":"http://127.0.0.1:9/proxy","method":"POST","headers":{"accept":"text/plain"},"body":"aGVsbG8="});
    let data = json!({"statusCode":201,"headers":{"content-type":"text/plain"},"body":"b2s=","isBase64Encoded":true});

    // An operator key and no creator, as the prototype's services send it: any agent online runs it.
    let request = {
        let (hub_url, http, key, body) =
            (hub.url("/jobs?sync=true"), hub.http.clone(), hub.api_key.clone(), body.clone());
        tokio::spawn(async move {
            http.post(hub_url).header("X-API-Key", key).header("X-Request-Id", "svc-42").json(&body).send().await
        })
    };
    let assign = run_next(&mut ws, json!({"status":"ok","data":data})).await;
    assert_eq!(assign["job"]["type"], "http_request");
    assert_eq!(assign["job"]["payload"], body, "the body is the job's payload");
    let response = request.await.expect("task").expect("answer");
    assert_eq!(response.status(), 200);
    let job_header = response.headers()["edge-job-id"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["x-request-id"], "svc-42");
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(keys(&answer), BTreeSet::from(["message", "jobId", "requestId", "result"]), "{answer}");
    assert_eq!((answer["jobId"].as_str(), answer["requestId"].as_str()), (Some(job_header.as_str()), Some("svc-42")));
    assert_eq!(answer["result"], data);
    assert!(!answer["message"].as_str().unwrap().is_empty());
    let job = hub.job(&job_header).await;
    assert_eq!((job["status"].as_str(), job["creatorId"].as_str()), (Some("succeeded"), Some(CREATOR)));
    assert_eq!(job["agentId"], agent.agent_id.as_str());

    // A failed job: 502 with the job's error; without X-Request-Id the hub makes one up.
    let request = {
        let (hub_url, http, key) = (hub.url("/jobs?sync=true"), hub.http.clone(), hub.api_key.clone());
        tokio::spawn(async move {
            http.post(hub_url).bearer_auth(key).json(&json!({"url":"http://127.0.0.1:9/x"})).send().await
        })
    };
    run_next(&mut ws, json!({"status":"error","err":{"code":"LOGIN_REQUIRED","message":"log in"}})).await;
    let response = request.await.expect("task").expect("answer");
    assert_eq!(response.status(), 502);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(
        keys(&answer),
        BTreeSet::from(["error", "message", "jobId", "requestId", "status", "jobError"]),
        "{answer}"
    );
    assert_eq!((answer["error"].as_str(), answer["status"].as_str()), (Some("job_failed"), Some("failed")));
    assert_eq!(answer["jobError"]["code"], "LOGIN_REQUIRED");
    let made_up = answer["requestId"].as_str().unwrap();
    assert!(made_up.starts_with("req_") && made_up.len() == 36, "{made_up}");

    // Not finished in time: 504 with the job id to poll; the job goes on.
    let (status, answer, _) = call(
        &hub,
        "/jobs?sync=true&timeoutMs=300&creatorId=creator-nobody",
        Some(&hub.api_key),
        Some("t-1"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(keys(&answer), BTreeSet::from(["error", "message", "jobId", "requestId", "status"]), "{answer}");
    assert_eq!((answer["error"].as_str(), answer["status"].as_str()), (Some("timeout"), Some("pending")));
    assert!(answer["message"].as_str().unwrap().contains(answer["jobId"].as_str().unwrap()), "{answer}");
    assert_eq!(hub.job(answer["jobId"].as_str().unwrap()).await["status"], "pending");

    // Without sync: 202 and the id to poll.
    let (status, answer, _) = call(&hub, "/jobs", Some(&hub.api_key), None, body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(keys(&answer), BTreeSet::from(["message", "jobId", "requestId"]), "{answer}");
    run_next(&mut ws, json!({"status":"ok","data":data})).await;
    hub.wait_for_job_status(answer["jobId"].as_str().unwrap(), "succeeded").await;
    hub.shutdown().await;
}

#[tokio::test]
async fn the_prototype_route_routes_by_key_and_refuses_bad_requests_by_name() {
    let hub = TestHub::start().await;
    let good = json!({"url":"http://127.0.0.1:9/p"});

    // No agent online and no creator named: nobody could run it.
    let (status, answer, _) = call(&hub, "/jobs?sync=true", Some(&hub.api_key), None, good.clone()).await;
    assert_eq!((status, answer["error"].as_str()), (503, Some("no_agent_online")), "{answer}");
    let (_, jobs) = hub.operator_get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was stored");

    // A creator key's job runs on that creator's agents only, whichever agent is free.
    let (_, mut theirs) = hub.connected_agent("creator-a", 1).await;
    let (_, mut others) = hub.connected_agent("creator-b", 4).await;
    let key_a = hub.creator_key("creator-a").await;
    let (status, answer, _) = call(&hub, "/jobs", Some(&key_a), None, good.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(recv(&mut theirs).await["job"]["jobId"], answer["jobId"]);
    expect_silence(&mut others, Duration::from_millis(200)).await;
    let (status, answer, _) = call(&hub, "/jobs?creatorId=creator-b", Some(&key_a), None, good.clone()).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")), "{answer}");
    // An operator key may name the creator or the agent.
    let (status, answer, _) = call(&hub, "/jobs?creatorId=creator-b", Some(&hub.api_key), None, good.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(recv(&mut others).await["job"]["jobId"], answer["jobId"]);

    let long_id = "x".repeat(129);
    let refusals: Vec<Refusal> = vec![
        ("/jobs", None, None, good.clone(), 401, "unauthorized", "API key"),
        ("/jobs", Some("ehk_not_a_key"), None, good.clone(), 401, "unauthorized", "not known"),
        ("/jobs", Some(&hub.api_key), None, json!({"method":"GET"}), 400, "bad_request", "payload"),
        ("/jobs", Some(&hub.api_key), None, json!({"url":"file:///etc/passwd"}), 400, "bad_request", "payload.url"),
        (
            "/jobs",
            Some(&hub.api_key),
            None,
            json!({"url":"http://127.0.0.1:9/","body":"not base64!"}),
            400,
            "bad_request",
            "payload.body",
        ),
        (
            "/jobs",
            Some(&hub.api_key),
            None,
            json!({"url":"http://127.0.0.1:9/","method":"GE T"}),
            400,
            "bad_request",
            "payload.method",
        ),
        ("/jobs", Some(&hub.api_key), None, json!(["not", "an", "object"]), 400, "bad_request", "payload"),
        // Issue 18: 125 levels reached the agent, which could not read the job.
        (
            "/jobs",
            Some(&hub.api_key),
            None,
            json!({"url":"http://127.0.0.1:9/","headers":nested_json(124)}),
            400,
            "payload_too_deep",
            "nested",
        ),
        ("/jobs", Some(&hub.api_key), Some(&long_id), good.clone(), 400, "bad_request", "X-Request-Id"),
        ("/jobs?sync=maybe", Some(&hub.api_key), None, good.clone(), 400, "bad_request", "sync"),
        ("/jobs?agentId=agt_nobody", Some(&hub.api_key), None, good.clone(), 404, "unknown_agent", "agentId"),
    ];
    for (path, key, request_id, body, status, error, names) in refusals {
        let (got, answer, _) = call(&hub, path, key, request_id, body.clone()).await;
        assert_eq!((got, answer["error"].as_str()), (status, Some(error)), "{path} {body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(names), "{path} {body}: {answer}");
    }
    let (_, jobs) = hub.operator_get("/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "only the two accepted jobs were stored: {jobs}");
    hub.shutdown().await;
}
