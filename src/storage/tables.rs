//! The small tables: contacts, outbox, sent ledger, positions, counters, workflow versions,
//! dead letters. Each is a set of typed key/value codecs over its column family.

use super::log::partition_of_bytes;
use super::{
    CF_CONTACTS, CF_COUNTERS, CF_OUTBOX, CF_POSITIONS, CF_SENT, CF_SUPPRESSIONS, CF_WORKFLOWS, ContactLayout, Result,
    Store, StoreError,
};
use crate::machine::{ContactState, Metric, SendId};
use crate::time::Ts;
use crate::value::Str;
use crate::workflow::{MailKind, StoredVersion};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

// ---- contacts: partition, contact id → encoded ContactState ------------------------------

/// A contact's key under [`ContactLayout::Partitioned`]: its partition, two bytes big-endian,
/// then its id.
pub(super) fn contact_key_into(key: &mut Vec<u8>, partitions: u16, id: &[u8]) {
    key.extend_from_slice(&partition_of_bytes(id, partitions).to_be_bytes());
    key.extend_from_slice(id);
}

/// Calls `f` with the store's key for contact `id` (built in a buffer kept per thread: the hot
/// path looks a contact up, or writes one, for most inputs).
fn with_contact_key<R>(s: &Store, id: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    match s.contact_layout() {
        ContactLayout::ById => f(id.as_bytes()),
        ContactLayout::Partitioned(n) => {
            thread_local!(static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
            KEY.with_borrow_mut(|key| {
                key.clear();
                contact_key_into(key, n, id.as_bytes());
                f(key)
            })
        }
    }
}

/// The contact id a key of the contacts table holds.
pub fn contact_id_of<'k>(s: &Store, key: &'k [u8]) -> &'k [u8] {
    match s.contact_layout() {
        ContactLayout::ById => key,
        ContactLayout::Partitioned(_) => key.get(2..).unwrap_or_default(),
    }
}

pub fn get_contact(s: &Store, id: &str) -> Result<Option<ContactState>> {
    let found = with_contact_key(s, id, |key| s.db.get_pinned_cf(s.contacts_cf(), key))?;
    match found {
        Some(b) => ContactState::decode(&b).map(Some).map_err(|e| StoreError::Corrupt {
            table: CF_CONTACTS,
            reason: e.to_string(),
        }),
        None => Ok(None),
    }
}

pub fn put_contact(s: &Store, b: &mut WriteBatch, id: &str, st: &ContactState) {
    with_contact_key(s, id, |key| {
        put_encoded(b, s.contacts_cf(), key, |buf| st.encode_into(buf))
    });
}

/// Puts a contact's encoded state as it is (a changelog restore).
pub fn put_contact_raw(s: &Store, b: &mut WriteBatch, id: &str, encoded: &[u8]) {
    with_contact_key(s, id, |key| b.put_cf(s.contacts_cf(), key, encoded));
}

pub fn delete_contact(s: &Store, b: &mut WriteBatch, id: &str) {
    with_contact_key(s, id, |key| b.delete_cf(s.contacts_cf(), key));
}

/// Every contact (id, encoded state), in id order whatever the layout: each partition's range
/// is read in id order, and the ranges are merged.
pub fn contacts(s: &Store) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + '_ {
    let cf = s.contacts_cf();
    let ranges: Vec<_> = match s.contact_layout() {
        ContactLayout::ById => vec![s.db.iterator_cf(cf, rocksdb::IteratorMode::Start)],
        ContactLayout::Partitioned(n) => (0..n)
            .map(|p| {
                let mut o = rocksdb::ReadOptions::default();
                if let Some(next) = p.checked_add(1) {
                    o.set_iterate_upper_bound(next.to_be_bytes());
                }
                let from = p.to_be_bytes();
                s.db.iterator_cf_opt(cf, o, rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward))
            })
            .collect(),
    };
    let ranges = ranges.into_iter().map(move |it| {
        it.map(move |r| {
            r.map(|(k, v)| (String::from_utf8_lossy(contact_id_of(s, &k)).into_owned(), v.into_vec()))
                .map_err(StoreError::from)
        })
    });
    // An error sorts first, so that it is not held back behind the other ranges.
    itertools::kmerge_by(
        ranges,
        |a: &Result<(String, Vec<u8>)>, b: &Result<(String, Vec<u8>)>| match (a, b) {
            (Ok(a), Ok(b)) => a.0 < b.0,
            (Err(_), _) => true,
            (Ok(_), Err(_)) => false,
        },
    )
}

