//! Sending limits: a global token bucket, one per recipient domain, hourly and daily quotas and
//! an IP warm-up schedule. Every limit is scaled by the share of partitions this instance owns
//! (1 without Kafka), so N instances together stay under the configured figures. Mail over a
//! limit waits for room; nothing here ever drops a message.

use crate::config::{RateSettings, WarmupSettings};
use crate::storage::tables::QuotaCount;
use crate::time::{DAY, HOUR, Ts};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

/// A bucket refilling at `rate` per second. The burst is a tenth of a second's worth (at least
/// one): enough to carry the rate over the pause while a round commits, small enough that a
/// minute at full speed exceeds `rate` by at most 0.17 %.
pub(crate) fn quota(rate: f64) -> Option<Quota> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate);
    let burst = NonZeroU32::new(((rate / 10.0).ceil() as u32).max(1)).expect("at least one");
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

pub struct Limits {
    rate: RateSettings,
    warmup: WarmupSettings,
    warmup_start: Option<chrono::NaiveDate>,
    share: f64,
    global: Option<DefaultDirectRateLimiter>,
    domains: HashMap<String, DefaultDirectRateLimiter>,
    other_domains: Option<DefaultKeyedRateLimiter<String>>,
    pub count: QuotaCount,
}

/// Why a message cannot go now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    /// The hour's or the day's quota is used up: nothing goes before this wall time.
    Quota(Ts),
    /// This recipient domain is at its rate: try other mail, this one after about this long.
    Domain(Duration),
}

impl Limits {
    pub fn new(
        rate: RateSettings,
        warmup: WarmupSettings,
        warmup_start: Option<chrono::NaiveDate>,
        count: QuotaCount,
    ) -> Self {
        let mut l = Limits {
            rate,
            warmup,
            warmup_start,
            share: f64::NAN,
            global: None,
            domains: HashMap::new(),
            other_domains: None,
            count,
        };
        l.rescale(1.0);
        l
    }

    /// Rebuilds the buckets for a new share of the partitions (after a rebalance).
    pub fn rescale(&mut self, share: f64) {
        if (share - self.share).abs() < 1e-9 {
            return;
        }
        self.share = share;
        let scaled = |r: f64| if share > 0.0 { quota(r * share) } else { None };
        self.global = scaled(self.rate.per_second).map(RateLimiter::direct);
        self.domains = self
            .rate
            .domains
            .iter()
            .filter_map(|(d, r)| scaled(*r).map(|q| (d.to_ascii_lowercase(), RateLimiter::direct(q))))
            .collect();
        self.other_domains = scaled(self.rate.default_domain_per_second).map(RateLimiter::keyed);
    }

    /// This instance's global messages/s (0: none).
    pub fn global_rate(&self) -> f64 {
        self.rate.per_second * self.share
    }

    /// The hour and day caps in force at `now` (quota and warm-up, whichever is lower),
    /// scaled by this instance's share.
    pub fn caps(&self, now: Ts) -> (Option<u64>, Option<u64>) {
        let scale = |n: u64| (n as f64 * self.share).floor() as u64;
        let mut hour = (self.rate.per_hour > 0).then(|| scale(self.rate.per_hour));
        let mut day = (self.rate.per_day > 0).then(|| scale(self.rate.per_day));
        if let Some(start) = self.warmup_start {
            let today = chrono::DateTime::from_timestamp_millis(now)
                .map(|t| t.date_naive())
                .unwrap_or(start);
            let n = (today - start).num_days().max(0) as usize;
            if let Some(&allowed) = self.warmup.daily.get(n) {
                let d = scale(allowed);
                let h = scale((allowed as f64 * self.warmup.hour_share).ceil() as u64);
                day = Some(day.map_or(d, |x| x.min(d)));
                hour = Some(hour.map_or(h, |x| x.min(h)));
            }
        }
        (hour, day)
    }

    fn roll(&mut self, now: Ts) {
        let hour_start = now - now.rem_euclid(HOUR);
        let day_start = now - now.rem_euclid(DAY);
        if self.count.hour_start != hour_start {
            self.count.hour_start = hour_start;
            self.count.hour = 0;
        }
        if self.count.day_start != day_start {
            self.count.day_start = day_start;
            self.count.day = 0;
        }
    }

