//! The hook every commit of a partition's tables passes through before it is written locally:
//! the Kafka changelog (see `kafka::changelog`), plugged in from outside the engine.

use super::Result;
use rocksdb::WriteBatch;

/// Sees every batch a partition (or the mailer, for a partition's sends) commits, before it is
/// written locally: the Kafka changelog. May add local-only entries (its own checkpoint) to it.
pub trait CommitHook: Send + Sync {
    fn publish(&self, partition: u16, batch: &mut WriteBatch) -> Result<()>;
    /// Whether this instance owns the partition now (the mailer sends only for those).
    fn owns(&self, partition: u16) -> bool;
    /// The fraction of all partitions this instance owns (its share of the send rate).
    fn share(&self) -> f64;
}
