//! Calendar invites (RFC 5545, iTIP `METHOD:REQUEST`) for templates with a `calendar`, built
//! with the `icalendar` crate. Everything in one is derived from the send: its UID from the send
//! id and its DTSTAMP from the decision time, so the same decision, live or replayed, makes the
//! same invite.

use crate::machine::SendId;
use crate::time::Ts;
use crate::workflow::RenderedCalendar;
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use icalendar::{Calendar, Component, Event, EventLike, EventStatus, Property};
use lettre::message::Mailbox;

/// A start or end as written: an instant, or a date for an all-day event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    At(DateTime<Utc>),
    Day(NaiveDate),
}

/// Reads an RFC 3339 time, a local `YYYY-MM-DDTHH:MM[:SS]` (or with a space) in `tz`, or a date.
fn when(s: &str, tz: Tz) -> Result<When, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(When::At(t.with_timezone(&Utc)));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(local) = NaiveDateTime::parse_from_str(s, f) {
            // A time that a change of clocks skips is read as the first valid one after it.
            let t = tz
                .from_local_datetime(&local)
                .earliest()
                .or_else(|| tz.from_local_datetime(&(local + Duration::hours(1))).earliest())
                .ok_or_else(|| format!("`{s}` does not exist in {tz}"))?;
            return Ok(When::At(t.with_timezone(&Utc)));
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(When::Day)
        .map_err(|_| format!("`{s}` is not an RFC 3339 time, a local YYYY-MM-DDTHH:MM or a date"))
}

