//! The registry's credits and usage on SQLite, as the Durable Object runs them.

use futures::executor::block_on;

use super::*;
use crate::credits::{Interval, LEASE_TTL_MS, Refill};
use crate::record::tests::sample;
use crate::registry::sqlite::Sqlite;
use crate::registry::{AdminStore, SqlRegistry};
use crate::store::{KvStore, record_key};
use crate::usage::{ALLOWED, UsageRow};

const ID: &str = "00000000000000c1";

fn registry() -> SqlRegistry<Sqlite> {
    SqlRegistry::open(Sqlite::memory().unwrap()).unwrap()
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// A metered key with `balance` credits, committed at `now`.
fn metered(r: &SqlRegistry<Sqlite>, balance: u64, refill: Option<Refill>, now: Timestamp) -> KeyRecord {
    let mut rec = sample(ID);
    rec.metered = true;
    rec.refill = refill;
    block_on(r.put(&record_key(&rec.id), &serde_json::to_string(&rec).unwrap())).unwrap();
    r.queue_meter(&rec.id, MeterOp::Set(balance));
    r.queue_meter(&rec.id, MeterOp::Refill(refill));
    r.commit(now).unwrap();
    rec
}

fn ask(
    r: &SqlRegistry<Sqlite>,
    want: u64,
    cost: u64,
    settle: Vec<Settlement>,
    now: Timestamp,
) -> LeaseAnswer {
    r.lease(
        &LeaseRequest {
            key_id: ID.into(),
            want,
            cost,
            settle,
        },
        now,
    )
    .unwrap()
}

fn view(r: &SqlRegistry<Sqlite>, rec: &KeyRecord, now: Timestamp) -> CreditsView {
    r.credits(rec, now).unwrap().expect("metered")
}

#[test]
fn leases_come_from_the_balance_and_unspent_credits_return() {
    let r = registry();
    let rec = metered(&r, 100, None, at(0));
    assert_eq!(
        ask(&r, 40, 1, vec![], at(1)),
        LeaseAnswer::Granted {
            lease: 1,
            granted: 25
        },
        "a quarter at most"
    );
    assert_eq!(
        view(&r, &rec, at(2)),
        CreditsView {
            remaining: 75,
            leased: 25,
            next_refill_at: None
        }
    );
    // 10 spent; 15 return with the next request, which leases again.
    let next = ask(&r, 1, 1, vec![Settlement { lease: 1, spent: 10 }], at(3));
    assert_eq!(
        next,
        LeaseAnswer::Granted { lease: 0, granted: 1 },
        "a lease of exactly the cost is not recorded"
    );
    assert_eq!(
        view(&r, &rec, at(4)),
        CreditsView {
            remaining: 89,
            leased: 0,
            next_refill_at: None
        }
    );
    // Settling the same lease twice gives nothing more.
    r.settle(ID, &[Settlement { lease: 1, spent: 0 }]).unwrap();
    assert_eq!(view(&r, &rec, at(5)).remaining, 89);
}

#[test]
fn exhausted_until_the_refill_then_reset_to_its_amount() {
    let r = registry();
    let day = 86_400_000;
    let refill = Refill {
        amount: 5,
        interval: Interval::Day,
        day: None,
    };
    let rec = metered(&r, 1, Some(refill), at(day / 2));
    assert!(matches!(
        ask(&r, 1, 1, vec![], at(day / 2)),
        LeaseAnswer::Granted { granted: 1, .. }
    ));
    assert_eq!(
        ask(&r, 1, 1, vec![], at(day / 2 + 1_000)),
        LeaseAnswer::Exhausted {
            retry_after: Some(43_199)
        }
    );
    assert_eq!(
        ask(&r, 1, 3, vec![], at(day / 2 + 1_000)),
        LeaseAnswer::Exhausted {
            retry_after: Some(43_199)
        }
    );
    // The view already shows a refill that is due; the ledger applies it at the next lease.
    assert_eq!(view(&r, &rec, at(day + 1)).remaining, 5);
    assert!(matches!(
        ask(&r, 2, 2, vec![], at(day + 1)),
        LeaseAnswer::Granted { granted: 2, .. }
    ));
    assert_eq!(view(&r, &rec, at(day + 2)).remaining, 3);
    assert_eq!(view(&r, &rec, at(day + 2)).next_refill_at, Some(at(2 * day)));
}

#[test]
fn a_refill_or_a_set_voids_outstanding_leases() {
    let r = registry();
    let rec = metered(&r, 80, None, at(0));
    let LeaseAnswer::Granted { lease, granted } = ask(&r, 20, 1, vec![], at(1)) else {
        panic!()
    };
    assert_eq!(granted, 20);
    r.queue_meter(&rec.id, MeterOp::Set(10));
    r.commit(at(2)).unwrap();
    r.settle(ID, &[Settlement { lease, spent: 0 }]).unwrap();
    assert_eq!(
        view(&r, &rec, at(3)).remaining,
        10,
        "a lease from before the set returns nothing"
    );
    r.queue_meter(&rec.id, MeterOp::Add(5));
    r.commit(at(4)).unwrap();
    assert_eq!(view(&r, &rec, at(5)).remaining, 15);
}

#[test]
fn unreturned_leases_are_written_off_and_never_spent_twice() {
    let r = registry();
    let rec = metered(&r, 40, None, at(0));
    let LeaseAnswer::Granted { granted, .. } = ask(&r, 10, 1, vec![], at(0)) else {
        panic!()
    };
    assert_eq!(granted, 10);
    assert_eq!(view(&r, &rec, at(1)).leased, 10);
    // Past the write-off, the lease is gone, and its credits with it (never back).
    assert_eq!(view(&r, &rec, at(RECLAIM_AFTER_MS + 1)).leased, 0);
    r.prune(at(RECLAIM_AFTER_MS + 1)).unwrap();
    r.settle(ID, &[Settlement { lease: 1, spent: 0 }]).unwrap();
    assert_eq!(view(&r, &rec, at(RECLAIM_AFTER_MS + 2)).remaining, 30);
    const { assert!(LEASE_TTL_MS < RECLAIM_AFTER_MS) };
}

#[test]
fn unmetered_and_unknown_keys() {
    let r = registry();
    let mut rec = sample(ID);
    block_on(r.put(&record_key(&rec.id), &serde_json::to_string(&rec).unwrap())).unwrap();
    r.commit(at(0)).unwrap();
    assert_eq!(ask(&r, 1, 1, vec![], at(1)), LeaseAnswer::Unmetered);
    assert_eq!(r.credits(&rec, at(1)).unwrap(), None);
    rec.metered = true;
    // Metered in the record but never given credits: nothing to spend (fail closed).
    rec.version = 2;
    block_on(r.put(&record_key(&rec.id), &serde_json::to_string(&rec).unwrap())).unwrap();
    r.commit(at(2)).unwrap();
    assert_eq!(
        ask(&r, 1, 1, vec![], at(3)),
        LeaseAnswer::Exhausted { retry_after: None }
    );
    let other = r
        .lease(
            &LeaseRequest {
                key_id: "00000000000000ff".into(),
                want: 1,
                cost: 1,
                settle: vec![],
            },
            at(4),
        )
        .unwrap();
    assert_eq!(other, LeaseAnswer::NoKey);
    assert!(
        r.lease(
            &LeaseRequest {
                key_id: "nope".into(),
                want: 1,
                cost: 1,
                settle: vec![]
            },
            at(4)
        )
        .is_err()
    );
}

#[test]
fn usage_adds_up_for_known_keys_only_and_goes_with_the_key() {
    let r = registry();
    let rec = metered(&r, 1, None, at(0));
    let row = |key: &str, day, code: &str, count| UsageRow {
        key_id: key.into(),
        day,
        code: code.into(),
        count,
    };
    let batch = UsageBatch {
        rows: vec![
            row(ID, 10, ALLOWED, 3),
            row(ID, 10, "rate_limited", 1),
            row("00000000000000ff", 10, ALLOWED, 9),
            row(ID, 10, "Not A Code", 1),
        ],
        last_used: vec![(ID.into(), 5_000), ("00000000000000ff".into(), 9_000)],
        dropped: 0,
    };
    assert_eq!(r.add_usage(&batch).unwrap(), 2);
    assert_eq!(r.add_usage(&batch).unwrap(), 2);
    assert_eq!(
        r.usage(&rec.id, 0, 20).unwrap(),
        vec![(10, ALLOWED.to_owned(), 6), (10, "rate_limited".to_owned(), 2)]
    );
    let older = UsageBatch {
        rows: vec![],
        last_used: vec![(ID.into(), 1_000)],
        dropped: 0,
    };
    r.add_usage(&older).unwrap();
    assert_eq!(
        r.last_used_at(&rec.id).unwrap(),
        Some(at(5_000)),
        "last_used_at never goes back"
    );
    // Deleting the key forgets its credits and usage.
    block_on(r.delete(&record_key(&rec.id))).unwrap();
    r.commit(at(6_000)).unwrap();
    assert_eq!(r.usage(&rec.id, 0, 20).unwrap(), vec![]);
    assert_eq!(r.last_used_at(&rec.id).unwrap(), None);
    assert_eq!(ask(&r, 1, 1, vec![], at(7_000)), LeaseAnswer::NoKey);
}

#[test]
fn a_discarded_request_changes_no_credits() {
    let r = registry();
    let rec = metered(&r, 7, None, at(0));
    r.queue_meter(&rec.id, MeterOp::Set(100));
    assert_eq!(
        view(&r, &rec, at(1)).remaining,
        100,
        "the request sees its own change"
    );
    r.discard();
    r.commit(at(1)).unwrap();
    assert_eq!(view(&r, &rec, at(2)).remaining, 7);
}
