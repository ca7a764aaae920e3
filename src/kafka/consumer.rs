//! The consumer-group member. Each assigned partition of the events topic feeds its own
//! partition processor, in offset order; the offset is committed in the same RocksDB batch as
//! the state it produced (offsets committed to Kafka are advisory, for lag tooling). On
//! assignment the partition is restored from the changelog if the local store is behind, and
//! consumption resumes at the stored offset + 1; on revocation the partition commits first.
//!
//! Input time is the record's timestamp, kept monotonic per partition. While a partition is
//! idle its timers fire on the wall clock up to now minus `idle_timer_grace`.
//!
//! A record whose contact's home is another partition is forwarded there, not handled (see
//! [`super::reroute`]).

use super::changelog::Changelog;
use super::reroute::{self, Forwarder, Marks};
use super::{KafkaError, client_config, producer_config};
use crate::config::Settings;
use crate::event::Event;
use crate::runtime::Engine;
use crate::runtime::partition::Partition;
use crate::storage::hook::CommitHook;
use crate::storage::log::{LogRecord, Window, id_hash};
use crate::time::Ts;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The partitions this instance owns, shared by the poll loop and the rebalance callbacks
/// (which librdkafka runs inside `poll`, on the same thread).
struct Owned {
    parts: BTreeMap<u16, Partition>,
    /// What the last revocation took, and whether the next assignment follows our own rejoin.
    revoked: Vec<u16>,
    after_own_rejoin: bool,
    windows: BTreeMap<u16, Window>,
    /// Forwarded copies handled, per owned (home) partition.
    marks: BTreeMap<u16, Marks>,
    /// Timestamp of the last record handled, per partition (lag in seconds).
    last_ts: BTreeMap<u16, Ts>,
    /// High watermarks from librdkafka's statistics (cheap, up to a second old), and when the
    /// broker was last asked for a fresh one, per partition.
    hi: BTreeMap<u16, i64>,
    asked: BTreeMap<u16, Instant>,
}

struct Ctx {
    rejoin: Arc<AtomicBool>,
    engine: Arc<Engine>,
    changelog: Arc<Changelog>,
    owned: Arc<Mutex<Owned>>,
    topic: String,
    dedup_window: usize,
    cache: usize,
}

