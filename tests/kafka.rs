//! Against a real Kafka-compatible broker on 127.0.0.1 (tansu, started per test): one instance
//! end to end with dead letters; two instances splitting an 8-partition topic; `kill -9` of one
//! instance mid-run, after which the survivor's state and the sent message ids equal those of a
//! single-instance run over the same events; a changelog with outbox keys of the earlier layout
//! restores into a sendable outbox; webhook calls made once each.

mod common;

use common::{free_port, http, wait_for};
use dripline::storage::{Store, digest::digest};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PARTITIONS: usize = 8;

/// Records by (partition, offset).
type Places = BTreeSet<(u16, u64)>;

fn tansu() -> PathBuf {
    let bin = std::env::var_os("DRIPLINE_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tansu/bin/tansu"));
    assert!(
        bin.exists(),
        "tansu not found at {} (scripts/setup.sh installs it; or set DRIPLINE_TANSU)",
        bin.display()
    );
    bin
}

/// A tansu broker of this test's own, or the external broker named by `DRIPLINE_TEST_KAFKA`
/// (then every topic gets a prefix unique to the test).
struct Broker {
    child: Option<Child>,
    addr: String,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        if let Ok(addr) = std::env::var("DRIPLINE_TEST_KAFKA") {
            let prefix = format!("t{}-", chrono::Utc::now().timestamp_micros());
            return Broker {
                child: None,
                addr,
                prefix,
                _dir: dir,
            };
        }
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // tansu reads the sqlite path relative to its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("broker.log")).unwrap())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Broker {
            child: Some(child),
            addr: format!("127.0.0.1:{port}"),
            prefix: String::new(),
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        self.addr.clone()
    }

    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    fn topic(&self, name: &str, partitions: usize) {
        let name = self.name(name);
        if self.child.is_none() {
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let admin: AdminClient<_> = ClientConfig::new()
                .set("bootstrap.servers", self.addr())
                .create()
                .unwrap();
            let t = NewTopic::new(&name, partitions as i32, TopicReplication::Fixed(1));
            futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new())).unwrap();
            return;
        }
        let out = Command::new(tansu())
            .args([
                "topic",
                "create",
                &name,
                "--partitions",
                &partitions.to_string(),
                "--broker",
            ])
            .arg(format!("tcp://{}", self.addr))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The topics one consumer group needs (events are shared by the groups of a test).
    fn group_topics(&self, group: &str) {
        self.topic(&format!("{group}.changelog"), PARTITIONS);
        self.topic(&format!("{group}.dead"), 1);
    }

    /// Produces as users' pipelines do, with two partitioners mixed: the Java client's murmur2
    /// (dripline's default, so these land home) for contacts `c0`–`c9`, `c20`–`c29`, …,
    /// librdkafka's default (CRC-32; most of these land away from home) for the others. Each
    /// producer's run is flushed before the other's starts, so every partition holds its
    /// records in timestamp order, as one pipeline's would (a replay merges by timestamp).
    fn produce(&self, records: &[(String, Vec<u8>, i64)]) {
        let producer = |partitioner: &str| -> BaseProducer {
            ClientConfig::new()
                .set("bootstrap.servers", self.addr())
                .set("enable.idempotence", "true")
                .set("partitioner", partitioner)
                .create()
                .unwrap()
        };
        let (murmur2, crc32) = (producer("murmur2_random"), producer("consistent_random"));
        let mut last: Option<bool> = None;
        for (key, value, ts) in records {
            let n: usize = key
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(1);
            let even = n / 10 % 2 == 0;
            if last.is_some_and(|l| l != even) {
                let previous = if even { &crc32 } else { &murmur2 };
                previous.flush(Duration::from_secs(30)).unwrap();
            }
            last = Some(even);
            let p = if even { &murmur2 } else { &crc32 };
            let topic = self.name("events");
            let mut r = BaseRecord::to(&topic).key(key.as_bytes()).payload(value).timestamp(*ts);
            loop {
                match p.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        p.poll(Duration::from_millis(10));
                        r = back;
                    }
                }
            }
        }
        murmur2.flush(Duration::from_secs(30)).unwrap();
        crc32.flush(Duration::from_secs(30)).unwrap();
    }

    /// The events topic read whole: the (partition, offset) of every original record away from
    /// its contact's home, and the sources named by the forwarded copies.
    fn away_from_home(&self) -> (Places, Places) {
        use dripline::config::Partitioner;
        let topic = self.name("events");
        let (mut away, mut copied) = (BTreeSet::new(), BTreeSet::new());
        for p in 0..PARTITIONS as i32 {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", self.addr())
                .set("group.id", "inspect")
                .create()
                .unwrap();
            let (_, high) = c.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).unwrap();
            c.assign(&tpl).unwrap();
            let mut next = 0;
            while next < high {
                let m = c.poll(Duration::from_secs(10)).expect("a record").unwrap();
                next = m.offset() + 1;
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name))
                        .and_then(|x| std::str::from_utf8(x.value?).ok()?.parse::<u64>().ok())
                };
                if let (Some(sp), Some(so)) = (
                    header("dripline.rerouted.partition"),
                    header("dripline.rerouted.offset"),
                ) {
                    copied.insert((sp as u16, so));
                    continue;
                }
                let Ok(ev) = dripline::event::Event::parse(m.payload().unwrap_or_default()) else {
                    continue;
                };
                let home = dripline::kafka::partitioner::home(Partitioner::Murmur2, ev.user_id.as_bytes(), PARTITIONS);
                if i32::from(home) != p {
                    away.insert((p as u16, m.offset() as u64));
                }
            }
        }
        (away, copied)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Instance {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn start(broker: &Broker, group: &str, dir: &Path) -> Instance {
    start_with(broker, group, dir, &shipped(), &[])
}

/// [`start`] with these workflows and extra environment.
fn start_with(broker: &Broker, group: &str, dir: &Path, workflows: &Path, env: &[(&str, String)]) -> Instance {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let (mut cmd, _) = common::run_command(workflows, &dir.join("data"), &dir.join("mail"), port);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .env(
            "DRIPLINE__MAIL__SECRET",
            "kafka-test-link-secret-shared-by-every-instance",
        )
        .env("DRIPLINE__KAFKA__BROKERS", broker.addr())
        .env("DRIPLINE__KAFKA__GROUP_ID", group)
        .env("DRIPLINE__KAFKA__EVENTS_TOPIC", broker.name("events"))
        .env(
            "DRIPLINE__KAFKA__CHANGELOG_TOPIC",
            broker.name(&format!("{group}.changelog")),
        )
        .env(
            "DRIPLINE__KAFKA__DEAD_LETTER_TOPIC",
            broker.name(&format!("{group}.dead")),
        )
        // A dead member is noticed within seconds, not the default 45.
        .env("DRIPLINE__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "6000")
        .env("DRIPLINE__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "500")
        .env("DRIPLINE__MAIL__RATE__PER_SECOND", "1000")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .unwrap();
    let i = Instance {
        child,
        port,
        dir: dir.to_path_buf(),
    };
    wait_for(Duration::from_secs(30), || {
        http(i.port, "GET", "/healthz", "").is_ok_and(|(s, _)| s == 200)
    });
    // Ready only once the group has assigned this member its partitions (restored, if any).
    wait_for(Duration::from_secs(60), || {
        http(i.port, "GET", "/readyz", "").is_ok_and(|(s, _)| s == 200)
    });
    i
}

impl Instance {
    fn metric(&self, name: &str) -> f64 {
        let (_, body) = http(self.port, "GET", "/metrics", "").unwrap();
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
    /// Message ids of the emails this instance wrote.
    fn sent(&self) -> Vec<String> {
        sent_ids(&self.dir)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn sent_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits until the group has consumed the events topic to its end (the offsets it commits for
/// lag tooling reach the high watermarks), the outboxes are empty, and processing has been
/// still for two seconds.
fn settle(broker: &Broker, group: &str, instances: &[&Instance]) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", group)
        .create()
        .unwrap();
    let topic = broker.name("events");
    let caught_up = || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS as i32 {
            tpl.add_partition(&topic, p);
        }
        let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else {
            return false;
        };
        (0..PARTITIONS as i32).all(|p| {
            let high = c
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .map_or(-1, |w| w.1);
            let at = committed.find_partition(&topic, p).map(|e| e.offset());
            high == 0 || at == Some(rdkafka::Offset::Offset(high))
        })
    };
    let (mut last, mut still_since) = (-1.0, std::time::Instant::now());
    wait_for(Duration::from_secs(120), || {
        let consumed: f64 = instances
            .iter()
            .map(|i| i.metric("dripline_inputs_processed_total"))
            .sum();
        let outbox: f64 = instances.iter().map(|i| i.metric("dripline_outbox_depth")).sum();
        if consumed != last || outbox != 0.0 || !caught_up() {
            still_since = std::time::Instant::now();
        }
        last = consumed;
        std::thread::sleep(Duration::from_millis(300));
        still_since.elapsed() > Duration::from_secs(2)
    });
}

/// A clickstream for `contacts` contacts (from `first`), stamped a few minutes back from now:
/// live-like, so the waits of the shipped workflows (an hour and more) stay pending.
fn clickstream(first: usize, contacts: usize, tag: &str) -> Vec<(String, Vec<u8>, i64)> {
    let t0 = chrono::Utc::now().timestamp_millis() - 10 * 60_000;
    let mut out = vec![];
    for c in first..first + contacts {
        let who = format!("c{c}");
        let mut push = |i: usize, json: String| out.push((who.clone(), json.into_bytes(), t0 + (c * 10 + i) as i64));
        push(
            0,
            format!(
                r#"{{"type":"identify","userId":"{who}","messageId":"{tag}i{c}","traits":{{"email":"{who}@example.org","first_name":"N{c}"}}}}"#
            ),
        );
        push(
            1,
            format!(r#"{{"type":"track","userId":"{who}","messageId":"{tag}n{c}","event":"Newsletter Subscribed"}}"#),
        );
        if c % 2 == 0 {
            push(
                2,
                format!(
                    r#"{{"type":"track","userId":"{who}","messageId":"{tag}p{c}","event":"Product Added","properties":{{"name":"Lamp"}}}}"#
                ),
            );
        }
        if c % 3 == 0 {
            push(
                3,
                format!(
                    r#"{{"type":"track","userId":"{who}","messageId":"{tag}o{c}","event":"Order Completed","properties":{{"order_id":"o{c}","total":25}}}}"#
                ),
            );
        }
        if c % 5 == 0 {
            push(
                4,
                format!(r#"{{"type":"track","userId":"{who}","messageId":"{tag}d{c}","event":"Ebook Downloaded"}}"#),
            );
        }
    }
    out
}

fn store_digest(dir: &Path) -> dripline::storage::digest::Digest {
    digest(&Store::open_read_only(&dir.join("data")).unwrap(), PARTITIONS as u16).unwrap()
}

/// `/metrics` of an engine on the embedded log after the sample clickstream.
fn embedded_scrape(dir: &Path) -> String {
    let port = free_port();
    let (mut cmd, _) = common::run_command(&shipped(), &dir.join("data"), &dir.join("mail"), port);
    let mut child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        http(port, "GET", "/readyz", "").is_ok_and(|(s, _)| s == 200)
    });
    let sample = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clickstream.ndjson")).unwrap();
    let events: Vec<&str> = sample.lines().filter(|l| l.starts_with('{')).collect();
    http(
        port,
        "POST",
        "/v1/batch",
        &format!(r#"{{"batch":[{}]}}"#, events.join(",")),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let scrape = http(port, "GET", "/metrics", "").unwrap().1;
    let _ = child.kill();
    let _ = child.wait();
    scrape
}

#[test]
fn one_instance_end_to_end_with_dead_letters() {
    let broker = Broker::start();
    broker.topic("events", PARTITIONS);
    broker.group_topics("solo");
    let mut events = clickstream(0, 40, "a");
    events.push(("bad".into(), b"{not json".to_vec(), 1));
    events.push(("bad".into(), br#"{"type":"track","userId":"u"}"#.to_vec(), 2));
    broker.produce(&events);
    let tmp = tempfile::tempdir().unwrap();
    let i = start(&broker, "solo", &tmp.path().join("solo"));
    assert_eq!(
        http(
            i.port,
            "POST",
            "/v1/track",
            r#"{"userId":"late","messageId":"late1","event":"Ebook Downloaded"}"#
        )
        .unwrap()
        .0,
        200,
        "HTTP ingest produces to the events topic"
    );
    settle(&broker, "solo", &[&i]);
    assert_eq!(i.metric("dripline_kafka_assigned_partitions"), 8.0);
    assert_eq!(i.metric("dripline_kafka_dead_letters_total"), 2.0);
    // The shipped dashboard and alert rules use only metrics a running engine exports: this
    // one on Kafka and, for the embedded log's, one on the embedded log.
    let embedded = embedded_scrape(&tmp.path().join("embedded"));
    let scrape = tmp.path().join("scrape.txt");
    std::fs::write(&scrape, http(i.port, "GET", "/metrics", "").unwrap().1 + &embedded).unwrap();
    let check = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ops_metrics_used.py"))
        .arg(&scrape)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let sent = i.sent();
    assert!(!sent.is_empty());
    assert_eq!(
        sent.len() as f64,
        i.metric("dripline_sends_total{result=\"accepted\""),
        "every accepted send is an email"
    );
    i.stop();
    // The dead letters, with the reason and where they came from in headers.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[&broker.name("solo.dead")]).unwrap();
    let mut dead = vec![];
    wait_for(Duration::from_secs(30), || {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let h = m.headers().unwrap();
            let headers: BTreeMap<String, String> = h
                .iter()
                .map(|x| {
                    (
                        x.key.to_string(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect();
            dead.push((String::from_utf8_lossy(m.payload().unwrap()).into_owned(), headers));
        }
        dead.len() == 2
    });
    dead.sort();
    assert_eq!(dead[0].0, r#"{"type":"track","userId":"u"}"#);
    assert_eq!(dead[0].1["dripline.reason"], "missing or empty `messageId`");
    assert!(dead[1].1["dripline.reason"].starts_with("not valid JSON"));
    for (_, h) in &dead {
        assert_eq!(h["dripline.source.topic"], broker.name("events"));
        assert!(h["dripline.source.partition"].parse::<u16>().unwrap() < 8);
        assert!(h["dripline.source.offset"].parse::<u64>().is_ok());
    }

    // Restarted, the instance rebuilds each partition's messageId window from the topic: a
    // client's retry of an event processed before the restart is dropped, a new one is not.
    let i = start(&broker, "solo", &tmp.path().join("solo"));
    for id in ["late1", "late2"] {
        let body = format!(r#"{{"userId":"late","messageId":"{id}","event":"Ebook Downloaded"}}"#);
        assert_eq!(http(i.port, "POST", "/v1/track", &body).unwrap().0, 200);
    }
    wait_for(Duration::from_secs(60), || {
        i.metric("dripline_events_rejected_total{reason=\"duplicate\"}") == 1.0
            && i.metric("dripline_inputs_processed_total") >= 1.0
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(i.metric("dripline_inputs_processed_total"), 1.0, "only late2 is new");
    i.stop();

    // Rebuilt from the topic alone (all partitions merged in timestamp order), the state equals
    // the instance's; everything it would send, the changelog's ledger says was sent.
    let rebuilt = tmp.path().join("rebuilt");
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(["replay", "--kafka-topic", &broker.name("events"), "--into"])
        .arg(rebuilt.join("data"))
        .env(
            "DRIPLINE__WORKFLOWS__DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"),
        )
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .env("DRIPLINE__KAFKA__BROKERS", broker.addr())
        .env("DRIPLINE__KAFKA__GROUP_ID", "solo")
        .env("DRIPLINE__KAFKA__CHANGELOG_TOPIC", broker.name("solo.changelog"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("2 bad records"),
        "the two dead letters are counted: {report}"
    );
    let would: Vec<u64> = report
        .split("would send ")
        .nth(1)
        .map(|r| {
            r.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .take(2)
                .collect()
        })
        .unwrap_or_default();
    assert!(would.len() == 2 && would[0] > 0 && would[0] == would[1], "{report}");
    assert_eq!(store_digest(&rebuilt), store_digest(&tmp.path().join("solo")));
}

enum Handover {
    /// SIGTERM: the member commits, leaves the group, and the survivor restores its partitions.
    Graceful,
    /// `kill -9`: the group notices the member's silence after its session timeout.
    Kill9,
}

/// Two members split the topic; while more events flow in, one of them goes (`how`); the
/// survivor takes over its partitions from the changelog. Its final state, and the message ids
/// the pair sent, must equal a single instance's over the same events.
fn handover(how: Handover) {
    let broker = Broker::start();
    broker.topic("events", PARTITIONS);
    broker.group_topics("single");
    broker.group_topics("pair");
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let first = clickstream(0, 150, "a");
    broker.produce(&first);

    let a = start(&broker, "pair", &tmp.join("a"));
    let b = start(&broker, "pair", &tmp.join("b"));
    wait_for(Duration::from_secs(60), || {
        let (x, y) = (
            a.metric("dripline_kafka_assigned_partitions"),
            b.metric("dripline_kafka_assigned_partitions"),
        );
        x + y == 8.0 && x > 0.0 && y > 0.0
    });
    settle(&broker, "pair", &[&a, &b]);
    assert!(!a.sent().is_empty() && !b.sent().is_empty(), "both members sent mail");
    // Every record produced away from its contact's home was forwarded there, once.
    let (away, copied) = broker.away_from_home();
    assert!(
        away.len() > 100,
        "the CRC-32 producer put records away from home: {}",
        away.len()
    );
    assert_eq!(copied, away);
    let rerouted = |i: &Instance| i.metric("dripline_kafka_rerouted_total");
    assert_eq!(rerouted(&a) + rerouted(&b), away.len() as f64);
    // The global send rate is split by the share of partitions each owns.
    let rate = |i: &Instance| i.metric("dripline_mail_rate_limit_messages_per_second");
    assert_eq!(rate(&a) + rate(&b), 1000.0);
    assert_eq!(rate(&a), 1000.0 * a.metric("dripline_kafka_assigned_partitions") / 8.0);

    // More traffic; the member that joined second goes while it flows in.
    let second = clickstream(100, 150, "b");
    let b_dir = b.dir.clone();
    std::thread::scope(|s| {
        let h = s.spawn(|| broker.produce(&second));
        std::thread::sleep(Duration::from_millis(150));
        match how {
            Handover::Graceful => b.stop(),
            Handover::Kill9 => b.kill9(),
        }
        h.join().unwrap();
    });
    wait_for(Duration::from_secs(90), || {
        a.metric("dripline_kafka_assigned_partitions") == 8.0
    });
    settle(&broker, "pair", &[&a]);
    assert!(
        a.metric("dripline_kafka_restore_records_total") > 0.0,
        "the survivor restored state"
    );
    let a_dir = a.dir.clone();
    a.stop();

    // The same events through one instance alone.
    let single = start(&broker, "single", &tmp.join("single"));
    settle(&broker, "single", &[&single]);
    let single_dir = single.dir.clone();

    // Whatever the handover did, each record away from home has a copy at home (`kill -9` may
    // leave two: the new owner forwards again from the last commit), and the single instance,
    // which reads the pair's copies too, forwarded each once and handled each once.
    let (away, copied) = broker.away_from_home();
    assert_eq!(copied, away);
    assert_eq!(single.metric("dripline_kafka_rerouted_total"), away.len() as f64);
    let orders = first
        .iter()
        .chain(&second)
        .filter(|r| r.1.windows(15).any(|w| w == b"Order Completed"))
        .count();
    let confirmations = |dirs: &[&Path]| -> usize {
        dirs.iter()
            .map(|d| common::files_containing(&d.join("mail"), &["Subject: Order o"]).len())
            .sum()
    };
    assert_eq!(
        confirmations(&[&a_dir, &b_dir]),
        orders,
        "every order confirmed exactly once"
    );
    assert_eq!(confirmations(&[&single.dir]), orders);

    let mut pair = sent_ids(&a_dir);
    pair.extend(sent_ids(&b_dir));
    let total = pair.len();
    pair.sort();
    pair.dedup();
    assert_eq!(pair.len(), total, "no message id was sent by both members");
    assert_eq!(
        pair,
        sent_ids(&single_dir),
        "the pair sent exactly what one instance sends"
    );
    single.stop();
    // The survivor holds every partition's state, restored from the changelog where it was
    // not its own, equal to the single instance's, contact for contact and timer for timer.
    let (survivor, alone) = (store_digest(&a_dir), store_digest(&single_dir));
    assert!(alone.contacts() >= 250, "{alone:?}");
    assert!(
        alone.partitions.iter().map(|p| p.timers).sum::<u64>() > 0,
        "some waits are pending"
    );
    assert_eq!(survivor, alone);
}

#[test]
fn two_instances_split_the_partitions_and_hand_over_on_a_stop() {
    handover(Handover::Graceful);
}

/// `kill -9` of one member mid-run: after its session times out the survivor owns every
/// partition, restored from the changelog. (On tansu 0.6.0 this relies on the member's rejoin
/// when a rebalance hands back the same partitions: see `rejoin_if_wedged`.)
#[test]
fn two_instances_and_a_kill_9_lose_nothing_and_repeat_nothing() {
    handover(Handover::Kill9);
}

/// A changelog published before outbox keys carried the decision time (the send id alone)
/// restores into an outbox the mailer can walk, and the waiting email goes out.
#[test]
fn a_changelog_with_outbox_keys_of_the_earlier_layout_restores_and_sends() {
    use dripline::machine::SendId;
    use dripline::storage::tables::{self, OutboxKey};
    let broker = Broker::start();
    broker.topic("events", PARTITIONS);
    broker.group_topics("legacy");
    let tmp = tempfile::tempdir().unwrap();
    let id = SendId(77);
    // The entry's bytes as the store writes them.
    let value = {
        let s = Store::open(&tmp.path().join("scratch")).unwrap();
        let e = common::entry(
            "ann@example.org",
            "Restored",
            dripline::workflow::MailKind::Transactional,
            "<p>hello</p>",
        );
        let mut b = rocksdb::WriteBatch::default();
        tables::put_outbox(&s, &mut b, id, &e);
        s.write(b, true).unwrap();
        let key = OutboxKey::of(id, &e).bytes();
        s.db.get_cf(s.cf(dripline::storage::CF_OUTBOX), key).unwrap().unwrap()
    };
    // Published under the earlier key: the table name, a zero byte, the send id.
    let mut key = b"outbox\0".to_vec();
    key.extend_from_slice(&tables::id_key(id));
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let topic = broker.name("legacy.changelog");
    p.send(BaseRecord::to(&topic).partition(0).key(&key).payload(&value))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();

    let i = start(&broker, "legacy", &tmp.path().join("i"));
    wait_for(Duration::from_secs(30), || i.sent().contains(&id.to_string()));
    let eml = std::fs::read_to_string(i.dir.join("mail").join(format!("{id}.eml"))).unwrap();
    assert!(eml.contains("Subject: Restored"), "{eml}");
    i.stop();
}

/// GDPR erasure on Kafka: the instance that owns the contact erases it (no byte of its id or
/// address left in its data directory); another instance restoring the partitions from the
/// changelog gets the tombstones and holds nothing of it either; a replay of the events topic
/// meets the erase record and erases the contact again.
#[test]
fn an_erased_contact_is_gone_from_every_instance_and_from_a_replay_of_the_topic() {
    const ID: &str = "kafka-erase-4711";
    const EMAIL: &str = "kafka.erase@example.org";
    let broker = Broker::start();
    broker.topic("events", PARTITIONS);
    broker.group_topics("erase");
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&broker, "erase", &tmp.path().join("a"));
    let batch = serde_json::json!({"batch": [
        {"type": "identify", "userId": ID, "messageId": "i-1", "traits": {"email": EMAIL}},
        {"type": "track", "userId": ID, "messageId": "n-1", "event": "Newsletter Subscribed"},
        {"type": "identify", "userId": "bob", "messageId": "i-2", "traits": {"email": "bob@example.org"}},
    ]});
    assert_eq!(http(a.port, "POST", "/v1/batch", &batch.to_string()).unwrap().0, 200);
    settle(&broker, "erase", &[&a]);
    assert_eq!(
        http(a.port, "GET", &format!("/admin/v1/contacts/{ID}"), "").unwrap().0,
        200
    );
    let (status, answer) = http(a.port, "DELETE", &format!("/admin/v1/contacts/{ID}"), "").unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        http(a.port, "GET", &format!("/admin/v1/contacts/{ID}"), "").unwrap().0,
        404
    );
    settle(&broker, "erase", &[&a]);
    a.stop();
    let left = common::files_containing(&tmp.path().join("a/data"), &[ID, EMAIL]);
    assert!(left.is_empty(), "left on the instance that erased: {left:?}");

    let b = start(&broker, "erase", &tmp.path().join("b"));
    settle(&broker, "erase", &[&b]);
    assert_eq!(
        http(b.port, "GET", &format!("/admin/v1/contacts/{ID}"), "").unwrap().0,
        404
    );
    assert_eq!(http(b.port, "GET", "/admin/v1/contacts/bob", "").unwrap().0, 200);
    // The restore wrote the contact's records before their tombstones: a compaction follows.
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(tmp.path().join("b/run.log")).is_ok_and(|l| l.contains("store compacted"))
    });
    b.stop();
    let left = common::files_containing(&tmp.path().join("b/data"), &[ID, EMAIL]);
    assert!(left.is_empty(), "left on the instance that restored: {left:?}");

    let rebuilt = tmp.path().join("rebuilt");
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(["replay", "--kafka-topic", &broker.name("events"), "--into"])
        .arg(&rebuilt)
        .env(
            "DRIPLINE__WORKFLOWS__DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"),
        )
        .env("DRIPLINE__KAFKA__BROKERS", broker.addr())
        .env("DRIPLINE__KAFKA__GROUP_ID", "erase")
        .env("DRIPLINE__KAFKA__CHANGELOG_TOPIC", broker.name("erase.changelog"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = dripline::storage::Store::open_read_only(&rebuilt).unwrap();
    assert!(dripline::storage::tables::get_contact(&store, ID).unwrap().is_none());
    assert!(dripline::storage::tables::get_contact(&store, "bob").unwrap().is_some());
    drop(store);
    let left = common::files_containing(&rebuilt, &[ID, EMAIL]);
    assert!(left.is_empty(), "left in the rebuilt store: {left:?}");
}

/// Webhook calls on Kafka: made from the same outbox, once each, signed, with the results
/// counted; the receiver (`tests/support/webhook_receiver.py`) checks every signature with the
/// reference `standardwebhooks` package.
#[test]
fn webhook_calls_on_kafka_are_made_once_each() {
    const CALLS: usize = 20;
    let broker = Broker::start();
    broker.topic("events", PARTITIONS);
    broker.group_topics("hooks");
    let tmp = tempfile::tempdir().unwrap();
    let rport = free_port();
    let log = tmp.path().join("requests.jsonl");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = common::webhook_receiver(rport, &log, secret, &[]);
    let wf = tmp.path().join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::copy(shipped().join("dripline.yaml"), wf.join("dripline.yaml")).unwrap();
    std::fs::write(
        wf.join("calls.yaml"),
        format!(
            "id: calls\ntriggers:\n  - event: Call Requested\nsteps:\n  - id: call\n    webhook:\n      url: \"http://127.0.0.1:{rport}/ok\"\n      headers: {{ X-Contact: \"{{{{ contact.id }}}}\" }}\n"
        ),
    )
    .unwrap();
    let i = start_with(
        &broker,
        "hooks",
        &tmp.path().join("i"),
        &wf,
        &[("DRIPLINE__WEBHOOK__SECRET", secret.to_owned())],
    );
    let events: Vec<String> = (0..CALLS)
        .map(|n| format!(r#"{{"type":"track","userId":"k{n}","messageId":"k{n}","event":"Call Requested"}}"#))
        .collect();
    let (status, body) = http(
        i.port,
        "POST",
        "/v1/batch",
        &format!(r#"{{"batch":[{}]}}"#, events.join(",")),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let requests = || common::webhook_requests(&log);
    wait_for(Duration::from_secs(60), || requests().len() >= CALLS);
    settle(&broker, "hooks", &[&i]);
    let reqs = requests();
    drop(receiver);
    assert_eq!(reqs.len(), CALLS, "each call once");
    let contacts: BTreeSet<_> = reqs.iter().map(|r| r["headers"]["x-contact"].to_string()).collect();
    let keys: BTreeSet<_> = reqs
        .iter()
        .map(|r| r["headers"]["idempotency-key"].to_string())
        .collect();
    assert_eq!((contacts.len(), keys.len()), (CALLS, CALLS));
    assert!(reqs.iter().all(|r| r["verified"] == true));
    assert_eq!(
        i.metric("dripline_webhook_calls_total{result=\"delivered\"}"),
        CALLS as f64
    );
    assert_eq!(i.metric("dripline_outbox_depth"), 0.0);
}

fn shipped() -> PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into()
}

/// dripline's murmur2 partition of a key is the Java client's, as kafka-python (a port of the
/// Java client's partitioner, from PyPI) computes it, for keys of every length and alphabet.
#[test]
fn home_partitions_equal_the_java_clients_as_kafka_python_computes_them() {
    use dripline::config::Partitioner;
    let keys: Vec<String> = (0..600)
        .map(|i| match i % 4 {
            0 => format!("user-{i}"),
            1 => format!("{i}@example.org"),
            2 => format!("联系人{i}-контакт"),
            _ => "x".repeat(i % 37),
        })
        .collect();
    let script = r#"
import json, sys
from kafka.partitioner.default import murmur2
for key in json.load(sys.stdin):
    h = murmur2(key.encode()) & 0x7fffffff
    print(" ".join(str(h % n) for n in (1, 2, 3, 8, 12, 64, 1000)))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    serde_json::to_writer(child.stdin.take().unwrap(), &keys).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kafka-python (scripts/setup-test.sh installs it)");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), keys.len());
    for (key, line) in keys.iter().zip(lines) {
        let ours: Vec<String> = [1, 2, 3, 8, 12, 64, 1000]
            .iter()
            .map(|n| dripline::kafka::partitioner::partition(Partitioner::Murmur2, key.as_bytes(), *n).to_string())
            .collect();
        assert_eq!(ours.join(" "), line, "{key:?}");
    }
}

/// A changelog written before records were routed home can hold one contact on two partitions.
/// Restoring it, a record away from the contact's home is counted and never replaces a newer
/// state, whichever of the two partitions is restored first; one that is the contact's only
/// state is kept.
#[test]
fn a_contact_record_away_from_home_in_the_changelog_never_replaces_a_newer_state() {
    use dripline::config::Partitioner;
    use dripline::machine::ContactState;
    let broker = Broker::start();
    broker.topic("events", PARTITIONS);
    broker.group_topics("split");
    let home = |id: &str| dripline::kafka::partitioner::home(Partitioner::Murmur2, id.as_bytes(), PARTITIONS) as i32;
    let find = |ok: &dyn Fn(i32) -> bool| (0..).map(|i| format!("u{i}")).find(|id| ok(home(id))).unwrap();
    // Restored in partition order: `later`'s stray record comes after its home's, `earlier`'s before.
    let (later, earlier, only) = (find(&|h| h < 7), find(&|h| h > 0), "stray".to_string());
    let state = |email: &str, at: i64| {
        let mut st = ContactState::default();
        std::sync::Arc::make_mut(&mut st.traits).insert("email".into(), dripline::value::Value::from(email));
        st.last_activity = Some(at);
        st.encode()
    };
    let records = [
        (home(&later), &later, state("new@example.org", 2_000)),
        (home(&later) + 1, &later, state("old@example.org", 1_000)),
        (home(&earlier), &earlier, state("new@example.org", 2_000)),
        (home(&earlier) - 1, &earlier, state("old@example.org", 1_000)),
        (
            (home(&only) + 3) % PARTITIONS as i32,
            &only,
            state("only@example.org", 500),
        ),
    ];
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let topic = broker.name("split.changelog");
    for (partition, id, value) in &records {
        let key = format!("contacts\0{id}");
        p.send(BaseRecord::to(&topic).partition(*partition).key(&key).payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let i = start(&broker, "split", &tmp.path().join("i"));
    assert_eq!(i.metric("dripline_kafka_changelog_foreign_contacts_total"), 3.0);
    let dir = i.dir.clone();
    i.stop();
    let store = Store::open_read_only(&dir.join("data")).unwrap();
    let email = |id: &str| {
        let st = dripline::storage::tables::get_contact(&store, id).unwrap().unwrap();
        st.traits.get("email").and_then(|v| v.as_str()).map(String::from)
    };
    assert_eq!(email(&later).as_deref(), Some("new@example.org"));
    assert_eq!(email(&earlier).as_deref(), Some("new@example.org"));
    assert_eq!(email(&only).as_deref(), Some("only@example.org"));
}
