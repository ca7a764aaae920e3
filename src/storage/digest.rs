//! A stable digest of all contact state, overall and per partition, so that two stores (a live
//! node and its replayed rebuild, two replays) can be compared without shipping their contents.
//!
//! Per partition: xxh3-128 over its contacts in key order (length-prefixed id and encoded state,
//! which is canonical: postcard over ordered maps), then the wrapping sum of the hashes of its
//! pending timers (due, contact, id). Contacts and timers are assigned to digest partitions by
//! contact id, whatever partition stored them, and the timer sum does not depend on order: a
//! store laid out by Kafka's partitioner and one laid out by dripline's digest alike. The total
//! hashes the workflow versions the store runs (id, version, source, when deployed), then the
//! partition digests in partition order.

use super::log::partition_of;
use super::{CF_TIMERS, Result, Store, tables, timers};
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
    // Contacts come in id order, however the store keys them; each partition's hasher sees its
    // contacts in that order.
    for r in tables::contacts(s) {
        let (k, v) = r?;
        let p = partition_of(&k, partitions) as usize;
        frame(&mut hashers[p], k.as_bytes());
        frame(&mut hashers[p], &v);
        counts[p].0 += 1;
    }
    let mut timer_sums = vec![0u128; n];
    for r in s.db.iterator_cf(s.cf(CF_TIMERS), rocksdb::IteratorMode::Start) {
        let (k, _) = r?;
        if let Some((_, t)) = timers::decode(&k) {
            let p = partition_of(&t.contact, partitions) as usize;
            let mut h = Xxh3::new();
            h.update(&t.due.to_be_bytes());
            frame(&mut h, t.contact.as_bytes());
            h.update(&t.id.to_be_bytes());
            timer_sums[p] = timer_sums[p].wrapping_add(h.digest128());
            counts[p].1 += 1;
        }
    }
    for (h, sum) in hashers.iter_mut().zip(&timer_sums) {
        h.update(&sum.to_le_bytes());
    }
    let mut total = Xxh3::new();
    // What the store runs: every workflow version, its source and when it took effect. Two
    // stores that would enter a contact into different versions differ here.
    for v in tables::workflow_versions(s)? {
        frame(&mut total, v.id.as_bytes());
        total.update(&v.version.to_le_bytes());
        frame(&mut total, v.source.as_bytes());
        total.update(&v.deployed_at.to_le_bytes());
    }
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
