//! The admin API as plain Rust: authentication (the `ADMIN_TOKEN` or an admin key), input
//! validation, escalation checks, record changes and the audit log. The edge hands it a
//! request reduced to plain values and copies the reply into an HTTP response.
//!
//! Every error is a [`Problem`]; on every error path nothing has been written, with one
//! exception: a rotation whose retirement marker was written but whose record write then failed
//! (`503`) leaves the old key retired (capped at the grace end) with its successor deleted; the
//! old key may then be rotated again.
//!
//! An admin key acts only within its reach ([`reach`]); lifecycle facts (revocation, deletion,
//! retirement) are monotonic, see the `store` module.

use std::collections::HashMap;
use std::rc::Rc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::credential::{self, HeaderSource};
use crate::decide::{Denial, Gateway, key_ip_allowed};
use crate::ip::{ClientIp, IpAllowlist};
use crate::key::{ApiKey, Environment, KeyId, random_hex, secret_eq};
use crate::problem::{Problem, internal_error, method_not_allowed, store_unavailable};
use crate::record::{KeyRecord, Retirement, Revocation, Status, slug};
use crate::scope::Grant;
use crate::store::{KvStore, LookupError, RECORD_PREFIX, Records, StoreError};
use crate::time::Timestamp;

pub const MAX_BODY: usize = 64 * 1024;
pub const MAX_METADATA: usize = 1024;
const DEFAULT_LIMIT: u32 = 50;
/// The largest page of the list and audit endpoints. A Worker invocation may make at most
/// 1,000 KV operations; a page costs at most `2 * MAX_LIMIT + 3` (authentication, the list
/// call, one read per item, and for an admin key one record read per audit event to check
/// its reach), so 100 leaves a wide margin.
pub const MAX_LIMIT: u32 = 100;
const MAX_LIST_ITEMS: usize = 64;
/// An `ADMIN_TOKEN` shorter than this turns the admin API off (`503 admin_disabled`).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// What a key's principal headers (`X-Key-Id`, `X-Key-Scopes`, `X-Key-Environment`,
/// `X-Key-Tenant`, `X-Key-Client-Ip`) may add to a forwarded request, in bytes, counted as
/// `Name: value\r\n` each with the longest tenant and the longest client address.
pub const MAX_PRINCIPAL_HEADER_BYTES: usize = 4096;

pub const SCOPE_READ: &str = "admin:keys:read";
pub const SCOPE_WRITE: &str = "admin:keys:write";
pub const SCOPE_AUDIT: &str = "admin:audit:read";

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
    /// Orders the audit events of one request (they share a timestamp).
    audit_seq: std::cell::Cell<u32>,
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
            audit_seq: std::cell::Cell::new(0),
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

/// A record's own fields (name, description, group, scopes, tenants, metadata) may not hold an
/// API key: scopes and tenants travel to the origin in `X-Key-*` headers, and every field shows
/// in the admin API.
fn no_key_inside(record: &KeyRecord, prefix: &crate::key::KeyPrefix, now: Timestamp) -> Result<(), Problem> {
    if crate::key::holds_key(&record.view(now).to_string(), prefix) {
        return Err(invalid_field(
            "",
            "A field holds an API key. Keys are secrets: never put one in a name, scope, tenant or metadata.",
        ));
    }
    Ok(())
}

/// The key an admin request is about, when its path names a well-formed key id.
pub fn target_key(path: &str) -> Option<KeyId> {
    match endpoint(path)? {
        Endpoint::Key(id) | Endpoint::Revoke(id) | Endpoint::Rotate(id) => KeyId::parse(&id),
        Endpoint::Keys | Endpoint::Audit => None,
    }
}

