//! The contact state machine: one pure function from (state, input, time) to (state, effects).
//!
//! No I/O, no clock, no randomness: the same inputs at the same times always give the same
//! state and effects, which is what makes replay, tests and what-if runs exact.

pub mod effect;
mod eval;
pub mod input;
pub mod sim;
pub mod state;

pub use effect::{Effect, Metric, SendCommand, StepCount, WebhookCommand};
pub use input::{Feedback, FeedbackKind, Input};
pub use state::{ContactState, Enrollment, SendId};

use crate::calendar;
use crate::event::{Event, EventKind};
use crate::time::Ts;
use crate::value::{Map, Value};
use crate::workflow::{Action, MailKind, Next, Recipient, Registry, StepIdx, StepKind, Trigger, Workflow};
use crate::workflow::{FieldRef, SCORE_TRAIT};
use eval::{Scope, all, eval};
use state::{EntryRecord, Purpose, SentRecord, Timer};
use std::sync::Arc;

/// Most recent sends kept per enrollment for `opened:`/`clicked:` conditions.
const MAX_SENDS_KEPT: usize = 32;
/// An identify with more traits than this is merged in one pass (see `Cx::set_traits`).
const BULK_TRAITS: usize = 16;

/// Applies one input at time `now` to a contact's state, appending the effects to `out`.
///
/// `now` is the input's time: the log's receive time for events, the due time for timers.
/// `paused`: the workflows that take no new entrants at this point of the log (contacts inside
/// them go on).
pub fn handle(
    contact: &str,
    st: &mut ContactState,
    input: &Input,
    now: Ts,
    reg: &Registry,
    paused: &[Arc<str>],
    out: &mut Vec<Effect>,
) {
    let mut cx = Cx {
        contact,
        st,
        now,
        reg,
        paused,
        out,
        before: Vec::new(),
        touched: false,
    };
    match input {
        // An enrolment through the admin API, as it comes through the log.
        Input::Event(ev) if ev.kind == EventKind::Track && ev.name == crate::event::ENROLL_EVENT => {
            let workflow = ev
                .properties
                .get("workflow")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let properties = match ev.properties.get("properties") {
                Some(Value::Map(m)) => m.clone(),
                _ => Map::new(),
            };
            cx.enroll_by_api(workflow, &properties);
        }
        Input::Event(ev) => cx.on_event(ev),
        Input::Timer { id } => cx.on_timer(*id),
        Input::Feedback(fb) => cx.on_event(&feedback_event(contact, fb)),
        Input::Enroll { workflow, properties } => cx.enroll_by_api(workflow, properties),
        Input::Erase => {
            cx.erase();
            return;
        }
    }
    cx.settle();
}

/// Feedback becomes an ordinary tracked event in the contact's stream.
pub fn feedback_event(contact: &str, fb: &Feedback) -> Event {
    let mut props = Map::new();
    props.insert("message_id".into(), fb.message_id.clone().into());
    if let Some(w) = &fb.workflow {
        props.insert("workflow".into(), w.clone().into());
    }
    if fb.kind == FeedbackKind::Bounced {
        props.insert("type".into(), "hard".into());
    }
    let name = fb.kind.event_name();
    Event::track(contact, &format!("feedback:{}:{name}", fb.message_id), name, props)
}

