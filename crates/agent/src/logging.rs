//! Log setup shared by the CLI and the tray: JSON lines in `<data dir>/logs/` (daily
//! rolling) and, for the CLI, human-readable lines on stderr.
//!
//! It owns the subscriber and filter. It must never log a secret: that is guaranteed by the
//! types (`Secret<T>` prints `***`), not by a filter here.

use crate::error::AgentError;
use std::path::{Path, PathBuf};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Environment variable with a `tracing` filter (`info`, `edge_agent=debug`, ...).
pub const LOG_FILTER_ENV: &str = "EDGE_AGENT_LOG";
pub const LOG_FILE_PREFIX: &str = "edge-agent.log";

/// Lines waiting for the file writer thread. tracing-appender's default (128,000) is a
/// channel whose slots are allocated and touched up front: 4 MB of a resident set the
/// agent keeps small on a person's computer. A burst larger than this while the writer is
/// stalled loses lines, as the default did, just sooner.
const LOG_BUFFER_LINES: usize = 8_192;

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Log files go to `<data_dir>/logs/`.
    pub data_dir: PathBuf,
    /// Human-readable lines on stderr (the CLI); the tray has no terminal.
    pub stderr: bool,
    /// Used when `EDGE_AGENT_LOG` is not set, e.g. `info`.
    pub default_filter: String,
}

pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

/// Installs the global subscriber. Keep the returned guard alive for the life of the
/// process: dropping it flushes and stops the file writer.
pub fn init(options: LogOptions) -> Result<WorkerGuard, AgentError> {
    let directory = log_dir(&options.data_dir);
    std::fs::create_dir_all(&directory)
        .map_err(|e| AgentError::io(format!("cannot create the log directory {}", directory.display()), e))?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .max_log_files(14)
        .build(&directory)
        .map_err(|e| AgentError::Internal(format!("cannot open log files in {}: {e}", directory.display())))?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .finish(appender);

    let filter = || EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(&options.default_filter));
    let file_layer = fmt::layer().json().with_writer(writer).with_filter(filter());
    let stderr_layer =
        options.stderr.then(|| fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(filter()));
    tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .map_err(|e| AgentError::Internal(format!("logging is already initialised: {e}")))?;
    Ok(guard)
}
