//! `edge-hub`: the CLI over the hub library. It owns argument parsing, logging setup and
//! what goes to stdout (only the listening line, a freshly created credential, or a
//! command's JSON answer); it must
//! never contain hub logic of its own.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use edge_hub::{HubConfig, JobTypeSpec, JobTypes, QueueConfig, Secret};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

// The job cycle allocates and frees many small buffers on several threads (frames, rows,
// JSON); glibc's allocator spent about a sixth of the hub's CPU on that under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "edge-hub", version, about = "The Edge-Agent hub")]
struct Cli {
    /// Database URL, sqlite://… or postgres://… [default: sqlite://<data dir>/edge-hub/hub.db]
    #[arg(long, global = true, env = "EDGE_HUB_DATABASE_URL")]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(Box<ServeArgs>),
    /// Manage enrollment tokens.
    #[command(subcommand)]
    EnrollToken(EnrollTokenCommand),
    /// Manage API keys (operator keys, or creator-scoped with --creator).
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Trusted bundles: keys, root rotation, publishing (see docs/bundles.md).
    Bundle(edge_hub::bundle_cli::BundleArgs),
    /// Agent releases: publish, pause, resume, rollout, list (see docs/updates.md).
    Release(edge_hub::release_cli::ReleaseArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "EDGE_HUB_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Heartbeat interval announced to agents in hello_ack.
    #[arg(long, env = "EDGE_HUB_HB_INTERVAL_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    hb_interval_secs: u64,
    /// Lifetime of agent session tokens (at most 900).
    #[arg(long, env = "EDGE_HUB_JWT_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=900))]
    jwt_ttl_secs: u64,
    /// Bundle state directory, the same as `edge-hub bundle --bundle-dir` (repository in
    /// repo/, run reports in runs/) [default: bundles/ beside the SQLite file].
    #[arg(long, env = "EDGE_HUB_BUNDLE_DIR")]
    bundle_dir: Option<std::path::PathBuf>,
    /// Where bundles, releases and run reports live: leave out for the bundle directory on
    /// this machine, or s3://BUCKET/PREFIX for an S3-compatible store shared by several hubs
    /// (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).
    #[arg(long, env = "EDGE_HUB_STORAGE")]
    storage: Option<String>,
    /// Bytes of bundle run reports kept per agent; a report past it answers 507 until
    /// older ones age out with the job history.
    #[arg(long, env = "EDGE_HUB_RUN_BYTES_PER_AGENT", default_value_t = edge_hub::bundles::DEFAULT_RUN_BYTES_PER_AGENT,
          value_parser = clap::value_parser!(u64).range(1..))]
    run_bytes_per_agent: u64,
    /// Jobs per hour each agent may start, sent in `hello_ack`: an agent runs at most the
    /// smaller of this and its person's own cap, so this can only lower it [default: no cap
    /// of the hub's].
    #[arg(long, env = "EDGE_HUB_AGENT_JOBS_PER_HOUR", value_parser = clap::value_parser!(u32).range(1..))]
    agent_jobs_per_hour: Option<u32>,
    /// Open a proxy port into the agents' tunnels: HTTP CONNECT, plain HTTP forward proxy
    /// and SOCKS5 on one address. User name: agent-<id>, creator-<id> or label-<label>
    /// [-session-<token>]; password: an API key of this hub.
    #[arg(long, env = "EDGE_HUB_PROXY_LISTEN")]
    proxy_listen: Option<SocketAddr>,
    /// Carry a hub port to a service an agent's person exposed: ADDR=AGENT/NAME (for
    /// example 127.0.0.1:9000=agt_01/web); repeatable. Whoever reaches ADDR reaches it.
    #[arg(long = "forward-listen", value_name = "ADDR=AGENT/NAME")]
    forwards: Vec<edge_hub::tunnel::forward::Forward>,
    /// Serve the tunnel's raw fast path here (TCP, with TLS when --tls-cert is given); agents
    /// use it instead of the WebSocket when they can reach it.
    #[arg(long, env = "EDGE_HUB_TUNNEL_LISTEN")]
    tunnel_listen: Option<SocketAddr>,
    /// The host:port agents dial for the raw path [default: --tunnel-listen].
    #[arg(long, env = "EDGE_HUB_TUNNEL_ADVERTISE", requires = "tunnel_listen")]
    tunnel_advertise: Option<String>,
    /// Where the other hub instances on this database reach this one, to open streams
    /// through the agents' tunnels held here: http(s)://<address>:<port>, https when this hub
    /// serves TLS [default: the listen address].
    #[arg(long, env = "EDGE_HUB_ADVERTISE_URL", value_name = "URL")]
    advertise_url: Option<String>,
    /// A PEM CA certificate trusted, beside the public roots, for links to other instances
    /// over https:// (the CA that signed their --tls-cert).
    #[arg(long, env = "EDGE_HUB_INSTANCE_CA", value_name = "PEM")]
    instance_ca: Option<std::path::PathBuf>,
    /// The hub's address as people's browsers reach it (https://hub.example.com), for the
    /// device sign-in page's link and QR code [default: the request's Host header].
    #[arg(long, env = "EDGE_HUB_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// How long a device sign-in code lives (tests shorten it).
    #[arg(long, hide = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=3600))]
    device_code_ttl_secs: u64,
    /// Seconds a device waits between polls (tests shorten it).
    #[arg(long, hide = true, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    device_code_interval_secs: u64,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "EDGE_HUB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "EDGE_HUB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// enroll + challenge + token requests allowed per source address per minute (also
    /// the burst); past it, 429 with Retry-After.
    #[arg(long, env = "EDGE_HUB_AUTH_RATE_PER_MINUTE", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..))]
    auth_rate_per_minute: u32,
    /// Job API requests (/v1/jobs…) allowed per API key per second (also the burst).
    #[arg(long, env = "EDGE_HUB_JOBS_RATE_PER_SECOND", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    jobs_rate_per_second: u32,
    #[command(flatten)]
    queue: QueueArgs,
}

