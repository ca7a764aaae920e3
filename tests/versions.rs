//! Editing a live workflow makes a new version: contacts inside finish on theirs, new entrants
//! take the newest.

mod common;

use dripline::machine::ContactState;
use dripline::machine::sim::Sim;
use dripline::time::{DAY, parse_rfc3339};
use dripline::workflow::{Policy, Registry, StoredVersion};
use serde_json::json;
use std::sync::Arc;

const V1: &str = "id: promo\ntriggers: [{ event: Joined }]\nentry: always\nsteps:\n  - id: wait\n    wait: 2d\n  - id: mail\n    send: old\ntemplates:\n  old: { subject: Old offer, text: old }\n";
const V2: &str = "id: promo\ntriggers: [{ event: Joined }]\nentry: always\nsteps:\n  - id: wait\n    wait: 1d\n  - id: mail\n    send: new\ntemplates:\n  new: { subject: New offer, text: new }\n";

#[test]
fn contacts_inside_finish_on_their_version_and_new_entrants_take_the_newest() {
    let r1 = Registry::from_sources(None, &[("promo.yaml", V1)], Policy::default()).unwrap();
    assert_eq!(r1.latest()[0].version, 1);
    let history: Vec<StoredVersion> = r1.stored_versions().to_vec();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut sim = Sim::new(Arc::new(r1), t0);
    sim.identify(t0, "old", json!({"email": "old@example.org"}));
    sim.identify(t0, "new", json!({"email": "new@example.org"}));
    sim.track(t0, "old", "Joined", json!({}));

    // The file changes while `old` waits.
    // Deployed after `old` joined, before `new` does.
    let r2 = Registry::build(
        None,
        vec![("promo.yaml".into(), V2.into())],
        &history,
        Policy::default(),
        t0 + DAY / 4,
    )
    .unwrap();
    assert_eq!(r2.latest()[0].version, 2);
    assert!(
        r2.get("promo", 1).is_some(),
        "version 1 is kept while someone is inside"
    );
    sim.reg = Arc::new(r2);
    sim.track(t0 + DAY / 2, "new", "Joined", json!({}));
    sim.advance_to(t0 + 5 * DAY);
    let got: Vec<_> = sim
        .sent
        .iter()
        .map(|m| (m.contact.clone(), m.cmd.version, sim.render(m).subject, m.at - t0))
        .collect();
    assert_eq!(
        got,
        vec![
            ("new".into(), 2, "New offer".into(), DAY + DAY / 2),
            ("old".into(), 1, "Old offer".into(), 2 * DAY)
        ]
    );

    // Unchanged source keeps its version number.
    let r3 = Registry::build(
        None,
        vec![("promo.yaml".into(), V2.into())],
        sim.reg.stored_versions(),
        Policy::default(),
        t0 + 10 * DAY,
    )
    .unwrap();
    assert_eq!(r3.latest()[0].version, 2);
}

#[test]
fn state_encoding_is_versioned_and_rejects_unknown_versions() {
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let reg = Registry::from_sources(None, &[("promo.yaml", V1)], Policy::default()).unwrap();
    let mut sim = Sim::new(Arc::new(reg), t0);
    sim.identify(
        t0,
        "a",
        json!({"email": "a@example.org", "n": 1.5, "tags": ["x"], "nested": {"k": true}}),
    );
    sim.track(t0, "a", "Joined", json!({"sku": "A"}));
    let st = &sim.contacts["a"];
    let bytes = st.encode();
    assert_eq!(bytes[0], 1);
    assert_eq!(&ContactState::decode(&bytes).unwrap(), st);
    let mut future = bytes.clone();
    future[0] = 99;
    assert_eq!(
        ContactState::decode(&future).unwrap_err().to_string(),
        "unknown state format version 99"
    );
    assert!(ContactState::decode(&bytes[..bytes.len() / 2]).is_err());
}

