//! Safety on a network, against a real `dripline run`: write keys on ingest (also from the
//! official Segment Python SDK), admin tokens, the public listener that serves only links,
//! feedback events refused from a write key, link secrets (the retired development secret,
//! rotation), API enrolment through the log, the dead letters and suppressions of the admin API,
//! its OpenAPI document (checked by a reference validator), and SIGTERM under load.

mod common;

use common::{ADMIN_TOKEN, WRITE_KEY, files_containing, free_port, http, http_as, metric, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Run {
    child: Child,
    port: u16,
    public: u16,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// SIGTERM, then the exit status and how long the exit took.
    fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        (status, t.elapsed())
    }
}

const API_WORKFLOW: &str = r#"
id: concierge
name: Concierge onboarding
triggers:
  - api: true
entry: once
steps:
  - id: hello
    send: hello
templates:
  hello:
    subject: "Your concierge, {{ event.plan }}"
    html: "<p>Hello {{ traits.first_name }}. <a href='https://example.com/start'>Start</a></p>"
"#;

/// A workflow directory: the shipped workflows plus one enrolled through the API.
fn workflows(dir: &Path) -> PathBuf {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, wf.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(wf.join("concierge.yaml"), API_WORKFLOW).unwrap();
    wf
}

/// `dripline run` with the test keys (unless `env` overrides them) and its own ports.
fn start(dir: &Path, env: &[(&str, &str)]) -> Run {
    let port = free_port();
    let (mut cmd, public) = common::run_command(&workflows(dir), &dir.join("data"), &dir.join("mail"), port);
    cmd.env("DRIPLINE__POLICY__FREQUENCY_CAP__ENABLED", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("run.log"))
        .unwrap();
    let child = cmd.stderr(log).spawn().unwrap();
    let run = Run { child, port, public };
    wait_for(Duration::from_secs(20), || {
        http(port, "GET", "/readyz", "").is_ok_and(|(s, _)| s == 200)
    });
    run
}

fn mails(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn mails_to(dir: &Path, who: &str) -> Vec<String> {
    mails(dir)
        .into_iter()
        .filter(|m| common::addressed_to(m, who))
        .collect()
}

/// The first link path `/{kind}/…` in a mail (quoted-printable undone).
fn link(mail: &str, kind: &str) -> String {
    let text = mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let start = text
        .find(&format!("/{kind}/"))
        .unwrap_or_else(|| panic!("no /{kind}/ link in {text}"));
    let rest = &text[start..];
    let end = rest.find(['"', '\'', '>', ' ', '\r', '\n']).unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// `dripline replay --from-data DATA --into INTO` over the test's workflows, which must succeed.
fn replay_from_data(dir: &Path, data: &Path, into: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(["replay", "--from-data"])
        .arg(data)
        .arg("--into")
        .arg(into)
        .env("DRIPLINE__WORKFLOWS__DIR", dir.join("workflows"))
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .env("DRIPLINE__POLICY__FREQUENCY_CAP__ENABLED", "false")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Client records in the embedded log of a stopped engine's store (not the delivery results the
/// engine may have appended meanwhile).
fn log_records(data: &Path) -> usize {
    let store = dripline::storage::Store::open_read_only(data).unwrap();
    (0..8)
        .flat_map(|p| dripline::storage::log::read(&store, p, 0, 1_000_000).unwrap())
        .filter(|r| !dripline::event::is_engine_event(&r.event.name))
        .count()
}

fn newsletter(who: &str) -> String {
    serde_json::json!({"batch": [
        {"type": "identify", "userId": who, "messageId": format!("i-{who}"),
         "traits": {"email": format!("{who}@example.org"), "first_name": who}},
        {"type": "track", "userId": who, "messageId": format!("n-{who}"), "event": "Newsletter Subscribed"},
    ]})
    .to_string()
}

#[test]
fn ingest_admin_and_metrics_refuse_a_missing_or_wrong_key_and_nothing_is_appended() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(tmp.path(), &[]);
    let port = run.port;
    let body = r#"{"userId":"ann","messageId":"t1","event":"Product Viewed"}"#;
    let basic = |user: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user))
    };
    for auth in [
        None,
        Some(basic("made-up-key:")),
        Some("Bearer made-up-key".to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}")),
        Some(basic(&format!(":{WRITE_KEY}"))),
    ] {
        let (status, answer) = http_as(port, "POST", "/v1/track", body, auth.as_deref()).unwrap();
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert_eq!(json(&answer)["code"], "unauthorized");
    }
    let (status, _) = http_as(port, "POST", "/v1/batch", &newsletter("bob"), None).unwrap();
    assert_eq!(status, 401);
    for path in ["/metrics", "/admin/v1/workflows", "/admin/v1/openapi.json"] {
        assert_eq!(http_as(port, "GET", path, "", None).unwrap().0, 401, "{path}");
        let write = format!("Bearer {WRITE_KEY}");
        assert_eq!(http_as(port, "GET", path, "", Some(&write)).unwrap().0, 401, "{path}");
    }
    assert_eq!(metric(port, "dripline_events_ingested_total"), 0.0);
    assert_eq!(metric(port, "dripline_http_unauthorized_total{access=\"ingest\"}"), 6.0);
    // The write key as HTTP Basic user name (what the SDKs send) and as a Bearer token.
    let (status, answer) = http_as(port, "POST", "/v1/track", body, Some(&basic(&format!("{WRITE_KEY}:")))).unwrap();
    assert_eq!(
        (status, answer.as_str()),
        (200, r#"{"accepted":1,"duplicates":0,"errors":[]}"#)
    );
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("bob")).unwrap().0, 200);
    assert_eq!(metric(port, "dripline_events_ingested_total"), 3.0);
    let (status, _) = http(port, "GET", "/admin/v1/workflows", "").unwrap();
    assert_eq!(status, 200);
    // Probes stay open.
    assert_eq!(http_as(port, "GET", "/healthz", "", None).unwrap().0, 200);
    let (status, _) = run.terminate();
    assert!(status.success());
    assert_eq!(
        log_records(&tmp.path().join("data")),
        3,
        "only the authorised events are in the log"
    );
}

