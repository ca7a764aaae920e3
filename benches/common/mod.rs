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
