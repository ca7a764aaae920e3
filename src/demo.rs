//! `dripline demo`: a recorded clickstream through the shipped workflows on a simulated clock,
//! every decided email written as an `.eml` file. Malformed lines go to a dead-letter file
//! with their reason; a repeated `messageId` is dropped.

use crate::config::Settings;
use crate::event::Event;
use crate::machine::Input;
use crate::machine::sim::Sim;
use crate::time::{DAY, Ts};
use crate::workflow::Registry;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct DemoReport {
    pub events: usize,
    pub duplicates: usize,
    pub dead_letters: Vec<(usize, String)>,
    pub mails: Vec<DemoMail>,
    pub per_workflow: BTreeMap<String, usize>,
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

pub fn run(settings: &Settings, registry: Registry, events: &Path, out: &Path) -> anyhow::Result<DemoReport> {
    use anyhow::Context;
    let reader =
        std::io::BufReader::new(std::fs::File::open(events).with_context(|| format!("opening {}", events.display()))?);
    let mut sim: Option<Sim> = None;
    let registry = Arc::new(registry);
    let mut seen = HashSet::new();
    let (mut count, mut duplicates, mut dead) = (0, 0, vec![]);
    let mut last = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = match Event::parse(line.as_bytes()) {
            Ok(ev) => ev,
            Err(e) => {
                dead.push((i + 1, e.to_string()));
                continue;
            }
        };
        if !seen.insert(ev.message_id.clone()) {
            duplicates += 1;
            continue;
        }
        // The recorded timestamp plays the role of the receive time, kept monotonic.
        let at = ev.timestamp.unwrap_or(last).max(last);
        last = at;
        let sim = sim.get_or_insert_with(|| Sim::new(registry.clone(), at));
        let contact = ev.user_id.clone();
        sim.input(at, &contact, Input::Event(ev));
        count += 1;
    }
    std::fs::create_dir_all(out)?;
    let mut dl = std::fs::File::create(out.join("dead-letters.ndjson"))?;
    for (line, reason) in &dead {
        writeln!(dl, "{}", serde_json::json!({"line": line, "reason": reason}))?;
    }
    let Some(mut sim) = sim else {
        return Ok(DemoReport {
            events: 0,
            duplicates,
            dead_letters: dead,
            mails: vec![],
            per_workflow: BTreeMap::new(),
        });
    };
    sim.advance_to(last + TAIL);
    let from: lettre::message::Mailbox = settings.mail.from.parse()?;
    let mail_dir = out.join("mail");
    let mut mails = vec![];
    let mut per_workflow = BTreeMap::new();
    for m in &sim.sent {
        let rendered = sim.render(m);
        let date = std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.at.max(0) as u64);
        let mail = crate::sinks::eml::Mail {
            id: m.cmd.id,
            to: &m.cmd.to,
            rendered: &rendered,
            workflow: &m.cmd.workflow,
            version: m.cmd.version,
            kind: m.cmd.kind,
        };
        let msg = crate::sinks::eml::build(&mail, &from, &settings.mail.message_id_domain, date)?;
        let file = crate::sinks::eml::write(&mail_dir, m.cmd.id, &msg)?;
        *per_workflow.entry(m.cmd.workflow.to_string()).or_insert(0) += 1;
        mails.push(DemoMail {
            at: m.at,
            to: m.cmd.to.clone(),
            workflow: m.cmd.workflow.to_string(),
            subject: rendered.subject,
            file,
        });
    }
    Ok(DemoReport {
        events: count,
        duplicates,
        dead_letters: dead,
        mails,
        per_workflow,
    })
}