/// With no key configured one is generated into the data directory (0600) and `dripline ingest`
/// finds it there to send a file through the running engine.
#[test]
fn a_generated_write_key_is_private_and_dripline_ingest_uses_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let _run = start(tmp.path(), &[("DRIPLINE__HTTP__WRITE_KEYS", "")]);
    let secrets = tmp.path().join("data/secrets");
    let key = std::fs::read_to_string(secrets.join("write-key")).unwrap();
    let key = key.trim();
    assert_eq!(key.len(), 43, "32 random bytes, base64url");
    for f in ["write-key", "link-secret"] {
        let mode = std::fs::metadata(secrets.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(!secrets.join("admin-token").exists(), "configured, not generated");
    let log = std::fs::read_to_string(tmp.path().join("run.log")).unwrap();
    assert!(log.contains("secrets/write-key"), "{log}");
    assert_eq!(
        http_as(_run.port, "POST", "/v1/batch", &newsletter("ann"), Some(WRITE_KEY))
            .unwrap()
            .0,
        401
    );
    let bearer = format!("Bearer {key}");
    assert_eq!(
        http_as(_run.port, "POST", "/v1/batch", &newsletter("ann"), Some(&bearer))
            .unwrap()
            .0,
        200
    );
    let file = tmp.path().join("events.ndjson");
    std::fs::write(
        &file,
        r#"{"type":"identify","userId":"cid","messageId":"i-cid","traits":{"email":"cid@example.org"}}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .arg("ingest")
        .arg(&file)
        .env("DRIPLINE__ENGINE__DATA_DIR", tmp.path().join("data"))
        .env("DRIPLINE__HTTP__LISTEN", format!("127.0.0.1:{}", _run.port))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("1 appended") && stdout.contains("through the running engine"),
        "{stdout}"
    );
}

#[test]
fn the_public_listener_serves_only_links_and_links_are_opaque() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    assert_eq!(http(run.port, "POST", "/v1/batch", &newsletter("ann")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "ann@example.org").is_empty()
    });
    let mail = &mails_to(tmp.path(), "ann@example.org")[0];
    let pixel = link(mail, "o");
    let unsubscribe = link(mail, "u");
    for l in [&pixel, &unsubscribe] {
        assert!(!l.contains("ann") && !l.contains("welcome"), "readable token: {l}");
    }
    // Recipients' links on the public listener only.
    let (status, _) = http(run.public, "GET", &pixel, "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(http(run.public, "GET", &unsubscribe, "").unwrap().0, 200);
    assert_eq!(http(run.port, "GET", &pixel, "").unwrap().0, 404);
    // Nothing else there, whatever the credential.
    for (method, path, body) in [
        ("POST", "/v1/batch", newsletter("bob")),
        (
            "POST",
            "/v1/track",
            r#"{"userId":"x","messageId":"m","event":"e"}"#.to_owned(),
        ),
        ("GET", "/metrics", String::new()),
        ("GET", "/admin/v1/workflows", String::new()),
        ("GET", "/admin/v1/openapi.json", String::new()),
    ] {
        let (status, _) = http(run.public, method, path, &body).unwrap();
        assert_eq!(status, 404, "{method} {path} on the public listener");
    }
}

