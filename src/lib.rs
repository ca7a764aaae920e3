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
