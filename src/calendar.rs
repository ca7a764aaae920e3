//! Local-time arithmetic in the contact's time zone: "at 09:00 local", "7 days before birthday",
//! quiet hours. All of it is pure: instants in, instants out.

use crate::time::Ts;
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;

/// A date-like trait or property value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateValue {
    /// A calendar date with no time zone (`1990-05-14`): interpreted in the contact's zone.
    Date(NaiveDate),
    /// An exact instant (RFC 3339).
    Instant(Ts),
}

pub fn parse_date_value(s: &str) -> Option<DateValue> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(DateValue::Date(d));
    }
    crate::time::parse_rfc3339(s).map(DateValue::Instant)
}

pub fn to_local(tz: Tz, t: Ts) -> NaiveDateTime {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap_or_default()
        .with_timezone(&tz)
        .naive_local()
}

/// The instant of a local wall-clock time. In a DST gap the wall time does not exist and the
/// moment just after the gap is used; in an overlap, the earlier of the two.
pub fn from_local(tz: Tz, local: NaiveDateTime) -> Ts {
    match tz.from_local_datetime(&local).earliest() {
        Some(d) => d.timestamp_millis(),
        None => from_local(tz, local + Duration::hours(1)),
    }
}

fn at(date: NaiveDate, (h, m): (u32, u32)) -> NaiveDateTime {
    date.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default())
}

/// `base` (a date value), shifted by `offset`, then placed at local time `time` if given.
/// The offset is applied to local wall time so that "1 day before, 09:00" stays at 09:00
/// across a DST change.
pub fn resolve(tz: Tz, base: DateValue, offset: i64, time: Option<(u32, u32)>) -> Ts {
    let local = match base {
        DateValue::Date(d) => at(d, (0, 0)),
        DateValue::Instant(t) => to_local(tz, t),
    } + Duration::milliseconds(offset);
    match time {
        Some(hm) => from_local(tz, at(local.date(), hm)),
        None => from_local(tz, local),
    }
}

/// Local time `time` on the day `offset` from now; if that moment is not in the future (same-day
/// "next 09:00" after 09:00), the day after.
pub fn next_time_of_day(tz: Tz, now: Ts, offset: i64, time: (u32, u32)) -> Ts {
    let day = (to_local(tz, now) + Duration::milliseconds(offset)).date();
    let candidate = from_local(tz, at(day, time));
    if candidate > now {
        candidate
    } else {
        from_local(tz, at(day + Duration::days(1), time))
    }
}

/// Next anniversary of `date` (month and day), shifted by `offset`, at `time`, strictly after
/// `now`. 29 February falls on 28 February in other years.
pub fn next_yearly(tz: Tz, date: NaiveDate, offset: i64, time: (u32, u32), now: Ts) -> Ts {
    let this_year = to_local(tz, now).year();
    (this_year - 1..=this_year + 2)
        .filter_map(|y| {
            NaiveDate::from_ymd_opt(y, date.month(), date.day())
                .or_else(|| NaiveDate::from_ymd_opt(y, date.month(), 28))
        })
        .map(|d| resolve(tz, DateValue::Date(d), offset, Some(time)))
        .find(|t| *t > now)
        .unwrap_or(i64::MAX)
}

/// Whether local time of `now` is inside `[start, end)` minutes of day (may wrap midnight),
/// and if so when it ends.
pub fn quiet_until(tz: Tz, now: Ts, (start, end): (u32, u32)) -> Option<Ts> {
    let local = to_local(tz, now);
    let minute = local.time().hour_min();
    let inside = if start <= end {
        minute >= start && minute < end
    } else {
        minute >= start || minute < end
    };
    if !inside {
        return None;
    }
    let end_hm = (end / 60, end % 60);
    let day = if start > end && minute >= start {
        local.date() + Duration::days(1)
    } else {
        local.date()
    };
    Some(from_local(tz, at(day, end_hm)))
}

trait HourMin {
    fn hour_min(&self) -> u32;
}
impl HourMin for NaiveTime {
    fn hour_min(&self) -> u32 {
        use chrono::Timelike;
        self.hour() * 60 + self.minute()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{HOUR, parse_rfc3339};

    fn t(s: &str) -> Ts {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn local_times_follow_the_zone() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let d = DateValue::Date(NaiveDate::from_ymd_opt(2026, 12, 10).unwrap());
        assert_eq!(
            resolve(tz, d, -crate::time::DAY, Some((9, 0))),
            t("2026-12-09T01:00:00Z")
        );
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            next_time_of_day(ny, t("2026-03-07T20:00:00Z"), 0, (9, 0)),
            t("2026-03-08T13:00:00Z")
        );
    }

    #[test]
    fn dst_gap_moves_forward() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let gap = NaiveDate::from_ymd_opt(2026, 3, 8)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(from_local(ny, gap), t("2026-03-08T07:30:00Z"));
    }

    #[test]
    fn yearly_birthday_and_leap_day() {
        let utc = chrono_tz::UTC;
        let bday = NaiveDate::from_ymd_opt(1990, 5, 14).unwrap();
        let week = -7 * crate::time::DAY;
        assert_eq!(
            next_yearly(utc, bday, week, (10, 0), t("2026-01-01T00:00:00Z")),
            t("2026-05-07T10:00:00Z")
        );
        assert_eq!(
            next_yearly(utc, bday, week, (10, 0), t("2026-05-07T10:00:00Z")),
            t("2027-05-07T10:00:00Z")
        );
        let leap = NaiveDate::from_ymd_opt(2000, 2, 29).unwrap();
        assert_eq!(
            next_yearly(utc, leap, 0, (0, 0), t("2026-01-01T00:00:00Z")),
            t("2026-02-28T00:00:00Z")
        );
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let utc = chrono_tz::UTC;
        let q = (21 * 60, 8 * 60);
        assert_eq!(
            quiet_until(utc, t("2026-01-01T23:00:00Z"), q),
            Some(t("2026-01-02T08:00:00Z"))
        );
        assert_eq!(
            quiet_until(utc, t("2026-01-02T03:00:00Z"), q),
            Some(t("2026-01-02T08:00:00Z"))
        );
        assert_eq!(quiet_until(utc, t("2026-01-02T12:00:00Z"), q), None);
        assert_eq!(
            quiet_until(utc, t("2026-01-02T08:00:00Z") - HOUR, q),
            Some(t("2026-01-02T08:00:00Z"))
        );
    }
}