#[test]
fn engine_events_are_refused_from_a_write_key_and_come_in_through_the_admin_api() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    let port = run.port;
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("ann")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "ann@example.org").is_empty()
    });
    for name in ["Email Complained", "Email Bounced", "Unsubscribed", "dripline.enroll"] {
        let ev = serde_json::json!({"userId": "ann", "messageId": format!("forged-{name}"), "event": name});
        let (status, answer) = http(port, "POST", "/v1/track", &ev.to_string()).unwrap();
        assert_eq!(status, 400, "{name}: {answer}");
        assert!(answer.contains("emits itself"), "{answer}");
    }
    // A batch keeps its valid events.
    let batch = serde_json::json!({"batch": [
        {"type": "track", "userId": "ann", "messageId": "ok-1", "event": "Product Viewed"},
        {"type": "track", "userId": "ann", "messageId": "bad-1", "event": "Email Bounced"},
    ]});
    let (status, answer) = http(port, "POST", "/v1/batch", &batch.to_string()).unwrap();
    assert_eq!(status, 400);
    assert_eq!(json(&answer)["accepted"], 1, "{answer}");
    assert_eq!(json(&answer)["errors"][0]["index"], 1, "{answer}");
    let (_, contact) = http(port, "GET", "/admin/v1/contacts/ann", "").unwrap();
    assert_eq!(json(&contact)["suppressed"], false, "{contact}");
    let (_, page) = http(port, "GET", "/admin/v1/dead-letters?limit=10", "").unwrap();
    let page = json(&page);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{page}");
    assert!(items.iter().all(|d| d["source"] == "ingest"), "{page}");
    assert!(
        items[0]["reason"].as_str().unwrap().contains("Email Complained"),
        "{page}"
    );
    assert!(
        items[0]["excerpt"]
            .as_str()
            .unwrap()
            .contains("forged-Email Complained"),
        "{page}"
    );
    assert_eq!(
        metric(port, "dripline_events_rejected_total{reason=\"reserved_event\"}"),
        5.0
    );

    // The same complaint from the ESP's side, through the admin API.
    let send_id = mails_to(tmp.path(), "ann@example.org")[0]
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|l| l.split('@').next())
        .unwrap()
        .to_owned();
    let complaint = serde_json::json!({"batch": [{"type": "track", "userId": "ann", "messageId": "esp-1",
        "event": "Email Complained", "properties": {"message_id": send_id}}]});
    assert_eq!(
        http_as(
            port,
            "POST",
            "/admin/v1/feedback",
            &complaint.to_string(),
            Some(&format!("Bearer {WRITE_KEY}"))
        )
        .unwrap()
        .0,
        401
    );
    let (status, answer) = http(port, "POST", "/admin/v1/feedback", &complaint.to_string()).unwrap();
    assert_eq!(status, 200, "{answer}");
    wait_for(Duration::from_secs(10), || {
        let (_, c) = http(port, "GET", "/admin/v1/contacts/ann", "").unwrap();
        json(&c)["suppressed"] == true
    });
}

/// Claims as the earlier token format carried them, signed with HMAC-SHA256 under `secret`.
fn forged_legacy_token(secret: &str, purpose: &str, url: Option<&str>) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims = serde_json::json!({"p": purpose, "c": "ann", "w": "welcome", "m": "0".repeat(32)});
    if let Some(u) = url {
        claims["u"] = u.into();
    }
    let body = serde_json::to_vec(&claims).unwrap();
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(&body);
    let tag = m.finalize().into_bytes();
    format!("{}.{}", b64.encode(&body), b64.encode(&tag[..16]))
}

#[test]
fn links_forged_with_the_retired_development_secret_are_404_and_it_cannot_be_configured() {
    const DEV: &str = "dripline-development-secret-change-me";
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    assert_eq!(http(run.port, "POST", "/v1/batch", &newsletter("ann")).unwrap().0, 200);
    let redirect = forged_legacy_token(DEV, "c", Some("https://evil.example/phish"));
    let (status, answer) = http(run.public, "GET", &format!("/c/{redirect}"), "").unwrap();
    assert_eq!(status, 404, "{answer}");
    let unsubscribe = forged_legacy_token(DEV, "u", None);
    assert_eq!(
        http(
            run.public,
            "POST",
            &format!("/u/{unsubscribe}"),
            "List-Unsubscribe=One-Click"
        )
        .unwrap()
        .0,
        404
    );
    drop(run);

    for (secret, kafka, says) in [
        (DEV, "", "development secret"),
        ("short-secret", "", "at least 32 bytes"),
        ("", "127.0.0.1:1", "required in Kafka mode"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
            .arg("run")
            .env("DRIPLINE__ENGINE__DATA_DIR", tmp.path().join("data2"))
            .env("DRIPLINE__MAIL__SECRET", secret)
            .env("DRIPLINE__KAFKA__BROKERS", kafka)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("mail.secret") && stderr.contains(says), "{stderr}");
    }
}

#[test]
fn after_a_secret_rotation_old_links_still_open_and_new_ones_use_the_new_secret() {
    const A: &str = "first-link-secret-0123456789abcdef-xyz";
    const B: &str = "second-link-secret-0123456789abcdef-xyz";
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(tmp.path(), &[("DRIPLINE__MAIL__SECRET", A)]);
    assert_eq!(http(run.port, "POST", "/v1/batch", &newsletter("ann")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "ann@example.org").is_empty()
    });
    let old = link(&mails_to(tmp.path(), "ann@example.org")[0], "o");
    assert!(run.terminate().0.success());

    let mut run = start(
        tmp.path(),
        &[("DRIPLINE__MAIL__SECRET", B), ("DRIPLINE__MAIL__PREVIOUS_SECRETS", A)],
    );
    assert_eq!(
        http(run.public, "GET", &old, "").unwrap().0,
        200,
        "an old link still opens"
    );
    assert_eq!(http(run.port, "POST", "/v1/batch", &newsletter("bob")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "bob@example.org").is_empty()
    });
    let new = link(&mails_to(tmp.path(), "bob@example.org")[0], "o");
    assert!(run.terminate().0.success());

    // The new link was made with B: an engine that knows only A refuses it.
    let run = start(tmp.path(), &[("DRIPLINE__MAIL__SECRET", A)]);
    assert_eq!(http(run.public, "GET", &new, "").unwrap().0, 404);
    assert_eq!(http(run.public, "GET", &old, "").unwrap().0, 200);
}

