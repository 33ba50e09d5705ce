//! The route policy: parsed once from the `POLICY` var, validated strictly, then matched per
//! request. An invalid policy is an error, and the edge then answers every request 500
//! `policy_invalid` (fail closed).
//!
//! Path patterns: `/a/{name}/b` where `{name}` matches exactly one non-empty segment, and a
//! final `/*` matches the rest (zero or more segments). Routes are matched on the segments of
//! the canonical path (`crate::path`), which is also exactly what the origin receives.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;

use crate::ip::IpAllowlist;
use crate::key::{Environment, KeyPrefix};
use crate::limits::Limits;
use crate::path::PathRules;
pub(crate) use crate::path::percent_decode;
use crate::scope::{ScopeTemplate, is_segment};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
    Allow,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default)]
    default: DefaultAction,
    key_prefix: Option<String>,
    #[serde(default)]
    credentials: CredentialDoc,
    cache_ttl_seconds: Option<u32>,
    negative_cache_ttl_seconds: Option<u32>,
    /// How often an isolate asks for the registry's revocation feed, at most.
    revocation_poll_ms: Option<u32>,
    expiry_warning_seconds: Option<u32>,
    realm: Option<String>,
    /// Allow `;` in path segments (matrix parameters). Off by default.
    #[serde(default)]
    allow_semicolon_in_path: bool,
    #[serde(default)]
    forwarding: ForwardingDoc,
    route_mode: Option<RouteModeDoc>,
    #[serde(default)]
    admin: AdminDoc,
    #[serde(default)]
    tokens: TokensDoc,
    #[serde(default)]
    limits: crate::limits::LimitsDoc,
    #[serde(default)]
    usage: UsageDoc,
    #[serde(default)]
    routes: Vec<RouteDoc>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UsageDoc {
    flush_seconds: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokensDoc {
    ttl_seconds: Option<u32>,
    issuer: Option<String>,
    audience: Option<String>,
    assertion: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForwardingDoc {
    #[serde(default)]
    strip_headers: Vec<String>,
    #[serde(default)]
    keep_client_address_headers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteModeDoc {
    hostnames: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AdminDoc {
    #[serde(default)]
    ip_allowlist: Vec<String>,
    #[serde(default)]
    hostnames: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorsDoc {
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    max_age_seconds: Option<u32>,
    #[serde(default)]
    allow_credentials: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CredentialDoc {
    bearer_header: Option<String>,
    api_key_header: Option<String>,
    query_param: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    methods: Option<Vec<String>>,
    path: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    any_scopes: Vec<String>,
    #[serde(default)]
    ip_allowlist: Vec<String>,
    environments: Option<Vec<Environment>>,
    tenant_param: Option<String>,
    #[serde(default)]
    public: bool,
    cors: Option<CorsDoc>,
    rate_tier: Option<String>,
    cost: Option<u64>,
}

/// Where credentials are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    /// Header carrying `Bearer <key>`, lowercase.
    pub bearer_header: String,
    /// Header carrying the bare key, lowercase.
    pub api_key_header: String,
    /// Query parameter carrying the key; off (`None`) unless the policy opts in.
    pub query_param: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub default: DefaultAction,
    pub key_prefix: KeyPrefix,
    pub credentials: CredentialConfig,
    pub cache_ttl_seconds: u32,
    pub negative_cache_ttl_seconds: u32,
    /// An isolate asks for the registry's revocation feed at most this often (milliseconds).
    pub revocation_poll_ms: u32,
    pub expiry_warning_seconds: u32,
    pub realm: String,
    pub path_rules: PathRules,
    pub forwarding: Forwarding,
    pub tokens: TokenPolicy,
    /// Rate-limit tiers, the failed-authentication limiter, and what a limiter error means.
    pub limits: Limits,
    /// Each isolate hands its usage counts to the registry at most this often (seconds).
    pub usage_flush_seconds: u32,
    /// Route mode: the worker runs on a Cloudflare route in front of its own origin, and serves
    /// only these hostnames (lowercase; `host:port` for a non-default port). `None`: forward to
    /// the `ORIGIN` var.
    pub route_mode: Option<Vec<String>>,
    pub admin: AdminFence,
    pub routes: Vec<Route>,
    index: RouteIndex,
}

/// What the forwarded request may carry beyond the defaults (see `crate::forward`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// More header names to strip, normalised (lowercase, `_` and `.` read as `-`).
    pub strip_headers: Vec<String>,
    /// Keep the client's own `X-Forwarded-For`, `X-Real-IP` and `Forwarded`.
    pub keep_client_address_headers: bool,
}

/// Short-lived tokens (`POST /oauth/token`) and the signed principal for the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// A token's lifetime (never beyond its key's).
    pub ttl_seconds: u32,
    /// `iss` of every token and assertion.
    pub issuer: String,
    /// `aud` of a token that names no tenant.
    pub audience: String,
    /// Forward `X-Key-Assertion` (a 60-second signed principal) with authenticated requests.
    pub assertion: bool,
}

/// Where the admin API answers at all. Outside it, `/admin/*` is a plain 404.
#[derive(Debug, Clone, Default)]
pub struct AdminFence {
    pub ip_allowlist: IpAllowlist,
    /// Lowercase hostnames; empty means any.
    pub hostnames: Vec<String>,
}

impl AdminFence {
    /// Is `host` one of the admin hostnames? Those serve the admin API and console only (and
    /// `/healthz`): nothing is forwarded there, so no origin page runs in the console's origin.
    pub fn dedicated(&self, host: &str) -> bool {
        self.hostnames.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    pub fn admits(&self, host: &str, ip: Option<crate::ip::ClientIp>) -> bool {
        (self.hostnames.is_empty() || self.hostnames.iter().any(|h| h.eq_ignore_ascii_case(host)))
            && (self.ip_allowlist.is_empty() || self.ip_allowlist.admits(ip))
    }
}

/// A route's CORS policy: preflights are answered at the edge, never forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), or `*`.
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u32,
    pub allow_credentials: bool,
}

impl Cors {
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// A segment trie over the route patterns, so a lookup visits only the routes whose pattern can
/// match the path's shape (literal segments, `{param}`s, a final `/*`), however many routes
/// share a prefix. Each trie node is one pattern prefix, so a lookup visits a node at most once,
/// and it allocates nothing.
#[derive(Debug, Clone)]
struct RouteIndex {
    /// The arena; node 0 is the root (the empty prefix).
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone)]
struct TrieNode {
    /// Children by literal segment.
    lits: Lits,
    /// The child for a `{param}` segment (any one segment).
    param: Option<usize>,
    /// Routes whose pattern ends here, matching only when the path ends here too (ascending).
    end: Vec<usize>,
    /// Routes whose pattern ends here with `/*`: any remaining segments, or none (ascending).
    rest: Vec<usize>,
    /// The smallest route index in this subtree, to skip subtrees that cannot beat a match.
    min: usize,
}

impl TrieNode {
    fn new() -> Self {
        TrieNode {
            lits: Lits::Few(Vec::new()),
            param: None,
            end: Vec::new(),
            rest: Vec::new(),
            min: usize::MAX,
        }
    }
}

/// A node's literal children: a short list is scanned, a long one hashed (services under one
/// prefix), so the cost of a step does not grow with the number of siblings.
#[derive(Debug, Clone)]
enum Lits {
    Few(Vec<(Box<str>, usize)>),
    Many(HashMap<Box<str>, usize>),
}

impl Lits {
    /// Above this many children, a node hashes them.
    const FEW: usize = 8;

    fn get(&self, seg: &str) -> Option<usize> {
        match self {
            Lits::Few(list) => list.iter().find(|(k, _)| k.as_ref() == seg).map(|&(_, c)| c),
            Lits::Many(map) => map.get(seg).copied(),
        }
    }

    fn insert(&mut self, seg: &str, child: usize) {
        match self {
            Lits::Few(list) if list.len() < Self::FEW => list.push((seg.into(), child)),
            Lits::Few(list) => {
                let mut map: HashMap<Box<str>, usize> = std::mem::take(list).into_iter().collect();
                map.insert(seg.into(), child);
                *self = Lits::Many(map);
            }
            Lits::Many(map) => {
                map.insert(seg.into(), child);
            }
        }
    }
}

impl Default for RouteIndex {
    fn default() -> Self {
        RouteIndex {
            nodes: vec![TrieNode::new()],
        }
    }
}

impl RouteIndex {
    fn new(routes: &[Route]) -> Self {
        let mut index = RouteIndex::default();
        for r in routes {
            index.insert(&r.pattern, r.index);
        }
        index
    }

    fn insert(&mut self, pattern: &RoutePattern, route: usize) {
        let mut at = 0;
        self.note_min(at, route);
        for seg in &pattern.segs {
            at = match seg {
                PSeg::Lit(l) => self.lit_child(at, l),
                PSeg::Param(_) => self.param_child(at),
            };
            self.note_min(at, route);
        }
        if let Some(node) = self.nodes.get_mut(at) {
            let list = if pattern.rest {
                &mut node.rest
            } else {
                &mut node.end
            };
            // Routes arrive in file order, but keep the list sorted whatever the order.
            let pos = list.partition_point(|&i| i < route);
            list.insert(pos, route);
        }
    }

    fn note_min(&mut self, at: usize, route: usize) {
        if let Some(node) = self.nodes.get_mut(at) {
            node.min = node.min.min(route);
        }
    }

    fn lit_child(&mut self, at: usize, lit: &str) -> usize {
        let fresh = self.nodes.len();
        let Some(node) = self.nodes.get_mut(at) else {
            return fresh;
        };
        match node.lits.get(lit) {
            Some(child) => child,
            None => {
                node.lits.insert(lit, fresh);
                self.nodes.push(TrieNode::new());
                fresh
            }
        }
    }

    fn param_child(&mut self, at: usize) -> usize {
        let fresh = self.nodes.len();
        let Some(node) = self.nodes.get_mut(at) else {
            return fresh;
        };
        match node.param {
            Some(child) => child,
            None => {
                node.param = Some(fresh);
                self.nodes.push(TrieNode::new());
                fresh
            }
        }
    }

    /// The smallest route index whose pattern matches `path` and for which `accept` holds.
    fn first<S: AsRef<str>>(&self, path: &[S], accept: &impl Fn(usize) -> bool) -> Option<usize> {
        let mut best = usize::MAX;
        self.visit(0, path, accept, &mut best);
        (best != usize::MAX).then_some(best)
    }

    /// Walk the subtree at `at` with `path` the segments still to match, lowering `best`.
    fn visit<S: AsRef<str>>(&self, at: usize, path: &[S], accept: &impl Fn(usize) -> bool, best: &mut usize) {
        let Some(node) = self.nodes.get(at) else {
            return;
        };
        if node.min >= *best {
            return;
        }
        let mut take = |list: &[usize]| {
            if let Some(&i) = list.iter().take_while(|&&i| i < *best).find(|&&i| accept(i)) {
                *best = i;
            }
        };
        take(&node.rest);
        let Some((seg, tail)) = path.split_first() else {
            take(&node.end);
            return;
        };
        if let Some(child) = node.lits.get(seg.as_ref()) {
            self.visit(child, tail, accept, best);
        }
        if let Some(child) = node.param {
            self.visit(child, tail, accept, best);
        }
    }
}

pub const DEFAULT_CACHE_TTL: u32 = 10;
pub const MAX_CACHE_TTL: u32 = 300;
pub const DEFAULT_TOKEN_TTL: u32 = 600;
pub const MAX_TOKEN_TTL: u32 = 3600;
/// The revocation feed's poll interval: every isolate learns of a revocation within this plus
/// the feed's one-second cache.
pub const DEFAULT_REVOCATION_POLL_MS: u32 = 1_000;
/// Polling faster than the feed's cache TTL buys nothing; slower than a minute is the KV bound.
pub const MIN_REVOCATION_POLL_MS: u32 = 100;
pub const MAX_REVOCATION_POLL_MS: u32 = 60_000;
pub const DEFAULT_NEGATIVE_TTL: u32 = 5;
/// Usage counts reach the registry at most once a minute per isolate by default.
pub const DEFAULT_USAGE_FLUSH_SECONDS: u32 = 60;
pub const MAX_USAGE_FLUSH_SECONDS: u32 = 3_600;
pub const DEFAULT_EXPIRY_WARNING: u32 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
enum PSeg {
    Lit(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    segs: Vec<PSeg>,
    rest: bool,
    source: String,
}

impl RoutePattern {
    pub fn parse(path: &str) -> Result<Self, PolicyError> {
        let err = |why: &str| PolicyError(format!("path {path:?}: {why}"));
        let body = path.strip_prefix('/').ok_or_else(|| err("must start with /"))?;
        let (body, rest) = match body.strip_suffix('*') {
            Some(b) if b.is_empty() || b.ends_with('/') => (b.trim_end_matches('/'), true),
            Some(_) => return Err(err("`*` is only allowed as a whole final segment")),
            None => (body, false),
        };
        let mut segs = Vec::new();
        let mut names = HashSet::new();
        for seg in body.split('/').filter(|s| !s.is_empty()) {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if !is_segment(name) {
                    return Err(err(&format!("invalid parameter name {name:?}")));
                }
                if !names.insert(name) {
                    return Err(err(&format!("parameter {name:?} appears twice")));
                }
                segs.push(PSeg::Param(name.to_owned()));
            } else if seg.contains(['{', '}', '*', '%', '?', '#']) {
                return Err(err(&format!("invalid segment {seg:?}")));
            } else {
                segs.push(PSeg::Lit(seg.to_owned()));
            }
        }
        Ok(RoutePattern {
            segs,
            rest,
            source: path.to_owned(),
        })
    }

    /// The pattern as written in the policy.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.segs.iter().any(|s| matches!(s, PSeg::Param(p) if p == name))
    }

    /// Could a path of `len` segments match?
    fn has_len_for(&self, len: usize) -> bool {
        len == self.segs.len() || (self.rest && len > self.segs.len())
    }

    /// Do these decoded path segments match? Parameters are read with [`RoutePattern::param`].
    pub fn is_match<S: AsRef<str>>(&self, path: &[S]) -> bool {
        self.has_len_for(path.len())
            && self.segs.iter().zip(path).all(|(p, s)| match p {
                PSeg::Lit(l) => l == s.as_ref(),
                PSeg::Param(_) => true,
            })
    }

    /// The value of path parameter `name` in a path this pattern matched (names are unique
    /// within a pattern).
    pub fn param<'p, S: AsRef<str>>(&self, name: &str, path: &'p [S]) -> Option<&'p str> {
        self.segs
            .iter()
            .zip(path)
            .find_map(|(p, s)| matches!(p, PSeg::Param(n) if n == name).then(|| s.as_ref()))
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub index: usize,
    pub methods: Option<Vec<String>>,
    pub pattern: RoutePattern,
    pub scopes: Vec<ScopeTemplate>,
    pub any_scopes: Vec<ScopeTemplate>,
    pub ip_allowlist: IpAllowlist,
    pub environments: Option<Vec<Environment>>,
    pub tenant_param: Option<String>,
    pub public: bool,
    pub cors: Option<Cors>,
    /// The rate tier of keys that name none.
    pub rate_tier: Option<String>,
    /// Credits a request spends from a metered key (default 1).
    pub cost: u64,
}

impl Route {
    /// Every method, `OPTIONS` included, matches only when the route lists it (or lists none).
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }
}

