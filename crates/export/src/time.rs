//! Apple's dates (since 2001-01-01) as UTC and as the local time of the
//! machine exporting.

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Seconds from 1970-01-01 to 2001-01-01.
pub const APPLE_EPOCH: i64 = 978_307_200;

/// A message date: nanoseconds since 2001 from iOS 11 on, seconds before.
pub fn message_date(v: i64) -> Option<Timestamp> {
    if v.unsigned_abs() > 100_000_000_000 {
        Timestamp::from_nanosecond(i128::from(v) + i128::from(APPLE_EPOCH) * 1_000_000_000).ok()
    } else {
        apple_seconds(v as f64)
    }
}

/// Seconds since 2001 (Core Data's timestamps; the calendar's dates).
pub fn apple_seconds(v: f64) -> Option<Timestamp> {
    if !v.is_finite() {
        return None;
    }
    let whole = v.floor();
    let nanos = ((v - whole) * 1e9) as i32;
    Timestamp::new((whole as i64).checked_add(APPLE_EPOCH)?, nanos).ok()
}

/// `2024-03-05T14:02:11Z`.
pub fn utc(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2024-03-05 15:02` in the local time zone.
pub fn local(t: Timestamp) -> String {
    t.to_zoned(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

/// `2024-03-05 15:02:11 +01:00` in the local time zone, for CSV.
pub fn local_full(t: Timestamp) -> String {
    t.to_zoned(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_units_of_message_dates_land_on_the_same_moment() {
        let secs = 700_000_000i64;
        let a = message_date(secs).unwrap();
        let b = message_date(secs * 1_000_000_000).unwrap();
        assert_eq!(a, b);
        assert_eq!(utc(a), "2023-03-08T20:26:40Z");
        assert_eq!(apple_seconds(0.0).map(utc).unwrap(), "2001-01-01T00:00:00Z");
        assert!(apple_seconds(f64::NAN).is_none());
        assert!(message_date(i64::MAX).is_some() && message_date(i64::MIN).is_some());
        assert!(apple_seconds(1e30).is_none());
    }
}