#[test]
fn enrolment_through_the_admin_api_starts_an_api_workflow_once_for_two_identical_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    let port = run.port;
    let identify = serde_json::json!({"userId": "vip", "messageId": "i-vip",
        "traits": {"email": "vip@example.org", "first_name": "Vera"}});
    assert_eq!(
        http(port, "POST", "/v1/identify", &identify.to_string()).unwrap().0,
        200
    );
    let call = serde_json::json!({"userId": "vip", "properties": {"plan": "gold"}, "key": "crm-42"}).to_string();
    let (status, first) = http(port, "POST", "/admin/v1/workflows/concierge/enroll", &call).unwrap();
    assert_eq!(status, 202, "{first}");
    assert_eq!(json(&first)["accepted"], true);
    let (status, second) = http(port, "POST", "/admin/v1/workflows/concierge/enroll", &call).unwrap();
    assert_eq!(status, 202, "{second}");
    assert_eq!(json(&second)["accepted"], false, "the same key is one enrolment");
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "vip@example.org").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = mails_to(tmp.path(), "vip@example.org");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("Subject: Your concierge, gold"), "{}", got[0]);
    let (_, contact) = http(port, "GET", "/admin/v1/contacts/vip", "").unwrap();
    let contact = json(&contact);
    assert_eq!(contact["history"][0]["workflow"], "concierge", "{contact}");

    let (status, _) = http(port, "POST", "/admin/v1/workflows/welcome_series/enroll", &call).unwrap();
    assert_eq!(status, 400, "not an api: true workflow");
    let (status, _) = http(port, "POST", "/admin/v1/workflows/nope/enroll", &call).unwrap();
    assert_eq!(status, 404);
    let keyless = serde_json::json!({"userId": "vip"}).to_string();
    let (status, answer) = http(port, "POST", "/admin/v1/workflows/concierge/enroll", &keyless).unwrap();
    assert_eq!(status, 400);
    assert!(answer.contains("idempotency key"), "{answer}");
    let (_, list) = http(port, "GET", "/admin/v1/workflows", "").unwrap();
    let list = json(&list);
    let concierge = list
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "concierge")
        .unwrap();
    assert_eq!(concierge["api_enrollment"], true);
    assert_eq!(concierge["versions"][0]["sent"], 1, "{concierge}");
    // The workflow's report: the same send, at its step.
    let (status, report) = http(port, "GET", "/admin/v1/workflows/concierge/report", "").unwrap();
    assert_eq!(status, 200, "{report}");
    let report = json(&report);
    let sent: i64 = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sent"].as_i64().unwrap())
        .sum();
    assert_eq!(sent, 1, "{report}");
    let (status, answer) = http(port, "GET", "/admin/v1/workflows/concierge/report?version=7", "").unwrap();
    assert_eq!(
        (status, json(&answer)["code"].as_str()),
        (404, Some("not_found")),
        "{answer}"
    );
}

#[test]
fn dead_letters_are_retried_with_a_correction_and_suppressed_addresses_get_no_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[("DRIPLINE__DEAD_LETTERS__MAX_PAYLOAD_BYTES", "200")]);
    let port = run.port;
    let broken = r#"{"type":"identify","userId":"dee","traits":{"email":"dee@example.org"}}"#;
    assert_eq!(http(port, "POST", "/v1/identify", broken).unwrap().0, 400);
    let big = format!(
        r#"{{"userId":"x","messageId":"big","event":"Email Bounced","properties":{{"pad":"{}"}}}}"#,
        "x".repeat(500)
    );
    assert_eq!(http(port, "POST", "/v1/track", &big).unwrap().0, 400);
    let (_, page) = http(port, "GET", "/admin/v1/dead-letters", "").unwrap();
    let page = json(&page);
    let (first, second) = (&page["items"][0], &page["items"][1]);
    assert_eq!(second["truncated"], true, "{page}");
    assert_eq!(second["payload_bytes"], 200, "{page}");
    // The stored payload as it is fails again and stays; corrected, it goes in and the letter goes.
    let key = first["key"].as_str().unwrap();
    let (status, answer) = http(port, "POST", &format!("/admin/v1/dead-letters/{key}/retry"), "").unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("messageId"), "{answer}");
    let fixed = r#"{"type":"identify","userId":"dee","messageId":"i-dee","traits":{"email":"dee@example.org"}}"#;
    let (status, answer) = http(port, "POST", &format!("/admin/v1/dead-letters/{key}/retry"), fixed).unwrap();
    assert_eq!(status, 200, "{answer}");
    let truncated = second["key"].as_str().unwrap();
    let (status, answer) = http(port, "POST", &format!("/admin/v1/dead-letters/{truncated}/retry"), "").unwrap();
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        http(port, "DELETE", &format!("/admin/v1/dead-letters/{truncated}"), "")
            .unwrap()
            .0,
        204
    );
    assert_eq!(
        http(port, "DELETE", &format!("/admin/v1/dead-letters/{truncated}"), "")
            .unwrap()
            .0,
        404
    );
    let (_, page) = http(port, "GET", "/admin/v1/dead-letters", "").unwrap();
    assert_eq!(json(&page)["items"].as_array().unwrap().len(), 0, "{page}");
    wait_for(Duration::from_secs(10), || {
        http(port, "GET", "/admin/v1/contacts/dee", "").unwrap().0 == 200
    });

    // An address suppressed through the API gets nothing, whichever contact it is.
    let sup = "/admin/v1/suppressions/Carl@Example.org";
    assert_eq!(http(port, "GET", sup, "").unwrap().0, 404);
    assert_eq!(
        http(port, "PUT", sup, r#"{"reason":"complaint by phone"}"#).unwrap().0,
        204
    );
    let (status, got) = http(port, "GET", "/admin/v1/suppressions/carl@example.org", "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&got)["reason"], "complaint by phone");
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("carl")).unwrap().0, 200);
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("dan")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "dan@example.org").is_empty()
    });
    wait_for(Duration::from_secs(10), || {
        let (_, e) = http(port, "GET", "/admin/v1/contacts/carl/export", "").unwrap();
        json(&e)["outbox"].as_array().is_some_and(|o| o.is_empty())
    });
    assert!(mails_to(tmp.path(), "carl@example.org").is_empty());
    assert_eq!(http(port, "DELETE", sup, "").unwrap().0, 204);
    assert_eq!(http(port, "GET", sup, "").unwrap().0, 404);
}

