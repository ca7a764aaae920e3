//! The mailer's message building on the file transport: header injection, size limit, DKIM,
//! tracking only where it belongs.

mod common;

use common::entry;
use dripline::machine::SendId;
use dripline::runtime::Engine;
use dripline::storage::tables::{self, Content, OutboxEntry};
use dripline::workflow::MailKind;
use std::path::Path;

/// An outbox entry added as a partition would, counted.
fn put(engine: &Engine, id: u128, e: &OutboxEntry) {
    use dripline::storage::outbox_counts;
    let mut b = rocksdb::WriteBatch::default();
    tables::put_outbox(&engine.store, &mut b, SendId(id), e);
    outbox_counts::add(&engine.store, &mut b, outbox_counts::ADDED, e.partition, 1).unwrap();
    engine.store.write(b, true).unwrap();
}

/// The reasons of every dead letter so far.
fn dead_reasons(engine: &Engine) -> Vec<String> {
    dripline::storage::dead_letters::all(&engine.store)
        .unwrap()
        .iter()
        .map(|d| d.reason.clone())
        .collect()
}

fn eml(dir: &Path, id: u128) -> Option<String> {
    std::fs::read_to_string(dir.join("mail").join(format!("{}.eml", SendId(id)))).ok()
}

#[test]
fn contact_data_cannot_inject_headers_and_oversized_mail_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = common::settings(tmp.path());
    s.mail.max_message_bytes = 4096;
    let engine = Engine::open(&s).unwrap();
    let bcc = "\r\nBcc: victim@example.net\r\nX-Evil: 1";
    put(
        &engine,
        1,
        &entry(
            "ann@example.org",
            &format!("Hello{bcc}"),
            MailKind::Marketing,
            "<p>x</p>",
        ),
    );
    put(
        &engine,
        2,
        &entry(&format!("bob@example.org{bcc}"), "Hi", MailKind::Marketing, "<p>x</p>"),
    );
    put(
        &engine,
        3,
        &entry(
            "cat@example.org",
            "Big",
            MailKind::Transactional,
            &"<p>long</p>".repeat(1000),
        ),
    );
    assert_eq!(engine.drain_mail(10).unwrap(), 3);

    let ann = eml(tmp.path(), 1).expect("the subject is sanitised, the mail goes");
    let headers = ann.split("\r\n\r\n").next().unwrap();
    assert!(
        !headers
            .lines()
            .any(|l| l.starts_with("Bcc:") || l.starts_with("X-Evil:")),
        "{headers}"
    );
    assert!(
        headers.contains("Subject: Hello  Bcc: victim@example.net  X-Evil: 1"),
        "{headers}"
    );
    assert!(eml(tmp.path(), 2).is_none(), "an address with CR/LF is refused");
    assert!(eml(tmp.path(), 3).is_none(), "over the size limit");
    let dead = dead_reasons(&engine);
    assert!(
        dead.iter().any(|r| r.starts_with("refused: invalid address")),
        "{dead:?}"
    );
    assert!(
        dead.iter().any(|r| r.contains("over mail.max_message_bytes = 4096")),
        "{dead:?}"
    );
    assert!(
        tables::outbox_ids(&engine.store).unwrap().is_empty(),
        "refusals leave the outbox"
    );
}

