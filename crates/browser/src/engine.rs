//! The flow interpreter: runs a [`Flow`]'s steps against one page with an [`Adapter`],
//! parameters, pacing and dry-run.
//!
//! It owns the order of things within a flow: rendering each step's templates, pacing with
//! jitter between actions, watching the adapter's alarm markers (logged out, rate limited,
//! blocked, policy) and HTTP 429 while waiting, skipping submit steps in dry-run mode, and
//! collecting extracted values. It must never decide about retries, budgets or sessions:
//! those belong to `runtime` and `guard`.

use crate::confine::{Origins, Uploads};
use crate::error::BrowserError;
use crate::flow::{json_kind, lookup, render, template_path, Adapter, FieldSpec, Flow, StepKind, FILES_FORMS};
use crate::locator::{Cadence, Driver, WaitState};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a flow runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run up to, not including, the submit steps.
    pub dry_run: bool,
    /// Pause between actions.
    pub pacing: Cadence,
    /// Pause between keys of `type`.
    pub typing: Cadence,
    /// Where `screenshot` writes; screenshots are skipped without one.
    pub artifacts_dir: Option<PathBuf>,
    /// The folders `setInputFiles` may take files from; none by default.
    pub uploads: Uploads,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            dry_run: false,
            pacing: Cadence { min: Duration::from_millis(400), max: Duration::from_millis(1500) },
            typing: Cadence::HUMAN,
            artifacts_dir: None,
            uploads: Uploads::none(),
        }
    }
}

/// What a flow produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowOutput {
    /// `extract`/`extractList` results by `into` name.
    pub vars: Map<String, Value>,
    pub steps_run: u32,
    /// Steps not run because of dry-run, as `"click #send"`.
    pub skipped: Vec<String>,
    pub screenshots: Vec<String>,
    /// Pages read by `extractList` steps.
    pub pages: u32,
}

/// The template context: `params`, `urls`, `selectors`, `markers`, `adapter`, `vars`.
pub fn context(adapter: &Adapter, params: &Map<String, Value>, vars: &Map<String, Value>) -> Value {
    json!({
        "params": params,
        "urls": adapter.urls,
        "selectors": adapter.selectors,
        "markers": adapter.markers,
        "adapter": { "name": adapter.name, "baseUrl": adapter.base_url },
        "vars": vars,
    })
}

/// Renders `files`: an entry that is exactly one `{{path}}` naming a list stands for the
/// list's items (that is how a list parameter such as `params.files` reaches the step);
/// every other entry renders to one path. Entries that render empty are dropped (no media,
/// nothing to upload). A list of something other than paths is refused, never filtered.
fn render_files(templates: &[String], ctx: &Value) -> Result<Vec<String>, BrowserError> {
    let mut out = Vec::new();
    for template in templates {
        let trimmed = template.trim();
        let lone = trimmed.starts_with("{{") && trimmed.ends_with("}}") && trimmed.matches("{{").count() == 1;
        let path = template_path(trimmed);
        if lone && !path.contains('|') {
            let not_paths = |what: String| {
                BrowserError::BadFlow(format!(
                    "setInputFiles: `{{{{{path}}}}}` is {what}, not a file path or a list of them; `files` takes {FILES_FORMS}"
                ))
            };
            match lookup(ctx, path) {
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(file) if file.is_empty() => {}
                            Value::String(file) => out.push(file.clone()),
                            other => {
                                return Err(not_paths(format!("a list whose entry {} is {}", i + 1, json_kind(other))))
                            }
                        }
                    }
                    continue;
                }
                Some(other @ (Value::Object(_) | Value::Number(_) | Value::Bool(_))) => {
                    return Err(not_paths(json_kind(other)))
                }
                _ => {}
            }
        }
        // A list written into other text would render as JSON, a path no file has.
        for inner in template.split("{{").skip(1).filter_map(|rest| rest.split_once("}}").map(|(expr, _)| expr)) {
            let path = inner.split('|').next().unwrap_or_default().trim();
            if let Some(value @ (Value::Array(_) | Value::Object(_))) = lookup(ctx, path) {
                return Err(BrowserError::BadFlow(format!(
                    "setInputFiles: `{{{{{path}}}}}` is {} inside other text ({template:?}); `files` takes {FILES_FORMS}",
                    json_kind(value)
                )));
            }
        }
        let rendered = render(template, ctx)?;
        if !rendered.is_empty() {
            out.push(rendered);
        }
    }
    Ok(out)
}

/// Whether a step's `ifSet` path has a value worth acting on (set, not null, not "").
fn is_set(ctx: &Value, path: &str) -> bool {
    match lookup(ctx, template_path(path)) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true,
    }
}

