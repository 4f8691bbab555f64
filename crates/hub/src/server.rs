//! Owns the hub's lifecycle: open the store, recover state left by the last run, bind,
//! serve, run the dispatcher, sweeper and event forwarder, and shut down in order
//! (sessions, then the background tasks, then the database). It must never release jobs
//! leased by another process sharing the database: only an exclusive (SQLite) store gets
//! its unacknowledged leases released at startup.

use crate::api::{self, App};
use crate::crypto::{self, now_ms};
use crate::dispatch::{self, Dispatcher};
use crate::error::HubError;
use crate::events::Events;
use crate::jwt::{JwtKeys, MAX_TOKEN_TTL};
use crate::queue::{millis, JobTypes, QueueConfig};
use crate::secret::Secret;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::sweeper::Sweeper;
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Settings key of the generated JWT signing secret.
const JWT_SECRET_SETTING: &str = "jwt_secret";

/// A secret shorter than this is too easy to brute-force offline from one captured JWT.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// How long shutdown waits for sessions to say goodbye.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub listen: SocketAddr,
    /// `sqlite://…` or `postgres://…` (the schema via `?options[search_path]=…`).
    pub database_url: String,
    pub hb_interval: Duration,
    pub jwt_ttl: Duration,
    /// Overrides the secret kept in the database (`EDGE_HUB_JWT_SECRET`).
    pub jwt_secret: Option<Secret>,
    pub queue: QueueConfig,
    /// Accepted job types; `http_request` is always among them.
    pub job_types: JobTypes,
    /// `POST /v1/jobs?sync=true` waits this long unless `timeoutMs` says less.
    pub sync_timeout: Duration,
    /// Bundle repository and run reports; `None`: `bundles/` beside the SQLite file.
    pub bundle_dir: Option<std::path::PathBuf>,
    /// Where those live (`--storage`): `None` for `bundle_dir` on the local disk, or
    /// `s3://bucket/prefix` (credentials from the `AWS_*` environment, see `crate::blobs`).
    pub storage: Option<String>,
    /// Run-report bytes (`POST /edge/notify`) kept per agent before new ones answer 507.
    pub run_bytes_per_agent: u64,
    /// Serve HTTPS with this certificate and key; `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Requests per source address (credential exchanges) and per API key (job API).
    pub rate_limits: api::rate_limit::RateLimits,
    /// Caps sent to every agent in `hello_ack`; an agent applies the smaller of these and
    /// its person's own, so they can only lower what a machine does.
    pub agent_limits: edge_protocol::HubLimits,
    /// The proxy port (HTTP CONNECT, forward proxy, SOCKS5) into the agents' tunnels;
    /// `None`: no proxy port.
    pub proxy_listen: Option<SocketAddr>,
    /// Hub ports carried to services agents exposed (`ADDR=AGENT/NAME`).
    pub forwards: Vec<crate::tunnel::forward::Forward>,
    /// The tunnel's raw fast path (TCP, TLS when `tls` is set); `None`: WebSocket only.
    pub tunnel_listen: Option<SocketAddr>,
    /// `host:port` agents should dial for the raw path, when it is not `tunnel_listen`
    /// (behind NAT or a load balancer).
    pub tunnel_advertise: Option<String>,
    /// Where the other instances on this database reach this one (`http://host:port`, or
    /// `https://` when it serves TLS), to open streams through the tunnels held here; `None`:
    /// the bound address, `https://` when `tls` is set.
    pub advertise_url: Option<String>,
    /// A PEM CA the instance trusts, beside the public roots, when it links to another
    /// over `https://` (a private CA that signed the instances' certificates).
    pub instance_ca: Option<PathBuf>,
    /// Device sign-in (RFC 8628): code lifetime, poll interval, the page's public address.
    pub device: api::device::DeviceSettings,
}

