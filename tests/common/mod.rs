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

/// The write key the test engines are started with ([`run_command`]).
pub const WRITE_KEY: &str = "test-write-key-0123456789";
/// The admin token the test engines are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A test `dripline run`: the test keys, `workflows`, state in `data`, `.eml` files in `mail`,
/// the private listener on `port`, quiet hours off (results must not depend on the time of day),
/// and the public listener on a free port, returned beside the command, with the links pointing
/// there. Callers add what their test needs.
pub fn run_command(workflows: &Path, data: &Path, mail: &Path, port: u16) -> (std::process::Command, u16) {
    let public = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dripline"));
    cmd.arg("run")
        .env("DRIPLINE__WORKFLOWS__DIR", workflows)
        .env("DRIPLINE__ENGINE__DATA_DIR", data)
        .env("DRIPLINE__MAIL__OUTBOX_DIR", mail)
        .env("DRIPLINE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        // The link tests follow the open pixel of short test mails, which the default leaves out.
        .env("DRIPLINE__MAIL__TRACKING__PIXEL_MIN_TEXT", "0")
        .env("DRIPLINE__HTTP__WRITE_KEYS", WRITE_KEY)
        .env("DRIPLINE__ADMIN__TOKENS", ADMIN_TOKEN)
        .env("DRIPLINE__HTTP__PUBLIC_LISTEN", format!("127.0.0.1:{public}"))
        .env("DRIPLINE__MAIL__PUBLIC_URL", format!("http://127.0.0.1:{public}"));
    (cmd, public)
}

/// The credential a test sends to `path`: the write key for ingest, the admin token for the
/// admin API and metrics.
pub fn credential_for(path: &str) -> Option<String> {
    if path.starts_with("/v1/") {
        Some(format!("Bearer {WRITE_KEY}"))
    } else if path.starts_with("/admin/") || path == "/metrics" {
        Some(format!("Bearer {ADMIN_TOKEN}"))
    } else {
        None
    }
}

/// A minimal HTTP/1.1 client for the engine's endpoints: status and body, sending the test
/// credential the path needs.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    http_as(port, method, path, body, credential_for(path).as_deref())
}

/// [`http`] with this `Authorization` header value (or none).
pub fn http_as(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    // Bodies may be binary (the open pixel): read as text where they are.
    let out = String::from_utf8_lossy(&bytes).into_owned();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Every file under `dir` that contains one of `needles`, with the needle.
pub fn files_containing(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    found.push(format!("{}: {n}", path.display()));
                }
            }
        }
    }
    found
}

/// Whether a message's `To` header names `address` (with or without the contact's name).
pub fn addressed_to(mail: &str, address: &str) -> bool {
    mail.lines().any(|l| {
        l.strip_prefix("To: ")
            .is_some_and(|to| to == address || to.ends_with(&format!("<{address}>")))
    })
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA (`ca.pem`) and a certificate for `localhost` signed by it (`server.pem`,
/// `server.key`), made in `dir` with openssl.
pub fn private_ca(dir: &Path) {
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &rsa,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=dripline test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &rsa,
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// A message scored by SpamAssassin (Debian's package, local rules only, `-L -t`): the score and
/// the `X-Spam-Status` header with its folded lines (the rules that fired).
pub fn spamassassin(eml: &Path) -> (f64, String) {
    let out = std::process::Command::new("spamassassin")
        .args(["-L", "-t"])
        .stdin(std::fs::File::open(eml).unwrap())
        .output()
        .expect("spamassassin (scripts/setup-test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let status: String = text
        .lines()
        .skip_while(|l| !l.starts_with("X-Spam-Status:"))
        .take_while(|l| l.starts_with("X-Spam-Status:") || l.starts_with([' ', '\t']))
        .collect::<Vec<_>>()
        .join(" ");
    let value = status
        .split("score=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("");
    (value.parse().unwrap_or_else(|_| panic!("no score in {status}")), status)
}

/// A child process the test started (a server, an engine): killed and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server script of `tests/support` with `args` (its output discarded: a killed peer
/// leaves broken pipes behind, which are no news) and waits until it listens on `port`.
pub fn support_server(script: &str, args: &[&std::ffi::OsStr], port: u16, needs: &str) -> Proc {
    let child = std::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(script))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 with {needs} (scripts/setup-test.sh installs it): {e}"));
    wait_for(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Proc(child)
}

/// The webhook receiver (`tests/support/webhook_receiver.py`) on `port`, recording into `log`
/// and verifying signatures with `secret`; `extra`: a certificate and key for HTTPS.
pub fn webhook_receiver(port: u16, log: &Path, secret: &str, extra: &[&Path]) -> Proc {
    let port_arg = port.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![port_arg.as_ref(), log.as_os_str(), secret.as_ref()];
    args.extend(extra.iter().map(|p| p.as_os_str()));
    support_server("webhook_receiver.py", &args, port, "standardwebhooks")
}

/// Every request the webhook receiver recorded in `log`, in order.
pub fn webhook_requests(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The sum of the `/metrics` samples on `port` whose line starts with `line_start`.
pub fn metric(port: u16, line_start: &str) -> f64 {
    let (_, body) = http(port, "GET", "/metrics", "").unwrap();
    body.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
