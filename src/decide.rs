//! The decision for one request, sans-IO (in the style of quinn-proto): route, route IP
//! allowlist, credential, record, state, key IP allowlist, environment, tenant, scopes, in that
//! order. The core does no I/O and reads no clock; its caller performs the one lookup between
//! two pure steps:
//!
//! 1. [`Gateway::start`] runs every check that needs no record (hop header, route mode host,
//!    canonical path, body, CORS preflight, route match, route IP allowlist, credential
//!    extraction and parse) and returns [`Step::Done`] with the decision, or
//!    [`Step::NeedRecord`] with a [`Pending`] naming the key id whose record it needs.
//! 2. The caller looks that record up (in the worker: the isolate's cache, then KV, through
//!    [`Records::get`]) and passes the outcome, in a [`Known`], to [`Gateway::finish`]: hash
//!    check, state, key IP allowlist, environment, tenant, scopes. A lookup error fails closed.
//!
//! [`Gateway::authenticate_start`] and [`Gateway::authenticate_finish`] are the same split for
//! the admin API's credential. The async [`Gateway::decide`], [`Gateway::decide_traced`] and
//! [`Gateway::authenticate`] are thin drivers of the steps over [`Records`].

use std::rc::Rc;

use crate::credential::{self, CredentialError, Found, HeaderSource};
use crate::ip::ClientIp;
use crate::key::{ApiKey, Environment, HashError, KeyHasher, KeyId, holds_key};
use crate::path::{self, CanonicalPath};
use crate::policy::{Cors, DefaultAction, Policy, Route};
use crate::record::{KeyRecord, Status};
use crate::revocation::{Feed, Kind, Verdict};
use crate::scope::ScopeTemplate;
use crate::store::{KvStore, LookupError, Records};
use crate::time::Timestamp;
use crate::token::{AccessClaims, TokenKeys, looks_like_jwt};

/// What the edge knows about a request, already reduced to plain values.
pub struct RequestFacts<'a, H: ?Sized> {
    pub method: &'a str,
    /// The raw (still percent-encoded) URL path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a H,
    /// From `CF-Connecting-IP` only; `None` when absent or invalid.
    pub client_ip: Option<ClientIp>,
    /// The request's host and port (from its URL; no port when it is the scheme's default),
    /// lowercase. Route mode serves only the hostnames its policy lists.
    pub host: &'a str,
    /// The request has a body (`Content-Length` above 0, or any `Transfer-Encoding`).
    pub has_body: bool,
}

/// The hop header the gateway adds to every forwarded request, holding its realm. A request
/// that already carries the gateway's own realm in it has looped back: `508 loop_detected`.
pub const HOP_HEADER: &str = "keygate-hop";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The request came back from this gateway's own forward.
    LoopDetected,
    /// Route mode, and a hostname the worker does not serve.
    MisdirectedRequest,
    /// The path fails canonicalisation (`crate::path`).
    InvalidPath,
    /// The path holds something shaped like one of this gateway's keys.
    KeyInPath,
    /// A `GET` or `HEAD` with a body.
    BodyNotAllowed,
    /// A CORS preflight from an origin the route does not allow.
    CorsOriginNotAllowed,
    NoRoute,
    IpNotAllowed,
    MissingKey,
    MalformedKey,
    AmbiguousKey,
    InvalidKey,
    /// An access token that fails its signature, type, key id or claims, or whose key changed
    /// (per the revocation feed) since it was issued.
    InvalidToken,
    ExpiredToken,
    ExpiredKey,
    RevokedKey,
    DisabledKey,
    InsufficientScope {
        required: Vec<String>,
    },
    TenantNotAllowed,
    EnvironmentNotAllowed,
    StoreUnavailable,
    /// A stored record that does not parse. Denied, and logged by the edge.
    RecordInvalid(KeyId),
    /// A record hashed with a pepper this deployment lacks. Denied, and logged.
    PepperMissing(KeyId),
}

/// Who the caller is, for the origin (`X-Key-*` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub record: Rc<KeyRecord>,
    /// The tenant the route's `tenant_param` matched, if it has one.
    pub tenant: Option<String>,
}

impl Principal {
    pub fn key_id(&self) -> &KeyId {
        &self.record.id
    }

    pub fn environment(&self) -> Environment {
        self.record.environment
    }

