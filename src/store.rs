//! Storage behind a small async trait (Workers KV in production, memory in native tests), and
//! the key layout on top of it. Only this module knows how records and audit events are named.
//!
//! Layout:
//! - `key:{id}`: a [`KeyRecord`] as JSON (hash only, never the key).
//! - `audit:{inverted ms}:{event id}`: an audit event; listing the prefix gives newest first.
//! - `audit-key:{key id}:{inverted ms}:{event id}`: the same event, indexed by key.
//! - `life:{id}:revoked`, `life:{id}:rotated`, `life:{id}:deleted`: the key's monotonic
//!   lifecycle facts ([`Lifecycle`]), one entry per fact so that writers of different facts
//!   never overwrite each other. They are never removed.
//!
//! ## Monotonic states on KV
//!
//! KV has no compare-and-swap, and admin writes read a record and write the whole of it back,
//! so a PATCH racing a revoke could write the record without its revocation. Therefore:
//! 1. revoke, rotate and delete write their fact's marker **first**;
//! 2. every record write ([`Records::save`]) writes the record, **then** reads the markers, and
//!    while the record it wrote lacks a fact the markers hold, writes the merged record again
//!    (or deletes the record, if the key was deleted).
//!
//! Whichever write lands last is followed by a check that saw every marker written before the
//! write that preceded it, so in every interleaving (within one location: KV reads its own
//! writes there) the final record holds every fact. The isolate cache merges too
//! ([`crate::cache::RecordCache::insert`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::cache::RecordCache;
use crate::key::KeyId;
use crate::record::{KeyRecord, Lifecycle, Retirement, Revocation};
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<String>,
    /// Opaque; `None` when the listing is complete.
    pub cursor: Option<String>,
}

/// The few operations the gateway needs from a key-value store.
#[allow(async_fn_in_trait)] // Workers futures are not Send; callers never need Send.
pub trait KvStore {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// A value the store may forget after `ttl_seconds` (Workers KV's `expirationTtl`, at least
    /// 60). Stores without expiry keep it, which is always allowed.
    async fn put_expiring(&self, key: &str, value: &str, ttl_seconds: u64) -> Result<(), StoreError> {
        let _ = ttl_seconds;
        self.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Keys with `prefix`, in lexicographic order, at most `limit` of them.
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError>;
}

/// An in-memory store for native tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: RefCell<BTreeMap<String, String>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.map.borrow().clone()
    }
}

impl KvStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.map.borrow().get(key).cloned())
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.map.borrow_mut().insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.map.borrow_mut().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        let map = self.map.borrow();
        let start = cursor.unwrap_or(prefix);
        let mut keys: Vec<String> = map
            .range(start.to_owned()..)
            .map(|(k, _)| k)
            .filter(|k| cursor != Some(k.as_str()))
            .take_while(|k| k.starts_with(prefix))
            .take(limit as usize + 1)
            .cloned()
            .collect();
        let more = keys.len() > limit as usize;
        keys.truncate(limit as usize);
        let cursor = if more { keys.last().cloned() } else { None };
        Ok(ListPage { keys, cursor })
    }
}

pub fn record_key(id: &KeyId) -> String {
    format!("key:{id}")
}

pub const RECORD_PREFIX: &str = "key:";

/// The KV key of one lifecycle fact of a key (`revoked`, `rotated`, `deleted`).
pub fn life_key(id: &KeyId, fact: &str) -> String {
    format!("life:{id}:{fact}")
}

/// How many times a record write re-applies newly seen lifecycle facts before giving up (each
/// round needs a fact that appeared since the last, and there are three).
const MAX_SAVE_ROUNDS: usize = 6;

/// KV operations one [`Records::save`] may make at most: a put and three marker reads per round,
/// plus a final delete.
pub const SAVE_MAX_OPS: usize = MAX_SAVE_ROUNDS * 4 + 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    Store(StoreError),
    /// The stored JSON is not a valid record. Treated as a denial, never as a pass.
    Corrupt(KeyId),
}

/// Key records with the isolate's cache in front of the store.
pub struct Records<'a, S> {
    pub store: &'a S,
    pub cache: &'a RefCell<RecordCache>,
}

