//! Storage behind a small async trait (Workers KV in production, memory in native tests), and
//! the key layout on top of it. Only this module knows how records and audit events are named.
//!
//! Layout:
//! - `key:{id}`: a [`KeyRecord`] as JSON (hash only, never the key).
//! - `audit:{inverted ms}:{event id}`: an audit event; listing the prefix gives newest first.
//! - `audit-key:{key id}:{inverted ms}:{event id}`: the same event, indexed by key.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::cache::RecordCache;
use crate::key::KeyId;
use crate::record::KeyRecord;
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
        self.cache.borrow_mut().insert(id.clone(), record.clone(), now);
        Ok(record)
    }

    /// Write through: the store first, then this isolate's cache, so a revocation takes effect
    /// here at once.
    pub async fn put(&self, record: KeyRecord, now: Timestamp) -> Result<Rc<KeyRecord>, StoreError> {
        let json = serde_json::to_string(&record).map_err(|e| StoreError(e.to_string()))?;
        self.store.put(&record_key(&record.id), &json).await?;
        let record = Rc::new(record);
        self.cache
            .borrow_mut()
            .insert(record.id.clone(), Some(record.clone()), now);
        Ok(record)
    }

    pub async fn delete(&self, id: &KeyId, now: Timestamp) -> Result<(), StoreError> {
        self.store.delete(&record_key(id)).await?;
        self.cache.borrow_mut().insert(id.clone(), None, now);
        Ok(())
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
