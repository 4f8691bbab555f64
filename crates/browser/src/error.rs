//! `BrowserError`: every way a browser job can fail, and its mapping onto the job error
//! taxonomy of `edge-protocol` (which decides whether the hub retries).
//!
//! It must never carry a message body, cookie or key in its text: messages name selectors,
//! URLs, steps and durations only.

use edge_protocol::{ErrorCode, JobError};

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// No usable browser binary; the message names what to install.
    #[error("{0}")]
    NotInstalled(String),
    #[error("the browser could not start: {0}")]
    Launch(String),
    /// A locator or navigation did not become ready in time (`NAV_TIMEOUT`, retried).
    #[error("timed out after {ms} ms: {what}")]
    Timeout { what: String, ms: u64 },
    /// The page could not be reached (`NETWORK`, retried).
    #[error("network error: {0}")]
    Network(String),
    /// The adapter's logged-out marker is on the page (`LOGIN_REQUIRED`, never retried).
    #[error("the site {site:?} shows its logged-out marker: log in with `edge-agent browser login --site {site}`, then retry the job")]
    LoginRequired { site: String },
    /// The site says we go too fast: its banner, or HTTP 429 (`RATE_LIMITED`).
    #[error("the site {site:?} is rate limiting ({detail})")]
    RateLimited { site: String, detail: String, retry_after_ms: Option<u64> },
    /// The site refused the content (`CONTENT_BLOCKED`, fatal).
    #[error("the site {site:?} blocked the content: {detail}")]
    ContentBlocked { site: String, detail: String },
    /// The site says the action breaks its rules (`POLICY_VIOLATION`, fatal).
    #[error("the site {site:?} reports a policy violation: {detail}")]
    PolicyViolation { site: String, detail: String },
    /// The agent's confinement refuses what the job asked for: a page outside the adapter's
    /// origins or of another scheme, a new window, a file outside the job's folders, an
    /// adapter from a source the person did not allow (`POLICY_VIOLATION`, fatal). The
    /// message names the URL's origin or scheme, or the path, and the rule.
    #[error("{0}")]
    NotAllowed(String),
    /// The flow or adapter is wrong (`BAD_PAYLOAD`).
    #[error("{0}")]
    BadFlow(String),
    /// An `assert` step failed (`ASSERTION_FAILED`, fatal: the page is not what the flow expects).
    #[error("assertion failed: {0}")]
    Assertion(String),
    /// The local guardrails refuse to start before the deadline (`RATE_LIMITED` with retryAfterMs).
    #[error("{reason}")]
    OverBudget { reason: String, retry_after_ms: u64 },
    #[error("cancelled")]
    Cancelled,
    /// A message was submitted and nobody can tell whether it arrived (`SEND_UNCERTAIN`,
    /// never retried: a retry could message the person twice).
    #[error(
        "the message to {recipient:?} may or may not have been delivered: {detail}; it is not sent again \
         (look at the conversation on the site, and send it yourself if it is missing)"
    )]
    SendUncertain { recipient: String, detail: String },
    /// The DevTools connection or the browser itself failed (`INTERNAL`).
    #[error("browser protocol error: {0}")]
    Cdp(String),
    #[error("{0}")]
    Io(String),
}

/// Code for a failed `assert` step.
pub const ASSERTION_FAILED: &str = "ASSERTION_FAILED";
/// Code when no browser is installed.
pub const BROWSER_NOT_FOUND: &str = "BROWSER_NOT_FOUND";

impl BrowserError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BrowserError::NotInstalled(_) => ErrorCode::Other(BROWSER_NOT_FOUND.to_owned()),
            BrowserError::Launch(_) | BrowserError::Cdp(_) | BrowserError::Io(_) => ErrorCode::Internal,
            BrowserError::Timeout { .. } => ErrorCode::NavTimeout,
            BrowserError::Network(_) => ErrorCode::Network,
            BrowserError::LoginRequired { .. } => ErrorCode::LoginRequired,
            BrowserError::RateLimited { .. } | BrowserError::OverBudget { .. } => ErrorCode::RateLimited,
            BrowserError::ContentBlocked { .. } => ErrorCode::ContentBlocked,
            BrowserError::PolicyViolation { .. } | BrowserError::NotAllowed(_) => ErrorCode::PolicyViolation,
            BrowserError::BadFlow(_) => ErrorCode::BadPayload,
            BrowserError::Assertion(_) => ErrorCode::Other(ASSERTION_FAILED.to_owned()),
            BrowserError::Cancelled => ErrorCode::Cancelled,
            BrowserError::SendUncertain { .. } => ErrorCode::SendUncertain,
        }
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            BrowserError::RateLimited { retry_after_ms, .. } => *retry_after_ms,
            BrowserError::OverBudget { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    pub fn to_job_error(&self) -> JobError {
        let mut error = JobError::new(self.code(), self.to_string());
        error.retry_after_ms = self.retry_after_ms();
        error
    }

    /// Classifies a chromiumoxide error: navigation failures are the network's, timeouts
    /// are `NAV_TIMEOUT`, the rest is the browser's.
    pub fn from_cdp(context: &str, error: chromiumoxide::error::CdpError) -> BrowserError {
        use chromiumoxide::error::CdpError;
        let text = error.to_string();
        match error {
            CdpError::Timeout => BrowserError::Timeout { what: context.to_owned(), ms: 0 },
            _ if text.contains("net::ERR_") => BrowserError::Network(format!("{context}: {text}")),
            _ => BrowserError::Cdp(format!("{context}: {text}")),
        }
    }
}

impl From<std::io::Error> for BrowserError {
    fn from(e: std::io::Error) -> Self {
        BrowserError::Io(e.to_string())
    }
}
