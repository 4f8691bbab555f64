//! The declarative flow format: site adapters, flows, steps, parameters and `{{…}}`
//! templates, in JSON or YAML. `docs/flows.md` is its reference.
//!
//! This module owns parsing and validating those documents and rendering templates; it
//! must never touch a browser. A flow never contains code: every step is one of the
//! [`StepKind`]s, so a bundle can only ask for what a person could do in the page.

use crate::error::BrowserError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// URLs, selectors and markers of one site. The built-in flows only name these keys, so
/// the same flows run on another site by swapping the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Adapter {
    /// Short name, used in messages, session file names and `edge-agent browser login --site`.
    pub name: String,
    /// `https://site.example` (relative URLs are resolved against it).
    pub base_url: String,
    /// Other origins the site's pages live on (`https://login.site.example`), besides
    /// `baseUrl`'s. A job's pages and frames may load documents from these origins only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
    #[serde(default)]
    pub urls: BTreeMap<String, String>,
    #[serde(default)]
    pub selectors: BTreeMap<String, String>,
    #[serde(default)]
    pub markers: Markers,
    #[serde(default)]
    pub lists: BTreeMap<String, ListSpec>,
    #[serde(default)]
    pub settings: AdapterSettings,
    /// Replacements for built-in flows (`send_dm`…) or extra flows, by name.
    #[serde(default)]
    pub flows: BTreeMap<String, Flow>,
}

/// Selectors whose visibility means something whatever step is running.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Markers {
    /// Present only when logged in (checked by `checkLogin` and after a headful login).
    pub logged_in: Option<String>,
    /// Present when logged out: the job fails `LOGIN_REQUIRED`.
    pub logged_out: Option<String>,
    /// The site's "slow down" banner: `RATE_LIMITED`.
    pub rate_limited: Option<String>,
    /// `CONTENT_BLOCKED` (fatal).
    pub content_blocked: Option<String>,
    /// `POLICY_VIOLATION` (fatal).
    pub policy_violation: Option<String>,
}

impl Markers {
    /// The markers that abort a step when they appear, by name.
    pub fn alarms(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut put = |name: &str, value: &Option<String>| {
            if let Some(v) = value.as_ref().filter(|v| !v.trim().is_empty()) {
                out.insert(name.to_owned(), v.clone());
            }
        };
        put("loggedOut", &self.logged_out);
        put("rateLimited", &self.rate_limited);
        put("contentBlocked", &self.content_blocked);
        put("policyViolation", &self.policy_violation);
        out
    }
}

/// A repeated block of the page (a table row, a card) read into one JSON object each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListSpec {
    pub row: String,
    pub fields: BTreeMap<String, FieldSpec>,
}

/// One field of a list row: the text of `selector` inside the row (the row itself when
/// absent), or its attribute `attr`, or its DOM property `property`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldSpec {
    pub selector: Option<String>,
    pub attr: Option<String>,
    pub property: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdapterSettings {
    /// The time zone the site's date picker shows (IANA); default: the job's own.
    pub time_zone: Option<String>,
    /// chrono format of the date field (`%Y-%m-%d` is what `<input type=date>` takes).
    #[serde(default = "default_date_format")]
    pub date_format: String,
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// Default wait for locators and navigations.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First back-off after the site rate-limited us; doubles while it keeps doing so.
    #[serde(default = "default_backoff_ms")]
    pub rate_limit_backoff_ms: u64,
}

impl Default for AdapterSettings {
    fn default() -> Self {
        AdapterSettings {
            time_zone: None,
            date_format: default_date_format(),
            time_format: default_time_format(),
            timeout_ms: default_timeout_ms(),
            rate_limit_backoff_ms: default_backoff_ms(),
        }
    }
}

fn default_date_format() -> String {
    "%Y-%m-%d".to_owned()
}
fn default_time_format() -> String {
    "%H:%M".to_owned()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_ms() -> u64 {
    60_000
}

/// A named list of steps with declared parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flow {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StepKind {
    Goto,
    Click,
    Fill,
    Type,
    Press,
    Select,
    SetInputFiles,
    WaitFor,
    Extract,
    ExtractList,
    Screenshot,
    Assert,
    CheckLogin,
}