/// A header name as CGI, WSGI and PHP origins read it: lowercase, with `_` and `.` as `-`.
pub fn normalize_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

fn hostname_list(list: Vec<String>, what: &str) -> Result<Vec<String>, PolicyError> {
    list.into_iter()
        .map(|h| {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
            if ok {
                Ok(h.to_ascii_lowercase())
            } else {
                Err(PolicyError(format!("{what}: {h:?} is not a hostname")))
            }
        })
        .collect()
}

fn header_name(raw: Option<String>, default: &str, what: &str) -> Result<String, PolicyError> {
    let name = raw.unwrap_or_else(|| default.to_owned());
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(PolicyError(format!("{what} {name:?} is not a valid header name")));
    }
    Ok(name.to_ascii_lowercase())
}

impl Policy {
    /// Parse and validate. Every problem is an error: nothing is skipped or fixed up.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, PolicyError> {
        let doc: PolicyDoc = match value {
            // `--var POLICY:...` and secrets arrive as strings.
            serde_json::Value::String(s) => serde_json::from_str(s),
            other => serde_json::from_value(other.clone()),
        }
        .map_err(|e| PolicyError(e.to_string()))?;
        let key_prefix = match doc.key_prefix {
            None => KeyPrefix::default(),
            Some(p) => KeyPrefix::parse(&p)
                .ok_or_else(|| PolicyError(format!("key_prefix {p:?}: use 1-16 of [a-z0-9]")))?,
        };
        let credentials = CredentialConfig {
            bearer_header: header_name(doc.credentials.bearer_header, "Authorization", "bearer_header")?,
            api_key_header: header_name(doc.credentials.api_key_header, "X-API-Key", "api_key_header")?,
            query_param: match doc.credentials.query_param {
                Some(q) if is_segment(&q) => Some(q),
                Some(q) => return Err(PolicyError(format!("query_param {q:?} is not a valid name"))),
                None => None,
            },
        };
        if credentials.bearer_header == credentials.api_key_header {
            return Err(PolicyError("bearer_header and api_key_header must differ".into()));
        }
        let cache_ttl_seconds = doc.cache_ttl_seconds.unwrap_or(DEFAULT_CACHE_TTL);
        if cache_ttl_seconds > MAX_CACHE_TTL {
            return Err(PolicyError(format!(
                "cache_ttl_seconds must be at most {MAX_CACHE_TTL}"
            )));
        }
        let negative_cache_ttl_seconds = doc.negative_cache_ttl_seconds.unwrap_or(DEFAULT_NEGATIVE_TTL);
        if negative_cache_ttl_seconds > MAX_CACHE_TTL {
            return Err(PolicyError(format!(
                "negative_cache_ttl_seconds must be at most {MAX_CACHE_TTL}"
            )));
        }
        let revocation_poll_ms = doc.revocation_poll_ms.unwrap_or(DEFAULT_REVOCATION_POLL_MS);
        if !(MIN_REVOCATION_POLL_MS..=MAX_REVOCATION_POLL_MS).contains(&revocation_poll_ms) {
            return Err(PolicyError(format!(
                "revocation_poll_ms must be between {MIN_REVOCATION_POLL_MS} and {MAX_REVOCATION_POLL_MS}"
            )));
        }
        let realm = doc.realm.unwrap_or_else(|| "keygate".to_owned());
        let ttl_seconds = doc.tokens.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL);
        if !(1..=MAX_TOKEN_TTL).contains(&ttl_seconds) {
            return Err(PolicyError(format!(
                "tokens.ttl_seconds must be between 1 and {MAX_TOKEN_TTL}"
            )));
        }
        let issuer = doc
            .tokens
            .issuer
            .unwrap_or_else(|| format!("urn:keygate:{realm}"));
        let audience = doc.tokens.audience.unwrap_or_else(|| issuer.clone());
        for (name, v) in [("issuer", &issuer), ("audience", &audience)] {
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(PolicyError(format!(
                    "tokens.{name} must be 1 to 256 printable characters"
                )));
            }
        }
        let tokens = TokenPolicy {
            ttl_seconds,
            issuer,
            audience,
            assertion: doc.tokens.assertion.unwrap_or(true),
        };
        if realm.is_empty()
            || realm.len() > 64
            || !realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(PolicyError(format!(
                "realm {realm:?}: use 1-64 printable characters without quotes"
            )));
        }
        let routes = doc
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| Route::from_doc(i, r).map_err(|e| PolicyError(format!("routes[{i}]: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let limits = Limits::from_doc(doc.limits)?;
        for r in &routes {
            if let Some(t) = &r.rate_tier
                && !limits.tiers.contains_key(t)
            {
                return Err(PolicyError(format!(
                    "routes[{}]: rate_tier {t:?} is not a tier of limits.tiers",
                    r.index
                )));
            }
        }
        let usage_flush_seconds = doc.usage.flush_seconds.unwrap_or(DEFAULT_USAGE_FLUSH_SECONDS);
        if !(1..=MAX_USAGE_FLUSH_SECONDS).contains(&usage_flush_seconds) {
            return Err(PolicyError(format!(
                "usage.flush_seconds must be between 1 and {MAX_USAGE_FLUSH_SECONDS}"
            )));
        }
        let forwarding = Forwarding {
            strip_headers: doc
                .forwarding
                .strip_headers
                .iter()
                .map(|h| {
                    let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':');
                    if ok {
                        Ok(normalize_header_name(h))
                    } else {
                        Err(PolicyError(format!(
                            "forwarding.strip_headers: {h:?} is not a header name"
                        )))
                    }
                })
                .collect::<Result<_, _>>()?,
            keep_client_address_headers: doc.forwarding.keep_client_address_headers,
        };
        let route_mode = match doc.route_mode {
            None => None,
            Some(rm) if rm.hostnames.is_empty() => {
                return Err(PolicyError(
                    "route_mode.hostnames is empty: name the hostnames the worker serves".into(),
                ));
            }
            Some(rm) => Some(hostname_list(rm.hostnames, "route_mode.hostnames")?),
        };
        let admin = AdminFence {
            ip_allowlist: IpAllowlist::parse(&doc.admin.ip_allowlist)
                .map_err(|(i, e)| PolicyError(format!("admin.ip_allowlist[{i}]: {e}")))?,
            hostnames: hostname_list(doc.admin.hostnames, "admin.hostnames")?,
        };
        if let Some(h) = route_mode.iter().flatten().find(|h| admin.hostnames.contains(h)) {
            return Err(PolicyError(format!(
                "{h:?} is both an admin hostname and a route_mode hostname: an admin hostname serves only the admin API and console"
            )));
        }
        Ok(Policy {
            path_rules: PathRules {
                allow_semicolon: doc.allow_semicolon_in_path,
            },
            forwarding,
            tokens,
            limits,
            usage_flush_seconds,
            route_mode,
            admin,
            default: doc.default,
            key_prefix,
            credentials,
            cache_ttl_seconds,
            negative_cache_ttl_seconds,
            revocation_poll_ms,
            expiry_warning_seconds: doc.expiry_warning_seconds.unwrap_or(DEFAULT_EXPIRY_WARNING),
            realm,
            index: RouteIndex::new(&routes),
            routes,
        })
    }

    /// The first route, in file order, whose method and path match. Its path parameters are
    /// read from the same segments with [`RoutePattern::param`].
    pub fn route<S: AsRef<str>>(&self, method: &str, path: &[S]) -> Option<&Route> {
        let allowed = |i: usize| self.routes.get(i).is_some_and(|r| r.allows_method(method));
        self.index.first(path, &allowed).and_then(|i| self.routes.get(i))
    }
}

