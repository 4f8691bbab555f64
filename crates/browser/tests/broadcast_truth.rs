//! `broadcast_dm` reports only what it knows (issue 18), in real Chromium against the local
//! test site, which counts the messages it received: a send the site throttled (HTTP 429
//! and its rate-limit banner) is not in `sentRecipients` and is sent by the retry after the
//! back-off; a send whose outcome is unknown (pressed but never confirmed, or cut by a
//! crash) is in `uncertainRecipients` only and is never sent twice. The hub's side (the
//! ledger) is in `crates/hub/tests/conformance.rs`. Here the crash is the checkpoint a
//! killed agent leaves behind; a real SIGKILL of the agent is in
//! `tests/e2e/tests/broadcast_truth.rs`.

use edge_browser::checkpoint::{CheckpointStore, Progress};
use edge_browser::confine::Uploads;
use edge_browser::runtime::{BrowserRuntime, BrowserSettings};
use edge_browser::testsite::{quick_settings, FixedKey, Quiet, Site};
use edge_browser::{Adapter, JobOutcome};
use edge_protocol::jobs::BrowserJobPayload;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn settings(dir: &std::path::Path) -> BrowserSettings {
    let mut s = quick_settings(dir, "test");
    // One throttling episode must not open the circuit.
    s.breaker = edge_browser::guard::BreakerSettings { threshold: 3, window_ms: 60_000, cooldown_ms: 2_000 };
    s
}

async fn broadcast(
    runtime: &BrowserRuntime,
    job_id: &str,
    adapter: &Adapter,
    recipients: &[&str],
    text: &str,
) -> JobOutcome {
    let payload: BrowserJobPayload =
        serde_json::from_value(json!({"adapter": {}, "recipients": recipients, "params": {"text": text}})).unwrap();
    runtime.run_job("broadcast_dm", job_id, &payload, adapter, &Uploads::none()).await
}

/// Progress as the runtime reported it (`done`, `total`).
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(u32, u32)>>);

impl edge_browser::JobReporter for Recorder {
    fn progress(&self, done: u32, total: u32) {
        self.0.lock().unwrap().push((done, total));
    }
}

async fn broadcast_reporting(
    runtime: &BrowserRuntime,
    job_id: &str,
    adapter: &Adapter,
    recipients: &[&str],
    text: &str,
) -> (JobOutcome, Vec<(u32, u32)>) {
    let payload: BrowserJobPayload =
        serde_json::from_value(json!({"adapter": {}, "recipients": recipients, "params": {"text": text}})).unwrap();
    let recorder = Recorder::default();
    let outcome =
        runtime.run_job_reporting("broadcast_dm", job_id, &payload, adapter, &Uploads::none(), &recorder).await;
    let progress = recorder.0.into_inner().unwrap();
    (outcome, progress)
}

/// The result's `data`, whether the job succeeded or failed (a partial run's).
fn data(outcome: &JobOutcome) -> Value {
    match &outcome.result {
        Ok(data) => data.clone(),
        Err(_) => outcome.error_data.clone().expect("a failed broadcast still reports its data"),
    }
}

fn code(outcome: &JobOutcome) -> String {
    outcome.result.as_ref().err().map(|e| e.code.to_string()).unwrap_or_else(|| "OK".into())
}

