//! The registry: the one source of truth for key records, the audit log, the revocation feed,
//! idempotent responses, and the outbox of the KV replica. In production it is one SQLite-backed
//! Durable Object (`edge` adapts it); here it is plain Rust over the small [`SqlDb`] trait, and
//! native tests run the same SQL on SQLite through rusqlite ([`sqlite::Sqlite`]).
//!
//! ## One request, one transaction
//!
//! The admin API runs inside the object, against [`SqlRegistry`] as its [`KvStore`]: reads go
//! to SQL (through the request's own pending writes), writes are buffered in a unit of work.
//! [`SqlRegistry::commit`] applies them in one synchronous run of statements, which the Durable
//! Object commits as one transaction (nothing awaits between them, so no other request can
//! interleave and the implicit transaction covers them all); [`SqlRegistry::discard`] drops
//! them (an admin error writes nothing but its audit event). With every record write the commit
//! also, from the same before/after pair:
//! - bumps nothing by itself: the writer sets `version` to the stored version plus one, and a
//!   write built on a stale read is refused ([`StoreError`], so never a lost update);
//! - appends a revocation-feed entry for each way the change narrows the key
//!   ([`revocation::narrowing`]), replacing the key's older entry of the same kind;
//! - queues the KV replica write (`outbox`), which [`SqlRegistry::flush`] performs later.
//!
//! ## Tables
//! - `records`: one row per key, the record JSON plus the columns the list filters on;
//! - `facts`: the lifecycle facts (`life:{id}:*`, see `store`), kept for the same code path;
//! - `audit`: the audit log, newest first by `seq`;
//! - `revocations`: the feed, by `seq`;
//! - `outbox`: KV replica writes not yet confirmed, with the version they must carry;
//! - `idempotency`: sealed responses of create and rotate, 24 h;
//! - `meta`: whether the KV-era records were imported.

pub mod meter;
#[cfg(not(target_arch = "wasm32"))]
pub mod sqlite;

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::key::KeyId;
use crate::record::{KeyRecord, Status};
use crate::revocation::{self, Entry, FeedPage, Kind, RETENTION_MS};
use crate::store::{KvStore, ListPage, RECORD_PREFIX, Records, StoreError, record_key};
use crate::time::Timestamp;

/// A value bound to or read from a SQL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

impl SqlValue {
    fn int(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        SqlValue::Text(s.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        SqlValue::Text(s)
    }
}

impl From<i64> for SqlValue {
    fn from(i: i64) -> Self {
        SqlValue::Int(i)
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// The one operation the registry needs from SQLite: run a statement with positional `?`
/// parameters and return its rows. Synchronous, as a Durable Object's SQL storage is.
pub trait SqlDb {
    fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, StoreError>;
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS records (id TEXT PRIMARY KEY, version INTEGER NOT NULL, created_at INTEGER NOT NULL, environment TEXT NOT NULL, grp TEXT, enabled INTEGER NOT NULL, revoked_at INTEGER, expires_at INTEGER, json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_by_creation ON records (created_at, id)",
    "CREATE TABLE IF NOT EXISTS facts (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, key_id TEXT, actor TEXT NOT NULL, expires_at INTEGER, json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_by_key ON audit (key_id, seq)",
    "CREATE TABLE IF NOT EXISTS revocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL, at INTEGER NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL, created INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS revocations_by_key ON revocations (key_id, kind)",
    "CREATE TABLE IF NOT EXISTS outbox (k TEXT PRIMARY KEY, version INTEGER NOT NULL, since INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS idempotency (scope TEXT NOT NULL, k TEXT NOT NULL, fingerprint TEXT NOT NULL, sealed TEXT NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (scope, k))",
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
];

/// The SQL form of [`KeyRecord::status`] (kept equal by a property test).
const STATUS_SQL: &str = "CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN enabled = 0 THEN 'disabled' WHEN expires_at IS NOT NULL AND expires_at <= ?1 THEN 'expired' ELSE 'active' END";

/// Rows one list call reads at most. A filter that SQL cannot express (an admin key's reach)
/// may leave a page short when more than this many rows in a row fail it; the page then
/// carries a cursor, so nothing is skipped.
pub const MAX_SCAN: usize = 2_000;
const BATCH: usize = 200;
/// The largest integer a Durable Object's SQL binding (a JavaScript number) carries exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;
/// How long an idempotent response is replayed.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// An audit event as the registry stores it: the JSON the admin API built, plus the columns it
/// is queried by.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub at: Timestamp,
    pub key_id: Option<KeyId>,
    pub actor: String,
    /// Events of attempts with unverified credentials expire; the rest stay.
    pub expires_at: Option<Timestamp>,
    pub json: String,
}

/// A stored idempotent response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotent {
    /// What identifies the request (method, path, body); another body under the same key is
    /// refused.
    pub fingerprint: String,
    /// The response, sealed by the admin API (it holds a key).
    pub sealed: String,
}

/// Which audit events a page keeps, given the event's key id and JSON (an admin key sees only
/// events of keys within its reach).
pub type AuditKeep<'a> = dyn FnMut(Option<&str>, &str) -> Result<bool, StoreError> + 'a;

/// The filters of `GET /admin/keys` that SQL applies.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub environment: Option<String>,
    pub group: Option<String>,
    pub status: Option<Status>,
}

/// Where a key listing resumes: after this creation time and id (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCursor {
    pub created_at: i64,
    pub id: String,
}

