//! `edge-hub bundle …`: the operator's commands for the trusted-bundle repository. It owns
//! argument shapes and what goes to stdout (one JSON object per command, so scripts can read
//! it); it must never print or copy a private key, and never read a root key from anywhere
//! but the `--root-dir` the operator names.

use crate::blobs::{Blobs, StorageConfig};
use crate::bundles::default_bundle_dir;
use clap::{Args, Subcommand};
use edge_bundle::repo::{PublishRequest, Repo, RepoOptions};
use edge_bundle::{CpuArch, Runtime};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Bundle state directory (repository in repo/, run reports in runs/)
    /// [default: bundles/ beside the SQLite file].
    #[arg(long, env = "EDGE_HUB_BUNDLE_DIR")]
    pub bundle_dir: Option<PathBuf>,
    /// The same storage as `edge-hub serve --storage`: leave out for the bundle directory,
    /// or s3://BUCKET/PREFIX (credentials from the AWS_* environment).
    #[arg(long, env = "EDGE_HUB_STORAGE")]
    pub storage: Option<String>,
    #[command(subcommand)]
    pub command: BundleCommand,
}

/// The repository the hub serves: in `bundle_dir` (or its default) on this machine, or in
/// the object store `storage` names. Called from a blocking thread inside the runtime.
pub fn open_repo(bundle_dir: Option<PathBuf>, storage: Option<&str>, database_url: &str) -> anyhow::Result<Repo> {
    let dir = bundle_dir.filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| default_bundle_dir(database_url));
    let config = StorageConfig::parse(storage, dir)?;
    let blobs = Blobs::open(&config)?;
    Ok(Repo::with_store(blobs.repo_store(), RepoOptions::default()))
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Root and online keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Root metadata.
    #[command(subcommand)]
    Root(RootCommand),
    /// Pack (a directory) or take (a .zip), record and sign one bundle version.
    Publish {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// shell, python, exec, browser or ahk.
        #[arg(long)]
        runtime: String,
        /// x86_64, aarch64… or any [default: any; exec bundles must name one].
        #[arg(long, default_value = "any")]
        cpu_arch: String,
        /// Path inside the bundle [default: main.sh, main.py, main, flow.json or main.ahk].
        #[arg(long)]
        entrypoint: Option<String>,
        /// A directory or a .zip file.
        source: PathBuf,
    },
    /// List a tenant's signed bundle versions.
    List {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create root keys in --root-dir (move them offline afterwards) and the online
    /// timestamp, snapshot and targets keys in the repository; sign version 1.
    Init {
        #[arg(long)]
        root_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root signatures needed to change root.
        #[arg(long, default_value_t = 1)]
        threshold: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum RootCommand {
    /// Sign root version N+1 with the current root keys in --root-dir; with
    /// --new-root-dir, new root keys are created there and take over.
    Rotate {
        #[arg(long)]
        root_dir: PathBuf,
        #[arg(long)]
        new_root_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        keys: usize,
        #[arg(long, default_value_t = 1)]
        threshold: u64,
    },
    /// Print the current root's version and fingerprint.
    Fingerprint,
}

/// Runs one command; returns the JSON to print.
pub fn run(args: BundleArgs, database_url: &str) -> anyhow::Result<serde_json::Value> {
    let repo = open_repo(args.bundle_dir, args.storage.as_deref(), database_url)?;
    Ok(match args.command {
        BundleCommand::Keys(KeysCommand::Init { root_dir, root_keys, threshold }) => {
            let report = repo.init(&root_dir, root_keys, threshold)?;
            json!({
                "repo": repo.location(),
                "rootDir": root_dir,
                "rootKeyIds": report.root_keyids,
                "threshold": report.threshold,
                "rootFingerprint": report.root_fingerprint,
            })
        }
        BundleCommand::Root(RootCommand::Rotate { root_dir, new_root_dir, keys, threshold }) => {
            let report = repo.rotate_root(&root_dir, new_root_dir.as_deref(), keys, threshold)?;
            json!({ "rootKeyIds": report.root_keyids, "threshold": report.threshold, "rootFingerprint": report.root_fingerprint })
        }
        BundleCommand::Root(RootCommand::Fingerprint) => {
            let bytes = repo.root_json()?;
            let fingerprint =
                edge_bundle::verify::fingerprint_of(&bytes).map_err(|e| anyhow::anyhow!(e.to_string()))?;
            let version = serde_json::from_slice::<serde_json::Value>(&bytes)?["signed"]["version"].clone();
            json!({ "version": version, "rootFingerprint": fingerprint })
        }
        BundleCommand::Publish { tenant, name, version, runtime, cpu_arch, entrypoint, source } => {
            let runtime: Runtime = runtime.parse().map_err(anyhow::Error::msg)?;
            let cpu_arch = CpuArch::parse(&cpu_arch).map_err(anyhow::Error::msg)?;
            let published =
                repo.publish(&PublishRequest { tenant, bundle: name, version, runtime, cpu_arch, entrypoint, source })?;
            json!({
                "target": published.target_name,
                "file": published.target_file,
                "length": published.length,
                "sha256": published.meta.sha256,
                "runtime": published.meta.runtime,
                "cpuArch": published.meta.cpu_arch,
                "entrypoint": published.meta.entrypoint,
                "changed": published.changed,
            })
        }
        BundleCommand::List { tenant } => {
            let targets = repo.tenant_targets(&tenant)?;
            json!({ "tenant": tenant, "bundles": targets.into_iter().map(|(name, length, meta)| json!({
                "target": name, "length": length, "version": meta.version, "runtime": meta.runtime,
                "cpuArch": meta.cpu_arch, "sha256": meta.sha256,
            })).collect::<Vec<_>>() })
        }
    })
}
