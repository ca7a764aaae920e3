//! A stable digest of all contact state, overall and per partition, so that two stores (a live
//! node and its replayed rebuild, two replays) can be compared without shipping their contents.
//!
//! Per partition: xxh3-128 over its contacts in key order (length-prefixed id and encoded state,
//! which is canonical: postcard over ordered maps) and then its pending timers in key order.
//! The total hashes the partition digests in partition order.

use super::log::partition_of;
use super::{CF_CONTACTS, CF_TIMERS, Result, Store, timers};
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDigest {
    pub contacts: u64,
    pub timers: u64,
    pub digest: u128,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub total: u128,
    pub partitions: Vec<PartitionDigest>,
}

impl Digest {
    pub fn contacts(&self) -> u64 {
        self.partitions.iter().map(|p| p.contacts).sum()
    }
}

fn frame(h: &mut Xxh3, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

pub fn digest(s: &Store, partitions: u16) -> Result<Digest> {
    let n = partitions as usize;
    let mut hashers: Vec<Xxh3> = (0..n).map(|_| Xxh3::new()).collect();
    let mut counts = vec![(0u64, 0u64); n];
    // RocksDB iterates in key order; each partition's hasher sees its contacts in that order.
    for r in s.db.iterator_cf(s.cf(CF_CONTACTS), rocksdb::IteratorMode::Start) {
        let (k, v) = r?;
        let p = partition_of(&String::from_utf8_lossy(&k), partitions) as usize;
        frame(&mut hashers[p], &k);
        frame(&mut hashers[p], &v);
        counts[p].0 += 1;
    }
    for r in s.db.iterator_cf(s.cf(CF_TIMERS), rocksdb::IteratorMode::Start) {
        let (k, _) = r?;
        if let Some((p, _)) = timers::decode(&k).filter(|(p, _)| (*p as usize) < n) {
            frame(&mut hashers[p as usize], &k);
            counts[p as usize].1 += 1;
        }
    }
    let mut total = Xxh3::new();
    let parts: Vec<PartitionDigest> = hashers
        .iter()
        .zip(counts)
        .map(|(h, (contacts, timers))| {
            let digest = h.digest128();
            total.update(&digest.to_le_bytes());
            PartitionDigest {
                contacts,
                timers,
                digest,
            }
        })
        .collect();
    Ok(Digest {
        total: total.digest128(),
        partitions: parts,
    })
}
