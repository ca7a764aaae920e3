//! The `dead_letters` table: inputs the engine could not take, with why, time-ordered. Keys are
//! (time, sequence), 16 bytes; the API names one by the hex of its key. The sequence is
//! process-wide and seeded from the clock, so keys never collide across partitions, the mailer,
//! or a restart within the same millisecond.
//!
//! A payload is kept up to a cap (`dead_letters.max_payload_bytes`): enough to see and retry a
//! refused event, never a whole oversized body. Entries past `dead_letters.retention` are purged.

use super::{CF_DEAD, Result, Store, StoreError};
use crate::time::Ts;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static PAYLOAD_CAP: AtomicUsize = AtomicUsize::new(64 * 1024);

/// Sets the payload cap (the engine does, from its settings).
pub fn set_payload_cap(bytes: usize) {
    PAYLOAD_CAP.store(bytes, Ordering::Relaxed);
}

/// One dead letter as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was refused (RFC 3339).
    pub at: String,
    /// Where: `ingest` (HTTP, files), `log` (an unreadable log record), `mailer`, `replay`.
    #[serde(default)]
    pub source: String,
    pub reason: String,
    /// The refused input, as text, up to the cap.
    pub payload: String,
    /// Whether the payload was cut at the cap (it cannot be retried as it is).
    #[serde(default)]
    pub truncated: bool,
}

/// A dead letter's key, as the API names it (32 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadKey(pub [u8; 16]);

impl DeadKey {
    pub fn at(&self) -> Ts {
        i64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

impl std::fmt::Display for DeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for DeadKey {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a dead-letter key (32 hex digits)");
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(DeadKey(k))
    }
}

fn corrupt(reason: String) -> StoreError {
    StoreError::Corrupt { table: CF_DEAD, reason }
}

/// The largest index `<= at` that starts a character of `s`.
pub fn char_boundary_at_or_below(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Stages a dead letter.
pub fn put(s: &Store, b: &mut WriteBatch, at: Ts, source: &str, reason: &str, payload: &[u8]) {
    static SEQ: std::sync::LazyLock<AtomicU64> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        AtomicU64::new(nanos as u64)
    });
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&at.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    let cap = PAYLOAD_CAP.load(Ordering::Relaxed);
    let text = String::from_utf8_lossy(payload);
    let truncated = text.len() > cap;
    let payload = if truncated {
        text[..char_boundary_at_or_below(&text, cap)].to_owned()
    } else {
        text.into_owned()
    };
    let v = DeadLetter {
        at: crate::time::format_rfc3339(at),
        source: source.to_owned(),
        reason: reason.to_owned(),
        payload,
        truncated,
    };
    b.put_cf(
        s.cf(CF_DEAD),
        key,
        serde_json::to_vec(&v).expect("a dead letter encodes"),
    );
}

fn decode(k: &[u8], v: &[u8]) -> Result<(DeadKey, DeadLetter)> {
    let key = DeadKey(
        k.try_into()
            .map_err(|_| corrupt(format!("a key of {} bytes", k.len())))?,
    );
    let letter = serde_json::from_slice(v).map_err(|e| corrupt(e.to_string()))?;
    Ok((key, letter))
}

