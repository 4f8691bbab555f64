//! The queue conformance suite: every behaviour here runs against SQLite and against
//! PostgreSQL (each test on its own schema), through the real hub over real sockets.
//! `conformance!` instantiates each test once per engine; the PostgreSQL half is skipped
//! with a printed reason when no PostgreSQL answers, and fails instead when
//! `EDGE_TEST_POSTGRES_URL` (`cargo xtask test` sets it) or `CI` is set.

#[macro_use]
mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

both_engines!(
    expired_lease_redelivers_and_the_late_result_is_stale,
    heartbeats_and_progress_extend_the_lease,
    a_new_hello_lets_the_leases_the_agent_no_longer_claims_run_out,
    retryable_errors_back_off_then_the_job_dies,
    fatal_errors_fail_at_once_and_retry_after_is_honoured,
    redrive_moves_dead_jobs_back_rate_limited_one_per_queue,
    a_creator_key_redrives_only_its_own_dead_jobs,
    one_creators_redrive_does_not_block_another_creators,
    redrive_moves_at_most_rate_per_second_over_time,
    idempotency_key_returns_the_same_job,
    priority_and_run_at_order_delivery,
    cancel_pending_and_held_jobs,
    creator_limits_make_jobs_wait,
    dedupe_ledger_skips_recently_messaged_recipients,
    uncertain_recipients_are_listed_not_blocked_and_not_resent,
    a_send_dm_of_unknown_outcome_is_not_retried_and_is_listed_uncertain,
    creator_keys_cannot_reach_other_creators,
    routing_by_agent_labels_and_capabilities,
    sync_submit_returns_the_result_or_504,
    bad_input_names_the_field_and_writes_nothing,
    retention_purges_finished_jobs_only,
    batch_submit_answers_per_entry_and_agents_share_the_burst,
    a_batch_of_reports_applies_each_under_its_own_lease,
    one_group_writes_submissions_acks_reports_and_claims_in_order_or_nothing,
    a_new_job_is_answered_as_it_was_stored,
    a_leased_job_is_answered_as_it_was_stored,
    a_prototype_agents_circuit_breaker_withholds_browser_jobs_only,
    a_claim_never_leases_an_excluded_job_type,
    tunnel_routes_are_replaced_removed_only_by_their_writer_and_go_stale,
);

fn id(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_owned()
}

fn custom(creator: &str) -> Value {
    json!({"type": CUSTOM, "payload": {}, "creatorId": creator})
}

async fn next_assign(ws: &mut Ws) -> String {
    loop {
        let frame = recv(ws).await;
        if frame["t"] == "job_assign" {
            return frame["job"]["jobId"].as_str().expect("jobId").to_owned();
        }
    }
}

async fn attempts(hub: &TestHub, job_id: &str) -> Vec<Value> {
    let (status, body) = hub.operator_get(&format!("/v1/jobs/{job_id}/attempts")).await;
    assert_eq!(status, 200, "{body}");
    body["attempts"].as_array().expect("attempts").clone()
}

fn short_lease(config: &mut edge_hub::HubConfig) {
    config.queue.visibility_timeout = Duration::from_millis(800);
}

async fn expired_lease_redelivers_and_the_late_result_is_stale(db: TestDb) {
    let hub = TestHub::start_on(db, short_lease).await;
    let (first, mut first_ws) = hub.connected_agent(CREATOR, 1).await;
    let job = hub.submit_job(custom(CREATOR)).await;
    assert_eq!(next_assign(&mut first_ws).await, id(&job));
    send(&mut first_ws, json!({"t":"job_ack","id":id(&job)})).await;
    hub.wait_for_job_status(&id(&job), "running").await;

    // The first agent goes quiet (no heartbeat): the lease runs out and a second agent
    // gets the job as delivery 2.
    let (second, mut second_ws) = hub.connected_agent(CREATOR, 1).await;
    assert_eq!(next_assign(&mut second_ws).await, id(&job));
    let leased = hub.job(&id(&job)).await;
    assert_eq!((leased["attempts"].as_i64(), leased["agentId"].as_str()), (Some(2), Some(second.agent_id.as_str())));

    send(&mut second_ws, json!({"t":"job_result","id":id(&job),"status":"ok","data":{"by":"second"}})).await;
    let done = hub.wait_for_job_status(&id(&job), "succeeded").await;
    assert_eq!(done["result"], json!({"by":"second"}));

    // The first agent's late result is kept as stale and changes nothing, twice over.
    for _ in 0..2 {
        send(&mut first_ws, json!({"t":"job_result","id":id(&job),"status":"ok","data":{"by":"first"}})).await;
    }
    // A duplicate of the winning result is idempotent too.
    send(&mut second_ws, json!({"t":"job_result","id":id(&job),"status":"ok","data":{"by":"second"}})).await;
    let history = wait_until(Duration::from_secs(15), "the stale result in the history", || async {
        let history = attempts(&hub, &id(&job)).await;
        history.iter().any(|a| a["outcome"] == "stale").then_some(history)
    })
    .await;
    let outcomes: Vec<&str> = history.iter().map(|a| a["outcome"].as_str().unwrap_or("held")).collect();
    assert_eq!(outcomes, ["expired", "succeeded", "stale"], "{history:?}");
    assert_eq!(history[0]["agentId"], first.agent_id.as_str());
    assert_eq!(history[2]["result"], json!({"by":"first"}));
    assert_eq!(history[0]["leaseToken"], history[2]["leaseToken"], "the stale result belongs to lease 1");
    assert_eq!(hub.job(&id(&job)).await["result"], json!({"by":"second"}));
    hub.shutdown().await;
}

/// An agent killed while it runs a job comes back as a new process with the same agent id:
/// its heartbeats used to keep that job's lease alive for ever, though nothing ran it. Its
/// `hello` now lists the jobs it still runs; the others go back to the queue at once. A
/// `hello` without the list (an older agent) releases nothing.
async fn a_new_hello_lets_the_leases_the_agent_no_longer_claims_run_out(db: TestDb) {
    let hub = TestHub::start_on(db, |config| config.queue.visibility_timeout = Duration::from_secs(600)).await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 3).await;
    let kept = hub.submit_job(custom(CREATOR)).await;
    let lost = hub.submit_job(custom(CREATOR)).await;
    for _ in 0..2 {
        next_assign(&mut ws).await;
    }
    for job in [&kept, &lost] {
        send(&mut ws, json!({"t":"job_ack","id":id(job)})).await;
        hub.wait_for_job_status(&id(job), "running").await;
    }
    drop(ws);

    // An older agent's hello: both leases stay (they run out only after the visibility timeout).
    // The hub releases unclaimed leases before it answers hello_ack, and `hello` returns on
    // the ack: had this hello released anything, it would show now (no wait needed).
    let ws = hub.hello(&agent, json!({"slots": 3})).await;
    assert_eq!(hub.job(&id(&lost)).await["status"], "running");
    assert!(attempts(&hub, &id(&lost)).await.iter().all(|a| a["outcome"] != "expired"), "nothing released");
    drop(ws);

    // The restarted agent says it still runs `kept` only.
    let mut ws = hub.hello(&agent, json!({"slots": 3, "protocol": 2, "running": [id(&kept)]})).await;
    wait_until(Duration::from_secs(10), "the unclaimed job to be offered again", || async {
        (attempts(&hub, &id(&lost)).await.iter().any(|a| a["outcome"] == "expired")).then_some(())
    })
    .await;
    assert_eq!(hub.job(&id(&kept)).await["status"], "running", "the claimed job keeps its lease");
    // And the released job is delivered again (to this agent, the only one).
    assert_eq!(next_assign(&mut ws).await, id(&lost));
    hub.shutdown().await;
}

