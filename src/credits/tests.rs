use proptest::prelude::*;

use super::*;

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn monthly(day: Option<u8>) -> Refill {
    Refill {
        amount: 10,
        interval: Interval::Month,
        day,
    }
}

#[test]
fn daily_refills_at_the_next_utc_midnight() {
    let r = Refill {
        amount: 5,
        interval: Interval::Day,
        day: None,
    };
    assert_eq!(
        next_refill(at("2026-11-23T13:00:00Z"), &r),
        at("2026-11-24T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2026-11-23T00:00:00Z"), &r),
        at("2026-11-24T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2026-12-31T23:59:59Z"), &r),
        at("2027-01-01T00:00:00Z")
    );
}

#[test]
fn monthly_refills_clamp_to_the_month_end() {
    // Day 31 in a 30-day month, in February (leap and not), and in December's rollover.
    assert_eq!(
        next_refill(at("2026-11-23T00:00:00Z"), &monthly(Some(31))),
        at("2026-11-30T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2026-11-30T00:00:00Z"), &monthly(Some(31))),
        at("2026-12-31T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2026-12-31T00:00:01Z"), &monthly(Some(31))),
        at("2027-01-31T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2027-01-31T00:00:00Z"), &monthly(Some(31))),
        at("2027-02-28T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2028-02-01T00:00:00Z"), &monthly(Some(30))),
        at("2028-02-29T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2028-02-29T00:00:00Z"), &monthly(Some(29))),
        at("2028-03-29T00:00:00Z")
    );
    // Default: the first of the month.
    assert_eq!(
        next_refill(at("2026-11-01T00:00:00Z"), &monthly(None)),
        at("2026-12-01T00:00:00Z")
    );
    assert_eq!(
        next_refill(at("2026-10-31T23:59:59Z"), &monthly(None)),
        at("2026-11-01T00:00:00Z")
    );
}

#[test]
fn refill_is_checked() {
    assert!(monthly(Some(31)).problem().is_none());
    assert!(monthly(Some(0)).problem().is_some());
    assert!(monthly(Some(32)).problem().is_some());
    let daily_with_day = Refill {
        amount: 1,
        interval: Interval::Day,
        day: Some(3),
    };
    assert!(daily_with_day.problem().is_some());
    let zero = Refill {
        amount: 0,
        ..monthly(None)
    };
    assert!(zero.problem().is_some());
}

#[test]
fn a_refill_resets_once_however_late_and_old_leases_return_nothing() {
    let r = Refill {
        amount: 100,
        interval: Interval::Day,
        day: None,
    };
    let mut l = Ledger::new(10, Some(&r), at("2026-11-23T12:00:00Z"));
    let g = l.grant(8, 1, at("2026-11-23T12:00:00Z"));
    assert_eq!((g.granted, l.balance), (2, 8), "at most a quarter of the balance");
    assert_eq!(g.retry_after, Some(12 * 3600));
    assert!(!l.refill_due(Some(&r), at("2026-11-23T23:59:59Z")));
    assert!(l.refill_due(Some(&r), at("2026-11-26T08:00:00Z")));
    assert_eq!(l.balance, 100);
    assert_eq!(l.next_refill_at, Some(at("2026-11-27T00:00:00Z")));
    l.settle(g.epoch, g.granted, 0);
    assert_eq!(l.balance, 100, "a lease from before the refill adds nothing");
}

#[test]
fn grants_never_exceed_the_balance() {
    let now = at("2026-11-23T00:00:00Z");
    let mut l = Ledger::new(3, None, now);
    assert_eq!(l.grant(1, 5, now).granted, 0);
    assert_eq!(l.grant(100, 2, now).granted, 2);
    assert_eq!(l.grant(100, 1, now).granted, 1);
    assert_eq!(l.grant(1, 1, now).granted, 0);
    assert_eq!(l.balance, 0);
}

#[test]
fn wallets_size_leases_by_the_recent_rate() {
    let mut w = Wallet::default();
    assert_eq!(w.want(1), 1, "a cold key asks for its cost");
    assert!(w.open(
        Lease {
            id: 1,
            granted: 50,
            spent: 0,
            expires_ms: 5_000
        },
        1,
        0
    ));
    for t in 1..50 {
        assert!(w.spend(1, t * 10));
    }
    assert!(!w.spend(1, 600), "the lease ran out");
    assert_eq!(w.settle_spent(1, 600), vec![Settlement { lease: 1, spent: 50 }]);
    assert!(w.is_empty());
    // 50 credits in about half a second, then the window rolled: about 100 per second.
    let mut w2 = Wallet::default();
    for t in 0..50 {
        w2.note(1, t * 10);
    }
    w2.note(1, 1_000);
    assert!(w2.want(1) >= 50, "{}", w2.want(1));
    assert_eq!(w2.want(20_000), 20_000, "never less than one request's cost");
}

#[test]
fn exhausted_is_remembered_for_a_second_or_until_the_refill() {
    let mut w = Wallet::default();
    w.remember_exhausted(0, None);
    assert_eq!(w.exhausted(999), Some(None));
    assert_eq!(w.exhausted(1_000), None);
    w.remember_exhausted(10_000, Some(30));
    assert_eq!(w.exhausted(10_500), Some(Some(30)));
    // A refill sooner than a second ends the memory at the refill.
    w.remember_exhausted(20_000, Some(0));
    assert_eq!(w.exhausted(20_000), None);
    w.remember_exhausted(30_000, None);
    w.forget_exhausted();
    assert_eq!(w.exhausted(30_001), None);
}

