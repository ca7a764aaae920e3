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
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What a record became.
pub enum Record {
    Event(Ts, Event),
    /// Unreadable: the reason, naming partition and offset.
    Bad(String),
}

struct Part {
    consumer: BaseConsumer,
    /// The next offset to hand out and the end (exclusive) fixed at the start.
    next: i64,
    end: i64,
    buffered: VecDeque<OwnedMessage>,
}

pub struct TopicHistory {
    parts: Vec<Part>,
    heap: BinaryHeap<std::cmp::Reverse<(Ts, usize)>>,
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
                consumer: c,
                next,
                end: high,
                buffered: VecDeque::new(),
            });
        }
        let mut h = TopicHistory {
            parts,
            heap: BinaryHeap::new(),
            total,
        };
        for p in 0..h.parts.len() {
            h.queue(p)?;
        }
        Ok(h)
    }

    /// Records to read, over all partitions.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Makes sure the partition's head is buffered (reading ahead a little) and queues it.
    fn queue(&mut self, p: usize) -> Result<(), KafkaError> {
        let part = &mut self.parts[p];
        while part.buffered.is_empty() && part.next < part.end {
            // Take what is already fetched, waiting for the first one.
            let mut wait = TIMEOUT;
            while part.buffered.len() < 512 && part.next < part.end {
                match part.consumer.poll(wait) {
                    Some(Ok(m)) => {
                        part.next = m.offset() + 1;
                        part.buffered.push_back(m.detach());
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None if wait.is_zero() => break,
                    None => {
                        return Err(KafkaError::Topic {
                            topic: String::new(),
                            reason: format!("partition {p}: no record at offset {} within {TIMEOUT:?}", part.next),
                        });
                    }
                }
                wait = Duration::ZERO;
            }
        }
        if let Some(m) = part.buffered.front() {
            let t = m.timestamp().to_millis().unwrap_or(Ts::MIN);
            self.heap.push(std::cmp::Reverse((t, p)));
        }
        Ok(())
    }
}

impl Iterator for TopicHistory {
    type Item = Result<Record, KafkaError>;

    fn next(&mut self) -> Option<Self::Item> {
        let std::cmp::Reverse((t, p)) = self.heap.pop()?;
        let m = self.parts[p]
            .buffered
            .pop_front()
            .expect("queued partitions have a head");
        if let Err(e) = self.queue(p) {
            return Some(Err(e));
        }
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