impl HubConfig {
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> HubConfig {
        HubConfig {
            listen,
            database_url: database_url.into(),
            hb_interval: Duration::from_secs(25),
            jwt_ttl: MAX_TOKEN_TTL,
            jwt_secret: None,
            queue: QueueConfig::default(),
            job_types: JobTypes::default(),
            sync_timeout: api::jobs::DEFAULT_SYNC_TIMEOUT,
            bundle_dir: None,
            storage: None,
            run_bytes_per_agent: crate::bundles::DEFAULT_RUN_BYTES_PER_AGENT,
            tls: None,
            rate_limits: api::rate_limit::RateLimits::default(),
            agent_limits: edge_protocol::HubLimits::default(),
            proxy_listen: None,
            forwards: Vec::new(),
            tunnel_listen: None,
            tunnel_advertise: None,
            advertise_url: None,
            instance_ca: None,
            device: api::device::DeviceSettings::default(),
        }
    }
}

/// Opens the store named by `database_url`: `sqlite:` or `postgres:`/`postgresql:`.
pub async fn open_store(database_url: &str) -> Result<Arc<dyn Store>, HubError> {
    let scheme = database_url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::connect(database_url).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::connect(database_url).await?)),
        _ => Err(HubError::Config(format!(
            "database URL must start with sqlite: (e.g. sqlite:///var/lib/edge-hub/hub.db) or postgres: \
             (e.g. postgres://user@host/db); got {scheme:?}"
        ))),
    }
}

/// A hub serving in the background of this process.
pub struct RunningHub {
    local_addr: SocketAddr,
    proxy_addr: Option<SocketAddr>,
    tunnel_addr: Option<SocketAddr>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    server: JoinHandle<std::io::Result<()>>,
    background_stop: CancellationToken,
    dispatcher: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    forwarder: JoinHandle<()>,
}

