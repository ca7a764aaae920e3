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

/// Keeps memory the engine frees for its next batch instead of returning it to the OS 10 ms
/// later (mimalloc's default): each batch frees and re-allocates about the same amount, and
/// re-faulting it cost ~5 % of the pipeline benchmark in kernel page zeroing. Peak RSS is the
/// same either way (the caches bound it). `MIMALLOC_PURGE_DELAY` in the environment still wins.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option of the allocator; any thread, any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
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
}
