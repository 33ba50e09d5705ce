//! The workers-rs adapter, wasm32 only: reads the request into plain values, calls the pure
//! decision or admin code, and turns the result into a forwarded request or a response. It holds
//! no rules of its own.

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::StreamExt;

use crate::admin::{AdminContext, AdminRequest, MAX_BODY};
use crate::cache::RecordCache;
use crate::credential::HeaderSource;
use crate::decide::{Decision, Denial, Forward, Gateway, RequestFacts};
use crate::forward::{Target, outbound_headers, outbound_query};
use crate::ip::ClientIp;
use crate::key::KeyHasher;
use crate::path::canonicalize;
use crate::policy::Policy;
use crate::problem::{self, Problem};
use crate::store::{self, ListPage, Records, StoreError};
use crate::time::Timestamp;
use worker::{
    Context, Env, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Response, console_error,
    console_log, event,
};

/// The gateway and where it forwards, built once per isolate from the env.
struct Deployment {
    gateway: Gateway,
    target: Target,
}

const KV_BINDING: &str = "KEYS";
/// Methods the runtime can forward unchanged.
const FORWARDABLE: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Edge-cache KV reads on the validation path for the minimum KV allows.
const KV_CACHE_TTL: u64 = 30;
const RECORD_CACHE_CAPACITY: usize = 10_000;
const NEGATIVE_CACHE_CAPACITY: usize = 10_000;