/// Puts the value `encode` writes into an emptied buffer, one per thread (the batch copies it):
/// contact states and outbox entries are encoded on the hot path, and a new vector per value
/// would be allocated, and grown a few times, every time.
fn put_encoded(b: &mut WriteBatch, cf: &rocksdb::ColumnFamily, key: &[u8], encode: impl FnOnce(&mut Vec<u8>)) {
    thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        encode(buf);
        b.put_cf(cf, key, &buf[..]);
    });
}

// ---- outbox: send id → rendered message waiting for a transport -----------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The input partition whose processing decided it (its owner sends it).
    #[serde(default)]
    pub partition: u16,
    pub contact: Str,
    pub workflow: Str,
    pub version: u32,
    pub step: Str,
    pub kind: MailKind,
    pub to: Str,
    pub content: Content,
    /// Input time of the decision (the email's Date).
    pub decided_at: Ts,
    /// Delivery attempts the receiver deferred (4xx) so far.
    #[serde(default)]
    pub attempts: u32,
    /// Wall time of the first attempt (0: none yet): the age that turns deferrals into a
    /// soft bounce counts from it.
    #[serde(default)]
    pub first_attempt: Ts,
    /// Wall time before which the entry is not retried (backoff after a deferral).
    #[serde(default)]
    pub not_before: Ts,
}

/// What the message says. A workflow's send is rendered by the mailer just before it goes out
/// (`Template`): the decision only records what it renders with, so the hot path never runs a
/// template, and the outbox holds the few hundred bytes of context instead of whole bodies.
/// Rendering is deterministic in these inputs, so a replayed decision renders the same message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Content {
    Template {
        template: Str,
        /// The contact's traits and the enrolling event's properties, as at the decision.
        traits: std::sync::Arc<crate::value::Map>,
        event: std::sync::Arc<crate::value::Map>,
    },
    /// Composed already (mail that does not come from a workflow template).
    Rendered(crate::workflow::Rendered),
    /// Not mail: the call of a webhook step (`step`), rendered from the workflow version's
    /// templates with these snapshots as it is made.
    Webhook {
        traits: std::sync::Arc<crate::value::Map>,
        event: std::sync::Arc<crate::value::Map>,
    },
}

impl Content {
    pub fn is_webhook(&self) -> bool {
        matches!(self, Content::Webhook { .. })
    }
}

impl OutboxEntry {
    /// An entry of mail composed already, not decided by a workflow (no workflow, version or
    /// step), to `contact` at `to`, decided at `decided_at`, with no delivery attempt yet.
    pub fn composed(
        contact: &str,
        to: &str,
        kind: MailKind,
        rendered: crate::workflow::Rendered,
        decided_at: Ts,
    ) -> Self {
        OutboxEntry {
            partition: 0,
            contact: contact.into(),
            workflow: Str::default(),
            version: 0,
            step: Str::default(),
            kind,
            to: to.into(),
            content: Content::Rendered(rendered),
            decided_at,
            attempts: 0,
            first_attempt: 0,
            not_before: 0,
        }
    }
}

pub fn id_key(id: SendId) -> [u8; 16] {
    id.0.to_be_bytes()
}

/// The send id a key of `table` (outbox, sent ledger) holds.
fn id_of(table: &'static str, k: &[u8]) -> Result<SendId> {
    Ok(SendId(u128::from_be_bytes(
        k.try_into().map_err(|_| corrupt(table, "key"))?,
    )))
}

/// An outbox entry's key: the decision time, then the send id. Decisions come in time order,
/// so a commit appends at the memtable's end instead of inserting at a random hash (a hash key
/// cost ~10 % of processing at 1M contacts), and the mailer walks the oldest decisions first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxKey {
    pub at: Ts,
    pub id: SendId,
}

