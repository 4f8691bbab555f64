//! Linux: `madvise(MADV_PAGEOUT)` (since 5.4) over the executable's own read-only and code
//! mappings, and glibc's `malloc_trim`. Clean file pages are dropped, not copied: they are
//! read again from the file if the agent needs them.

use super::Trimmed;

/// `MADV_PAGEOUT` from the kernel's uapi (the `libc` crate has it only for some targets).
const MADV_PAGEOUT: libc::c_int = 21;

pub(super) fn after_startup() -> Trimmed {
    let mut trimmed = Trimmed::default();
    if let Some(ranges) = executable_ranges() {
        for (start, len) in ranges {
            // SAFETY: the range is a whole mapping of our own executable read from
            // /proc/self/maps; MADV_PAGEOUT only drops clean pages from memory, it never
            // changes their contents or the mapping.
            let done = unsafe { libc::madvise(start as *mut libc::c_void, len, MADV_PAGEOUT) };
            if done == 0 {
                trimmed.executable_bytes += len as u64;
            }
        }
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns free memory at the allocator's discretion.
        trimmed.heap_released = unsafe { libc::malloc_trim(0) } == 1;
    }
    trimmed
}

/// The read-only and executable mappings of this process's executable file. Writable ones
/// (data, relocated data) are never asked for: they may hold state.
fn executable_ranges() -> Option<Vec<(usize, usize)>> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    let exe = exe.to_str()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(maps.lines().filter_map(|line| read_only_mapping_of(line, exe)).collect())
}

/// `start-end perms offset dev inode path` → (start, length) when `path` is `exe` and the
/// mapping is not writable.
fn read_only_mapping_of(line: &str, exe: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    if path != exe || perms.contains('w') || !perms.starts_with('r') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then(|| (start, end - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_mappings_are_chosen() {
        let exe = "/usr/bin/edge-agent";
        assert_eq!(
            read_only_mapping_of("55d0a0000000-55d0a0100000 r-xp 00001000 fd:01 42 /usr/bin/edge-agent", exe),
            Some((0x55d0a0000000, 0x100000))
        );
        assert_eq!(
            read_only_mapping_of("55d0a0000000-55d0a0001000 r--p 00000000 fd:01 42 /usr/bin/edge-agent", exe),
            Some((0x55d0a0000000, 0x1000))
        );
        assert_eq!(
            read_only_mapping_of("55d0a0200000-55d0a0201000 rw-p 00200000 fd:01 42 /usr/bin/edge-agent", exe),
            None
        );
        assert_eq!(
            read_only_mapping_of("7f0000000000-7f0000100000 r-xp 00000000 fd:01 7 /usr/lib/libc.so.6", exe),
            None
        );
        assert_eq!(read_only_mapping_of("7f0000000000-7f0000100000 rw-p 00000000 00:00 0", exe), None);
        assert_eq!(read_only_mapping_of("garbage", exe), None);
    }

    #[test]
    fn a_trim_leaves_the_process_working() {
        let before: u64 = (0..1000u64).sum();
        let trimmed = after_startup();
        assert!(trimmed.executable_bytes > 0, "the test binary's own code mappings are found: {trimmed:?}");
        // Code paged out comes back on use.
        assert_eq!((0..1000u64).sum::<u64>(), before);
        assert!(executable_ranges().is_some_and(|r| !r.is_empty()));
    }
}
