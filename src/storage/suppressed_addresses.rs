//! The `suppressed_addresses` table: addresses no mail may go to, whichever contact they belong
//! to (`PUT /admin/v1/suppressions/{email}`). Keyed by SHA-256 of the address, trimmed and
//! lower-cased, so the list never holds an address in the clear: it can outlive the erasure of
//! the contact who asked, and still stop a re-imported address from being mailed.

use super::{CF_SUPPRESSED_ADDRESSES, Result, Store, StoreError};
use crate::time::Ts;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressed {
    pub reason: String,
    pub since: Ts,
}

/// The key of an address: its normalised form's SHA-256.
pub fn key(address: &str) -> [u8; 32] {
    Sha256::digest(address.trim().to_lowercase().as_bytes()).into()
}

pub fn get(s: &Store, address: &str) -> Result<Option<Suppressed>> {
    match s.db.get_pinned_cf(s.cf(CF_SUPPRESSED_ADDRESSES), key(address))? {
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::Corrupt {
            table: CF_SUPPRESSED_ADDRESSES,
            reason: e.to_string(),
        }),
        None => Ok(None),
    }
}

pub fn put(s: &Store, b: &mut WriteBatch, address: &str, reason: &str, since: Ts) {
    let v = Suppressed {
        reason: reason.to_owned(),
        since,
    };
    b.put_cf(
        s.cf(CF_SUPPRESSED_ADDRESSES),
        key(address),
        serde_json::to_vec(&v).expect("a suppression encodes"),
    );
}

pub fn delete(s: &Store, b: &mut WriteBatch, address: &str) {
    b.delete_cf(s.cf(CF_SUPPRESSED_ADDRESSES), key(address));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_case_insensitively_and_are_never_stored_in_the_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let mut b = WriteBatch::default();
        put(&s, &mut b, "Ann.Lee@Example.org", "complaint", 5);
        s.write(b, true).unwrap();
        let got = get(&s, " ann.lee@example.ORG").unwrap().unwrap();
        assert_eq!(got.reason, "complaint");
        assert!(get(&s, "bob@example.org").unwrap().is_none());
        for r in
            s.db.iterator_cf(s.cf(CF_SUPPRESSED_ADDRESSES), rocksdb::IteratorMode::Start)
        {
            let (k, v) = r.unwrap();
            for part in [&k[..], &v[..]] {
                assert!(!part.windows(8).any(|w| w.eq_ignore_ascii_case(b"ann.lee@")));
            }
        }
        let mut b = WriteBatch::default();
        delete(&s, &mut b, "ANN.LEE@example.org");
        s.write(b, true).unwrap();
        assert!(get(&s, "ann.lee@example.org").unwrap().is_none());
    }
}
