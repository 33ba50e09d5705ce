use std::cell::Cell;

use futures::executor::block_on;
use proptest::prelude::*;

use super::sqlite::Sqlite;
use super::*;
use crate::record::tests::sample;
use crate::store::MemoryStore;

fn registry() -> SqlRegistry<Sqlite> {
    SqlRegistry::open(Sqlite::memory().unwrap()).unwrap()
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn put(r: &SqlRegistry<Sqlite>, record: &KeyRecord) -> Result<(), StoreError> {
    block_on(r.put(&record_key(&record.id), &serde_json::to_string(record).unwrap()))
}

fn get(r: &SqlRegistry<Sqlite>, id: &str) -> Option<KeyRecord> {
    block_on(r.get(&format!("key:{id}")))
        .unwrap()
        .map(|j| serde_json::from_str(&j).unwrap())
}

fn create(r: &SqlRegistry<Sqlite>, id: &str, created: i64) -> KeyRecord {
    let mut rec = sample(id);
    rec.created_at = at(created);
    rec.version = 1;
    put(r, &rec).unwrap();
    r.commit(at(created)).unwrap();
    rec
}

#[test]
fn a_write_must_build_on_the_stored_version() {
    let r = registry();
    let rec = create(&r, "0123456789abcdef", 1);
    let mut stale = rec.clone();
    stale.name = "stale".into();
    assert!(put(&r, &stale).is_err(), "version 1 again is a lost update");
    let mut next = rec.clone();
    next.version = 2;
    next.name = "next".into();
    put(&r, &next).unwrap();
    // Reads see the request's own pending write; SQL does not hold it until commit.
    assert_eq!(get(&r, "0123456789abcdef").unwrap().name, "next");
    assert_eq!(r.stored_record("0123456789abcdef").unwrap().unwrap().0, 1);
    r.commit(at(2)).unwrap();
    assert_eq!(r.stored_record("0123456789abcdef").unwrap().unwrap().0, 2);
    let mut skip = next.clone();
    skip.version = 4;
    assert!(put(&r, &skip).is_err(), "a version may not be skipped either");
}

#[test]
fn discard_keeps_only_the_audit_events() {
    let r = registry();
    let rec = sample("0123456789abcdef");
    put(&r, &rec).unwrap();
    r.append_audit(AuditRow {
        at: at(5),
        key_id: None,
        actor: "unknown".into(),
        expires_at: None,
        json: "{\"denied\":true}".into(),
    });
    r.discard();
    r.commit(at(5)).unwrap();
    assert!(get(&r, "0123456789abcdef").is_none());
    let (events, cursor) = r.list_audit(None, at(5), None, 10, &mut |_, _| Ok(true)).unwrap();
    assert_eq!(events, vec!["{\"denied\":true}".to_owned()]);
    assert_eq!(cursor, None);
    assert_eq!(r.replica_lag().unwrap().pending, 0, "nothing to replicate");
}

#[test]
fn narrowing_changes_enter_the_feed_with_their_version() {
    let r = registry();
    let rec = create(&r, "0123456789abcdef", 1);
    let mut renamed = rec.clone();
    renamed.version = 2;
    renamed.name = "renamed".into();
    put(&r, &renamed).unwrap();
    r.commit(at(10)).unwrap();
    assert!(
        r.feed(at(10)).unwrap().entries.is_empty(),
        "a rename narrows nothing"
    );

    let mut off = renamed.clone();
    off.version = 3;
    off.enabled = false;
    put(&r, &off).unwrap();
    r.commit(at(20)).unwrap();
    block_on(r.delete("key:0123456789abcdef")).unwrap();
    r.commit(at(30)).unwrap();

    let feed = r.feed(at(30)).unwrap();
    let got: Vec<_> = feed
        .entries
        .iter()
        .map(|e| (e.kind, e.version, e.at.millis()))
        .collect();
    assert_eq!(got, vec![(Kind::Disabled, 3, 20), (Kind::Deleted, 4, 30)]);
    assert_eq!(feed.seq, 2);
}

#[test]
fn the_feed_keeps_entries_for_retention_and_while_their_replica_write_is_pending() {
    let r = registry();
    let rec = create(&r, "0123456789abcdef", 1);
    let mut revoked = rec.clone();
    revoked.version = 2;
    revoked.revoked_at = Some(at(100));
    put(&r, &revoked).unwrap();
    r.commit(at(100)).unwrap();
    let later = at(100 + RETENTION_MS + 1);
    assert_eq!(
        r.feed(later).unwrap().entries.len(),
        1,
        "the replica has not landed"
    );
    r.prune(later).unwrap();
    assert_eq!(r.feed(later).unwrap().entries.len(), 1);
    let kv = MemoryStore::new();
    assert_eq!(block_on(r.flush(&kv, 10)).unwrap(), 1);
    assert!(
        r.feed(later).unwrap().entries.is_empty(),
        "past retention, replica landed"
    );
    r.prune(later).unwrap();
    assert_eq!(r.feed(later).unwrap().seq, 0, "pruned");
}

#[test]
fn flush_writes_the_latest_state_and_keeps_failures_pending() {
    let r = registry();
    let rec = create(&r, "0123456789abcdef", 7);
    let kv = MemoryStore::new();
    let failing = crate::store::DownStore;
    assert!(block_on(r.flush(&failing, 10)).is_err());
    let lag = r.replica_lag().unwrap();
    assert_eq!(lag.pending, 1);
    assert_eq!(lag.oldest_since, Some(at(7)));
    assert_eq!(block_on(r.flush(&kv, 10)).unwrap(), 1);
    let stored: KeyRecord = serde_json::from_str(&kv.snapshot()["key:0123456789abcdef"]).unwrap();
    assert_eq!(stored, rec);
    assert_eq!(r.replica_lag().unwrap().pending, 0);

    block_on(r.delete("key:0123456789abcdef")).unwrap();
    r.commit(at(8)).unwrap();
    assert_eq!(block_on(r.flush(&kv, 10)).unwrap(), 1);
    assert!(kv.snapshot().is_empty(), "a deletion reaches the replica");
}

/// A KV store whose first write lets another admin change commit meanwhile, as the object's
/// open input gate allows while a KV write is under way.
struct RacingKv<'a> {
    inner: MemoryStore,
    registry: &'a SqlRegistry<Sqlite>,
    raced: Cell<bool>,
}

