//! One-click unsubscribe (RFC 8058), the preference page and engagement tracking against a
//! real `dripline run`: links are taken from the delivered `.eml` files as a mail client would.

mod common;

use common::{free_port, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

const TRIAL: &str = r#"
id: trial_tips
name: Trial tips
triggers:
  - event: Trial Started
entry: always
steps:
  - id: tip1
    send: tip1
  - id: pause
    wait: 8s
  - id: tip2
    send: tip2
  - id: receipt
    send: { template: receipt, kind: transactional }
templates:
  tip1:
    subject: "Tip 1"
    html: '<p>Read <a href="https://docs.example.com/start?a=1&amp;b=2">the guide</a>. <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
  tip2:
    subject: "Tip 2"
    html: "<p>Second tip.</p>"
  receipt:
    subject: "Your trial receipt"
    html: "<p>Receipt.</p>"
"#;

const NEWS: &str = r#"
id: news
name: News
triggers:
  - event: News Opted In
entry: always
steps:
  - id: issue
    send: issue
templates:
  issue:
    subject: "News issue"
    html: "<p>News.</p>"
"#;

struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw HTTP/1.1 exchange: status, headers and body as text.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = common::credential_for(path)
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = vec![];
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn mails(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn subjects_to(dir: &Path, who: &str) -> Vec<String> {
    let mut s: Vec<String> = mails(dir)
        .iter()
        .filter(|m| common::addressed_to(m, who))
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned)))
        .collect();
    s.sort();
    s
}

/// The HTML part with quoted-printable undone (soft breaks and `=3D`), enough to find links.
fn html_of(mail: &str) -> String {
    mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=")
}

/// The path of the first link of `base` + `/{kind}/…` in `text`.
fn link_path(text: &str, base: &str, kind: &str) -> String {
    let start = text
        .find(&format!("{base}/{kind}/"))
        .unwrap_or_else(|| panic!("no /{kind}/ link in {text}"));
    let rest = &text[start + base.len()..];
    let end = rest.find(['"', '>', ' ', '\r', '\n']).unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn tamper(path: &str) -> String {
    let mut b = path.as_bytes().to_vec();
    let i = b.len() - 3;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

/// `dripline run` over the trial and news workflows, links based at its own address.
fn start(dir: &Path) -> (Run, u16, String) {
    let workflows = dir.join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/dripline.yaml"),
        workflows.join("dripline.yaml"),
    )
    .unwrap();
    std::fs::write(workflows.join("trial.yaml"), TRIAL).unwrap();
    std::fs::write(workflows.join("news.yaml"), NEWS).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let run = Run(Command::new(env!("CARGO_BIN_EXE_dripline"))
        .arg("run")
        .env("DRIPLINE__WORKFLOWS__DIR", &workflows)
        .env("DRIPLINE__ENGINE__DATA_DIR", dir.join("data"))
        .env("DRIPLINE__MAIL__OUTBOX_DIR", dir.join("mail"))
        .env("DRIPLINE__MAIL__PUBLIC_URL", &base)
        .env("DRIPLINE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        // One port for both listeners, as behind a proxy that filters paths.
        .env("DRIPLINE__HTTP__PUBLIC_LISTEN", format!("127.0.0.1:{port}"))
        .env("DRIPLINE__HTTP__WRITE_KEYS", common::WRITE_KEY)
        .env("DRIPLINE__ADMIN__TOKENS", common::ADMIN_TOKEN)
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .env("DRIPLINE__POLICY__FREQUENCY_CAP__ENABLED", "false")
        // The test follows the open pixel of a short mail, which the default leaves out.
        .env("DRIPLINE__MAIL__TRACKING__PIXEL_MIN_TEXT", "0")
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .unwrap());
    wait_for(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, "GET", "/healthz", "").0 == 200
    });
    (run, port, base)
}

