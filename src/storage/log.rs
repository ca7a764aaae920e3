//! The embedded durable log: the single-machine event source. Events are partitioned by contact
//! id, stamped with the time they were received, and appended with an fsynced write before the
//! append returns; a `messageId` repeated within the dedup window is dropped.
//!
//! The window is the last N accepted events (as Segment dedups within a window, not forever):
//! their ids' 128-bit hashes are held in memory and rebuilt from the log's tail at open. A
//! dedup key per event in RocksDB cost a second memtable insert and a lookup per event and grew
//! without bound.

use super::{CF_LOG, Result, Store, StoreError};
use crate::event::{Event, EventKind};
use crate::time::Ts;
use rocksdb::WriteBatch;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;
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

fn encode_into(received: Ts, ev: &Event, out: &mut Vec<u8>) {
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&received.to_be_bytes());
    let buf = std::mem::take(out);
    *out = postcard::to_extend(ev, buf).expect("event encodes");
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

/// Message ids of the last `cap` accepted events, oldest evicted first.
pub struct Window {
    cap: usize,
    set: FxHashSet<u128>,
    order: VecDeque<u128>,
}

impl Window {
    pub fn new(cap: usize) -> Self {
        Window {
            cap,
            set: FxHashSet::default(),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, h: u128) -> bool {
        self.set.contains(&h)
    }

    pub fn insert(&mut self, h: u128) {
        if self.cap == 0 || !self.set.insert(h) {
            return;
        }
        self.order.push_back(h);
        if self.order.len() > self.cap {
            let old = self.order.pop_front().expect("non-empty");
            self.set.remove(&old);
        }
    }
}

pub fn id_hash(message_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(message_id.as_bytes())
}

struct State {
    /// Next offset per partition.
    next: Vec<u64>,
    window: Window,
    /// No record appended from now on is stamped earlier than this: raised by every append and
    /// by [`EmbeddedLog::seal`], so a partition that fired timers up to its wall clock can never
    /// later see an event stamped before them (live and replay then order them alike).
    floor: Ts,
}

pub struct EmbeddedLog {
    store: Arc<Store>,
    partitions: u16,
    /// The lock also orders appends.
    state: Mutex<State>,
    /// The latest records of each partition, as appended (already parsed): a partition that
    /// keeps up takes its input from here instead of reading and decoding it back from RocksDB.
    /// Bounded (`tail_cap` per partition, oldest dropped); RocksDB stays the source of truth.
    tails: Vec<Mutex<std::collections::VecDeque<LogRecord>>>,
    tail_cap: usize,
}

impl EmbeddedLog {
    /// Opens the log; `dedup_window` is how many of the latest accepted events' ids are
    /// remembered for dropping repeats.
    pub fn open(store: Arc<Store>, partitions: u16, dedup_window: usize) -> Result<Self> {
        let mut next = vec![0; partitions as usize];
        let mut floor = Ts::MIN;
        for (p, n) in next.iter_mut().enumerate() {
            let upper = key(p as u16, u64::MAX);
            let mut it = store.db.raw_iterator_cf(store.cf(CF_LOG));
            it.seek_for_prev(upper);
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k.len() == 10 && k[..2] == (p as u16).to_be_bytes() {
                    *n = u64::from_be_bytes(k[2..].try_into().expect("8 bytes")) + 1;
                    if let Some(stamp) = v.get(1..9) {
                        floor = floor.max(i64::from_be_bytes(stamp.try_into().expect("8 bytes")));
                    }
                }
            }
            it.status()?;
        }
        let window = rebuild_window(&store, &next, dedup_window)?;
        Ok(EmbeddedLog {
            store,
            partitions,
            state: Mutex::new(State { next, window, floor }),
            tails: (0..partitions).map(|_| Mutex::default()).collect(),
            tail_cap: 0,
        })
    }

    /// Keeps up to `cap` of the latest records per partition in memory for [`EmbeddedLog::take`]
    /// (0: none, e.g. when nothing in this process consumes the log).
    pub fn with_tail(mut self, cap: usize) -> Self {
        self.tail_cap = cap;
        self
    }

    /// Up to `limit` records of `partition` from offset `from`: from the in-memory tail when it
    /// holds `from`, else read back from RocksDB (up to where the tail begins).
    pub fn take(&self, partition: u16, from: u64, limit: usize) -> Result<Vec<Scanned>> {
        let mut limit = limit;
        if let Some(tail) = self.tails.get(partition as usize) {
            let mut tail = tail.lock().expect("tail lock");
            while tail.front().is_some_and(|r| r.offset < from) {
                tail.pop_front();
            }
            match tail.front() {
                Some(r) if r.offset == from => {
                    let n = limit.min(tail.len());
                    return Ok(tail.drain(..n).map(Ok).collect());
                }
                // A gap (the tail overflowed, or records from before this process): read the
                // gap from the store; the tail serves what follows it.
                Some(r) => limit = limit.min((r.offset - from) as usize),
                None => {}
            }
        }
        scan(&self.store, partition, from, limit)
    }