/// Runs `flow` on the driver's page.
pub async fn run_flow(
    driver: &Driver,
    adapter: &Adapter,
    flow: &Flow,
    params: &Map<String, Value>,
    options: &RunOptions,
) -> Result<FlowOutput, BrowserError> {
    run_flow_watching_submit(driver, adapter, flow, params, options, &AtomicBool::new(false)).await
}

/// [`run_flow`], setting `submitted` as a submit action (the step that sends a message or
/// a post) begins. When the flow then fails, the caller knows whether the site may have
/// received what was submitted (set) or certainly did not (unset).
pub async fn run_flow_watching_submit(
    driver: &Driver,
    adapter: &Adapter,
    flow: &Flow,
    params: &Map<String, Value>,
    options: &RunOptions,
    submitted: &AtomicBool,
) -> Result<FlowOutput, BrowserError> {
    flow.validate()?;
    let params = flow.resolve_params(params)?;
    let origins = Origins::of(adapter)?;
    driver.set_alarms(adapter.name.clone(), adapter.markers.alarms(), adapter.origin());
    let mut output = FlowOutput::default();
    let default_timeout = Duration::from_millis(adapter.settings.timeout_ms);
    let mut skipping_submits = false;
    let mut acted = false;
    for (index, step) in flow.steps.iter().enumerate() {
        let a = &step.args;
        if step.args.submit && options.dry_run {
            skipping_submits = true;
        }
        let ctx = context(adapter, &params, &output.vars);
        if let Some(path) = a.if_set.as_deref().filter(|p| !is_set(&ctx, p)) {
            tracing::debug!(step = index + 1, kind = ?step.kind, path = template_path(path), "ifSet path not set; step skipped");
            continue;
        }
        let selector = a.selector.as_deref().map(|s| render(s, &ctx)).transpose()?;
        let url = a.url.as_deref().map(|u| render(u, &ctx)).transpose()?;
        let label = format!("{:?} {}", step.kind, selector.as_deref().or(url.as_deref()).unwrap_or("")).to_lowercase();
        if skipping_submits && step.args.submit {
            tracing::info!(step = index + 1, %label, "dry run: submit step skipped");
            output.skipped.push(label.trim().to_owned());
            continue;
        }
        let is_action = matches!(
            step.kind,
            StepKind::Goto
                | StepKind::Click
                | StepKind::Fill
                | StepKind::Type
                | StepKind::Press
                | StepKind::Select
                | StepKind::SetInputFiles
        );
        if is_action && acted {
            let pause = options.pacing.draw();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let timeout = a.timeout_ms.map(Duration::from_millis).unwrap_or(default_timeout);
        if is_action && a.submit {
            submitted.store(true, Ordering::SeqCst);
        }
        let started = Instant::now();
        let result =
            run_step(driver, adapter, &origins, step.kind, a, selector.as_deref(), &ctx, timeout, options, &mut output)
                .await
                // Whatever the step did, a refusal of the fence meanwhile is why the job ends.
                .and_then(|()| driver.refused());
        match result {
            Ok(()) => {}
            Err(e) if a.optional && !is_alarm(&e) => {
                tracing::info!(step = index + 1, %label, error = %e, "optional step failed; going on");
            }
            Err(e) => {
                tracing::info!(step = index + 1, %label, code = %e.code(), "step failed");
                return Err(e);
            }
        }
        // An action can trigger a 429 or a banner after it returns; catch it here so the
        // next step does not run into it.
        if is_action {
            driver.check_alarms().await?;
        }
        tracing::debug!(step = index + 1, %label, ms = started.elapsed().as_millis() as u64, "step done");
        acted |= is_action;
        output.steps_run += 1;
    }
    driver.refused()?;
    Ok(output)
}

fn is_alarm(e: &BrowserError) -> bool {
    matches!(
        e,
        BrowserError::LoginRequired { .. }
            | BrowserError::RateLimited { .. }
            | BrowserError::ContentBlocked { .. }
            | BrowserError::PolicyViolation { .. }
            | BrowserError::NotAllowed(_)
    )
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    driver: &Driver,
    adapter: &Adapter,
    origins: &Origins,
    kind: StepKind,
    a: &crate::flow::StepArgs,
    selector: Option<&str>,
    ctx: &Value,
    timeout: Duration,
    options: &RunOptions,
    output: &mut FlowOutput,
) -> Result<(), BrowserError> {
    let need = |s: Option<&str>| {
        s.map(str::to_owned).ok_or_else(|| BrowserError::BadFlow(format!("{kind:?} needs a selector")))
    };
    let text = |v: &Option<String>| v.as_deref().map(|t| render(t, ctx)).transpose();
    match kind {
        StepKind::Goto => {
            let url = adapter.absolute(&render(a.url.as_deref().unwrap_or_default(), ctx)?)?;
            if let Err(refused) = origins.check(&url) {
                tracing::warn!(site = %adapter.name, "{refused}");
                return Err(refused);
            }
            driver.goto(&url, timeout).await?;
        }
        StepKind::CheckLogin => driver.check_login(adapter, timeout).await?,
        StepKind::Click => driver.click(&need(selector)?, a.nth, timeout).await?,
        StepKind::Fill => driver.fill(&need(selector)?, a.nth, &text(&a.value)?.unwrap_or_default(), timeout).await?,
        StepKind::Type => {
            driver
                .type_text(&need(selector)?, a.nth, &text(&a.text)?.unwrap_or_default(), options.typing, timeout)
                .await?
        }
        StepKind::Press => {
            let key = text(&a.key)?.unwrap_or_default();
            driver.press(selector, a.nth, &key, timeout).await?
        }
        StepKind::Select => {
            let selector = need(selector)?;
            let value = text(&a.value)?.unwrap_or_default();
            if !driver.select(&selector, a.nth, &value, timeout).await? {
                // Not a <select>: a text field or combobox takes the value the way a person
                // would give it, typed into the emptied field.
                driver.fill(&selector, a.nth, "", timeout).await?;
                driver.type_text(&selector, a.nth, &value, options.typing, timeout).await?;
            }
        }
        StepKind::SetInputFiles => {
            let files = render_files(a.files.as_deref().unwrap_or_default(), ctx)?;
            if files.is_empty() {
                return Ok(());
            }
            // Every file resolved inside the job's folders before any reaches the page.
            let mut resolved = Vec::with_capacity(files.len());
            for file in &files {
                match options.uploads.resolve(file) {
                    Ok(path) => resolved.push(path.display().to_string()),
                    Err(refused @ BrowserError::NotAllowed(_)) => {
                        tracing::warn!(site = %adapter.name, "{refused}");
                        return Err(refused);
                    }
                    Err(BrowserError::BadFlow(why)) => {
                        return Err(BrowserError::BadFlow(format!("{why}; `files` takes {FILES_FORMS}")))
                    }
                    Err(other) => return Err(other),
                }
            }
            driver.set_input_files(&need(selector)?, a.nth, &resolved, timeout).await?;
        }
        StepKind::WaitFor => {
            let state = a.state.unwrap_or(WaitState::Visible);
            driver.wait_for(&need(selector)?, a.nth, state, timeout, false).await?;
        }
        StepKind::Extract => {
            let value =
                driver.extract(&need(selector)?, a.nth, a.attr.as_deref(), a.property.as_deref(), timeout).await?;
            output.vars.insert(a.into.clone().unwrap_or_default(), value);
        }
        StepKind::ExtractList => {
            let (row, fields) = match &a.list {
                Some(name) => {
                    let list = adapter.lists.get(name).ok_or_else(|| {
                        BrowserError::BadFlow(format!("adapter {:?} has no list {name:?}", adapter.name))
                    })?;
                    (list.row.clone(), list.fields.clone())
                }
                None => (render(a.row.as_deref().unwrap_or_default(), ctx)?, a.fields.clone().unwrap_or_default()),
            };
            let max_pages = match &a.max_pages {
                None => 50,
                Some(Value::Number(n)) => n.as_u64().unwrap_or(50),
                Some(Value::String(s)) => render(s, ctx)?
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| BrowserError::BadFlow(format!("maxPages {s:?} is not a number")))?,
                Some(other) => return Err(BrowserError::BadFlow(format!("maxPages {other} is not a number"))),
            }
            .max(1);
            let next = text(&a.next_page)?.filter(|s| !s.trim().is_empty());
            let items =
                extract_pages(driver, &row, &fields, next.as_deref(), max_pages, timeout, options, output).await?;
            output.vars.insert(a.into.clone().unwrap_or_default(), Value::Array(items));
        }
        StepKind::Screenshot => {
            let Some(dir) = &options.artifacts_dir else { return Ok(()) };
            let name = text(&a.path)?.unwrap_or_else(|| format!("screenshot-{}.png", output.screenshots.len() + 1));
            let name = std::path::Path::new(&name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "screenshot.png".into());
            let png = driver.screenshot(a.full_page).await?;
            std::fs::create_dir_all(dir)?;
            let path = dir.join(name);
            std::fs::write(&path, png)?;
            output.screenshots.push(path.display().to_string());
        }
        StepKind::Assert => {
            if let Some(selector) = selector {
                driver.wait_for(selector, a.nth, WaitState::Visible, timeout, false).await.map_err(|e| match e {
                    BrowserError::Timeout { what, .. } => BrowserError::Assertion(what),
                    other => other,
                })?;
                if let Some(expected) = text(&a.contains)? {
                    let actual = driver.extract(selector, a.nth, None, None, timeout).await?;
                    let actual = actual.as_str().unwrap_or_default();
                    if !actual.to_lowercase().contains(&expected.to_lowercase()) {
                        return Err(BrowserError::Assertion(format!(
                            "{selector:?} does not contain the expected text ({} characters expected, page shows {})",
                            expected.len(),
                            actual.len()
                        )));
                    }
                }
            }
            if let Some(expected) = text(&a.url_contains)? {
                let url = driver.url().await?;
                if !url.contains(&expected) {
                    return Err(BrowserError::Assertion(format!(
                        "the page is {url}, expected a URL containing {expected:?}"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn extract_pages(
    driver: &Driver,
    row: &str,
    fields: &std::collections::BTreeMap<String, FieldSpec>,
    next: Option<&str>,
    max_pages: u64,
    timeout: Duration,
    options: &RunOptions,
    output: &mut FlowOutput,
) -> Result<Vec<Value>, BrowserError> {
    let fields = serde_json::to_value(fields).unwrap_or(Value::Null);
    let mut items = Vec::new();
    for page in 1..=max_pages {
        // A page without rows is an empty list, not an error; alarms still abort.
        match driver.wait_for(row, 0, WaitState::Attached, timeout, false).await {
            Ok(_) => {}
            Err(BrowserError::Timeout { .. }) => {}
            Err(other) => return Err(other),
        }
        let rows = driver.extract_list(row, &fields).await?;
        let first = rows.first().cloned();
        items.extend(rows);
        output.pages += 1;
        let Some(next) = next else { break };
        if page == max_pages {
            break;
        }
        // Follow "next" only while it is there and usable.
        if driver.wait_for(next, 0, WaitState::Actionable, Duration::from_millis(300), true).await.is_err() {
            break;
        }
        let before = driver.url().await.unwrap_or_default();
        let pause = options.pacing.draw();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        driver.click(next, 0, timeout).await?;
        // The next page is there when the URL or the first row changed.
        let deadline = Instant::now() + timeout;
        loop {
            let url = driver.url().await.unwrap_or_default();
            if url != before {
                let _ = driver.wait_for(row, 0, WaitState::Attached, timeout, false).await;
                break;
            }
            let now_first = driver.extract_list(row, &fields).await.ok().and_then(|r| r.first().cloned());
            if now_first != first {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: "waiting for the next page".into(),
                    ms: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver.check_alarms().await?;
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_list_template_expands_and_anything_but_paths_is_refused() {
        let ctx = json!({"params": {"files": ["/m/0/a.png", "", "/m/1/b.png"], "one": "/m/c.png", "n": 3,
            "mixed": ["/m/a.png", 7], "none": []}});
        let files = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(render_files(&files(&["{{params.files}}"]), &ctx).unwrap(), files(&["/m/0/a.png", "/m/1/b.png"]));
        assert_eq!(
            render_files(&files(&[" {{ params.files }} ", "{{params.one}}", "/x/{{params.n}}.png"]), &ctx).unwrap(),
            files(&["/m/0/a.png", "/m/1/b.png", "/m/c.png", "/x/3.png"])
        );
        assert!(render_files(&files(&["{{params.none}}"]), &ctx).unwrap().is_empty());
        for wrong in ["{{params.n}}", "{{params.mixed}}", "{{params}}"] {
            let message = render_files(&files(&[wrong]), &ctx).unwrap_err().to_string();
            assert!(message.starts_with("setInputFiles: `{{params"), "{message}");
            assert!(message.contains(FILES_FORMS), "{message}");
        }
        let message = render_files(&files(&["{{params.missing}}"]), &ctx).unwrap_err().to_string();
        assert!(message.contains("params.missing"), "{message}");
    }

    #[test]
    fn if_set_is_false_for_missing_null_and_blank() {
        let ctx = json!({"selectors": {"zone": "#z", "blank": " ", "none": null}});
        assert!(is_set(&ctx, "selectors.zone"));
        assert!(is_set(&ctx, "{{ selectors.zone }}"));
        assert!(!is_set(&ctx, "selectors.blank"));
        assert!(!is_set(&ctx, "selectors.none"));
        assert!(!is_set(&ctx, "selectors.missing"));
    }
}
