//! The embedded durable log: the single-machine event source. Events are partitioned by contact
//! id, stamped with the time they were received, and appended with an fsynced write before the
//! append returns; a `messageId` repeated within the dedup window is dropped. The log is a RocksDB
//! database of its own (see [`crate::storage`]): the fsync covers only events, and the
//! partitions' commits, written by the workers into the state tables, never wait in its write
//! group.
//!
//! Each append writes one RocksDB value per partition it touches: a *chunk* holding that
//! partition's records of the append, keyed by the offset of its first record. A put per event
//! cost a memtable insert and a WAL record each; a chunk costs one of each per partition. Offsets
//! stay per record (a chunk of n records under offset o holds offsets o to o+n−1), and a value in
//! the earlier one-record layout still reads, as a chunk of one.
//!
//! The window is the last N accepted events (as Segment dedups within a window, not forever):
//! their ids' 128-bit hashes are held in memory and rebuilt from the log's tail at open. A
//! dedup key per event in RocksDB cost a second memtable insert and a lookup per event and grew
//! without bound.

use super::{CF_LOG, Result, Store, StoreError};
use crate::event::wire::EventRef;
use crate::event::{Event, EventKind};
use crate::time::Ts;
use rocksdb::WriteBatch;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const RECORD_FORMAT: u8 = 1;
/// A chunk: this byte, the record count (u32 BE), then per record its length (u32 BE) and the
/// record in [`RECORD_FORMAT`].
const CHUNK_FORMAT: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub offset: u64,
    pub received: Ts,
    pub event: Event,
}

pub fn partition_of(contact: &str, partitions: u16) -> u16 {
    partition_of_bytes(contact.as_bytes(), partitions)
}

/// [`partition_of`] for an id's bytes. A control record's id names its partition
/// ([`crate::event::control_partition`]).
pub fn partition_of_bytes(contact: &[u8], partitions: u16) -> u16 {
    if contact.first() == Some(&1)
        && let Some(p) = crate::event::control_partition(contact)
    {
        return p % partitions;
    }
    (xxhash_rust::xxh3::xxh3_64(contact) % partitions as u64) as u16
}

fn key(partition: u16, offset: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&partition.to_be_bytes());
    k[2..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// What the log appends: an event, owned or borrowing from its payload (ingest's
/// [`EventRef`]); both encode to the same bytes.
pub trait Appendable: serde::Serialize {
    fn user_id(&self) -> &str;
    fn message_id(&self) -> &str;
    fn into_event(self) -> Event;
}

impl Appendable for Event {
    fn user_id(&self) -> &str {
        &self.user_id
    }
    fn message_id(&self) -> &str {
        &self.message_id
    }
    fn into_event(self) -> Event {
        self
    }
}

impl Appendable for EventRef<'_> {
    fn user_id(&self) -> &str {
        &self.user_id
    }
    fn message_id(&self) -> &str {
        &self.message_id
    }
    fn into_event(self) -> Event {
        EventRef::into_event(self)
    }
}

