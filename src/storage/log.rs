//! The embedded durable log: the single-machine event source. Events are partitioned by contact
//! id, stamped with the time they were received, and appended with an fsynced write before the
//! append returns; a repeated `messageId` is dropped.

use super::{CF_DEDUP, CF_LOG, Result, Store, StoreError};
use crate::event::Event;
use crate::time::Ts;
use rocksdb::WriteBatch;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

const RECORD_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub offset: u64,
    pub received: Ts,
    pub event: Event,
}

pub fn partition_of(contact: &str, partitions: u16) -> u16 {
    (xxhash_rust::xxh3::xxh3_64(contact.as_bytes()) % partitions as u64) as u16
}

fn key(partition: u16, offset: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&partition.to_be_bytes());
    k[2..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn encode(received: Ts, ev: &Event) -> Vec<u8> {
    let mut v = vec![RECORD_FORMAT];
    v.extend_from_slice(&received.to_be_bytes());
    postcard::to_extend(ev, v).expect("event encodes")
}

fn decode(offset: u64, b: &[u8]) -> Result<LogRecord> {
    let corrupt = |r: String| StoreError::Corrupt {
        table: CF_LOG,
        reason: format!("offset {offset}: {r}"),
    };
    if b.first() != Some(&RECORD_FORMAT) || b.len() < 9 {
        return Err(corrupt("unknown record format".into()));
    }
    let received = i64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
    let event = postcard::from_bytes(&b[9..]).map_err(|e| corrupt(e.to_string()))?;
    Ok(LogRecord {
        offset,
        received,
        event,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Partition and offset.
    At(u16, u64),
    Duplicate,
}

pub struct EmbeddedLog {
    store: Arc<Store>,
    partitions: u16,
    /// Next offset per partition; the lock also orders appends.
    next: Mutex<Vec<u64>>,
}

impl EmbeddedLog {
    pub fn open(store: Arc<Store>, partitions: u16) -> Result<Self> {
        let mut next = vec![0; partitions as usize];
        for (p, n) in next.iter_mut().enumerate() {
            let upper = key(p as u16, u64::MAX);
            let mut it = store.db.raw_iterator_cf(store.cf(CF_LOG));
            it.seek_for_prev(upper);
            if let Some(k) = it.key() {
                if k.len() == 10 && k[..2] == (p as u16).to_be_bytes() {
                    *n = u64::from_be_bytes(k[2..].try_into().expect("8 bytes")) + 1;
                }
            }
            it.status()?;
        }
        Ok(EmbeddedLog {
            store,
            partitions,
            next: Mutex::new(next),
        })
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Appends valid events durably, in order, dropping repeated message ids (within the batch
    /// and against everything appended before). Returns one result per event.
    pub fn append(&self, events: &[Event], received: Ts) -> Result<Vec<Appended>> {
        let s = &self.store;
        let mut next = self.next.lock().expect("log lock");
        let mut batch = WriteBatch::default();
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(events.len());
        let mut staged = next.clone();
        for ev in events {
            let dup = !seen.insert(ev.message_id.as_str())
                || s.db.get_pinned_cf(s.cf(CF_DEDUP), ev.message_id.as_bytes())?.is_some();
            if dup {
                out.push(Appended::Duplicate);
                continue;
            }
            let p = partition_of(&ev.user_id, self.partitions);
            let off = staged[p as usize];
            staged[p as usize] += 1;
            batch.put_cf(s.cf(CF_LOG), key(p, off), encode(received, ev));
            batch.put_cf(s.cf(CF_DEDUP), ev.message_id.as_bytes(), []);
            out.push(Appended::At(p, off));
        }
        if !batch.is_empty() {
            s.write(batch, true)?;
        }
        *next = staged;
        Ok(out)
    }

    /// Up to `limit` records of `partition` from `from` (inclusive).
    pub fn read(&self, partition: u16, from: u64, limit: usize) -> Result<Vec<LogRecord>> {
        read(&self.store, partition, from, limit)
    }
}

pub fn read(s: &Store, partition: u16, from: u64, limit: usize) -> Result<Vec<LogRecord>> {
    let mut out = Vec::with_capacity(limit.min(4096));
    let start = key(partition, from);
    for r in s.db.iterator_cf(
        s.cf(CF_LOG),
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    ) {
        let (k, v) = r?;
        if k.len() != 10 || k[..2] != partition.to_be_bytes() || out.len() >= limit {
            break;
        }
        let offset = u64::from_be_bytes(k[2..].try_into().expect("8 bytes"));
        out.push(decode(offset, &v)?);
    }
    Ok(out)
}
