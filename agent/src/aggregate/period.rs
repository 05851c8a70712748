//! Wall-clock periods: which period a timestamp belongs to, and when a period may close.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cloudwatch::{ACCEPTED_PAST, MAX_FUTURE};

/// The oldest batch end time a period takes: CloudWatch's window ([`ACCEPTED_PAST`]) minus an
/// hour, so a period still waiting in the publisher's queue is not refused (the publisher's own
/// bound, `publish::datum::MAX_AGE`, keeps only ten minutes: it checks just before sending).
pub const MAX_PAST: Duration = ACCEPTED_PAST.saturating_sub(Duration::from_secs(3600));

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Start (Unix seconds) of the period of `period_secs` containing Unix second `t`.
pub fn align(t: u64, period_secs: u32) -> u64 {
    let p = u64::from(period_secs.max(1));
    t - t % p
}

/// Where a batch's timestamp falls relative to CloudWatch's accepted window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Usable as is (Unix seconds, never later than `now`).
    Ok(u64),
    /// Older than CloudWatch accepts: re-stamped to now.
    TooOld,
    /// Further in the future than CloudWatch accepts: re-stamped to now.
    TooNew,
}

/// Classifies a batch end time (Unix ms) against `now`. A time slightly ahead of the agent's
/// clock (another container's skew) is clamped to now.
pub fn classify(end_unix_ms: u64, now: SystemTime) -> Stamp {
    let now_s = unix_secs(now);
    let t = end_unix_ms / 1000;
    if t + MAX_PAST.as_secs() < now_s {
        Stamp::TooOld
    } else if t > now_s + MAX_FUTURE.as_secs() {
        Stamp::TooNew
    } else {
        Stamp::Ok(t.min(now_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_on_multiples_of_their_length() {
        assert_eq!(align(1_700_000_059, 60), 1_700_000_040);
        assert_eq!(align(1_700_000_000, 60), 1_700_000_000 - 1_700_000_000 % 60);
        assert_eq!(align(125, 10), 120);
        assert_eq!(align(125, 30), 120);
        assert_eq!(align(125, 1), 125);
        assert_eq!(align(119, 60), 60);
    }

    #[test]
    fn timestamps_outside_cloudwatchs_window_are_flagged_and_skew_is_clamped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let now_ms = 1_700_000_000_000u64;
        assert_eq!(classify(now_ms - 5_000, now), Stamp::Ok(1_699_999_995));
        assert_eq!(classify(now_ms + 3_000, now), Stamp::Ok(1_700_000_000));
        assert_eq!(classify(now_ms + 3 * 3_600_000, now), Stamp::TooNew);
        assert_eq!(classify(now_ms - 15 * 86_400_000, now), Stamp::TooOld);
        assert_eq!(classify(0, now), Stamp::TooOld);
    }
}
