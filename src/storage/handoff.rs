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
