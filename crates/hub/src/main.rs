//! `edge-hub`: the CLI over the hub library. It owns argument parsing, logging setup and
//! what goes to stdout (only the listening line or a freshly created credential); it must
//! never contain hub logic of its own.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use edge_hub::{HubConfig, Secret};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "edge-hub", version, about = "The Edge-Agent hub")]
struct Cli {
    /// Database URL; only sqlite: is supported [default: sqlite://<data dir>/edge-hub/hub.db]
    #[arg(long, global = true, env = "EDGE_HUB_DATABASE_URL")]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Manage enrollment tokens.
    #[command(subcommand)]
    EnrollToken(EnrollTokenCommand),
    /// Manage operator API keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
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
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Print one operator API key; only its SHA-256 is stored.
    Create {
        /// A label to recognise the key by.
        #[arg(long)]
        name: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let database_url = cli.database_url.unwrap_or_else(edge_hub::default_database_url);
    match cli.command {
        Command::Serve(args) => serve(database_url, args).await,
        Command::EnrollToken(EnrollTokenCommand::Create { creator, ttl_hours }) => {
            let store = edge_hub::open_store(&database_url).await.context("cannot open the hub database")?;
            let token = edge_hub::create_enrollment_token(&*store, &creator, Duration::from_secs(ttl_hours * 3600))
                .await
                .context("cannot create an enrollment token");
            store.close().await;
            print_credential(&token?)
        }
        Command::ApiKey(ApiKeyCommand::Create { name }) => {
            let store = edge_hub::open_store(&database_url).await.context("cannot open the hub database")?;
            let key = edge_hub::create_api_key(&*store, name.as_deref()).await.context("cannot create an API key");
            store.close().await;
            print_credential(&key?)
        }
    }
}

async fn serve(database_url: String, args: ServeArgs) -> anyhow::Result<()> {
    let jwt_secret = match std::env::var("EDGE_HUB_JWT_SECRET") {
        Ok(value) if !value.is_empty() => Some(Secret::new(value)),
        _ => None,
    };
    let config = HubConfig {
        listen: args.listen,
        database_url,
        hb_interval: Duration::from_secs(args.hb_interval_secs),
        jwt_ttl: Duration::from_secs(args.jwt_ttl_secs),
        jwt_secret,
    };
    let mut hub = edge_hub::start(config).await.context("cannot start the hub")?;
    {
        // Scripts and tests wait for this exact line to learn the port.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "edge-hub listening on http://{}", hub.local_addr())?;
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
