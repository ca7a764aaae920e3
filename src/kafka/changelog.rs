//! The changelog: every batch a partition commits (and every sent-ledger update the mailer makes
//! for it) is published to the changelog topic's partition of the same number, and acknowledged,
//! before it is written locally. Whatever an instance can see or send is therefore already in
//! the changelog, and a new owner restores a partition by applying it.
//!
//! A record mirrors one RocksDB write: key = table name, a zero byte, the table's own key; value
//! = the table's value, or none (a tombstone) for a delete, so compaction keeps the latest of
//! each key. Contacts are the exception: their records are named `contacts` and keyed by id
//! alone, however the store keys them, so a restoring store keys them its own way (and a
//! changelog written before contacts were keyed by partition reads the same). A contact's
//! records are all on its home partition (see [`super::partitioner`]); one found on another
//! partition (written before records were routed home) is counted, and restored only if its
//! state is newer than the one the store holds ([`ContactState::last_change`], then the bytes),
//! so a stale copy never replaces the state; the home partition's own records always apply (no
//! other partition writes the contact any more). Each instance
//! remembers, per partition, the last changelog offset its store holds (a local-only key in
//! `positions`); restoring applies only what came after it.

use super::{KafkaError, client_config, producer_config};
use crate::config::KafkaSettings;
use crate::machine::ContactState;
use crate::metrics::Metrics;
use crate::storage::hook::CommitHook;
use crate::storage::{CF_CONTACTS, CF_POSITIONS, CF_TIMERS, Result, Store, StoreError};
use crate::storage::{tables, timers};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use rocksdb::{WriteBatch, WriteBatchIteratorCf};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

pub struct Changelog {
    producer: FutureProducer,
    settings: KafkaSettings,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// RocksDB column family id → table name, learnt once from a probe batch.
    tables: HashMap<u32, &'static str>,
    owned: Vec<AtomicBool>,
    /// Highest changelog offset this store holds, per partition.
    checkpoints: Vec<AtomicI64>,
}

impl Changelog {
    /// The events topic's (and this changelog's) partition count.
    pub fn partitions(&self) -> usize {
        self.owned.len()
    }
}

fn checkpoint_key(partition: u16) -> [u8; 3] {
    let p = partition.to_be_bytes();
    [b'c', p[0], p[1]]
}

/// The name contact records go by ([`CF_CONTACTS`]'s records).
const CONTACTS_RECORD: &str = "contacts";

/// The table a record's name stands for.
fn table_of(name: &[u8]) -> Option<&'static str> {
    if name == CONTACTS_RECORD.as_bytes() {
        return Some(CF_CONTACTS);
    }
    crate::storage::mirrored().find(|n| *n != CF_CONTACTS && n.as_bytes() == name)
}

/// Collects a batch's writes to the mirrored tables.
struct Collect<'a> {
    tables: &'a HashMap<u32, &'static str>,
    store: &'a Store,
    out: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Collect<'_> {
    fn record(&mut self, cf: u32, key: &[u8], value: Option<&[u8]>) {
        // Pending timers are not published: every one is listed in its contact's state, and a
        // restore derives them from the restored contacts (a third fewer records per event).
        if let Some(name) = self.tables.get(&cf).filter(|n| **n != CF_TIMERS) {
            let (name, key) = match *name {
                CF_CONTACTS => (CONTACTS_RECORD, tables::contact_id_of(self.store, key)),
                other => (other, key),
            };
            let mut k = Vec::with_capacity(name.len() + 1 + key.len());
            k.extend_from_slice(name.as_bytes());
            k.push(0);
            k.extend_from_slice(key);
            self.out.push((k, value.map(<[u8]>::to_vec)));
        }
    }
}

/// Only the last change of each key: a batch that spans a checkpoint often writes a key more
/// than once (a timer scheduled then fired, an outbox entry put then sent), and compaction would
/// keep only the last anyway. Order among the kept changes is their order in the batch.
fn last_per_key(out: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(out.len());
    for (i, (k, _)) in out.iter().enumerate() {
        last.insert(k.as_slice(), i);
    }
    if last.len() == out.len() {
        return out;
    }
    let keep: Vec<bool> = (0..out.len()).map(|i| last[out[i].0.as_slice()] == i).collect();
    out.into_iter().zip(keep).filter_map(|(r, k)| k.then_some(r)).collect()
}

