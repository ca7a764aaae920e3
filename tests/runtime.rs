//! The engine on embedded defaults: RocksDB state, the embedded log, durable timers, the outbox
//! and the `.eml` transport, driven with explicit times.

mod common;

use common::settings;
use dripline::runtime::Engine;
use dripline::time::{HOUR, MINUTE, parse_rfc3339};
use serde_json::json;
use std::path::Path;

fn emls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("mail"))
        .map(|d| d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn cart(user: &str, msg: &str) -> serde_json::Value {
    json!({"type": "track", "userId": user, "messageId": msg, "event": "Product Added", "properties": {"name": "Blue Kettle"}})
}

#[test]
fn ingest_to_eml_with_a_restart_in_the_middle_of_a_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    {
        let engine = Engine::open(&settings(tmp.path())).unwrap();
        let r = engine
            .ingest_values(
                &[
                    json!({"type": "identify", "userId": "ann", "messageId": "i1", "traits": {"email": "ann@example.org", "first_name": "Ann"}}),
                    cart("ann", "c1"),
                ],
                None,
                t0,
            )
            .unwrap();
        assert_eq!((r.accepted, r.duplicates, r.errors.len()), (2, 0, 0));
        assert_eq!(engine.pump(t0).unwrap(), 2);
        engine.drain_mail(100).unwrap();
        assert!(emls(tmp.path()).is_empty(), "the reminder waits an hour");
        let st = engine.contact("ann").unwrap().unwrap();
        assert_eq!(st.enrollments.len(), 1);
        // 30 minutes later nothing is due yet.
        assert_eq!(engine.pump(t0 + 30 * MINUTE).unwrap(), 0);
    }
    // Restart: a new engine over the same directory picks the timer up from RocksDB.
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    assert_eq!(engine.pump(t0 + HOUR + MINUTE).unwrap(), 1, "the 1h timer fires once");
    assert_eq!(engine.drain_mail(100).unwrap(), 1);
    let mails = emls(tmp.path());
    assert_eq!(mails.len(), 1);
    assert!(common::addressed_to(&mails[0], "ann@example.org"), "{}", mails[0]);
    assert!(
        mails[0].contains("Subject: You left Blue Kettle in your cart"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("Hi Ann"), "{}", mails[0]);
    // Draining again sends nothing twice.
    assert_eq!(engine.drain_mail(100).unwrap(), 0);
    assert_eq!(engine.pump(t0 + 2 * HOUR).unwrap(), 0);
}

#[test]
fn duplicates_are_dropped_and_malformed_events_dead_lettered_without_losing_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    let r = engine
        .ingest_values(
            &[
                json!({"type": "identify", "userId": "bob", "messageId": "i1", "traits": {"email": "bob@example.org"}}),
                json!({"type": "track", "userId": "bob", "event": "Signed Up"}),
                json!({"type": "track", "userId": "bob", "messageId": "n1", "event": "Newsletter Subscribed"}),
                json!({"type": "track", "userId": "bob", "messageId": "n1", "event": "Newsletter Subscribed"}),
                json!([1, 2]),
            ],
            None,
            t0,
        )
        .unwrap();
    assert_eq!(r.accepted, 2);
    assert_eq!(r.duplicates, 1);
    let reasons: Vec<_> = r.errors.iter().map(|e| (e.index, e.reason.as_str())).collect();
    assert_eq!(
        reasons,
        vec![
            (1, "missing or empty `messageId`"),
            (4, "an event must be a JSON object")
        ]
    );
    // A later request repeating an old messageId is dropped too.
    let again = engine
        .ingest_values(
            &[json!({"type": "track", "userId": "bob", "messageId": "n1", "event": "Newsletter Subscribed"})],
            None,
            t0 + 1,
        )
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    engine.pump(t0).unwrap();
    engine.drain_mail(100).unwrap();
    let mails = emls(tmp.path());
    assert_eq!(mails.len(), 1, "one welcome, not two");
    let dead = dripline::storage::dead_letters::all(&engine.store).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, "missing or empty `messageId`");
    let metrics = engine.metrics.render();
    assert!(
        metrics.contains("dripline_events_rejected_total{reason=\"missing_field\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dripline_events_rejected_total{reason=\"duplicate\"} 2"),
        "{metrics}"
    );
}

