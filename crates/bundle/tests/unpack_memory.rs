//! What refusing a hostile archive costs in memory: a zip of 200,000 empty entries is
//! refused as ZIP_TOO_MANY_FILES with a peak RSS of at most 45 MB (issue 17 §5; before, the
//! `zip` crate parsed the whole central directory first and the agent peaked at 153 MB).
//!
//! The unpack runs in a child process (this same binary, re-run with `CHILD_ZIP` set) so
//! that the peak (`VmHWM` in `/proc/self/status`) is the unpack's alone, not the parent's,
//! which builds the archive. `harness = false`: there is one check, run as `main`.

use edge_bundle::codes;
use edge_bundle::testing::write_many_empty_files;
use edge_bundle::unpack::{unpack_zip, UnpackLimits};
use std::process::Command;

const CHILD_ZIP: &str = "EDGE_BUNDLE_TEST_CHILD_ZIP";
const ENTRIES: u32 = 200_000;
const PEAK_LIMIT_KIB: u64 = 45 * 1024;

fn main() {
    if let Some(zip) = std::env::var_os(CHILD_ZIP) {
        child(zip.as_ref());
    } else {
        parent();
    }
}

/// Unpacks with the agent's default limits; prints the refusal code and the peak RSS.
fn child(zip: &std::path::Path) {
    let dest = zip.with_extension("out");
    let code = match unpack_zip(zip, &dest, &UnpackLimits::default()) {
        Ok(report) => format!("accepted {} files", report.files),
        Err(e) => e.code.to_owned(),
    };
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status");
    println!("code={code} peak_kib={peak}");
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("many.zip");
    write_many_empty_files(&zip, ENTRIES).unwrap();

    // Control: an independent reader sees a valid archive with every entry, so the refusal
    // below is about the count and not about a broken file.
    let listed = Command::new("python3")
        .args(["-c", "import sys, zipfile; print(len(zipfile.ZipFile(sys.argv[1]).infolist()))"])
        .arg(&zip)
        .output()
        .expect("python3 is needed by this test (apt-get install --no-install-recommends python3)");
    assert!(listed.status.success(), "python3 cannot read the archive: {}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), ENTRIES.to_string());

    let output = Command::new(std::env::current_exe().unwrap()).env(CHILD_ZIP, &zip).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().find(|l| l.starts_with("code=")).unwrap_or_else(|| panic!("no result line: {stdout}"));
    let (code, peak) = line.strip_prefix("code=").unwrap().split_once(" peak_kib=").unwrap();
    let peak: u64 = peak.parse().unwrap();
    assert_eq!(code, codes::ZIP_TOO_MANY_FILES, "{line}");
    assert!(peak <= PEAK_LIMIT_KIB, "refusing {ENTRIES} entries peaked at {peak} KiB, more than {PEAK_LIMIT_KIB} KiB");
    assert!(!zip.with_extension("out").exists(), "nothing may be unpacked");
    println!("unpack_memory: {ENTRIES} entries refused as {code}, peak RSS {peak} KiB (limit {PEAK_LIMIT_KIB} KiB)");
}
