//! UTC timestamps without a date crate: the store and the outbox only ever need "now" as
//! RFC 3339 (sortable as text) and the compact `YYYYmmdd_HHMMSS` stamp of batch folders.

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time as milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let ms = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            // A clock before 1970 is a broken host; still give an ordered value.
            Err(e) => -(e.duration().as_millis() as i64),
        };
        Timestamp(ms)
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_millis() as i64),
            Err(e) => Timestamp(-(e.duration().as_millis() as i64)),
        }
    }

    /// `2026-11-28T18:42:26.123Z`: fixed width, so text order is time order.
    pub fn rfc3339(self) -> String {
        let (y, mo, d, h, mi, s, ms) = self.civil();
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }

    /// `20261128_184226`, the stamp in `batch_<name>_<stamp>` folder names.
    pub fn compact(self) -> String {
        let (y, mo, d, h, mi, s, _) = self.civil();
        format!("{y:04}{mo:02}{d:02}_{h:02}{mi:02}{s:02}")
    }

    fn civil(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let ms = self.0.rem_euclid(1000) as u32;
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, mo, d) = civil_from_days(days);
        (y, mo, d, sod / 3600, (sod / 60) % 60, sod % 60, ms)
    }

    /// Parses what [`Timestamp::rfc3339`] writes (and the same without milliseconds).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
        let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
        let ms = match b[19] {
            b'Z' if b.len() == 20 => 0,
            b'.' if b.len() == 24 && b[23] == b'Z' => num(20..23)?,
            _ => return None,
        };
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        let days = days_from_civil(y, mo as u32, d as u32);
        Some(Timestamp(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms))
    }
}

// Howard Hinnant's algorithms (public domain), proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 12:34:56.789 UTC, a leap day.
        let t = Timestamp(1_709_210_096_789);
        assert_eq!(t.rfc3339(), "2024-02-29T12:34:56.789Z");
        assert_eq!(t.compact(), "20240229_123456");
    }

    #[test]
    fn parse_inverts_format() {
        for ms in [0i64, 1, 951_782_400_000, 1_709_210_096_789, 4_102_444_799_999] {
            let t = Timestamp(ms);
            assert_eq!(Timestamp::parse_rfc3339(&t.rfc3339()), Some(t));
        }
        assert_eq!(Timestamp::parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
