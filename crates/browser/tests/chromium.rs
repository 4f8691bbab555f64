//! The browser runtime against the local test site in real Chromium (`/usr/bin/chromium` or
//! `EDGE_AGENT_BROWSER`), without hub or agent: every flow, dry-run, the alt skin with the
//! same flow, checkpoint resume, alarms, guardrails, circuit breaker, sessions and restarts.
//! One test function so one browser serves every scenario (it is the warm browser under test).

use base64::Engine;
use edge_browser::checkpoint::{CheckpointStore, Progress};
use edge_browser::confine::Uploads;
use edge_browser::runtime::{BrowserEvent, BrowserRuntime, BrowserSettings, KeyStore, Notifier};
use edge_browser::session::SessionKey;
use edge_browser::testsite::Site;
use edge_protocol::jobs::BrowserJobPayload;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct FixedKey(Option<[u8; 32]>);
impl KeyStore for FixedKey {
    fn session_key(&self) -> Result<SessionKey, String> {
        self.0.map(SessionKey::from_bytes).ok_or_else(|| "no keychain in this test".to_owned())
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<BrowserEvent>>);
impl Notifier for Events {
    fn notify(&self, event: BrowserEvent) {
        self.0.lock().unwrap().push(event);
    }
}
impl Events {
    fn take(&self) -> Vec<BrowserEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn settings(dir: &std::path::Path) -> BrowserSettings {
    let mut s = edge_browser::testsite::quick_settings(dir, "test");
    s.breaker = edge_browser::guard::BreakerSettings { threshold: 2, window_ms: 60_000, cooldown_ms: 2_000 };
    s
}

fn payload(v: Value) -> BrowserJobPayload {
    serde_json::from_value(v).unwrap()
}

fn code(outcome: &edge_browser::JobOutcome) -> String {
    outcome.result.as_ref().err().map(|e| e.code.to_string()).unwrap_or_else(|| "OK".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_in_real_chromium() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let site = Site::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = [7u8; 32];
    let events = Arc::new(Events::default());
    let runtime = BrowserRuntime::new(settings(dir.path()), Arc::new(FixedKey(Some(key))), events.clone());
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = site.adapter();
    let adapter_json = serde_json::to_value(&adapter).unwrap();

    // Logged out: LOGIN_REQUIRED, and the person is told.
    let out = runtime
        .run_job(
            "send_dm",
            "job_1",
            &payload(json!({"adapter": adapter_json, "recipient": "ann", "params": {"text": "hi"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "LOGIN_REQUIRED", "{:?}", out.result);
    assert!(events.take().contains(&BrowserEvent::LoginRequired { site: "fanhub".into() }));
    assert_eq!(runtime.status().login_required, vec!["fanhub".to_owned()]);

    // The login window (headless here; the e2e test covers the headful CLI): the site's
    // auto-login page stands in for the person. The state is saved encrypted.
    let login_adapter = site.auto_login_adapter();
    let report = runtime.interactive_login(&login_adapter, false, Duration::from_secs(20)).await.unwrap();
    assert!(report.saved_encrypted && report.cookies >= 1);
    assert!(runtime.status().login_required.is_empty());
    let sealed = std::fs::read(runtime.session_path("fanhub")).unwrap();
    assert!(sealed.starts_with(b"EDGESTATE1"));
    for needle in [&b"sid"[..], b"fanhub.theme", b"cookies", b"127.0.0.1"] {
        assert!(
            !sealed.windows(needle.len()).any(|w| w == needle),
            "session file leaks {:?}",
            String::from_utf8_lossy(needle)
        );
    }

    // send_dm: typed like a person, sent once.
    let text = "Hello Ann — thanks for subscribing!";
    let out = runtime
        .run_job(
            "send_dm",
            "job_2",
            &payload(json!({"adapter": {}, "recipient": "Ann", "params": {"text": text}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(out.result.as_ref().unwrap()["sentRecipients"], json!(["Ann"]));
    assert_eq!(site.messages_to("ann"), vec![text.to_owned()]);

    // Dry run: everything but the submit; nothing reaches the site.
    let out = runtime
        .run_job(
            "send_dm",
            "job_3",
            &payload(json!({"adapter": {}, "recipient": "bob", "dryRun": true, "params": {"text": "not sent"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    let data = out.result.unwrap();
    assert_eq!(data["sentRecipients"], json!([]));
    assert_eq!(data["skippedSteps"].as_array().unwrap().len(), 2, "{data}");
    assert!(site.messages_to("bob").is_empty());

    // The same built-in flow on another site: only the adapter differs.
    let alt = site.alt_adapter();
    let mut alt_login = alt.clone();
    alt_login.urls.insert("login".into(), "/login?auto=1&next=/alt/inbox/me".into());
    runtime.interactive_login(&alt_login, false, Duration::from_secs(20)).await.unwrap();
    let out = runtime
        .run_job(
            "send_dm",
            "job_4",
            &payload(json!({"adapter": {}, "recipient": "cy", "params": {"text": "via alt"}})),
            &alt,
            &Uploads::none(),
        )
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(site.messages_to("cy"), vec!["via alt".to_owned()]);

    // schedule_post: local time in Paris, shown by the site in New York time, with media.
    let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake image bytes");
    let out = runtime
        .run_job(
            "schedule_post",
            "job_5",
            &payload(json!({"adapter": {}, "params": {"text": "New set tonight", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris",
                "media": [{"name": "teaser.png", "base64": png}]}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    let data = out.result.unwrap();
    assert_eq!(data["scheduledFor"], json!("2031-07-01T16:30:00Z"));
    let posts = site.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!((posts[0].date.as_str(), posts[0].time.as_str()), ("2031-07-01", "12:30"));
    assert_eq!(posts[0].media, vec![("teaser.png".to_owned(), 21)]);
    assert_eq!(posts[0].zone, "America/New_York");
    assert_eq!(posts[0].text, "New set tonight");

    // scrape_subs: three pages into structured rows.
    let out =
        runtime.run_job("scrape_subs", "job_6", &payload(json!({"adapter": {}})), &adapter, &Uploads::none()).await;
    let data = out.result.unwrap();
    assert_eq!(data["count"], json!(25));
    assert_eq!(data["pages"], json!(3));
    assert_eq!(data["subscribers"][24], json!({"name": "Fan 24", "handle": "@fan24", "since": "2024-01-25"}));
    let out = runtime
        .run_job(
            "scrape_subs",
            "job_6b",
            &payload(json!({"adapter": {}, "params": {"maxPages": 2}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(out.result.unwrap()["count"], json!(20));

    // broadcast_dm: each recipient once; the same job again sends nothing more.
    let fans: Vec<String> = (1..=5).map(|i| format!("fan{i}")).collect();
    let job = json!({"adapter": {}, "recipients": fans, "params": {"text": "Broadcast one"}});
    let out = runtime.run_job("broadcast_dm", "job_7", &payload(job.clone()), &adapter, &Uploads::none()).await;
    assert_eq!(out.result.as_ref().unwrap()["count"], json!(5), "{:?}", out.result);
    let again = runtime.run_job("broadcast_dm", "job_7", &payload(job), &adapter, &Uploads::none()).await;
    assert_eq!(again.result.as_ref().unwrap()["alreadySent"].as_array().unwrap().len(), 5);
    assert!(site.counts_of(&fans).values().all(|n| *n == 1), "{:?}", site.counts_of(&fans));

    // Resume after a crash mid-send: a `sending` recipient whose message is on the site is
    // not messaged again; one whose message is not there is.
    let store = CheckpointStore::new(dir.path().join("browser/checkpoints"));
    let crash: Vec<String> = vec!["gil".into(), "hal".into(), "ida".into()];
    let mut cp = store.open("crash-key", "job_8", &crash).unwrap();
    store.mark(&mut cp, 0, Progress::Sent).unwrap();
    store.mark(&mut cp, 1, Progress::Sending).unwrap();
    store.mark(&mut cp, 2, Progress::Sending).unwrap();
    // gil "was sent" before the crash, hal's send reached the site, ida's did not.
    let hal = runtime
        .run_job(
            "send_dm",
            "job_8a",
            &payload(json!({"adapter": {}, "recipient": "hal", "params": {"text": "Resumed"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert!(hal.result.is_ok());
    let out = runtime
        .run_job(
            "broadcast_dm",
            "job_8",
            &payload(
                json!({"adapter": {}, "recipients": crash, "idemKey": "crash-key", "params": {"text": "Resumed"}}),
            ),
            &adapter,
            &Uploads::none(),
        )
        .await;
    let data = out.result.unwrap();
    assert_eq!(data["sentRecipients"], json!(["gil", "hal", "ida"]));
    assert_eq!(site.messages_to("hal").len(), 1);
    assert_eq!(site.messages_to("ida").len(), 1);
    assert!(site.messages_to("gil").is_empty());

    // Fatal refusals.
    let out = runtime
        .run_job(
            "send_dm",
            "job_9",
            &payload(json!({"adapter": {}, "recipient": "jo", "params": {"text": "BLOCKME"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "CONTENT_BLOCKED");
    let out = runtime
        .run_job(
            "send_dm",
            "job_10",
            &payload(json!({"adapter": {}, "recipient": "jo", "params": {"text": "POLICYME"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "POLICY_VIOLATION");

    // The warm browser died: the next job starts a new one.
    let warm = runtime.warm().unwrap();
    warm.kill_for_test().await;
    let out = runtime
        .run_job(
            "send_dm",
            "job_11",
            &payload(json!({"adapter": {}, "recipient": "kim", "params": {"text": "after restart"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    let args = warm.running_args().await.unwrap();
    for flag in [
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--headless=new",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag}");
    }

    // Rate limits: banner + 429 → RATE_LIMITED with a back-off; twice in the window →
    // circuit breaker, browser jobs refused until the cool-down ends.
    site.set_rate_limit(Some((0, Duration::from_secs(60))));
    events.take();
    let out = runtime
        .run_job(
            "send_dm",
            "job_12",
            &payload(json!({"adapter": {}, "recipient": "lu", "params": {"text": "too fast"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "RATE_LIMITED");
    let back_off = out.result.as_ref().unwrap_err().retry_after_ms;
    assert_eq!(back_off, Some(1000));
    // Waits out the site's back-off (a known time, not an assertion: load can only make the
    // next job later), so the next job reaches the site and is its second strike.
    tokio::time::sleep(Duration::from_millis(back_off.unwrap_or_default() + 100)).await;
    let out = runtime
        .run_job(
            "send_dm",
            "job_13",
            &payload(json!({"adapter": {}, "recipient": "lu", "params": {"text": "too fast"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "RATE_LIMITED");
    let opened = events.take();
    assert!(
        opened.iter().any(|e| matches!(e, BrowserEvent::CircuitOpened { reason, .. } if reason == "RATE_LIMITED")),
        "{opened:?}"
    );
    assert!(runtime.status().circuit_open_until_ms.is_some());
    site.set_rate_limit(None);
    let out =
        runtime.run_job("scrape_subs", "job_14", &payload(json!({"adapter": {}})), &adapter, &Uploads::none()).await;
    assert_eq!(code(&out), "RATE_LIMITED", "circuit open refuses every browser job");
    assert!(out.result.unwrap_err().message.unwrap().contains("circuit breaker"));
    // The cool-down (2 s) ends by itself: wait for the event that says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.contains(&BrowserEvent::CircuitClosed) {
        assert!(tokio::time::Instant::now() < deadline, "the circuit never closed: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen.extend(events.take());
    }
    assert!(runtime.status().circuit_open_until_ms.is_none());
    let out = runtime
        .run_job(
            "send_dm",
            "job_15",
            &payload(json!({"adapter": {}, "recipient": "lu", "params": {"text": "calm now"}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);

    // Token bucket: a job that cannot get budget before its deadline fails with retryAfterMs.
    let tight = json!({"adapter": {}, "recipient": "mo", "params": {"text": "x"}, "limits": {"perHour": 1, "burst": 1}, "deadlineMs": edge_browser::now_ms() + 500});
    let first = runtime.run_job("send_dm", "job_16", &payload(tight.clone()), &adapter, &Uploads::none()).await;
    let second = runtime.run_job("send_dm", "job_17", &payload(tight), &adapter, &Uploads::none()).await;
    let codes = (code(&first), code(&second));
    assert!(codes.1 == "RATE_LIMITED", "{codes:?}");
    assert!(second.result.unwrap_err().retry_after_ms.unwrap() > 60_000);

    // A new runtime (agent restart) restores the encrypted session: no new login needed.
    let logins = site.logins();
    runtime.shutdown().await;
    let restarted = BrowserRuntime::new(settings(dir.path()), Arc::new(FixedKey(Some(key))), events.clone());
    let out = restarted
        .run_job(
            "scrape_subs",
            "job_18",
            &payload(json!({"adapter": {}, "params": {"maxPages": 1}})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    assert_eq!(site.logins(), logins);
    restarted.shutdown().await;

    // Without a key the session is volatile, the person is told, and nothing is written.
    let other = tempfile::tempdir().unwrap();
    let volatile = BrowserRuntime::new(settings(other.path()), Arc::new(FixedKey(None)), events.clone());
    volatile.interactive_login(&login_adapter, false, Duration::from_secs(20)).await.unwrap();
    assert!(events.take().iter().any(|e| matches!(e, BrowserEvent::SessionVolatile { .. })));
    assert!(!volatile.session_path("fanhub").exists());
    assert!(volatile.status().session_volatile);
    volatile.shutdown().await;
}