impl ClientContext for Ctx {
    /// librdkafka's statistics (every second) carry each partition's high watermark: lag is
    /// measured against the offset committed with the state, in records and in seconds.
    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        let Ok(mut owned) = self.owned.try_lock() else {
            return;
        };
        for (p, sp) in &topic.partitions {
            if *p >= 0 && sp.hi_offset >= 0 {
                owned.hi.insert(*p as u16, sp.hi_offset);
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        let m = &self.engine.metrics;
        for (p, part) in &owned.parts {
            let Some(sp) = topic.partitions.get(&(*p as i32)) else {
                continue;
            };
            if sp.hi_offset < 0 {
                continue;
            }
            let lag = (sp.hi_offset - part.next_offset() as i64).max(0);
            let label = p.to_string();
            m.kafka_lag_records.with_label_values(&[&label]).set(lag);
            let secs = match (lag, owned.last_ts.get(p)) {
                (0, _) | (_, None) => 0.0,
                (_, Some(t)) => ((now - t).max(0)) as f64 / 1000.0,
            };
            m.kafka_lag_seconds.with_label_values(&[&label]).set(secs);
        }
    }
}

/// The topic's partitions in a rebalance's list, in order.
fn partitions_in(tpl: &TopicPartitionList, topic: &str) -> Vec<u16> {
    let mut ps: Vec<u16> = tpl
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition() as u16)
        .collect();
    ps.sort_unstable();
    ps
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let m = &self.engine.metrics;
        m.kafka_rebalances.inc();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.engine.readiness.set_rebalancing(true);
                let mut owned = self.owned.lock().expect("owned");
                let assigned = partitions_in(tpl, &self.topic);
                let same = !assigned.is_empty() && assigned == owned.revoked;
                if same && assigned.len() < self.changelog.partitions() && !owned.after_own_rejoin {
                    self.rejoin.store(true, Ordering::SeqCst);
                }
                owned.after_own_rejoin = self.rejoin.load(Ordering::SeqCst);
                for p in assigned {
                    match self.take_over(p) {
                        Ok((part, marks)) => {
                            let next = part.next_offset();
                            owned.parts.insert(p, part);
                            owned.windows.insert(p, self.window(p, next));
                            owned.marks.insert(p, marks);
                            self.changelog.set_owned(p, true);
                            let at = if next == 0 {
                                Offset::Beginning
                            } else {
                                Offset::Offset(next as i64)
                            };
                            if let Err(e) = tpl.set_partition_offset(&self.topic, p as i32, at) {
                                tracing::error!("partition {p}: cannot seek to {next}: {e}");
                            }
                        }
                        Err(e) => tracing::error!("partition {p}: cannot take over: {e:#}"),
                    }
                }
                tracing::info!("assigned partitions {:?}", owned.parts.keys().collect::<Vec<_>>());
                drop(owned);
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!("assign: {e}");
                }
                self.engine.readiness.set_rebalancing(false);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Not ready until the assignment that follows has been taken over.
                self.engine.readiness.set_rebalancing(true);
                let mut owned = self.owned.lock().expect("owned");
                owned.revoked = partitions_in(tpl, &self.topic);
                for e in tpl.elements_for_topic(&self.topic) {
                    let p = e.partition() as u16;
                    // Drain: what was handled is committed (and in the changelog) before release.
                    if let Some(mut part) = owned.parts.remove(&p) {
                        if let Err(e) = part.commit() {
                            tracing::error!("partition {p}: commit on revoke: {e}");
                        }
                    }
                    owned.windows.remove(&p);
                    owned.marks.remove(&p);
                    owned.last_ts.remove(&p);
                    self.changelog.set_owned(p, false);
                    m.kafka_lag_records.with_label_values(&[&p.to_string()]).set(0);
                }
                tracing::info!("revoked; keeping {:?}", owned.parts.keys().collect::<Vec<_>>());
                drop(owned);
                if let Err(e) = consumer.unassign() {
                    tracing::error!("unassign: {e}");
                }
            }
            other => tracing::error!("rebalance error: {other:?}"),
        }
    }
}

impl Ctx {
    /// The partition's messageId window, rebuilt from the records before `next` (this
    /// instance's share of `engine.dedup_window`, as the embedded log reads from its tail).
    fn window(&self, p: u16, next: u64) -> Window {
        let read = self.dedup_window.div_ceil(self.changelog.partitions().max(1));
        super::dedup::rebuild(&self.engine.settings.kafka, p, next, self.dedup_window, read).unwrap_or_else(|e| {
            tracing::warn!("partition {p}: messageId window not rebuilt ({e}); repeats from before are not caught");
            Window::new(self.dedup_window)
        })
    }

    /// Restores the partition's state from the changelog if this store is behind, then opens
    /// its processor (fresh cache and timer queue over the restored tables) and reads the
    /// forwarded copies it has handled (without them, a copy forwarded again would be handled
    /// twice: a partition whose marks cannot be read is not taken over).
    fn take_over(&self, p: u16) -> anyhow::Result<(Partition, Marks)> {
        self.changelog.restore(p)?;
        let e = &self.engine;
        let hook: Arc<dyn CommitHook> = self.changelog.clone();
        let part = Partition::open(p, e.store.clone(), e.reg.clone(), e.metrics.clone(), self.cache)?.with_hook(hook);
        Ok((part, Marks(crate::storage::reroutes::of_home(&e.store, p)?)))
    }
}

