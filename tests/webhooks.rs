//! The webhook transport against a real HTTP receiver (`tests/support/webhook_receiver.py`,
//! Python's `http.server`, which records every request and checks its signature with the
//! reference `standardwebhooks` package): what each answer does to the call, the win-back
//! workflow's SMS fallback, and never twice across `kill -9` of dripline and a receiver restart.

mod common;

use base64::Engine as _;
use common::{Proc, free_port, http, settings, wait_for};
use dripline::config::WebhookEndpoint;
use dripline::runtime::Engine;
use dripline::storage::tables;
use dripline::time::{DAY, parse_rfc3339};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fresh Standard Webhooks secret, as an operator would make one.
fn secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

/// A webhook receiver on a free port, recording into `dir/requests.jsonl` and verifying with a
/// fresh secret; `extra`: a certificate and key for HTTPS.
struct Receiver {
    port: u16,
    log: PathBuf,
    secret: String,
    _proc: Proc,
}

impl Receiver {
    fn start(dir: &Path, extra: &[&Path]) -> Receiver {
        let (port, log, secret) = (free_port(), dir.join("requests.jsonl"), secret());
        let proc = common::webhook_receiver(port, &log, &secret, extra);
        Receiver {
            port,
            log,
            secret,
            _proc: proc,
        }
    }
}

fn requests(log: &Path) -> Vec<Value> {
    common::webhook_requests(log)
}

/// Drains the engine's outbox until the receiver has a request, and that request, the only one.
fn the_one_call(engine: &Engine, log: &Path) -> Value {
    wait_for(Duration::from_secs(20), || {
        engine.drain_mail(100).unwrap();
        !requests(log).is_empty()
    });
    let mut reqs = requests(log);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    reqs.remove(0)
}

fn of<'a>(reqs: &'a [Value], path: &str) -> Vec<&'a Value> {
    reqs.iter().filter(|r| r["path"] == path).collect()
}

/// A workflows directory with the shipped `dripline.yaml` and these workflow files.
fn workflows(dir: &Path, files: &[(&str, String)]) -> PathBuf {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/dripline.yaml"),
        wf.join("dripline.yaml"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(wf.join(name), text).unwrap();
    }
    wf
}

/// Calls to a URL chosen by the event; a failed call sends the contact a mail.
fn calls_workflow(receiver: u16) -> String {
    format!(
        r#"id: calls
name: Calls
triggers:
  - event: Call Requested
entry: always
steps:
  - id: call
    webhook:
      url: "http://127.0.0.1:{receiver}/{{{{ event.path }}}}"
      headers:
        X-Contact: "{{{{ contact.id }}}}"
      body: '{{"contact": {{{{ contact.id | tojson }}}}, "note": {{{{ event.note | tojson }}}}}}'
  - id: outcome
    wait_for: {{ event: Webhook Failed, timeout: 1h }}
    on_event: tell
    on_timeout: exit
  - id: tell
    send: {{ template: failed, kind: transactional }}
templates:
  failed:
    subject: "Your call failed"
    text: "It did."
"#
    )
}

const TEXTS_WORKFLOW: &str = r#"id: texts
name: Texts
triggers:
  - event: Text Requested
entry: always
steps:
  - id: text
    webhook:
      endpoint: sms
      form:
        To: "{{ phone }}"
        Body: "Hi {{ first_name }}: code {{ event.code }} & more"
"#;

struct Run {
    dir: PathBuf,
    workflows: PathBuf,
    port: u16,
    receiver: u16,
    secret: String,
    extra: Vec<(String, String)>,
}

impl Run {
    fn start(&self) -> Proc {
        let (mut cmd, _) = common::run_command(
            &self.workflows,
            &self.dir.join("data"),
            &self.dir.join("mail"),
            self.port,
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("run.log"))
            .unwrap();
        cmd.env("DRIPLINE__WEBHOOK__SECRET", &self.secret)
            .env(
                "DRIPLINE__WEBHOOKS__SMS__URL",
                format!("http://127.0.0.1:{}/sms", self.receiver),
            )
            .env("DRIPLINE__WEBHOOKS__SMS__SECRET", &self.secret)
            .env("DRIPLINE__MAIL__RETRY__INITIAL", "300ms")
            .env("DRIPLINE__MAIL__RETRY__MAX", "1s")
            .env("DRIPLINE__POLICY__FREQUENCY_CAP__ENABLED", "false")
            .stderr(log);
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let port = self.port;
        wait_for(Duration::from_secs(20), || {
            http(port, "GET", "/healthz", "").is_ok_and(|(s, _)| s == 200)
        });
        Proc(child)
    }

