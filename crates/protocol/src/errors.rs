//! The job error taxonomy and its retry rules, as data both sides read.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Why a job failed. The six prototype codes keep their exact spelling; any other
/// string survives a round trip as [`ErrorCode::Other`] so newer peers can add codes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Network,
    NavTimeout,
    RateLimited,
    LoginRequired,
    ContentBlocked,
    PolicyViolation,
    /// The agent is paused by its user and did not start the job.
    AgentPaused,
    /// The agent does not know the job type.
    UnsupportedJob,
    /// The job payload did not match its type's schema.
    BadPayload,
    /// The job was cancelled before it finished.
    Cancelled,
    /// The agent failed in a way it could not classify.
    Internal,
    /// The person at the agent's machine has not granted the capability the job needs
    /// (`edge-agent consent grant ...`); retrying cannot help until they do.
    CapabilityNotGranted,
    /// The agent's egress gate refused a connection the job asked for (a loopback, LAN or
    /// otherwise non-public address, a port or scheme outside the policy). Never retried:
    /// the same job meets the same policy.
    EgressDenied,
    /// The person's daily byte cap is reached; the agent opens no new connection today.
    EgressCap,
    /// A message was submitted but the agent cannot tell whether the site delivered it (no
    /// confirmation, the job cut after the send button, an agent killed mid-send) and the
    /// site cannot be asked. Never retried: a retry could message the person twice. The
    /// error's `data.uncertainRecipients` names who may have got it.
    SendUncertain,
    Other(String),
}

/// What the hub does with a failed job of a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Retry with exponential backoff and full jitter, never waiting longer than `max_backoff`.
    Retry { max_backoff: Duration },
    /// Fail at once; retrying cannot help and may harm the creator's account.
    Fatal,
}

