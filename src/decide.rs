//! The pure decision for one request: route, route IP allowlist, credential, record, state,
//! key IP allowlist, environment, tenant, scopes, in that order. The only I/O is the record
//! lookup, through [`Records`] (cache, then store); the clock is an argument.

use std::rc::Rc;

use crate::credential::{self, CredentialError, Found, HeaderSource};
use crate::ip::ClientIp;
use crate::key::{ApiKey, Environment, HashError, KeyHasher, KeyId, holds_key};
use crate::path::{self, CanonicalPath};
use crate::policy::{Cors, DefaultAction, Policy, Route};
use crate::record::{KeyRecord, Status};
use crate::scope::ScopeTemplate;
use crate::store::{KvStore, LookupError, Records};
use crate::time::Timestamp;

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
}

/// What the decision learned on the way, for the log line of a denial: the index of the matched
/// route and the id of the key presented (public; never the key).
#[derive(Debug, Default)]
pub struct Trace {
    pub route: std::cell::Cell<Option<usize>>,
    pub key_id: std::cell::RefCell<Option<KeyId>>,
}

impl Gateway {
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
        match self.check(req, records, now, trace).await {
            Ok(Checked::Forward(f)) => Decision::Forward(f),
            Ok(Checked::Preflight(h)) => Decision::Preflight(h),
            Err(d) => Decision::Deny(d),
        }
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
        // A key never travels in a URL path: refused before it could reach the origin or a log.
        if canonical
            .segments
            .iter()
            .any(|s| holds_key(s, &policy.key_prefix))
        {
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
    ) -> Option<Result<Checked, Denial>> {
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

    async fn check<S: KvStore, H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
        records: &Records<'_, S>,
        now: Timestamp,
        trace: &Trace,
    ) -> Result<Checked, Denial> {
        let canonical = self.canonical(req)?;
        if let Some(answer) = self.preflight(req, &canonical) {
            return answer;
        }
        let segments = canonical.matched();
        let unauthenticated = || {
            Ok(Checked::Forward(Forward {
                path: canonical.encoded(self.policy.path_rules),
                principal: None,
                credential: Found::default(),
                sunset: None,
            }))
        };
        let Some(route) = self.policy.route(req.method, segments) else {
            return match self.policy.default {
                DefaultAction::Deny => Err(Denial::NoRoute),
                DefaultAction::Allow => unauthenticated(),
            };
        };
        trace.route.set(Some(route.index));
        // Before any credential or storage work: blocked addresses cost nothing.
        if !route.ip_allowlist.is_empty() && !route.ip_allowlist.admits(req.client_ip) {
            return Err(Denial::IpNotAllowed);
        }
        if route.public {
            return unauthenticated();
        }
        let (credential, found) = credential::extract(&self.policy.credentials, req.headers, req.query);
        let record = self
            .authenticate_traced(credential, records, now, Some(trace))
            .await?;
        let param = |name: &str| route.pattern.param(name, segments);
        let tenant = authorize(route, param, &record, req.client_ip)?;
        Ok(Checked::Forward(Forward {
            path: canonical.encoded(self.policy.path_rules),
            sunset: self.sunset(&record, now),
            principal: Some(Principal { record, tenant }),
            credential: found,
        }))
    }

    /// From a credential string to a live record: shape and checksum, lookup, constant-time hash
    /// check, then state. Unknown ids and hash mismatches take the same path to `InvalidKey`.
    pub async fn authenticate<S: KvStore>(
        &self,
        credential: Result<String, CredentialError>,
        records: &Records<'_, S>,
        now: Timestamp,
    ) -> Result<Rc<KeyRecord>, Denial> {
        self.authenticate_traced(credential, records, now, None).await
    }

    async fn authenticate_traced<S: KvStore>(
        &self,
        credential: Result<String, CredentialError>,
        records: &Records<'_, S>,
        now: Timestamp,
        trace: Option<&Trace>,
    ) -> Result<Rc<KeyRecord>, Denial> {
        let credential = credential.map_err(|e| match e {
            CredentialError::Missing => Denial::MissingKey,
            CredentialError::Malformed => Denial::MalformedKey,
            CredentialError::Ambiguous => Denial::AmbiguousKey,
        })?;
        let key = ApiKey::parse(&credential, &self.policy.key_prefix).ok_or(Denial::MalformedKey)?;
        if let Some(t) = trace {
            *t.key_id.borrow_mut() = Some(key.id().clone());
        }
        let record = match records.get(key.id(), now).await {
            Ok(r) => r,
            Err(LookupError::Store(_)) => return Err(Denial::StoreUnavailable),
            Err(LookupError::Corrupt(id)) => return Err(Denial::RecordInvalid(id)),
        };
        let verified = match &record {
            Some(r) => self.hasher.verify(&key, r.hash_version, &r.hash),
            None => Ok(false),
        };
        let record = match (record, verified) {
            (Some(r), Ok(true)) if r.environment == key.environment() => r,
            (Some(r), Err(HashError::PepperMissing)) => return Err(Denial::PepperMissing(r.id.clone())),
            _ => return Err(Denial::InvalidKey),
        };
        match record.status(now) {
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

enum Checked {
    Forward(Forward),
    Preflight(Vec<(&'static str, String)>),
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