impl<S: KvStore> Records<'_, S> {
    /// The record for `id`: from the cache if fresh, else from the store (then cached, both
    /// hits and misses).
    pub async fn get(&self, id: &KeyId, now: Timestamp) -> Result<Option<Rc<KeyRecord>>, LookupError> {
        if let Some(hit) = self.cache.borrow_mut().get(id, now) {
            return Ok(hit);
        }
        self.load(id, now).await
    }

    /// Straight from the store, bypassing (and refreshing) the cache. Admin reads use this.
    pub async fn load(&self, id: &KeyId, now: Timestamp) -> Result<Option<Rc<KeyRecord>>, LookupError> {
        let raw = self
            .store
            .get(&record_key(id))
            .await
            .map_err(LookupError::Store)?;
        let record = match raw {
            None => None,
            Some(json) => Some(Rc::new(
                serde_json::from_str::<KeyRecord>(&json).map_err(|_| LookupError::Corrupt(id.clone()))?,
            )),
        };
        if record.as_ref().is_some_and(|r| &r.id != id) {
            return Err(LookupError::Corrupt(id.clone()));
        }
        // The cache merges: a stale read never undoes a revocation it holds.
        let cached = self.cache.borrow_mut().insert(id.clone(), record.clone(), now);
        Ok(cached.or(record))
    }

    /// Write through: the store first, then this isolate's cache, so a revocation takes effect
    /// here at once.
    pub async fn put(&self, record: KeyRecord, now: Timestamp) -> Result<Rc<KeyRecord>, StoreError> {
        let json = serde_json::to_string(&record).map_err(|e| StoreError(e.to_string()))?;
        self.store.put(&record_key(&record.id), &json).await?;
        let record = Rc::new(record);
        let cached = self
            .cache
            .borrow_mut()
            .insert(record.id.clone(), Some(record.clone()), now);
        Ok(cached.unwrap_or(record))
    }

    pub async fn delete(&self, id: &KeyId, now: Timestamp) -> Result<(), StoreError> {
        self.store.delete(&record_key(id)).await?;
        self.cache.borrow_mut().insert(id.clone(), None, now);
        Ok(())
    }

    /// The key's lifecycle facts (three reads). A marker that does not parse counts as the fact
    /// being true where that is the safe side: a corrupt revocation marker still revokes.
    pub async fn lifecycle(&self, id: &KeyId) -> Result<Lifecycle, StoreError> {
        let revoked = self.store.get(&life_key(id, "revoked")).await?.map(|raw| {
            serde_json::from_str::<Revocation>(&raw).unwrap_or(Revocation {
                at: Timestamp::from_millis(0),
                reason: None,
            })
        });
        let retired = self
            .store
            .get(&life_key(id, "rotated"))
            .await?
            .and_then(|raw| serde_json::from_str::<Retirement>(&raw).ok());
        let deleted = self.store.get(&life_key(id, "deleted")).await?.is_some();
        Ok(Lifecycle {
            revoked,
            retired,
            deleted,
        })
    }

    pub async fn mark_revoked(&self, id: &KeyId, r: &Revocation) -> Result<(), StoreError> {
        let json = serde_json::to_string(r).map_err(|e| StoreError(e.to_string()))?;
        self.store.put(&life_key(id, "revoked"), &json).await
    }

    pub async fn mark_retired(&self, id: &KeyId, r: &Retirement) -> Result<(), StoreError> {
        let json = serde_json::to_string(r).map_err(|e| StoreError(e.to_string()))?;
        self.store.put(&life_key(id, "rotated"), &json).await
    }

    pub async fn mark_deleted(&self, id: &KeyId, now: Timestamp) -> Result<(), StoreError> {
        let json = serde_json::json!({ "at": now }).to_string();
        self.store.put(&life_key(id, "deleted"), &json).await
    }

    /// Write a record of an existing key so that no lifecycle fact is lost: write, then read
    /// the markers, and while the written record lacks a fact they hold, write the merged record
    /// again. `Ok(None)`: the key was deleted meanwhile, and its record is gone again.
    pub async fn save(&self, record: KeyRecord, now: Timestamp) -> Result<Option<Rc<KeyRecord>>, StoreError> {
        let mut record = record;
        for _ in 0..MAX_SAVE_ROUNDS {
            // Check what was written to KV, not the cache's (possibly merged) copy.
            let written = record.clone();
            let cached = self.put(record, now).await?;
            let life = self.lifecycle(&written.id).await?;
            if life.deleted {
                self.delete(&written.id, now).await?;
                return Ok(None);
            }
            let mut next = written;
            if !life.apply(&mut next) {
                return Ok(Some(cached));
            }
            record = next;
        }
        Err(StoreError("the record did not settle; retry".into()))
    }
}

/// A store whose every call fails, as KV does in an outage: for tests of failing closed.
#[derive(Debug, Default)]
pub struct DownStore;

impl KvStore for DownStore {
    async fn get(&self, _: &str) -> Result<Option<String>, StoreError> {
        Err(StoreError("down".into()))
    }
    async fn put(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError("down".into()))
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        Err(StoreError("down".into()))
    }
    async fn list(&self, _: &str, _: Option<&str>, _: u32) -> Result<ListPage, StoreError> {
        Err(StoreError("down".into()))
    }
}

/// A store that counts reads, for tests that prove some paths never touch storage.
#[derive(Debug, Default)]
pub struct CountingStore<S> {
    pub inner: S,
    pub reads: std::cell::Cell<usize>,
}

impl<S: KvStore> KvStore for CountingStore<S> {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.list(prefix, cursor, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn memory_list_pages_in_order() {
        let s = MemoryStore::new();
        block_on(async {
            for k in ["a:3", "a:1", "b:1", "a:2"] {
                s.put(k, "v").await.unwrap();
            }
            let p1 = s.list("a:", None, 2).await.unwrap();
            assert_eq!(p1.keys, vec!["a:1", "a:2"]);
            let p2 = s.list("a:", p1.cursor.as_deref(), 2).await.unwrap();
            assert_eq!(p2.keys, vec!["a:3"]);
            assert_eq!(p2.cursor, None);
        });
    }
}