#[test]
fn timers_page_in_from_rocksdb_in_due_order_across_many_contacts() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut s = settings(tmp.path());
    s.engine.partitions = 2;
    s.policy.frequency_cap.enabled = false;
    let engine = Engine::open(&s).unwrap();
    // 6000 contacts add to cart, a chunk a minute: with win-back timers, 12000 timers, more
    // than a page per partition.
    let events: Vec<_> = (0..6000)
        .flat_map(|i| {
            [
                json!({"type": "identify", "userId": format!("u{i}"), "messageId": format!("i{i}"), "traits": {"email": format!("u{i}@example.org")}}),
                cart(&format!("u{i}"), &format!("c{i}")),
            ]
        })
        .collect();
    for (k, chunk) in events.chunks(1000).enumerate() {
        engine.ingest_values(chunk, None, t0 + k as i64 * MINUTE).unwrap();
    }
    engine.pump(t0 + 6 * MINUTE).unwrap();
    drop(engine);
    let engine = Engine::open(&s).unwrap();
    // 12 chunks of 500 contacts, received a minute apart: reminders fall due from t0+1h.
    assert_eq!(
        engine.pump(t0 + HOUR + 2 * MINUTE).unwrap(),
        1500,
        "reminders of the first three chunks"
    );
    assert_eq!(engine.pump(t0 + 2 * HOUR).unwrap(), 4500, "the other nine");
    assert_eq!(engine.pump(t0 + 2 * HOUR).unwrap(), 0, "each timer fires once");
    assert_eq!(engine.drain_mail(10_000).unwrap(), 6000);
    assert_eq!(dripline::storage::tables::sent_ids(&engine.store).unwrap().len(), 6000);
}

/// The pure simulator over the workflows `s` loads, its clock at `t0`.
fn sim(s: &dripline::config::Settings, t0: i64) -> dripline::machine::sim::Sim {
    let reg = dripline::workflow::Registry::load_dir(&s.workflows.dir, &[], s.policy().unwrap()).unwrap();
    dripline::machine::sim::Sim::new(std::sync::Arc::new(reg), t0)
}

/// Each contact's stored state equals the simulator's, byte for byte.
fn assert_states_equal(engine: &Engine, sim: &dripline::machine::sim::Sim, ids: &[impl AsRef<str>]) {
    for id in ids {
        let id = id.as_ref();
        let stored = engine.contact(id).unwrap().unwrap();
        assert_eq!(stored.encode(), sim.contacts[id].encode(), "{id} differs");
    }
}

/// The runtime (log, partitions, RocksDB, paged timers, a cache of 3 contacts per partition so
/// evictions happen mid-batch) must reach byte-identical contact states to the pure simulator
/// given the same inputs at the same times.
#[test]
fn engine_states_equal_the_pure_simulation_even_with_a_tiny_cache() {
    use dripline::time::DAY;
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut s = settings(tmp.path());
    s.engine.partitions = 3;
    s.engine.cache_contacts_per_partition = 3;
    s.engine.batch = 50;
    let engine = Engine::open(&s).unwrap();
    let mut sim = sim(&s, t0);
    let names = [
        "Product Added",
        "Order Completed",
        "Ebook Downloaded",
        "Newsletter Subscribed",
        "Signed Up",
        "Webinar Attended",
    ];
    let mut n = 0;
    for round in 0..40i64 {
        let at = t0 + round * 3 * HOUR;
        let mut values = vec![];
        for c in 0..25 {
            n += 1;
            let v = if round == 0 {
                json!({"type": "identify", "userId": format!("u{c}"), "messageId": format!("m{n}"), "traits": {"email": format!("u{c}@example.org"), "nps_score": c % 11}})
            } else {
                json!({"type": "track", "userId": format!("u{c}"), "messageId": format!("m{n}"), "event": names[(c + round as usize) % names.len()], "properties": {"order_id": "o", "category": "consumables"}})
            };
            let ev = dripline::event::Event::from_json(&v, None).unwrap();
            sim.input(at, &format!("u{c}"), dripline::machine::Input::Event(ev));
            values.push(v);
        }
        engine.ingest_values(&values, None, at).unwrap();
        engine.pump(at).unwrap();
    }
    let end = t0 + 200 * DAY;
    sim.advance_to(end);
    engine.pump(end).unwrap();
    let ids: Vec<String> = (0..25).map(|c| format!("u{c}")).collect();
    assert_states_equal(&engine, &sim, &ids);
    engine.drain_mail(100_000).unwrap();
    assert_eq!(emls(tmp.path()).len(), sim.sent.len());
}