/// The OpenAPI document is served and valid by the reference validator (PyPI
/// `openapi-spec-validator`), and lists every admin route.
#[test]
fn the_openapi_document_is_valid_and_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    let (status, doc) = http(run.port, "GET", "/admin/v1/openapi.json", "").unwrap();
    assert_eq!(status, 200);
    let parsed = json(&doc);
    for path in [
        "/admin/v1/workflows",
        "/admin/v1/workflows/{id}/enroll",
        "/admin/v1/workflows/{id}/report",
        "/admin/v1/contacts/{id}",
        "/admin/v1/contacts/{id}/export",
        "/admin/v1/dead-letters",
        "/admin/v1/dead-letters/{key}/retry",
        "/admin/v1/dead-letters/{key}",
        "/admin/v1/suppressions/{email}",
        "/admin/v1/feedback",
    ] {
        assert!(parsed["paths"].get(path).is_some(), "{path} missing");
    }
    let file = tmp.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 with openapi-spec-validator (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The official Segment Python SDK (PyPI `segment-analytics-python`) at its defaults, pointed
/// at the engine with the write key: its identify, group and track are processed; with a wrong key
/// nothing is.
#[test]
fn the_segment_python_sdk_with_the_write_key_gets_its_events_processed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    let sdk = |key: &str, who: &str| sdk_run("segment_sdk.py", run.port, &[key, who]);
    sdk("wrong-key", "sdk-stranger");
    sdk(WRITE_KEY, "sdk-user");
    // With its gzip option, the request bodies are compressed.
    let out = sdk_run("segment_sdk.py", run.port, &[WRITE_KEY, "sdk-gzip", "gzip"]);
    assert!(out.contains("errors: []"), "{out}");
    // RudderStack's SDK gzips by default and sends an identify's traits in `context.traits`.
    let out = sdk_run("rudderstack_sdk.py", run.port, &[WRITE_KEY, "sdk-rudder"]);
    assert!(out.contains("gzip: True; errors: []"), "{out}");
    for who in ["sdk-user", "sdk-gzip", "sdk-rudder"] {
        wait_for(Duration::from_secs(15), || {
            !mails_to(tmp.path(), &format!("{who}@example.org")).is_empty()
        });
    }
    let (status, contact) = http(run.port, "GET", "/admin/v1/contacts/sdk-user", "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&contact)["traits"]["first_name"], "Sam", "{contact}");
    // Its group call: the account trait.
    assert_eq!(
        json(&contact)["traits"]["account"],
        serde_json::json!({"id": "acme-1", "name": "Acme", "plan": "pro"}),
        "{contact}"
    );
    let (_, contact) = http(run.port, "GET", "/admin/v1/contacts/sdk-rudder", "").unwrap();
    assert_eq!(json(&contact)["traits"]["first_name"], "Rudi", "{contact}");
    assert_eq!(
        http(run.port, "GET", "/admin/v1/contacts/sdk-stranger", "").unwrap().0,
        404
    );
    assert!(metric(run.port, "dripline_http_unauthorized_total{access=\"ingest\"}") >= 1.0);
}

/// Segment's HTTP API for a screen and a group, each at its own endpoint without `type`: the
/// group is the contact's `account` trait, the screen an activity of the contact.
#[test]
fn screen_and_group_have_endpoints_of_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let run = start(tmp.path(), &[]);
    let post = |path: &str, body: &str| http(run.port, "POST", path, body).unwrap();
    let (status, body) = post(
        "/v1/group",
        r#"{"userId":"gina","messageId":"g1","groupId":"acme-1","traits":{"name":"Acme"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post("/v1/screen", r#"{"userId":"gina","messageId":"s1","name":"Settings"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        post("/v1/group", r#"{"userId":"gina","messageId":"g2"}"#).0,
        400,
        "no groupId"
    );
    wait_for(Duration::from_secs(10), || {
        http(run.port, "GET", "/admin/v1/contacts/gina", "").unwrap().0 == 200
    });
    let (_, contact) = http(run.port, "GET", "/admin/v1/contacts/gina", "").unwrap();
    assert_eq!(
        json(&contact)["traits"]["account"],
        serde_json::json!({"id": "acme-1", "name": "Acme"}),
        "{contact}"
    );
    // The screen was processed as the contact's activity (a group call, like an identify, is not).
    wait_for(Duration::from_secs(10), || {
        let (_, c) = http(run.port, "GET", "/admin/v1/contacts/gina", "").unwrap();
        !json(&c)["last_activity"].is_null()
    });
}

