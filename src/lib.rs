//! dripline: behaviour-triggered email workflows as deterministic per-contact state machines.
//!
//! The pipeline, in folder order: events come in (`sources`), each contact's state machine
//! (`machine`) decides, using the workflow definitions (`workflow`), what to send and when;
//! state, timers and the outbox are committed together (`storage`); the mailer (`sinks`)
//! delivers.

pub mod admin;
pub mod auth;
pub mod calendar;
pub mod config;
pub mod demo;
pub mod event;
pub mod kafka;
pub mod links;
pub mod machine;
pub mod metrics;
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
/// see [`keep_freed_memory`] and [`one_glibc_arena`]. An allocator variable in the environment
/// still wins.
pub fn tune_allocators() {
    keep_freed_memory();
    one_glibc_arena();
}

/// Whether none of these variables is set: an allocator variable in the environment wins over
/// the engine's setting of the same thing.
fn none_set(vars: &[&str]) -> bool {
    vars.iter().all(|v| std::env::var_os(v).is_none())
}

/// What overrides [`one_glibc_arena`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_ARENA_VARS: [&str; 2] = ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"];

/// What overrides the glibc half of [`keep_freed_memory`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_KEEP_VARS: [&str; 3] = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"];

/// glibc serves RocksDB's C++ side from one arena for every thread instead of one per thread.
/// Memtable blocks are allocated by whichever thread writes a batch: the ingest thread writes the
/// log, each worker its partitions' commits. With the freed memory kept (see
/// [`keep_freed_memory`]) each thread's arena held memtables' worth of it (+95 MiB peak RSS in
/// the pipelined benchmark, measured when the ingest thread also wrote the partitions' commits;
/// none with one arena, and no throughput lost). The Rust side (mimalloc) is not concerned.
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment still win.
fn one_glibc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if none_set(&GLIBC_ARENA_VARS) {
        // SAFETY: a plain integer parameter of glibc malloc, read when a thread first needs an
        // arena.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
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
    if none_set(&["MIMALLOC_PURGE_DELAY"]) {
        // SAFETY: sets a plain integer option of the allocator; any thread, any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if none_set(&GLIBC_KEEP_VARS) {
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
        if super::none_set(&["MIMALLOC_PURGE_DELAY"]) {
            assert_eq!(get(), 10);
            super::keep_freed_memory();
            assert_eq!(get(), -1);
        }
    }

    /// Threads that start allocating from glibc after the setting share the arenas there were:
    /// without it each of them gets a new one.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn new_threads_get_no_glibc_arena_of_their_own() {
        if !super::none_set(&super::GLIBC_ARENA_VARS) {
            return;
        }
        // The `<heap nr=...>` elements of glibc's malloc_info report, one per arena.
        let arenas = || {
            let mut buf: *mut libc::c_char = std::ptr::null_mut();
            let mut len: libc::size_t = 0;
            // SAFETY: open_memstream allocates the buffer it reports, freed after reading it.
            unsafe {
                let f = libc::open_memstream(&mut buf, &mut len);
                assert!(!f.is_null());
                assert_eq!(libc::malloc_info(0, f), 0);
                libc::fclose(f);
                let xml = std::slice::from_raw_parts(buf as *const u8, len).to_vec();
                libc::free(buf.cast());
                String::from_utf8(xml).unwrap().matches("<heap nr=").count()
            }
        };
        // Four threads allocate once each and stay alive until released (a thread that exits
        // hands its arena on to the next new thread).
        let release = std::sync::Arc::new(std::sync::Barrier::new(9));
        let allocated = std::sync::Arc::new(std::sync::Barrier::new(5));
        let spawn_four = || -> Vec<std::thread::JoinHandle<()>> {
            (0..4)
                .map(|_| {
                    let (release, allocated) = (release.clone(), allocated.clone());
                    std::thread::spawn(move || {
                        // SAFETY: a glibc block nothing else sees.
                        unsafe { libc::free(std::hint::black_box(libc::malloc(1000))) }
                        allocated.wait();
                        release.wait();
                    })
                })
                .collect()
        };
        let before = arenas();
        let mut threads = spawn_four();
        allocated.wait();
        let grown = arenas();
        assert!(grown > before, "by default new threads get arenas ({before} → {grown})");
        super::one_glibc_arena();
        threads.extend(spawn_four());
        allocated.wait();
        let after = arenas();
        release.wait();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(after, grown, "no arena more after the setting");
    }

    /// A block glibc would map from the OS (and unmap when freed) comes from its heap instead.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_serves_large_blocks_from_its_heap() {
        if !super::none_set(&super::GLIBC_KEEP_VARS) {
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
