//! The SMTP transport against a real SMTP server on 127.0.0.1 (Python aiosmtpd storing into a
//! Maildir; `scripts/setup.sh` installs it).

mod common;

use common::free_port;
use dripline::config::Settings;
use dripline::runtime::Engine;
use dripline::time::parse_rfc3339;
use serde_json::json;
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
    let child = Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (scripts/setup.sh installs it)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(15), "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    SmtpServer(child)
}

fn settings(dir: &Path, port: u16) -> Settings {
    let mut s = common::settings(dir);
    s.mail.transport = "smtp".into();
    s.mail.smtp_port = port;
    s
}

fn delivered(maildir: &Path) -> Vec<String> {
    std::fs::read_dir(maildir.join("new"))
        .map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect())
        .unwrap_or_default()
}

fn welcome_three(engine: &Engine) {
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut events = vec![];
    for who in ["ann", "bob", "cat"] {
        events.push(json!({"type": "identify", "userId": who, "messageId": format!("i-{who}"), "traits": {"email": format!("{who}@example.org")}}));
        events.push(
            json!({"type": "track", "userId": who, "messageId": format!("n-{who}"), "event": "Newsletter Subscribed"}),
        );
    }
    engine.ingest_values(&events, None, t0).unwrap();
    engine.pump(t0).unwrap();
}

#[test]
fn messages_reach_a_real_smtp_server_with_their_message_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = tmp.path().join("maildir");
    let _server = smtp_server(port, &maildir);
    let engine = Engine::open(&settings(tmp.path(), port)).unwrap();
    welcome_three(&engine);
    assert_eq!(engine.mailer.drain(100).unwrap(), 3);
    let mails = delivered(&maildir);
    assert_eq!(mails.len(), 3);
    let ids = dripline::storage::tables::sent_ids(&engine.store).unwrap();
    for id in ids {
        assert_eq!(
            mails
                .iter()
                .filter(|m| m.contains(&format!("<{id}@dripline.example.com>")))
                .count(),
            1
        );
    }
    assert!(
        mails
            .iter()
            .any(|m| m.contains("To: ann@example.org") && m.contains("Subject: Welcome"))
    );
    assert!(
        engine
            .metrics
            .render()
            .contains("dripline_sends_total{result=\"accepted\",workflow=\"welcome_series\"} 3")
    );
}

#[test]
fn an_smtp_outage_keeps_messages_in_the_outbox_until_the_server_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let maildir = tmp.path().join("maildir");
    let engine = Engine::open(&settings(tmp.path(), port)).unwrap();
    welcome_three(&engine);
    // Nobody listens on the port: a transient failure, nothing leaves the outbox.
    assert!(engine.mailer.drain(100).is_err());
    assert_eq!(
        dripline::storage::tables::outbox_page(&engine.store, 100)
            .unwrap()
            .len(),
        3
    );
    assert!(dripline::storage::tables::sent_ids(&engine.store).unwrap().is_empty());
    let _server = smtp_server(port, &maildir);
    let start = Instant::now();
    let mut sent = 0;
    while sent < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not delivered after the server came back"
        );
        sent += engine.mailer.drain(100).unwrap_or(0);
    }
    assert_eq!(engine.mailer.drain(100).unwrap(), 0);
    assert_eq!(delivered(&maildir).len(), 3, "each message exactly once");
    assert!(
        engine
            .metrics
            .render()
            .contains("dripline_sends_total{result=\"deferred\",workflow=\"welcome_series\"} 1")
    );
}
