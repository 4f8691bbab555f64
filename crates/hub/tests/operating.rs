//! The operating side of the hub over real sockets: `/metrics` after real traffic, the
//! OpenAPI document checked against real answers of every operator endpoint, and the
//! operator page's static files. (The page itself is tested in Chromium by
//! `tests/operator-ui`.)

mod common;
mod schema_check;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

// ---- metrics --------------------------------------------------------------------------------

/// Series → value of a Prometheus text page (comment lines skipped).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(hub: &TestHub) -> (String, HashMap<String, f64>) {
    let response = hub.http.get(hub.url("/metrics")).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("body");
    let values = parse_metrics(&text);
    (text, values)
}

fn value(values: &HashMap<String, f64>, series: &str) -> f64 {
    values.get(series).copied().unwrap_or(0.0)
}

/// Waits for the next `job_assign` and returns (job id, payload url).
async fn next_assignment(ws: &mut Ws) -> (String, String) {
    loop {
        let frame = recv(ws).await;
        if frame["t"] == "job_assign" {
            let job = &frame["job"];
            return (
                job["jobId"].as_str().expect("jobId").to_owned(),
                job["payload"]["url"].as_str().unwrap_or("").to_owned(),
            );
        }
    }
}

#[tokio::test]
async fn metrics_move_with_real_traffic_and_carry_no_ids() {
    let hub = TestHub::start().await;
    let (_, before) = scrape(&hub).await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 4).await;

    // Two successes, one fatal failure, one retryable failure on its last delivery (dead).
    let outcome = |url: &str| match url.rsplit('/').next() {
        Some("fatal") => json!({"status":"error","err":{"code":"LOGIN_REQUIRED"}}),
        Some("dies") => json!({"status":"error","err":{"code":"NETWORK"}}),
        _ => json!({"status":"ok","data":{"statusCode":200}}),
    };
    let mut ids = Vec::new();
    for (tail, receives) in [("ok-1", 5), ("ok-2", 5), ("fatal", 5), ("dies", 1)] {
        let job = hub
            .submit_job(json!({"type":"http_request","creatorId":CREATOR,"maxReceiveCount":receives,
                               "payload":{"url":format!("http://127.0.0.1:9/m/{tail}")}}))
            .await;
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    for _ in 0..4 {
        let (id, url) = next_assignment(&mut ws).await;
        send(&mut ws, json!({"t":"job_ack","id":id})).await;
        let mut result = outcome(&url);
        result["t"] = json!("job_result");
        result["id"] = json!(id);
        send(&mut ws, result).await;
    }
    send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":now_secs()})).await;
    assert_eq!(recv(&mut ws).await["t"], "hb_ack");
    for (id, status) in ids.iter().zip(["succeeded", "succeeded", "failed", "dead"]) {
        hub.wait_for_job_status(id, status).await;
    }
    // A job nobody can take keeps the queue non-empty.
    hub.submit_job(json!({"type":"http_request","creatorId":"creator-without-agents",
                          "payload":{"url":"http://127.0.0.1:9/m/waits"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;

    let (text, after) = scrape(&hub).await;
    let delta = |series: &str| value(&after, series) - value(&before, series);
    // Other tests in this process share the recorder: counters only ever grow, so `>=`.
    assert!(delta("edge_hub_jobs_submitted_total") >= 5.0, "{text}");
    assert!(delta("edge_hub_jobs_assigned_total") >= 4.0, "{text}");
    assert!(delta("edge_hub_jobs_completed_total") >= 2.0, "{text}");
    assert!(delta("edge_hub_jobs_failed_total") >= 1.0, "{text}");
    assert!(delta("edge_hub_jobs_dead_total") >= 1.0, "{text}");
    assert!(delta("edge_hub_agent_heartbeats_total") >= 1.0, "{text}");
    assert!(delta("edge_hub_dispatch_latency_seconds_count") >= 4.0, "{text}");
    assert!(value(&after, "edge_hub_dispatch_latency_seconds_bucket{le=\"+Inf\"}") >= 4.0, "{text}");
    assert!(value(&after, "edge_hub_queue_depth{job_type=\"http_request\"}") >= 1.0, "{text}");
    assert!(value(&after, "edge_hub_queue_oldest_pending_age_seconds{job_type=\"http_request\"}") > 0.0, "{text}");
    assert!(value(&after, "edge_hub_dead_letter_depth{job_type=\"http_request\"}") >= 1.0, "{text}");
    assert!(value(&after, "edge_hub_agents_connected") >= 1.0, "{text}");
    for (name, help) in [("edge_hub_jobs_assigned_total", "counter"), ("edge_hub_queue_depth", "gauge")] {
        assert!(text.contains(&format!("# TYPE {name} {help}")), "{name} has no TYPE line");
    }
    // No unbounded label values: no agent, creator or job ids anywhere on the page.
    assert!(!text.contains(&agent.agent_id), "agent id in metrics");
    assert!(!text.contains(CREATOR) && !text.contains("creator-without-agents"), "creator id in metrics");
    assert!(ids.iter().all(|id| !text.contains(id.as_str())), "job id in metrics");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(labels) = line.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(l, _)| l) {
            for label in labels.split(',') {
                let name = label.split('=').next().unwrap_or("");
                assert!(["job_type", "le", "quantile"].contains(&name), "unexpected label {name} in {line}");
            }
        }
    }
    hub.shutdown().await;
}

// ---- OpenAPI --------------------------------------------------------------------------------

/// Calls the hub and checks the answer against the document; remembers what was covered.
struct Checker<'a> {
    hub: &'a TestHub,
    doc: Value,
    covered: BTreeSet<(String, String, u16)>,
}

impl Checker<'_> {
    async fn call(&mut self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, key, body, &[]).await
    }

    async fn call_with(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method_value = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.hub.http.request(method_value, self.hub.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let route = path.split('?').next().unwrap_or(path);
        let template = schema_check::match_template(&self.doc, route)
            .unwrap_or_else(|| panic!("{method} {route} is not in the OpenAPI document"));
        let lower = method.to_ascii_lowercase();
        let answer = if route == "/metrics" {
            assert!(
                self.doc["paths"][&template][&lower]["responses"][status.to_string()].is_object(),
                "{method} {route} answered {status}, which the document does not list"
            );
            Value::String(text)
        } else {
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {path} ({status}) is not JSON: {text}"));
            let schema = schema_check::response_schema(&self.doc, &lower, &template, status).unwrap_or_else(|| {
                panic!("{method} {template} answered {status}, which the document does not list: {text}")
            });
            let errors = schema_check::validate(&self.doc, schema, &value);
            assert!(
                errors.is_empty(),
                "{method} {path} ({status}) does not match the document:\n{}\n{value:#}",
                errors.join("\n")
            );
            value
        };
        self.covered.insert((lower, template, status));
        (status, answer)
    }
}