async fn heartbeats_and_progress_extend_the_lease(db: TestDb) {
    // Longer than `short_lease`: a loaded machine may stall a round for a while, and the
    // point is that each round extends the lease, not how fast the rounds come.
    const VISIBILITY: Duration = Duration::from_secs(2);
    let hub = TestHub::start_on(db, |config| config.queue.visibility_timeout = VISIBILITY).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 3).await;
    let by_hb = hub.submit_job(custom(CREATOR)).await;
    let by_progress = hub.submit_job(custom(CREATOR)).await;
    // An agent that cannot read a job never acks it: heartbeats and progress must not keep
    // it (issue 18: the lease of a 125-deep payload was extended for ever).
    let never_acked = hub.submit_job(custom(CREATOR)).await;
    for _ in 0..3 {
        next_assign(&mut ws).await;
    }
    send(&mut ws, json!({"t":"job_ack","id":id(&by_hb)})).await;
    send(&mut ws, json!({"t":"job_ack","id":id(&by_progress)})).await;
    hub.wait_for_job_status(&id(&by_hb), "running").await;
    hub.wait_for_job_status(&id(&by_progress), "running").await;
    // Three visibility timeouts of heartbeats: the leases hold. Each round waits until the
    // hub has moved both expiries on (the event), rather than for a fixed time.
    let lease_ends = || async {
        (
            hub.job(&id(&by_hb)).await["leaseExpiresAt"].clone(),
            hub.job(&id(&by_progress)).await["leaseExpiresAt"].clone(),
        )
    };
    let expired = |history: &[Value]| history.iter().any(|a| a["outcome"] == "expired");
    let holding_since = std::time::Instant::now();
    let mut i = 0;
    let mut never_acked_expired = false;
    while holding_since.elapsed() < 3 * VISIBILITY {
        let (hb_before, progress_before) = lease_ends().await;
        send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":i})).await;
        send(&mut ws, json!({"t":"job_progress","id":id(&by_progress),"pct":i*10})).await;
        send(&mut ws, json!({"t":"job_progress","id":id(&never_acked),"pct":i*10})).await;
        wait_until(Duration::from_secs(10), "hb and job_progress to extend the leases", || async {
            let (hb_after, progress_after) = lease_ends().await;
            (hb_after != hb_before && progress_after != progress_before).then_some(())
        })
        .await;
        never_acked_expired = never_acked_expired || expired(&attempts(&hub, &id(&never_acked)).await);
        i += 1;
        // Paces the rounds (a few per visibility timeout); what is checked is the extension.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(hub.job(&id(&by_hb)).await["status"], "running");
    assert_eq!(hub.job(&id(&by_progress)).await["status"], "running");
    assert!(!expired(&attempts(&hub, &id(&by_hb)).await) && !expired(&attempts(&hub, &id(&by_progress)).await));
    assert!(
        never_acked_expired || expired(&attempts(&hub, &id(&never_acked)).await),
        "heartbeats and progress kept the lease of a job that was never acknowledged: {:?}",
        attempts(&hub, &id(&never_acked)).await
    );
    // Progress for a job it does not hold is refused.
    send(&mut ws, json!({"t":"job_progress","id":"job_nope","pct":1})).await;
    loop {
        let frame = recv(&mut ws).await;
        if frame["t"] == "error" && frame["message"].as_str().is_some_and(|m| m.contains("job_nope")) {
            assert_eq!(frame["code"], "NOT_YOUR_JOB");
            break;
        }
    }
    // Silence: both leases expire and the jobs are pending again.
    hub.wait_for_job_status(&id(&by_hb), "pending").await;
    hub.wait_for_job_status(&id(&by_progress), "pending").await;
    hub.shutdown().await;
}

async fn retryable_errors_back_off_then_the_job_dies(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let job = hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"maxReceiveCount":3})).await;
    let codes = ["NETWORK", "NAV_TIMEOUT", "RATE_LIMITED"];
    for code in codes {
        assert_eq!(next_assign(&mut ws).await, id(&job));
        send(&mut ws, json!({"t":"job_result","id":id(&job),"status":"error","err":{"code":code}})).await;
    }
    let dead = hub.wait_for_job_status(&id(&job), "dead").await;
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["error"]["code"], "RATE_LIMITED");
    let outcomes: Vec<Value> = attempts(&hub, &id(&job)).await.iter().map(|a| a["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("retry"), json!("retry"), json!("dead")]);
    let (_, list) = hub.operator_get("/v1/dead-letter").await;
    assert_eq!(list["jobs"][0]["id"], dead["id"]);
    hub.shutdown().await;
}

async fn fatal_errors_fail_at_once_and_retry_after_is_honoured(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    for code in ["LOGIN_REQUIRED", "CONTENT_BLOCKED", "POLICY_VIOLATION"] {
        let job = hub.submit_job(custom(CREATOR)).await;
        assert_eq!(next_assign(&mut ws).await, id(&job));
        send(&mut ws, json!({"t":"job_result","id":id(&job),"status":"error","err":{"code":code}})).await;
        let failed = hub.wait_for_job_status(&id(&job), "failed").await;
        assert_eq!((failed["attempts"].as_i64(), failed["error"]["code"].as_str()), (Some(1), Some(code)));
    }
    let job = hub.submit_job(custom(CREATOR)).await;
    assert_eq!(next_assign(&mut ws).await, id(&job));
    let sent_at = std::time::Instant::now();
    send(
        &mut ws,
        json!({"t":"job_result","id":id(&job),"status":"error","err":{"code":"RATE_LIMITED","retryAfterMs":700}}),
    )
    .await;
    assert_eq!(next_assign(&mut ws).await, id(&job));
    // A floor, not a ceiling: a loaded machine can only make the redelivery later.
    assert!(sent_at.elapsed() >= Duration::from_millis(650), "retryAfterMs is honoured: {:?}", sent_at.elapsed());
    hub.shutdown().await;
}

async fn make_dead_jobs(hub: &TestHub, ws: &mut Ws, count: usize, code: &str) -> Vec<String> {
    make_dead_jobs_of(hub, ws, CREATOR, count, code).await
}

/// `count` jobs of `creator` that die on their one delivery to the agent on `ws`.
async fn make_dead_jobs_of(hub: &TestHub, ws: &mut Ws, creator: &str, count: usize, code: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let job = hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":creator,"maxReceiveCount":1})).await;
        assert_eq!(next_assign(ws).await, id(&job));
        send(ws, json!({"t":"job_result","id":id(&job),"status":"error","err":{"code":code}})).await;
        hub.wait_for_job_status(&id(&job), "dead").await;
        ids.push(id(&job));
    }
    ids
}

async fn redrive_moves_dead_jobs_back_rate_limited_one_per_queue(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let network = make_dead_jobs(&hub, &mut ws, 3, "NETWORK").await;
    let timeout = make_dead_jobs(&hub, &mut ws, 1, "NAV_TIMEOUT").await;
    // Nobody takes the redriven jobs while we watch them.
    send(&mut ws, json!({"t":"availability","paused":true,"slots":1})).await;
    send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":1})).await;
    while recv(&mut ws).await["t"] != "hb_ack" {}

    let (status, started) = hub
        .operator_post("/v1/dead-letter/redrive", json!({"type":CUSTOM,"errorCode":"NETWORK","ratePerSecond":2}))
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!((started["total"].as_i64(), started["moved"].as_i64()), (Some(3), Some(2)), "{started}");
    assert_eq!(started["status"], "running");
    let (status, busy) = hub.operator_post("/v1/dead-letter/redrive", json!({})).await;
    assert_eq!((status, busy["error"].as_str()), (409, Some("redrive_running")), "{busy}");

    let redrive_id = started["id"].as_str().unwrap().to_owned();
    let progress = wait_until(Duration::from_secs(30), "the redrive to complete", || async {
        let progress = hub.operator_get(&format!("/v1/dead-letter/redrives/{redrive_id}")).await.1;
        (progress["status"] == "completed").then_some(progress)
    })
    .await;
    assert_eq!((progress["status"].as_str(), progress["moved"].as_i64()), (Some("completed"), Some(3)), "{progress}");
    for job_id in &network {
        let job = hub.job(job_id).await;
        assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("pending"), Some(0)), "{job}");
    }
    assert_eq!(hub.job(&timeout[0]).await["status"], "dead", "the filter left other codes alone");
    let (_, dead) = hub.operator_get("/v1/dead-letter").await;
    assert_eq!(dead["jobs"].as_array().unwrap().len(), 1);

    // The redriven jobs run again once the agent resumes.
    send(&mut ws, json!({"t":"availability","paused":false,"slots":1})).await;
    let again = next_assign(&mut ws).await;
    assert!(network.contains(&again));
    assert_eq!(hub.job(&again).await["agentId"], agent.agent_id.as_str());
    hub.shutdown().await;
}

/// Pauses the agent on `ws` (so redriven jobs stay pending while the test looks at them) and
/// returns once the hub has handled it.
async fn pause(ws: &mut Ws) {
    send(ws, json!({"t":"availability","paused":true,"slots":1})).await;
    send(ws, json!({"t":"hb","v":"agent-0.1.0","ts":1})).await;
    while recv(ws).await["t"] != "hb_ack" {}
}

