//! `cargo xtask bench egress`: what the egress gate costs an `http_request`, measured in one
//! run against the same request without it. The release agent's hidden `bench-egress`
//! command runs both, interleaved, against a local site: through the gate (the runner the
//! agent uses, the site granted as a person would) and through one plain reqwest client
//! (what the agent did before the gate; a bench-harness baseline, not a switch in the agent).

use crate::util::{cargo, checked, root};
use anyhow::{bail, Context, Result};
use edge_e2e::scratch_dir;
use edge_e2e::site::Site;
use std::process::Command;

const RUNS: &str = "2000";

pub fn run() -> Result<()> {
    // The agent as it ships (the `release-agent` profile, as `bench agent` measures it).
    checked(cargo().args(["build", "--profile", "release-agent", "--quiet", "-p", "edge-agent"]))?;
    let agent = root().join("target/release-agent/edge-agent");
    let site = Site::start()?;
    let dir = scratch_dir("bench-egress")?;
    let authority = site.base_url.trim_start_matches("http://").to_owned();
    let output = Command::new(&agent)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["bench-egress", "--url", &site.url("/hello"), "--allow", &authority, "--runs", RUNS])
        .output()
        .context("running edge-agent bench-egress")?;
    if !output.status.success() {
        bail!("edge-agent bench-egress failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("bench-egress printed {:?}", String::from_utf8_lossy(&output.stdout)))?;
    let number = |key: &str| report[key].as_u64().with_context(|| format!("no {key} in {report}"));
    let cost = |gated: u64, direct: u64| (gated as f64 / direct.max(1) as f64 - 1.0) * 100.0;
    let (gp50, gp99, dp50, dp99) =
        (number("gatedP50Us")?, number("gatedP99Us")?, number("directP50Us")?, number("directP99Us")?);
    println!("\n| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| `http_request` p50, gate vs direct ({RUNS} GETs over loopback, interleaved) | {gp50} µs vs {dp50} µs ({:+.1} %) | ≤ 5 % |",
        cost(gp50, dp50)
    );
    println!(
        "| `http_request` p99, gate vs direct | {gp99} µs vs {dp99} µs ({:+.1} %) | ≤ 5 % |",
        cost(gp99, dp99)
    );
    Ok(())
}
