//! The `reroutes` table: per home partition and source partition, the highest source offset of
//! a forwarded record the home partition has handled. Written in the home partition's commits
//! (mirrored to its changelog partition), so a record forwarded again after a crash or a
//! handover of its source is recognised and dropped, and none is handled twice. Key: home
//! partition, source partition (two bytes each, big-endian); value: the offset (eight bytes).

use super::{CF_REROUTES, Result, Store, StoreError};
use rocksdb::WriteBatch;
use std::collections::BTreeMap;

fn key(home: u16, source: u16) -> [u8; 4] {
    let (h, s) = (home.to_be_bytes(), source.to_be_bytes());
    [h[0], h[1], s[0], s[1]]
}

/// Source partition → highest forwarded offset handled, for one home partition.
pub fn of_home(s: &Store, home: u16) -> Result<BTreeMap<u16, u64>> {
    let mut out = BTreeMap::new();
    let cf = s.cf(CF_REROUTES);
    let prefix = home.to_be_bytes();
    for r in s.db.prefix_iterator_cf(cf, prefix) {
        let (k, v) = r?;
        if !k.starts_with(&prefix) {
            break;
        }
        let corrupt = || StoreError::Corrupt {
            table: CF_REROUTES,
            reason: "key or value length".into(),
        };
        let [_, _, s0, s1] = k[..] else {
            return Err(corrupt());
        };
        let offset = u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt())?);
        out.insert(u16::from_be_bytes([s0, s1]), offset);
    }
    Ok(out)
}

pub fn put(s: &Store, b: &mut WriteBatch, home: u16, source: u16, offset: u64) {
    b.put_cf(s.cf(CF_REROUTES), key(home, source), offset.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_kept_per_home_partition() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        put(&s, &mut b, 1, 0, 7);
        put(&s, &mut b, 1, 3, 9);
        put(&s, &mut b, 2, 1, 4);
        put(&s, &mut b, 1, 3, 12);
        s.write(b, false).unwrap();
        assert_eq!(of_home(&s, 1).unwrap(), BTreeMap::from([(0, 7), (3, 12)]));
        assert_eq!(of_home(&s, 2).unwrap(), BTreeMap::from([(1, 4)]));
        assert!(of_home(&s, 0).unwrap().is_empty());
    }
}
