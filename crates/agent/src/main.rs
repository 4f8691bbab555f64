//! `edge-agent`: the headless agent. A thin shell over the `edge_agent` library: argument
//! parsing, printing, exit codes. It must never print or log a secret, and keeps no logic
//! the tray app would also need (that belongs in the library).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use edge_agent::local_settings::LocalSettings;
use edge_agent::logging::{self, LogOptions};
use edge_agent::{AgentEvent, AgentService, AgentSettings, AgentSnapshot, KeychainChoice, StateFile};
use edge_browser::BrowserStatus;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "Runs jobs from an Edge hub on this machine")]
struct Cli {
    /// Which stored login to use; one machine can hold several.
    #[arg(long, global = true, env = "EDGE_AGENT_PROFILE", default_value = "default")]
    profile: String,
    /// Where credentials are kept: auto, secret-service or kernel (Linux).
    #[arg(long, global = true, env = "EDGE_AGENT_KEYCHAIN", default_value = "auto")]
    keychain: KeychainChoice,
    /// state.json and logs/ go here [default: the per-user data directory].
    #[arg(long, global = true, env = "EDGE_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this machine with a hub and store the credentials in the keychain: with a
    /// code approved on the hub's page (`--device HUB_URL`), or an enrollment token
    /// (`--hub HUB_URL --token T`).
    Login {
        /// Sign in by device code: prints a code and the hub's page to approve it on, then
        /// waits for the approval. http:// only for loopback hosts.
        #[arg(long, value_name = "HUB_URL", conflicts_with_all = ["hub", "token"])]
        device: Option<String>,
        /// Hub URL; http:// only for loopback hosts.
        #[arg(long, required_unless_present = "device")]
        hub: Option<String>,
        /// One-time enrollment token from `edge-hub enroll-token create`.
        #[arg(long, env = "EDGE_AGENT_ENROLL_TOKEN", hide_env_values = true, required_unless_present = "device")]
        token: Option<String>,
        /// Name shown to the operator [default: host name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Connect to the hub and run jobs until Ctrl-C or SIGTERM.
    Run {
        /// Heartbeat interval; the hub's wins when smaller.
        #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
        hb_interval_secs: u64,
        /// Jobs run at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        slots: u32,
        /// Let jobs reach this destination beyond the public internet, for this run
        /// (repeatable): ADDRESS[:PORT] or ADDRESS/PREFIX[:PORT], e.g. 127.0.0.1:8080. The same
        /// list can live in settings.json (allowEgress). Without a port: ports 80 and 443.
        #[arg(long = "allow-egress", value_name = "ADDRESS[:PORT]")]
        allow_egress: Vec<String>,
        /// Release channel to follow for automatic updates.
        #[arg(long, env = "EDGE_AGENT_UPDATE_CHANNEL", default_value = edge_agent::updater::DEFAULT_CHANNEL)]
        update_channel: String,
        /// Never check for or install updates by itself (`edge-agent update` still works).
        #[arg(long, env = "EDGE_AGENT_NO_AUTO_UPDATE")]
        no_auto_update: bool,
        /// Seconds a new version has, from its first start, to reach the hub before the
        /// previous one is restored (tests shorten it).
        #[arg(long, hide = true, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        update_probation_secs: u64,
        /// Seconds between update checks (24 h, jittered; tests shorten it).
        #[arg(long, hide = true, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
        update_interval_secs: u64,
    },
    /// Agent updates from the hub: check, or install now.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Show the login (never the key) and the running agent's state.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete this profile's credentials from the keychain.
    Logout,
    /// The browser runtime: site logins and its state.
    #[command(subcommand)]
    Browser(BrowserCommand),
    /// Your own settings for this agent (settings.json): what no hub can change.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// What you allow a hub to make this computer do. A fresh install allows nothing; the
    /// agent announces and runs only what you granted.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// A local service the hub may reach through the tunnel, by name (the only way a tunnel
    /// stream reaches this machine's own addresses). Without arguments: the list.
    Expose {
        /// The name clients ask for (letters, digits, '-', '_').
        name: Option<String>,
        /// Where it listens, ADDRESS:PORT (for example 127.0.0.1:8080).
        address: Option<String>,
        /// Stop exposing NAME.
        #[arg(long, conflicts_with = "address")]
        remove: bool,
    },
    #[command(hide = true)]
    BenchEgress(BenchEgressArgs),
    /// Benchmark helper for `cargo xtask bench bundles` (an API key, no login): trusts the hub's
    /// root, refreshes metadata, downloads, verifies and unpacks one bundle into --data-dir,
    /// and prints JSON timings and peak RSS.
    #[command(hide = true)]
    BenchBundle {
        #[arg(long)]
        hub: String,
        /// An API key of the hub (the bundle repository serves a tenant's metadata only to
        /// its agents and to API keys); read from the environment so it is not in `ps`.
        #[arg(long, env = "EDGE_BENCH_API_KEY", hide_env_values = true)]
        api_key: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        bundle: String,
        #[arg(long, default_value = "latest")]
        version: String,
    },
}

/// Benchmark helper for `cargo xtask bench egress` (no login needed): `runs` GETs of `url`
/// as `http_request` jobs through the egress gate (allowing `allow`, its meter under
/// --data-dir as in the agent) and as the same job without the gate, interleaved, and prints
/// JSON latencies (µs) of both. With `--proxy`, it instead serves the gate's browser proxy
/// (allowing `allow`), prints `{"proxy": "ADDRESS", "chromiumArgs": [...]}` (the job
/// browser's flags) and runs until its standard input closes.
#[derive(clap::Args)]
struct BenchEgressArgs {
    #[arg(long, required_unless_present = "proxy")]
    url: Option<String>,
    #[arg(long)]
    allow: String,
    #[arg(long, default_value_t = 2000)]
    runs: usize,
    #[arg(long)]
    proxy: bool,
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Ask the hub whether a newer version is offered to this machine (nothing installed).
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "EDGE_AGENT_UPDATE_CHANNEL", default_value = edge_agent::updater::DEFAULT_CHANNEL)]
        channel: String,
    },
    /// Download, verify and install the offered version in place of this program (never
    /// while a job runs); it runs from the agent's next start and must reach the hub within
    /// 60 s or the previous version comes back.
    Apply {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "EDGE_AGENT_UPDATE_CHANNEL", default_value = edge_agent::updater::DEFAULT_CHANNEL)]
        channel: String,
        #[arg(long, hide = true, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        probation_secs: u64,
    },
    /// Print the version stamped into this binary (the updater runs it on a new binary
    /// before installing it).
    #[command(hide = true)]
    SelfTest,
    /// Write a copy of this binary (or of another build holding the agent's version slot,
    /// such as the tray's) with another version stamped into it (release pipeline, tests).
    #[command(hide = true)]
    Stamp {
        #[arg(long)]
        version: String,
        #[arg(long)]
        out: PathBuf,
        /// The binary to copy; this one when not given.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BrowserCommand {
    /// Open a browser window on a site's login page; once you are logged in, the session is
    /// saved (encrypted, key in the keychain) and failed LOGIN_REQUIRED jobs can be retried.
    /// Prints the adapter's source and the origin it opens before it opens anything.
    Login {
        /// An adapter file (YAML/JSON), the name of one in your adapters folder, or the name
        /// of a site whose adapter came from a signed bundle.
        #[arg(long)]
        site: String,
        /// No window (scripted logins; the site must log in by itself).
        #[arg(long)]
        headless: bool,
        /// Give up after this long.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Browser found, circuit breaker, volatile sessions, sites that need a login (the same
    /// lines `edge-agent status` prints).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Print the settings and the folders they name.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The one folder browser jobs may upload your files from (besides their own bundle);
    /// none by default.
    UploadsDir {
        /// An existing folder.
        #[arg(required_unless_present = "none")]
        path: Option<PathBuf>,
        /// No uploads folder: jobs upload only their own files.
        #[arg(long, conflicts_with = "path")]
        none: bool,
    },
    /// Whether a job may bring its own site adapter instead of naming a signed bundle's or
    /// one of your adapters folder (off by default).
    InlineAdapters {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Your caps: a hub can lower them, never raise them. Each given value replaces yours;
    /// `--clear` removes them all (the agent's own defaults still apply).
    Caps {
        /// Jobs this agent starts per hour; more are refused RATE_LIMITED until one fits.
        #[arg(long)]
        jobs_per_hour: Option<u32>,
        /// Direct messages sent per hour (lowers the browser's DM budget, 20 by default).
        #[arg(long)]
        messages_per_hour: Option<u32>,
        /// Bytes in and out per day through the egress gate.
        #[arg(long)]
        bytes_per_day: Option<u64>,
        #[arg(long, conflicts_with_all = ["jobs_per_hour", "messages_per_hour", "bytes_per_day"])]
        clear: bool,
    },
}

#[derive(Subcommand)]
enum ConsentCommand {
    /// Without a capability: every capability and whether you granted it. With one: the text
    /// that explains what granting it allows, and your grant of it.
    Show {
        /// http_request, bundle or browser:SITE.
        capability: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints what the capability allows and records that you granted it, with that text,
    /// its version and the time. A running agent announces it when `edge-agent run` starts
    /// again.
    Grant {
        /// http_request, bundle or browser:SITE (the site's adapter name, e.g. browser:instagram).
        capability: String,
    },
    /// Withdraws a grant; jobs that need it are refused from the next one on.
    Revoke { capability: String },
}

/// Exit codes scripts can tell apart.
const EXIT_ERROR: u8 = 1;
const EXIT_LOGIN_REQUIRED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread is plenty for one WebSocket, a heartbeat and a few jobs, whose blocking
    // work (keychain, journal, unpacking) goes to tokio's blocking threads anyway; a worker
    // per core would cost each its stack and malloc arena on a person's computer for nothing.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn execute(cli: Cli) -> Result<ExitCode> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => edge_agent::default_data_dir()
            .context("the OS reports no home directory; pass --data-dir or set EDGE_AGENT_DATA_DIR")?,
    };
    let default_filter = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    let _log_guard =
        logging::init(LogOptions { data_dir: data_dir.clone(), stderr: true, default_filter: default_filter.into() })?;
    let mut settings = AgentSettings::new(data_dir);
    settings.profile = cli.profile;
    settings.keychain = cli.keychain;

    match cli.command {
        Command::Login { device: Some(hub), name, .. } => device_login(settings, &hub, name).await,
        Command::Login { hub: Some(hub), token: Some(token), name, .. } => login(settings, &hub, &token, name).await,
        Command::Login { .. } => bail!("give --device HUB_URL, or --hub HUB_URL with --token T"),
        Command::Run {
            hb_interval_secs,
            slots,
            allow_egress,
            update_channel,
            no_auto_update,
            update_probation_secs,
            update_interval_secs,
        } => {
            settings.hb_interval = Duration::from_secs(hb_interval_secs);
            settings.slots = slots;
            settings.allow_egress = allow_egress;
            let mut updates =
                edge_agent::updater::AutoUpdate::new(update_channel, Duration::from_secs(update_probation_secs));
            updates.interval = Duration::from_secs(update_interval_secs);
            run(settings, (!no_auto_update).then_some(updates)).await
        }
        Command::Update(command) => update_command(settings, command).await,
        Command::Status { json } => status(settings, json).await,
        Command::BenchBundle { hub, api_key, tenant, bundle, version } => {
            let api_key = edge_agent::secret::Secret::new(api_key);
            let report = edge_agent::bundles::bench(&settings.data_dir, &hub, api_key, &tenant, &bundle, &version)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message.unwrap_or_default()))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchEgress(args) => {
            let report = bench_egress(&args, &settings.data_dir).await?;
            // The proxy mode printed its address at start; its reader is gone by now.
            if !args.proxy {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Browser(BrowserCommand::Login { site, headless, timeout_secs }) => {
            let service = AgentService::new(settings);
            // What will open, shown before anything opens; an adapter whose login page is
            // not one of its own origins is refused here.
            let site = service.browser_site(&site)?;
            let origin = site.login_origin().map_err(|e| anyhow::anyhow!(e))?;
            println!("site:    {}", site.adapter.name);
            println!("adapter: {}", site.source);
            println!("opens:   {origin} (its login page)");
            let report = service.browser_login(&site, !headless, Duration::from_secs(timeout_secs)).await?;
            println!("{}", serde_json::to_string(&report)?);
            if !report.saved_encrypted {
                eprintln!("note: no keychain key; this login is not kept after this command ends");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Browser(BrowserCommand::Status { json }) => {
            let state = StateFile::read(&settings.data_dir)?;
            let service = AgentService::new(settings);
            let view = browser_view(&service, state.as_ref());
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_browser(&view);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings(command) => settings_command(&settings.data_dir, command),
        Command::Consent(command) => consent_command(&settings.data_dir, command),
        Command::Expose { name, address, remove } => expose_command(&settings.data_dir, name, address, remove),
        Command::Logout => {
            let profile = settings.profile.clone();
            AgentService::new(settings).logout().await?;
            println!("logged out: the keychain entry of profile {profile:?} is deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn settings_command(data_dir: &std::path::Path, command: SettingsCommand) -> Result<ExitCode> {
    let mut local = LocalSettings::load(data_dir)?;
    match command {
        SettingsCommand::Show { json } => {
            let adapters = edge_agent::browser::local_adapters_dir(data_dir);
            if json {
                let value = serde_json::json!({
                    "path": LocalSettings::path(data_dir),
                    "settings": local,
                    "localAdaptersDir": adapters,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("settings file:   {}", LocalSettings::path(data_dir).display());
                match &local.uploads_dir {
                    Some(dir) => println!("uploads folder:  {}", dir.display()),
                    None => println!("uploads folder:  none (jobs upload only their own files)"),
                }
                println!("inline adapters: {}", if local.allow_inline_adapters { "on" } else { "off" });
                println!("local adapters:  {}", adapters.display());
                let cap = |v: Option<String>| v.unwrap_or_else(|| "none of yours".to_owned());
                println!(
                    "caps:            jobs/hour {}, messages/hour {}, bytes/day {}",
                    cap(local.caps.jobs_per_hour.map(|v| v.to_string())),
                    cap(local.caps.messages_per_hour.map(|v| v.to_string())),
                    cap(local.caps.bytes_per_day.map(|v| v.to_string()))
                );
                println!("consent:         edge-agent consent show");
            }
            return Ok(ExitCode::SUCCESS);
        }
        SettingsCommand::UploadsDir { path: None, .. } => {
            local.uploads_dir = None;
            local.save(data_dir)?;
            println!("uploads folder: none; browser jobs upload only their own files");
        }
        SettingsCommand::UploadsDir { path: Some(path), .. } => {
            let folder = local.set_uploads_dir(&path, data_dir)?;
            local.save(data_dir)?;
            println!("uploads folder: {} (browser jobs may upload the files in it)", folder.display());
        }
        SettingsCommand::Caps { jobs_per_hour, messages_per_hour, bytes_per_day, clear } => {
            if clear {
                local.caps = Default::default();
            }
            local.caps.jobs_per_hour = jobs_per_hour.or(local.caps.jobs_per_hour);
            local.caps.messages_per_hour = messages_per_hour.or(local.caps.messages_per_hour);
            local.caps.bytes_per_day = bytes_per_day.or(local.caps.bytes_per_day);
            local.save(data_dir)?;
            let shown = |v: Option<String>| v.unwrap_or_else(|| "no cap of yours".to_owned());
            println!("jobs per hour:     {}", shown(local.caps.jobs_per_hour.map(|v| v.to_string())));
            println!("messages per hour: {}", shown(local.caps.messages_per_hour.map(|v| v.to_string())));
            println!("bytes per day:     {}", shown(local.caps.bytes_per_day.map(|v| v.to_string())));
            println!(
                "(a hub may lower these, never raise them; messages per hour applies from the next `edge-agent run`)"
            );
        }
        SettingsCommand::InlineAdapters { state } => {
            local.allow_inline_adapters = state == "on";
            local.save(data_dir)?;
            if local.allow_inline_adapters {
                println!("inline adapters: on; a job may bring its own site adapter (not signed, never stored)");
            } else {
                println!("inline adapters: off; jobs name a signed bundle's adapter or one of your adapters folder");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn expose_command(
    data_dir: &std::path::Path,
    name: Option<String>,
    address: Option<String>,
    remove: bool,
) -> Result<ExitCode> {
    let mut local = edge_agent::local_settings::LocalSettings::load(data_dir)?;
    match (name, address, remove) {
        (None, _, _) => {
            if local.exposed.is_empty() {
                println!("no service is exposed (edge-agent expose NAME 127.0.0.1:PORT)");
            }
            for (name, address) in &local.exposed {
                println!("{name:<20} {address}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        (Some(name), _, true) => {
            if local.exposed.remove(&name).is_none() {
                bail!("no service named {name:?} is exposed (edge-agent expose lists them)");
            }
            println!("{name} is no longer exposed");
        }
        (Some(name), Some(address), false) => {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                bail!("{name:?} is not a service name: use letters, digits, '-' and '_' (at most 64)");
            }
            let parsed: std::net::SocketAddr = address.parse().map_err(|_| {
                anyhow::anyhow!("{address:?} is not ADDRESS:PORT; for a service on this computer, 127.0.0.1:PORT")
            })?;
            local.exposed.insert(name.clone(), parsed.to_string());
            println!(
                "{name} -> {parsed}: the hub can reach it through the tunnel by this name (when you granted tunnel)"
            );
        }
        (Some(name), None, false) => bail!("say where {name} listens: edge-agent expose {name} 127.0.0.1:PORT"),
    }
    local.save(data_dir)?;
    Ok(ExitCode::SUCCESS)
}

fn consent_command(data_dir: &std::path::Path, command: ConsentCommand) -> Result<ExitCode> {
    use edge_agent::consent::{Capability, Consent, Standing, CATALOGUE};
    let consent = Consent::new(data_dir);
    let standing_word = |standing: &Standing| match standing {
        Standing::NotGranted => "not granted".to_owned(),
        Standing::Granted(grant) => format!("granted {} (text version {})", grant.granted_at, grant.text_version),
        Standing::Outdated(grant) => format!(
            "granted {} for text version {}, which has changed since: not in force until granted again",
            grant.granted_at, grant.text_version
        ),
    };
    match command {
        ConsentCommand::Show { capability: None, json } => {
            let grants = consent.grants()?;
            if json {
                let grants: serde_json::Map<String, serde_json::Value> = grants
                    .iter()
                    .map(|(name, standing)| {
                        let (state, grant) = match standing {
                            Standing::NotGranted => ("not_granted", None),
                            Standing::Granted(grant) => ("granted", Some(grant)),
                            Standing::Outdated(grant) => ("outdated", Some(grant)),
                        };
                        (name.clone(), serde_json::json!({ "state": state, "grant": grant }))
                    })
                    .collect();
                let value = serde_json::json!({
                    "capabilities": CATALOGUE.iter().map(|(name, title)| serde_json::json!({"name": name, "title": title})).collect::<Vec<_>>(),
                    "grants": grants,
                    "textVersion": edge_agent::consent::TEXT_VERSION,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("capabilities (edge-agent consent show CAPABILITY for what each allows):");
                for (name, title) in CATALOGUE {
                    println!("  {name:<14} {title}");
                }
                if grants.is_empty() {
                    println!("granted: nothing (a hub can make this agent do nothing yet)");
                } else {
                    println!("granted:");
                    for (name, standing) in &grants {
                        println!("  {name:<14} {}", standing_word(standing));
                    }
                }
            }
        }
        ConsentCommand::Show { capability: Some(name), json } => {
            let capability = Capability::parse(&name)?;
            let standing = consent.standing(&capability)?;
            if json {
                let grant = match &standing {
                    Standing::NotGranted => None,
                    Standing::Granted(grant) | Standing::Outdated(grant) => Some(grant),
                };
                let value = serde_json::json!({
                    "capability": capability.name(),
                    "text": capability.text(),
                    "textVersion": edge_agent::consent::TEXT_VERSION,
                    "granted": matches!(standing, Standing::Granted(_)),
                    "grant": grant,
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{}: {}", capability.name(), capability.title());
                println!();
                println!("{}", capability.text());
                println!();
                println!("status: {}", standing_word(&standing));
            }
        }
        ConsentCommand::Grant { capability } => {
            let capability = Capability::parse(&capability)?;
            println!("{}", capability.text());
            let grant = consent.grant(&capability)?;
            println!(
                "granted: {} at {} (text version {}); a running agent announces it when `edge-agent run` starts again",
                capability.name(),
                grant.granted_at,
                grant.text_version
            );
        }
        ConsentCommand::Revoke { capability } => {
            let capability = Capability::parse(&capability)?;
            if consent.revoke(&capability)? {
                println!("revoked: {}; jobs that need it are refused from now on", capability.name());
            } else {
                println!("{} was not granted; nothing changed", capability.name());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_egress(args: &BenchEgressArgs, data_dir: &std::path::Path) -> Result<serde_json::Value> {
    use edge_agent::egress::{EgressGate, Policy};
    use std::time::Instant;
    let policy = Policy::parse([args.allow.as_str()]).map_err(|e| anyhow::anyhow!(e))?;
    let gate = EgressGate::new(policy, Some(data_dir), None);
    if args.proxy {
        let proxy = edge_agent::egress::proxy::GateProxy::start(gate).await?;
        println!(
            "{}",
            serde_json::json!({ "proxy": proxy.address().to_string(), "chromiumArgs": proxy.chromium_args() })
        );
        // Serves until the benchmark closes our standard input.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await??;
        return Ok(serde_json::json!({ "proxy": "stopped" }));
    }
    let url = args.url.as_deref().context("--url is required")?;
    // The job without the gate, as it ran before the gate: one shared client that resolves
    // and follows redirects itself. (reqwest's rustls needs a provider chosen; the agent's
    // own clients pass theirs.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let direct = reqwest::Client::builder().no_proxy().user_agent(edge_agent::agent_version()).build()?;
    let payload = serde_json::json!({ "url": url, "timeoutMs": 10_000 });
    let (mut gated, mut plain) = (Vec::with_capacity(args.runs), Vec::with_capacity(args.runs));
    for i in 0..args.runs + 50 {
        let started = Instant::now();
        edge_agent::runners::http_request::run(&gate, &payload)
            .await
            .map_err(|e| anyhow::anyhow!("gated request failed: {e:?}"))?;
        let gated_us = started.elapsed().as_micros() as u64;
        let started = Instant::now();
        edge_agent::runners::http_request::run_ungated_for_benchmark(&direct, &payload)
            .await
            .map_err(|e| anyhow::anyhow!("request without the gate failed: {e:?}"))?;
        let plain_us = started.elapsed().as_micros() as u64;
        // The first 50 of each warm the pools and the allocator.
        if i >= 50 {
            gated.push(gated_us);
            plain.push(plain_us);
        }
    }
    let percentile = |samples: &mut Vec<u64>, p: f64| {
        samples.sort_unstable();
        samples[((samples.len() - 1) as f64 * p).round() as usize]
    };
    Ok(serde_json::json!({
        "runs": args.runs,
        "gatedP50Us": percentile(&mut gated, 0.50), "gatedP99Us": percentile(&mut gated, 0.99),
        "directP50Us": percentile(&mut plain, 0.50), "directP99Us": percentile(&mut plain, 0.99),
    }))
}

async fn login(settings: AgentSettings, hub: &str, token: &str, name: Option<String>) -> Result<ExitCode> {
    let outcome = AgentService::new(settings).enroll(hub, token, name).await?;
    print_login(&outcome);
    Ok(ExitCode::SUCCESS)
}

async fn device_login(settings: AgentSettings, hub: &str, name: Option<String>) -> Result<ExitCode> {
    let service = AgentService::new(settings);
    let login = service.device_login(hub, name).await?;
    let codes = login.codes();
    println!("To sign this machine in, open this page and enter the code:");
    println!("  page: {}", codes.verification_uri);
    println!("  code: {}", codes.user_code);
    println!("or open {} (the code is filled in).", codes.verification_uri_complete);
    println!(
        "Sign in there with your creator API key. Waiting for approval (the code works for {} minutes)...",
        codes.expires_in_secs.div_ceil(60)
    );
    let outcome = service.finish_device_login(login).await?;
    println!("approved: this machine joined creator {}", outcome.creator_id);
    print_login(&outcome);
    Ok(ExitCode::SUCCESS)
}

fn print_login(outcome: &edge_agent::LoginOutcome) {
    println!("enrolled with {}", outcome.hub_url);
    println!("agent id:   {}", outcome.agent_id);
    println!("creator id: {}", outcome.creator_id);
    println!("keychain:   {}", outcome.keychain_backend);
    if outcome.keychain_backend == edge_agent::KeychainBackend::Kernel.as_str() {
        println!("note: the kernel keyring forgets its entries on reboot; log in again after one");
    }
}

/// `edge-agent update …`.
async fn update_command(settings: AgentSettings, command: UpdateCommand) -> Result<ExitCode> {
    use edge_agent::updater::{self, Decision};
    match command {
        UpdateCommand::SelfTest => {
            println!("{}", updater::running_version());
            Ok(ExitCode::SUCCESS)
        }
        UpdateCommand::Stamp { version, out, from } => {
            let source = match from {
                Some(from) => from,
                None => updater::install::installed_exe()?,
            };
            updater::version_slot::stamp(&source, &out, &version)?;
            println!("{}: {} stamped {version}", out.display(), source.display());
            Ok(ExitCode::SUCCESS)
        }
        UpdateCommand::Check { json, channel } => {
            let service = AgentService::new(settings);
            let ctx = service.updater_context(&channel).await?;
            let (report, _) = updater::check(&ctx).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("running:  {} ({} {}/{})", report.running, report.channel, report.platform, report.arch);
                match &report.decision {
                    Decision::UpToDate => println!("up to date"),
                    Decision::Available { version } => {
                        println!("available: {version} (edge-agent update apply installs it)")
                    }
                    Decision::NotYetInRollout { version, bucket, rollout_percent } => println!(
                        "{version} is rolling out to {rollout_percent}% of agents; this one comes at {}%",
                        bucket + 1
                    ),
                    Decision::FailedBefore { version } => {
                        println!("{version} failed to start here before and is not installed again")
                    }
                }
                if let Some(offer) = report.offered.as_ref().filter(|o| !o.notes.is_empty()) {
                    println!("notes:    {}", offer.notes);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        UpdateCommand::Apply { json, channel, probation_secs } => {
            let data_dir = settings.data_dir.clone();
            // A running agent's jobs, from its state file: an update never starts under one.
            let busy = move || {
                StateFile::read(&data_dir).ok().flatten().is_some_and(|s| s.writer_alive() && s.snapshot.busy > 0)
            };
            let service = AgentService::new(settings);
            let ctx = service.updater_context(&channel).await?;
            let exe = updater::install::installed_exe()?;
            if let Err(why) = updater::install::self_replaceable(&exe) {
                bail!("{} does not replace itself: {why}", exe.display());
            }
            let report = updater::apply(&ctx, &exe, Duration::from_secs(probation_secs), busy).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                match &report.installed {
                    Some(version) => println!(
                        "installed {version} at {} (previous kept as {}); restart the agent to run it: it must reach \
                         the hub within {} s of its first start, or the previous version comes back",
                        report.exe.display(),
                        report.previous.as_ref().map_or_else(|| "before".to_owned(), |p| p.display().to_string()),
                        report.probation_secs
                    ),
                    None => println!("nothing installed: {:?}", report.check.decision),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(settings: AgentSettings, updates: Option<edge_agent::updater::AutoUpdate>) -> Result<ExitCode> {
    use edge_agent::updater::{self, install::StartState};
    // An update on probation: this start may be its first, or one past its window.
    let probation = updates.as_ref().map_or(updater::DEFAULT_PROBATION, |u| u.probation);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let start = updater::install::on_start(&settings.data_dir, &updater::running_version(), probation, now)?;
    if let StartState::RolledBack { exe } = &start {
        tracing::error!(exe = %exe.display(), "the installed update never reached the hub; starting the previous version");
        return Err(updater::install::restart(exe).into());
    }
    let service = AgentService::new(settings);
    let restart = updates.as_ref().map(|u| u.restart.clone());
    if let Some(updates) = updates {
        service.enable_updates(updates);
    }
    // A mistyped allowance is the person's to fix before anything connects.
    let gate = service.egress().map_err(|e| anyhow::anyhow!("{e}"))?;
    for allowance in gate.policy().allowances() {
        tracing::info!(%allowance, "egress allowed beyond the public internet");
    }
    let snapshot = service.reload_credentials().await?;
    if !snapshot.logged_in {
        bail!(
            "not logged in (profile {:?}): run `edge-agent login --hub URL --token T` first",
            service.settings().profile
        );
    }
    let mut events = service.subscribe();
    tokio::spawn(trim_once_online(service.subscribe()));
    service.start()?;
    let data_dir = service.settings().data_dir.clone();
    let probation_over = async {
        match start {
            StartState::Probation { remaining } => probation_watch(&data_dir, remaining).await,
            _ => std::future::pending().await,
        }
    };
    let update_ready = async {
        match &restart {
            Some(restart) => restart.notified().await,
            None => std::future::pending().await,
        }
    };
    let stopped_by_itself = tokio::select! {
        _ = shutdown_signal() => None,
        reason = loop_ended(&mut events) => Some(reason),
        exe = probation_over => Some(LoopEnd::Restart(exe)),
        _ = update_ready => Some(LoopEnd::Restart(updater::install::installed_exe()?)),
    };
    if let Some(LoopEnd::Restart(_)) = &stopped_by_itself {
        // Never in the middle of a job: wait for the running ones (bounded by the job
        // timeouts the executor enforces).
        while service.snapshot().busy > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    service.shutdown().await;
    match stopped_by_itself {
        Some(LoopEnd::Restart(exe)) => {
            tracing::info!(exe = %exe.display(), "restarting");
            Err(updater::install::restart(&exe).into())
        }
        None => {
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(LoopEnd::LoginRequired(reason)) => {
            eprintln!("error: login required: {reason}; run `edge-agent login` again");
            Ok(ExitCode::from(EXIT_LOGIN_REQUIRED))
        }
        Some(LoopEnd::Stopped(reason)) => {
            eprintln!("error: {reason}");
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

/// Once the agent is online, gives back the memory that starting it needed and idling does
/// not (see `edge_agent::trim`). Only the headless binary does this: its whole life after
/// start is the idle loop, and a person's machine keeps it running for days.
async fn trim_once_online(mut events: tokio::sync::broadcast::Receiver<AgentEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(AgentEvent::Connected { .. }) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
    // Let the first heartbeat round trip finish first: it is part of starting up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trimmed = edge_agent::trim::after_startup();
    tracing::debug!(
        executable_bytes = trimmed.executable_bytes,
        heap_released = trimmed.heap_released,
        "gave back the memory startup needed"
    );
}

/// Until the first `hb_ack` (the update stays: never returns) or the end of the window
/// (the previous binary is restored: returns its path to restart into).
async fn probation_watch(data_dir: &std::path::Path, remaining: Duration) -> PathBuf {
    use edge_agent::updater::{self, install};
    let version = updater::running_version();
    let deadline = tokio::time::Instant::now() + remaining;
    while tokio::time::Instant::now() < deadline {
        if edge_agent::session::first_hb_ack_seen() {
            match install::confirm(data_dir, &version) {
                Ok(_) => tracing::info!(version, "update confirmed: the hub acknowledged this version"),
                Err(e) => tracing::error!(error = %e, "cannot confirm the update"),
            }
            return std::future::pending().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reason = format!(
        "version {version} did not reach the hub (no hb_ack) within {} s of its first start",
        remaining.as_secs()
    );
    let rolled_back = install::probation(data_dir)
        .and_then(|marker| marker.ok_or_else(|| updater::UpdateError::Io("the probation marker is gone".into())))
        .and_then(|marker| install::roll_back(data_dir, &marker, &reason));
    match rolled_back {
        Ok(exe) => exe,
        Err(e) => {
            // Nothing to restore into: keep running this version and say why.
            tracing::error!(error = %e, "the update failed its probation and cannot be rolled back");
            std::future::pending().await
        }
    }
}

enum LoopEnd {
    LoginRequired(String),
    Stopped(String),
    /// Into an installed update, or back into the previous version after a failed one.
    Restart(PathBuf),
}

/// Resolves when the loop gives up by itself (it only does for reasons a retry cannot fix).
async fn loop_ended(events: &mut tokio::sync::broadcast::Receiver<AgentEvent>) -> LoopEnd {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(AgentEvent::LoginRequired { reason }) => return LoopEnd::LoginRequired(reason),
            Ok(AgentEvent::Disconnected { reason, retry_in_ms: None }) => {
                // LoginRequired follows its Disconnected; give it the chance to be seen.
                if let Ok(Ok(AgentEvent::LoginRequired { reason })) =
                    tokio::time::timeout(Duration::from_millis(100), events.recv()).await
                {
                    return LoopEnd::LoginRequired(reason);
                }
                return LoopEnd::Stopped(reason);
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return LoopEnd::Stopped("the agent stopped".into()),
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn status(settings: AgentSettings, json: bool) -> Result<ExitCode> {
    let profile = settings.profile.clone();
    let data_dir = settings.data_dir.clone();
    let service = AgentService::new(settings);
    let login = service.reload_credentials().await;
    let state = StateFile::read(&data_dir)?;
    let process_alive = state.as_ref().is_some_and(StateFile::writer_alive);
    let browser = browser_view(&service, state.as_ref());
    let egress = egress_view(&service, &data_dir);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let on_disk = edge_agent::updater::install::installed_exe()
        .ok()
        .and_then(|exe| edge_agent::updater::version_slot::version_of(&exe).ok());
    let updates = edge_agent::updater::status(&data_dir, on_disk, now);

    if json {
        let value = serde_json::json!({
            "profile": profile,
            "login": match &login {
                Ok(snapshot) => serde_json::to_value(LoginView::from(snapshot))?,
                Err(e) => serde_json::json!({ "error": e }),
            },
            "agentRunning": process_alive,
            // What `edge-agent browser status --json` prints; `state` is state.json as the
            // agent last wrote it, which can lag behind a login made from another process.
            "browser": browser,
            "egress": egress,
            "exposed": edge_agent::local_settings::LocalSettings::load(&data_dir).map(|s| s.exposed).unwrap_or_default(),
            "state": state,
            "updates": updates,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("profile:     {profile}");
        match &login {
            Ok(snapshot) => {
                println!("keychain:    {}", snapshot.keychain_backend.as_deref().unwrap_or("-"));
                if snapshot.logged_in {
                    println!("logged in:   yes");
                    println!("hub:         {}", snapshot.hub_url.as_deref().unwrap_or("-"));
                    println!("agent id:    {}", snapshot.agent_id.as_deref().unwrap_or("-"));
                    println!("creator id:  {}", snapshot.creator_id.as_deref().unwrap_or("-"));
                    println!(
                        "bundle root: {}",
                        snapshot.root_fingerprint.as_deref().unwrap_or("- (none: log in again to receive it)")
                    );
                    print_expiries(&snapshot.expiries);
                } else {
                    println!("logged in:   no");
                }
            }
            Err(e) => println!("keychain:    unavailable: {e}"),
        }
        match &state {
            None => println!("agent:       not running (no {} yet)", StateFile::path(&data_dir).display()),
            Some(file) => print_state(file, process_alive),
        }
        print_browser(&browser);
        print_egress(&egress);
        let exposed = edge_agent::local_settings::LocalSettings::load(&data_dir).map(|s| s.exposed).unwrap_or_default();
        for (name, address) in &exposed {
            println!("exposed:     {name} -> {address} (through the tunnel)");
        }
        print_updates(&updates);
    }
    Ok(if login.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ERROR) })
}

/// When the hub's signing roots this agent trusts end, with a warning within 30 days.
fn print_expiries(expiries: &[edge_agent::state::Expiry]) {
    use edge_agent::state::{Expiring, ExpiryWarning};
    for expiry in expiries {
        let what = match expiry.what {
            Expiring::BundleRoot => "bundle signing root",
            Expiring::ReleaseRoot => "update signing root",
            Expiring::Other => "signing root",
        };
        let warning = match expiry.warning {
            None => "",
            Some(ExpiryWarning::Soon) => {
                " — WARNING: expires soon; ask whoever runs your hub to renew its signing keys (the agent picks \
                 the new root up by itself)"
            }
            Some(ExpiryWarning::Expired) => {
                " — EXPIRED: refused until whoever runs your hub renews its signing keys (the agent picks the new \
                 root up by itself at its next check)"
            }
        };
        println!("expires:     {what} on {}{warning}", expiry.expires_at);
    }
}

fn print_updates(updates: &edge_agent::state::UpdateStatus) {
    println!("updates:     last verified check {}", updates.last_verified_check.as_deref().unwrap_or("never"));
    if let Some(days) = updates.unreachable_days {
        println!("             WARNING: no verified update check for {days} days (check the connection to the hub)");
    }
    if let Some(version) = &updates.ready {
        println!("             version {version} is installed and runs from the next start");
    }
    if let Some(version) = &updates.available {
        println!("             version {version} is available: `edge-agent update apply`, or your package manager");
    }
}

/// The egress gate as `status` shows it: allowances, cap, today's bytes per capability.
fn egress_view(service: &AgentService, data_dir: &std::path::Path) -> serde_json::Value {
    let today = edge_agent::egress::MeterDay::read(data_dir);
    match service.egress() {
        Ok(gate) => serde_json::json!({
            "allowed": gate.policy().allowances().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "bytesPerDayCap": gate.meter().cap(),
            "today": today,
            "todayTotal": today.total(),
        }),
        Err(e) => serde_json::json!({ "error": e, "today": today, "todayTotal": today.total() }),
    }
}

fn print_egress(view: &serde_json::Value) {
    if let Some(error) = view["error"].as_str() {
        println!("egress:      unusable settings: {error}");
    }
    let allowed: Vec<&str> = view["allowed"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    println!(
        "egress:      public internet on ports 80, 443{}",
        if allowed.is_empty() { String::new() } else { format!("; also {}", allowed.join(", ")) }
    );
    let cap = view["bytesPerDayCap"].as_u64().map_or("no daily cap".to_owned(), |c| format!("cap {c} bytes/day"));
    println!(
        "egress today: {} bytes ({cap}; UTC day {})",
        view["todayTotal"],
        view["today"]["day"].as_str().unwrap_or("-")
    );
    if let Some(by) = view["today"]["byCapability"].as_object() {
        for (capability, traffic) in by {
            println!("  {capability}: {} in, {} out", traffic["in"], traffic["out"]);
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginView<'a> {
    logged_in: bool,
    keychain_backend: Option<&'a str>,
    hub_url: Option<&'a str>,
    agent_id: Option<&'a str>,
    creator_id: Option<&'a str>,
    root_fingerprint: Option<&'a str>,
    expiries: &'a [edge_agent::state::Expiry],
}

impl<'a> From<&'a AgentSnapshot> for LoginView<'a> {
    fn from(s: &'a AgentSnapshot) -> Self {
        LoginView {
            logged_in: s.logged_in,
            keychain_backend: s.keychain_backend.as_deref(),
            hub_url: s.hub_url.as_deref(),
            agent_id: s.agent_id.as_deref(),
            creator_id: s.creator_id.as_deref(),
            root_fingerprint: s.root_fingerprint.as_deref(),
            expiries: &s.expiries,
        }
    }
}

fn print_state(file: &StateFile, alive: bool) {
    let s = &file.snapshot;
    if alive {
        println!("agent:       running (pid {}, updated {})", file.pid, file.updated_at);
        println!(
            "connection:  {}",
            serde_json::to_value(s.connection).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        );
        match (&s.paused, &s.paused_until) {
            (true, Some(until)) => println!("paused:      until {until}"),
            (true, None) => println!("paused:      yes, until resumed"),
            (false, _) => println!("paused:      no"),
        }
        println!("busy:        {} job(s)", s.busy);
        let streams = if s.tunnel.streams > 0 { format!(", {} stream(s)", s.tunnel.streams) } else { String::new() };
        println!("tunnel:      {}{streams}", if s.tunnel.state.is_empty() { "off" } else { &s.tunnel.state });
    } else {
        println!("agent:       not running (last seen pid {} at {})", file.pid, file.updated_at);
    }
    if let Some(error) = &s.last_error {
        println!("last error:  {error}");
    }
    if !s.recent_jobs.is_empty() {
        println!("recent jobs:");
        for job in &s.recent_jobs {
            let status =
                serde_json::to_value(job.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let detail = match (&job.error_code, &job.message) {
                (Some(code), Some(message)) => format!(" {code}: {message}"),
                (Some(code), None) => format!(" {code}"),
                _ => String::new(),
            };
            println!("  {} {} {} {}{}", job.started_at, job.id, job.job_type, status, detail);
        }
    }
}

/// The browser part of both `edge-agent status` and `edge-agent browser status`, built one
/// way so the two cannot disagree. The profile's browser state on disk, read now by this
/// process (the browser found, the circuit breaker in guard.json, the sites that need a
/// login), is current even when the change came from another process, such as a login made
/// with `edge-agent browser login` while the agent runs; only whether the running agent's
/// keychain gave it a session key is known to that agent alone, so it comes from state.json.
fn browser_view(service: &AgentService, state: Option<&StateFile>) -> BrowserStatus {
    let mut view = service.browser_status();
    if let Some(live) = state.filter(|f| f.writer_alive()).and_then(|f| f.snapshot.browser.as_ref()) {
        view.session_volatile = live.session_volatile;
    }
    view
}

fn print_browser(browser: &BrowserStatus) {
    match browser.circuit_open_until_ms {
        Some(until) => println!(
            "browser:     paused by the circuit breaker ({}) until {}",
            browser.circuit_reason.as_deref().unwrap_or("RATE_LIMITED"),
            edge_browser::local_rfc3339(until)
        ),
        None => println!("browser:     {}", browser.executable.as_deref().unwrap_or("not found")),
    }
    if browser.login_required.is_empty() {
        println!("login needed: none");
    } else {
        println!("login needed: {} (edge-agent browser login --site NAME)", browser.login_required.join(", "));
    }
    if browser.session_volatile {
        println!("browser sessions: volatile (no keychain key)");
    }
}
