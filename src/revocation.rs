//! The revocation feed: what the registry publishes about every change that can narrow a key
//! (revoke, disable, delete, rotation retirement, a shorter expiry, and any change to its
//! grants: scopes, IP allowlist, tenants, environment), and the rule an isolate applies with
//! it. Plain data and pure functions; the edge fetches the feed, the registry writes it,
//! `decide` applies it.
//!
//! An entry says "records of this key older than `version` are stale from `at` on". A record at
//! `version` or later already holds the change (or a later one, such as re-enabling the key),
//! so the record itself decides; entries never override a newer record. One commit may publish
//! several entries (a PATCH that narrows scopes and sets a later expiry publishes both), and an
//! isolate keeps them all. A record older than a revocation or deletion in effect is denied at
//! once, cached or not. A record older than any other change in effect (disabled, expired,
//! grants changed) is stale: the edge fetches the current record from the registry
//! ([`Feed::refresh_needed`]) and decides with it; a stale record that could not be refreshed
//! is denied (fail closed).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::key::KeyId;
use crate::record::KeyRecord;
use crate::time::Timestamp;

/// How long the registry keeps publishing an entry after the change was committed. Far longer than the KV
/// replica's bound (about 60 s of KV propagation plus the isolate cache TTL), so that by the time
/// an entry leaves the feed, every location reads a record that holds the change itself. Entries
/// of keys whose replica write is still pending stay in the feed regardless.
///
/// Access tokens are checked against the feed alone (no record), so an entry must also outlive
/// every token issued before it: the longest token lifetime plus five minutes.
pub const RETENTION_MS: i64 = (crate::policy::MAX_TOKEN_TTL as i64 + 300) * 1000;

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
    /// Whether this entry is about `record`'s key, newer than it, and in effect at `now`.
    fn outdates(&self, record: &KeyRecord, now: Timestamp) -> bool {
        record.id == self.key_id && record.version < self.version && now >= self.at
    }
}

/// The feed as served: every entry still in retention, oldest first, and the latest sequence
/// number the registry has assigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    pub seq: i64,
    pub entries: Vec<Entry>,
}

/// Every change between two states of a key that the feed must publish (one entry each, all
/// with the version of `after`): deleted; revoked; disabled; a shorter expiry (in effect from
/// the new expiry); a change of grants.
pub fn narrowing(
    before: Option<&KeyRecord>,
    after: Option<&KeyRecord>,
    now: Timestamp,
) -> Vec<(Kind, Timestamp)> {
    let Some(before) = before else {
        return Vec::new();
    };
    let Some(after) = after else {
        return vec![(Kind::Deleted, now)];
    };
    let mut out = Vec::new();
    if after.revoked_at.is_some() && before.revoked_at.is_none() {
        out.push((Kind::Revoked, now));
    }
    if before.enabled && !after.enabled {
        out.push((Kind::Disabled, now));
    }
    match (before.expires_at, after.expires_at) {
        (None, Some(a)) => out.push((Kind::Expires, a)),
        (Some(b), Some(a)) if a < b => out.push((Kind::Expires, a)),
        _ => {}
    }
    let grants_changed = before.scopes != after.scopes
        || before.ip_allowlist != after.ip_allowlist
        || before.tenants != after.tenants
        || before.environment != after.environment
        // What limits the key: metering, and its rate tier (tokens carry both).
        || before.metered != after.metered
        || before.rate_tier != after.rate_tier;
    if grants_changed {
        out.push((Kind::Changed, now));
    }
    out
}

/// What the feed says of a record an isolate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No entry in effect is newer than the record: the record decides.
    Current,
    /// The key was revoked or deleted after this record: deny, whatever else happened.
    Deny(Kind),
    /// The key changed after this record (disabled, expired, grants): only the current record
    /// (at least this version, from the registry) may decide; without it, deny.
    Stale(u64),
}

/// An isolate's copy of the feed: every entry in retention, by key.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    seq: i64,
    by_key: HashMap<KeyId, Vec<Entry>>,
    /// A page has been applied: the copy says something. Until then nothing can be known about
    /// revocations, and tokens (checked against the feed alone) are refused.
    loaded: bool,
}