/// Runs an SDK script of `tests/support` against the engine on `port`; its output.
fn sdk_run(script: &str, port: u16, args: &[&str]) -> String {
    {
        let out = Command::new("python3")
            .arg(format!("{}/tests/support/{script}", env!("CARGO_MANIFEST_DIR")))
            .arg(format!("http://127.0.0.1:{port}"))
            .args(args)
            .output()
            .expect("python3 with the SDKs (scripts/setup-test.sh installs them)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Clients posting continuously on kept-alive connections: after SIGTERM no request is
/// acknowledged later than 1 s after the signal, the process exits 0 within 10 s, and every
/// event acknowledged is processed once the engine is back.
#[test]
fn sigterm_under_load_stops_intake_at_once_and_loses_nothing_acknowledged() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(tmp.path(), &[]);
    let port = run.port;
    // (user id, when acknowledged) of every event answered 200.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(30);
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                'connections: while Instant::now() < stop_at {
                    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    // Many requests on this one connection (HTTP/1.1 keep-alive).
                    while Instant::now() < stop_at {
                        let ids: Vec<String> = (0..50).map(|i| format!("c{c}-{n}-{i}")).collect();
                        n += 1;
                        let batch: Vec<_> = ids
                            .iter()
                            .map(|id| serde_json::json!({"type": "identify", "userId": id, "messageId": id, "traits": {"n": 1}}))
                            .collect();
                        let body = serde_json::json!({ "batch": batch }).to_string();
                        let req = format!(
                            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(req.as_bytes()).is_err() {
                            continue 'connections;
                        }
                        let mut status_line = String::new();
                        if reader.read_line(&mut status_line).unwrap_or(0) == 0 {
                            continue 'connections;
                        }
                        let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                        let mut length = 0;
                        let mut close = false;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                continue 'connections;
                            }
                            let h = h.trim_end().to_ascii_lowercase();
                            if h.is_empty() {
                                break;
                            }
                            if let Some(v) = h.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if h == "connection: close" {
                                close = true;
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            continue 'connections;
                        }
                        if status == 200 {
                            let at = Instant::now();
                            acked.lock().unwrap().extend(ids.into_iter().map(|id| (id, at)));
                        }
                        if close {
                            continue 'connections;
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "the clients got acknowledgements before the signal");
    let signal = Instant::now();
    let (status, took) = run.terminate();
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let late: Vec<_> = acked
        .iter()
        .filter(|(_, at)| *at > signal + Duration::from_secs(1))
        .collect();
    assert!(
        late.is_empty(),
        "{} acknowledged later than 1 s after SIGTERM",
        late.len()
    );
    eprintln!(
        "{} events acknowledged, {before} before the signal; exit after {took:?}",
        acked.len()
    );

    // Every acknowledged event is processed: after a restart, every contact exists.
    let run = start(tmp.path(), &[]);
    let data = tmp.path().join("data");
    wait_for(Duration::from_secs(60), || {
        metric(run.port, "dripline_log_lag_records") == 0.0
    });
    drop(run);
    let store = dripline::storage::Store::open_read_only(&data).unwrap();
    let missing = acked
        .iter()
        .filter(|(id, _)| dripline::storage::tables::get_contact(&store, id).unwrap().is_none())
        .count();
    assert_eq!(missing, 0, "of {} acknowledged", acked.len());
}

fn state_of(port: u16, workflow: &str) -> String {
    let (_, list) = http(port, "GET", "/admin/v1/workflows", "").unwrap();
    json(&list)
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == workflow)
        .map(|w| w["state"].as_str().unwrap().to_owned())
        .unwrap()
}

fn enrolled_in(port: u16, who: &str) -> Vec<String> {
    let (_, c) = http(port, "GET", &format!("/admin/v1/contacts/{who}"), "").unwrap();
    json(&c)["enrollments"]
        .as_array()
        .map(|e| e.iter().map(|e| e["workflow"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// A paused workflow takes no new entrants while the contacts inside go on; resumed, it takes
/// them again. The pause goes through the log: a replay rebuilds the same state.
#[test]
fn a_paused_workflow_takes_no_new_entrants_and_a_replay_pauses_at_the_same_point() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(tmp.path(), &[]);
    let port = run.port;
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("ann")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "ann@example.org").is_empty()
    });
    assert_eq!(state_of(port, "welcome_series"), "active");
    let (status, answer) = http(port, "POST", "/admin/v1/workflows/welcome_series/pause", "").unwrap();
    assert_eq!(status, 202, "{answer}");
    wait_for(Duration::from_secs(10), || state_of(port, "welcome_series") == "paused");
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("bob")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        http(port, "GET", "/admin/v1/contacts/bob", "").unwrap().0 == 200
    });
    assert_eq!(
        enrolled_in(port, "bob"),
        Vec::<String>::new(),
        "no new entrant while paused"
    );
    assert_eq!(
        enrolled_in(port, "ann"),
        ["welcome_series"],
        "the contact inside goes on"
    );
    assert_eq!(http(port, "POST", "/admin/v1/workflows/nope/pause", "").unwrap().0, 404);
    assert_eq!(
        http(port, "POST", "/admin/v1/workflows/welcome_series/resume", "")
            .unwrap()
            .0,
        202
    );
    wait_for(Duration::from_secs(10), || state_of(port, "welcome_series") == "active");
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("cat")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "cat@example.org").is_empty()
    });
    assert!(mails_to(tmp.path(), "bob@example.org").is_empty());
    assert!(run.terminate().0.success());

    let digest = |dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
            .args(["state", "digest", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap().to_owned()
    };
    let rebuilt = tmp.path().join("rebuilt");
    replay_from_data(tmp.path(), &tmp.path().join("data"), &rebuilt);
    assert_eq!(digest(&rebuilt), digest(&tmp.path().join("data")));
    let store = dripline::storage::Store::open_read_only(&rebuilt).unwrap();
    let bob = dripline::storage::tables::get_contact(&store, "bob").unwrap().unwrap();
    assert!(bob.enrollments.is_empty() && bob.history.is_empty());
}

