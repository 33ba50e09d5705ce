//! The pure decision for one request: route, route IP allowlist, credential, record, state,
//! key IP allowlist, environment, tenant, scopes, in that order. The only I/O is the record
//! lookup, through [`Records`] (cache, then store); the clock is an argument.

use std::rc::Rc;

use crate::credential::{self, CredentialError, Found, HeaderSource};
use crate::ip::ClientIp;
use crate::key::{ApiKey, Environment, HashError, KeyHasher, KeyId};
use crate::policy::{DefaultAction, Policy, Route, segments};
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
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
}

pub struct Gateway {
    pub policy: Policy,
    pub hasher: KeyHasher,
}

impl Gateway {
    pub async fn decide<S: KvStore, H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
        records: &Records<'_, S>,
        now: Timestamp,
    ) -> Decision {
        match self.check(req, records, now).await {
            Ok(f) => Decision::Forward(f),
            Err(d) => Decision::Deny(d),
        }
    }

    async fn check<S: KvStore, H: HeaderSource + ?Sized>(
        &self,
        req: &RequestFacts<'_, H>,
        records: &Records<'_, S>,
        now: Timestamp,
    ) -> Result<Forward, Denial> {
        let segments = segments(req.path).ok_or(Denial::NoRoute)?;
        let Some(route) = self.policy.route(req.method, &segments) else {
            return match self.policy.default {
                DefaultAction::Deny => Err(Denial::NoRoute),
                DefaultAction::Allow => Ok(Forward {
                    principal: None,
                    credential: Found::default(),
                    sunset: None,
                }),
            };
        };
        // Before any credential or storage work: blocked addresses cost nothing.
        if !route.ip_allowlist.is_empty() && !route.ip_allowlist.admits(req.client_ip) {
            return Err(Denial::IpNotAllowed);
        }
        if route.public {
            return Ok(Forward {
                principal: None,
                credential: Found::default(),
                sunset: None,
            });
        }
        let (credential, found) = credential::extract(&self.policy.credentials, req.headers, req.query);
        let record = self.authenticate(credential, records, now).await?;
        let param = |name: &str| route.pattern.param(name, &segments);
        let tenant = authorize(route, param, &record, req.client_ip)?;
        Ok(Forward {
            sunset: self.sunset(&record, now),
            principal: Some(Principal { record, tenant }),
            credential: found,
        })
    }

    /// From a credential string to a live record: shape and checksum, lookup, constant-time hash
    /// check, then state. Unknown ids and hash mismatches take the same path to `InvalidKey`.
    pub async fn authenticate<S: KvStore>(
        &self,
        credential: Result<String, CredentialError>,
        records: &Records<'_, S>,
        now: Timestamp,
    ) -> Result<Rc<KeyRecord>, Denial> {
        let credential = credential.map_err(|e| match e {
            CredentialError::Missing => Denial::MissingKey,
            CredentialError::Malformed => Denial::MalformedKey,
            CredentialError::Ambiguous => Denial::AmbiguousKey,
        })?;
        let key = ApiKey::parse(&credential, &self.policy.key_prefix).ok_or(Denial::MalformedKey)?;
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