async fn a_creator_key_redrives_only_its_own_dead_jobs(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_mine, mut my_ws) = hub.connected_agent(CREATOR, 1).await;
    let (_theirs, mut their_ws) = hub.connected_agent("creator-2", 1).await;
    let my_dead = make_dead_jobs_of(&hub, &mut my_ws, CREATOR, 2, "NETWORK").await;
    let their_dead = make_dead_jobs_of(&hub, &mut their_ws, "creator-2", 2, "NETWORK").await;
    pause(&mut my_ws).await;
    pause(&mut their_ws).await;
    let key = hub.creator_key(CREATOR).await;
    let their_key = hub.creator_key("creator-2").await;

    // Its dead letter lists only its own jobs.
    let (status, listed) = hub.request(Method::GET, "/v1/dead-letter", &key, None).await;
    assert_eq!(status, 200, "{listed}");
    let listed: Vec<&str> = listed["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|id| my_dead.iter().any(|m| m == id)), "{listed:?}");

    // Another creator's jobs cannot be named.
    let (status, refused) =
        hub.request(Method::POST, "/v1/dead-letter/redrive", &key, Some(json!({"creatorId":"creator-2"}))).await;
    assert_eq!((status, refused["error"].as_str()), (403, Some("forbidden")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("creatorId"), "{refused}");

    // "Every dead job" from a creator key means every dead job of that creator.
    let (status, started) = hub.request(Method::POST, "/v1/dead-letter/redrive", &key, Some(json!({}))).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!((started["creatorId"].as_str(), started["total"].as_i64()), (Some(CREATOR), Some(2)), "{started}");
    let redrive = format!("/v1/dead-letter/redrives/{}", started["id"].as_str().unwrap());
    let (status, _) = hub.request(Method::GET, &redrive, &their_key, None).await;
    assert_eq!(status, 404, "another creator's key does not see the move");
    let done = wait_until(Duration::from_secs(30), "the creator's redrive to complete", || async {
        let (status, progress) = hub.request(Method::GET, &redrive, &key, None).await;
        assert_eq!(status, 200, "{progress}");
        (progress["status"] == "completed").then_some(progress)
    })
    .await;
    assert_eq!(done["moved"], 2, "{done}");
    for job_id in &my_dead {
        let job = hub.job(job_id).await;
        assert_eq!((job["status"].as_str(), job["attempts"].as_i64()), (Some("pending"), Some(0)), "{job}");
    }
    for job_id in &their_dead {
        assert_eq!(hub.job(job_id).await["status"], "dead", "another creator's dead job was moved");
    }
    let (_, still_dead) = hub.operator_get("/v1/dead-letter").await;
    assert_eq!(still_dead["jobs"].as_array().unwrap().len(), 2, "{still_dead}");
    hub.shutdown().await;
}

/// Creator A's slow move is running: creator B starts its own at once (it used to get
/// 409), while A's second move and an operator's move over every creator still wait.
async fn one_creators_redrive_does_not_block_another_creators(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_a, mut a_ws) = hub.connected_agent(CREATOR, 1).await;
    let (_b, mut b_ws) = hub.connected_agent("creator-2", 1).await;
    make_dead_jobs_of(&hub, &mut a_ws, CREATOR, 3, "NETWORK").await;
    make_dead_jobs_of(&hub, &mut b_ws, "creator-2", 1, "NETWORK").await;
    pause(&mut a_ws).await;
    pause(&mut b_ws).await;
    let a_key = hub.creator_key(CREATOR).await;
    let b_key = hub.creator_key("creator-2").await;

    // One job per second: A's move of three is still running while the others ask.
    let (status, a_move) =
        hub.request(Method::POST, "/v1/dead-letter/redrive", &a_key, Some(json!({"ratePerSecond":1}))).await;
    assert_eq!((status, a_move["status"].as_str()), (202, Some("running")), "{a_move}");
    let (status, b_move) = hub.request(Method::POST, "/v1/dead-letter/redrive", &b_key, Some(json!({}))).await;
    assert_eq!(status, 202, "another creator's move starts while A's runs: {b_move}");
    assert_eq!(b_move["creatorId"], "creator-2", "{b_move}");
    let (status, again) = hub.request(Method::POST, "/v1/dead-letter/redrive", &a_key, Some(json!({}))).await;
    assert_eq!((status, again["error"].as_str()), (409, Some("redrive_running")), "{again}");
    let (status, everyone) = hub.operator_post("/v1/dead-letter/redrive", json!({})).await;
    assert_eq!((status, everyone["error"].as_str()), (409, Some("redrive_running")), "{everyone}");
    hub.shutdown().await;
}

/// The redrive's progress, sampled from the status endpoint while it runs: it moves at most
/// `ratePerSecond` jobs per second at any time, so the move takes as long as the rate says.
/// (Rate limiting is the behaviour here, so it is read over time; every bound is one that
/// load cannot break: load only slows the move.)
async fn redrive_moves_at_most_rate_per_second_over_time(db: TestDb) {
    const DEAD: i64 = 15;
    const RATE: i64 = 3;
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    make_dead_jobs(&hub, &mut ws, DEAD as usize, "NETWORK").await;
    pause(&mut ws).await;

    let asked = std::time::Instant::now();
    let (status, started) = hub.operator_post("/v1/dead-letter/redrive", json!({"ratePerSecond": RATE})).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!((started["total"].as_i64(), started["status"].as_str()), (Some(DEAD), Some("running")), "{started}");
    assert!(started["moved"].as_i64().unwrap() <= RATE, "more than one second's worth at once: {started}");
    let path = format!("/v1/dead-letter/redrives/{}", started["id"].as_str().unwrap());

    // (asked at, answered at, moved) for every reading, the POST's answer first.
    let mut samples = vec![(asked, std::time::Instant::now(), started["moved"].as_i64().unwrap())];
    let deadline = asked + Duration::from_secs(60);
    let finished = loop {
        assert!(std::time::Instant::now() < deadline, "the redrive did not finish within 60 s: {samples:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let sent = std::time::Instant::now();
        let (status, progress) = hub.operator_get(&path).await;
        assert_eq!(status, 200, "{progress}");
        samples.push((sent, std::time::Instant::now(), progress["moved"].as_i64().unwrap()));
        if progress["status"] == "completed" {
            break progress;
        }
    };
    assert_eq!(finished["moved"], DEAD, "{finished}");

    // Between any two readings at most RATE jobs per second moved, plus one second's worth
    // for the step in flight. The interval is taken wide (first request sent → second answer
    // received), so the bound holds whenever the hub actually read its state.
    let mut peak = 0.0f64;
    for (i, (sent_i, _, moved_i)) in samples.iter().enumerate() {
        for (_, answered_j, moved_j) in &samples[i + 1..] {
            let seconds = answered_j.duration_since(*sent_i).as_secs_f64();
            assert!(*moved_j >= *moved_i, "moved went backwards: {samples:?}");
            let allowed = RATE as f64 * (seconds + 1.0);
            assert!(
                (*moved_j - *moved_i) as f64 <= allowed,
                "{} jobs moved in {seconds:.2} s at {RATE}/s: {samples:?}",
                moved_j - moved_i
            );
            if seconds >= 1.0 {
                peak = peak.max((moved_j - moved_i) as f64 / seconds);
            }
        }
    }
    let running = samples.iter().filter(|(_, _, moved)| *moved < DEAD).count();
    assert!(running >= 4, "the move was read only {running} times while it ran: {samples:?}");
    // The hub's own clock: after the first second's worth, the rest took at least
    // (DEAD - RATE) / RATE seconds.
    let took = unix_ms(&finished["finishedAt"]) - unix_ms(&finished["createdAt"]);
    assert!(took >= (DEAD - RATE) * 1000 / RATE, "{DEAD} jobs at {RATE}/s moved in {took} ms: {finished}");
    eprintln!("redrive of {DEAD} at {RATE}/s took {took} ms; peak rate over >= 1 s: {peak:.2}/s");
    hub.shutdown().await;
}

async fn idempotency_key_returns_the_same_job(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let post = |key: &'static str, creator: &'static str| {
        hub.http
            .post(hub.url("/v1/jobs"))
            .bearer_auth(&hub.api_key)
            .header("Idempotency-Key", key)
            .json(&custom(creator))
            .send()
    };
    let first = post("order-1", CREATOR).await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post("order-1", CREATOR).await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["idempotencyKey"], "order-1");
    let other: Value = post("order-1", "creator-2").await.unwrap().json().await.unwrap();
    assert_ne!(other["id"], first["id"], "keys are per creator");

    // Racing duplicates still make one job.
    let racing = futures_util::future::join_all((0..8).map(|_| post("order-2", CREATOR))).await;
    let mut ids = std::collections::HashSet::new();
    for response in racing {
        let response = response.unwrap();
        assert!(matches!(response.status().as_u16(), 200 | 201));
        ids.insert(response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    hub.shutdown().await;
}

async fn priority_and_run_at_order_delivery(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let agent = hub.enroll(CREATOR).await;
    let low = hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"priority":-5})).await;
    let high = hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"priority":10})).await;
    let soon = chrono_like_in(900);
    let later =
        hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"priority":100,"runAt":soon})).await;
    let zoned = hub
        .submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,
                           "runAt":"2020-01-01T09:00:00","timeZone":"Europe/Paris"}))
        .await;
    assert_eq!(zoned["runAt"], "2020-01-01T08:00:00Z");
    let mut ws = hub.hello(&agent, json!({"slots": 1})).await;
    for expected in [&high, &zoned, &low] {
        let got = next_assign(&mut ws).await;
        assert_eq!(got, id(expected));
        send(&mut ws, json!({"t":"job_result","id":got,"status":"ok"})).await;
    }
    // The scheduled job arrives only once its time has come, despite its priority. (A
    // floor, not a ceiling: load can only make it later.)
    let started = std::time::Instant::now();
    assert_eq!(next_assign(&mut ws).await, id(&later));
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    hub.shutdown().await;
}

/// RFC 3339 UTC `ms` from now.
fn chrono_like_in(ms: i64) -> String {
    edge_hub::crypto::rfc3339(edge_hub::crypto::now_ms() + ms)
}