/// GDPR erasure: after `DELETE /admin/v1/contacts/{id}` and a stop, no byte of the contact's id
/// or address is left anywhere in the data directory, a replay of the log does not bring the
/// contact back, and the address, which had unsubscribed, is still not mailed when re-imported.
#[test]
fn an_erased_contact_leaves_no_byte_in_the_data_directory_and_stays_unmailed() {
    const ID: &str = "erase-target-4711";
    const EMAIL: &str = "ann.erase-target@example.org";
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut run = start(tmp.path(), &[]);
    let port = run.port;
    let batch = serde_json::json!({"batch": [
        {"type": "identify", "userId": ID, "messageId": "i-1", "traits": {"email": EMAIL, "first_name": "Ann"}},
        {"type": "track", "userId": ID, "messageId": "n-1", "event": "Newsletter Subscribed"},
        {"type": "track", "userId": ID, "messageId": "p-1", "event": "Product Viewed", "properties": {"sku": "A1"}},
    ]});
    assert_eq!(http(port, "POST", "/v1/batch", &batch.to_string()).unwrap().0, 200);
    assert_eq!(http(port, "POST", "/v1/batch", &newsletter("bob")).unwrap().0, 200);
    // A dead letter that mentions her.
    let broken = serde_json::json!({"userId": ID, "event": "Cart Viewed", "properties": {"email": EMAIL}});
    assert_eq!(http(port, "POST", "/v1/track", &broken.to_string()).unwrap().0, 400);
    wait_for(Duration::from_secs(10), || !mails_to(tmp.path(), EMAIL).is_empty());
    // She unsubscribes through her mail's one-click link.
    let unsubscribe = link(&mails_to(tmp.path(), EMAIL)[0], "u");
    assert_eq!(
        http(run.public, "POST", &unsubscribe, "List-Unsubscribe=One-Click")
            .unwrap()
            .0,
        200
    );
    wait_for(Duration::from_secs(10), || {
        let (_, c) = http(port, "GET", &format!("/admin/v1/contacts/{ID}"), "").unwrap();
        json(&c)["unsubscribed"] == true
    });
    assert!(
        !enrolled_in(port, ID).is_empty(),
        "inside the welcome series, timers pending"
    );

    let (status, answer) = http(port, "DELETE", &format!("/admin/v1/contacts/{ID}"), "").unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(json(&answer)["erased"], true);
    assert_eq!(
        http(port, "GET", &format!("/admin/v1/contacts/{ID}"), "").unwrap().0,
        404
    );
    assert_eq!(
        http(port, "DELETE", &format!("/admin/v1/contacts/{ID}"), "").unwrap().0,
        404
    );
    let (_, bob) = http(port, "GET", "/admin/v1/contacts/bob", "").unwrap();
    assert_eq!(json(&bob)["traits"]["email"], "bob@example.org", "the others stay");
    let (_, list) = http(port, "GET", "/admin/v1/workflows", "").unwrap();
    let welcome = json(&list)
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "welcome_series")
        .cloned()
        .unwrap();
    assert_eq!(welcome["versions"][0]["contacts_inside"], 1, "bob only: {welcome}");
    assert!(run.terminate().0.success());

    let left = files_containing(&data, &[ID, EMAIL]);
    assert!(left.is_empty(), "left in the data directory: {left:?}");

    // A replay of the log does not bring her back, and builds the same state.
    let rebuilt = tmp.path().join("rebuilt");
    replay_from_data(tmp.path(), &data, &rebuilt);
    let store = dripline::storage::Store::open_read_only(&rebuilt).unwrap();
    assert!(dripline::storage::tables::get_contact(&store, ID).unwrap().is_none());
    assert!(dripline::storage::tables::get_contact(&store, "bob").unwrap().is_some());
    drop(store);
    let left = files_containing(&rebuilt, &[ID, EMAIL]);
    assert!(left.is_empty(), "left in the rebuilt store: {left:?}");

    // Re-imported under another id, the address that had unsubscribed gets nothing.
    let run = start(tmp.path(), &[]);
    let again = serde_json::json!({"batch": [
        {"type": "identify", "userId": "ann-again", "messageId": "i-2", "traits": {"email": EMAIL}},
        {"type": "track", "userId": "ann-again", "messageId": "n-2", "event": "Newsletter Subscribed"},
    ]});
    let before = mails_to(tmp.path(), EMAIL).len();
    assert_eq!(http(run.port, "POST", "/v1/batch", &again.to_string()).unwrap().0, 200);
    assert_eq!(http(run.port, "POST", "/v1/batch", &newsletter("cid")).unwrap().0, 200);
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "cid@example.org").is_empty()
    });
    wait_for(Duration::from_secs(10), || {
        let (_, e) = http(run.port, "GET", "/admin/v1/contacts/ann-again/export", "").unwrap();
        json(&e)["outbox"].as_array().is_some_and(|o| o.is_empty())
    });
    assert_eq!(mails_to(tmp.path(), EMAIL).len(), before);
}

