//! The OpenAPI 3.1 document served at `GET /admin/openapi.json`: the admin API as written in
//! `openapi.json`, and the gateway part generated from the policy this deployment loaded, so the
//! document describes the routes actually served, not an example. Each protected gateway
//! operation names its scopes in `x-keygate-scopes`, which the admin console reads.

use serde_json::{Map, Value, json};

use crate::policy::{Policy, Route};

/// The hand-written document (admin API, shared components), `openapi.json` as `build.rs`
/// packed it: minified, then deflated, so that it costs about 15 KB of the wasm instead of
/// about 139 KB (issue 14). Inflated on each request for the document (a few hundred µs).
const PACKED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json.deflate"));

/// The document is far below this; anything larger is not ours.
const MAX_TEXT: usize = 4 << 20;

/// The hand-written document's text (minified).
pub fn base() -> Result<String, String> {
    let bytes = miniz_oxide::inflate::decompress_to_vec_with_limit(PACKED, MAX_TEXT)
        .map_err(|e| format!("openapi.json does not inflate: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("openapi.json is not UTF-8: {e}"))
}

const ALL_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

/// `/orgs/{org}/*` → (`/orgs/{org}/{rest}`, [`org`], the tail's parameter name `rest`).
fn template(source: &str) -> (String, Vec<String>, Option<&'static str>) {
    let (body, rest) = match source.strip_suffix('*') {
        Some(b) => (b.trim_end_matches('/'), true),
        None => (source, false),
    };
    let params: Vec<String> = body
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect();
    // A route's own parameter may be called `rest`; the tail then gets another name.
    let tail = rest.then(|| {
        if params.iter().any(|p| p == "rest") {
            "rest_of_path"
        } else {
            "rest"
        }
    });
    let mut path = body.to_owned();
    if let Some(t) = tail {
        path.push_str(&format!("/{{{t}}}"));
    }
    if path.is_empty() {
        path.push('/');
    }
    (path, params, tail)
}

fn describe(policy: &Policy, route: &Route) -> String {
    let mut parts = vec![format!(
        "Route {} of the deployed policy (`{}`), first match in policy order.",
        route.index,
        route.pattern.source()
    )];
    if route.public {
        parts.push("Public: forwarded without a key (no `X-Key-*` headers).".into());
    } else {
        let list = |v: &[crate::scope::ScopeTemplate]| {
            v.iter()
                .map(|t| format!("`{}`", t.source()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !route.scopes.is_empty() {
            parts.push(format!("Requires all of {}.", list(&route.scopes)));
        }
        if !route.any_scopes.is_empty() {
            parts.push(format!("Requires one of {}.", list(&route.any_scopes)));
        }
        if let Some(envs) = &route.environments {
            let e: Vec<&str> = envs.iter().map(|e| e.as_str()).collect();
            parts.push(format!("Keys of environment {} only.", e.join(", ")));
        }
        if let Some(t) = &route.tenant_param {
            parts.push(format!("The key's tenants must include `{{{t}}}`."));
        }
        if let Some(name) = &route.rate_tier {
            let limit = policy
                .limits
                .tiers
                .get(name)
                .map(|t| format!(" ({} requests per {} s per key)", t.limit, t.period))
                .unwrap_or_default();
            parts.push(format!(
                "Rate tier `{name}`{limit} for keys without a `rate_tier` of their own."
            ));
        }
        let credits = if route.cost == 1 { "credit" } else { "credits" };
        parts.push(format!(
            "A metered key spends {} {credits} per request.",
            route.cost
        ));
    }
    if !route.ip_allowlist.is_empty() {
        parts.push(format!(
            "Client addresses limited to {}.",
            route.ip_allowlist.entries().join(", ")
        ));
    }
    if route.cors.is_some() {
        parts.push("CORS preflights are answered at the edge.".into());
    }
    parts.join(" ")
}

fn operation(policy: &Policy, route: &Route, method: &str) -> Value {
    let mut responses = Map::new();
    let public = route.public;
    responses.insert(
        "200".into(),
        reference(if public {
            "GatewayForwardedPublic"
        } else {
            "GatewayForwarded"
        }),
    );
    responses.insert("400".into(), reference("GatewayBadRequest"));
    if !public {
        responses.insert("401".into(), reference("GatewayUnauthorized"));
    }
    let mut forbidden = vec!["ip_not_allowed"];
    if !public {
        forbidden.extend([
            "insufficient_scope",
            "tenant_not_allowed",
            "environment_not_allowed",
        ]);
    }
    if route.cors.is_some() {
        forbidden.push("cors_origin_not_allowed");
    }
    responses.insert(
        "403".into(),
        json!({
            "description": format!("Not allowed. Codes: {}.", forbidden.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")),
            "content": {"application/problem+json": {"schema": {"allOf": [
                {"$ref": "#/components/schemas/Problem"},
                {"properties": {"status": {"const": 403}, "code": {"enum": forbidden}}}
            ]}}}
        }),
    );
    responses.insert("421".into(), reference("GatewayMisdirected"));
    if !public {
        // A key's tier and credits, and the failed-authentication limit, apply to every keyed
        // route: whether a key has a tier or credits is the key's, not the route's.
        responses.insert("429".into(), reference("GatewayTooManyRequests"));
    }
    responses.insert(
        "500".into(),
        reference(if public {
            "GatewayServerErrorPublic"
        } else {
            "GatewayServerError"
        }),
    );
    responses.insert("502".into(), reference("OriginUnavailable"));
    if !public {
        responses.insert("503".into(), reference("GatewayUnavailable"));
    }
    responses.insert("508".into(), reference("GatewayLoop"));
    responses.insert("default".into(), reference("OriginResponse"));
    let security = if public {
        json!([])
    } else {
        json!([{"gatewayBearer": []}, {"gatewayApiKey": []}])
    };
    let m = method.to_ascii_lowercase();
    let mut cap = m.clone();
    if let Some(first) = cap.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let mut op = json!({
        "operationId": format!("gatewayRoute{}{cap}", route.index),
        "tags": ["gateway"],
        "summary": format!("{} {}", method, route.pattern.source()),
        "description": describe(policy, route),
        "responses": responses,
        "security": security,
    });
    if !public && let Some(obj) = op.as_object_mut() {
        obj.insert("x-keygate-scopes".into(), scopes(route));
    }
    op
}

/// The route's scope requirements, machine-readable (the admin console offers them as
/// checkboxes): `all` must all be held, one of `any`; `{param}` stands for a path value.
fn scopes(route: &Route) -> Value {
    let sources =
        |v: &[crate::scope::ScopeTemplate]| v.iter().map(|t| t.source().to_owned()).collect::<Vec<_>>();
    json!({ "all": sources(&route.scopes), "any": sources(&route.any_scopes) })
}

/// The gateway's path items for `policy`, keyed by OpenAPI path template. Where two routes share
/// a template, the first route in policy order owns each method (as matching does).
pub fn gateway_paths(policy: &Policy) -> Map<String, Value> {
    let mut paths = Map::new();
    for route in &policy.routes {
        let (path, params, tail) = template(route.pattern.source());
        let item = paths.entry(path).or_insert_with(|| {
            let mut parameters: Vec<Value> = params
                .iter()
                .map(|p| json!({"name": p, "in": "path", "required": true, "description": "One path segment.", "schema": {"type": "string"}}))
                .collect();
            if let Some(tail) = tail {
                parameters.push(json!({"name": tail, "in": "path", "required": true, "description": "The rest of the path: zero or more segments (so the route also covers the bare prefix). Its `/` must be sent literally: an encoded `%2F` is refused with `400 invalid_path`, so a client should not percent-encode this parameter as one segment.", "schema": {"type": "string"}}));
            }
            json!({ "parameters": parameters })
        });
        let methods: Vec<&str> = match &route.methods {
            Some(ms) => ms.iter().map(String::as_str).collect(),
            None => ALL_METHODS.to_vec(),
        };
        if let Some(obj) = item.as_object_mut() {
            for method in methods {
                let key = method.to_ascii_lowercase();
                if ALL_METHODS.contains(&method) && !obj.contains_key(&key) {
                    obj.insert(key, operation(policy, route, method));
                }
            }
        }
    }
    paths
}

/// The whole document for this deployment.
pub fn document(policy: &Policy) -> Result<Value, String> {
    let mut doc: Value = serde_json::from_str(&base()?).map_err(|e| format!("openapi.json: {e}"))?;
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return Err("openapi.json has no paths".into());
    };
    // The gateway's own paths; the route policy's are generated below.
    paths.retain(|p, _| {
        p == "/healthz"
            || p.starts_with("/admin")
            || ["/oauth/token", "/.well-known/jwks.json", "/v1/keys/verify"].contains(&p.as_str())
    });
    for (p, item) in gateway_paths(policy) {
        if !paths.contains_key(&p) {
            paths.insert(p, item);
        }
    }
    declare_tiers(&mut doc, policy);
    Ok(doc)
}

/// `RateTier` (what `rate_tier` of a key may be set to) is the tiers this policy declares.
/// Without any, every name is refused: the schema keeps its pattern, and says so.
fn declare_tiers(doc: &mut Value, policy: &Policy) {
    let Some(schema) = doc
        .pointer_mut("/components/schemas/RateTier")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let tiers = &policy.limits.tiers;
    let note = if tiers.is_empty() {
        " This deployment declares no tiers, so none can be set.".to_owned()
    } else {
        schema.insert("enum".into(), json!(tiers.keys().collect::<Vec<_>>()));
        let list: Vec<String> = tiers
            .values()
            .map(|t| format!("`{}` ({} requests per {} s)", t.name, t.limit, t.period))
            .collect();
        format!(" This deployment declares {}.", list.join(", "))
    };
    if let Some(Value::String(d)) = schema.get_mut("description") {
        d.push_str(&note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_part_is_the_loaded_policy() {
        let policy = Policy::from_json(&json!({"routes": [
            {"methods": ["GET"], "path": "/v2/widgets/{id}", "scopes": ["widget:read"]},
            {"methods": ["POST"], "path": "/v2/widgets/{id}", "scopes": ["widget:write"]},
            {"path": "/docs/*", "public": true},
            {"methods": ["GET"], "path": "/v2/widgets/{id}", "scopes": ["never"]}
        ]}))
        .unwrap();
        let doc = document(&policy).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/admin/keys") && paths.contains_key("/healthz"));
        assert!(
            !paths.contains_key("/licenses/{rest}"),
            "the example routes are gone"
        );
        let w = &paths["/v2/widgets/{id}"];
        assert!(
            w["get"]["description"]
                .as_str()
                .unwrap()
                .contains("`widget:read`"),
            "first route owns GET"
        );
        assert!(
            w["post"]["description"]
                .as_str()
                .unwrap()
                .contains("`widget:write`")
        );
        assert!(w.get("delete").is_none());
        assert_eq!(w["parameters"][0]["name"], "id");
        assert_eq!(
            w["get"]["x-keygate-scopes"],
            json!({"all": ["widget:read"], "any": []})
        );
        let d = &paths["/docs/{rest}"];
        assert!(d["get"].get("x-keygate-scopes").is_none(), "public");
        assert_eq!(d["get"]["security"], json!([]));
        assert!(d["get"]["responses"].get("401").is_none());
        assert_eq!(d.as_object().unwrap().len(), 1 + ALL_METHODS.len());
    }

    /// A policy with every feature the gateway part describes.
    fn full_policy() -> Policy {
        Policy::from_json(&json!({
            "limits": {"tiers": {
                "free": {"binding": "RL_FREE", "limit": 10, "period": 10},
                "standard": {"binding": "RL_STANDARD", "limit": 1000, "period": 60}
            }},
            "routes": [
                {"path": "/public/*", "public": true, "cors": {"allow_origins": ["https://a.example"]}},
                {"methods": ["GET"], "path": "/orgs/{org}/*", "scopes": ["org:read"], "tenant_param": "org",
                 "environments": ["live"], "ip_allowlist": ["10.0.0.0/8"], "rate_tier": "free", "cost": 5,
                 "cors": {"allow_origins": ["https://a.example"]}},
                {"path": "/v1/*", "any_scopes": ["a", "b"]}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn keyed_routes_answer_429_and_describe_their_tier_and_cost() {
        let doc = document(&full_policy()).unwrap();
        let paths = &doc["paths"];
        let org = &paths["/orgs/{org}/{rest}"]["get"];
        let d = org["description"].as_str().unwrap();
        assert!(
            d.contains("Rate tier `free` (10 requests per 10 s per key)"),
            "{d}"
        );
        assert!(d.contains("spends 5 credits per request"), "{d}");
        assert!(
            paths["/v1/{rest}"]["post"]["description"]
                .as_str()
                .unwrap()
                .contains("spends 1 credit per request")
        );
        for op in [org, &paths["/v1/{rest}"]["delete"]] {
            assert_eq!(
                op["responses"]["429"]["$ref"],
                "#/components/responses/GatewayTooManyRequests"
            );
            assert_eq!(
                op["responses"]["503"]["$ref"],
                "#/components/responses/GatewayUnavailable"
            );
        }
        let public = &paths["/public/{rest}"]["get"];
        assert!(public["responses"].get("429").is_none());
        assert!(!public["description"].as_str().unwrap().contains("credit"));

        let c = &doc["components"];
        let codes = |r: &Value| {
            r["content"]["application/problem+json"]["schema"]["allOf"][1]["properties"]["code"]["enum"]
                .clone()
        };
        assert_eq!(
            codes(&c["responses"]["GatewayTooManyRequests"]),
            json!(["rate_limited", "credits_exhausted"])
        );
        assert_eq!(
            codes(&c["responses"]["GatewayUnavailable"]),
            json!(["store_unavailable", "limiter_unavailable", "credits_unavailable"])
        );
        for h in ["Retry-After", "RateLimit-Policy", "RateLimit"] {
            assert!(
                c["responses"]["GatewayTooManyRequests"]["headers"]
                    .get(h)
                    .is_some(),
                "{h}"
            );
        }
        assert!(
            c["responses"]["GatewayForwarded"]["headers"]
                .get("RateLimit-Policy")
                .is_some()
        );
    }

    #[test]
    fn the_rate_tiers_a_key_may_name_are_the_policy_s() {
        let doc = document(&full_policy()).unwrap();
        let tier = &doc["components"]["schemas"]["RateTier"];
        assert_eq!(tier["enum"], json!(["free", "standard"]));
        assert!(
            tier["description"]
                .as_str()
                .unwrap()
                .contains("`standard` (1000 requests per 60 s)")
        );
        for s in ["CreateKey", "PatchKey"] {
            assert_eq!(
                doc["components"]["schemas"][s]["properties"]["rate_tier"]["anyOf"][0]["$ref"],
                "#/components/schemas/RateTier"
            );
        }
        let none = Policy::from_json(&json!({"routes": []})).unwrap();
        let doc = document(&none).unwrap();
        let tier = &doc["components"]["schemas"]["RateTier"];
        assert!(tier.get("enum").is_none());
        assert!(
            tier["description"]
                .as_str()
                .unwrap()
                .contains("declares no tiers")
        );
    }

    /// `[..] => Endpoint::Name` arms of `fn endpoint` in routing.rs: (name, path template).
    fn routed_endpoints() -> Vec<(String, String)> {
        let src = include_str!("admin/routing.rs");
        let start = src.find("fn endpoint(").unwrap();
        let end = start + src[start..].find("_ => return None").unwrap();
        let body = &src[start..end];
        let mut out = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find("[\"") {
            let close = open + rest[open..].find(']').unwrap();
            let segments: Vec<String> = rest[open + 1..close]
                .split(',')
                .map(str::trim)
                .map(|s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    Some(lit) => lit.to_owned(),
                    None => format!("{{{s}}}"),
                })
                .collect();
            let after = &rest[close..];
            let arrow = after.find("Endpoint::").unwrap() + "Endpoint::".len();
            let name: String = after[arrow..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            out.push((name, format!("/admin/{}", segments.join("/"))));
            rest = &after[arrow..];
        }
        out
    }

    /// The `Allow` of each endpoint, from `let allow = match ep { .. }` in routing.rs.
    fn allowed_methods() -> Vec<(String, String)> {
        let src = include_str!("admin/routing.rs");
        let start = src.find("let allow = match ep {").unwrap() + "let allow = match ep {".len();
        let end = start + src[start..].find("};").unwrap();
        let mut out = Vec::new();
        for arm in src[start..end].split("\",") {
            let Some((variants, allow)) = arm.split_once("=> \"") else {
                continue;
            };
            for v in variants.split("Endpoint::").skip(1) {
                let name: String = v.chars().take_while(char::is_ascii_alphanumeric).collect();
                out.push((name, allow.trim_end_matches('"').to_owned()));
            }
        }
        out
    }

    #[test]
    fn every_admin_endpoint_is_documented_with_its_methods() {
        let doc = document(&Policy::from_json(&json!({"routes": []})).unwrap()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let routed = routed_endpoints();
        let allows = allowed_methods();
        assert!(routed.len() >= 8, "{routed:?}");
        assert_eq!(allows.len(), routed.len(), "{allows:?}");
        for (name, path) in &routed {
            let item = paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} ({name}) is routed but not documented"));
            let allow = &allows.iter().find(|(n, _)| n == name).unwrap().1;
            let mut documented: Vec<String> = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| ALL_METHODS.contains(&k.to_ascii_uppercase().as_str()))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            let mut routed_methods: Vec<String> = allow.split(", ").map(str::to_owned).collect();
            documented.sort();
            routed_methods.sort();
            assert_eq!(documented, routed_methods, "{path}");
            let described = item["description"].as_str().unwrap();
            assert!(
                described.contains(&format!("`Allow: {allow}`")),
                "{path}: {described}"
            );
            // The key endpoints name their key; the others none.
            let concrete = path.replace("{id}", "0123456789abcdef");
            assert_eq!(
                crate::admin::target_key(&concrete).is_some(),
                path.contains("{id}"),
                "{path}"
            );
        }
        for path in paths.keys().filter(|p| p.starts_with("/admin/")) {
            assert!(
                path == "/admin/openapi.json" || routed.iter().any(|(_, p)| p == path),
                "{path} is documented but not routed"
            );
        }
    }

    /// The codes of `Problem::new(status, "code", ..)` and `unauth("code", ..)` in problem.rs.
    fn problem_codes() -> Vec<String> {
        let src = include_str!("problem.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap_or(src.len())];
        let mut codes = Vec::new();
        for (marker, skip_status) in [("Problem::new(", true), ("unauth(", false)] {
            for chunk in src.split(marker).skip(1) {
                let mut args = chunk.splitn(3, ',');
                let first = args.next().unwrap_or_default().trim();
                let code = if skip_status {
                    if !first.bytes().all(|b| b.is_ascii_digit()) || first.is_empty() {
                        continue;
                    }
                    args.next().unwrap_or_default().trim()
                } else {
                    first
                };
                if let Some(c) = code.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
                    codes.push(c.to_owned());
                }
            }
        }
        codes.sort();
        codes.dedup();
        codes
    }

    #[test]
    fn every_problem_code_is_documented() {
        let codes = problem_codes();
        for c in [
            "rate_limited",
            "credits_exhausted",
            "limiter_unavailable",
            "missing_key",
        ] {
            assert!(codes.iter().any(|x| x == c), "{c} not found in {codes:?}");
        }
        let text = document(&full_policy()).unwrap().to_string();
        // Answered to methods no operation can name (TRACE, CONNECT, ...).
        let undocumented = ["method_not_implemented"];
        for code in &codes {
            if !undocumented.contains(&code.as_str()) {
                assert!(
                    text.contains(&format!("\"{code}\"")),
                    "`{code}` is not in the document"
                );
            }
        }
    }

    #[test]
    fn problem_members_are_in_the_problem_schema() {
        let doc = document(&full_policy()).unwrap();
        let props = doc["components"]["schemas"]["Problem"]["properties"]
            .as_object()
            .unwrap();
        for src in [include_str!("problem.rs"), include_str!("edge.rs")] {
            for chunk in src.split(".with(\"").skip(1) {
                let member = chunk.split('"').next().unwrap();
                assert!(
                    props.contains_key(member),
                    "problem member `{member}` is not in Problem"
                );
            }
        }
    }

    #[test]
    fn audit_actions_are_the_code_s() {
        let doc = document(&full_policy()).unwrap();
        let actions = doc["components"]["schemas"]["AuditEvent"]["properties"]["action"]["enum"]
            .as_array()
            .unwrap();
        for a in actions {
            assert!(
                serde_json::from_value::<crate::admin::AuditAction>(a.clone()).is_ok(),
                "{a}"
            );
        }
        let src = include_str!("admin/audit.rs");
        let start = src.find("pub enum AuditAction").unwrap();
        let block = &src[start..start + src[start..].find("\n}").unwrap()];
        let renamed = block.matches("rename = \"").count();
        assert_eq!(renamed, actions.len(), "{actions:?}");
    }

    #[test]
    fn the_key_record_schema_is_the_admin_view() {
        let doc = document(&full_policy()).unwrap();
        let schema = &doc["components"]["schemas"]["KeyRecord"];
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut props: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // What `record.view` shows, plus what the admin API adds from the registry (`show`).
        let mut record = crate::record::tests::sample("0123456789abcdef");
        record.metered = true;
        record.rate_tier = Some("free".into());
        record.refill = Some(crate::credits::Refill {
            amount: 5,
            interval: crate::credits::Interval::Month,
            day: Some(3),
        });
        let view = record.view(crate::time::Timestamp::from_millis(0));
        let view_bare =
            crate::record::tests::sample("0123456789abcdef").view(crate::time::Timestamp::from_millis(0));
        assert_eq!(
            view.as_object().unwrap().keys().collect::<Vec<_>>(),
            view_bare.as_object().unwrap().keys().collect::<Vec<_>>(),
            "every member is always present"
        );
        let mut shown: Vec<&str> = view
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .chain([
                "credits_remaining",
                "credits_leased",
                "next_refill_at",
                "last_used_at",
            ])
            .collect();
        required.sort_unstable();
        props.sort_unstable();
        shown.sort_unstable();
        assert_eq!(required, shown);
        assert_eq!(props, shown);
        // The refill as shown fits `Refill`.
        let refill = doc["components"]["schemas"]["Refill"]["properties"]
            .as_object()
            .unwrap();
        for k in view["refill"].as_object().unwrap().keys() {
            assert!(refill.contains_key(k), "{k}");
        }
    }

    #[test]
    fn the_packed_document_is_openapi_json() {
        let source = include_str!("openapi.json");
        let packed = base().unwrap();
        assert!(packed.len() < source.len(), "minified");
        let a: Value = serde_json::from_str(source).unwrap();
        let b: Value = serde_json::from_str(&packed).unwrap();
        assert_eq!(a, b, "the same document");
        // Strings keep their spaces, escapes and newlines exactly.
        for needle in [r#"\""#, r"\n", " "] {
            assert_eq!(source.contains(needle), packed.contains(needle), "{needle:?}");
        }
    }

    #[test]
    fn templates() {
        assert_eq!(template("/*"), ("/{rest}".into(), vec![], Some("rest")));
        assert_eq!(
            template("/a/{rest}/*"),
            (
                "/a/{rest}/{rest_of_path}".into(),
                vec!["rest".into()],
                Some("rest_of_path")
            )
        );
        assert_eq!(template("/a/b"), ("/a/b".into(), vec![], None));
    }
}
