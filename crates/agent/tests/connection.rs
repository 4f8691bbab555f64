//! The connection loop against a fake hub: the whole `AgentService` through its public API,
//! with credentials in memory.

mod support;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use edge_agent::consent::{Capability, Consent};
use edge_agent::local_settings::{LocalSettings, QuietHours};
use edge_agent::{
    AgentError, AgentEvent, AgentService, AgentSettings, ConnectionState, JobRunStatus, LoginOutcome,
    MemoryCredentialStore,
};
use edge_browser::guard::{BreakerSettings, Guard};
use edge_protocol::{AgentFrame, ErrorCode, JobStatus};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::{FakeHub, FakeSession, ENROLL_TOKEN, TIMEOUT};
use tempfile::TempDir;
use tokio::sync::broadcast;

/// An agent whose person allowed the fake hub's own address (where its `http_request`
/// targets are served), as `edge-agent run --allow-egress 127.0.0.1:PORT` does.
fn service(data_dir: &std::path::Path, hb_interval: Duration, hub: &FakeHub) -> AgentService {
    let mut settings = AgentSettings::new(data_dir.to_path_buf());
    settings.hb_interval = hb_interval;
    settings.slots = 2;
    settings.allow_egress.push(hub.url.trim_start_matches("http://").to_owned());
    AgentService::with_store(settings, Arc::new(MemoryCredentialStore::new()))
}

/// An agent logged in to `hub` whose first session is past the handshake. Its events were
/// subscribed before the login, so none is missed. Destructure with names (`dir: _dir`),
/// never `_`: a field left out is dropped at once, and a dropped data dir, hub or session
/// pulls the ground from under the running agent.
struct Connected {
    hub: FakeHub,
    dir: TempDir,
    agent: AgentService,
    events: broadcast::Receiver<AgentEvent>,
    login: LoginOutcome,
    session: FakeSession,
    /// The agent's first frame.
    hello: AgentFrame,
}

async fn connect(hub: FakeHub, hb_interval: Duration) -> Connected {
    connect_in(hub, tempfile::tempdir().unwrap(), hb_interval).await
}

/// [`connect`] with a data dir the test prepared (state an earlier agent process left).
async fn connect_in(hub: FakeHub, dir: TempDir, hb_interval: Duration) -> Connected {
    // The person granted what these tests run, through the core API the tray's consent
    // screen uses.
    Consent::new(dir.path()).grant(&Capability::HttpRequest).unwrap();
    let agent = service(dir.path(), hb_interval, &hub);
    let events = agent.subscribe();
    let login = agent.login(&hub.url, ENROLL_TOKEN).await.unwrap();
    let mut session = hub.next_session().await;
    let hello = session.handshake(60_000).await;
    Connected { hub, dir, agent, events, login, session, hello }
}

async fn wait_for(events: &mut broadcast::Receiver<AgentEvent>, wanted: impl Fn(&AgentEvent) -> bool) -> AgentEvent {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("event in time")
}

fn assign(session: &FakeSession, id: &str, job_type: &str, payload: serde_json::Value) {
    session.send_json(json!({"t": "job_assign", "job": {"jobId": id, "type": job_type, "payload": payload}}));
}

async fn expect_ack(session: &mut FakeSession, id: &str) {
    match session.recv_skipping_hb().await {
        AgentFrame::JobAck { id: acked } => assert_eq!(acked, id),
        other => panic!("expected job_ack for {id}, got {other:?}"),
    }
}