impl KeyCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (at, id) = s.split_once('.')?;
        Some(KeyCursor {
            created_at: at.parse().ok()?,
            id: KeyId::parse(id)?.to_string(),
        })
    }
}

/// The KV replica's state as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLag {
    pub pending: i64,
    /// Since when the oldest pending write has waited.
    pub oldest_since: Option<Timestamp>,
}

/// Writes of one request, not yet applied.
#[derive(Debug, Default)]
struct Work {
    /// The final state of each record written (None: deleted).
    records: BTreeMap<String, Option<String>>,
    facts: BTreeMap<String, String>,
    audit: Vec<AuditRow>,
    idempotency: Vec<(String, String, Idempotent)>,
    /// Changes to keys' credits, in order.
    meters: Vec<(String, meter::MeterOp)>,
}

pub struct SqlRegistry<D> {
    db: D,
    work: RefCell<Work>,
}

fn err(msg: impl Into<String>) -> StoreError {
    StoreError(msg.into())
}

fn record_id(key: &str) -> Option<&str> {
    key.strip_prefix(RECORD_PREFIX)
}

impl<D: SqlDb> SqlRegistry<D> {
    /// Open the registry, creating its tables when they do not exist.
    pub fn open(db: D) -> Result<Self, StoreError> {
        for statement in SCHEMA.iter().chain(meter::SCHEMA) {
            db.exec(statement, &[])?;
        }
        Ok(SqlRegistry {
            db,
            work: RefCell::new(Work::default()),
        })
    }

    pub fn db(&self) -> &D {
        &self.db
    }

    fn stored_record(&self, id: &str) -> Result<Option<(u64, String)>, StoreError> {
        let rows = self
            .db
            .exec("SELECT version, json FROM records WHERE id = ?1", &[id.into()])?;
        Ok(rows.first().and_then(|r| {
            let version = r.first()?.int()?;
            let json = r.get(1)?.text()?.to_owned();
            Some((u64::try_from(version).unwrap_or(0), json))
        }))
    }

    /// The stored record of `id`, as JSON (for an isolate whose copy the feed says is stale).
    pub fn record_json(&self, id: &KeyId) -> Result<Option<String>, StoreError> {
        Ok(self.stored_record(id.as_str())?.map(|(_, json)| json))
    }

    /// Write one record row (its JSON and the columns the lists filter on). `replace`: a newer
    /// state of the key; otherwise an import, which never replaces what the registry holds.
    /// Returns the written row's id when one was written.
    fn write_record(
        &self,
        r: &KeyRecord,
        json: &str,
        replace: bool,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        let on_conflict = if replace {
            "DO UPDATE SET version = excluded.version, created_at = excluded.created_at, environment = excluded.environment, grp = excluded.grp, enabled = excluded.enabled, revoked_at = excluded.revoked_at, expires_at = excluded.expires_at, json = excluded.json"
        } else {
            "DO NOTHING"
        };
        self.db.exec(
            &format!(
                "INSERT INTO records (id, version, created_at, environment, grp, enabled, revoked_at, expires_at, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) {on_conflict} RETURNING id"
            ),
            &[
                r.id.to_string().into(),
                to_i64(r.version).into(),
                r.created_at.millis().into(),
                r.environment.as_str().into(),
                r.group.clone().into(),
                i64::from(r.enabled).into(),
                r.revoked_at.map(|t| t.millis()).into(),
                r.expires_at.map(|t| t.millis()).into(),
                json.into(),
            ],
        )
    }

