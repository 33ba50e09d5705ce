//! The OpenAPI 3.1 document served at `GET /admin/openapi.json`: the admin API as written in
//! `openapi.json`, and the gateway part generated from the policy this deployment loaded, so the
//! document describes the routes actually served, not an example.

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

fn describe(route: &Route) -> String {
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

fn operation(route: &Route, method: &str) -> Value {
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
    json!({
        "operationId": format!("gatewayRoute{}{cap}", route.index),
        "tags": ["gateway"],
        "summary": format!("{} {}", method, route.pattern.source()),
        "description": describe(route),
        "responses": responses,
        "security": security,
    })
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
                    obj.insert(key, operation(route, method));
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
    Ok(doc)
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
        let d = &paths["/docs/{rest}"];
        assert_eq!(d["get"]["security"], json!([]));
        assert!(d["get"]["responses"].get("401").is_none());
        assert_eq!(d.as_object().unwrap().len(), 1 + ALL_METHODS.len());
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