async fn cancel_pending_and_held_jobs(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let pending = hub.submit_job(custom(CREATOR)).await;
    let (status, cancelled) = hub.operator_post(&format!("/v1/jobs/{}/cancel", id(&pending)), json!({})).await;
    assert_eq!((status, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    let (status, _) = hub.operator_post(&format!("/v1/jobs/{}/cancel", id(&pending)), json!({})).await;
    assert_eq!(status, 200, "cancelling twice is fine");

    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let held = hub.submit_job(custom(CREATOR)).await;
    assert_eq!(next_assign(&mut ws).await, id(&held));
    send(&mut ws, json!({"t":"job_ack","id":id(&held)})).await;
    hub.wait_for_job_status(&id(&held), "running").await;
    let (status, requested) = hub.operator_post(&format!("/v1/jobs/{}/cancel", id(&held)), json!({})).await;
    assert_eq!((status, requested["cancelRequested"].as_bool()), (202, Some(true)), "{requested}");
    let frame = recv(&mut ws).await;
    assert_eq!((frame["t"].as_str(), frame["id"].as_str()), (Some("job_cancel"), Some(id(&held).as_str())));
    send(&mut ws, json!({"t":"job_result","id":id(&held),"status":"error","err":{"code":"CANCELLED"}})).await;
    hub.wait_for_job_status(&id(&held), "cancelled").await;

    let done = hub.submit_job(custom(CREATOR)).await;
    assert_eq!(next_assign(&mut ws).await, id(&done));
    send(&mut ws, json!({"t":"job_result","id":id(&done),"status":"ok"})).await;
    hub.wait_for_job_status(&id(&done), "succeeded").await;
    let (status, body) = hub.operator_post(&format!("/v1/jobs/{}/cancel", id(&done)), json!({})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("already_final")));
    hub.shutdown().await;
}

async fn creator_limits_make_jobs_wait(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (status, limits) = hub
        .request(
            Method::PUT,
            &format!("/v1/creators/{CREATOR}/limits"),
            &hub.api_key,
            Some(json!({"maxConcurrentJobs":1,"maxJobsPerHour":{"custom":2}})),
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    let (_, read) = hub.operator_get(&format!("/v1/creators/{CREATOR}/limits")).await;
    assert_eq!(read["maxJobsPerHour"]["custom"], 2);
    let creator_key = hub.creator_key(CREATOR).await;
    let (status, _) =
        hub.request(Method::PUT, &format!("/v1/creators/{CREATOR}/limits"), &creator_key, Some(json!({}))).await;
    assert_eq!(status, 403, "a creator may not raise its own limits");

    let (_agent, mut ws) = hub.connected_agent(CREATOR, 3).await;
    let jobs: Vec<String> =
        futures_util::future::join_all((0..3).map(|_| hub.submit_job(custom(CREATOR)))).await.iter().map(id).collect();
    let first = next_assign(&mut ws).await;
    expect_silence(&mut ws, Duration::from_millis(400)).await;
    send(&mut ws, json!({"t":"job_result","id":first,"status":"ok"})).await;
    let second = next_assign(&mut ws).await;
    send(&mut ws, json!({"t":"job_result","id":second,"status":"ok"})).await;
    // Two started this hour: the third waits, pending, not failed.
    expect_silence(&mut ws, Duration::from_millis(400)).await;
    let waiting: Vec<String> = jobs.into_iter().filter(|j| *j != first && *j != second).collect();
    assert_eq!(hub.job(&waiting[0]).await["status"], "pending");
    hub.request(
        Method::PUT,
        &format!("/v1/creators/{CREATOR}/limits"),
        &hub.api_key,
        Some(json!({"maxConcurrentJobs":null})),
    )
    .await;
    assert_eq!(next_assign(&mut ws).await, waiting[0], "lifting the limit lets it go");
    hub.shutdown().await;
}

async fn dedupe_ledger_skips_recently_messaged_recipients(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let first =
        hub.submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipients":["Ann","bob"]}})).await;
    assert!(first.get("skippedRecipients").is_none(), "{first}");
    assert_eq!(next_assign(&mut ws).await, id(&first));
    // Only Ann was reached.
    send(&mut ws, json!({"t":"job_result","id":id(&first),"status":"ok","data":{"sentRecipients":["ann"]}})).await;
    hub.wait_for_job_status(&id(&first), "succeeded").await;

    let second =
        hub.submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipients":["ANN","carl"]}})).await;
    assert_eq!(second["payload"]["recipients"], json!(["carl"]));
    let skipped = &second["skippedRecipients"][0];
    assert_eq!(
        (skipped["recipient"].as_str(), skipped["reason"].as_str()),
        (Some("ann"), Some("messaged_within_cooloff"))
    );
    assert!(skipped["lastSentAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(next_assign(&mut ws).await, id(&second));
    // No sentRecipients on a success: every recipient counts as messaged.
    send(&mut ws, json!({"t":"job_result","id":id(&second),"status":"ok"})).await;
    hub.wait_for_job_status(&id(&second), "succeeded").await;

    let third = hub.submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipient":"Carl"}})).await;
    assert_eq!(
        (third["status"].as_str(), third["error"]["code"].as_str()),
        (Some("cancelled"), Some("ALL_RECIPIENTS_SKIPPED"))
    );
    // Bob was never reached, and another creator has its own ledger.
    let bob = hub.submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipient":"bob"}})).await;
    assert_eq!(bob["status"], "pending");
    let other = hub.submit_job(json!({"type":MESSAGE,"creatorId":"creator-2","payload":{"recipient":"ann"}})).await;
    assert_eq!(other["status"], "pending");
    hub.shutdown().await;
}

/// Issue 18: a recipient whose send the agent cannot confirm (cut by a crash, no way to ask
/// the site) is recorded in the ledger as uncertain: listed for the operator, not refused
/// by the cool-off, and left out of the retry (another agent has no checkpoint to skip it).
async fn uncertain_recipients_are_listed_not_blocked_and_not_resent(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let uncertain_list = |key: String, creator: &'static str| {
        let hub = &hub;
        async move { hub.request(Method::GET, &format!("/v1/creators/{creator}/uncertain-recipients"), &key, None).await }
    };
    let job = hub
        .submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipients":["Dan","eve","fay","gus"]}}))
        .await;
    assert_eq!(next_assign(&mut ws).await, id(&job));
    // Throttled after Dan; Eve's send was cut with no way to tell whether it went out.
    let data = json!({"sentRecipients":["dan"],"uncertainRecipients":["Eve"]});
    send(&mut ws, json!({"t":"job_result","id":id(&job),"status":"error","err":{"code":"RATE_LIMITED"},"data":data}))
        .await;
    assert_eq!(next_assign(&mut ws).await, id(&job), "retried after the back-off");
    assert_eq!(hub.job(&id(&job)).await["payload"]["recipients"], json!(["fay", "gus"]), "neither Dan nor Eve again");
    // This delivery also (wrongly) calls Dan uncertain: a sent entry is never downgraded.
    let data = json!({"sentRecipients":["fay","gus"],"uncertainRecipients":["dan"]});
    send(&mut ws, json!({"t":"job_result","id":id(&job),"status":"ok","data":data})).await;
    hub.wait_for_job_status(&id(&job), "succeeded").await;

    let (status, listed) = uncertain_list(hub.api_key.clone(), CREATOR).await;
    assert_eq!(status, 200, "{listed}");
    let recipients = listed["recipients"].as_array().expect("recipients");
    assert_eq!(recipients.len(), 1, "{listed}");
    assert_eq!(
        (recipients[0]["recipient"].as_str(), recipients[0]["jobId"].as_str()),
        (Some("eve"), Some(id(&job).as_str()))
    );
    assert!(recipients[0]["reportedAt"].as_str().unwrap().ends_with('Z'));
    // Another creator's key does not see them; this creator's key does.
    let (status, _) = uncertain_list(hub.creator_key("creator-2").await, CREATOR).await;
    assert_eq!(status, 404);
    let (status, own) = uncertain_list(hub.creator_key(CREATOR).await, CREATOR).await;
    assert_eq!((status, own["recipients"].as_array().map(Vec::len)), (200, Some(1)), "{own}");

    // The cool-off refuses Dan (sent), not Eve (uncertain).
    let again =
        hub.submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipients":["dan","eve"]}})).await;
    assert_eq!(again["payload"]["recipients"], json!(["eve"]), "{again}");
    assert_eq!(again["skippedRecipients"][0]["recipient"], "dan");
    assert_eq!(next_assign(&mut ws).await, id(&again));
    send(&mut ws, json!({"t":"job_result","id":id(&again),"status":"ok","data":{"sentRecipients":["eve"]}})).await;
    hub.wait_for_job_status(&id(&again), "succeeded").await;
    // Now Eve is known to be messaged: no longer uncertain, and refused for the cool-off.
    let (_, listed) = uncertain_list(hub.api_key.clone(), CREATOR).await;
    assert_eq!(listed["recipients"], json!([]), "{listed}");
    let third = hub.submit_job(json!({"type":MESSAGE,"creatorId":CREATOR,"payload":{"recipient":"eve"}})).await;
    assert_eq!(third["error"]["code"], "ALL_RECIPIENTS_SKIPPED", "{third}");
    hub.shutdown().await;
}

/// `send_dm` whose send was pressed but not confirmed (or cut by a crash) on a site the
/// agent cannot ask: the agent reports `SEND_UNCERTAIN` with the recipient in
/// `uncertainRecipients`. The hub fails the job at once (a retry could message the person
/// twice), records the recipient as uncertain and does not refuse it for the cool-off. A
/// `send_dm` the site refused (`RATE_LIMITED`) is still retried.
async fn a_send_dm_of_unknown_outcome_is_not_retried_and_is_listed_uncertain(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let agent = hub.enroll(CREATOR).await;
    let mut ws = hub.hello(&agent, json!({"capabilities": ["send_dm", "job_cancel"]})).await;
    let send_dm = |recipient: &str| {
        json!({"type":"send_dm","creatorId":CREATOR,
               "payload":{"adapter":{"local":"fanhub"},"recipient":recipient,"params":{"text":"hi"}}})
    };
    let job = hub.submit_job(send_dm("Hal")).await;
    assert_eq!(next_assign(&mut ws).await, id(&job));
    let err = json!({"code":"SEND_UNCERTAIN","message":"the message to \"Hal\" may or may not have been delivered"});
    let data = json!({"sentRecipients":[],"uncertainRecipients":["Hal"]});
    send(&mut ws, json!({"t":"job_result","id":id(&job),"status":"error","err":err,"data":data})).await;
    let failed = hub.wait_for_job_status(&id(&job), "failed").await;
    assert_eq!(failed["error"]["code"], "SEND_UNCERTAIN", "{failed}");
    assert_eq!(attempts(&hub, &id(&job)).await.len(), 1, "never delivered again");
    let (status, listed) =
        hub.request(Method::GET, &format!("/v1/creators/{CREATOR}/uncertain-recipients"), &hub.api_key, None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["recipients"][0]["recipient"], "hal", "{listed}");
    assert_eq!(listed["recipients"][0]["jobId"].as_str(), Some(id(&job).as_str()), "{listed}");
    // Not refused for the cool-off: the operator decides whether to send it again.
    let again = hub.submit_job(send_dm("hal")).await;
    assert_eq!(again["payload"]["recipient"], "hal", "{again}");
    assert_eq!(next_assign(&mut ws).await, id(&again));
    // Refused by the site: retried by the rules, as before.
    let err = json!({"code":"RATE_LIMITED","retryAfterMs":1});
    let data = json!({"sentRecipients":[],"uncertainRecipients":[]});
    send(&mut ws, json!({"t":"job_result","id":id(&again),"status":"error","err":err,"data":data})).await;
    assert_eq!(next_assign(&mut ws).await, id(&again), "retried");
    send(&mut ws, json!({"t":"job_result","id":id(&again),"status":"ok","data":{"sentRecipients":["hal"]}})).await;
    hub.wait_for_job_status(&id(&again), "succeeded").await;
    hub.shutdown().await;
}

async fn creator_keys_cannot_reach_other_creators(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let mine = hub.creator_key(CREATOR).await;
    let (other_agent, _other_ws) = hub.connected_agent("creator-2", 1).await;
    let (my_agent, _my_ws) = hub.connected_agent(CREATOR, 1).await;
    let theirs = hub.submit_job(json!({"type":CUSTOM,"payload":{},"agentId":other_agent.agent_id})).await;

    let (status, body) = hub.request(Method::GET, &format!("/v1/jobs/{}", id(&theirs)), &mine, None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "read: {body}");
    let (status, _) = hub.request(Method::POST, &format!("/v1/jobs/{}/cancel", id(&theirs)), &mine, None).await;
    assert_eq!(status, 404, "cancel");
    let (status, _) = hub.request(Method::GET, &format!("/v1/jobs/{}/attempts", id(&theirs)), &mine, None).await;
    assert_eq!(status, 404, "history");
    let (status, body) = hub
        .request(
            Method::POST,
            "/v1/jobs",
            &mine,
            Some(json!({"type":CUSTOM,"payload":{},"agentId":other_agent.agent_id})),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_agent")), "target: {body}");
    let (status, _) = hub
        .request(Method::POST, "/v1/jobs", &mine, Some(json!({"type":CUSTOM,"payload":{},"creatorId":"creator-2"})))
        .await;
    assert_eq!(status, 403, "submit for another creator");
    let (status, _) = hub.request(Method::GET, "/v1/jobs?creatorId=creator-2", &mine, None).await;
    assert_eq!(status, 403, "list another creator");

    // Its own: the creator is implied, and lists show only its jobs and agents.
    let (status, own) = hub.request(Method::POST, "/v1/jobs", &mine, Some(json!({"type":CUSTOM,"payload":{}}))).await;
    assert_eq!((status, own["creatorId"].as_str()), (201, Some(CREATOR)), "{own}");
    let (_, list) = hub.request(Method::GET, "/v1/jobs", &mine, None).await;
    let listed: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["creatorId"].as_str().unwrap()).collect();
    assert!(!listed.is_empty() && listed.iter().all(|c| *c == CREATOR), "{list}");
    let (_, agents) = hub.request(Method::GET, "/v1/agents", &mine, None).await;
    let agents = agents["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["agentId"], my_agent.agent_id.as_str());
    let (status, _) = hub.request(Method::GET, "/v1/creators/creator-2/limits", &mine, None).await;
    assert_eq!(status, 404);
    let (_, all) = hub.operator_get("/v1/agents").await;
    assert_eq!(all["agents"].as_array().unwrap().len(), 2, "an operator key sees everyone");
    hub.shutdown().await;
}

async fn routing_by_agent_labels_and_capabilities(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let plain = hub.enroll(CREATOR).await;
    let gpu = hub.enroll(CREATOR).await;
    let http_only = hub.enroll(CREATOR).await;
    let mut plain_ws = hub.hello(&plain, json!({"labels":["home"]})).await;
    let mut gpu_ws = hub.hello(&gpu, json!({"labels":["gpu","home"],"slots":4})).await;
    let mut http_ws = hub.hello(&http_only, json!({"capabilities":["http_request"]})).await;

    let labelled =
        hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"labels":["gpu","home"]})).await;
    assert_eq!(next_assign(&mut gpu_ws).await, id(&labelled));
    expect_silence(&mut plain_ws, Duration::from_millis(200)).await;
    expect_silence(&mut http_ws, Duration::from_millis(50)).await;

    let (_, agents) = hub.operator_get("/v1/agents").await;
    let gpu_view =
        agents["agents"].as_array().unwrap().iter().find(|a| a["agentId"] == gpu.agent_id.as_str()).unwrap().clone();
    assert_eq!(
        (gpu_view["labels"].clone(), gpu_view["slots"].as_i64(), gpu_view["online"].as_bool()),
        (json!(["gpu", "home"]), Some(4), Some(true))
    );

    // The http-only agent never gets a custom job, whoever else is busy.
    for _ in 0..3 {
        hub.submit_job(custom(CREATOR)).await;
    }
    expect_silence(&mut http_ws, Duration::from_millis(300)).await;
    let http = hub
        .submit_job(json!({"type":"http_request","payload":{"url":"http://127.0.0.1:9/"},"agentId":http_only.agent_id}))
        .await;
    assert_eq!(next_assign(&mut http_ws).await, id(&http));
    hub.shutdown().await;
}

/// A prototype agent's `circuit_breaker` has no `cooldownMs`: the hub's 15-minute default
/// applies, to the browser job types only (issue 17).
async fn a_prototype_agents_circuit_breaker_withholds_browser_jobs_only(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hb","v":"agent-0.0.9","ts":1})).await;
    assert_eq!(recv(&mut ws).await["t"], "hb_ack");
    send(&mut ws, json!({"t":"circuit_breaker","reason":"RATE_LIMITED"})).await;
    // The heartbeat's answer means the breaker frame was handled before the jobs arrive.
    send(&mut ws, json!({"t":"hb","v":"agent-0.0.9","ts":2})).await;
    assert_eq!(recv(&mut ws).await["t"], "hb_ack");
    let opened_at = edge_hub::crypto::now_ms();

    let browser = hub
        .submit_job(json!({"type":edge_protocol::jobs::SCRAPE_SUBS,"payload":{"adapter":{}},"creatorId":CREATOR}))
        .await;
    let other = hub.submit_job(custom(CREATOR)).await;
    assert_eq!(next_assign(&mut ws).await, id(&other), "a job of another type still reaches the agent");
    send(&mut ws, json!({"t":"job_ack","id":id(&other)})).await;
    send(&mut ws, json!({"t":"job_result","id":id(&other),"status":"ok","data":{}})).await;
    hub.wait_for_job_status(&id(&other), "succeeded").await;
    // Its one slot is free again, and the browser job still does not come.
    expect_silence(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(hub.job(&id(&browser)).await["status"], "pending");

    let (_, agents) = hub.operator_get("/v1/agents").await;
    let view = agents["agents"].as_array().unwrap().iter().find(|a| a["agentId"] == agent.agent_id.as_str()).unwrap();
    let until = chrono::DateTime::parse_from_rfc3339(view["circuitOpenUntil"].as_str().expect("circuitOpenUntil"))
        .expect("RFC 3339")
        .timestamp_millis();
    let fifteen_minutes = 15 * 60 * 1000;
    assert!(
        (opened_at + fifteen_minutes - 60_000..=opened_at + fifteen_minutes + 60_000).contains(&until),
        "the default cool-down is 15 minutes: {view}"
    );
    hub.shutdown().await;
}

/// Both claim paths (the job writer's group and a single claim) leave excluded types alone.
async fn a_claim_never_leases_an_excluded_job_type(db: TestDb) {
    use edge_hub::store::{ClaimGroup, InsertOutcome, JobWriteBatch, NewJob};
    let hub = TestHub::start_on(db, |_| {}).await;
    // Enrolled but never connected, so the hub's own dispatcher leaves its jobs alone.
    let agent = hub.enroll(CREATOR).await;
    let store = hub.store();
    let now = edge_hub::crypto::now_ms();
    let browser = |priority: i64| NewJob {
        job_type: edge_protocol::jobs::SCRAPE_SUBS.to_owned(),
        payload: json!({"adapter": {}}),
        priority,
        ..plain_job(now)
    };
    let mut ids = Vec::new();
    for job in [browser(9), plain_job(now), browser(8), NewJob { priority: -1, ..plain_job(now) }] {
        match store.insert_job(job, now).await.unwrap() {
            InsertOutcome::Created(job) => ids.push(job.id),
            other => panic!("{other:?}"),
        }
    }
    let group = ClaimGroup {
        creator_id: CREATOR.to_owned(),
        labels: Vec::new(),
        job_types: None,
        excluded_job_types: vec![edge_protocol::jobs::SCRAPE_SUBS.to_owned(), "send_dm".to_owned()],
        agents: vec![(agent.agent_id.clone(), 1)],
    };
    let first = store.claim_jobs(&group, now + 1).await.unwrap();
    assert_eq!(first.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [ids[1].as_str()]);
    let batch = JobWriteBatch {
        claims: vec![ClaimGroup { agents: vec![(agent.agent_id.clone(), 4)], ..group }],
        ..Default::default()
    };
    let second = store.write_jobs(&batch, now + 2).await.unwrap().claimed.remove(0);
    assert_eq!(second.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [ids[3].as_str()]);
    for browser_job in [&ids[0], &ids[2]] {
        assert_eq!(store.job(browser_job).await.unwrap().unwrap().status, edge_hub::store::JobState::Pending);
    }
    // Without the exclusion the same agent takes them, highest priority first.
    let open = ClaimGroup {
        creator_id: CREATOR.to_owned(),
        labels: Vec::new(),
        job_types: None,
        excluded_job_types: Vec::new(),
        agents: vec![(agent.agent_id.clone(), 4)],
    };
    let third = store.claim_jobs(&open, now + 3).await.unwrap();
    assert_eq!(third.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [ids[0].as_str(), ids[2].as_str()]);
    hub.shutdown().await;
}

async fn sync_submit_returns_the_result_or_504(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (status, timed_out) = hub.operator_post("/v1/jobs?sync=true&timeoutMs=300", custom(CREATOR)).await;
    assert_eq!(status, 504, "{timed_out}");
    assert_eq!(timed_out["status"], "pending");
    assert!(timed_out["jobId"].as_str().unwrap().starts_with("job_"));
    assert!(!timed_out["message"].as_str().unwrap().is_empty());

    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    // The queued job first; answer it, then the sync one.
    let queued = next_assign(&mut ws).await;
    send(&mut ws, json!({"t":"job_result","id":queued,"status":"ok"})).await;
    let request = hub
        .http
        .post(hub.url("/v1/jobs?sync=true"))
        .bearer_auth(&hub.api_key)
        .json(&json!({"type":"http_request","payload":{"url":"https://example.com/"},"creatorId":CREATOR}))
        .send();
    let data = json!({"statusCode":201,"headers":{"x":"y"},"body":"aGk=","isBase64Encoded":true});
    let agent = async {
        let job_id = next_assign(&mut ws).await;
        send(&mut ws, json!({"t":"job_result","id":job_id,"status":"ok","data":data})).await;
        job_id
    };
    let (response, job_id) = tokio::join!(request, agent);
    let response = response.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["edge-job-id"].to_str().unwrap(), job_id);
    assert_eq!(response.json::<Value>().await.unwrap(), data, "the result data itself");
    hub.shutdown().await;
}

async fn bad_input_names_the_field_and_writes_nothing(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let cases = [
        (json!({"type":"teleport","payload":{},"creatorId":CREATOR}), 400, "`type`"),
        (
            json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"runAt":"2025-01-01T09:00:00","timeZone":"Mars/Base"}),
            400,
            "`timeZone`",
        ),
        (json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"runAt":"tomorrow"}), 400, "`runAt`"),
        (json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"priority":1e12}), 400, "priority"),
        (json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"runat":"x"}), 400, "runat"),
        (json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"labels":[""]}), 400, "`labels`"),
        (json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"maxReceiveCount":0}), 400, "`maxReceiveCount`"),
        (json!({"type":MESSAGE,"payload":{"text":"hi"},"creatorId":CREATOR}), 400, "payload.recipients"),
        (json!({"type":"http_request","payload":{"url":"ftp://x"},"creatorId":CREATOR}), 400, "payload.url"),
        (json!({"type":"http_request","payload":{"method":"GET"},"creatorId":CREATOR}), 400, "missing field `url`"),
        (json!({"type":CUSTOM,"payload":{"blob":"x".repeat(1_046_000)},"creatorId":CREATOR}), 413, "`payload`"),
        // Issue 18: the agent's depth limit, so a job it could not read is never queued.
        (json!({"type":CUSTOM,"payload":nested_json(125),"creatorId":CREATOR}), 400, "nested"),
        (json!({"type":CUSTOM,"payload":nested_json(65),"creatorId":CREATOR}), 400, "nested"),
    ];
    for (body, status, hint) in cases {
        let (got, answer) = hub.operator_post("/v1/jobs", body.clone()).await;
        let shown: String = answer.to_string().chars().take(300).collect();
        assert_eq!(got, status, "{hint}: {shown}");
        assert!(answer["message"].as_str().unwrap().contains(hint), "{hint}: {answer}");
    }
    let response = hub
        .http
        .post(hub.url("/v1/jobs"))
        .bearer_auth(&hub.api_key)
        .header("content-type", "application/json")
        .body("{\"type\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, answer) = hub.operator_post("/v1/dead-letter/redrive", json!({"deadFrom":"yesterday"})).await;
    assert_eq!(status, 400);
    assert!(answer["message"].as_str().unwrap().contains("`deadFrom`"), "{answer}");
    let (_, list) = hub.operator_get("/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing was half-written");
    hub.shutdown().await;
}

