//! Owns the queue's policy, as pure functions and plain data: the registry of job types
//! (validation, visibility timeout, whether a type sends messages), the queue settings, the
//! retry decision for a failed job (error taxonomy, backoff with full jitter, `retryAfterMs`,
//! `max_receive_count`) and the recipient rules of the dedupe ledger. It must never do I/O:
//! the store applies what these functions decide, so the rules can be tested alone.

use crate::store::{JobRecord, Transition};
use edge_protocol::errors::{full_jitter_backoff, MAX_RETRY_BACKOFF};
use edge_protocol::jobs::{HttpRequestPayload, HTTP_REQUEST};
use edge_protocol::{ErrorCode, JobError, RetryPolicy};
use serde::Deserialize as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Checks a job type's payload; the error names the offending field (`payload.url: …`).
pub type PayloadValidator = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// What the hub knows about one job type.
#[derive(Clone)]
pub struct JobTypeSpec {
    pub name: String,
    /// `None`: any JSON object is accepted.
    pub validate: Option<PayloadValidator>,
    /// `None`: the queue default.
    pub visibility_timeout: Option<Duration>,
    /// Payloads carry `recipient`/`recipients`, checked against the dedupe ledger.
    pub sends_messages: bool,
}

impl JobTypeSpec {
    /// A type whose payload is any JSON object.
    pub fn opaque(name: impl Into<String>) -> JobTypeSpec {
        JobTypeSpec { name: name.into(), validate: None, visibility_timeout: None, sends_messages: false }
    }

    pub fn with_validator(mut self, validate: PayloadValidator) -> JobTypeSpec {
        self.validate = Some(validate);
        self
    }

    pub fn with_visibility_timeout(mut self, timeout: Duration) -> JobTypeSpec {
        self.visibility_timeout = Some(timeout);
        self
    }

    pub fn sending_messages(mut self) -> JobTypeSpec {
        self.sends_messages = true;
        self
    }
}

impl std::fmt::Debug for JobTypeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobTypeSpec")
            .field("name", &self.name)
            .field("validated", &self.validate.is_some())
            .field("visibility_timeout", &self.visibility_timeout)
            .field("sends_messages", &self.sends_messages)
            .finish()
    }
}

/// The job types this hub accepts. `http_request` is always there; other modules (e.g.
/// signed bundles) and the CLI (`--job-type`) register more before the hub starts.
#[derive(Debug, Clone)]
pub struct JobTypes {
    types: BTreeMap<String, JobTypeSpec>,
}

impl Default for JobTypes {
    fn default() -> Self {
        let mut types = JobTypes { types: BTreeMap::new() };
        types.register(JobTypeSpec::opaque(HTTP_REQUEST).with_validator(Arc::new(validate_http_request)));
        types.register(
            JobTypeSpec::opaque(edge_protocol::jobs::BUNDLE)
                .with_validator(Arc::new(crate::bundles::validate_payload_message)),
        );
        // Browser flows (issue 5); the DM ones go through the dedupe ledger.
        for name in edge_protocol::jobs::BROWSER_JOB_TYPES {
            let mut spec =
                JobTypeSpec::opaque(name).with_validator(Arc::new(move |p: &Value| validate_browser(name, p)));
            if edge_protocol::jobs::MESSAGE_JOB_TYPES.contains(&name) {
                spec = spec.sending_messages();
            }
            types.register(spec);
        }
        types
    }
}

impl JobTypes {
    /// Adds or replaces a type.
    pub fn register(&mut self, spec: JobTypeSpec) {
        self.types.insert(spec.name.clone(), spec);
    }

