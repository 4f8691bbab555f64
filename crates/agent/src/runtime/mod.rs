//! The runtime launcher: runs one process tree for a bundle (or its setup, like a venv),
//! with a scrubbed environment, its own scratch directory, captured and streamed output,
//! masked secrets, and a timeout/cancel ladder that ends the whole tree.
//!
//! It owns process lifetime. Platform code (process groups, subreaper and `/proc` sweeps
//! on Linux, Job Objects on Windows) lives behind the one `platform` module. It must never
//! run anything elevated (it never asks for more rights than the agent has, and on Linux sets
//! `no_new_privs` so setuid binaries cannot gain any), never pass the agent's own
//! environment through except the allowlist, never let a secret value reach a log, a frame
//! or a report unmasked, and never return while a process of the run is still alive.

#[cfg_attr(unix, path = "unix.rs")]
#[cfg_attr(windows, path = "windows.rs")]
mod platform;

use crate::secret::Secret;
use edge_protocol::LogStream;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub use platform::prepare_agent_process;

/// Timings and caps of the launcher. Tests shorten the ladder.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// After the interrupt (SIGINT / CTRL_BREAK), how long the run gets to wind down.
    pub interrupt_grace: Duration,
    /// After terminate (SIGTERM), how long before the whole tree is killed.
    pub terminate_grace: Duration,
    /// Bytes kept per stream for the report; more is dropped and marked.
    pub output_cap: usize,
    /// Output chunks go to the hub at least this often while a run prints.
    pub log_interval: Duration,
    /// The Python used to create venvs.
    pub python: PathBuf,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            interrupt_grace: Duration::from_millis(7_500),
            terminate_grace: Duration::from_millis(2_500),
            output_cap: 1024 * 1024,
            log_interval: Duration::from_millis(250),
            python: PathBuf::from(if cfg!(windows) { "python" } else { "python3" }),
        }
    }
}

impl RuntimeSettings {
    /// `EDGE_AGENT_KILL_GRACE_MS=interrupt,terminate` overrides the ladder (tests, slow machines).
    pub fn from_env() -> RuntimeSettings {
        let mut settings = RuntimeSettings::default();
        if let Ok(value) = std::env::var("EDGE_AGENT_KILL_GRACE_MS") {
            let parts: Vec<u64> = value.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            if let [interrupt, terminate] = parts[..] {
                settings.interrupt_grace = Duration::from_millis(interrupt);
                settings.terminate_grace = Duration::from_millis(terminate);
            }
        }
        settings
    }
}

/// One process to run.
#[derive(Debug)]
pub struct RunSpec {
    pub run_id: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    /// The complete environment of the child (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Values masked as `***` in every byte of output kept or sent.
    pub secrets: Vec<Secret<String>>,
    pub timeout: Duration,
    /// Local log of the run (appended).
    pub log_file: PathBuf,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited,
    TimedOut,
    Cancelled,
}

/// Captured output of one stream.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub text: String,
    pub truncated: bool,
    pub dropped_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub ended: Ended,
    /// `None` when killed by a signal.
    pub exit_code: Option<i32>,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(String),
}

/// Receives output chunks (already masked) for `job_log` frames.
pub type ChunkSink = Arc<dyn Fn(LogStream, u64, String) + Send + Sync>;

/// The environment variables passed through from the agent, by name.
pub fn allowlisted_env() -> Vec<(String, String)> {
    const UNIX: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];
    const WINDOWS: &[&str] = &[
        "PATH",
        "PATHEXT",
        "SYSTEMROOT",
        "SYSTEMDRIVE",
        "WINDIR",
        "COMSPEC",
        "USERPROFILE",
        "USERNAME",
        "APPDATA",
        "LOCALAPPDATA",
        "PROGRAMDATA",
        "PROGRAMFILES",
        "NUMBER_OF_PROCESSORS",
        "PROCESSOR_ARCHITECTURE",
    ];
    let names = if cfg!(windows) { WINDOWS } else { UNIX };
    names.iter().filter_map(|name| std::env::var(name).ok().map(|value| (name.to_string(), value))).collect()
}

/// Replaces secret values with `***`, also when a value is split across chunks: the last
/// `longest - 1` bytes are held back until more output (or the end) shows what they are.
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    keep: usize,
    carry: Vec<u8>,
}

impl Masker {
    pub fn new(secrets: &[Secret<String>]) -> Masker {
        let secrets: Vec<Vec<u8>> =
            secrets.iter().map(|s| s.expose().as_bytes().to_vec()).filter(|s| !s.is_empty()).collect();
        let keep = secrets.iter().map(Vec::len).max().unwrap_or(1).saturating_sub(1);
        Masker { secrets, keep, carry: Vec::new() }
    }

    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.carry);
        buffer.extend_from_slice(data);
        let masked = self.mask(&buffer);
        let mut split = masked.len().saturating_sub(self.keep);
        // Do not cut a UTF-8 character in two.
        while split > 0 && split < masked.len() && (masked[split] & 0b1100_0000) == 0b1000_0000 {
            split -= 1;
        }
        self.carry = masked[split..].to_vec();
        masked[..split].to_vec()
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.mask(&rest)
    }

    fn mask(&self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        for secret in &self.secrets {
            let mut result = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(secret) {
                    result.extend_from_slice(b"***");
                    i += secret.len();
                } else {
                    result.push(out[i]);
                    i += 1;
                }
            }
            out = result;
        }
        out
    }
}

struct StreamState {
    masker: Masker,
    captured: Vec<u8>,
    dropped: u64,
    pending: Vec<u8>,
}

struct Shared {
    streams: [Mutex<StreamState>; 2],
    seq: Mutex<u64>,
    cap: usize,
}