impl Cors {
    fn from_doc(c: CorsDoc) -> Result<Self, PolicyError> {
        if c.allow_origins.is_empty() {
            return Err(PolicyError("cors.allow_origins is empty".into()));
        }
        for o in &c.allow_origins {
            let ok = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://"))
                    && !o.ends_with('/')
                    && o.bytes().all(|b| b.is_ascii_graphic() && b != b','));
            if !ok {
                return Err(PolicyError(format!(
                    "cors.allow_origins: {o:?} is not an origin (scheme://host[:port]) or `*`"
                )));
            }
        }
        if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
            return Err(PolicyError(
                "cors: allow_credentials cannot be used with `*`".into(),
            ));
        }
        for h in c.allow_headers.iter().chain(&c.expose_headers) {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(PolicyError(format!("cors: {h:?} is not a header name")));
            }
        }
        Ok(Cors {
            allow_origins: c.allow_origins,
            allow_headers: c.allow_headers,
            expose_headers: c.expose_headers,
            max_age_seconds: c.max_age_seconds.unwrap_or(600).min(86_400),
            allow_credentials: c.allow_credentials,
        })
    }
}

impl Route {
    fn from_doc(index: usize, r: RouteDoc) -> Result<Self, PolicyError> {
        let pattern = RoutePattern::parse(&r.path)?;
        let templates = |list: &[String], what: &str| -> Result<Vec<ScopeTemplate>, PolicyError> {
            list.iter()
                .map(|s| {
                    let t = ScopeTemplate::parse(s).map_err(|e| PolicyError(format!("{what}: {e}")))?;
                    if let Some(p) = t.params().find(|p| !pattern.has_param(p)) {
                        return Err(PolicyError(format!(
                            "{what}: {{{p}}} is not a parameter of path {:?}",
                            r.path
                        )));
                    }
                    Ok(t)
                })
                .collect()
        };
        let scopes = templates(&r.scopes, "scopes")?;
        let any_scopes = templates(&r.any_scopes, "any_scopes")?;
        let ip_allowlist = IpAllowlist::parse(&r.ip_allowlist)
            .map_err(|(i, e)| PolicyError(format!("ip_allowlist[{i}]: {e}")))?;
        if let Some(t) = &r.tenant_param
            && !pattern.has_param(t)
        {
            return Err(PolicyError(format!(
                "tenant_param {t:?} is not a parameter of path {:?}",
                r.path
            )));
        }
        let methods = match r.methods {
            None => None,
            Some(ms) if ms.is_empty() => {
                return Err(PolicyError("methods is empty; omit it for any method".into()));
            }
            Some(ms) => {
                if let Some(bad) = ms
                    .iter()
                    .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
                {
                    return Err(PolicyError(format!("invalid method {bad:?}")));
                }
                Some(ms.into_iter().map(|m| m.to_ascii_uppercase()).collect())
            }
        };
        if r.public
            && (!scopes.is_empty()
                || !any_scopes.is_empty()
                || r.environments.is_some()
                || r.tenant_param.is_some())
        {
            return Err(PolicyError(
                "a public route takes no key, so it cannot require scopes, environments or a tenant".into(),
            ));
        }
        if let Some(envs) = &r.environments
            && envs.is_empty()
        {
            return Err(PolicyError("environments is empty: no key could pass".into()));
        }
        let cors = r.cors.map(Cors::from_doc).transpose()?;
        if r.public && (r.rate_tier.is_some() || r.cost.is_some()) {
            return Err(PolicyError(
                "a public route takes no key, so it has no rate tier or cost (limits apply per key)".into(),
            ));
        }
        let cost = r.cost.unwrap_or(1);
        if !(1..=crate::credits::MAX_CREDITS).contains(&cost) {
            return Err(PolicyError("cost must be between 1 and 1000000000000".into()));
        }
        Ok(Route {
            rate_tier: r.rate_tier,
            cost,
            cors,
            index,
            methods,
            pattern,
            scopes,
            any_scopes,
            ip_allowlist,
            environments: r.environments,
            tenant_param: r.tenant_param,
            public: r.public,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::path::canonicalize;
    use std::borrow::Cow;

    fn seg(p: &str) -> Vec<Cow<'_, str>> {
        canonicalize(p, PathRules::default()).unwrap().segments
    }

    #[test]
    fn an_admin_hostname_is_not_a_route_mode_hostname() {
        let p = Policy::from_json(&json!({
            "route_mode": {"hostnames": ["api.example.com", "admin.example.com"]},
            "admin": {"hostnames": ["admin.example.com"]}
        }));
        assert!(p.unwrap_err().0.contains("admin.example.com"));
        let p = Policy::from_json(&json!({"admin": {"hostnames": ["admin.example.com"]}})).unwrap();
        assert!(p.admin.dedicated("ADMIN.example.com"));
        assert!(!p.admin.dedicated("api.example.com"));
    }

    #[test]
    fn patterns() {
        let p = RoutePattern::parse("/keyrings/{ring}/encrypt").unwrap();
        let path = seg("/keyrings/comms/encrypt");
        assert!(p.is_match(&path));
        assert_eq!(p.param("ring", &path), Some("comms"));
        assert!(!p.is_match(&seg("/keyrings/comms")));
        assert!(!p.is_match(&seg("/keyrings/comms/encrypt/x")));
        let rest = RoutePattern::parse("/public/*").unwrap();
        assert!(rest.is_match(&seg("/public/a/b")));
        assert!(rest.is_match(&seg("/public")));
        assert!(!rest.is_match(&seg("/publicity")));
        assert!(RoutePattern::parse("/*").unwrap().is_match(&seg("/")));
        for bad in ["nope", "/a*", "/{x}/{x}", "/{a b}", "/a/*/b", "/%41"] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decoding_and_doubled_slashes_cannot_dodge_a_route() {
        let p = RoutePattern::parse("/internal/*").unwrap();
        assert!(p.is_match(&seg("/%69nternal/x")));
        assert!(p.is_match(&seg("//internal//x")));
        assert!(canonicalize("/a/%zz", PathRules::default()).is_err());
    }

    #[test]
    fn policy_validation_fails_closed() {
        let ok = json!({"routes": [{"path": "/k/{ring}", "scopes": ["keyring.{ring}.read"], "tenant_param": "ring"}]});
        assert!(Policy::from_json(&ok).is_ok());
        let bad = [
            json!({"routes": [{"path": "/k", "scopes": ["keyring.{ring}.read"]}]}),
            json!({"routes": [{"path": "/k", "ip_allowlist": ["10.0.0.1/8"]}]}),
            json!({"routes": [{"path": "/k", "surprise": true}]}),
            json!({"routes": [{"path": "k"}]}),
            json!({"routes": [{"path": "/k", "tenant_param": "org"}]}),
            json!({"routes": [{"path": "/k", "public": true, "scopes": ["a"]}]}),
            json!({"routes": [{"path": "/k", "scopes": ["lic*:read"]}]}),
            json!({"routes": [{"path": "/k", "methods": []}]}),
            json!({"default": "maybe"}),
            json!({"key_prefix": "Has_Underscore"}),
            json!({"credentials": {"bearer_header": "X-Key", "api_key_header": "x-key"}}),
            json!({"cache_ttl_seconds": 100000}),
            json!({"revocation_poll_ms": 10}),
            json!({"tokens": {"ttl_seconds": 3601}}),
            json!({"tokens": {"ttl_seconds": 0}}),
            json!({"tokens": {"lifetime": 60}}),
            json!({"revocation_poll_ms": 600000}),
        ];
        for b in bad {
            assert!(Policy::from_json(&b).is_err(), "{b}");
        }
        // A string holding JSON (from `--var`) is accepted too.
        assert!(Policy::from_json(&json!(ok.to_string())).is_ok());
    }

    #[test]
    fn the_route_index_agrees_with_a_linear_scan() {
        let p = Policy::from_json(&json!({"routes": [
            {"path": "/a/x", "scopes": ["s"]},
            {"path": "/{any}/x", "scopes": ["s"]},
            {"methods": ["GET"], "path": "/a/*", "scopes": ["s"]},
            {"path": "/b/{y}", "scopes": ["s"]},
            {"path": "/*", "public": true},
            {"path": "/a/z", "scopes": ["s"]}
        ]}))
        .unwrap();
        for path in ["/", "/a", "/a/x", "/a/z", "/b/x", "/b/q", "/c/x", "/c", "/a/x/y"] {
            for method in ["GET", "POST"] {
                let segs = seg(path);
                let linear = p
                    .routes
                    .iter()
                    .find(|r| r.allows_method(method) && r.pattern.is_match(&segs));
                assert_eq!(
                    p.route(method, &segs).map(|r| r.index),
                    linear.map(|r| r.index),
                    "{method} {path}"
                );
            }
        }
    }

    /// One generated route: its methods (none: any), its segments (`None` is a parameter), and
    /// whether it ends in `/*`.
    type GenRoute = (Option<Vec<&'static str>>, Vec<Option<&'static str>>, bool);

    fn gen_route() -> impl Strategy<Value = GenRoute> {
        let method = prop::sample::select(vec!["GET", "POST", "put"]);
        // Mostly three literals, so routes overlap; sometimes more, so a node hashes its children.
        let seg = prop_oneof![
            6 => prop::sample::select(vec!["a", "b", "c"]).prop_map(Some),
            2 => prop::sample::select(LITS.to_vec()).prop_map(Some),
            3 => Just(None),
        ];
        (
            prop::option::of(prop::collection::vec(method, 1..3)),
            prop::collection::vec(seg, 0..4),
            any::<bool>(),
        )
    }

    const LITS: [&str; 12] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];

    fn path_seg() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            6 => prop::sample::select(vec!["a", "b", "c"]),
            2 => prop::sample::select(LITS.to_vec()),
            1 => prop::sample::select(vec!["z", ""]),
        ]
    }

