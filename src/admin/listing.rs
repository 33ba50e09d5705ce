//! The list endpoints: keys (filtered, and for an admin key only those within its reach) and
//! the audit log, paged with sealed cursors.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::key::KeyId;
use crate::problem::{Problem, internal_error, invalid_cursor, invalid_field, store_error};
use crate::record::Status;
use crate::store::{KvStore, LookupError, RECORD_PREFIX};

use super::actor::Actor;
use super::audit::{AUDIT_PREFIX, AuditEvent, audit_key_prefix};
use super::input::{Query, valid_environment};
use super::{AdminContext, AdminResult, ok};

impl<S: KvStore> AdminContext<'_, S> {
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
        let group = q.get("group");
        let scope = q.cursor_scope("keys");
        let cursor = q.cursor(token, &scope)?;
        let page = self
            .records
            .store
            .list(RECORD_PREFIX, cursor.as_deref(), limit)
            .await
            .map_err(store_error)?;
        let mut keys = Vec::new();
        for k in &page.keys {
            let Some(id) = k.strip_prefix(RECORD_PREFIX).and_then(KeyId::parse) else {
                continue;
            };
            // A corrupt record cannot be shown; it is skipped here (and still fails closed on the
            // validation path, answers 500 on GET, and can be deleted).
            let r = match self.records.load(&id, self.now).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(LookupError::Corrupt(_)) => continue,
                Err(LookupError::Store(e)) => return Err(store_error(e)),
            };
            let keep = actor.sees(&r)
                && environment.is_none_or(|e| r.environment == e)
                && status.is_none_or(|s| r.status(self.now) == s)
                && group.is_none_or(|g| r.group.as_deref() == Some(g));
            if keep {
                keys.push(r.view(self.now));
            }
        }
        ok(
            200,
            json!({"keys": keys, "cursor": page.cursor.map(|c| sign_cursor(token, &scope, &c)).transpose()?}),
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
        let cursor = q.cursor(token, &scope)?;
        // An admin key reads only the events of keys within its reach: a key it cannot see is
        // `404 key_not_found`, as on GET.
        let mut visible: HashMap<KeyId, bool> = HashMap::new();
        let prefix = match &key_id {
            None => AUDIT_PREFIX.to_owned(),
            Some(id) => {
                if matches!(actor, Actor::Key(_)) {
                    self.existing(actor, id.as_str()).await?;
                    visible.insert(id.clone(), true);
                }
                audit_key_prefix(id)
            }
        };
        let page = self
            .records
            .store
            .list(&prefix, cursor.as_deref(), limit)
            .await
            .map_err(store_error)?;
        let mut events = Vec::new();
        for k in &page.keys {
            let Some(raw) = self.records.store.get(k).await.map_err(store_error)? else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<AuditEvent>(&raw) else {
                continue;
            };
            if let Actor::Key(_) = actor {
                // Events about no key (denied attempts) are for the operator's token only.
                let Some(event_key) = &event.key_id else {
                    continue;
                };
                let seen = match visible.get(event_key) {
                    Some(v) => *v,
                    None => {
                        // A deleted key's events cannot be placed within reach: not shown.
                        let v = match self.records.load(event_key, self.now).await {
                            Ok(Some(r)) => actor.sees(&r),
                            Ok(None) | Err(LookupError::Corrupt(_)) => false,
                            Err(LookupError::Store(e)) => return Err(store_error(e)),
                        };
                        visible.insert(event_key.clone(), v);
                        v
                    }
                };
                if !seen {
                    continue;
                }
            }
            if let Ok(v) = serde_json::to_value(&event) {
                events.push(v);
            }
        }
        ok(
            200,
            json!({"events": events, "cursor": page.cursor.map(|c| sign_cursor(token, &scope, &c)).transpose()?}),
        )
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
fn cursor_cipher(token: &str) -> ChaCha20Poly1305 {
    let key = Sha256::digest(format!("keygate-cursor:{token}").as_bytes());
    ChaCha20Poly1305::new(&key)
}

/// `Err` (a 500) rather than `None`: a missing cursor would tell the client the list ended.
fn sign_cursor(token: &str, scope: &str, raw: &str) -> Result<String, Problem> {
    let failed = |_| internal_error("The list cursor could not be sealed.");
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|_| internal_error("No randomness available."))?;
    let sealed = cursor_cipher(token)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: raw.as_bytes(),
                aad: scope.as_bytes(),
            },
        )
        .map_err(failed)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(hex::encode(out))
}

fn verify_cursor(token: &str, scope: &str, cursor: &str) -> Option<String> {
    let bytes = hex::decode(cursor).ok()?;
    let (nonce, sealed) = (bytes.get(..12)?, bytes.get(12..)?);
    let raw = cursor_cipher(token)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: scope.as_bytes(),
            },
        )
        .ok()?;
    String::from_utf8(raw).ok()
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
