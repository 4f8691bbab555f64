//! Owns the hub's lifecycle: open the store, recover state left by the last run, bind,
//! serve, and shut down in order (sessions, then the dispatcher, then the database). It
//! must never leave a job `assigned` to a session that no longer exists.

use crate::api::{self, App};
use crate::crypto::{self, now_ms};
use crate::dispatch::{self, Dispatcher};
use crate::error::HubError;
use crate::jwt::{JwtKeys, MAX_TOKEN_TTL};
use crate::secret::Secret;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use std::net::SocketAddr;
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
    pub database_url: String,
    pub hb_interval: Duration,
    pub jwt_ttl: Duration,
    /// Overrides the secret kept in the database (`EDGE_HUB_JWT_SECRET`).
    pub jwt_secret: Option<Secret>,
}

impl HubConfig {
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> HubConfig {
        HubConfig {
            listen,
            database_url: database_url.into(),
            hb_interval: Duration::from_secs(25),
            jwt_ttl: MAX_TOKEN_TTL,
            jwt_secret: None,
        }
    }
}

/// Opens the store named by `database_url`. Only `sqlite:` URLs are supported so far.
pub async fn open_store(database_url: &str) -> Result<Arc<dyn Store>, HubError> {
    if !database_url.starts_with("sqlite:") {
        return Err(HubError::Config(format!(
            "database URL must start with sqlite: (e.g. sqlite:///var/lib/edge-hub/hub.db); got {:?}",
            database_url.split(':').next().unwrap_or_default()
        )));
    }
    Ok(Arc::new(SqliteStore::connect(database_url).await?))
}

/// A hub serving in the background of this process.
pub struct RunningHub {
    local_addr: SocketAddr,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    server: JoinHandle<std::io::Result<()>>,
    dispatcher_stop: CancellationToken,
    dispatcher: JoinHandle<()>,
}

/// Opens the database, recovers from the last run, binds `config.listen` and starts serving.
pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
    if config.hb_interval.is_zero() {
        return Err(HubError::Config("the heartbeat interval must be at least 1 second".to_owned()));
    }
    let store = open_store(&config.database_url).await?;

    // Nothing is connected yet: a job handed to a session of the last run but never acked
    // may never have reached its agent, so it goes back in the queue.
    let released = store.release_unacked_jobs(None, now_ms()).await?;
    store.mark_all_agents_offline().await?;
    if released > 0 {
        info!(count = released, "jobs assigned but unacked before the restart are pending again");
    }

    let secret = match config.jwt_secret {
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

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HubError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| HubError::Bind { addr: config.listen, source })?;

    let (dispatcher_handle, inbox) = Dispatcher::new();
    let dispatcher_stop = CancellationToken::new();
    let dispatcher = tokio::spawn(dispatch::run(store.clone(), inbox, dispatcher_stop.clone()));

    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    let app = Arc::new(App {
        store: store.clone(),
        jwt: JwtKeys::new(&secret, config.jwt_ttl),
        dispatcher: dispatcher_handle,
        hb_interval: config.hb_interval,
        shutdown: shutdown.clone(),
        sessions: sessions.clone(),
    });
    let router = api::router(app);
    let graceful = shutdown.clone().cancelled_owned();
    let server = tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(graceful).await });
    info!(addr = %local_addr, hb_interval_secs = config.hb_interval.as_secs(), "hub listening");
    Ok(RunningHub { local_addr, store, shutdown, sessions, server, dispatcher_stop, dispatcher })
}

impl RunningHub {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        self.dispatcher_stop.cancel();
        let _ = self.dispatcher.await;
        self.store.close().await;
        info!("hub stopped");
        served
    }
}