impl Feed {
    /// Replace the copy with a page. A cached page older than the copy (it raced a fresher
    /// one) is ignored, so the copy never goes back; a page straight from the registry
    /// (`authoritative`) always applies, so a registry whose numbering restarted is followed.
    pub fn apply(&mut self, page: FeedPage, authoritative: bool) {
        if page.seq < self.seq && !authoritative {
            return;
        }
        let mut by_key: HashMap<KeyId, Vec<Entry>> = HashMap::new();
        for e in page.entries {
            by_key.entry(e.key_id.clone()).or_default().push(e);
        }
        self.seq = page.seq;
        self.by_key = by_key;
        self.loaded = true;
    }

    /// A copy holding `page`.
    pub fn from_page(page: FeedPage) -> Self {
        let mut feed = Feed::default();
        feed.apply(page, true);
        feed
    }

    /// Whether any page was applied.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// How many keys have entries.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// A key's entries, oldest first.
    pub fn entries(&self, id: &KeyId) -> &[Entry] {
        self.by_key.get(id).map_or(&[], Vec::as_slice)
    }

    /// What the entries newer than `record` and in effect at `now` say of it.
    pub fn verdict(&self, record: &KeyRecord, now: Timestamp) -> Verdict {
        let newer = || {
            self.entries(&record.id)
                .iter()
                .filter(|e| e.outdates(record, now))
        };
        if newer().any(|e| e.kind == Kind::Deleted) {
            return Verdict::Deny(Kind::Deleted);
        }
        if newer().any(|e| e.kind == Kind::Revoked) {
            return Verdict::Deny(Kind::Revoked);
        }
        newer()
            .map(|e| e.version)
            .max()
            .map_or(Verdict::Current, Verdict::Stale)
    }

