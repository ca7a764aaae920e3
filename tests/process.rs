//! A real `dripline run` process: HTTP ingest to `.eml`, a restart in the middle of a wait, and
//! `kill -9` during ingest.

mod common;

use common::{free_port, http, wait_for};
use dripline::storage::{Store, tables};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

struct Engine {
    child: Child,
    port: u16,
}

fn start(dir: &Path, workflows: &Path, port: u16) -> Engine {
    let (mut cmd, _) = common::run_command(workflows, &dir.join("data"), &dir.join("mail"), port);
    let child = cmd
        .stderr(std::fs::File::create(dir.join(format!("run-{port}.log"))).unwrap())
        .spawn()
        .unwrap();
    let e = Engine { child, port };
    wait_for(Duration::from_secs(20), || {
        http(e.port, "GET", "/healthz", "").is_ok_and(|(s, _)| s == 200)
    });
    e
}

impl Engine {
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "graceful stop exits 0: {status}");
    }
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The nice value of each thread of process `pid`.
fn thread_nices(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let tid: libc::id_t = t.ok()?.file_name().to_str()?.parse().ok()?;
            // getpriority returns -1 both for an error and for nice -1 (never set here): errno
            // tells them apart. A thread that ended after the listing (ESRCH) is left out.
            // SAFETY: reads a scheduling attribute; errno is this thread's own.
            unsafe {
                *libc::__errno_location() = 0;
                let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
                (nice != -1 || *libc::__errno_location() == 0).then_some(nice)
            }
        })
        .collect()
}

/// The partition worker threads run below the HTTP intake: `engine.workers` threads at
/// `engine.worker_nice` (default 2 at 10), every other thread at the process's own 0.
#[test]
fn the_worker_threads_run_below_the_intake() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), &shipped(), free_port());
    // The workers lower their priority as they start, after the health check may already answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let nices = loop {
        let nices = thread_nices(e.child.id());
        if nices.iter().filter(|&&n| n == 10).count() == 2 || std::time::Instant::now() > deadline {
            break nices;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(nices.iter().filter(|&&n| n == 10).count(), 2, "{nices:?}");
    assert!(nices.iter().all(|&n| n == 10 || n == 0), "{nices:?}");
    assert!(
        nices.iter().filter(|&&n| n == 0).count() >= 2,
        "intake and the rest: {nices:?}"
    );
    e.stop();
}