/// Denials worth an audit event: a bad credential, or an authenticated caller refused (scope,
/// escalation, address, or a key outside an admin key's reach). A request with no credential
/// at all is logged by the edge but not audited.
fn audited_denial(p: &Problem, actor: Option<&str>) -> bool {
    match p.status {
        401 => p.code == "invalid_admin_credential" || actor.is_some(),
        403 => true,
        // For an admin key, "not found" may mean "outside its reach"; for the token it does not.
        404 => actor.is_some_and(|a| a != "admin_token") && p.code == "key_not_found",
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Option<Value>,
}

type AdminResult = Result<Reply, Problem>;

fn ok(status: u16, body: Value) -> AdminResult {
    Ok(Reply {
        status,
        body: Some(body),
    })
}

/// Who is acting: the operator's token, or an admin key.
enum Actor {
    Token,
    Key(Rc<KeyRecord>),
}

impl Actor {
    fn name(&self) -> String {
        match self {
            Actor::Token => "admin_token".to_owned(),
            Actor::Key(r) => r.id.to_string(),
        }
    }

    fn require(&self, scope: &str) -> Result<(), Problem> {
        let Actor::Key(r) = self else { return Ok(()) };
        let allowed = crate::scope::Scope::parse(scope)
            .map(|s| crate::scope::granted(&r.scopes, &s))
            .unwrap_or(false);
        if allowed {
            Ok(())
        } else {
            Err(Problem::new(
                403,
                "insufficient_scope",
                "Insufficient scope",
                format!("This admin key lacks `{scope}`."),
            )
            .with("required_scopes", json!([scope])))
        }
    }

    /// An admin key may only create or change keys inside its own reach; see [`reach`].
    fn may_manage(&self, target: &KeyRecord) -> Result<(), Problem> {
        let Actor::Key(me) = self else { return Ok(()) };
        reach(me, target).map_err(|detail| Problem::new(403, "scope_escalation", "Scope escalation", detail))
    }

    /// Reads follow the same reach: an admin key sees only keys it could manage.
    fn sees(&self, target: &KeyRecord) -> bool {
        match self {
            Actor::Token => true,
            Actor::Key(me) => reach(me, target).is_ok(),
        }
    }
}

/// Is `target` inside the reach of the admin key `me`, on every axis? `Err` says which axis
/// is not, for the `403 scope_escalation` detail.
/// - scopes: every grant covered by one of `me`'s (wildcard-aware);
/// - environment: the same;
/// - tenants: an empty list means all tenants, so when `me` has tenants, `target` must have
///   some, all among them;
/// - IP allowlist: an empty list is wider than any list, so when `me` has one, `target` must
///   have one whose every network lies inside one of `me`'s;
/// - expiry: when `me` expires, `target` must expire no later (no expiry is later than any).
pub fn reach(me: &KeyRecord, target: &KeyRecord) -> Result<(), String> {
    if target.environment != me.environment {
        return Err(format!(
            "An admin key of environment `{}` cannot manage `{}` keys.",
            me.environment.as_str(),
            target.environment.as_str()
        ));
    }
    if let Some(g) = target
        .scopes
        .iter()
        .find(|g| !me.scopes.iter().any(|mine| mine.covers(g)))
    {
        return Err(format!(
            "The grant `{g}` is not covered by this admin key's own grants."
        ));
    }
    if !me.tenants.is_empty() {
        if target.tenants.is_empty() {
            return Err(
                "This admin key is bound to tenants; a key without tenants (all tenants) is beyond it."
                    .to_owned(),
            );
        }
        if let Some(t) = target.tenants.iter().find(|t| !me.tenants.contains(t)) {
            return Err(format!("The tenant `{t}` is not among this admin key's tenants."));
        }
    }
    if !target.ip_allowlist.within(&me.ip_allowlist) {
        return Err(
            "Every IP allowlist entry must lie inside this admin key's own allowlist (an empty list allows any address)."
                .to_owned(),
        );
    }
    if let Some(mine) = me.expires_at
        && target.expires_at.is_none_or(|t| t > mine)
    {
        return Err(format!(
            "This admin key expires at {mine}; a key it manages must expire no later."
        ));
    }
    Ok(())
}

/// `401 invalid_admin_credential`: the credential is neither the admin token nor a valid key.
fn invalid_admin_credential(realm: &str) -> Problem {
    Problem::new(
        401,
        "invalid_admin_credential",
        "Invalid admin credential",
        "The credential is neither the admin token nor a valid admin key.",
    )
    .header(
        "WWW-Authenticate",
        format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
    )
}

/// Why the admin API is off with this `ADMIN_TOKEN`, if it is: one line for the edge's log.
pub fn admin_token_weakness(token: Option<&str>) -> Option<&'static str> {
    match token {
        None | Some("") => Some("ADMIN_TOKEN is not set; the admin API is disabled"),
        Some(t) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => Some(
            "ADMIN_TOKEN is shorter than 32 characters; the admin API is disabled until a longer one is set",
        ),
        Some(_) => None,
    }
}

/// Bytes the principal headers of `record` can add to a forwarded request, at most.
pub fn principal_header_bytes(record: &KeyRecord) -> usize {
    let line = |name: &str, value: usize| name.len() + 2 + value + 2;
    let scopes = record.scopes.iter().map(|g| g.to_string().len()).sum::<usize>()
        + record.scopes.len().saturating_sub(1);
    let tenant = record.tenants.iter().map(String::len).max();
    line("X-Key-Id", record.id.as_str().len())
        + line("X-Key-Scopes", scopes)
        + line("X-Key-Environment", record.environment.as_str().len())
        + tenant.map_or(0, |t| line("X-Key-Tenant", t))
        // The longest textual IPv6 address.
        + line("X-Key-Client-Ip", 45)
}

fn check_header_size(record: &KeyRecord) -> Result<(), Problem> {
    let n = principal_header_bytes(record);
    if n > MAX_PRINCIPAL_HEADER_BYTES {
        return Err(invalid_field(
            "scopes",
            format!(
                "The key's principal headers (X-Key-Scopes with every grant, the longest tenant, ...) would add {n} bytes to forwarded requests; at most {MAX_PRINCIPAL_HEADER_BYTES} are allowed. Use fewer or shorter grants or tenants."
            ),
        ));
    }
    Ok(())
}

fn key_revoked(detail: &str) -> Problem {
    Problem::new(409, "key_revoked", "Key revoked", detail)
}

/// The retired record: its successor, and its expiry capped at the grace end.
fn retirement_of(r: &Retirement, record: &mut KeyRecord) {
    let life = crate::record::Lifecycle {
        retired: Some(r.clone()),
        ..Default::default()
    };
    life.apply(record);
}

fn not_found() -> Problem {
    Problem::new(404, "not_found", "Not found", "No admin endpoint has this path.")
}

fn key_not_found() -> Problem {
    Problem::new(404, "key_not_found", "Key not found", "No key has this id.")
}

pub fn invalid_field(field: &str, detail: impl Into<String>) -> Problem {
    Problem::new(422, "invalid_field", "Invalid field", detail).with("field", json!(field))
}

