//! The isolate's bounded, short-lived cache of key records, including "no such key" answers so
//! that a flood of well-formed random keys does not multiply store reads.

use std::collections::HashMap;
use std::rc::Rc;

use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::time::Timestamp;

#[derive(Debug)]
struct Entry {
    record: Option<Rc<KeyRecord>>,
    until: Timestamp,
}

#[derive(Debug)]
pub struct RecordCache {
    entries: HashMap<KeyId, Entry>,
    capacity: usize,
    negatives: usize,
    negative_capacity: usize,
    ttl_seconds: i64,
    negative_ttl_seconds: i64,
}

impl RecordCache {
    pub fn new(
        capacity: usize,
        negative_capacity: usize,
        ttl_seconds: u32,
        negative_ttl_seconds: u32,
    ) -> Self {
        RecordCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            negatives: 0,
            negative_capacity,
            ttl_seconds: i64::from(ttl_seconds),
            negative_ttl_seconds: i64::from(negative_ttl_seconds),
        }
    }

    /// `Some(answer)` when a fresh answer is cached (`Some(None)` = known not to exist).
    pub fn get(&mut self, id: &KeyId, now: Timestamp) -> Option<Option<Rc<KeyRecord>>> {
        let entry = self.entries.get(id)?;
        if entry.until > now {
            return Some(entry.record.clone());
        }
        self.remove(id);
        None
    }

    /// Cache an answer. Monotonic: a record never replaces a cached copy of the same key that
    /// holds a revocation or a rotation it lacks; those facts are merged in (a stale KV read must
    /// not un-revoke a key here). Returns the record as cached, merged, when `record` is `Some`.
    pub fn insert(
        &mut self,
        id: KeyId,
        record: Option<Rc<KeyRecord>>,
        now: Timestamp,
    ) -> Option<Rc<KeyRecord>> {
        let record = match (record, self.entries.get(&id).and_then(|e| e.record.as_ref())) {
            (Some(new), Some(old)) => {
                let mut merged = (*new).clone();
                if merged.keep_monotonic_from(old) {
                    Some(Rc::new(merged))
                } else {
                    Some(new)
                }
            }
            (record, _) => record,
        };
        let answer = record.clone();
        self.store(id, record, now);
        answer
    }

    fn store(&mut self, id: KeyId, record: Option<Rc<KeyRecord>>, now: Timestamp) {
        self.remove(&id);
        let (ttl, negative) = match record {
            Some(_) => (self.ttl_seconds, false),
            None => (self.negative_ttl_seconds, true),
        };
        if ttl == 0 || (negative && self.negative_capacity == 0) {
            return;
        }
        if self.entries.len() >= self.capacity || (negative && self.negatives >= self.negative_capacity) {
            self.evict(now, negative);
        }
        if negative {
            self.negatives += 1;
        }
        self.entries.insert(
            id,
            Entry {
                record,
                until: now.plus_seconds(ttl),
            },
        );
    }

    /// Drop what is cached for `id` (an admin change through this isolate): the next lookup
    /// reads the store.
    pub fn forget(&mut self, id: &KeyId) {
        self.remove(id);
    }

    fn remove(&mut self, id: &KeyId) {
        if let Some(e) = self.entries.remove(id)
            && e.record.is_none()
        {
            self.negatives = self.negatives.saturating_sub(1);
        }
    }

    /// Drop expired entries; if still full, drop entries (negatives first when a negative
    /// needs room) until there is space again.
    fn evict(&mut self, now: Timestamp, negative: bool) {
        self.entries.retain(|_, e| e.until > now);
        self.negatives = self.entries.values().filter(|e| e.record.is_none()).count();
        while self.entries.len() >= self.capacity || (negative && self.negatives >= self.negative_capacity) {
            let victim = self
                .entries
                .iter()
                .find(|(_, e)| !negative || e.record.is_none())
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => self.remove(&k),
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.negatives = 0;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn id(n: u32) -> KeyId {
        KeyId::parse(&format!("{n:016x}")).unwrap()
    }

    #[test]
    fn entries_expire() {
        let mut c = RecordCache::new(10, 10, 5, 1);
        let t0 = Timestamp::from_millis(0);
        c.insert(id(1), Some(Rc::new(sample(&format!("{:016x}", 1)))), t0);
        c.insert(id(2), None, t0);
        assert!(matches!(c.get(&id(1), t0.plus_seconds(4)), Some(Some(_))));
        assert!(matches!(c.get(&id(2), t0), Some(None)));
        assert!(c.get(&id(2), t0.plus_seconds(1)).is_none());
        assert!(c.get(&id(1), t0.plus_seconds(5)).is_none());
    }

    #[test]
    fn a_stale_record_never_un_revokes_a_cached_one() {
        let mut c = RecordCache::new(10, 10, 60, 1);
        let t0 = Timestamp::from_millis(0);
        let mut revoked = sample(&format!("{:016x}", 1));
        revoked.revoked_at = Some(t0);
        revoked.revoke_reason = Some("leak".into());
        c.insert(id(1), Some(Rc::new(revoked)), t0);
        let stale = Rc::new(sample(&format!("{:016x}", 1)));
        let merged = c.insert(id(1), Some(stale), t0).unwrap();
        assert!(merged.revoked_at.is_some());
        let cached = c.get(&id(1), t0).unwrap().unwrap();
        assert_eq!(cached.revoke_reason.as_deref(), Some("leak"));
        // A deletion (None) still replaces it: that only tightens.
        c.insert(id(1), None, t0);
        assert!(matches!(c.get(&id(1), t0), Some(None)));
    }

    #[test]
    fn bounded() {
        let mut c = RecordCache::new(8, 3, 60, 60);
        let t0 = Timestamp::from_millis(0);
        for n in 0..100 {
            c.insert(id(n), None, t0);
        }
        assert!(c.len() <= 3);
        for n in 100..200 {
            c.insert(id(n), Some(Rc::new(sample(&format!("{n:016x}")))), t0);
        }
        assert!(c.len() <= 8);
    }
}
