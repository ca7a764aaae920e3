//! End to end on embedded defaults: Segment JSON → validation → the embedded log (RocksDB, WAL
//! on, fsync per append) → partition processing over the shipped workflows → one WriteBatch
//! commit per batch. 1M contacts, measured twice on fresh engines:
//! - on one thread: append a chunk, process it, commit — every cost on one core, in turn;
//! - pipelined, as `dripline run` is shaped: one thread appends (the HTTP source's role) while
//!   `engine.workers` threads at nice `engine.worker_nice` host the partitions. It runs in a
//!   child process, so its peak RSS is its own.
//!
//! Printed beside it, measured in the same run: the raw limit — the same JSON parsed and written
//! as one RocksDB put each, in WriteBatches of the same size, WAL on, fsync per batch — twice:
//! parsed into JSON values (as the target is specified), and parsed as ingest parses.
//!
//! Every phase reads the same clickstream, written to a file before the first one, as a
//! client's bytes: making the JSON while a phase runs would take CPU from the cores the
//! pipelined engine shares.
//!
//! `DRIPLINE_BENCH_CONTACTS` and `DRIPLINE_BENCH_EVENTS` scale it down for a quick look;
//! `DRIPLINE_BENCH_CACHE` sets the contacts cached per partition (25000), for the memory a
//! cached contact costs.

mod common;

use common::{Wire, WireFile};
use dripline::config::Settings;
use dripline::runtime::Engine;
use std::path::Path;
use std::time::Instant;

