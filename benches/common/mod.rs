//! The synthetic clickstream both benchmarks use: a realistic event mix and visitor sessions.
#![allow(dead_code)]

use dripline::event::Event;
use dripline::value::{Map, Value};

pub const CONCURRENT_SESSIONS: usize = 256;

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn props(pairs: &[(&str, Value)]) -> Map {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

pub fn event(rng: &mut Rng, contact: &str, i: usize) -> Event {
    let id = format!("m{i}");
    let roll = rng.below(100);
    let track = |name: &str, p: Map| Event::track(contact, &id, name, p);
    match roll {
        0..=44 => {
            let path = ["/", "/blog", "/pricing", "/features", "/blog/automation-101"][rng.below(5) as usize];
            let mut p = props(&[("path", path.into())]);
            if path.contains("automation") {
                p.insert("topic".into(), "automation".into());
            }
            Event::page(contact, &id, p)
        }
        45..=59 => track(
            "Product Viewed",
            props(&[("sku", "SKU-1".into()), ("price", Value::Int(39))]),
        ),
        60..=69 => track(
            "Product Added",
            props(&[("name", "Blue Kettle".into()), ("price", Value::Int(39))]),
        ),
        70..=72 => track("Checkout Started", Map::new()),
        73..=76 => track(
            "Order Completed",
            props(&[
                ("order_id", "o1".into()),
                ("category", "consumables".into()),
                ("total", Value::Int(39)),
            ]),
        ),
        77..=84 => Event::identify(
            contact,
            &id,
            props(&[
                ("lifecycle_stage", ["lead", "customer"][rng.below(2) as usize].into()),
                ("nps_score", Value::Int(rng.below(11) as i64)),
            ]),
        ),
        85..=89 => track(
            "Email Opened",
            props(&[("message_id", "0000000000000000000000000000abcd".into())]),
        ),
        90..=91 => track(
            "Email Clicked",
            props(&[("message_id", "0000000000000000000000000000abcd".into())]),
        ),
        92..=96 => track("Feature Used", props(&[("feature", "reports".into())])),
        97 => track("Signed Up", Map::new()),
        98 => track("Newsletter Subscribed", Map::new()),
        _ => track("Ebook Downloaded", Map::new()),
    }
}

/// Picks contacts the way a site sees them: 256 visitors active at once, each session about 8
/// events, then replaced by a random contact. With `sessions` off, every event is from a
/// uniformly random contact.
pub struct Visitors {
    pub sessions: Option<Vec<usize>>,
    pub contacts: usize,
}

impl Visitors {
    pub fn new(rng: &mut Rng, contacts: usize, sessions: bool) -> Self {
        let sessions = sessions.then(|| {
            (0..CONCURRENT_SESSIONS)
                .map(|_| rng.below(contacts as u64) as usize)
                .collect()
        });
        Visitors { sessions, contacts }
    }

    pub fn next(&mut self, rng: &mut Rng) -> usize {
        match &mut self.sessions {
            Some(s) => {
                let i = rng.below(s.len() as u64) as usize;
                if rng.below(8) == 0 {
                    s[i] = rng.below(self.contacts as u64) as usize;
                }
                s[i]
            }
            None => rng.below(self.contacts as u64) as usize,
        }
    }
}

/// The clickstream as the wire carries it, produced a chunk at a time so the benchmark holds no
/// copy of the whole stream (peak RSS is then the engine's): one identify per contact, then
/// session traffic. Two generators with the same seed yield the same events.
pub struct Wire {
    rng: Rng,
    visitors: Visitors,
    contacts: usize,
    events: usize,
    next: usize,
}

impl Wire {
    pub fn new(contacts: usize, events: usize) -> Self {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let visitors = Visitors::new(&mut rng, contacts, true);
        Wire {
            rng,
            visitors,
            contacts,
            events,
            next: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.contacts + self.events
    }

    pub fn chunk(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.next < self.total() {
            let k = self.next;
            self.next += 1;
            if k < self.contacts {
                let tz = ["UTC", "Asia/Shanghai", "Europe/Moscow", "Asia/Jakarta"][k % 4];
                out.push(format!(r#"{{"type":"identify","userId":"contact-{k}","messageId":"id-{k}","traits":{{"email":"contact-{k}@example.org","timezone":"{tz}"}}}}"#).into_bytes());
                continue;
            }
            let i = k - self.contacts;
            let c = self.visitors.next(&mut self.rng);
            let ev = event(&mut self.rng, &format!("contact-{c}"), i);
            let kind = match ev.kind {
                dripline::event::EventKind::Track => "track",
                dripline::event::EventKind::Page => "page",
                dripline::event::EventKind::Identify => "identify",
            };
            let mut v = serde_json::json!({"type": kind, "userId": ev.user_id, "messageId": format!("ev-{i}"),
                "properties": serde_json::Value::Object(ev.properties.to_json()),
                "traits": serde_json::Value::Object(ev.traits.to_json())});
            if ev.kind == dripline::event::EventKind::Track {
                v["event"] = ev.name.as_str().into();
            }
            out.push(serde_json::to_vec(&v).expect("json"));
        }
        out
    }
}

/// The same clickstream written once to a file (one JSON event a line) and read back a chunk at
/// a time: a phase that must not pay for making its input while it runs (the pipelined one,
/// whose ingest thread shares the cores with the engine) reads it as a client's bytes. Reading
/// costs a copy; making the JSON cost the pipelined ingest thread ~2.5 s of CPU per 1M-contact
/// run. Nothing of it stays in memory but the current chunk.
pub struct WireFile {
    reader: std::io::BufReader<std::fs::File>,
}

impl WireFile {
    /// Writes [`Wire::new`]`(contacts, events)` to `path`.
    pub fn write(path: &std::path::Path, contacts: usize, events: usize) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let mut wire = Wire::new(contacts, events);
        loop {
            let chunk = wire.chunk(4096);
            if chunk.is_empty() {
                break;
            }
            for line in chunk {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
        }
        out.into_inner()?.sync_all()
    }

    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(WireFile {
            reader: std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
        })
    }

    /// The next `n` events (fewer at the end; none once the file is read).
    pub fn chunk(&mut self, n: usize) -> Vec<Vec<u8>> {
        use std::io::BufRead;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut line = Vec::with_capacity(256);
            if self.reader.read_until(b'\n', &mut line).expect("clickstream file") == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            out.push(line);
        }
        out
    }
}
