//! When to try a deferred message again: exponential backoff with jitter.

use rand::Rng;

/// Delay before attempt `attempts + 1`: `initial · 2^(attempts-1)` capped at `max`, of which a
/// random half is jittered away ("equal jitter"), so messages deferred together by a busy
/// receiver do not all come back at the same instant.
pub fn backoff(attempts: u32, initial: i64, max: i64) -> i64 {
    let exp = initial
        .saturating_mul(1i64 << attempts.saturating_sub(1).min(40))
        .min(max)
        .max(1);
    exp - rand::rng().random_range(0..=exp / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_the_jitter_band() {
        for attempts in 1..=12u32 {
            let full = (1_000i64 << (attempts - 1)).min(60_000);
            for _ in 0..200 {
                let d = backoff(attempts, 1_000, 60_000);
                assert!(
                    (full / 2..=full).contains(&d),
                    "attempt {attempts}: {d} not in {}..={full}",
                    full / 2
                );
            }
        }
        let spread: std::collections::BTreeSet<i64> = (0..50).map(|_| backoff(3, 1_000, 60_000)).collect();
        assert!(spread.len() > 10, "jitter spreads retries: {spread:?}");
    }
}