    /// Takes one message's room under the quotas, the domain's rate and then the global rate
    /// (waiting for the global bucket: every message needs it, so there is nothing else to do).
    pub async fn admit(&mut self, domain: &str, now: Ts) -> Result<(), Hold> {
        self.roll(now);
        let (hour, day) = self.caps(now);
        if day.is_some_and(|d| self.count.day >= d) {
            return Err(Hold::Quota(self.count.day_start + DAY));
        }
        if hour.is_some_and(|h| self.count.hour >= h) {
            return Err(Hold::Quota(self.count.hour_start + HOUR));
        }
        let domain_check = match self.domains.get(domain) {
            Some(l) => l.check(),
            None => match &self.other_domains {
                Some(l) => l.check_key(&domain.to_owned()),
                None => Ok(()),
            },
        };
        if let Err(not_until) = domain_check {
            // A clock only when one is needed: making one calibrates (CPUID), a few per cent of
            // the mailer's time when it was made for every message.
            return Err(Hold::Domain(not_until.wait_time_from(DefaultClock::default().now())));
        }
        if let Some(g) = &self.global {
            g.until_ready().await;
        }
        self.count.hour += 1;
        self.count.day += 1;
        Ok(())
    }

    /// Gives back the quota room of a message that did not go (the server was unavailable).
    pub fn refund(&mut self) {
        self.count.hour = self.count.hour.saturating_sub(1);
        self.count.day = self.count.day.saturating_sub(1);
    }

    /// Forgets idle per-domain buckets (the keyed limiter grows with the domains seen).
    pub fn tidy(&self) {
        if let Some(l) = &self.other_domains {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn rate(per_hour: u64, per_day: u64) -> RateSettings {
        RateSettings {
            per_second: 0.0,
            per_hour,
            per_day,
            default_domain_per_second: 0.0,
            domains: Default::default(),
        }
    }

    fn warmup(daily: Vec<u64>) -> WarmupSettings {
        WarmupSettings {
            start: String::new(),
            daily,
            hour_share: 0.1,
        }
    }

    #[test]
    fn quotas_hold_mail_until_the_next_hour_and_day_then_let_it_go() {
        let mut l = Limits::new(rate(3, 5), warmup(vec![]), None, QuotaCount::default());
        let t = parse_rfc3339("2026-11-23T10:59:00Z").unwrap();
        let run = |l: &mut Limits, at| futures::executor::block_on(l.admit("example.org", at));
        for _ in 0..3 {
            assert_eq!(run(&mut l, t), Ok(()));
        }
        let next_hour = parse_rfc3339("2026-11-23T11:00:00Z").unwrap();
        assert_eq!(run(&mut l, t), Err(Hold::Quota(next_hour)));
        assert_eq!(run(&mut l, next_hour), Ok(()));
        assert_eq!(run(&mut l, next_hour), Ok(()));
        // Five today: the day's quota now holds it to midnight, though the hour has room.
        let midnight = parse_rfc3339("2026-11-24T00:00:00Z").unwrap();
        assert_eq!(run(&mut l, next_hour + 1), Err(Hold::Quota(midnight)));
        assert_eq!(run(&mut l, midnight), Ok(()));
    }

    #[test]
    fn warm_up_ramps_by_day_splits_the_day_into_hours_and_ends_after_the_schedule() {
        let start = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let mut l = Limits::new(
            rate(0, 0),
            warmup(vec![50, 100, 500]),
            Some(start),
            QuotaCount::default(),
        );
        let day = |d: u32| parse_rfc3339(&format!("2026-11-{d:02}T12:00:00Z")).unwrap();
        assert_eq!(l.caps(day(1)), (Some(5), Some(50)));
        assert_eq!(l.caps(day(2)), (Some(10), Some(100)));
        assert_eq!(l.caps(day(3)), (Some(50), Some(500)));
        assert_eq!(l.caps(day(4)), (None, None), "past the schedule: no warm-up cap");
        // A configured quota lower than the schedule wins; half the partitions, half of each.
        let mut q = Limits::new(rate(7, 60), warmup(vec![50, 100]), Some(start), QuotaCount::default());
        assert_eq!(q.caps(day(2)), (Some(7), Some(60)));
        q.rescale(0.5);
        assert_eq!(q.caps(day(2)), (Some(3), Some(30)));
        l.rescale(0.5);
        assert_eq!(l.caps(day(1)), (Some(2), Some(25)));
    }

    #[test]
    fn a_domain_at_its_rate_holds_only_its_own_mail() {
        let mut r = rate(0, 0);
        r.domains.insert("gmail.com".into(), 1.0);
        let mut l = Limits::new(r, warmup(vec![]), None, QuotaCount::default());
        let now = 0;
        let mut run = |d: &str| futures::executor::block_on(l.admit(d, now));
        assert_eq!(run("gmail.com"), Ok(()));
        assert!(matches!(run("gmail.com"), Err(Hold::Domain(_))));
        assert_eq!(run("example.org"), Ok(()));
    }
}