/// A busy partition (it polls full batches and commits by checkpoint) writes each checkpoint
/// commit as it makes it, also while another thread appends, and nothing is lost to the tiny
/// cache: a contact pushed out changed before the commit reloads its newest state, not the
/// store's older one. The states end equal to the pure simulation's.
#[test]
fn busy_commits_are_written_as_made_and_evictions_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut s = settings(tmp.path());
    s.engine.partitions = 1;
    s.engine.cache_contacts_per_partition = 2;
    s.engine.batch = 4;
    s.engine.checkpoint_inputs = 4;
    s.engine.checkpoint_interval = "1h".into();
    let engine = Engine::open(&s).unwrap();
    let mut sim = sim(&s, t0);
    let identify = |u: &str, n: usize| json!({"type": "identify", "userId": u, "messageId": format!("m{n}"), "traits": {"email": format!("{u}@example.org"), "first_name": u}});
    // a..d fill the cache twice over: a and b are pushed out changed before the first commit,
    // c and d unchanged after it (their newest state is in the commit), and a, b and c come back.
    let first: Vec<serde_json::Value> = vec![
        identify("a", 1),
        identify("b", 2),
        identify("c", 3),
        identify("d", 4),
        cart("a", "m5"),
        json!({"type": "identify", "userId": "b", "messageId": "m6", "traits": {"plan": "pro"}}),
        cart("c", "m7"),
    ];
    let second = vec![cart("d", "m8"), cart("b", "m9")];
    for (at, values) in [(t0, &first), (t0 + MINUTE, &second)] {
        for v in values.iter() {
            let ev = dripline::event::Event::from_json(v, None).unwrap();
            sim.input(at, &ev.user_id.clone(), dripline::machine::Input::Event(ev));
        }
    }

    // Appends come from another thread, as HTTP ingest's do.
    let elsewhere = |values: &[serde_json::Value], at| {
        std::thread::scope(|s| {
            s.spawn(|| engine.ingest_values(values, None, at).unwrap())
                .join()
                .unwrap()
        });
    };
    elsewhere(&first, t0);
    // A full poll commits by checkpoint; the next (3 records) drains the log.
    assert_eq!(engine.pump_lazy(t0).unwrap(), 7);
    let position = || {
        dripline::storage::tables::get_position(&engine.store, 0)
            .unwrap()
            .offset
    };
    assert_eq!(position(), Some(3), "the checkpoint commit is written as it is made");
    assert!(engine.contact("a").unwrap().is_some());
    elsewhere(&second, t0 + MINUTE);

    engine.pump(t0 + MINUTE).unwrap();
    let end = t0 + 3 * dripline::time::DAY;
    sim.advance_to(end);
    engine.pump(end).unwrap();
    assert_eq!(position(), Some(8));
    assert_states_equal(&engine, &sim, &["a", "b", "c", "d"]);
    assert_eq!(
        engine.contact("b").unwrap().unwrap().traits.get("first_name"),
        Some(&dripline::value::Value::Str("b".into())),
        "b's first identify survived its eviction before the commit was written"
    );
    engine.drain_mail(100).unwrap();
    assert_eq!(emls(tmp.path()).len(), sim.sent.len());
    assert!(!sim.sent.is_empty());
}

/// The rounds the next test feeds: identifies, then a mix of tracks three hours apart (so
/// abandoned-cart waits and others come due between rounds).
fn rounds(t0: i64, n: i64) -> Vec<(i64, Vec<serde_json::Value>)> {
    let names = [
        "Product Added",
        "Order Completed",
        "Product Added",
        "Signed Up",
        "Webinar Attended",
    ];
    let mut m = 0;
    (0..n)
        .map(|round| {
            let values = (0..25)
                .map(|c| {
                    m += 1;
                    if round == 0 {
                        json!({"type": "identify", "userId": format!("u{c}"), "messageId": format!("m{m}"), "traits": {"email": format!("u{c}@example.org")}})
                    } else {
                        json!({"type": "track", "userId": format!("u{c}"), "messageId": format!("m{m}"), "event": names[(c + round as usize) % names.len()], "properties": {"name": "Kettle", "order_id": "o"}})
                    }
                })
                .collect();
            (t0 + round * 3 * HOUR, values)
        })
        .collect()
}