async fn expect_result(
    session: &mut FakeSession,
    id: &str,
) -> (JobStatus, Option<serde_json::Value>, Option<edge_protocol::JobError>) {
    match session.recv_skipping_hb().await {
        AgentFrame::JobResult { id: done, status, data, err } => {
            assert_eq!(done, id);
            (status, data, err)
        }
        other => panic!("expected job_result for {id}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_runs_jobs_answers_bad_frames_and_honours_pause_and_cancel() {
    let Connected { hub, dir, agent, mut events, login, mut session, hello } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    assert_eq!((login.agent_id.as_str(), login.creator_id.as_str()), ("agt-1", "cr-1"));
    assert_eq!(login.keychain_backend, "memory");
    match hello {
        AgentFrame::Hello { protocol, v, capabilities, slots, paused, running, .. } => {
            assert_eq!(running, Some(Vec::new()), "a fresh agent says it holds no job");
            assert_eq!(protocol, edge_protocol::PROTOCOL_VERSION);
            assert_eq!(v, edge_agent::agent_version());
            assert!(capabilities.iter().any(|c| c == "http_request"));
            assert_eq!(slots, 2);
            assert!(!paused);
        }
        _ => unreachable!(),
    }
    wait_for(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    assert_eq!(agent.snapshot().connection, ConnectionState::Online);

    // Malformed frames get an error frame back, and the session carries on.
    session.send_text("{not json");
    match session.recv_skipping_hb().await {
        AgentFrame::Error(e) => assert_eq!(e.code, "BAD_FRAME"),
        other => panic!("expected error frame, got {other:?}"),
    }
    session.send_json(json!({"t": "teleport"}));
    match session.recv_skipping_hb().await {
        AgentFrame::Error(e) => assert_eq!(e.code, "UNKNOWN_TYPE"),
        other => panic!("expected error frame, got {other:?}"),
    }
    session.send_json(json!({"t": "job_assign"}));
    match session.recv_skipping_hb().await {
        AgentFrame::Error(e) => assert_eq!(e.code, "BAD_FRAME"),
        other => panic!("expected error frame, got {other:?}"),
    }

    // A real job.
    assign(&session, "job-ok", "http_request", json!({"url": hub.target("/redirect/2")}));
    expect_ack(&mut session, "job-ok").await;
    let (status, data, _) = expect_result(&mut session, "job-ok").await;
    assert_eq!(status, JobStatus::Ok);
    let data = data.unwrap();
    assert_eq!(data["statusCode"], 200);
    assert_eq!(BASE64.decode(data["body"].as_str().unwrap()).unwrap(), b"hello world");
    wait_for(&mut events, |e| matches!(e, AgentEvent::JobFinished { id, .. } if id == "job-ok")).await;

    // Unknown type.
    assign(&session, "job-odd", "screenshot", json!({}));
    expect_ack(&mut session, "job-odd").await;
    let (status, _, err) = expect_result(&mut session, "job-odd").await;
    assert_eq!(status, JobStatus::Error);
    assert_eq!(err.unwrap().code, ErrorCode::UnsupportedJob);

    // Cancel a running job.
    assign(&session, "job-slow", "http_request", json!({"url": hub.target("/slow/20000")}));
    expect_ack(&mut session, "job-slow").await;
    wait_for(&mut events, |e| matches!(e, AgentEvent::JobStarted { id, .. } if id == "job-slow")).await;
    session.send_json(json!({"t": "job_cancel", "id": "job-slow"}));
    let (_, _, err) = expect_result(&mut session, "job-slow").await;
    assert_eq!(err.unwrap().code, ErrorCode::Cancelled);

    // Pause: availability, then jobs are refused with AGENT_PAUSED.
    agent.pause();
    match session.recv_skipping_hb().await {
        AgentFrame::Availability(a) => assert!(a.paused),
        other => panic!("expected availability, got {other:?}"),
    }
    assign(&session, "job-paused", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-paused").await;
    let (_, _, err) = expect_result(&mut session, "job-paused").await;
    assert_eq!(err.unwrap().code, ErrorCode::AgentPaused);
    agent.resume();
    match session.recv_skipping_hb().await {
        AgentFrame::Availability(a) => assert!(!a.paused),
        other => panic!("expected availability, got {other:?}"),
    }

    let snapshot = agent.snapshot();
    assert_eq!(snapshot.connection, ConnectionState::Online);
    assert!(snapshot.logged_in);
    assert_eq!(snapshot.busy, 0);
    let statuses: Vec<_> = snapshot.recent_jobs.iter().map(|j| (j.id.as_str(), j.status)).collect();
    assert_eq!(statuses[0], ("job-paused", JobRunStatus::Failed));
    assert!(statuses.contains(&("job-ok", JobRunStatus::Succeeded)));

    // state.json mirrors the snapshot and holds no secret.
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(state.contains("\"agentId\": \"agt-1\""));
    assert!(!state.contains("jwt-"), "token leaked into state.json");
    assert!(!state.to_lowercase().contains("devicekey"));

    agent.shutdown().await;
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["running"], false);
    assert_eq!(state["snapshot"]["connection"], "offline");
}

/// The person's Cancel (the tray's Jobs screen): the job ends with the protocol's
/// `CANCELLED`, the hub hears it through the job's `job_result`, the window through the
/// record and `JobFailed`; a job that is not running any more cannot be cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_person_cancels_a_running_job_and_the_hub_is_told() {
    let Connected { hub, dir: _dir, agent, mut events, login: _login, mut session, hello } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    match hello {
        AgentFrame::Hello { capabilities, .. } => assert!(capabilities.iter().any(|c| c == "job_progress")),
        _ => unreachable!(),
    }
    assign(&session, "job-long", "http_request", json!({"url": hub.target("/slow/20000")}));
    expect_ack(&mut session, "job-long").await;
    wait_for(&mut events, |e| matches!(e, AgentEvent::JobStarted { id, .. } if id == "job-long")).await;
    agent.cancel_job("job-long").await.unwrap();
    let (status, _, err) = expect_result(&mut session, "job-long").await;
    assert_eq!(status, JobStatus::Error);
    let err = err.unwrap();
    assert_eq!(err.code, ErrorCode::Cancelled);
    assert_eq!(err.message.as_deref(), Some(edge_agent::service::CANCELLED_HERE));
    let failed = wait_for(&mut events, |e| matches!(e, AgentEvent::JobFailed { id, .. } if id == "job-long")).await;
    assert!(matches!(failed, AgentEvent::JobFailed { code, .. } if code == "CANCELLED"));
    let record = agent.snapshot().recent_jobs.into_iter().find(|r| r.id == "job-long").unwrap();
    assert_eq!((record.status, record.error_code.as_deref()), (JobRunStatus::Failed, Some("CANCELLED")));

    let again = agent.cancel_job("job-long").await.unwrap_err();
    assert!(matches!(again, AgentError::JobNotRunning(_)), "{again:?}");
    assert_eq!(again.code(), "job_not_running");
    assert!(matches!(agent.cancel_job("job-never").await, Err(AgentError::JobNotRunning(_))));
    agent.shutdown().await;
}

/// A pause with an end ends by itself; the pause and its end survive a restart; one whose
/// end passed while the agent was stopped is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_until_a_time_ends_by_itself_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = || {
        AgentService::with_store(AgentSettings::new(dir.path().to_path_buf()), Arc::new(MemoryCredentialStore::new()))
    };
    let agent = fresh();
    let mut events = agent.subscribe();
    agent.pause_for(edge_agent::pause::PauseLength::OneHour);
    let snapshot = agent.snapshot();
    assert!(snapshot.paused);
    let until = snapshot.paused_until.clone().expect("an end");
    let end = chrono::DateTime::parse_from_rfc3339(&until).unwrap();
    let left = end.signed_duration_since(chrono::Utc::now()).num_minutes();
    assert!((58..=60).contains(&left), "{left} minutes left");
    wait_for(&mut events, |e| matches!(e, AgentEvent::Paused)).await;

    // A restart keeps it.
    drop(agent);
    let agent = fresh();
    assert!(agent.snapshot().paused);
    assert_eq!(agent.snapshot().paused_until.as_deref(), Some(until.as_str()));

    // An end a moment away: the agent takes jobs again by itself.
    let mut events = agent.subscribe();
    agent.pause_until(Some(chrono::Utc::now() + chrono::Duration::milliseconds(300)));
    assert!(agent.snapshot().paused);
    wait_for(&mut events, |e| matches!(e, AgentEvent::Resumed)).await;
    assert!(!agent.snapshot().paused);
    assert_eq!(agent.snapshot().paused_until, None);
    assert!(!fresh().snapshot().paused, "the ended pause is not kept");

    // Until resumed: kept, with no end.
    agent.pause();
    assert!(fresh().snapshot().paused);
    assert_eq!(fresh().snapshot().paused_until, None);
    agent.resume();
    assert!(!fresh().snapshot().paused);

    // An end that passed while no agent ran.
    let past = edge_agent::pause::PauseState { paused: true, until_ms: Some(edge_agent::pause::now_ms() - 1_000) };
    edge_agent::pause::PauseFile::new(dir.path()).save(&past).unwrap();
    assert!(!fresh().snapshot().paused);
}

