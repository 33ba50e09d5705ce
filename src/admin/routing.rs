//! Which admin endpoint a path names, and the checks every request passes before its
//! use-case runs: the admin API switched on, authentication, the method (`405` with `Allow`),
//! then the query string.

use crate::credential::HeaderSource;
use crate::key::KeyId;
use crate::problem::{admin_disabled, admin_token_too_short, internal_error, method_not_allowed, not_found};
use crate::registry::AdminStore;

use super::input::Query;
use super::{
    AdminContext, AdminRequest, AdminResult, MIN_ADMIN_TOKEN_CHARS, Reply, SCOPE_AUDIT, SCOPE_READ,
    SCOPE_REGISTRY, SCOPE_WRITE, ok,
};

pub(super) enum Endpoint {
    Keys,
    Key(String),
    Revoke(String),
    Rotate(String),
    /// Set or top up a metered key's credits.
    Credits(String),
    /// A key's usage per day.
    Usage(String),
    Audit,
    /// The registry's own state: the replica's lag and the feed.
    Registry,
}

pub(super) fn endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/admin/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        ["keys"] => Endpoint::Keys,
        ["keys", id] => Endpoint::Key((*id).to_owned()),
        ["keys", id, "revoke"] => Endpoint::Revoke((*id).to_owned()),
        ["keys", id, "rotate"] => Endpoint::Rotate((*id).to_owned()),
        ["keys", id, "credits"] => Endpoint::Credits((*id).to_owned()),
        ["keys", id, "usage"] => Endpoint::Usage((*id).to_owned()),
        ["audit"] => Endpoint::Audit,
        ["registry"] => Endpoint::Registry,
        _ => return None,
    })
}

/// The key an admin request is about, when its path names a well-formed key id.
pub fn target_key(path: &str) -> Option<KeyId> {
    match endpoint(path)? {
        Endpoint::Key(id)
        | Endpoint::Revoke(id)
        | Endpoint::Rotate(id)
        | Endpoint::Credits(id)
        | Endpoint::Usage(id) => KeyId::parse(&id),
        Endpoint::Keys | Endpoint::Audit | Endpoint::Registry => None,
    }
}

impl<S: AdminStore> AdminContext<'_, S> {
    pub(super) async fn dispatch<H: HeaderSource + ?Sized>(&self, req: &AdminRequest<'_, H>) -> AdminResult {
        if req.path == "/admin/openapi.json" {
            return match req.method {
                "GET" | "HEAD" => crate::openapi::document(&self.gateway.policy)
                    .map(|v| Reply {
                        status: 200,
                        body: Some(v),
                        headers: Vec::new(),
                    })
                    .map_err(|_| internal_error("The OpenAPI document is invalid.")),
                _ => Err(method_not_allowed("GET, HEAD")),
            };
        }
        let token = match self.admin_token.filter(|t| !t.is_empty()) {
            None => return Err(admin_disabled()),
            Some(t) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => return Err(admin_token_too_short()),
            Some(t) => t,
        };
        let actor = self.authenticate(req, token).await?;
        *self.actor_seen.borrow_mut() = Some(actor.name());
        let ep = endpoint(req.path).ok_or_else(not_found)?;
        // The method first (405 with `Allow`), then the query string.
        let allow = match ep {
            Endpoint::Keys => "GET, POST",
            Endpoint::Key(_) => "GET, PATCH, DELETE",
            Endpoint::Revoke(_) | Endpoint::Rotate(_) | Endpoint::Credits(_) => "POST",
            Endpoint::Audit | Endpoint::Registry | Endpoint::Usage(_) => "GET",
        };
        if !allow.split(", ").any(|m| m == req.method) {
            return Err(method_not_allowed(allow));
        }
        let allowed: &[&str] = match ep {
            Endpoint::Keys if req.method == "GET" => &["limit", "cursor", "environment", "status", "group"],
            Endpoint::Audit if req.method == "GET" => &["limit", "cursor", "key_id"],
            Endpoint::Usage(_) => &["from", "to"],
            _ => &[],
        };
        let query = Query::parse(req.query, allowed)?;
        match (ep, req.method) {
            (Endpoint::Keys, "GET") => {
                actor.require(SCOPE_READ)?;
                self.list_keys(&actor, &query, token).await
            }
            (Endpoint::Keys, "POST") => {
                actor.require(SCOPE_WRITE)?;
                self.idempotently(&actor, token, req, async || self.create(&actor, req).await)
                    .await
            }
            (Endpoint::Keys, _) => Err(method_not_allowed("GET, POST")),
            (Endpoint::Key(id), "GET") => {
                actor.require(SCOPE_READ)?;
                let record = self.existing(&actor, &id).await?;
                ok(200, self.show(&record)?).map(|r| r.tagged(record.version))
            }
            (Endpoint::Key(id), "PATCH") => {
                actor.require(SCOPE_WRITE)?;
                self.update(&actor, &id, req).await
            }
            (Endpoint::Key(id), "DELETE") => {
                actor.require(SCOPE_WRITE)?;
                self.delete(&actor, &id, req).await
            }
            (Endpoint::Key(_), _) => Err(method_not_allowed("GET, PATCH, DELETE")),
            (Endpoint::Revoke(id), "POST") => {
                actor.require(SCOPE_WRITE)?;
                self.revoke(&actor, &id, req).await
            }
            (Endpoint::Rotate(id), "POST") => {
                actor.require(SCOPE_WRITE)?;
                self.idempotently(&actor, token, req, async || self.rotate(&actor, &id, req).await)
                    .await
            }
            (Endpoint::Credits(id), "POST") => {
                actor.require(SCOPE_WRITE)?;
                self.idempotently(&actor, token, req, async || {
                    self.change_credits(&actor, &id, req).await
                })
                .await
            }
            (Endpoint::Usage(id), "GET") => {
                actor.require(SCOPE_READ)?;
                self.usage(&actor, &id, &query).await
            }
            (Endpoint::Revoke(_) | Endpoint::Rotate(_) | Endpoint::Credits(_), _) => {
                Err(method_not_allowed("POST"))
            }
            (Endpoint::Usage(_), _) => Err(method_not_allowed("GET")),
            (Endpoint::Audit, "GET") => {
                actor.require(SCOPE_AUDIT)?;
                self.list_audit(&actor, &query, token).await
            }
            (Endpoint::Audit, _) => Err(method_not_allowed("GET")),
            (Endpoint::Registry, "GET") => {
                actor.require(SCOPE_REGISTRY)?;
                self.registry_status()
            }
            (Endpoint::Registry, _) => Err(method_not_allowed("GET")),
        }
    }
}
