//! Usage data: each isolate counts requests per key, per UTC day and per outcome (`allowed`, or
//! the problem code of the denial), and hands the counts to the registry at most once per
//! flush interval (a minute by default), from `waitUntil`, never on the request path. The
//! registry adds them up per day and keeps each key's `last_used_at`.
//!
//! Counted: requests that reached a key's record (or an access token of a key), allowed or
//! not. A guess at a key that does not exist counts nowhere (it would let anyone write usage
//! rows for ids of their choosing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month};

use crate::key::KeyId;
use crate::time::Timestamp;

pub const DAY_MS: i64 = 86_400_000;
/// The outcome of an allowed request.
pub const ALLOWED: &str = "allowed";
/// Rows one isolate holds at most between flushes; more are dropped and counted as dropped.
pub const MAX_ROWS: usize = 5_000;
/// The longest range `GET /admin/keys/{id}/usage` answers, in days.
pub const MAX_RANGE_DAYS: i64 = 366;

/// The UTC day of an instant, as days since 1970-01-01.
pub fn day_of(t: Timestamp) -> i64 {
    t.millis().div_euclid(DAY_MS)
}

fn epoch() -> Date {
    Date::from_calendar_date(1970, Month::January, 1).unwrap_or(Date::MIN)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_string(day: i64) -> String {
    let d = epoch().checked_add(Duration::days(day)).unwrap_or(Date::MAX);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The day number of `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        s.get(r)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))?
            .parse::<u32>()
            .ok()
    };
    // Usage starts in 1970: earlier dates (year 0000 included) are not valid here.
    let year = i32::try_from(num(0..4)?).ok().filter(|y| *y >= 1970)?;
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    let d = Date::from_calendar_date(year, month, day).ok()?;
    Some((d - epoch()).whole_days())
}

/// One counter, as flushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub key_id: String,
    pub day: i64,
    pub code: String,
    pub count: u64,
}

/// What an isolate hands the registry in one flush.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
    pub rows: Vec<UsageRow>,
    /// (key id, milliseconds) of each key's latest request in this batch.
    pub last_used: Vec<(String, i64)>,
    /// Requests not counted because the buffer was full.
    pub dropped: u64,
}

/// An outcome code as the registry accepts it: a problem code or `allowed`.
pub fn valid_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 40 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// One isolate's counters between flushes.
#[derive(Debug, Default)]
pub struct UsageBuffer {
    counts: BTreeMap<(KeyId, i64, String), u64>,
    last_used: BTreeMap<KeyId, i64>,
    /// When the last flush was taken (or, before the first, when counting began).
    since_ms: Option<i64>,
    dropped: u64,
}

impl UsageBuffer {
    /// Count one request of `key` with outcome `code` (`allowed` or a problem code).
    pub fn record(&mut self, key: &KeyId, now: Timestamp, code: &str) {
        let slot = (key.clone(), day_of(now), code.to_owned());
        if let Some(n) = self.counts.get_mut(&slot) {
            *n = n.saturating_add(1);
        } else if self.counts.len() < MAX_ROWS {
            self.counts.insert(slot, 1);
        } else {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        // `last_used_at` is the last request the key was allowed: a refused one (revoked, over
        // a limit) does not make a key look in use.
        if code == ALLOWED {
            let last = self.last_used.entry(key.clone()).or_insert(now.millis());
            *last = (*last).max(now.millis());
        }
        self.since_ms.get_or_insert(now.millis());
    }

    /// Whether a flush is due: something is counted, and the interval has passed since the
    /// last one (or since counting began).
    pub fn due(&self, now_ms: i64, interval_ms: i64) -> bool {
        (!self.counts.is_empty() || self.dropped > 0)
            && self
                .since_ms
                .is_some_and(|s| now_ms.saturating_sub(s) >= interval_ms)
    }

    /// Take everything counted, for a flush.
    pub fn take(&mut self, now_ms: i64) -> UsageBatch {
        let counts = std::mem::take(&mut self.counts);
        let last = std::mem::take(&mut self.last_used);
        self.since_ms = Some(now_ms);
        UsageBatch {
            rows: counts
                .into_iter()
                .map(|((key, day, code), count)| UsageRow {
                    key_id: key.to_string(),
                    day,
                    code,
                    count,
                })
                .collect(),
            last_used: last.into_iter().map(|(k, t)| (k.to_string(), t)).collect(),
            dropped: std::mem::take(&mut self.dropped),
        }
    }

    /// Put a batch back after a failed flush (merged with what was counted meanwhile, within
    /// the same bound).
    pub fn restore(&mut self, batch: UsageBatch) {
        self.dropped = self.dropped.saturating_add(batch.dropped);
        for row in batch.rows {
            let Some(key) = KeyId::parse(&row.key_id) else {
                continue;
            };
            let slot = (key, row.day, row.code);
            if let Some(n) = self.counts.get_mut(&slot) {
                *n = n.saturating_add(row.count);
            } else if self.counts.len() < MAX_ROWS {
                self.counts.insert(slot, row.count);
            } else {
                self.dropped = self.dropped.saturating_add(row.count);
            }
        }
        for (k, t) in batch.last_used {
            if let Some(key) = KeyId::parse(&k) {
                let last = self.last_used.entry(key).or_insert(t);
                *last = (*last).max(t);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.dropped == 0
    }
}

/// Whether a denial is counted in its key's usage: those that come after the key (or token)
/// proved genuine. A guess (`invalid_key`, `malformed_key`, a bad token) names no key of the
/// caller's own, so it counts nowhere.
pub fn counted(d: &crate::decide::Denial) -> bool {
    use crate::decide::Denial;
    matches!(
        d,
        Denial::RevokedKey
            | Denial::DisabledKey
            | Denial::ExpiredKey
            | Denial::InsufficientScope { .. }
            | Denial::TenantNotAllowed
            | Denial::EnvironmentNotAllowed
            | Denial::IpNotAllowed
    )
}

/// One day of a key's usage, as `GET /admin/keys/{id}/usage` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageDay {
    pub date: String,
    pub allowed: u64,
    pub denied: u64,
    /// Denials by problem code.
    pub codes: BTreeMap<String, u64>,
}

/// Daily buckets from `from` to `to` (inclusive), every day present, from (day, code, count)
/// rows.
pub fn daily(from: i64, to: i64, rows: &[(i64, String, u64)]) -> Vec<UsageDay> {
    let mut days: BTreeMap<i64, UsageDay> = (from..=to)
        .map(|d| {
            (
                d,
                UsageDay {
                    date: day_string(d),
                    ..UsageDay::default()
                },
            )
        })
        .collect();
    for (day, code, count) in rows {
        if let Some(d) = days.get_mut(day) {
            if code == ALLOWED {
                d.allowed = d.allowed.saturating_add(*count);
            } else {
                d.denied = d.denied.saturating_add(*count);
                let c = d.codes.entry(code.clone()).or_default();
                *c = c.saturating_add(*count);
            }
        }
    }
    days.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> KeyId {
        KeyId::parse(&format!("{:0>16}", n))
            .or_else(|| KeyId::parse(&"a".repeat(16)))
            .unwrap()
    }

    #[test]
    fn days_round_trip() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(parse_day("1970-01-02"), Some(1));
        for d in [0, 1, 365, 20_415, 21_000, 40_000] {
            assert_eq!(parse_day(&day_string(d)), Some(d));
        }
        for bad in [
            "2026-02-30",
            "2026-1-01",
            "20261101",
            "2026-11-0x",
            "+026-11-01",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn counts_by_key_day_and_outcome_and_flushes_when_due() {
        let mut b = UsageBuffer::default();
        let t = Timestamp::from_millis(20_000 * DAY_MS + 1_000);
        let k = key(1);
        assert!(!b.due(t.millis() + 120_000, 60_000), "nothing counted");
        b.record(&k, t, ALLOWED);
        b.record(&k, t.plus_seconds(1), ALLOWED);
        b.record(&k, t.plus_seconds(2), "insufficient_scope");
        b.record(&k, Timestamp::from_millis(20_001 * DAY_MS), ALLOWED);
        assert!(!b.due(t.millis() + 59_999, 60_000));
        assert!(b.due(t.millis() + 60_000, 60_000));
        let batch = b.take(t.millis() + 60_000);
        assert!(b.is_empty());
        assert_eq!(batch.rows.len(), 3);
        assert!(batch.rows.contains(&UsageRow {
            key_id: k.to_string(),
            day: 20_000,
            code: ALLOWED.into(),
            count: 2
        }));
        assert_eq!(batch.last_used, vec![(k.to_string(), 20_001 * DAY_MS)]);
        // The next flush waits a whole interval again.
        b.record(&k, t.plus_seconds(61), ALLOWED);
        assert!(!b.due(t.millis() + 61_000, 60_000));
        assert!(b.due(t.millis() + 120_000, 60_000));
    }

    #[test]
    fn a_failed_flush_is_put_back() {
        let mut b = UsageBuffer::default();
        let t = Timestamp::from_millis(DAY_MS * 5);
        b.record(&key(2), t, ALLOWED);
        let batch = b.take(t.millis());
        b.record(&key(2), t, ALLOWED);
        b.restore(batch);
        let again = b.take(t.millis());
        assert_eq!(again.rows[0].count, 2);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut b = UsageBuffer::default();
        let t = Timestamp::from_millis(0);
        for d in 0..(MAX_ROWS as i64 + 10) {
            b.record(&key(3), Timestamp::from_millis(t.millis() + d * DAY_MS), ALLOWED);
        }
        let batch = b.take(0);
        assert_eq!(batch.rows.len(), MAX_ROWS);
        assert_eq!(batch.dropped, 10);
    }

    #[test]
    fn daily_buckets_cover_every_day() {
        let rows = vec![
            (10, ALLOWED.to_owned(), 3),
            (10, "invalid_key".to_owned(), 1),
            (12, "rate_limited".to_owned(), 2),
            (99, ALLOWED.to_owned(), 7),
        ];
        let days = daily(10, 12, &rows);
        assert_eq!(days.len(), 3);
        assert_eq!((days[0].allowed, days[0].denied), (3, 1));
        assert_eq!(
            days[1],
            UsageDay {
                date: day_string(11),
                ..UsageDay::default()
            }
        );
        assert_eq!(days[2].codes["rate_limited"], 2);
    }
}
