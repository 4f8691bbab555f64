//! Capabilities the person consents to: what a hub may make this computer do, each with
//! the text the person is shown and that text's version, and the person's grants of them.
//!
//! It owns the list of capabilities (`http_request`, `bundle`, `browser:SITE`), which job
//! types each covers, the consent texts, and the grant/revoke/show API the CLI uses now and
//! the tray's consent screen later. Grants live in the person's settings file
//! ([`LocalSettings::grants`], `0600`), recording the text shown, its version and when.
//! A fresh install has none. It must never grant anything by itself, never let the hub
//! change a grant (only the person's own tools call [`Consent::grant`]), and never treat a
//! grant of an older text as a grant of the current one.

use crate::error::AgentError;
use crate::local_settings::{Grant, LocalSettings};
use edge_protocol::{capability, jobs, ErrorCode, JobError};
use std::fmt;
use std::path::{Path, PathBuf};

/// Version of the consent texts below. Raise it when a text changes in meaning: grants of
/// an older version then no longer count until the person reads the new text and grants
/// again.
pub const TEXT_VERSION: u32 = 1;

/// Something the person can allow a hub to make this computer do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// `http_request` jobs: fetching web addresses from this computer's connection.
    HttpRequest,
    /// `bundle` jobs: running programs from the tenant's signed bundles.
    Bundle,
    /// Browser flows (`send_dm`, `broadcast_dm`, `schedule_post`, `scrape_subs`) on one
    /// site, named as its adapter is. Per site on purpose: being logged in as the person
    /// on one site is no consent to act as them on another. There is no wildcard.
    Browser { site: String },
    /// The tunnel: the hub routes other programs' connections out through this computer,
    /// and reaches the local services the person exposed by name.
    Tunnel,
}

impl Capability {
    /// `http_request`, `bundle` or `browser:SITE`.
    pub fn parse(name: &str) -> Result<Capability, AgentError> {
        match name {
            jobs::HTTP_REQUEST => Ok(Capability::HttpRequest),
            jobs::BUNDLE => Ok(Capability::Bundle),
            TUNNEL => Ok(Capability::Tunnel),
            _ => match name.strip_prefix(capability::BROWSER_SITE_PREFIX) {
                Some(site) if valid_site(site) => Ok(Capability::Browser { site: site.to_owned() }),
                Some(site) => Err(AgentError::InvalidSetting(format!(
                    "{site:?} is not a site name: use the name of the site's adapter (letters, digits, \
                     '-', '_', '.'), for example browser:instagram; there is no browser:* on purpose"
                ))),
                None => Err(AgentError::InvalidSetting(format!(
                    "{name:?} is not a capability; the capabilities are {}",
                    CATALOGUE.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
                ))),
            },
        }
    }

    /// The name the grant is stored and announced under.
    pub fn name(&self) -> String {
        match self {
            Capability::HttpRequest => jobs::HTTP_REQUEST.to_owned(),
            Capability::Bundle => jobs::BUNDLE.to_owned(),
            Capability::Browser { site } => format!("{}{site}", capability::BROWSER_SITE_PREFIX),
            Capability::Tunnel => TUNNEL.to_owned(),
        }
    }

    /// What it is, in a few words (errors, lists).
    pub fn title(&self) -> String {
        match self {
            Capability::HttpRequest => "proxying HTTP requests".to_owned(),
            Capability::Bundle => "running signed bundles".to_owned(),
            Capability::Browser { site } => format!("browser flows on the site {site}"),
            Capability::Tunnel => "the tunnel (your connection as a proxy exit)".to_owned(),
        }
    }

