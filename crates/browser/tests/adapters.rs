//! What an adapter written from `docs/flows.md` alone needs, in real Chromium (`/usr/bin/chromium`
//! or `EDGE_AGENT_BROWSER`) against the local test site: the time-zone control set to the
//! job's zone on a site whose own zone differs (a `<select>`, and a text combobox on the alt
//! skin), the refusal of an adapter that cannot say which zone the site reads, uploads that
//! keep their names (two files with one name included), `files` written as one template, the
//! doc's example payloads of the four flows, and the doc's `schedule_post` override, run as
//! written. One test function, so one warm browser serves every scenario.

use base64::Engine;
use edge_browser::confine::Uploads;
use edge_browser::flow::{parse_adapter, Adapter, Flow};
use edge_browser::runtime::BrowserRuntime;
use edge_browser::testsite::{quick_settings, FixedKey, Quiet, Site};
use edge_protocol::jobs::BrowserJobPayload;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn payload(v: Value) -> BrowserJobPayload {
    serde_json::from_value(v).unwrap()
}

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/flows.md")).unwrap()
}

/// The fenced block after `<!-- checked: NAME -->` (tests/docs.rs checks the markers).
fn block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- checked: {name} -->");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("docs/flows.md has no {marker}"));
    let lines = doc[start + marker.len()..].lines().skip_while(|l| l.trim().is_empty()).skip(1);
    lines.take_while(|l| !l.starts_with("```")).collect::<Vec<_>>().join("\n")
}

/// The test site's adapter, changed by `edit` (a YAML edit is what an adapter writer makes).
fn adapter_with(site: &Site, edit: impl Fn(&mut Value)) -> Adapter {
    let mut value: Value = serde_yaml::from_str(&site.adapter_yaml()).unwrap();
    edit(&mut value);
    parse_adapter(&serde_json::to_string(&value).unwrap()).unwrap()
}

