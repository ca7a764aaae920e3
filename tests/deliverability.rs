//! Deliverability: one message of every template of every shipped workflow, and of each of its
//! translations, built by the mailer as it sends them (tracking, list headers, Feedback-ID,
//! invites), scored by SpamAssassin
//! (Debian's package, local rules only, `spamassassin -L -t`). None trips a rule the engine's
//! message structure would cause, and none scores above 0.5 points (5 is spam). A failure lists
//! the rules that fired.

mod common;

use dripline::machine::SendId;
use dripline::runtime::Engine;
use dripline::storage::outbox_counts;
use dripline::storage::tables::{self, Content, OutboxEntry};
use dripline::value::{Map, Value};
use dripline::workflow::{MailKind, Recipient, StepKind};
use std::sync::Arc;

/// Rules a message's structure or headers would cause (what the engine controls).
const STRUCTURAL: [&str; 12] = [
    "MIME_HTML_ONLY",
    "MIME_HTML_MOSTLY",
    "TO_NO_BRKTS_HTML_ONLY",
    "LIST_PARTIAL_SHORT_MSG",
    "HTML_MIME_NO_HTML_TAG",
    "HTML_IMAGE_ONLY",
    "MPART_ALT_DIFF",
    "MISSING_MID",
    "MISSING_DATE",
    "MISSING_HEADERS",
    "WEIRD_PORT",
    "TO_NO_BRKTS_NORDNS_HTML",
];

fn map(pairs: &[(&str, serde_json::Value)]) -> Arc<Map> {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert((*k).into(), Value::from(v));
    }
    Arc::new(m)
}

