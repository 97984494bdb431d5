//! Wall-clock helpers shared by the daemon and its clients: times on the wire are Unix
//! milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is set before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A calendar date and time of day: (year, month 1-12, day 1-31, hour, minute, second).
pub type Civil = (i64, u32, u32, u32, u32, u32);

/// The UTC calendar date and time of `secs` seconds after the Unix epoch (Howard Hinnant's
/// days-to-civil algorithm; any `i64`, before 1970 included).
pub fn utc_civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `YYYY-MM-DD` of a Unix time in milliseconds, UTC.
pub fn utc_day(unix_ms: u64) -> String {
    let (y, m, d, ..) = utc_civil((unix_ms / 1000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(utc_civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc_civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc_civil(1_796_052_603), (2026, 11, 30, 15, 30, 3));
        assert_eq!(utc_civil(-1), (1969, 12, 31, 23, 59, 59));
        assert_eq!(utc_day(1_735_689_599_999), "2024-12-31");
        assert_eq!(utc_day(1_735_689_600_000), "2025-01-01");
    }
}