/// Up to `limit` dead letters after `after` (oldest first).
pub fn page(s: &Store, after: Option<DeadKey>, limit: usize) -> Result<Vec<(DeadKey, DeadLetter)>> {
    let start = after.map(|k| k.0.to_vec()).unwrap_or_default();
    let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
    let mut out = Vec::new();
    for r in s.db.iterator_cf(s.cf(CF_DEAD), mode) {
        let (k, v) = r?;
        if after.is_some_and(|a| *k == a.0) {
            continue;
        }
        out.push(decode(&k, &v)?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Every dead letter, oldest first.
pub fn all(s: &Store) -> Result<Vec<DeadLetter>> {
    Ok(page(s, None, usize::MAX)?.into_iter().map(|(_, d)| d).collect())
}

pub fn get(s: &Store, key: DeadKey) -> Result<Option<DeadLetter>> {
    match s.db.get_pinned_cf(s.cf(CF_DEAD), key.0)? {
        Some(v) => Ok(Some(decode(&key.0, &v)?.1)),
        None => Ok(None),
    }
}

pub fn delete(s: &Store, b: &mut WriteBatch, key: DeadKey) {
    b.delete_cf(s.cf(CF_DEAD), key.0);
}

/// Deletes every dead letter refused before `before`; how many there were.
pub fn purge_before(s: &Store, before: Ts) -> Result<usize> {
    let mut end = [0u8; 16];
    end[..8].copy_from_slice(&before.to_be_bytes());
    let mut n = 0;
    for r in s.db.iterator_cf(s.cf(CF_DEAD), rocksdb::IteratorMode::Start) {
        let (k, _) = r?;
        if *k >= end[..] {
            break;
        }
        n += 1;
    }
    if n > 0 {
        let mut b = WriteBatch::default();
        b.delete_range_cf(s.cf(CF_DEAD), [0u8; 16], end);
        s.write(b, true)?;
    }
    Ok(n)
}

/// Deletes every dead letter whose reason or payload mentions one of `needles` (an erased
/// contact's id and addresses); how many.
pub fn scrub(s: &Store, needles: &[&str]) -> Result<usize> {
    let needles: Vec<&str> = needles.iter().copied().filter(|n| !n.is_empty()).collect();
    let mut b = WriteBatch::default();
    let mut n = 0;
    for r in s.db.iterator_cf(s.cf(CF_DEAD), rocksdb::IteratorMode::Start) {
        let (k, v) = r?;
        let text = String::from_utf8_lossy(&v);
        // The stored JSON escapes some characters: compare with the payload as it was too.
        let letter: Option<DeadLetter> = serde_json::from_slice(&v).ok();
        let mentions = |n: &str| {
            text.contains(n)
                || letter
                    .as_ref()
                    .is_some_and(|d| d.payload.contains(n) || d.reason.contains(n))
        };
        if needles.iter().any(|n| mentions(n)) {
            b.delete_cf(s.cf(CF_DEAD), &k);
            n += 1;
        }
    }
    if n > 0 {
        s.write(b, true)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_the_same_millisecond_by_separate_writers_all_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        for reason in ["a", "b", "c"] {
            let mut b = WriteBatch::default();
            put(&s, &mut b, 1_000, "ingest", reason, b"x");
            s.write(b, false).unwrap();
        }
        let reasons: Vec<_> = all(&s).unwrap().into_iter().map(|d| d.reason).collect();
        assert_eq!(reasons, ["a", "b", "c"]);
    }

    #[test]
    fn payloads_are_capped_paged_and_purged_by_age() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        set_payload_cap(8);
        let mut b = WriteBatch::default();
        put(&s, &mut b, 1_000, "ingest", "old", "ééééé".as_bytes());
        put(&s, &mut b, 2_000, "log", "new", b"short");
        put(&s, &mut b, 3_000, "mailer", "newer", b"");
        s.write(b, false).unwrap();
        set_payload_cap(64 * 1024);
        let first = page(&s, None, 2).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].1.payload, "éééé", "cut at a character boundary");
        assert!(first[0].1.truncated && !first[1].1.truncated);
        assert_eq!(first[1].1.source, "log");
        let rest = page(&s, Some(first[1].0), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1.reason, "newer");
        let key: DeadKey = first[0].0.to_string().parse().unwrap();
        assert_eq!(key, first[0].0);
        assert_eq!(key.at(), 1_000);
        assert!("xyz".parse::<DeadKey>().is_err());
        assert_eq!(purge_before(&s, 2_500).unwrap(), 2);
        let left: Vec<_> = all(&s).unwrap().into_iter().map(|d| d.reason).collect();
        assert_eq!(left, ["newer"]);
        let mut b = WriteBatch::default();
        delete(&s, &mut b, rest[0].0);
        s.write(b, false).unwrap();
        assert!(get(&s, rest[0].0).unwrap().is_none());
    }
}