fn code(outcome: &edge_browser::JobOutcome) -> String {
    outcome.result.as_ref().err().map(|e| e.code.to_string()).unwrap_or_else(|| "OK".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_written_from_the_docs_in_real_chromium() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let site = Site::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime =
        BrowserRuntime::new(quick_settings(dir.path(), "adapters"), Arc::new(FixedKey([9; 32])), Arc::new(Quiet));
    assert!(runtime.available(), "no Chromium found; install chromium or set EDGE_AGENT_BROWSER");
    let adapter = site.adapter();
    let login = site.auto_login_adapter();
    runtime.interactive_login(&login, false, Duration::from_secs(20)).await.unwrap();
    let doc = doc();
    let at_paris = json!({"text": "Tonight", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris"});

    // The site's own zone (Tokyo) is neither the adapter's (New York) nor the job's (Paris):
    // the flow sets the site's control, so the post lands at 18:30 Paris = 12:30 New York.
    site.set_time_zone("Asia/Tokyo");
    let out = runtime
        .run_job(
            "schedule_post",
            "tz_1",
            &payload(json!({"adapter": {}, "params": at_paris})),
            &adapter,
            &Uploads::none(),
        )
        .await;
    let data = out.result.unwrap();
    assert_eq!(data["siteTimeZone"], json!("America/New_York"));
    let post = site.posts().pop().unwrap();
    assert_eq!((post.date.as_str(), post.time.as_str()), ("2031-07-01", "12:30"));
    assert_eq!(post.zone, "America/New_York", "the time-zone control was left at the site's own zone");

    // Without settings.timeZone, the control gets the job's own zone and no conversion happens.
    let job_zone = adapter_with(&site, |a| {
        a["settings"].as_object_mut().unwrap().remove("timeZone");
    });
    let out = runtime
        .run_job(
            "schedule_post",
            "tz_2",
            &payload(json!({"adapter": {}, "params": at_paris})),
            &job_zone,
            &Uploads::none(),
        )
        .await;
    assert_eq!(out.result.unwrap()["siteTimeZone"], json!("Europe/Paris"));
    let post = site.posts().pop().unwrap();
    assert_eq!((post.time.as_str(), post.zone.as_str()), ("18:30", "Europe/Paris"));

    // A zone the site's <select> does not offer: BAD_PAYLOAD naming options it has; nothing posted.
    let posts = site.posts().len();
    let out = runtime
        .run_job(
            "schedule_post",
            "tz_3",
            &payload(json!({"adapter": {}, "params": {"text": "x", "at": "2031-07-01T18:30", "timeZone": "Australia/Perth"}})),
            &job_zone,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "BAD_PAYLOAD");
    let message = out.result.unwrap_err().message.unwrap();
    assert!(message.contains("no option \"Australia/Perth\"") && message.contains("Europe/Paris"), "{message}");
    assert_eq!(site.posts().len(), posts);

    // Neither a control nor a declared zone: refused before anything is typed.
    let blind = adapter_with(&site, |a| {
        a["settings"].as_object_mut().unwrap().remove("timeZone");
        a["selectors"].as_object_mut().unwrap().remove("timeZoneInput");
    });
    let out = runtime
        .run_job(
            "schedule_post",
            "tz_4",
            &payload(json!({"adapter": {}, "params": at_paris})),
            &blind,
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "BAD_PAYLOAD");
    let message = out.result.unwrap_err().message.unwrap();
    assert!(message.contains("selectors.timeZoneInput") && message.contains("settings.timeZone"), "{message}");
    assert_eq!(site.posts().len(), posts);

    // The alt skin: the zone is a text combobox prefilled with the site's zone, typed over.
    let alt: Adapter = parse_adapter(&format!(
        r##"name: althub
baseUrl: {base}
urls: {{scheduler: /alt/posts/new}}
markers: {{loggedIn: "header.me", loggedOut: ".signin-required"}}
selectors:
  postText: ".body"
  mediaInput: ".files"
  dateInput: ".day"
  timeInput: ".at"
  timeZoneInput: ".zone"
  scheduleButton: "text=Plan it"
  scheduledConfirmation: ".post-scheduled"
"##,
        base = site.base_url
    ))
    .unwrap();
    runtime
        .interactive_login(&Adapter { name: "althub".into(), ..login.clone() }, false, Duration::from_secs(20))
        .await
        .unwrap();
    let out = runtime
        .run_job(
            "schedule_post",
            "tz_5",
            &payload(json!({"adapter": {}, "params": {"text": "Morning", "at": "2031-07-02T09:15", "timeZone": "America/Los_Angeles"}})),
            &alt,
            &Uploads::none(),
        )
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);
    let post = site.posts().pop().unwrap();
    assert_eq!((post.text.as_str(), post.date.as_str(), post.time.as_str()), ("Morning", "2031-07-02", "09:15"));
    assert_eq!(post.zone, "America/Los_Angeles");

    // Uploads keep their names; a second file of the same name is numbered, not dropped.
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let folders = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (folder, bytes) in [("a", &b"cover one"[..]), ("b", &b"cover number two"[..])] {
        std::fs::create_dir_all(folders.path().join(folder)).unwrap();
        let path = folders.path().join(folder).join("cover.jpg");
        std::fs::write(&path, bytes).unwrap();
        paths.push(path.display().to_string());
    }
    let out = runtime
        .run_job(
            "schedule_post",
            "media_1",
            &payload(json!({"adapter": {}, "params": {"text": "Media", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris",
                "media": [{"name": "teaser.png", "base64": b64(b"png bytes")}, {"name": "clips/intro.mp4", "base64": b64(b"mp4")}],
                "mediaPaths": paths}})),
            &adapter,
            // The folders are the person's uploads folder.
            &Uploads::none().allow(folders.path(), "the uploads folder"),
        )
        .await;
    let data = out.result.unwrap();
    assert_eq!(data["mediaNames"], json!(["teaser.png", "intro.mp4", "cover.jpg", "cover (2).jpg"]));
    let post = site.posts().pop().unwrap();
    let received: Vec<(&str, usize)> = post.media.iter().map(|(n, len)| (n.as_str(), *len)).collect();
    assert_eq!(received, [("teaser.png", 9), ("intro.mp4", 3), ("cover.jpg", 9), ("cover (2).jpg", 16)]);
    assert!(!dir.path().join("browser/media").read_dir().is_ok_and(|mut d| d.next().is_some()), "media left behind");

    // `files` in a flow of the adapter's own (the built-in flow above writes it as one
    // template alone): a list inside other text, or a template naming something that is not
    // a list of paths, fails BAD_PAYLOAD showing the forms that work.
    let own_flow = |files: &str| -> Adapter {
        let flow: Flow = serde_yaml::from_str(&format!(
            "name: schedule_post\nsteps:\n  - goto: \"{{{{urls.scheduler}}}}\"\n  - setInputFiles: {{selector: \"{{{{selectors.mediaInput}}}}\", files: {files}}}\n"
        ))
        .unwrap();
        let mut a = adapter.clone();
        a.flows.insert("schedule_post".into(), flow);
        a
    };
    let media = json!({"adapter": {}, "dryRun": true, "params": {"text": "x", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris",
        "media": [{"name": "a.png", "base64": b64(b"a")}, {"name": "b.png", "base64": b64(b"b")}]}});
    let out = runtime
        .run_job("schedule_post", "files_1", &payload(media), &own_flow("\"/tmp/{{params.files}}\""), &Uploads::none())
        .await;
    assert_eq!(code(&out), "BAD_PAYLOAD");
    let message = out.result.unwrap_err().message.unwrap();
    assert!(
        message.contains("is a list inside other text") && message.contains(r#"files: "{{params.files}}""#),
        "{message}"
    );
    let out = runtime
        .run_job(
            "schedule_post",
            "files_3",
            &payload(json!({"adapter": {}, "dryRun": true, "params": {"text": "x", "at": "2031-07-01T18:30", "timeZone": "Europe/Paris", "count": 3}})),
            &own_flow("\"{{params.count}}\""),
            &Uploads::none(),
        )
        .await;
    assert_eq!(code(&out), "BAD_PAYLOAD");
    let message = out.result.unwrap_err().message.unwrap();
    assert!(
        message.contains("`{{params.count}}` is a number") && message.contains(r#"files: "{{params.files}}""#),
        "{message}"
    );

    // The doc's override of schedule_post, as written, on the site whose zone differs.
    let fragment: Value = serde_yaml::from_str(&block(&doc, "override schedule_post")).unwrap();
    let mut overridden = adapter.clone();
    overridden
        .flows
        .insert("schedule_post".into(), serde_json::from_value(fragment["flows"]["schedule_post"].clone()).unwrap());
    let out = runtime
        .run_job(
            "schedule_post",
            "override_1",
            &payload(json!({"adapter": {}, "params": {"text": "Override", "at": "2031-07-03T20:00", "timeZone": "Europe/Paris",
                "media": [{"name": "teaser.png", "base64": b64(b"png")}]}})),
            &overridden,
            &Uploads::none(),
        )
        .await;
    let data = out.result.unwrap();
    // The built-in flow extracts a confirmation; the override asserts instead.
    assert_eq!(data["confirmation"], Value::Null, "the built-in flow ran, not the override");
    let post = site.posts().pop().unwrap();
    assert_eq!(
        (post.text.as_str(), post.date.as_str(), post.time.as_str(), post.zone.as_str()),
        ("Override", "2031-07-03", "14:00", "America/New_York")
    );
    assert_eq!(post.media, vec![("teaser.png".to_owned(), 3)]);

    // The doc's example payloads of the four flows run as written.
    for job in ["send_dm", "broadcast_dm", "schedule_post", "scrape_subs"] {
        let mut example: Value = serde_json::from_str(&block(&doc, &format!("payload {job}"))).unwrap();
        example["adapter"] = json!({});
        let out = runtime.run_job(job, &format!("doc_{job}"), &payload(example), &adapter, &Uploads::none()).await;
        assert!(out.result.is_ok(), "the doc's {job} example: {:?}", out.result);
    }
    assert_eq!(site.messages_to("@ann").len(), 2);
    assert_eq!(site.messages_to("@bob").len(), 1);
    assert_eq!(site.posts().pop().unwrap().media, vec![("teaser.png".to_owned(), 8)]);
    runtime.shutdown().await;
}
