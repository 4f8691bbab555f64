//! `edge-hub release …`: the operator's commands for agent releases, which live in the
//! bundle repository (`edge-hub bundle keys init` first) as one signed role per channel. It
//! owns argument shapes and what goes to stdout (one JSON object per command); it must never
//! print a key.

use crate::bundle_cli::open_repo;
use clap::{Args, Subcommand};
use edge_bundle::release::{ReleaseChange, ReleaseEntry, ReleaseRequest};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// Bundle state directory (the repository is in repo/) [default: bundles/ beside the
    /// SQLite file].
    #[arg(long, env = "EDGE_HUB_BUNDLE_DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// The same storage as `edge-hub serve --storage` (see `edge-hub bundle --help`).
    #[arg(long, env = "EDGE_HUB_STORAGE")]
    pub storage: Option<String>,
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

/// Which published release a command changes.
#[derive(Args, Debug)]
pub struct Which {
    #[arg(long)]
    pub version: String,
    /// linux, windows or macos (the headless agent), linux-deb or linux-rpm (the tray's package).
    #[arg(long)]
    pub platform: String,
    /// x86_64, aarch64…
    #[arg(long)]
    pub arch: String,
    #[arg(long, default_value = "stable")]
    pub channel: String,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Store and sign an agent binary (or the tray's deb or rpm) as a release; agents of the
    /// channel on that platform and architecture install it once the rollout reaches them.
    Publish {
        /// The agent binary, or the tray's package for `--platform linux-deb|linux-rpm`.
        file: PathBuf,
        #[command(flatten)]
        which: Which,
        /// Share of agents offered it (0–100), chosen by a hash of each agent's id; raise it
        /// later with `release rollout`.
        #[arg(long, default_value_t = 100)]
        rollout: u8,
        /// What changed, shown to the person before they restart.
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Stop offering a release (agents already on it keep it; a newer one can be offered).
    Pause(Which),
    /// Offer a paused release again.
    Resume(Which),
    /// Change the share of agents a release is offered to.
    Rollout {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        percent: u8,
    },
    /// Every signed release, newest first per channel, platform and architecture.
    List {
        #[arg(long)]
        channel: Option<String>,
    },
}

fn entry_json(entry: &ReleaseEntry) -> serde_json::Value {
    json!({
        "target": entry.target_name,
        "file": entry.target_file,
        "length": entry.length,
        "channel": entry.meta.channel,
        "platform": entry.meta.platform,
        "arch": entry.meta.arch,
        "version": entry.meta.version,
        "rolloutPercent": entry.meta.rollout_percent,
        "paused": entry.meta.paused,
        "notes": entry.meta.notes,
        "publishedAt": entry.meta.published_at,
        "sha256": entry.meta.sha256,
        "changed": entry.changed,
    })
}

/// Runs one command; returns the JSON to print.
pub fn run(args: ReleaseArgs, database_url: &str) -> anyhow::Result<serde_json::Value> {
    let repo = open_repo(args.bundle_dir, args.storage.as_deref(), database_url)?;
    let change = |which: Which, change: ReleaseChange| -> anyhow::Result<serde_json::Value> {
        let entry = repo.change_release(&which.channel, &which.platform, &which.arch, &which.version, change)?;
        Ok(entry_json(&entry))
    };
    Ok(match args.command {
        ReleaseCommand::Publish { file, which, rollout, notes } => {
            entry_json(&repo.publish_release(&ReleaseRequest {
                channel: which.channel,
                platform: which.platform,
                arch: which.arch,
                version: which.version,
                notes,
                rollout_percent: rollout,
                source: file,
            })?)
        }
        ReleaseCommand::Pause(which) => change(which, ReleaseChange::Pause)?,
        ReleaseCommand::Resume(which) => change(which, ReleaseChange::Resume)?,
        ReleaseCommand::Rollout { which, percent } => change(which, ReleaseChange::Rollout(percent))?,
        ReleaseCommand::List { channel } => {
            let releases = repo.releases(channel.as_deref())?;
            json!({ "releases": releases.iter().map(entry_json).collect::<Vec<_>>() })
        }
    })
}