fn store_error(_: StoreError) -> Problem {
    store_unavailable()
}

fn lookup_error(e: LookupError) -> Problem {
    match e {
        LookupError::Store(_) => store_unavailable(),
        LookupError::Corrupt(_) => Problem::new(
            500,
            "record_invalid",
            "Key record invalid",
            "The stored record for this key could not be read.",
        ),
    }
}

enum Endpoint {
    Keys,
    Key(String),
    Revoke(String),
    Rotate(String),
    Audit,
}

fn endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/admin/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        ["keys"] => Endpoint::Keys,
        ["keys", id] => Endpoint::Key((*id).to_owned()),
        ["keys", id, "revoke"] => Endpoint::Revoke((*id).to_owned()),
        ["keys", id, "rotate"] => Endpoint::Rotate((*id).to_owned()),
        ["audit"] => Endpoint::Audit,
        _ => return None,
    })
}

impl<S: KvStore> AdminContext<'_, S> {
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
                    "admin.denied",
                    target.as_ref(),
                    req.client_ip,
                    vec![],
                    Some(p.code),
                )
                .await;
            }
        }
        result
    }

    async fn dispatch<H: HeaderSource + ?Sized>(&self, req: &AdminRequest<'_, H>) -> AdminResult {
        if req.path == "/admin/openapi.json" {
            return match req.method {
                "GET" | "HEAD" => crate::openapi::document(&self.gateway.policy)
                    .map(|v| Reply {
                        status: 200,
                        body: Some(v),
                    })
                    .map_err(|_| internal_error("The OpenAPI document is invalid.")),
                _ => Err(method_not_allowed("GET, HEAD")),
            };
        }
        let token = match self.admin_token.filter(|t| !t.is_empty()) {
            None => {
                return Err(Problem::new(
                    503,
                    "admin_disabled",
                    "Admin API disabled",
                    "Set the ADMIN_TOKEN secret to enable the admin API.",
                ));
            }
            Some(t) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => {
                return Err(Problem::new(
                    503,
                    "admin_disabled",
                    "Admin API disabled",
                    "The ADMIN_TOKEN secret is too short (fewer than 32 characters), so the admin API is off. Set a longer one, such as the output of `openssl rand -hex 32`.",
                ));
            }
            Some(t) => t,
        };
        let actor = self.authenticate(req, token).await?;
        *self.actor_seen.borrow_mut() = Some(actor.name());
        let ep = endpoint(req.path).ok_or_else(not_found)?;
        // The method first (405 with `Allow`), then the query string.
        let allow = match ep {
            Endpoint::Keys => "GET, POST",
            Endpoint::Key(_) => "GET, PATCH, DELETE",
            Endpoint::Revoke(_) | Endpoint::Rotate(_) => "POST",
            Endpoint::Audit => "GET",
        };
        if !allow.split(", ").any(|m| m == req.method) {
            return Err(method_not_allowed(allow));
        }
        let allowed: &[&str] = match ep {
            Endpoint::Keys if req.method == "GET" => &["limit", "cursor", "environment", "status", "group"],
            Endpoint::Audit if req.method == "GET" => &["limit", "cursor", "key_id"],
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
                self.create(&actor, req).await
            }
            (Endpoint::Keys, _) => Err(method_not_allowed("GET, POST")),
            (Endpoint::Key(id), "GET") => {
                actor.require(SCOPE_READ)?;
                let record = self.existing(&actor, &id).await?;
                ok(200, record.view(self.now))
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
                self.rotate(&actor, &id, req).await
            }
            (Endpoint::Revoke(_) | Endpoint::Rotate(_), _) => Err(method_not_allowed("POST")),
            (Endpoint::Audit, "GET") => {
                actor.require(SCOPE_AUDIT)?;
                self.list_audit(&actor, &query, token).await
            }
            (Endpoint::Audit, _) => Err(method_not_allowed("GET")),
        }
    }

    async fn authenticate<H: HeaderSource + ?Sized>(
        &self,
        req: &AdminRequest<'_, H>,
        token: &str,
    ) -> Result<Actor, Problem> {
        let policy = &self.gateway.policy;
        let (credential, _) = credential::extract(&policy.credentials, req.headers, None);
        if let Ok(c) = &credential
            && secret_eq(c, token)
        {
            return Ok(Actor::Token);
        }
        let record = self
            .gateway
            .authenticate(credential, &self.records, self.now)
            .await
            .map_err(|d| match d {
                // Not a well-formed key, or not a valid one: to an admin caller these say only
                // that the credential is wrong (a mistyped token is not "a malformed API key").
                Denial::MalformedKey | Denial::InvalidKey => invalid_admin_credential(&policy.realm),
                d => Problem::from_denial(&d, &policy.realm),
            })?;
        if !key_ip_allowed(&record, req.client_ip) {
            return Err(Problem::from_denial(&Denial::IpNotAllowed, &policy.realm));
        }
        Ok(Actor::Key(record))
    }

    /// The key's record as the admin API acts on it: straight from the store, with every
    /// lifecycle fact applied, and only when the actor can reach it (anything else is
    /// `404 key_not_found`, so the existence of keys beyond reach is not disclosed).
    async fn existing(&self, actor: &Actor, raw_id: &str) -> Result<Rc<KeyRecord>, Problem> {
        let id = KeyId::parse(raw_id).ok_or_else(key_not_found)?;
        let record = self
            .records
            .load(&id, self.now)
            .await
            .map_err(lookup_error)?
            .ok_or_else(key_not_found)?;
        let life = self.records.lifecycle(&id).await.map_err(store_error)?;
        if life.deleted {
            return Err(key_not_found());
        }
        let mut merged = (*record).clone();
        let record = if life.apply(&mut merged) {
            Rc::new(merged)
        } else {
            record
        };
        if !actor.sees(&record) {
            return Err(key_not_found());
        }
        Ok(record)
    }

    async fn create<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let body: CreateBody = parse_body(req, false)?;
        let environment = body
            .environment
            .as_deref()
            .map_or(Ok(Environment::Live), valid_environment)?;
        let name = valid_name(&body.name)?;
        let scopes = valid_scopes(&body.scopes)?;
        let ip_allowlist = valid_allowlist(body.ip_allowlist.as_deref().unwrap_or_default())?;
        let tenants = valid_tenants(body.tenants.unwrap_or_default())?;
        let metadata = valid_metadata(body.metadata)?;
        let expires_at = expiry(body.expires_in.as_ref(), body.expires_at.as_deref(), self.now)?;
        let description = valid_description(body.description)?;
        let group = valid_group(body.group)?;

        let (key, record) = self.new_key(environment, |id, hash_version, hash| KeyRecord {
            id,
            tag: slug(&name),
            name,
            description,
            group,
            environment,
            scopes,
            ip_allowlist,
            tenants,
            metadata,
            created_at: self.now,
            updated_at: self.now,
            expires_at,
            enabled: true,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: None,
            rotated_to: None,
            hash_version,
            hash,
        })?;
        check_header_size(&record)?;
        actor.may_manage(&record)?;
        no_key_inside(&record, &self.gateway.policy.key_prefix, self.now)?;
        let record = self.records.put(record, self.now).await.map_err(store_error)?;
        self.audit(actor, "key.create", &record.id, req.client_ip, vec![])
            .await;
        ok(201, json!({"key": key.expose(), "record": record.view(self.now)}))
    }

    /// A fresh key and the record built around its id and hash.
    fn new_key(
        &self,
        environment: Environment,
        build: impl FnOnce(KeyId, crate::key::HashVersion, String) -> KeyRecord,
    ) -> Result<(ApiKey, KeyRecord), Problem> {
        let key = ApiKey::generate(&self.gateway.policy.key_prefix, environment)
            .map_err(|_| internal_error("No randomness available."))?;
        let (version, hash) = self.gateway.hasher.hash(&key);
        let record = build(key.id().clone(), version, hash);
        Ok((key, record))
    }

    async fn update<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let current = self.existing(actor, raw_id).await?;
        let body: PatchBody = parse_body(req, false)?;
        if current.revoked_at.is_some() {
            return Err(key_revoked("A revoked key cannot be changed."));
        }
        let touches_expiry = body.expires_in.is_some() || body.expires_at.is_some();
        if current.rotated_to.is_some() && touches_expiry {
            return Err(Problem::new(
                409,
                "key_retired",
                "Key retired",
                "This key was retired by a rotation: its expiry is the end of its grace period and cannot change.",
            ));
        }
        let mut next = (*current).clone();
        if let Some(n) = &body.name {
            next.name = valid_name(n)?;
            next.tag = slug(&next.name);
        }
        if let Some(d) = body.description {
            next.description = valid_description(d)?;
        }
        if let Some(g) = body.group {
            next.group = valid_group(g)?;
        }
        if let Some(s) = &body.scopes {
            next.scopes = valid_scopes(s)?;
        }
        if let Some(l) = &body.ip_allowlist {
            next.ip_allowlist = valid_allowlist(l)?;
        }
        if let Some(t) = body.tenants {
            next.tenants = valid_tenants(t)?;
        }
        if body.metadata.is_some() {
            next.metadata = valid_metadata(body.metadata)?;
        }
        match (&body.expires_in, &body.expires_at) {
            (None, None) => {}
            (Some(Value::Null), None) | (None, Some(None)) | (Some(Value::Null), Some(None)) => {
                next.expires_at = None
            }
            (Some(Value::Null), Some(Some(_))) | (Some(_), Some(None)) => {
                return Err(invalid_field(
                    "expires_in",
                    "Give either `expires_in` or `expires_at`, not both.",
                ));
            }
            (i, a) => next.expires_at = expiry(i.as_ref(), a.as_ref().and_then(|a| a.as_deref()), self.now)?,
        }
        if let Some(e) = body.enabled {
            next.enabled = e;
        }
        check_header_size(&next)?;
        actor.may_manage(&next)?;
        no_key_inside(&next, &self.gateway.policy.key_prefix, self.now)?;

        let changed = changed_fields(&current, &next);
        if changed.is_empty() {
            return ok(200, current.view(self.now));
        }
        next.updated_at = self.now;
        let saved = self
            .records
            .save(next, self.now)
            .await
            .map_err(store_error)?
            .ok_or_else(key_not_found)?;
        let (toggled, others): (Vec<_>, Vec<_>) = changed.into_iter().partition(|f| f == "enabled");
        if !toggled.is_empty() {
            let action = if saved.enabled {
                "key.enable"
            } else {
                "key.disable"
            };
            self.audit(actor, action, &saved.id, req.client_ip, toggled).await;
        }
        if !others.is_empty() {
            self.audit(actor, "key.update", &saved.id, req.client_ip, others)
                .await;
        }
        ok(200, saved.view(self.now))
    }

    async fn revoke<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let current = self.existing(actor, raw_id).await?;
        let body: RevokeBody = parse_body(req, true)?;
        let reason = body.reason.map(|r| valid_text("reason", r, 512)).transpose()?;
        if current.revoked_at.is_some() {
            // Irreversible and idempotent: the first revocation stands.
            return ok(200, current.view(self.now));
        }
        // The fact first, then the record: whatever else writes the record afterwards finds
        // the marker and keeps the revocation.
        let revocation = Revocation { at: self.now, reason };
        self.records
            .mark_revoked(&current.id, &revocation)
            .await
            .map_err(store_error)?;
        let mut next = (*current).clone();
        next.revoked_at = Some(revocation.at);
        next.revoke_reason = revocation.reason;
        next.updated_at = self.now;
        let saved = self
            .records
            .save(next, self.now)
            .await
            .map_err(store_error)?
            .ok_or_else(key_not_found)?;
        self.audit(
            actor,
            "key.revoke",
            &saved.id,
            req.client_ip,
            vec!["revoked_at".into(), "revoke_reason".into()],
        )
        .await;
        ok(200, saved.view(self.now))
    }

    async fn rotate<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let old = self.existing(actor, raw_id).await?;
        let body: RotateBody = parse_body(req, true)?;
        let grace = match &body.grace {
            None => 0,
            Some(g) => duration(g, true).ok_or_else(|| {
                invalid_field(
                    "grace",
                    "Use a preset (`1h`, `12h`, `1d`, `5d`, `1y`), `Nm`, `Nh`, `Nd`, or whole seconds (a number or digits), 0 to 100 years.",
                )
            })?,
        };
        match old.status(self.now) {
            Status::Revoked => return Err(key_revoked("A revoked key cannot be rotated.")),
            Status::Disabled => {
                return Err(Problem::new(
                    409,
                    "key_disabled",
                    "Key disabled",
                    "A disabled key cannot be rotated: enable it first, or issue a new key.",
                ));
            }
            Status::Expired => {
                return Err(Problem::new(
                    409,
                    "key_expired",
                    "Key expired",
                    "An expired key cannot be rotated (its successor could not outlive it); issue a new key.",
                ));
            }
            Status::Active => {}
        }
        if let Some(successor) = &old.rotated_to {
            // Rotating again is allowed only when the successor no longer exists (it was
            // deleted); the old key's expiry stays capped, so this never extends its life.
            let exists = match self.records.load(successor, self.now).await {
                Ok(found) => found.is_some(),
                // A successor whose record is corrupt still exists.
                Err(LookupError::Corrupt(_)) => true,
                Err(LookupError::Store(e)) => return Err(store_error(e)),
            };
            if exists {
                return Err(Problem::new(
                    409,
                    "already_rotated",
                    "Already rotated",
                    "This key has already been rotated; rotate its successor.",
                ));
            }
        }
        // The successor never outlives the old key: it expires when the old key would have.
        let (key, new_record) = self.new_key(old.environment, |id, hash_version, hash| KeyRecord {
            id,
            created_at: self.now,
            updated_at: self.now,
            expires_at: old.expires_at,
            enabled: true,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: Some(old.id.clone()),
            rotated_to: None,
            hash_version,
            hash,
            ..(*old).clone()
        })?;
        actor.may_manage(&new_record)?;
        let grace_end = self.now.plus_seconds(grace);
        let retirement = Retirement {
            successor: new_record.id.clone(),
            expires_at: old.expires_at.map_or(grace_end, |e| e.min(grace_end)),
        };
        let new_record = self
            .records
            .put(new_record, self.now)
            .await
            .map_err(store_error)?;
        if let Err(p) = self.retire(&old, &retirement).await {
            // Leave no working successor behind a rotation that did not happen.
            let _ = self.records.delete(&new_record.id, self.now).await;
            return Err(p);
        }
        self.audit(
            actor,
            "key.rotate",
            &old.id,
            req.client_ip,
            vec!["expires_at".into(), "rotated_to".into()],
        )
        .await;
        self.audit(
            actor,
            "key.create",
            &new_record.id,
            req.client_ip,
            vec!["rotated_from".into()],
        )
        .await;
        ok(
            201,
            json!({"key": key.expose(), "record": new_record.view(self.now)}),
        )
    }

    /// Retire `old` in favour of the successor named in `retirement`. `Err`: this request
    /// retired nothing, and the caller removes the successor it wrote.
    async fn retire(&self, old: &KeyRecord, retirement: &Retirement) -> Result<(), Problem> {
        // Re-read the old key just before retiring it: a PATCH that disabled or narrowed it
        // since it was read must not be undone, nor its old grants handed to the successor.
        // (KV has no compare-and-swap, so this narrows the window rather than closing it; the
        // registry Durable Object serialises these writes.)
        let fresh = self
            .records
            .load(&old.id, self.now)
            .await
            .map_err(lookup_error)?
            .ok_or_else(key_not_found)?;
        let same_grants = fresh.enabled == old.enabled
            && fresh.revoked_at == old.revoked_at
            && fresh.rotated_to == old.rotated_to
            && fresh.scopes == old.scopes
            && fresh.ip_allowlist == old.ip_allowlist
            && fresh.tenants == old.tenants
            && fresh.expires_at == old.expires_at;
        if !same_grants {
            return Err(Problem::new(
                409,
                "key_changed",
                "Key changed",
                "The key changed while it was being rotated; nothing was rotated. Read it again and retry.",
            ));
        }
        // The fact first, then the old record.
        self.records
            .mark_retired(&old.id, retirement)
            .await
            .map_err(store_error)?;
        let life = self.records.lifecycle(&old.id).await.map_err(store_error)?;
        if life
            .retired
            .as_ref()
            .is_some_and(|r| r.successor != retirement.successor)
        {
            // Another rotation wrote its successor over ours: it won, this one backs out.
            return Err(Problem::new(
                409,
                "already_rotated",
                "Already rotated",
                "This key was rotated by another request at the same time; rotate its successor.",
            ));
        }
        let mut retired = (*fresh).clone();
        retired.updated_at = self.now;
        retirement_of(retirement, &mut retired);
        match self.records.save(retired, self.now).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(key_not_found()),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn delete<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let id = KeyId::parse(raw_id).ok_or_else(key_not_found)?;
        match self.existing(actor, raw_id).await {
            Ok(_) => {}
            // The operator's token may purge a corrupt record; an admin key cannot prove its reach.
            Err(p) if p.code == "record_invalid" && matches!(actor, Actor::Token) => {}
            Err(p) => return Err(p),
        }
        // The fact first: a write racing this delete finds it and deletes the record again.
        self.records
            .mark_deleted(&id, self.now)
            .await
            .map_err(store_error)?;
        self.records.delete(&id, self.now).await.map_err(store_error)?;
        self.audit(actor, "key.delete", &id, req.client_ip, vec![]).await;
        Ok(Reply {
            status: 204,
            body: None,
        })
    }

    async fn list_keys(&self, actor: &Actor, q: &Query, token: &str) -> AdminResult {
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

    async fn list_audit(&self, actor: &Actor, q: &Query, token: &str) -> AdminResult {
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

    /// Append to the audit log, under its own key and under the key's index. Best effort: the
    /// change it records has already happened, so a failed audit write must not undo it.
    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        key_id: &KeyId,
        ip: Option<ClientIp>,
        changed: Vec<String>,
    ) {
        self.audit_as(&actor.name(), action, Some(key_id), ip, changed, None)
            .await;
    }

    /// Append to the audit log, under its own key and, when it is about a key, under the key's
    /// index. Best effort: the change it records has already happened (or was refused), so a
    /// failed audit write must not undo it.
    async fn audit_as(
        &self,
        actor: &str,
        action: &str,
        key_id: Option<&KeyId>,
        ip: Option<ClientIp>,
        changed: Vec<String>,
        code: Option<&str>,
    ) {
        let Ok(event_id) = random_hex(8) else { return };
        let event = AuditEvent {
            id: event_id.clone(),
            at: self.now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            key_id: key_id.cloned(),
            client_ip: ip.map(|i| i.to_string()),
            changed,
            code: code.map(str::to_owned),
        };
        let Ok(json) = serde_json::to_string(&event) else {
            return;
        };
        self.journal.borrow_mut().push(event);
        // Newest first: inverted time, then inverted sequence within this request.
        let seq = self.audit_seq.get();
        self.audit_seq.set(seq.saturating_add(1));
        let order = format!(
            "{:020}:{:010}:{event_id}",
            i64::MAX.saturating_sub(self.now.millis()),
            u32::MAX.saturating_sub(seq)
        );
        // Events of unverified attempts expire: anyone can cause them, nobody should have to
        // keep them forever.
        let global = format!("{AUDIT_PREFIX}{order}");
        let _ = if actor == "unknown" || actor.starts_with("unverified:") {
            self.records
                .store
                .put_expiring(&global, &json, UNVERIFIED_AUDIT_TTL_SECONDS)
                .await
        } else {
            self.records.store.put(&global, &json).await
        };
        if let Some(id) = key_id {
            let _ = self
                .records
                .store
                .put(&format!("{}{order}", audit_key_prefix(id)), &json)
                .await;
        }
    }
}