    pub fn get(&self, name: &str) -> Option<&JobTypeSpec> {
        self.types.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut JobTypeSpec> {
        self.types.get_mut(name)
    }
}

/// Shape checks only: the agent validates the adapter itself (it may come from a bundle).
fn validate_browser(name: &str, payload: &Value) -> Result<(), String> {
    let parsed: edge_protocol::jobs::BrowserJobPayload =
        serde_json::from_value(payload.clone()).map_err(|e| format!("`payload` is not a valid {name} payload: {e}"))?;
    if !parsed.adapter.is_object() {
        return Err("`payload.adapter` must be an adapter object or {\"bundle\",\"version\",\"path\"}".to_owned());
    }
    match name {
        edge_protocol::jobs::SEND_DM if parsed.recipient.as_deref().is_none_or(|r| r.trim().is_empty()) => {
            Err("`payload.recipient` is required".to_owned())
        }
        edge_protocol::jobs::BROADCAST_DM if parsed.recipients.as_ref().is_none_or(Vec::is_empty) => {
            Err("`payload.recipients` must be a non-empty list".to_owned())
        }
        _ => Ok(()),
    }
}

fn validate_http_request(payload: &Value) -> Result<(), String> {
    // Read in place: a copy of every submitted payload only to check it cost more than the check.
    let parsed = HttpRequestPayload::deserialize(payload)
        .map_err(|e| format!("`payload` is not a valid {HTTP_REQUEST} payload: {e}"))?;
    let url = url::Url::parse(&parsed.url).map_err(|e| format!("`payload.url` is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("`payload.url` must be an http:// or https:// URL".to_owned());
    }
    // Checked here so a bad request is a 400 naming the field, not a job the agent fails.
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if parsed.method.is_empty() || !parsed.method.bytes().all(token) {
        return Err(format!("`payload.method` {:?} is not an HTTP method (GET, POST, …)", parsed.method));
    }
    if let Some(body) = &parsed.body {
        use base64::Engine as _;
        if base64::engine::general_purpose::STANDARD.decode(body).is_err() {
            return Err("`payload.body` must be base64 (standard alphabet, padded)".to_owned());
        }
    }
    Ok(())
}

/// Queue settings; the defaults are SQS's where SQS has one.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Lease length unless the job type says otherwise (SQS: 30 s; the prototype's jobs
    /// run longer, hence 120 s).
    pub visibility_timeout: Duration,
    /// Deliveries before a job is dead (SQS redrive policy `maxReceiveCount`).
    pub max_receive_count: u32,
    /// First retry waits up to this (full jitter), doubling per delivery, at most 5 min.
    pub retry_base: Duration,
    /// Final jobs are deleted this long after they finished.
    pub retention: Duration,
    /// A recipient messaged within this window is not messaged again.
    pub dedupe_cooloff: Duration,
    /// Redrive speed unless the request sets one (StartMessageMoveTask's
    /// MaxNumberOfMessagesPerSecond).
    pub redrive_rate_per_sec: u32,
    /// How often expired leases, stale agents, redrives and retention are handled.
    pub sweep_interval: Duration,
    /// Safety-net dispatch pass (retries coming due, missed notifications).
    pub poll_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(120),
            max_receive_count: 5,
            retry_base: Duration::from_secs(1),
            retention: Duration::from_secs(14 * 24 * 3600),
            dedupe_cooloff: Duration::from_secs(7 * 24 * 3600),
            redrive_rate_per_sec: 50,
            sweep_interval: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
        }
    }
}

pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The longest `retryAfterMs` honoured: an agent cannot park a job for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What happens to a held job whose agent reported `err`. `unit_random` ∈ [0, 1) draws the
/// jitter. A cancel request wins over everything; a paused agent hands the job back; a
/// retryable code retries with backoff unless the job is out of deliveries (then dead);
/// anything else fails at once.
pub fn plan_failure(job: &JobRecord, err: &JobError, config: &QueueConfig, now: i64, unit_random: f64) -> Transition {
    if job.cancel_requested {
        return Transition::Cancelled;
    }
    if err.code == ErrorCode::AgentPaused {
        return Transition::Release;
    }
    match err.code.retry_policy() {
        RetryPolicy::Fatal => Transition::Failed,
        RetryPolicy::Retry { max_backoff } => {
            if job.attempts >= job.max_receive_count {
                return Transition::Dead;
            }
            let attempt = u32::try_from(job.attempts.max(1)).unwrap_or(u32::MAX);
            let backoff =
                full_jitter_backoff(attempt, config.retry_base, max_backoff.min(MAX_RETRY_BACKOFF), unit_random);
            let hinted = err.retry_after_ms.map(Duration::from_millis).unwrap_or_default().min(MAX_RETRY_AFTER);
            Transition::Retry { run_at: now.saturating_add(millis(backoff.max(hinted))), payload: None }
        }
    }
}