#[test]
fn one_mail_of_every_shipped_template_passes_spamassassin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = common::settings(tmp.path());
    // As in production: links on the public https address, a Feedback-ID.
    s.mail.public_url = "https://mail.example.com".into();
    s.mail.from = "Acme Coffee <hello@example.com>".into();
    s.mail.message_id_domain = "mail.example.com".into();
    s.mail.feedback_id_sender = "acme".into();
    let engine = Engine::open(&s).unwrap();
    let traits = map(&[
        ("email", "ann.lee@example.org".into()),
        ("first_name", "Ann".into()),
        ("last_name", "Lee".into()),
        ("company", "Hangzhou Tea Co".into()),
        ("timezone", "Asia/Shanghai".into()),
        ("lifecycle_stage", "customer".into()),
        ("score", 60.into()),
    ]);
    let event = map(&[
        ("event_name", "Coffee Summit".into()),
        ("event_date", "2026-11-25".into()),
        ("order_id", "SO-1042".into()),
        ("total", 129.into()),
        ("currency", "USD".into()),
        ("name", "Blue Kettle".into()),
        ("path", "/pricing".into()),
        ("message", "The grinder stopped working".into()),
        ("topic", "espresso".into()),
        ("plan", "pro".into()),
        ("amount", 49.into()),
    ]);
    let mut sent = vec![];
    let mut id = 1u128;
    let mut b = rocksdb::WriteBatch::default();
    let ctx = minijinja::Value::from(());
    for wf in engine.reg.latest() {
        let mut seen = std::collections::BTreeSet::new();
        for step in &wf.steps {
            let StepKind::Send { template, to, kind } = &step.kind else {
                continue;
            };
            if !seen.insert(template.clone()) {
                continue;
            }
            // The default, and each translation the template has.
            let default = engine.reg.render(wf, template, &ctx).unwrap().subject;
            let locales: Vec<Option<&str>> = std::iter::once(None)
                .chain(
                    ["zh", "ru", "id"]
                        .into_iter()
                        .filter(|l| {
                            engine
                                .reg
                                .render_localized(wf, template, Some(l), &ctx)
                                .unwrap()
                                .subject
                                != default
                        })
                        .map(Some),
                )
                .collect();
            for locale in locales {
                let to = match (to, kind) {
                    (Recipient::Fixed(a), _) => a.clone(),
                    (_, MailKind::Internal) => "sales@example.com".into(),
                    _ => "ann.lee@example.org".into(),
                };
                let e = OutboxEntry {
                    partition: 0,
                    contact: "ann".into(),
                    workflow: wf.id.as_ref().into(),
                    version: wf.version,
                    step: step.id.as_str().into(),
                    kind: *kind,
                    to: to.as_str().into(),
                    content: Content::Template {
                        template: template.as_str().into(),
                        traits: match locale {
                            Some(l) => {
                                let mut t = (*traits).clone();
                                t.insert("locale".into(), Value::from(l));
                                Arc::new(t)
                            }
                            None => traits.clone(),
                        },
                        event: event.clone(),
                    },
                    decided_at: 1_764_000_000_000,
                    attempts: 0,
                    first_attempt: 0,
                    not_before: 0,
                };
                tables::put_outbox(&engine.store, &mut b, SendId(id), &e);
                outbox_counts::add(&engine.store, &mut b, outbox_counts::ADDED, 0, 1).unwrap();
                let name = format!("{}/{}", wf.id, template);
                sent.push((SendId(id), locale.map_or(name.clone(), |l| format!("{name}@{l}"))));
                id += 1;
            }
        }
    }
    engine.store.write(b, true).unwrap();
    while engine.drain_mail(1000).unwrap() > 0 {}
    assert!(sent.len() >= 100, "{} messages", sent.len());

    let files: Vec<_> = sent
        .iter()
        .map(|(id, name)| (name.clone(), tmp.path().join("mail").join(format!("{id}.eml"))))
        .collect();
    for (name, f) in &files {
        assert!(f.exists(), "{name} was not sent");
    }
    let half = files.len() / 2;
    let run = |part: &[(String, std::path::PathBuf)]| {
        part.iter()
            .map(|(n, f)| (n.clone(), common::spamassassin(f), std::fs::read_to_string(f).unwrap()))
            .collect::<Vec<_>>()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&files[..half]));
        let b = s.spawn(|| run(&files[half..]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let scored: Vec<_> = a.into_iter().chain(b).collect();
    let mut failures = vec![];
    for (name, (points, status), eml) in &scored {
        let structural: Vec<_> = STRUCTURAL.iter().filter(|r| status.contains(**r)).collect();
        if !structural.is_empty() || *points > 0.5 {
            failures.push(format!("{name}: {points} {structural:?} {status}"));
        }
        // The recipient by name, the sender's feedback loop id, signed links only.
        let to = eml.lines().find(|l| l.starts_with("To: ")).unwrap();
        if to.contains("ann.lee@example.org") {
            assert_eq!(to, "To: \"Ann Lee\" <ann.lee@example.org>", "{name}");
        }
        assert!(eml.contains("Feedback-ID: "), "{name}");
        assert!(!eml.contains(":8081"), "{name}");
    }
    let mean = scored.iter().map(|s| s.1.0).sum::<f64>() / scored.len() as f64;
    let max = scored.iter().map(|s| s.1.0).fold(f64::MIN, f64::max);
    println!(
        "spamassassin: {} messages (templates and their translations), mean {mean:.2}, max {max:.2}",
        scored.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The control: the same first message with the pixel in every HTML body is scored as an
    // image-only mail, so the rule list above does catch what it names.
    let control = tempfile::tempdir().unwrap();
    let mut c = common::settings(control.path());
    c.mail.public_url = s.mail.public_url.clone();
    c.mail.tracking.pixel_min_text = 0;
    let engine2 = Engine::open(&c).unwrap();
    let (first, name) = &sent[0];
    let name = name.split('@').next().unwrap();
    let entry = tables::outbox_page(&engine.store, usize::MAX).unwrap();
    assert!(entry.is_empty(), "everything was sent");
    let mut b = rocksdb::WriteBatch::default();
    let wf = name.split('/').next().unwrap();
    let latest = engine2.reg.latest_of(wf).unwrap();
    let e = OutboxEntry {
        partition: 0,
        contact: "ann".into(),
        workflow: wf.into(),
        version: latest.version,
        step: latest.steps[0].id.as_str().into(),
        kind: MailKind::Marketing,
        to: "ann.lee@example.org".into(),
        content: Content::Template {
            template: name.split('/').nth(1).unwrap().into(),
            traits: traits.clone(),
            event: event.clone(),
        },
        decided_at: 1_764_000_000_000,
        attempts: 0,
        first_attempt: 0,
        not_before: 0,
    };
    tables::put_outbox(&engine2.store, &mut b, *first, &e);
    engine2.store.write(b, true).unwrap();
    while engine2.drain_mail(10).unwrap() > 0 {}
    let (points, status) = common::spamassassin(&control.path().join("mail").join(format!("{first}.eml")));
    assert!(status.contains("HTML_IMAGE_ONLY"), "{status}");
    assert!(points > 0.5, "{status}");
}
