//! The registry's share of credits and usage: each metered key's balance (`meters`), the leases
//! isolates hold (`leases`), and usage counts by key, day and outcome (`usage`, `last_used`).
//! The arithmetic is `crate::credits`; this is its SQL.
//!
//! Leases and usage flushes come from isolates and commit on their own, at once (one
//! synchronous run of statements, so one transaction in the Durable Object). Balance changes
//! made through the admin API are queued with the request's other writes ([`MeterOp`]) and
//! commit with them.

use serde::{Deserialize, Serialize};

use super::{SqlDb, SqlRegistry, SqlValue, err, to_i64};
use crate::credits::{Grant, Ledger, RECLAIM_AFTER_MS, Refill, Settlement, next_refill};
use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::store::StoreError;
use crate::time::Timestamp;
use crate::usage::{UsageBatch, valid_code};

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meters (key_id TEXT PRIMARY KEY, balance INTEGER NOT NULL, epoch INTEGER NOT NULL, next_refill_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL, epoch INTEGER NOT NULL, granted INTEGER NOT NULL, at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS leases_by_key ON leases (key_id, at)",
    "CREATE TABLE IF NOT EXISTS usage (key_id TEXT NOT NULL, day INTEGER NOT NULL, code TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (key_id, day, code))",
    "CREATE TABLE IF NOT EXISTS last_used (key_id TEXT PRIMARY KEY, at INTEGER NOT NULL)",
];

/// A change to a key's credits made by the admin API, committed with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterOp {
    /// Set the balance (outstanding leases then return nothing).
    Set(u64),
    Add(u64),
    /// The key's refill changed: its next refill is counted from now.
    Refill(Option<Refill>),
    /// The key is no longer metered.
    Remove,
}

/// A metered key's credits as the admin API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditsView {
    /// Credits not leased out (a refill that is due counts as done).
    pub remaining: u64,
    /// Credits leased to isolates and not yet returned (spent or not).
    pub leased: u64,
    pub next_refill_at: Option<Timestamp>,
}

/// What an isolate asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub key_id: String,
    pub want: u64,
    pub cost: u64,
    /// Leases handed back with this request.
    #[serde(default)]
    pub settle: Vec<Settlement>,
}

/// The registry's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LeaseAnswer {
    /// A lease (`lease` 0: spent at once, nothing to return).
    Granted {
        lease: i64,
        granted: u64,
    },
    Exhausted {
        retry_after: Option<u64>,
    },
    /// The key is not metered (any more): nothing to spend.
    Unmetered,
    /// No such key.
    NoKey,
}

fn u64_of(v: Option<&SqlValue>) -> u64 {
    v.and_then(SqlValue::int)
        .and_then(|i| u64::try_from(i).ok())
        .unwrap_or(0)
}

impl<D: SqlDb> SqlRegistry<D> {
    fn ledger(&self, id: &str) -> Result<Option<Ledger>, StoreError> {
        let rows = self.db.exec(
            "SELECT balance, epoch, next_refill_at FROM meters WHERE key_id = ?1",
            &[id.into()],
        )?;
        Ok(rows.first().map(|r| Ledger {
            balance: u64_of(r.first()),
            epoch: u64_of(r.get(1)),
            next_refill_at: r.get(2).and_then(SqlValue::int).map(Timestamp::from_millis),
        }))
    }

    fn store_ledger(&self, id: &str, l: &Ledger) -> Result<(), StoreError> {
        self.db.exec(
            "INSERT INTO meters (key_id, balance, epoch, next_refill_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key_id) DO UPDATE SET balance = excluded.balance, epoch = excluded.epoch, next_refill_at = excluded.next_refill_at",
            &[
                id.into(),
                to_i64(l.balance).into(),
                to_i64(l.epoch).into(),
                l.next_refill_at.map(|t| t.millis()).into(),
            ],
        )?;
        Ok(())
    }

    /// Apply one queued admin change (at commit).
    pub(super) fn apply_meter(&self, id: &str, op: &MeterOp, now: Timestamp) -> Result<(), StoreError> {
        if *op == MeterOp::Remove {
            self.db
                .exec("DELETE FROM meters WHERE key_id = ?1", &[id.into()])?;
            self.db
                .exec("DELETE FROM leases WHERE key_id = ?1", &[id.into()])?;
            return Ok(());
        }
        let mut l = self.ledger(id)?.unwrap_or(Ledger {
            balance: 0,
            epoch: 0,
            next_refill_at: None,
        });
        apply(&mut l, op, now);
        self.store_ledger(id, &l)
    }

