//! Times at the API (`SystemTime`, `Duration`) and in the store (whole
//! seconds since the Unix epoch, PROTOCOL.md 14).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole seconds since the Unix epoch; 0 for a time before it (a clock set
/// before 1970 reads as the epoch: nothing stored is older).
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// The time `seconds` after the Unix epoch, or the latest whole second the
/// platform's `SystemTime` holds when that is earlier (a time computed past
/// the end of the clock saturates there).
pub(crate) fn from_unix_seconds(seconds: u64) -> SystemTime {
    let at = |s: u64| UNIX_EPOCH.checked_add(Duration::from_secs(s));
    if let Some(time) = at(seconds) {
        return time;
    }
    // The largest representable whole second below `seconds`: `low` always
    // holds, `high` never does.
    let (mut low, mut high) = (0u64, seconds);
    while high.abs_diff(low) > 1 {
        let middle = low.saturating_add(high.abs_diff(low) / 2);
        if at(middle).is_some() { low = middle } else { high = middle }
    }
    at(low).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_trip_and_times_before_the_epoch_read_as_zero() {
        for seconds in [0, 1, 1_700_000_000, u64::from(u32::MAX) + 1] {
            assert_eq!(unix_seconds(from_unix_seconds(seconds)), seconds);
        }
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_999)), 1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(10)), 0);
        // Past the end of the platform's clock: no panic, its last second.
        let end = from_unix_seconds(u64::MAX);
        assert!(unix_seconds(end) > 1 << 32);
        assert!(end.checked_add(Duration::from_secs(1)).is_none());
        assert_eq!(from_unix_seconds(unix_seconds(end)), end);
    }
}