    /// The key's grants, comma-separated: the `X-Key-Scopes` value. Built by the caller that
    /// forwards, not on the decision path.
    pub fn scopes_header(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.record.scopes.len() * 16);
        for (i, g) in self.record.scopes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{g}");
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The canonical path, encoded: exactly what the route was matched on.
    pub path: String,
    /// `None` on public routes and, with `default = "allow"`, unmatched paths.
    pub principal: Option<Principal>,
    /// Where the credential was, so it can be removed before forwarding.
    pub credential: Found,
    /// When set, the key stops working then: the response carries `Sunset`.
    pub sunset: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward(Forward),
    Deny(Denial),
    /// A CORS preflight answered at the edge (204) with these headers; never forwarded.
    Preflight(Vec<(&'static str, String)>),
}

pub struct Gateway {
    pub policy: Policy,
    pub hasher: KeyHasher,
    /// `TOKEN_SIGNING_KEY`: signs and checks access tokens and assertions. `None`: no tokens.
    pub tokens: Option<TokenKeys>,
}

/// What the decision learned on the way, for the log line of a denial: the index of the matched
/// route and the id of the key presented (public; never the key).
#[derive(Debug, Default)]
pub struct Trace {
    pub route: std::cell::Cell<Option<usize>>,
    pub key_id: std::cell::RefCell<Option<KeyId>>,
}

impl Trace {
    /// Copies what `other` learned into this trace (the async drivers' `&Trace` out-parameter).
    fn fill(&self, other: Trace) {
        self.route.set(other.route.get());
        *self.key_id.borrow_mut() = other.key_id.into_inner();
    }
}

/// The result of [`Gateway::start`]: a decision, or the one record it still needs.
#[derive(Debug)]
#[must_use = "a pending request needs its record and `Gateway::finish`"]
pub enum Step<'g, 'r> {
    /// Decided without any record: the trace holds the matched route, if there was one.
    Done(Decision, Trace),
    /// A well-formed key was presented. The caller looks up the record of
    /// [`Pending::key_id`] (cache, then store) and hands the result to [`Gateway::finish`].
    NeedRecord(Pending<'g, 'r>),
}

/// A request that passed every check needing no record, waiting for its key record. It borrows
/// the matched route from the gateway (`'g`) and the canonical path from the request (`'r`).
#[derive(Debug)]
pub struct Pending<'g, 'r> {
    auth: PendingAuth,
    route: &'g Route,
    canonical: CanonicalPath<'r>,
    credential: Found,
    client_ip: Option<ClientIp>,
}

impl Pending<'_, '_> {
    /// The key whose record the second step needs.
    pub fn key_id(&self) -> &KeyId {
        self.auth.key_id()
    }

    /// The index of the matched route.
    pub fn route_index(&self) -> usize {
        self.route.index
    }
}

/// A credential that parsed as one of this gateway's keys, waiting for its record
/// ([`Gateway::authenticate_start`], then [`Gateway::authenticate_finish`]).
#[derive(Debug)]
pub struct PendingAuth {
    key: ApiKey,
}

impl PendingAuth {
    /// The key whose record the second step needs.
    pub fn key_id(&self) -> &KeyId {
        self.key.id()
    }
}

/// What the caller found out for a pending key: the inputs of the second step
/// ([`Gateway::finish`], [`Gateway::authenticate_finish`]) besides the clock. Built with
/// [`Known::new`]; a fact added later gets a field here and a neutral value in `new` (or its
/// own setter), so that callers which do not supply it keep compiling.
#[derive(Debug)]
#[non_exhaustive]
pub struct Known {
    /// The lookup of the pending key's record: cache, then store. `Ok(None)`: no such key.
    pub record: Result<Option<Rc<KeyRecord>>, LookupError>,
    /// What the revocation feed says of that record (`crate::revocation`): current, denied
    /// (revoked or deleted since), or stale (changed since, and not refreshed).
    pub feed: Verdict,
}

impl Known {
    pub fn new(record: Result<Option<Rc<KeyRecord>>, LookupError>) -> Self {
        Known {
            record,
            feed: Verdict::Current,
        }
    }

    /// With what the isolate's copy of the revocation feed says of the record looked up.
    pub fn with_feed(mut self, feed: &crate::revocation::Feed, now: Timestamp) -> Self {
        if let Ok(Some(r)) = &self.record {
            self.feed = feed.verdict(r, now);
        }
        self
    }
}

impl Gateway {
    /// The whole decision, driving [`Gateway::start`], the record lookup through `records`, and
    /// [`Gateway::finish`].
    pub async fn decide<S: KvStore, H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
        records: &Records<'_, S>,
        now: Timestamp,
    ) -> Decision {
        self.decide_traced(req, records, now, &Trace::default()).await
    }

    /// [`Gateway::decide`], noting the route and key id in `trace`.
    pub async fn decide_traced<S: KvStore, H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
        records: &Records<'_, S>,
        now: Timestamp,
        trace: &Trace,
    ) -> Decision {
        // These drivers know of no revocation: an empty feed, loaded.
        let feed = Feed::from_page(crate::revocation::FeedPage::default());
        let (decision, learned) = match self.start(req, now, &feed) {
            Step::Done(decision, learned) => (decision, learned),
            Step::NeedRecord(pending) => {
                let record = records.get(pending.key_id(), now).await;
                self.finish(pending, Known::new(record), now)
            }
        };
        trace.fill(learned);
        decision
    }

