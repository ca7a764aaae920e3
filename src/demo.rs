//! `dripline demo`: a recorded clickstream through the shipped workflows on the real runtime —
//! embedded log, RocksDB state, durable timers, outbox, `.eml` transport — driven by a simulated
//! clock: each event's recorded timestamp is its receive time, and timers fire as that clock
//! moves on for 45 days after the last event. Malformed lines go to the dead letters with their
//! reason; a repeated `messageId` is dropped.

use crate::config::Settings;
use crate::runtime::Engine;
use crate::storage::tables;
use crate::time::{DAY, Ts, parse_rfc3339};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub struct DemoReport {
    pub events: usize,
    pub duplicates: usize,
    pub dead_letters: Vec<(usize, String)>,
    pub mails: Vec<DemoMail>,
    pub per_workflow: BTreeMap<String, usize>,
    /// Webhook steps naming an endpoint the settings lack (see `sinks::webhook::unconfigured`).
    pub unconfigured_webhooks: Vec<String>,
}

pub struct DemoMail {
    pub at: Ts,
    pub to: String,
    pub workflow: String,
    pub subject: String,
    pub file: PathBuf,
}

/// Simulated time after the last event, so that waits of weeks play out.
pub const TAIL: i64 = 45 * DAY;

/// Runs the demo into `out` (a fresh `out/data` store, emails in `out/mail`).
pub fn run(settings: &Settings, events: &Path, out: &Path) -> anyhow::Result<DemoReport> {
    use anyhow::Context;
    let mut s = settings.clone();
    s.engine.data_dir = out.join("data");
    s.mail.outbox_dir = out.join("mail");
    for dir in [&s.engine.data_dir, &s.mail.outbox_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
    }
    let engine = Engine::open(&s)?;
    let reader =
        std::io::BufReader::new(std::fs::File::open(events).with_context(|| format!("opening {}", events.display()))?);
    let (mut count, mut duplicates, mut dead) = (0, 0, vec![]);
    let mut last = Ts::MIN;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let reason = format!("not valid JSON: {e}");
                engine.dead_letter(&reason, line.as_bytes());
                dead.push((i + 1, reason));
                continue;
            }
        };
        // The recorded timestamp plays the role of the receive time, kept monotonic.
        let stamped = value.get("timestamp").and_then(|t| t.as_str()).and_then(parse_rfc3339);
        last = stamped.unwrap_or(last).max(last);
        let r = engine.ingest_values(std::slice::from_ref(&value), None, last)?;
        count += r.accepted;
        duplicates += r.duplicates;
        dead.extend(r.errors.into_iter().map(|e| (i + 1, e.reason)));
    }
    if count > 0 {
        // Everything in log order, each timer at its due time, up to the end of the tail.
        engine.pump(last + TAIL)?;
    }
    let pending = tables::outbox_page(&engine.store, usize::MAX)?;
    let mut mails: Vec<DemoMail> = pending
        .iter()
        .filter(|(_, e)| !e.content.is_webhook())
        .map(|(id, e)| DemoMail {
            at: e.decided_at,
            to: e.to.to_string(),
            workflow: e.workflow.to_string(),
            subject: crate::sinks::compose::render(&engine.reg, &engine.links, *id, e)
                .map_or_else(|err| format!("(not renderable: {err})"), |r| r.subject),
            file: s.mail.outbox_dir.join(format!("{id}.eml")),
        })
        .collect();
    mails.sort_by(|a, b| (a.at, &a.to, &a.workflow).cmp(&(b.at, &b.to, &b.workflow)));
    while engine.drain_mail(1024)? > 0 {}
    let mut per_workflow = BTreeMap::new();
    for m in &mails {
        *per_workflow.entry(m.workflow.clone()).or_insert(0) += 1;
    }
    Ok(DemoReport {
        events: count,
        duplicates,
        dead_letters: dead,
        mails,
        per_workflow,
        unconfigured_webhooks: crate::sinks::webhook::unconfigured(&engine.reg, &s.webhooks),
    })
}
