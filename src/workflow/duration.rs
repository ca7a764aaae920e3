//! Durations (`3d`, `1h 30m`, `-7d`) and local times of day (`09:00`).

/// Parses a non-negative duration into milliseconds with `humantime` (`3d`, `2w`, `90m`, `1h 30m`).
pub fn parse(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration `{s}`: {e}"))?;
    i64::try_from(d.as_millis()).map_err(|_| format!("duration `{s}` is too long"))
}

/// Like [`parse`] but allows a leading `-` (offsets such as `-7d` = seven days before).
pub fn parse_signed(s: &str) -> Result<i64, String> {
    match s.trim().strip_prefix('-') {
        Some(rest) => parse(rest).map(|ms| -ms),
        None => parse(s.trim().strip_prefix('+').unwrap_or(s)),
    }
}

/// Parses `HH:MM` (24-hour) into (hour, minute).
pub fn parse_time_of_day(s: &str) -> Result<(u32, u32), String> {
    use chrono::Timelike;
    chrono::NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map(|t| (t.hour(), t.minute()))
        .map_err(|_| format!("bad time of day `{s}` (expected HH:MM, 24-hour)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{DAY, HOUR, MINUTE};

    #[test]
    fn durations() {
        assert_eq!(parse("3d"), Ok(3 * DAY));
        assert_eq!(parse("1h 30m"), Ok(HOUR + 30 * MINUTE));
        assert_eq!(parse("2w"), Ok(14 * DAY));
        assert_eq!(parse_signed("-7d"), Ok(-7 * DAY));
        assert!(parse("3 dayz").unwrap_err().contains("bad duration `3 dayz`"));
        assert!(parse("").is_err());
        assert_eq!(parse_time_of_day("09:30"), Ok((9, 30)));
        assert!(parse_time_of_day("25:00").is_err());
    }
}
