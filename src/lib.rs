//! dripline: behaviour-triggered email workflows as deterministic per-contact state machines.
//!
//! The pipeline, in folder order: events come in (`sources`), each contact's state machine
//! (`machine`) decides, using the workflow definitions (`workflow`), what to send and when;
//! state, timers and the outbox are committed together (`storage`); the mailer (`sinks`)
//! delivers.

pub mod config;
pub mod demo;
pub mod event;
pub mod kafka;
pub mod links;
pub mod machine;
pub mod replay;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod storage;
pub mod time;
pub mod value;
pub mod workflow;

/// The engine allocates many small, short-lived strings and maps per event (parsed properties,
/// contact state decoded and re-encoded per batch); glibc malloc spent ~30 % of the pipeline
/// benchmark's cycles on them. mimalloc's thread-local free lists are several times cheaper.
/// Set here so the binary, the tests and the benchmarks all measure the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (v2 numbering; the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets both allocators up for the engine's pattern of allocation (called by `Engine::open`):
/// see [`keep_freed_memory`]. An allocator variable in the environment still wins.
pub fn tune_allocators() {
    keep_freed_memory();
}

/// Keeps memory the engine frees for its next batch instead of returning it to the OS, in both
/// allocators: each batch frees and re-allocates about the same amount, and re-faulting it is
/// kernel page zeroing. Peak RSS is the same either way (the caches bound it).
///
/// - mimalloc (Rust): returns freed memory 10 ms later by default; that cost ~5 % of the pipeline
///   benchmark. `MIMALLOC_PURGE_DELAY` in the environment still wins.
/// - glibc (RocksDB's C++ side): serves blocks over its mmap threshold (memtable arena blocks,
///   write batches of a few MiB) straight from the OS and unmaps them when freed, and trims the
///   heap top past its trim threshold; both are raised. `MALLOC_MMAP_THRESHOLD_`,
///   `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` in the environment still win.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option of the allocator; any thread, any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]
        .iter()
        .all(|v| std::env::var_os(v).is_none())
    {
        // SAFETY: plain integer parameters of glibc malloc, which takes them at any time.
        unsafe {
            // glibc's largest (32 MiB on 64-bit); fixed, it also stops the dynamic adjustment.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The option number is the purge delay's: its v2 default (10 ms) before, none after.
    #[test]
    fn freed_memory_is_kept() {
        // SAFETY: reads an integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 10);
            super::keep_freed_memory();
            assert_eq!(get(), -1);
        }
    }

    /// A block glibc would map from the OS (and unmap when freed) comes from its heap instead.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_serves_large_blocks_from_its_heap() {
        let tuned = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"];
        if tuned.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        // SAFETY: plain malloc/free of blocks nothing else sees; mallinfo2 only reads counters.
        unsafe {
            let mapped = || libc::mallinfo2().hblks;
            // The default first: 16 MiB is mapped (and freeing it raises the dynamic threshold to
            // 16 MiB, so the next check uses a larger block).
            let before = mapped();
            let p = std::hint::black_box(libc::malloc(16 << 20));
            assert_eq!(mapped(), before + 1, "glibc's default maps a 16 MiB block");
            libc::free(p);
            super::keep_freed_memory();
            let before = mapped();
            let p = std::hint::black_box(libc::malloc(24 << 20));
            assert_eq!(mapped(), before, "a 24 MiB block comes from the heap");
            libc::free(p);
        }
    }
}