/// Ingest on one thread and processing on another (as `dripline run` runs them) reach the same
/// state as taking turns on one thread, however the two interleave: timers fire by record time,
/// and up to the wall clock only once the log is sealed there; commits by checkpoint lose
/// nothing.
#[test]
fn ingest_and_processing_on_two_threads_reach_the_one_thread_state() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let end = t0 + 30 * dripline::time::DAY;
    let rounds = rounds(t0, 60);
    let open = |dir: &Path| {
        let mut s = settings(dir);
        s.engine.partitions = 3;
        s.engine.cache_contacts_per_partition = 4;
        s.engine.batch = 16;
        // Commits by checkpoint while busy.
        s.engine.checkpoint_inputs = 8;
        Engine::open(&s).unwrap()
    };

    let one = tempfile::tempdir().unwrap();
    let serial = open(one.path());
    for (at, values) in &rounds {
        serial.ingest_values(values, None, *at).unwrap();
        serial.pump(*at).unwrap();
    }
    serial.pump(end).unwrap();

    let two = tempfile::tempdir().unwrap();
    let piped = open(two.path());
    let wall = AtomicI64::new(t0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for (i, (at, values)) in rounds.iter().enumerate() {
                piped.ingest_values(values, None, *at).unwrap();
                wall.store(*at, Ordering::Release);
                // Now and then the processor catches up and fires timers between rounds.
                if i % 3 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            done.store(true, Ordering::Release);
        });
        loop {
            let finished = done.load(Ordering::Acquire);
            let n = piped.pump(wall.load(Ordering::Acquire)).unwrap();
            if finished && n == 0 {
                break;
            }
        }
    });
    piped.pump(end).unwrap();

    let digest = |e: &Engine| dripline::storage::digest::digest(&e.store, 3).unwrap();
    assert_eq!(digest(&serial).contacts(), 25);
    assert_eq!(digest(&piped), digest(&serial));
    let outbox = |e: &Engine| dripline::storage::tables::outbox_ids(&e.store).unwrap();
    assert!(!outbox(&serial).is_empty(), "emails were decided");
    assert_eq!(outbox(&piped), outbox(&serial));
}

/// `dripline_log_lag_records` counts what is appended and not yet handled, per partition, as of
/// the scrape (no partition needs to poll for it to move).
#[test]
fn the_log_lag_gauge_counts_records_not_yet_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    let lag = |e: &Engine| -> Vec<i64> {
        e.refresh_log_lag();
        (0..e.log.partitions())
            .map(|p| e.metrics.log_lag_records.with_label_values(&[&p.to_string()]).get())
            .collect()
    };
    assert_eq!(lag(&engine).iter().sum::<i64>(), 0);
    let values: Vec<_> = (0..6).map(|i| cart(&format!("u{i}"), &format!("c{i}"))).collect();
    engine.ingest_values(&values, None, t0).unwrap();
    let appended = lag(&engine);
    assert_eq!(appended.iter().sum::<i64>(), 6);
    let busiest = (0..appended.len()).max_by_key(|&p| appended[p]).unwrap();
    assert_eq!(
        appended[busiest] as u64,
        engine.log.next_offsets()[busiest],
        "all of a partition's records are lag before its first poll"
    );
    engine.pump(t0).unwrap();
    assert_eq!(lag(&engine), vec![0; appended.len()]);
    // Reopened: the lag starts from the committed positions, not from zero.
    engine
        .ingest_values(&[cart("u0", "c-late")], None, t0 + MINUTE)
        .unwrap();
    drop(engine);
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    assert_eq!(lag(&engine).iter().sum::<i64>(), 1);
}

