//! The revocation feed: what the registry publishes about every change that can narrow a key
//! (revoke, disable, delete, rotation retirement, a shorter expiry, and any change to its
//! grants: scopes, IP allowlist, tenants, environment), and the rule an isolate applies with
//! it. Plain data and pure functions; the edge fetches the feed, the registry writes it,
//! `decide` applies it.
//!
//! An entry says "records of this key older than `version` are stale from `at` on". A record at
//! `version` or later already holds the change (or a later one, such as re-enabling the key),
//! so the record itself decides; entries never override a newer record. A stale record is
//! denied at once with the entry's `kind`, cached or not, except after a change of grants
//! ([`Kind::Changed`]): the edge then fetches the current record from the registry
//! ([`Feed::refresh_needed`]), and a stale record that could not be refreshed is denied (fail
//! closed).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::time::Timestamp;

/// How long the registry keeps publishing an entry after it takes effect. Far longer than the KV
/// replica's bound (about 60 s of KV propagation plus the isolate cache TTL), so that by the time
/// an entry leaves the feed, every location reads a record that holds the change itself. Entries
/// of keys whose replica write is still pending stay in the feed regardless.
pub const RETENTION_MS: i64 = 15 * 60 * 1000;

/// What kind of narrowing an entry records; it decides the denial a stale record gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Revoked,
    Disabled,
    Deleted,
    /// The key expires at `at` (a shorter expiry, or a rotation's grace end).
    Expires,
    /// Its scopes, IP allowlist, tenants or environment changed: an older record may grant
    /// more than the key now has.
    Changed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Revoked => "revoked",
            Kind::Disabled => "disabled",
            Kind::Deleted => "deleted",
            Kind::Expires => "expires",
            Kind::Changed => "changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoked" => Some(Kind::Revoked),
            "disabled" => Some(Kind::Disabled),
            "deleted" => Some(Kind::Deleted),
            "expires" => Some(Kind::Expires),
            "changed" => Some(Kind::Changed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: i64,
    pub key_id: KeyId,
    /// When the change takes effect (now, or a future expiry).
    pub at: Timestamp,
    /// The record version the change produced.
    pub version: u64,
    pub kind: Kind,
}

impl Entry {
    /// Whether this entry makes `record` stale at `now`: the record predates the change, and the
    /// change is in effect.
    pub fn stale(&self, record: &KeyRecord, now: Timestamp) -> Option<Kind> {
        (record.id == self.key_id && record.version < self.version && now >= self.at).then_some(self.kind)
    }
}

/// The feed as served: every entry still in retention, oldest first, and the latest sequence
/// number the registry has assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    pub seq: i64,
    pub entries: Vec<Entry>,
}

/// The change between two states of a key that the feed must publish, if any: the most
/// permanent one wins (revoked, then deleted, then disabled, then a shorter expiry, then a
/// change of grants).
pub fn narrowing(
    before: Option<&KeyRecord>,
    after: Option<&KeyRecord>,
    now: Timestamp,
) -> Option<(Kind, Timestamp)> {
    let before = before?;
    let Some(after) = after else {
        return Some((Kind::Deleted, now));
    };
    if after.revoked_at.is_some() && before.revoked_at.is_none() {
        return Some((Kind::Revoked, now));
    }
    if before.enabled && !after.enabled {
        return Some((Kind::Disabled, now));
    }
    match (before.expires_at, after.expires_at) {
        (None, Some(a)) => return Some((Kind::Expires, a)),
        (Some(b), Some(a)) if a < b => return Some((Kind::Expires, a)),
        _ => {}
    }
    let grants_changed = before.scopes != after.scopes
        || before.ip_allowlist != after.ip_allowlist
        || before.tenants != after.tenants
        || before.environment != after.environment;
    grants_changed.then_some((Kind::Changed, now))
}

/// An isolate's copy of the feed: the newest entry per key.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    seq: i64,
    by_key: HashMap<KeyId, Entry>,
}

