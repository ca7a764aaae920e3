//! Commits handed off: a busy partition stages its commit and leaves the write to the next
//! thread that writes anyway (an append to the embedded log), as RocksDB's group commit has one
//! leader write for the threads queued behind it. On a machine where processing is the
//! bottleneck and ingest has time to spare, the processing thread then spends its time on
//! inputs instead of on memtable inserts and the WAL.
//!
//! Batches are written in the order they were handed off, whichever thread writes them; a
//! partition writes its own commits synchronously only after the queue (so never out of order).
//! Until its batch is written a partition must not read back what the batch holds: see
//! `runtime::partition` for how it keeps the contacts it wrote in memory until then.

use super::{Result, Store, StoreError};
use rocksdb::WriteBatch;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// What a writer tells a commit's partition: how long the write took, or why it failed.
pub type Written<'a> = std::result::Result<Duration, &'a StoreError>;

/// A commit waiting for a writer.
pub struct Pending {
    pub batch: WriteBatch,
    /// Told the outcome once the batch is written or has failed.
    pub done: Box<dyn FnOnce(Written<'_>) + Send>,
}

#[derive(Default)]
pub struct Handoff {
    queue: Mutex<VecDeque<Pending>>,
    /// Held while writing what was taken from the queue, so batches taken by two threads in
    /// turn are also written in turn.
    writing: Mutex<()>,
}

impl Handoff {
    /// Queues a commit; returns how many are waiting now.
    pub fn push(&self, p: Pending) -> usize {
        let mut q = self.queue.lock().expect("handoff lock");
        q.push_back(p);
        q.len()
    }

    /// How many commits wait for a writer.
    pub fn waiting(&self) -> usize {
        self.queue.lock().expect("handoff lock").len()
    }

    /// Writes every commit handed off so far, in order (WAL on, not synced: a commit is
    /// recomputed from the log after a crash). A failed write is reported to its partition and
    /// returned; the commits behind it stay queued.
    pub fn write_all(&self, store: &Store) -> Result<()> {
        let _turn = self.writing.lock().expect("handoff write lock");
        let mut taken = std::mem::take(&mut *self.queue.lock().expect("handoff lock"));
        while let Some(p) = taken.pop_front() {
            let started = std::time::Instant::now();
            match store.write(p.batch, false) {
                Ok(()) => (p.done)(Ok(started.elapsed())),
                Err(e) => {
                    (p.done)(Err(&e));
                    let mut q = self.queue.lock().expect("handoff lock");
                    while let Some(rest) = taken.pop_back() {
                        q.push_front(rest);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::CF_POSITIONS;
    use std::sync::Arc;

    fn put(s: &Store, v: &[u8]) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.put_cf(s.cf(CF_POSITIONS), b"k", v);
        b
    }

    /// Each commit's partition hears how its write went, in the order they were handed off.
    fn pending(s: &Store, v: u8, heard: &Arc<Mutex<Vec<(u8, bool)>>>) -> Pending {
        let heard = heard.clone();
        Pending {
            batch: put(s, &[v]),
            done: Box::new(move |r| heard.lock().unwrap().push((v, r.is_ok()))),
        }
    }

    #[test]
    fn commits_are_written_in_the_order_handed_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        for v in 1..=3 {
            assert_eq!(s.handoff.push(pending(&s, v, &heard)), v as usize);
        }
        s.write_handed_off().unwrap();
        assert_eq!(*heard.lock().unwrap(), [(1, true), (2, true), (3, true)]);
        let stored = s.db.get_cf(s.cf(CF_POSITIONS), b"k").unwrap();
        assert_eq!(stored.as_deref(), Some(&[3u8][..]), "the last one handed off wins");
        s.write_handed_off().unwrap();
        assert_eq!(heard.lock().unwrap().len(), 3, "each written once");
    }

    /// A write that fails (the store is read-only) is reported to its partition and returned;
    /// the commits behind it stay queued, unheard.
    #[test]
    fn a_failed_write_is_reported_and_the_rest_wait() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let s = Store::open_read_only(dir.path()).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        s.handoff.push(pending(&s, 1, &heard));
        s.handoff.push(pending(&s, 2, &heard));
        assert!(s.write_handed_off().is_err());
        assert_eq!(*heard.lock().unwrap(), [(1, false)]);
        assert_eq!(s.handoff.push(pending(&s, 3, &heard)), 2, "2 still waits, before 3");
    }
}