/// `dripline_processing_latency_seconds` runs from the append to the commit that makes the
/// event's effects durable, not to the moment it was handled: a partition that handles events and
/// commits later reports the later time.
#[test]
fn processing_latency_runs_to_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let mut s = settings(tmp.path());
    // A busy partition's checkpoint that never comes due by itself in this test.
    s.engine.checkpoint_inputs = 1_000_000;
    s.engine.checkpoint_interval = "1h".into();
    let engine = Engine::open(&s).unwrap();
    let latency = |e: &Engine| {
        let h = &e.metrics.processing_latency;
        (h.get_sample_count(), h.get_sample_sum())
    };
    let values: Vec<_> = (0..5).map(|i| cart(&format!("u{i}"), &format!("c{i}"))).collect();
    engine.ingest_values(&values, None, t0).unwrap();
    // Handled two seconds after the append, not committed.
    assert_eq!(engine.pump_lazy(t0 + 2_000).unwrap(), 5);
    assert_eq!(engine.metrics.inputs_processed.get(), 5);
    assert_eq!(latency(&engine), (0, 0.0), "nothing is committed yet");
    // Committed at seven seconds: every event's latency is seven seconds.
    engine.pump(t0 + 7_000).unwrap();
    assert_eq!(latency(&engine), (5, 35.0));
}

/// One `pump(wall)` processes the log and then every timer due by `wall`, including timers due
/// after the last record.
#[test]
fn a_single_pump_fires_timers_due_after_the_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    engine
        .ingest_values(
            &[
                json!({"type": "identify", "userId": "ann", "messageId": "i1", "traits": {"email": "ann@example.org"}}),
                cart("ann", "c1"),
            ],
            None,
            t0,
        )
        .unwrap();
    engine.pump(t0 + 2 * HOUR).unwrap();
    let outbox = dripline::storage::tables::outbox_page(&engine.store, 10).unwrap();
    assert_eq!(outbox.len(), 1);
    let (id, entry) = &outbox[0];
    let rendered = dripline::sinks::compose::render(&engine.reg, &engine.links, *id, entry).unwrap();
    assert_eq!(rendered.subject, "You left Blue Kettle in your cart");
    assert_eq!(
        outbox[0].1.decided_at,
        t0 + HOUR,
        "decided at the timer's due time, not the pump's"
    );
}

/// `mail.rate.per_second` holds sends back: 12 welcome emails at 8/s cannot all go out in
/// less than (12 − 8 burst) / 8 = half a second. (A lower bound only: it cannot be flaky.)
#[test]
fn the_send_rate_limit_paces_the_mailer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path());
    s.mail.rate.per_second = 8.0;
    let engine = Engine::open(&s).unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let events: Vec<serde_json::Value> = (0..12)
        .flat_map(|i| {
            [
                json!({"type": "identify", "userId": format!("u{i}"), "messageId": format!("i{i}"), "traits": {"email": format!("u{i}@example.org")}}),
                json!({"type": "track", "userId": format!("u{i}"), "messageId": format!("n{i}"), "event": "Newsletter Subscribed"}),
            ]
        })
        .collect();
    engine.ingest_values(&events, None, t0).unwrap();
    engine.pump(t0).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(engine.drain_mail(100).unwrap(), 12);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emls(tmp.path()).len(), 12);
    assert!(
        engine
            .metrics
            .render()
            .contains("dripline_mail_rate_limit_messages_per_second 8")
    );
}

/// A worker handles its own partitions (p mod workers), then, with sharing on, every partition
/// no other worker holds at that moment, without waiting for one that is held; pinned, only its
/// own.
#[test]
fn a_worker_helps_with_partitions_no_other_worker_holds() {
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let events: Vec<serde_json::Value> = (0..64).map(|i| cart(&format!("u{i}"), &format!("m{i}"))).collect();
    // Which partitions each run left with records not handled.
    let behind = |share: bool, hold: Option<usize>| {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path());
        s.engine.partitions = 4;
        s.engine.share_partitions = share;
        let engine = Engine::open(&s).unwrap();
        engine.ingest_values(&events, None, t0).unwrap();
        let ends = engine.log.next_offsets();
        assert!(ends.iter().all(|&e| e > 0), "every partition has records: {ends:?}");
        // Held as another worker handling it would hold it.
        let held = hold.map(|p| engine.partitions[p].lock().unwrap());
        let handled = engine.pump_lazy_worker(t0, 0, 2).unwrap();
        drop(held);
        let left: Vec<usize> = (0..4)
            .filter(|&p| engine.partitions[p].lock().unwrap().next_offset() < ends[p])
            .collect();
        let skipped: u64 = left.iter().map(|&p| ends[p]).sum();
        assert_eq!(handled as u64, 64 - skipped, "records handled");
        left
    };
    assert_eq!(
        behind(true, None),
        Vec::<usize>::new(),
        "worker 0 of 2 handles all four"
    );
    assert_eq!(behind(false, None), vec![1, 3], "pinned: its own, 0 and 2");
    assert_eq!(
        behind(true, Some(3)),
        vec![3],
        "the held one is skipped, not waited for"
    );
    assert_eq!(
        behind(true, Some(2)),
        vec![2],
        "its own too, when another worker has it"
    );
}