/// Sends are rendered when the mailer sends them, so mail decided on a version must still render
/// from that version after the file changed and the engine restarted.
#[test]
fn mail_decided_on_an_old_version_renders_from_it_after_the_file_changed_and_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let wf = tmp.path().join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    let now_v1 = "id: promo\ntriggers: [{ event: Joined }]\nsteps:\n  - id: mail\n    send: offer\ntemplates:\n  offer: { subject: \"Old offer for {{ first_name }}\", text: old }\n";
    let now_v2 = "id: promo\ntriggers: [{ event: Joined }]\nsteps:\n  - id: mail\n    send: offer\ntemplates:\n  offer: { subject: New offer, text: new }\n";
    std::fs::write(wf.join("promo.yaml"), now_v1).unwrap();
    let mut s = common::settings(tmp.path());
    s.workflows.dir = wf.clone();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    {
        let engine = dripline::runtime::Engine::open(&s).unwrap();
        engine
            .ingest_values(
                &[
                    json!({"type": "identify", "userId": "ann", "messageId": "i1", "traits": {"email": "ann@example.org", "first_name": "Ann"}}),
                    json!({"type": "track", "userId": "ann", "messageId": "t1", "event": "Joined"}),
                ],
                None,
                t0,
            )
            .unwrap();
        engine.pump(t0 + 1000).unwrap();
        assert_eq!(dripline::storage::tables::outbox_ids(&engine.store).unwrap().len(), 1);
        // Stopped before the mailer sent it.
    }
    std::fs::write(wf.join("promo.yaml"), now_v2).unwrap();
    let engine = dripline::runtime::Engine::open(&s).unwrap();
    assert_eq!(engine.reg.latest_of("promo").unwrap().version, 2);
    assert_eq!(engine.drain_mail(10).unwrap(), 1);
    let files: Vec<_> = std::fs::read_dir(tmp.path().join("mail")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let eml = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(eml.contains("Subject: Old offer for Ann"), "{eml}");
}

/// Mail sent at once, then a long wait and a second mail: contacts stay inside for the test.
const LIVE_V1: &str = "id: promo\ntriggers: [{ event: Joined }]\nentry: always\nsteps:\n  - id: hello\n    send: hello\n  - id: wait\n    wait: 30d\n  - id: later\n    send: hello\ntemplates:\n  hello: { subject: Old offer, text: old }\n";
const LIVE_V2: &str = "id: promo\ntriggers: [{ event: Joined }]\nentry: always\nsteps:\n  - id: hello\n    send: hello\n  - id: wait\n    wait: 20d\n  - id: later\n    send: hello\ntemplates:\n  hello: { subject: New offer, text: new }\n";

struct Run(std::process::Child, u16);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(workflows: &std::path::Path, data: &std::path::Path, mail: &std::path::Path) -> Run {
    let port = common::free_port();
    let (mut cmd, _) = common::run_command(workflows, data, mail, port);
    let child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    common::wait_for(std::time::Duration::from_secs(20), || {
        common::http(port, "GET", "/readyz", "").is_ok_and(|(s, _)| s == 200)
    });
    Run(child, port)
}

impl Run {
    fn stop(mut self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(self.0.wait().unwrap().success());
    }
}

fn mails(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect())
        .unwrap_or_default()
}

fn joined(port: u16, who: &str) {
    let batch = json!({"batch": [
        {"type": "identify", "userId": who, "messageId": format!("i-{who}"), "traits": {"email": format!("{who}@example.org")}},
        {"type": "track", "userId": who, "messageId": format!("j-{who}"), "event": "Joined"},
    ]});
    assert_eq!(
        common::http(port, "POST", "/v1/batch", &batch.to_string()).unwrap().0,
        200
    );
}

fn digest(data: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(["state", "digest", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap().to_owned()
}

/// Run v1, edit to v2, restart, more contacts; the store rebuilt from its log with
/// `--send-unsent` enters each contact into the version it entered live, so its digest equals
/// the source's and running it hands nothing to the transport.
#[test]
fn a_store_rebuilt_after_a_workflow_edit_runs_every_contact_on_its_version_and_sends_nothing_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (wf, data, mail) = (tmp.path().join("wf"), tmp.path().join("data"), tmp.path().join("mail"));
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("promo.yaml"), LIVE_V1).unwrap();
    let live = run(&wf, &data, &mail);
    for who in ["ann", "ben"] {
        joined(live.1, who);
    }
    common::wait_for(std::time::Duration::from_secs(10), || mails(&mail).len() == 2);
    live.stop();
    std::fs::write(wf.join("promo.yaml"), LIVE_V2).unwrap();
    let live = run(&wf, &data, &mail);
    for who in ["cid", "dee"] {
        joined(live.1, who);
    }
    common::wait_for(std::time::Duration::from_secs(10), || mails(&mail).len() == 4);
    live.stop();
    let old = mails(&mail).iter().filter(|m| m.contains("Subject: Old offer")).count();
    assert_eq!(old, 2, "ann and ben on v1, cid and dee on v2");

    let rebuilt = tmp.path().join("rebuilt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dripline"))
        .args(["replay", "--from-data"])
        .arg(&data)
        .arg("--into")
        .arg(&rebuilt)
        .arg("--send-unsent")
        .env("DRIPLINE__WORKFLOWS__DIR", &wf)
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("would send 4, of which 4 were already sent"),
        "{report}"
    );
    assert_eq!(digest(&rebuilt), digest(&data));
    let store = dripline::storage::Store::open_read_only(&rebuilt).unwrap();
    for (who, version) in [("ann", 1), ("ben", 1), ("cid", 2), ("dee", 2)] {
        let st = dripline::storage::tables::get_contact(&store, who).unwrap().unwrap();
        assert_eq!(st.enrollments[0].version, version, "{who}");
    }
    drop(store);

    // The rebuilt store, run: nothing is handed to the transport.
    let again = tmp.path().join("mail-again");
    let rerun = run(&wf, &rebuilt, &again);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    rerun.stop();
    assert_eq!(mails(&again).len(), 0, "nothing sent twice");
}