fn send_id(contact: &str, wf: &str, version: u32, enrollment: u64, step: StepIdx, seq: u32) -> SendId {
    let mut buf = Vec::with_capacity(contact.len() + wf.len() + 24);
    buf.extend_from_slice(contact.as_bytes());
    buf.push(0);
    buf.extend_from_slice(wf.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&enrollment.to_le_bytes());
    buf.extend_from_slice(&step.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    SendId(xxhash_rust::xxh3::xxh3_128(&buf))
}

/// Deterministic bucket in 0..10000 for splits: same contact and workflow, same variant.
pub fn split_bucket(contact: &str, workflow: &str) -> u32 {
    let mut buf = Vec::with_capacity(contact.len() + workflow.len() + 1);
    buf.extend_from_slice(contact.as_bytes());
    buf.push(0);
    buf.extend_from_slice(workflow.as_bytes());
    (xxhash_rust::xxh3::xxh3_64(&buf) % 10_000) as u32
}

/// Workflow ids in state usually share the registry's allocation: compare pointers first.
fn same_id(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

struct Cx<'a> {
    contact: &'a str,
    st: &'a mut ContactState,
    now: Ts,
    reg: &'a Registry,
    paused: &'a [Arc<str>],
    out: &'a mut Vec<Effect>,
    /// Condition triggers whose inputs this input touched, with their value before the touch:
    /// a false→true transition after processing is a crossing.
    before: Vec<(usize, bool)>,
    /// Whether traits, tags, lists, counters or engagement changed: only then can a
    /// condition goal have become true.
    touched: bool,
}

impl Cx<'_> {
    fn scope<'s>(&'s self, props: &'s Map, enrollment: Option<&'s Enrollment>) -> Scope<'s> {
        Scope {
            st: self.st,
            reg: self.reg,
            now: self.now,
            props,
            enrollment,
        }
    }

    fn count(&mut self, wf: &Workflow, step: StepIdx, metric: Metric, delta: i64) {
        self.out.push(Effect::Count(StepCount {
            workflow: wf.id.clone(),
            version: wf.version,
            step,
            metric,
            delta,
        }));
    }

    // ---- change tracking for condition triggers -------------------------------------------

    fn record_before(&mut self, ids: Option<&Vec<usize>>) {
        self.touched = true;
        let Some(ids) = ids else { return };
        let empty = Map::new();
        for &i in ids {
            if !self.before.iter().any(|(j, _)| *j == i) {
                let v = eval(&self.reg.index.cond[i].cond, &self.scope(&empty, None));
                self.before.push((i, v));
            }
        }
    }

    /// Whether setting `key` to `value` changes nothing, as the trait's declared type sees it:
    /// a `number` trait compares numerically (3, 3.0 and "3" are one value); any other trait
    /// compares as conditions do ([`Value::loose_eq`]). So a value sent again in another JSON
    /// form is no change, and fires no `trait_changed` trigger.
    fn trait_unchanged(&self, key: &str, value: &Value) -> bool {
        match self.st.traits.get(key) {
            Some(old) => match (self.reg.traits.get(key), old.as_f64(), value.as_f64()) {
                (Some(crate::workflow::TraitType::Number), Some(a), Some(b)) => a == b,
                _ => old.loose_eq(value),
            },
            None => value.is_null(),
        }
    }

    fn set_trait(&mut self, key: &str, value: Value) -> bool {
        if self.trait_unchanged(key, &value) {
            return false;
        }
        self.record_before(self.reg.index.cond_by_trait.get(key));
        let traits = Arc::make_mut(&mut self.st.traits);
        if value.is_null() {
            traits.remove(key);
        } else {
            traits.insert(key.into(), value);
        }
        true
    }

    /// Sets an identify's traits; returns the keys whose value changed. One key at a time for
    /// the usual handful; in `bulk`, every change is recorded first and the maps are merged in
    /// one sort, so a large identify never costs an insert into the sorted map per key (n²).
    /// Either way, each condition is recorded before any trait it reads has changed.
    fn set_traits<'e>(&mut self, new: &'e Map, bulk: bool) -> Vec<&'e str> {
        if !bulk {
            return new
                .iter()
                .filter(|(k, v)| self.set_trait(k, (*v).clone()))
                .map(|(k, _)| k.as_str())
                .collect();
        }
        let changed: Vec<(&'e crate::value::Str, &'e Value)> =
            new.iter().filter(|(k, v)| !self.trait_unchanged(k, v)).collect();
        for (k, _) in &changed {
            self.record_before(self.reg.index.cond_by_trait.get(k.as_str()));
        }
        if !changed.is_empty() {
            let traits = Arc::make_mut(&mut self.st.traits);
            let old = std::mem::take(traits);
            // The later of two equal keys wins: the new value; a null removes the trait.
            *traits = old
                .into_iter()
                .chain(changed.iter().map(|(k, v)| ((*k).clone(), (*v).clone())))
                .collect();
            traits.retain(|_, v| !v.is_null());
        }
        changed.into_iter().map(|(k, _)| k.as_str()).collect()
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::Set(k, v) => {
                self.set_trait(k, v.clone());
            }
            Action::Unset(k) => {
                self.set_trait(k, Value::Null);
            }
            Action::AddScore(n) => {
                let next = match self.st.traits.get(SCORE_TRAIT) {
                    Some(Value::Float(f)) => Value::Float(f + *n as f64),
                    Some(v) => Value::Int(v.as_f64().unwrap_or(0.0) as i64 + n),
                    None => Value::Int(*n),
                };
                self.set_trait(SCORE_TRAIT, next);
            }
            Action::Tag(t) | Action::Untag(t) => {
                let add = matches!(action, Action::Tag(_));
                if self.st.tags.contains(t) != add {
                    self.record_before(self.reg.index.cond_by_tag.get(t));
                    if add {
                        self.st.tags.insert(t.clone())
                    } else {
                        self.st.tags.remove(t)
                    };
                }
            }
            Action::AddToList(l) | Action::RemoveFromList(l) => {
                let add = matches!(action, Action::AddToList(_));
                if self.st.lists.contains(l) != add {
                    self.record_before(self.reg.index.cond_by_list.get(l));
                    if add {
                        self.st.lists.insert(l.clone())
                    } else {
                        self.st.lists.remove(l)
                    };
                }
            }
        }
    }

    // ---- timers --------------------------------------------------------------------------

    fn schedule(&mut self, due: Ts, purpose: Purpose) -> u64 {
        let id = self.st.next_timer;
        self.st.next_timer += 1;
        self.st.timers.push(Timer { id, due, purpose });
        self.out.push(Effect::ScheduleTimer { id, due });
        id
    }

    fn cancel(&mut self, id: u64) {
        if let Some(pos) = self.st.timers.iter().position(|t| t.id == id) {
            let t = self.st.timers.remove(pos);
            self.out.push(Effect::CancelTimer { id, due: t.due });
        }
    }

    fn tz(&self, wf: &Workflow) -> chrono_tz::Tz {
        self.st
            .traits
            .get("timezone")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .or(wf.timezone)
            .unwrap_or(self.reg.policy.default_timezone)
    }

    // ---- inputs --------------------------------------------------------------------------

    fn on_event(&mut self, ev: &Event) {
        if ev.is_activity() {
            self.st.last_activity = Some(self.now);
            self.ensure_inactivity_timers();
        }
        // The zone before the event, if it may change it (local-time timers move with it).
        let zone_before = ev
            .traits
            .contains_key("timezone")
            .then(|| self.st.traits.get("timezone").cloned());
        let changed = self.set_traits(&ev.traits, ev.traits.len() > BULK_TRAITS);
        if let Some(before) = zone_before
            && changed.contains(&"timezone")
        {
            self.zone_moved(before.as_ref());
        }
        if ev.kind == EventKind::Track {
            self.special_event(ev);
        }
        if let Some(keys) = self.reg.index.counters_by_event.get(ev.name.as_str()) {
            for key in keys {
                let def = &self.reg.counters[key];
                if all(&def.filter, &self.scope(&ev.properties, None)) {
                    self.record_before(self.reg.index.cond_by_counter.get(key));
                    self.st.bump_counter(*key, self.now, def.retention_days);
                }
            }
        }
        if self.reg.index.enrollment_events.contains(ev.name.as_str()) {
            self.enrollments_on_event(ev);
        }
        if let Some(list) = self.reg.index.by_event.get(ev.name.as_str()) {
            for (wf, ti) in list {
                let Trigger::Event { filter, .. } = &wf.triggers[*ti] else {
                    continue;
                };
                if all(filter, &self.scope(&ev.properties, None)) {
                    self.try_enroll(wf.clone(), &ev.properties);
                }
            }
        }
        for k in changed {
            if let Some(wfs) = self.reg.index.trait_changed.get(k) {
                for wf in wfs {
                    let mut props = Map::new();
                    props.insert("trait".into(), k.into());
                    props.insert("value".into(), ev.traits.get(k).cloned().unwrap_or_default());
                    self.try_enroll(wf.clone(), &props);
                }
            }
            if let Some(dates) = self.reg.index.date.get(k) {
                for (wf, ti) in dates {
                    if self.reg.is_in_force(wf, self.now) {
                        self.schedule_date(wf, *ti);
                    }
                }
            }
        }
    }

    /// Events with a meaning of their own: unsubscribes, bounces, complaints, engagement.
    fn special_event(&mut self, ev: &Event) {
        let prop = |k: &str| ev.properties.get(k).and_then(Value::as_str);
        match ev.name.as_str() {
            "Unsubscribed" => match prop("workflow") {
                Some(w) => {
                    self.st.unsubscribed_from.insert(w.to_owned());
                }
                None => self.st.unsubscribed = true,
            },
            "Email Bounced" if prop("type") != Some("soft") => self.st.suppressed = true,
            "Email Complained" => {
                self.st.suppressed = true;
                self.st.unsubscribed = true;
            }
            "Email Opened" | "Email Clicked" => {
                let Some(id) = prop("message_id").and_then(|m| m.parse::<SendId>().ok()) else {
                    return;
                };
                let clicked = ev.name == "Email Clicked";
                let mut counts = vec![];
                let mut touched = false;
                for e in &mut self.st.enrollments {
                    for r in e.sends.iter_mut().filter(|r| r.id == id) {
                        if !r.opened {
                            r.opened = true;
                            touched = true;
                            counts.push((e.workflow.clone(), e.version, r.step, Metric::Opened));
                        }
                        if clicked && !r.clicked {
                            r.clicked = true;
                            counts.push((e.workflow.clone(), e.version, r.step, Metric::Clicked));
                        }
                    }
                }
                self.touched |= touched;
                for (workflow, version, step, metric) in counts {
                    self.out.push(Effect::Count(StepCount {
                        workflow,
                        version,
                        step,
                        metric,
                        delta: 1,
                    }));
                }
            }
            _ => {}
        }
    }

    fn ensure_inactivity_timers(&mut self) {
        let reg = self.reg;
        for (wf, ms) in &reg.index.inactivity {
            if !reg.is_in_force(wf, self.now) {
                continue;
            }
            let has = self
                .st
                .timers
                .iter()
                .any(|t| matches!(&t.purpose, Purpose::Inactivity(w) if same_id(w, &wf.id)));
            if !has {
                self.schedule(self.now + ms, Purpose::Inactivity(wf.id.clone()));
            }
        }
    }

    /// (Re)schedules a date trigger from the current trait value.
    fn schedule_date(&mut self, wf: &Arc<Workflow>, ti: usize) {
        let Trigger::Date(spec) = &wf.triggers[ti] else {
            return;
        };
        let purpose = Purpose::Date(wf.id.clone(), ti as u16);
        if let Some(t) = self.st.timers.iter().find(|t| t.purpose == purpose) {
            self.cancel(t.id);
        }
        let Some(value) = self
            .st
            .traits
            .get(&spec.trait_name)
            .and_then(Value::as_str)
            .and_then(calendar::parse_date_value)
        else {
            return;
        };
        let tz = self.tz(wf);
        let due = if spec.yearly {
            let date = match value {
                calendar::DateValue::Date(d) => d,
                calendar::DateValue::Instant(t) => calendar::to_local(tz, t).date(),
            };
            calendar::next_yearly(tz, date, spec.offset, spec.at, self.now)
        } else {
            calendar::resolve(tz, value, spec.offset, Some(spec.at))
        };
        if due > self.now && due != i64::MAX {
            self.schedule(due, purpose);
        }
    }

    /// The contact's `timezone` changed from `before`: every pending timer set in local time
    /// moves, so a birthday mail at 10:00 goes at 10:00 where the contact now is. A date
    /// trigger and a `wait_until … at` without a date move to the same local date and time in
    /// the new zone; a `wait_until` on a date is computed again in the new zone (an instant with
    /// its own offset stays where it is). Relative waits stay.
    fn zone_moved(&mut self, before: Option<&Value>) {
        let zone = |v: Option<&Value>, wf: &Workflow, default| {
            v.and_then(Value::as_str)
                .and_then(|s| s.parse::<chrono_tz::Tz>().ok())
                .or(wf.timezone)
                .unwrap_or(default)
        };
        let default = self.reg.policy.default_timezone;
        for t in self.st.timers.clone() {
            let wf = match &t.purpose {
                Purpose::Date(w, _) => self.reg.in_force(w, self.now).cloned(),
                Purpose::Enrollment(eid) => self
                    .st
                    .enrollments
                    .iter()
                    .find(|e| e.id == *eid && e.timer == Some(t.id))
                    .and_then(|e| self.reg.get(&e.workflow, e.version).map(|wf| (wf, e.step)))
                    .filter(|(wf, step)| {
                        matches!(
                            wf.steps[*step as usize].kind,
                            StepKind::WaitUntil { date: Some(_), .. } | StepKind::WaitUntil { at: Some(_), .. }
                        )
                    })
                    .map(|(wf, _)| wf.clone()),
                Purpose::Inactivity(_) => None,
            };
            let Some(wf) = wf else {
                continue;
            };
            let (old, new) = (zone(before, &wf, default), self.tz(&wf));
            if old == new {
                continue;
            }
            // A wait on a date: computed again, as when the wait began, in the new zone.
            let on_date = match &t.purpose {
                Purpose::Enrollment(eid) => self.st.enrollments.iter().find(|e| e.id == *eid).and_then(|e| {
                    match &wf.steps[e.step as usize].kind {
                        StepKind::WaitUntil {
                            date: Some(date),
                            offset,
                            at,
                            ..
                        } => Some(self.wait_until_target(e, &wf, Some(date), *offset, *at)),
                        _ => None,
                    }
                }),
                _ => None,
            };
            let due = match on_date {
                Some(Some(target)) => target,
                Some(None) => continue,
                None => calendar::from_local(new, calendar::to_local(old, t.due)),
            }
            .max(self.now);
            if due == t.due {
                continue;
            }
            self.cancel(t.id);
            let id = self.schedule(due, t.purpose.clone());
            if let Purpose::Enrollment(eid) = t.purpose
                && let Some(e) = self.st.enrollments.iter_mut().find(|e| e.id == eid)
            {
                e.timer = Some(id);
            }
        }
    }

    fn on_timer(&mut self, id: u64) {
        let Some(pos) = self.st.timers.iter().position(|t| t.id == id) else {
            return;
        };
        let timer = self.st.timers.remove(pos);
        match timer.purpose {
            Purpose::Enrollment(eid) => {
                let mut list = std::mem::take(&mut self.st.enrollments);
                if let Some(e) = list.iter_mut().find(|e| e.id == eid && e.timer == Some(id)) {
                    e.timer = None;
                    match self.reg.get(&e.workflow, e.version).cloned() {
                        Some(wf) => {
                            self.count(&wf, e.step, Metric::Waiting, -1);
                            let step = &wf.steps[e.step as usize];
                            let (next, resume) = match &step.kind {
                                StepKind::WaitFor { on_timeout, .. } => (*on_timeout, false),
                                // A deferred send runs its step again, now outside quiet hours.
                                StepKind::Send { .. } => (Next::Step(e.step), true),
                                _ => (step.next, false),
                            };
                            self.advance(e, &wf, next, resume);
                        }
                        None => e.done = true,
                    }
                }
                self.restore(list);
            }
            Purpose::Inactivity(wf_id) => {
                let found = self
                    .reg
                    .index
                    .inactivity
                    .iter()
                    .find(|(w, _)| same_id(&w.id, &wf_id) && self.reg.is_in_force(w, self.now))
                    .cloned();
                if let Some((wf, ms)) = found {
                    let last = self.st.last_activity.unwrap_or(self.now);
                    if self.now >= last + ms {
                        let mut props = Map::new();
                        props.insert("inactive_days".into(), Value::Int((self.now - last) / crate::time::DAY));
                        self.try_enroll(wf, &props);
                    } else {
                        self.schedule(last + ms, Purpose::Inactivity(wf_id));
                    }
                }
            }
            Purpose::Date(wf_id, ti) => {
                let Some(wf) = self.reg.in_force(&wf_id, self.now).cloned() else {
                    return;
                };
                let Some(Trigger::Date(spec)) = wf.triggers.get(ti as usize) else {
                    return;
                };
                let mut props = Map::new();
                props.insert("trait".into(), spec.trait_name.clone().into());
                self.try_enroll(wf.clone(), &props);
                if spec.yearly {
                    self.schedule_date(&wf, ti as usize);
                }
            }
        }
    }

    /// Goals and `wait_for` steps of active enrollments react to the event.
    fn enrollments_on_event(&mut self, ev: &Event) {
        let mut list = std::mem::take(&mut self.st.enrollments);
        for e in list.iter_mut() {
            let Some(wf) = self.reg.get(&e.workflow, e.version).cloned() else {
                continue;
            };
            if let Some((name, filter)) = wf.goal.as_ref().and_then(|g| g.event.as_ref()) {
                if *name == ev.name && all(filter, &self.scope(&ev.properties, Some(e))) {
                    self.finish(e, &wf, Metric::Converted);
                    continue;
                }
            }
            if e.timer.is_none() {
                continue;
            }
            if let StepKind::WaitFor {
                event,
                filter,
                on_event,
                ..
            } = &wf.steps[e.step as usize].kind
            {
                if *event == ev.name && all(filter, &self.scope(&ev.properties, Some(e))) {
                    self.end_wait(e, &wf);
                    self.advance(e, &wf, *on_event, false);
                }
            }
        }
        self.restore(list);
    }

    fn restore(&mut self, mut list: Vec<Enrollment>) {
        list.retain(|e| !e.done);
        list.append(&mut self.st.enrollments);
        self.st.enrollments = list;
    }

    /// Condition triggers and condition goals after everything this input changed.
    fn settle(&mut self) {
        self.check_cond_goals();
        // Each round can only start workflows not already active, so this ends; the bound is
        // a guard against a mis-indexed condition, not a behaviour.
        for _ in 0..64 {
            if self.before.is_empty() {
                break;
            }
            let before = std::mem::take(&mut self.before);
            let empty = Map::new();
            for (i, was) in before {
                let ct = &self.reg.index.cond[i];
                if !was && eval(&ct.cond, &self.scope(&empty, None)) {
                    self.try_enroll(ct.wf.clone(), &empty);
                }
            }
            self.check_cond_goals();
        }
    }

    fn check_cond_goals(&mut self) {
        if !std::mem::take(&mut self.touched) || !self.reg.index.has_cond_goals || self.st.enrollments.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.st.enrollments);
        for e in list.iter_mut() {
            let Some(wf) = self.reg.get(&e.workflow, e.version).cloned() else {
                continue;
            };
            if let Some(c) = wf.goal.as_ref().and_then(|g| g.when.as_ref()) {
                if eval(c, &self.scope(&e.event, Some(e))) {
                    self.finish(e, &wf, Metric::Converted);
                }
            }
        }
        self.restore(list);
    }

    // ---- enrollments ---------------------------------------------------------------------

    /// Starts `wf` for this contact if the entry rules allow; `event` is copied only then.
    /// Ends every enrollment (exited) and cancels every timer, so the counters and the timer
    /// table hold nothing of the contact; the state itself is left for the runtime to delete.
    fn erase(&mut self) {
        for mut e in std::mem::take(&mut self.st.enrollments) {
            if let Some(wf) = self.reg.get(&e.workflow, e.version).cloned() {
                self.finish(&mut e, &wf, Metric::Exited);
            }
        }
        let timers: Vec<u64> = self.st.timers.iter().map(|t| t.id).collect();
        for id in timers {
            self.cancel(id);
        }
    }

    /// An enrolment asked for through the API: only into a workflow whose triggers include
    /// `api: true`, under the same entry rules as any trigger.
    fn enroll_by_api(&mut self, workflow: &str, properties: &Map) {
        let reg = self.reg;
        if let Some(wf) = reg
            .in_force(workflow, self.now)
            .filter(|wf| wf.triggers.iter().any(|t| matches!(t, crate::workflow::Trigger::Api)))
        {
            self.try_enroll(wf.clone(), properties);
        }
    }

    fn try_enroll(&mut self, wf: Arc<Workflow>, event: &Map) {
        // The index holds every version: new entrants take the one in force at this input's
        // time, so a replay enters each contact into the version it entered live.
        if !self.reg.is_in_force(&wf, self.now) {
            return;
        }
        if self.st.enrollments.iter().any(|e| same_id(&e.workflow, &wf.id)) {
            return;
        }
        if self.paused.iter().any(|p| same_id(p, &wf.id)) {
            return;
        }
        let now = self.now;
        if let Some(r) = self.st.history.iter().find(|h| same_id(&h.workflow, &wf.id)) {
            let allowed = match wf.entry {
                crate::workflow::Entry::Once => false,
                crate::workflow::Entry::Always => true,
                crate::workflow::Entry::Cooldown(d) => now - r.last_entered >= d,
            };
            if !allowed {
                return;
            }
        }
        // Already converted: a contact who meets the goal is not enrolled.
        if let Some(c) = wf.goal.as_ref().and_then(|g| g.when.as_ref()) {
            if eval(c, &self.scope(event, None)) {
                return;
            }
        }
        match self.st.history.iter_mut().find(|h| same_id(&h.workflow, &wf.id)) {
            Some(r) => {
                r.last_entered = now;
                r.count += 1;
            }
            None => self.st.history.push(EntryRecord {
                workflow: wf.id.clone(),
                last_entered: now,
                count: 1,
            }),
        }
        let id = self.st.next_enrollment;
        self.st.next_enrollment += 1;
        let mut e = Enrollment {
            id,
            workflow: wf.id.clone(),
            version: wf.version,
            step: 0,
            timer: None,
            entered_at: now,
            event: Arc::new(event.clone()),
            sends: vec![],
            send_seq: 0,
            done: false,
        };
        self.advance(&mut e, &wf, Next::Step(0), false);
        if !e.done {
            self.st.enrollments.push(e);
        }
    }

    fn finish(&mut self, e: &mut Enrollment, wf: &Workflow, metric: Metric) {
        self.end_wait(e, wf);
        self.count(wf, e.step, metric, 1);
        e.done = true;
    }

    fn end_wait(&mut self, e: &mut Enrollment, wf: &Workflow) {
        if let Some(t) = e.timer.take() {
            self.cancel(t);
            self.count(wf, e.step, Metric::Waiting, -1);
        }
    }

    fn wait(&mut self, e: &mut Enrollment, wf: &Workflow, due: Ts) {
        e.timer = Some(self.schedule(due, Purpose::Enrollment(e.id)));
        self.count(wf, e.step, Metric::Waiting, 1);
    }

    /// Runs steps from `next` until the enrollment waits or ends. `resume` re-runs a step
    /// without counting a second entry (a deferred send).
    fn advance(&mut self, e: &mut Enrollment, wf: &Workflow, mut next: Next, resume: bool) {
        let mut first = true;
        // Validation rejects loops without waits; this bound only guards the invariant.
        let mut hops = 0;
        loop {
            let Next::Step(i) = next else {
                self.finish(e, wf, Metric::Exited);
                return;
            };
            hops += 1;
            if hops > 4 * wf.steps.len() + 8 {
                self.finish(e, wf, Metric::Exited);
                return;
            }
            e.step = i;
            if !(resume && first) {
                self.count(wf, i, Metric::Entered, 1);
            }
            first = false;
            let step = &wf.steps[i as usize];
            next = step.next;
            match &step.kind {
                StepKind::Send { template, to, kind } => {
                    if let Some(due) = self.send(e, wf, i, template, to, *kind) {
                        self.wait(e, wf, due);
                        return;
                    }
                }
                StepKind::Wait(d) => {
                    self.wait(e, wf, self.now + d);
                    return;
                }
                StepKind::WaitUntil {
                    date,
                    offset,
                    at,
                    if_past,
                } => match self.wait_until_target(e, wf, date.as_ref(), *offset, *at) {
                    Some(t) if t > self.now => {
                        self.wait(e, wf, t);
                        return;
                    }
                    _ => next = if_past.unwrap_or(step.next),
                },
                StepKind::WaitFor { timeout, .. } => {
                    self.wait(e, wf, self.now + timeout);
                    return;
                }
                StepKind::Branch { cases, otherwise } => {
                    let scope = self.scope(&e.event, Some(e));
                    next = cases
                        .iter()
                        .find(|(c, _)| eval(c, &scope))
                        .map_or(*otherwise, |(_, n)| *n);
                }
                StepKind::Split { variants, holdout } => {
                    let b = split_bucket(self.contact, &wf.id);
                    if b < *holdout {
                        self.finish(e, wf, Metric::Holdout);
                        return;
                    }
                    next = variants
                        .iter()
                        .find(|v| b < v.1)
                        .or(variants.last())
                        .map_or(Next::Exit, |v| v.2);
                }
                StepKind::Update(actions) => actions.iter().for_each(|a| self.apply(a)),
                StepKind::Webhook(_) => {
                    let id = send_id(self.contact, &wf.id, wf.version, e.id, i, e.send_seq);
                    e.send_seq += 1;
                    self.out.push(Effect::Webhook(WebhookCommand {
                        id,
                        workflow: wf.id.clone(),
                        version: wf.version,
                        step: i,
                        traits: self.st.traits.clone(),
                        event: e.event.clone(),
                    }));
                }
                StepKind::Exit => {
                    self.finish(e, wf, Metric::Exited);
                    return;
                }
            }
        }
    }

    fn wait_until_target(
        &self,
        e: &Enrollment,
        wf: &Workflow,
        date: Option<&FieldRef>,
        offset: i64,
        at: Option<(u32, u32)>,
    ) -> Option<Ts> {
        let tz = self.tz(wf);
        match date {
            None => Some(match at {
                Some(hm) => calendar::next_time_of_day(tz, self.now, offset, hm),
                None => self.now + offset,
            }),
            Some(f) => {
                let v = match f {
                    FieldRef::Trait(n) => self.st.traits.get(n),
                    FieldRef::Event(p) => e.event.get(p),
                };
                let d = v.and_then(Value::as_str).and_then(calendar::parse_date_value)?;
                Some(calendar::resolve(tz, d, offset, at))
            }
        }
    }

    /// Applies suppression, quiet hours and the frequency cap, then emits the send. Returns
    /// the time to try again when the send must wait.
    fn send(
        &mut self,
        e: &mut Enrollment,
        wf: &Workflow,
        i: StepIdx,
        template: &str,
        to: &Recipient,
        kind: MailKind,
    ) -> Option<Ts> {
        let address = match to {
            Recipient::Contact => self.st.traits.get("email").and_then(Value::as_str),
            Recipient::Trait { name, fallback } => self
                .st
                .traits
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .or(fallback.as_deref()),
            Recipient::Fixed(a) => Some(a.as_str()),
        };
        let Some(address) = address.filter(|a| a.contains('@')).map(crate::value::Str::from) else {
            self.count(wf, i, Metric::NoAddress, 1);
            return None;
        };
        match kind {
            MailKind::Marketing => {
                if self.st.suppressed || self.st.unsubscribed || self.st.unsubscribed_from.contains(&*wf.id) {
                    self.count(wf, i, Metric::Suppressed, 1);
                    return None;
                }
                if let Some(q) = self.reg.policy.quiet_hours {
                    if let Some(until) = calendar::quiet_until(self.tz(wf), self.now, q) {
                        return Some(until);
                    }
                }
                if let Some(cap) = self.reg.policy.frequency_cap {
                    let now = self.now;
                    self.st.marketing_sends.retain(|t| *t > now - cap.window);
                    if self.st.marketing_sends.len() >= cap.max as usize {
                        if cap.defer {
                            return Some(self.st.marketing_sends[0] + cap.window);
                        }
                        self.count(wf, i, Metric::Capped, 1);
                        return None;
                    }
                    self.st.marketing_sends.push(now);
                }
            }
            MailKind::Transactional => {
                if self.st.suppressed {
                    self.count(wf, i, Metric::Suppressed, 1);
                    return None;
                }
            }
            MailKind::Internal => {}
        }
        let id = send_id(self.contact, &wf.id, wf.version, e.id, i, e.send_seq);
        e.send_seq += 1;
        if e.sends.len() >= MAX_SENDS_KEPT {
            e.sends.remove(0);
        }
        e.sends.push(SentRecord {
            step: i,
            id,
            opened: false,
            clicked: false,
        });
        self.out.push(Effect::Send(SendCommand {
            id,
            workflow: wf.id.clone(),
            version: wf.version,
            step: i,
            enrollment: e.id,
            template: template.into(),
            to: address,
            kind,
            traits: self.st.traits.clone(),
            event: e.event.clone(),
        }));
        self.count(wf, i, Metric::Sent, 1);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::Policy;

    /// The one-pass merge of a large identify leaves the same traits, reports the same changed
    /// keys and records the same conditions (with the same values) as setting them one by one.
    #[test]
    fn a_bulk_identify_equals_setting_its_traits_one_by_one() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
        let reg = Registry::load_dir(dir.as_ref(), &[], Policy::default()).unwrap();
        let watched: Vec<String> = reg.index.cond_by_trait.keys().cloned().collect();
        assert!(!watched.is_empty(), "the shipped workflows have trait conditions");
        let mut st = ContactState::default();
        let old: Map = (0..30)
            .map(|i| (format!("k{i:02}"), Value::Int(i)))
            .chain(watched.iter().map(|k| (k.clone(), Value::Str("old".into()))))
            .collect();
        st.traits = Arc::new(old);
        // Unchanged, changed, new, removed (null) and a null for a trait never set, plus every
        // trait a condition reads.
        let new: Map = (0..40)
            .map(|i| {
                let v = match i % 5 {
                    0 => Value::Int(i),
                    1 => Value::Int(i + 100),
                    2 => Value::Str(format!("v{i}").into()),
                    _ => Value::Null,
                };
                (format!("k{i:02}"), v)
            })
            .chain(watched.iter().map(|k| (k.clone(), Value::Str("new".into()))))
            .collect();
        let run = |bulk: bool| {
            let mut st = st.clone();
            let mut out = vec![];
            let mut cx = Cx {
                contact: "ann",
                st: &mut st,
                now: 0,
                reg: &reg,
                paused: &[],
                out: &mut out,
                before: Vec::new(),
                touched: false,
            };
            let changed: Vec<String> = cx.set_traits(&new, bulk).into_iter().map(String::from).collect();
            let mut before = cx.before.clone();
            before.sort();
            let touched = cx.touched;
            (st.traits, changed, before, touched)
        };
        let (one_by_one, bulk) = (run(false), run(true));
        assert_eq!(bulk, one_by_one);
        let (traits, changed, before, touched) = bulk;
        assert!(touched && !before.is_empty());
        // Of the 40: six set to the value they had, four nulls for traits never set.
        assert_eq!(changed.len(), 40 - 6 - 4 + watched.len(), "{changed:?}");
        assert_eq!(traits.get("k01"), Some(&Value::Int(101)));
        assert_eq!(traits.get("k03"), None, "a null removes the trait");
        assert_eq!(traits.get("k35"), Some(&Value::Int(35)));
    }
}