    fn ingest(&self, events: &[Value]) {
        let (status, body) = http(self.port, "POST", "/v1/batch", &json!({ "batch": events }).to_string()).unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

fn identify(user: &str, traits: Value) -> Value {
    json!({"type": "identify", "userId": user, "messageId": format!("i-{user}"), "traits": traits})
}

fn track(user: &str, event: &str, props: Value) -> Value {
    json!({"type": "track", "userId": user, "messageId": format!("t-{user}-{event}"), "event": event, "properties": props})
}

#[test]
fn each_answer_is_settled_as_the_receiver_says() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Receiver::start(tmp.path(), &[]);
    let (rport, log, secret) = (r.port, r.log.clone(), r.secret.clone());
    let run = Run {
        dir: tmp.path().into(),
        workflows: workflows(
            tmp.path(),
            &[
                ("calls.yaml", calls_workflow(rport)),
                ("texts.yaml", TEXTS_WORKFLOW.to_owned()),
            ],
        ),
        port: free_port(),
        receiver: rport,
        secret: secret.clone(),
        extra: vec![],
    };
    let _dripline = run.start();
    let mut events = vec![];
    for (user, path) in [
        ("c-ok", "ok"),
        ("c-flaky", "flaky"),
        ("c-busy", "busy"),
        ("c-bad", "bad"),
    ] {
        events.push(identify(user, json!({"email": format!("{user}@example.org")})));
        events.push(track(
            user,
            "Call Requested",
            json!({"path": path, "note": "a \"quoted\" note"}),
        ));
    }
    events.push(identify(
        "c-sms",
        json!({"email": "c-sms@example.org", "phone": "+15550100", "first_name": "Ann"}),
    ));
    events.push(track("c-sms", "Text Requested", json!({"code": "X1"})));
    run.ingest(&events);

    let expected = [("/ok", 1), ("/flaky", 3), ("/busy", 2), ("/bad", 1), ("/sms", 1)];
    wait_for(Duration::from_secs(30), || {
        let reqs = requests(&log);
        expected.iter().all(|(p, n)| of(&reqs, p).len() >= *n)
            && common::files_containing(&tmp.path().join("mail"), &["Your call failed"]).len() == 1
    });
    // Nothing more arrives once every call is settled.
    std::thread::sleep(Duration::from_millis(2500));
    let reqs = requests(&log);
    for (p, n) in expected {
        let statuses: Vec<_> = of(&reqs, p).iter().map(|r| r["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses.len(), n, "{p}: {statuses:?}");
    }
    for r in &reqs {
        assert_eq!(r["verified"], true, "signature verified by standardwebhooks: {r}");
        assert_eq!(r["method"], "POST");
        let h = &r["headers"];
        assert_eq!(h["idempotency-key"], h["webhook-id"], "{r}");
        assert!(h["user-agent"].as_str().unwrap().starts_with("dripline/"));
    }
    // One call per contact: every attempt carries the same key.
    for p in ["/flaky", "/busy"] {
        let keys: BTreeSet<_> = of(&reqs, p)
            .iter()
            .map(|r| r["headers"]["idempotency-key"].to_string())
            .collect();
        assert_eq!(keys.len(), 1, "{p}: {keys:?}");
    }

    let ok = of(&reqs, "/ok")[0];
    assert_eq!(ok["headers"]["content-type"], "application/json");
    assert_eq!(ok["headers"]["x-contact"], "c-ok");
    let body: Value = serde_json::from_str(ok["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"contact": "c-ok", "note": "a \"quoted\" note"}));

    let flaky: Vec<_> = of(&reqs, "/flaky")
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(flaky, [500, 500, 200], "5xx is retried until it is taken");

    let busy = of(&reqs, "/busy");
    let gap = busy[1]["at"].as_f64().unwrap() - busy[0]["at"].as_f64().unwrap();
    assert!(
        gap >= 1.9,
        "429 with Retry-After: 2 waited {gap:.2} s (the backoff alone is 0.3 s)"
    );

    // The 400 is final: a dead letter with the answer, and a Webhook Failed event the workflow
    // branched on (the mail); no other contact got one.
    let (_, dead) = http(run.port, "GET", "/admin/v1/dead-letters", "").unwrap();
    assert!(dead.contains("400 unknown recipient"), "{dead}");
    let failed_mail = common::files_containing(&tmp.path().join("mail"), &["Your call failed"]);
    assert_eq!(failed_mail.len(), 1);
    assert!(
        common::files_containing(&tmp.path().join("mail"), &["c-bad@example.org"]).len() == 1,
        "the failure mail went to c-bad"
    );

    // The endpoint's form body, encoded by the transport.
    let sms = of(&reqs, "/sms")[0];
    assert_eq!(sms["headers"]["content-type"], "application/x-www-form-urlencoded");
    let form: BTreeMap<String, String> = serde_urlencoded::from_str(sms["body"].as_str().unwrap()).unwrap();
    assert_eq!(form["To"], "+15550100");
    assert_eq!(form["Body"], "Hi Ann: code X1 & more");

    let m = |result: &str| {
        common::metric(
            run.port,
            &format!("dripline_webhook_calls_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(m("delivered"), 4.0);
    assert_eq!(m("retried"), 3.0);
    assert_eq!(m("failed"), 1.0);
}

/// The shipped win-back workflow: a sleeper who never opened the mail and has a phone number
/// gets the SMS, through the configured endpoint, with the rendered form body; one without a
/// phone number gets none.
#[test]
fn the_win_back_sms_fallback_reaches_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Receiver::start(tmp.path(), &[]);
    let (rport, log, secret) = (r.port, r.log.clone(), r.secret.clone());
    let mut s = settings(tmp.path());
    s.webhooks.insert(
        "sms".into(),
        WebhookEndpoint {
            url: format!("http://127.0.0.1:{rport}/2010-04-01/Accounts/AC123/Messages.json"),
            secret: secret.clone(),
            headers: [("Authorization".to_owned(), "Basic QUMxMjM6dG9rZW4=".to_owned())].into(),
        },
    );
    let engine = Engine::open(&s).unwrap();
    let t0 = parse_rfc3339("2026-01-05T10:00:00Z").unwrap();
    engine
        .ingest_values(
            &[
                identify(
                    "zoe",
                    json!({"email": "zoe@example.org", "first_name": "Zoe", "phone": "+6281234567"}),
                ),
                identify("yan", json!({"email": "yan@example.org", "first_name": "Yan"})),
                track("zoe", "Product Viewed", json!({})),
                track("yan", "Product Viewed", json!({})),
            ],
            None,
            t0,
        )
        .unwrap();
    engine.pump(t0 + 61 * DAY).unwrap();
    engine.drain_mail(100).unwrap();
    assert!(
        requests(&log).is_empty(),
        "no call before the week of waiting for a click"
    );
    engine.pump(t0 + 68 * DAY).unwrap();
    let r = &the_one_call(&engine, &log);
    assert_eq!(r["path"], "/2010-04-01/Accounts/AC123/Messages.json");
    assert_eq!(r["verified"], true);
    assert_eq!(r["headers"]["authorization"], "Basic QUMxMjM6dG9rZW4=");
    let form: BTreeMap<String, String> = serde_urlencoded::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(form["To"], "+6281234567");
    assert_eq!(
        form["Body"],
        "We miss you, Zoe! Use code COMEBACK20 for 20% off your next order."
    );
}

/// HTTPS to a receiver whose certificate a private CA signed: refused (and kept to retry) until
/// `webhook.ca_file` names that CA, then delivered. And `webhook.rate_per_host` spaces the calls.
#[test]
fn tls_with_a_private_ca_and_the_rate_per_host() {
    let tmp = tempfile::tempdir().unwrap();
    common::private_ca(tmp.path());
    let (cert, key) = (tmp.path().join("server.pem"), tmp.path().join("server.key"));
    let r = Receiver::start(tmp.path(), &[&cert, &key]);
    let (rport, log, secret) = (r.port, r.log.clone(), r.secret.clone());
    let calls = r#"id: calls
name: Calls
triggers:
  - event: Call Requested
entry: always
steps:
  - id: call
    webhook:
      endpoint: crm
      headers:
        X-Contact: "{{ contact.id }}"
"#;
    let mut s = settings(tmp.path());
    s.workflows.dir = workflows(tmp.path(), &[("calls.yaml", calls.to_owned())]);
    s.mail.retry.initial = "100ms".into();
    s.mail.retry.max = "200ms".into();
    s.webhooks.insert(
        "crm".into(),
        WebhookEndpoint {
            url: format!("https://localhost:{rport}/leads"),
            secret: secret.clone(),
            headers: BTreeMap::new(),
        },
    );
    let t0 = parse_rfc3339("2026-03-01T08:00:00Z").unwrap();
    {
        let engine = Engine::open(&s).unwrap();
        let events: Vec<Value> = (0..10)
            .map(|i| track(&format!("r{i}"), "Call Requested", json!({})))
            .collect();
        engine.ingest_values(&events, None, t0).unwrap();
        engine.pump(t0).unwrap();
        for _ in 0..3 {
            engine.drain_mail(100).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(requests(&log).is_empty(), "an unknown CA is not trusted");
        assert_eq!(
            tables::outbox_page(&engine.store, 100).unwrap().len(),
            10,
            "kept to retry"
        );
    }
    s.webhook.ca_file = tmp.path().join("ca.pem");
    s.webhook.rate_per_host = 5.0;
    let engine = Engine::open(&s).unwrap();
    wait_for(Duration::from_secs(30), || {
        engine.drain_mail(100).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        requests(&log).len() >= 10
    });
    let reqs = requests(&log);
    assert_eq!(reqs.len(), 10);
    assert!(reqs.iter().all(|r| r["verified"] == true));
    let at: Vec<f64> = reqs.iter().map(|r| r["at"].as_f64().unwrap()).collect();
    let span = at.last().unwrap() - at.first().unwrap();
    // Five a second, a burst of one: nine gaps of 0.2 s at least.
    assert!(span >= 1.6, "10 calls at 5/s took {span:.2} s");
}

/// At most `webhook.concurrency_per_host` calls are in flight to one host: 40 calls to a slow
/// receiver overlap two at a time, never three.
#[test]
fn calls_to_one_host_overlap_at_most_the_concurrency_per_host() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Receiver::start(tmp.path(), &[]);
    let (rport, log, secret) = (r.port, r.log.clone(), r.secret.clone());
    let mut s = settings(tmp.path());
    s.workflows.dir = workflows(tmp.path(), &[("calls.yaml", calls_workflow(rport))]);
    s.webhook.concurrency_per_host = 2;
    s.webhook.secret = secret.clone();
    let engine = Engine::open(&s).unwrap();
    let t0 = parse_rfc3339("2026-03-01T08:00:00Z").unwrap();
    let events: Vec<Value> = (0..40)
        .map(|i| track(&format!("p{i}"), "Call Requested", json!({"path": "slow", "note": i})))
        .collect();
    engine.ingest_values(&events, None, t0).unwrap();
    engine.pump(t0).unwrap();
    wait_for(Duration::from_secs(30), || {
        engine.drain_mail(100).unwrap();
        requests(&log).len() >= 40
    });
    let reqs = requests(&log);
    assert_eq!(reqs.len(), 40);
    let most = reqs.iter().map(|r| r["concurrent"].as_u64().unwrap()).max().unwrap();
    assert_eq!(most, 2, "calls overlapped {most} at a time");
}

/// The documented WeChat example: its JSON body, rendered from traits and event properties
/// (Chinese text and quotes included), arrives as valid JSON.
#[test]
fn the_wechat_example_sends_a_template_message() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Receiver::start(tmp.path(), &[]);
    let (rport, log, secret) = (r.port, r.log.clone(), r.secret.clone());
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/workflows/wechat_order_shipped.yaml"
    ))
    .unwrap();
    let mut s = settings(tmp.path());
    s.workflows.dir = workflows(tmp.path(), &[("wechat.yaml", example)]);
    s.webhooks.insert(
        "wechat".into(),
        WebhookEndpoint {
            url: format!("http://127.0.0.1:{rport}/cgi-bin/message/template/send?access_token=T0KEN"),
            secret: secret.clone(),
            headers: BTreeMap::new(),
        },
    );
    let engine = Engine::open(&s).unwrap();
    let t0 = parse_rfc3339("2026-03-01T08:00:00Z").unwrap();
    engine
        .ingest_values(
            &[
                identify("li", json!({"email": "li@example.cn", "wechat_openid": "oX1a-\"b\""})),
                track("li", "Order Shipped", json!({"order_id": "SO-88", "carrier": "顺丰"})),
                track("no-openid", "Order Shipped", json!({"order_id": "SO-89"})),
            ],
            None,
            t0,
        )
        .unwrap();
    engine.pump(t0).unwrap();
    // Only the contact with an openid.
    let r = &the_one_call(&engine, &log);
    assert_eq!(r["path"], "/cgi-bin/message/template/send?access_token=T0KEN");
    assert_eq!(r["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["touser"], "oX1a-\"b\"");
    assert_eq!(body["data"]["first"]["value"], "您的订单 SO-88 已发货");
    assert_eq!(body["data"]["keyword2"]["value"], "顺丰");
    assert_eq!(body["url"], "");
}

/// Calls in flight when dripline is killed (`kill -9`) or the receiver restarts may be made
/// again, with the same `Idempotency-Key`; none is lost, and the repeats stay within the bound:
/// what can be in flight at a kill (the mailer's slots: one for the file transport and
/// 2 × `webhook.concurrency_per_host`), and at a receiver restart (`concurrency_per_host`).
#[test]
fn every_call_arrives_across_kills_and_a_receiver_restart() {
    const CONTACTS: usize = 300;
    const PER_HOST: usize = 4;
    let tmp = tempfile::tempdir().unwrap();
    let rport = free_port();
    let log = tmp.path().join("requests.jsonl");
    let secret = secret();
    let mut recv = common::webhook_receiver(rport, &log, &secret, &[]);
    let run = Run {
        dir: tmp.path().into(),
        workflows: workflows(tmp.path(), &[("calls.yaml", calls_workflow(rport))]),
        port: free_port(),
        receiver: rport,
        secret: secret.clone(),
        extra: vec![("DRIPLINE__WEBHOOK__CONCURRENCY_PER_HOST".into(), PER_HOST.to_string())],
    };
    let mut dripline = run.start();
    let events: Vec<Value> = (0..CONTACTS)
        .map(|i| {
            track(
                &format!("k{i:03}"),
                "Call Requested",
                json!({"path": "slow", "note": i}),
            )
        })
        .collect();
    run.ingest(&events);
    let log_path = log.clone();
    let arrived = move |n: usize| {
        let log = log_path.clone();
        move || requests(&log).iter().filter(|r| r["status"] == 200).count() >= n
    };
    let mut kills = 0;
    for target in [40, 120] {
        wait_for(Duration::from_secs(60), arrived(target));
        let _ = dripline.0.kill(); // SIGKILL
        let _ = dripline.0.wait();
        kills += 1;
        dripline = run.start();
    }
    wait_for(Duration::from_secs(60), arrived(200));
    drop(recv);
    std::thread::sleep(Duration::from_millis(1500));
    recv = common::webhook_receiver(rport, &log, &secret, &[]);
    let everyone = || {
        let reqs = requests(&log);
        let ok: BTreeSet<_> = reqs
            .iter()
            .filter(|r| r["status"] == 200)
            .map(|r| r["headers"]["x-contact"].as_str().unwrap().to_owned())
            .collect();
        ok.len() == CONTACTS
    };
    wait_for(Duration::from_secs(120), everyone);
    assert!(everyone(), "every contact's call arrived");
    std::thread::sleep(Duration::from_secs(2));
    drop(dripline);
    drop(recv);

    let reqs = requests(&log);
    let mut per_contact: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &reqs {
        per_contact
            .entry(r["headers"]["x-contact"].as_str().unwrap().to_owned())
            .or_default()
            .push(r);
    }
    let repeats: usize = per_contact.values().map(|v| v.len() - 1).sum();
    for (c, rs) in &per_contact {
        let keys: BTreeSet<_> = rs.iter().map(|r| r["headers"]["idempotency-key"].to_string()).collect();
        assert_eq!(keys.len(), 1, "{c}: one key for every attempt");
        assert!(rs.iter().all(|r| r["verified"] == true));
    }
    let bound = kills * (1 + 2 * PER_HOST) + PER_HOST;
    println!(
        "{} calls, {} requests, {repeats} repeats after {kills} kills and one receiver restart (bound {bound})",
        per_contact.len(),
        reqs.len()
    );
    assert!(repeats <= bound, "{repeats} repeats, bound {bound}");
}