#[test]
fn expired_leases_are_not_spent() {
    let mut w = Wallet::default();
    assert!(w.open(
        Lease {
            id: 7,
            granted: 10,
            spent: 0,
            expires_ms: 5_000
        },
        1,
        0
    ));
    assert!(w.spend(1, 4_999));
    assert!(!w.spend(1, 5_000));
    assert_eq!(w.close(7), Some(Settlement { lease: 7, spent: 2 }));
    assert_eq!(w.close(7), None, "closed once");
}

/// One step of the interleaving: isolates request, leases end, operators change the balance,
/// isolates die.
#[derive(Debug, Clone)]
enum Op {
    Request { isolate: usize, cost: u64 },
    Tick { ms: i64 },
    Close { isolate: usize },
    Die { isolate: usize },
    Add(u64),
    Set(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 1..4u64).prop_map(|(isolate, cost)| Op::Request { isolate, cost }),
        2 => (1..3_000i64).prop_map(|ms| Op::Tick { ms }),
        2 => (0..3usize).prop_map(|isolate| Op::Close { isolate }),
        1 => (0..3usize).prop_map(|isolate| Op::Die { isolate }),
        1 => (0..20u64).prop_map(Op::Add),
        1 => (0..50u64).prop_map(Op::Set),
    ]
}

proptest! {
    /// However the isolates' requests, lease ends, deaths and operator changes interleave, the
    /// credits spent since the balance was last set never exceed what it was set to plus what
    /// was added since; and when no lease is lost, nothing is lost either.
    #[test]
    fn never_overspent(start in 0..200u64, ops in proptest::collection::vec(op(), 1..300)) {
        let t0 = at("2026-11-23T00:00:00Z");
        let mut now_ms = 0i64;
        let mut ledger = Ledger::new(start, None, t0);
        // (lease id, epoch, granted) as the registry records them.
        let mut outstanding: Vec<(i64, u64, u64)> = Vec::new();
        let mut wallets: Vec<Wallet> = (0..3).map(|_| Wallet::default()).collect();
        let mut next_id = 1i64;
        let mut budget = start; // set + added in this epoch
        let mut spent = 0u64; // spent in this epoch
        let mut lost = false;
        let settle = |ledger: &mut Ledger, outstanding: &mut Vec<(i64, u64, u64)>, s: Settlement| {
            if let Some(i) = outstanding.iter().position(|o| o.0 == s.lease) {
                let (_, epoch, granted) = outstanding.swap_remove(i);
                ledger.settle(epoch, granted, s.spent);
            }
        };
        // Spent from leases of the current epoch only (an isolate cannot tell epochs apart;
        // the model can, by the lease's id).
        let mut epoch_of: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Request { isolate, cost } => {
                    let w = &mut wallets[isolate];
                    // The lease `spend` takes (the same rule), to count it in its epoch.
                    let payer = w
                        .leases
                        .iter()
                        .find(|l| l.expires_ms > now_ms && l.left() >= cost)
                        .map(|l| l.id);
                    if w.spend(cost, now_ms) {
                        let payer = payer.expect("spend found a lease");
                        if epoch_of[&payer] == ledger.epoch {
                            spent += cost;
                        }
                        continue;
                    }
                    prop_assert!(payer.is_none());
                    for s in w.settle_spent(cost, now_ms) {
                        settle(&mut ledger, &mut outstanding, s);
                    }
                    let g = ledger.grant(w.want(cost), cost, t0);
                    if g.granted == 0 {
                        continue;
                    }
                    let id = next_id;
                    next_id += 1;
                    epoch_of.insert(id, g.epoch);
                    spent += cost;
                    let lease = Lease { id, granted: g.granted, spent: 0, expires_ms: now_ms + LEASE_TTL_MS };
                    if w.open(lease, cost, now_ms) {
                        outstanding.push((id, g.epoch, g.granted));
                    }
                }
                Op::Tick { ms } => now_ms += ms,
                Op::Close { isolate } => {
                    let ids: Vec<i64> = wallets[isolate].leases.iter().filter(|l| l.expires_ms <= now_ms).map(|l| l.id).collect();
                    for id in ids {
                        if let Some(s) = wallets[isolate].close(id) {
                            settle(&mut ledger, &mut outstanding, s);
                        }
                    }
                }
                Op::Die { isolate } => {
                    if !wallets[isolate].is_empty() {
                        lost = true;
                    }
                    // The registry writes its leases off: they stay spent.
                    let gone: Vec<i64> = wallets[isolate].leases.iter().map(|l| l.id).collect();
                    outstanding.retain(|o| !gone.contains(&o.0));
                    wallets[isolate] = Wallet::default();
                }
                Op::Add(n) => {
                    ledger.add(n);
                    budget += n;
                }
                Op::Set(n) => {
                    ledger.set(n);
                    budget = n;
                    spent = 0;
                }
            }
            prop_assert!(spent <= budget, "spent {spent} of {budget}");
        }
        // Every isolate hands back what it holds: nothing was lost unless an isolate died.
        for w in &mut wallets {
            let ids: Vec<i64> = w.leases.iter().map(|l| l.id).collect();
            for id in ids {
                if let Some(s) = w.close(id) {
                    settle(&mut ledger, &mut outstanding, s);
                }
            }
        }
        prop_assert!(outstanding.is_empty() || lost);
        if !lost {
            prop_assert_eq!(ledger.balance + spent, budget);
        }
    }
}
