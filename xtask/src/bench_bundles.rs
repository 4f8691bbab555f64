//! `cargo xtask bench bundles`: the "Bundles" numbers in docs/benchmarks.md. Release builds,
//! a real `edge-hub serve` on loopback serving bundles published with `edge-hub bundle
//! publish`, and the agent's own code path (`edge-agent bench-bundle`, hidden: trust root,
//! TUF refresh, single-pass download + SHA-256, safe unpack) in a fresh process per run so
//! its peak RSS (`VmHWM`) belongs to that run alone.
//!
//! Measures: download + verify + unpack of a 100 MB and a 500 MB bundle against
//! `sha256sum` of the same file in the same run; peak RSS at both sizes; metadata refresh
//! with 1,000 targets in one tenant. Content is pseudo-random (incompressible), so the zip
//! is as large as its files. Everything lives in one scratch dir (about 4× the largest
//! bundle at its peak, printed) that is removed at the end.

use crate::bench::release_bins;
use anyhow::{bail, Context, Result};
use edge_e2e::{scratch_dir, Binaries, Hub};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const MB: u64 = 1_000_000;
/// `EDGE_BENCH_QUICK=1` shrinks the run for a smoke test.
fn sizes() -> (Vec<u64>, usize) {
    if std::env::var_os("EDGE_BENCH_QUICK").is_some() {
        (vec![20 * MB, 60 * MB], 50)
    } else {
        (vec![100 * MB, 500 * MB], 1_000)
    }
}

pub fn run() -> Result<()> {
    let bins = release_bins()?;
    let (big_sizes, many) = sizes();
    let dir = scratch_dir("bench-bundles")?;
    let hub = Hub::start(&bins, &dir.path().join("hub"), &[], &[])?;
    hub.bundle_cli(&["keys", "init", "--root-dir", path_str(&dir.path().join("root-keys"))?])?;

    let mut rows = Vec::new();
    let mut peak_disk = 0;
    for &size in &big_sizes {
        let name = format!("big{}", size / MB);
        let src = dir.path().join(&name);
        write_random_bundle(&src, size)?;
        let started = Instant::now();
        let published = publish(&hub, "bench", &name, "1.0.0", &src)?;
        eprintln!("published {name} ({} bytes) in {:.1} s", published.1, started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&src)?;
        let zip = published.0;

        let agent_dir = dir.path().join(format!("agent-{name}"));
        let report = bench_bundle(&bins, &hub, &agent_dir, "bench", &name)?;
        peak_disk = peak_disk.max(du_bytes(dir.path()));
        // Same file, same page cache state as the hub just served it from.
        let sha_ms = sha256sum_ms(&zip)?;
        let bytes = report["bytes"].as_f64().context("bytes")?;
        let download_ms = report["downloadMs"].as_f64().context("downloadMs")?;
        let unpack_ms = report["unpackMs"].as_f64().context("unpackMs")?;
        let mbps = |ms: f64| bytes / 1e6 / (ms / 1000.0);
        let rss_mb = report["peakRssKib"].as_f64().unwrap_or(0.0) / 1024.0;
        rows.push(format!(
            "| {} MB bundle: download + SHA-256 (single pass, to disk) | {:.0} ms, {:.0} MB/s = {:.2}× `sha256sum` ({:.0} MB/s, {:.0} ms) | ≥ 0.8× |",
            size / MB,
            download_ms,
            mbps(download_ms),
            mbps(download_ms) / mbps(sha_ms),
            mbps(sha_ms),
            sha_ms
        ));
        rows.push(format!(
            "| {} MB bundle: download + verify + unpack (whole `prepare`, incl. TUF refresh) | {:.0} ms, {:.0} MB/s = {:.2}× `sha256sum` (unpack alone {:.0} ms) | — |",
            size / MB,
            report["prepareMs"].as_f64().unwrap_or(0.0),
            mbps(report["prepareMs"].as_f64().unwrap_or(f64::NAN)),
            mbps(report["prepareMs"].as_f64().unwrap_or(f64::NAN)) / mbps(sha_ms),
            unpack_ms
        ));
        rows.push(format!(
            "| {} MB bundle: peak RSS of the agent process (`VmHWM`) | {rss_mb:.1} MB | independent of size |",
            size / MB
        ));
        std::fs::remove_dir_all(&agent_dir)?;
    }

    // 1,000 targets in one tenant: each publish re-signs the tenant role, so this also
    // shows what a publish costs at that size.
    let src = dir.path().join("tiny");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("main.sh"), "echo tiny\n")?;
    let started = Instant::now();
    for i in 0..many {
        std::fs::write(src.join("version.txt"), i.to_string())?;
        publish(&hub, "many", "tiny", &format!("1.0.{i}"), &src)?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let role = std::fs::metadata(latest_role(&dir.path().join("hub/bundles/repo/metadata"), "many")?)?.len();
    let report = bench_bundle(&bins, &hub, &dir.path().join("agent-many"), "many", "tiny")?;
    rows.push(format!(
        "| metadata refresh, {many} targets in the tenant (role file {:.0} KB): cold / warm | {:.0} ms / {:.0} ms | — |",
        role as f64 / 1000.0,
        report["refreshColdMs"].as_f64().unwrap_or(f64::NAN),
        report["refreshWarmMs"].as_f64().unwrap_or(f64::NAN),
    ));
    rows.push(format!(
        "| `edge-hub bundle publish` of a small bundle, mean over {many} into a growing tenant | {:.0} ms | — |",
        publish_secs * 1000.0 / many as f64
    ));
    rows.push(format!("| peak disk use of the run (scratch dir) | {:.0} MB | — |", peak_disk as f64 / 1e6));

    println!("\n| measurement | result | target |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    drop(hub);
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a non-UTF-8 scratch path")
}

/// Publishes `src` and returns the target file on the hub's disk and its length.
fn publish(hub: &Hub, tenant: &str, name: &str, version: &str, src: &Path) -> Result<(PathBuf, u64)> {
    let out = hub.publish_shell_dir(tenant, name, version, src)?;
    let file = out["file"].as_str().context("publish prints the target file")?;
    let length = out["length"].as_u64().context("publish prints the length")?;
    let dir = Path::new(&hub.database_url.trim_start_matches("sqlite://")).parent().context("hub dir")?.to_path_buf();
    let path = dir.join("bundles/repo/targets").join(file);
    if !path.is_file() {
        bail!("published target not at {}", path.display());
    }
    Ok((path, length))
}

/// `size` bytes of xorshift output in 25 MB files plus a `main.sh`.
fn write_random_bundle(dir: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("main.sh"), "echo big\n")?;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ size;
    let mut left = size;
    let mut n = 0;
    let mut buffer = vec![0u8; 1 << 20];
    while left > 0 {
        let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("data-{n:03}.bin")))?);
        let mut in_file = left.min(25 * MB);
        left -= in_file;
        while in_file > 0 {
            for chunk in buffer.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            let take = in_file.min(buffer.len() as u64) as usize;
            file.write_all(&buffer[..take])?;
            in_file -= take as u64;
        }
        file.flush()?;
        n += 1;
    }
    Ok(())
}