    /// Apply this request's writes. See the module doc for what a record write brings along.
    pub fn commit(&self, now: Timestamp) -> Result<(), StoreError> {
        let work = std::mem::take(&mut *self.work.borrow_mut());
        for (id, after) in &work.records {
            let before = self.stored_record(id)?;
            let before_record = before
                .as_ref()
                .and_then(|(_, json)| serde_json::from_str::<KeyRecord>(json).ok());
            let after_record = match after {
                Some(json) => Some(serde_json::from_str::<KeyRecord>(json).map_err(|e| err(e.to_string()))?),
                None => None,
            };
            let base = before.as_ref().map_or(0, |(v, _)| *v);
            let version = match &after_record {
                Some(r) => {
                    self.write_record(r, json_of(after)?, true)?;
                    r.version
                }
                None => {
                    if before.is_none() {
                        continue;
                    }
                    self.db
                        .exec("DELETE FROM records WHERE id = ?1", &[id.as_str().into()])?;
                    self.forget_meter(id)?;
                    base.saturating_add(1)
                }
            };
            for (kind, at) in revocation::narrowing(before_record.as_ref(), after_record.as_ref(), now) {
                // A newer entry of the same kind supersedes an older one (a record at the newer
                // version holds both changes), so a key has at most one entry per kind.
                self.db.exec(
                    "DELETE FROM revocations WHERE key_id = ?1 AND kind = ?2",
                    &[id.as_str().into(), kind.as_str().into()],
                )?;
                self.db.exec(
                    "INSERT INTO revocations (key_id, at, version, kind, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[
                        id.as_str().into(),
                        at.millis().into(),
                        to_i64(version).into(),
                        kind.as_str().into(),
                        now.millis().into(),
                    ],
                )?;
            }
            self.db.exec(
                "INSERT INTO outbox (k, version, since) VALUES (?1, ?2, ?3) ON CONFLICT (k) DO UPDATE SET version = excluded.version",
                &[
                    format!("{RECORD_PREFIX}{id}").into(),
                    to_i64(version).into(),
                    now.millis().into(),
                ],
            )?;
        }
        for (k, v) in &work.facts {
            self.db.exec(
                "INSERT INTO facts (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                &[k.as_str().into(), v.as_str().into()],
            )?;
        }
        for row in &work.audit {
            self.db.exec(
                "INSERT INTO audit (at, key_id, actor, expires_at, json) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    row.at.millis().into(),
                    row.key_id.as_ref().map(|k| k.to_string()).into(),
                    row.actor.as_str().into(),
                    row.expires_at.map(|t| t.millis()).into(),
                    row.json.as_str().into(),
                ],
            )?;
        }
        for (id, op) in &work.meters {
            self.apply_meter(id, op, now)?;
        }
        for (scope, k, i) in &work.idempotency {
            self.db.exec(
                "INSERT INTO idempotency (scope, k, fingerprint, sealed, expires_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (scope, k) DO UPDATE SET fingerprint = excluded.fingerprint, sealed = excluded.sealed, expires_at = excluded.expires_at",
                &[
                    scope.as_str().into(),
                    k.as_str().into(),
                    i.fingerprint.as_str().into(),
                    i.sealed.as_str().into(),
                    now.millis().saturating_add(IDEMPOTENCY_TTL_MS).into(),
                ],
            )?;
        }
        Ok(())
    }

    /// Drop this request's writes, except its audit events (a refused attempt is audited).
    pub fn discard(&self) {
        let mut work = self.work.borrow_mut();
        work.records.clear();
        work.facts.clear();
        work.idempotency.clear();
        work.meters.clear();
    }

    /// Forget what no longer needs keeping: expired audit events and idempotent responses, and
    /// feed entries past retention whose replica write has landed.
    pub fn prune(&self, now: Timestamp) -> Result<(), StoreError> {
        let t = now.millis();
        self.db.exec(
            "DELETE FROM audit WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            &[t.into()],
        )?;
        self.db
            .exec("DELETE FROM idempotency WHERE expires_at <= ?1", &[t.into()])?;
        self.db.exec(
            "DELETE FROM revocations WHERE created < ?1 AND ('key:' || key_id) NOT IN (SELECT k FROM outbox)",
            &[t.saturating_sub(RETENTION_MS).into()],
        )?;
        self.prune_meters(now)?;
        Ok(())
    }

    /// Copy pending record changes to the KV replica, oldest first, each with the record as it
    /// is now (so replica writes can never land out of order: the last one carries the latest
    /// state). A row is cleared only if no newer change arrived while its write was under way.
    /// Returns how many writes landed; stops at the first failure (the caller retries later).
    pub async fn flush<K: KvStore>(&self, kv: &K, limit: usize) -> Result<usize, StoreError> {
        let rows = self.db.exec(
            "SELECT k, version FROM outbox ORDER BY since, k LIMIT ?1",
            &[(limit as i64).into()],
        )?;
        let mut landed = 0;
        for row in rows {
            let (Some(k), Some(version)) = (
                row.first().and_then(SqlValue::text).map(str::to_owned),
                row.get(1).and_then(SqlValue::int),
            ) else {
                return Err(err("an outbox row has the wrong shape"));
            };
            let current = match record_id(&k) {
                Some(id) => self.stored_record(id)?,
                None => None,
            };
            let result = match &current {
                Some((_, json)) => kv.put(&k, json).await,
                None => kv.delete(&k).await,
            };
            if let Err(e) = result {
                self.db.exec(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE k = ?1",
                    &[k.as_str().into()],
                )?;
                return Err(e);
            }
            self.db.exec(
                "DELETE FROM outbox WHERE k = ?1 AND version = ?2",
                &[k.as_str().into(), version.into()],
            )?;
            landed += 1;
        }
        Ok(landed)
    }

    pub fn imported(&self) -> Result<bool, StoreError> {
        Ok(!self
            .db
            .exec("SELECT v FROM meta WHERE k = 'imported'", &[])?
            .is_empty())
    }

    /// Import the records a KV-only deployment left (`key:*`, with their lifecycle facts
    /// applied, at version 1; deleted keys stay out and are removed from KV; records that do not
    /// parse stay in KV, failing closed), once. Records the registry already holds win. Returns how
    /// many it imported.
    pub async fn import_from<K: KvStore>(&self, kv: &K, now: Timestamp) -> Result<usize, StoreError> {
        let cache = RefCell::new(crate::cache::RecordCache::new(1, 0, 0, 0));
        let old = Records {
            store: kv,
            cache: &cache,
        };
        let mut cursor: Option<String> = None;
        let mut imported = 0;
        loop {
            let page: ListPage = kv.list(RECORD_PREFIX, cursor.as_deref(), 1000).await?;
            for k in &page.keys {
                let Some(id) = record_id(k).and_then(KeyId::parse) else {
                    continue;
                };
                let Some(raw) = kv.get(k).await? else { continue };
                let Ok(mut record) = serde_json::from_str::<KeyRecord>(&raw) else {
                    continue;
                };
                let life = old.lifecycle(&id).await?;
                if record.id != id {
                    continue;
                }
                if life.deleted {
                    // Deleted in the KV era, its record left behind: the registry does not hold
                    // it, and the replica loses it at the next flush.
                    self.db.exec(
                        "INSERT INTO outbox (k, version, since) VALUES (?1, 0, ?2) ON CONFLICT (k) DO NOTHING",
                        &[k.as_str().into(), now.millis().into()],
                    )?;
                    continue;
                }
                life.apply(&mut record);
                // The registry numbers versions from here (whatever the KV record claimed).
                record.version = 1;
                let json = serde_json::to_string(&record).map_err(|e| err(e.to_string()))?;
                let rows = self.write_record(&record, &json, false)?;
                if !rows.is_empty() {
                    // The replica gets the registry's numbering too, or the feed could not
                    // compare its versions with the KV-era record.
                    self.db.exec(
                        "INSERT INTO outbox (k, version, since) VALUES (?1, 1, ?2) ON CONFLICT (k) DO NOTHING",
                        &[k.as_str().into(), now.millis().into()],
                    )?;
                }
                imported += rows.len();
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        self.db.exec(
            "INSERT INTO meta (k, v) VALUES ('imported', ?1) ON CONFLICT (k) DO NOTHING",
            &[now.millis().to_string().into()],
        )?;
        Ok(imported)
    }
}

/// What the admin API needs from the registry besides records and lifecycle facts by their KV
/// names ([`KvStore`]): the audit log, the key list, idempotent responses and the replica's lag.
/// Synchronous, so an admin request never waits inside the registry.
pub trait AdminStore: KvStore {
    /// Queue an audit event with this request's writes.
    fn append_audit(&self, row: AuditRow);
    /// A page of keys, newest first, filtered in SQL, then by `keep` (an admin key's reach).
    fn list_keys(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: Option<&KeyCursor>,
        limit: usize,
        keep: &mut dyn FnMut(&KeyRecord) -> bool,
    ) -> Result<(Vec<KeyRecord>, Option<KeyCursor>), StoreError>;
    /// A page of audit events (their JSON), newest first, optionally of one key, then filtered
    /// by `keep` (given the event's key id and JSON). `before` is where the previous page ended.
    fn list_audit(
        &self,
        key_id: Option<&KeyId>,
        now: Timestamp,
        before: Option<i64>,
        limit: usize,
        keep: &mut AuditKeep<'_>,
    ) -> Result<(Vec<String>, Option<i64>), StoreError>;
    /// The response stored under an idempotency key, if it is less than a day old.
    fn idempotent(&self, scope: &str, key: &str, now: Timestamp) -> Result<Option<Idempotent>, StoreError>;
    /// Store a response under an idempotency key, with this request's writes.
    fn remember(&self, scope: &str, key: &str, response: Idempotent);
    fn replica_lag(&self) -> Result<ReplicaLag, StoreError>;
    /// The revocation feed: every entry still in retention, and entries of keys whose replica
    /// write is still pending, oldest first.
    fn feed(&self, now: Timestamp) -> Result<FeedPage, StoreError>;
    /// Queue a change to a key's credits with this request's writes.
    fn queue_meter(&self, id: &KeyId, op: meter::MeterOp);
    /// A metered key's credits (with this request's queued changes); `None`: not metered.
    fn credits(&self, record: &KeyRecord, now: Timestamp) -> Result<Option<meter::CreditsView>, StoreError>;
    /// (day, code, count) of a key's usage between two day numbers, inclusive.
    fn usage(&self, id: &KeyId, from: i64, to: i64) -> Result<Vec<(i64, String, u64)>, StoreError>;
    /// When the key was last used, as isolates reported it (up to a flush interval late).
    fn last_used_at(&self, id: &KeyId) -> Result<Option<Timestamp>, StoreError>;
}

impl<D: SqlDb> AdminStore for SqlRegistry<D> {
    fn queue_meter(&self, id: &KeyId, op: meter::MeterOp) {
        self.work.borrow_mut().meters.push((id.to_string(), op));
    }

    fn credits(&self, record: &KeyRecord, now: Timestamp) -> Result<Option<meter::CreditsView>, StoreError> {
        let refill = record.refill_in_effect();
        self.credits_view(&record.id, refill.as_ref(), now)
    }

    fn usage(&self, id: &KeyId, from: i64, to: i64) -> Result<Vec<(i64, String, u64)>, StoreError> {
        self.usage_rows(id, from, to)
    }

    fn last_used_at(&self, id: &KeyId) -> Result<Option<Timestamp>, StoreError> {
        self.last_used(id)
    }

    fn append_audit(&self, row: AuditRow) {
        self.work.borrow_mut().audit.push(row);
    }

    /// A page of keys, newest first, filtered in SQL, then by `keep` (an admin key's reach).
    fn list_keys(
        &self,
        filter: &KeyFilter,
        now: Timestamp,
        after: Option<&KeyCursor>,
        limit: usize,
        keep: &mut dyn FnMut(&KeyRecord) -> bool,
    ) -> Result<(Vec<KeyRecord>, Option<KeyCursor>), StoreError> {
        let sql = format!(
            "SELECT created_at, id, json FROM records WHERE (created_at < ?2 OR (created_at = ?2 AND id < ?3)) AND (?4 IS NULL OR environment = ?4) AND (?5 IS NULL OR grp = ?5) AND (?6 IS NULL OR {STATUS_SQL} = ?6) ORDER BY created_at DESC, id DESC LIMIT ?7"
        );
        scan(
            after.cloned(),
            limit,
            |cursor: Option<&KeyCursor>| {
                let (at, id) = cursor.map_or((MAX_SAFE_INTEGER, String::new()), |c| {
                    (c.created_at, c.id.clone())
                });
                self.db.exec(
                    &sql,
                    &[
                        now.millis().into(),
                        at.into(),
                        id.into(),
                        filter.environment.clone().into(),
                        filter.group.clone().into(),
                        filter.status.map(|s| s.as_str()).into(),
                        (BATCH as i64).into(),
                    ],
                )
            },
            |row| {
                let (Some(at), Some(id), Some(json)) = (
                    row.first().and_then(SqlValue::int),
                    row.get(1).and_then(SqlValue::text),
                    row.get(2).and_then(SqlValue::text),
                ) else {
                    return Err(err("a records row has the wrong shape"));
                };
                let cursor = KeyCursor {
                    created_at: at,
                    id: id.to_owned(),
                };
                // A corrupt record cannot be shown; it is skipped here (and fails closed on the
                // validation path, answers 500 on GET, and can be deleted).
                let record = serde_json::from_str::<KeyRecord>(json).ok().filter(|r| keep(r));
                Ok((cursor, record))
            },
        )
    }

    /// A page of audit events (their JSON), newest first, optionally of one key, then filtered
    /// by `keep`. `before` is the sequence number the previous page ended at.
    fn list_audit(
        &self,
        key_id: Option<&KeyId>,
        now: Timestamp,
        before: Option<i64>,
        limit: usize,
        keep: &mut AuditKeep<'_>,
    ) -> Result<(Vec<String>, Option<i64>), StoreError> {
        scan(
            before,
            limit,
            |cursor: Option<&i64>| {
                self.db.exec(
                    "SELECT seq, key_id, json FROM audit WHERE seq < ?1 AND (?2 IS NULL OR key_id = ?2) AND (expires_at IS NULL OR expires_at > ?3) ORDER BY seq DESC LIMIT ?4",
                    &[
                        cursor.copied().unwrap_or(MAX_SAFE_INTEGER).into(),
                        key_id.map(|k| k.to_string()).into(),
                        now.millis().into(),
                        (BATCH as i64).into(),
                    ],
                )
            },
            |row| {
                let (Some(seq), Some(json)) = (
                    row.first().and_then(SqlValue::int),
                    row.get(2).and_then(SqlValue::text),
                ) else {
                    return Err(err("an audit row has the wrong shape"));
                };
                let key = row.get(1).and_then(SqlValue::text);
                Ok((seq, keep(key, json)?.then(|| json.to_owned())))
            },
        )
    }

    fn idempotent(&self, scope: &str, key: &str, now: Timestamp) -> Result<Option<Idempotent>, StoreError> {
        if let Some((_, _, i)) = self
            .work
            .borrow()
            .idempotency
            .iter()
            .find(|(s, k, _)| s == scope && k == key)
        {
            return Ok(Some(i.clone()));
        }
        let rows = self.db.exec(
            "SELECT fingerprint, sealed FROM idempotency WHERE scope = ?1 AND k = ?2 AND expires_at > ?3",
            &[scope.into(), key.into(), now.millis().into()],
        )?;
        Ok(rows.first().and_then(|r| {
            Some(Idempotent {
                fingerprint: r.first()?.text()?.to_owned(),
                sealed: r.get(1)?.text()?.to_owned(),
            })
        }))
    }

    fn remember(&self, scope: &str, key: &str, response: Idempotent) {
        self.work
            .borrow_mut()
            .idempotency
            .push((scope.to_owned(), key.to_owned(), response));
    }

    /// The revocation feed: every entry still in retention, and entries of keys whose replica
    /// write is still pending, oldest first.
    fn feed(&self, now: Timestamp) -> Result<FeedPage, StoreError> {
        let seq = self
            .db
            .exec("SELECT COALESCE(MAX(seq), 0) FROM revocations", &[])?
            .first()
            .and_then(|r| r.first().and_then(SqlValue::int))
            .unwrap_or(0);
        let rows = self.db.exec(
            "SELECT seq, key_id, at, version, kind FROM revocations WHERE created >= ?1 OR ('key:' || key_id) IN (SELECT k FROM outbox) ORDER BY seq",
            &[now.millis().saturating_sub(RETENTION_MS).into()],
        )?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let entry = (|| {
                Some(Entry {
                    seq: row.first()?.int()?,
                    key_id: KeyId::parse(row.get(1)?.text()?)?,
                    at: Timestamp::from_millis(row.get(2)?.int()?),
                    version: u64::try_from(row.get(3)?.int()?).ok()?,
                    kind: Kind::parse(row.get(4)?.text()?)?,
                })
            })();
            entries.push(entry.ok_or_else(|| err("a revocations row has the wrong shape"))?);
        }
        Ok(FeedPage { seq, entries })
    }

    fn replica_lag(&self) -> Result<ReplicaLag, StoreError> {
        let rows = self.db.exec("SELECT COUNT(*), MIN(since) FROM outbox", &[])?;
        let row = rows.first();
        Ok(ReplicaLag {
            pending: row.and_then(|r| r.first()).and_then(SqlValue::int).unwrap_or(0),
            oldest_since: row
                .and_then(|r| r.get(1))
                .and_then(SqlValue::int)
                .map(Timestamp::from_millis),
        })
    }
}