impl Feed {
    /// Replace the copy with a page just fetched. A page older than the copy (a cached answer
    /// that raced a fresher one) is ignored, so the copy never goes back.
    pub fn apply(&mut self, page: FeedPage) {
        if page.seq < self.seq {
            return;
        }
        let mut by_key: HashMap<KeyId, Entry> = HashMap::with_capacity(page.entries.len());
        for e in page.entries {
            match by_key.get(&e.key_id) {
                Some(old) if old.version >= e.version => {}
                _ => {
                    by_key.insert(e.key_id.clone(), e);
                }
            }
        }
        self.seq = page.seq;
        self.by_key = by_key;
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The newest entry for a key.
    pub fn entry(&self, id: &KeyId) -> Option<&Entry> {
        self.by_key.get(id)
    }

    /// The entry that makes `record` stale at `now`, if any.
    pub fn denies(&self, record: &KeyRecord, now: Timestamp) -> Option<Kind> {
        self.by_key.get(&record.id)?.stale(record, now)
    }

    /// The version to fetch from the registry when `record` predates a change of its grants
    /// (the edge asks the registry for the record itself rather than wait for KV).
    pub fn refresh_needed(&self, record: &KeyRecord, now: Timestamp) -> Option<u64> {
        let e = self.by_key.get(&record.id)?;
        (e.stale(record, now) == Some(Kind::Changed)).then_some(e.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn entry(id: &str, version: u64, ms: i64, kind: Kind, seq: i64) -> Entry {
        Entry {
            seq,
            key_id: KeyId::parse(id).unwrap(),
            at: at(ms),
            version,
            kind,
        }
    }

    #[test]
    fn narrowing_names_the_most_permanent_change() {
        let now = at(1_000);
        let before = sample("0123456789abcdef");
        assert_eq!(
            narrowing(None, Some(&before), now),
            None,
            "creation narrows nothing"
        );
        assert_eq!(narrowing(Some(&before), None, now), Some((Kind::Deleted, now)));
        let mut after = before.clone();
        after.enabled = false;
        after.revoked_at = Some(now);
        assert_eq!(
            narrowing(Some(&before), Some(&after), now),
            Some((Kind::Revoked, now))
        );
        after.revoked_at = None;
        assert_eq!(
            narrowing(Some(&before), Some(&after), now),
            Some((Kind::Disabled, now))
        );
        let mut after = before.clone();
        after.expires_at = Some(at(5_000));
        assert_eq!(
            narrowing(Some(&before), Some(&after), now),
            Some((Kind::Expires, at(5_000)))
        );
        let mut later = after.clone();
        later.expires_at = Some(at(9_000));
        assert_eq!(
            narrowing(Some(&after), Some(&later), now),
            None,
            "a longer expiry widens"
        );
        let mut renamed = before.clone();
        renamed.name = "other".into();
        assert_eq!(narrowing(Some(&before), Some(&renamed), now), None);
        let mut narrowed = before.clone();
        narrowed.scopes.clear();
        assert_eq!(
            narrowing(Some(&before), Some(&narrowed), now),
            Some((Kind::Changed, now))
        );
        let mut fenced = before.clone();
        fenced.ip_allowlist = crate::ip::IpAllowlist::parse(&["10.0.0.0/8".to_owned()]).unwrap();
        assert_eq!(
            narrowing(Some(&before), Some(&fenced), now),
            Some((Kind::Changed, now))
        );
        // Enabling again widens: nothing to publish.
        let mut off = before.clone();
        off.enabled = false;
        assert_eq!(narrowing(Some(&off), Some(&before), now), None);
    }

    #[test]
    fn entries_deny_only_older_records_and_only_from_their_time() {
        let mut feed = Feed::default();
        feed.apply(FeedPage {
            seq: 2,
            entries: vec![
                entry("0123456789abcdef", 3, 1_000, Kind::Revoked, 1),
                entry("00000000000000aa", 5, 9_000, Kind::Expires, 2),
            ],
        });
        let mut r = sample("0123456789abcdef");
        r.version = 2;
        assert_eq!(feed.denies(&r, at(999)), None, "not yet in effect");
        assert_eq!(feed.denies(&r, at(1_000)), Some(Kind::Revoked));
        r.version = 3;
        assert_eq!(
            feed.denies(&r, at(5_000)),
            None,
            "the record holds the change itself"
        );
        let mut other = sample("00000000000000aa");
        other.version = 4;
        assert_eq!(feed.denies(&other, at(8_999)), None);
        assert_eq!(feed.denies(&other, at(9_000)), Some(Kind::Expires));
        assert_eq!(feed.denies(&sample("00000000000000bb"), at(9_000)), None);
    }

    #[test]
    fn a_change_of_grants_asks_for_the_current_record() {
        let mut feed = Feed::default();
        feed.apply(FeedPage {
            seq: 1,
            entries: vec![entry("0123456789abcdef", 4, 1_000, Kind::Changed, 1)],
        });
        let mut r = sample("0123456789abcdef");
        r.version = 3;
        assert_eq!(feed.refresh_needed(&r, at(999)), None);
        assert_eq!(feed.refresh_needed(&r, at(1_000)), Some(4));
        r.version = 4;
        assert_eq!(feed.refresh_needed(&r, at(1_000)), None, "already current");
        let mut revoked = Feed::default();
        revoked.apply(FeedPage {
            seq: 1,
            entries: vec![entry("0123456789abcdef", 5, 0, Kind::Revoked, 1)],
        });
        assert_eq!(
            revoked.refresh_needed(&r, at(1)),
            None,
            "a revocation just denies"
        );
    }

    #[test]
    fn an_older_page_never_replaces_a_newer_copy() {
        let mut feed = Feed::default();
        feed.apply(FeedPage {
            seq: 5,
            entries: vec![entry("0123456789abcdef", 3, 0, Kind::Disabled, 5)],
        });
        feed.apply(FeedPage {
            seq: 4,
            entries: vec![],
        });
        assert_eq!(feed.seq(), 5);
        assert_eq!(feed.len(), 1);
        // The newest version per key wins within a page.
        feed.apply(FeedPage {
            seq: 7,
            entries: vec![
                entry("0123456789abcdef", 3, 0, Kind::Disabled, 5),
                entry("0123456789abcdef", 6, 0, Kind::Revoked, 7),
            ],
        });
        let mut r = sample("0123456789abcdef");
        r.version = 4;
        assert_eq!(feed.denies(&r, at(1)), Some(Kind::Revoked));
    }
}