async fn retention_purges_finished_jobs_only(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let done = hub.submit_job(custom(CREATOR)).await;
    assert_eq!(next_assign(&mut ws).await, id(&done));
    send(&mut ws, json!({"t":"job_result","id":id(&done),"status":"ok"})).await;
    hub.wait_for_job_status(&id(&done), "succeeded").await;
    let waiting =
        hub.submit_job(json!({"type":CUSTOM,"payload":{},"creatorId":CREATOR,"runAt":chrono_like_in(60_000)})).await;

    let store = hub.store();
    let now = edge_hub::crypto::now_ms();
    assert_eq!(store.purge_finished_jobs(now - 60_000, 100).await.unwrap(), 0, "too young to purge");
    assert_eq!(store.purge_finished_jobs(now + 1, 100).await.unwrap(), 1);
    let (status, _) = hub.operator_get(&format!("/v1/jobs/{}", id(&done))).await;
    assert_eq!(status, 404);
    assert!(store.job_attempts(&id(&done)).await.unwrap().is_empty(), "its history went with it");
    assert_eq!(hub.job(&id(&waiting)).await["status"], "pending");
    hub.shutdown().await;
}

async fn batch_submit_answers_per_entry_and_agents_share_the_burst(db: TestDb) {
    let hub = TestHub::start_on(db, |_| {}).await;
    let entries = json!({"jobs": [
        custom(CREATOR),
        {"type": "teleport", "payload": {}, "creatorId": CREATOR},
        {"type": CUSTOM, "payload": {}, "creatorId": CREATOR, "idempotencyKey": "k1"},
        {"type": CUSTOM, "payload": {}, "creatorId": CREATOR, "idempotencyKey": "k1"},
    ]});
    let (status, answer) = hub.operator_post("/v1/jobs/batch", entries).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 400, 201, 200], "{answer}");
    assert!(results[1]["message"].as_str().unwrap().contains("`type`"), "{answer}");
    assert_eq!(results[3]["job"]["id"], results[2]["job"]["id"], "the same key names the same job");
    assert_eq!((answer["created"].as_u64(), answer["failed"].as_u64()), (Some(2), Some(1)), "{answer}");
    let (_, list) = hub.operator_get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "the refused entry wrote nothing: {list}");

    // Not a batch at all: refused whole, naming the problem.
    let (status, answer) = hub.operator_post("/v1/jobs/batch", json!({"jobs": []})).await;
    assert_eq!(status, 400);
    assert!(answer["message"].as_str().unwrap().contains("1 to 100"), "{answer}");
    let too_many: Vec<Value> = (0..101).map(|_| custom(CREATOR)).collect();
    let (status, _) = hub.operator_post("/v1/jobs/batch", json!({ "jobs": too_many })).await;
    assert_eq!(status, 400);
    let with_header = hub
        .http
        .post(hub.url("/v1/jobs/batch"))
        .bearer_auth(&hub.api_key)
        .header("Idempotency-Key", "whole-batch")
        .json(&json!({"jobs": [custom(CREATOR)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_header.status().as_u16(), 400);

    // Two agents with free slots: the burst (plus the 2 jobs above) is dealt out between
    // them in one claim, each job exactly once.
    let (_, mut first) = hub.connected_agent(CREATOR, 8).await;
    let (_, mut second) = hub.connected_agent(CREATOR, 8).await;
    let burst: Vec<Value> = (0..10).map(|_| custom(CREATOR)).collect();
    let (status, answer) = hub.operator_post("/v1/jobs/batch", json!({ "jobs": burst })).await;
    assert_eq!((status, answer["created"].as_u64()), (200, Some(10)), "{answer}");
    let mut seen = std::collections::HashSet::new();
    let mut per_agent = [0usize; 2];
    while seen.len() < 12 {
        let (which, ws) = tokio::select! {
            frame = recv(&mut first) => (0, frame),
            frame = recv(&mut second) => (1, frame),
        };
        if ws["t"] == "job_assign" {
            assert!(seen.insert(ws["job"]["jobId"].as_str().unwrap().to_owned()), "assigned twice: {ws}");
            per_agent[which] += 1;
        }
    }
    assert!(per_agent.iter().all(|n| *n >= 2), "both agents got work: {per_agent:?}");
    expect_silence(&mut first, Duration::from_millis(300)).await;
    hub.shutdown().await;
}

/// The hub writes agents' reports in groups; each report in a group must still be judged
/// by its own lease, whatever else is in the group.
async fn a_batch_of_reports_applies_each_under_its_own_lease(db: TestDb) {
    use edge_hub::store::{FinishOutcome, FinishRequest, JobState, LeaseRef, Transition};
    let hub = TestHub::start_on(db, |_| {}).await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 3).await;
    let jobs: Vec<String> =
        futures_util::future::join_all((0..3).map(|_| hub.submit_job(custom(CREATOR)))).await.iter().map(id).collect();
    for _ in 0..3 {
        next_assign(&mut ws).await;
    }
    let store = hub.store();
    let mut tokens = Vec::new();
    for job in &jobs {
        tokens.push(store.job(job).await.unwrap().expect("job").lease_token);
    }
    let report = |job: usize, agent_id: &str, token: i64| FinishRequest {
        job_id: jobs[job].clone(),
        agent_id: agent_id.to_owned(),
        lease_token: token,
        transition: Transition::Succeeded,
        result: Some(json!({"n": job})),
        error: None,
        sent_recipients: Vec::new(),
        uncertain_recipients: Vec::new(),
    };
    let now = edge_hub::crypto::now_ms();
    let lease = |job: usize, token: i64| LeaseRef {
        job_id: jobs[job].clone(),
        agent_id: agent.agent_id.clone(),
        lease_token: token,
    };
    let started =
        store.start_jobs(&[lease(0, tokens[0]), lease(1, tokens[1] + 7), lease(2, tokens[2])], now).await.unwrap();
    assert_eq!(started, [true, false, true]);
    let outcomes = store
        .finish_jobs(
            &[
                report(0, &agent.agent_id, tokens[0]),
                report(0, &agent.agent_id, tokens[0]),
                report(1, &agent.agent_id, tokens[1] + 7),
                report(2, "agt_somebody_else", tokens[2]),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            FinishOutcome::Recorded(JobState::Succeeded),
            FinishOutcome::AlreadyFinished,
            FinishOutcome::NotHeld,
            FinishOutcome::NotHeld
        ]
    );
    let first = store.job(&jobs[0]).await.unwrap().unwrap();
    assert_eq!((first.status, first.result), (JobState::Succeeded, Some(json!({"n": 0}))));
    assert_eq!(store.job(&jobs[1]).await.unwrap().unwrap().status, JobState::Leased);
    assert_eq!(store.job(&jobs[2]).await.unwrap().unwrap().status, JobState::Running);
    let history = attempts(&hub, &jobs[0]).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["outcome"], "succeeded", "{history:?}");
    hub.shutdown().await;
}