fn counts(site: &Site, recipients: &[&str]) -> Vec<usize> {
    recipients.iter().map(|r| site.messages_to(r).len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reports_only_what_it_knows() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let site = Site::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = BrowserRuntime::new(settings(dir.path()), Arc::new(FixedKey([9; 32])), Arc::new(Quiet));
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = site.adapter();
    let login_adapter = site.auto_login_adapter();
    runtime.interactive_login(&login_adapter, false, Duration::from_secs(20)).await.unwrap();
    // The same site seen through adapters that cannot confirm a send (the confirmation never
    // shows) or cannot ask the site afterwards (no `sentMessage`).
    let mut unconfirmed = adapter.clone();
    unconfirmed.selectors.insert("sentConfirmation".into(), ".never-shown".into());
    unconfirmed.settings.timeout_ms = 3_000;
    let mut unconfirmed_unchecked = unconfirmed.clone();
    unconfirmed_unchecked.selectors.remove("sentMessage");
    let mut unchecked = adapter.clone();
    unchecked.selectors.remove("sentMessage");

    // 1. The site throttles after two sends: 429 with its banner. The third recipient is not
    // reported sent, and nobody is uncertain. (On a site that cannot be asked afterwards: the
    // throttled send must be known as not sent, not guessed about on the retry.)
    let fans = ["t1", "t2", "t3", "t4"];
    site.set_rate_limit(Some((2, Duration::from_secs(60))));
    let (out, progress) = broadcast_reporting(&runtime, "job_throttled", &unchecked, &fans, "Throttled hello").await;
    assert_eq!(code(&out), "RATE_LIMITED", "{:?}", out.result);
    // Progress counts the recipients behind it: two sent, then the throttled third stops it.
    assert_eq!(progress, [(0, 4), (1, 4), (2, 4)]);
    let back_off = out.result.as_ref().unwrap_err().retry_after_ms.expect("a back-off");
    assert_eq!(data(&out)["sentRecipients"], json!(["t1", "t2"]), "{}", data(&out));
    assert_eq!(data(&out)["uncertainRecipients"], json!([]));
    assert_eq!(counts(&site, &fans), [1, 1, 0, 0], "the site refused t3");
    assert!(site.rate_limited_count() >= 1);
    // The hub retries after the back-off with the recipients not yet messaged (a known
    // wait, not an assertion). The throttled one is sent now, once.
    site.set_rate_limit(None);
    tokio::time::sleep(Duration::from_millis(back_off + 100)).await;
    let (out, progress) =
        broadcast_reporting(&runtime, "job_throttled", &unchecked, &fans[2..], "Throttled hello").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(progress, [(0, 2), (1, 2), (2, 2)], "the retry's own recipients, to the end");
    assert_eq!(data(&out)["sentRecipients"], json!(fans));
    assert_eq!(counts(&site, &fans), [1, 1, 1, 1], "each exactly once");

    // 2. Pressed, never confirmed, and no way to ask the site: uncertain, never sent again,
    // never reported sent, even when the retry carries the recipient again.
    let fans = ["u1", "u2"];
    let out = broadcast(&runtime, "job_unconfirmed", &unconfirmed_unchecked, &fans, "Maybe hello").await;
    assert_eq!(code(&out), "NAV_TIMEOUT", "{:?}", out.result);
    assert_eq!(data(&out)["sentRecipients"], json!([]), "{}", data(&out));
    assert_eq!(data(&out)["uncertainRecipients"], json!(["u1"]));
    assert_eq!(counts(&site, &fans), [1, 0], "the site did get u1's message: the agent could not know");
    let out = broadcast(&runtime, "job_unconfirmed", &unchecked, &fans, "Maybe hello").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(data(&out)["sentRecipients"], json!(["u2"]));
    assert_eq!(data(&out)["uncertainRecipients"], json!(["u1"]));
    assert_eq!(counts(&site, &fans), [1, 1], "u1 was not messaged twice");

    // 3. Pressed, never confirmed, but the site can be asked: uncertain until the retry asks,
    // which finds the message and sends nothing more.
    let out = broadcast(&runtime, "job_checked", &unconfirmed, &["v1"], "Checked hello").await;
    assert_eq!(code(&out), "NAV_TIMEOUT", "{:?}", out.result);
    assert_eq!(
        (data(&out)["sentRecipients"].clone(), data(&out)["uncertainRecipients"].clone()),
        (json!([]), json!(["v1"]))
    );
    let out = broadcast(&runtime, "job_checked", &adapter, &["v1"], "Checked hello").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(
        (data(&out)["sentRecipients"].clone(), data(&out)["uncertainRecipients"].clone()),
        (json!(["v1"]), json!([]))
    );
    assert_eq!(site.messages_to("v1").len(), 1);

    // 4. Cut by a crash mid-send (the checkpoint as a killed agent leaves it) on a site that
    // cannot be asked: uncertain, not sent again, not reported sent.
    let store = CheckpointStore::new(dir.path().join("browser/checkpoints"));
    let crashed: Vec<String> = vec!["w1".into(), "w2".into()];
    let mut cp = store.open("job_crashed", "job_crashed", &crashed).unwrap();
    store.mark(&mut cp, 0, Progress::Sending).unwrap();
    let out = broadcast(&runtime, "job_crashed", &unchecked, &["w1", "w2"], "After a crash").await;
    assert_eq!(code(&out), "OK", "{:?}", out.result);
    assert_eq!(data(&out)["sentRecipients"], json!(["w2"]));
    assert_eq!(data(&out)["uncertainRecipients"], json!(["w1"]));
    assert_eq!(counts(&site, &["w1", "w2"]), [0, 1], "w1 is not messaged on a guess");
    let stored = store.open("job_crashed", "job_crashed", &[]).unwrap();
    assert_eq!(stored.recipients[0].state, Progress::Uncertain);
}
