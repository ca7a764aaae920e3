//! State-machine throughput: a realistic clickstream mix over every shipped workflow with
//! 100K contacts held in memory; timers fire as simulated time passes. Parsing and storage are
//! excluded (events are prebuilt, state lives in a hash map). Target: ≥ 1M inputs/s per core.
//!
//! Traffic comes in sessions, as on a real site: 256 visitors are active at once, each event
//! comes from one of them, and a session ends after about 8 events and is replaced by a random
//! contact. A second run with every event from a uniformly random contact (no locality at all)
//! shows the memory-bound worst case.

mod common;

use common::{Rng, Visitors, event, props};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dripline::event::Event;
use dripline::machine::{ContactState, Effect, Input, handle};
use dripline::time::{Ts, parse_rfc3339};
use dripline::workflow::{FrequencyCap, Policy, Registry};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

const CONTACTS: usize = 100_000;
const PREBUILT: usize = 1 << 20;
/// Simulated time between two inputs: 1M inputs span about 3 days, so waits of hours and days
/// come due and fire during the run.
const STEP_MS: i64 = 250;

struct World {
    reg: Registry,
    contacts: FxHashMap<String, ContactState>,
    ids: Vec<String>,
    inputs: Vec<(usize, Input)>,
    timers: BinaryHeap<Reverse<(Ts, usize, u64)>>,
    next: usize,
    now: Ts,
    fx: Vec<Effect>,
    processed: u64,
}

impl World {
    fn new(sessions_on: bool) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows");
        let policy = Policy {
            frequency_cap: Some(FrequencyCap {
                max: 3,
                window: dripline::time::DAY,
                defer: false,
            }),
            quiet_hours: Some((22 * 60, 7 * 60)),
            default_timezone: chrono_tz::UTC,
        };
        let reg = Registry::load_dir(dir.as_ref(), &[], policy).expect("shipped workflows load");
        let ids: Vec<String> = (0..CONTACTS).map(|i| format!("contact-{i}")).collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut visitors = Visitors::new(&mut rng, CONTACTS, sessions_on);
        let inputs = (0..PREBUILT)
            .map(|i| {
                let c = visitors.next(&mut rng);
                (c, Input::Event(event(&mut rng, &ids[c], i)))
            })
            .collect();
        let mut w = World {
            reg,
            contacts: FxHashMap::default(),
            ids,
            inputs,
            timers: BinaryHeap::new(),
            next: 0,
            now: parse_rfc3339("2026-03-02T00:00:00Z").unwrap(),
            fx: Vec::with_capacity(64),
            processed: 0,
        };
        // Every contact known up front, with an address and a time zone.
        for c in 0..CONTACTS {
            let tz = ["UTC", "Asia/Shanghai", "Europe/Moscow", "Asia/Jakarta"][c % 4];
            let traits = props(&[
                ("email", format!("{}@example.org", w.ids[c]).into()),
                ("first_name", "Ann".into()),
                ("timezone", tz.into()),
            ]);
            let ev = Input::Event(Event::identify(&w.ids[c].clone(), "init", traits));
            w.apply(c, &ev, w.now);
        }
        w
    }

    fn apply(&mut self, c: usize, input: &Input, at: Ts) {
        let id = &self.ids[c];
        let st = match self.contacts.get_mut(id.as_str()) {
            Some(s) => s,
            None => self.contacts.entry(id.clone()).or_default(),
        };
        handle(id, st, input, at, &self.reg, &[], &mut self.fx);
        for e in self.fx.drain(..) {
            if let Effect::ScheduleTimer { id, due } = e {
                self.timers.push(Reverse((due, c, id)));
            }
        }
        self.processed += 1;
    }

    /// One input: a due timer if there is one, else the next event.
    fn step(&mut self) {
        if let Some(Reverse((due, c, id))) = self.timers.peek().copied() {
            if due <= self.now {
                self.timers.pop();
                self.apply(c, &Input::Timer { id }, due);
                return;
            }
        }
        self.now += STEP_MS;
        let i = self.next % PREBUILT;
        self.next += 1;
        let inputs = std::mem::take(&mut self.inputs);
        let (c, input) = &inputs[i];
        self.apply(*c, input, self.now);
        self.inputs = inputs;
    }
}

fn run(c: &mut Criterion, name: &str, sessions_on: bool) {
    let mut world = World::new(sessions_on);
    // Warm up into a steady state: enrollments and timers in flight.
    for _ in 0..500_000 {
        world.step();
    }
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(10));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                world.step();
            }
            start.elapsed()
        })
    });
    g.finish();
    let enrollments: usize = world.contacts.values().map(|s| s.enrollments.len()).sum();
    println!(
        "{name}: {} contacts, {} active enrollments, {} timers pending, {} inputs processed",
        world.contacts.len(),
        enrollments,
        world.timers.len(),
        world.processed
    );
}

fn bench(c: &mut Criterion) {
    run(c, "realistic_mix_100k_contacts_sessions", true);
    run(c, "uniform_random_contacts_worst_case", false);
}

criterion_group!(benches, bench);
criterion_main!(benches);
