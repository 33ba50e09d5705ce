//! The workers-rs side of limits, credits and usage (`crate::limits`, `crate::credits`,
//! `crate::usage`): calls to the Rate Limiting bindings, this isolate's wallets of leased
//! credits, its blocked client addresses, and its usage counters, flushed to the registry from
//! `waitUntil`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use worker::{Context, Delay, Env, Method, Request, RequestInit, console_error, console_log};

use super::durable;
use crate::credits::{LEASE_TTL_MS, Lease, Settlement, Wallet};
use crate::key::KeyId;
use crate::limits::{AuthBlocks, Tier};
use crate::registry::meter::{LeaseAnswer, LeaseRequest};
use crate::time::Timestamp;
use crate::usage::UsageBuffer;

/// Client addresses one isolate remembers as blocked, at most.
const BLOCKS_CAPACITY: usize = 10_000;
/// Wallets one isolate keeps, at most (empty ones are dropped first).
const WALLETS_CAPACITY: usize = 10_000;

thread_local! {
    static BLOCKS: RefCell<AuthBlocks> = RefCell::new(AuthBlocks::new(BLOCKS_CAPACITY));
    static WALLETS: RefCell<HashMap<KeyId, Wallet>> = RefCell::new(HashMap::new());
    static USAGE: RefCell<UsageBuffer> = RefCell::new(UsageBuffer::default());
    /// (binding, minute) of the last "limiter failed" log line, so a missing binding is logged
    /// once a minute, not per request.
    static LIMITER_LOGGED: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
}

/// What a limiter said.
pub(super) enum Limited {
    Under,
    Over,
    /// The binding is missing or failed (logged): the policy's `on_error` decides.
    Failed,
}

fn log_limiter_failure(binding: &str, reason: &str, now: Timestamp) {
    let minute = now.millis() / 60_000;
    let first = LIMITER_LOGGED.with(|l| l.borrow_mut().insert(binding.to_owned(), minute) != Some(minute));
    if first {
        console_error!(
            "{}",
            serde_json::json!({"level": "error", "event": "limiter_failed", "binding": binding, "reason": reason})
        );
    }
}

/// One call to a Rate Limiting binding: counts `key` and says whether it is over.
pub(super) async fn limit(env: &Env, tier: &Tier, key: &str, now: Timestamp) -> Limited {
    let limiter = match env.rate_limiter(&tier.binding) {
        Ok(l) => l,
        Err(e) => {
            log_limiter_failure(&tier.binding, &e.to_string(), now);
            return Limited::Failed;
        }
    };
    match limiter.limit(key.to_owned()).await {
        Ok(o) if o.success => Limited::Under,
        Ok(_) => Limited::Over,
        Err(e) => {
            log_limiter_failure(&tier.binding, &e.to_string(), now);
            Limited::Failed
        }
    }
}

/// Seconds until a blocked client address may try again (`None`: not blocked here).
pub(super) fn blocked(ip: &str, now: Timestamp) -> Option<u32> {
    BLOCKS.with(|b| b.borrow_mut().blocked(ip, now.millis()))
}

/// A failed authentication from `ip`: counted by the failed-auth limiter; past its limit, this
/// isolate answers the address 429 without lookups for the rest of the period.
pub(super) async fn failed_auth(env: &Env, tier: &Tier, ip: &str, now: Timestamp) {
    if let Limited::Over = limit(env, tier, ip, now).await {
        BLOCKS.with(|b| b.borrow_mut().block(ip, now.millis(), tier.period));
        console_log!(
            "{}",
            serde_json::json!({"level": "warn", "event": "client_blocked", "client_ip": ip, "seconds": tier.period})
        );
    }
}

/// After a refused credential on a token endpoint: counted like a guess on a gateway route.
pub(super) async fn note_failure(
    env: &Env,
    policy: &crate::policy::Policy,
    client_ip: Option<crate::ip::ClientIp>,
    denial: &crate::decide::Denial,
    now: Timestamp,
) {
    if let (Some(tier), Some(ip)) = (&policy.limits.failed_auth, client_ip)
        && crate::limits::counts_as_failed_auth(denial)
    {
        failed_auth(env, tier, &crate::limits::client_key(ip), now).await;
    }
}

/// The outcome of spending credits.
pub(super) enum Spend {
    Spent,
    /// Not enough credits; seconds until the next refill, when there is one.
    Exhausted(Option<u64>),
    /// The registry no longer knows the key.
    NoKey,
    /// The registry could not be asked (fail closed).
    Unavailable(String),
}

fn with_wallet<T>(key: &KeyId, f: impl FnOnce(&mut Wallet) -> T) -> T {
    WALLETS.with(|w| {
        let mut wallets = w.borrow_mut();
        if wallets.len() >= WALLETS_CAPACITY && !wallets.contains_key(key) {
            wallets.retain(|_, wallet| !wallet.is_empty());
        }
        f(wallets.entry(key.clone()).or_default())
    })
}