/// The operators' commands: through the running engine (with the admin token generated into the
/// data directory), and on the store when no engine runs.
#[test]
fn the_admin_commands_work_through_the_running_engine_and_on_a_stopped_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut run = start(tmp.path(), &[("DRIPLINE__ADMIN__TOKENS", "")]);
    let listen = format!("127.0.0.1:{}", run.port);
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env("DRIPLINE__HTTP__LISTEN", &listen)
            .env("DRIPLINE__WORKFLOWS__DIR", tmp.path().join("workflows"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    assert!(data.join("secrets/admin-token").exists());
    assert_eq!(http(run.port, "POST", "/v1/batch", &newsletter("ann")).unwrap().0, 200);
    assert_eq!(
        http(run.port, "POST", "/v1/identify", r#"{"userId":"x"}"#).unwrap().0,
        400
    );
    wait_for(Duration::from_secs(10), || {
        !mails_to(tmp.path(), "ann@example.org").is_empty()
    });

    let out = cli(&["workflows", "pause", "welcome_series"]);
    assert!(out.contains("through the running engine"), "{out}");
    wait_for(Duration::from_secs(10), || {
        let list = json(&cli(&["workflows", "list", "--json"]));
        list.as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "welcome_series" && w["state"] == "paused")
    });
    let table = cli(&["workflows", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("welcome_series") && l.contains("paused")),
        "{table}"
    );
    let export = json(&cli(&["contact", "export", "ann"]));
    assert_eq!(export["traits"]["email"], "ann@example.org");
    assert!(export["outbox"].is_array(), "{export}");
    let dead = json(&cli(&["dead-letters", "list", "--json"]));
    let key = dead["items"][0]["key"].as_str().unwrap().to_owned();
    let fixed = tmp.path().join("fixed.json");
    std::fs::write(&fixed, r#"{"type":"identify","userId":"x","messageId":"i-x"}"#).unwrap();
    cli(&["dead-letters", "retry", &key, "--event", fixed.to_str().unwrap()]);
    assert_eq!(
        json(&cli(&["dead-letters", "list", "--json"]))["items"],
        serde_json::json!([])
    );
    // A closed pipe ends the command quietly.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} contact show ann --data-dir {} | head -c 1",
            env!("CARGO_BIN_EXE_dripline"),
            data.display()
        ))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("panicked"));
    let out = cli(&["contact", "erase", "ann"]);
    assert!(out.contains("erased `ann`"), "{out}");
    assert!(run.terminate().0.success());

    // No engine: the same commands on the store.
    let out = cli(&["workflows", "resume", "welcome_series"]);
    assert!(out.contains("on the store"), "{out}");
    let list = json(&cli(&["workflows", "list", "--json"]));
    let welcome = list
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "welcome_series")
        .unwrap();
    assert_eq!(welcome["state"], "active", "{welcome}");
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(["contact", "export", "ann", "--data-dir"])
        .arg(&data)
        .env("DRIPLINE__WORKFLOWS__DIR", tmp.path().join("workflows"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "erased: no contact");
    let left = files_containing(&data, &["ann@example.org"]);
    assert!(left.is_empty(), "{left:?}");
}

/// A compressed body is decoded; one that decodes past the body limit (8 MiB) is refused with
/// 413, whatever its compressed size, and nothing of it is appended.
#[test]
fn gzip_bodies_are_decoded_within_the_body_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = start(tmp.path(), &[]);
    let script = r#"
import gzip, json, sys, urllib.request, urllib.error
base, key = sys.argv[1:3]
def post(body):
    data = gzip.compress(body)
    req = urllib.request.Request(base + "/v1/batch", data=data, method="POST", headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip", "Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, len(data)
    except urllib.error.HTTPError as e:
        return e.code, len(data)
ok = json.dumps({"batch": [{"type": "track", "userId": "zip", "messageId": "z1", "event": "Ebook Downloaded"}]}).encode()
bomb = b'{"batch": [' + b' ' * (9 * 1024 * 1024) + b']}'
print(post(ok), post(bomb))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("http://127.0.0.1:{}", run.port), WRITE_KEY])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let (ok, bomb) = printed.trim().split_once(") (").expect("two answers");
    assert!(ok.starts_with("(200,"), "{printed}");
    assert!(bomb.starts_with("413,"), "{printed}");
    let compressed: usize = bomb.trim_end_matches(')').split(", ").nth(1).unwrap().parse().unwrap();
    assert!(compressed < 64 * 1024, "the bomb is small compressed: {compressed}");
    let (status, _) = run.terminate();
    assert!(status.success());
    assert_eq!(log_records(&tmp.path().join("data")), 1);
}
