//! Usage credits (Unkey's `remaining`): a metered key has a balance in the registry, spent by
//! a route's `cost` per request, optionally refilled to an amount every UTC day or month.
//!
//! Credits are never overspent, however many isolates spend them. The registry holds the
//! balance ([`Ledger`]) and **leases** blocks of it to isolates; an isolate spends only from
//! its leases ([`Wallet`]), so what all isolates spend is at most what was leased, which is at
//! most the balance. A lease ends after [`LEASE_TTL_MS`] (or when it runs out); the isolate then
//! returns what it did not spend, and the registry adds it back unless a refill came between
//! (a refill resets the balance, and a lease from before it no longer counts).
//!
//! Sizing: a lease is what the isolate spent in about the last second (at least the cost, at
//! most [`MAX_LEASE`]), and the registry grants at most a quarter of the balance (but at least
//! the cost). A cold key so costs one registry call per request; a hot key about one per second
//! per isolate; and near the end of a balance, leases shrink so that one isolate cannot hold
//! back what another could spend.
//!
//! A lease that is never returned (its isolate evicted before the return) is written off by the
//! registry [`RECLAIM_AFTER_MS`] after it was granted: its unspent part is lost to the key,
//! never spent twice.

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::time::Timestamp;

/// How long an isolate may spend from a lease.
pub const LEASE_TTL_MS: i64 = 5_000;
/// When the registry writes off a lease that was not returned.
pub const RECLAIM_AFTER_MS: i64 = LEASE_TTL_MS + 30_000;
/// The largest lease an isolate asks for.
pub const MAX_LEASE: u64 = 10_000;
/// The registry grants at most `balance / SHARE` (but at least the cost).
pub const SHARE: u64 = 4;
/// How long an isolate remembers that a key's credits ran out, without asking the registry
/// again (a flood of requests on an empty key costs the registry one call per second per
/// isolate, not one per request). A top-up made elsewhere reaches this isolate within it.
pub const EXHAUSTED_MEMORY_MS: i64 = 1_000;
/// The largest balance, refill amount or cost: exact in a JavaScript number and in SQLite.
pub const MAX_CREDITS: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Day,
    Month,
}

/// Reset the balance to `amount` at every UTC midnight (`day`), or on day `day` (default 1)
/// of every month at UTC midnight; in a month shorter than `day`, on its last day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub amount: u64,
    pub interval: Interval,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u8>,
}

impl Refill {
    /// Why this refill is not valid, if it is not.
    pub fn problem(&self) -> Option<&'static str> {
        if self.amount == 0 || self.amount > MAX_CREDITS {
            return Some("refill.amount must be between 1 and 1000000000000");
        }
        match (self.interval, self.day) {
            (Interval::Day, Some(_)) => Some("refill.day applies to a monthly refill only"),
            (Interval::Month, Some(d)) if !(1..=31).contains(&d) => {
                Some("refill.day must be between 1 and 31")
            }
            _ => None,
        }
    }
}

fn midnight(d: Date) -> Timestamp {
    let t = PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc();
    Timestamp::from_millis(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

fn utc_date(t: Timestamp) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .ok()
        .map(OffsetDateTime::date)
}

/// Day `day` of a month, or its last day when it is shorter.
fn day_in(year: i32, month: Month, day: u8) -> Option<Date> {
    let last = time::util::days_in_month(month, year);
    Date::from_calendar_date(year, month, day.min(last)).ok()
}

/// The first refill instant strictly after `after`.
pub fn next_refill(after: Timestamp, refill: &Refill) -> Timestamp {
    let far = Timestamp::from_millis(i64::MAX);
    let Some(today) = utc_date(after) else {
        return far;
    };
    match refill.interval {
        Interval::Day => today.next_day().map_or(far, midnight),
        Interval::Month => {
            let day = refill.day.unwrap_or(1);
            let this = day_in(today.year(), today.month(), day).map(midnight);
            if let Some(t) = this
                && t > after
            {
                return t;
            }
            let (y, m) = match today.month() {
                Month::December => (today.year().saturating_add(1), Month::January),
                m => (today.year(), m.next()),
            };
            day_in(y, m, day).map_or(far, midnight)
        }
    }
}

/// A metered key's balance as the registry keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    /// Credits not leased out.
    pub balance: u64,
    /// Bumped by every refill and every `set`: leases from an older epoch return nothing.
    pub epoch: u64,
    /// The next refill, when the key has one.
    pub next_refill_at: Option<Timestamp>,
}

