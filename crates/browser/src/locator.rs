//! The locator layer over CDP: selectors, auto-waiting and the actions flows use.
//!
//! Selectors: plain CSS (`#send`), `css=…`, `text=Send` (case-insensitive substring of the
//! element's visible text, deepest match), `text="Send"` (exact), and chains with `>>`
//! (`form.dm >> text=Send`: matches of the right part inside matches of the left). Before
//! acting, a locator waits until its element is attached, visible, stable (same bounding box
//! across two animation frames), enabled and, for clicks, not covered by another element;
//! a wait that runs out becomes `NAV_TIMEOUT`.
//!
//! This module owns the JavaScript helper (`locator.js`) and every DevTools command a
//! flow sends. It must never log typed text or extracted values, and never synthesise
//! anything a person could not do with a mouse and keyboard (no hidden-field writes
//! besides `fill`, which sets a visible field's value as a paste would).

use crate::error::BrowserError;
use crate::fence::Refusal;
use chromiumoxide::cdp::browser_protocol::dom::SetFileInputFilesParams;
use chromiumoxide::cdp::browser_protocol::input::{DispatchKeyEventParams, DispatchKeyEventType, InsertTextParams};
use chromiumoxide::cdp::browser_protocol::network::EventResponseReceived;
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::layout::Point;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HELPER: &str = include_str!("locator.js");
/// Between two probes of a locator that is not ready yet.
const POLL: Duration = Duration::from_millis(40);

/// What a wait waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitState {
    Attached,
    #[default]
    Visible,
    Hidden,
    /// Attached, visible, stable and enabled: ready for an action.
    Actionable,
}

/// Per-key delay with jitter, the way a person types.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub min: Duration,
    pub max: Duration,
}

impl Cadence {
    pub const OFF: Cadence = Cadence { min: Duration::ZERO, max: Duration::ZERO };
    /// 40–140 ms per key: roughly 100–200 words a minute with pauses.
    pub const HUMAN: Cadence = Cadence { min: Duration::from_millis(40), max: Duration::from_millis(140) };

