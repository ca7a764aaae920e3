//! Locale-aware formatting in templates, in the contact's `locale` trait: `format_date` (the
//! locale's date format, or a strftime pattern with localised names) and `format_number`
//! (the locale's decimal point and thousands separator). Locale data from `pure-rust-locales`
//! (glibc's), through chrono for dates.

use chrono::{DateTime, NaiveDate};
use minijinja::{Error, State, Value};
use pure_rust_locales::{Locale, locale_match};

pub fn register(env: &mut minijinja::Environment<'static>) {
    env.add_filter("format_date", format_date);
    env.add_filter("format_number", format_number);
}

/// The POSIX locale for a BCP 47 tag: `pt-BR` → `pt_BR`, `zh-Hant-TW` → `zh_TW`; a language
/// alone takes its main country (`zh` → `zh_CN`, `ru` → `ru_RU`); `POSIX` when none is known.
pub fn posix_locale(tag: &str) -> Locale {
    let tag = tag.trim().replace('_', "-");
    let mut parts = tag.split('-');
    let lang = parts.next().unwrap_or_default().to_ascii_lowercase();
    let region = parts.find(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_alphabetic()));
    let main = match lang.as_str() {
        "zh" => "CN",
        "en" => "US",
        "ja" => "JP",
        "ko" => "KR",
        "ms" => "MY",
        "vi" => "VN",
        "uk" => "UA",
        "pt" => "BR",
        "ar" => "SA",
        "he" => "IL",
        "hi" => "IN",
        "sv" => "SE",
        "da" => "DK",
        "cs" => "CZ",
        _ => "",
    };
    let mut candidates = vec![];
    if let Some(r) = region {
        candidates.push(format!("{lang}_{}", r.to_ascii_uppercase()));
    }
    if !main.is_empty() {
        candidates.push(format!("{lang}_{main}"));
    }
    candidates.push(format!("{lang}_{}", lang.to_ascii_uppercase()));
    candidates
        .iter()
        .find_map(|c| Locale::try_from(c.as_str()).ok())
        .unwrap_or(Locale::POSIX)
}

/// The language of the message being rendered (set by
/// [`crate::workflow::Registry::render_localized`]: the chosen translation's tag, empty for the
/// default), else the contact's `locale` trait.
pub const FORMAT_LOCALE: &str = "__format_locale";

fn locale_of(state: &State) -> Locale {
    state
        .lookup(FORMAT_LOCALE)
        .or_else(|| state.lookup("locale"))
        .and_then(|v| v.as_str().map(posix_locale))
        .unwrap_or(Locale::POSIX)
}

/// `{{ event.event_date | format_date }}`: a date (`2026-11-25`) or RFC 3339 time in the
/// locale's date format (`2026年11月25日`, `25.11.2026`); `format_date("%e %B %Y")` with
/// localised month and day names. A value that is not a date is left as it is.
fn format_date(state: &State, value: Value, format: Option<String>) -> Result<String, Error> {
    let text = value.to_string();
    let locale = locale_of(state);
    let pattern = format.as_deref().unwrap_or("%x");
    use std::fmt::Write;
    let mut out = String::new();
    // Written, not `to_string()`: a pattern chrono cannot format (a typo, or a locale whose date
    // format uses `%O`/`%E`) is an error to handle here, where `to_string()` panics.
    let written = if let Ok(d) = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        write!(out, "{}", d.format_localized(pattern, locale)).or_else(|_| write!(out, "{}", d.format("%Y-%m-%d")))
    } else if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        write!(out, "{}", t.format_localized(pattern, locale))
            .or_else(|_| write!(out, "{}", t.format("%Y-%m-%d %H:%M")))
    } else {
        return Ok(text);
    };
    if written.is_err() {
        return Ok(text);
    }
    Ok(out)
}

/// `{{ total | format_number(2) }}`: the number with the locale's thousands separator and
/// decimal point (`1,234.50`, `1 234,50`), rounded to the decimals asked (default 0).
/// Ties round half to even (`2.5` gives `2`). A value that is not a finite number is left as it
/// is (undefined renders empty).
fn format_number(state: &State, value: Value, decimals: Option<u32>) -> Result<String, Error> {
    let decimals = decimals.unwrap_or(0).min(10) as usize;
    let (negative, fixed) = match value.as_i64() {
        // Integers as their digits: exact beyond 2^53.
        Some(i) => (
            i < 0,
            format!(
                "{}{}",
                i.unsigned_abs(),
                if decimals > 0 {
                    format!(".{}", "0".repeat(decimals))
                } else {
                    String::new()
                }
            ),
        ),
        None => {
            let n = f64::try_from(value.clone())
                .ok()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
            match n {
                Some(n) if n.is_finite() => (n < 0.0, format!("{:.*}", decimals, n.abs())),
                _ if value.is_undefined() || value.is_none() => return Ok(String::new()),
                _ => return Ok(value.to_string()),
            }
        }
    };
    let locale = locale_of(state);
    let point = locale_match!(locale => LC_NUMERIC::DECIMAL_POINT);
    let sep = locale_match!(locale => LC_NUMERIC::THOUSANDS_SEP);
    let (int, frac) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut out = String::new();
    if negative && fixed.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push_str(sep);
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push_str(if point.is_empty() { "." } else { point });
        out.push_str(frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, locale: &str) -> String {
        let mut env = minijinja::Environment::new();
        register(&mut env);
        env.render_str(
            src,
            minijinja::context! { locale => locale, d => "2026-11-25", n => 1234.5 },
        )
        .unwrap()
    }

    #[test]
    fn dates_and_numbers_in_the_contacts_locale() {
        assert_eq!(render("{{ d | format_date }}", "zh"), "2026年11月25日");
        assert_eq!(render("{{ d | format_date }}", "ru-RU"), "25.11.2026");
        assert_eq!(render("{{ d | format_date('%e %B %Y') }}", "id"), "25 November 2026");
        assert_eq!(render("{{ d | format_date('%e %B %Y') }}", "ru"), "25 ноября 2026");
        assert_eq!(render("{{ n | format_number(2) }}", "en-US"), "1,234.50");
        assert_eq!(render("{{ n | format_number(2) }}", "id"), "1.234,50");
        assert_eq!(render("{{ 1234.6 | format_number }}", "zh-Hant-TW"), "1,235");
        assert_eq!(render("{{ 'soon' | format_date }}", "zh"), "soon");
        // A pattern chrono cannot format, a date format with %O (fa_IR), text, huge integers.
        assert_eq!(render("{{ d | format_date('%Q') }}", "zh"), "2026-11-25");
        assert!(!render("{{ d | format_date }}", "fa-IR").is_empty());
        assert_eq!(render("{{ 'n/a' | format_number }}", "ru"), "n/a");
        assert_eq!(render("{{ nothing | format_number }}", "ru"), "");
        assert_eq!(
            render("{{ 9007199254740993 | format_number }}", "en"),
            "9,007,199,254,740,993"
        );
        assert_eq!(render("{{ -1234 | format_number(1) }}", "en"), "-1,234.0");
    }

    #[test]
    fn tags_map_to_posix_locales() {
        assert_eq!(posix_locale("pt-BR"), Locale::pt_BR);
        assert_eq!(posix_locale("zh-Hant-TW"), Locale::zh_TW);
        assert_eq!(posix_locale("zh"), Locale::zh_CN);
        assert_eq!(posix_locale("ru"), Locale::ru_RU);
        assert_eq!(posix_locale("xx"), Locale::POSIX);
    }
}