/// Opens the database, recovers from the last run, binds `config.listen` and starts serving.
pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
    if config.hb_interval.is_zero() {
        return Err(HubError::Config("the heartbeat interval must be at least 1 second".to_owned()));
    }
    if config.queue.sweep_interval.is_zero() || config.queue.poll_interval.is_zero() {
        return Err(HubError::Config("the sweep and poll intervals must be above zero".to_owned()));
    }
    // Before anything can count: counters and the dispatch latency recorded while no
    // recorder is installed go nowhere, so a lazy install at the first scrape lost them.
    crate::metrics::install();
    let store = open_store(&config.database_url).await?;
    let stale_after = config.hb_interval.saturating_mul(3);

    if store.exclusive() {
        // Nobody else uses this database and nothing is connected yet: a job leased to a
        // session of the last run but never acknowledged may never have reached its agent.
        // Acknowledged (running) jobs keep their lease: the agent may reconnect and report.
        let released = store.release_unstarted_jobs(None, now_ms()).await?;
        if released > 0 {
            info!(count = released, "jobs leased but unacknowledged before the restart are pending again");
        }
    }
    // Agents of a process that died stay "online" in the database until this (or any
    // process's sweeper) notices their silence.
    store.mark_stale_agents_offline(now_ms() - millis(stale_after)).await?;

    let secret = match config.jwt_secret.clone() {
        Some(secret) => {
            if secret.expose().len() < MIN_JWT_SECRET_BYTES {
                return Err(HubError::Config(format!(
                    "EDGE_HUB_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"
                )));
            }
            secret
        }
        None => {
            let candidate = crypto::new_jwt_secret()?;
            Secret::new(store.setting_or_init(JWT_SECRET_SETTING, candidate.expose()).await?)
        }
    };
    if config.jwt_ttl > MAX_TOKEN_TTL {
        warn!(requested_secs = config.jwt_ttl.as_secs(), "JWT TTL lowered to 900 s");
    }

    // Before binding: a bad certificate or key is a configuration error, not a half-started hub.
    let tls = config.tls.as_ref().map(crate::tls::server_config).transpose()?;
    // Bound before the app state is built: agents are told the bound address.
    let raw_tunnel = match config.tunnel_listen {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
            let bound = listener.local_addr().map_err(|source| HubError::Bind { addr, source })?;
            Some((listener, bound))
        }
        None => None,
    };
    let tunnel_addr = raw_tunnel.as_ref().map(|(_, bound)| *bound);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HubError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| HubError::Bind { addr: config.listen, source })?;

    let (dispatcher_handle, inbox) = Dispatcher::new();
    let job_writes = crate::writes::JobWrites::spawn(store.clone())?;
    let background_stop = CancellationToken::new();
    let dispatcher = tokio::spawn(dispatch::run(
        store.clone(),
        job_writes.clone(),
        inbox,
        config.queue.poll_interval,
        background_stop.clone(),
    ));
    let events = Events::new(store.clone(), dispatcher_handle.clone());
    let forwarder = {
        let events = events.clone();
        let stop = background_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = events.forward_from_store() => {}
            }
        })
    };
    let sweeper = tokio::spawn(
        Sweeper {
            store: store.clone(),
            events: events.clone(),
            queue: config.queue.clone(),
            agent_stale_after: stale_after,
        }
        .run(background_stop.clone()),
    );

    let instance = crate::tunnel::link::Instance {
        id: format!("hub_{}", crypto::new_nonce()?.chars().take(16).collect::<String>()),
        url: advertise_url(&config, local_addr)?,
    };
    info!(instance_id = %instance.id, url = %instance.url, "other instances reach this one's tunnels here");
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let app = Arc::new(App {
        store: store.clone(),
        jwt: JwtKeys::new(&secret, config.jwt_ttl),
        link: crate::tunnel::link::LinkKeys::new(&secret),
        link_tls: tokio_rustls::TlsConnector::from(crate::tls::link_client_config(config.instance_ca.as_deref())?),
        gone_instances: Default::default(),
        instance,
        dispatcher: dispatcher_handle,
        events,
        job_writes,
        known_keys: api::known_keys::KnownKeys::new(api::known_keys::KEY_RECHECK),
        hb_interval: config.hb_interval,
        agent_limits: config.agent_limits.clone(),
        tunnels: Default::default(),
        tunnel_endpoints: edge_tunnel::Endpoints {
            raw: config.tunnel_advertise.clone().or_else(|| tunnel_addr.map(|a| a.to_string())),
            raw_tls: config.tls.is_some(),
        },
        queue: config.queue.clone(),
        job_types: config.job_types.clone(),
        sync_timeout: config.sync_timeout,
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
        limiters: api::rate_limit::Limiters::new(config.rate_limits),
        device: api::device::DeviceSettings { tls: config.tls.is_some(), ..config.device.clone() },
    });
    let bundle_dir =
        config.bundle_dir.clone().unwrap_or_else(|| crate::bundles::default_bundle_dir(&config.database_url));
    let storage = crate::blobs::StorageConfig::parse(config.storage.as_deref(), bundle_dir.clone())
        .map_err(|e| HubError::Config(e.to_string()))?;
    let blobs = crate::blobs::Blobs::open(&storage).map_err(|e| HubError::Config(e.to_string()))?;
    if let crate::blobs::StorageConfig::Local(dir) = &storage {
        crate::private_files::secure_bundle_dir(dir);
    }
    // One read at start: wrong credentials or an unreachable store stop the hub here, with
    // the store's name and what to check, rather than on an agent's first download.
    blobs.head("repo/metadata/root.json").await.map_err(|e| HubError::Config(e.to_string()))?;
    info!(storage = blobs.location(), "bundle, release and run-report storage");
    let bundle_service =
        crate::bundles::BundleService::open(blobs).with_run_bytes_per_agent(config.run_bytes_per_agent);
    // Ends with the other background tasks; a purge cut short just runs again next start.
    tokio::spawn(crate::bundles::purge_runs_periodically(
        bundle_service.clone(),
        config.queue.retention,
        background_stop.clone(),
    ));
    // Timestamp, snapshot and targets roles signed by the online keys, renewed before they
    // lapse even when no agent asks (a tenant may publish nothing for a year).
    tokio::spawn(crate::bundles::refresh_metadata_periodically(
        bundle_service.clone(),
        crate::bundles::METADATA_REFRESH_INTERVAL,
        background_stop.clone(),
    ));
    let proxy_addr = match config.proxy_listen {
        Some(addr) => {
            let proxy = tokio::net::TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
            let bound = proxy.local_addr().map_err(|source| HubError::Bind { addr, source })?;
            info!(%bound, "proxy port (CONNECT, forward, SOCKS5) into agent tunnels");
            tokio::spawn(crate::tunnel::proxy::serve(proxy, app.clone(), background_stop.clone()));
            Some(bound)
        }
        None => None,
    };
    if let Some((raw, addr)) = raw_tunnel {
        info!(%addr, tls = tls.is_some(), "raw tunnel transport");
        tokio::spawn(crate::tunnel::serve_raw(raw, tls.clone(), app.clone(), background_stop.clone()));
    }
    for forward in &config.forwards {
        let addr = forward.listen;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| HubError::Bind { addr, source })?;
        info!(%addr, agent_id = %forward.agent_id, service = %forward.service, "forwarding to an exposed service");
        tokio::spawn(crate::tunnel::forward::serve(listener, forward.clone(), app.clone(), background_stop.clone()));
    }
    let router = api::router(app.clone())
        .merge(crate::tunnel::router(app.clone()))
        .merge(crate::releases::router(app.clone(), bundle_service.clone()))
        .merge(crate::bundles::router(app, bundle_service));
    let graceful = shutdown.clone().cancelled_owned();
    let server = match tls {
        Some(tls) => {
            // The tap does nothing; it gives the TLS listener axum's peer-address info.
            let listener = crate::tls::TlsListener::new(listener, tls)
                .map_err(|source| HubError::Bind { addr: config.listen, source })?
                .tap_io(|_| {});
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, service).with_graceful_shutdown(graceful).await })
        }
        None => {
            if !local_addr.ip().is_loopback() {
                warn_plain_http(local_addr);
            }
            // Frames and answers are small and each one is awaited by the peer: with Nagle's
            // algorithm on, one waits for the ACK of the one before (up to the peer's
            // delayed-ACK timer) before it is sent.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    warn!(error = %e, "cannot turn off Nagle's algorithm on an accepted connection");
                }
            });
            // The peer address keys the per-address rate limit.
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move { axum::serve(listener, service).with_graceful_shutdown(graceful).await })
        }
    };
    info!(
        addr = %local_addr,
        tls = config.tls.is_some(),
        engine = store.engine(),
        hb_interval_secs = config.hb_interval.as_secs(),
        visibility_timeout_ms = millis(config.queue.visibility_timeout),
        job_types = ?config.job_types.names().collect::<Vec<_>>(),
        "hub listening"
    );
    Ok(RunningHub {
        local_addr,
        proxy_addr,
        tunnel_addr,
        store,
        shutdown,
        sessions,
        server,
        background_stop,
        dispatcher,
        sweeper,
        forwarder,
    })
}