/// Queue settings of `serve` (defaults mirror SQS where it has one).
#[derive(Args)]
struct QueueArgs {
    /// Lease length before an unfinished job is handed out again; heartbeats extend it.
    #[arg(long, env = "EDGE_HUB_VISIBILITY_TIMEOUT_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=43_200))]
    visibility_timeout_secs: u64,
    /// Per job type lease length, TYPE=SECS (repeatable).
    #[arg(long = "job-visibility", value_name = "TYPE=SECS", value_parser = parse_type_secs)]
    job_visibility: Vec<(String, u64)>,
    /// Deliveries before a job is dead (dead-letter list).
    #[arg(long, env = "EDGE_HUB_MAX_RECEIVE_COUNT", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    max_receive_count: u32,
    /// First retry backoff ceiling; doubles per delivery, full jitter, at most 5 min.
    #[arg(long, env = "EDGE_HUB_RETRY_BASE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=300_000))]
    retry_base_ms: u64,
    /// Finished jobs are deleted this many days after they end.
    #[arg(long, env = "EDGE_HUB_RETENTION_DAYS", default_value_t = 14,
          value_parser = clap::value_parser!(u64).range(1..=3650))]
    retention_days: u64,
    /// A recipient messaged within this many days is not messaged again by the same creator.
    #[arg(long, env = "EDGE_HUB_DEDUPE_COOLOFF_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(0..=3650))]
    dedupe_cooloff_days: u64,
    /// Default redrive speed, jobs per second.
    #[arg(long, env = "EDGE_HUB_REDRIVE_RATE", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    redrive_rate: u32,
    /// Accept this job type with any JSON-object payload (repeatable); http_request is built in.
    #[arg(long = "job-type", value_name = "NAME")]
    job_types: Vec<String>,
    /// Accept this message-sending job type (repeatable): payload `recipients`/`recipient`
    /// are checked against the dedupe ledger.
    #[arg(long = "message-job-type", value_name = "NAME")]
    message_job_types: Vec<String>,
    /// Default wait of `POST /v1/jobs?sync=true` (at most 28).
    #[arg(long, env = "EDGE_HUB_SYNC_TIMEOUT_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=28))]
    sync_timeout_secs: u64,
    /// How often leases, silent agents, redrives and retention are swept.
    #[arg(long, env = "EDGE_HUB_SWEEP_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    sweep_interval_ms: u64,
    /// Safety-net dispatch pass (retries coming due, missed notifications).
    #[arg(long, env = "EDGE_HUB_POLL_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    poll_interval_ms: u64,
}

fn parse_type_secs(text: &str) -> Result<(String, u64), String> {
    let (name, secs) = text.split_once('=').ok_or_else(|| format!("expected TYPE=SECS, got {text:?}"))?;
    let secs: u64 = secs.trim().parse().map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    if name.trim().is_empty() || secs == 0 {
        return Err(format!("expected TYPE=SECS with SECS ≥ 1, got {text:?}"));
    }
    Ok((name.trim().to_owned(), secs))
}

