//! Calendar invites: the shipped event-registration workflow's confirmation carries one, read by
//! the Python `icalendar` package (`tests/support/read_invite.py`) the way a calendar client
//! reads it, and a replay of the log into a fresh directory makes the same invite (same UID).

mod common;

use common::settings;
use dripline::replay::{self, Options, Source};
use dripline::runtime::Engine;
use dripline::time::parse_rfc3339;
use serde_json::{Value, json};
use std::path::Path;

fn read_invite(eml: &Path) -> Value {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/read_invite.py"))
        .arg(eml)
        .output()
        .expect("python3 with icalendar (scripts/setup-test.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one `.eml` under `dir/mail` whose subject starts with `subject`.
fn eml_with(dir: &Path, subject: &str) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains(&format!("Subject: {subject}"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn the_registration_confirmation_carries_an_invite_that_a_replay_makes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let t0 = parse_rfc3339("2026-10-01T08:00:00Z").unwrap();
    {
        let engine = Engine::open(&settings(&live)).unwrap();
        engine
            .ingest_values(
                &[
                    json!({"type": "identify", "userId": "tom", "messageId": "i1",
                           "traits": {"email": "tom@example.com", "first_name": "Tom", "timezone": "Asia/Jakarta"}}),
                    json!({"type": "track", "userId": "tom", "messageId": "r1", "event": "Event Registered",
                           "properties": {"event_name": "Coffee Summit", "event_date": "2026-11-25",
                                          "starts_at": "2026-11-25T09:30", "ends_at": "2026-11-25T12:00",
                                          "location": "Hall 2, Jakarta"}}),
                    json!({"type": "identify", "userId": "ann", "messageId": "i2",
                           "traits": {"email": "ann@example.com"}}),
                    json!({"type": "track", "userId": "ann", "messageId": "r2", "event": "Event Registered",
                           "properties": {"event_name": "Tea Fair", "event_date": "2026-12-03"}}),
                ],
                None,
                t0,
            )
            .unwrap();
        engine.pump(t0).unwrap();
        // Not sent yet: the replay below keeps it to send, as a rebuilt node would.
    }
    let rebuilt = tmp.path().join("rebuilt");
    let mut s = settings(&live);
    s.mail.outbox_dir = rebuilt.join("mail");
    let report = replay::run(
        &s,
        Options {
            source: Source::Data(live.join("data")),
            into: Some(rebuilt.join("data")),
            workflows: None,
            send_unsent: true,
            versions_from: None,
            until: None,
            progress: false,
        },
    )
    .unwrap();
    assert!(report.kept_to_send >= 1, "{report:?}");
    for dir in [&live, &rebuilt] {
        let engine = Engine::open(&settings(dir)).unwrap();
        while engine.drain_mail(100).unwrap() > 0 {}
    }

    let live_invite = read_invite(&eml_with(&live, "You're registered: Coffee Summit"));
    let rebuilt_invite = read_invite(&eml_with(&rebuilt, "You're registered: Coffee Summit"));
    assert_eq!(live_invite, rebuilt_invite, "the replay makes the same invite");

    let parts: Vec<&str> = live_invite["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        parts,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "text/calendar",
            "application/ics"
        ]
    );
    let invites = live_invite["invites"].as_array().unwrap();
    assert_eq!(invites.len(), 2);
    let (inline, file) = (&invites[0], &invites[1]);
    assert_eq!(inline["content_method"], "REQUEST");
    assert_eq!(file["filename"], "invite.ics");
    for field in [
        "method",
        "uid",
        "start",
        "end",
        "stamp",
        "summary",
        "location",
        "organizer",
        "attendee",
    ] {
        assert_eq!(inline[field], file[field], "{field}");
    }
    assert_eq!(inline["method"], "REQUEST");
    // The event's key (its name and date here) makes the UID: 32 hex digits at the domain.
    let uid = inline["uid"].as_str().unwrap();
    let (hex, domain) = uid.split_once('@').unwrap();
    assert!(hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{uid}");
    assert_eq!(domain, "dripline.example.com");
    // 09:30 in Jakarta (UTC+7), the contact's zone.
    assert_eq!(inline["start"], "2026-11-25T02:30:00+00:00");
    assert_eq!(inline["end"], "2026-11-25T05:00:00+00:00");
    assert_eq!(
        inline["stamp"], "2026-10-01T08:00:00+00:00",
        "stamped with the decision time"
    );
    assert_eq!(inline["summary"], "Coffee Summit");
    assert_eq!(inline["location"], "Hall 2, Jakarta");
    assert_eq!(inline["attendee"], "mailto:tom@example.com");

    // Only a date: an all-day event.
    let ann = read_invite(&eml_with(&live, "You're registered: Tea Fair"));
    assert_eq!(ann["invites"][0]["start"], "2026-12-03");
    assert_eq!(ann["invites"][0]["end"], "2026-12-04");
}

/// A cancellation (the shipped `event_cancelled` workflow) names the registration's invite by
/// the event's key: the same UID, a higher SEQUENCE, `METHOD:CANCEL` and `STATUS:CANCELLED`, as a
/// calendar client needs to remove the event. Another attendee of the event has a UID of their
/// own.
#[test]
fn a_cancellation_withdraws_the_registrations_invite() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-10-01T08:00:00Z").unwrap();
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    let registered = |user: &str, id: &str| {
        json!({"type": "track", "userId": user, "messageId": id, "event": "Event Registered",
               "properties": {"event_id": "ev-1", "event_name": "Coffee Summit", "event_date": "2026-11-25"}})
    };
    engine
        .ingest_values(
            &[
                json!({"type": "identify", "userId": "tom", "messageId": "i1", "traits": {"email": "tom@example.com"}}),
                json!({"type": "identify", "userId": "ann", "messageId": "i2", "traits": {"email": "ann@example.com"}}),
                registered("tom", "r1"),
                registered("ann", "r2"),
            ],
            None,
            t0,
        )
        .unwrap();
    engine.pump(t0).unwrap();
    let t1 = t0 + 3 * 24 * 3600 * 1000;
    engine
        .ingest_values(
            &[
                json!({"type": "track", "userId": "tom", "messageId": "c1", "event": "Event Cancelled",
                     "properties": {"event_id": "ev-1", "event_name": "Coffee Summit", "event_date": "2026-11-25"}}),
            ],
            None,
            t1,
        )
        .unwrap();
    engine.pump(t1).unwrap();
    while engine.drain_mail(100).unwrap() > 0 {}
    let invite = |to: &str, subject: &str| {
        let found: Vec<_> = std::fs::read_dir(tmp.path().join("mail"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let m = std::fs::read_to_string(p).unwrap();
                common::addressed_to(&m, to) && m.contains(&format!("Subject: {subject}"))
            })
            .collect();
        assert_eq!(found.len(), 1, "{to} {subject}");
        read_invite(&found[0])["invites"][0].clone()
    };
    let request = invite("tom@example.com", "You're registered: Coffee Summit");
    let cancel = invite("tom@example.com", "Cancelled: Coffee Summit");
    let other = invite("ann@example.com", "You're registered: Coffee Summit");
    assert_eq!(request["method"], "REQUEST");
    assert_eq!(request["status"], "CONFIRMED");
    assert_eq!(cancel["method"], "CANCEL");
    assert_eq!(cancel["content_method"], "CANCEL");
    assert_eq!(cancel["status"], "CANCELLED");
    assert_eq!(cancel["uid"], request["uid"], "the same event");
    assert!(
        cancel["sequence"].as_u64() > request["sequence"].as_u64(),
        "{cancel} {request}"
    );
    assert_ne!(other["uid"], request["uid"], "another attendee's invite");
}