    /// The version to fetch from the registry when `record` is stale (the edge asks the
    /// registry for the current record rather than wait for KV).
    pub fn refresh_needed(&self, record: &KeyRecord, now: Timestamp) -> Option<u64> {
        match self.verdict(record, now) {
            Verdict::Stale(v) => Some(v),
            Verdict::Current | Verdict::Deny(_) => None,
        }
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

    fn page(seq: i64, entries: Vec<Entry>) -> FeedPage {
        FeedPage { seq, entries }
    }

    #[test]
    fn narrowing_publishes_every_change_of_a_commit() {
        let now = at(1_000);
        let before = sample("0123456789abcdef");
        assert!(
            narrowing(None, Some(&before), now).is_empty(),
            "creation narrows nothing"
        );
        assert_eq!(narrowing(Some(&before), None, now), vec![(Kind::Deleted, now)]);
        let mut after = before.clone();
        after.enabled = false;
        after.revoked_at = Some(now);
        assert_eq!(
            narrowing(Some(&before), Some(&after), now),
            vec![(Kind::Revoked, now), (Kind::Disabled, now)]
        );
        let mut after = before.clone();
        after.expires_at = Some(at(5_000));
        after.scopes.clear();
        assert_eq!(
            narrowing(Some(&before), Some(&after), now),
            vec![(Kind::Expires, at(5_000)), (Kind::Changed, now)],
            "a later expiry never hides a change of grants"
        );
        let mut later = after.clone();
        later.expires_at = Some(at(9_000));
        assert!(
            narrowing(Some(&after), Some(&later), now).is_empty(),
            "a longer expiry widens"
        );
        let mut renamed = before.clone();
        renamed.name = "other".into();
        assert!(narrowing(Some(&before), Some(&renamed), now).is_empty());
        let mut fenced = before.clone();
        fenced.ip_allowlist = crate::ip::IpAllowlist::parse(&["10.0.0.0/8".to_owned()]).unwrap();
        assert_eq!(
            narrowing(Some(&before), Some(&fenced), now),
            vec![(Kind::Changed, now)]
        );
        // Enabling again widens: nothing to publish.
        let mut off = before.clone();
        off.enabled = false;
        assert!(narrowing(Some(&off), Some(&before), now).is_empty());
    }

    #[test]
    fn entries_judge_only_older_records_and_only_from_their_time() {
        let mut feed = Feed::default();
        feed.apply(
            page(
                2,
                vec![
                    entry("0123456789abcdef", 3, 1_000, Kind::Revoked, 1),
                    entry("00000000000000aa", 5, 9_000, Kind::Expires, 2),
                ],
            ),
            true,
        );
        let mut r = sample("0123456789abcdef");
        r.version = 2;
        assert_eq!(feed.verdict(&r, at(999)), Verdict::Current, "not yet in effect");
        assert_eq!(feed.verdict(&r, at(1_000)), Verdict::Deny(Kind::Revoked));
        r.version = 3;
        assert_eq!(
            feed.verdict(&r, at(5_000)),
            Verdict::Current,
            "the record holds the change"
        );
        let mut other = sample("00000000000000aa");
        other.version = 4;
        assert_eq!(feed.verdict(&other, at(8_999)), Verdict::Current);
        assert_eq!(feed.verdict(&other, at(9_000)), Verdict::Stale(5));
        assert_eq!(feed.refresh_needed(&other, at(9_000)), Some(5));
        assert_eq!(
            feed.verdict(&sample("00000000000000bb"), at(9_000)),
            Verdict::Current
        );
    }

    #[test]
    fn a_future_expiry_never_hides_an_earlier_change() {
        // The red team's case: disable (v2), then a PATCH setting an expiry a month away (v3).
        let mut feed = Feed::default();
        feed.apply(
            page(
                2,
                vec![
                    entry("0123456789abcdef", 2, 1_000, Kind::Disabled, 1),
                    entry("0123456789abcdef", 3, 9_000_000, Kind::Expires, 2),
                ],
            ),
            true,
        );
        let r = sample("0123456789abcdef");
        assert_eq!(feed.verdict(&r, at(1_000)), Verdict::Stale(2));
        // One commit narrowing scopes with a later expiry: both entries, the change in effect.
        feed.apply(
            page(
                4,
                vec![
                    entry("0123456789abcdef", 4, 9_000_000, Kind::Expires, 3),
                    entry("0123456789abcdef", 4, 1_000, Kind::Changed, 4),
                ],
            ),
            true,
        );
        assert_eq!(feed.verdict(&r, at(1_000)), Verdict::Stale(4));
    }

    #[test]
    fn deletion_and_revocation_win_over_everything_and_newer_records_decide() {
        let mut feed = Feed::default();
        feed.apply(
            page(
                3,
                vec![
                    entry("0123456789abcdef", 2, 0, Kind::Changed, 1),
                    entry("0123456789abcdef", 3, 0, Kind::Revoked, 2),
                    entry("0123456789abcdef", 4, 0, Kind::Deleted, 3),
                ],
            ),
            true,
        );
        let mut r = sample("0123456789abcdef");
        assert_eq!(
            feed.verdict(&r, at(1)),
            Verdict::Deny(Kind::Deleted),
            "gone is gone"
        );
        r.version = 3;
        assert_eq!(feed.verdict(&r, at(1)), Verdict::Deny(Kind::Deleted));
        feed.apply(
            page(
                5,
                vec![
                    entry("0123456789abcdef", 2, 0, Kind::Changed, 1),
                    entry("0123456789abcdef", 3, 0, Kind::Revoked, 2),
                ],
            ),
            true,
        );
        r.version = 1;
        assert_eq!(feed.verdict(&r, at(1)), Verdict::Deny(Kind::Revoked));
        r.version = 3;
        r.version = 4;
        assert_eq!(feed.verdict(&r, at(1)), Verdict::Current);
        assert_eq!(feed.refresh_needed(&r, at(1)), None);
    }

    #[test]
    fn an_older_cached_page_never_replaces_a_newer_copy() {
        let mut feed = Feed::default();
        feed.apply(
            page(5, vec![entry("0123456789abcdef", 3, 0, Kind::Disabled, 5)]),
            true,
        );
        feed.apply(page(4, vec![]), false);
        assert_eq!((feed.seq(), feed.len()), (5, 1), "a stale cached page is ignored");
        // The registry itself is followed even when its numbering went back.
        feed.apply(page(1, vec![]), true);
        assert_eq!((feed.seq(), feed.len()), (1, 0));
    }
}