impl OutboxKey {
    pub fn of(id: SendId, e: &OutboxEntry) -> Self {
        OutboxKey { at: e.decided_at, id }
    }

    /// The time with its sign bit flipped, so the bytes sort as the numbers do.
    pub fn bytes(&self) -> [u8; 24] {
        let mut k = [0; 24];
        k[..8].copy_from_slice(&((self.at as u64) ^ (1 << 63)).to_be_bytes());
        k[8..].copy_from_slice(&id_key(self.id));
        k
    }

    fn parse(k: &[u8]) -> Result<Self> {
        let k: &[u8; 24] = k.try_into().map_err(|_| corrupt(CF_OUTBOX, "key"))?;
        Ok(OutboxKey {
            at: (u64::from_be_bytes(k[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64,
            id: id_of(CF_OUTBOX, &k[8..])?,
        })
    }

    /// The greatest key below this one (`None`: there is none).
    pub fn before(&self) -> Option<Self> {
        match self.id.0.checked_sub(1) {
            Some(id) => Some(OutboxKey {
                at: self.at,
                id: SendId(id),
            }),
            None => Some(OutboxKey {
                at: self.at.checked_sub(1)?,
                id: SendId(u128::MAX),
            }),
        }
    }
}

/// Marks (in the positions table) a store whose outbox keys all have the current layout, so
/// that opening it does not scan the outbox again.
const OUTBOX_LAYOUT_KEY: &[u8] = b"outbox-key-layout";
const OUTBOX_LAYOUT: &[u8] = &[2];

/// At open: rewrites outbox keys of the earlier layout unless the store is marked as done.
pub fn upgrade_outbox_keys_once(s: &Store) -> Result<usize> {
    if s.db.get_pinned_cf(s.cf(CF_POSITIONS), OUTBOX_LAYOUT_KEY)?.as_deref() == Some(OUTBOX_LAYOUT) {
        return Ok(0);
    }
    upgrade_outbox_keys(s)
}

/// Rewrites outbox keys of the earlier layout (the send id alone) as [`OutboxKey`]s and marks
/// the store as done, in one batch; an entry that does not decode sorts first, where the
/// mailer dead-letters it. Runs at the first open and after every changelog restore (a
/// changelog written by an earlier version carries the earlier keys).
pub fn upgrade_outbox_keys(s: &Store) -> Result<usize> {
    let mut b = WriteBatch::default();
    let mut n = 0;
    for r in s.db.iterator_cf(s.cf(CF_OUTBOX), rocksdb::IteratorMode::Start) {
        let (k, v) = r?;
        if k.len() == 16 {
            let id = id_of(CF_OUTBOX, &k)?;
            let at = decode_outbox(&v).map_or(Ts::MIN, |e| e.decided_at);
            b.put_cf(s.cf(CF_OUTBOX), OutboxKey { at, id }.bytes(), &v);
            b.delete_cf(s.cf(CF_OUTBOX), &k);
            n += 1;
        }
    }
    b.put_cf(s.cf(CF_POSITIONS), OUTBOX_LAYOUT_KEY, OUTBOX_LAYOUT);
    s.write(b, true)?;
    Ok(n)
}

/// Bumped whenever the outbox entry encoding changes.
const OUTBOX_FORMAT: u8 = 1;

pub fn put_outbox(s: &Store, b: &mut WriteBatch, id: SendId, e: &OutboxEntry) {
    // postcard behind a format byte, as contact states are: a send is decided on the hot path.
    put_encoded(b, s.cf(CF_OUTBOX), &OutboxKey::of(id, e).bytes(), |buf| {
        buf.push(OUTBOX_FORMAT);
        *buf = postcard::to_extend(e, std::mem::take(buf)).expect("outbox entry encodes");
    });
}

fn decode_outbox(v: &[u8]) -> Result<OutboxEntry> {
    match v.split_first() {
        Some((&OUTBOX_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(CF_OUTBOX, &e.to_string())),
        _ => Err(corrupt(CF_OUTBOX, "unknown entry format")),
    }
}

/// Up to `limit` outbox entries, oldest decision first.
pub fn outbox_page(s: &Store, limit: usize) -> Result<Vec<(SendId, OutboxEntry)>> {
    s.db.iterator_cf(s.cf(CF_OUTBOX), rocksdb::IteratorMode::Start)
        .take(limit)
        .map(|r| {
            let (k, v) = r?;
            Ok((OutboxKey::parse(&k)?.id, decode_outbox(&v)?))
        })
        .collect()
}

/// Outbox entries with their ids.
pub type OutboxPage = Vec<(SendId, OutboxEntry)>;

/// An outbox entry that does not decode: its key, stored bytes and why.
pub type Unreadable = (OutboxKey, Vec<u8>, String);

/// Up to `limit` outbox entries from key `after` on (exclusive), wrapping to the start once at
/// the end: the mailer walks the outbox round-robin so entries it must skip (backoff, a domain
/// at its limit) do not starve the ones behind them. Returns the page and the cursor to resume
/// from (`None`: the walk wrapped around). Entries that do not decode are returned apart (and
/// count towards the page), so one bad entry cannot stop the walk.
pub fn outbox_walk(
    s: &Store,
    after: Option<OutboxKey>,
    limit: usize,
    keep: impl Fn(&OutboxEntry) -> bool,
) -> Result<(OutboxPage, Vec<Unreadable>, Option<OutboxKey>)> {
    let mut out = vec![];
    let mut unreadable = vec![];
    // First from just past the cursor to the end, then (if the cursor was set) from the start
    // up to the cursor.
    let from = after.map(|a| a.bytes());
    let mut passes = vec![from];
    if after.is_some() {
        passes.push(None);
    }
    for (pass, from) in passes.iter().enumerate() {
        let mode = match from {
            Some(k) => rocksdb::IteratorMode::From(k, rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        for r in s.db.iterator_cf(s.cf(CF_OUTBOX), mode) {
            let (k, v) = r?;
            let key = OutboxKey::parse(&k)?;
            if pass == 0 && after == Some(key) {
                continue;
            }
            if pass == 1 && after.is_some_and(|a| key > a) {
                break;
            }
            match decode_outbox(&v) {
                Ok(e) if keep(&e) => out.push((key.id, e)),
                Ok(_) => continue,
                Err(e) => unreadable.push((key, v.to_vec(), e.to_string())),
            }
            if out.len() + unreadable.len() >= limit {
                return Ok((out, unreadable, Some(key)));
            }
        }
    }
    Ok((out, unreadable, None))
}

/// Every key waiting in the outbox, in order.
pub fn outbox_keys(s: &Store) -> Result<Vec<OutboxKey>> {
    s.db.iterator_cf(s.cf(CF_OUTBOX), rocksdb::IteratorMode::Start)
        .map(|r| OutboxKey::parse(&r?.0))
        .collect()
}

/// Every id waiting in the outbox, oldest decision first.
pub fn outbox_ids(s: &Store) -> Result<Vec<SendId>> {
    Ok(outbox_keys(s)?.into_iter().map(|k| k.id).collect())
}

/// The outbox entries of one contact (a scan of the whole outbox: for erasure and export).
pub fn outbox_of_contact(s: &Store, contact: &str) -> Result<Vec<(SendId, OutboxEntry)>> {
    Ok(outbox_page(s, usize::MAX)?
        .into_iter()
        .filter(|(_, e)| e.contact == contact)
        .collect())
}

/// Whether the outbox holds an entry under `key`.
pub fn outbox_has(s: &Store, key: OutboxKey) -> Result<bool> {
    Ok(s.db.get_pinned_cf(s.cf(CF_OUTBOX), key.bytes())?.is_some())
}

pub fn delete_outbox(s: &Store, b: &mut WriteBatch, key: OutboxKey) {
    b.delete_cf(s.cf(CF_OUTBOX), key.bytes());
}

// ---- suppressions: contact id → mail it must not get, effective at once --------------------

/// Written by an unsubscribe or a bounce the moment it happens, so mail already waiting in the
/// outbox is held back too (the contact's state learns the same from the event shortly after).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// Unsubscribed from all marketing mail.
    pub marketing: bool,
    /// Hard bounce or complaint: no mail at all (internal alerts to staff still go).
    pub all: bool,
    /// Unsubscribed from these workflows only.
    pub workflows: std::collections::BTreeSet<String>,
}

impl Suppression {
    pub fn blocks(&self, kind: MailKind, workflow: &str) -> bool {
        match kind {
            MailKind::Internal => false,
            MailKind::Transactional => self.all,
            MailKind::Marketing => self.all || self.marketing || self.workflows.contains(workflow),
        }
    }
}

pub fn get_suppression(s: &Store, contact: &str) -> Result<Option<Suppression>> {
    match s.db.get_pinned_cf(s.cf(CF_SUPPRESSIONS), contact.as_bytes())? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| corrupt(CF_SUPPRESSIONS, &e.to_string())),
        None => Ok(None),
    }
}

pub fn delete_suppression(s: &Store, b: &mut WriteBatch, contact: &str) {
    b.delete_cf(s.cf(CF_SUPPRESSIONS), contact.as_bytes());
}

pub fn put_suppression(s: &Store, b: &mut WriteBatch, contact: &str, sup: &Suppression) {
    b.put_cf(
        s.cf(CF_SUPPRESSIONS),
        contact.as_bytes(),
        serde_json::to_vec(sup).expect("suppression encodes"),
    );
}

// ---- send quotas: messages counted in the current hour and day ----------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaCount {
    pub hour_start: Ts,
    pub hour: u64,
    pub day_start: Ts,
    pub day: u64,
}

const QUOTA_KEY: &[u8] = b"mail-quota";

pub fn get_quota(s: &Store) -> Result<QuotaCount> {
    Ok(s.db
        .get_pinned_cf(s.cf(CF_POSITIONS), QUOTA_KEY)?
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default())
}

pub fn put_quota(s: &Store, b: &mut WriteBatch, q: &QuotaCount) {
    b.put_cf(
        s.cf(CF_POSITIONS),
        QUOTA_KEY,
        serde_json::to_vec(q).expect("quota encodes"),
    );
}

fn corrupt(table: &'static str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.into(),
    }
}

// ---- sent ledger: send id → time the transport accepted it ----------------------------------

pub fn is_sent(s: &Store, id: SendId) -> Result<bool> {
    Ok(s.db.get_pinned_cf(s.cf(CF_SENT), id_key(id))?.is_some())
}

/// Records that a transport accepted `id` (the caller takes it out of the outbox in the same
/// batch).
pub fn mark_sent(s: &Store, b: &mut WriteBatch, id: SendId, at: Ts) {
    b.put_cf(s.cf(CF_SENT), id_key(id), at.to_be_bytes());
}

pub fn sent_ids(s: &Store) -> Result<Vec<SendId>> {
    s.db.iterator_cf(s.cf(CF_SENT), rocksdb::IteratorMode::Start)
        .map(|r| {
            let (k, _) = r?;
            id_of(CF_SENT, &k)
        })
        .collect()
}

// ---- positions: partition → last consumed log offset and the partition's clock --------------

/// Where a partition is: the last log offset it consumed (if any) and the input time it has
/// reached (the clock restarts from here, and replay fires timers up to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub offset: Option<u64>,
    pub clock: Ts,
}