const AUDIT_PREFIX: &str = "audit:";
/// How long the audit log keeps an event of an attempt with an unverified credential.
const UNVERIFIED_AUDIT_TTL_SECONDS: u64 = 30 * 24 * 3600;

fn audit_key_prefix(id: &KeyId) -> String {
    format!("audit-key:{id}:")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: String,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    /// `None` for a denied attempt that named no key.
    pub key_id: Option<KeyId>,
    pub client_ip: Option<String>,
    pub changed: Vec<String>,
    /// For `admin.denied`: the problem code the attempt got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Names of the public fields that differ between two versions of a record.
fn changed_fields(a: &KeyRecord, b: &KeyRecord) -> Vec<String> {
    let (Value::Object(x), Value::Object(y)) = (a.view(a.updated_at), b.view(a.updated_at)) else {
        return vec![];
    };
    let mut out: Vec<String> = x
        .iter()
        .filter(|(k, v)| k.as_str() != "status" && k.as_str() != "tag" && y.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out
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

// ---- query strings -------------------------------------------------------------------------

/// A query string where every parameter is known to the endpoint and given once: anything else
/// is `400 invalid_query` naming the parameter, so a typo never widens what a request means.
struct Query(HashMap<String, String>);

fn invalid_query(parameter: &str, detail: String) -> Problem {
    Problem::new(400, "invalid_query", "Invalid query parameter", detail).with("parameter", json!(parameter))
}

impl Query {
    fn parse(q: Option<&str>, allowed: &[&str]) -> Result<Self, Problem> {
        let mut map = HashMap::new();
        for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(name) = query_decode(k) else {
                return Err(invalid_query(
                    k,
                    format!("The query parameter name `{k}` is not valid percent-encoding."),
                ));
            };
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() {
                    "This endpoint takes no query parameters.".to_owned()
                } else {
                    format!("Known here: {}.", allowed.join(", "))
                };
                return Err(invalid_query(
                    &name,
                    format!("Unknown query parameter `{name}`. {known}"),
                ));
            }
            let Some(value) = query_decode(v) else {
                return Err(invalid_query(
                    &name,
                    format!("The value of `{name}` is not valid percent-encoding."),
                ));
            };
            if map.insert(name.clone(), value).is_some() {
                return Err(invalid_query(
                    &name,
                    format!("The query parameter `{name}` is given more than once."),
                ));
            }
        }
        Ok(Query(map))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn limit(&self) -> Result<u32, Problem> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(l) => match l.parse::<u64>() {
                Ok(0) | Err(_) => Err(invalid_field(
                    "limit",
                    format!("Use a whole number from 1; values over {MAX_LIMIT} are capped."),
                )),
                Ok(n) => Ok(u32::try_from(n.min(u64::from(MAX_LIMIT))).unwrap_or(MAX_LIMIT)),
            },
        }
    }

    /// What a cursor of this request is bound to: the endpoint and every filter given.
    fn cursor_scope(&self, endpoint: &str) -> String {
        let mut filters: Vec<(&String, &String)> = self
            .0
            .iter()
            .filter(|(k, _)| k.as_str() != "limit" && k.as_str() != "cursor")
            .collect();
        filters.sort();
        json!([endpoint, filters]).to_string()
    }

    fn cursor(&self, token: &str, scope: &str) -> Result<Option<String>, Problem> {
        self.get("cursor")
            .filter(|c| !c.is_empty())
            .map(|c| {
                verify_cursor(token, scope, c).ok_or_else(|| {
                    Problem::new(
                        400,
                        "invalid_cursor",
                        "Invalid cursor",
                        "Not a cursor this endpoint returned for these filters: use the `cursor` of the previous page with the same endpoint and filters.",
                    )
                    .with("parameter", json!("cursor"))
                })
            })
            .transpose()
    }
}

