//! Processes as Linux's /proc shows them: memory for the benchmarks, command lines for
//! tests that must see how a process was really started.

use anyhow::{Context, Result};
use std::fs;

/// Resident set size of one process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The largest resident set size one process has had so far, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for process {pid}"))
}

/// `pid` and all its descendants, found through each process's parent in /proc/*/stat.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
            // The command name is in parentheses and may contain spaces: parse after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// One process of a tree: pid, command name, RSS (or PSS) in KiB.
pub type TreeMember = (u32, String, u64);

/// Summed RSS of a process and all its descendants, in KiB, with each member listed.
pub fn tree_rss_kib(pid: u32) -> Result<(u64, Vec<TreeMember>)> {
    Ok(tree_sum(pid, rss_kib))
}

/// `measure` of a process and of each of its descendants, summed, with each member listed;
/// a member that ended in between is left out.
fn tree_sum(pid: u32, measure: fn(u32) -> Result<u64>) -> (u64, Vec<TreeMember>) {
    let mut total = 0;
    let mut members = Vec::new();
    for member in process_tree(pid) {
        let Ok(kib) = measure(member) else { continue };
        let name = fs::read_to_string(format!("/proc/{member}/comm")).unwrap_or_default().trim().to_owned();
        total += kib;
        members.push((member, name, kib));
    }
    (total, members)
}

/// Proportional set size of one process in KiB (`Pss` of /proc/PID/smaps_rollup): its
/// private pages plus its share of pages other processes map too, so the PSS of a process
/// tree adds up to what the tree costs, where RSS counts each shared library once per
/// process.
pub fn pss_kib(pid: u32) -> Result<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("process {pid} is gone or not ours to read"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no Pss for process {pid}"))
}

/// Summed PSS of a process and all its descendants, in KiB, with each member listed.
pub fn tree_pss_kib(pid: u32) -> Result<(u64, Vec<TreeMember>)> {
    Ok(tree_sum(pid, pss_kib))
}

/// A process's command line, one argument per entry (`None`: it is gone or not ours to read).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Every process with `arg` as one of its arguments, with its command line.
pub fn processes_with_arg(arg: &str) -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| cmdline(pid).map(|args| (pid, args)))
        .filter(|(_, args)| args.iter().any(|a| a == arg))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that shares every library page with this process: the tree's PSS splits
    /// those pages between the two, so it stays below the sum of their RSS, and each
    /// member's PSS is at most its RSS.
    #[test]
    fn pss_splits_shared_pages_where_rss_counts_them_twice() -> Result<()> {
        let mut child = std::process::Command::new("sleep").arg("30").spawn()?;
        let me = std::process::id();
        let measured = (|| -> Result<()> {
            let (_, members) = tree_pss_kib(me)?;
            assert!(members.iter().any(|(pid, _, _)| *pid == child.id()), "the child is not in the tree: {members:?}");
            // Only the two processes this test owns: other tests of this binary may start
            // and end children of their own meanwhile.
            for (pid, name, pss) in members.iter().filter(|(pid, _, _)| *pid == me || *pid == child.id()) {
                let rss = rss_kib(*pid)?;
                assert!(*pss > 0 && *pss <= rss, "{name} ({pid}): PSS {pss} kB, RSS {rss} kB");
            }
            let ours = |pid: u32| pid == me || pid == child.id();
            let pss_ours: u64 = members.iter().filter(|(pid, _, _)| ours(*pid)).map(|(_, _, pss)| pss).sum();
            let rss_ours = rss_kib(me)? + rss_kib(child.id())?;
            assert!(pss_ours < rss_ours, "PSS {pss_ours} kB is not below RSS {rss_ours} kB");
            Ok(())
        })();
        let _ = child.kill();
        let _ = child.wait();
        measured
    }
}