impl Shared {
    fn index(stream: LogStream) -> usize {
        match stream {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        }
    }

    fn accept(&self, stream: LogStream, masked: &[u8]) {
        let Ok(mut state) = self.streams[Self::index(stream)].lock() else { return };
        let room = self.cap.saturating_sub(state.captured.len());
        let take = masked.len().min(room);
        state.captured.extend_from_slice(&masked[..take]);
        state.pending.extend_from_slice(&masked[..take]);
        state.dropped += (masked.len() - take) as u64;
    }

    /// Sends what is pending as chunks of at most 64 KiB.
    fn flush(&self, sink: &Option<ChunkSink>) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = match self.streams[Self::index(stream)].lock() {
                Ok(mut state) => std::mem::take(&mut state.pending),
                Err(_) => continue,
            };
            let Some(sink) = sink else { continue };
            for chunk in pending.chunks(64 * 1024) {
                let seq = match self.seq.lock() {
                    Ok(mut seq) => {
                        let current = *seq;
                        *seq += 1;
                        current
                    }
                    Err(_) => 0,
                };
                sink(stream, seq, String::from_utf8_lossy(chunk).into_owned());
            }
        }
    }

    fn captured(&self, stream: LogStream) -> Captured {
        let Ok(state) = self.streams[Self::index(stream)].lock() else { return Captured::default() };
        let mut text = String::from_utf8_lossy(&state.captured).into_owned();
        if state.dropped > 0 {
            text.push_str(&format!("\n[… output truncated: {} more bytes dropped]\n", state.dropped));
        }
        Captured { text, truncated: state.dropped > 0, dropped_bytes: state.dropped }
    }
}

/// Runs `spec` to its end (exit, timeout or cancel), then makes sure nothing of its tree
/// is left.
pub async fn run_process(
    spec: RunSpec,
    settings: &RuntimeSettings,
    cancel: CancellationToken,
    sink: Option<ChunkSink>,
) -> Result<RunOutcome, RuntimeError> {
    let started = Instant::now();
    if let Some(parent) = spec.log_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let log = Arc::new(tokio::sync::Mutex::new(
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .await
            .map_err(|e| RuntimeError::Io(format!("cannot open {}: {e}", spec.log_file.display())))?,
    ));
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(platform::RUN_MARKER, &spec.run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    platform::configure(&mut command);
    // Until the tree is registered, a concurrent run's sweep must not scan (see spawn_guard).
    let spawning = platform::spawn_guard();
    let mut child = command
        .spawn()
        .map_err(|source| RuntimeError::Spawn { program: spec.program.display().to_string(), source })?;
    let tree = platform::Tree::attach(&child, &spec.run_id);
    drop(spawning);
    let shared = Arc::new(Shared {
        streams: [
            Mutex::new(StreamState {
                masker: Masker::new(&spec.secrets),
                captured: Vec::new(),
                dropped: 0,
                pending: Vec::new(),
            }),
            Mutex::new(StreamState {
                masker: Masker::new(&spec.secrets),
                captured: Vec::new(),
                dropped: 0,
                pending: Vec::new(),
            }),
        ],
        seq: Mutex::new(0),
        cap: settings.output_cap,
    });
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_stream(out, LogStream::Stdout, Arc::clone(&shared), Arc::clone(&log))));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_stream(err, LogStream::Stderr, Arc::clone(&shared), Arc::clone(&log))));
    }
    let flusher = {
        let shared = Arc::clone(&shared);
        let sink = sink.clone();
        let interval = settings.log_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                shared.flush(&sink);
            }
        })
    };

    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let (ended, status) = tokio::select! {
        status = child.wait() => (Ended::Exited, status.ok()),
        _ = &mut deadline => (Ended::TimedOut, None),
        _ = cancel.cancelled() => (Ended::Cancelled, None),
    };
    let status = match status {
        Some(status) => {
            // The main process is gone; anything it left behind (daemons) goes too.
            tree.sweep(settings.terminate_grace.min(Duration::from_secs(1))).await;
            Some(status)
        }
        None => tree.ladder(&mut child, settings.interrupt_grace, settings.terminate_grace).await,
    };
    // The tree is gone, so the pipes are closed; a reader that still waits is stuck on a
    // descriptor some unknown process holds, and is abandoned.
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let rest = match shared.streams[Shared::index(stream)].lock() {
            Ok(mut state) => state.masker.finish(),
            Err(_) => Vec::new(),
        };
        shared.accept(stream, &rest);
        let mut log = log.lock().await;
        let _ = log.write_all(&rest).await;
    }
    flusher.abort();
    shared.flush(&sink);
    let _ = log.lock().await.flush().await;
    Ok(RunOutcome {
        ended,
        exit_code: status.and_then(|s| s.code()),
        stdout: shared.captured(LogStream::Stdout),
        stderr: shared.captured(LogStream::Stderr),
        duration: started.elapsed(),
    })
}

async fn read_stream(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: LogStream,
    shared: Arc<Shared>,
    log: Arc<tokio::sync::Mutex<tokio::fs::File>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let masked = match shared.streams[Shared::index(stream)].lock() {
            Ok(mut state) => state.masker.push(&buffer[..n]),
            Err(_) => return,
        };
        shared.accept(stream, &masked);
        let _ = log.lock().await.write_all(&masked).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_split_across_chunks_are_masked() {
        let mut masker = Masker::new(&[Secret::new("hunter2".to_owned())]);
        let mut out = masker.push(b"password=hun");
        out.extend(masker.push(b"ter2 and again hunter2!"));
        out.extend(masker.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "password=*** and again ***!");
    }
}