fn emls(dir: &Path) -> Vec<(PathBuf, String)> {
    std::fs::read_dir(dir.join("mail"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| {
                    let s = std::fs::read_to_string(&p).unwrap();
                    (p, s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn shipped() -> PathBuf {
    concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into()
}

#[test]
fn http_ingest_produces_emails_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), &shipped(), free_port());
    for (i, who) in ["ann", "bob", "cat"].iter().enumerate() {
        let (s, b) = http(e.port, "POST", "/v1/identify", &format!(r#"{{"userId":"{who}","messageId":"i{i}","traits":{{"email":"{who}@example.org","first_name":"{who}"}}}}"#)).unwrap();
        assert_eq!(s, 200, "{b}");
        let (s, b) = http(
            e.port,
            "POST",
            "/v1/track",
            &format!(r#"{{"userId":"{who}","messageId":"n{i}","event":"Newsletter Subscribed"}}"#),
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (200, r#"{"accepted":1,"duplicates":0,"errors":[]}"#));
    }
    let (s, b) = http(e.port, "POST", "/v1/batch", r#"{"batch":[{"type":"track","userId":"dan","event":"x"},{"type":"identify","userId":"dan","messageId":"d1","traits":{"email":"dan@example.org"}}]}"#).unwrap();
    assert_eq!(s, 400);
    assert!(
        b.contains(r#""accepted":1"#) && b.contains("missing or empty `messageId`"),
        "{b}"
    );
    wait_for(Duration::from_secs(10), || emls(tmp.path()).len() == 3);
    let mails = emls(tmp.path());
    let ann = mails
        .iter()
        .find(|m| common::addressed_to(&m.1, "ann@example.org"))
        .unwrap();
    assert!(ann.1.contains("Subject: Welcome, ann!"), "{}", ann.1);
    let stem = ann.0.file_stem().unwrap().to_str().unwrap();
    assert!(ann.1.contains(&format!("Message-ID: <{stem}@")), "{}", ann.1);
    let needles = [
        // 7 posted, then 3 `Email Delivered` events from the mailer (appended just after the
        // files are written, hence the wait).
        "dripline_events_ingested_total 10",
        "dripline_events_rejected_total{reason=\"missing_field\"} 1",
        "dripline_sends_total{result=\"accepted\",workflow=\"welcome_series\"} 3",
        "dripline_processing_latency_seconds_count",
        "dripline_rocksdb_write_seconds_count",
        "dripline_log_append_seconds_count",
        "dripline_workflow_step_total{outcome=\"sent\",step=\"welcome\",workflow=\"welcome_series\"} 3",
    ];
    let mut metrics = String::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let (s, m) = http(e.port, "GET", "/metrics", "").unwrap();
        assert_eq!(s, 200);
        metrics = m;
        if needles.iter().all(|n| metrics.contains(n)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for needle in needles {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // Observed, not only registered: every request with a valid event (seven) appended once,
    // and the partitions committed.
    let count = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).expect(name);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("dripline_log_append_seconds_count") >= 7.0, "{metrics}");
    assert!(count("dripline_rocksdb_write_seconds_count") >= 1.0, "{metrics}");
    // The process's own figures, under Prometheus's conventional names.
    assert!(count("process_resident_memory_bytes") > 1e6, "{metrics}");
    assert!(count("process_open_fds") > 0.0, "{metrics}");
    assert!(count("process_start_time_seconds") > 1.7e9, "{metrics}");
    assert_eq!(http(e.port, "GET", "/readyz", "").unwrap().0, 200);
    e.stop();
}

#[test]
fn a_restart_in_the_middle_of_a_wait_still_sends_on_time() {
    let tmp = tempfile::tempdir().unwrap();
    let wf = tmp.path().join("wf");
    std::fs::create_dir(&wf).unwrap();
    std::fs::write(
        wf.join("quick.yaml"),
        "id: quick\ntriggers: [{ event: Ping }]\nsteps:\n  - id: pause\n    wait: 3s\n  - id: hello\n    send: { template: hello, kind: transactional }\ntemplates:\n  hello: { subject: Pong, text: pong }\n",
    )
    .unwrap();
    let port = free_port();
    let e = start(tmp.path(), &wf, port);
    http(
        port,
        "POST",
        "/v1/identify",
        r#"{"userId":"ann","messageId":"i","traits":{"email":"ann@example.org"}}"#,
    )
    .unwrap();
    let sent_at = chrono::Utc::now().timestamp();
    assert_eq!(
        http(
            port,
            "POST",
            "/v1/track",
            r#"{"userId":"ann","messageId":"p","event":"Ping"}"#
        )
        .unwrap()
        .0,
        200
    );
    std::thread::sleep(Duration::from_millis(700));
    e.stop();
    assert!(emls(tmp.path()).is_empty(), "still waiting when stopped");
    let e = start(tmp.path(), &wf, port);
    wait_for(Duration::from_secs(10), || emls(tmp.path()).len() == 1);
    let mail = &emls(tmp.path())[0].1;
    let date = mail.lines().find_map(|l| l.strip_prefix("Date: ")).unwrap();
    let date = chrono::DateTime::parse_from_rfc2822(date).unwrap().timestamp();
    assert!(
        (sent_at + 2..=sent_at + 5).contains(&date),
        "decided at {date}, ping at {sent_at}"
    );
    e.stop();
}

/// Batches of `Ebook Downloaded` events: each one adds 10 to the contact's score (lead_scoring),
/// and crossing 50 sends exactly one MQL alert (mql_handoff). After `kill -9` mid-ingest the
/// client resends every batch it did not see acknowledged; the final scores must count every
/// event exactly once, every contact gets its alert, and at most the one message in flight at
/// the kill is written twice (as a second file: a repeat is never hidden).
#[test]
fn kill_9_during_ingest_loses_nothing_acknowledged_and_repeats_at_most_the_message_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    const CONTACTS: usize = 40;
    const BATCHES: usize = 120;
    const PER_BATCH: usize = 20;
    let batch = |b: usize| {
        let events: Vec<String> = (0..PER_BATCH)
            .map(|i| {
                let c = (b * 7 + i) % CONTACTS;
                format!(r#"{{"type":"track","userId":"c{c}","messageId":"b{b}-{i}","event":"Ebook Downloaded"}}"#)
            })
            .collect();
        format!(r#"{{"batch":[{}]}}"#, events.join(","))
    };
    let e = start(tmp.path(), &shipped(), port);
    let ids: Vec<String> = (0..CONTACTS)
        .map(|c| {
            format!(
                r#"{{"type":"identify","userId":"c{c}","messageId":"id{c}","traits":{{"email":"c{c}@example.org"}}}}"#
            )
        })
        .collect();
    assert_eq!(
        http(
            port,
            "POST",
            "/v1/batch",
            &format!(r#"{{"batch":[{}]}}"#, ids.join(","))
        )
        .unwrap()
        .0,
        200
    );
    // The kill comes from another thread once 40 batches are acknowledged, while the client
    // keeps posting: some requests are in flight when the process dies.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = {
        let pid = e.child.id();
        let count = count.clone();
        std::thread::spawn(move || {
            while count.load(std::sync::atomic::Ordering::SeqCst) < 40 {
                std::thread::yield_now();
            }
            Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        })
    };
    let mut acked = [false; BATCHES];
    for (b, ok) in acked.iter_mut().enumerate() {
        *ok = http(port, "POST", "/v1/batch", &batch(b)).is_ok_and(|(s, _)| s == 200);
        if *ok {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    killer.join().unwrap();
    let first_run = acked.iter().filter(|a| **a).count();
    assert!(
        first_run > 0 && first_run < BATCHES,
        "the kill landed mid-ingest ({first_run} of {BATCHES} acknowledged)"
    );
    e.kill9();

    // Restart and resend what was not acknowledged (at-least-once client).
    let e = start(tmp.path(), &shipped(), port);
    for (b, ok) in acked.iter().enumerate() {
        if !ok {
            let (s, body) = http(port, "POST", "/v1/batch", &batch(b)).unwrap();
            assert_eq!(s, 200, "{body}");
        }
    }
    let mut expected = vec![0i64; CONTACTS];
    for b in 0..BATCHES {
        for i in 0..PER_BATCH {
            expected[(b * 7 + i) % CONTACTS] += 10;
        }
    }
    let data = tmp.path().join("data");
    wait_for(Duration::from_secs(30), || {
        let Ok(store) = Store::open_read_only(&data) else {
            return false;
        };
        (0..CONTACTS).all(|c| {
            tables::get_contact(&store, &format!("c{c}"))
                .ok()
                .flatten()
                .and_then(|st| st.traits.get("score").and_then(|v| v.as_f64()))
                .is_some_and(|s| s as i64 == expected[c])
        })
    });
    wait_for(Duration::from_secs(10), || {
        let Ok(store) = Store::open_read_only(&data) else {
            return false;
        };
        tables::outbox_page(&store, 1).is_ok_and(|p| p.is_empty())
    });
    e.stop();
    let store = Store::open_read_only(&data).unwrap();
    for (c, want) in expected.iter().enumerate() {
        let st = tables::get_contact(&store, &format!("c{c}")).unwrap().unwrap();
        assert_eq!(
            st.traits.get("score").unwrap().as_f64().unwrap() as i64,
            *want,
            "c{c} processed exactly once per event"
        );
    }
    // A repeat is a second file (`<send id>.2.eml`): the file transport hands over one message
    // at a time, made durable before the next, so the kill can repeat at most that one.
    let mails = emls(tmp.path());
    let send_id = |p: &Path| {
        p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .to_owned()
    };
    let distinct: std::collections::BTreeSet<String> = mails.iter().map(|m| send_id(&m.0)).collect();
    assert!(
        mails.len() - distinct.len() <= 1,
        "{} repeats",
        mails.len() - distinct.len()
    );
    let alerts: std::collections::BTreeSet<String> = mails
        .iter()
        .filter(|m| m.1.contains("Subject: New MQL"))
        .map(|m| send_id(&m.0))
        .collect();
    assert_eq!(alerts.len(), CONTACTS, "one MQL alert per contact");
    assert_eq!(
        distinct.len(),
        tables::sent_ids(&store).unwrap().len(),
        "every ledger entry is a file"
    );
}

/// A real Prometheus server scrapes `dripline run` and answers queries over what it scraped:
/// the exposition format is valid and the counters carry the right values.
#[test]
fn a_real_prometheus_scrapes_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let e = start(tmp.path(), &shipped(), port);
    for i in 0..5 {
        let body = format!(r#"{{"userId":"u{i}","messageId":"t{i}","event":"Product Viewed"}}"#);
        assert_eq!(http(port, "POST", "/v1/track", &body).unwrap().0, 200);
    }
    let prom_port = free_port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dripline\n    authorization:\n      credentials: {}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            common::ADMIN_TOKEN
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (scripts/setup.sh installs Debian's package)");
    let query = |q: &str| -> Option<f64> {
        let (status, body) = http(prom_port, "GET", &format!("/api/v1/query?query={q}"), "").ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    wait_for(Duration::from_secs(30), || {
        query("up%7Bjob%3D%22dripline%22%7D") == Some(1.0)
    });
    wait_for(Duration::from_secs(30), || {
        query("dripline_events_ingested_total") == Some(5.0)
    });
    wait_for(Duration::from_secs(30), || {
        query("dripline_inputs_processed_total") == Some(5.0)
    });
    // One lag series per partition, all caught up.
    wait_for(Duration::from_secs(30), || {
        query("count%28dripline_log_lag_records%29") == Some(8.0)
            && query("sum%28dripline_log_lag_records%29") == Some(0.0)
    });
    let _ = prom.kill();
    let _ = prom.wait();
    e.stop();
}

fn dripline(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(args)
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A live engine on the wall clock, with waits that come due during the run (timers fire while
/// the log is idle) and waits still pending when it stops; then the same log replayed into a
/// fresh directory gives the same state digest, mid-wait contacts included.
#[test]
fn a_replay_of_a_live_run_has_the_same_state_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let wf = tmp.path().join("wf");
    std::fs::create_dir(&wf).unwrap();
    std::fs::write(
        wf.join("journey.yaml"),
        r#"id: journey
triggers: [{ event: Signed Up }]
goal: { event: Upgraded }
steps:
  - id: welcome
    send: { template: hello, kind: transactional }
  - id: pause
    wait: 1s
  - id: activated
    wait_for: { event: Activated, timeout: 2s }
    on_event: tips
    on_timeout: nudge
  - id: nudge
    send: { template: hello, kind: transactional }
  - id: tips
    send: { template: hello, kind: transactional }
  - id: long
    wait: 30d
  - id: final
    send: { template: hello, kind: transactional }
templates:
  hello: { subject: Hello, text: hello }
"#,
    )
    .unwrap();
    let port = free_port();
    let e = start(tmp.path(), &wf, port);
    let mut n = 0;
    for round in 0..6 {
        for c in 0..8 {
            let who = format!("c{}", round * 8 + c);
            let events = [
                format!(
                    r#"{{"type":"identify","userId":"{who}","messageId":"i-{who}","traits":{{"email":"{who}@example.org"}}}}"#
                ),
                format!(r#"{{"type":"track","userId":"{who}","messageId":"s-{who}","event":"Signed Up"}}"#),
            ];
            let (s, b) = http(
                port,
                "POST",
                "/v1/batch",
                &format!(r#"{{"batch":[{}]}}"#, events.join(",")),
            )
            .unwrap();
            assert_eq!(s, 200, "{b}");
        }
        // Some earlier contacts act while their waits are running or have run out.
        for c in (0..round * 8).step_by(3) {
            n += 1;
            let event = ["Activated", "Upgraded", "Page Viewed"][n % 3];
            let body = format!(r#"{{"userId":"c{c}","messageId":"a{n}","event":"{event}"}}"#);
            assert_eq!(http(port, "POST", "/v1/track", &body).unwrap().0, 200);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_millis(1500));
    e.stop();

    let data = tmp.path().join("data");
    let live = dripline(&["state", "digest", "--data-dir", data.to_str().unwrap()]);
    let replayed = tmp.path().join("replayed");
    let workflows = format!("DRIPLINE__WORKFLOWS__DIR={}", wf.display());
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args([
            "replay",
            "--from-data",
            data.to_str().unwrap(),
            "--into",
            replayed.to_str().unwrap(),
        ])
        .env("DRIPLINE__WORKFLOWS__DIR", &wf)
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{workflows}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let again = dripline(&["state", "digest", "--data-dir", replayed.to_str().unwrap()]);
    assert_eq!(live, again, "live and replayed state differ; replay said:\n{report}");
    // 48 contacts, some mid-wait (the 30-day one), some with sends behind them.
    assert!(live.contains(" 48 contacts"), "{live}");
    let timers: u64 = live
        .lines()
        .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" timers")?.parse::<u64>().ok())
        .sum();
    assert!(timers > 0, "some contacts are still waiting: {live}");
    // Everything the live run sent is recognised as already sent; nothing goes out again.
    assert!(report.contains("nothing will be sent"), "{report}");
    let sent = emls(tmp.path()).len();
    assert!(
        report.contains(&format!("of which {sent} were already sent")),
        "{sent} sent live; replay said:\n{report}"
    );
}

/// `dripline ingest` while `dripline run` holds the store: the file goes through the running
/// engine's HTTP ingest, is processed, and malformed lines are reported with their numbers.
#[test]
fn ingest_while_the_engine_runs_goes_through_its_http_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let e = start(tmp.path(), &shipped(), port);
    let file = tmp.path().join("events.ndjson");
    std::fs::write(
        &file,
        [
            r#"{"type":"identify","userId":"zoe","messageId":"i-zoe","traits":{"email":"zoe@example.org"}}"#,
            "not json at all",
            r#"{"type":"track","userId":"zoe","messageId":"n-zoe","event":"Newsletter Subscribed"}"#,
            r#"{"type":"track","messageId":"no-user","event":"Newsletter Subscribed"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dripline"))
        .arg("ingest")
        .arg(&file)
        .env("DRIPLINE__HTTP__WRITE_KEYS", common::WRITE_KEY)
        .env("DRIPLINE__ENGINE__DATA_DIR", tmp.path().join("data"))
        .env("DRIPLINE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("through the running engine"), "{stdout}");
    assert!(
        stdout.contains("2 appended, 0 duplicates dropped, 2 rejected"),
        "{stdout}"
    );
    assert!(stdout.contains("line 2:") && stdout.contains("line 4:"), "{stdout}");
    wait_for(Duration::from_secs(10), || {
        emls(tmp.path())
            .iter()
            .any(|(_, m)| common::addressed_to(m, "zoe@example.org"))
    });
    e.stop();
}