/// Arguments of a step; which ones a kind uses is checked by [`Step::validate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepArgs {
    pub url: Option<String>,
    pub selector: Option<String>,
    /// Which match of `selector` (0 first, -1 last).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nth: i64,
    pub value: Option<String>,
    pub text: Option<String>,
    pub key: Option<String>,
    /// `setInputFiles`: file paths or templates; one entry alone may stand without a list.
    #[serde(default, deserialize_with = "one_or_many_files", skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<String>>,
    pub state: Option<crate::locator::WaitState>,
    /// Name of the output variable (`extract`, `extractList`).
    pub into: Option<String>,
    pub attr: Option<String>,
    pub property: Option<String>,
    /// `extractList`: name of an adapter list…
    pub list: Option<String>,
    /// …or an inline one.
    pub row: Option<String>,
    pub fields: Option<BTreeMap<String, FieldSpec>>,
    /// `extractList`: the "next page" control; pages are followed while it is actionable.
    pub next_page: Option<String>,
    /// `extractList`: at most this many pages (number or template).
    pub max_pages: Option<Value>,
    /// `screenshot`: file name in the job's artifact dir.
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_page: bool,
    /// `assert`: the element's text contains this.
    pub contains: Option<String>,
    /// `assert`: the page URL contains this.
    pub url_contains: Option<String>,
    /// A final submit action: skipped in dry-run mode (with every later submit step).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub submit: bool,
    /// Overrides the adapter's timeout for this step.
    pub timeout_ms: Option<u64>,
    /// A failure of this step is ignored (the flow goes on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Run the step only when this template path (`selectors.timeZoneInput`, braces
    /// optional) is set to something other than null or an empty string; else skip it. Lets
    /// a built-in flow use a control only some sites have.
    pub if_set: Option<String>,
}

/// What `files` must look like, shown whenever it does not.
pub const FILES_FORMS: &str = "`files: \"{{params.files}}\"` (a list parameter), \
     `files: [\"{{params.files}}\"]`, or `files: [\"/path/a.png\", \"/path/b.png\"]`";

/// `files` takes a list of strings or a single string (the form an adapter writer reaches
/// for first: `files: "{{params.files}}"`); anything else is refused with the forms that work.
fn one_or_many_files<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    use serde::de::Error;
    let value = Value::deserialize(d)?;
    let wrong = |what: &str| D::Error::custom(format!("`files` is {what}; write it as {FILES_FORMS}"));
    match value {
        Value::Null => Ok(None),
        Value::String(one) => Ok(Some(vec![one])),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                other => Err(wrong(&format!("a list whose entry {} is {}", i + 1, json_kind(&other)))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(wrong(&json_kind(&other))),
    }
}

/// "a number", "an object"… for messages about a value of the wrong shape.
pub(crate) fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The dotted path of an `ifSet` (or a lone `{{path}}`), without braces or blanks.
pub(crate) fn template_path(text: &str) -> &str {
    let trimmed = text.trim();
    trimmed.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim).unwrap_or(trimmed)
}

/// Looks a dotted path up in a template context.
pub(crate) fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(context, |value, part| value.get(part))
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One step: `{"click": {"selector": "#send", "submit": true}}`, or the short form
/// `{"click": "#send"}` for the kind's main argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub args: StepArgs,
}

