//! End to end on embedded defaults: Segment JSON → validation → the embedded log (RocksDB, WAL
//! on, fsync per append) → partition processing over the shipped workflows → one WriteBatch
//! commit per batch. 1M contacts; one core processes (the processing loop runs on this thread).
//!
//! Printed beside it, measured in the same run: the raw limit — the same JSON parsed and written
//! as one RocksDB put each, in WriteBatches of the same size, WAL on, fsync per batch.
//!
//! `DRIPLINE_BENCH_CONTACTS` and `DRIPLINE_BENCH_EVENTS` scale it down for a quick look.

mod common;

use common::Wire;
use dripline::config::Settings;
use dripline::runtime::Engine;
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

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let contacts = env("DRIPLINE_BENCH_CONTACTS", 1_000_000);
    let events = env("DRIPLINE_BENCH_EVENTS", 2_000_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut s = Settings::load(None).expect("default settings");
    s.workflows.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into();
    s.engine.data_dir = tmp.path().join("data");
    s.mail.outbox_dir = tmp.path().join("mail");
    s.engine.cache_contacts_per_partition = 25_000;

    let total = Wire::new(contacts, events).total();
    println!(
        "pipeline: {contacts} contacts, {total} events ({events} clickstream + {contacts} identify), batches of {CHUNK}"
    );

    // End to end, on one thread: append a chunk, process everything appended, commit.
    let engine = Engine::open(&s).expect("engine");
    let mut latencies = Vec::with_capacity(total / CHUNK + 1);
    let mut received = chrono::DateTime::parse_from_rfc3339("2026-03-02T08:00:00Z")
        .unwrap()
        .timestamp_millis();
    let (mut t_ingest, mut t_process) = (0.0, 0.0);
    let mut wire = Wire::new(contacts, events);
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
        let r = engine.ingest_raw(&payloads, None, received).expect("ingest");
        assert_eq!(r.accepted, chunk.len());
        t_ingest += appended.elapsed().as_secs_f64();
        pending.push_back((appended, engine.log.next_offsets()));
        let p = Instant::now();
        // As saturated partition actors run: commits by checkpoint (inputs or interval).
        engine.pump_lazy(received).expect("pump");
        t_process += p.elapsed().as_secs_f64();
        committed(&engine, &mut pending, &mut latencies);
    }
    let p = Instant::now();
    engine.flush().expect("final commit");
    t_process += p.elapsed().as_secs_f64();
    committed(&engine, &mut pending, &mut latencies);
    assert!(pending.is_empty(), "every chunk committed");
    let elapsed = t_ingest + t_process;
    let e2e = total as f64 / elapsed;
    // Read before the raw phase: the high-water mark is then the engine's alone.
    let engine_rss = peak_rss_mib();
    // Raw limit: parse and put, same batch size, WAL on, fsync per batch.
    let raw_dir = tmp.path().join("raw");
    let raw = {
        let store = dripline::storage::Store::open(&raw_dir).expect("raw store");
        let cf = store.cf(dripline::storage::CF_LOG);
        let mut wire = Wire::new(contacts, events);
        let mut elapsed = 0.0;
        for n in 0.. {
            let chunk = wire.chunk(CHUNK);
            if chunk.is_empty() {
                break;
            }
            let start = Instant::now();
            let mut b = rocksdb::WriteBatch::default();
            for (i, bytes) in chunk.iter().enumerate() {
                let v: serde_json::Value = serde_json::from_slice(bytes).expect("valid json");
                assert!(v.is_object());
                let key = ((n * CHUNK + i) as u64).to_be_bytes();
                b.put_cf(cf, key, bytes);
            }
            store.write(b, true).expect("raw write");
            elapsed += start.elapsed().as_secs_f64();
        }
        total as f64 / elapsed
    };
    // The raw store is closed and removed: it must not count in the engine's memory.
    std::fs::remove_dir_all(&raw_dir).ok();

    latencies.sort_by(f64::total_cmp);
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
            until: None,
            progress: false,
        },
    )
    .expect("replay");
    let replay_rate = replay.records as f64 / replay.replay_seconds;
    println!("end to end:  {:>9.0} events/s  ({elapsed:.1} s)", e2e);
    println!("  of which:  parse + validate + append (fsync) {t_ingest:.1} s, process + commit {t_process:.1} s");
    println!(
        "raw limit:   {:>9.0} events/s  (parse + one put each, same batches)",
        raw
    );
    println!("ratio:       {:>9.1} % of the raw limit", 100.0 * e2e / raw);
    println!(
        "replay:      {:>9.0} events/s  ({:.1} s; {:.2}× live; {} inputs; state digest {} the live one)",
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
    println!(
        "append→commit latency per chunk: p50 {:.1} ms, p99 {:.1} ms (checkpoints: {} inputs or {})",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        s.engine.checkpoint_inputs,
        s.engine.checkpoint_interval
    );
    println!(
        "peak RSS:    {:>9.0} MiB (contact cache {} per partition × {} partitions)",
        engine_rss, s.engine.cache_contacts_per_partition, s.engine.partitions
    );
    println!("abandoned-cart emails decided: {decided}, inputs processed: {inputs}");
}