    /// Raises the floor to `wall` and returns the partition's end offset, atomically with
    /// appends: a partition that has consumed up to that end may fire timers up to `wall`.
    pub fn seal(&self, partition: u16, wall: Ts) -> u64 {
        let mut state = self.state.lock().expect("log lock");
        state.floor = state.floor.max(wall);
        state.next[partition as usize]
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The offset the next record of each partition will get.
    pub fn next_offsets(&self) -> Vec<u64> {
        self.state.lock().expect("log lock").next.clone()
    }

    /// Appends valid events received at `received` durably (fsynced), in order, dropping
    /// message ids repeated within the batch or the dedup window. One result per event.
    pub fn append(&self, events: Vec<Event>, received: Ts) -> Result<Vec<Appended>> {
        let stamps = vec![received; events.len()];
        self.append_at(events, &stamps, true)
    }

    /// As [`EmbeddedLog::append`] with a stamp per event (replay keeps the original ones);
    /// `sync: false` leaves the fsync to the caller (replay syncs once at the end). A stamp below
    /// the floor is raised to it, so stamps never go backwards.
    pub fn append_at(&self, events: Vec<Event>, stamps: &[Ts], sync: bool) -> Result<Vec<Appended>> {
        debug_assert_eq!(events.len(), stamps.len());
        let s = &self.store;
        let mut state = self.state.lock().expect("log lock");
        let mut floor = state.floor;
        let mut batch = WriteBatch::default();
        let mut in_batch = FxHashSet::with_capacity_and_hasher(events.len(), Default::default());
        let mut out = Vec::with_capacity(events.len());
        let mut staged = state.next.clone();
        let cf = s.cf(CF_LOG);
        // Per appended event: its key, index and stamp; its id's hash for the window.
        let mut records = Vec::with_capacity(events.len());
        let mut hashes = Vec::with_capacity(events.len());
        for (i, (ev, &stamp)) in events.iter().zip(stamps).enumerate() {
            let h = id_hash(&ev.message_id);
            if state.window.contains(h) || !in_batch.insert(h) {
                out.push(Appended::Duplicate);
                continue;
            }
            floor = floor.max(stamp);
            let p = partition_of(&ev.user_id, self.partitions);
            let off = staged[p as usize];
            staged[p as usize] += 1;
            records.push((key(p, off), i, floor));
            hashes.push(h);
            out.push(Appended::At(p, off));
        }
        // In key order: the memtable inserts each record next to the previous one instead of
        // searching its skiplist from the top for every partition switch. Encoded into one
        // buffer (the batch copies it).
        records.sort_unstable_by_key(|r| r.0);
        let mut buf = Vec::with_capacity(256);
        for (k, i, received) in &records {
            buf.clear();
            encode_into(*received, &events[*i], &mut buf);
            batch.put_cf(cf, k, &buf);
        }
        if !batch.is_empty() {
            s.write(batch, sync)?;
        }
        state.floor = floor;
        // Only what is durable joins the window (a failed write leaves it as it was) and the
        // tails, in offset order (still under the lock that orders appends).
        for h in hashes {
            state.window.insert(h);
        }
        if self.tail_cap > 0 {
            let mut received = vec![0; events.len()];
            for &(_, i, stamp) in &records {
                received[i] = stamp;
            }
            for (i, (ev, a)) in events.into_iter().zip(&out).enumerate() {
                if let Appended::At(p, offset) = *a {
                    let mut tail = self.tails[p as usize].lock().expect("tail lock");
                    tail.push_back(LogRecord {
                        offset,
                        received: received[i],
                        event: ev,
                    });
                    if tail.len() > self.tail_cap {
                        tail.pop_front();
                    }
                }
            }
        }
        state.next = staged;
        Ok(out)
    }

    /// Up to `limit` records of `partition` from `from` (inclusive).
    pub fn read(&self, partition: u16, from: u64, limit: usize) -> Result<Vec<LogRecord>> {
        read(&self.store, partition, from, limit)
    }
}

/// The ids of the latest `cap` events (spread evenly over the partitions), read from the tail of
/// each partition without decoding whole events.
fn rebuild_window(s: &Store, next: &[u64], cap: usize) -> Result<Window> {
    let mut w = Window::new(cap);
    let per = cap.div_ceil(next.len().max(1)) as u64;
    for (p, &end) in next.iter().enumerate() {
        let start = end.saturating_sub(per);
        let it = s.db.iterator_cf(
            s.cf(CF_LOG),
            rocksdb::IteratorMode::From(&key(p as u16, start), rocksdb::Direction::Forward),
        );
        for r in it {
            let (k, v) = r?;
            if k.len() != 10 || k[..2] != (p as u16).to_be_bytes() {
                break;
            }
            // postcard writes fields in order: kind, user id, message id come first.
            let (_, _, id): (EventKind, &str, &str) = v
                .get(9..)
                .and_then(|b| postcard::take_from_bytes(b).ok())
                .map(|(head, _)| head)
                .ok_or_else(|| StoreError::Corrupt {
                    table: CF_LOG,
                    reason: format!("partition {p}: unreadable record head"),
                })?;
            w.insert(id_hash(id));
        }
    }
    Ok(w)
}

/// A stored record, or why it cannot be read (it is skipped and dead-lettered, never fatal).
pub type Scanned = std::result::Result<LogRecord, Unreadable>;

#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub offset: u64,
    pub reason: String,
    pub bytes: Vec<u8>,
}