/// The hub's job writer sends what queued up meanwhile as one `write_jobs` call: it must
/// apply the kinds in order (a claim sees the slot a report before it freed) and write
/// nothing at all when any part fails.
async fn one_group_writes_submissions_acks_reports_and_claims_in_order_or_nothing(db: TestDb) {
    use edge_hub::store::{
        ClaimGroup, CreatorLimits, FinishOutcome, FinishRequest, InsertOutcome, JobState, JobWriteBatch, LeaseRef,
        NewJob, StoreError, Transition,
    };
    let hub = TestHub::start_on(db, |_| {}).await;
    // Enrolled but never connected, so the hub's own dispatcher leaves its jobs alone.
    let agent = hub.enroll(CREATOR).await;
    let store = hub.store();
    let now = edge_hub::crypto::now_ms();
    let new_job = |priority: i64, key: Option<&str>| NewJob {
        payload: json!({"priority": priority}),
        priority,
        idempotency_key: key.map(str::to_owned),
        ..plain_job(now)
    };
    let claim = || ClaimGroup {
        creator_id: CREATOR.to_owned(),
        labels: Vec::new(),
        job_types: None,
        excluded_job_types: Vec::new(),
        agents: vec![(agent.agent_id.clone(), 1)],
    };
    // One job at a time for this creator, and one already held.
    let limits = CreatorLimits { max_concurrent: Some(1), ..Default::default() };
    store.set_creator_limits(CREATOR, &limits, now).await.unwrap();
    let held = store.insert_job(new_job(0, None), now).await.unwrap();
    let InsertOutcome::Created(held) = held else { panic!("{held:?}") };
    let leased = store.claim_jobs(&claim(), now).await.unwrap();
    assert_eq!(leased.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [held.id.as_str()]);
    let lease =
        LeaseRef { job_id: held.id.clone(), agent_id: agent.agent_id.clone(), lease_token: leased[0].lease_token };
    let report = FinishRequest {
        job_id: held.id.clone(),
        agent_id: agent.agent_id.clone(),
        lease_token: leased[0].lease_token,
        transition: Transition::Succeeded,
        result: Some(json!({"done": true})),
        error: None,
        sent_recipients: Vec::new(),
        uncertain_recipients: Vec::new(),
    };

    // A failing part (a job id that is taken) takes the whole group with it.
    let taken = NewJob { id: held.id.clone(), ..new_job(0, None) };
    let lost = new_job(9, None);
    let failing = JobWriteBatch {
        inserts: vec![lost.clone(), taken],
        starts: vec![lease.clone()],
        finishes: vec![report.clone()],
        claims: vec![claim()],
    };
    let refused = store.write_jobs(&failing, now).await;
    assert!(matches!(refused, Err(StoreError::Corrupt(_))), "{refused:?}");
    assert!(store.job(&lost.id).await.unwrap().is_none(), "the other submission was not kept");
    assert_eq!(
        store.job(&held.id).await.unwrap().unwrap().status,
        JobState::Leased,
        "the ack and report were not kept"
    );

    // In order: the report frees the creator's one concurrent slot, the first claim takes the
    // best job, the second finds the limit spent again.
    let (urgent, keyed) = (new_job(5, None), new_job(1, Some("k-1")));
    let batch = JobWriteBatch {
        inserts: vec![urgent.clone(), keyed.clone(), NewJob { id: edge_hub::crypto::new_job_id(), ..keyed.clone() }],
        starts: vec![lease],
        finishes: vec![report],
        claims: vec![claim(), claim()],
    };
    let answers = store.write_jobs(&batch, now).await.unwrap();
    let inserted: Vec<(bool, &str)> = answers
        .inserted
        .iter()
        .map(|outcome| match outcome {
            InsertOutcome::Created(job) => (true, job.id.as_str()),
            InsertOutcome::Existing(job) => (false, job.id.as_str()),
        })
        .collect();
    assert_eq!(inserted, [(true, urgent.id.as_str()), (true, keyed.id.as_str()), (false, keyed.id.as_str())]);
    assert_eq!(answers.started, [true]);
    assert_eq!(answers.finished, [FinishOutcome::Recorded(JobState::Succeeded)]);
    let claimed: Vec<Vec<&str>> =
        answers.claimed.iter().map(|jobs| jobs.iter().map(|j| j.id.as_str()).collect()).collect();
    assert_eq!(claimed, [vec![urgent.id.as_str()], vec![]]);
    let done = store.job(&held.id).await.unwrap().unwrap();
    assert_eq!((done.status, done.result), (JobState::Succeeded, Some(json!({"done": true}))));
    assert_eq!(store.job(&keyed.id).await.unwrap().unwrap().status, JobState::Pending);
    hub.shutdown().await;
}