/// One `edge-agent bench-bundle` in a fresh data dir; its JSON report.
fn bench_bundle(bins: &Binaries, hub: &Hub, data_dir: &Path, tenant: &str, bundle: &str) -> Result<Value> {
    let out = Command::new(&bins.agent)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["bench-bundle", "--hub", &hub.url, "--tenant", tenant, "--bundle", bundle])
        // The repository serves a tenant's bundles only to its agents and to API keys.
        .env("EDGE_BENCH_API_KEY", hub.api_key()?)
        .output()
        .context("running edge-agent bench-bundle")?;
    if !out.status.success() {
        bail!("edge-agent bench-bundle failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: Value = serde_json::from_slice(&out.stdout).context("bench-bundle prints one JSON object")?;
    eprintln!("bench-bundle {tenant}/{bundle}: {report}");
    Ok(report)
}

/// Wall time of `sha256sum file`, best of 3.
fn sha256sum_ms(file: &Path) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        let status = Command::new("sha256sum").arg(file).stdout(std::process::Stdio::null()).status()?;
        if !status.success() {
            bail!("sha256sum failed");
        }
        best = best.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(best)
}

fn du_bytes(dir: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(dir).output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// The newest `<N>.<role>.json` in the metadata dir.
fn latest_role(metadata: &Path, role: &str) -> Result<PathBuf> {
    let suffix = format!(".{role}.json");
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(metadata)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if let Some(version) = name.strip_suffix(&suffix).and_then(|v| v.parse::<u64>().ok()) {
            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, path));
            }
        }
    }
    best.map(|(_, p)| p).context("no tenant role file")
}
