//! The isolate's copy of the registry's revocation feed (`crate::revocation`), refreshed at
//! most once per `revocation_poll_ms` through the Cache API, so that a location asks the
//! registry about once per second however many isolates it runs.
//!
//! The cached copy is keyed by the current second, so no isolate ever uses one older than a
//! second: a revocation reaches every isolate within `revocation_poll_ms` plus one second. When
//! the registry cannot be reached, the last copy stays in force and validation goes on from KV.
//!
//! What the Cache API returns is trusted only with a valid MAC (HMAC-SHA-256 under a key derived
//! from `ADMIN_TOKEN`): anything else that can write the zone's cache cannot plant a feed page or
//! a record. Without `ADMIN_TOKEN`, the cache is not used and every isolate asks the registry.

use std::cell::{Cell, RefCell};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use worker::{Cache, Env, Headers, Response, console_error};

use super::durable;
use crate::revocation::{Feed, FeedPage};
use crate::time::Timestamp;

thread_local! {
    static FEED: RefCell<Feed> = RefCell::new(Feed::default());
    /// When this isolate last asked (the cache or the registry).
    static LAST_POLL: Cell<Option<i64>> = const { Cell::new(None) };
    /// The next refresh goes to the registry itself (this isolate just made an admin change).
    static BYPASS_CACHE: Cell<bool> = const { Cell::new(false) };
    /// The minute of the last "registry unreachable" log line.
    static LOGGED: Cell<i64> = const { Cell::new(-1) };
}

/// The feed as this isolate holds it.
pub(super) fn with<T>(f: impl FnOnce(&Feed) -> T) -> T {
    FEED.with(|feed| f(&feed.borrow()))
}

/// After an admin change through this isolate: the next request refreshes from the registry.
pub(super) fn invalidate() {
    LAST_POLL.set(None);
    BYPASS_CACHE.set(true);
}

const MAC_HEADER: &str = "x-keygate-mac";

/// The key that seals this deployment's cache entries, if it has an admin token.
fn mac_key(env: &Env) -> Option<[u8; 32]> {
    let deployment = super::deployment(env).ok()?;
    let token = deployment.admin_token.as_deref().filter(|t| !t.is_empty())?;
    Some(Sha256::digest(format!("keygate-cache:{token}").as_bytes()).into())
}

fn mac(key: &[u8; 32], body: &str) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(body.as_bytes());
    Some(m)
}

/// A cached body, if the cache holds one under `url` with this deployment's MAC.
async fn cached(cache: &Cache, url: &str, key: &[u8; 32]) -> Option<String> {
    let mut hit = cache.get(url, false).await.ok()??;
    let tag = hex::decode(hit.headers().get(MAC_HEADER).ok()??).ok()?;
    let body = hit.text().await.ok()?;
    mac(key, &body)?.verify_slice(&tag).ok()?;
    Some(body)
}

/// Best effort: without the cache, each isolate asks the registry itself.
async fn remember(cache: &Cache, url: &str, key: &[u8; 32], body: String, max_age: u32) {
    let Some(tag) = mac(key, &body).map(|m| hex::encode(m.finalize().into_bytes())) else {
        return;
    };
    let headers = Headers::new();
    let ok = headers.set("Content-Type", "application/json").is_ok()
        && headers
            .set("Cache-Control", &format!("max-age={max_age}"))
            .is_ok()
        && headers.set(MAC_HEADER, &tag).is_ok();
    if let (true, Ok(response)) = (ok, Response::ok(body)) {
        let _ = cache.put(url, response.with_headers(headers)).await;
    }
}

fn cache_key(now: Timestamp) -> String {
    format!("{}?second={}", durable::FEED_URL, now.millis().div_euclid(1000))
}

/// Whether `poll_ms` has passed since the last refresh (or there was none).
pub(super) fn due(poll_ms: u32, now: Timestamp) -> bool {
    LAST_POLL
        .get()
        .is_none_or(|last| now.millis().saturating_sub(last) >= i64::from(poll_ms))
}

