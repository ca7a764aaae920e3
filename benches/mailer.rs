//! The mailer pool into a local SMTP sink (Postfix's `smtp-sink` on loopback: `apt-get install
//! postfix`, or name another binary in `DRIPLINE_SMTP_SINK`). The outbox is filled directly (untimed) with rendered marketing mail, then:
//!
//! 1. no limit: messages/s through the whole path — outbox walk, suppression checks, tracking
//!    rewrite, the SMTP exchange over persistent TCP_NODELAY connections, the sent-ledger batch
//!    and the `Email Delivered` events appended to the log;
//! 2. the same with every message DKIM-signed, RSA-2048 then Ed25519
//!    (`DRIPLINE_BENCH_DKIM_MESSAGES`, default 30000, each);
//! 3. limits set (a global rate and a lower one for gmail.com): for `DRIPLINE_BENCH_SECONDS`
//!    (default 60), the achieved rate of each against the configured one.
//!
//! `DRIPLINE_BENCH_MESSAGES` (default 100000), `DRIPLINE_BENCH_CONNECTIONS` (8),
//! `DRIPLINE_BENCH_RATE` (2000) and `DRIPLINE_BENCH_GMAIL_RATE` (300) scale it.

use dripline::config::Settings;
use dripline::machine::SendId;
use dripline::runtime::Engine;
use dripline::storage::tables::{self, Content, OutboxEntry};
use dripline::value::{Map, Value};
use dripline::workflow::MailKind;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sink(port: u16) -> Sink {
    let bin = std::env::var("DRIPLINE_SMTP_SINK").unwrap_or_else(|_| "/usr/sbin/smtp-sink".into());
    let child = Command::new(&bin)
        .args(["-u", "nobody", "-m", "512", &format!("127.0.0.1:{port}"), "1024"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin} (Debian postfix): {e}"));
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Sink(child)
}

fn settings(dir: &std::path::Path, port: u16) -> Settings {
    let mut s = Settings::load(None).unwrap();
    s.workflows.dir = workflows(dir);
    s.engine.data_dir = dir.join("data");
    s.mail.transport = "smtp".into();
    s.mail.smtp.port = port;
    s.mail.smtp.connections = env("DRIPLINE_BENCH_CONNECTIONS", 8);
    s
}

const DOMAINS: [&str; 5] = ["gmail.com", "outlook.com", "yahoo.com", "example.org", "example.net"];

/// A newsletter workflow whose template is about 2 KiB of HTML with links, as marketing mail
/// is: every message is rendered from it as it is sent, then link-tracked and built.
fn workflows(dir: &std::path::Path) -> std::path::PathBuf {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    let para = "<p>Some words about the product, the offer and why it matters to you this week.</p>".repeat(20);
    let yaml = format!(
        "id: newsletter\ntriggers: [{{ event: Subscribed }}]\nsteps:\n  - id: welcome\n    send: welcome\n\
         templates:\n  welcome:\n    subject: \"Welcome, {{{{ first_name }}}}!\"\n    html: '<html><body><h1>Hello \
         {{{{ first_name }}}}</h1>{para}<p><a href=\"https://shop.example.com/cart?utm_source=drip\">Your cart</a> \
         <a href=\"https://shop.example.com/deals\">Deals</a> <a href=\"{{{{ unsubscribe_url }}}}\">Unsubscribe</a></p></body></html>'\n"
    );
    std::fs::write(wf.join("newsletter.yaml"), yaml).unwrap();
    wf
}

/// `n` marketing sends of the newsletter, as partitions decide them (rendered when sent).
fn fill(engine: &Engine, n: usize) {
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..n {
        let traits: Map = [("first_name".to_string(), Value::Str(format!("reader {i}").into()))]
            .into_iter()
            .collect();
        let e = OutboxEntry {
            partition: (i % 8) as u16,
            contact: format!("c{i}").into(),
            workflow: "newsletter".into(),
            version: 1,
            step: "welcome".into(),
            kind: MailKind::Marketing,
            to: format!("reader{i}@{}", DOMAINS[i % DOMAINS.len()]).into(),
            content: Content::Template {
                template: "welcome".into(),
                traits: Arc::new(traits),
                event: Arc::default(),
            },
            decided_at: 1_700_000_000_000,
            attempts: 0,
            first_attempt: 0,
            not_before: 0,
        };
        let id = SendId(xxhash_rust::xxh3::xxh3_128(format!("bench-{i}").as_bytes()));
        tables::put_outbox(&engine.store, &mut batch, id, &e);
        if batch.len() >= 4096 {
            engine.store.write(std::mem::take(&mut batch), false).unwrap();
        }
    }
    engine.store.write(batch, true).unwrap();
    // Filled beside the partitions: the depth counts come from the outbox as it is.
    dripline::storage::outbox_counts::recount(&engine.store).unwrap();
}

fn counter(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `messages` with no limit (DKIM-signed with `dkim`: algorithm and key file) and prints
/// the rate.
fn unlimited(sys: &actix::SystemRunner, port: u16, messages: usize, dkim: Option<(&str, &std::path::Path)>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path(), port);
    if let Some((algorithm, key)) = dkim {
        s.mail.dkim.selector = "bench".into();
        s.mail.dkim.domain = "example.com".into();
        s.mail.dkim.algorithm = algorithm.into();
        s.mail.dkim.private_key_file = key.into();
    }
    let engine = Engine::open(&s).unwrap();
    fill(&engine, messages);
    let start = Instant::now();
    let mut delivered = 0;
    while delivered < messages {
        let round = sys.block_on(engine.send_mail(2048)).unwrap();
        delivered += round.delivered;
        assert!(round.handled > 0 || round.wait.is_some(), "the mailer stalled");
        assert!(start.elapsed() < Duration::from_secs(600), "not done in 10 minutes");
    }
    let took = start.elapsed().as_secs_f64();
    let m = engine.metrics.render();
    let signed = match dkim {
        Some(("rsa", _)) => ", DKIM RSA-2048",
        Some(_) => ", DKIM Ed25519",
        None => "",
    };
    println!(
        "mailer, no limit{signed}: {messages} messages over {} connections in {took:.2} s = {:.0} messages/s \
         (delivered {}, sent ledger {}, open connections {})",
        engine.settings.mail.smtp.connections,
        messages as f64 / took,
        counter(
            &m,
            "dripline_mail_deliveries_total{domain=\"other\",result=\"delivered\"}"
        ),
        tables::sent_ids(&engine.store).unwrap().len(),
        counter(&m, "dripline_smtp_connections_open"),
    );
}

fn main() {
    let messages = env("DRIPLINE_BENCH_MESSAGES", 100_000);
    let seconds = env("DRIPLINE_BENCH_SECONDS", 60) as u64;
    let rate = env("DRIPLINE_BENCH_RATE", 2000) as f64;
    let gmail_rate = env("DRIPLINE_BENCH_GMAIL_RATE", 300) as f64;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _sink = sink(port);
    let sys = actix::System::new();

    // 1. No limit; 2. the same, DKIM-signed.
    unlimited(&sys, port, messages, None);
    let keys = tempfile::tempdir().unwrap();
    let rsa = keys.path().join("rsa.pem");
    let made = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&rsa)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    let ed = keys.path().join("ed25519.key");
    let seed: [u8; 32] = rand::random();
    std::fs::write(
        &ed,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, seed),
    )
    .unwrap();
    let dkim_messages = env("DRIPLINE_BENCH_DKIM_MESSAGES", 30_000);
    unlimited(&sys, port, dkim_messages, Some(("rsa", &rsa)));
    unlimited(&sys, port, dkim_messages, Some(("ed25519", &ed)));

    // 3. A global rate and a lower one for one domain, held for `seconds`.
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path(), port);
    s.mail.rate.per_second = rate;
    s.mail.rate.domains.insert("gmail.com".into(), gmail_rate);
    let engine = Engine::open(&s).unwrap();
    fill(&engine, (rate as usize) * (seconds as usize + 10));
    let gmail_line = "dripline_mail_deliveries_total{domain=\"gmail.com\",result=\"delivered\"}";
    let start = Instant::now();
    let mut delivered = 0;
    let mut gmail_at_end = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        let round = sys.block_on(engine.send_mail(128)).unwrap();
        delivered += round.delivered;
        gmail_at_end = counter(&engine.metrics.render(), gmail_line);
        if round.handled == 0 {
            std::thread::sleep(
                round
                    .wait
                    .unwrap_or(Duration::from_millis(5))
                    .min(Duration::from_millis(50)),
            );
        }
    }
    let took = start.elapsed().as_secs_f64();
    let achieved = delivered as f64 / took;
    let gmail = gmail_at_end as f64 / took;
    println!(
        "mailer, limits: global {rate:.0}/s configured, {achieved:.1}/s achieved over {took:.1} s ({:+.2} %); \
         gmail.com {gmail_rate:.0}/s configured, {gmail:.1}/s achieved ({:+.2} %)",
        (achieved / rate - 1.0) * 100.0,
        (gmail / gmail_rate - 1.0) * 100.0,
    );
}
