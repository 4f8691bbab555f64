//! Several hub processes on one PostgreSQL schema, in one test process: work submitted to
//! one instance reaches an agent connected to another (LISTEN/NOTIFY), no job is leased
//! twice at once, cancels and sync waits cross instances, and the leases of an instance that
//! dies come back after the visibility timeout. (Process-level kill tests live in
//! tests/e2e.) Skipped like the conformance suite's PostgreSQL half when no PostgreSQL
//! answers, and failing instead when `EDGE_TEST_POSTGRES_URL` or `CI` is set.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn id(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_owned()
}

async fn three_hubs(tweak: impl FnOnce(&mut edge_hub::HubConfig)) -> Option<(TestHub, TestHub, TestHub)> {
    let db = TestDb::postgres().await?;
    let a = TestHub::start_on(db, |config| {
        // A long poll: delivery across instances must come from the notification.
        config.queue.poll_interval = Duration::from_secs(30);
        tweak(config);
    })
    .await;
    let b = a.sibling().await;
    let c = a.sibling().await;
    Some((a, b, c))
}

async fn next_assign(ws: &mut Ws) -> String {
    loop {
        let frame = recv(ws).await;
        if frame["t"] == "job_assign" {
            return frame["job"]["jobId"].as_str().expect("jobId").to_owned();
        }
    }
}

#[tokio::test]
async fn three_instances_share_one_queue_without_double_leases() {
    let Some((a, b, c)) = three_hubs(|_| {}).await else { return };
    let (_on_b, mut b_ws) = b.connected_agent(CREATOR, 4).await;

    // Submitted to A, delivered by B within a notification's time. The ceiling is the
    // behaviour (the notification, not B's 30 s poll, brought the job); a third of the poll
    // interval tells the two apart with room for a loaded machine.
    let started = std::time::Instant::now();
    let job = a.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR})).await;
    let delivered = tokio::time::timeout(Duration::from_secs(10), next_assign(&mut b_ws))
        .await
        .unwrap_or_else(|_| panic!("not delivered through the notification within 10 s"));
    assert_eq!(delivered, id(&job));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    send(&mut b_ws, json!({"t":"job_result","id":id(&job),"status":"ok"})).await;
    a.wait_for_job_status(&id(&job), "succeeded").await;

    // Two agents on two other instances race for 40 jobs submitted to A.
    let (_on_c, mut c_ws) = c.connected_agent(CREATOR, 4).await;
    let submitted: HashSet<String> = futures_util::future::join_all(
        (0..40).map(|i| a.submit_job(json!({"type":CUSTOM,"payload":{"i":i},"creatorId":CREATOR}))),
    )
    .await
    .iter()
    .map(id)
    .collect();
    let mut received: HashMap<String, u32> = HashMap::new();
    while received.len() < submitted.len() {
        tokio::select! {
            frame = recv(&mut b_ws) => if frame["t"] == "job_assign" {
                let job_id = frame["job"]["jobId"].as_str().unwrap().to_owned();
                *received.entry(job_id.clone()).or_default() += 1;
                send(&mut b_ws, json!({"t":"job_result","id":job_id,"status":"ok","data":{"by":"b"}})).await;
            },
            frame = recv(&mut c_ws) => if frame["t"] == "job_assign" {
                let job_id = frame["job"]["jobId"].as_str().unwrap().to_owned();
                *received.entry(job_id.clone()).or_default() += 1;
                send(&mut c_ws, json!({"t":"job_result","id":job_id,"status":"ok","data":{"by":"c"}})).await;
            },
        }
    }
    assert!(received.values().all(|n| *n == 1), "a job was delivered twice: {received:?}");
    assert_eq!(received.keys().cloned().collect::<HashSet<_>>(), submitted);
    for job_id in &submitted {
        a.wait_for_job_status(job_id, "succeeded").await;
        let (_, history) = a.operator_get(&format!("/v1/jobs/{job_id}/attempts")).await;
        assert_eq!(history["attempts"].as_array().unwrap().len(), 1, "one lease per job: {history}");
    }
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn cancel_and_sync_cross_instances() {
    let Some((a, b, c)) = three_hubs(|_| {}).await else { return };
    let (_agent, mut b_ws) = b.connected_agent(CREATOR, 2).await;

    // Sync on A, answered by the agent on B.
    let request = a
        .http
        .post(a.url("/v1/jobs?sync=true&timeoutMs=5000"))
        .bearer_auth(&a.api_key)
        .json(&json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR}))
        .send();
    let agent = async {
        let job_id = next_assign(&mut b_ws).await;
        send(&mut b_ws, json!({"t":"job_result","id":job_id,"status":"ok","data":{"answer":42}})).await;
    };
    let (response, ()) = tokio::join!(request, agent);
    let response = response.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"answer":42}));

    // Cancel through C reaches the agent on B.
    let job = a.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR})).await;
    assert_eq!(next_assign(&mut b_ws).await, id(&job));
    let (status, _) = c.operator_post(&format!("/v1/jobs/{}/cancel", id(&job)), json!({})).await;
    assert_eq!(status, 202);
    let frame = recv(&mut b_ws).await;
    assert_eq!((frame["t"].as_str(), frame["id"].as_str()), (Some("job_cancel"), Some(id(&job).as_str())));
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_dead_instances_leases_come_back_after_the_visibility_timeout() {
    let Some((a, b, c)) = three_hubs(|config| {
        config.queue.visibility_timeout = Duration::from_millis(1500);
    })
    .await
    else {
        return;
    };
    let agent = c.enroll(CREATOR).await;
    let mut on_c = c.hello(&agent, json!({"slots":1})).await;
    let job = a.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR})).await;
    assert_eq!(next_assign(&mut on_c).await, id(&job));
    send(&mut on_c, json!({"t":"job_ack","id":id(&job)})).await;
    a.wait_for_job_status(&id(&job), "running").await;

    // C dies: nothing is released, the lease stays until it runs out.
    c.crash().await;
    // A dying process may or may not get a close frame out; either way the socket ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt as _;
        while let Some(Ok(message)) = on_c.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the dead instance's socket must end");

    // The agent reconnects to B and gets the job back as delivery 2 once the lease expires.
    let mut on_b = b.hello(&agent, json!({"slots":1})).await;
    assert_eq!(next_assign(&mut on_b).await, id(&job));
    let again = a.job(&id(&job)).await;
    assert_eq!(again["attempts"], 2, "{again}");
    // The crash released nothing: the first lease ended by expiring, a whole visibility
    // timeout after it began (the hub's own timestamps, so a slow machine cannot fake it).
    let (_, history) = a.operator_get(&format!("/v1/jobs/{}/attempts", id(&job))).await;
    let first = &history["attempts"][0];
    assert_eq!(first["outcome"], "expired", "{history}");
    let held_ms = unix_ms(&first["endedAt"]) - unix_ms(&first["leasedAt"]);
    assert!(held_ms >= 1500, "the lease ended {held_ms} ms after it began: {history}");
    send(&mut on_b, json!({"t":"job_result","id":id(&job),"status":"ok"})).await;
    a.wait_for_job_status(&id(&job), "succeeded").await;
    b.shutdown().await;
    a.shutdown().await;
}