impl QueueArgs {
    fn job_types(&self) -> anyhow::Result<JobTypes> {
        let mut types = JobTypes::default();
        for name in &self.job_types {
            types.register(JobTypeSpec::opaque(name.trim()));
        }
        for name in &self.message_job_types {
            types.register(JobTypeSpec::opaque(name.trim()).sending_messages());
        }
        for (name, secs) in &self.job_visibility {
            let spec = types
                .get_mut(name)
                .ok_or_else(|| anyhow::anyhow!("--job-visibility names {name:?}, which is not a job type"))?;
            spec.visibility_timeout = Some(Duration::from_secs(*secs));
        }
        Ok(types)
    }

    fn queue(&self) -> QueueConfig {
        QueueConfig {
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs),
            max_receive_count: self.max_receive_count,
            retry_base: Duration::from_millis(self.retry_base_ms),
            retention: Duration::from_secs(self.retention_days * 24 * 3600),
            dedupe_cooloff: Duration::from_secs(self.dedupe_cooloff_days * 24 * 3600),
            redrive_rate_per_sec: self.redrive_rate,
            sweep_interval: Duration::from_millis(self.sweep_interval_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
        }
    }
}

#[derive(Subcommand)]
enum EnrollTokenCommand {
    /// Print one single-use enrollment token for a creator.
    Create {
        /// The creator whose agent will enroll with this token.
        #[arg(long)]
        creator: String,
        /// Hours until the token expires (at most 720).
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
        ttl_hours: u64,
        /// How many tokens to print, one per line (bulk enrollment for load tests).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        count: u64,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Print one operator API key; only its SHA-256 is stored.
    Create {
        /// A label to recognise the key by.
        #[arg(long)]
        name: Option<String>,
        /// Scope the key to this creator's jobs and agents; without it, an operator key.
        #[arg(long)]
        creator: Option<String>,
    },
    /// Print every API key as JSON: id, name, creator (none: operator key), creation time.
    /// Keys themselves are not stored, so they cannot be shown.
    List,
    /// Delete the API key with this id (from `list`); a running hub stops accepting it
    /// within a minute.
    Revoke {
        /// The key's id as `list` shows it.
        id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let database_url = cli.database_url.unwrap_or_else(edge_hub::default_database_url);
    match cli.command {
        Command::Serve(args) => serve(database_url, *args).await,
        Command::EnrollToken(EnrollTokenCommand::Create { creator, ttl_hours, count }) => {
            let store = edge_hub::open_store(&database_url).await.context("cannot open the hub database")?;
            let mut tokens = Vec::new();
            for _ in 0..count {
                match edge_hub::create_enrollment_token(&*store, &creator, Duration::from_secs(ttl_hours * 3600)).await
                {
                    Ok(token) => tokens.push(token),
                    Err(e) => {
                        store.close().await;
                        return Err(e).context("cannot create an enrollment token");
                    }
                }
            }
            store.close().await;
            tokens.iter().try_for_each(print_credential)
        }
        // The repository's calls block on the store: off the async threads.
        Command::Bundle(args) => {
            let output = tokio::task::spawn_blocking(move || edge_hub::bundle_cli::run(args, &database_url)).await??;
            println!("{}", serde_json::to_string(&output)?);
            Ok(())
        }
        Command::Release(args) => {
            let output = tokio::task::spawn_blocking(move || edge_hub::release_cli::run(args, &database_url)).await??;
            println!("{}", serde_json::to_string(&output)?);
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Create { name, creator }) => {
            let store = edge_hub::open_store(&database_url).await.context("cannot open the hub database")?;
            let key = edge_hub::create_scoped_api_key(&*store, name.as_deref(), creator.as_deref())
                .await
                .context("cannot create an API key");
            store.close().await;
            print_credential(&key?)
        }
        Command::ApiKey(ApiKeyCommand::List) => {
            let store = edge_hub::open_store(&database_url).await.context("cannot open the hub database")?;
            let keys = edge_hub::list_api_keys(&*store).await.context("cannot list the API keys");
            store.close().await;
            let keys: Vec<serde_json::Value> = keys?
                .into_iter()
                .map(|key| {
                    serde_json::json!({
                        "id": key.id,
                        "name": key.name,
                        "creatorId": key.creator_id,
                        "createdAt": edge_hub::crypto::rfc3339(key.created_at),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string(&keys)?);
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Revoke { id }) => {
            let store = edge_hub::open_store(&database_url).await.context("cannot open the hub database")?;
            let revoked = edge_hub::revoke_api_key(&*store, &id).await;
            store.close().await;
            revoked.context("cannot revoke the API key")?;
            println!("{}", serde_json::json!({"revoked": id.trim()}));
            Ok(())
        }
    }
}

async fn serve(database_url: String, args: ServeArgs) -> anyhow::Result<()> {
    let jwt_secret = match std::env::var("EDGE_HUB_JWT_SECRET") {
        Ok(value) if !value.is_empty() => Some(Secret::new(value)),
        _ => None,
    };
    let public_url = args.public_url.map(|url| url.trim().trim_end_matches('/').to_owned()).filter(|u| !u.is_empty());
    if let Some(url) = &public_url {
        // It becomes a link people open and a QR code they scan: only a plain origin (and path).
        let plain = (url.starts_with("https://") || url.starts_with("http://"))
            && !url.contains(['?', '#', ' ', '"', '<', '>'])
            && !url.chars().any(char::is_control);
        anyhow::ensure!(
            plain,
            "--public-url must be a plain http(s) address like https://hub.example.com, not {url:?}"
        );
    }
    let config = HubConfig {
        listen: args.listen,
        database_url,
        hb_interval: Duration::from_secs(args.hb_interval_secs),
        jwt_ttl: Duration::from_secs(args.jwt_ttl_secs),
        jwt_secret,
        // An empty EDGE_HUB_BUNDLE_DIR means "not set", as `default_bundle_dir` reads it.
        bundle_dir: args.bundle_dir.filter(|dir| !dir.as_os_str().is_empty()),
        storage: args.storage.filter(|s| !s.trim().is_empty()),
        run_bytes_per_agent: args.run_bytes_per_agent,
        agent_limits: edge_protocol::HubLimits { jobs_per_hour: args.agent_jobs_per_hour },
        proxy_listen: args.proxy_listen,
        forwards: args.forwards,
        tunnel_listen: args.tunnel_listen,
        tunnel_advertise: args.tunnel_advertise,
        advertise_url: args.advertise_url.filter(|url| !url.trim().is_empty()),
        instance_ca: args.instance_ca,
        device: edge_hub::api::device::DeviceSettings {
            ttl: Duration::from_secs(args.device_code_ttl_secs),
            interval: Duration::from_secs(args.device_code_interval_secs),
            public_url,
            // Filled in by `start` from `tls`.
            tls: false,
        },
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(edge_hub::tls::TlsFiles { cert, key }),
            _ => None,
        },
        rate_limits: edge_hub::api::rate_limit::RateLimits {
            auth_per_minute_per_address: std::num::NonZeroU32::new(args.auth_rate_per_minute)
                .context("--auth-rate-per-minute must be at least 1")?,
            jobs_per_second_per_key: std::num::NonZeroU32::new(args.jobs_rate_per_second)
                .context("--jobs-rate-per-second must be at least 1")?,
        },
        queue: args.queue.queue(),
        job_types: args.queue.job_types()?,
        sync_timeout: Duration::from_secs(args.queue.sync_timeout_secs),
    };
    let tls = config.tls.is_some();
    let mut hub = edge_hub::start(config).await.context("cannot start the hub")?;
    {
        // Scripts and tests wait for this exact line to learn the port.
        let mut stdout = std::io::stdout().lock();
        let scheme = if tls { "https" } else { "http" };
        writeln!(stdout, "edge-hub listening on {scheme}://{}", hub.local_addr())?;
        stdout.flush()?;
    }
    tokio::select! {
        result = hub.stopped() => return result.context("the hub stopped"),
        signal = shutdown_signal() => signal?,
    }
    tracing::info!("shutdown requested");
    hub.shutdown().await.context("the hub did not shut down cleanly")
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("cannot listen for Ctrl-C")?;
    Ok(())
}

/// The credential is the command's whole output, so scripts can capture it with `$(…)`.
fn print_credential(secret: &Secret) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", secret.expose())?;
    stdout.flush()?;
    Ok(())
}

/// JSON lines on stderr; `EDGE_HUB_LOG` (or `RUST_LOG`) sets the filter, `info` by default.
fn init_logging() {
    let filter = std::env::var("EDGE_HUB_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(true)
        .init();
}