/// A uniform draw in [0, 1) from the OS random source (0.5 if it fails: the backoff is
/// then merely not jittered).
pub fn unit_random() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// Most recipients one job may name.
pub const MAX_RECIPIENTS: usize = 1000;

/// The ledger's key for a recipient: trimmed and lower-cased, since handles and e-mail
/// addresses are matched case-insensitively by the services they belong to.
pub fn normalize_recipient(recipient: &str) -> String {
    recipient.trim().to_lowercase()
}

/// The recipients of a message-sending payload: `recipients: [..]` or `recipient: ".."`.
/// The error names the field.
pub fn payload_recipients(payload: &Value) -> Result<Vec<String>, String> {
    let list = match (payload.get("recipients"), payload.get("recipient")) {
        (Some(_), Some(_)) => return Err("give `payload.recipients` or `payload.recipient`, not both".to_owned()),
        (Some(Value::Array(items)), None) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "`payload.recipients` must be a list of strings".to_owned())?,
        (Some(_), None) => return Err("`payload.recipients` must be a list of strings".to_owned()),
        (None, Some(Value::String(one))) => vec![one.clone()],
        (None, Some(_)) => return Err("`payload.recipient` must be a string".to_owned()),
        (None, None) => {
            return Err("a message-sending job needs `payload.recipients` (a list) or `payload.recipient`".to_owned())
        }
    };
    if list.is_empty() {
        return Err("`payload.recipients` must name at least one recipient".to_owned());
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(format!("`payload.recipients` names more than {MAX_RECIPIENTS} recipients"));
    }
    if list.iter().any(|r| r.trim().is_empty() || r.len() > 320) {
        return Err("every entry of `payload.recipients` must be 1–320 characters".to_owned());
    }
    Ok(list)
}

/// The payload without the recipients in `remove` (normalised keys); `None` when nothing is left.
pub fn payload_without(payload: &Value, remove: &[String]) -> Option<Value> {
    let mut payload = payload.clone();
    let object = payload.as_object_mut()?;
    if let Some(Value::Array(items)) = object.get_mut("recipients") {
        items.retain(|item| item.as_str().is_none_or(|r| !remove.contains(&normalize_recipient(r))));
        if items.is_empty() {
            return None;
        }
        return Some(payload);
    }
    if let Some(Value::String(one)) = object.get("recipient") {
        if remove.contains(&normalize_recipient(one)) {
            return None;
        }
    }
    Some(payload)
}