fn position_key(partition: u16) -> [u8; 2] {
    partition.to_be_bytes()
}

pub fn get_position(s: &Store, partition: u16) -> Result<Position> {
    let Some(v) = s.db.get_pinned_cf(s.cf(CF_POSITIONS), position_key(partition))? else {
        return Ok(Position {
            offset: None,
            clock: Ts::MIN,
        });
    };
    let bad = || corrupt(CF_POSITIONS, "value");
    let offset = u64::from_be_bytes(v.get(0..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let clock = i64::from_be_bytes(v.get(8..16).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    Ok(Position {
        // u64::MAX: no record consumed yet, only timers (the clock still moved).
        offset: (offset != u64::MAX).then_some(offset),
        clock,
    })
}

pub fn put_position(s: &Store, b: &mut WriteBatch, partition: u16, pos: Position) {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&pos.offset.unwrap_or(u64::MAX).to_be_bytes());
    v[8..].copy_from_slice(&pos.clock.to_be_bytes());
    b.put_cf(s.cf(CF_POSITIONS), position_key(partition), v);
}

// ---- counters: workflow, version, step, metric → value (partition-local deltas summed) ------

pub fn counter_key(partition: u16, workflow: &str, version: u32, step: &str, metric: Metric) -> Vec<u8> {
    let mut k = Vec::with_capacity(workflow.len() + step.len() + 10);
    k.extend_from_slice(workflow.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(step.as_bytes());
    k.push(0);
    k.push(metric.code());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub fn get_counter(s: &Store, key: &[u8]) -> Result<i64> {
    Ok(s.db
        .get_pinned_cf(s.cf(CF_COUNTERS), key)?
        .and_then(|v| v.as_ref().try_into().ok().map(i64::from_be_bytes))
        .unwrap_or(0))
}

pub fn put_counter(s: &Store, b: &mut WriteBatch, key: &[u8], value: i64) {
    b.put_cf(s.cf(CF_COUNTERS), key, value.to_be_bytes());
}

/// All counters summed over partitions: (workflow, version, step, metric) → value.
pub fn counters(s: &Store) -> Result<std::collections::BTreeMap<(String, u32, String, Metric), i64>> {
    let mut out = std::collections::BTreeMap::new();
    for r in s.db.iterator_cf(s.cf(CF_COUNTERS), rocksdb::IteratorMode::Start) {
        let (k, v) = r?;
        let bad = || corrupt(CF_COUNTERS, "key");
        let z = k.iter().position(|b| *b == 0).ok_or_else(bad)?;
        let wf = String::from_utf8_lossy(&k[..z]).into_owned();
        let rest = &k[z + 1..];
        let version = u32::from_be_bytes(rest.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let rest = &rest[4..];
        let z = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
        let step = String::from_utf8_lossy(&rest[..z]).into_owned();
        let metric = Metric::from_code(*rest.get(z + 1).ok_or_else(bad)?).ok_or_else(bad)?;
        let value = i64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt(CF_COUNTERS, "value"))?);
        *out.entry((wf, version, step, metric)).or_insert(0) += value;
    }
    Ok(out)
}

// ---- workflow versions ------------------------------------------------------------------------

pub fn workflow_versions(s: &Store) -> Result<Vec<StoredVersion>> {
    s.db.iterator_cf(s.cf(CF_WORKFLOWS), rocksdb::IteratorMode::Start)
        .map(|r| {
            let (_, v) = r?;
            serde_json::from_slice(&v).map_err(|e| corrupt(CF_WORKFLOWS, &e.to_string()))
        })
        .collect()
}

pub fn put_workflow_versions(s: &Store, versions: &[StoredVersion]) -> Result<()> {
    let mut b = WriteBatch::default();
    for v in versions {
        let key = format!("{}\u{0}{:010}", v.id, v.version);
        b.put_cf(s.cf(CF_WORKFLOWS), key, serde_json::to_vec(v).expect("version encodes"));
    }
    s.write(b, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(decided_at: Ts) -> OutboxEntry {
        let text = crate::workflow::Rendered {
            subject: "Hi".into(),
            html: None,
            text: Some("x".into()),
        };
        OutboxEntry::composed("c1", "a@example.org", MailKind::Transactional, text, decided_at)
    }

    /// Keys sort by decision time (negative times too), then id; `before` is the greatest key
    /// below; the walk goes oldest first and wraps back to the start past its cursor.
    #[test]
    fn outbox_keys_order_by_decision_time_and_the_walk_follows_it() {
        let k = |at, id| OutboxKey { at, id: SendId(id) };
        let mut keys = [
            k(5, 1),
            k(-3, 9),
            k(5, 0),
            k(i64::MIN, 7),
            k(0, u128::MAX),
            k(i64::MAX, 0),
        ];
        let mut by_bytes = keys;
        keys.sort();
        by_bytes.sort_by_key(|k| k.bytes());
        assert_eq!(keys, by_bytes);
        assert_eq!(k(5, 1).before(), Some(k(5, 0)));
        assert_eq!(k(5, 0).before(), Some(k(4, u128::MAX)));
        assert_eq!(k(i64::MIN, 0).before(), None);
        for key in keys {
            assert_eq!(OutboxKey::parse(&key.bytes()).unwrap(), key);
        }

        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        for (id, at) in [(1, 300), (2, 100), (3, 200)] {
            put_outbox(&s, &mut b, SendId(id), &entry(at));
        }
        s.write(b, false).unwrap();
        assert_eq!(outbox_ids(&s).unwrap(), [SendId(2), SendId(3), SendId(1)]);
        let (page, _, cursor) = outbox_walk(&s, None, 2, |_| true).unwrap();
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), [SendId(2), SendId(3)]);
        assert_eq!(cursor, Some(k(200, 3)));
        let (page, _, cursor) = outbox_walk(&s, cursor, 5, |_| true).unwrap();
        assert_eq!(
            page.iter().map(|p| p.0).collect::<Vec<_>>(),
            [SendId(1), SendId(2), SendId(3)]
        );
        assert_eq!(cursor, None, "wrapped around");
        let mut b = WriteBatch::default();
        delete_outbox(&s, &mut b, OutboxKey::of(SendId(3), &entry(200)));
        s.write(b, false).unwrap();
        assert_eq!(outbox_ids(&s).unwrap(), [SendId(2), SendId(1)]);
    }

    /// An outbox written with the earlier keys (the send id alone) is rewritten at open and
    /// keeps every entry, an unreadable one included.
    #[test]
    fn outbox_keys_of_the_earlier_layout_are_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            let v = postcard::to_extend(&entry(42), vec![OUTBOX_FORMAT]).unwrap();
            b.put_cf(s.cf(CF_OUTBOX), id_key(SendId(7)), v);
            b.put_cf(s.cf(CF_OUTBOX), id_key(SendId(8)), b"\x7fnot an entry");
            // A store of the earlier version has no marker.
            b.delete_cf(s.cf(CF_POSITIONS), OUTBOX_LAYOUT_KEY);
            s.write(b, true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let keys = outbox_keys(&s).unwrap();
        assert_eq!(
            keys,
            [
                OutboxKey {
                    at: Ts::MIN,
                    id: SendId(8)
                },
                OutboxKey { at: 42, id: SendId(7) }
            ]
        );
        assert!(outbox_page(&s, 5).unwrap_err().to_string().contains("format"));
        let (page, bad, _) = outbox_walk(&s, None, 5, |_| true).unwrap();
        assert_eq!((page.len(), page[0].0, bad.len()), (1, SendId(7), 1));
        assert_eq!(upgrade_outbox_keys(&s).unwrap(), 0, "nothing left to upgrade");
    }

    /// Once marked, an open leaves the outbox alone: a key of the earlier layout written after
    /// the mark (which no current writer does) stays as it is until an explicit upgrade.
    #[test]
    fn a_marked_store_opens_without_scanning_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let v = s.db.get_cf(s.cf(CF_POSITIONS), OUTBOX_LAYOUT_KEY).unwrap();
            assert_eq!(v.as_deref(), Some(OUTBOX_LAYOUT), "a new store is marked at open");
            let mut b = WriteBatch::default();
            let v = postcard::to_extend(&entry(42), vec![OUTBOX_FORMAT]).unwrap();
            b.put_cf(s.cf(CF_OUTBOX), id_key(SendId(7)), v);
            s.write(b, true).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let raw: Vec<usize> =
            s.db.iterator_cf(s.cf(CF_OUTBOX), rocksdb::IteratorMode::Start)
                .map(|r| r.unwrap().0.len())
                .collect();
        assert_eq!(raw, [16], "not rewritten by the open");
        assert_eq!(upgrade_outbox_keys(&s).unwrap(), 1);
        assert_eq!(outbox_keys(&s).unwrap(), [OutboxKey { at: 42, id: SendId(7) }]);
    }
}