#[test]
fn marketing_mail_is_tracked_and_signed_internal_mail_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = common::settings(tmp.path());
    // A short test mail: the pixel only goes in when asked for every HTML body.
    s.mail.tracking.pixel_min_text = 0;
    // A throwaway 1024-bit RSA key (PKCS#1), for the signature only.
    let key = tmp.path().join("dkim.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("1024")
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.mail.dkim.selector = "s1".into();
    s.mail.dkim.domain = "example.com".into();
    s.mail.dkim.private_key_file = key;
    let engine = Engine::open(&s).unwrap();
    let html = r#"<html><body><a href="https://shop.example.com/x">shop</a></body></html>"#;
    put(
        &engine,
        10,
        &entry("ann@example.org", "News", MailKind::Marketing, html),
    );
    put(
        &engine,
        11,
        &entry("sales@example.com", "Hot lead", MailKind::Internal, html),
    );
    assert_eq!(engine.drain_mail(10).unwrap(), 2);

    let news = eml(tmp.path(), 10).unwrap();
    let body = news.replace("=\r\n", "").replace("=3D", "=");
    assert!(body.contains("href=\"http://127.0.0.1:8081/c/"), "{body}");
    assert!(body.contains("<img src=\"http://127.0.0.1:8081/o/"), "{body}");
    assert!(news.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert!(
        news.contains("\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1;"),
        "{news}"
    );
    // A real verifier (dkimpy) checks the signature against the public key as DNS would give it.
    let der = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&s.mail.dkim.private_key_file)
        .output()
        .unwrap();
    assert!(der.status.success());
    let pubkey = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der.stdout);
    let verify = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, dkim\n\
             rec = ('v=DKIM1; k=rsa; p=' + sys.argv[2]).encode()\n\
             ok = dkim.verify(open(sys.argv[1], 'rb').read(), dnsfunc=lambda name, timeout=5: rec)\n\
             sys.exit(0 if ok else 1)",
        ])
        .arg(tmp.path().join("mail").join(format!("{}.eml", SendId(10))))
        .arg(&pubkey)
        .output()
        .expect("python3 with dkimpy (scripts/setup.sh installs it)");
    assert!(
        verify.status.success(),
        "DKIM signature does not verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let alert = eml(tmp.path(), 11).unwrap();
    let body = alert.replace("=\r\n", "").replace("=3D", "=");
    assert!(body.contains("href=\"https://shop.example.com/x\""), "{body}");
    assert!(!body.contains("/o/") && !alert.contains("List-Unsubscribe"), "{alert}");
}

#[test]
fn a_send_is_rendered_as_it_goes_out_and_a_template_that_cannot_render_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&common::settings(tmp.path())).unwrap();
    let template = |workflow: &str, version: u32, template: &str| {
        let mut e = entry("ann@example.org", "", MailKind::Marketing, "");
        e.workflow = workflow.into();
        e.version = version;
        e.content = Content::Template {
            template: template.into(),
            traits: std::sync::Arc::new([("first_name".to_string(), "Ann".into())].into_iter().collect()),
            event: Default::default(),
        };
        e
    };
    // The shipped welcome series, version 1 in a fresh store.
    put(&engine, 20, &template("welcome_series", 1, "welcome"));
    put(&engine, 21, &template("retired_workflow", 3, "welcome"));
    assert_eq!(engine.drain_mail(10).unwrap(), 2);

    let welcome = eml(tmp.path(), 20).expect("rendered and sent");
    assert!(welcome.contains("Subject: Welcome, Ann!"), "{welcome}");
    assert!(welcome.contains("Thanks for joining"), "{welcome}");
    assert!(eml(tmp.path(), 21).is_none());
    let dead = dead_reasons(&engine);
    assert_eq!(
        dead,
        ["refused: workflow retired_workflow version 3 is not loaded"],
        "{dead:?}"
    );
    assert_eq!(engine.metrics.render_errors.get(), 1);
    assert!(tables::outbox_ids(&engine.store).unwrap().is_empty());
}

#[test]
fn an_outbox_entry_that_does_not_decode_goes_to_the_dead_letters_and_the_rest_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open(&common::settings(tmp.path())).unwrap();
    // Written by hand: an id with bytes of an unknown format (a future version, a bad restore).
    let mut b = rocksdb::WriteBatch::default();
    b.put_cf(
        engine.store.cf(dripline::storage::CF_OUTBOX),
        tables::OutboxKey { at: 0, id: SendId(30) }.bytes(),
        b"\x7fnot an entry",
    );
    engine.store.write(b, true).unwrap();
    put(
        &engine,
        31,
        &entry("ann@example.org", "Hi", MailKind::Transactional, "<p>x</p>"),
    );
    assert_eq!(engine.drain_mail(10).unwrap(), 2);

    assert!(eml(tmp.path(), 31).is_some(), "the good entry is sent");
    let dead = dripline::storage::dead_letters::all(&engine.store).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]
            .reason
            .starts_with(&format!("unreadable outbox entry {}", SendId(30))),
        "{dead:?}"
    );
    assert_eq!(dead[0].payload, "\u{7f}not an entry");
    assert!(tables::outbox_ids(&engine.store).unwrap().is_empty());
}
