//! Time as the engine sees it: milliseconds since the Unix epoch, UTC.
//!
//! The state machine never reads a clock; every input carries its time. Only the runtime's
//! [`Clock`] implementations look at the wall, and tests inject a [`ManualClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Ts = i64;

pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

pub trait Clock: Send + Sync {
    fn now(&self) -> Ts;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Ts {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to; shared by clones.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Ts) -> Self {
        Self(Arc::new(AtomicI64::new(start)))
    }
    pub fn set(&self, t: Ts) {
        self.0.store(t, Ordering::SeqCst);
    }
    pub fn advance(&self, by: i64) -> Ts {
        self.0.fetch_add(by, Ordering::SeqCst) + by
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Ts {
        self.0.load(Ordering::SeqCst)
    }
}

/// Parses RFC 3339 (`2026-11-23T10:00:00Z`) into [`Ts`].
pub fn parse_rfc3339(s: &str) -> Option<Ts> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Formats [`Ts`] as RFC 3339 in UTC with second precision.
pub fn format_rfc3339(t: Ts) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}