/// The step kinds by the names flows use, for "unknown step" messages.
const STEP_KINDS: &str =
    "goto, checkLogin, click, fill, type, press, select, setInputFiles, waitFor, extract, extractList, screenshot, assert";

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Read the step as plain data first and its arguments second: a mistake inside the
        // arguments then gets serde's own words (the field, what was expected) instead of
        // "did not match any variant" of a short-or-full union.
        let map: BTreeMap<String, Value> = BTreeMap::deserialize(d)?;
        if map.len() != 1 {
            return Err(D::Error::custom(format!(
                "a step is an object with exactly one key (its kind), this one has {}",
                map.len()
            )));
        }
        let Some((name, value)) = map.into_iter().next() else {
            return Err(D::Error::custom("empty step"));
        };
        let kind: StepKind = serde_json::from_value(Value::String(name.clone()))
            .map_err(|_| D::Error::custom(format!("unknown step kind {name:?}; the kinds are {STEP_KINDS}")))?;
        let args = match value {
            Value::Null => StepArgs::default(),
            Value::Object(_) => serde_json::from_value::<StepArgs>(value)
                .map_err(|e| D::Error::custom(format!("step `{name}`: {e}")))?,
            Value::String(main) => {
                let mut args = StepArgs::default();
                match kind {
                    StepKind::Goto => args.url = Some(main),
                    StepKind::Press => args.key = Some(main),
                    StepKind::Screenshot => args.path = Some(main),
                    StepKind::CheckLogin => {}
                    _ => args.selector = Some(main),
                }
                args
            }
            other => {
                return Err(D::Error::custom(format!(
                    "step `{name}` takes an object of arguments or a string, not {}",
                    json_kind(&other)
                )))
            }
        };
        Ok(Step { kind, args })
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = BTreeMap::new();
        map.insert(self.kind, &self.args);
        map.serialize(s)
    }
}

