//! Replay from Kafka: an events topic read from the beginning (or from a timestamp) up to the
//! end it had when the replay started, all partitions merged in record-timestamp order, and the
//! sent ledger as the changelog topic holds it (to report what was already sent).
//!
//! A record the consumer group forwarded to its contact's home partition (see
//! [`super::reroute`]) is read once, as the group handled it: its first copy, at the copy's
//! timestamp. An original away from home is read itself only where no copy can be relied on:
//! at or after the offset the group last committed for its partition (`kafka.group_id`), since
//! the group forwards a record before it commits past it; a copy of it met later is skipped.

use super::{KafkaError, client_config};
use crate::config::KafkaSettings;
use crate::event::Event;
use crate::time::Ts;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What a record became.
pub enum Record {
    Event(Ts, Event),
    /// Unreadable: the reason, naming partition and offset.
    Bad(String),
}

/// One partition of the topic, read up to the end it had when the replay started.
struct Part {
    index: usize,
    consumer: BaseConsumer,
    /// The next offset to hand out and the end (exclusive) fixed at the start.
    next: i64,
    end: i64,
}

/// A partition's next record, or why it could not be read.
type Head = (usize, Result<OwnedMessage, KafkaError>);

/// Record timestamp, then partition; an error sorts first, so it is reported at once.
fn before(a: &Head, b: &Head) -> bool {
    let order = |h: &Head| match &h.1 {
        Ok(m) => (m.timestamp().to_millis().unwrap_or(Ts::MIN), h.0),
        Err(_) => (Ts::MIN, h.0),
    };
    order(a) < order(b)
}

pub struct TopicHistory {
    merged: itertools::KMergeBy<Part, fn(&Head, &Head) -> bool>,
    total: u64,
    partitioner: crate::config::Partitioner,
    partitions: usize,
    /// Per partition, the offset below which every record away from home has been forwarded.
    forwarded_below: Vec<i64>,
    /// The (source partition, offset) of every record away from home read so far.
    read: std::collections::HashSet<(u16, u64)>,
}

/// The offsets the consumer group last committed on `topic` (0 where it committed none).
fn committed(k: &KafkaSettings, topic: &str, n: usize) -> Vec<i64> {
    let ask = || -> Result<Vec<i64>, KafkaError> {
        let mut cfg = client_config(k);
        cfg.set("group.id", &k.group_id).set("enable.auto.commit", "false");
        let c: BaseConsumer = cfg.create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(topic, p as i32);
        }
        let found = c.committed_offsets(tpl, TIMEOUT)?;
        Ok((0..n)
            .map(|p| match found.find_partition(topic, p as i32).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect())
    };
    ask().unwrap_or_else(|e| {
        tracing::warn!(
            "offsets of group {} not read ({e}): records away from home are read as originals",
            k.group_id
        );
        vec![0; n]
    })
}

