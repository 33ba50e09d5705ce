//! Instants as milliseconds since the Unix epoch, shown as RFC 3339. The clock itself belongs
//! to the caller (the edge reads `Date.now()`), so everything here is deterministic.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_seconds(self, s: i64) -> Self {
        Timestamp(self.0.saturating_add(s.saturating_mul(1000)))
    }

    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }

    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }

    /// The IMF-fixdate form HTTP headers use (`Sunset`, RFC 8594).
    pub fn to_http_date(self) -> String {
        let Ok(t) = OffsetDateTime::from_unix_timestamp(self.0.div_euclid(1000)) else {
            return String::new();
        };
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let day = DAYS
            .get(usize::from(t.weekday().number_days_from_monday()))
            .unwrap_or(&"Mon");
        let month = MONTHS
            .get(usize::from(u8::from(t.month())).saturating_sub(1))
            .unwrap_or(&"Jan");
        format!(
            "{day}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
            t.day(),
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).ok_or_else(|| serde::de::Error::custom("invalid RFC 3339 date"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-22T10:00:00.250Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T10:00:00.25Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-22T12:00:00+02:00"),
            Timestamp::parse_rfc3339("2026-11-22T10:00:00Z")
        );
        assert!(Timestamp::parse_rfc3339("2026-11-22").is_none());
        assert!(Timestamp::parse_rfc3339("tomorrow").is_none());
    }

    #[test]
    fn http_date() {
        let t = Timestamp::parse_rfc3339("2026-11-22T10:05:09Z").unwrap();
        assert_eq!(t.to_http_date(), "Sun, 22 Nov 2026 10:05:09 GMT");
    }
}
