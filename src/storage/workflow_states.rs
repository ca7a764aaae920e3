//! The `workflow_states` table: which workflows a partition has paused, keyed by the partition
//! (two bytes, big-endian) and the workflow id. Written in the partition's commit batch when it
//! handles a pause or resume control record, so the state is exactly as of its log position;
//! mirrored in the Kafka changelog like the partition's other tables.

use super::{CF_WORKFLOW_STATES, Result, Store};
use rocksdb::WriteBatch;
use std::sync::Arc;

fn key(partition: u16, workflow: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + workflow.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(workflow.as_bytes());
    k
}

/// The workflows paused in `partition`.
pub fn paused(s: &Store, partition: u16) -> Result<Vec<Arc<str>>> {
    let prefix = partition.to_be_bytes();
    let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
    let mut out = Vec::new();
    for r in s.db.iterator_cf(s.cf(CF_WORKFLOW_STATES), mode) {
        let (k, _) = r?;
        if !k.starts_with(&prefix) {
            break;
        }
        out.push(String::from_utf8_lossy(&k[2..]).into());
    }
    Ok(out)
}

/// Every partition that has `workflow` paused.
pub fn partitions_pausing(s: &Store, workflow: &str) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for r in s.db.iterator_cf(s.cf(CF_WORKFLOW_STATES), rocksdb::IteratorMode::Start) {
        let (k, _) = r?;
        if k.len() >= 2 && &k[2..] == workflow.as_bytes() {
            out.push(u16::from_be_bytes([k[0], k[1]]));
        }
    }
    Ok(out)
}

pub fn put_paused(s: &Store, b: &mut WriteBatch, partition: u16, workflow: &str) {
    b.put_cf(s.cf(CF_WORKFLOW_STATES), key(partition, workflow), b"paused");
}

pub fn delete_paused(s: &Store, b: &mut WriteBatch, partition: u16, workflow: &str) {
    b.delete_cf(s.cf(CF_WORKFLOW_STATES), key(partition, workflow));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_per_partition() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let mut b = WriteBatch::default();
        put_paused(&s, &mut b, 1, "welcome");
        put_paused(&s, &mut b, 1, "cart");
        put_paused(&s, &mut b, 2, "welcome");
        s.write(b, false).unwrap();
        let names = |p| paused(&s, p).unwrap().iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(names(1), ["cart", "welcome"]);
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(partitions_pausing(&s, "welcome").unwrap(), [1, 2]);
        let mut b = WriteBatch::default();
        delete_paused(&s, &mut b, 1, "welcome");
        s.write(b, false).unwrap();
        assert_eq!(names(1), ["cart"]);
    }
}
