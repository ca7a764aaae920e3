//! The mailer pool against a real SMTP server on 127.0.0.1 (Python aiosmtpd storing into a
//! Maildir; `tests/support/smtp_server.py` answers 421/451/550 by recipient, see there).
//! Rounds run on an actix system, as in `dripline run`: the SMTP connection actors live on it.

mod common;

use common::free_port;
use dripline::config::Settings;
use dripline::runtime::Engine;
use dripline::storage::{log, tables};
use dripline::time::parse_rfc3339;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct SmtpServer(Child);

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn smtp_server(port: u16, maildir: &Path) -> SmtpServer {
    smtp_server_with(port, maildir, &[])
}

fn smtp_server_with(port: u16, maildir: &Path, options: &[&str]) -> SmtpServer {
    let child = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_server.py"))
        .arg(port.to_string())
        .arg(maildir)
        .args(options)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (scripts/setup.sh installs it)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the SMTP server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    SmtpServer(child)
}

fn settings(dir: &Path, port: u16) -> Settings {
    let mut s = common::settings(dir);
    s.mail.transport = "smtp".into();
    s.mail.smtp.port = port;
    s.mail.smtp.connections = 4;
    s.mail.retry.initial = "100ms".into();
    s.mail.retry.max = "400ms".into();
    s.policy.frequency_cap.enabled = false;
    s.mail.delivery_events = true;
    s
}

fn delivered(maildir: &Path) -> Vec<String> {
    std::fs::read_dir(maildir.join("new"))
        .map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect())
        .unwrap_or_default()
}

/// Each address subscribes to the newsletter: one welcome email each, decided at once.
fn subscribe(engine: &Engine, addresses: &[&str]) {
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut events = vec![];
    for who in addresses {
        events.push(
            json!({"type": "identify", "userId": who, "messageId": format!("i-{who}"), "traits": {"email": who}}),
        );
        events.push(
            json!({"type": "track", "userId": who, "messageId": format!("n-{who}"), "event": "Newsletter Subscribed"}),
        );
    }
    engine.ingest_values(&events, None, t0).unwrap();
    engine.pump(t0).unwrap();
}

/// Mailer rounds until the outbox is empty, sleeping as long as each round says nothing can go.
fn send_all(sys: &actix::SystemRunner, engine: &Engine, limit: Duration) {
    let start = Instant::now();
    while !tables::outbox_ids(&engine.store).unwrap().is_empty() {
        assert!(start.elapsed() < limit, "outbox not drained after {limit:?}");
        let round = sys.block_on(engine.send_mail(100)).unwrap();
        if round.handled == 0 {
            std::thread::sleep(
                round
                    .wait
                    .unwrap_or(Duration::from_millis(20))
                    .min(Duration::from_millis(200)),
            );
        }
    }
}

/// Delivery events appended to the log, by event name, then contact.
fn feedback_events(engine: &Engine) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in 0..engine.settings.engine.partitions {
        for r in log::read(&engine.store, p, 0, 100_000).unwrap() {
            if r.event.message_id.starts_with("feedback:") {
                out.entry(r.event.name.to_string())
                    .or_default()
                    .push(r.event.user_id.to_string());
            }
        }
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

#[test]
fn messages_reach_a_real_smtp_server_over_persistent_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = tmp.path().join("maildir");
    let _server = smtp_server(port, &maildir);
    let engine = Engine::open(&settings(tmp.path(), port)).unwrap();
    let addresses: Vec<String> = (0..12).map(|i| format!("reader{i}@example.org")).collect();
    subscribe(&engine, &addresses.iter().map(String::as_str).collect::<Vec<_>>());
    let sys = actix::System::new();
    assert_eq!(sys.block_on(engine.send_mail(100)).unwrap().delivered, 12);
    let mails = delivered(&maildir);
    assert_eq!(mails.len(), 12);
    for id in tables::sent_ids(&engine.store).unwrap() {
        let n = mails
            .iter()
            .filter(|m| m.contains(&format!("<{id}@dripline.example.com>")))
            .count();
        assert_eq!(n, 1, "message {id} once");
    }
    let ann = mails
        .iter()
        .find(|m| common::addressed_to(m, "reader0@example.org"))
        .unwrap();
    assert!(ann.contains("Subject: Welcome"), "{ann}");
    // Marketing mail: RFC 8058 one-click unsubscribe with a signed https URL and a mailto.
    assert!(ann.contains("List-Unsubscribe: <http://127.0.0.1:8081/u/"), "{ann}");
    assert!(
        ann.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{ann}"
    );
    let m = engine.metrics.render();
    assert!(
        m.contains("dripline_sends_total{result=\"accepted\",workflow=\"welcome_series\"} 12"),
        "{m}"
    );
    assert!(
        m.contains("dripline_mail_deliveries_total{domain=\"other\",result=\"delivered\"} 12"),
        "{m}"
    );
    // Connections stay open between rounds (reused, not one per message).
    let open = m
        .lines()
        .find(|l| l.starts_with("dripline_smtp_connections_open "))
        .unwrap();
    let open: i64 = open.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((1..=4).contains(&open), "{open} connections open");
}

