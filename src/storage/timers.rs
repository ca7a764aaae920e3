//! Durable timers: keyed by (partition, due time, contact, timer id) so the earliest are first.
//! [`TimerQueue`] keeps only the next due timers of a partition in memory and pages in more from
//! RocksDB when they run out: no full scans, memory bounded by the page size.

use super::{CF_TIMERS, Result, Store};
use crate::time::Ts;
use rocksdb::WriteBatch;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    pub due: Ts,
    pub contact: String,
    pub id: u64,
}

/// Sign-flipped so that negative times still sort before positive ones.
fn due_bytes(due: Ts) -> [u8; 8] {
    ((due as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn encode(partition: u16, k: &TimerKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + 8 + 2 + k.contact.len() + 8);
    v.extend_from_slice(&partition.to_be_bytes());
    v.extend_from_slice(&due_bytes(k.due));
    v.extend_from_slice(&(k.contact.len() as u16).to_be_bytes());
    v.extend_from_slice(k.contact.as_bytes());
    v.extend_from_slice(&k.id.to_be_bytes());
    v
}

pub fn decode(b: &[u8]) -> Option<(u16, TimerKey)> {
    let partition = u16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
    let due = (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) ^ (1 << 63)) as i64;
    let len = u16::from_be_bytes(b.get(10..12)?.try_into().ok()?) as usize;
    let contact = String::from_utf8(b.get(12..12 + len)?.to_vec()).ok()?;
    let id = u64::from_be_bytes(b.get(12 + len..20 + len)?.try_into().ok()?);
    Some((partition, TimerKey { due, contact, id }))
}

pub struct TimerQueue {
    partition: u16,
    /// Every stored timer of this partition due before `horizon` is in `cache`.
    cache: BTreeSet<TimerKey>,
    horizon: Ts,
    page: usize,
    /// Puts (true) and deletes since the last [`TimerQueue::stage`], in the order made.
    ops: Vec<(Vec<u8>, bool)>,
}

impl TimerQueue {
    pub fn new(partition: u16, page: usize) -> Self {
        TimerQueue {
            partition,
            cache: BTreeSet::new(),
            horizon: Ts::MIN,
            page,
            ops: Vec::new(),
        }
    }

    pub fn schedule(&mut self, k: TimerKey) {
        self.ops.push((encode(self.partition, &k), true));
        if k.due < self.horizon {
            self.cache.insert(k);
            if self.cache.len() > 2 * self.page {
                self.trim();
            }
        }
    }

    /// Keeps memory bounded: forgets the latest-due half (they stay in the store, or in the
    /// pending operations, which the next page-in lays over the store) and lowers the horizon
    /// to match.
    fn trim(&mut self) {
        let Some(cut) = self.cache.iter().nth(self.page).map(|k| k.due) else {
            return;
        };
        if cut == self.cache.first().map_or(cut, |k| k.due) {
            return; // one due time fills the page: nothing can be split off by time
        }
        self.cache.split_off(&TimerKey {
            due: cut,
            contact: String::new(),
            id: 0,
        });
        self.horizon = cut;
    }

    pub fn cancel(&mut self, k: &TimerKey) {
        self.ops.push((encode(self.partition, k), false));
        self.cache.remove(k);
    }

    /// Writes the puts and deletes made since the last call into `b`, in key order, as the
    /// memtable inserts them fastest: for each key only its last operation, and nothing for a
    /// timer both scheduled and ended (fired or cancelled) since the last call. A key is put at
    /// most once (a contact never reuses a timer id), so that timer never reached the store.
    pub fn stage(&mut self, s: &Store, b: &mut WriteBatch) {
        // Stable: the operations on one key keep the order they were made in.
        self.ops.sort_by(|x, y| x.0.cmp(&y.0));
        let cf = s.cf(CF_TIMERS);
        for run in self.ops.chunk_by(|x, y| x.0 == y.0) {
            let (first, last) = (&run[0], &run[run.len() - 1]);
            match (first.1, last.1) {
                (true, false) => {}
                (_, true) => b.put_cf(cf, &last.0, []),
                (false, false) => b.delete_cf(cf, &last.0),
            }
        }
        self.ops.clear();
    }

    /// Whether the cache ran dry and more must be read from the store.
    pub fn needs_page(&self) -> bool {
        self.cache.is_empty() && self.horizon != Ts::MAX
    }

    /// Reads the next page of timers (all of the last due time read) once the cache ran dry:
    /// from the store, with the operations pending since the last [`TimerQueue::stage`] laid
    /// over it. The caller makes sure every batch staged before is written (on Kafka one may
    /// wait for the changelog); what is not staged yet needs no commit first.
    pub fn page_in(&mut self, s: &Store) -> Result<()> {
        let from = self.horizon;
        let start = encode(
            self.partition,
            &TimerKey {
                due: from,
                contact: String::new(),
                id: 0,
            },
        );
        let prefix = self.partition.to_be_bytes();
        let mut last_due = None;
        let mut full = false;
        for r in s.db.iterator_cf(
            s.cf(CF_TIMERS),
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (k, _) = r?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((_, key)) = decode(&k) else { continue };
            if self.cache.len() >= self.page && last_due != Some(key.due) {
                full = true;
                self.horizon = key.due;
                break;
            }
            last_due = Some(key.due);
            self.cache.insert(key);
        }
        if !full {
            self.horizon = Ts::MAX;
        }
        // Timers scheduled beyond the old horizon are only in the pending operations, and a
        // stored timer cancelled since is still in the store: laid over in the order made (a
        // key is put at most once, and deleted after). The cache was empty, so it now holds
        // only the range read; an operation outside it is skipped before it is decoded.
        let range = due_bytes(from)..due_bytes(self.horizon);
        for (key, put) in &self.ops {
            if !key
                .get(2..10)
                .is_some_and(|due| range.contains(&due.try_into().expect("8 bytes")))
            {
                continue;
            }
            let Some((_, k)) = decode(key) else { continue };
            if *put {
                self.cache.insert(k);
            } else {
                self.cache.remove(&k);
            }
        }
        Ok(())
    }

    /// The earliest cached timer due at or before `t`, removed from the queue (its delete from
    /// the store is pending until [`TimerQueue::stage`]).
    pub fn pop_due(&mut self, t: Ts) -> Option<TimerKey> {
        if self.cache.first().is_some_and(|k| k.due <= t) {
            let k = self.cache.pop_first()?;
            self.ops.push((encode(self.partition, &k), false));
            return Some(k);
        }
        None
    }

    /// The earliest time a timer may be due (the horizon when the cache ran dry: something may
    /// be due from there); `None` when no timer is stored.
    pub fn earliest(&self) -> Option<Ts> {
        match self.cache.first() {
            Some(k) => Some(k.due),
            None if self.horizon == Ts::MAX => None,
            None => Some(self.horizon),
        }
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// Timers pending in the whole store (for metrics and tests).
pub fn count(s: &Store) -> Result<u64> {
    Ok(s.db
        .property_int_value_cf(s.cf(CF_TIMERS), "rocksdb.estimate-num-keys")?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timer scheduled and ended (fired or cancelled) between two stages never reaches the
    /// store; one that reached it is deleted from it.
    #[test]
    fn a_timer_that_ends_before_its_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut q = TimerQueue::new(0, 8);
        let key = |due: Ts, id: u64| TimerKey {
            due,
            contact: "ann".into(),
            id,
        };
        q.horizon = Ts::MAX; // all cached, as after a page-in of an empty store
        let mut b = WriteBatch::default();
        q.schedule(key(10, 0));
        q.schedule(key(20, 1));
        q.schedule(key(30, 2));
        q.cancel(&key(20, 1));
        assert_eq!(q.pop_due(15).map(|k| k.id), Some(0));
        q.stage(&s, &mut b);
        assert_eq!(b.len(), 1, "only the timer still pending is put");
        s.write(std::mem::take(&mut b), false).unwrap();
        assert_eq!(count_stored(&s), 1);
        // Stored, then ended: its delete is written.
        assert_eq!(q.pop_due(30).map(|k| k.id), Some(2));
        q.stage(&s, &mut b);
        assert_eq!(b.len(), 1);
        s.write(std::mem::take(&mut b), false).unwrap();
        assert_eq!(count_stored(&s), 0);
    }

    fn count_stored(s: &Store) -> usize {
        s.db.iterator_cf(s.cf(CF_TIMERS), rocksdb::IteratorMode::Start).count()
    }

    #[test]
    fn the_queue_stays_bounded_and_still_yields_every_timer_in_due_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut q = TimerQueue::new(0, 8);
        let mut b = WriteBatch::default();
        // Reverse order, so trimming has to drop earlier-inserted, later-due timers.
        for i in (0..100i64).rev() {
            q.schedule(TimerKey {
                due: i * 10,
                contact: format!("c{i}"),
                id: 0,
            });
            assert!(q.cached() <= 16, "cache grew to {}", q.cached());
        }
        q.stage(&s, &mut b);
        s.write(std::mem::take(&mut b), false).unwrap();
        let mut fired = vec![];
        loop {
            if q.needs_page() {
                q.stage(&s, &mut b);
                s.write(std::mem::take(&mut b), false).unwrap();
                q.page_in(&s).unwrap();
            }
            match q.pop_due(i64::MAX) {
                Some(k) => fired.push(k.due),
                None if q.needs_page() => continue,
                None => break,
            }
            assert!(q.cached() <= 16);
        }
        assert_eq!(fired, (0..100).map(|i| i * 10).collect::<Vec<_>>());
    }

    /// Nothing staged: the timers the trims forgot are only in the pending operations, and the
    /// page-ins find them there, without those cancelled since.
    #[test]
    fn page_ins_lay_the_pending_operations_over_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut q = TimerQueue::new(0, 8);
        let key = |i: i64| TimerKey {
            due: i * 10,
            contact: format!("c{i}"),
            id: 0,
        };
        q.page_in(&s).unwrap(); // an empty store: everything is cached from here on
        for i in (0..100i64).rev() {
            q.schedule(key(i));
        }
        assert!(q.cached() <= 16);
        for i in (5..100).step_by(10) {
            q.cancel(&key(i));
        }
        let mut fired = vec![];
        loop {
            if q.needs_page() {
                q.page_in(&s).unwrap();
            }
            match q.pop_due(i64::MAX) {
                Some(k) => fired.push(k.due),
                None if q.needs_page() => continue,
                None => break,
            }
        }
        let expected: Vec<i64> = (0..100).filter(|i| i % 10 != 5).map(|i| i * 10).collect();
        assert_eq!(fired, expected);
        assert_eq!(count_stored(&s), 0, "nothing was ever written");
    }
}