/// Refresh the copy if `poll_ms` has passed since the last time.
pub(super) async fn refresh(env: &Env, poll_ms: u32, now: Timestamp) {
    if !due(poll_ms, now) {
        return;
    }
    // Set before any await: concurrent requests of this isolate do not ask again meanwhile.
    LAST_POLL.set(Some(now.millis()));
    let bypass = BYPASS_CACHE.replace(false);
    let cache = Cache::default();
    let key = cache_key(now);
    let sealing = mac_key(env);
    if !bypass
        && let Some(k) = &sealing
        && let Some(body) = cached(&cache, &key, k).await
        && let Ok(page) = serde_json::from_str::<FeedPage>(&body)
    {
        FEED.with(|f| f.borrow_mut().apply(page, false));
        return;
    }
    let page = match fetch(env).await {
        Ok(p) => p,
        Err(reason) => {
            let minute = now.millis().div_euclid(60_000);
            if LOGGED.replace(minute) != minute {
                console_error!(
                    "{}",
                    serde_json::json!({"level": "error", "event": "registry_unreachable", "reason": reason, "feed_seq": with(Feed::seq)})
                );
            }
            return;
        }
    };
    if let (Some(k), Ok(text)) = (&sealing, serde_json::to_string(&page)) {
        remember(&cache, &key, k, text, 1).await;
    }
    FEED.with(|f| f.borrow_mut().apply(page, true));
}

async fn fetch(env: &Env) -> Result<FeedPage, String> {
    let mut response = durable::fetch_feed(env).await.map_err(|e| e.to_string())?;
    if response.status_code() != 200 {
        return Err(format!("the registry answered {}", response.status_code()));
    }
    response.json::<FeedPage>().await.map_err(|e| e.to_string())
}

/// A key's current record from the registry, for a record the feed says predates a change in
/// effect (disabled, expired, grants changed). Through the Cache API, keyed by the version wanted, so a location asks the
/// registry once per change. Cached in this isolate too. Any failure is a store error: the
/// decision then fails closed.
pub(super) async fn current_record(
    env: &Env,
    cache: &RefCell<crate::cache::RecordCache>,
    id: &crate::key::KeyId,
    version: u64,
    now: Timestamp,
) -> Result<Option<std::rc::Rc<crate::record::KeyRecord>>, crate::store::LookupError> {
    use crate::store::{LookupError, StoreError};
    let store_error = |e: String| LookupError::Store(StoreError(e));
    let key = format!("{}{id}?version={version}", durable::RECORD_URL);
    let edge_cache = Cache::default();
    let sealing = mac_key(env);
    let hit = match &sealing {
        Some(k) => cached(&edge_cache, &key, k).await,
        None => None,
    };
    let text = match hit {
        Some(text) => text,
        None => {
            let mut response = durable::fetch_record(env, id)
                .await
                .map_err(|e| store_error(e.to_string()))?;
            match response.status_code() {
                200 => {}
                404 => {
                    cache.borrow_mut().insert(id.clone(), None, now);
                    return Ok(None);
                }
                s => return Err(store_error(format!("the registry answered {s}"))),
            }
            response.text().await.map_err(|e| store_error(e.to_string()))?
        }
    };
    let record: crate::record::KeyRecord =
        serde_json::from_str(&text).map_err(|_| LookupError::Corrupt(id.clone()))?;
    if &record.id != id {
        return Err(LookupError::Corrupt(id.clone()));
    }
    if record.version < version {
        return Err(store_error("the registry's record is older than its feed".into()));
    }
    if let Some(k) = &sealing {
        // A record at a given version never changes; a minute is plenty (the feed keeps the
        // entry far longer).
        remember(&edge_cache, &key, k, text, 60).await;
    }
    let record = std::rc::Rc::new(record);
    let cached = cache.borrow_mut().insert(id.clone(), Some(record.clone()), now);
    Ok(cached.or(Some(record)))
}