    /// The consent text the person reads before granting; stored with the grant.
    pub fn text(&self) -> String {
        match self {
            Capability::HttpRequest => "Proxying HTTP requests: your hub may ask this computer to fetch web \
                addresses and send back what it receives. The requests leave through your internet connection, \
                under your IP address, so the sites see them as coming from you. Addresses on this computer \
                and your local network are refused unless you allow them yourself (--allow-egress)."
                .to_owned(),
            Capability::Bundle => "Running signed bundles: your hub may ask this computer to download programs \
                signed for your hub's tenant and run them as your user, with your user's files. Bundle \
                programs run with your own network access: they are NOT confined by the agent's egress gate \
                and can reach anything you can, your local network included. Grant this only if you trust \
                whoever signs your hub's bundles."
                .to_owned(),
            Capability::Browser { site } => format!(
                "Browser flows on {site}: your hub may drive a browser on this computer, logged in as you on \
                 {site} (the site adapter named {site:?}), to send messages, schedule posts and read your \
                 subscribers there, in your name. Navigation stays on the adapter's own addresses; your local \
                 caps (jobs and messages per hour) apply."
            ),
            Capability::Tunnel => "The tunnel: your hub may route other programs' connections out through \
                this computer, as a proxy, so the sites they reach see your internet connection and IP address. \
                Addresses on this computer and your local network are refused unless you allow them yourself \
                (--allow-egress); local services are reachable only under the names you expose (edge-agent \
                expose). Your daily byte cap and per-stream rate cap apply; pausing closes every stream."
                .to_owned(),
        }
    }

    /// The job types this capability lets a hub assign.
    pub fn job_types(&self) -> &'static [&'static str] {
        match self {
            Capability::HttpRequest => &[jobs::HTTP_REQUEST],
            Capability::Bundle => &[jobs::BUNDLE],
            Capability::Browser { .. } => &jobs::BROWSER_JOB_TYPES,
            // Not a job: the tunnel's streams are asked for over its own connection.
            Capability::Tunnel => &[],
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The tunnel capability's name.
pub const TUNNEL: &str = "tunnel";

/// Every capability there is, as `consent show` lists them.
pub const CATALOGUE: &[(&str, &str)] = &[
    ("http_request", "proxying HTTP requests"),
    ("tunnel", "the tunnel: other programs' connections out through this computer"),
    ("browser:SITE", "browser flows on one site (for example browser:instagram)"),
    ("bundle", "running signed bundles (not confined by the egress gate)"),
];

/// Adapter names, as `edge_browser` accepts them.
fn valid_site(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 64
        && site.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Where a capability stands for this person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    NotGranted,
    Granted(Grant),
    /// Granted when its text was another version: it does not count until granted again.
    Outdated(Grant),
}

/// The person's grants, read from their settings file each time a question is asked, so a
/// revoke takes effect at the next job without restarting the agent.
#[derive(Debug, Clone)]
pub struct Consent {
    data_dir: PathBuf,
}

impl Consent {
    pub fn new(data_dir: &Path) -> Consent {
        Consent { data_dir: data_dir.to_path_buf() }
    }

    /// Records that the person was shown `capability`'s text and granted it.
    pub fn grant(&self, capability: &Capability) -> Result<Grant, AgentError> {
        let mut settings = LocalSettings::load(&self.data_dir)?;
        let grant = Grant { granted_at: crate::now_rfc3339(), text_version: TEXT_VERSION, text: capability.text() };
        settings.grants.insert(capability.name(), grant.clone());
        settings.save(&self.data_dir)?;
        Ok(grant)
    }

    /// Withdraws a grant; whether there was one.
    pub fn revoke(&self, capability: &Capability) -> Result<bool, AgentError> {
        let mut settings = LocalSettings::load(&self.data_dir)?;
        let had = settings.grants.remove(&capability.name()).is_some();
        if had {
            settings.save(&self.data_dir)?;
        }
        Ok(had)
    }

    pub fn standing(&self, capability: &Capability) -> Result<Standing, AgentError> {
        Ok(standing(&LocalSettings::load(&self.data_dir)?, capability))
    }

    /// Whether the person granted `capability` (its current text); an unreadable settings
    /// file grants nothing.
    pub fn is_granted(&self, capability: &Capability) -> bool {
        LocalSettings::load(&self.data_dir).is_ok_and(|settings| is_granted_in(&settings, capability))
    }

    /// Every grant in the file by name, valid or not, with its standing.
    pub fn grants(&self) -> Result<Vec<(String, Standing)>, AgentError> {
        let settings = LocalSettings::load(&self.data_dir)?;
        Ok(settings
            .grants
            .keys()
            .map(|name| {
                let standing = match Capability::parse(name) {
                    Ok(capability) => standing(&settings, &capability),
                    // A name this build does not know (a newer agent's) grants nothing here.
                    Err(_) => Standing::Outdated(settings.grants[name].clone()),
                };
                (name.clone(), standing)
            })
            .collect())
    }

    /// A job of `job_type` may run: some granted capability covers it. Browser job types
    /// pass when any site is granted; [`check_site`] then decides on the job's own site.
    pub fn check_job_type(&self, job_type: &str) -> Result<(), JobError> {
        let settings = LocalSettings::load(&self.data_dir)
            .map_err(|e| JobError::new(ErrorCode::CapabilityNotGranted, e.to_string()))?;
        check_job_type(&settings, job_type)
    }

    /// What `hello` announces, out of the job types this agent has runners for: those a
    /// granted capability covers, then `browser:SITE` for each granted site (when it runs
    /// browser jobs at all), so the hub assigns nothing else.
    pub fn announced<'a>(&self, job_types: impl Iterator<Item = &'a str>) -> Vec<String> {
        let settings = LocalSettings::load(&self.data_dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the settings file is unreadable: no capability is announced");
            LocalSettings::default()
        });
        let granted = granted(&settings);
        let job_types: Vec<&str> = job_types.collect();
        let mut announced: Vec<String> = job_types
            .iter()
            .filter(|job_type| granted.iter().any(|c| c.job_types().contains(*job_type)))
            .map(|job_type| (*job_type).to_owned())
            .collect();
        if job_types.iter().any(|t| jobs::BROWSER_JOB_TYPES.contains(t)) {
            announced.extend(granted.iter().filter(|c| matches!(c, Capability::Browser { .. })).map(Capability::name));
        }
        announced
    }
}

