//! The isolate's copy of the registry's revocation feed (`crate::revocation`), refreshed at
//! most once per `revocation_poll_ms` through the Cache API, so that a location asks the
//! registry about once per second however many isolates it runs.
//!
//! The cached copy is keyed by the current second, so no isolate ever uses one older than a
//! second: a revocation reaches every isolate within `revocation_poll_ms` plus one second. When
//! the registry cannot be reached, the last copy stays in force and validation goes on from KV.

use std::cell::{Cell, RefCell};

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

fn cache_key(now: Timestamp) -> String {
    format!("{}?second={}", durable::FEED_URL, now.millis().div_euclid(1000))
}

/// Refresh the copy if `poll_ms` has passed since the last time.
pub(super) async fn refresh(env: &Env, poll_ms: u32, now: Timestamp) {
    let due = LAST_POLL
        .get()
        .is_none_or(|last| now.millis().saturating_sub(last) >= i64::from(poll_ms));
    if !due {
        return;
    }
    // Set before any await: concurrent requests of this isolate do not ask again meanwhile.
    LAST_POLL.set(Some(now.millis()));
    let bypass = BYPASS_CACHE.replace(false);
    let cache = Cache::default();
    let key = cache_key(now);
    if !bypass
        && let Ok(Some(mut hit)) = cache.get(key.as_str(), false).await
        && let Ok(page) = hit.json::<FeedPage>().await
    {
        FEED.with(|f| f.borrow_mut().apply(page));
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
    if let Ok(text) = serde_json::to_string(&page)
        && let Ok(headers) = cached_headers()
        && let Ok(response) = Response::ok(text)
    {
        // Best effort: without the cache, each isolate asks the registry itself.
        let _ = cache.put(key.as_str(), response.with_headers(headers)).await;
    }
    FEED.with(|f| f.borrow_mut().apply(page));
}

fn cached_headers() -> worker::Result<Headers> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    headers.set("Cache-Control", "max-age=1")?;
    Ok(headers)
}

async fn fetch(env: &Env) -> Result<FeedPage, String> {
    let mut response = durable::fetch_feed(env).await.map_err(|e| e.to_string())?;
    if response.status_code() != 200 {
        return Err(format!("the registry answered {}", response.status_code()));
    }
    response.json::<FeedPage>().await.map_err(|e| e.to_string())
}

/// A key's current record from the registry, for a record the feed says predates a change of
/// its grants. Through the Cache API, keyed by the version wanted, so a location asks the
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
    let text = match edge_cache.get(key.as_str(), false).await {
        Ok(Some(mut hit)) => hit.text().await.map_err(|e| store_error(e.to_string()))?,
        _ => {
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
    if let Ok(headers) = record_headers()
        && let Ok(response) = Response::ok(text)
    {
        let _ = edge_cache.put(key.as_str(), response.with_headers(headers)).await;
    }
    let record = std::rc::Rc::new(record);
    let cached = cache.borrow_mut().insert(id.clone(), Some(record.clone()), now);
    Ok(cached.or(Some(record)))
}

/// A record at a given version never changes; a minute in the cache is plenty (the feed keeps
/// the entry far longer).
fn record_headers() -> worker::Result<Headers> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    headers.set("Cache-Control", "max-age=60")?;
    Ok(headers)
}