    pub fn draw(&self) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        let span = (self.max - self.min).as_millis() as u64;
        self.min + Duration::from_millis(rand::random_range(0..=span))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeAnswer {
    ok: bool,
    #[serde(default)]
    alarm: Option<String>,
    #[serde(default)]
    alarm_text: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    count: u64,
    #[serde(default)]
    #[serde(rename = "box")]
    bounds: Option<Bounds>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Bounds {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// A page plus what the flow engine tracks about it: the HTTP 429s it received and where
/// the last one came from, and what the fence refused in its context.
#[derive(Clone)]
pub struct Driver {
    pub page: Page,
    too_many_requests: Arc<AtomicU64>,
    last_429_url: Arc<Mutex<Option<String>>>,
    alarms: Arc<Mutex<Alarms>>,
    refusal: Refusal,
}

/// The adapter's alarm markers, watched during every wait, and the 429s already accounted for.
#[derive(Debug, Clone, Default)]
struct Alarms {
    site: String,
    origin: String,
    markers: std::collections::BTreeMap<String, String>,
    seen_429: u64,
}

/// Turns a visible alarm marker into the error it stands for.
fn alarm_error(site: &str, name: &str, text: &str) -> BrowserError {
    let site = site.to_owned();
    // The site's own words, shortened; they never contain our message text.
    let detail: String = text.chars().take(120).collect();
    match name {
        "loggedOut" => BrowserError::LoginRequired { site },
        "rateLimited" => BrowserError::RateLimited { site, detail: format!("banner: {detail}"), retry_after_ms: None },
        "contentBlocked" => BrowserError::ContentBlocked { site, detail },
        _ => BrowserError::PolicyViolation { site, detail },
    }
}

fn js(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// What the helper's `select` did.
#[derive(Debug, Deserialize)]
struct SelectAnswer {
    /// The element is a `<select>`.
    select: bool,
    #[serde(default)]
    missing: bool,
    #[serde(default)]
    offered: Vec<String>,
    #[serde(default)]
    count: usize,
}

impl Driver {
    /// Wraps a page and starts counting its HTTP 429 answers.
    pub async fn new(page: Page) -> Result<Driver, BrowserError> {
        let too_many_requests = Arc::new(AtomicU64::new(0));
        let last_429_url = Arc::new(Mutex::new(None));
        let mut responses = page
            .event_listener::<EventResponseReceived>()
            .await
            .map_err(|e| BrowserError::from_cdp("listening for responses", e))?;
        let counter = Arc::clone(&too_many_requests);
        let last = Arc::clone(&last_429_url);
        tokio::spawn(async move {
            while let Some(event) = responses.next().await {
                if event.response.status == 429 {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut slot) = last.lock() {
                        *slot = Some(event.response.url.clone());
                    }
                }
            }
        });
        Ok(Driver {
            page,
            too_many_requests,
            last_429_url,
            alarms: Arc::new(Mutex::new(Alarms::default())),
            refusal: Refusal::default(),
        })
    }

    /// Ends every wait and action with the fence's refusal once there is one (the job's
    /// context's [`Refusal`]).
    pub fn fenced(mut self, refusal: Refusal) -> Driver {
        self.refusal = refusal;
        self
    }

    /// `POLICY_VIOLATION` when the fence refused something this page or its frames started.
    pub fn refused(&self) -> Result<(), BrowserError> {
        self.refusal.check()
    }

    /// Sets the markers every wait watches and the origin whose HTTP 429s count.
    pub fn set_alarms(&self, site: String, markers: std::collections::BTreeMap<String, String>, origin: String) {
        if let Ok(mut alarms) = self.alarms.lock() {
            *alarms = Alarms { site, origin, markers, seen_429: alarms.seen_429 };
        }
    }

    fn alarms(&self) -> Alarms {
        self.alarms.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// A refusal of the fence is `POLICY_VIOLATION`; a new HTTP 429 from the site since the
    /// last check is `RATE_LIMITED`.
    fn check_429(&self) -> Result<(), BrowserError> {
        self.refused()?;
        let count = self.too_many_requests();
        let Ok(mut alarms) = self.alarms.lock() else { return Ok(()) };
        if count > alarms.seen_429 {
            alarms.seen_429 = count;
            let url = self.last_429_url().unwrap_or_default();
            if alarms.origin.is_empty() || url.starts_with(&alarms.origin) {
                return Err(BrowserError::RateLimited {
                    site: alarms.site.clone(),
                    detail: "HTTP 429".into(),
                    retry_after_ms: None,
                });
            }
        }
        Ok(())
    }

    /// Fails when an alarm marker is visible now or the site answered 429.
    pub async fn check_alarms(&self) -> Result<(), BrowserError> {
        self.check_429()?;
        let alarms = self.alarms();
        let seen = self.visible_markers(&alarms.markers).await.unwrap_or_default();
        match seen.into_iter().next() {
            Some((name, text)) => Err(alarm_error(&alarms.site, &name, &text)),
            None => Ok(()),
        }
    }

    /// Logged in means the adapter's logged-in marker shows up (and its logged-out marker
    /// does not, which the wait watches); without a logged-in marker, only the latter.
    pub async fn check_login(&self, adapter: &crate::flow::Adapter, timeout: Duration) -> Result<(), BrowserError> {
        match adapter.markers.logged_in.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(marker) => {
                self.wait_for(marker, 0, WaitState::Visible, timeout, false).await?;
                Ok(())
            }
            None => self.check_alarms().await,
        }
    }

    /// HTTP 429 answers seen so far.
    pub fn too_many_requests(&self) -> u64 {
        self.too_many_requests.load(Ordering::Relaxed)
    }

    pub fn last_429_url(&self) -> Option<String> {
        self.last_429_url.lock().ok().and_then(|s| s.clone())
    }

    /// Evaluates `expression` (awaiting a promise) and returns its JSON value.
    pub async fn eval<T: DeserializeOwned>(&self, expression: &str) -> Result<T, BrowserError> {
        let params = EvaluateParams::builder()
            .expression(expression)
            .await_promise(true)
            .return_by_value(true)
            .build()
            .map_err(BrowserError::Cdp)?;
        let response =
            self.page.execute(params).await.map_err(|e| BrowserError::from_cdp("evaluating in the page", e))?;
        if let Some(details) = &response.result.exception_details {
            let text =
                details.exception.as_ref().and_then(|e| e.description.clone()).unwrap_or_else(|| details.text.clone());
            return Err(BrowserError::Cdp(format!("page script failed: {text}")));
        }
        let value = response.result.result.value.clone().unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| BrowserError::Cdp(format!("unexpected page answer: {e}")))
    }

    /// Calls `method` of the locator helper with JSON arguments.
    async fn helper<T: DeserializeOwned>(&self, method: &str, args: &[Value]) -> Result<T, BrowserError> {
        let args: Vec<String> = args.iter().map(js).collect();
        self.eval(&format!("({HELPER}).{method}({})", args.join(","))).await
    }

    /// Polls until the element of `selector` (its `nth` match; negative counts from the
    /// end) is in `state`, or fails with `NAV_TIMEOUT` naming why it was not.
    pub async fn wait_for(
        &self,
        selector: &str,
        nth: i64,
        state: WaitState,
        timeout: Duration,
        hit: bool,
    ) -> Result<Option<Bounds>, BrowserError> {
        let deadline = Instant::now() + timeout;
        let alarms = self.alarms();
        let want = serde_json::json!({
            "state": match state { WaitState::Attached => "attached", WaitState::Visible => "visible", WaitState::Hidden => "hidden", WaitState::Actionable => "actionable" },
            "scroll": state == WaitState::Actionable,
            "hit": hit,
            "alarms": alarms.markers,
        });
        let mut last_reason;
        loop {
            self.check_429()?;
            match self.helper::<ProbeAnswer>("probe", &[Value::from(selector), Value::from(nth), want.clone()]).await {
                Ok(ProbeAnswer { alarm: Some(name), alarm_text, .. }) => {
                    return Err(alarm_error(&alarms.site, &name, alarm_text.as_deref().unwrap_or_default()))
                }
                Ok(answer) if answer.ok => return Ok(answer.bounds),
                Ok(answer) => {
                    last_reason = if answer.count > 1 && nth == 0 {
                        format!("{} ({} matches, using the first)", answer.reason, answer.count)
                    } else {
                        answer.reason
                    }
                }
                // A navigation replaced the document mid-probe: try again.
                Err(BrowserError::Cdp(e)) => last_reason = e,
                Err(other) => return Err(other),
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("waiting for {selector:?} to be {state:?}: {last_reason}").to_lowercase(),
                    ms: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Navigates and waits for the load event, at most `timeout`. The caller checked `url`
    /// against the adapter's origins; a redirect the fence refused is `POLICY_VIOLATION`, not
    /// the network error the browser reports for it.
    pub async fn goto(&self, url: &str, timeout: Duration) -> Result<(), BrowserError> {
        let outcome = tokio::time::timeout(timeout, self.page.goto(url)).await;
        self.refused()?;
        match outcome {
            Err(_) => Err(BrowserError::Timeout { what: format!("loading {url}"), ms: timeout.as_millis() as u64 }),
            Ok(Err(e)) => Err(BrowserError::from_cdp(&format!("loading {url}"), e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Waits until actionable and not covered, then clicks the middle of the element with
    /// real mouse events.
    pub async fn click(&self, selector: &str, nth: i64, timeout: Duration) -> Result<(), BrowserError> {
        let bounds = self.wait_for(selector, nth, WaitState::Actionable, timeout, true).await?;
        let b = bounds.ok_or_else(|| BrowserError::Cdp(format!("no bounding box for {selector:?}")))?;
        let point = Point { x: b.x + b.width / 2.0, y: b.y + b.height / 2.0 };
        self.page.click(point).await.map_err(|e| BrowserError::from_cdp("clicking", e))?;
        Ok(())
    }

    /// Replaces the field's value at once (a paste).
    pub async fn fill(&self, selector: &str, nth: i64, value: &str, timeout: Duration) -> Result<(), BrowserError> {
        self.wait_for(selector, nth, WaitState::Actionable, timeout, false).await?;
        self.helper::<bool>("fill", &[Value::from(selector), Value::from(nth), Value::from(value)]).await?;
        Ok(())
    }

    /// Types `text` into the field key by key, `cadence` apart.
    pub async fn type_text(
        &self,
        selector: &str,
        nth: i64,
        text: &str,
        cadence: Cadence,
        timeout: Duration,
    ) -> Result<(), BrowserError> {
        self.wait_for(selector, nth, WaitState::Actionable, timeout, false).await?;
        self.helper::<bool>("focus", &[Value::from(selector), Value::from(nth)]).await?;
        let mut first = true;
        for ch in text.chars() {
            if !first {
                let pause = cadence.draw();
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            first = false;
            let mut buffer = [0u8; 4];
            let piece = ch.encode_utf8(&mut buffer).to_owned();
            self.page.execute(InsertTextParams::new(piece)).await.map_err(|e| BrowserError::from_cdp("typing", e))?;
        }
        Ok(())
    }

    /// Presses a named key (`Enter`, `Tab`, `Escape`, `ArrowDown`, a letter…), in the
    /// element of `selector` when given, else wherever the focus is.
    pub async fn press(
        &self,
        selector: Option<&str>,
        nth: i64,
        key: &str,
        timeout: Duration,
    ) -> Result<(), BrowserError> {
        if let Some(selector) = selector {
            self.wait_for(selector, nth, WaitState::Actionable, timeout, false).await?;
            self.helper::<bool>("focus", &[Value::from(selector), Value::from(nth)]).await?;
        }
        let definition = chromiumoxide::keys::get_key_definition(key)
            .ok_or_else(|| BrowserError::BadFlow(format!("press: unknown key {key:?}")))?;
        let mut down = DispatchKeyEventParams::builder()
            .r#type(if definition.text.is_some() {
                DispatchKeyEventType::KeyDown
            } else {
                DispatchKeyEventType::RawKeyDown
            })
            .key(definition.key)
            .code(definition.code)
            .windows_virtual_key_code(definition.key_code)
            .native_virtual_key_code(definition.key_code);
        if let Some(text) = definition.text {
            down = down.text(text);
        }
        let down = down.build().map_err(BrowserError::Cdp)?;
        self.page.execute(down).await.map_err(|e| BrowserError::from_cdp("pressing a key", e))?;
        let up = DispatchKeyEventParams::builder()
            .r#type(DispatchKeyEventType::KeyUp)
            .key(definition.key)
            .code(definition.code)
            .windows_virtual_key_code(definition.key_code)
            .native_virtual_key_code(definition.key_code)
            .build()
            .map_err(BrowserError::Cdp)?;
        self.page.execute(up).await.map_err(|e| BrowserError::from_cdp("releasing a key", e))?;
        Ok(())
    }

    /// Picks the `<option>` whose value (or else label, ignoring case) is `value`. `Ok(false)`
    /// when the element is not a `<select>` (the caller types instead); a `<select>` without
    /// such an option is `BAD_PAYLOAD` naming a few of the options it has.
    pub async fn select(&self, selector: &str, nth: i64, value: &str, timeout: Duration) -> Result<bool, BrowserError> {
        self.wait_for(selector, nth, WaitState::Actionable, timeout, false).await?;
        let answer: SelectAnswer =
            self.helper("select", &[Value::from(selector), Value::from(nth), Value::from(value)]).await?;
        if !answer.select {
            return Ok(false);
        }
        if answer.missing {
            return Err(BrowserError::BadFlow(format!(
                "select: {selector:?} has no option {value:?} (by value or label); its {} options include {}",
                answer.count,
                answer.offered.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(true)
    }

    /// Puts local files into an `<input type=file>` (`DOM.setFileInputFiles`). File inputs
    /// are often hidden behind a styled button, so this waits for attached only.
    pub async fn set_input_files(
        &self,
        selector: &str,
        nth: i64,
        files: &[String],
        timeout: Duration,
    ) -> Result<(), BrowserError> {
        self.wait_for(selector, nth, WaitState::Attached, timeout, false).await?;
        let expression = format!("({HELPER}).element({},{})", js(&selector), nth);
        let params = EvaluateParams::builder()
            .expression(expression)
            .return_by_value(false)
            .build()
            .map_err(BrowserError::Cdp)?;
        let response =
            self.page.execute(params).await.map_err(|e| BrowserError::from_cdp("finding the file input", e))?;
        let object_id = response
            .result
            .result
            .object_id
            .clone()
            .ok_or_else(|| BrowserError::Cdp(format!("{selector:?} disappeared before the upload")))?;
        let mut params = SetFileInputFilesParams::new(files.to_vec());
        params.object_id = Some(object_id);
        self.page.execute(params).await.map_err(|e| BrowserError::from_cdp("setting input files", e))?;
        Ok(())
    }

    /// The element's visible text, an attribute or a DOM property (`value`, `checked`).
    pub async fn extract(
        &self,
        selector: &str,
        nth: i64,
        attr: Option<&str>,
        property: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        self.wait_for(selector, nth, WaitState::Attached, timeout, false).await?;
        let what = serde_json::json!({ "attr": attr, "property": property });
        self.helper("extract", &[Value::from(selector), Value::from(nth), what]).await
    }

    /// One object per `row` match, with the named fields read relative to the row.
    pub async fn extract_list(&self, row: &str, fields: &Value) -> Result<Vec<Value>, BrowserError> {
        self.helper("extractList", &[Value::from(row), fields.clone()]).await
    }

    /// How many elements match now (no waiting).
    pub async fn count(&self, selector: &str) -> Result<usize, BrowserError> {
        let found: Vec<Value> =
            self.eval(&format!("({HELPER}).resolve({}).map(() => 1)", js(&selector))).await.unwrap_or_default();
        Ok(found.len())
    }

    /// The markers (name → selector) visible right now, with their text.
    pub async fn visible_markers(
        &self,
        markers: &std::collections::BTreeMap<String, String>,
    ) -> Result<std::collections::BTreeMap<String, String>, BrowserError> {
        if markers.is_empty() {
            return Ok(Default::default());
        }
        let map = serde_json::to_value(markers).unwrap_or(Value::Null);
        self.helper("markers", &[map]).await
    }

    /// A PNG of the viewport (or the whole page).
    pub async fn screenshot(&self, full_page: bool) -> Result<Vec<u8>, BrowserError> {
        let params = ScreenshotParams::builder().format(CaptureScreenshotFormat::Png).full_page(full_page).build();
        self.page.screenshot(params).await.map_err(|e| BrowserError::from_cdp("taking a screenshot", e))
    }

    pub async fn url(&self) -> Result<String, BrowserError> {
        self.eval("location.href").await
    }
}
