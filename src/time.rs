//! UTC timestamps: the store and the outbox only ever need "now" as RFC 3339 (sortable as
//! text) and the compact `YYYYmmdd_HHMMSS` stamp of batch folders. The calendar is jiff's.

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time as milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_millis() as i64),
            // A clock before 1970 is a broken host; still give an ordered value.
            Err(e) => Timestamp(-(e.duration().as_millis() as i64)),
        }
    }

    /// jiff's instant, clamped to the years -9999..=9999 it covers: only a broken clock or
    /// arithmetic far off gets there, and a clamped text still sorts right.
    fn jiff(self) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(self.0).unwrap_or(if self.0 < 0 { jiff::Timestamp::MIN } else { jiff::Timestamp::MAX })
    }

    /// `2026-11-28T18:42:26.123Z`: fixed width (always three fraction digits), so text order
    /// is time order.
    pub fn rfc3339(self) -> String {
        format!("{:.3}", self.jiff())
    }

    /// `20261128_184226`, the stamp in `batch_<name>_<stamp>` folder names.
    pub fn compact(self) -> String {
        let t = jiff::tz::TimeZone::UTC.to_datetime(self.jiff());
        format!("{:04}{:02}{:02}_{:02}{:02}{:02}", t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second())
    }

    /// Parses what [`Timestamp::rfc3339`] writes, and any other RFC 3339 instant (without
    /// milliseconds, with an offset); finer fractions are cut to the millisecond.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        text.parse::<jiff::Timestamp>().ok().map(|t| Timestamp(t.as_millisecond()))
    }
}

/// As its RFC 3339 text, the form every JSON document of the program uses for times.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(0).compact(), "19700101_000000");
        // 2024-02-29 12:34:56.789 UTC, a leap day.
        let t = Timestamp(1_709_210_096_789);
        assert_eq!(t.rfc3339(), "2024-02-29T12:34:56.789Z");
        assert_eq!(t.compact(), "20240229_123456");
        // Whole seconds keep their three digits; the last millisecond of 2099.
        assert_eq!(Timestamp(1_764_614_400_000).rfc3339(), "2025-12-01T18:40:00.000Z");
        assert_eq!(Timestamp(4_102_444_799_999).rfc3339(), "2099-12-31T23:59:59.999Z");
        assert_eq!(Timestamp(4_102_444_799_999).compact(), "20991231_235959");
        // Before 1970 (a broken clock) still formats, as what it is.
        assert_eq!(Timestamp(-1).rfc3339(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn out_of_range_is_clamped_not_a_panic() {
        assert_eq!(Timestamp(i64::MAX).rfc3339(), "9999-12-30T22:00:00.999Z");
        assert!(Timestamp(i64::MIN).rfc3339().starts_with('-'));
        assert_eq!(Timestamp(i64::MAX).compact(), "99991230_220000");
    }

    #[test]
    fn serialises_as_its_rfc3339_text() {
        assert_eq!(serde_json::to_value(Timestamp(1_709_210_096_789)).unwrap(), serde_json::json!("2024-02-29T12:34:56.789Z"));
    }

    #[test]
    fn parse_inverts_format() {
        for ms in [0i64, 1, 951_782_400_000, 1_709_210_096_789, 4_102_444_799_999] {
            let t = Timestamp(ms);
            assert_eq!(Timestamp::parse_rfc3339(&t.rfc3339()), Some(t));
        }
        assert_eq!(Timestamp::parse_rfc3339("2024-02-29T12:34:56Z"), Some(Timestamp(1_709_210_096_000)));
        assert_eq!(Timestamp::parse_rfc3339("2024-02-29T13:34:56.789+01:00"), Some(Timestamp(1_709_210_096_789)));
        assert_eq!(Timestamp::parse_rfc3339("2024-02-29T12:34:56.7899Z"), Some(Timestamp(1_709_210_096_789)));
        for bad in ["2024-13-01T00:00:00Z", "2023-02-29T00:00:00Z", "2024-02-29T12:34:56", "yesterday", ""] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    proptest! {
        // The store sorts these texts: text order must be time order, at a fixed width.
        #[test]
        fn text_order_is_time_order(a in 0i64..253_402_207_200_000, b in 0i64..253_402_207_200_000) {
            let (ta, tb) = (Timestamp(a).rfc3339(), Timestamp(b).rfc3339());
            prop_assert_eq!(ta.len(), 24);
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
            prop_assert_eq!(Timestamp::parse_rfc3339(&ta), Some(Timestamp(a)));
            prop_assert_eq!(Timestamp(a).compact().len(), 15);
        }
    }
}
