//! Helpers shared by the integration tests.
#![allow(dead_code)]

use dripline::config::Settings;
use dripline::storage::tables::OutboxEntry;
use dripline::workflow::{MailKind, Rendered};
use std::path::Path;
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it holds; fails the test after `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Default settings over the shipped workflows, with state and mail under `dir` and quiet
/// hours off (so results do not depend on the time of day the tests run).
pub fn settings(dir: &Path) -> Settings {
    let mut s = Settings::load(None).unwrap();
    s.workflows.dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into();
    s.engine.data_dir = dir.join("data");
    s.mail.outbox_dir = dir.join("mail");
    s.policy.quiet_hours = String::new();
    // These tests drive the engine on simulated clocks; delivery events are stamped with the
    // wall clock when the mailer appends them and would jump those clocks to today. The tests
    // of the mailer turn them back on.
    s.mail.delivery_events = false;
    s
}

/// An outbox entry of already rendered mail (HTML body), decided at a fixed time.
pub fn entry(to: &str, subject: &str, kind: MailKind, html: &str) -> OutboxEntry {
    let rendered = Rendered {
        subject: subject.into(),
        html: Some(html.into()),
        text: None,
    };
    OutboxEntry::composed("c1", to, kind, rendered, 1_700_000_000_000)
}

/// A minimal HTTP/1.1 client for the engine's endpoints: status and body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Ok((status, body))
}