#[test]
fn every_message_ends_delivered_or_bounced_through_4xx_5xx_and_a_server_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = tmp.path().join("maildir");
    let server = smtp_server(port, &maildir);
    let engine = Engine::open(&settings(tmp.path(), port)).unwrap();
    let ok = [
        "ok1@example.org",
        "ok2@example.org",
        "ok3@example.com",
        "ok4@example.net",
    ];
    let (defer, busy, bounce) = (
        "defer451-a@example.org",
        "busy421-b@example.net",
        "bounce550-c@example.org",
    );
    let all: Vec<&str> = ok.iter().copied().chain([defer, busy, bounce]).collect();
    subscribe(&engine, &all);
    let sys = actix::System::new();

    // First round: the ok ones go, 421/451 are deferred, 550 bounces.
    let first = sys.block_on(engine.send_mail(100)).unwrap();
    assert_eq!((first.handled, first.delivered), (7, 4));
    assert_eq!(
        tables::outbox_ids(&engine.store).unwrap().len(),
        2,
        "the two deferred wait"
    );

    // The server goes away: the deferred messages come due, find nobody, and stay.
    drop(server);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let r = sys.block_on(engine.send_mail(100)).unwrap();
        assert_eq!(r.delivered, 0);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        tables::outbox_ids(&engine.store).unwrap().len(),
        2,
        "nothing lost while down"
    );
    assert!(engine.metrics.render().contains("result=\"unavailable\""));

    // Back again (its greylisting memory is gone: 451 twice and 421 once more, then accepted).
    let _server = smtp_server(port, &maildir);
    send_all(&sys, &engine, Duration::from_secs(30));

    let mails = delivered(&maildir);
    for who in ok.iter().chain([&defer, &busy]) {
        let n = mails.iter().filter(|m| common::addressed_to(m, who)).count();
        assert_eq!(n, 1, "{who}: exactly one delivered");
    }
    assert!(!mails.iter().any(|m| m.contains(bounce)), "a 550 is never delivered");
    assert_eq!(mails.len(), 6);
    assert_eq!(tables::sent_ids(&engine.store).unwrap().len(), 6);
    let dead = dripline::storage::dead_letters::all(&engine.store).unwrap();
    assert!(dead.iter().any(|d| d.reason.starts_with("bounced: 550")), "{dead:?}");
    // The bounce suppresses the contact at once...
    assert!(tables::get_suppression(&engine.store, bounce).unwrap().unwrap().all);

    // ...and every result is an event in the contact's stream.
    let events = feedback_events(&engine);
    let mut delivered_to: Vec<&str> = ok.iter().copied().chain([defer, busy]).collect();
    delivered_to.sort();
    assert_eq!(events["Email Delivered"], delivered_to);
    assert_eq!(
        events["Email Deferred"],
        vec![busy, defer],
        "one Deferred event per message"
    );
    assert_eq!(events["Email Bounced"], vec![bounce]);
    engine.pump(parse_rfc3339("2026-03-02T10:01:00Z").unwrap()).unwrap();
    assert!(
        engine.contact(bounce).unwrap().unwrap().suppressed,
        "the state machine saw the bounce"
    );
    assert!(!engine.contact(defer).unwrap().unwrap().suppressed);
    let m = engine.metrics.render();
    let retries: u64 = m
        .lines()
        .find(|l| l.starts_with("dripline_mail_retries_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(retries >= 3, "451 twice and 421 once at least: {retries}");
}

#[test]
fn a_receiver_that_keeps_deferring_ends_in_a_soft_bounce_after_the_maximum_age() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = tmp.path().join("maildir");
    let _server = smtp_server(port, &maildir);
    let mut s = settings(tmp.path(), port);
    s.mail.retry.max_age = "600ms".into();
    let engine = Engine::open(&s).unwrap();
    let who = "always451-z@example.org";
    subscribe(&engine, &[who, "fine@example.org"]);
    let sys = actix::System::new();
    send_all(&sys, &engine, Duration::from_secs(20));
    assert_eq!(delivered(&maildir).len(), 1);
    let dead = dripline::storage::dead_letters::all(&engine.store).unwrap();
    let soft = dead
        .iter()
        .find(|d| d.reason.starts_with("soft bounce"))
        .expect("a soft bounce dead letter");
    assert!(soft.reason.contains("451"), "{soft:?}");
    assert_eq!(feedback_events(&engine)["Email Soft Bounced"], vec![who]);
    // A soft bounce does not suppress the contact.
    assert!(tables::get_suppression(&engine.store, who).unwrap().is_none());
}

