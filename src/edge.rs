//! The workers-rs adapter, wasm32 only: reads the request into plain values, calls the pure
//! decision or admin code, and turns the result into a forwarded request or a response. It holds
//! no rules of its own.

use std::cell::RefCell;
use std::rc::Rc;

use crate::admin::{AdminContext, AdminRequest, MAX_BODY};
use crate::cache::RecordCache;
use crate::credential::{HeaderSource, strip_query_param};
use crate::decide::{Decision, Denial, Forward, Gateway, RequestFacts};
use crate::ip::ClientIp;
use crate::key::KeyHasher;
use crate::policy::Policy;
use crate::problem::{self, Problem};
use crate::store::{self, ListPage, Records, StoreError};
use crate::time::Timestamp;
use worker::{
    Context, Env, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Response, console_error,
    console_log, event,
};

const KV_BINDING: &str = "KEYS";
/// Methods the runtime can forward unchanged.
const FORWARDABLE: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Edge-cache KV reads on the validation path for the minimum KV allows.
const KV_CACHE_TTL: u64 = 30;
const RECORD_CACHE_CAPACITY: usize = 10_000;
const NEGATIVE_CACHE_CAPACITY: usize = 10_000;

thread_local! {
    /// Parsed once per isolate: the env does not change under a running isolate.
    static GATEWAY: RefCell<Option<Result<Rc<Gateway>, String>>> = const { RefCell::new(None) };
    static CACHE: RefCell<Option<Rc<RefCell<RecordCache>>>> = const { RefCell::new(None) };
}

fn gateway(env: &Env) -> Result<Rc<Gateway>, String> {
    GATEWAY.with(|g| {
        g.borrow_mut()
            .get_or_insert_with(|| {
                // Structured in wrangler.toml; a JSON string when given with `--var`.
                let raw = env
                    .object_var::<serde_json::Value>("POLICY")
                    .or_else(|_| {
                        env.var("POLICY")
                            .map(|v| serde_json::Value::String(v.to_string()))
                    })
                    .map_err(|e| format!("POLICY var missing or unreadable: {e}"))?;
                let policy = Policy::from_json(&raw).map_err(|e| e.0)?;
                let pepper = env.secret("KEY_PEPPER").ok().map(|s| s.to_string());
                Ok(Rc::new(Gateway {
                    policy,
                    hasher: KeyHasher::new(pepper.as_deref()),
                }))
            })
            .clone()
    })
}

fn cache(policy: &Policy) -> Rc<RefCell<RecordCache>> {
    CACHE.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| {
                Rc::new(RefCell::new(RecordCache::new(
                    RECORD_CACHE_CAPACITY,
                    NEGATIVE_CACHE_CAPACITY,
                    policy.cache_ttl_seconds,
                    policy.negative_cache_ttl_seconds,
                )))
            })
            .clone()
    })
}

/// Workers KV behind the crate's storage trait.
struct Kv {
    inner: worker::kv::KvStore,
    cache_ttl: Option<u64>,
}

fn kv_error(e: worker::kv::KvError) -> StoreError {
    StoreError(e.to_string())
}

impl store::KvStore for Kv {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut q = self.inner.get(key);
        if let Some(ttl) = self.cache_ttl {
            q = q.cache_ttl(ttl);
        }
        q.text().await.map_err(kv_error)
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner
            .put(key, value)
            .map_err(kv_error)?
            .execute()
            .await
            .map_err(kv_error)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await.map_err(kv_error)
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        let mut q = self
            .inner
            .list()
            .prefix(prefix.to_owned())
            .limit(u64::from(limit));
        if let Some(c) = cursor {
            q = q.cursor(c.to_owned());
        }
        let page = q.execute().await.map_err(kv_error)?;
        Ok(ListPage {
            keys: page.keys.into_iter().map(|k| k.name).collect(),
            cursor: if page.list_complete {
                None
            } else {
                page.cursor.filter(|c| !c.is_empty())
            },
        })
    }
}

struct RequestHeaders<'a>(&'a Headers);

impl HeaderSource for RequestHeaders<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.0.get(name).ok().flatten()
    }
}

fn now() -> Timestamp {
    Timestamp::from_millis(i64::try_from(worker::Date::now().as_millis()).unwrap_or(i64::MAX))
}

fn problem_response(p: &Problem) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", problem::CONTENT_TYPE)?;
    for (k, v) in &p.headers {
        headers.set(k, v)?;
    }
    Ok(Response::from_bytes(p.body().into_bytes())?
        .with_status(p.status)
        .with_headers(headers))
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    match handle(req, &env).await {
        Ok(r) => Ok(r),
        Err(e) => {
            console_error!("internal error: {e}");
            problem_response(&problem::internal_error(
                "The gateway failed to handle this request; it was not forwarded.",
            ))
        }
    }
}