/// One page of a list, newest first: `fetch` reads the next batch (at most `BATCH` rows) after
/// a cursor, `take` turns a row into its cursor and, if kept, an item. Stops when the page is
/// full, the rows run out (then no cursor), or `MAX_SCAN` rows were read (then the cursor of
/// the last row read, so nothing is skipped).
fn scan<C: Clone, T>(
    start: Option<C>,
    limit: usize,
    mut fetch: impl FnMut(Option<&C>) -> Result<Vec<Vec<SqlValue>>, StoreError>,
    mut take: impl FnMut(&[SqlValue]) -> Result<(C, Option<T>), StoreError>,
) -> Result<(Vec<T>, Option<C>), StoreError> {
    let mut out = Vec::new();
    let mut cursor = start;
    let mut scanned = 0;
    loop {
        let rows = fetch(cursor.as_ref())?;
        let complete = rows.len() < BATCH;
        for row in rows {
            let (at, item) = take(&row)?;
            scanned += 1;
            cursor = Some(at);
            if let Some(item) = item {
                out.push(item);
                if out.len() >= limit {
                    return Ok((out, cursor));
                }
            }
            if scanned >= MAX_SCAN {
                return Ok((out, cursor));
            }
        }
        if complete {
            return Ok((out, None));
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json_of(v: &Option<String>) -> Result<&str, StoreError> {
    v.as_deref().ok_or_else(|| err("no record to write"))
}

/// The admin API's view of the registry: records and lifecycle facts by their KV names (so the
/// same `store::Records` code reads and writes them), through this request's pending writes.
impl<D: SqlDb> KvStore for SqlRegistry<D> {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some(id) = record_id(key) {
            if let Some(pending) = self.work.borrow().records.get(id) {
                return Ok(pending.clone());
            }
            return Ok(self.stored_record(id)?.map(|(_, json)| json));
        }
        if let Some(v) = self.work.borrow().facts.get(key) {
            return Ok(Some(v.clone()));
        }
        let rows = self.db.exec("SELECT v FROM facts WHERE k = ?1", &[key.into()])?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::text)
            .map(str::to_owned))
    }

    /// A record write must carry the stored version plus one: a write computed from an older
    /// read is refused.
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        if let Some(id) = record_id(key) {
            let record: KeyRecord = serde_json::from_str(value).map_err(|e| err(e.to_string()))?;
            let base = self.stored_record(id)?.map_or(0, |(v, _)| v);
            if record.version != base.saturating_add(1) || record.id.as_str() != id {
                return Err(err(format!(
                    "version conflict: writing version {} over stored version {base}",
                    record.version
                )));
            }
            self.work
                .borrow_mut()
                .records
                .insert(id.to_owned(), Some(value.to_owned()));
            return Ok(());
        }
        self.work
            .borrow_mut()
            .facts
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match record_id(key) {
            Some(id) => {
                self.work.borrow_mut().records.insert(id.to_owned(), None);
                Ok(())
            }
            // Lifecycle facts are never removed.
            None => Err(err("only records can be deleted")),
        }
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        let _ = (prefix, cursor, limit);
        Err(err("the registry is listed with list_keys and list_audit"))
    }
}

/// The registry's record key for `id`, as the replica and [`KvStore`] name it.
pub fn replica_key(id: &KeyId) -> String {
    record_key(id)
}

#[cfg(test)]
mod tests;