#[test]
fn the_preference_page_in_a_real_browser_unsubscribes_from_one_workflow_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (_run, port, base) = start(tmp.path());
    let batch = serde_json::json!({"batch": [
        {"type": "identify", "userId": "carl", "messageId": "i-carl", "traits": {"email": "carl@example.org"}},
        {"type": "track", "userId": "carl", "messageId": "t-carl", "event": "Trial Started"},
    ]});
    assert_eq!(http(port, "POST", "/v1/batch", &batch.to_string()).0, 200);
    wait_for(Duration::from_secs(10), || mails(tmp.path()).len() == 1);
    let tip = mails(tmp.path()).pop().unwrap();
    let url = format!("{base}{}", link_path(&html_of(&tip), &base, "u"));

    let browser = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/preferences_browser.py"
        ))
        .arg(&url)
        .output()
        .expect("python3 with selenium, chromium and chromium-driver (scripts/setup.sh installs them)");
    let shown = String::from_utf8_lossy(&browser.stdout);
    assert!(
        browser.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    assert!(
        shown.contains("Unsubscribed") && shown.contains("emails from trial_tips"),
        "{shown}"
    );

    // The rest of the trial: tip 2 is held back, the receipt goes. Mail from another workflow
    // still reaches carl: the unsubscribe was for trial_tips only.
    wait_for(Duration::from_secs(20), || {
        subjects_to(tmp.path(), "carl@example.org").len() == 2
    });
    let news = serde_json::json!({"type": "track", "userId": "carl", "messageId": "n-carl", "event": "News Opted In"});
    assert_eq!(http(port, "POST", "/v1/track", &news.to_string()).0, 200);
    wait_for(Duration::from_secs(10), || {
        subjects_to(tmp.path(), "carl@example.org").len() == 3
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        subjects_to(tmp.path(), "carl@example.org"),
        ["News issue", "Tip 1", "Your trial receipt"]
    );
}

#[test]
fn one_click_unsubscribe_stops_the_next_marketing_step_but_not_transactional_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let (_run, port, base) = start(tmp.path());
    let batch = serde_json::json!({"batch": [
        {"type": "identify", "userId": "ann", "messageId": "i-ann", "traits": {"email": "ann@example.org"}},
        {"type": "identify", "userId": "bob", "messageId": "i-bob", "traits": {"email": "bob@example.org"}},
        {"type": "track", "userId": "ann", "messageId": "t-ann", "event": "Trial Started"},
        {"type": "track", "userId": "bob", "messageId": "t-bob", "event": "Trial Started"},
    ]});
    assert_eq!(http(port, "POST", "/v1/batch", &batch.to_string()).0, 200);
    wait_for(Duration::from_secs(10), || mails(tmp.path()).len() == 2);

    let ann = mails(tmp.path())
        .into_iter()
        .find(|m| common::addressed_to(m, "ann@example.org"))
        .unwrap();
    assert!(
        ann.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{ann}"
    );
    // The header as a mail client reads it: unfolded.
    let unfolded = ann.replace("\r\n ", " ").replace("\r\n\t", " ");
    let header = unfolded.lines().find(|l| l.starts_with("List-Unsubscribe: ")).unwrap();
    assert!(
        header.contains("<mailto:unsubscribe@example.com?subject=unsubscribe%20"),
        "{header}"
    );
    let unsubscribe = link_path(header, &base, "u");
    let html = html_of(&ann);
    // The template's own {{ unsubscribe_url }} is the same signed link, left unwrapped.
    assert!(html.contains(&format!("{base}{unsubscribe}")), "{html}");

    // Links: the click redirect goes to the signed destination only; the pixel answers a GIF.
    let click = link_path(&html, &base, "c");
    let (status, response) = http(port, "GET", &click, "");
    assert_eq!(status, 302, "{response}");
    assert!(
        response.contains("location: https://docs.example.com/start?a=1&b=2"),
        "{response}"
    );
    assert_eq!(
        http(port, "GET", &tamper(&click), "").0,
        404,
        "a tampered click link is no redirect"
    );
    let pixel = link_path(&html, &base, "o");
    let (status, response) = http(port, "GET", &pixel, "");
    assert_eq!(status, 200);
    assert!(response.contains("content-type: image/gif"), "{response}");

    // The preference page is a GET that changes nothing; a forged token is not found.
    let (status, page) = http(port, "GET", &unsubscribe, "");
    assert_eq!(status, 200);
    assert!(
        page.contains("Stop all marketing email") && page.contains("trial_tips"),
        "{page}"
    );
    assert_eq!(http(port, "GET", &tamper(&unsubscribe), "").0, 404);
    assert_eq!(
        http(port, "POST", &tamper(&unsubscribe), "List-Unsubscribe=One-Click").0,
        404
    );

    // RFC 8058 one-click, as a mailbox provider posts it.
    let (status, done) = http(port, "POST", &unsubscribe, "List-Unsubscribe=One-Click");
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("all marketing email"), "{done}");

    // After the wait: bob gets tip 2 and the receipt; ann only the (transactional) receipt.
    wait_for(Duration::from_secs(20), || {
        subjects_to(tmp.path(), "bob@example.org").len() == 3 && subjects_to(tmp.path(), "ann@example.org").len() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        subjects_to(tmp.path(), "bob@example.org"),
        ["Tip 1", "Tip 2", "Your trial receipt"]
    );
    assert_eq!(
        subjects_to(tmp.path(), "ann@example.org"),
        ["Tip 1", "Your trial receipt"]
    );
    let receipt = mails(tmp.path())
        .into_iter()
        .find(|m| common::addressed_to(m, "ann@example.org") && m.contains("Subject: Your trial receipt"))
        .unwrap();
    assert!(
        !receipt.contains("List-Unsubscribe"),
        "transactional mail has no unsubscribe header"
    );

    let (_, metrics) = http(port, "GET", "/metrics", "");
    for needle in [
        "dripline_mail_feedback_events_total{kind=\"unsubscribed\"} 1",
        "dripline_mail_feedback_events_total{kind=\"clicked\"} 1",
        "dripline_mail_feedback_events_total{kind=\"opened\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in {metrics}");
    }
}