fn consumer(k: &KafkaSettings, purpose: &str) -> Result<BaseConsumer, KafkaError> {
    let mut cfg = client_config(k);
    cfg.set("group.id", format!("{}.{purpose}", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    Ok(cfg.create()?)
}

impl TopicHistory {
    /// Every partition of `topic` from its start (or the first record at or after `from`) to
    /// its current end.
    pub fn open(k: &KafkaSettings, topic: &str, from: Option<Ts>) -> Result<TopicHistory, KafkaError> {
        let probe = consumer(k, "replay")?;
        let n = super::partition_count(probe.client(), topic)?;
        let starts: Vec<Option<i64>> = match from {
            None => (0..n).map(|_| None).collect(),
            Some(ts) => {
                let mut tpl = TopicPartitionList::new();
                for p in 0..n {
                    tpl.add_partition_offset(topic, p as i32, Offset::Offset(ts))?;
                }
                let found = probe.offsets_for_times(tpl, TIMEOUT)?;
                (0..n)
                    .map(|p| match found.find_partition(topic, p as i32).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Some(o),
                        // No record at or after `from`: nothing to read there.
                        _ => Some(i64::MAX),
                    })
                    .collect()
            }
        };
        let mut parts = Vec::with_capacity(n);
        let mut total = 0;
        for (p, start) in starts.into_iter().enumerate() {
            let c = consumer(k, "replay")?;
            let (low, high) = c.fetch_watermarks(topic, p as i32, TIMEOUT)?;
            let next = start.unwrap_or(low).max(low).min(high);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(next))?;
            c.assign(&tpl)?;
            total += (high - next) as u64;
            parts.push(Part {
                index: p,
                consumer: c,
                next,
                end: high,
            });
        }
        Ok(TopicHistory {
            merged: itertools::kmerge_by(parts, before as fn(&Head, &Head) -> bool),
            total,
            partitioner: k.partitioner,
            partitions: n,
            forwarded_below: committed(k, topic, n),
            read: Default::default(),
        })
    }

    /// Records to read, over all partitions.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Iterator for Part {
    type Item = Head;

    fn next(&mut self) -> Option<Head> {
        if self.next >= self.end {
            return None;
        }
        let p = self.index;
        // The consumer fetches ahead: this waits only when nothing is fetched yet.
        let head = match self.consumer.poll(TIMEOUT) {
            Some(Ok(m)) => {
                self.next = m.offset() + 1;
                Ok(m.detach())
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(KafkaError::Topic {
                topic: String::new(),
                reason: format!("partition {p}: no record at offset {} within {TIMEOUT:?}", self.next),
            }),
        };
        if head.is_err() {
            // Reported once; the partition ends there.
            self.next = self.end;
        }
        Some((p, head))
    }
}

impl Iterator for TopicHistory {
    type Item = Result<Record, KafkaError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (p, m) = match self.merged.next()? {
                (p, Ok(m)) => (p, m),
                (_, Err(e)) => return Some(Err(e)),
            };
            let parsed = m.payload().map(Event::parse);
            if let Some(Ok(ev)) = &parsed
                && !self.first_reading(p, &m, ev)
            {
                continue;
            }
            let t = m.timestamp().to_millis().unwrap_or(Ts::MIN);
            let at = || format!("partition {p} offset {}", m.offset());
            return Some(Ok(match parsed {
                Some(Ok(ev)) => Record::Event(t, ev),
                Some(Err(e)) => Record::Bad(format!("{}: {e}", at())),
                None => Record::Bad(format!("{}: empty record", at())),
            }));
        }
    }
}

impl TopicHistory {
    /// Whether this record is read: not a repeat of a forwarded record already read, and not an
    /// original whose copy the group has forwarded (see the module's notes).
    fn first_reading(&mut self, p: usize, m: &OwnedMessage, ev: &Event) -> bool {
        if let Some(source) = super::reroute::origin(m) {
            return self.read.insert(source);
        }
        let home = super::partitioner::home(self.partitioner, ev.user_id.as_bytes(), self.partitions);
        if usize::from(home) == p {
            return true;
        }
        m.offset() >= self.forwarded_below[p] && self.read.insert((p as u16, m.offset() as u64))
    }
}

/// The send ids in the changelog's sent ledger (the last change of each key wins).
pub fn sent_ledger(k: &KafkaSettings) -> Result<std::collections::HashSet<u128>, KafkaError> {
    let topic = &k.changelog_topic;
    let probe = consumer(k, "replay-ledger")?;
    let n = super::partition_count(probe.client(), topic)?;
    let mut sent = std::collections::HashSet::new();
    for p in 0..n {
        let c = consumer(k, "replay-ledger")?;
        let (low, high) = c.fetch_watermarks(topic, p as i32, TIMEOUT)?;
        if low >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(low))?;
        c.assign(&tpl)?;
        let mut next = low;
        while next < high {
            let m = match c.poll(TIMEOUT) {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.into()),
                None => break,
            };
            next = m.offset() + 1;
            let Some(id) = m.key().and_then(|k| k.strip_prefix(b"sent\0")) else {
                continue;
            };
            let Ok(id) = <[u8; 16]>::try_from(id) else {
                continue;
            };
            let id = u128::from_be_bytes(id);
            if m.payload().is_some() {
                sent.insert(id);
            } else {
                sent.remove(&id);
            }
        }
    }
    Ok(sent)
}
