//! A workflow's report: per-step numbers from the counters the state machine keeps, through the
//! library, the `dripline report` command and the admin API.

mod common;

use common::settings;
use dripline::admin::report::{Report, report};
use dripline::runtime::Engine;
use dripline::time::{HOUR, MINUTE, parse_rfc3339};
use serde_json::json;

fn step<'r>(r: &'r Report, id: &str) -> &'r dripline::admin::report::StepReport {
    r.steps
        .iter()
        .find(|s| s.step == id)
        .unwrap_or_else(|| panic!("no step {id} in {r:?}"))
}

#[test]
fn the_abandoned_cart_report_counts_each_step() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let expected = {
        let engine = Engine::open(&settings(tmp.path())).unwrap();
        let mut events = vec![];
        for who in ["ann", "bob", "cat", "dan"] {
            if who != "dan" {
                events.push(json!({"type": "identify", "userId": who, "messageId": format!("i-{who}"), "traits": {"email": format!("{who}@example.org")}}));
            }
            events.push(json!({"type": "track", "userId": who, "messageId": format!("p-{who}"), "event": "Product Added", "properties": {"name": "Lamp"}}));
        }
        engine.ingest_values(&events, None, t0).unwrap();
        engine.pump(t0).unwrap();
        // Cat orders within the hour: the workflow's goal, reached at the first wait.
        let order = json!({"type": "track", "userId": "cat", "messageId": "o-cat", "event": "Order Completed", "properties": {"order_id": "o1"}});
        engine.ingest_values(&[order], None, t0 + 30 * MINUTE).unwrap();
        engine.pump(t0 + 30 * MINUTE).unwrap();
        engine.pump(t0 + 2 * HOUR).unwrap();
        let r = report(&engine, "abandoned_cart", None).unwrap().unwrap();
        let kinds: Vec<&str> = r.steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["wait", "send", "wait", "send"], "in the definition's order");
        let (wait, reminder, wait_24h, coupon) = (
            step(&r, "wait_1h"),
            step(&r, "reminder"),
            step(&r, "wait_24h"),
            step(&r, "coupon"),
        );
        assert_eq!((wait.entered, wait.waiting, wait.converted), (4, 0, 1));
        assert_eq!((reminder.entered, reminder.sent, reminder.no_address), (3, 2, 1));
        assert_eq!(wait_24h.waiting, 3, "ann, bob and dan wait a day for the coupon");
        assert_eq!(coupon.entered, 0);
        // One version only: the same numbers.
        assert_eq!(
            report(&engine, "abandoned_cart", Some(1)).unwrap().unwrap().steps,
            r.steps
        );
        assert!(report(&engine, "abandoned_cart", Some(9)).unwrap().is_none());
        assert!(report(&engine, "no_such_workflow", None).unwrap().is_none());
        r
    };
    // The command reads the same from the stopped engine's store.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dripline"))
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(args)
            .env(
                "DRIPLINE__WORKFLOWS__DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/workflows"),
            )
            .output()
            .unwrap()
    };
    let out = cli(&["report", "abandoned_cart", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, expected);
    let table = String::from_utf8(cli(&["report", "abandoned_cart"]).stdout).unwrap();
    let reminder = table.lines().find(|l| l.starts_with("reminder")).expect(&table);
    let cells: Vec<&str> = reminder.split_whitespace().collect();
    assert_eq!(cells[..3], ["reminder", "send", "3"], "{table}");
    let missing = cli(&["report", "abandoned_cart", "--version", "9"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no version 9 of workflow `abandoned_cart`"));
}
