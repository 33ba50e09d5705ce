//! What the origin receives, as plain values: the target URL (always from configuration, never
//! from the client), the query string and the headers. The edge only copies the result into a
//! `Request`.
//!
//! Headers the origin receives:
//! - the client's headers, minus:
//!   - `Host` (the runtime sets it from the target URL);
//!   - every name that reads as `x-key-*` once lowercased with `_` and `.` taken as `-`
//!     (`X_Key_Scopes`, `X-Key.Tenant`), because CGI, WSGI and PHP origins read them so;
//!   - method-override, URL-rewrite and forwarded-URL headers ([`REWRITE_HEADERS`], plus the
//!     policy's `forwarding.strip_headers`), compared the same way;
//!   - the client-address headers ([`CLIENT_ADDRESS_HEADERS`]) unless the policy keeps them;
//!   - the header that carried the credential, and any header whose name or value holds
//!     something shaped like one of this gateway's keys (also percent-encoded), on every route;
//!   - the hop header, which is re-added with this gateway's realm appended;
//!   - on `GET` and `HEAD`, which never carry a body, the headers that describe one;
//! - the principal headers on authenticated routes: `X-Key-Id`, `X-Key-Scopes`,
//!   `X-Key-Environment`, `X-Key-Tenant` (routes with a `tenant_param`) and `X-Key-Client-Ip`;
//! - the address the gateway checked as `CF-Connecting-IP`, `X-Forwarded-For`, `X-Real-IP` and
//!   `Forwarded` (unless the policy keeps the client's own), and nothing of the kind when the
//!   gateway had no valid address.

use crate::decide::{Forward, HOP_HEADER};
use crate::ip::ClientIp;
use crate::key::holds_secret;
use crate::policy::{Policy, normalize_header_name};
use crate::token::TokenKeys;

/// Headers that make framework origins change the method, the path, or the URLs they build.
pub const REWRITE_HEADERS: [&str; 10] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

/// Headers that claim a client address. Replaced by the address the gateway checked.
pub const CLIENT_ADDRESS_HEADERS: [&str; 7] = [
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
];

/// Headers that describe a body: dropped from `GET` and `HEAD`, which are forwarded without one.
pub const BODY_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
];

/// Where allowed requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The `ORIGIN` var: scheme, host, optional port and optional path prefix, no trailing `/`.
    Origin(String),
    /// Route mode: the request's own URL, for the hostnames the policy names (checked before).
    RouteMode,
}

impl Target {
    /// From the `ORIGIN` var and the policy. Exactly one of them must say where requests go.
    pub fn from_config(origin: Option<&str>, policy: &Policy) -> Result<Target, String> {
        let origin = origin.map(str::trim).filter(|o| !o.is_empty());
        match (origin, &policy.route_mode) {
            (Some(_), Some(_)) => Err(
                "ORIGIN is set and the policy has route_mode: choose one (route mode forwards to the request's own URL)"
                    .into(),
            ),
            (None, None) => Err(
                "ORIGIN is empty and the policy has no route_mode: set ORIGIN to the origin's URL, or list the hostnames of route mode"
                    .into(),
            ),
            (None, Some(_)) => Ok(Target::RouteMode),
            (Some(o), None) => {
                let rest = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"))
                    .ok_or_else(|| format!("ORIGIN {o:?} must start with http:// or https://"))?;
                let host = rest.split('/').next().unwrap_or_default();
                let ok = !host.is_empty()
                    && !rest.contains(['?', '#', '@', '\\'])
                    && rest.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(format!(
                        "ORIGIN {o:?} must be scheme://host[:port][/path], without query, fragment or credentials"
                    ));
                }
                Ok(Target::Origin(o.trim_end_matches('/').to_owned()))
            }
        }
    }

    /// The outbound URL. `scheme` and `authority` (host and non-default port) are the request's
    /// own, used in route mode only, where the authority was checked against the policy's
    /// hostnames; `path` is the canonical encoded path.
    pub fn url(&self, scheme: &str, authority: &str, path: &str, query: Option<&str>) -> String {
        let base = match self {
            Target::Origin(o) => o.clone(),
            Target::RouteMode => format!("{scheme}://{authority}"),
        };
        match query {
            Some(q) => format!("{base}{path}?{q}"),
            None => format!("{base}{path}"),
        }
    }
}

