//! Gives the allocator's free pages back to the system.
//!
//! glibc's malloc returns freed memory to the kernel only from the top of
//! each arena. Under bursts (many idle keep-alive connections waking at
//! once, each taking request state, a buffer loan and perhaps a new
//! upstream connection) the heap peaks, the burst's memory is freed, and
//! the pages stay resident below the long-lived allocations made meanwhile:
//! RSS then follows the highest burst ever seen rather than what is live.
//! Measured with 10,000 idle connections each sending a request every 5 s
//! (docs/soak.md): RSS grew 57 % in three minutes while the live heap
//! stayed within 12–19 MB.
//! `malloc_trim(0)` walks every arena and `madvise`s its free pages away;
//! the server calls [`release_free_memory`] once per `--trim-memory-every`.
//!
//! Other allocators (musl, jemalloc) need nothing of this: there it does
//! nothing.

/// Asks the allocator to return its free pages to the system; returns
/// whether any were returned. A no-op (returning `false`) off glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and has no preconditions; glibc
    // takes each arena's lock while trimming it, so it is safe to call while
    // other threads allocate and free.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks the allocator to return its free pages to the system; returns
/// whether any were returned. A no-op (returning `false`) off glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed pages in the middle of the heap come back: resident memory
    /// drops after a burst of small allocations is freed below a live one.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn returns_freed_pages_below_live_allocations() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .unwrap()
        }
        // 64 MiB in 4 KiB blocks (below the mmap threshold, so in the heap),
        // touched so they are resident; every 16th stays live, so the freed
        // ones leave holes that glibc cannot give back from the top.
        let mut blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 4096]).collect();
        let peak = rss_kib();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 16 == 0
        });
        let freed = rss_kib();
        release_free_memory();
        let trimmed = rss_kib();
        assert!(
            trimmed + 32 * 1024 < freed,
            "RSS at the peak {peak} KiB, after the frees {freed} KiB, after the trim {trimmed} KiB"
        );
        assert_eq!(blocks.len(), 1024);
    }
}