#[tokio::test]
async fn every_operator_answer_matches_the_openapi_document() {
    let hub = TestHub::start().await;
    let doc: Value = hub.http.get(hub.url("/v1/openapi.json")).send().await.expect("doc").json().await.expect("JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    assert!(doc["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer");
    let key = hub.api_key.clone();
    let k = Some(key.as_str());
    let other_key = hub.creator_key("creator-other").await;
    let mut c = Checker { hub: &hub, doc, covered: BTreeSet::new() };

    // Operations.
    c.call("GET", "/health", None, None).await;
    c.call("GET", "/metrics", None, None).await;
    c.call("GET", "/v1/openapi.json", None, None).await;

    // Agents: one online with labels, one for the dead-letter part.
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 4).await;
    let (_, agents) = c.call("GET", "/v1/agents", k, None).await;
    assert!(!agents["agents"].as_array().expect("agents").is_empty());
    c.call("GET", "/v1/agents", None, None).await;

    // Submit: created, idempotent repeat, and each refusal.
    let body = |tail: &str| json!({"type":"http_request","creatorId":CREATOR,"payload":{"url":format!("http://127.0.0.1:9/o/{tail}")}});
    let (status, held) = c.call("POST", "/v1/jobs", k, Some(body("held"))).await;
    assert_eq!(status, 201);
    let held_id = held["id"].as_str().expect("id").to_owned();
    let (held_assigned, _) = next_assignment(&mut ws).await;
    assert_eq!(held_assigned, held_id);
    send(&mut ws, json!({"t":"job_ack","id":held_id})).await;
    let (status, _) = c.call_with("POST", "/v1/jobs", k, Some(body("idem")), &[("Idempotency-Key", "idem-1")]).await;
    assert_eq!(status, 201);
    let (idem_id, _) = next_assignment(&mut ws).await;
    send(&mut ws, json!({"t":"job_ack","id":idem_id})).await;
    send(&mut ws, json!({"t":"job_result","id":idem_id,"status":"ok","data":{"statusCode":204}})).await;
    let (status, again) =
        c.call_with("POST", "/v1/jobs", k, Some(body("idem")), &[("Idempotency-Key", "idem-1")]).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(idem_id.as_str())));
    assert_eq!(
        c.call(
            "POST",
            "/v1/jobs",
            k,
            Some(json!({"type":"http_request","creatorId":CREATOR,"payload":{"url":"ftp://x"}}))
        )
        .await
        .0,
        400
    );
    assert_eq!(c.call("POST", "/v1/jobs", None, Some(body("x"))).await.0, 401);
    assert_eq!(c.call("POST", "/v1/jobs", Some(&other_key), Some(body("x"))).await.0, 403);
    assert_eq!(
        c.call(
            "POST",
            "/v1/jobs",
            k,
            Some(json!({"type":"http_request","agentId":"agt_nobody","payload":{"url":"http://127.0.0.1:9/"}}))
        )
        .await
        .0,
        404
    );
    let huge = "x".repeat(1_100_000);
    assert_eq!(
        c.call(
            "POST",
            "/v1/jobs",
            k,
            Some(json!({"type":"http_request","creatorId":CREATOR,"payload":{"url":"http://127.0.0.1:9/","pad":huge}}))
        )
        .await
        .0,
        413
    );
    // Synchronous mode: a job nobody takes times out (504); a failing one is 502.
    let nobody =
        json!({"type":"http_request","creatorId":"creator-nobody","payload":{"url":"http://127.0.0.1:9/o/sync"}});
    assert_eq!(c.call("POST", "/v1/jobs?sync=true&timeoutMs=200", k, Some(nobody)).await.0, 504);
    let sync_fail = {
        let hub_url = hub.url("/v1/jobs?sync=true&timeoutMs=5000");
        let http = hub.http.clone();
        let key = key.clone();
        tokio::spawn(async move {
            http.post(hub_url).bearer_auth(key).json(&body("sync-fail")).send().await.expect("sync submit")
        })
    };
    let (sync_id, _) = next_assignment(&mut ws).await;
    send(&mut ws, json!({"t":"job_ack","id":sync_id})).await;
    send(&mut ws, json!({"t":"job_result","id":sync_id,"status":"error","err":{"code":"LOGIN_REQUIRED"}})).await;
    let response = sync_fail.await.expect("sync task");
    assert_eq!(response.status(), 502);
    let sync_body: Value = response.json().await.expect("JSON");
    let schema = schema_check::response_schema(&c.doc, "post", "/v1/jobs", 502).expect("502 documented");
    assert!(schema_check::validate(&c.doc, schema, &sync_body).is_empty(), "{sync_body}");
    c.covered.insert(("post".into(), "/v1/jobs".into(), 502));

    // The prototype's route: queued (202, with either key header), completed (200), timed
    // out (504), refused (400, 401).
    let proxied = json!({"url":"http://127.0.0.1:9/o/proto","method":"GET","headers":{},"body":"aGk="});
    assert_eq!(c.call("POST", "/jobs", k, Some(proxied.clone())).await.0, 202);
    let (queued_id, _) = next_assignment(&mut ws).await;
    send(&mut ws, json!({"t":"job_result","id":queued_id,"status":"ok","data":{"statusCode":200}})).await;
    assert_eq!(c.call_with("POST", "/jobs", None, Some(proxied.clone()), &[("X-API-Key", &key)]).await.0, 202);
    let (queued_id, _) = next_assignment(&mut ws).await;
    send(&mut ws, json!({"t":"job_result","id":queued_id,"status":"ok","data":{"statusCode":200}})).await;
    let proto_sync = {
        let (hub_url, http, key, body) = (hub.url("/jobs?sync=true"), hub.http.clone(), key.clone(), proxied.clone());
        tokio::spawn(async move { http.post(hub_url).header("X-API-Key", key).json(&body).send().await.expect("sync") })
    };
    let (proto_id, _) = next_assignment(&mut ws).await;
    let data = json!({"statusCode":200,"headers":{"a":"b"},"body":"aGk=","isBase64Encoded":true});
    send(&mut ws, json!({"t":"job_result","id":proto_id,"status":"ok","data":data})).await;
    let response = proto_sync.await.expect("sync task");
    assert_eq!(response.status(), 200);
    let proto_body: Value = response.json().await.expect("JSON");
    let schema = schema_check::response_schema(&c.doc, "post", "/jobs", 200).expect("200 documented");
    let errors = schema_check::validate(&c.doc, schema, &proto_body);
    assert!(errors.is_empty(), "{errors:?}: {proto_body}");
    c.covered.insert(("post".into(), "/jobs".into(), 200));
    let nobody_proxied = "/jobs?sync=true&timeoutMs=200&creatorId=creator-nobody";
    assert_eq!(c.call("POST", nobody_proxied, k, Some(proxied.clone())).await.0, 504);
    assert_eq!(c.call("POST", "/jobs", k, Some(json!({"url":"ftp://x"}))).await.0, 400);
    assert_eq!(c.call("POST", "/jobs", None, Some(proxied)).await.0, 401);

    // Read, list, attempts.
    assert_eq!(c.call("GET", &format!("/v1/jobs/{held_id}"), k, None).await.0, 200);
    assert_eq!(c.call("GET", "/v1/jobs/job_missing", k, None).await.0, 404);
    let (_, page) = c.call("GET", "/v1/jobs?limit=2", k, None).await;
    assert!(page["nextBefore"].is_string(), "{page}");
    assert_eq!(c.call("GET", "/v1/jobs?status=bogus", k, None).await.0, 400);
    assert_eq!(c.call("GET", "/v1/jobs", None, None).await.0, 401);
    assert_eq!(c.call("GET", &format!("/v1/jobs?creatorId={CREATOR}"), Some(&other_key), None).await.0, 403);
    assert_eq!(c.call("GET", &format!("/v1/jobs/{idem_id}/attempts"), k, None).await.0, 200);
    assert_eq!(c.call("GET", "/v1/jobs/job_missing/attempts", k, None).await.0, 404);

    // Cancel: held (202), pending (200), final (409), missing (404).
    assert_eq!(c.call("POST", &format!("/v1/jobs/{held_id}/cancel"), k, None).await.0, 202);
    let (_, pending) = c
        .call(
            "POST",
            "/v1/jobs",
            k,
            Some(
                json!({"type":"http_request","creatorId":"creator-nobody","payload":{"url":"http://127.0.0.1:9/o/p"}}),
            ),
        )
        .await;
    let pending_id = pending["id"].as_str().expect("id").to_owned();
    assert_eq!(c.call("POST", &format!("/v1/jobs/{pending_id}/cancel"), k, None).await.0, 200);
    assert_eq!(c.call("POST", &format!("/v1/jobs/{idem_id}/cancel"), k, None).await.0, 409);
    assert_eq!(c.call("POST", "/v1/jobs/job_missing/cancel", k, None).await.0, 404);

    // Batch submit: per-entry outcomes (a good and a refused entry), and a refused batch.
    let entries = json!({"jobs": [
        {"type":"http_request","creatorId":"creator-nobody","payload":{"url":"http://127.0.0.1:9/o/b1"}},
        {"type":"http_request","creatorId":"creator-nobody","payload":{"url":"ftp://nowhere"}},
    ]});
    let (status, batch) = c.call("POST", "/v1/jobs/batch", k, Some(entries)).await;
    assert_eq!((status, batch["created"].as_u64(), batch["failed"].as_u64()), (200, Some(1), Some(1)), "{batch}");
    assert_eq!(c.call("POST", "/v1/jobs/batch", k, Some(json!({"jobs": []}))).await.0, 400);
    assert_eq!(c.call("POST", "/v1/jobs/batch", None, Some(json!({"jobs": []}))).await.0, 401);

    // Dead letter: three jobs of a second creator die; its agent leaves, so redriven jobs wait.
    let (_dead_agent, mut dead_ws) = hub.connected_agent("creator-dead", 4).await;
    for n in 0..3 {
        c.call(
            "POST",
            "/v1/jobs",
            k,
            Some(json!({"type":"http_request","creatorId":"creator-dead","maxReceiveCount":1,
                                                     "payload":{"url":format!("http://127.0.0.1:9/o/dead/{n}")}})),
        )
        .await;
        let (id, _) = next_assignment(&mut dead_ws).await;
        send(&mut dead_ws, json!({"t":"job_ack","id":id})).await;
        send(&mut dead_ws, json!({"t":"job_result","id":id,"status":"error","err":{"code":"NETWORK"}})).await;
        hub.wait_for_job_status(&id, "dead").await;
    }
    drop(dead_ws);
    let (_, dead) = c.call("GET", "/v1/dead-letter?creatorId=creator-dead", k, None).await;
    assert_eq!(dead["jobs"].as_array().map(Vec::len), Some(3), "{dead}");
    assert_eq!(c.call("GET", "/v1/dead-letter?limit=0", k, None).await.0, 400);
    assert_eq!(c.call("POST", "/v1/dead-letter/redrive", k, Some(json!({"ratePerSecond":0}))).await.0, 400);
    let (status, redrive) =
        c.call("POST", "/v1/dead-letter/redrive", k, Some(json!({"creatorId":"creator-dead","ratePerSecond":1}))).await;
    assert_eq!(status, 202, "{redrive}");
    let redrive_id = redrive["id"].as_str().expect("id").to_owned();
    // At one job a second the first step moves one job, and the other two need two more
    // seconds, so the move is still running when the next request comes: a second move
    // over the same queue is refused.
    assert_eq!((redrive["status"].as_str(), redrive["total"].as_i64()), (Some("running"), Some(3)), "{redrive}");
    assert!(redrive["moved"].as_i64().is_some_and(|moved| moved < 3), "{redrive}");
    let (status, busy) = c.call("POST", "/v1/dead-letter/redrive", k, Some(json!({"creatorId":"creator-dead"}))).await;
    assert_eq!((status, busy["error"].as_str()), (409, Some("redrive_running")), "{busy}");
    assert_eq!(c.call("GET", &format!("/v1/dead-letter/redrives/{redrive_id}"), k, None).await.0, 200);
    // And it ends: every dead job moved, the move completed.
    let mut progress = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while progress["status"] != "completed" {
        assert!(tokio::time::Instant::now() < deadline, "the redrive never completed: {progress}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress = c.call("GET", &format!("/v1/dead-letter/redrives/{redrive_id}"), k, None).await.1;
    }
    assert_eq!(progress["moved"], 3, "{progress}");
    assert_eq!(c.call("GET", "/v1/dead-letter/redrives/rdr_missing", k, None).await.0, 404);

    // Creator limits.
    assert_eq!(c.call("GET", &format!("/v1/creators/{CREATOR}/limits"), k, None).await.0, 200);
    let limits = json!({"maxConcurrentJobs":3,"maxJobsPerHour":{"http_request":100}});
    assert_eq!(c.call("PUT", &format!("/v1/creators/{CREATOR}/limits"), k, Some(limits.clone())).await.0, 200);
    assert_eq!(
        c.call("PUT", &format!("/v1/creators/{CREATOR}/limits"), k, Some(json!({"maxConcurrentJobs":-1}))).await.0,
        400
    );
    assert_eq!(c.call("PUT", "/v1/creators/creator-other/limits", Some(&other_key), Some(limits)).await.0, 403);
    assert_eq!(c.call("GET", &format!("/v1/creators/{CREATOR}/limits"), Some(&other_key), None).await.0, 404);
    // The ledger's uncertain entries (issue 18).
    let path = format!("/v1/creators/{CREATOR}/uncertain-recipients");
    assert_eq!(c.call("GET", &path, k, None).await.0, 200);
    assert_eq!(c.call("GET", &format!("{path}?limit=0"), k, None).await.0, 400);
    assert_eq!(c.call("GET", &path, Some(&other_key), None).await.0, 404);

    // Every documented operation was exercised with a success.
    let documented: BTreeSet<(String, String)> = c.doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| ops.as_object().into_iter().flatten().map(move |(m, _)| (m.clone(), path.clone())))
        .filter(|(method, _)| ["get", "post", "put", "delete", "patch"].contains(&method.as_str()))
        .collect();
    let succeeded: BTreeSet<(String, String)> =
        c.covered.iter().filter(|(_, _, s)| (200..300).contains(s)).map(|(m, p, _)| (m.clone(), p.clone())).collect();
    let missing: Vec<_> = documented.difference(&succeeded).collect();
    assert!(missing.is_empty(), "documented but never answered successfully: {missing:?}");
    eprintln!("{} (operation, status) pairs checked against the document", c.covered.len());
    hub.shutdown().await;
}

// ---- the operator page's files ------------------------------------------------------------

#[tokio::test]
async fn operator_page_is_served_with_a_strict_policy() {
    let hub = TestHub::start().await;
    let client = http_client_builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let root = client.get(hub.url("/")).send().await.expect("root");
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/ui/");
    for (path, kind, needle) in [
        ("/ui/", "text/html", "Edge-Agent hub"),
        ("/ui/app.js", "text/javascript", "sessionStorage"),
        ("/ui/app.css", "text/css", "--accent"),
    ] {
        let response = client.get(hub.url(path)).send().await.expect("file");
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with(kind), "{path}");
        let csp = response.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
        assert!(csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(response.text().await.expect("body").contains(needle), "{path}");
    }
    hub.shutdown().await;
}