/// What must never reach the origin besides keys (which are always looked for): the admin
/// token, and the tokens the gateway signs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Secrets<'a> {
    pub admin_token: Option<&'a str>,
    pub tokens: Option<&'a TokenKeys>,
}

impl Secrets<'_> {
    /// Whether `text` holds one of the gateway's own tokens ([`TokenKeys::holds_own_token`]).
    fn token_in(&self, text: &str) -> bool {
        self.tokens.is_some_and(|t| t.holds_own_token(text))
    }
}

/// The query string the origin receives: without the credential parameter (when the policy
/// reads keys from the query), without any parameter whose name or value holds a key-shaped
/// string or the admin token, in any encoding, and without any that holds one of the
/// gateway's own tokens.
pub fn outbound_query(policy: &Policy, query: Option<&str>, secrets: Secrets<'_>) -> Option<String> {
    let q = query?;
    let param = policy.credentials.query_param.as_deref();
    let prefix = &policy.key_prefix;
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some(name) != param
                && !holds_secret(pair, prefix, secrets.admin_token)
                && !secrets.token_in(name)
                && !secrets.token_in(value)
                && !secrets.token_in(pair)
        })
        .collect();
    let out = kept.join("&");
    (!out.is_empty()).then_some(out)
}

fn forwarded_for(ip: ClientIp) -> String {
    match ip.addr() {
        std::net::IpAddr::V4(v4) => format!("for={v4}"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The headers the origin receives, in order (see the module doc).
pub fn outbound_headers(
    policy: &Policy,
    incoming: &[(String, String)],
    fwd: &Forward,
    client_ip: Option<ClientIp>,
    bodiless: bool,
    secrets: Secrets<'_>,
) -> Vec<(String, String)> {
    let creds = &policy.credentials;
    let keep_addresses = policy.forwarding.keep_client_address_headers;
    let mut hops: Vec<String> = Vec::new();
    let mut out: Vec<(String, String)> = Vec::with_capacity(incoming.len() + 8);
    for (name, value) in incoming {
        let norm = normalize_header_name(name);
        if norm == HOP_HEADER {
            hops.push(value.clone());
            continue;
        }
        let drop = norm == "host"
            || (bodiless && BODY_HEADERS.contains(&norm.as_str()))
            || norm == "cf-connecting-ip"
            || norm.starts_with("x-key-")
            || REWRITE_HEADERS.contains(&norm.as_str())
            || policy.forwarding.strip_headers.contains(&norm)
            || (!keep_addresses && CLIENT_ADDRESS_HEADERS.contains(&norm.as_str()))
            || (fwd.credential.in_bearer_header && norm == creds.bearer_header)
            || (fwd.credential.in_api_key_header && norm == creds.api_key_header)
            || holds_secret(name, &policy.key_prefix, secrets.admin_token)
            || holds_secret(value, &policy.key_prefix, secrets.admin_token)
            || secrets.token_in(name);
        if drop {
            continue;
        }
        // A cookie list loses only the cookies that hold one of the gateway's tokens (the
        // origin's session cookie beside a token cookie stays); any other header holding one
        // goes whole.
        if norm == "cookie" && secrets.tokens.is_some() {
            let kept: Vec<&str> = value
                .split(';')
                .map(str::trim)
                .filter(|c| !c.is_empty() && !secrets.token_in(c))
                .collect();
            if !kept.is_empty() {
                out.push((name.clone(), kept.join("; ")));
            }
        } else if !secrets.token_in(value) {
            out.push((name.clone(), value.clone()));
        }
    }
    let mut add = |k: &str, v: String| out.push((k.to_owned(), v));
    if let Some(p) = &fwd.principal {
        add("X-Key-Id", p.key_id().as_str().to_owned());
        add("X-Key-Scopes", p.scopes_header());
        add("X-Key-Environment", p.environment().as_str().to_owned());
        if let Some(t) = &p.tenant {
            add("X-Key-Tenant", t.clone());
        }
        if let Some(ip) = client_ip {
            add("X-Key-Client-Ip", ip.to_string());
        }
    }
    if let Some(ip) = client_ip {
        add("CF-Connecting-IP", ip.to_string());
        if !keep_addresses {
            add("X-Forwarded-For", ip.to_string());
            add("X-Real-IP", ip.to_string());
            add("Forwarded", forwarded_for(ip));
        }
    }
    hops.push(policy.realm.clone());
    add("Keygate-Hop", hops.join(", "));
    out
}

/// The signed principal for the origin (`X-Key-Assertion`): a 60-second JWT with the token
/// claims of the caller's key (or token), its `metadata`, and the request's method and path
/// (`htm`, `htu`), so an origin can check with the JWKS that a request came through the gateway
/// and what it was allowed.
pub fn assertion(
    keys: &TokenKeys,
    policy: &Policy,
    principal: &crate::decide::Principal,
    method: &str,
    path: &str,
    now: crate::time::Timestamp,
) -> Option<String> {
    let record = &principal.record;
    let now_s = now.millis().div_euclid(1000);
    let claims = crate::token::AccessClaims {
        iss: policy.tokens.issuer.clone(),
        sub: record.id.clone(),
        aud: policy.tokens.audience.clone(),
        exp: now_s.saturating_add(ASSERTION_SECONDS),
        iat: now_s,
        jti: crate::key::random_hex(8).ok()?,
        scope: principal.scopes_header().replace(',', " "),
        client_id: record.id.clone(),
        environment: record.environment,
        tenants: principal
            .tenant
            .clone()
            .map_or_else(|| record.tenants.clone(), |t| vec![t]),
        ip_allowlist: record.ip_allowlist.clone(),
        ver: record.version,
        rate_tier: None,
        metered: false,
        htm: Some(method.to_owned()),
        htu: Some(path.to_owned()),
        metadata: (!record.metadata.is_empty()).then(|| record.metadata.clone()),
    };
    keys.sign(crate::token::ASSERTION_TYP, &claims).ok()
}

/// How long an assertion is good for.
pub const ASSERTION_SECONDS: i64 = 60;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Found;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    fn policy(extra: serde_json::Value) -> Policy {
        let mut doc = json!({"routes": [{"path": "/p/*", "public": true}]});
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        Policy::from_json(&doc).unwrap()
    }

    fn public_forward() -> Forward {
        Forward {
            path: "/p/x".into(),
            principal: None,
            credential: Found::default(),
            sunset: None,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(out: &[(String, String)]) -> Vec<String> {
        out.iter().map(|(k, _)| k.to_ascii_lowercase()).collect()
    }

    const KEY: &str =
        "kg_live_3f9a0c1d2b4e5f60_abababababababababababababababababababababababababababababababab_00000000";

    #[test]
    fn look_alikes_rewrites_and_addresses_are_stripped() {
        let p = policy(json!({}));
        let incoming = h(&[
            ("X_Key_Scopes", "admin:**"),
            ("X-Key.Tenant", "acme"),
            ("x-KEY-id", "0000"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X_HTTP_Method", "DELETE"),
            ("X-Original-URL", "/internal"),
            ("X-Rewrite-URL", "/internal"),
            ("X-Method-Override", "DELETE"),
            ("X-Forwarded-For", "1.2.3.4"),
            ("X_Real_IP", "1.2.3.4"),
            ("Forwarded", "for=1.2.3.4"),
            ("True-Client-IP", "1.2.3.4"),
            ("CF-Connecting-IP", "1.2.3.4"),
            ("Host", "evil.example"),
            ("Accept", "text/plain"),
        ]);
        let ip = ClientIp::parse("203.0.113.9");
        let out = outbound_headers(&p, &incoming, &public_forward(), ip, false, Secrets::default());
        assert_eq!(
            out,
            h(&[
                ("Accept", "text/plain"),
                ("CF-Connecting-IP", "203.0.113.9"),
                ("X-Forwarded-For", "203.0.113.9"),
                ("X-Real-IP", "203.0.113.9"),
                ("Forwarded", "for=203.0.113.9"),
                ("Keygate-Hop", "keygate"),
            ])
        );
        // No address: no address headers at all.
        let out = outbound_headers(&p, &incoming, &public_forward(), None, false, Secrets::default());
        assert_eq!(names(&out), ["accept", "keygate-hop"]);
        let v6 = outbound_headers(
            &p,
            &[],
            &public_forward(),
            ClientIp::parse("2001:db8::1"),
            false,
            Secrets::default(),
        );
        assert!(v6.contains(&("Forwarded".into(), "for=\"[2001:db8::1]\"".into())));
    }

    #[test]
    fn policy_can_keep_addresses_and_strip_more() {
        let p = policy(
            json!({"forwarding": {"keep_client_address_headers": true, "strip_headers": ["X-Debug_Mode"]}}),
        );
        let incoming = h(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("x_debug.mode", "1"),
            ("X-Debug-Mode", "1"),
        ]);
        let out = outbound_headers(
            &p,
            &incoming,
            &public_forward(),
            ClientIp::parse("203.0.113.9"),
            false,
            Secrets::default(),
        );
        assert_eq!(
            out,
            h(&[
                ("X-Forwarded-For", "1.2.3.4"),
                ("CF-Connecting-IP", "203.0.113.9"),
                ("Keygate-Hop", "keygate"),
            ])
        );
    }

    #[test]
    fn keys_never_leave_on_any_route() {
        let p = policy(json!({}));
        let incoming = h(&[
            ("Authorization", &format!("Bearer {KEY}")),
            ("X-API-Key", KEY),
            ("X_API_Key", KEY),
            ("Cookie", &format!("session=1; k={}", KEY.to_uppercase())),
            ("Authorization", "Basic Zm9vOmJhcg=="),
        ]);
        let out = outbound_headers(&p, &incoming, &public_forward(), None, false, Secrets::default());
        assert_eq!(
            out,
            h(&[
                ("Authorization", "Basic Zm9vOmJhcg=="),
                ("Keygate-Hop", "keygate")
            ])
        );
        assert_eq!(
            outbound_query(
                &p,
                Some(&format!("a=1&token={KEY}&b=2&c={}", KEY.replace('_', "%5F"))),
                Secrets::default()
            ),
            Some("a=1&b=2".into())
        );
        assert_eq!(
            outbound_query(&p, Some(&format!("t={KEY}")), Secrets::default()),
            None
        );
        let enc = KEY.replace('_', "%5F");
        for q in [
            format!("t={enc}%zz"),
            format!("t={enc}%ff"),
            format!("t={}", KEY.replace('_', "%255F")),
            format!("{enc}%zz=1"),
        ] {
            assert_eq!(
                outbound_query(&p, Some(&format!("a=1&{q}")), Secrets::default()),
                Some("a=1".into()),
                "{q}"
            );
        }
        let odd = h(&[(KEY, "1"), ("Cookie", &format!("s={enc}")), ("X-Ok", "100%zz")]);
        assert_eq!(
            names(&outbound_headers(
                &p,
                &odd,
                &public_forward(),
                None,
                false,
                Secrets::default()
            )),
            ["x-ok", "keygate-hop"]
        );
        let with_param = policy(json!({"credentials": {"query_param": "api_key"}}));
        assert_eq!(
            outbound_query(&with_param, Some("api_key=x&q=1"), Secrets::default()),
            Some("q=1".into())
        );
    }

    #[test]
    fn the_admin_token_and_basic_auth_keys_never_leave() {
        use base64::Engine;
        let p = policy(json!({}));
        let token = "an-admin-token-of-thirty-two-chars!";
        let basic = format!("Basic {}", STANDARD.encode(format!("{KEY}:")));
        let incoming = h(&[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Admin", &format!("x{token}y")),
            ("Authorization", &basic),
            ("X-Ok", "1"),
        ]);
        let secrets = Secrets {
            admin_token: Some(token),
            tokens: None,
        };
        let out = outbound_headers(&p, &incoming, &public_forward(), None, false, secrets);
        assert_eq!(names(&out), ["x-ok", "keygate-hop"]);
        let q = format!("a=1&t={}", token.replace('-', "%2D"));
        assert_eq!(outbound_query(&p, Some(&q), secrets), Some("a=1".into()));
    }

    #[test]
    fn hops_accumulate() {
        let p = policy(json!({"realm": "edge-b"}));
        let out = outbound_headers(
            &p,
            &h(&[("Keygate-Hop", "edge-a")]),
            &public_forward(),
            None,
            false,
            Secrets::default(),
        );
        assert_eq!(out, h(&[("Keygate-Hop", "edge-a, edge-b")]));
    }

    #[test]
    fn the_target_comes_from_configuration() {
        let p = policy(json!({}));
        let t = Target::from_config(Some(" http://127.0.0.1:8788/ "), &p).unwrap();
        assert_eq!(
            t.url("http", "evil.example:1", "/p/x", Some("a=1")),
            "http://127.0.0.1:8788/p/x?a=1"
        );
        for bad in [
            None,
            Some(""),
            Some("127.0.0.1:8788"),
            Some("http://"),
            Some("http://a?b"),
            Some("http://u@h"),
        ] {
            assert!(Target::from_config(bad, &p).is_err(), "{bad:?}");
        }
        let rm = policy(json!({"route_mode": {"hostnames": ["api.example.com"]}}));
        assert_eq!(Target::from_config(Some(""), &rm), Ok(Target::RouteMode));
        assert!(Target::from_config(Some("http://o"), &rm).is_err());
        assert_eq!(
            Target::RouteMode.url("https", "api.example.com", "/p/x", None),
            "https://api.example.com/p/x"
        );
    }

    #[test]
    fn the_gateways_own_tokens_never_leave_and_other_jwts_do() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let seed = |b: u8| URL_SAFE_NO_PAD.encode([b; 32]);
        let ours = TokenKeys::from_secret(&seed(1)).unwrap();
        let theirs = TokenKeys::from_secret(&seed(2)).unwrap();
        let claims = json!({"sub": "k", "scope": "license:read"});
        let own = ours.sign("at+jwt", &claims).unwrap();
        let foreign = theirs.sign("at+jwt", &claims).unwrap();
        let headers = h(&[
            ("Authorization", &format!("Bearer {own}")),
            ("X-Api-Key", &own),
            ("X-Forwarded-Token", &format!("v1;{own};x")),
            ("X-Other-Idp", &format!("Bearer {foreign}")),
            ("X-Ok", "eyJ.not.ajwt"),
        ]);
        let query = format!("access_token={own}&a=1&id_token={foreign}");
        let p = policy(json!({}));
        // What the origin receives of `headers` and `query` with `keys` as the signing keys.
        let outbound = |keys: Option<&TokenKeys>, headers: &[(String, String)], query: &str| {
            let secrets = Secrets {
                admin_token: None,
                tokens: keys,
            };
            (
                outbound_headers(&p, headers, &public_forward(), None, false, secrets),
                outbound_query(&p, Some(query), secrets),
            )
        };
        let (out, q) = outbound(Some(&ours), &headers, &query);
        assert_eq!(names(&out), ["x-other-idp", "x-ok", "keygate-hop"]);
        assert_eq!(q, Some(format!("a=1&id_token={foreign}")));
        // After a signing-key rotation the previous key's tokens are still ours.
        let rotated = TokenKeys::from_secret(&format!("{},{}", seed(3), seed(1))).unwrap();
        let (out, _) = outbound(Some(&rotated), &headers, "");
        assert_eq!(names(&out), ["x-other-idp", "x-ok", "keygate-hop"]);
        // Without signing keys there are no own tokens to find.
        let (out, q) = outbound(None, &headers, &query);
        assert_eq!(out.len(), 6);
        assert_eq!(q, Some(query.clone()));
        let (_, q) = outbound(Some(&ours), &[], &format!("t={own}"));
        assert_eq!(q, None);

        // Disguised copies: percent-encoded, inside Basic credentials, base64-wrapped, glued to
        // other text, padded, cut short or split over repeated headers, or with full-width dots.
        let (head, rest) = own.split_once('.').unwrap();
        let pct: String = own.chars().map(|c| format!("%{:02X}", c as u32)).collect();
        let disguised = [
            own.replace('.', "%2E"),
            pct.clone(),
            pct.replace('%', "%25"),
            format!("Basic {}", STANDARD.encode(format!("user:{own}"))),
            STANDARD.encode(&own),
            URL_SAFE_NO_PAD.encode(format!("x{own}")),
            format!("{own}."),
            format!(".{own}"),
            format!("tok_{own}"),
            format!("v1-{own}"),
            format!("{head}=.{rest}"),
            head.to_owned(),
            format!("{head}.{}", rest.split('.').next().unwrap()),
            own.replace('.', "\u{3002}"),
        ];
        for d in &disguised {
            let (out, q) = outbound(Some(&ours), &h(&[("X-T", d)]), &format!("a=1&t={d}"));
            assert_eq!(names(&out), ["keygate-hop"], "{d} reached the origin in a header");
            assert_eq!(q.as_deref(), Some("a=1"), "{d} reached the origin in the query");
        }
        // A cookie list loses the token cookie only.
        let (out, _) = outbound(
            Some(&ours),
            &h(&[("Cookie", &format!("session=abc; at={own}; theme=dark"))]),
            "",
        );
        assert_eq!(
            out,
            h(&[("Cookie", "session=abc; theme=dark"), ("Keygate-Hop", "keygate")])
        );
        let (out, _) = outbound(Some(&ours), &h(&[("Cookie", &format!("at={own}"))]), "");
        assert_eq!(names(&out), ["keygate-hop"]);
    }
}