/// Runs the group member until `stop` is set; then commits every owned partition and leaves
/// the group (which revokes them, for another member to take over).
pub fn run(
    engine: Arc<Engine>,
    settings: &Settings,
    changelog: Arc<Changelog>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let k = &settings.kafka;
    let grace = crate::workflow::duration::parse(&k.idle_timer_grace).map_err(anyhow::Error::msg)?;
    let owned = Arc::new(Mutex::new(Owned {
        parts: BTreeMap::new(),
        revoked: vec![],
        after_own_rejoin: false,
        windows: BTreeMap::new(),
        marks: BTreeMap::new(),
        last_ts: BTreeMap::new(),
        hi: BTreeMap::new(),
        asked: BTreeMap::new(),
    }));
    let changelog_for_member = changelog.clone();
    let rejoin = Arc::new(AtomicBool::new(false));
    let ctx = Ctx {
        rejoin: rejoin.clone(),
        engine: engine.clone(),
        changelog,
        owned: owned.clone(),
        topic: k.events_topic.clone(),
        dedup_window: settings.engine.dedup_window,
        cache: settings.engine.cache_contacts_per_partition,
    };
    let mut cfg = client_config(k);
    // Unique per process, so this member can recognise itself in the group's description.
    cfg.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "1000");
    let consumer: BaseConsumer<Ctx> = cfg.create_with_context(ctx)?;
    consumer.subscribe(&[&k.events_topic])?;
    let mut member = Member {
        changelog: changelog_for_member,
        consumer,
        owned: owned.clone(),
        dead: producer_config(k).create()?,
        forwarder: Forwarder::new(k)?,
        engine,
        settings: k.clone(),
        grace,
        batch_max: settings.engine.batch,
        last_commit: Instant::now(),
        rejoin: rejoin.clone(),
        unflushed: Default::default(),
        unflushed_inputs: 0,
        last_flush: Instant::now(),
        checkpoint: crate::runtime::partition::Checkpoint {
            inputs: settings.engine.checkpoint_inputs,
            interval: Duration::from_millis(
                crate::workflow::duration::parse(&settings.engine.checkpoint_interval).map_err(anyhow::Error::msg)?
                    as u64,
            ),
        },
    };
    while !stop.load(Ordering::SeqCst) {
        member.rejoin_if_wedged();
        // A failure (broker down: the changelog cannot be published) leaves the batch staged in
        // its partition; the next round publishes and commits it. Nothing is skipped.
        if let Err(e) = member.round() {
            // Records polled and neither handled nor forwarded: stop, for the group to hand the
            // partitions to a member that starts again from their last commit.
            if e.is::<reroute::ForwardFailed>() {
                return Err(e);
            }
            tracing::warn!("consumer round failed, retrying: {e:#}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let consumer = member.consumer;
    {
        let mut o = owned.lock().expect("owned");
        for part in o.parts.values_mut() {
            part.commit()?;
        }
    }
    consumer.unsubscribe();
    // Serve the revocation that leaving the group triggers.
    let _ = consumer.poll(Duration::from_millis(100));
    Ok(())
}

/// Sends an unreadable record to the dead-letter topic, headers naming why and where from.
fn dead_letter(
    producer: &FutureProducer,
    k: &crate::config::KafkaSettings,
    m: &rdkafka::message::OwnedMessage,
    reason: &str,
    label: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<(), KafkaError> {
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "dripline.reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "dripline.source.topic",
            value: Some(m.topic()),
        })
        .insert(Header {
            key: "dripline.source.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "dripline.source.offset",
            value: Some(&offset),
        });
    let mut r = FutureRecord::<[u8], [u8]>::to(&k.dead_letter_topic).headers(headers);
    if let Some(key) = m.key() {
        r = r.key(key);
    }
    if let Some(v) = m.payload() {
        r = r.payload(v);
    }
    let f = producer.send_result(r).map_err(|(e, _)| e)?;
    futures::executor::block_on(f)
        .map_err(|_| KafkaError::Client(rdkafka::error::KafkaError::Canceled))?
        .map_err(|(e, _)| e)?;
    metrics.kafka_dead_letters.with_label_values(&[label]).inc();
    Ok(())
}

struct Member {
    consumer: BaseConsumer<Ctx>,
    changelog: Arc<Changelog>,
    owned: Arc<Mutex<Owned>>,
    dead: FutureProducer,
    forwarder: Forwarder,
    engine: Arc<Engine>,
    settings: crate::config::KafkaSettings,
    grace: i64,
    batch_max: usize,
    last_commit: Instant,
    /// Set by the rebalance callback when the group looks wedged (see `rejoin_if_wedged`).
    rejoin: Arc<AtomicBool>,
    /// Partitions with handled records not yet committed, how many records, since when.
    unflushed: std::collections::BTreeSet<u16>,
    unflushed_inputs: usize,
    last_flush: Instant,
    checkpoint: crate::runtime::partition::Checkpoint,
}

impl Member {
    /// A broker that evicts a dead member but keeps the group's old assignment (tansu 0.6.0
    /// does: its heartbeat path drops the member, answers "rebalance in progress", then hands
    /// every survivor back exactly what it had) leaves the dead member's partitions without an
    /// owner, their events and timers stalled. A rebalance that gives this member back exactly
    /// the partitions it just gave up, while it owns less than the whole topic, is the sign:
    /// it leaves the group and joins again, which makes the broker form the group anew (with
    /// Kafka it only costs one more rebalance, and the one that follows our own rejoin never
    /// triggers another).
    fn rejoin_if_wedged(&mut self) {
        if !self.rejoin.swap(false, Ordering::SeqCst) {
            return;
        }
        tracing::warn!("the rebalance handed back the same partitions: leaving and joining the group again");
        self.engine.metrics.kafka_rejoins.inc();
        self.consumer.unsubscribe();
        // Serve the revocation (every owned partition commits) before joining again.
        let _ = self.consumer.poll(Duration::from_millis(100));
        if let Err(e) = self.consumer.subscribe(&[&self.settings.events_topic]) {
            tracing::error!("subscribe again: {e}");
        }
    }

    /// One round: a batch of records handled per partition, idle partitions' timers fired,
    /// everything touched committed.
    fn round(&mut self) -> anyhow::Result<()> {
        let (consumer, owned, dead, engine, k, grace, batch_max) = (
            &self.consumer,
            &self.owned,
            &self.dead,
            &self.engine,
            &self.settings,
            self.grace,
            self.batch_max,
        );
        let last_commit = &mut self.last_commit;
        let self_changelog = &self.changelog;
        let (unflushed, unflushed_inputs, last_flush, checkpoint) = (
            &mut self.unflushed,
            &mut self.unflushed_inputs,
            &mut self.last_flush,
            self.checkpoint,
        );
        // Gather up to a batch: wait for the first record, take what else is already here.
        let mut msgs = Vec::new();
        let mut wait = Duration::from_millis(50);
        while msgs.len() < batch_max {
            match consumer.poll(wait) {
                Some(Ok(m)) => msgs.push(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!("consumer: {e}");
                    break;
                }
                None => break,
            }
            wait = Duration::ZERO;
        }
        let wall = chrono::Utc::now().timestamp_millis();
        let consumed = msgs.len();
        let mut by_part: BTreeMap<u16, Vec<rdkafka::message::OwnedMessage>> = BTreeMap::new();
        for m in msgs {
            by_part.entry(m.partition() as u16).or_default().push(m);
        }
        let mut o = owned.lock().expect("owned");
        let Owned {
            parts,
            windows,
            marks,
            last_ts,
            hi,
            asked,
            ..
        } = &mut *o;
        let mut dlq = Vec::new();
        let mut forward = Vec::new();
        let (partitioner, partitions) = (k.partitioner, self_changelog.partitions());
        let mut touched = Vec::new();
        for (p, part) in parts.iter_mut() {
            let records = by_part.remove(p).unwrap_or_default();
            if records.is_empty() {
                // Idle: timers due by now minus the grace fire on the wall clock, once the
                // partition has consumed everything the broker has (asked only when a timer
                // is due): a backlog is never overtaken by timers.
                let upto = wall - grace;
                let behind = hi.get(p).is_some_and(|h| (part.next_offset() as i64) < *h);
                let recently = asked.get(p).is_some_and(|t| t.elapsed() < Duration::from_millis(500));
                if part.next_due().is_some_and(|d| d <= upto) && !behind && !recently {
                    // The statistics say caught up; the broker confirms (at most twice a second).
                    asked.insert(*p, Instant::now());
                    let caught_up = consumer
                        .fetch_watermarks(&k.events_topic, *p as i32, Duration::from_secs(5))
                        .is_ok_and(|(_, high)| part.next_offset() as i64 >= high);
                    if caught_up && part.fire_idle(upto)? > 0 {
                        part.commit()?;
                    }
                }
                continue;
            }
            let window = windows.get_mut(p).expect("a window per owned partition");
            let marks = marks.entry(*p).or_default();
            let mut inputs = Vec::with_capacity(records.len());
            let mut last_offset = 0;
            for m in &records {
                last_offset = m.offset() as u64;
                let ts = m.timestamp().to_millis().unwrap_or(wall);
                last_ts.insert(*p, ts);
                match m.payload().map(Event::parse) {
                    Some(Ok(ev)) => {
                        let from = reroute::origin(m);
                        if from.is_none() {
                            let home = super::partitioner::home(partitioner, ev.user_id.as_bytes(), partitions);
                            if home != *p {
                                forward.push((home, m.clone()));
                                continue;
                            }
                        }
                        // A copy lands where it was sent (home, unless the members disagree on
                        // the partitioner): never forwarded again.
                        if let Some((source, offset)) = from {
                            if !marks.admit(source, offset) {
                                engine.metrics.events_rejected.with_label_values(&["duplicate"]).inc();
                                continue;
                            }
                            crate::storage::reroutes::put(&engine.store, part.staged(), *p, source, offset);
                        }
                        let h = id_hash(&ev.message_id);
                        if window.contains(h) {
                            engine.metrics.events_rejected.with_label_values(&["duplicate"]).inc();
                            continue;
                        }
                        window.insert(h);
                        inputs.push(Ok(LogRecord {
                            offset: m.offset() as u64,
                            received: ts,
                            event: ev,
                        }));
                    }
                    Some(Err(e)) => dlq.push((m.clone(), e.to_string(), crate::runtime::reject_label(&e))),
                    None => dlq.push((m.clone(), "empty record".to_owned(), "empty")),
                }
            }
            part.handle(inputs, wall)?;
            part.consumed_up_to(last_offset);
            touched.push(*p);
        }
        // Forwarded records are at home before the position that passes them is committed.
        if !forward.is_empty() {
            self.forwarder.forward(&forward)?;
            engine.metrics.kafka_rerouted.inc_by(forward.len() as u64);
        }
        // Dead letters are in their topic before the position that passes them is committed:
        // the records are already handled in memory, so a failed produce is retried here (the
        // broker is down; nothing else could move either) rather than left to a later round
        // that would commit past it.
        for (m, reason, label) in dlq {
            let mut pause = Duration::from_millis(200);
            while let Err(e) = dead_letter(dead, k, &m, &reason, label, &engine.metrics) {
                tracing::warn!("dead letter for offset {} not produced ({e}); retrying", m.offset());
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
        // Commit by checkpoint, as the embedded partitions do: once caught up (a short poll), or
        // every `engine.checkpoint_inputs` records or `checkpoint_interval`. A contact's many
        // events then reach the changelog as one state record, the broker's main cost. After a
        // crash the records since the last commit are consumed and handled again.
        unflushed.extend(touched.iter().copied());
        *unflushed_inputs += consumed;
        let due = consumed < batch_max
            || *unflushed_inputs >= checkpoint.inputs
            || last_flush.elapsed() >= checkpoint.interval;
        if due && !unflushed.is_empty() {
            // All pending partitions' changes go to the changelog together; each is written
            // locally once its own records are acknowledged.
            let flush: Vec<u16> = std::mem::take(unflushed)
                .into_iter()
                .filter(|p| parts.contains_key(p))
                .collect();
            let mut pending = Vec::with_capacity(flush.len());
            for p in &flush {
                let part = parts.get_mut(p).expect("owned");
                part.stage()?;
                pending.push(self_changelog.send(*p, part.staged()));
            }
            for (p, pend) in flush.iter().zip(pending) {
                let part = parts.get_mut(p).expect("owned");
                self_changelog.complete(pend, part.staged())?;
                part.write_staged()?;
            }
            *unflushed_inputs = 0;
            *last_flush = Instant::now();
        }
        // Advisory offsets for lag tooling, once a second; the truth is in RocksDB.
        if last_commit.elapsed() > Duration::from_secs(1) && !parts.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, part) in parts.iter() {
                if part.next_offset() > 0 {
                    tpl.add_partition_offset(&k.events_topic, *p as i32, Offset::Offset(part.next_offset() as i64))?;
                }
            }
            if tpl.count() > 0 {
                let _ = consumer.commit(&tpl, CommitMode::Async);
            }
            *last_commit = Instant::now();
        }
        Ok(())
    }
}
