//! Replay from Kafka: an events topic read from the beginning (or from a timestamp) up to the
//! end it had when the replay started, all partitions merged in record-timestamp order, and the
//! sent ledger as the changelog topic holds it (to report what was already sent).

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
        let (p, m) = self.merged.next()?;
        let m = match m {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        let t = m.timestamp().to_millis().unwrap_or(Ts::MIN);
        let at = || format!("partition {p} offset {}", m.offset());
        Some(Ok(match m.payload().map(Event::parse) {
            Some(Ok(ev)) => Record::Event(t, ev),
            Some(Err(e)) => Record::Bad(format!("{}: {e}", at())),
            None => Record::Bad(format!("{}: empty record", at())),
        }))
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