/// What the registry answers an isolate that asks for credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Credits leased (0: not enough left for the cost).
    pub granted: u64,
    pub epoch: u64,
    /// Seconds until the next refill, when there is one (for `Retry-After`).
    pub retry_after: Option<u64>,
}

impl Ledger {
    pub fn new(balance: u64, refill: Option<&Refill>, now: Timestamp) -> Self {
        Ledger {
            balance: balance.min(MAX_CREDITS),
            epoch: 0,
            next_refill_at: refill.map(|r| next_refill(now, r)),
        }
    }

    /// Apply the refill when its time has come (at most once, however long ago: a refill
    /// resets, it does not accumulate). Returns whether it refilled.
    pub fn refill_due(&mut self, refill: Option<&Refill>, now: Timestamp) -> bool {
        let Some(r) = refill else {
            self.next_refill_at = None;
            return false;
        };
        match self.next_refill_at {
            Some(at) if now >= at => {
                self.balance = r.amount;
                self.epoch = self.epoch.saturating_add(1);
                self.next_refill_at = Some(next_refill(now, r));
                true
            }
            Some(_) => false,
            None => {
                self.next_refill_at = Some(next_refill(now, r));
                false
            }
        }
    }

    /// Lease up to `want` credits for a request costing `cost`: nothing when the balance is
    /// below the cost; otherwise at least the cost, and at most a quarter of the balance.
    pub fn grant(&mut self, want: u64, cost: u64, now: Timestamp) -> Grant {
        let cost = cost.max(1);
        let granted = if self.balance < cost {
            0
        } else {
            let cap = (self.balance / SHARE).max(cost);
            want.clamp(cost, cap).min(self.balance)
        };
        self.balance -= granted;
        Grant {
            granted,
            epoch: self.epoch,
            retry_after: self.next_refill_at.map(|at| {
                u64::try_from((at.millis() - now.millis()).max(0).saturating_add(999) / 1000).unwrap_or(0)
            }),
        }
    }

    /// A lease comes back: its unspent part returns to the balance, unless a refill or a `set`
    /// has happened since it was granted.
    pub fn settle(&mut self, lease_epoch: u64, granted: u64, spent: u64) {
        if lease_epoch == self.epoch {
            self.balance = self
                .balance
                .saturating_add(granted.saturating_sub(spent))
                .min(MAX_CREDITS);
        }
    }

    /// An operator sets the balance: outstanding leases no longer return anything.
    pub fn set(&mut self, balance: u64) {
        self.balance = balance.min(MAX_CREDITS);
        self.epoch = self.epoch.saturating_add(1);
    }

    /// An operator adds credits.
    pub fn add(&mut self, credits: u64) {
        self.balance = self.balance.saturating_add(credits).min(MAX_CREDITS);
    }
}

/// A lease as an isolate holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub granted: u64,
    pub spent: u64,
    /// The isolate's own clock: it spends nothing from the lease from then on.
    pub expires_ms: i64,
}

impl Lease {
    fn left(&self) -> u64 {
        self.granted.saturating_sub(self.spent)
    }
}

/// A lease to hand back: its id and what was spent from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub lease: i64,
    pub spent: u64,
}

/// One key's credits in one isolate: its leases and how fast it spends.
#[derive(Debug, Default)]
pub struct Wallet {
    leases: Vec<Lease>,
    window_start_ms: i64,
    window_spent: u64,
    /// Credits per second spent in the last full window.
    rate: u64,
    /// Until when the registry's "exhausted" is taken as the answer, and when the refill comes
    /// (ms), if there is one.
    exhausted: Option<(i64, Option<i64>)>,
}