    /// The first step, with no I/O: every check that needs no key record (hop header, route
    /// mode host, canonical path, body, CORS preflight, route match, route IP allowlist,
    /// credential extraction and parse). Either a decision, or the record it needs. An access
    /// token is decided here entirely, with no record: signature, time, the revocation `feed`
    /// (which holds entries of its key), then the route's checks on its claims.
    pub fn start<'g, 'r, H: HeaderSource + ?Sized>(
        &'g self,
        req: &RequestFacts<'r, H>,
        now: Timestamp,
        feed: &Feed,
    ) -> Step<'g, 'r> {
        let trace = Trace::default();
        let decision = match self.check(req, &trace, now, feed) {
            Ok(Checked::NeedRecord(pending)) => return Step::NeedRecord(pending),
            Ok(Checked::Forward(f)) => Decision::Forward(f),
            Ok(Checked::Preflight(h)) => Decision::Preflight(h),
            Err(d) => Decision::Deny(d),
        };
        Step::Done(decision, trace)
    }

    /// The second step, with no I/O: from the record the caller looked up to the decision (hash
    /// check, state, key IP allowlist, environment, tenant, scopes). A lookup error fails closed.
    pub fn finish(&self, pending: Pending<'_, '_>, known: Known, now: Timestamp) -> (Decision, Trace) {
        let Pending {
            auth,
            route,
            canonical,
            credential,
            client_ip,
        } = pending;
        let trace = Trace::default();
        trace.route.set(Some(route.index));
        *trace.key_id.borrow_mut() = Some(auth.key_id().clone());
        let decision = match self.authorized(auth, route, &canonical, client_ip, known, now) {
            Ok((record, tenant)) => Decision::Forward(Forward {
                path: canonical.encoded(self.policy.path_rules),
                sunset: self.sunset(&record, now),
                principal: Some(Principal { record, tenant }),
                credential,
            }),
            Err(d) => Decision::Deny(d),
        };
        (decision, trace)
    }

    fn authorized(
        &self,
        auth: PendingAuth,
        route: &Route,
        canonical: &CanonicalPath<'_>,
        client_ip: Option<ClientIp>,
        known: Known,
        now: Timestamp,
    ) -> Result<(Rc<KeyRecord>, Option<String>), Denial> {
        let record = self.authenticate_finish(auth, known, now)?;
        let segments = canonical.matched();
        let param = |name: &str| route.pattern.param(name, segments);
        let tenant = authorize(route, param, &record, client_ip)?;
        Ok((record, tenant))
    }