fn encode_into(received: Ts, ev: &impl serde::Serialize, out: &mut Vec<u8>) {
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

/// A record's bytes, or why they cannot be cut out of their chunk and what is left of it.
type Framed<'a> = std::result::Result<&'a [u8], (String, &'a [u8])>;

/// The records of a chunk stored under offset `first`, each with its offset.
fn records(first: u64, v: &[u8]) -> Vec<(u64, Framed<'_>)> {
    match v.first() {
        Some(&RECORD_FORMAT) => return vec![(first, Ok(v))],
        Some(&CHUNK_FORMAT) if v.len() >= 5 => {}
        _ => return vec![(first, Err(("unknown chunk format".into(), v)))],
    }
    let count = u32::from_be_bytes(v[1..5].try_into().expect("4 bytes")) as u64;
    // Each record takes at least its 4-byte length: a larger count is not a chunk's.
    if count as usize > (v.len() - 5) / 4 {
        return vec![(first, Err(("chunk count exceeds its bytes".into(), v)))];
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut rest = &v[5..];
    for offset in first..first + count {
        let len = rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
        match len.and_then(|n| rest.get(4..4 + n)) {
            Some(record) => {
                rest = &rest[4 + record.len()..];
                out.push((offset, Ok(record)));
            }
            None => {
                // Every offset the chunk claims is still reported, so positions stay exact; the
                // first carries what is left of the chunk.
                let reason = format!("chunk at offset {first} is cut short");
                out.push((offset, Err((reason.clone(), rest))));
                out.extend((offset + 1..first + count).map(|o| (o, Err((reason.clone(), &[][..])))));
                break;
            }
        }
    }
    out
}

/// The offset after a chunk's last record, and that record's stamp when readable.
fn chunk_end(first: u64, v: &[u8]) -> (u64, Option<Ts>) {
    let recs = records(first, v);
    let end = recs.last().map_or(first + 1, |(o, _)| o + 1);
    let stamp = recs
        .last()
        .and_then(|(_, r)| r.as_ref().ok()?.get(1..9))
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
    (end, stamp)
}

fn partition_and_offset(k: &[u8]) -> Option<(u16, u64)> {
    let k: &[u8; 10] = k.try_into().ok()?;
    Some((
        u16::from_be_bytes([k[0], k[1]]),
        u64::from_be_bytes(k[2..].try_into().expect("8 bytes")),
    ))
}

/// Calls `f` with each record of `partition` from offset `from` on, in order, until it returns
/// false: starting in the chunk that holds `from`.
fn walk(s: &Store, partition: u16, from: u64, mut f: impl FnMut(u64, Framed<'_>) -> bool) -> Result<()> {
    let (db, cf) = s.log_db()?;
    let mut it = db.raw_iterator_cf(cf);
    it.seek_for_prev(key(partition, from));
    // No chunk of this partition at or before `from`: start at its first one.
    if it
        .key()
        .and_then(partition_and_offset)
        .is_none_or(|(p, _)| p != partition)
    {
        it.seek(key(partition, from));
    }
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        match partition_and_offset(k) {
            Some((p, first)) if p == partition => {
                for (offset, r) in records(first, v) {
                    if offset >= from && !f(offset, r) {
                        return Ok(());
                    }
                }
            }
            _ => break,
        }
        it.next();
    }
    Ok(it.status()?)
}

/// The offset the next record of `partition` will get, and the stamp of its last record.
pub fn end(s: &Store, partition: u16) -> Result<(u64, Option<Ts>)> {
    let (db, cf) = s.log_db()?;
    let mut it = db.raw_iterator_cf(cf);
    it.seek_for_prev(key(partition, u64::MAX));
    let found = match (it.key().and_then(partition_and_offset), it.value()) {
        (Some((p, first)), Some(v)) if p == partition => chunk_end(first, v),
        _ => (0, None),
    };
    it.status()?;
    Ok(found)
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
        // Sized for the full window up front: growing to it rehashed the set at every doubling
        // (~8 % of the ingest thread while a 1M-id window filled). Only the control bytes are
        // touched now; the slots are paged in as ids arrive.
        Window {
            cap,
            set: FxHashSet::with_capacity_and_hasher(cap.min(1 << 24) + 1024, Default::default()),
            order: VecDeque::new(),
        }
    }

    pub fn contains(&self, h: u128) -> bool {
        self.set.contains(&h)
    }

    pub fn insert(&mut self, h: u128) {
        if self.admit(h) {
            self.commit(&[h]);
        }
    }

    /// For an append: takes `h` in unless the window, or the batch admitted so far, holds it
    /// (false: a repeat). One look-up of the set instead of a `contains` now and an `insert`
    /// once the batch is durable: at a window of 1M ids each is a cache miss, and the two were
    /// ~10 % of the ingest thread. The batch then [`commit`](Window::commit)s or
    /// [`abort`](Window::abort)s.
    pub fn admit(&mut self, h: u128) -> bool {
        self.set.insert(h)
    }

    /// The ids admitted are durable: they join the window's order, pushing the oldest out.
    pub fn commit(&mut self, admitted: &[u128]) {
        self.order.extend(admitted);
        while self.order.len() > self.cap {
            let old = self.order.pop_front().expect("non-empty");
            self.set.remove(&old);
        }
    }

    /// The ids admitted were not written: the window is left as it was before them.
    pub fn abort(&mut self, admitted: &[u128]) {
        for h in admitted {
            self.set.remove(h);
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
    /// The latest records of each partition, as appended: a partition that keeps up takes its
    /// input from here instead of reading it back from RocksDB. Bounded (`tail_cap` records per
    /// partition, oldest chunks dropped); RocksDB stays the source of truth.
    tails: Mutex<Vec<Tail>>,
    tail_cap: usize,
}

/// A partition's in-memory tail: its latest appends, one chunk each, and the thread its
/// consumer last took from it on.
#[derive(Default)]
struct Tail {
    chunks: VecDeque<TailChunk>,
    /// Where the consumer goes on: the end of what it took last.
    consumed: u64,
    taker: Option<std::thread::ThreadId>,
}

/// One append's records for a partition: offsets `first..end`.
struct TailChunk {
    first: u64,
    end: u64,
    body: Body,
}

/// A consumer on the appending thread takes the parsed records. One on another thread takes
/// the chunk as written and decodes it itself: a record's memory is then allocated and freed
/// by one thread. Freeing memory another thread allocated (the allocator hands it back to the
/// owning thread's heap) cost the pipelined engine more than decoding does.
enum Body {
    Parsed(VecDeque<LogRecord>),
    Encoded(Arc<Vec<u8>>),
}

/// What [`EmbeddedLog::take`] got from one chunk, to finish outside the lock.
enum Part {
    Parsed(Vec<LogRecord>),
    Encoded(u64, Arc<Vec<u8>>),
}

impl Tail {
    /// Records held and not yet consumed.
    fn len(&self) -> u64 {
        match (self.chunks.front(), self.chunks.back()) {
            (Some(f), Some(b)) => b.end - f.first.max(self.consumed).min(b.end),
            _ => 0,
        }
    }
}

impl EmbeddedLog {
    /// Opens the log; `dedup_window` is how many of the latest accepted events' ids are
    /// remembered for dropping repeats.
    pub fn open(store: Arc<Store>, partitions: u16, dedup_window: usize) -> Result<Self> {
        let mut next = vec![0; partitions as usize];
        let mut floor = Ts::MIN;
        for (p, n) in next.iter_mut().enumerate() {
            let (end, stamp) = end(&store, p as u16)?;
            *n = end;
            floor = floor.max(stamp.unwrap_or(Ts::MIN));
        }
        let window = rebuild_window(&store, &next, dedup_window)?;
        Ok(EmbeddedLog {
            store,
            partitions,
            state: Mutex::new(State { next, window, floor }),
            tails: Mutex::new((0..partitions).map(|_| Tail::default()).collect()),
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
        let mut tails = self.tails.lock().expect("tail lock");
        if let Some(tail) = tails.get_mut(partition as usize) {
            while tail.chunks.front().is_some_and(|c| c.end <= from) {
                tail.chunks.pop_front();
            }
            match tail.chunks.front() {
                Some(c) if c.first <= from => {
                    let end = (from + limit as u64).min(tail.chunks.back().map_or(from, |c| c.end));
                    let mut parts = Vec::new();
                    for c in tail.chunks.iter_mut() {
                        if c.first >= end {
                            break;
                        }
                        match &mut c.body {
                            Body::Parsed(records) => {
                                while records.front().is_some_and(|r| r.offset < from) {
                                    records.pop_front();
                                }
                                let n = records.iter().take_while(|r| r.offset < end).count();
                                parts.push(Part::Parsed(records.drain(..n).collect()));
                                c.first = records.front().map_or(c.end, |r| r.offset);
                            }
                            Body::Encoded(bytes) => parts.push(Part::Encoded(c.first, bytes.clone())),
                        }
                    }
                    tail.consumed = end;
                    tail.taker = Some(std::thread::current().id());
                    while tail.chunks.front().is_some_and(|c| c.end <= end) {
                        tail.chunks.pop_front();
                    }
                    drop(tails);
                    let mut out = Vec::with_capacity((end - from) as usize);
                    for part in parts {
                        match part {
                            Part::Parsed(records) => out.extend(records.into_iter().map(Ok)),
                            Part::Encoded(first, bytes) => out.extend(
                                records(first, &bytes)
                                    .into_iter()
                                    .filter(|(offset, _)| (from..end).contains(offset))
                                    .map(|(offset, r)| scanned(offset, r)),
                            ),
                        }
                    }
                    return Ok(out);
                }
                // A gap (the tail overflowed, or records from before this process): read the
                // gap from the store; the tail serves what follows it.
                Some(c) => limit = limit.min((c.first - from) as usize),
                None => {}
            }
        }
        drop(tails);
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
    pub fn append<E: Appendable>(&self, events: Vec<E>, received: Ts) -> Result<Vec<Appended>> {
        let stamps = vec![received; events.len()];
        self.append_at(events, &stamps, true)
    }

    /// As [`EmbeddedLog::append`] with a stamp per event (replay keeps the original ones);
    /// `sync: false` leaves the fsync to the caller (replay syncs once at the end). A stamp below
    /// the floor is raised to it, so stamps never go backwards.
    pub fn append_at<E: Appendable>(&self, events: Vec<E>, stamps: &[Ts], sync: bool) -> Result<Vec<Appended>> {
        debug_assert_eq!(events.len(), stamps.len());
        let s = &self.store;
        let mut state = self.state.lock().expect("log lock");
        let mut floor = state.floor;
        let mut batch = WriteBatch::default();
        let mut out = Vec::with_capacity(events.len());
        let mut staged = state.next.clone();
        let (_, cf) = s.log_db()?;
        // Per appended event: its key, index and stamp; its id's hash, admitted to the window.
        let mut records = Vec::with_capacity(events.len());
        let mut admitted = Vec::with_capacity(events.len());
        for (i, (ev, &stamp)) in events.iter().zip(stamps).enumerate() {
            let h = id_hash(ev.message_id());
            if !state.window.admit(h) {
                out.push(Appended::Duplicate);
                continue;
            }
            floor = floor.max(stamp);
            let p = partition_of(ev.user_id(), self.partitions);
            let off = staged[p as usize];
            staged[p as usize] += 1;
            records.push((key(p, off), i, floor));
            admitted.push(h);
            out.push(Appended::At(p, off));
        }
        // The tails this thread's own consumer takes from get the parsed events (below).
        let me = std::thread::current().id();
        let parsed: Vec<bool> = match self.tail_cap {
            0 => vec![false; self.partitions as usize],
            _ => self
                .tails
                .lock()
                .expect("tail lock")
                .iter()
                .map(|t| t.taker == Some(me))
                .collect(),
        };
        // One chunk per partition, its records in offset order: a partition's offsets rise in
        // the order its events came, so a stable sort by partition is key order without
        // comparing whole keys (sorting the 10-byte keys was ~4 % of the ingest thread).
        records.sort_by_key(|r| [r.0[0], r.0[1]]);
        let mut buf = Vec::with_capacity(256);
        let mut chunks = Vec::new();
        for run in records.chunk_by(|a, b| a.0[..2] == b.0[..2]) {
            buf.clear();
            buf.push(CHUNK_FORMAT);
            buf.extend_from_slice(&(run.len() as u32).to_be_bytes());
            for (_, i, received) in run {
                let at = buf.len();
                buf.extend_from_slice(&[0; 4]);
                encode_into(*received, &events[*i], &mut buf);
                let len = (buf.len() - at - 4) as u32;
                buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            batch.put_cf(cf, run[0].0, &buf);
            if self.tail_cap > 0 {
                let (p, first) = partition_and_offset(&run[0].0).expect("a log key");
                let encoded = (!parsed[p as usize]).then(|| buf.to_vec());
                chunks.push((p, first, run.len() as u64, encoded));
            }
        }
        if !batch.is_empty()
            && let Err(e) = s.write_log(batch, sync)
        {
            // Only what is durable stays in the window.
            state.window.abort(&admitted);
            return Err(e);
        }
        state.floor = floor;
        // What is durable joins the window's order and the tails, in offset order (still under
        // the lock that orders appends).
        state.window.commit(&admitted);
        if !chunks.is_empty() {
            // The parsed records, moved to their partitions in one pass (within a partition,
            // offsets rise with the events' order).
            let mut moved: Vec<VecDeque<LogRecord>> = (0..self.partitions).map(|_| VecDeque::new()).collect();
            if parsed.contains(&true) {
                let mut stamps = vec![0; events.len()];
                for &(_, i, received) in &records {
                    stamps[i] = received;
                }
                for (i, (event, a)) in events.into_iter().zip(&out).enumerate() {
                    if let Appended::At(p, offset) = *a
                        && parsed[p as usize]
                    {
                        moved[p as usize].push_back(LogRecord {
                            offset,
                            received: stamps[i],
                            event: event.into_event(),
                        });
                    }
                }
            }
            let mut tails = self.tails.lock().expect("tail lock");
            for (p, first, n, encoded) in chunks {
                let body = match encoded {
                    Some(bytes) => Body::Encoded(Arc::new(bytes)),
                    None => Body::Parsed(std::mem::take(&mut moved[p as usize])),
                };
                let tail = &mut tails[p as usize];
                tail.chunks.push_back(TailChunk {
                    first,
                    end: first + n,
                    body,
                });
                while tail.len() as usize > self.tail_cap {
                    tail.chunks.pop_front();
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
/// each partition without decoding whole events. A record whose head does not read has no id to
/// remember: it is skipped (the partition dead-letters it when it gets there), so one bad
/// record cannot keep the engine from opening.
fn rebuild_window(s: &Store, next: &[u64], cap: usize) -> Result<Window> {
    let mut w = Window::new(cap);
    let per = cap.div_ceil(next.len().max(1)) as u64;
    for (p, &end) in next.iter().enumerate() {
        walk(s, p as u16, end.saturating_sub(per), |offset, r| {
            // postcard writes fields in order: kind, user id, message id come first.
            let head = r
                .ok()
                .and_then(|b| b.get(9..))
                .and_then(|b| postcard::take_from_bytes::<(EventKind, &str, &str)>(b).ok());
            match head {
                Some(((_, _, id), _)) => w.insert(id_hash(id)),
                None => {
                    tracing::warn!("log partition {p} offset {offset}: unreadable record head, not in the dedup window")
                }
            }
            true
        })?;
    }
    Ok(w)
}

/// The name of the control record an erased contact's records are replaced with: the
/// partition handles it as nothing (the stamp stays, so the partition's clock and its timers
/// come out the same in a replay).
pub const ERASED_EVENT: &str = "dripline.erased";

/// Replaces every record of `contact` in `partition` up to `up_to` (inclusive), and any later
/// one that is the engine's news about mail sent to it (`Email Delivered`, …: the contact was
/// not there to take it), with an [`ERASED_EVENT`] control record of the same stamp, in place:
/// offsets, positions and the partition's clock are unchanged, and a replay of the log never
/// sees the contact again. Returns how many records were replaced. New appends never rewrite a
/// chunk, so this runs beside them.
/// `later_feedback: false` (someone uses the id again already) leaves the later records alone.
pub fn scrub(s: &Store, partition: u16, contact: &str, up_to: u64, later_feedback: bool) -> Result<usize> {
    let (db, cf) = s.log_db()?;
    let mut it = db.raw_iterator_cf(cf);
    it.seek(key(partition, 0));
    let mut batch = WriteBatch::default();
    let mut replaced = 0;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let Some((p, first)) = partition_and_offset(k) else {
            break;
        };
        if p != partition {
            break;
        }
        let recs = records(first, v);
        let hits: Vec<bool> =
            recs.iter()
                .map(|(offset, r)| {
                    // postcard writes fields in order: kind, user id, message id, timestamp, name.
                    let head =
                        r.as_ref().ok().and_then(|b| b.get(9..)).and_then(|b| {
                            postcard::take_from_bytes::<(EventKind, &str, &str, Option<Ts>, &str)>(b).ok()
                        });
                    head.is_some_and(|((_, user, _, _, name), _)| {
                        user == contact
                            && (*offset <= up_to || (later_feedback && crate::event::ENGINE_EVENTS.contains(&name)))
                    })
                })
                .collect();
        if hits.contains(&true) {
            let mut buf = vec![CHUNK_FORMAT];
            buf.extend_from_slice(&(recs.len() as u32).to_be_bytes());
            for ((offset, r), hit) in recs.iter().zip(&hits) {
                let at = buf.len();
                buf.extend_from_slice(&[0; 4]);
                match r {
                    Ok(b) if *hit => {
                        let received = i64::from_be_bytes(b[1..9].try_into().expect("8 bytes"));
                        let mut erased = Event::track(
                            &crate::event::control_user(partition),
                            &format!("erased:{partition}:{offset}"),
                            ERASED_EVENT,
                            Default::default(),
                        );
                        erased.kind = EventKind::Track;
                        encode_into(received, &erased, &mut buf);
                        replaced += 1;
                    }
                    Ok(b) => buf.extend_from_slice(b),
                    // An unreadable record is kept as it is (it is dead-lettered when read).
                    Err((_, b)) => buf.extend_from_slice(b),
                }
                let len = (buf.len() - at - 4) as u32;
                buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            batch.put_cf(cf, k, &buf);
        }
        it.next();
    }
    it.status()?;
    if !batch.is_empty() {
        s.write_log(batch, true)?;
    }
    Ok(replaced)
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
    if limit == 0 {
        return Ok(out);
    }
    walk(s, partition, from, |offset, r| {
        out.push(scanned(offset, r));
        out.len() < limit
    })?;
    Ok(out)
}

/// A framed record decoded, or why it is unreadable.
fn scanned(offset: u64, r: Framed<'_>) -> Scanned {
    match r {
        Ok(b) => decode(offset, b).map_err(|e| Unreadable {
            offset,
            reason: e.to_string(),
            bytes: b.to_vec(),
        }),
        Err((reason, b)) => Err(Unreadable {
            offset,
            reason,
            bytes: b.to_vec(),
        }),
    }
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

    /// Ids join the window only once their append is durable: after a failed write (the store
    /// is read-only) the same ids are tried again, not dropped as repeats. Without a window a
    /// repeat inside one append is still dropped.
    #[test]
    fn a_failed_append_leaves_the_window_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let store = Arc::new(Store::open_read_only(dir.path()).unwrap());
        let log = EmbeddedLog::open(store, 4, 3).unwrap();
        assert!(log.append(vec![ev("a"), ev("b")], 1).is_err());
        assert!(log.append(vec![ev("a")], 2).is_err(), "`a` is not in the window");

        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(Arc::new(Store::open(dir.path()).unwrap()), 4, 0).unwrap();
        let r = log.append(vec![ev("a"), ev("a")], 1).unwrap();
        assert!(matches!(r[..], [Appended::At(..), Appended::Duplicate]));
        assert!(matches!(log.append(vec![ev("a")], 2).unwrap()[..], [Appended::At(..)]));
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    fn ev(user: &str, id: &str) -> Event {
        Event::track(user, id, "Clicked", Default::default())
    }

    fn offsets(s: &Store, p: u16, from: u64) -> Vec<u64> {
        scan(s, p, from, 100)
            .unwrap()
            .iter()
            .map(|r| r.as_ref().unwrap().offset)
            .collect()
    }

    /// One large append (large enough that the grouping by partition is not an insertion
    /// sort) keeps each partition's events in the order they came.
    #[test]
    fn a_large_append_keeps_each_partitions_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EmbeddedLog::open(store.clone(), 4, 0).unwrap();
        let sent: Vec<(String, String)> = (0..2000).map(|i| (format!("u{}", i % 97), format!("m{i}"))).collect();
        log.append(sent.iter().map(|(u, m)| ev(u, m)).collect(), 10).unwrap();
        for p in 0..4 {
            let read: Vec<String> = read(&store, p, 0, 2000)
                .unwrap()
                .into_iter()
                .map(|r| r.event.message_id.to_string())
                .collect();
            let expected: Vec<String> = sent
                .iter()
                .filter(|(u, _)| partition_of(u, 4) == p)
                .map(|(_, m)| m.clone())
                .collect();
            assert_eq!(read, expected, "partition {p}");
        }
    }

    /// Appends store a chunk per partition; reads start anywhere inside one, the end and the
    /// window survive a reopen, and a value of the one-record layout still reads.
    #[test]
    fn chunks_read_from_any_offset_and_reopen_where_they_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EmbeddedLog::open(store.clone(), 2, 100).unwrap();
        let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
        let p = partition_of(&users[0], 2);
        let mine: Vec<&String> = users.iter().filter(|u| partition_of(u, 2) == p).collect();
        let n = mine.len() as u64;
        log.append(users.iter().map(|u| ev(u, &format!("a-{u}"))).collect(), 10)
            .unwrap();
        log.append(users.iter().map(|u| ev(u, &format!("b-{u}"))).collect(), 20)
            .unwrap();
        assert_eq!(offsets(&store, p, 0), (0..2 * n).collect::<Vec<_>>());
        assert_eq!(offsets(&store, p, n - 1), (n - 1..2 * n).collect::<Vec<_>>());
        assert_eq!(offsets(&store, p, n + 1), (n + 1..2 * n).collect::<Vec<_>>());
        let second = read(&store, p, n, 1).unwrap();
        assert_eq!(
            (second[0].received, second[0].event.user_id.as_str()),
            (20, mine[0].as_str())
        );
        assert_eq!(end(&store, p).unwrap(), (2 * n, Some(20)));
        drop(log);

        // A record of the one-record layout, as earlier versions wrote them, after the chunks.
        let mut old = vec![];
        encode_into(30, &ev(mine[0], "c"), &mut old);
        let (db, cf) = store.log_db().unwrap();
        db.put_cf(cf, key(p, 2 * n), &old).unwrap();
        let log = EmbeddedLog::open(store.clone(), 2, 100).unwrap();
        assert_eq!(log.next_offsets()[p as usize], 2 * n + 1);
        assert_eq!(read(&store, p, 2 * n, 5).unwrap()[0].event.message_id, "c");
        let again = log
            .append(vec![ev(mine[0], "b-u0"), ev(mine[0], "c"), ev(mine[0], "d")], 40)
            .unwrap();
        assert_eq!(
            again[..2],
            [Appended::Duplicate, Appended::Duplicate],
            "window rebuilt from chunks"
        );
        assert_eq!(again[2], Appended::At(p, 2 * n + 1));
    }

    /// A chunk cut short reports every offset it claims, the first with what is left of it.
    #[test]
    fn a_chunk_cut_short_reports_each_of_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EmbeddedLog::open(store.clone(), 1, 10).unwrap();
        log.append(vec![ev("u", "1"), ev("u", "2"), ev("u", "3")], 5).unwrap();
        let (db, cf) = store.log_db().unwrap();
        let whole = db.get_cf(cf, key(0, 0)).unwrap().unwrap();
        let first_len = u32::from_be_bytes(whole[5..9].try_into().unwrap()) as usize;
        let cut = &whole[..9 + first_len + 3];
        db.put_cf(cf, key(0, 0), cut).unwrap();
        let got = scan(&store, 0, 0, 10).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().event.message_id, "1");
        let bad: Vec<_> = got[1..].iter().map(|r| r.as_ref().unwrap_err()).collect();
        assert_eq!((bad[0].offset, bad[1].offset), (1, 2));
        assert!(bad[0].reason.contains("cut short"), "{}", bad[0].reason);
        assert_eq!((bad[0].bytes.len(), bad[1].bytes.len()), (3, 0));
        assert_eq!(end(&store, 0).unwrap().0, 3);
        // The log still opens (the window skips what it cannot read) and appends after it.
        drop(log);
        let log = EmbeddedLog::open(store.clone(), 1, 10).unwrap();
        assert_eq!(
            log.append(vec![ev("u", "1"), ev("u", "4")], 6).unwrap()[..],
            [Appended::Duplicate, Appended::At(0, 3)]
        );

        // A count no chunk of that size can hold is one unreadable value, not 4 billion.
        let mut bogus = whole.to_vec();
        bogus[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        db.put_cf(cf, key(0, 0), &bogus).unwrap();
        let got = scan(&store, 0, 0, 1).unwrap();
        let bad = got[0].as_ref().unwrap_err();
        assert_eq!((got.len(), bad.offset, bad.bytes.len()), (1, 0, whole.len()));
        assert!(bad.reason.contains("count"), "{}", bad.reason);
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

    /// Parsed records go to a consumer on the appending thread, encoded chunks to one on
    /// another; a take that starts inside a chunk and spans both kinds still hands over exactly
    /// what a read from RocksDB would.
    #[test]
    fn consumers_on_any_thread_take_what_the_store_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = EmbeddedLog::open(store.clone(), 1, 1000).unwrap().with_tail(100);
        let batch = |from: usize| (from..from + 3).map(|i| ev("u", &format!("m{i}"))).collect::<Vec<_>>();
        let take = |from: u64, n: usize| {
            log.take(0, from, n)
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap())
                .collect::<Vec<_>>()
        };
        let elsewhere = |from: u64, n: usize| std::thread::scope(|s| s.spawn(|| take(from, n)).join().unwrap());
        let stored = |from: u64, n: usize| read(&store, 0, from, n).unwrap();
        // Per chunk held: its first offset and whether it holds parsed records.
        let held = || {
            let tails = log.tails.lock().unwrap();
            tails[0]
                .chunks
                .iter()
                .map(|c| (c.first, matches!(c.body, Body::Parsed(_))))
                .collect::<Vec<_>>()
        };

        log.append(batch(0), 10).unwrap(); // nothing has taken yet: encoded, offsets 0..3
        assert_eq!(held(), [(0, false)]);
        assert_eq!(take(0, 2), stored(0, 2));
        log.append(batch(3), 11).unwrap(); // this thread takes: parsed, offsets 3..6
        assert_eq!(held(), [(0, false), (3, true)]);
        assert_eq!(elsewhere(2, 3), stored(2, 3)); // 2 encoded, then 3 and 4 parsed
        assert_eq!(held(), [(5, true)]);
        log.append(batch(6), 12).unwrap(); // the consumer moved: encoded, offsets 6..9
        assert_eq!(held(), [(5, true), (6, false)]);
        assert_eq!(take(5, 10), stored(5, 10)); // 5 parsed, then 6 to 8 encoded
        assert!(take(9, 10).is_empty());
    }
}