fn standing(settings: &LocalSettings, capability: &Capability) -> Standing {
    match settings.grants.get(&capability.name()) {
        None => Standing::NotGranted,
        Some(grant) if grant.text_version == TEXT_VERSION => Standing::Granted(grant.clone()),
        Some(grant) => Standing::Outdated(grant.clone()),
    }
}

/// Whether `settings` grant `capability` (its current text), for a caller that already read
/// them.
pub fn is_granted_in(settings: &LocalSettings, capability: &Capability) -> bool {
    matches!(standing(settings, capability), Standing::Granted(_))
}

/// The capabilities currently granted (of the current text version).
pub fn granted(settings: &LocalSettings) -> Vec<Capability> {
    settings
        .grants
        .iter()
        .filter_map(|(name, grant)| Capability::parse(name).ok().filter(|_| grant.text_version == TEXT_VERSION))
        .collect()
}

fn not_granted(capability: &str, title: &str) -> JobError {
    JobError::new(
        ErrorCode::CapabilityNotGranted,
        format!(
            "the person at this agent has not granted {capability} ({title}); they can read what it allows and \
             grant it with `edge-agent consent grant {capability}`"
        ),
    )
}

/// See [`Consent::check_job_type`].
pub fn check_job_type(settings: &LocalSettings, job_type: &str) -> Result<(), JobError> {
    let granted = granted(settings);
    if granted.iter().any(|c| c.job_types().contains(&job_type)) {
        return Ok(());
    }
    Err(match job_type {
        jobs::HTTP_REQUEST => not_granted(jobs::HTTP_REQUEST, &Capability::HttpRequest.title()),
        jobs::BUNDLE => not_granted(jobs::BUNDLE, &Capability::Bundle.title()),
        t if jobs::BROWSER_JOB_TYPES.contains(&t) => not_granted("browser:SITE", "browser flows on a site"),
        other => JobError::new(
            ErrorCode::CapabilityNotGranted,
            format!("no capability the person can grant covers jobs of type {other:?}"),
        ),
    })
}