impl Ord for StepKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}
impl PartialOrd for StepKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Step {
    /// Checks the arguments this kind needs are there.
    pub fn validate(&self, index: usize) -> Result<(), BrowserError> {
        let a = &self.args;
        let missing =
            |what: &str| Err(BrowserError::BadFlow(format!("step {} ({:?}) needs `{what}`", index + 1, self.kind)));
        match self.kind {
            StepKind::Goto if a.url.is_none() => missing("url"),
            StepKind::Click | StepKind::WaitFor | StepKind::Extract if a.selector.is_none() => missing("selector"),
            StepKind::Fill if a.selector.is_none() || a.value.is_none() => missing("selector and value"),
            StepKind::Type if a.selector.is_none() || a.text.is_none() => missing("selector and text"),
            StepKind::Press if a.key.is_none() => missing("key"),
            StepKind::Select if a.selector.is_none() || a.value.is_none() => missing("selector and value"),
            StepKind::SetInputFiles if a.selector.is_none() || a.files.is_none() => missing("selector and files"),
            StepKind::Extract | StepKind::ExtractList if a.into.is_none() => missing("into"),
            StepKind::ExtractList if a.list.is_none() && (a.row.is_none() || a.fields.is_none()) => {
                missing("list, or row and fields")
            }
            StepKind::Assert if a.selector.is_none() && a.url_contains.is_none() => missing("selector or urlContains"),
            _ if a.if_set.as_deref().is_some_and(|p| template_path(p).is_empty()) => {
                Err(BrowserError::BadFlow(format!(
                    "step {} ({:?}): `ifSet` names no template path (e.g. selectors.timeZoneInput)",
                    index + 1,
                    self.kind
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Flow {
    pub fn validate(&self) -> Result<(), BrowserError> {
        if self.steps.is_empty() {
            return Err(BrowserError::BadFlow(format!("flow {:?} has no steps", self.name)));
        }
        self.steps.iter().enumerate().try_for_each(|(i, s)| s.validate(i))
    }

    /// The parameters with defaults applied; a missing required one is `BAD_PAYLOAD`.
    pub fn resolve_params(&self, given: &Map<String, Value>) -> Result<Map<String, Value>, BrowserError> {
        let mut out = given.clone();
        for (name, spec) in &self.params {
            if out.get(name).is_none_or(Value::is_null) {
                match &spec.default {
                    Some(default) => {
                        out.insert(name.clone(), default.clone());
                    }
                    None if spec.required => {
                        return Err(BrowserError::BadFlow(format!("flow {:?} needs the parameter `{name}`", self.name)))
                    }
                    None => {}
                }
            }
        }
        Ok(out)
    }
}

impl Adapter {
    pub fn validate(&self) -> Result<(), BrowserError> {
        let base = url::Url::parse(&self.base_url)
            .map_err(|e| BrowserError::BadFlow(format!("adapter {:?}: baseUrl is not a URL: {e}", self.name)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(BrowserError::BadFlow(format!("adapter {:?}: baseUrl must be http(s)", self.name)));
        }
        if self.name.is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(BrowserError::BadFlow(format!(
                "adapter name {:?} must be letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if let Some(tz) = &self.settings.time_zone {
            tz.parse::<chrono_tz::Tz>()
                .map_err(|_| BrowserError::BadFlow(format!("adapter {:?}: unknown time zone {tz:?}", self.name)))?;
        }
        // Every URL the adapter names must be one its pages may open; a URL that is a
        // template as a whole is checked when it is rendered, before the navigation.
        let origins = crate::confine::Origins::of(self)?;
        for (key, url) in &self.urls {
            let absolute = base.join(url).map_err(|e| {
                BrowserError::BadFlow(format!("adapter {:?}: urls.{key} {url:?} is not a URL: {e}", self.name))
            })?;
            origins.check(absolute.as_str()).map_err(|e| match e {
                BrowserError::NotAllowed(why) => {
                    BrowserError::NotAllowed(format!("adapter {:?}: urls.{key}: {why}", self.name))
                }
                other => other,
            })?;
        }
        self.flows.values().try_for_each(Flow::validate)
    }

    /// The origin (`scheme://host:port`) session state belongs to.
    pub fn origin(&self) -> String {
        url::Url::parse(&self.base_url).map(|u| u.origin().ascii_serialization()).unwrap_or_default()
    }

    /// Resolves a possibly relative URL against `baseUrl`.
    pub fn absolute(&self, url: &str) -> Result<String, BrowserError> {
        let base =
            url::Url::parse(&self.base_url).map_err(|e| BrowserError::BadFlow(format!("adapter baseUrl: {e}")))?;
        base.join(url).map(|u| u.to_string()).map_err(|e| BrowserError::BadFlow(format!("URL {url:?}: {e}")))
    }

    /// The flow to run for `name`: the adapter's own, else the built-in one.
    pub fn flow(&self, name: &str) -> Result<Flow, BrowserError> {
        if let Some(flow) = self.flows.get(name) {
            return Ok(flow.clone());
        }
        builtin(name)
    }
}

/// Parses JSON or YAML (JSON is YAML, but serde_json's messages are clearer for it).
pub fn parse_document<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, BrowserError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| BrowserError::BadFlow(format!("{what} is not valid JSON: {e}")))
    } else {
        serde_yaml::from_str(text).map_err(|e| BrowserError::BadFlow(format!("{what} is not valid YAML: {e}")))
    }
}

pub fn parse_adapter(text: &str) -> Result<Adapter, BrowserError> {
    let adapter: Adapter = parse_document(text, "the adapter")?;
    adapter.validate()?;
    Ok(adapter)
}

pub fn parse_flow(text: &str) -> Result<Flow, BrowserError> {
    let flow: Flow = parse_document(text, "the flow")?;
    flow.validate()?;
    Ok(flow)
}

/// What a bundle's `browser` entry point contains: which adapter, which flow (a built-in
/// name or inline steps) and default parameters. Paths are relative to the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowDocument {
    pub adapter: AdapterRef,
    pub flow: FlowRef,
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdapterRef {
    /// A file of the bundle.
    Path(String),
    Inline(Box<Adapter>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlowRef {
    /// A built-in flow (`send_dm`…), a flow of the adapter, or a file of the bundle.
    Name(String),
    Inline(Box<Flow>),
}

const BUILTIN_SEND_DM: &str = include_str!("../flows/send_dm.yaml");
const BUILTIN_SCHEDULE_POST: &str = include_str!("../flows/schedule_post.yaml");
const BUILTIN_SCRAPE_SUBS: &str = include_str!("../flows/scrape_subs.yaml");
const BUILTIN_CHECK_SENT: &str = include_str!("../flows/check_sent.yaml");

/// The built-in flows. `broadcast_dm` runs `send_dm` once per recipient (with its
/// checkpoint), `check_sent` is what a resumed broadcast uses to tell whether an
/// interrupted send went out.
pub fn builtin(name: &str) -> Result<Flow, BrowserError> {
    let text = match name {
        "send_dm" | "broadcast_dm" => BUILTIN_SEND_DM,
        "schedule_post" => BUILTIN_SCHEDULE_POST,
        "scrape_subs" => BUILTIN_SCRAPE_SUBS,
        "check_sent" => BUILTIN_CHECK_SENT,
        other => {
            return Err(BrowserError::BadFlow(format!(
                "no flow named {other:?} (built in: send_dm, broadcast_dm, schedule_post, scrape_subs)"
            )))
        }
    };
    parse_flow(text)
}

/// Renders `{{path}}` and `{{path|url}}` against `context` (nested lookups by dots;
/// values that are themselves templates, like adapter URLs naming params, are rendered
/// too, up to a small depth).
pub fn render(template: &str, context: &Value) -> Result<String, BrowserError> {
    render_depth(template, context, 0)
}

fn render_depth(template: &str, context: &Value, depth: u32) -> Result<String, BrowserError> {
    if depth > 4 {
        return Err(BrowserError::BadFlow(format!("template {template:?} refers to itself")));
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| BrowserError::BadFlow(format!("unclosed {{{{ in {template:?}")))?;
        let expr = after[..end].trim();
        let (path, filter) = match expr.split_once('|') {
            Some((p, f)) => (p.trim(), Some(f.trim())),
            None => (expr, None),
        };
        let value = lookup(context, path)
            .ok_or_else(|| BrowserError::BadFlow(format!("the flow uses {{{{{path}}}}}, which is not set")))?;
        let text = match value {
            Value::String(s) => render_depth(s, context, depth + 1)?,
            Value::Null => String::new(),
            other => other.to_string(),
        };
        match filter {
            None => out.push_str(&text),
            Some("url") => out.extend(url::form_urlencoded::byte_serialize(text.as_bytes())),
            Some(other) => return Err(BrowserError::BadFlow(format!("unknown template filter {other:?}"))),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_flows_parse_and_validate() {
        for name in ["send_dm", "broadcast_dm", "schedule_post", "scrape_subs", "check_sent"] {
            builtin(name).unwrap();
        }
    }

    #[test]
    fn steps_accept_short_and_full_forms_in_yaml_and_json() {
        let yaml = "name: f\nsteps:\n  - goto: /x\n  - click: {selector: '#a', submit: true}\n  - checkLogin: {}\n  - press: Enter\n";
        let flow = parse_flow(yaml).unwrap();
        assert_eq!(flow.steps[0].args.url.as_deref(), Some("/x"));
        assert!(flow.steps[1].args.submit);
        assert_eq!(flow.steps[2].kind, StepKind::CheckLogin);
        let json =
            r##"{"name":"f","steps":[{"goto":"/x"},{"click":{"selector":"#a","submit":true}},{"press":"Enter"}]}"##;
        let from_json = parse_flow(json).unwrap();
        assert_eq!(from_json.steps[1], flow.steps[1]);
        assert!(parse_flow("name: f\nsteps:\n  - click: {selector: '#a', bogus: 1}\n").is_err());
        assert!(parse_flow("name: f\nsteps:\n  - fill: {selector: '#a'}\n").is_err());
    }

    #[test]
    fn files_takes_one_template_or_a_list_and_refuses_other_shapes_showing_the_forms() {
        // The form an adapter writer reaches for first, and the list form, mean the same.
        let alone =
            parse_flow("name: f\nsteps:\n  - setInputFiles: {selector: '#m', files: '{{params.files}}'}\n").unwrap();
        let listed =
            parse_flow("name: f\nsteps:\n  - setInputFiles: {selector: '#m', files: ['{{params.files}}']}\n").unwrap();
        assert_eq!(alone.steps[0].args.files, Some(vec!["{{params.files}}".to_owned()]));
        assert_eq!(alone.steps[0], listed.steps[0]);
        let json = r##"{"name":"f","steps":[{"setInputFiles":{"selector":"#m","files":"{{params.files}}"}}]}"##;
        assert_eq!(parse_flow(json).unwrap().steps[0], listed.steps[0]);
        // Wrong shapes: the message names the field and shows the forms that work.
        for wrong in ["files: {path: a.png}", "files: 3", "files: [a.png, {path: b.png}]"] {
            let text = format!("name: f\nsteps:\n  - setInputFiles: {{selector: '#m', {wrong}}}\n");
            let message = parse_flow(&text).unwrap_err().to_string();
            assert!(message.contains("`files` is"), "{wrong}: {message}");
            assert!(message.contains(r#"files: "{{params.files}}""#), "{wrong}: {message}");
            assert!(message.contains(r#"files: ["{{params.files}}"]"#), "{wrong}: {message}");
            assert!(!message.contains("untagged"), "{wrong}: {message}");
        }
    }

    #[test]
    fn a_mistake_inside_a_step_is_named_not_reported_as_an_untagged_enum() {
        let message = parse_flow("name: f\nsteps:\n  - click: {selector: '#a', bogus: 1}\n").unwrap_err().to_string();
        assert!(message.contains("step `click`") && message.contains("unknown field `bogus`"), "{message}");
        let message = parse_flow("name: f\nsteps:\n  - clik: '#a'\n").unwrap_err().to_string();
        assert!(message.contains("unknown step kind \"clik\"") && message.contains("click"), "{message}");
        let message = parse_flow("name: f\nsteps:\n  - click: 3\n").unwrap_err().to_string();
        assert!(message.contains("step `click` takes an object of arguments or a string"), "{message}");
        // `checkLogin:` with nothing after it is still an empty step.
        assert_eq!(parse_flow("name: f\nsteps:\n  - checkLogin:\n").unwrap().steps[0].kind, StepKind::CheckLogin);
        // Steps written back out read the same.
        let flow = builtin("schedule_post").unwrap();
        let again: Flow = serde_json::from_value(serde_json::to_value(&flow).unwrap()).unwrap();
        assert_eq!(again, flow);
    }

    #[test]
    fn if_set_needs_a_path() {
        let ok =
            parse_flow("name: f\nsteps:\n  - select: {selector: x, value: y, ifSet: '{{selectors.zone}}'}\n").unwrap();
        assert_eq!(template_path(ok.steps[0].args.if_set.as_deref().unwrap()), "selectors.zone");
        let message =
            parse_flow("name: f\nsteps:\n  - select: {selector: x, value: y, ifSet: ' '}\n").unwrap_err().to_string();
        assert!(message.contains("`ifSet` names no template path"), "{message}");
    }

    #[test]
    fn templates_render_nested_values_and_url_encode() {
        let ctx = json!({"params": {"recipient": "ann b&c"}, "urls": {"compose": "/dm?to={{params.recipient|url}}"}});
        assert_eq!(render("{{ urls.compose }}", &ctx).unwrap(), "/dm?to=ann+b%26c");
        assert!(render("{{params.nope}}", &ctx).unwrap_err().to_string().contains("params.nope"));
        let looping = json!({"a": "{{a}}"});
        assert!(render("{{a}}", &looping).is_err());
    }

    #[test]
    fn required_params_and_defaults() {
        let flow = builtin("scrape_subs").unwrap();
        let params = flow.resolve_params(&Map::new()).unwrap();
        assert!(params.contains_key("maxPages"));
        let send = builtin("send_dm").unwrap();
        assert!(send.resolve_params(&Map::new()).is_err());
    }
}
