//! Giving memory back once the agent is up. Starting touches code and data that will not
//! run again (argument parsing, the keychain, TLS set-up, enrollment, the first connection);
//! those pages would otherwise stay resident for as long as the agent idles on a person's
//! computer. After the first acknowledged heartbeat the headless agent asks the kernel to
//! reclaim its executable's pages and hands freed heap back; what the idle loop needs comes
//! back on first use, and only that stays.
//!
//! It owns that one request and nothing else. It must never touch memory it does not own
//! (only the mappings of its own executable file and the allocator's free lists) and never
//! fail the agent: trimming is best effort, and where the OS has no such request it does
//! nothing.

#[cfg_attr(target_os = "linux", path = "linux.rs")]
#[cfg_attr(not(target_os = "linux"), path = "other.rs")]
mod platform;

/// What a trim gave back, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Bytes of the executable's mappings the kernel was asked to reclaim.
    pub executable_bytes: u64,
    /// Whether the allocator returned free memory to the OS.
    pub heap_released: bool,
}

/// Asks the OS to reclaim the pages startup left resident. Safe to call at any time.
pub fn after_startup() -> Trimmed {
    platform::after_startup()
}