/// Which recipients a message-sending job reports as messaged: `data.sentRecipients` when
/// the agent lists them (also on a failed result, for a partial send). A success without
/// the list counts every recipient of the payload as messaged: when in doubt, do not
/// message a person twice.
pub fn sent_recipients(payload: &Value, data: Option<&Value>, succeeded: bool) -> Vec<String> {
    let listed = data.and_then(|d| d.get("sentRecipients")).and_then(Value::as_array).map(|items| {
        items.iter().filter_map(Value::as_str).map(normalize_recipient).filter(|r| !r.is_empty()).collect::<Vec<_>>()
    });
    match listed {
        Some(list) => list,
        None if succeeded => payload_recipients(payload)
            .map(|all| all.iter().map(|r| normalize_recipient(r)).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Which recipients a message-sending job reports as perhaps messaged
/// (`data.uncertainRecipients`: the agent cannot tell whether the message went out),
/// normalised, without those also reported as sent.
pub fn uncertain_recipients(data: Option<&Value>, sent: &[String]) -> Vec<String> {
    let mut listed: Vec<String> = data
        .and_then(|d| d.get("uncertainRecipients"))
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(normalize_recipient).collect())
        .unwrap_or_default();
    listed.retain(|r| !r.is_empty() && !sent.contains(r));
    listed.sort();
    listed.dedup();
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(attempts: i64) -> JobRecord {
        JobRecord::sample(attempts)
    }

    fn err(code: &str, retry_after_ms: Option<u64>) -> JobError {
        JobError { code: ErrorCode::parse(code), message: None, retry_after_ms }
    }

    #[test]
    fn retryable_codes_back_off_and_die_after_max_receives() {
        let config = QueueConfig { retry_base: Duration::from_secs(1), ..Default::default() };
        for code in ["NETWORK", "NAV_TIMEOUT", "RATE_LIMITED"] {
            match plan_failure(&job(3), &err(code, None), &config, 1_000, 0.999_999) {
                // Third delivery: ceiling 4 s.
                Transition::Retry { run_at, .. } => assert!((4_000..=5_000).contains(&run_at), "{code} {run_at}"),
                other => panic!("{code}: {other:?}"),
            }
            assert!(matches!(plan_failure(&job(5), &err(code, None), &config, 0, 0.5), Transition::Dead));
        }
        // Never more than five minutes, whatever the attempt.
        let mut many = job(40);
        many.max_receive_count = 100;
        match plan_failure(&many, &err("NETWORK", None), &config, 0, 0.999_999_9) {
            Transition::Retry { run_at, .. } => assert!(run_at <= 300_000, "{run_at}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_honoured_and_fatal_codes_fail_at_once() {
        let config = QueueConfig::default();
        match plan_failure(&job(1), &err("RATE_LIMITED", Some(60_000)), &config, 0, 0.0) {
            Transition::Retry { run_at, .. } => assert_eq!(run_at, 60_000),
            other => panic!("{other:?}"),
        }
        for code in
            ["LOGIN_REQUIRED", "CONTENT_BLOCKED", "POLICY_VIOLATION", "BAD_PAYLOAD", "SEND_UNCERTAIN", "WHATEVER"]
        {
            assert!(matches!(plan_failure(&job(1), &err(code, None), &config, 0, 0.5), Transition::Failed), "{code}");
        }
        assert!(matches!(plan_failure(&job(1), &err("AGENT_PAUSED", None), &config, 0, 0.5), Transition::Release));
        let mut cancelled = job(1);
        cancelled.cancel_requested = true;
        assert!(matches!(plan_failure(&cancelled, &err("NETWORK", None), &config, 0, 0.5), Transition::Cancelled));
    }

    #[test]
    fn recipients_are_read_normalised_and_removed() {
        assert_eq!(payload_recipients(&json!({"recipients":["A","b"]})).unwrap(), vec!["A", "b"]);
        assert_eq!(payload_recipients(&json!({"recipient":"x"})).unwrap(), vec!["x"]);
        assert!(payload_recipients(&json!({"recipients":[1]})).unwrap_err().contains("payload.recipients"));
        assert!(payload_recipients(&json!({})).unwrap_err().contains("payload.recipients"));
        let payload = json!({"recipients":[" Ann ","bob"],"text":"hi"});
        assert_eq!(payload_without(&payload, &["ann".into()]).unwrap(), json!({"recipients":["bob"],"text":"hi"}));
        assert_eq!(payload_without(&payload, &["ann".into(), "bob".into()]), None);
        assert_eq!(sent_recipients(&payload, None, true), vec!["ann", "bob"]);
        assert_eq!(sent_recipients(&payload, Some(&json!({"sentRecipients":["BOB"]})), false), vec!["bob"]);
        assert!(sent_recipients(&payload, None, false).is_empty());
        let data = json!({"sentRecipients":["ann"],"uncertainRecipients":[" Bob ","ANN","bob",7]});
        assert_eq!(uncertain_recipients(Some(&data), &sent_recipients(&payload, Some(&data), false)), vec!["bob"]);
        assert!(uncertain_recipients(None, &[]).is_empty());
        // A send_dm whose outcome is unknown (SEND_UNCERTAIN): its one recipient is uncertain.
        let one = json!({"recipient":"Hal","text":"hi"});
        let data = json!({"sentRecipients":[],"uncertainRecipients":["Hal"]});
        let sent = sent_recipients(&one, Some(&data), false);
        assert!(sent.is_empty());
        assert_eq!(uncertain_recipients(Some(&data), &sent), vec!["hal"]);
        assert!((0.0..1.0).contains(&unit_random()));
    }
}
