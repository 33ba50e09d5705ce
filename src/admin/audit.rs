//! The audit log: one event per admin write, and one per denied attempt worth keeping, stored
//! in the registry with the request's other writes (`registry::AuditRow`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ip::ClientIp;
use crate::key::{KeyId, random_hex};
use crate::problem::Problem;
use crate::record::KeyRecord;
use crate::registry::{AdminStore, AuditRow};
use crate::time::Timestamp;

use super::AdminContext;
use super::actor::Actor;

/// What an audit event records. Serialised as the strings the audit log and the `admin` log
/// lines have always used (`key.create`, ..., `admin.denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    #[serde(rename = "key.create")]
    KeyCreate,
    #[serde(rename = "key.update")]
    KeyUpdate,
    #[serde(rename = "key.enable")]
    KeyEnable,
    #[serde(rename = "key.disable")]
    KeyDisable,
    #[serde(rename = "key.revoke")]
    KeyRevoke,
    #[serde(rename = "key.rotate")]
    KeyRotate,
    #[serde(rename = "key.delete")]
    KeyDelete,
    /// A metered key's balance was set or topped up.
    #[serde(rename = "key.credits")]
    KeyCredits,
    /// A denied attempt (bad credential, or an authenticated caller refused).
    #[serde(rename = "admin.denied")]
    AdminDenied,
}

/// Denials worth an audit event: a bad credential, or an authenticated caller refused (scope,
/// escalation, address, or a key outside an admin key's reach). A request with no credential
/// at all is logged by the edge but not audited.
pub(super) fn audited_denial(p: &Problem, actor: Option<&str>) -> bool {
    match p.status {
        401 => p.code == "invalid_admin_credential" || actor.is_some(),
        403 => true,
        // For an admin key, "not found" may mean "outside its reach"; for the token it does not.
        404 => actor.is_some_and(|a| a != "admin_token") && p.code == "key_not_found",
        _ => false,
    }
}

impl<S: AdminStore> AdminContext<'_, S> {
    /// Append to the audit log, with the change it records (one transaction).
    pub(super) fn audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        key_id: &KeyId,
        ip: Option<ClientIp>,
        changed: Vec<String>,
    ) {
        self.audit_as(&actor.name(), action, Some(key_id), ip, changed, None);
    }

    /// Append to the audit log. Events of attempts with unverified credentials expire after 30
    /// days: anyone can cause them, nobody should have to keep them forever.
    pub(super) fn audit_as(
        &self,
        actor: &str,
        action: AuditAction,
        key_id: Option<&KeyId>,
        ip: Option<ClientIp>,
        changed: Vec<String>,
        code: Option<&str>,
    ) {
        let Ok(event_id) = random_hex(8) else { return };
        let event = AuditEvent {
            id: event_id,
            at: self.now,
            actor: actor.to_owned(),
            action,
            key_id: key_id.cloned(),
            client_ip: ip.map(|i| i.to_string()),
            changed,
            code: code.map(str::to_owned),
        };
        let Ok(json) = serde_json::to_string(&event) else {
            return;
        };
        self.journal.borrow_mut().push(event);
        let unverified = actor == "unknown" || actor.starts_with("unverified:");
        self.records.store.append_audit(AuditRow {
            at: self.now,
            key_id: key_id.cloned(),
            actor: actor.to_owned(),
            expires_at: unverified.then(|| self.now.plus_seconds(UNVERIFIED_AUDIT_TTL_SECONDS)),
            json,
        });
    }
}

/// How long the audit log keeps an event of an attempt with an unverified credential.
const UNVERIFIED_AUDIT_TTL_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub at: Timestamp,
    pub actor: String,
    pub action: AuditAction,
    /// `None` for a denied attempt that named no key.
    pub key_id: Option<KeyId>,
    pub client_ip: Option<String>,
    pub changed: Vec<String>,
    /// For `admin.denied`: the problem code the attempt got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Names of the public fields that differ between two versions of a record.
pub(super) fn changed_fields(a: &KeyRecord, b: &KeyRecord) -> Vec<String> {
    let (Value::Object(x), Value::Object(y)) = (a.view(a.updated_at), b.view(a.updated_at)) else {
        return vec![];
    };
    let mut out: Vec<String> = x
        .iter()
        .filter(|(k, v)| !matches!(k.as_str(), "status" | "tag" | "version") && y.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_keep_their_strings() {
        let all = [
            (AuditAction::KeyCreate, "key.create"),
            (AuditAction::KeyUpdate, "key.update"),
            (AuditAction::KeyEnable, "key.enable"),
            (AuditAction::KeyDisable, "key.disable"),
            (AuditAction::KeyRevoke, "key.revoke"),
            (AuditAction::KeyRotate, "key.rotate"),
            (AuditAction::KeyDelete, "key.delete"),
            (AuditAction::AdminDenied, "admin.denied"),
        ];
        for (action, text) in all {
            assert_eq!(serde_json::to_value(action).unwrap(), serde_json::json!(text));
            assert_eq!(
                serde_json::from_value::<AuditAction>(serde_json::json!(text)).unwrap(),
                action
            );
        }
    }
}
