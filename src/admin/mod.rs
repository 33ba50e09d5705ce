//! The admin API as plain Rust: authentication (the `ADMIN_TOKEN` or an admin key), input
//! validation, escalation checks, record changes and the audit log. The edge hands it a
//! request reduced to plain values and copies the reply into an HTTP response.
//!
//! It runs inside the registry (`crate::registry`), on its synchronous SQL: one request is one
//! unit of work that the registry commits whole when the request succeeds, or drops when it
//! fails (then only the audit event of the refused attempt is kept). Nothing interleaves with
//! it, so a write can never be lost; each record write carries the stored version plus one,
//! which is the key's `ETag`, and writes honour `If-Match` (`412 version_mismatch`).
//!
//! An admin key acts only within its reach ([`reach`]); lifecycle facts (revocation, deletion,
//! retirement) are monotonic, see the `store` module.
//!
//! The module is split by responsibility:
//! - `routing`: which endpoint a path names, and the method and query checks;
//! - `actor`: who is acting (the token or an admin key), authentication and [`reach`];
//! - `keys`: the key use-cases (create, update, revoke, rotate, delete);
//! - `input`: bodies, field rules, durations and expiries, query strings;
//! - `listing`: the key list and the audit log, with their sealed cursors;
//! - `seal`: sealing cursors and stored responses under the admin token;
//! - `audit`: audit events ([`AuditEvent`], [`AuditAction`]) and writing them;
//! - `idempotency`: `Idempotency-Key` on create and rotate, and `If-Match` preconditions.
//!
//! Every error [`Problem`] is built in the `problem` module.

mod actor;
mod audit;
mod idempotency;
mod input;
mod keys;
mod listing;
mod metering;
mod routing;
mod seal;

use serde_json::Value;

use crate::credential::{self, HeaderSource};
use crate::decide::Gateway;
use crate::ip::ClientIp;
use crate::key::ApiKey;
use crate::problem::Problem;
use crate::registry::AdminStore;
use crate::store::Records;
use crate::time::Timestamp;

pub use crate::problem::invalid_field;
pub use actor::{admin_token_weakness, reach};
pub use audit::{AuditAction, AuditEvent};
pub use input::principal_header_bytes;
pub use routing::target_key;

use audit::audited_denial;

pub const MAX_BODY: usize = 64 * 1024;
pub const MAX_METADATA: usize = 1024;
/// The largest page of the list and audit endpoints. A page is one SQL query in the registry
/// (in batches, at most `registry::MAX_SCAN` rows read), never a KV read per item.
pub const MAX_LIMIT: u32 = 100;
/// An `ADMIN_TOKEN` shorter than this turns the admin API off (`503 admin_disabled`).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// What a key's principal headers (`X-Key-Id`, `X-Key-Scopes`, `X-Key-Environment`,
/// `X-Key-Tenant`, `X-Key-Client-Ip`) may add to a forwarded request, in bytes, counted as
/// `Name: value\r\n` each with the longest tenant and the longest client address.
pub const MAX_PRINCIPAL_HEADER_BYTES: usize = 4096;

pub const SCOPE_READ: &str = "admin:keys:read";
pub const SCOPE_WRITE: &str = "admin:keys:write";
pub const SCOPE_AUDIT: &str = "admin:audit:read";
/// `GET /admin/registry`: the registry's own state, deployment-wide.
pub const SCOPE_REGISTRY: &str = "admin:registry:read";
/// Setting a key's credits, refill or rate tier, and topping up: billing and limits, apart from
/// managing keys.
pub const SCOPE_LIMITS: &str = "admin:limits:write";

/// An admin request, reduced to plain values by the edge.
pub struct AdminRequest<'a, H: ?Sized> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a H,
    pub body: &'a [u8],
    pub client_ip: Option<ClientIp>,
}

/// What the admin API needs from its deployment.
pub struct AdminContext<'a, S> {
    pub gateway: &'a Gateway,
    pub records: Records<'a, S>,
    /// `None` (unset or empty) disables the admin API.
    pub admin_token: Option<&'a str>,
    pub now: Timestamp,
    /// Who acted, once authenticated (`admin_token` or the admin key's id), for the log.
    actor_seen: std::cell::RefCell<Option<String>>,
    /// One entry per audit event written: what the edge logs as `admin` lines.
    journal: std::cell::RefCell<Vec<AuditEvent>>,
    /// Whether denied attempts with an unverified credential are still written to the audit log
    /// (the edge turns this off past a per-isolate budget; they are always logged).
    audit_unverified: std::cell::Cell<bool>,
}

impl<'a, S> AdminContext<'a, S> {
    pub fn new(
        gateway: &'a Gateway,
        records: Records<'a, S>,
        admin_token: Option<&'a str>,
        now: Timestamp,
    ) -> Self {
        AdminContext {
            gateway,
            records,
            admin_token,
            now,
            actor_seen: std::cell::RefCell::new(None),
            journal: std::cell::RefCell::new(Vec::new()),
            audit_unverified: std::cell::Cell::new(true),
        }
    }

    /// Stop (or resume) writing audit events for attempts with an unverified credential.
    pub fn audit_unverified(&self, on: bool) {
        self.audit_unverified.set(on);
    }

    /// Who acted in this request, if authentication got that far.
    pub fn actor(&self) -> Option<String> {
        self.actor_seen.borrow().clone()
    }

    /// The audit events this request wrote (admin writes, and denied attempts).
    pub fn journal(&self) -> Vec<AuditEvent> {
        self.journal.borrow().clone()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    /// Extra response headers (`ETag`, `Idempotent-Replayed`).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// The reply with the key's version as its `ETag`.
    fn tagged(mut self, version: u64) -> Self {
        self.headers.push(("ETag", format!("\"{version}\"")));
        self
    }
}

type AdminResult = Result<Reply, Problem>;

fn ok(status: u16, body: Value) -> AdminResult {
    Ok(Reply {
        status,
        body: Some(body),
        headers: Vec::new(),
    })
}

impl<S: AdminStore> AdminContext<'_, S> {
    pub async fn handle<H: HeaderSource + ?Sized>(&self, req: &AdminRequest<'_, H>) -> AdminResult {
        let result = self.dispatch(req).await;
        if let Err(p) = &result {
            // Who tried: the authenticated actor; or a real admin key refused for its state (its
            // hash was verified before the state was checked); or, unverified, the key id the
            // credential claims, which anyone can forge.
            let (name, verified) = match self.actor() {
                Some(a) => (a, true),
                None => {
                    let (c, _) = credential::extract(&self.gateway.policy.credentials, req.headers, None);
                    let id = c
                        .ok()
                        .and_then(|c| ApiKey::parse(&c, &self.gateway.policy.key_prefix))
                        .map(|k| k.id().to_string());
                    match id {
                        Some(id) if matches!(p.code, "revoked_key" | "disabled_key" | "expired_key") => {
                            (id, true)
                        }
                        Some(id) => (format!("unverified:{id}"), false),
                        None => ("unknown".to_owned(), false),
                    }
                }
            };
            let wanted = audited_denial(p, verified.then_some(name.as_str()));
            if wanted && (verified || self.audit_unverified.get()) {
                // An unverified attempt names no key: it gets no copy in a key's own history, so
                // a stranger cannot bury that history under junk.
                let target = if verified { target_key(req.path) } else { None };
                self.audit_as(
                    &name,
                    AuditAction::AdminDenied,
                    target.as_ref(),
                    req.client_ip,
                    vec![],
                    Some(p.code),
                );
            }
        }
        result
    }
}