/// This instance's address for the others: `--advertise-url`, checked, or `http://` and the
/// bound address (with a warning when that is a wildcard no other machine can dial).
fn advertise_url(config: &HubConfig, bound: SocketAddr) -> Result<String, HubError> {
    match &config.advertise_url {
        Some(text) => {
            let url = url::Url::parse(text.trim()).map_err(|e| {
                HubError::Config(format!("--advertise-url {text:?} is not a URL ({e}): give http://<address>:<port>"))
            })?;
            let scheme_fits = match url.scheme() {
                "https" => config.tls.is_some(),
                "http" => config.tls.is_none(),
                _ => false,
            };
            if !scheme_fits || url.host_str().is_none() {
                let expected = if config.tls.is_some() { "https" } else { "http" };
                return Err(HubError::Config(format!(
                    "--advertise-url {text:?} must be {expected}://<address>:<port>: the scheme this hub                      serves (https with --tls-cert), at an address the other instances reach"
                )));
            }
            Ok(url.as_str().trim_end_matches('/').to_owned())
        }
        None => {
            if bound.ip().is_unspecified() {
                warn!(
                    %bound,
                    "the hub listens on a wildcard address: other instances on this database will dial it as                      such; set --advertise-url to the address they can reach"
                );
            }
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            Ok(format!("{scheme}://{bound}"))
        }
    }
}