async fn handle(req: Request, env: &Env) -> worker::Result<Response> {
    let gateway = match gateway(env) {
        Ok(g) => g,
        Err(reason) => {
            console_error!("policy_invalid: {reason}");
            return problem_response(&problem::policy_invalid());
        }
    };
    let url = req.url()?;
    let path = url.path().to_owned();
    // The runtime's `Method` maps unknown methods to GET; decisions use the method as sent.
    let method = req.inner().method().to_ascii_uppercase();
    if path == "/healthz" {
        if method != "GET" && method != "HEAD" {
            return problem_response(&problem::method_not_allowed("GET, HEAD"));
        }
        return Response::from_json(
            &serde_json::json!({"status": "ok", "name": "keygate", "version": crate::VERSION}),
        );
    }
    let client_ip = req
        .headers()
        .get("cf-connecting-ip")?
        .and_then(|v| ClientIp::parse(&v));
    let cache = cache(&gateway.policy);
    if path == "/admin" || path.starts_with("/admin/") {
        return admin(req, env, &gateway, &cache, &method, client_ip).await;
    }
    if !FORWARDABLE.contains(&method.as_str()) {
        return problem_response(&problem::method_not_implemented());
    }

    let kv = Kv {
        inner: env.kv(KV_BINDING)?,
        cache_ttl: Some(KV_CACHE_TTL),
    };
    let records = Records {
        store: &kv,
        cache: &cache,
    };
    let headers = RequestHeaders(req.headers());
    let facts = RequestFacts {
        method: &method,
        path: &path,
        query: url.query(),
        headers: &headers,
        client_ip,
    };
    match gateway.decide(&facts, &records, now()).await {
        Decision::Deny(d) => {
            match &d {
                Denial::StoreUnavailable => console_error!("store_unavailable on {method} {path}"),
                Denial::RecordInvalid(id) => {
                    console_error!("record_invalid: the record of key {id} does not parse")
                }
                Denial::PepperMissing(id) => console_error!("pepper_missing: key {id} needs KEY_PEPPER"),
                _ => {}
            }
            problem_response(&Problem::from_denial(&d, &gateway.policy.realm))
        }
        Decision::Forward(f) => forward(req, env, &gateway, &url, f).await,
    }
}

/// Forward the request unchanged but for the credential, `X-Key-*` and the principal headers.
async fn forward(
    req: Request,
    env: &Env,
    gateway: &Gateway,
    url: &worker::Url,
    f: Forward,
) -> worker::Result<Response> {
    let creds = &gateway.policy.credentials;
    let mut query = url.query().map(str::to_owned);
    if let (true, Some(param), Some(q)) = (f.credential.in_query, &creds.query_param, &query) {
        query = Some(strip_query_param(q, param)).filter(|q| !q.is_empty());
    }
    let origin = env
        .var("ORIGIN")
        .ok()
        .map(|v| v.to_string())
        .filter(|o| !o.trim().is_empty());
    let base = match &origin {
        Some(o) => o.trim().trim_end_matches('/').to_owned(),
        None => url.origin().ascii_serialization(),
    };
    let target = match &query {
        Some(q) => format!("{base}{}?{q}", url.path()),
        None => format!("{base}{}", url.path()),
    };

    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        let lower = name.to_ascii_lowercase();
        let drop = lower.starts_with("x-key-")
            || (f.credential.in_bearer_header && lower == creds.bearer_header)
            || (f.credential.in_api_key_header && lower == creds.api_key_header)
            || (origin.is_some() && lower == "host");
        if !drop {
            headers.append(&name, &value)?;
        }
    }
    if let Some(p) = &f.principal {
        headers.set("X-Key-Id", p.key_id().as_str())?;
        headers.set("X-Key-Scopes", &p.scopes_header())?;
        headers.set("X-Key-Environment", p.environment().as_str())?;
        if let Some(t) = &p.tenant {
            headers.set("X-Key-Tenant", t)?;
        }
    }
    let method = req.method();
    let body = match method {
        Method::Get | Method::Head => None,
        _ => req.inner().body().map(Into::into),
    };
    let mut init = RequestInit::new();
    init.with_method(method)
        .with_headers(headers)
        .with_redirect(RequestRedirect::Manual)
        .with_body(body);
    let outbound = Request::new_with_init(&target, &init)?;
    let response = match Fetch::Request(outbound).send().await {
        Ok(r) => r,
        Err(e) => {
            console_error!("origin_unavailable: {e}");
            return problem_response(&problem::origin_unavailable());
        }
    };
    match f.sunset {
        None => Ok(response),
        Some(at) => {
            // Fetched headers are immutable: copy them to add `Sunset`.
            let copy = Headers::new();
            for (k, v) in response.headers().entries() {
                copy.append(&k, &v)?;
            }
            copy.set("Sunset", &at.to_http_date())?;
            Ok(response.with_headers(copy))
        }
    }
}

async fn admin(
    mut req: Request,
    env: &Env,
    gateway: &Gateway,
    cache: &RefCell<RecordCache>,
    method: &str,
    client_ip: Option<ClientIp>,
) -> worker::Result<Response> {
    let url = req.url()?;
    let (path, query) = (url.path(), url.query());
    let too_big = req
        .headers()
        .get("content-length")?
        .and_then(|l| l.trim().parse::<usize>().ok())
        .is_some_and(|l| l > MAX_BODY);
    let body = if too_big {
        vec![0; MAX_BODY + 1]
    } else {
        req.bytes().await.unwrap_or_default()
    };
    let kv = Kv {
        inner: env.kv(KV_BINDING)?,
        cache_ttl: None,
    };
    let token = env.secret("ADMIN_TOKEN").ok().map(|s| s.to_string());
    let ctx = AdminContext::new(gateway, Records { store: &kv, cache }, token.as_deref(), now());
    let headers = RequestHeaders(req.headers());
    let request = AdminRequest {
        method,
        path,
        query,
        headers: &headers,
        body: &body,
        client_ip,
    };
    let result = ctx.handle(&request).await;
    let response = match result {
        Ok(reply) => {
            let headers = Headers::new();
            let response = match reply.body {
                Some(v) => {
                    headers.set("Content-Type", "application/json")?;
                    Response::from_bytes(v.to_string().into_bytes())?
                }
                None => Response::empty()?,
            };
            response.with_status(reply.status).with_headers(headers)
        }
        Err(p) => {
            if p.status >= 500 {
                console_log!("admin {method} {path}: {} {}", p.status, p.code);
            }
            problem_response(&p)?
        }
    };
    let mut response = response;
    response.headers_mut().set("Cache-Control", "no-store")?;
    Ok(response)
}