impl Wallet {
    fn note(&mut self, cost: u64, now_ms: i64) {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= 1_000 {
            self.rate = if elapsed >= 2_000 {
                0
            } else {
                self.window_spent
                    .saturating_mul(1_000)
                    .checked_div(u64::try_from(elapsed).unwrap_or(1))
                    .unwrap_or(0)
            };
            self.window_start_ms = now_ms;
            self.window_spent = 0;
        }
        self.window_spent = self.window_spent.saturating_add(cost);
    }

    /// Spend `cost` from a live lease, if one has enough left.
    pub fn spend(&mut self, cost: u64, now_ms: i64) -> bool {
        let Some(lease) = self
            .leases
            .iter_mut()
            .find(|l| l.expires_ms > now_ms && l.left() >= cost)
        else {
            return false;
        };
        lease.spent = lease.spent.saturating_add(cost);
        self.note(cost, now_ms);
        true
    }

    /// The leases to hand back before asking for a new one: those expired or too low for
    /// `cost`. They leave the wallet.
    pub fn settle_spent(&mut self, cost: u64, now_ms: i64) -> Vec<Settlement> {
        let mut out = Vec::new();
        self.leases.retain(|l| {
            let keep = l.expires_ms > now_ms && l.left() >= cost;
            if !keep {
                out.push(Settlement {
                    lease: l.id,
                    spent: l.spent,
                });
            }
            keep
        });
        out
    }

    /// How many credits to ask for: about a second's worth at the recent rate, at least `cost`.
    pub fn want(&self, cost: u64) -> u64 {
        self.rate
            .max(self.window_spent)
            .max(cost)
            .min(MAX_LEASE.max(cost))
    }

    /// Take a granted lease and spend `cost` from it at once (the request that asked for it).
    /// Returns whether the wallet keeps it (something is left, to spend and then return); a
    /// lease spent at once is settled already, on the registry's side.
    pub fn open(&mut self, mut lease: Lease, cost: u64, now_ms: i64) -> bool {
        lease.spent = lease.spent.saturating_add(cost).min(lease.granted);
        self.note(cost, now_ms);
        let kept = lease.left() > 0;
        if kept {
            self.leases.push(lease);
        }
        kept
    }

    /// At the end of a lease: take it out, for its return. `None` when it already left (it ran
    /// out and was handed back with a renewal).
    pub fn close(&mut self, lease: i64) -> Option<Settlement> {
        let i = self.leases.iter().position(|l| l.id == lease)?;
        let l = self.leases.swap_remove(i);
        Some(Settlement {
            lease: l.id,
            spent: l.spent,
        })
    }

    /// The registry said the credits ran out: remember it for [`EXHAUSTED_MEMORY_MS`] (less if
    /// the refill comes sooner).
    pub fn remember_exhausted(&mut self, now_ms: i64, retry_after: Option<u64>) {
        let refill_ms = retry_after
            .map(|s| now_ms.saturating_add(i64::try_from(s).unwrap_or(i64::MAX / 2).saturating_mul(1000)));
        let until = now_ms
            .saturating_add(EXHAUSTED_MEMORY_MS)
            .min(refill_ms.unwrap_or(i64::MAX));
        self.exhausted = Some((until, refill_ms));
    }

    /// While remembered as exhausted: `Some` with the seconds until the refill, if any.
    pub fn exhausted(&mut self, now_ms: i64) -> Option<Option<u64>> {
        let (until, refill_ms) = self.exhausted?;
        if now_ms >= until {
            self.exhausted = None;
            return None;
        }
        Some(refill_ms.map(|r| u64::try_from((r - now_ms).max(0).saturating_add(999) / 1000).unwrap_or(0)))
    }

    /// Forget "exhausted" (after an admin change of the key through this isolate).
    pub fn forget_exhausted(&mut self) {
        self.exhausted = None;
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.exhausted.is_none()
    }
}

#[cfg(test)]
mod tests;