    /// A key's credits as the admin API shows them, with this request's queued changes.
    pub fn credits_view(
        &self,
        id: &KeyId,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Option<CreditsView>, StoreError> {
        let pending: Vec<MeterOp> = self
            .work
            .borrow()
            .meters
            .iter()
            .filter(|(k, _)| k == id.as_str())
            .map(|(_, op)| op.clone())
            .collect();
        let mut ledger = self.ledger(id.as_str())?;
        for op in &pending {
            if *op == MeterOp::Remove {
                ledger = None;
                continue;
            }
            let l = ledger.get_or_insert(Ledger {
                balance: 0,
                epoch: 0,
                next_refill_at: None,
            });
            apply(l, op, now);
        }
        let Some(mut l) = ledger else {
            return Ok(None);
        };
        let refilled = l.refill_due(refill, now);
        let leased = if refilled {
            0
        } else {
            let rows = self.db.exec(
                "SELECT COALESCE(SUM(granted), 0) FROM leases WHERE key_id = ?1 AND epoch = ?2 AND at > ?3",
                &[
                    id.as_str().into(),
                    to_i64(l.epoch).into(),
                    now.millis().saturating_sub(RECLAIM_AFTER_MS).into(),
                ],
            )?;
            u64_of(rows.first().and_then(|r| r.first()))
        };
        Ok(Some(CreditsView {
            remaining: l.balance,
            leased,
            next_refill_at: l.next_refill_at,
        }))
    }

    fn settle_one(&self, key_id: &str, ledger: &mut Ledger, s: &Settlement) -> Result<(), StoreError> {
        let rows = self.db.exec(
            "DELETE FROM leases WHERE id = ?1 AND key_id = ?2 RETURNING epoch, granted",
            &[s.lease.into(), key_id.into()],
        )?;
        if let Some(r) = rows.first() {
            ledger.settle(u64_of(r.first()), u64_of(r.get(1)), s.spent);
        }
        Ok(())
    }

    /// An isolate hands back leases and asks for credits for a request costing `cost`.
    /// Applied at once: settle, refill when due, write off leases never returned, grant.
    pub fn lease(&self, req: &LeaseRequest, now: Timestamp) -> Result<LeaseAnswer, StoreError> {
        let id = KeyId::parse(&req.key_id).ok_or_else(|| err("lease: not a key id"))?;
        let record: Option<KeyRecord> = match self.record_json(&id)? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|e| err(e.to_string()))?),
            None => None,
        };
        let Some(record) = record else {
            return Ok(LeaseAnswer::NoKey);
        };
        let mut ledger = self.ledger(id.as_str())?.unwrap_or(Ledger {
            balance: 0,
            epoch: 0,
            next_refill_at: None,
        });
        for s in &req.settle {
            self.settle_one(id.as_str(), &mut ledger, s)?;
        }
        if !record.metered {
            return Ok(LeaseAnswer::Unmetered);
        }
        // A retired key (rotated) is never refilled: its balance moved to its successor.
        let refill = record.refill_in_effect();
        ledger.refill_due(refill.as_ref(), now);
        self.db.exec(
            "DELETE FROM leases WHERE key_id = ?1 AND at <= ?2",
            &[
                id.as_str().into(),
                now.millis().saturating_sub(RECLAIM_AFTER_MS).into(),
            ],
        )?;
        let cost = req.cost.max(1);
        let Grant {
            granted,
            epoch,
            retry_after,
        } = ledger.grant(req.want, cost, now);
        self.store_ledger(id.as_str(), &ledger)?;
        if granted == 0 {
            return Ok(LeaseAnswer::Exhausted { retry_after });
        }
        // A lease of exactly the cost is spent at once by the request that asked: nothing to
        // return, so nothing to record.
        let lease = if granted > cost {
            let rows = self.db.exec(
                "INSERT INTO leases (key_id, epoch, granted, at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                &[
                    id.as_str().into(),
                    to_i64(epoch).into(),
                    to_i64(granted).into(),
                    now.millis().into(),
                ],
            )?;
            rows.first()
                .and_then(|r| r.first())
                .and_then(SqlValue::int)
                .ok_or_else(|| err("lease: no id"))?
        } else {
            0
        };
        Ok(LeaseAnswer::Granted { lease, granted })
    }

    /// Leases handed back at their end (no new lease).
    pub fn settle(&self, key_id: &str, settle: &[Settlement]) -> Result<(), StoreError> {
        let Some(mut ledger) = self.ledger(key_id)? else {
            return Ok(());
        };
        for s in settle {
            self.settle_one(key_id, &mut ledger, s)?;
        }
        self.store_ledger(key_id, &ledger)
    }

    /// Add an isolate's usage counts. Rows of keys that do not exist, or that are malformed,
    /// are skipped. Returns the rows added.
    pub fn add_usage(&self, batch: &UsageBatch) -> Result<usize, StoreError> {
        let mut added = 0;
        for row in &batch.rows {
            if KeyId::parse(&row.key_id).is_none() || !valid_code(&row.code) || row.count == 0 {
                continue;
            }
            // Only keys the registry knows: a flush cannot create usage for made-up ids.
            let known = self.db.exec(
                "INSERT INTO usage (key_id, day, code, count) SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM records WHERE id = ?1) ON CONFLICT (key_id, day, code) DO UPDATE SET count = count + excluded.count RETURNING count",
                &[
                    row.key_id.as_str().into(),
                    row.day.into(),
                    row.code.as_str().into(),
                    to_i64(row.count.min(1 << 40)).into(),
                ],
            )?;
            added += known.len();
        }
        for (k, at) in &batch.last_used {
            if KeyId::parse(k).is_none() {
                continue;
            }
            self.db.exec(
                "INSERT INTO last_used (key_id, at) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM records WHERE id = ?1) ON CONFLICT (key_id) DO UPDATE SET at = MAX(at, excluded.at)",
                &[k.as_str().into(), (*at).into()],
            )?;
        }
        Ok(added)
    }

    /// (day, code, count) of a key's usage from `from` to `to` (day numbers, inclusive).
    pub fn usage_rows(&self, id: &KeyId, from: i64, to: i64) -> Result<Vec<(i64, String, u64)>, StoreError> {
        let rows = self.db.exec(
            "SELECT day, code, count FROM usage WHERE key_id = ?1 AND day >= ?2 AND day <= ?3 ORDER BY day, code",
            &[id.as_str().into(), from.into(), to.into()],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.first()?.int()?, r.get(1)?.text()?.to_owned(), u64_of(r.get(2)))))
            .collect())
    }

    pub fn last_used(&self, id: &KeyId) -> Result<Option<Timestamp>, StoreError> {
        let rows = self.db.exec(
            "SELECT at FROM last_used WHERE key_id = ?1",
            &[id.as_str().into()],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::int)
            .map(Timestamp::from_millis))
    }

    /// Forget a deleted key's credits (its usage history stays, unreachable, until pruned).
    pub(super) fn forget_meter(&self, id: &str) -> Result<(), StoreError> {
        self.apply_meter(id, &MeterOp::Remove, Timestamp::from_millis(0))?;
        self.db
            .exec("DELETE FROM last_used WHERE key_id = ?1", &[id.into()])?;
        self.db
            .exec("DELETE FROM usage WHERE key_id = ?1", &[id.into()])?;
        Ok(())
    }
}

/// Usage is kept this many days.
pub const USAGE_RETENTION_DAYS: i64 = 400;

impl<D: SqlDb> SqlRegistry<D> {
    /// Leases never returned, past their write-off, and usage past retention.
    pub(super) fn prune_meters(&self, now: Timestamp) -> Result<(), StoreError> {
        self.db.exec(
            "DELETE FROM leases WHERE at <= ?1",
            &[now.millis().saturating_sub(RECLAIM_AFTER_MS).into()],
        )?;
        self.db.exec(
            "DELETE FROM usage WHERE day < ?1",
            &[(crate::usage::day_of(now) - USAGE_RETENTION_DAYS).into()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

fn apply(l: &mut Ledger, op: &MeterOp, now: Timestamp) {
    match op {
        MeterOp::Set(n) => l.set(*n),
        MeterOp::Add(n) => l.add(*n),
        MeterOp::Refill(r) => l.next_refill_at = r.as_ref().map(|r| next_refill(now, r)),
        MeterOp::Remove => {}
    }
}