#[test]
fn starttls_and_auth_against_a_server_that_requires_both() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A private CA and a server certificate for localhost signed by it.
    common::private_ca(d);
    let port = free_port();
    let maildir = d.join("maildir");
    let (cert, key) = (d.join("server.pem"), d.join("server.key"));
    let _server = smtp_server_with(
        port,
        &maildir,
        &[
            "--starttls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "--auth",
            "drip:s3cret",
        ],
    );
    let mut s = settings(d, port);
    s.mail.smtp.host = "localhost".into();
    s.mail.smtp.tls = "starttls".into();
    s.mail.smtp.ca_file = d.join("ca.pem");
    s.mail.smtp.username = "drip".into();
    s.mail.smtp.timeout = "3s".into();

    // Wrong password: the server refuses AUTH, nothing is lost, the mail waits.
    s.mail.smtp.password = "wrong".into();
    let engine = Engine::open(&s).unwrap();
    subscribe(&engine, &["tls1@example.org", "tls2@example.org"]);
    let sys = actix::System::new();
    let round = sys.block_on(engine.send_mail(100)).unwrap();
    assert_eq!(round.delivered, 0);
    assert_eq!(tables::outbox_ids(&engine.store).unwrap().len(), 2);
    drop(engine);

    // The right one: STARTTLS verified against the private CA, AUTH accepted, delivered.
    s.mail.smtp.password = "s3cret".into();
    let engine = Engine::open(&s).unwrap();
    send_all(&sys, &engine, Duration::from_secs(20));
    assert_eq!(delivered(&maildir).len(), 2);

    // Without the CA the certificate is not trusted: nothing goes out in the clear instead.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut untrusted = settings(tmp2.path(), port);
    untrusted.mail.smtp.host = "localhost".into();
    untrusted.mail.smtp.tls = "starttls".into();
    untrusted.mail.smtp.username = "drip".into();
    untrusted.mail.smtp.password = "s3cret".into();
    let engine = Engine::open(&untrusted).unwrap();
    subscribe(&engine, &["tls3@example.org"]);
    let round = sys.block_on(engine.send_mail(100)).unwrap();
    assert_eq!(round.delivered, 0);
    assert_eq!(delivered(&maildir).len(), 2);
}
