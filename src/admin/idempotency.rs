//! Preconditions and retries: `If-Match` on every write to an existing key, and
//! `Idempotency-Key` on create and rotate (as Stripe has it: a retry with the same key and body
//! within 24 hours gets the first response again, one-time key included; the same key with
//! another body is refused). The stored response holds a key, so it is sealed with
//! ChaCha20-Poly1305 under a key derived from the admin token, bound to the caller and the
//! idempotency key, and kept only for the 24 hours.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::credential::HeaderSource;
use crate::problem::{
    Problem, idempotency_key_reused, idempotency_key_unusable, internal_error, invalid_idempotency_key,
    store_error, version_mismatch,
};
use crate::record::KeyRecord;
use crate::registry::{AdminStore, Idempotent};

use super::actor::Actor;
use super::seal::{open, seal};
use super::{AdminContext, AdminRequest, AdminResult, Reply};

/// `If-Match`: absent, `*`, or a list of entity tags one of which is the key's current
/// `"<version>"`, compared strongly as RFC 9110 requires (a weak tag `W/"3"` never matches).
/// Anything else, an empty header included, is `412`.
pub(super) fn if_match<H: HeaderSource + ?Sized>(
    req: &AdminRequest<'_, H>,
    current: &KeyRecord,
) -> Result<(), Problem> {
    let Some(header) = req.headers.header("if-match") else {
        return Ok(());
    };
    let want = current.version.to_string();
    let matches = header.split(',').map(str::trim).any(|tag| {
        tag == "*" || tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) == Some(want.as_str())
    });
    if matches {
        Ok(())
    } else {
        Err(version_mismatch(current.version))
    }
}

/// The longest idempotency key accepted (Stripe's limit).
const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Serialize, Deserialize)]
struct StoredReply {
    status: u16,
    body: Option<Value>,
}

/// What identifies a request under its idempotency key: method, path and body.
fn fingerprint<H: HeaderSource + ?Sized>(req: &AdminRequest<'_, H>) -> String {
    let mut h = Sha256::new();
    h.update(req.method.as_bytes());
    h.update([0]);
    h.update(req.path.as_bytes());
    h.update([0]);
    h.update(req.body);
    hex::encode(h.finalize())
}

fn seal_reply(token: &str, aad: &str, reply: &Reply) -> Result<String, Problem> {
    let plain = serde_json::to_vec(&StoredReply {
        status: reply.status,
        body: reply.body.clone(),
    })
    .map_err(|_| internal_error("The response could not be stored."))?;
    seal("idempotency", token, aad.as_bytes(), &plain)
}

fn open_reply(token: &str, aad: &str, sealed: &str) -> Option<StoredReply> {
    serde_json::from_slice(&open("idempotency", token, aad.as_bytes(), sealed)?).ok()
}

impl<S: AdminStore> AdminContext<'_, S> {
    /// Run `write` once per `Idempotency-Key` (when the request has one): a retry gets the
    /// stored response, marked `Idempotent-Replayed: true`. Only successful responses are
    /// stored; a failed attempt may be retried with the same key.
    pub(super) async fn idempotently<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        token: &str,
        req: &AdminRequest<'_, H>,
        write: impl AsyncFnOnce() -> AdminResult,
    ) -> AdminResult {
        let Some(key) = req.headers.header("idempotency-key") else {
            return write().await;
        };
        let valid = !key.is_empty()
            && key.len() <= MAX_IDEMPOTENCY_KEY
            && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !valid {
            return Err(invalid_idempotency_key());
        }
        let scope = actor.name();
        let aad = format!("{scope}\n{key}");
        let fingerprint = fingerprint(req);
        let store = self.records.store;
        if let Some(stored) = store.idempotent(&scope, &key, self.now).map_err(store_error)? {
            if stored.fingerprint != fingerprint {
                return Err(idempotency_key_reused());
            }
            let reply = open_reply(token, &aad, &stored.sealed).ok_or_else(idempotency_key_unusable)?;
            // Replayed only while the key it made is still there and within the caller's
            // reach (an admin key narrowed since cannot read back a key it no longer reaches).
            // Create and rotate answer `{key, record}`; a credits change answers the record.
            let record = reply.body.as_ref().and_then(|b| b.get("record").or(Some(b)));
            let made = record.and_then(|r| r.get("id")?.as_str());
            self.existing(actor, made.unwrap_or_default()).await?;
            // The first response's ETag: the version of the record it carried.
            let version = record.and_then(|r| r.get("version")?.as_u64());
            let replay = Reply {
                status: reply.status,
                body: reply.body,
                headers: vec![("Idempotent-Replayed", "true".into())],
            };
            return Ok(match version {
                Some(v) => replay.tagged(v),
                None => replay,
            });
        }
        let reply = write().await?;
        if (200..300).contains(&reply.status) {
            let sealed = seal_reply(token, &aad, &reply)?;
            store.remember(&scope, &key, Idempotent { fingerprint, sealed });
        }
        Ok(reply)
    }
}