/// A browser job on the site whose adapter is named `site` may run.
pub fn check_site(settings: &LocalSettings, site: &str) -> Result<(), JobError> {
    let capability = Capability::Browser { site: site.to_owned() };
    match standing(settings, &capability) {
        Standing::Granted(_) => Ok(()),
        _ => Err(not_granted(&capability.name(), &capability.title())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_install_grants_nothing_and_announces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let consent = Consent::new(dir.path());
        for job_type in ["http_request", "bundle", "send_dm", "scrape_subs", "custom"] {
            let error = consent.check_job_type(job_type).unwrap_err();
            assert_eq!(error.code, ErrorCode::CapabilityNotGranted, "{job_type}");
        }
        assert!(consent.announced(["http_request", "bundle", "send_dm"].into_iter()).is_empty());
        assert!(consent.grants().unwrap().is_empty());
    }

    #[test]
    fn a_grant_records_the_text_its_version_and_when_and_a_revoke_withdraws_it() {
        let dir = tempfile::tempdir().unwrap();
        let consent = Consent::new(dir.path());
        let grant = consent.grant(&Capability::HttpRequest).unwrap();
        assert_eq!(grant.text_version, TEXT_VERSION);
        assert_eq!(grant.text, Capability::HttpRequest.text());
        assert!(grant.granted_at.starts_with("20") && grant.granted_at.ends_with('Z'), "{}", grant.granted_at);
        let stored = LocalSettings::load(dir.path()).unwrap();
        assert_eq!(stored.grants["http_request"], grant);
        consent.check_job_type("http_request").unwrap();
        assert_eq!(consent.check_job_type("bundle").unwrap_err().code, ErrorCode::CapabilityNotGranted);
        assert_eq!(consent.announced(["bundle", "http_request"].into_iter()), ["http_request"]);

        assert!(consent.revoke(&Capability::HttpRequest).unwrap());
        assert!(!consent.revoke(&Capability::HttpRequest).unwrap(), "nothing left to revoke");
        assert_eq!(consent.standing(&Capability::HttpRequest).unwrap(), Standing::NotGranted);
        assert_eq!(consent.check_job_type("http_request").unwrap_err().code, ErrorCode::CapabilityNotGranted);
    }

    #[test]
    fn browser_flows_are_granted_per_site() {
        let dir = tempfile::tempdir().unwrap();
        let consent = Consent::new(dir.path());
        consent.grant(&Capability::parse("browser:fanhub").unwrap()).unwrap();
        consent.check_job_type("send_dm").unwrap();
        let settings = LocalSettings::load(dir.path()).unwrap();
        check_site(&settings, "fanhub").unwrap();
        let error = check_site(&settings, "instagram").unwrap_err();
        assert_eq!(error.code, ErrorCode::CapabilityNotGranted);
        assert!(error.message.unwrap().contains("edge-agent consent grant browser:instagram"));
        assert_eq!(
            consent.announced(["http_request", "scrape_subs", "send_dm"].into_iter()),
            ["scrape_subs", "send_dm", "browser:fanhub"]
        );
        // Without a browser, nothing of it is announced.
        assert!(consent.announced(["http_request"].into_iter()).is_empty());
    }

    #[test]
    fn a_grant_of_an_older_text_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = LocalSettings::default();
        let old =
            Grant { granted_at: "2026-01-01T00:00:00Z".into(), text_version: TEXT_VERSION - 1, text: "old".into() };
        settings.grants.insert("bundle".into(), old.clone());
        settings.save(dir.path()).unwrap();
        let consent = Consent::new(dir.path());
        assert_eq!(consent.standing(&Capability::Bundle).unwrap(), Standing::Outdated(old));
        assert_eq!(consent.check_job_type("bundle").unwrap_err().code, ErrorCode::CapabilityNotGranted);
        assert!(consent.announced(["bundle"].into_iter()).is_empty());
    }

    #[test]
    fn bad_names_are_refused_with_what_to_type_instead() {
        for (name, needle) in [
            ("browser:*", "no browser:* on purpose"),
            ("browser:", "is not a site name"),
            ("browser:a/b", "is not a site name"),
            ("proxy", "the capabilities are http_request, tunnel, browser:SITE, bundle"),
        ] {
            let message = Capability::parse(name).unwrap_err().to_string();
            assert!(message.contains(needle), "{name}: {message}");
        }
        assert_eq!(Capability::parse("browser:my-site.v2").unwrap().name(), "browser:my-site.v2");
    }

    #[test]
    fn the_bundle_text_says_bundles_are_outside_the_egress_gate() {
        let text = Capability::Bundle.text();
        assert!(text.contains("NOT confined by the agent's egress gate"), "{text}");
    }
}