    fn gen_policy(routes: &[GenRoute]) -> Policy {
        let routes: Vec<serde_json::Value> = routes
            .iter()
            .map(|(methods, segs, rest)| {
                let mut path: String = segs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match s {
                        Some(lit) => format!("/{lit}"),
                        None => format!("/{{p{i}}}"),
                    })
                    .collect();
                if *rest {
                    path.push_str("/*");
                } else if path.is_empty() {
                    path.push('/');
                }
                match methods {
                    Some(ms) => json!({"methods": ms, "path": path}),
                    None => json!({"path": path}),
                }
            })
            .collect();
        Policy::from_json(&json!({ "routes": routes })).unwrap()
    }

    proptest! {
        #[test]
        fn the_route_trie_agrees_with_a_linear_scan(
            routes in prop::collection::vec(gen_route(), 0..40),
            paths in prop::collection::vec(prop::collection::vec(path_seg(), 0..6), 1..16),
        ) {
            let p = gen_policy(&routes);
            for path in &paths {
                for method in ["GET", "post", "PUT", "DELETE"] {
                    let linear = p
                        .routes
                        .iter()
                        .find(|r| r.allows_method(method) && r.pattern.is_match(path));
                    prop_assert_eq!(
                        p.route(method, path).map(|r| r.index),
                        linear.map(|r| r.index),
                        "{} {:?}", method, path
                    );
                }
            }
        }
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let p = Policy::from_json(&json!({"routes": [
            {"methods": ["POST"], "path": "/a/*", "scopes": ["w"]},
            {"path": "/a/{x}", "scopes": ["r"]},
            {"path": "/a/*", "public": true}
        ]}))
        .unwrap();
        assert_eq!(p.route("post", &seg("/a/b")).unwrap().index, 0);
        assert_eq!(p.route("GET", &seg("/a/b")).unwrap().index, 1);
        assert_eq!(p.route("GET", &seg("/a/b/c")).unwrap().index, 2);
        assert!(p.route("GET", &seg("/b")).is_none());
    }

    #[test]
    fn route_then_params() {
        let p = Policy::from_json(&json!({"routes": [
            {"methods": ["POST"], "path": "/o/{org}/k/{ring}/encrypt", "scopes": ["k.{ring}.e"]},
            {"path": "/o/{org}/k/{ring}", "tenant_param": "org", "scopes": ["k.{ring}.r"]},
            {"path": "/o/{org}/*", "tenant_param": "org", "scopes": ["o.{org}"]},
            {"path": "/*", "public": true}
        ]}))
        .unwrap();
        for (method, path, index, org, ring) in [
            ("POST", "/o/acme/k/comms/encrypt", 0, Some("acme"), Some("comms")),
            ("get", "/o/acme/k/comms/encrypt", 2, Some("acme"), None),
            ("GET", "//o/acme/k/c%6Fmms", 1, Some("acme"), Some("comms")),
            ("GET", "/o/acme", 2, Some("acme"), None),
            ("GET", "/", 3, None, None),
        ] {
            let segs = seg(path);
            let route = p.route(method, &segs).unwrap();
            assert_eq!(route.index, index, "{method} {path}");
            assert_eq!(route.pattern.param("org", &segs), org, "{path}");
            assert_eq!(route.pattern.param("ring", &segs), ring, "{path}");
            assert_eq!(route.pattern.param("nope", &segs), None, "{path}");
        }
    }
}