/// `{"a":{"a":…{}…}}`, `levels` deep.
fn nested(levels: usize) -> String {
    format!("{}{{}}{}", r#"{"a":"#.repeat(levels - 1), "}".repeat(levels - 1))
}

/// Issue 18: a `job_assign` the agent cannot read used to get an `error` frame only, so the
/// hub kept the job (and the agent's slot) leased for ever. Now it is answered by its id
/// with `BAD_PAYLOAD`, and takes no slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_assign_it_cannot_read_is_answered_bad_payload_by_its_id() {
    let Connected { hub, dir: _dir, agent, mut events, mut session, .. } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    wait_for(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    // Too deep for any JSON parser with a recursion limit (the frame adds two levels), far
    // too deep, and readable but over the protocol's payload depth limit.
    let cases =
        [("job-deep-127", 127), ("job-deep-5000", 5_000), ("job-deep-limit", edge_protocol::MAX_PAYLOAD_DEPTH + 1)];
    for (id, levels) in cases {
        session.send_text(format!(
            r#"{{"t":"job_assign","job":{{"jobId":"{id}","type":"http_request","payload":{}}}}}"#,
            nested(levels)
        ));
        expect_ack(&mut session, id).await;
        let (status, data, err) = expect_result(&mut session, id).await;
        assert_eq!((status, data), (JobStatus::Error, None), "{id}");
        let err = err.expect("an error");
        assert_eq!(err.code, ErrorCode::BadPayload, "{id}: {err:?}");
        assert!(!err.code.is_retryable());
        assert!(err.message.as_deref().is_some_and(|m| !m.is_empty()), "{id}: the message says why");
    }
    // No slot was taken: the agent's two slots both run jobs at once.
    assert_eq!(agent.snapshot().busy, 0);
    for id in ["job-after-1", "job-after-2"] {
        assign(&session, id, "http_request", json!({"url": hub.target("/slow/20000")}));
        expect_ack(&mut session, id).await;
    }
    let mut started = std::collections::BTreeSet::new();
    while started.len() < 2 {
        if let AgentEvent::JobStarted { id, .. } =
            wait_for(&mut events, |e| matches!(e, AgentEvent::JobStarted { .. })).await
        {
            started.insert(id);
        }
    }
    assert_eq!(started.into_iter().collect::<Vec<_>>(), ["job-after-1", "job-after-2"]);
    assert_eq!(agent.snapshot().busy, 2);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_install_announces_no_job_type_and_refuses_what_was_not_granted() {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = service(dir.path(), Duration::from_secs(25), &hub);
    agent.login(&hub.url, ENROLL_TOKEN).await.unwrap();
    let mut session = hub.next_session().await;
    let AgentFrame::Hello { capabilities, .. } = session.handshake(60_000).await else { unreachable!() };
    for job_type in ["http_request", "bundle", "send_dm", "broadcast_dm", "schedule_post", "scrape_subs"] {
        assert!(!capabilities.iter().any(|c| c == job_type), "{job_type} announced without a grant: {capabilities:?}");
    }
    assert!(!capabilities.iter().any(|c| c.starts_with("browser:")), "{capabilities:?}");

    // A hub that assigns it anyway: refused, never run, and not to be retried.
    assign(&session, "job-ungranted", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-ungranted").await;
    let (status, data, err) = expect_result(&mut session, "job-ungranted").await;
    assert_eq!((status, data), (JobStatus::Error, None));
    let err = err.unwrap();
    assert_eq!(err.code, ErrorCode::CapabilityNotGranted);
    assert!(!err.code.is_retryable());
    assert!(err.message.unwrap().contains("edge-agent consent grant http_request"));

    // Granted while the agent runs: asked at every job, so the next one runs.
    let consent = Consent::new(dir.path());
    consent.grant(&Capability::HttpRequest).unwrap();
    assign(&session, "job-granted", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-granted").await;
    let (status, data, _) = expect_result(&mut session, "job-granted").await;
    assert_eq!(status, JobStatus::Ok);
    assert_eq!(data.unwrap()["statusCode"], 200);

    // Revoked: refused from the next job on, without a restart.
    assert!(consent.revoke(&Capability::HttpRequest).unwrap());
    assign(&session, "job-revoked", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-revoked").await;
    let (_, _, err) = expect_result(&mut session, "job-revoked").await;
    assert_eq!(err.unwrap().code, ErrorCode::CapabilityNotGranted);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_quiet_hours_the_hub_hears_paused_and_a_job_it_sends_anyway_is_refused() {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    Consent::new(dir.path()).grant(&Capability::HttpRequest).unwrap();
    // Quiet all day but for the minute four minutes from now: far longer than this test.
    let now = edge_agent::limits::local_minute_now();
    let at = |minutes: u16| {
        let m = (now + minutes) % (24 * 60);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    let mut settings = LocalSettings::load(dir.path()).unwrap();
    settings.quiet_hours = Some(QuietHours::new(&at(5), &at(4)).unwrap());
    settings.save(dir.path()).unwrap();
    let agent = service(dir.path(), Duration::from_secs(25), &hub);
    agent.login(&hub.url, ENROLL_TOKEN).await.unwrap();
    let mut session = hub.next_session().await;
    match session.handshake(60_000).await {
        AgentFrame::Hello { paused, .. } => assert!(paused, "the hub is told at once: no job now"),
        _ => unreachable!(),
    }
    assert_eq!(agent.snapshot().quiet_until, Some(at(4)));
    assert!(!agent.snapshot().paused, "quiet hours are not the person's pause");

    assign(&session, "job-quiet", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-quiet").await;
    let (_, _, err) = expect_result(&mut session, "job-quiet").await;
    let err = err.expect("refused in quiet hours");
    assert_eq!(err.code, ErrorCode::AgentPaused);
    assert!(err.message.unwrap().contains(&format!("quiet hours until {}", at(4))));

    // The person clears them in Settings: the hub hears it without waiting for the clock.
    settings.quiet_hours = None;
    settings.save(dir.path()).unwrap();
    agent.apply_local_settings().unwrap();
    match session.recv_skipping_hb().await {
        AgentFrame::Availability(a) => assert!(!a.paused),
        other => panic!("expected availability, got {other:?}"),
    }
    assert_eq!(agent.snapshot().quiet_until, None);
    assign(&session, "job-after", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-after").await;
    let (status, _, err) = expect_result(&mut session, "job-after").await;
    assert_eq!(status, JobStatus::Ok, "{err:?}");
    agent.shutdown().await;
}

/// Runs two `http_request` jobs on an agent whose person capped jobs per hour at `mine` and
/// whose hub sent `hub` in `hello_ack`; the second job's error, if any.
async fn second_job_under_caps(mine: Option<u32>, hub_limits: serde_json::Value) -> Option<edge_protocol::JobError> {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    Consent::new(dir.path()).grant(&Capability::HttpRequest).unwrap();
    let mut settings = LocalSettings::load(dir.path()).unwrap();
    settings.caps.jobs_per_hour = mine;
    settings.save(dir.path()).unwrap();
    let agent = service(dir.path(), Duration::from_secs(25), &hub);
    agent.login(&hub.url, ENROLL_TOKEN).await.unwrap();
    let mut session = hub.next_session().await;
    session.handshake_with_limits(60_000, Some(hub_limits)).await;
    assign(&session, "job-1", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-1").await;
    let (status, _, err) = expect_result(&mut session, "job-1").await;
    assert_eq!(status, JobStatus::Ok, "{err:?}");
    assign(&session, "job-2", "http_request", json!({"url": hub.target("/hello")}));
    expect_ack(&mut session, "job-2").await;
    let (_, _, err) = expect_result(&mut session, "job-2").await;
    agent.shutdown().await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_lowers_the_persons_jobs_per_hour_and_never_raises_it() {
    // The person's cap of 1 stands against a hub asking for 1000.
    let err = second_job_under_caps(Some(1), json!({"jobsPerHour": 1000})).await.expect("the second job is refused");
    assert_eq!(err.code, ErrorCode::RateLimited);
    assert!(err.retry_after_ms.is_some_and(|ms| ms > 3_500_000), "{err:?}");
    assert!(err.message.unwrap().contains("cap of 1 jobs per hour (the person's own"));
    // A hub asking for 1 lowers the person's 10.
    let err = second_job_under_caps(Some(10), json!({"jobsPerHour": 1})).await.expect("the second job is refused");
    assert_eq!(err.code, ErrorCode::RateLimited);
    assert!(err.message.unwrap().contains("set by the hub"));
    // Without either, both run.
    assert_eq!(second_job_under_caps(None, json!({})).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_hub_drops_the_socket_and_delivers_the_pending_result() {
    let Connected { hub, dir: _dir, agent, mut events, session: mut first, .. } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    assign(&first, "job-survives", "http_request", json!({"url": hub.target("/slow/300")}));
    expect_ack(&mut first, "job-survives").await;
    first.drop_connection();

    let disconnected = wait_for(&mut events, |e| matches!(e, AgentEvent::Disconnected { .. })).await;
    let AgentEvent::Disconnected { retry_in_ms: Some(retry), .. } = disconnected else { panic!("{disconnected:?}") };
    assert!(retry <= 1000, "first retry waits at most the 1 s base, got {retry} ms");

    let mut second = hub.next_session().await;
    // The job still runs (or its result waits to be sent): the new hello claims it, so the
    // hub keeps its lease.
    let AgentFrame::Hello { running, .. } = second.handshake(60_000).await else { unreachable!() };
    assert_eq!(running, Some(vec!["job-survives".to_owned()]));
    let (status, _, _) = expect_result(&mut second, "job-survives").await;
    assert_eq!(status, JobStatus::Ok);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4401_gets_a_fresh_token_and_reconnects() {
    let Connected { hub, dir: _dir, agent, session: first, .. } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    assert_eq!(hub.tokens_issued(), 1);
    first.close(4401, "token expired");

    let mut second = hub.next_session().await;
    assert_eq!(hub.tokens_issued(), 2, "a new token (challenge, signature, token) before reconnecting");
    assert_ne!(second.token, first.token);
    second.handshake(60_000).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_they_expire() {
    // 62 s tokens: refresh comes due at 2 s (a minute before expiry).
    let Connected { hub, dir: _dir, agent, session: _session, .. } =
        connect(FakeHub::start_with_ttl(62).await, Duration::from_secs(25)).await;
    tokio::time::timeout(TIMEOUT, async {
        while hub.tokens_issued() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("token refreshed while connected");
    assert_eq!(agent.snapshot().connection, ConnectionState::Online);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4403_stops_and_asks_for_login() {
    let Connected { hub, dir: _dir, agent, mut events, session, .. } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    session.close(4403, "agent revoked");

    let event = wait_for(&mut events, |e| matches!(e, AgentEvent::LoginRequired { .. })).await;
    let AgentEvent::LoginRequired { reason } = event else { unreachable!() };
    assert!(reason.contains("agent revoked"), "{reason}");
    hub.assert_no_session_within(Duration::from_millis(1500)).await;
    let snapshot = agent.snapshot();
    assert!(!snapshot.logged_in);
    assert_eq!(snapshot.connection, ConnectionState::Offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_gets_401_from_token_and_stops() {
    let Connected { hub, dir: _dir, agent: _agent, mut events, session, .. } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    hub.revoke();
    session.close(4401, "token expired");
    let event = wait_for(&mut events, |e| matches!(e, AgentEvent::LoginRequired { .. })).await;
    let AgentEvent::LoginRequired { reason } = event else { unreachable!() };
    assert!(reason.contains("agent revoked"), "{reason}");
    hub.assert_no_session_within(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_needed_or_made_by_another_process_reaches_the_snapshot() {
    let Connected { hub: _hub, dir, agent, mut events, session: _session, .. } =
        connect(FakeHub::start().await, Duration::from_millis(200)).await;
    // Another process (a job's run, or `edge-agent browser login`) writes the list on disk.
    let logins = edge_browser::logins::LoginsNeeded::new(&dir.path().join("browser"));
    logins.mark("fanhub", edge_browser::now_ms());
    wait_for(&mut events, |e| {
        matches!(e, AgentEvent::StateChanged { snapshot }
            if snapshot.browser.as_ref().is_some_and(|b| b.login_required == ["fanhub"]))
    })
    .await;
    logins.clear("fanhub");
    wait_for(&mut events, |e| {
        matches!(e, AgentEvent::StateChanged { snapshot }
            if snapshot.browser.as_ref().is_some_and(|b| b.login_required.is_empty()))
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_is_closed_with_1009_and_the_agent_reconnects() {
    let Connected { hub, dir: _dir, agent, session: mut first, .. } =
        connect(FakeHub::start().await, Duration::from_secs(30)).await;
    let padding = "x".repeat(edge_protocol::MAX_FRAME_BYTES);
    first.send_text(format!(r#"{{"t":"hb_ack","ts":1,"pad":"{padding}"}}"#));
    let (code, reason) = first.recv_close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("limit"), "the reason says why: {reason}");
    // Not a reason to stop: the agent reconnects.
    let mut second = hub.next_session().await;
    second.handshake(60_000).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_hub_is_declared_dead_and_the_agent_reconnects() {
    let Connected { hub, dir: _dir, agent, mut events, session: mut first, .. } =
        connect(FakeHub::start().await, Duration::from_millis(200)).await;
    // The smaller interval (ours, 200 ms) wins; heartbeats flow but the hub never answers.
    assert!(matches!(first.recv().await, AgentFrame::Hb { .. }));
    let event = wait_for(&mut events, |e| matches!(e, AgentEvent::Disconnected { .. })).await;
    let AgentEvent::Disconnected { reason, .. } = event else { unreachable!() };
    assert!(reason.contains("no frame from the hub"), "{reason}");
    let mut second = hub.next_session().await;
    second.handshake(60_000).await;
    agent.shutdown().await;
}

/// A keychain that cannot be used (locked, missing, blocked syscall).
struct BrokenKeychain;

impl edge_agent::CredentialStore for BrokenKeychain {
    fn backend_name(&self) -> Result<String, AgentError> {
        Err(AgentError::KeychainUnavailable("the keychain is locked (test)".into()))
    }
    fn load(&self) -> Result<Option<edge_agent::Credentials>, AgentError> {
        self.backend_name().map(|_| None)
    }
    fn save(&self, _: &edge_agent::Credentials) -> Result<(), AgentError> {
        self.backend_name().map(|_| ())
    }
    fn delete(&self) -> Result<(), AgentError> {
        self.backend_name().map(|_| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_keychain_fails_the_login_before_the_token_is_spent() {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentService::with_store(AgentSettings::new(dir.path().to_path_buf()), Arc::new(BrokenKeychain));
    let error = agent.login(&hub.url, ENROLL_TOKEN).await.unwrap_err();
    assert_eq!(error.code(), "keychain_unavailable", "{error}");
    assert_eq!(hub.enrolled(), 0, "the enrollment token must not be spent on credentials that cannot be kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_errors_keep_the_hubs_words_and_the_url_policy() {
    let hub = FakeHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = service(dir.path(), Duration::from_secs(25), &hub);
    match agent.login(&hub.url, "wrong").await.unwrap_err() {
        AgentError::HubRejected { status, hub_error, message } => {
            assert_eq!(status, 401);
            assert_eq!(hub_error, "invalid_token");
            assert!(message.contains("already used"));
        }
        other => panic!("{other:?}"),
    }
    let err = agent.login("http://hub.example.com", ENROLL_TOKEN).await.unwrap_err();
    assert_eq!(err.code(), "invalid_hub_url");
    assert!(!agent.snapshot().logged_in);

    // start() without credentials: LoginRequired, no connection.
    let mut events = agent.subscribe();
    agent.start().unwrap();
    wait_for(&mut events, |e| matches!(e, AgentEvent::LoginRequired { .. })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_stops_the_loop_and_forgets_the_credentials() {
    let Connected { hub, dir: _dir, agent, session: _session, .. } =
        connect(FakeHub::start().await, Duration::from_secs(25)).await;
    agent.start().unwrap(); // idempotent: no second session
    agent.logout().await.unwrap();
    hub.assert_no_session_within(Duration::from_millis(1500)).await;
    let snapshot = agent.reload_credentials().await.unwrap();
    assert!(!snapshot.logged_in);
    assert_eq!(snapshot.agent_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_carries_the_browser_state_the_tray_window_renders() {
    // An earlier agent process left the circuit breaker open: the guard persists it.
    let dir = tempfile::tempdir().unwrap();
    let breaker = BreakerSettings { threshold: 1, window_ms: 60_000, cooldown_ms: 600_000 };
    let verdict = Guard::open(&dir.path().join("browser"), breaker).record_rate_limited(
        "fanhub",
        1_000,
        "RATE_LIMITED",
        edge_browser::now_ms(),
    );
    let until = verdict.circuit_opened_until_ms.expect("one strike opens a breaker of threshold 1");

    let Connected { hub: _hub, dir: _dir, agent, mut events, session: _session, .. } =
        connect_in(FakeHub::start().await, dir, Duration::from_secs(25)).await;
    // The field names are the window's contract (ui/src/types.ts).
    let snapshot = serde_json::to_value(agent.snapshot()).unwrap();
    let browser = &snapshot["browser"];
    assert_eq!(browser["circuitOpenUntilMs"], json!(until), "{snapshot}");
    assert_eq!(browser["circuitReason"], "RATE_LIMITED", "{snapshot}");
    assert_eq!(browser["sessionVolatile"], false, "{snapshot}");
    assert_eq!(browser["loginRequired"], json!([]), "{snapshot}");
    assert!(browser.get("executable").is_some(), "{snapshot}");

    // Closing the breaker sends a fresh snapshot, so the window never shows a stale pause.
    agent.browser_resume();
    let event = wait_for(&mut events, |e| {
        matches!(e, AgentEvent::StateChanged { snapshot }
            if snapshot.browser.as_ref().is_some_and(|b| b.circuit_open_until_ms.is_none()))
    })
    .await;
    let AgentEvent::StateChanged { snapshot } = event else { unreachable!() };
    assert_eq!(snapshot.browser.map(|b| b.circuit_reason), Some(None));
    agent.shutdown().await;
}

#[test]
fn events_and_snapshots_serialise_in_camel_case() {
    let event = AgentEvent::JobFailed {
        id: "j".into(),
        job_type: "http_request".into(),
        code: "NETWORK".into(),
        message: "m".into(),
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({"type": "jobFailed", "id": "j", "jobType": "http_request", "code": "NETWORK", "message": "m"})
    );
    let event = AgentEvent::Disconnected { reason: "r".into(), retry_in_ms: Some(5) };
    assert_eq!(serde_json::to_value(&event).unwrap(), json!({"type": "disconnected", "reason": "r", "retryInMs": 5}));
    assert_eq!(serde_json::to_value(AgentEvent::Paused).unwrap(), json!({"type": "paused"}));
}
