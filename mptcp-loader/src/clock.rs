//! The clocks the loader reads: `CLOCK_MONOTONIC` (the fast path's `bpf_ktime_get_ns`, in which
//! the maps keep times), the wall clock, the offset that turns one into the other, and the
//! RFC 3339 form times are printed in.

use std::time::{SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` in whole seconds: the unit of `FlowRef::last_seen_s` and
/// `ConnState::learned_s`.
#[must_use]
pub fn monotonic_now_s() -> u32 {
    u32::try_from(monotonic_now_ns() / 1_000_000_000).unwrap_or(u32::MAX)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Wall clock in Unix nanoseconds.
#[must_use]
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Converts CLOCK_MONOTONIC nanoseconds (the clock of `bpf_ktime_get_ns`) to Unix time, with the
/// offset between the two clocks read when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    offset_ns: i128,
}

impl ClockOffset {
    /// The offset now.
    #[must_use]
    pub fn now() -> Self {
        Self::between(monotonic_now_ns(), unix_now_ns())
    }

    /// The offset given a reading of both clocks.
    #[must_use]
    pub fn between(monotonic_ns: u64, unix_ns: u64) -> Self {
        Self {
            offset_ns: i128::from(unix_ns) - i128::from(monotonic_ns),
        }
    }

    /// Unix time of a monotonic time.
    #[must_use]
    pub fn unix_ns(self, monotonic_ns: u64) -> u64 {
        u64::try_from((i128::from(monotonic_ns) + self.offset_ns).max(0)).unwrap_or(u64::MAX)
    }
}

/// `2025-11-26T19:05:00.123456Z` for a Unix time in nanoseconds.
#[must_use]
pub fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = unix_ns % 1_000_000_000 / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("1..=31");
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("1..=12");
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399_999_999_000),
            "2100-02-28T23:59:59.999999Z"
        );
        let offset = ClockOffset::between(1_000, 1_700_000_000_000_000_000);
        assert_eq!(offset.unix_ns(1_500), 1_700_000_000_000_000_500);
        let now = ClockOffset::now();
        let unix = now.unix_ns(monotonic_now_ns());
        assert!(unix.abs_diff(unix_now_ns()) < 1_000_000_000);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
        let (s, ns) = (monotonic_now_s(), monotonic_now_ns());
        assert!((0..=1).contains(&(ns / 1_000_000_000 - u64::from(s))));
    }
}