/// A pending custom job of [`CREATOR`], routed to any of their agents, with the default
/// delivery settings and a fresh id.
fn plain_job(now: i64) -> edge_hub::store::NewJob {
    edge_hub::store::NewJob {
        id: edge_hub::crypto::new_job_id(),
        job_type: CUSTOM.to_owned(),
        payload: json!({}),
        creator_id: CREATOR.to_owned(),
        target_agent_id: None,
        labels: Vec::new(),
        priority: 0,
        run_at: now,
        idempotency_key: None,
        max_receive_count: 5,
        visibility_timeout_ms: 120_000,
        skipped_recipients: None,
        final_state: None,
    }
}

/// A plain job whose payload has escapes, non-ASCII text, a float, a large integer and
/// nesting: what a store must give back exactly.
fn job_with_awkward_payload(now: i64) -> edge_hub::store::NewJob {
    edge_hub::store::NewJob {
        payload: json!({"text": "héllo \"quoted\"", "n": 1.5, "big": 12345678901234_i64, "list": [1, {"b": 2, "a": null}]}),
        ..plain_job(now)
    }
}

/// A job that sets every option a submission can: an agent, a label, an idempotency key,
/// its own delivery limit and lease length, and recipients the ledger skipped.
fn job_with_every_option(agent_id: &str, idempotency_key: &str, now: i64) -> edge_hub::store::NewJob {
    edge_hub::store::NewJob {
        target_agent_id: Some(agent_id.to_owned()),
        labels: vec!["gpu".to_owned()],
        idempotency_key: Some(idempotency_key.to_owned()),
        max_receive_count: 2,
        visibility_timeout_ms: 5_000,
        skipped_recipients: Some(json!([{"recipient": "@a", "reason": "messaged", "lastSentAt": now}])),
        ..job_with_awkward_payload(now)
    }
}

