//! A contact's whole state: traits, tags, lists, counters, active enrollments and pending timers.
//! Encoded with postcard behind a format version byte.

use crate::time::{DAY, Ts};
use crate::value::Map;
use crate::workflow::StepIdx;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Bumped whenever the encoding changes; decoders keep reading older versions.
pub const STATE_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContactState {
    /// Shared so a send can snapshot the traits it renders with at no cost.
    pub traits: Arc<Map>,
    pub tags: BTreeSet<String>,
    /// Static list memberships (from `add_to_list`).
    pub lists: BTreeSet<String>,
    pub unsubscribed: bool,
    /// Workflows the contact unsubscribed from individually.
    pub unsubscribed_from: BTreeSet<String>,
    /// Hard bounce or complaint: no marketing, no transactional mail.
    pub suppressed: bool,
    pub last_activity: Option<Ts>,
    pub counters: Vec<CounterState>,
    pub enrollments: Vec<Enrollment>,
    pub history: Vec<EntryRecord>,
    /// Times of recent marketing sends, for the frequency cap.
    pub marketing_sends: Vec<Ts>,
    pub timers: Vec<Timer>,
    pub next_timer: u64,
    pub next_enrollment: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    pub id: u64,
    pub workflow: Arc<str>,
    pub version: u32,
    pub step: StepIdx,
    /// The timer this enrollment waits on (wait steps, wait_for timeouts, deferred sends).
    pub timer: Option<u64>,
    pub entered_at: Ts,
    /// Properties of the event that started the enrollment (`{{ event.* }}` in templates).
    pub event: Arc<Map>,
    pub sends: Vec<SentRecord>,
    pub send_seq: u32,
    /// Set while handling an input when the enrollment ends; such enrollments are dropped
    /// before the state is returned, so this is never stored.
    #[serde(skip)]
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRecord {
    pub step: StepIdx,
    pub id: SendId,
    pub opened: bool,
    pub clicked: bool,
}

/// Deterministic id of one send: the same enrollment step always yields the same id, so a
/// replay or a crash never sends twice (the sent ledger drops a repeated id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SendId(pub u128);

impl std::fmt::Display for SendId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for SendId {
    type Err = std::num::ParseIntError;
    /// Accepts the bare hex id or a `Message-ID` such as `<hex@domain>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_start_matches('<');
        let hex = s.split('@').next().unwrap_or(s);
        u128::from_str_radix(hex, 16).map(SendId)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub workflow: Arc<str>,
    pub last_entered: Ts,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub id: u64,
    pub due: Ts,
    pub purpose: Purpose,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    Enrollment(u64),
    Inactivity(Arc<str>),
    /// A date trigger: workflow and trigger index.
    Date(Arc<str>, u16),
}

/// Daily buckets of one rolling counter, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    pub key: u64,
    pub buckets: Vec<(u32, u32)>,
}

pub fn day_of(t: Ts) -> u32 {
    t.div_euclid(DAY).max(0) as u32
}

impl ContactState {
    /// The latest time the state records: its last activity, an enrollment's or a workflow's
    /// last entry, a marketing send. Deterministic, for choosing between two states of one
    /// contact (a changelog restore that meets the contact on two partitions).
    pub fn last_change(&self) -> Ts {
        let entered = self.enrollments.iter().map(|e| e.entered_at);
        let history = self.history.iter().map(|h| h.last_entered);
        self.last_activity
            .into_iter()
            .chain(entered)
            .chain(history)
            .chain(self.marketing_sends.iter().copied())
            .max()
            .unwrap_or(Ts::MIN)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding to `out` (a buffer reused across contacts).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(STATE_FORMAT);
        let buf = std::mem::take(out);
        *out = postcard::to_extend(self, buf).expect("contact state always encodes");
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            Some((&STATE_FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((v, _)) => Err(DecodeError::Version(*v)),
            None => Err(DecodeError::Empty),
        }
    }

    /// Events counted in the last `days` days (today included).
    pub fn count(&self, key: u64, now: Ts, days: u32) -> u32 {
        let today = day_of(now);
        let from = today.saturating_sub(days.saturating_sub(1));
        self.counters.iter().find(|c| c.key == key).map_or(0, |c| {
            c.buckets
                .iter()
                .filter(|(d, _)| *d >= from && *d <= today)
                .map(|(_, n)| n)
                .sum()
        })
    }

    pub fn bump_counter(&mut self, key: u64, now: Ts, retention_days: u32) {
        let today = day_of(now);
        let pos = match self.counters.binary_search_by_key(&key, |c| c.key) {
            Ok(p) => p,
            Err(p) => {
                self.counters.insert(p, CounterState { key, buckets: vec![] });
                p
            }
        };
        let c = &mut self.counters[pos];
        let keep_from = today.saturating_sub(retention_days);
        c.buckets.retain(|(d, _)| *d >= keep_from);
        match c.buckets.last_mut() {
            Some((d, n)) if *d == today => *n += 1,
            _ => c.buckets.push((today, 1)),
        }
    }

    /// A readable view for operators (`dripline contact show`).
    pub fn to_json(&self) -> serde_json::Value {
        use crate::time::format_rfc3339;
        let traits = self.traits.to_json();
        serde_json::json!({
            "traits": traits,
            "tags": self.tags,
            "lists": self.lists,
            "unsubscribed": self.unsubscribed,
            "unsubscribed_from": self.unsubscribed_from,
            "suppressed": self.suppressed,
            "last_activity": self.last_activity.map(format_rfc3339),
            "enrollments": self.enrollments.iter().map(|e| serde_json::json!({
                "id": e.id,
                "workflow": &*e.workflow,
                "version": e.version,
                "step": e.step,
                "entered_at": format_rfc3339(e.entered_at),
                "waiting_until": e.timer.and_then(|t| self.timers.iter().find(|x| x.id == t)).map(|t| format_rfc3339(t.due)),
                "sent": e.sends.iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "timers": self.timers.iter().map(|t| serde_json::json!({"id": t.id, "due": format_rfc3339(t.due), "purpose": format!("{:?}", t.purpose)})).collect::<Vec<_>>(),
            "history": self.history.iter().map(|h| serde_json::json!({"workflow": &*h.workflow, "last_entered": format_rfc3339(h.last_entered), "count": h.count})).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty state record")]
    Empty,
    #[error("unknown state format version {0}")]
    Version(u8),
    #[error("corrupt state record: {0}")]
    Postcard(#[from] postcard::Error),
}
