//! An in-memory engine around [`handle`](super::handle) with a simulated clock: contacts in a
//! map, timers in an ordered set. It follows the same ordering rule as the real runtime —
//! before an input at time T, every timer due at or before T fires, in due order — so tests
//! can run months of workflow in milliseconds and assert exactly what went out and when.

use super::{ContactState, Effect, Input, Metric, SendCommand, WebhookCommand, handle};
use crate::event::Event;
use crate::time::Ts;
use crate::value::{Map, json_object_to_map};
use crate::workflow::{Registry, Rendered, template_context};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct SentMail {
    pub at: Ts,
    pub contact: String,
    pub cmd: SendCommand,
}

pub struct Sim {
    pub reg: Arc<Registry>,
    pub contacts: BTreeMap<String, ContactState>,
    /// (due, contact, timer id)
    pub timers: BTreeSet<(Ts, String, u64)>,
    pub now: Ts,
    pub sent: Vec<SentMail>,
    pub webhooks: Vec<(Ts, String, WebhookCommand)>,
    /// (workflow, version, step id, metric) → value.
    pub counts: BTreeMap<(String, u32, String, Metric), i64>,
    /// Bookkeeping violations seen (a cancel of a timer that was not pending).
    pub errors: Vec<String>,
    /// Timers fired so far.
    pub fired: u64,
    effects: Vec<Effect>,
    seq: u64,
}

impl Sim {
    pub fn new(reg: Arc<Registry>, start: Ts) -> Self {
        Sim {
            reg,
            contacts: BTreeMap::new(),
            timers: BTreeSet::new(),
            now: start,
            sent: vec![],
            webhooks: vec![],
            counts: BTreeMap::new(),
            errors: vec![],
            fired: 0,
            effects: vec![],
            seq: 0,
        }
    }

    /// Fires every timer due at or before `t`, in due order, each at its due time.
    pub fn advance_to(&mut self, t: Ts) {
        while let Some((due, contact, id)) = self.timers.first().cloned() {
            if due > t {
                break;
            }
            self.timers.pop_first();
            self.fired += 1;
            self.now = self.now.max(due);
            self.apply(&contact, &Input::Timer { id }, due);
        }
        self.now = self.now.max(t);
    }

    pub fn input(&mut self, at: Ts, contact: &str, input: Input) {
        self.advance_to(at);
        self.apply(contact, &input, at);
    }

    fn apply(&mut self, contact: &str, input: &Input, at: Ts) {
        let st = self.contacts.entry(contact.to_owned()).or_default();
        let mut fx = std::mem::take(&mut self.effects);
        handle(contact, st, input, at, &self.reg, &[], &mut fx);
        for e in fx.drain(..) {
            match e {
                Effect::Send(cmd) => self.sent.push(SentMail {
                    at,
                    contact: contact.to_owned(),
                    cmd,
                }),
                Effect::Webhook(w) => self.webhooks.push((at, contact.to_owned(), w)),
                Effect::ScheduleTimer { id, due } => {
                    self.timers.insert((due, contact.to_owned(), id));
                }
                Effect::CancelTimer { id, due } => {
                    if !self.timers.remove(&(due, contact.to_owned(), id)) {
                        self.errors
                            .push(format!("{contact}: cancelled timer {id} that was not pending"));
                    }
                }
                Effect::Count(c) => {
                    let wf = self.reg.get(&c.workflow, c.version).expect("counted workflow exists");
                    let step = wf.steps[c.step as usize].id.clone();
                    *self
                        .counts
                        .entry((c.workflow.to_string(), c.version, step, c.metric))
                        .or_default() += c.delta;
                }
            }
        }
        self.effects = fx;
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("sim-{}", self.seq)
    }

    pub fn track(&mut self, at: Ts, contact: &str, name: &str, props: serde_json::Value) {
        let id = self.next_id();
        let ev = Event::track(contact, &id, name, obj(props));
        self.input(at, contact, Input::Event(ev));
    }

    pub fn page(&mut self, at: Ts, contact: &str, props: serde_json::Value) {
        let id = self.next_id();
        let ev = Event::page(contact, &id, obj(props));
        self.input(at, contact, Input::Event(ev));
    }

    pub fn identify(&mut self, at: Ts, contact: &str, traits: serde_json::Value) {
        let id = self.next_id();
        let ev = Event::identify(contact, &id, obj(traits));
        self.input(at, contact, Input::Event(ev));
    }

    pub fn count(&self, workflow: &str, step: &str, metric: Metric) -> i64 {
        self.counts
            .iter()
            .filter(|((w, _, s, m), _)| w == workflow && s == step && *m == metric)
            .map(|(_, v)| *v)
            .sum()
    }

    /// Sends as (time, recipient, workflow, template), in order.
    pub fn outbox(&self) -> Vec<(Ts, String, String, String)> {
        self.sent
            .iter()
            .map(|s| {
                (
                    s.at,
                    s.cmd.to.to_string(),
                    s.cmd.workflow.to_string(),
                    s.cmd.template.to_string(),
                )
            })
            .collect()
    }

    pub fn render(&self, mail: &SentMail) -> Rendered {
        let wf = self
            .reg
            .get(&mail.cmd.workflow, mail.cmd.version)
            .expect("workflow of a send exists");
        let ctx = template_context(&mail.contact, &mail.cmd.traits, &mail.cmd.event, &[]);
        self.reg.render(wf, &mail.cmd.template, &ctx).expect("template renders")
    }

    /// Checks the bookkeeping the property tests rely on: every pending timer in the engine
    /// is one the contact state still owns, for a purpose that still exists, and vice versa.
    pub fn check_timers(&self) -> Result<(), String> {
        let mut from_states = BTreeSet::new();
        for (c, st) in &self.contacts {
            for t in &st.timers {
                from_states.insert((t.due, c.clone(), t.id));
                if let super::state::Purpose::Enrollment(eid) = t.purpose {
                    if !st.enrollments.iter().any(|e| e.id == eid && e.timer == Some(t.id)) {
                        return Err(format!("timer {} of {c} belongs to no waiting enrollment", t.id));
                    }
                }
            }
            for e in &st.enrollments {
                if e.timer.is_none() {
                    return Err(format!("enrollment {} of {c} is active but waits on nothing", e.id));
                }
            }
        }
        if from_states != self.timers {
            return Err(format!(
                "engine timers {:?} != state timers {:?}",
                self.timers.len(),
                from_states.len()
            ));
        }
        Ok(())
    }
}

fn obj(v: serde_json::Value) -> Map {
    match v {
        serde_json::Value::Object(o) => json_object_to_map(&o),
        serde_json::Value::Null => Map::new(),
        other => panic!("expected a JSON object, got {other}"),
    }
}