/// The answer to a submission is built without reading the row back on SQLite; it must be
/// what reading it back gives, for every shape of job.
async fn a_new_job_is_answered_as_it_was_stored(db: TestDb) {
    use edge_hub::store::{InsertOutcome, JobState, JobWriteBatch, NewJob};
    let hub = TestHub::start_on(db, |_| {}).await;
    let agent = hub.enroll(CREATOR).await;
    let store = hub.store();
    let now = edge_hub::crypto::now_ms();
    let plain = job_with_awkward_payload(now);
    let routed = NewJob {
        labels: vec!["gpu".to_owned(), "eu".to_owned()],
        priority: -3,
        run_at: now + 60_000,
        ..job_with_every_option(&agent.agent_id, "shape-1", now)
    };
    let already_final = NewJob {
        id: edge_hub::crypto::new_job_id(),
        final_state: Some((JobState::Cancelled, json!({"code": "DEDUPED", "message": "every recipient skipped"}))),
        ..plain.clone()
    };
    let batch = JobWriteBatch { inserts: vec![plain, routed, already_final], ..Default::default() };
    let answers = store.write_jobs(&batch, now).await.unwrap();
    assert_eq!(answers.inserted.len(), 3);
    for outcome in answers.inserted {
        let InsertOutcome::Created(answered) = outcome else { panic!("not created: {outcome:?}") };
        let stored = store.job(&answered.id).await.unwrap().unwrap();
        assert_eq!(answered, stored);
    }
    hub.shutdown().await;
}

/// The answer to a claim (what the agent's `job_assign` and the session's lease are built
/// from) is what reading the leased rows back gives, for every shape of job and for a second
/// delivery as for a first.
async fn a_leased_job_is_answered_as_it_was_stored(db: TestDb) {
    use edge_hub::store::{ClaimGroup, FinishOutcome, FinishRequest, JobWriteBatch, NewJob, Transition};
    let hub = TestHub::start_on(db, |_| {}).await;
    let agent = hub.enroll(CREATOR).await;
    let store = hub.store();
    let now = edge_hub::crypto::now_ms();
    let plain = job_with_awkward_payload(now);
    let routed = NewJob { priority: 7, ..job_with_every_option(&agent.agent_id, "lease-shape-1", now) };
    let inserts = JobWriteBatch { inserts: vec![plain.clone(), routed.clone()], ..Default::default() };
    store.write_jobs(&inserts, now).await.unwrap();
    let group = ClaimGroup {
        creator_id: CREATOR.to_owned(),
        labels: vec!["gpu".to_owned()],
        job_types: None,
        excluded_job_types: Vec::new(),
        agents: vec![(agent.agent_id.clone(), 2)],
    };
    let claims = JobWriteBatch { claims: vec![group], ..Default::default() };
    let first = store.write_jobs(&claims, now + 1).await.unwrap().claimed.remove(0);
    assert_eq!(first.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), [routed.id.as_str(), plain.id.as_str()]);
    for answered in &first {
        assert_eq!(answered.lease_token, 1);
        assert_eq!(*answered, store.job(&answered.id).await.unwrap().unwrap());
    }
    // Released unstarted (a paused agent): the next lease is delivery 2 with a new token.
    let released = FinishRequest {
        job_id: plain.id.clone(),
        agent_id: agent.agent_id.clone(),
        lease_token: 1,
        transition: Transition::Release,
        result: None,
        error: None,
        sent_recipients: Vec::new(),
        uncertain_recipients: Vec::new(),
    };
    let batch = JobWriteBatch { finishes: vec![released], ..Default::default() };
    let outcome = store.write_jobs(&batch, now + 2).await.unwrap().finished.remove(0);
    assert!(matches!(outcome, FinishOutcome::Recorded(_)), "{outcome:?}");
    let second = store.write_jobs(&claims, now + 3).await.unwrap().claimed.remove(0);
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].attempts, second[0].lease_token), (2, 2));
    assert_eq!(second[0], store.job(&plain.id).await.unwrap().unwrap());
    hub.shutdown().await;
}

/// Where each agent's tunnel is open (several instances on one database): a reconnect
/// replaces the route, only the tunnel that wrote a route removes or refreshes it, a route
/// not refreshed goes stale, and the agent's creator and current labels come with it.
async fn tunnel_routes_are_replaced_removed_only_by_their_writer_and_go_stale(db: TestDb) {
    use edge_hub::store::NewTunnelRoute;
    let hub = TestHub::start_on(db, |_| {}).await;
    let agent = hub.enroll(CREATOR).await;
    let _ws = hub.hello(&agent, json!({"labels":["eu","home"]})).await;
    let store = hub.store();
    let route = |tunnel: &str, instance: &str| NewTunnelRoute {
        agent_id: agent.agent_id.clone(),
        tunnel_id: tunnel.to_owned(),
        instance_id: instance.to_owned(),
        relay_url: format!("http://{instance}.internal:8080"),
    };
    assert!(store.tunnel_routes(0).await.unwrap().is_empty());

    store.put_tunnel_route(&route("i1/1", "i1"), 1_000).await.unwrap();
    let routes = store.tunnel_routes(0).await.unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(
        (routes[0].instance_id.as_str(), routes[0].relay_url.as_str(), routes[0].creator_id.as_str()),
        ("i1", "http://i1.internal:8080", CREATOR)
    );
    assert_eq!(routes[0].labels, vec!["eu".to_owned(), "home".to_owned()]);
    assert_eq!((routes[0].opened_at, routes[0].seen_at), (1_000, 1_000));

    // The agent reconnects to another instance: its route replaces the first.
    store.put_tunnel_route(&route("i2/7", "i2"), 2_000).await.unwrap();
    let routes = store.tunnel_routes(0).await.unwrap();
    assert_eq!(routes.len(), 1, "one route per agent: {routes:?}");
    assert_eq!((routes[0].tunnel_id.as_str(), routes[0].opened_at), ("i2/7", 2_000));

    // The first tunnel ends late: it neither removes nor refreshes its successor's route.
    assert!(!store.remove_tunnel_route(&agent.agent_id, "i1/1").await.unwrap());
    assert!(!store.touch_tunnel_route(&agent.agent_id, "i1/1", 9_000).await.unwrap());
    assert_eq!(store.tunnel_routes(0).await.unwrap()[0].seen_at, 2_000);

    // The keep-alive refreshes it; readers ignore it once it is older than they accept.
    assert!(store.touch_tunnel_route(&agent.agent_id, "i2/7", 5_000).await.unwrap());
    assert_eq!(store.tunnel_routes(5_000).await.unwrap().len(), 1);
    assert!(store.tunnel_routes(5_001).await.unwrap().is_empty(), "a stale route is not listed");
    // Retention deletes only routes older than its bound.
    assert_eq!(store.purge_tunnel_routes(5_000).await.unwrap(), 0, "seen at 5,000: kept");
    assert_eq!(store.tunnel_routes(0).await.unwrap().len(), 1);

    assert!(store.remove_tunnel_route(&agent.agent_id, "i2/7").await.unwrap());
    assert!(store.tunnel_routes(0).await.unwrap().is_empty());
    assert!(!store.remove_tunnel_route(&agent.agent_id, "i2/7").await.unwrap());
    // A route its instance never removed (it died) goes once retention passes it.
    store.put_tunnel_route(&route("i3/1", "i3"), 6_000).await.unwrap();
    assert_eq!(store.purge_tunnel_routes(6_001).await.unwrap(), 1);
    assert!(store.tunnel_routes(0).await.unwrap().is_empty());
    hub.shutdown().await;
}
