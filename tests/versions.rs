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
    let r2 = Registry::build(
        None,
        vec![("promo.yaml".into(), V2.into())],
        &history,
        Policy::default(),
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