    /// The checks that need neither a route nor a credential: loop, host, path, body.
    fn canonical<'r, H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'r, H>,
    ) -> Result<CanonicalPath<'r>, Denial> {
        let policy = &self.policy;
        if req
            .headers
            .header(HOP_HEADER)
            .is_some_and(|v| v.split(',').any(|hop| hop.trim() == policy.realm))
        {
            return Err(Denial::LoopDetected);
        }
        if let Some(hosts) = &policy.route_mode
            && !hosts.iter().any(|h| h.eq_ignore_ascii_case(req.host))
        {
            return Err(Denial::MisdirectedRequest);
        }
        let canonical = path::canonicalize(req.path, policy.path_rules).map_err(|_| Denial::InvalidPath)?;
        // A key (or one of this gateway's tokens) never travels in a URL path: refused before it
        // could reach the origin or a log.
        if canonical.segments.iter().any(|s| {
            holds_key(s, &policy.key_prefix) || self.tokens.as_ref().is_some_and(|t| t.holds_own_token(s))
        }) {
            return Err(Denial::KeyInPath);
        }
        if req.has_body && (req.method == "GET" || req.method == "HEAD") {
            return Err(Denial::BodyNotAllowed);
        }
        Ok(canonical)
    }

    /// The CORS headers for an actual (non-preflight) response to a browser: only when the
    /// request has an `Origin` the matched route's `cors` policy allows. Empty otherwise.
    pub fn cors_headers<H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
    ) -> Vec<(&'static str, String)> {
        let Some(origin) = req.headers.header("origin") else {
            return Vec::new();
        };
        let Ok(canonical) = path::canonicalize(req.path, self.policy.path_rules) else {
            return Vec::new();
        };
        match self
            .policy
            .route(req.method, canonical.matched())
            .and_then(|r| r.cors.as_ref())
        {
            Some(cors) if cors.allows_origin(&origin) => {
                let mut h = allow_origin(cors, &origin);
                if !cors.expose_headers.is_empty() {
                    h.push(("Access-Control-Expose-Headers", cors.expose_headers.join(", ")));
                }
                h
            }
            _ => Vec::new(),
        }
    }

    /// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) to a route
    /// with a `cors` policy. `None`: not a preflight for such a route; it is then matched like
    /// any other `OPTIONS` request.
    fn preflight<H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
        canonical: &CanonicalPath<'_>,
    ) -> Option<Result<Checked<'static, 'static>, Denial>> {
        if req.method != "OPTIONS" {
            return None;
        }
        let origin = req.headers.header("origin")?;
        let wanted = req
            .headers
            .header("access-control-request-method")?
            .trim()
            .to_ascii_uppercase();
        let route = self.policy.route(&wanted, canonical.matched())?;
        let cors = route.cors.as_ref()?;
        if !route.ip_allowlist.is_empty() && !route.ip_allowlist.admits(req.client_ip) {
            return Some(Err(Denial::IpNotAllowed));
        }
        if !cors.allows_origin(&origin) {
            return Some(Err(Denial::CorsOriginNotAllowed));
        }
        let mut h = allow_origin(cors, &origin);
        h.push(("Access-Control-Allow-Methods", wanted));
        let mut allowed_headers: Vec<&str> = cors.allow_headers.iter().map(String::as_str).collect();
        // The credential headers are always allowed, or a browser could not send a key.
        let creds = &self.policy.credentials;
        if !route.public {
            allowed_headers.extend([creds.bearer_header.as_str(), creds.api_key_header.as_str()]);
        }
        if !allowed_headers.is_empty() {
            h.push(("Access-Control-Allow-Headers", allowed_headers.join(", ")));
        }
        h.push(("Access-Control-Max-Age", cors.max_age_seconds.to_string()));
        Some(Ok(Checked::Preflight(h)))
    }

    fn check<'g, 'r, H: HeaderSource + ?Sized>(
        &'g self,
        req: &RequestFacts<'r, H>,
        trace: &Trace,
        now: Timestamp,
        feed: &Feed,
    ) -> Result<Checked<'g, 'r>, Denial> {
        let canonical = self.canonical(req)?;
        if let Some(answer) = self.preflight(req, &canonical) {
            return answer;
        }
        let unauthenticated = |canonical: CanonicalPath<'_>| {
            Ok(Checked::Forward(Forward {
                path: canonical.encoded(self.policy.path_rules),
                principal: None,
                credential: Found::default(),
                sunset: None,
            }))
        };
        let Some(route) = self.policy.route(req.method, canonical.matched()) else {
            return match self.policy.default {
                DefaultAction::Deny => Err(Denial::NoRoute),
                DefaultAction::Allow => unauthenticated(canonical),
            };
        };
        trace.route.set(Some(route.index));
        // Before any credential or storage work: blocked addresses cost nothing.
        if !route.ip_allowlist.is_empty() && !route.ip_allowlist.admits(req.client_ip) {
            return Err(Denial::IpNotAllowed);
        }
        if route.public {
            return unauthenticated(canonical);
        }
        let (credential, found) = credential::extract(&self.policy.credentials, req.headers, req.query);
        if let Ok(c) = &credential
            && looks_like_jwt(c)
            && let Some(keys) = &self.tokens
        {
            let record = Rc::new(self.token_record(keys, c, now, feed)?);
            *trace.key_id.borrow_mut() = Some(record.id.clone());
            let segments = canonical.matched();
            let param = |name: &str| route.pattern.param(name, segments);
            let tenant = authorize(route, param, &record, req.client_ip)?;
            return Ok(Checked::Forward(Forward {
                path: canonical.encoded(self.policy.path_rules),
                sunset: None,
                principal: Some(Principal { record, tenant }),
                credential: found,
            }));
        }
        let auth = self.authenticate_start(credential)?;
        Ok(Checked::NeedRecord(Pending {
            auth,
            route,
            canonical,
            credential: found,
            client_ip: req.client_ip,
        }))
    }

    /// An access token as the record its claims describe (no store): the signature and type,
    /// its time, the revocation feed (any change to its key since the token was issued ends it:
    /// a revoked, disabled, deleted or narrowed key's tokens stop within the feed's bound), and
    /// its claims. The record has no hash and is never stored.
    pub fn token_record(
        &self,
        keys: &TokenKeys,
        token: &str,
        now: Timestamp,
        feed: &Feed,
    ) -> Result<KeyRecord, Denial> {
        let claims: AccessClaims = keys
            .verify_access(token, now.millis().div_euclid(1000))
            .map_err(|_| Denial::InvalidToken)?;
        claims.check_time(now).map_err(|e| match e {
            crate::token::TokenError::Expired => Denial::ExpiredToken,
            _ => Denial::InvalidToken,
        })?;
        let tokens = &self.policy.tokens;
        let audience_ok = claims.aud == tokens.audience || claims.tenants == [claims.aud.clone()];
        if claims.iss != tokens.issuer || claims.client_id != claims.sub || !audience_ok {
            return Err(Denial::InvalidToken);
        }
        // A token is checked against the feed alone: without a copy of it (this isolate has not
        // reached the registry yet), nothing says its key still stands. Fail closed.
        if !feed.loaded() {
            return Err(Denial::StoreUnavailable);
        }
        let scopes = claims.grants().map_err(|_| Denial::InvalidToken)?;
        let issued = Timestamp::from_millis(claims.iat.saturating_mul(1000));
        let record = KeyRecord {
            id: claims.sub,
            name: String::new(),
            tag: String::new(),
            description: None,
            group: None,
            environment: claims.environment,
            scopes,
            ip_allowlist: claims.ip_allowlist,
            tenants: claims.tenants,
            metadata: serde_json::Map::new(),
            created_at: issued,
            updated_at: issued,
            expires_at: Some(Timestamp::from_millis(claims.exp.saturating_mul(1000))),
            enabled: true,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: None,
            rotated_to: None,
            hash_version: crate::key::HashVersion::Sha256,
            hash: String::new(),
            version: claims.ver,
            rate_tier: claims.rate_tier,
            metered: claims.metered,
            refill: None,
        };
        match feed.verdict(&record, now) {
            Verdict::Current => Ok(record),
            Verdict::Deny(Kind::Deleted) => Err(Denial::InvalidKey),
            Verdict::Deny(_) => Err(Denial::RevokedKey),
            Verdict::Stale(_) => Err(Denial::InvalidToken),
        }
    }

    /// From a credential string to a live record: shape and checksum, lookup, constant-time hash
    /// check, then state. Unknown ids and hash mismatches take the same path to `InvalidKey`.
    /// Drives [`Gateway::authenticate_start`], the lookup, and [`Gateway::authenticate_finish`].
    pub async fn authenticate<S: KvStore>(
        &self,
        credential: Result<String, CredentialError>,
        records: &Records<'_, S>,
        now: Timestamp,
    ) -> Result<Rc<KeyRecord>, Denial> {
        let pending = self.authenticate_start(credential)?;
        let record = records.get(pending.key_id(), now).await;
        self.authenticate_finish(pending, Known::new(record), now)
    }

    /// The first step of [`Gateway::authenticate`], with no I/O: one credential, of this
    /// gateway's key shape, with a valid checksum.
    pub fn authenticate_start(
        &self,
        credential: Result<String, CredentialError>,
    ) -> Result<PendingAuth, Denial> {
        let credential = credential.map_err(|e| match e {
            CredentialError::Missing => Denial::MissingKey,
            CredentialError::Malformed => Denial::MalformedKey,
            CredentialError::Ambiguous => Denial::AmbiguousKey,
        })?;
        let key = ApiKey::parse(&credential, &self.policy.key_prefix).ok_or(Denial::MalformedKey)?;
        Ok(PendingAuth { key })
    }

    /// The second step of [`Gateway::authenticate`], with no I/O: the lookup's outcome (a
    /// store error fails closed), the constant-time hash check, then the record's state.
    pub fn authenticate_finish(
        &self,
        pending: PendingAuth,
        known: Known,
        now: Timestamp,
    ) -> Result<Rc<KeyRecord>, Denial> {
        let key = pending.key;
        let record = match known.record {
            Ok(r) => r,
            Err(LookupError::Store(_)) => return Err(Denial::StoreUnavailable),
            Err(LookupError::Corrupt(id)) => return Err(Denial::RecordInvalid(id)),
        };
        let verified = match &record {
            Some(r) => self.hasher.verify(&key, r.hash_version, &r.hash),
            None => Ok(false),
        };
        let record = match (record, verified) {
            // The caller looked the record up: it must be the key's own.
            (Some(r), Ok(true)) if r.id == *key.id() && r.environment == key.environment() => r,
            (Some(r), Err(HashError::PepperMissing)) => return Err(Denial::PepperMissing(r.id.clone())),
            _ => return Err(Denial::InvalidKey),
        };
        let status = match known.feed {
            Verdict::Current => record.status(now),
            // Revoked or deleted after this record was read: nothing later can undo that.
            Verdict::Deny(Kind::Deleted) => return Err(Denial::InvalidKey),
            Verdict::Deny(_) => Status::Revoked,
            // Changed after this record, and the current record could not be had: fail closed.
            Verdict::Stale(_) => return Err(Denial::StoreUnavailable),
        };
        match status {
            Status::Active => Ok(record),
            Status::Revoked => Err(Denial::RevokedKey),
            Status::Disabled => Err(Denial::DisabledKey),
            Status::Expired => Err(Denial::ExpiredKey),
        }
    }

    /// Expiry is announced within the warning window, and throughout a rotation's grace period.
    pub fn sunset(&self, record: &KeyRecord, now: Timestamp) -> Option<Timestamp> {
        let expires = record.expires_at?;
        let window = now.plus_seconds(i64::from(self.policy.expiry_warning_seconds));
        (record.rotated_to.is_some() || expires <= window).then_some(expires)
    }
}

