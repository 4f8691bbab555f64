//! A small W3C WebDriver client for the tray app's end-to-end test: a session on a driver
//! listening on loopback (`tauri-driver`, which hands the session to `WebKitWebDriver`),
//! and the handful of commands the test uses (find, click, type, read, run a script).
//! No screenshot command: WebKitWebDriver's never answers for the tray app as it ships (see
//! tests/e2e/tests/tray_webdriver.rs).
//!
//! Plain JSON over HTTP with the `ureq` client this crate already has, rather than
//! fantoccini or thirtyfour: those bring an async stack and a second HTTP client for about
//! ten endpoints, and the test is synchronous like the rest of this harness.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// The key under which W3C WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// One command's limit; the driver answers in milliseconds unless the page hangs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebDriver session; dropping it ends the session (which closes the app).
pub struct Session {
    base: String,
    id: String,
    agent: ureq::Agent,
}

impl Session {
    /// `POST /session` on the driver at `driver_url` with `capabilities` as `alwaysMatch`.
    /// Starting the app and its web view may take a while on a loaded machine: `timeout`.
    pub fn start(driver_url: &str, capabilities: Value, timeout: Duration) -> Result<Session> {
        let agent = ureq::AgentBuilder::new().timeout(timeout.max(COMMAND_TIMEOUT)).build();
        let base = driver_url.trim_end_matches('/').to_owned();
        let answer = call(
            &agent,
            "POST",
            &format!("{base}/session"),
            Some(json!({ "capabilities": { "alwaysMatch": capabilities } })),
        )
        .context(
            "the driver did not start a session (is the app built with its web view, and WebKitWebDriver installed?)",
        )?;
        let id = answer["sessionId"].as_str().ok_or_else(|| anyhow!("no sessionId in {answer}"))?.to_owned();
        let agent = ureq::AgentBuilder::new().timeout(COMMAND_TIMEOUT).build();
        Ok(Session { base, id, agent })
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        call(&self.agent, method, &format!("{}/session/{}{path}", self.base, self.id), body)
    }

    /// The first element matching the CSS `selector`, or an error naming it.
    pub fn find(&self, selector: &str) -> Result<String> {
        let found = self
            .command("POST", "/element", Some(json!({ "using": "css selector", "value": selector })))
            .with_context(|| format!("no element {selector}"))?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no element reference for {selector} in {found}"))
    }

    /// Clicks the element as a person would (the driver refuses a hidden or covered one).
    pub fn click(&self, selector: &str) -> Result<()> {
        let element = self.find(selector)?;
        self.command("POST", &format!("/element/{element}/click"), Some(json!({})))
            .with_context(|| format!("clicking {selector}"))?;
        Ok(())
    }

    /// Empties a text field and types `text` into it, key by key.
    pub fn type_into(&self, selector: &str, text: &str) -> Result<()> {
        let element = self.find(selector)?;
        self.command("POST", &format!("/element/{element}/clear"), Some(json!({})))
            .with_context(|| format!("clearing {selector}"))?;
        self.command("POST", &format!("/element/{element}/value"), Some(json!({ "text": text })))
            .with_context(|| format!("typing into {selector}"))?;
        Ok(())
    }

    /// The element's rendered text.
    pub fn text(&self, selector: &str) -> Result<String> {
        let element = self.find(selector)?;
        let text = self.command("GET", &format!("/element/{element}/text"), None)?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub fn script(&self, script: &str, args: Value) -> Result<Value> {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Whether an element matching `selector` exists and neither it nor a parent is `hidden`.
    pub fn shown(&self, selector: &str) -> Result<bool> {
        let shown = self.script(
            "const e = document.querySelector(arguments[0]); return !!e && !e.closest('[hidden]');",
            json!([selector]),
        )?;
        Ok(shown.as_bool().unwrap_or(false))
    }

    /// Ends the session: the driver closes the app.
    pub fn end(mut self) -> Result<()> {
        let id = std::mem::take(&mut self.id);
        call(&self.agent, "DELETE", &format!("{}/session/{id}", self.base), None).map(|_| ())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = call(&self.agent, "DELETE", &format!("{}/session/{}", self.base, self.id), None);
        }
    }
}

/// One WebDriver call: the answer's `value`, or the driver's error and message.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Result<Value> {
    let request = agent.request(method, url);
    let response = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    let answer: Value = match response {
        Ok(response) => response.into_json()?,
        Err(ureq::Error::Status(status, response)) => {
            let text = response.into_string().unwrap_or_default();
            let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!(
                "{method} {url}: HTTP {status}: {} {}",
                error["value"]["error"].as_str().unwrap_or(""),
                error["value"]["message"].as_str().unwrap_or(&text)
            );
        }
        Err(e) => bail!("{method} {url}: {e}"),
    };
    Ok(answer["value"].clone())
}