/// RocksDB column family id → mirrored table. The ids are not exposed by the bindings: a probe
/// batch with one put per table reveals them through the iterator.
fn table_ids(store: &Store) -> HashMap<u32, &'static str> {
    let mut probe = WriteBatch::default();
    for name in crate::storage::mirrored() {
        probe.put_cf(store.cf(name), name.as_bytes(), []);
    }
    struct Ids(HashMap<u32, &'static str>);
    impl WriteBatchIteratorCf for Ids {
        fn put_cf(&mut self, cf: u32, key: &[u8], _: &[u8]) {
            if let Some(name) = crate::storage::mirrored().find(|n| n.as_bytes() == key) {
                self.0.insert(cf, name);
            }
        }
        fn delete_cf(&mut self, _: u32, _: &[u8]) {}
        fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
    }
    let mut ids = Ids(HashMap::new());
    probe.iterate_cf(&mut ids);
    ids.0
}

/// A batch's changelog records: the last change of each mirrored key.
fn records(tables: &HashMap<u32, &'static str>, store: &Store, batch: &WriteBatch) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut c = Collect {
        tables,
        store,
        out: Vec::with_capacity(batch.len()),
    };
    batch.iterate_cf(&mut c);
    last_per_key(c.out)
}

impl WriteBatchIteratorCf for Collect<'_> {
    fn put_cf(&mut self, cf: u32, key: &[u8], value: &[u8]) {
        self.record(cf, key, Some(value));
    }
    fn delete_cf(&mut self, cf: u32, key: &[u8]) {
        self.record(cf, key, None);
    }
    fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
}

impl Changelog {
    pub fn new(
        settings: &KafkaSettings,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        partitions: usize,
    ) -> std::result::Result<Self, KafkaError> {
        let checkpoints = (0..partitions)
            .map(|p| {
                let stored = store
                    .db
                    .get_cf(store.cf(CF_POSITIONS), checkpoint_key(p as u16))
                    .ok()
                    .flatten()
                    .and_then(|v| v.try_into().ok().map(i64::from_be_bytes))
                    .unwrap_or(-1);
                AtomicI64::new(stored)
            })
            .collect();
        Ok(Changelog {
            producer: producer_config(settings).create()?,
            settings: settings.clone(),
            tables: table_ids(&store),
            store,
            metrics,
            owned: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
            checkpoints,
        })
    }