impl KvStore for RacingKv<'_> {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        if !self.raced.replace(true) {
            let mut rec: KeyRecord = serde_json::from_str(value).unwrap();
            rec.version += 1;
            rec.enabled = false;
            let json = serde_json::to_string(&rec).unwrap();
            self.registry.put(key, &json).await.unwrap();
            self.registry.commit(at(50)).unwrap();
        }
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        self.inner.list(prefix, cursor, limit).await
    }
}

#[test]
fn a_change_during_a_replica_write_is_written_after_it() {
    let r = registry();
    create(&r, "0123456789abcdef", 1);
    let kv = RacingKv {
        inner: MemoryStore::new(),
        registry: &r,
        raced: Cell::new(false),
    };
    block_on(r.flush(&kv, 10)).unwrap();
    assert_eq!(
        r.replica_lag().unwrap().pending,
        1,
        "the newer change is still pending"
    );
    block_on(r.flush(&kv, 10)).unwrap();
    let stored: KeyRecord = serde_json::from_str(&kv.inner.snapshot()["key:0123456789abcdef"]).unwrap();
    assert_eq!((stored.version, stored.enabled), (2, false));
    assert_eq!(r.replica_lag().unwrap().pending, 0);
}

#[test]
fn keys_list_newest_first_filtered_and_paged() {
    let r = registry();
    for (i, id) in [
        "00000000000000a1",
        "00000000000000a2",
        "00000000000000a3",
        "00000000000000a4",
    ]
    .iter()
    .enumerate()
    {
        let mut rec = sample(id);
        rec.created_at = at(i as i64 * 10);
        rec.group = Some(if i % 2 == 0 { "even" } else { "odd" }.into());
        rec.enabled = i != 3;
        put(&r, &rec).unwrap();
    }
    r.commit(at(100)).unwrap();
    let all = KeyFilter::default();
    let (page, cursor) = r.list_keys(&all, at(100), None, 3, &mut |_| true).unwrap();
    let ids: Vec<_> = page.iter().map(|k| k.id.to_string()).collect();
    assert_eq!(ids, ["00000000000000a4", "00000000000000a3", "00000000000000a2"]);
    let cursor = KeyCursor::decode(&cursor.unwrap().encode()).unwrap();
    let (rest, end) = r
        .list_keys(&all, at(100), Some(&cursor), 3, &mut |_| true)
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(end, None);

    let odd = KeyFilter {
        group: Some("odd".into()),
        status: Some(Status::Active),
        ..KeyFilter::default()
    };
    let (page, _) = r.list_keys(&odd, at(100), None, 10, &mut |_| true).unwrap();
    let ids: Vec<_> = page.iter().map(|k| k.id.to_string()).collect();
    assert_eq!(ids, ["00000000000000a2"], "a4 is odd but disabled");
    // A filter SQL cannot apply still fills the page when enough records match.
    let (page, _) = r
        .list_keys(&all, at(100), None, 2, &mut |k| {
            k.id.as_str() != "00000000000000a4"
        })
        .unwrap();
    assert_eq!(page.len(), 2);
}