/// The digest covers the version history: two stores that differ only in which version a
/// contact entered (the same events, the edit deployed before or after them) differ, and two
/// built alike are equal.
#[test]
fn the_digest_tells_apart_stores_that_differ_only_in_the_version_a_contact_is_on() {
    use dripline::storage::tables;
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let build = |dir: &std::path::Path, deployed: i64| {
        let wf = dir.join("wf");
        std::fs::create_dir_all(&wf).unwrap();
        std::fs::write(wf.join("promo.yaml"), V2).unwrap();
        let mut s = common::settings(dir);
        s.workflows.dir = wf;
        let store = dripline::storage::Store::open_partitioned(&s.engine.data_dir, s.engine.partitions).unwrap();
        let v1 = Registry::from_sources(None, &[("promo.yaml", V1)], Policy::default()).unwrap();
        let v2 = Registry::build(
            None,
            vec![("promo.yaml".into(), V2.into())],
            v1.stored_versions(),
            Policy::default(),
            deployed,
        )
        .unwrap();
        tables::put_workflow_versions(&store, v2.stored_versions()).unwrap();
        drop(store);
        let engine = dripline::runtime::Engine::open(&s).unwrap();
        let events = [
            json!({"type": "identify", "userId": "ann", "messageId": "i", "traits": {"email": "ann@example.org"}}),
            json!({"type": "track", "userId": "ann", "messageId": "j", "event": "Joined"}),
        ];
        engine.ingest_values(&events, None, t0).unwrap();
        engine.pump(t0).unwrap();
        let version = engine.contact("ann").unwrap().unwrap().enrollments[0].version;
        let d = dripline::storage::digest::digest(&engine.store, s.engine.partitions).unwrap();
        (version, d.total)
    };
    let tmp = tempfile::tempdir().unwrap();
    let (before, a) = build(&tmp.path().join("a"), t0 - DAY);
    let (after, b) = build(&tmp.path().join("b"), t0 + DAY);
    let (again, c) = build(&tmp.path().join("c"), t0 + DAY);
    assert_eq!(
        (before, after, again),
        (2, 1, 1),
        "the edit deployed before or after she joined"
    );
    assert_ne!(a, b);
    assert_eq!(b, c);
}

/// `replay --ndjson` with `--versions-from`: the events, at their `receivedAt`, enter the
/// version in force then, per the history of the data directory named.
#[test]
fn an_ndjson_replay_takes_the_version_history_from_a_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (wf, data, mail) = (tmp.path().join("wf"), tmp.path().join("data"), tmp.path().join("mail"));
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("promo.yaml"), LIVE_V1).unwrap();
    run(&wf, &data, &mail).stop();
    std::fs::write(wf.join("promo.yaml"), LIVE_V2).unwrap();
    run(&wf, &data, &mail).stop();
    let deployed = {
        let store = dripline::storage::Store::open_read_only(&data).unwrap();
        let versions = dripline::storage::tables::workflow_versions(&store).unwrap();
        versions.iter().find(|v| v.version == 2).unwrap().deployed_at
    };
    let at = |t: i64| dripline::time::format_rfc3339(t);
    let lines: Vec<String> = [("ann", deployed - DAY), ("cid", deployed + 1000)]
        .iter()
        .flat_map(|(who, t)| {
            [
                json!({"type": "identify", "userId": who, "messageId": format!("i-{who}"), "receivedAt": at(*t),
                    "traits": {"email": format!("{who}@example.org")}}),
                json!({"type": "track", "userId": who, "messageId": format!("j-{who}"), "event": "Joined", "receivedAt": at(*t)}),
            ]
        })
        .map(|v| v.to_string())
        .collect();
    let file = tmp.path().join("events.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let rebuilt = tmp.path().join("rebuilt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dripline"))
        .arg("replay")
        .arg("--ndjson")
        .arg(&file)
        .arg("--versions-from")
        .arg(&data)
        .arg("--into")
        .arg(&rebuilt)
        .env("DRIPLINE__WORKFLOWS__DIR", &wf)
        .env("DRIPLINE__POLICY__QUIET_HOURS", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = dripline::storage::Store::open_read_only(&rebuilt).unwrap();
    for (who, version) in [("ann", 1), ("cid", 2)] {
        let st = dripline::storage::tables::get_contact(&store, who).unwrap().unwrap();
        assert_eq!(st.enrollments[0].version, version, "{who}");
    }
}