thread_local! {
    /// Parsed once per isolate: the env does not change under a running isolate.
    static GATEWAY: RefCell<Option<Result<Rc<Deployment>, String>>> = const { RefCell::new(None) };
    static CACHE: RefCell<Option<Rc<RefCell<RecordCache>>>> = const { RefCell::new(None) };
    /// The admin API's "disabled because" line has been logged in this isolate.
    static TOKEN_WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn deployment(env: &Env) -> Result<Rc<Deployment>, String> {
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
                let origin = env.var("ORIGIN").ok().map(|v| v.to_string());
                let target = Target::from_config(origin.as_deref(), &policy)?;
                let pepper = env.secret("KEY_PEPPER").ok().map(|s| s.to_string());
                let hasher = KeyHasher::from_secret(pepper.as_deref())?;
                Ok(Rc::new(Deployment {
                    gateway: Gateway { policy, hasher },
                    target,
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

/// `Content-Length` above 0, or any `Transfer-Encoding`: the request has a body. (workerd
/// hides a chunked body on GET and HEAD entirely; `forward` then drops its framing headers.)
fn has_body(headers: &Headers) -> bool {
    let get = |n: &str| headers.get(n).ok().flatten();
    get("transfer-encoding").is_some()
        || get("content-length").is_some_and(|l| l.trim().parse::<u64>().map_or(true, |n| n > 0))
}

fn with_extra_headers(response: Response, extra: &[(&'static str, String)]) -> worker::Result<Response> {
    if extra.is_empty() {
        return Ok(response);
    }
    // Fetched headers are immutable: copy them to add ours.
    let copy = Headers::new();
    for (k, v) in response.headers().entries() {
        copy.append(&k, &v)?;
    }
    for (k, v) in extra {
        copy.set(k, v)?;
    }
    Ok(response.with_headers(copy))
}

async fn handle(req: Request, env: &Env) -> worker::Result<Response> {
    let deployment = match deployment(env) {
        Ok(d) => d,
        Err(reason) => {
            console_error!("policy_invalid: {reason}");
            return problem_response(&problem::policy_invalid());
        }
    };
    let gateway = &deployment.gateway;
    let policy = &gateway.policy;
    let url = req.url()?;
    let raw_path = url.path().to_owned();
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    // Host and port as the URL has them (no port when it is the scheme's default).
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    // The runtime's `Method` maps unknown methods to GET; decisions use the method as sent.
    let method = req.inner().method().to_ascii_uppercase();
    if raw_path == "/healthz" {
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
    let cache = cache(policy);
    // The admin API: `/admin/...` as sent (its handlers validate every segment themselves), or
    // any path whose canonical form starts with `admin`, so `/%61dmin/keys` is `/admin/keys`.
    let admin_path = if raw_path == "/admin" || raw_path.starts_with("/admin/") {
        Some(raw_path.clone())
    } else {
        canonicalize(&raw_path, policy.path_rules)
            .ok()
            .filter(|c| c.segments.first().is_some_and(|s| s == "admin"))
            .map(|c| c.encoded(policy.path_rules))
    };
    if let Some(admin_path) = admin_path {
        if !policy.admin.admits(&host, client_ip) {
            // Outside the fence the admin API does not exist: the answer of any unknown path.
            return problem_response(&Problem::from_denial(&Denial::NoRoute, &policy.realm));
        }
        return admin(req, env, gateway, &cache, &method, &admin_path, client_ip).await;
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
        path: &raw_path,
        query: url.query(),
        headers: &headers,
        client_ip,
        host: &authority,
        has_body: has_body(req.headers()),
    };
    let decision = gateway.decide(&facts, &records, now()).await;
    let cors = match &decision {
        Decision::Preflight(_) => Vec::new(),
        _ => gateway.cors_headers(&facts),
    };
    match decision {
        Decision::Deny(d) => {
            match &d {
                Denial::StoreUnavailable => console_error!("store_unavailable on {method} {raw_path}"),
                Denial::RecordInvalid(id) => {
                    console_error!("record_invalid: the record of key {id} does not parse")
                }
                Denial::PepperMissing(id) => console_error!("pepper_missing: key {id} needs KEY_PEPPER"),
                Denial::LoopDetected => {
                    console_error!("loop_detected: {method} came back to this gateway; check ORIGIN")
                }
                _ => {}
            }
            with_extra_headers(problem_response(&Problem::from_denial(&d, &policy.realm))?, &cors)
        }
        Decision::Preflight(h) => {
            let headers = Headers::new();
            for (k, v) in &h {
                headers.set(k, v)?;
            }
            Ok(Response::empty()?.with_status(204).with_headers(headers))
        }
        Decision::Forward(f) => {
            let scheme = url.scheme().to_owned();
            let query = url.query().map(str::to_owned);
            forward(
                req,
                &deployment,
                &scheme,
                &host,
                query.as_deref(),
                client_ip,
                f,
                &cors,
            )
            .await
        }
    }
}

/// Forward what the gateway matched and vouches for: the canonical path, the query without
/// keys, and the headers of `crate::forward::outbound_headers`.
#[allow(clippy::too_many_arguments)]
async fn forward(
    req: Request,
    deployment: &Deployment,
    scheme: &str,
    authority: &str,
    query: Option<&str>,
    client_ip: Option<ClientIp>,
    f: Forward,
    cors: &[(&'static str, String)],
) -> worker::Result<Response> {
    let policy = &deployment.gateway.policy;
    let query = outbound_query(policy, query);
    let target = deployment
        .target
        .url(scheme, authority, &f.path, query.as_deref());
    let incoming: Vec<(String, String)> = req.headers().entries().collect();
    let headers = Headers::new();
    let method = req.method();
    let bodiless = matches!(method, Method::Get | Method::Head);
    for (name, value) in outbound_headers(policy, &incoming, &f, client_ip, bodiless) {
        headers.append(&name, &value)?;
    }
    let body = if bodiless {
        None
    } else {
        req.inner().body().map(Into::into)
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
    let mut extra: Vec<(&'static str, String)> = cors.to_vec();
    if let Some(at) = f.sunset {
        extra.push(("Sunset", at.to_http_date()));
    }
    with_extra_headers(response, &extra)
}

/// Reads at most `MAX_BODY + 1` bytes of a body, however it arrives (chunked included).
/// `Err` is the problem to answer: 413 over the limit, 400 when the body cannot be read.
async fn bounded_body(req: &mut Request) -> Result<Vec<u8>, Problem> {
    let too_big = || {
        Problem::new(
            413,
            "payload_too_large",
            "Payload too large",
            "The body is over 64 KiB.",
        )
    };
    let unreadable = || {
        Problem::new(
            400,
            "body_unreadable",
            "Body unreadable",
            "The request body could not be read.",
        )
    };
    let declared = req.headers().get("content-length").ok().flatten();
    if declared
        .as_deref()
        .and_then(|l| l.trim().parse::<u64>().ok())
        .is_some_and(|l| l > MAX_BODY as u64)
    {
        return Err(too_big());
    }
    if req.inner().body().is_none() {
        return Ok(Vec::new());
    }
    let mut stream = req.stream().map_err(|_| unreadable())?;
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[allow(clippy::too_many_arguments)]
async fn admin(
    mut req: Request,
    env: &Env,
    gateway: &Gateway,
    cache: &RefCell<RecordCache>,
    method: &str,
    path: &str,
    client_ip: Option<ClientIp>,
) -> worker::Result<Response> {
    let url = req.url()?;
    let query = url.query();
    let body = match bounded_body(&mut req).await {
        Ok(b) => b,
        Err(p) => {
            let mut r = problem_response(&p)?;
            r.headers_mut().set("Cache-Control", "no-store")?;
            return Ok(r);
        }
    };
    let kv = Kv {
        inner: env.kv(KV_BINDING)?,
        cache_ttl: None,
    };
    let token = env.secret("ADMIN_TOKEN").ok().map(|s| s.to_string());
    if let Some(reason) = crate::admin::admin_token_weakness(token.as_deref())
        && !TOKEN_WARNED.replace(true)
    {
        // Once per isolate: the reason never changes under a running isolate.
        console_error!("admin_disabled: {reason}");
    }
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
                console_log!("admin {method} {path}: {} {}: {}", p.status, p.code, p.detail);
            }
            problem_response(&p)?
        }
    };
    let mut response = response;
    response.headers_mut().set("Cache-Control", "no-store")?;
    Ok(response)
}
