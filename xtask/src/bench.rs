//! `cargo xtask bench`: measurements recorded in docs/benchmarks.md.

use anyhow::{bail, Result};

pub fn run(_args: &[&str]) -> Result<()> {
    bail!("not written yet")
}