fn query_decode(s: &str) -> Option<String> {
    crate::policy::percent_decode(&s.replace('+', " ")).map(std::borrow::Cow::into_owned)
}

// ---- bodies and validation ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    description: Option<String>,
    group: Option<String>,
    environment: Option<String>,
    scopes: Vec<String>,
    ip_allowlist: Option<Vec<String>>,
    tenants: Option<Vec<String>>,
    metadata: Option<Value>,
    expires_in: Option<Value>,
    expires_at: Option<String>,
}

/// `Some(None)` is an explicit `null`: clear the field.
fn nullable<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "not_null")]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    group: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    ip_allowlist: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    tenants: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    metadata: Option<Value>,
    #[serde(default, deserialize_with = "nullable_value")]
    expires_in: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    enabled: Option<bool>,
}

/// Absent is `None`; an explicit `null` is a type error (these fields cannot be cleared).
fn not_null<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Keeps an explicit `null` as `Some(Value::Null)`.
fn nullable_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    grace: Option<Value>,
}

fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Size, content type, JSON syntax, then shape (unknown fields, types) with the JSON path of
/// the offending field. `empty_ok`: an absent body means `{}` (for revoke and rotate).
fn parse_body<T: serde::de::DeserializeOwned, H: HeaderSource + ?Sized>(
    req: &AdminRequest<'_, H>,
    empty_ok: bool,
) -> Result<T, Problem> {
    if req.body.len() > MAX_BODY {
        return Err(Problem::new(
            413,
            "payload_too_large",
            "Payload too large",
            "The body is over 64 KiB.",
        ));
    }
    // Revoke and rotate take an optional body: no body at all means `{}`. Anything else,
    // whitespace included, must be JSON.
    let absent = empty_ok && req.body.is_empty();
    let body: &[u8] = if absent { b"{}" } else { req.body };
    if !absent {
        let ct = req.headers.header("content-type").unwrap_or_default();
        if !is_json(&ct) {
            return Err(Problem::new(
                415,
                "unsupported_media_type",
                "Unsupported media type",
                "Send `Content-Type: application/json`.",
            ));
        }
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Problem::new(
            400,
            "malformed_json",
            "Malformed JSON",
            format!("The body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(invalid_field("", "The body must be a JSON object."));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.inner().to_string();
        let mut field = e.path().to_string();
        // A missing field is reported at its parent; serde names the field in its message.
        if inner.starts_with("missing field")
            && let Some(name) = inner.split('`').nth(1)
        {
            field = if field == "." {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        if field == "." {
            field = String::new();
        }
        invalid_field(&field, inner)
    })
}

fn valid_text(field: &str, s: String, max: usize) -> Result<String, Problem> {
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(invalid_field(
            field,
            format!("Use at most {max} characters and no control characters."),
        ));
    }
    Ok(s)
}

fn valid_environment(e: &str) -> Result<Environment, Problem> {
    Environment::parse(e).ok_or_else(|| invalid_field("environment", "Use `live` or `test`."))
}

fn valid_description(d: Option<String>) -> Result<Option<String>, Problem> {
    d.map(|d| valid_text("description", d, 1024)).transpose()
}

fn valid_group(g: Option<String>) -> Result<Option<String>, Problem> {
    g.map(|g| valid_text("group", g, 128)).transpose()
}

fn valid_name(s: &str) -> Result<String, Problem> {
    if s.trim().is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control) {
        return Err(invalid_field(
            "name",
            "Use 1-128 characters, not all blank, without control characters.",
        ));
    }
    Ok(s.to_owned())
}

fn valid_scopes(list: &[String]) -> Result<Vec<Grant>, Problem> {
    if list.is_empty() || list.len() > MAX_LIST_ITEMS {
        return Err(invalid_field(
            "scopes",
            format!("Give 1-{MAX_LIST_ITEMS} scopes."),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| Grant::parse(s).map_err(|e| invalid_field(&format!("scopes[{i}]"), e.to_string())))
        .collect()
}

fn valid_allowlist(list: &[String]) -> Result<IpAllowlist, Problem> {
    if list.len() > MAX_LIST_ITEMS {
        return Err(invalid_field(
            "ip_allowlist",
            format!("Give at most {MAX_LIST_ITEMS} entries."),
        ));
    }
    IpAllowlist::parse(list).map_err(|(i, e)| invalid_field(&format!("ip_allowlist[{i}]"), e.to_string()))
}

fn valid_tenants(list: Vec<String>) -> Result<Vec<String>, Problem> {
    if list.len() > MAX_LIST_ITEMS {
        return Err(invalid_field(
            "tenants",
            format!("Give at most {MAX_LIST_ITEMS} tenants."),
        ));
    }
    for (i, t) in list.iter().enumerate() {
        let ok = (1..=128).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(invalid_field(
                &format!("tenants[{i}]"),
                "Use 1-128 of letters, digits, `-`, `_`, `.`.",
            ));
        }
    }
    Ok(list)
}

fn valid_metadata(m: Option<Value>) -> Result<Map<String, Value>, Problem> {
    match m {
        None => Ok(Map::new()),
        Some(Value::Object(map)) => {
            if Value::Object(map.clone()).to_string().len() > MAX_METADATA {
                return Err(invalid_field(
                    "metadata",
                    "Metadata is over 1 KiB when serialised.",
                ));
            }
            Ok(map)
        }
        Some(_) => Err(invalid_field("metadata", "Metadata must be a JSON object.")),
    }
}

const PRESETS: [(&str, i64); 5] = [
    ("1h", 3600),
    ("12h", 43_200),
    ("1d", 86_400),
    ("5d", 432_000),
    ("1y", 31_536_000),
];
/// Expiries further out than this are refused (100 years).
const MAX_SECONDS: i64 = 100 * 31_536_000;

fn text_duration(s: &str) -> Option<i64> {
    if let Some((_, n)) = PRESETS.iter().find(|(p, _)| *p == s) {
        return Some(*n);
    }
    let (digits, unit) = match s.as_bytes().last()? {
        b'm' => (s.get(..s.len() - 1)?, 60),
        b'h' => (s.get(..s.len() - 1)?, 3600),
        b'd' => (s.get(..s.len() - 1)?, 86_400),
        _ => (s, 1),
    };
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical || digits.len() > 12 {
        return None;
    }
    digits.parse::<i64>().ok()?.checked_mul(unit)
}

/// A duration as people write it: a preset (`1h`, `12h`, `1d`, `5d`, `1y`), `N` followed by
/// `m`, `h` or `d` (`30m`, `7d`, `30d`), or whole seconds as a number (`3600`, `3600.0`) or as
/// digits in a string (`"3600"`). `N` is digits without a sign or leading zeros. Positive (or
/// zero, with `zero_ok`), at most 100 years.
fn duration(v: &Value, zero_ok: bool) -> Option<i64> {
    let s = match v {
        Value::String(s) => text_duration(s)?,
        // Whole-number floats (`3600.0`) are integers to JSON Schema and to many clients.
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        })?,
        _ => return None,
    };
    (s > 0 || (zero_ok && s == 0))
        .then_some(s)
        .filter(|s| *s <= MAX_SECONDS)
}

fn expiry(
    expires_in: Option<&Value>,
    expires_at: Option<&str>,
    now: Timestamp,
) -> Result<Option<Timestamp>, Problem> {
    match (expires_in, expires_at) {
        (Some(_), Some(_)) => Err(invalid_field(
            "expires_in",
            "Give either `expires_in` or `expires_at`, not both.",
        )),
        (Some(v), None) => duration(v, false)
            .map(|s| Some(now.plus_seconds(s)))
            .ok_or_else(|| {
                invalid_field(
                    "expires_in",
                    "Use a preset (`1h`, `12h`, `1d`, `5d`, `1y`), `Nm`, `Nh`, `Nd` (such as `30d`), or whole seconds above 0 (a number or digits).",
                )
            }),
        (None, Some(at)) => match Timestamp::parse_rfc3339(at) {
            Some(t) if t > now && t <= now.plus_seconds(MAX_SECONDS) => Ok(Some(t)),
            Some(_) => Err(invalid_field(
                "expires_at",
                "The expiry must be in the future (and within 100 years).",
            )),
            None => Err(invalid_field(
                "expires_at",
                "Use an RFC 3339 date-time, such as 2027-01-01T00:00:00Z.",
            )),
        },
        (None, None) => Ok(None),
    }
}