/// Agents' JWTs, API keys and enrollment tokens cross this listener in clear text: say so
/// loudly, in the log and on stderr, whatever the log filter.
fn warn_plain_http(addr: SocketAddr) {
    let message = format!(
        "edge-hub serves PLAIN HTTP on {addr}, which is not a loopback address: API keys, enrollment \
         tokens and agents' session tokens cross the network readable by anyone on the path. Serve \
         TLS with --tls-cert and --tls-key, or put the hub behind a TLS proxy on loopback."
    );
    warn!(addr = %addr, "{message}");
    eprintln!("WARNING: {message}");
}

impl RunningHub {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The proxy port's bound address, when `proxy_listen` was set.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr
    }

    /// The raw tunnel transport's bound address, when `tunnel_listen` was set.
    pub fn tunnel_addr(&self) -> Option<SocketAddr> {
        self.tunnel_addr
    }

    /// The hub's store, for in-process tools and tests (creating tokens and keys).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Resolves when the HTTP server stops on its own (an I/O failure); a hub normally runs
    /// until [`RunningHub::shutdown`].
    pub async fn stopped(&mut self) -> Result<(), HubError> {
        match (&mut self.server).await {
            Ok(result) => result.map_err(HubError::Serve),
            Err(join) => Err(HubError::Serve(std::io::Error::other(join))),
        }
    }

    /// Closes every session (1001), stops accepting, lets the dispatcher release the
    /// sessions' jobs, and closes the database.
    pub async fn shutdown(self) -> Result<(), HubError> {
        self.shutdown.cancel();
        let served = match self.server.await {
            Ok(result) => result.map_err(HubError::Serve),
            Err(join) => Err(HubError::Serve(std::io::Error::other(join))),
        };
        self.sessions.close();
        if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, self.sessions.wait()).await.is_err() {
            warn!("some agent sessions did not close in time");
        }
        self.background_stop.cancel();
        let _ = self.dispatcher.await;
        let _ = self.sweeper.await;
        let _ = self.forwarder.await;
        self.store.close().await;
        info!("hub stopped");
        served
    }

    /// Stops this hub as if its process died: background tasks end first, so the sessions'
    /// jobs are not released and keep their leases until the visibility timeout; then the
    /// connections drop. For multi-process tests run in one process.
    pub async fn crash(self) {
        self.background_stop.cancel();
        let _ = self.dispatcher.await;
        let _ = self.sweeper.await;
        let _ = self.forwarder.await;
        self.shutdown.cancel();
        let _ = self.server.await;
        self.sessions.close();
        let _ = tokio::time::timeout(SESSION_DRAIN_TIMEOUT, self.sessions.wait()).await;
        self.store.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tls: bool, advertise: Option<&str>) -> HubConfig {
        let mut config = HubConfig::new("127.0.0.1:0".parse().expect("literal"), "sqlite::memory:");
        config.advertise_url = advertise.map(str::to_owned);
        if tls {
            config.tls = Some(crate::tls::TlsFiles { cert: "c.pem".into(), key: "k.pem".into() });
        }
        config
    }

    #[test]
    fn the_advertised_scheme_is_the_one_this_hub_serves() {
        let bound: SocketAddr = "10.1.2.3:8443".parse().expect("literal");
        assert_eq!(advertise_url(&config(false, None), bound).unwrap(), "http://10.1.2.3:8443");
        assert_eq!(advertise_url(&config(true, None), bound).unwrap(), "https://10.1.2.3:8443");
        assert_eq!(
            advertise_url(&config(true, Some("https://hub-b.internal:8443/")), bound).unwrap(),
            "https://hub-b.internal:8443"
        );
        for (tls, url) in
            [(true, "http://hub-b:80"), (false, "https://hub-b:443"), (false, "ftp://hub-b"), (false, "hub-b:80")]
        {
            let error = advertise_url(&config(tls, Some(url)), bound).unwrap_err().to_string();
            assert!(error.contains("--advertise-url"), "{url}: {error}");
        }
    }
}