/// Five minutes: the backoff ceiling of the prototype.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Network => "NETWORK",
            ErrorCode::NavTimeout => "NAV_TIMEOUT",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::LoginRequired => "LOGIN_REQUIRED",
            ErrorCode::ContentBlocked => "CONTENT_BLOCKED",
            ErrorCode::PolicyViolation => "POLICY_VIOLATION",
            ErrorCode::AgentPaused => "AGENT_PAUSED",
            ErrorCode::UnsupportedJob => "UNSUPPORTED_JOB",
            ErrorCode::BadPayload => "BAD_PAYLOAD",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::CapabilityNotGranted => "CAPABILITY_NOT_GRANTED",
            ErrorCode::EgressDenied => "EGRESS_DENIED",
            ErrorCode::EgressCap => "EGRESS_CAP",
            ErrorCode::SendUncertain => "SEND_UNCERTAIN",
            ErrorCode::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> ErrorCode {
        match s {
            "NETWORK" => ErrorCode::Network,
            "NAV_TIMEOUT" => ErrorCode::NavTimeout,
            "RATE_LIMITED" => ErrorCode::RateLimited,
            "LOGIN_REQUIRED" => ErrorCode::LoginRequired,
            "CONTENT_BLOCKED" => ErrorCode::ContentBlocked,
            "POLICY_VIOLATION" => ErrorCode::PolicyViolation,
            "AGENT_PAUSED" => ErrorCode::AgentPaused,
            "UNSUPPORTED_JOB" => ErrorCode::UnsupportedJob,
            "BAD_PAYLOAD" => ErrorCode::BadPayload,
            "CANCELLED" => ErrorCode::Cancelled,
            "INTERNAL" => ErrorCode::Internal,
            "CAPABILITY_NOT_GRANTED" => ErrorCode::CapabilityNotGranted,
            "EGRESS_DENIED" => ErrorCode::EgressDenied,
            "EGRESS_CAP" => ErrorCode::EgressCap,
            "SEND_UNCERTAIN" => ErrorCode::SendUncertain,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    /// The retry rule of the prototype. Unknown codes are fatal: retrying something we do
    /// not understand on a person's account is the riskier choice.
    pub fn retry_policy(&self) -> RetryPolicy {
        match self {
            ErrorCode::Network | ErrorCode::NavTimeout | ErrorCode::RateLimited => {
                RetryPolicy::Retry { max_backoff: MAX_RETRY_BACKOFF }
            }
            // The job never started; another agent (or this one later) can take it.
            ErrorCode::AgentPaused => RetryPolicy::Retry { max_backoff: MAX_RETRY_BACKOFF },
            _ => RetryPolicy::Fatal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.retry_policy(), RetryPolicy::Retry { .. })
    }
}

/// Backoff before retry number `attempt` (1-based) with full jitter: a uniform draw in
/// `[0, min(cap, base * 2^(attempt-1))]`. `unit_random` is a number in `[0, 1)` supplied by
/// the caller, which keeps this crate free of a random source and the function testable.
pub fn full_jitter_backoff(attempt: u32, base: Duration, cap: Duration, unit_random: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(unit_random.clamp(0.0, 1.0))
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// The `err` object of a failed `job_result`. The prototype sent only `code`; the other
/// fields are optional so its frames still decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A hint from the agent (for `RATE_LIMITED`): do not retry sooner than this.
    #[serde(default, rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobError { code, message: Some(message.into()), retry_after_ms: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototype_codes_follow_their_retry_rules() {
        for code in ["NETWORK", "NAV_TIMEOUT", "RATE_LIMITED"] {
            assert!(ErrorCode::parse(code).is_retryable(), "{code} must retry");
        }
        for code in [
            "LOGIN_REQUIRED",
            "CONTENT_BLOCKED",
            "POLICY_VIOLATION",
            "CAPABILITY_NOT_GRANTED",
            "EGRESS_DENIED",
            "EGRESS_CAP",
            "SEND_UNCERTAIN",
            "SOMETHING_NEW",
        ] {
            assert_eq!(ErrorCode::parse(code).retry_policy(), RetryPolicy::Fatal, "{code}");
        }
    }

    #[test]
    fn capability_not_granted_is_a_named_code_not_an_unknown_one() {
        let code: ErrorCode = serde_json::from_str("\"CAPABILITY_NOT_GRANTED\"").unwrap();
        assert_eq!(code, ErrorCode::CapabilityNotGranted);
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"CAPABILITY_NOT_GRANTED\"");
    }

    #[test]
    fn egress_codes_are_named_variants_that_round_trip() {
        for (text, code) in [("EGRESS_DENIED", ErrorCode::EgressDenied), ("EGRESS_CAP", ErrorCode::EgressCap)] {
            assert_eq!(ErrorCode::parse(text), code);
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{text}\""));
        }
    }

    #[test]
    fn send_uncertain_is_a_named_fatal_code() {
        let code: ErrorCode = serde_json::from_str("\"SEND_UNCERTAIN\"").unwrap();
        assert_eq!(code, ErrorCode::SendUncertain);
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"SEND_UNCERTAIN\"");
        assert_eq!(code.retry_policy(), RetryPolicy::Fatal, "a retry could message the person twice");
        // What a hub that predates the code makes of it: an unknown code, which is never
        // retried either.
        assert_eq!(ErrorCode::Other("SEND_UNCERTAIN".into()).retry_policy(), RetryPolicy::Fatal);
    }

    #[test]
    fn unknown_codes_round_trip_unchanged() {
        let code: ErrorCode = serde_json::from_str("\"QUOTA_EXCEEDED\"").unwrap();
        assert_eq!(code, ErrorCode::Other("QUOTA_EXCEEDED".into()));
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"QUOTA_EXCEEDED\"");
    }

    #[test]
    fn backoff_is_capped_at_five_minutes() {
        let base = Duration::from_secs(1);
        assert_eq!(full_jitter_backoff(1, base, MAX_RETRY_BACKOFF, 0.999_999).as_secs(), 0);
        assert!(full_jitter_backoff(4, base, MAX_RETRY_BACKOFF, 0.5) == Duration::from_secs(4));
        assert!(full_jitter_backoff(40, base, MAX_RETRY_BACKOFF, 1.0) == MAX_RETRY_BACKOFF);
        assert_eq!(full_jitter_backoff(40, base, MAX_RETRY_BACKOFF, 0.0), Duration::ZERO);
    }
}