enum Checked<'g, 'r> {
    Forward(Forward),
    Preflight(Vec<(&'static str, String)>),
    NeedRecord(Pending<'g, 'r>),
}

fn allow_origin(cors: &Cors, origin: &str) -> Vec<(&'static str, String)> {
    let wildcard = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    let mut h = vec![(
        "Access-Control-Allow-Origin",
        if wildcard {
            "*".to_owned()
        } else {
            origin.to_owned()
        },
    )];
    if !wildcard {
        h.push(("Vary", "Origin".to_owned()));
    }
    if cors.allow_credentials {
        h.push(("Access-Control-Allow-Credentials", "true".to_owned()));
    }
    h
}

/// The key's IP allowlist admits the caller (a list that applies and no address: no).
pub fn key_ip_allowed(record: &KeyRecord, ip: Option<ClientIp>) -> bool {
    record.ip_allowlist.is_empty() || record.ip_allowlist.admits(ip)
}

/// Route-specific checks on an authenticated key. Returns the matched tenant, if any. `param`
/// gives the value of a path parameter of the matched route.
fn authorize<'p>(
    route: &Route,
    param: impl Fn(&str) -> Option<&'p str> + Copy,
    record: &KeyRecord,
    ip: Option<ClientIp>,
) -> Result<Option<String>, Denial> {
    if !key_ip_allowed(record, ip) {
        return Err(Denial::IpNotAllowed);
    }
    if let Some(envs) = &route.environments
        && !envs.contains(&record.environment)
    {
        return Err(Denial::EnvironmentNotAllowed);
    }
    let tenant = match &route.tenant_param {
        None => None,
        Some(p) => {
            let value = param(p).ok_or(Denial::TenantNotAllowed)?;
            if !record.tenants.iter().any(|t| t == value) {
                return Err(Denial::TenantNotAllowed);
            }
            Some(value.to_owned())
        }
    };
    let has = |t: &ScopeTemplate| t.granted_by(&record.scopes, param);
    let all_ok = route.scopes.iter().all(has);
    let any_ok = route.any_scopes.is_empty() || route.any_scopes.iter().any(has);
    if !(all_ok && any_ok) {
        let required = route
            .scopes
            .iter()
            .chain(&route.any_scopes)
            .map(|t| t.describe(param))
            .collect();
        return Err(Denial::InsufficientScope { required });
    }
    Ok(tenant)
}
