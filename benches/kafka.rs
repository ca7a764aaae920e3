//! dripline on Kafka, with the broker (tansu) on loopback: the same clickstream as the pipeline
//! benchmark is produced to an 8-partition events topic (untimed), then measured in the same run:
//!
//! - the raw consume rate: one consumer in its own group reads every record and discards it;
//! - one dripline instance: the consumer-group member processing every record through the
//!   shipped workflows, committing state to RocksDB and publishing each batch to the changelog.
//!
//! Twice: with every record on its contact's home partition, and with the records of a share of
//! the contacts (`DRIPLINE_BENCH_MISROUTED`, percent, default 30) on another partition, as a
//! producer with another partitioner leaves them, so that each is forwarded home first.
//!
//! `DRIPLINE_BENCH_CONTACTS` / `DRIPLINE_BENCH_EVENTS` scale it; `DRIPLINE_TANSU` names the
//! broker binary (default `~/.cache/tansu/bin/tansu`, which `scripts/test.sh` installs).

mod common;

use common::Wire;
use dripline::config::Partitioner;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let contacts = env("DRIPLINE_BENCH_CONTACTS", 50_000);
    let events = env("DRIPLINE_BENCH_EVENTS", 150_000);
    let tansu = std::env::var("DRIPLINE_TANSU")
        .unwrap_or_else(|_| format!("{}/.cache/tansu/bin/tansu", std::env::var("HOME").unwrap()));
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut broker = Command::new(&tansu)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tansu}: {e}"));
    let addr = format!("127.0.0.1:{port}");
    while std::net::TcpStream::connect(&addr).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("kafka: {contacts} contacts, {events} events on 8 partitions, tansu on loopback");
    measure(&tansu, &url, &addr, tmp.path(), contacts, events, 0);
    // tansu 0.6 (sqlite) acknowledges produce requests to a topic that is being fetched slowly
    // (forwarding 300 records took 0.1 to 7 s) and, over a longer run, panicked in a group
    // heartbeat: the forwarding runs are kept small.
    let (c, e) = (contacts.min(10_000), events.min(50_000));
    println!("with records away from home, at {c} contacts and {e} events:");
    for misrouted in [0, env("DRIPLINE_BENCH_MISROUTED", 30)] {
        measure(&tansu, &url, &addr, tmp.path(), c, e, misrouted);
    }
    let _ = broker.kill();
    let _ = broker.wait();
}

/// One run on topics of its own: `misrouted` percent of the contacts have their records on the
/// partition after their home.
fn measure(
    tansu: &str,
    url: &str,
    addr: &str,
    dir: &std::path::Path,
    contacts: usize,
    events: usize,
    misrouted: usize,
) {
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let name = |t: &str| format!("{t}-{run}");
    for (topic, n) in [("events", "8"), ("changelog", "8"), ("dead", "1")] {
        let ok = Command::new(tansu)
            .args(["topic", "create", &name(topic), "--partitions", n, "--broker", url])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    // Produce the clickstream (untimed), keyed by contact, a minute of traffic per 1024 events.
    let topic = name("events");
    let mut wire = Wire::new(contacts, events);
    let total = wire.total();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()
        .unwrap();
    let mut ts = chrono::Utc::now().timestamp_millis() - 30 * 24 * 3_600_000;
    loop {
        let chunk = wire.chunk(1024);
        if chunk.is_empty() {
            break;
        }
        ts += 60_000;
        for bytes in &chunk {
            let user = dripline::event::Event::parse(bytes).expect("valid").user_id;
            let home = dripline::kafka::partitioner::home(Partitioner::Murmur2, user.as_bytes(), 8);
            let away = xxhash_rust::xxh3::xxh3_64(user.as_bytes()) % 100 < misrouted as u64;
            let partition = if away { (home + 1) % 8 } else { home };
            let mut r = BaseRecord::to(&topic)
                .key(user.as_str())
                .payload(bytes)
                .timestamp(ts)
                .partition(i32::from(partition));
            while let Err((_, back)) = p.send(r) {
                p.poll(Duration::from_millis(5));
                r = back;
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120)).unwrap();

    // Raw: consume everything and discard it.
    let raw = {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", name("raw"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[&topic]).unwrap();
        let (mut n, mut started) = (0, None);
        while n < total {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                started.get_or_insert_with(Instant::now);
                std::hint::black_box(m.payload());
                n += 1;
            }
        }
        n as f64 / started.unwrap().elapsed().as_secs_f64()
    };

    // One dripline instance: the consumer-group member on this thread's sibling.
    let mut s = dripline::config::Settings::load(None).expect("settings");
    s.workflows.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into();
    s.engine.data_dir = dir.join(name("data"));
    s.mail.outbox_dir = dir.join(name("mail"));
    s.kafka.brokers = addr.into();
    s.kafka.group_id = name("dripline");
    s.kafka.events_topic = topic.clone();
    s.kafka.changelog_topic = name("changelog");
    s.kafka.dead_letter_topic = name("dead");
    let engine = Arc::new(dripline::kafka::open_engine(&s).expect("engine"));
    let consumer = engine.take_consumer().expect("kafka mode");
    let stop = Arc::new(AtomicBool::new(false));
    let member = {
        let (e, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || consumer(e, stop))
    };
    let counted = |e: &dripline::runtime::Engine| {
        e.metrics.inputs_processed.get() - e.metrics.timers_fired.get()
            + e.metrics.events_rejected.with_label_values(&["duplicate"]).get()
    };
    // Timed from the assignment: progress shows only at commits, which may come late.
    while engine.metrics.kafka_assigned_partitions.get() < 8 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    let (mut last, mut moved) = (0, Instant::now());
    while counted(&engine) < total as u64 {
        std::thread::sleep(Duration::from_millis(5));
        let now = counted(&engine);
        if now != last {
            (last, moved) = (now, Instant::now());
        } else if moved.elapsed() > Duration::from_secs(90) {
            println!("  stalled: {now} of {total} handled, nothing for 90 s (the broker stopped answering)");
            std::process::exit(1);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = total as f64 / elapsed;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    member.join().unwrap().expect("member");
    let produce = engine.metrics.kafka_changelog_produce.get_sample_count();
    let records = engine.metrics.kafka_changelog_records.get();
    let rerouted = engine.metrics.kafka_rerouted.get();
    println!("{misrouted:>2} % of contacts away from home ({rerouted} records forwarded):");
    println!("  raw consume: {raw:>9.0} records/s (consume and discard)");
    println!(
        "  dripline:    {rate:>9.0} events/s on one instance ({:.1} % of raw; {elapsed:.1} s; {produce} changelog publishes, {:.2} changelog records per event)",
        100.0 * rate / raw,
        records as f64 / total as f64
    );
}
