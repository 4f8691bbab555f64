//! The egress gate: every connection the hub causes this machine to open passes here —
//! `http_request` hops (through [`EgressGate::admit_url`] and [`EgressGate::pinned_client`])
//! and the browser (through the local proxy in [`proxy`]), and the tunnel later.
//!
//! It owns the egress policy (refused ranges, ports, schemes, the person's allowances, a
//! job's narrowing), name resolution for those connections, the pinning of each connection
//! to exactly the addresses it checked, and the byte meter with the person's daily cap. It
//! must never widen the policy on the hub's word (a job's list only narrows), never resolve
//! a name twice for one connection (the second answer is the one DNS rebinding controls),
//! and never log a URL's path or query: a refusal's log line names the address, the port
//! and the rule only. Bundle processes open their own sockets and are outside this gate.

pub mod meter;
pub mod policy;
pub mod proxy;

pub use meter::{Capability, Meter, MeterDay};
pub use policy::{Allowance, Denied, Policy};

use crate::error::AgentError;
use edge_protocol::{ErrorCode, JobError};
use futures_util::future::BoxFuture;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// Why the gate refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Denied(Denied),
    /// The person's daily cap is reached.
    Cap {
        used: u64,
        cap: u64,
    },
    /// The name did not resolve (a network failure, not a policy one).
    Unresolved {
        host: String,
        reason: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Denied(denied) => denied.fmt(f),
            Refusal::Cap { used, cap } => write!(
                f,
                "today's egress cap is reached ({used} of {cap} bytes); no new connection until the next UTC day \
                 or until the person at this agent raises caps.bytesPerDay"
            ),
            Refusal::Unresolved { host, reason } => write!(f, "cannot resolve {host}: {reason}"),
        }
    }
}

impl Refusal {
    /// The job error a runner reports.
    pub fn to_job_error(&self) -> JobError {
        let code = match self {
            Refusal::Denied(_) => ErrorCode::EgressDenied,
            Refusal::Cap { .. } => ErrorCode::EgressCap,
            Refusal::Unresolved { .. } => ErrorCode::Network,
        };
        JobError::new(code, self.to_string())
    }
}

