//! The `erasures` table: contacts erased (GDPR) whose traces outside the state tables are still
//! to be removed: their records in the log and any dead letter that mentions them. A partition
//! writes an entry in the same batch that deletes the contact's state; the engine then scrubs
//! the log and the dead letters, deletes the entry and compacts both databases, so no byte of
//! the contact's id or address is left in the data directory. An entry holds the id and address
//! only until then.
//!
//! Keys: `e`, the partition (two bytes, big-endian), the contact id; `c`, set while a compaction
//! is owed (a crash between the scrub and the compaction leaves it, and the next start
//! compacts); `m`, when the last compaction ended (written to start a new MANIFEST, see
//! [`Store::compact_everything`]).

use super::{CF_ERASURES, Result, Store, StoreError};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

const COMPACT_KEY: &[u8] = b"c";

/// One erasure still to complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    #[serde(skip)]
    pub partition: u16,
    #[serde(skip)]
    pub contact: String,
    /// The log offset of the erase record: the contact's records up to it are scrubbed (later
    /// ones belong to whoever uses the id afterwards).
    pub offset: u64,
    /// The contact's addresses when erased (scrubbed from the dead letters).
    pub addresses: Vec<String>,
}

fn key(partition: u16, contact: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + contact.len());
    k.push(b'e');
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(contact.as_bytes());
    k
}

pub fn put(s: &Store, b: &mut WriteBatch, p: &Pending) {
    b.put_cf(
        s.cf(CF_ERASURES),
        key(p.partition, &p.contact),
        serde_json::to_vec(p).expect("an erasure encodes"),
    );
}

/// Every erasure still to complete.
pub fn pending(s: &Store) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    let mode = rocksdb::IteratorMode::From(b"e", rocksdb::Direction::Forward);
    for r in s.db.iterator_cf(s.cf(CF_ERASURES), mode) {
        let (k, v) = r?;
        if k.first() != Some(&b'e') || k.len() < 3 {
            break;
        }
        let mut p: Pending = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            table: CF_ERASURES,
            reason: e.to_string(),
        })?;
        p.partition = u16::from_be_bytes([k[1], k[2]]);
        p.contact = String::from_utf8_lossy(&k[3..]).into_owned();
        out.push(p);
    }
    Ok(out)
}

/// The erasure done: its entry goes, and a compaction is owed.
pub fn complete(s: &Store, b: &mut WriteBatch, p: &Pending) {
    b.delete_cf(s.cf(CF_ERASURES), key(p.partition, &p.contact));
    b.put_cf(s.cf(CF_ERASURES), COMPACT_KEY, b"");
}

/// A compaction is owed (a restore wrote records of an erased contact before its tombstone).
pub fn owe_compaction(s: &Store, b: &mut WriteBatch) {
    b.put_cf(s.cf(CF_ERASURES), COMPACT_KEY, b"");
}

pub fn compaction_owed(s: &Store) -> Result<bool> {
    Ok(s.db.get_pinned_cf(s.cf(CF_ERASURES), COMPACT_KEY)?.is_some())
}

pub fn compacted(s: &Store, b: &mut WriteBatch) {
    b.delete_cf(s.cf(CF_ERASURES), COMPACT_KEY);
}
