//! Replay: rebuilt state equals the original, replays are byte-for-byte repeatable, NDJSON
//! history rebuilds what live ingest built, what-if runs report differences and send nothing,
//! and `send_unsent` keeps exactly what the source never sent.

mod common;

use dripline::machine::Metric;
use dripline::replay::{self, Options, Source};
use dripline::storage::{Store, digest::digest, tables};
use dripline::time::parse_rfc3339;
use std::path::{Path, PathBuf};

const CLICKSTREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clickstream.ndjson");

/// The demo's store: the sample clickstream through the shipped workflows, 45 days of timers.
fn demo_store(dir: &Path) -> PathBuf {
    let s = common::settings(dir);
    dripline::demo::run(&s, Path::new(CLICKSTREAM), &dir.join("demo")).unwrap();
    dir.join("demo").join("data")
}

fn opts(source: Source, into: Option<PathBuf>) -> Options {
    Options {
        source,
        into,
        workflows: None,
        send_unsent: false,
        versions_from: None,
        until: None,
        progress: false,
    }
}

fn digest_of(dir: &Path) -> dripline::storage::digest::Digest {
    digest(&Store::open_read_only(dir).unwrap(), 8).unwrap()
}

#[test]
fn replaying_twice_gives_identical_digests_equal_to_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let source = demo_store(tmp.path());
    let s = common::settings(tmp.path());
    let a = replay::run(&s, opts(Source::Data(source.clone()), Some(tmp.path().join("a")))).unwrap();
    let b = replay::run(&s, opts(Source::Data(source.clone()), Some(tmp.path().join("b")))).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.digest.as_ref(), Some(&digest_of(&source)));
    assert!(a.digest.as_ref().unwrap().contacts() > 0);
    // Every send was delivered by the demo, so a replay would send nothing new.
    assert!(a.would_send > 0);
    assert_eq!((a.already_sent, a.kept_to_send), (a.would_send, 0));
    // The state directories themselves hold the same contacts byte for byte.
    let dump = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let st = Store::open_read_only(d).unwrap();
        tables::contacts(&st).map(Result::unwrap).collect()
    };
    assert_eq!(dump(&tmp.path().join("a")), dump(&tmp.path().join("b")));
    // A replay refuses to write into a directory that already holds state.
    let again = replay::run(&s, opts(Source::Data(source), Some(tmp.path().join("a"))));
    assert!(again.unwrap_err().to_string().contains("not empty"));
}

#[test]
fn ndjson_history_rebuilds_the_same_state_as_live_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    let source = demo_store(tmp.path());
    let s = common::settings(tmp.path());
    let last = std::fs::read_to_string(CLICKSTREAM)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| parse_rfc3339(v.get("timestamp")?.as_str()?))
        .max()
        .unwrap();
    let mut o = opts(Source::Ndjson(vec![CLICKSTREAM.into()]), Some(tmp.path().join("n")));
    o.until = Some(last + dripline::demo::TAIL);
    let r = replay::run(&s, o).unwrap();
    // The sample has one malformed line: counted and reported, not fatal.
    assert_eq!(r.bad, 1, "{:?}", r.bad_listed);
    assert!(r.bad_listed[0].contains("clickstream.ndjson:"), "{:?}", r.bad_listed);
    assert_eq!(r.digest.as_ref(), Some(&digest_of(&source)));
}

#[test]
fn a_what_if_run_reports_the_difference_and_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = demo_store(tmp.path());
    let mut s = common::settings(tmp.path());
    s.mail.outbox_dir = tmp.path().join("what-if-mail");
    // The changed definitions: the abandoned cart no longer sends its coupon.
    let changed = tmp.path().join("changed");
    std::fs::create_dir(&changed).unwrap();
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/workflows")).unwrap() {
        let f = f.unwrap().path();
        let mut text = std::fs::read_to_string(&f).unwrap();
        if f.ends_with("09_abandoned_cart.yaml") {
            text = text.replace(
                "  - id: wait_24h\n    wait: 24h\n  - id: coupon\n    send: cart_coupon\n",
                "",
            );
            assert!(!text.contains("id: coupon"));
        }
        std::fs::write(changed.join(f.file_name().unwrap()), text).unwrap();
    }
    let mut o = opts(Source::Data(source), None);
    o.workflows = Some(changed);
    let r = replay::run(&s, o).unwrap();
    let step = |wf: &str, step: &str, m: Metric| r.steps.get(&(wf.into(), step.into(), m)).copied();
    assert_eq!(step("abandoned_cart", "coupon", Metric::Sent), Some((Some(1), 0)));
    assert_eq!(step("abandoned_cart", "reminder", Metric::Sent), Some((Some(1), 1)));
    assert_eq!(step("welcome_series", "offer", Metric::Sent), Some((Some(1), 1)));
    assert_eq!(r.kept_to_send, 0);
    assert!(r.into.is_none(), "a what-if keeps no state");
    assert!(
        std::fs::read_dir(tmp.path().join("what-if-mail")).map_or(true, |mut d| d.next().is_none()),
        "a what-if writes no email"
    );
}

#[test]
fn send_unsent_keeps_only_what_the_source_never_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::settings(tmp.path());
    let engine = dripline::runtime::Engine::open(&s).unwrap();
    let t0 = parse_rfc3339("2026-03-02T09:00:00Z").unwrap();
    let events: Vec<serde_json::Value> = (0..10)
        .flat_map(|i| {
            [
                serde_json::json!({"type":"identify","userId":format!("u{i}"),"messageId":format!("i{i}"),"traits":{"email":format!("u{i}@example.org")}}),
                serde_json::json!({"type":"track","userId":format!("u{i}"),"messageId":format!("n{i}"),"event":"Newsletter Subscribed"}),
            ]
        })
        .collect();
    engine.ingest_values(&events, None, t0).unwrap();
    engine.pump(t0 + 60_000).unwrap();
    let decided = tables::outbox_ids(&engine.store).unwrap().len() as u64;
    assert_eq!(
        engine.drain_mail(4).unwrap(),
        4,
        "the mailer got through four before stopping"
    );
    drop(engine);

    let mut o = opts(
        Source::Data(s.engine.data_dir.clone()),
        Some(tmp.path().join("rebuilt")),
    );
    o.send_unsent = true;
    let r = replay::run(&s, o).unwrap();
    assert_eq!(
        (r.would_send, r.already_sent, r.kept_to_send),
        (decided, 4, decided - 4)
    );
    let rebuilt = Store::open_read_only(&tmp.path().join("rebuilt")).unwrap();
    let waiting = tables::outbox_ids(&rebuilt).unwrap();
    assert_eq!(waiting.len() as u64, decided - 4);
    for id in waiting {
        assert!(!tables::is_sent(&rebuilt, id).unwrap());
    }
    assert_eq!(tables::sent_ids(&rebuilt).unwrap().len(), 4, "the ledger came along");
}