/// A partition that fails (here: a worker panicked while holding it) does not stop a worker's
/// round: the others are handled and the failure comes back with its partition; `skip` (a
/// worker backing off) leaves it out. A flush commits the others and reports it.
#[test]
fn a_failed_partition_does_not_stop_the_others() {
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path());
    s.engine.partitions = 4;
    let engine = Engine::open(&s).unwrap();
    let events: Vec<serde_json::Value> = (0..64).map(|i| cart(&format!("u{i}"), &format!("m{i}"))).collect();
    engine.ingest_values(&events, None, t0).unwrap();
    let ends = engine.log.next_offsets();
    std::thread::scope(|s| {
        let poisoned = s.spawn(|| {
            let _held = engine.partitions[1].lock().unwrap();
            panic!("a worker panics while it handles partition 1 (expected by this test)");
        });
        assert!(poisoned.join().is_err());
    });

    let round = engine.pump_worker(t0, 0, 2, false, |_| false);
    let failed: Vec<usize> = round.failed.iter().map(|(p, _)| *p).collect();
    assert_eq!(failed, vec![1]);
    assert!(
        format!("{:#}", round.failed[0].1).contains("panicked"),
        "{:#}",
        round.failed[0].1
    );
    assert_eq!(round.handled as u64, 64 - ends[1], "every other partition's records");
    for p in [0, 2, 3] {
        assert_eq!(
            engine.partitions[p].lock().unwrap().next_offset(),
            ends[p],
            "partition {p}"
        );
    }
    let skipped = engine.pump_worker(t0, 0, 2, false, |p| p == 1);
    assert!(skipped.failed.is_empty() && skipped.handled == 0);

    let flushed = engine.flush().unwrap_err();
    assert!(format!("{flushed:#}").contains("partition 1"), "{flushed:#}");
    for p in [0u16, 2, 3] {
        let position = dripline::storage::tables::get_position(&engine.store, p)
            .unwrap()
            .offset;
        assert_eq!(
            position,
            Some(ends[p as usize] - 1),
            "partition {p} committed to its last record"
        );
    }
}

/// A send skipped because the contact has no e-mail address is counted, by workflow, and in the
/// step's counters; one to a contact with an address is not.
#[test]
fn a_send_to_a_contact_without_an_address_is_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = parse_rfc3339("2026-03-02T10:00:00Z").unwrap();
    let engine = Engine::open(&settings(tmp.path())).unwrap();
    let order = |user: &str, msg: &str| json!({"type": "track", "userId": user, "messageId": msg, "event": "Order Completed", "properties": {"order_id": msg}});
    engine
        .ingest_values(
            &[
                json!({"type": "identify", "userId": "ann", "messageId": "i1", "traits": {"email": "ann@example.org"}}),
                order("ann", "o1"),
                order("nobody", "o2"),
                order("nobody", "o3"),
            ],
            None,
            t0,
        )
        .unwrap();
    engine.pump(t0).unwrap();
    let no_address = engine
        .metrics
        .sends
        .with_label_values(&["order_confirmation", "no_address"])
        .get();
    assert_eq!(no_address, 2);
    assert_eq!(engine.drain_mail(100).unwrap(), 1, "ann's confirmation goes out");
    let counted: i64 = dripline::storage::tables::counters(&engine.store)
        .unwrap()
        .iter()
        .filter(|((wf, _, _, m), _)| wf == "order_confirmation" && *m == dripline::machine::Metric::NoAddress)
        .map(|(_, v)| *v)
        .sum();
    assert_eq!(counted, 2);
}
