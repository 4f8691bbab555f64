//! `send_dm` reports only what it knows, in real Chromium against the local test site,
//! which counts the messages it received. `send_dm` is one recipient of a broadcast: its
//! send is checkpointed under the job (`idemKey`, else the job id) and its submit watched.
//! A send pressed and then cut (its confirmation never came, or the agent was killed during
//! it) on a site that cannot be asked afterwards fails `SEND_UNCERTAIN`, which the hub never
//! retries, with the recipient in `uncertainRecipients`; a redelivery does not send it
//! again. On a site that can be asked (`selectors.sentMessage`) the agent asks, finds the
//! message and reports a success: the person got it once. A send the site refused stays
//! its own error and is sent by the retry. A real SIGKILL of the agent is in
//! `tests/e2e/tests/broadcast_truth.rs`.

use edge_browser::checkpoint::{CheckpointStore, Progress};
use edge_browser::confine::Uploads;
use edge_browser::runtime::{BrowserRuntime, BrowserSettings};
use edge_browser::testsite::{quick_settings, FixedKey, Quiet, Site};
use edge_browser::{Adapter, JobOutcome};
use edge_protocol::jobs::BrowserJobPayload;
use edge_protocol::ErrorCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn settings(dir: &std::path::Path) -> BrowserSettings {
    let mut s = quick_settings(dir, "test");
    // One throttling episode must not open the circuit.
    s.breaker = edge_browser::guard::BreakerSettings { threshold: 3, window_ms: 60_000, cooldown_ms: 2_000 };
    s
}

async fn send_dm(runtime: &BrowserRuntime, job_id: &str, adapter: &Adapter, recipient: &str, text: &str) -> JobOutcome {
    let payload: BrowserJobPayload =
        serde_json::from_value(json!({"adapter": {}, "recipient": recipient, "params": {"text": text}})).unwrap();
    runtime.run_job("send_dm", job_id, &payload, adapter, &Uploads::none()).await
}

/// The result's `data`, or the data a failed job reports with its error.
fn data(outcome: &JobOutcome) -> Value {
    match &outcome.result {
        Ok(data) => data.clone(),
        Err(_) => outcome.error_data.clone().unwrap_or(Value::Null),
    }
}

fn code(outcome: &JobOutcome) -> String {
    outcome.result.as_ref().err().map(|e| e.code.to_string()).unwrap_or_else(|| "OK".into())
}

fn reported(outcome: &JobOutcome) -> (Value, Value) {
    let data = data(outcome);
    (data["sentRecipients"].clone(), data["uncertainRecipients"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dm_reports_only_what_it_knows_and_never_sends_twice() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let site = Site::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = BrowserRuntime::new(settings(dir.path()), Arc::new(FixedKey([9; 32])), Arc::new(Quiet));
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = site.adapter();
    runtime.interactive_login(&site.auto_login_adapter(), false, Duration::from_secs(20)).await.unwrap();
    // The same site through adapters that cannot confirm a send (the confirmation never
    // shows: the job is cut by its timeout after the submit) or cannot ask the site.
    let mut unconfirmed = adapter.clone();
    unconfirmed.selectors.insert("sentConfirmation".into(), ".never-shown".into());
    unconfirmed.settings.timeout_ms = 3_000;
    let mut unconfirmed_unchecked = unconfirmed.clone();
    unconfirmed_unchecked.selectors.remove("sentMessage");
    let mut unchecked = adapter.clone();
    unchecked.selectors.remove("sentMessage");

    // 1. Pressed, never confirmed, no way to ask: SEND_UNCERTAIN (the hub never retries it),
    // the recipient only in `uncertainRecipients`.
    let out = send_dm(&runtime, "job_unconfirmed", &unconfirmed_unchecked, "u1", "Maybe hello").await;
    assert_eq!(code(&out), "SEND_UNCERTAIN", "{:?}", out.result);
    let error = out.result.as_ref().unwrap_err();
    assert!(!error.code.is_retryable());
    let message = error.message.as_deref().unwrap_or_default();
    assert!(message.contains("\"u1\"") && message.contains("NAV_TIMEOUT"), "{message}");
    assert_eq!(reported(&out), (json!([]), json!(["u1"])));
    assert_eq!(site.messages_to("u1").len(), 1, "the site did get u1's message: the agent could not know");
    // Redelivered anyway (a redrive, or an old hub): still uncertain, not sent again, even
    // through an adapter that could now confirm a send.
    let out = send_dm(&runtime, "job_unconfirmed", &unchecked, "u1", "Maybe hello").await;
    assert_eq!(code(&out), "SEND_UNCERTAIN", "{:?}", out.result);
    assert_eq!(reported(&out), (json!([]), json!(["u1"])));
    assert_eq!(site.messages_to("u1").len(), 1, "u1 was not messaged twice");

    // 2. Pressed, never confirmed, and the site can be asked: the agent asks at once, finds
    // the message, reports a success; nothing is sent twice, also on a redelivery.
    let out = send_dm(&runtime, "job_checked", &unconfirmed, "v1", "Checked hello").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(reported(&out), (json!(["v1"]), json!([])));
    assert_eq!(site.messages_to("v1").len(), 1);
    let out = send_dm(&runtime, "job_checked", &adapter, "v1", "Checked hello").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(data(&out)["alreadySent"], json!(["v1"]));
    assert_eq!(site.messages_to("v1").len(), 1, "delivered once");

    // 3. Cut by a crash mid-send (the checkpoint a killed agent leaves), then redelivered.
    let store = CheckpointStore::new(dir.path().join("browser/checkpoints"));
    for (job, recipient) in [("job_crashed", "w1"), ("job_crashed_checked", "w2")] {
        let mut cp = store.open(job, job, &[recipient.to_owned()]).unwrap();
        store.mark(&mut cp, 0, Progress::Sending).unwrap();
    }
    // Without a way to ask: uncertain, not sent on a guess.
    let out = send_dm(&runtime, "job_crashed", &unchecked, "w1", "After a crash").await;
    assert_eq!(code(&out), "SEND_UNCERTAIN", "{:?}", out.result);
    assert!(out.result.as_ref().unwrap_err().message.as_deref().unwrap_or_default().contains("cut during the send"));
    assert_eq!(reported(&out), (json!([]), json!(["w1"])));
    assert!(site.messages_to("w1").is_empty(), "w1 is not messaged on a guess");
    assert_eq!(store.open("job_crashed", "job_crashed", &[]).unwrap().recipients[0].state, Progress::Uncertain);
    // With a way to ask: the site has no such message, so it is sent, once.
    let out = send_dm(&runtime, "job_crashed_checked", &adapter, "w2", "After a crash").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(reported(&out), (json!(["w2"]), json!([])));
    assert_eq!(site.messages_to("w2").len(), 1);

    // 4. Refused by the site (HTTP 429 and its banner): its own error, retried by the hub's
    // rules; the retry sends it, once.
    site.set_rate_limit(Some((0, Duration::from_secs(60))));
    let out = send_dm(&runtime, "job_throttled", &unchecked, "t1", "Throttled hello").await;
    site.set_rate_limit(None);
    let error = out.result.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::RateLimited, "{error:?}");
    assert!(error.code.is_retryable());
    assert!(site.messages_to("t1").is_empty());
    let back_off = error.retry_after_ms.expect("a back-off");
    tokio::time::sleep(Duration::from_millis(back_off + 100)).await;
    let out = send_dm(&runtime, "job_throttled", &unchecked, "t1", "Throttled hello").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(reported(&out), (json!(["t1"]), json!([])));
    assert_eq!(site.messages_to("t1").len(), 1);
}