/// Spend `cost` credits of `key`: from a lease this isolate holds, or from a new one.
pub(super) async fn spend(env: &Env, ctx: &Context, key: &KeyId, cost: u64, now: Timestamp) -> Spend {
    let now_ms = now.millis();
    if with_wallet(key, |w| w.spend(cost, now_ms)) {
        return Spend::Spent;
    }
    if let Some(retry) = with_wallet(key, |w| w.exhausted(now_ms)) {
        return Spend::Exhausted(retry);
    }
    let (settle, want) = with_wallet(key, |w| (w.settle_spent(cost, now_ms), w.want(cost)));
    let request = LeaseRequest {
        key_id: key.to_string(),
        want,
        cost,
        settle,
    };
    let answer = match durable::call::<_, LeaseAnswer>(env, durable::LEASE_URL, &request).await {
        Ok(a) => a,
        // The handed-back leases count as spent: credits may be lost, never spent twice.
        Err(e) => return Spend::Unavailable(e.to_string()),
    };
    match answer {
        LeaseAnswer::Granted { lease, granted } => {
            let expires_ms = now_ms.saturating_add(LEASE_TTL_MS);
            let kept = with_wallet(key, |w| {
                w.open(
                    Lease {
                        id: lease,
                        granted,
                        spent: 0,
                        expires_ms,
                    },
                    cost,
                    now_ms,
                )
            });
            if kept && lease != 0 {
                // At the lease's end, what is left goes back (unless a renewal took it first).
                let env = env.clone();
                let key = key.clone();
                ctx.wait_until(async move {
                    let ttl = u64::try_from(LEASE_TTL_MS).unwrap_or(5_000);
                    Delay::from(Duration::from_millis(ttl)).await;
                    if let Some(s) = with_wallet(&key, |w| w.close(lease)) {
                        hand_back(&env, &key, vec![s]).await;
                    }
                });
            }
            Spend::Spent
        }
        LeaseAnswer::Exhausted { retry_after } => {
            with_wallet(key, |w| w.remember_exhausted(now_ms, retry_after));
            Spend::Exhausted(retry_after)
        }
        LeaseAnswer::Unmetered => Spend::Spent,
        LeaseAnswer::NoKey => Spend::NoKey,
    }
}

async fn hand_back(env: &Env, key: &KeyId, settle: Vec<Settlement>) {
    let body = serde_json::json!({"key_id": key.to_string(), "settle": settle});
    if let Err(e) = durable::call::<_, serde_json::Value>(env, durable::SETTLE_URL, &body).await {
        console_error!(
            "{}",
            serde_json::json!({"level": "error", "event": "lease_return_failed", "key_id": key.to_string(), "reason": e.to_string()})
        );
    }
}

/// An admin change of `key` went through this isolate: what it remembered of its credits
/// running out no longer holds.
pub(super) fn forget(key: &KeyId) {
    WALLETS.with(|w| {
        if let Some(wallet) = w.borrow_mut().get_mut(key) {
            wallet.forget_exhausted();
        }
    });
}

/// Count one request of `key` with its outcome (`allowed` or a problem code).
pub(super) fn count(key: &KeyId, now: Timestamp, code: &str) {
    USAGE.with(|u| u.borrow_mut().record(key, now, code));
}

/// When a flush is due, hand this isolate's counts to the registry from `waitUntil`. A failed
/// flush puts them back for the next one.
pub(super) fn flush_usage(env: &Env, ctx: &Context, interval_seconds: u32, now: Timestamp) {
    let interval_ms = i64::from(interval_seconds).saturating_mul(1000);
    let Some(batch) = USAGE.with(|u| {
        let mut u = u.borrow_mut();
        u.due(now.millis(), interval_ms).then(|| u.take(now.millis()))
    }) else {
        return;
    };
    let env = env.clone();
    ctx.wait_until(async move {
        if batch.dropped > 0 {
            console_error!(
                "{}",
                serde_json::json!({"level": "error", "event": "usage_dropped", "requests": batch.dropped})
            );
        }
        if let Err(e) = durable::call::<_, serde_json::Value>(&env, durable::USAGE_URL, &batch).await {
            console_error!(
                "{}",
                serde_json::json!({"level": "error", "event": "usage_flush_failed", "reason": e.to_string()})
            );
            USAGE.with(|u| u.borrow_mut().restore(batch));
        }
    });
}

/// A POST of JSON to the registry, for its JSON answer.
pub(super) fn json_request(url: &str, body: &impl serde::Serialize) -> worker::Result<Request> {
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(serde_json::to_string(body)?.into()));
    Request::new_with_init(url, &init)
}
