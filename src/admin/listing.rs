//! The list endpoints: keys (filtered, and for an admin key only those within its reach) and
//! the audit log, paged with sealed cursors.

use std::collections::HashMap;

use futures_util::FutureExt;
use serde_json::json;

use crate::key::KeyId;
use crate::problem::{Problem, invalid_cursor, invalid_field, store_error};
use crate::record::Status;
use crate::registry::{AdminStore, KeyCursor, KeyFilter};
use crate::store::{LookupError, StoreError};

use super::actor::Actor;
use super::audit::AuditEvent;
use super::input::{Query, valid_environment};
use super::seal::{open, seal};
use super::{AdminContext, AdminResult, ok};

impl<S: AdminStore> AdminContext<'_, S> {
    pub(super) async fn list_keys(&self, actor: &Actor, q: &Query, token: &str) -> AdminResult {
        let limit = q.limit()?;
        let environment = q.get("environment").map(valid_environment).transpose()?;
        let status = q
            .get("status")
            .map(|s| {
                Status::parse(s)
                    .ok_or_else(|| invalid_field("status", "Use active, disabled, expired or revoked."))
            })
            .transpose()?;
        let filter = KeyFilter {
            environment: environment.map(|e| e.as_str().to_owned()),
            group: q.get("group").map(str::to_owned),
            status,
        };
        let scope = q.cursor_scope("keys");
        let after = match q.cursor(token, &scope)? {
            Some(raw) => Some(KeyCursor::decode(&raw).ok_or_else(invalid_cursor)?),
            None => None,
        };
        // Filters SQL applies; an admin key's reach is checked per record.
        let (records, next) = self
            .records
            .store
            .list_keys(&filter, self.now, after.as_ref(), limit as usize, &mut |r| {
                actor.sees(r)
            })
            .map_err(store_error)?;
        let keys = records
            .iter()
            .map(|r| self.show(r))
            .collect::<Result<Vec<_>, _>>()?;
        let cursor = next
            .map(|c| sign_cursor(token, &scope, &c.encode()))
            .transpose()?;
        ok(200, json!({"keys": keys, "cursor": cursor}))
    }

    /// `GET /admin/registry`: what the registry knows of its KV replica and its feed.
    pub(super) fn registry_status(&self) -> AdminResult {
        let lag = self.records.store.replica_lag().map_err(store_error)?;
        let feed = self.records.store.feed(self.now).map_err(store_error)?;
        let lag_ms = lag
            .oldest_since
            .map_or(0, |t| self.now.millis().saturating_sub(t.millis()).max(0));
        ok(
            200,
            json!({
                "replica": {"pending": lag.pending, "oldest_pending_since": lag.oldest_since, "lag_ms": lag_ms},
                "feed": {"seq": feed.seq, "entries": feed.entries.len()},
            }),
        )
    }

    pub(super) async fn list_audit(&self, actor: &Actor, q: &Query, token: &str) -> AdminResult {
        let limit = q.limit()?;
        let key_id = q
            .get("key_id")
            .map(|k| {
                KeyId::parse(k)
                    .ok_or_else(|| invalid_field("key_id", "Not a key id (16 lowercase hex digits)."))
            })
            .transpose()?;
        let scope = q.cursor_scope("audit");
        let before = match q.cursor(token, &scope)? {
            Some(raw) => Some(raw.parse::<i64>().map_err(|_| invalid_cursor())?),
            None => None,
        };
        // An admin key reads only the events of keys within its reach: a key it cannot see is
        // `404 key_not_found`, as on GET.
        if let (Some(id), Actor::Key(_)) = (&key_id, actor) {
            self.existing(actor, id.as_str()).await?;
        }
        let mut visible: HashMap<String, bool> = HashMap::new();
        let mut keep = |event_key: Option<&str>, _: &str| -> Result<bool, StoreError> {
            let Actor::Key(_) = actor else { return Ok(true) };
            // Events about no key (denied attempts) are for the operator's token only.
            let Some(event_key) = event_key else {
                return Ok(false);
            };
            if let Some(v) = visible.get(event_key) {
                return Ok(*v);
            }
            // A deleted key's events cannot be placed within reach: not shown.
            let seen = match KeyId::parse(event_key) {
                Some(id) => match self.records.load(&id, self.now).now_or_never() {
                    Some(Ok(Some(r))) => actor.sees(&r),
                    Some(Ok(None) | Err(LookupError::Corrupt(_))) => false,
                    Some(Err(LookupError::Store(e))) => return Err(e),
                    None => return Err(StoreError("the registry waited on a read".into())),
                },
                None => false,
            };
            visible.insert(event_key.to_owned(), seen);
            Ok(seen)
        };
        let (raw, next) = self
            .records
            .store
            .list_audit(key_id.as_ref(), self.now, before, limit as usize, &mut keep)
            .map_err(store_error)?;
        let events: Vec<_> = raw
            .iter()
            .filter_map(|j| serde_json::from_str::<AuditEvent>(j).ok())
            .filter_map(|e| serde_json::to_value(&e).ok())
            .collect();
        let cursor = next
            .map(|seq| sign_cursor(token, &scope, &seq.to_string()))
            .transpose()?;
        ok(200, json!({"events": events, "cursor": cursor}))
    }
}

// ---- cursors -------------------------------------------------------------------------------

/// Store cursors are opaque to clients and signed. The MAC covers the endpoint and every
/// filter (not `limit`, which may change between pages), so a cursor is only good where it was
/// issued: on another endpoint, with other filters, or forged, it is `400 invalid_cursor`.
/// Cursors are sealed with ChaCha20-Poly1305 under a key derived from the admin token, with
/// the endpoint and filters as associated data: a client can neither read the store's cursor
/// inside (which may name the last key listed, even one outside an admin key's reach) nor forge
/// one, nor use one with another endpoint or other filters.
/// `Err` (a 500) rather than `None`: a missing cursor would tell the client the list ended.
fn sign_cursor(token: &str, scope: &str, raw: &str) -> Result<String, Problem> {
    seal("cursor", token, scope.as_bytes(), raw.as_bytes())
}

fn verify_cursor(token: &str, scope: &str, cursor: &str) -> Option<String> {
    String::from_utf8(open("cursor", token, scope.as_bytes(), cursor)?).ok()
}

impl Query {
    /// What a cursor of this request is bound to: the endpoint and every filter given.
    pub(super) fn cursor_scope(&self, endpoint: &str) -> String {
        let mut filters: Vec<(&String, &String)> = self
            .0
            .iter()
            .filter(|(k, _)| k.as_str() != "limit" && k.as_str() != "cursor")
            .collect();
        filters.sort();
        json!([endpoint, filters]).to_string()
    }

    pub(super) fn cursor(&self, token: &str, scope: &str) -> Result<Option<String>, Problem> {
        self.get("cursor")
            .filter(|c| !c.is_empty())
            .map(|c| verify_cursor(token, scope, c).ok_or_else(invalid_cursor))
            .transpose()
    }
}
