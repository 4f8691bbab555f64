//! `cargo xtask <task>`: the project's two front doors (`demo`, `test`) and its benchmarks.
//! Everything a fresh Debian machine needs is installed from here, so CI and a new
//! developer run exactly the same steps.

mod bench;
mod bench_browser;
mod bench_bundles;
mod bench_egress;
mod bench_hub;
mod bench_tunnel;
mod bench_updates;
mod bench_vm;
mod debroot;
mod demo;
mod deps;
mod docs;
mod fresh_check;
mod hub_image;
mod release;
mod test;
mod util;

use anyhow::{bail, Result};

const USAGE: &str =
    "usage: cargo xtask <demo [--verbose] | test [--skip-install] | fresh-check | release --dry-run [--debug] | docs | bench [agent|tray|hub|hub-guest [N]|bundles|browser|egress|tunnel [latency|rounds]|updates] [--skip-install]>

  demo         hub on a temporary SQLite file + a headless agent + real jobs, end to end;
               one line per job and a closing table (--verbose: each job's full record)
  test         install what is missing (apt, npm), then run every test (fresh-check included)
  fresh-check  run the README's first command in a minimal Debian root holding only the
               README's prerequisites (root; debootstrap)
  release      --dry-run [--debug]: the tray's deb and rpm from the Tauri bundler, checked,
               installed into a minimal Debian root, started there and removed (root)
  docs         the install guides (English, French) and the hub operations guide as HTML
               and PDF in target/docs/ (Chromium headless prints the PDFs)
  bench        install what is missing, then measure the numbers recorded in docs/benchmarks.md";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run(&rest),
        Some("fresh-check") => fresh_check::run(&rest),
        Some("test") => test::run(&rest),
        Some("release") => release::run(&rest),
        Some("docs") => docs::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("tree-rss") => bench::tree_rss(&rest),
        Some("tree-pss") => bench::tree_pss(&rest),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}
