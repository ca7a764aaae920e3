//! The `outbox_counts` table: the outbox's depth, exact, without a scan. Each key has one
//! writer, so no update is lost between them: `a` + partition (two bytes, big-endian), the
//! entries the partition added (less those it removed itself, erasing a contact), written in the
//! partition's commits; `r` + partition, the entries of that partition the mailer removed,
//! written in the mailer's batches. Both go in the same batches as the entries they count, so
//! the depth (the sum of the first less the sum of the second) is exact after any crash.

use super::{CF_OUTBOX_COUNTS, Result, Store, StoreError};
use rocksdb::WriteBatch;

/// Added by the partition.
pub const ADDED: u8 = b'a';
/// Removed by the mailer.
pub const REMOVED: u8 = b'r';
/// Set once the counts are kept (a store written before has them counted at its first open).
const KEPT: &[u8] = b"k";

fn key(kind: u8, partition: u16) -> [u8; 3] {
    let p = partition.to_be_bytes();
    [kind, p[0], p[1]]
}

pub fn get(s: &Store, kind: u8, partition: u16) -> Result<i64> {
    match s.db.get_pinned_cf(s.cf(CF_OUTBOX_COUNTS), key(kind, partition))? {
        Some(v) => Ok(i64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StoreError::Corrupt {
                table: CF_OUTBOX_COUNTS,
                reason: "value".into(),
            }
        })?)),
        None => Ok(0),
    }
}

pub fn put(s: &Store, b: &mut WriteBatch, kind: u8, partition: u16, value: i64) {
    b.put_cf(s.cf(CF_OUTBOX_COUNTS), key(kind, partition), value.to_be_bytes());
}

/// Adds `delta` to a count: its stored value plus `delta`, staged in `b`. Only for the key's
/// one writer (whose earlier writes are all in the store).
pub fn add(s: &Store, b: &mut WriteBatch, kind: u8, partition: u16, delta: i64) -> Result<()> {
    if delta != 0 {
        let v = get(s, kind, partition)?;
        put(s, b, kind, partition, v + delta);
    }
    Ok(())
}

/// The outbox's depth, over the partitions `include` keeps.
pub fn depth(s: &Store, include: impl Fn(u16) -> bool) -> Result<i64> {
    let mut total = 0;
    for r in s.db.iterator_cf(s.cf(CF_OUTBOX_COUNTS), rocksdb::IteratorMode::Start) {
        let (k, v) = r?;
        let [kind, p0, p1] = k[..] else {
            continue;
        };
        let p = u16::from_be_bytes([p0, p1]);
        if !include(p) {
            continue;
        }
        let v = i64::from_be_bytes(v.as_ref().try_into().unwrap_or_default());
        match kind {
            ADDED => total += v,
            REMOVED => total -= v,
            _ => {}
        }
    }
    Ok(total)
}

/// Whether the store keeps the counts.
pub fn kept(s: &Store) -> Result<bool> {
    Ok(s.db.get_pinned_cf(s.cf(CF_OUTBOX_COUNTS), KEPT)?.is_some())
}

/// Counts the outbox as it is and writes the counts from scratch (a store written before they
/// were kept; a rebuilt store).
pub fn recount(s: &Store) -> Result<()> {
    let mut per: std::collections::BTreeMap<u16, i64> = Default::default();
    for (_, e) in super::tables::outbox_page(s, usize::MAX)? {
        *per.entry(e.partition).or_default() += 1;
    }
    let mut b = WriteBatch::default();
    b.delete_range_cf(s.cf(CF_OUTBOX_COUNTS), &[0u8][..], &[0xffu8; 4][..]);
    for (p, n) in per {
        put(s, &mut b, ADDED, p, n);
    }
    b.put_cf(s.cf(CF_OUTBOX_COUNTS), KEPT, b"");
    s.write(b, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_what_the_partitions_added_less_what_the_mailer_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        assert!(!kept(&s).unwrap());
        recount(&s).unwrap();
        assert!(kept(&s).unwrap());
        let mut b = WriteBatch::default();
        add(&s, &mut b, ADDED, 0, 5).unwrap();
        add(&s, &mut b, ADDED, 1, 3).unwrap();
        s.write(b, false).unwrap();
        let mut b = WriteBatch::default();
        add(&s, &mut b, REMOVED, 0, 2).unwrap();
        add(&s, &mut b, ADDED, 1, 0).unwrap();
        s.write(b, false).unwrap();
        assert_eq!(depth(&s, |_| true).unwrap(), 6);
        assert_eq!(depth(&s, |p| p == 1).unwrap(), 3);
        // A recount of an empty outbox starts from zero again.
        recount(&s).unwrap();
        assert_eq!(depth(&s, |_| true).unwrap(), 0);
    }
}