/// A name as a parameter value: the crate quotes only values with `:` or `;`, so the other
/// characters a parameter cannot hold unquoted (`,`, `"`) and those go.
fn param(name: &str) -> String {
    name.replace(['"', ',', ';', ':'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The invite's UID, stable across retries and replay: from the calendar's `key` and the
/// contact (so every message about one event to one contact shares it, whichever workflow sends
/// it), else the send id.
pub fn uid(id: SendId, key: Option<(&str, &str)>, domain: &str) -> String {
    match key {
        Some((contact, key)) => {
            let h = xxhash_rust::xxh3::xxh3_128(format!("{contact}\u{0}{key}").as_bytes());
            format!("{h:032x}@{domain}")
        }
        None => format!("{id}@{domain}"),
    }
}

/// The revision of an invite: seconds from 2020 to its decision, so a later message about the
/// same event (an update, a cancellation) always carries a higher SEQUENCE.
fn sequence(decided_at: Ts) -> u32 {
    ((decided_at - 1_577_836_800_000).max(0) / 1000) as u32
}

/// The send an invite goes with.
pub struct Send<'a> {
    pub id: SendId,
    pub contact: &'a str,
    pub decided_at: Ts,
}

/// The `.ics` text of the invite (`METHOD:REQUEST`, or `CANCEL`). `tz` reads local times (the
/// contact's zone) unless the calendar names its own.
pub fn ics(
    cal: &RenderedCalendar,
    send: &Send,
    domain: &str,
    organizer: &Mailbox,
    attendee: &Mailbox,
    tz: Tz,
) -> Result<String, String> {
    let Send {
        id,
        contact,
        decided_at,
    } = *send;
    let tz = match &cal.timezone {
        Some(z) => z
            .parse()
            .map_err(|_| format!("calendar timezone: `{z}` is not a time zone"))?,
        None => tz,
    };
    let start = when(&cal.start, tz).map_err(|e| format!("calendar start: {e}"))?;
    let end = match &cal.end {
        Some(e) => when(e, tz).map_err(|e| format!("calendar end: {e}"))?,
        // An hour for a meeting, the day for an all-day event.
        None => match start {
            When::At(t) => When::At(
                t.checked_add_signed(Duration::hours(1))
                    .ok_or("calendar start: out of range")?,
            ),
            When::Day(d) => When::Day(d.succ_opt().ok_or("calendar start: out of range")?),
        },
    };
    let mut event = Event::new();
    let key = cal.key.as_deref().map(|k| (contact, k));
    event
        .uid(&uid(id, key, domain))
        .timestamp(DateTime::from_timestamp_millis(decided_at).unwrap_or_default())
        .sequence(sequence(decided_at))
        .summary(&cal.title)
        .status(if cal.cancel {
            EventStatus::Cancelled
        } else {
            EventStatus::Confirmed
        });
    match (start, end) {
        (When::At(s), When::At(e)) if e > s => event.starts(s).ends(e),
        (When::Day(s), When::Day(e)) if e > s => event.starts(s).ends(e),
        _ => {
            return Err(format!(
                "calendar end `{:?}` is not after its start `{}`",
                cal.end, cal.start
            ));
        }
    };
    if let Some(l) = &cal.location {
        event.location(l);
    }
    if let Some(d) = &cal.description {
        event.description(d);
    }
    let mut org = Property::new("ORGANIZER", format!("mailto:{}", organizer.email));
    if let Some(name) = &organizer.name {
        org.add_parameter("CN", &param(name));
    }
    event.append_property(org.done());
    let mut att = Property::new("ATTENDEE", format!("mailto:{}", attendee.email));
    att.add_parameter("ROLE", "REQ-PARTICIPANT")
        .add_parameter("PARTSTAT", "NEEDS-ACTION")
        .add_parameter("RSVP", "TRUE");
    if let Some(name) = &attendee.name {
        att.add_parameter("CN", &param(name));
    }
    event.append_property(att.done());
    let mut calendar = Calendar::empty();
    calendar
        .append_property(("PRODID", "-//dripline//dripline//EN"))
        .append_property(("VERSION", "2.0"))
        .append_property(("CALSCALE", "GREGORIAN"))
        .append_property(("METHOD", if cal.cancel { "CANCEL" } else { "REQUEST" }))
        .push(event.done());
    Ok(calendar.done().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(start: &str, end: Option<&str>) -> RenderedCalendar {
        RenderedCalendar {
            start: start.into(),
            end: end.map(Into::into),
            title: "Coffee Summit".into(),
            location: Some("Hall 2, Jakarta".into()),
            description: None,
            timezone: None,
            key: None,
            cancel: false,
        }
    }

    fn make(c: &RenderedCalendar, tz: Tz) -> Result<String, String> {
        let from: Mailbox = "Events <events@example.com>".parse().unwrap();
        let to: Mailbox = "Tom <tom@example.com>".parse().unwrap();
        let send = Send {
            id: SendId(42),
            contact: "tom",
            decided_at: 1_764_000_000_000,
        };
        ics(c, &send, "mail.example.com", &from, &to, tz)
    }

    #[test]
    fn the_same_send_makes_the_same_invite() {
        let a = make(&cal("2026-11-25T09:30:00+07:00", None), Tz::UTC).unwrap();
        assert_eq!(a, make(&cal("2026-11-25T09:30:00+07:00", None), Tz::UTC).unwrap());
        assert!(a.contains("METHOD:REQUEST\r\n"), "{a}");
        assert!(a.contains(&format!("UID:{}@mail.example.com\r\n", SendId(42))), "{a}");
        assert!(a.contains("DTSTART:20261125T023000Z\r\n"), "{a}");
        assert!(a.contains("DTEND:20261125T033000Z\r\n"), "an hour by default: {a}");
        assert!(a.contains("ATTENDEE;"), "{a}");
    }

    #[test]
    fn dates_are_all_day_and_local_times_are_in_the_zone() {
        let d = make(&cal("2026-11-25", None), Tz::UTC).unwrap();
        assert!(d.contains("DTSTART;VALUE=DATE:20261125\r\n"), "{d}");
        assert!(d.contains("DTEND;VALUE=DATE:20261126\r\n"), "{d}");
        let l = make(
            &cal("2026-11-25T09:00", Some("2026-11-25 17:00")),
            "Asia/Shanghai".parse().unwrap(),
        )
        .unwrap();
        assert!(l.contains("DTSTART:20261125T010000Z\r\n"), "{l}");
        assert!(l.contains("DTEND:20261125T090000Z\r\n"), "{l}");
    }

    #[test]
    fn a_venue_zone_reads_local_times_and_names_stay_valid_parameters() {
        let mut c = cal("2026-11-25T09:00", None);
        c.timezone = Some("Asia/Jakarta".into());
        let from: Mailbox = "Events <events@example.com>".parse().unwrap();
        let to: Mailbox = "\"Doe, \\\"J\\\"\" <j@example.com>".parse().unwrap();
        let send = Send {
            id: SendId(1),
            contact: "j",
            decided_at: 0,
        };
        let ics = ics(&c, &send, "d", &from, &to, "America/New_York".parse().unwrap()).unwrap();
        assert!(ics.contains("DTSTART:20261125T020000Z\r\n"), "{ics}");
        assert!(
            ics.contains("CN=Doe J:mailto:j@example.com") || ics.contains("CN=Doe J;"),
            "{ics}"
        );
    }

    #[test]
    fn bad_times_are_refused_with_the_reason() {
        assert!(
            make(&cal("next tuesday", None), Tz::UTC)
                .unwrap_err()
                .contains("next tuesday")
        );
        assert!(
            make(&cal("2026-11-25", Some("2026-11-24")), Tz::UTC)
                .unwrap_err()
                .contains("not after")
        );
    }
}