    /// The changelog must mirror the events topic partition for partition; the dead-letter
    /// topic must exist.
    pub fn check_topics(&self, events_partitions: usize) -> std::result::Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        let client = self.producer.client();
        let n = super::partition_count(client, &self.settings.changelog_topic)?;
        if n != events_partitions {
            return Err(KafkaError::Topic {
                topic: self.settings.changelog_topic.clone(),
                reason: format!("has {n} partitions; it needs the events topic's {events_partitions}"),
            });
        }
        super::partition_count(client, &self.settings.dead_letter_topic)?;
        Ok(())
    }

    pub fn set_owned(&self, partition: u16, owned: bool) {
        if let Some(o) = self.owned.get(partition as usize) {
            o.store(owned, Ordering::SeqCst);
        }
        let n = self.owned.iter().filter(|o| o.load(Ordering::SeqCst)).count();
        self.metrics.kafka_assigned_partitions.set(n as i64);
    }

    pub fn owned_count(&self) -> usize {
        self.owned.iter().filter(|o| o.load(Ordering::SeqCst)).count()
    }

    /// Brings the local store up to the changelog's end for `partition` (a no-op when this
    /// store wrote or applied everything there is). Returns the records applied.
    pub fn restore(&self, partition: u16) -> std::result::Result<u64, KafkaError> {
        let started = Instant::now();
        let topic = &self.settings.changelog_topic;
        let mut cfg = client_config(&self.settings);
        cfg.set("group.id", format!("{}.restore", self.settings.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let consumer: BaseConsumer = cfg.create()?;
        let (low, high) = consumer.fetch_watermarks(topic, partition as i32, Duration::from_secs(10))?;
        let held = self.checkpoints[partition as usize].load(Ordering::SeqCst);
        let from = (held + 1).max(low);
        if from >= high {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        let (mut applied, mut last) = (0u64, from - 1);
        // A contact's tombstone: an erasure. Its earlier records were just written here too,
        // so the store is compacted afterwards (see `storage::erasures`).
        let mut tombstones = false;
        let mut batch = WriteBatch::default();
        let mut before: HashMap<String, Vec<crate::machine::state::Timer>> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while last + 1 < high {
            if Instant::now() > deadline {
                return Err(KafkaError::Topic {
                    topic: topic.clone(),
                    reason: format!("restore of partition {partition} stalled at offset {last} of {high}"),
                });
            }
            let Some(m) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let m = match m {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            last = m.offset();
            let key = m.key().unwrap_or_default();
            let Some(z) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let Some(name) = table_of(&key[..z]) else {
                continue;
            };
            if name == CF_CONTACTS {
                // The contact's pending timers as this store has them, before the first of its
                // records applies: they are replaced by those of its restored state at the end.
                let id = String::from_utf8_lossy(&key[z + 1..]).into_owned();
                if !before.contains_key(&id) {
                    let timers = tables::get_contact(&self.store, &id)
                        .map_err(store_err)?
                        .map(|st| st.timers)
                        .unwrap_or_default();
                    before.insert(id.clone(), timers);
                }
                match m.payload() {
                    Some(v) if !self.is_home(partition, &id) => {
                        // Compared with the store's state, which must hold what came before.
                        self.apply(partition, &mut batch, last - 1).map_err(store_err)?;
                        if self.foreign_is_newer(partition, &id, v).map_err(store_err)? {
                            tables::put_contact_raw(&self.store, &mut batch, &id, v);
                        }
                    }
                    Some(v) => tables::put_contact_raw(&self.store, &mut batch, &id, v),
                    None => {
                        tables::delete_contact(&self.store, &mut batch, &id);
                        tombstones = true;
                    }
                }
            } else {
                let cf = self.store.cf(name);
                match m.payload() {
                    Some(v) => batch.put_cf(cf, &key[z + 1..], v),
                    None => batch.delete_cf(cf, &key[z + 1..]),
                }
            }
            applied += 1;
            if batch.len() >= 4096 {
                self.apply(partition, &mut batch, last).map_err(store_err)?;
            }
            self.metrics.kafka_restore_records.inc();
        }
        if tombstones {
            crate::storage::erasures::owe_compaction(&self.store, &mut batch);
        }
        self.apply(partition, &mut batch, last).map_err(store_err)?;
        self.rebuild_timers(partition, before).map_err(store_err)?;
        // A changelog written before outbox keys carried the decision time restores keys of
        // the earlier layout (its puts and deletes cancel as written); the rest are rewritten.
        tables::upgrade_outbox_keys(&self.store).map_err(store_err)?;
        self.metrics
            .kafka_restore_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            "partition {partition}: restored {applied} changelog records ({from}..{high}) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(applied)
    }

    fn is_home(&self, partition: u16, contact: &str) -> bool {
        super::partitioner::home(self.settings.partitioner, contact.as_bytes(), self.partitions()) == partition
    }

    /// A contact record met on another partition than the contact's home: reported, and
    /// whether its state is the newer of it and the store's.
    fn foreign_is_newer(&self, partition: u16, contact: &str, encoded: &[u8]) -> Result<bool> {
        self.metrics.kafka_changelog_foreign.inc();
        let theirs = ContactState::decode(encoded).map_err(|e| StoreError::Corrupt {
            table: CF_CONTACTS,
            reason: e.to_string(),
        })?;
        let newer = match tables::get_contact(&self.store, contact)? {
            None => true,
            Some(ours) => (theirs.last_change(), encoded) > (ours.last_change(), &ours.encode()[..]),
        };
        tracing::warn!(
            "partition {partition}: contact {contact:?} has a record here but its home is another partition; {}",
            if newer {
                "restored (newer than the store's)"
            } else {
                "skipped (the store's is newer)"
            }
        );
        Ok(newer)
    }

    /// The timers table of the restored contacts: their old entries out, those of their
    /// restored state in (a contact erased by a tombstone keeps none).
    fn rebuild_timers(&self, partition: u16, before: HashMap<String, Vec<crate::machine::state::Timer>>) -> Result<()> {
        let cf = self.store.cf(CF_TIMERS);
        let mut batch = WriteBatch::default();
        for (contact, old) in before {
            let key = |t: &crate::machine::state::Timer| {
                timers::encode(
                    partition,
                    &timers::TimerKey {
                        due: t.due,
                        contact: contact.clone(),
                        id: t.id,
                    },
                )
            };
            for t in &old {
                batch.delete_cf(cf, key(t));
            }
            if let Some(st) = tables::get_contact(&self.store, &contact)? {
                for t in &st.timers {
                    batch.put_cf(cf, key(t), []);
                }
            }
        }
        self.store.write(batch, true)
    }

    fn apply(&self, partition: u16, batch: &mut WriteBatch, last: i64) -> Result<()> {
        self.note_checkpoint(partition, batch, last);
        self.store.write(std::mem::take(batch), true)
    }

    fn note_checkpoint(&self, partition: u16, batch: &mut WriteBatch, offset: i64) {
        let c = &self.checkpoints[partition as usize];
        let held = c.fetch_max(offset, Ordering::SeqCst).max(offset);
        batch.put_cf(
            self.store.cf(CF_POSITIONS),
            checkpoint_key(partition),
            held.to_be_bytes(),
        );
    }
}

fn store_err(e: StoreError) -> KafkaError {
    KafkaError::Topic {
        topic: "changelog".into(),
        reason: e.to_string(),
    }
}

/// Records of one batch on their way to the changelog.
pub struct Pending {
    partition: u16,
    started: Instant,
    deliveries: Vec<std::result::Result<rdkafka::producer::DeliveryFuture, rdkafka::error::KafkaError>>,
}

impl Changelog {
    /// Sends a batch's changes to the changelog without waiting: several partitions' batches
    /// are then in flight together, and [`Changelog::complete`] waits for each.
    pub fn send(&self, partition: u16, batch: &WriteBatch) -> Pending {
        let records = records(&self.tables, &self.store, batch);
        self.metrics.kafka_changelog_records.inc_by(records.len() as u64);
        let topic = self.settings.changelog_topic.as_str();
        let deliveries = records
            .iter()
            .map(|(k, v)| {
                let mut r = FutureRecord::<[u8], [u8]>::to(topic)
                    .partition(partition as i32)
                    .key(&k[..]);
                if let Some(v) = v {
                    r = r.payload(&v[..]);
                }
                self.producer.send_result(r).map_err(|(e, _)| e)
            })
            .collect();
        Pending {
            partition,
            started: Instant::now(),
            deliveries,
        }
    }

    /// Waits until every record of the batch is acknowledged, then notes the changelog
    /// offset reached in the batch (a local-only key) for the restore to start after.
    pub fn complete(&self, pending: Pending, batch: &mut WriteBatch) -> Result<()> {
        if pending.deliveries.is_empty() {
            return Ok(());
        }
        let mut last = -1;
        for d in pending.deliveries {
            let delivered = d.map_err(|e| StoreError::Changelog(e.to_string())).and_then(|f| {
                futures::executor::block_on(f).map_err(|_| StoreError::Changelog("producer gone".into()))
            })?;
            let d = delivered.map_err(|(e, _)| StoreError::Changelog(e.to_string()))?;
            last = last.max(d.offset);
        }
        self.metrics
            .kafka_changelog_produce
            .observe(pending.started.elapsed().as_secs_f64());
        self.note_checkpoint(pending.partition, batch, last);
        Ok(())
    }
}

impl CommitHook for Changelog {
    fn publish(&self, partition: u16, batch: &mut WriteBatch) -> Result<()> {
        let pending = self.send(partition, batch);
        self.complete(pending, batch)
    }

    fn share(&self) -> f64 {
        self.owned_count() as f64 / self.owned.len().max(1) as f64
    }

    fn owns(&self, partition: u16) -> bool {
        self.owned
            .get(partition as usize)
            .is_some_and(|o| o.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::CF_OUTBOX;

    /// A contact's record is named `contacts` and keyed by its id alone, whatever partition the
    /// store keys it under: the form changelogs had before, which any store restores its own way.
    #[test]
    fn contact_records_are_keyed_by_id_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_partitioned(dir.path(), 8).unwrap();
        let mut st = crate::machine::ContactState::default();
        Arc::make_mut(&mut st.traits).insert("plan".into(), crate::value::Value::from("pro"));
        let mut b = WriteBatch::default();
        tables::put_contact(&store, &mut b, "ann", &st);
        tables::delete_contact(&store, &mut b, "bob");
        let got = records(&table_ids(&store), &store, &b);
        assert_eq!(
            got,
            vec![
                (b"contacts\0ann".to_vec(), Some(st.encode())),
                (b"contacts\0bob".to_vec(), None)
            ]
        );
        assert_eq!(table_of(b"contacts"), Some(CF_CONTACTS));
        assert_eq!(table_of(CF_CONTACTS.as_bytes()), None, "only the id-keyed name is read");
        assert_eq!(table_of(b"outbox"), Some(CF_OUTBOX));
    }
}