/// Up to `limit` records of `partition` from offset `from` (inclusive). A record that does not
/// decode comes back as [`Unreadable`] in its place; only a storage failure is an error.
pub fn scan(s: &Store, partition: u16, from: u64, limit: usize) -> Result<Vec<Scanned>> {
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
        out.push(decode(offset, &v).map_err(|e| Unreadable {
            offset,
            reason: e.to_string(),
            bytes: v.to_vec(),
        }));
    }
    Ok(out)
}

/// Up to `limit` readable records of `partition` from `from` (tests and tools).
pub fn read(s: &Store, partition: u16, from: u64, limit: usize) -> Result<Vec<LogRecord>> {
    Ok(scan(s, partition, from, limit)?
        .into_iter()
        .filter_map(|r| r.ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> Event {
        Event::track("c1", id, "Clicked", Default::default())
    }

    #[test]
    fn repeats_inside_the_window_are_dropped_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EmbeddedLog::open(store.clone(), 4, 3).unwrap();
        let r = log.append(vec![ev("a"), ev("b"), ev("a")], 1).unwrap();
        assert_eq!(r[2], Appended::Duplicate);
        assert!(matches!(r[1], Appended::At(..)));
        drop(log);
        // Reopened: the window is rebuilt from the tail of the log.
        let log = EmbeddedLog::open(store.clone(), 4, 3).unwrap();
        assert_eq!(log.append(vec![ev("b")], 2).unwrap(), vec![Appended::Duplicate]);
        // Two more ids push `a` out of a window of three: it is accepted again.
        assert!(matches!(
            log.append(vec![ev("c"), ev("d")], 3).unwrap()[..],
            [Appended::At(..), Appended::At(..)]
        ));
        assert!(matches!(log.append(vec![ev("a")], 4).unwrap()[..], [Appended::At(..)]));
        assert_eq!(read(&store, partition_of("c1", 4), 0, 100).unwrap().len(), 5);
    }
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    fn ev(user: &str, id: &str) -> Event {
        Event::track(user, id, "Clicked", Default::default())
    }

    /// The tail hands over exactly what a read from RocksDB would, also across an overflow
    /// (the gap is read from the store) and for a reader that starts behind it.
    #[test]
    fn taking_from_the_tail_equals_reading_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EmbeddedLog::open(store.clone(), 1, 1000).unwrap().with_tail(4);
        let batch = |from: usize, n: usize| (from..from + n).map(|i| ev("u", &format!("m{i}"))).collect::<Vec<_>>();
        log.append(batch(0, 3), 10).unwrap();
        let got: Vec<u64> = log
            .take(0, 0, 2)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().offset)
            .collect();
        assert_eq!(got, [0, 1]);
        // Ten more: the tail (4) overflows; offsets 2..9 must come from the store, then the tail.
        log.append(batch(3, 10), 11).unwrap();
        let mut seen = vec![];
        let mut next = 2;
        while next < 13 {
            let part = log.take(0, next, 5).unwrap();
            assert!(!part.is_empty());
            for r in part {
                let r = r.unwrap();
                assert_eq!(r.offset, next);
                seen.push(r);
                next += 1;
            }
        }
        let stored: Vec<LogRecord> = read(&store, 0, 2, 100).unwrap();
        assert_eq!(seen, stored);
        assert!(log.take(0, 13, 5).unwrap().is_empty());
    }
}