const CHUNK: usize = 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time of this process so far, every thread's (RocksDB's background threads included).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        let mut u = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// CPU time of the calling thread so far: unlike wall time, it leaves out the time the thread
/// waited for a core.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime fills the struct it is given.
    let t = unsafe {
        let mut t = std::mem::zeroed::<libc::timespec>();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
        t
    };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Pops the chunks whose every record is now committed (each partition's stored position has
/// reached the log end recorded after the chunk's append), recording their latency.
fn committed(engine: &Engine, pending: &mut std::collections::VecDeque<(Instant, Vec<u64>)>, latencies: &mut Vec<f64>) {
    let stored: Vec<u64> = (0..engine.log.partitions())
        .map(|p| {
            let pos = dripline::storage::tables::get_position(&engine.store, p).expect("position");
            pos.offset.map_or(0, |o| o + 1)
        })
        .collect();
    while let Some((at, ends)) = pending.front() {
        if ends.iter().zip(&stored).any(|(end, done)| done < end) {
            break;
        }
        latencies.push(at.elapsed().as_secs_f64() * 1000.0);
        pending.pop_front();
    }
}

/// One end-to-end phase: what it took and what it left.
struct Phase {
    /// Wall time from the first append to the last commit.
    elapsed: f64,
    /// Time spent appending, and time spent processing and committing (on one thread they add
    /// up to `elapsed`; pipelined they overlap).
    t_ingest: f64,
    t_process: f64,
    /// Append→commit latency of each chunk, sorted, in milliseconds.
    latencies: Vec<f64>,
    /// Peak RSS of the phase.
    rss: f64,
    /// CPU time of the phase, all threads. Like the raw limit's, it includes reading the input
    /// from the clickstream file (a copy), which the timed parts leave out.
    cpu: f64,
    /// Pipelined: CPU time of the ingest thread and of the worker threads together, each over
    /// its whole loop (reading the input included).
    thread_cpu: Option<(f64, f64)>,
}

const START: &str = "2026-03-02T08:00:00Z";

/// Serial: on one thread, append a chunk, process everything appended, commit — every cost on
/// one core, one after the other.
fn serial(engine: &Engine, input: &Path, total: usize) -> Phase {
    let mut latencies = Vec::with_capacity(total / CHUNK + 1);
    let mut received = chrono::DateTime::parse_from_rfc3339(START).unwrap().timestamp_millis();
    let (mut t_ingest, mut t_process) = (0.0, 0.0);
    let cpu = cpu_seconds();
    let mut wire = WireFile::open(input).expect("clickstream");
    // Chunks appended and not yet committed: when, and the log's end offsets just after.
    let mut pending = std::collections::VecDeque::new();
    loop {
        let chunk = wire.chunk(CHUNK);
        if chunk.is_empty() {
            break;
        }
        received += 60_000; // a minute of traffic per chunk: waits come due as the run goes on
        let appended = Instant::now();
        let payloads: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        // The clickstream's `Email Opened`/`Email Clicked` stand for what the tracking links
        // append, the engine's own events: taken as the engine's (a write key's are refused).
        let r = engine
            .ingest_raw(&payloads, None, received, dripline::runtime::Origin::Engine)
            .expect("ingest");
        assert_eq!(r.accepted, chunk.len());
        t_ingest += appended.elapsed().as_secs_f64();
        pending.push_back((appended, engine.log.next_offsets()));
        let p = Instant::now();
        // As saturated partition actors run: commits by checkpoint (inputs or interval).
        engine.pump_lazy(received).expect("pump");
        t_process += p.elapsed().as_secs_f64();
        committed(engine, &mut pending, &mut latencies);
    }
    let p = Instant::now();
    engine.flush().expect("final commit");
    t_process += p.elapsed().as_secs_f64();
    committed(engine, &mut pending, &mut latencies);
    assert!(pending.is_empty(), "every chunk committed");
    latencies.sort_by(f64::total_cmp);
    Phase {
        elapsed: t_ingest + t_process,
        t_ingest,
        t_process,
        latencies,
        rss: peak_rss_mib(),
        cpu: cpu_seconds() - cpu,
        thread_cpu: None,
    }
}

/// Pipelined, as `dripline run` is shaped: one thread appends (the HTTP source's role) while
/// `workers` threads at nice `nice` host the partitions (as `engine.workers` and
/// `engine.worker_nice` place them), each as fast as it can.
fn pipelined(engine: &Engine, input: &Path, total: usize, workers: usize, nice: i32) -> Phase {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let wall = AtomicI64::new(chrono::DateTime::parse_from_rfc3339(START).unwrap().timestamp_millis());
    let done = AtomicBool::new(false);
    let pending = std::sync::Mutex::new(std::collections::VecDeque::new());
    let mut latencies = Vec::with_capacity(total / CHUNK + 1);
    let start = Instant::now();
    let cpu = cpu_seconds();
    let ((t_ingest, cpu_ingest), (t_process, cpu_process)) = std::thread::scope(|scope| {
        let ingest = scope.spawn(|| {
            let cpu = thread_cpu_seconds();
            let mut wire = WireFile::open(input).expect("clickstream");
            let mut busy = 0.0;
            loop {
                // The input is read outside the timed part, as in the serial phase.
                let chunk = wire.chunk(CHUNK);
                if chunk.is_empty() {
                    break;
                }
                let received = wall.load(Ordering::Relaxed) + 60_000;
                let appended = Instant::now();
                let payloads: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                let r = engine
                    .ingest_raw(&payloads, None, received, dripline::runtime::Origin::Engine)
                    .expect("ingest");
                assert_eq!(r.accepted, chunk.len());
                busy += appended.elapsed().as_secs_f64();
                pending.lock().unwrap().push_back((appended, engine.log.next_offsets()));
                // Published after the append: the processor never seals a time not yet written.
                wall.store(received, Ordering::Release);
            }
            done.store(true, Ordering::Release);
            (busy, thread_cpu_seconds() - cpu)
        });
        // Each worker thread hosts the partitions `dripline run` would put on it, at its
        // priority; the first also records the commits.
        let work = |w: usize, mut latencies: Option<&mut Vec<f64>>| {
            if let Err(e) = dripline::runtime::actors::lower_priority(nice) {
                eprintln!("worker at nice {nice}: {e}");
            }
            let cpu = thread_cpu_seconds();
            let mut busy = 0.0;
            loop {
                let finished = done.load(Ordering::Acquire);
                let p = Instant::now();
                let n = engine
                    .pump_lazy_worker(wall.load(Ordering::Acquire), w, workers)
                    .expect("pump");
                if n > 0 {
                    busy += p.elapsed().as_secs_f64();
                }
                if let Some(l) = latencies.as_deref_mut() {
                    committed(engine, &mut pending.lock().unwrap(), l);
                }
                if finished && n == 0 {
                    break;
                }
                if n == 0 {
                    // Caught up: wait for the ingest thread instead of spinning on its core.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            (busy, thread_cpu_seconds() - cpu)
        };
        let others: Vec<_> = (1..workers).map(|w| scope.spawn(move || work(w, None))).collect();
        let first = work(0, Some(&mut latencies));
        let mut process = vec![first];
        process.extend(others.into_iter().map(|h| h.join().expect("worker thread")));
        let p = Instant::now();
        engine.flush().expect("final commit");
        let flushed = p.elapsed().as_secs_f64();
        let busy = process.iter().map(|w| w.0).fold(0.0, f64::max) + flushed;
        (
            ingest.join().expect("ingest thread"),
            (busy, process.iter().map(|w| w.1).sum::<f64>()),
        )
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut pending = pending.into_inner().unwrap();
    committed(engine, &mut pending, &mut latencies);
    assert!(pending.is_empty(), "every chunk committed");
    latencies.sort_by(f64::total_cmp);
    Phase {
        elapsed,
        t_ingest,
        t_process,
        latencies,
        rss: peak_rss_mib(),
        cpu: cpu_seconds() - cpu,
        thread_cpu: Some((cpu_ingest, cpu_process)),
    }
}

/// The raw limit: the clickstream parsed by `parse` and written as one put each, in batches of
/// [`CHUNK`], WAL on, fsync per batch. Events/s, seconds, CPU seconds (all threads).
fn raw_limit(dir: &Path, input: &Path, total: usize, parse: impl Fn(&[u8])) -> (f64, f64, f64) {
    let store = dripline::storage::Store::open(dir).expect("raw store");
    let (_, cf) = store.log_db().expect("the log");
    let mut wire = WireFile::open(input).expect("clickstream");
    let mut elapsed = 0.0;
    let cpu = cpu_seconds();
    for n in 0.. {
        let chunk = wire.chunk(CHUNK);
        if chunk.is_empty() {
            break;
        }
        let start = Instant::now();
        let mut b = rocksdb::WriteBatch::default();
        for (i, bytes) in chunk.iter().enumerate() {
            parse(bytes);
            let key = ((n * CHUNK + i) as u64).to_be_bytes();
            b.put_cf(cf, key, bytes);
        }
        store.write_log(b, true).expect("raw write");
        elapsed += start.elapsed().as_secs_f64();
    }
    let cpu = cpu_seconds() - cpu;
    drop(store);
    std::fs::remove_dir_all(dir).ok();
    (total as f64 / elapsed, elapsed, cpu)
}

/// Set in the child process that runs the pipelined phase.
const PIPELINED_CHILD: &str = "DRIPLINE_BENCH_PIPELINED_CHILD";

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let contacts = env("DRIPLINE_BENCH_CONTACTS", 1_000_000);
    let events = env("DRIPLINE_BENCH_EVENTS", 2_000_000);
    let cache = env("DRIPLINE_BENCH_CACHE", 25_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let settings = |name: &str| {
        let mut s = Settings::load(None).expect("default settings");
        s.workflows.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into();
        s.engine.data_dir = tmp.path().join(name).join("data");
        s.mail.outbox_dir = tmp.path().join(name).join("mail");
        s.engine.cache_contacts_per_partition = cache;
        s
    };
    if let Ok(parent) = std::env::var(PIPELINED_CHILD) {
        // "RAW DIGEST [INPUT [RAW_OWN]]": without INPUT (a child run by hand), the clickstream is
        // written here; RAW_OWN is the raw limit with ingest's parse.
        let mut args = parent.split(' ');
        let (raw, digest) = (args.next().expect("raw limit"), args.next().expect("digest"));
        let input = match args.next() {
            Some(path) => path.into(),
            None => {
                let path = tmp.path().join("clickstream.ndjson");
                WireFile::write(&path, contacts, events).expect("clickstream file");
                path
            }
        };
        let s = settings("pipelined");
        let engine = Engine::open(&s).expect("engine");
        let (workers, nice) = (s.engine.workers, s.engine.worker_nice);
        let piped = pipelined(&engine, &input, Wire::new(contacts, events).total(), workers, nice);
        let total = dripline::storage::digest::digest(&engine.store, s.engine.partitions)
            .expect("digest")
            .total;
        let e2e = Wire::new(contacts, events).total() as f64 / piped.elapsed;
        println!(
            "end to end, pipelined as `dripline run` is (an ingest thread; {workers} worker threads at nice {nice}):"
        );
        println!("             {:>9.0} events/s  ({:.1} s)", e2e, piped.elapsed);
        println!(
            "  busy:      ingest thread {:.1} s, workers {:.1} s (the longest); CPU, all threads: {:.1} s",
            piped.t_ingest, piped.t_process, piped.cpu
        );
        let (cpu_ingest, cpu_process) = piped.thread_cpu.expect("pipelined");
        println!("  on CPU:    ingest thread {cpu_ingest:.1} s, workers {cpu_process:.1} s together");
        let raw_own = args
            .next()
            .map(|r| r.parse::<f64>().expect("raw limit with ingest's parse"));
        println!(
            "  ratio:     {:>9.1} % of the raw limit{}",
            100.0 * e2e / raw.parse::<f64>().expect("raw"),
            raw_own.map_or(String::new(), |r| format!(
                " ({:.1} % of the raw limit with ingest's parse)",
                100.0 * e2e / r
            ))
        );
        println!(
            "  append→commit latency per chunk: p50 {:.1} ms, p99 {:.1} ms",
            percentile(&piped.latencies, 0.5),
            percentile(&piped.latencies, 0.99)
        );
        println!("  peak RSS:  {:>9.0} MiB", piped.rss);
        println!(
            "  state digest {} the one-thread run's",
            if format!("{total:032x}") == digest {
                "equals"
            } else {
                "DIFFERS FROM"
            }
        );
        return;
    }
    let s = settings("serial");

    let total = Wire::new(contacts, events).total();
    println!(
        "pipeline: {contacts} contacts, {total} events ({events} clickstream + {contacts} identify), batches of {CHUNK}"
    );

    // Every phase reads the same clickstream from a file written first, so none pays for making
    // it while it runs (see `WireFile`).
    let input_dir = tempfile::tempdir().expect("temp dir");
    let input = input_dir.path().join("clickstream.ndjson");
    WireFile::write(&input, contacts, events).expect("clickstream file");

    let engine = Engine::open(&s).expect("engine");
    let run = serial(&engine, &input, total);
    let e2e = total as f64 / run.elapsed;
    let decided: u64 = engine
        .metrics
        .sends_decided
        .with_label_values(&["abandoned_cart"])
        .get();
    let inputs = engine.metrics.inputs_processed.get();
    let live_digest = dripline::storage::digest::digest(&engine.store, s.engine.partitions).expect("digest");
    drop(engine);

    // Replay: the same log rebuilt into a fresh directory (what an operator runs after a bug fix).
    let replay = dripline::replay::run(
        &s,
        dripline::replay::Options {
            source: dripline::replay::Source::Data(s.engine.data_dir.clone()),
            into: Some(tmp.path().join("replayed")),
            workflows: None,
            send_unsent: false,
            versions_from: None,
            until: None,
            progress: false,
        },
    )
    .expect("replay");
    let replay_rate = replay.records as f64 / replay.replay_seconds;
    std::fs::remove_dir_all(tmp.path().join("replayed")).ok();
    std::fs::remove_dir_all(tmp.path().join("serial")).ok();

    // Raw limit: parse and put, same batch size, WAL on, fsync per batch; as specified (each
    // event parsed into a JSON value), then with ingest's own parse (validated into a borrowed
    // event), which is cheaper than a JSON value (docs/decisions/0014-borrowed-event-parse-at-ingest.md).
    let value_parse = |bytes: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(bytes).expect("valid json");
        assert!(v.is_object());
    };
    let (raw, raw_elapsed, raw_cpu) = raw_limit(&tmp.path().join("raw"), &input, total, value_parse);
    let ingest_parse = |bytes: &[u8]| {
        dripline::event::wire::parse_ref(bytes, None).expect("valid event");
    };
    let (raw_own, raw_own_elapsed, raw_own_cpu) = raw_limit(&tmp.path().join("raw-own"), &input, total, ingest_parse);

    println!("end to end, one thread (every cost on one core, one after the other):");
    println!("             {:>9.0} events/s  ({:.1} s)", e2e, run.elapsed);
    println!(
        "  of which:  parse + validate + append (fsync) {:.1} s, process + commit {:.1} s; CPU, all threads: {:.1} s",
        run.t_ingest, run.t_process, run.cpu
    );
    println!(
        "  ratio:     {:>9.1} % of the raw limit ({:.1} % of the raw limit with ingest's parse)",
        100.0 * e2e / raw,
        100.0 * e2e / raw_own
    );
    println!(
        "  append→commit latency per chunk: p50 {:.1} ms, p99 {:.1} ms (checkpoints: {} inputs or {})",
        percentile(&run.latencies, 0.5),
        percentile(&run.latencies, 0.99),
        s.engine.checkpoint_inputs,
        s.engine.checkpoint_interval
    );
    println!(
        "  peak RSS:  {:>9.0} MiB (contact cache {} per partition × {} partitions)",
        run.rss, s.engine.cache_contacts_per_partition, s.engine.partitions
    );
    println!(
        "raw limit:   {:>9.0} events/s  ({raw_elapsed:.1} s; parse + one put each, same batches; CPU, all threads: {raw_cpu:.1} s)",
        raw
    );
    println!(
        "  with ingest's parse: {raw_own:>9.0} events/s  ({raw_own_elapsed:.1} s; the events validated into borrowed events instead of JSON values; CPU: {raw_own_cpu:.1} s)"
    );
    println!(
        "replay:      {:>9.0} events/s  ({:.1} s; {:.2}× the one-thread run; {} inputs; state digest {} the live one)",
        replay_rate,
        replay.replay_seconds,
        replay_rate / e2e,
        replay.inputs,
        if replay.digest.as_ref() == Some(&live_digest) {
            "equals"
        } else {
            "DIFFERS FROM"
        }
    );
    println!("abandoned-cart emails decided: {decided}, inputs processed: {inputs}");
    drop(tmp);
    // Writes still in the page cache would otherwise compete with the next phase's fsyncs.
    // SAFETY: no arguments, no memory.
    unsafe { libc::sync() };
    // The memory this process's phases freed goes back to the kernel before the child starts
    // (the engine keeps freed memory for reuse: `dripline::tune_allocators`). Kept, it made the
    // child take pages the VM had handed back to its host, whose first touches fault in the host
    // as well, while the raw limit above ran on memory this process already had. Returned, the
    // pipelined phase ran +5.7 to +12.2 % faster in four pairs of full runs (docs/benchmarks.md).
    // glibc's share (RocksDB's) is what can be returned; mimalloc's stays.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: releases free memory of glibc's heaps; nothing is in use across the call.
    unsafe {
        libc::malloc_trim(0);
    }

    // The pipelined phase runs in a process of its own: the allocator keeps what it frees, so in
    // this one the serial engine's memory would count in its peak RSS.
    let status = std::process::Command::new(std::env::current_exe().expect("this bench"))
        .arg("--bench")
        .env(
            PIPELINED_CHILD,
            format!("{raw} {:032x} {} {raw_own}", live_digest.total, input.display()),
        )
        .status()
        .expect("pipelined phase");
    assert!(status.success(), "pipelined phase failed");
}