#[test]
fn audit_lists_newest_first_by_key_and_forgets_expired_events() {
    let r = registry();
    let id = KeyId::parse("0123456789abcdef").unwrap();
    for (i, key) in [Some(id.clone()), None, Some(id.clone())].into_iter().enumerate() {
        r.append_audit(AuditRow {
            at: at(i as i64),
            key_id: key,
            actor: if i == 1 {
                "unknown".into()
            } else {
                "admin_token".into()
            },
            expires_at: (i == 1).then(|| at(50)),
            json: format!("{i}"),
        });
    }
    r.commit(at(3)).unwrap();
    let (all, _) = r
        .list_audit(None, at(10), None, 10, &mut |_, _| Ok(true))
        .unwrap();
    assert_eq!(all, ["2", "1", "0"]);
    let (mine, _) = r
        .list_audit(Some(&id), at(10), None, 10, &mut |_, _| Ok(true))
        .unwrap();
    assert_eq!(mine, ["2", "0"]);
    let (page, cursor) = r.list_audit(None, at(10), None, 1, &mut |_, _| Ok(true)).unwrap();
    assert_eq!(page, ["2"]);
    let (next, _) = r
        .list_audit(None, at(10), cursor, 5, &mut |_, _| Ok(true))
        .unwrap();
    assert_eq!(next, ["1", "0"]);
    let (late, _) = r
        .list_audit(None, at(60), None, 10, &mut |_, _| Ok(true))
        .unwrap();
    assert_eq!(late, ["2", "0"], "the unverified attempt expired");
}

#[test]
fn idempotent_responses_are_kept_for_a_day() {
    let r = registry();
    let stored = Idempotent {
        fingerprint: "f".into(),
        sealed: "s".into(),
    };
    r.remember("admin_token", "k1", stored.clone());
    assert_eq!(
        r.idempotent("admin_token", "k1", at(0)).unwrap(),
        Some(stored.clone())
    );
    r.commit(at(0)).unwrap();
    assert_eq!(r.idempotent("admin_token", "k1", at(1)).unwrap(), Some(stored));
    assert_eq!(
        r.idempotent("other", "k1", at(1)).unwrap(),
        None,
        "scoped by actor"
    );
    assert_eq!(
        r.idempotent("admin_token", "k1", at(IDEMPOTENCY_TTL_MS)).unwrap(),
        None
    );
}

#[test]
fn import_takes_kv_records_with_their_facts_once() {
    let kv = MemoryStore::new();
    block_on(async {
        let mut live = sample("00000000000000b1");
        // A KV record claiming a version no JavaScript number holds exactly.
        live.version = u64::MAX;
        kv.put("key:00000000000000b1", &serde_json::to_string(&live).unwrap())
            .await
            .unwrap();
        let revocation = crate::record::Revocation {
            at: at(5),
            reason: None,
        };
        kv.put(
            "life:00000000000000b1:revoked",
            &serde_json::to_string(&revocation).unwrap(),
        )
        .await
        .unwrap();
        let gone = sample("00000000000000b2");
        kv.put("key:00000000000000b2", &serde_json::to_string(&gone).unwrap())
            .await
            .unwrap();
        kv.put("life:00000000000000b2:deleted", r#"{"at":5}"#)
            .await
            .unwrap();
        kv.put("key:00000000000000b3", "not json").await.unwrap();
    });
    let r = registry();
    assert!(!r.imported().unwrap());
    assert_eq!(block_on(r.import_from(&kv, at(9))).unwrap(), 1);
    assert!(r.imported().unwrap());
    let got = get(&r, "00000000000000b1").unwrap();
    assert_eq!((got.version, got.revoked_at), (1, Some(at(5))));
    assert!(get(&r, "00000000000000b2").is_none(), "deleted keys stay out");
    // ...and leave the replica at the next flush; the unparsable record stays there.
    block_on(r.flush(&kv, 10)).unwrap();
    let left: Vec<String> = kv
        .snapshot()
        .into_keys()
        .filter(|k| k.starts_with("key:"))
        .collect();
    assert_eq!(left, ["key:00000000000000b1", "key:00000000000000b3"]);
    let replica: KeyRecord = serde_json::from_str(&kv.snapshot()["key:00000000000000b1"]).unwrap();
    assert_eq!(replica.version, 1, "the replica carries the registry's version");
    assert_eq!(block_on(r.import_from(&kv, at(9))).unwrap(), 0, "never twice");
}

proptest! {
    /// The SQL status filter and `KeyRecord::status` agree on every record and instant.
    #[test]
    fn sql_status_matches_the_record(
        enabled in any::<bool>(),
        revoked in proptest::option::of(0i64..100),
        expires in proptest::option::of(0i64..100),
        now in 0i64..100,
    ) {
        let r = registry();
        let mut rec = sample("0123456789abcdef");
        rec.enabled = enabled;
        rec.revoked_at = revoked.map(at);
        rec.expires_at = expires.map(at);
        put(&r, &rec).unwrap();
        r.commit(at(0)).unwrap();
        let want = rec.status(at(now));
        for s in [Status::Active, Status::Disabled, Status::Expired, Status::Revoked] {
            let f = KeyFilter { status: Some(s), ..KeyFilter::default() };
            let (page, _) = r.list_keys(&f, at(now), None, 5, &mut |_| true).unwrap();
            prop_assert_eq!(page.len() == 1, s == want);
        }
    }
}
