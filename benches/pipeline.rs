//! End to end on embedded defaults: Segment JSON → validation → the embedded log (RocksDB, WAL
//! on, fsync per append) → partition processing over the shipped workflows → one WriteBatch
//! commit per batch. 1M contacts; one core processes (the processing loop runs on this thread).
//!
//! Printed beside it, measured in the same run: the raw limit — the same JSON parsed and written
//! as one RocksDB put each, in WriteBatches of the same size, WAL on, fsync per batch.
//!
//! `DRIPLINE_BENCH_CONTACTS` and `DRIPLINE_BENCH_EVENTS` scale it down for a quick look.

mod common;

use common::{Rng, Visitors, event};
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

    // The clickstream as the wire carries it: one identify per contact, then sessions.
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut visitors = Visitors::new(&mut rng, contacts, true);
    let mut wire: Vec<Vec<u8>> = Vec::with_capacity(contacts + events);
    for c in 0..contacts {
        let tz = ["UTC", "Asia/Shanghai", "Europe/Moscow", "Asia/Jakarta"][c % 4];
        wire.push(format!(r#"{{"type":"identify","userId":"contact-{c}","messageId":"id-{c}","traits":{{"email":"contact-{c}@example.org","timezone":"{tz}"}}}}"#).into_bytes());
    }
    for i in 0..events {
        let c = visitors.next(&mut rng);
        let ev = event(&mut rng, &format!("contact-{c}"), i);
        let mut v = serde_json::json!({"type": match ev.kind { dripline::event::EventKind::Track => "track", dripline::event::EventKind::Page => "page", dripline::event::EventKind::Identify => "identify" },
            "userId": ev.user_id, "messageId": format!("ev-{i}"),
            "properties": serde_json::Value::Object(ev.properties.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            "traits": serde_json::Value::Object(ev.traits.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())});
        if ev.kind == dripline::event::EventKind::Track {
            v["event"] = ev.name.clone().into();
        }
        wire.push(serde_json::to_vec(&v).expect("json"));
    }
    let total = wire.len();
    println!(
        "pipeline: {contacts} contacts, {total} events ({events} clickstream + {contacts} identify), batches of {CHUNK}"
    );

    // Raw limit: parse and put, same batch size, WAL on, fsync per batch.
    let raw_dir = tmp.path().join("raw");
    let raw = {
        let store = dripline::storage::Store::open(&raw_dir).expect("raw store");
        let cf = store.cf(dripline::storage::CF_LOG);
        let start = Instant::now();
        for (n, chunk) in wire.chunks(CHUNK).enumerate() {
            let mut b = rocksdb::WriteBatch::default();
            for (i, bytes) in chunk.iter().enumerate() {
                let v: serde_json::Value = serde_json::from_slice(bytes).expect("valid json");
                let id = v["messageId"].as_str().unwrap_or_default();
                let key = ((n * CHUNK + i) as u64).to_be_bytes();
                b.put_cf(cf, key, id.as_bytes());
                b.put_cf(cf, [&key[..], b"v"].concat(), bytes);
            }
            store.write(b, true).expect("raw write");
        }
        total as f64 / start.elapsed().as_secs_f64()
    };

    // End to end, on one thread: append a chunk, process everything appended, commit.
    let engine = Engine::open(&s).expect("engine");
    let mut latencies = Vec::with_capacity(total / CHUNK + 1);
    let mut received = chrono::DateTime::parse_from_rfc3339("2026-03-02T08:00:00Z")
        .unwrap()
        .timestamp_millis();
    let (mut t_parse, mut t_ingest, mut t_process) = (0.0, 0.0, 0.0);
    let start = Instant::now();
    for chunk in wire.chunks(CHUNK) {
        let t = Instant::now();
        let values: Vec<serde_json::Value> = chunk
            .iter()
            .map(|b| serde_json::from_slice(b).expect("valid json"))
            .collect();
        received += 60_000; // a minute of traffic per chunk: waits come due as the run goes on
        t_parse += t.elapsed().as_secs_f64();
        let appended = Instant::now();
        let r = engine.ingest_values(&values, None, received).expect("ingest");
        assert_eq!(r.accepted, chunk.len());
        t_ingest += appended.elapsed().as_secs_f64();
        let p = Instant::now();
        engine.pump(received).expect("pump");
        t_process += p.elapsed().as_secs_f64();
        latencies.push(appended.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let e2e = total as f64 / elapsed;
    latencies.sort_by(f64::total_cmp);
    let decided: u64 = engine
        .metrics
        .sends_decided
        .with_label_values(&["abandoned_cart"])
        .get();
    println!("end to end:  {:>9.0} events/s  ({elapsed:.1} s)", e2e);
    println!(
        "  of which:  parse {t_parse:.1} s, validate + append (fsync) {t_ingest:.1} s, process + commit {t_process:.1} s"
    );
    println!(
        "raw limit:   {:>9.0} events/s  (parse + one put each, same batches)",
        raw
    );
    println!("ratio:       {:>9.1} % of the raw limit", 100.0 * e2e / raw);
    println!(
        "append→commit latency per batch: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "peak RSS:    {:>9.0} MiB (contact cache {} per partition × {} partitions)",
        peak_rss_mib(),
        s.engine.cache_contacts_per_partition,
        s.engine.partitions
    );
    println!(
        "abandoned-cart emails decided: {decided}, inputs processed: {}",
        engine.metrics.inputs_processed.get()
    );
}