/// Name resolution for the gate. One call per connection; what it answers is what is
/// judged and what is connected to.
pub trait Lookup: Send + Sync {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo` through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

struct Inner {
    policy: Policy,
    lookup: Arc<dyn Lookup>,
    meter: Meter,
    /// Pinned clients by host and admitted addresses, so that jobs to the same site reuse
    /// its pooled connections. A client is only ever used for the exact host and address set
    /// it was built for, so reuse cannot reach anything that was not just admitted. A short
    /// list scanned without allocating: this lookup is on every request's path.
    clients: std::sync::Mutex<Vec<PinnedClient>>,
    /// How many browser connections were refused, and the last refusal: the proxy cannot
    /// tell which job's page asked, so a failed browser job compares this before and after
    /// to say the refusal was why (see [`EgressGate::browser_refusals`]).
    browser_refusals: std::sync::Mutex<(u64, Option<Refusal>)>,
}

struct PinnedClient {
    host: String,
    addresses: Vec<SocketAddr>,
    client: reqwest::Client,
}

impl PinnedClient {
    /// Built for exactly this host and this set of addresses (in any order).
    fn serves(&self, host: &str, addresses: &[SocketAddr]) -> bool {
        self.host == host
            && self.addresses.len() == addresses.len()
            && addresses.iter().all(|a| self.addresses.contains(a))
            && self.addresses.iter().all(|a| addresses.contains(a))
    }
}

/// Pinned clients kept at most; past that the cache starts over.
const MAX_PINNED_CLIENTS: usize = 64;

/// The gate of one agent; cheap to clone, every clone judges with the same policy and
/// counts into the same meter.
#[derive(Clone)]
pub struct EgressGate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EgressGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressGate").field("policy", &self.inner.policy).finish_non_exhaustive()
    }
}

impl EgressGate {
    /// A gate with the person's policy, its meter persisted under `data_dir` (in memory
    /// without one) and their daily cap.
    pub fn new(policy: Policy, data_dir: Option<&Path>, bytes_per_day: Option<u64>) -> EgressGate {
        EgressGate::with_lookup(policy, data_dir, bytes_per_day, Arc::new(SystemLookup))
    }

    pub fn with_lookup(
        policy: Policy,
        data_dir: Option<&Path>,
        bytes_per_day: Option<u64>,
        lookup: Arc<dyn Lookup>,
    ) -> EgressGate {
        EgressGate {
            inner: Arc::new(Inner {
                policy,
                lookup,
                meter: Meter::new(data_dir, bytes_per_day),
                clients: Default::default(),
                browser_refusals: Default::default(),
            }),
        }
    }

    /// The person's gate from their settings and their `--allow-egress` arguments.
    pub fn from_settings(
        settings: &crate::local_settings::LocalSettings,
        extra_allowances: &[String],
        data_dir: &Path,
    ) -> Result<EgressGate, AgentError> {
        // Each error says where the entry came from, so the person knows what to fix.
        let from = |texts: &[String], source: &str| -> Result<Vec<Allowance>, AgentError> {
            texts
                .iter()
                .map(|text| Allowance::parse(text).map_err(|e| AgentError::InvalidSetting(format!("{e} ({source})"))))
                .collect()
        };
        let mut allowances = from(&settings.allow_egress, "allowEgress in settings.json")?;
        allowances.extend(from(extra_allowances, "--allow-egress")?);
        Ok(EgressGate::new(Policy::new(allowances), Some(data_dir), settings.caps.bytes_per_day))
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    pub fn record(&self, capability: Capability, bytes_in: u64, bytes_out: u64) {
        self.inner.meter.record(capability, bytes_in, bytes_out);
    }

    /// Judges one new connection to `host:port`: the cap, then one resolution, then every
    /// resolved address (all must pass: an answer mixing a public and a LAN address is
    /// refused, not filtered, so a hostile name cannot steer which one is used). The
    /// addresses returned are the only ones the connection may use.
    pub async fn admit(
        &self,
        host: &url::Host<&str>,
        port: u16,
        narrowing: Option<&[Allowance]>,
        capability: Capability,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let refused = |refusal: Refusal| {
            if let Refusal::Denied(denied) = &refusal {
                tracing::warn!(
                    destination = %denied.destination, rule = %denied.rule, capability = capability.as_str(),
                    "egress refused"
                );
            }
            if capability == Capability::Browser {
                let mut seen = self.inner.browser_refusals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                *seen = (seen.0 + 1, Some(refusal.clone()));
            }
            refusal
        };
        if let Err((used, cap)) = self.inner.meter.admit() {
            tracing::warn!(used, cap, capability = capability.as_str(), "egress refused: daily cap reached");
            return Err(refused(Refusal::Cap { used, cap }));
        }
        let addresses = match host {
            url::Host::Ipv4(v4) => vec![SocketAddr::new(IpAddr::V4(*v4), port)],
            url::Host::Ipv6(v6) => vec![SocketAddr::new(IpAddr::V6(*v6), port)],
            url::Host::Domain(name) => {
                // A name that is itself an address in some spelling (`2130706433`) was
                // normalised by the URL parser already; this catches other callers.
                if let Ok(url::Host::Ipv4(v4)) = url::Host::parse(name) {
                    vec![SocketAddr::new(IpAddr::V4(v4), port)]
                } else {
                    let found = self
                        .inner
                        .lookup
                        .lookup(name, port)
                        .await
                        .map_err(|e| Refusal::Unresolved { host: (*name).to_owned(), reason: e.to_string() })?;
                    if found.is_empty() {
                        return Err(Refusal::Unresolved { host: (*name).to_owned(), reason: "no address".to_owned() });
                    }
                    found.into_iter().map(|a| SocketAddr::new(a.ip(), port)).collect()
                }
            }
        };
        for address in &addresses {
            self.inner.policy.judge(*address, narrowing).map_err(|d| refused(Refusal::Denied(d)))?;
        }
        Ok(addresses)
    }

    /// Browser connections refused so far, and the last refusal.
    pub fn browser_refusals(&self) -> (u64, Option<Refusal>) {
        self.inner.browser_refusals.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// [`EgressGate::admit`] for a URL, with its scheme judged first.
    pub async fn admit_url(
        &self,
        url: &url::Url,
        narrowing: Option<&[Allowance]>,
        websockets: bool,
        capability: Capability,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        policy::judge_scheme(url.scheme(), websockets).map_err(Refusal::Denied)?;
        let host = url.host().ok_or_else(|| {
            Refusal::Denied(Denied { destination: url.scheme().to_owned() + ":", rule: "a URL without a host".into() })
        })?;
        let port = url.port_or_known_default().unwrap_or(0);
        self.admit(&host, port, narrowing, capability).await
    }

    /// An HTTP client that connects to `url`'s host only at `addresses` (what
    /// [`EgressGate::admit_url`] returned for it): no lookup of its own, no proxy from the
    /// environment, no redirects (the caller judges each hop).
    pub fn pinned_client(&self, url: &url::Url, addresses: &[SocketAddr]) -> Result<reqwest::Client, AgentError> {
        let host = url.host_str().unwrap_or_default();
        let mut clients = self.inner.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pinned) = clients.iter().find(|pinned| pinned.serves(host, addresses)) {
            return Ok(pinned.client.clone());
        }
        let mut builder = crate::tls::http_client_builder()?
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::agent_version());
        if let Some(url::Host::Domain(name)) = url.host() {
            builder = builder.resolve_to_addrs(name, addresses);
        }
        let client = builder.build().map_err(|e| AgentError::Internal(format!("HTTP client setup failed: {e}")))?;
        if clients.len() >= MAX_PINNED_CLIENTS {
            clients.clear();
        }
        clients.push(PinnedClient { host: host.to_owned(), addresses: addresses.to_vec(), client: client.clone() });
        Ok(client)
    }
}

/// A job's own narrowing: the payload's optional `egress` list (`edge_protocol::jobs::EGRESS_FIELD`).
pub fn narrowing_of(payload: &serde_json::Value) -> Result<Option<Vec<Allowance>>, String> {
    let Some(list) = payload.get(edge_protocol::jobs::EGRESS_FIELD) else { return Ok(None) };
    let items = list.as_array().ok_or("egress must be a list of ADDRESS[/PREFIX][:PORT] strings")?;
    items
        .iter()
        .map(|item| {
            item.as_str().ok_or_else(|| format!("egress entry {item} is not a string")).and_then(Allowance::parse)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A resolver that answers a public address first and loopback after: a rebinding name.
    struct Rebinding {
        calls: AtomicUsize,
    }

    impl Lookup for Rebinding {
        fn lookup<'a>(&'a self, _host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let ip: IpAddr = if n == 0 { "93.184.215.14".parse().unwrap() } else { "127.0.0.1".parse().unwrap() };
            Box::pin(async move { Ok(vec![SocketAddr::new(ip, port)]) })
        }
    }

    struct Fixed(Vec<&'static str>);

    impl Lookup for Fixed {
        fn lookup<'a>(&'a self, _host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
            let found = self.0.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), port)).collect();
            Box::pin(async move { Ok(found) })
        }
    }

    #[tokio::test]
    async fn one_lookup_per_connection_and_its_answer_is_what_is_used() {
        let lookup = Arc::new(Rebinding { calls: AtomicUsize::new(0) });
        let gate = EgressGate::with_lookup(Policy::default(), None, None, lookup.clone());
        let url = url::Url::parse("http://rebind.test/").unwrap();
        let first = gate.admit_url(&url, None, false, Capability::HttpRequest).await.unwrap();
        assert_eq!(first, vec!["93.184.215.14:80".parse().unwrap()]);
        assert_eq!(lookup.calls.load(Ordering::SeqCst), 1, "judging resolved once");
        let second = gate.admit_url(&url, None, false, Capability::HttpRequest).await.unwrap_err();
        assert!(second.to_string().contains("127.0.0.1:80") && second.to_string().contains("loopback"), "{second}");
        assert_eq!(second.to_job_error().code, ErrorCode::EgressDenied);
    }

    #[tokio::test]
    async fn an_answer_with_any_refused_address_is_refused_whole() {
        let gate = EgressGate::with_lookup(Policy::default(), None, None, Arc::new(Fixed(vec!["1.1.1.1", "10.0.0.7"])));
        let url = url::Url::parse("https://mixed.test/x").unwrap();
        let refusal = gate.admit_url(&url, None, false, Capability::HttpRequest).await.unwrap_err();
        assert!(refusal.to_string().contains("10.0.0.7:443"), "{refusal}");
    }

    #[tokio::test]
    async fn url_spellings_reach_the_judge_normalised() {
        let gate = EgressGate::with_lookup(Policy::default(), None, None, Arc::new(Fixed(vec![])));
        for spelling in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::1]/",
            "http://localhost./",
        ] {
            let url = url::Url::parse(spelling).unwrap();
            let refusal = gate.admit_url(&url, None, false, Capability::HttpRequest).await.unwrap_err();
            // `localhost.` goes to the (empty) resolver: unresolved, never connected.
            assert!(matches!(refusal, Refusal::Denied(_)) || spelling.contains("localhost"), "{spelling}: {refusal}");
        }
    }

    #[tokio::test]
    async fn the_cap_refuses_new_connections_with_egress_cap() {
        let gate = EgressGate::with_lookup(Policy::default(), None, Some(100), Arc::new(Fixed(vec!["1.1.1.1"])));
        let url = url::Url::parse("https://public.test/").unwrap();
        gate.admit_url(&url, None, false, Capability::HttpRequest).await.unwrap();
        gate.record(Capability::HttpRequest, 90, 10);
        let refusal = gate.admit_url(&url, None, false, Capability::Browser).await.unwrap_err();
        assert_eq!(refusal.to_job_error().code, ErrorCode::EgressCap, "{refusal}");
    }

    #[test]
    fn the_persons_allowances_come_from_settings_and_arguments_and_errors_say_which() {
        use crate::local_settings::LocalSettings;
        let dir = tempfile::tempdir().unwrap();
        let settings = LocalSettings { allow_egress: vec!["127.0.0.1:8080".into()], ..Default::default() };
        let gate = EgressGate::from_settings(&settings, &["10.0.0.0/8".into()], dir.path()).unwrap();
        assert_eq!(gate.policy().allowances().len(), 2);
        let bad = LocalSettings { allow_egress: vec!["localhost:9".into()], ..Default::default() };
        let error = EgressGate::from_settings(&bad, &[], dir.path()).unwrap_err().to_string();
        assert!(error.contains("allowEgress in settings.json") && error.contains("127.0.0.1"), "{error}");
        let error = EgressGate::from_settings(&settings, &["example.com".into()], dir.path()).unwrap_err().to_string();
        assert!(error.contains("(--allow-egress)"), "{error}");
    }

    #[test]
    fn a_jobs_egress_list_is_read_from_its_payload() {
        assert_eq!(narrowing_of(&serde_json::json!({"url": "x"})).unwrap(), None);
        let list = narrowing_of(&serde_json::json!({"egress": ["203.0.113.7:443", "198.51.100.0/24"]})).unwrap();
        assert_eq!(list.unwrap().len(), 2);
        assert!(narrowing_of(&serde_json::json!({"egress": "1.1.1.1"})).is_err());
        assert!(narrowing_of(&serde_json::json!({"egress": ["example.com"]})).unwrap_err().contains("is a name"));
    }
}
