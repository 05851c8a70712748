//! How long to wait before the next PutMetricData attempt (what a failure means is
//! [`crate::cloudwatch::ErrorKind`]).
//!
//! Transient failures (throttling, 5xx, timeouts, connection errors, and credentials that
//! cannot be fetched right now) are retried with exponential backoff and **full jitter**
//! (`sleep = random(0, min(cap, base * 2^attempt))`, as in the AWS Architecture Blog's
//! "Exponential Backoff And Jitter"); when a request's attempts run out its datums go back to
//! the pending queue. Failures caused by the payload (HTTP 4xx such as InvalidParameterValue)
//! are never retried as they are: the request is bisected until the invalid datum is alone.

use std::time::Duration;

use rand::Rng as _;

/// The full-jitter backoff before retry number `retry` (1 = the first retry):
/// uniform in `[0, min(cap, base * 2^(retry-1))]`.
pub fn full_jitter(base: Duration, cap: Duration, retry: u32) -> Duration {
    let ceiling = backoff_ceiling(base, cap, retry);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// The upper end of the backoff before retry number `retry`: `min(cap, base * 2^(retry-1))`.
pub fn backoff_ceiling(base: Duration, cap: Duration, retry: u32) -> Duration {
    let exp = retry.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exp).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_backoff_ceiling_doubles_until_the_cap() {
        let b = Duration::from_millis(200);
        let cap = Duration::from_secs(2);
        let ceilings: Vec<u128> = (1..=6)
            .map(|r| backoff_ceiling(b, cap, r).as_millis())
            .collect();
        assert_eq!(ceilings, vec![200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff_ceiling(b, cap, 1000), cap);
    }

    proptest! {
        #[test]
        fn full_jitter_stays_between_zero_and_the_ceiling(
            base_ms in 1u64..5000, cap_ms in 1u64..60_000, retry in 0u32..100,
        ) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let d = full_jitter(base, cap, retry);
            prop_assert!(d <= backoff_ceiling(base, cap, retry));
        }
    }
}
