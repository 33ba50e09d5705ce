//! The workers-rs adapter, wasm32 only: reads the request into plain values, calls the pure
//! decision or admin code, and turns the result into a forwarded request or a response. It holds
//! no rules of its own.

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::StreamExt;

use crate::admin::MAX_BODY;
use crate::cache::RecordCache;
use crate::credential::HeaderSource;
use crate::decide::{Decision, Denial, Forward, Gateway, Known, RequestFacts, Step};
use crate::forward::{Secrets, Target, outbound_headers, outbound_query};
use crate::ip::ClientIp;
use crate::key::{KeyHasher, KeyPrefix};
use crate::log::{self, RequestContext};
use crate::path::canonicalize;
use crate::policy::Policy;
use crate::problem::{self, Problem};
use crate::request_url::RequestUrl;
use crate::store::{self, ListPage, Records, StoreError};
use crate::time::Timestamp;
use worker::wasm_bindgen::JsCast;
use worker::{
    Context, Env, Headers, Method, Request, RequestInit, Response, console_error, console_log, event, web_sys,
};

mod durable;
mod feed;
mod metering;
mod tokens;

/// The gateway and where it forwards, built once per isolate from the env.
struct Deployment {
    gateway: Gateway,
    target: Target,
    /// `ADMIN_TOKEN`, read once: the admin API checks it, and every request is scrubbed of it.
    admin_token: Option<String>,
    /// `SERVER_TIMING = "1"`: forwarded responses carry `Server-Timing` (on in local dev).
    server_timing: bool,
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
                // Structured in wrangler.toml; a JSON string when given with `--var`; or the
                // policy file bundled at build time (exactly one of them).
                let var = env.object_var::<serde_json::Value>("POLICY").ok().or_else(|| {
                    env.var("POLICY")
                        .ok()
                        .map(|v| serde_json::Value::String(v.to_string()))
                });
                let raw = crate::bundled::choose(crate::bundled::POLICY_JSON, var)?;
                let policy = Policy::from_json(&raw).map_err(|e| e.0)?;
                let origin = env.var("ORIGIN").ok().map(|v| v.to_string());
                let target = Target::from_config(origin.as_deref(), &policy)?;
                let pepper = env.secret("KEY_PEPPER").ok().map(|s| s.to_string());
                let hasher = KeyHasher::from_secret(pepper.as_deref())?;
                // Unset or empty: no tokens. Set but invalid: fail closed (500, reason logged).
                let tokens = match env.secret("TOKEN_SIGNING_KEY").map(|s| s.to_string()) {
                    Ok(s) if !s.is_empty() => Some(crate::token::TokenKeys::from_secret(&s)?),
                    _ => None,
                };
                Ok(Rc::new(Deployment {
                    gateway: Gateway {
                        policy,
                        hasher,
                        tokens,
                    },
                    target,
                    admin_token: env.secret("ADMIN_TOKEN").ok().map(|s| s.to_string()),
                    server_timing: env
                        .var("SERVER_TIMING")
                        .is_ok_and(|v| matches!(v.to_string().as_str(), "1" | "on" | "true")),
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
    /// The env the `KEYS` binding is read from, only when a call needs it: workers-rs's
    /// `KvStore` reads the binding and five of its methods (six `Reflect.get`s) when built.
    env: Env,
    cache_ttl: Option<u64>,
}

impl Kv {
    fn new(env: &Env, cache_ttl: Option<u64>) -> Kv {
        Kv {
            env: env.clone(),
            cache_ttl,
        }
    }

    fn store(&self) -> Result<worker::kv::KvStore, StoreError> {
        self.env.kv(KV_BINDING).map_err(|e| StoreError(e.to_string()))
    }
}

fn js_error(e: worker::wasm_bindgen::JsValue) -> StoreError {
    StoreError(worker::Error::from(e).to_string())
}

fn kv_error(e: worker::kv::KvError) -> StoreError {
    StoreError(e.to_string())
}

impl store::KvStore for Kv {
    /// `KEYS.get(key, {type: "text", cacheTtl})`, called directly: the one KV call of the
    /// validation path, without workers-rs's `KvStore` (its options go through
    /// serde-wasm-bindgen).
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        use worker::js_sys::{Function, Object, Promise, Reflect};
        use worker::wasm_bindgen::JsValue;
        let ns = Reflect::get(&self.env, &JsValue::from_str(KV_BINDING)).map_err(js_error)?;
        let get: Function = Reflect::get(&ns, &JsValue::from_str("get"))
            .and_then(JsCast::dyn_into)
            .map_err(js_error)?;
        let options = Object::new();
        Reflect::set(&options, &JsValue::from_str("type"), &JsValue::from_str("text")).map_err(js_error)?;
        if let Some(ttl) = self.cache_ttl {
            #[allow(clippy::cast_precision_loss)]
            let ttl = JsValue::from_f64(ttl as f64);
            Reflect::set(&options, &JsValue::from_str("cacheTtl"), &ttl).map_err(js_error)?;
        }
        let promise: Promise = get
            .call2(&ns, &JsValue::from_str(key), &options)
            .and_then(JsCast::dyn_into)
            .map_err(js_error)?;
        let value = worker::wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .map_err(js_error)?;
        Ok(value.as_string())
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.store()?
            .put(key, value)
            .map_err(kv_error)?
            .execute()
            .await
            .map_err(kv_error)
    }

    async fn put_expiring(&self, key: &str, value: &str, ttl_seconds: u64) -> Result<(), StoreError> {
        self.store()?
            .put(key, value)
            .map_err(kv_error)?
            .expiration_ttl(ttl_seconds.max(60))
            .execute()
            .await
            .map_err(kv_error)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store()?.delete(key).await.map_err(kv_error)
    }

    async fn list(&self, prefix: &str, cursor: Option<&str>, limit: u32) -> Result<ListPage, StoreError> {
        let mut q = self
            .store()?
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
    // `Date.now()` itself: workers-rs's `Date::now()` constructs a `Date` object per call.
    #[allow(clippy::cast_possible_truncation)]
    Timestamp::from_millis(worker::js_sys::Date::now() as i64)
}

/// A problem+json response carrying the request id in its body. Anything key-shaped, and the
/// admin token, are redacted from it (a field name or a serde message can echo input).
fn problem_response(p: &Problem, ctx: &RequestContext<'_>) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", problem::CONTENT_TYPE)?;
    for (k, v) in &p.headers {
        headers.set(k, v)?;
    }
    let body = p
        .clone()
        .with("request_id", serde_json::json!(ctx.request_id))
        .body();
    let body = crate::key::redact(&body, ctx.key_prefix, ctx.token);
    Ok(Response::from_bytes(body.into_bytes())?
        .with_status(p.status)
        .with_headers(headers))
}

/// Logs the problem as one JSON line (`reason` adds what an operator needs for a 5xx) and
/// answers with it.
fn answer(
    ctx: &RequestContext<'_>,
    p: &Problem,
    route: Option<usize>,
    key_id: Option<&str>,
    reason: Option<&str>,
) -> worker::Result<Response> {
    let mut m = ctx.problem(p.code, p.status, route, key_id);
    if let Some(r) = reason {
        m.insert("reason".into(), serde_json::json!(r));
    }
    respond(ctx, p, m)
}

/// Writes the problem's log line `m` (at error level from 500 on) and answers with it.
fn respond(
    ctx: &RequestContext<'_>,
    p: &Problem,
    m: serde_json::Map<String, serde_json::Value>,
) -> worker::Result<Response> {
    if p.status >= 500 {
        console_error!("{}", log::line(m));
    } else {
        console_log!("{}", log::line(m));
    }
    problem_response(p, ctx)
}

/// Adds `X-Request-Id` to any response (fetched ones have immutable headers: copied).
fn stamp(response: web_sys::Response, request_id: &str) -> worker::Result<web_sys::Response> {
    if response.headers().set("X-Request-Id", request_id).is_ok() {
        return Ok(response);
    }
    with_extra_headers_raw(response, &[("X-Request-Id", request_id.to_owned())])
}

/// A workers-rs response as the runtime's own (what the entry returns).
fn raw(response: worker::Result<Response>) -> worker::Result<web_sys::Response> {
    response.map(Into::into)
}

/// The runtime's response with `extra` headers set on a copy of its own (one native call copies
/// them: fetched headers are immutable), body and status unchanged.
fn with_extra_headers_raw(
    response: web_sys::Response,
    extra: &[(&'static str, String)],
) -> worker::Result<web_sys::Response> {
    if extra.is_empty() {
        return Ok(response);
    }
    // A WebSocket upgrade's response can only be rebuilt with its socket: workers-rs's
    // conversion carries it (`forward` lets a 101 through only with one).
    if response.status() == 101 {
        return with_extra_headers(Response::from(response), extra).map(Into::into);
    }
    let headers = web_sys::Headers::new_with_headers(&response.headers())?;
    for (k, v) in extra {
        headers.set(k, v)?;
    }
    let init = web_sys::ResponseInit::new();
    init.set_status(response.status());
    init.set_headers(&headers);
    Ok(web_sys::Response::new_with_opt_readable_stream_and_init(
        response.body().as_ref(),
        &init,
    )?)
}

/// `KEYGATE_TEST_PANIC = "1"` (tests only): `GET /__keygate/panic` aborts the wasm instance, so
/// a test can check that the next request is served by a fresh one (`scripts/entry.mjs`).
const TEST_PANIC_VAR: &str = "KEYGATE_TEST_PANIC";

/// The entry. It takes the runtime's own request object (workers-rs's `Request` would read its
/// method, URL, headers and `cf` object across the boundary first, whether used or not) and
/// answers with the runtime's own response object.
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    let headers = Headers(req.headers());
    let cf_ray = headers.get("cf-ray").ok().flatten();
    let request_id = log::request_id(cf_ray.as_deref(), || {
        crate::key::random_hex(8).unwrap_or_else(|_| "0".repeat(16))
    });
    let method = req.method().to_ascii_uppercase();
    // The URL is read and split once per request, here.
    let url_text = req.url();
    let url = RequestUrl::parse(&url_text);
    let path = url.map(|u| u.path.to_owned()).unwrap_or_default();
    if path == "/__keygate/panic" && env.var(TEST_PANIC_VAR).is_ok_and(|v| v.to_string() == "1") {
        std::process::abort();
    }
    let response = match url {
        Some(url) => handle(req, headers, url, &method, &env, &ctx, &request_id).await,
        None => Err(worker::Error::RustError(format!(
            "the runtime gave an unparsable URL: {url_text}"
        ))),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let prefix = KeyPrefix::default();
            let ctx = RequestContext {
                request_id: &request_id,
                method: &method,
                path: &path,
                client_ip: None,
                key_prefix: &prefix,
                token: None,
            };
            answer(
                &ctx,
                &problem::internal_error("The gateway failed to handle this request; it was not forwarded."),
                None,
                None,
                Some(&e.to_string()),
            )?
            .into()
        }
    };
    // Usage counts reach the registry at most once per flush interval, after the response.
    if let Ok(d) = deployment(&env) {
        metering::flush_usage(&env, &ctx, d.gateway.policy.usage_flush_seconds, now());
    }
    stamp(response, &request_id)
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
    // Fetched headers are immutable: copy them (one native call, not one per header) to add
    // ours.
    let copy = Headers(worker::web_sys::Headers::new_with_headers(&response.headers().0)?);
    for (k, v) in extra {
        copy.set(k, v)?;
    }
    Ok(response.with_headers(copy))
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    req: web_sys::Request,
    headers: Headers,
    url: RequestUrl<'_>,
    method: &str,
    env: &Env,
    wctx: &Context,
    request_id: &str,
) -> worker::Result<web_sys::Response> {
    let raw_path = url.path.to_owned();
    // Decisions use the method as sent (workers-rs's `Method` maps unknown ones to GET).
    let method = method.to_owned();
    let client_ip = headers.get("cf-connecting-ip")?.and_then(|v| ClientIp::parse(&v));
    let deployment = match deployment(env) {
        Ok(d) => d,
        Err(reason) => {
            let prefix = KeyPrefix::default();
            let ctx = RequestContext {
                request_id,
                method: &method,
                path: &raw_path,
                client_ip,
                key_prefix: &prefix,
                token: None,
            };
            return raw(answer(
                &ctx,
                &problem::policy_invalid(),
                None,
                None,
                Some(&reason),
            ));
        }
    };
    let gateway = &deployment.gateway;
    let policy = &gateway.policy;
    let ctx = RequestContext {
        request_id,
        method: &method,
        path: &raw_path,
        client_ip,
        key_prefix: &policy.key_prefix,
        token: deployment.admin_token.as_deref(),
    };
    let host = url.host.to_ascii_lowercase();
    // Host and port as the URL has them (no port when it is the scheme's default).
    let authority = match url.port {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    if raw_path == "/healthz" {
        if method != "GET" && method != "HEAD" {
            return raw(answer(
                &ctx,
                &problem::method_not_allowed("GET, HEAD"),
                None,
                None,
                None,
            ));
        }
        return raw(Response::from_json(
            &serde_json::json!({"status": "ok", "name": "keygate", "version": crate::VERSION}),
        ));
    }
    let cache = cache(policy);
    // An admin hostname serves the admin API and console only (and `/healthz`): nothing else,
    // so no origin page (and no other endpoint) shares an origin, and the console's
    // sessionStorage, with them.
    let is_admin_path = raw_path == "/admin" || raw_path.starts_with("/admin/");
    if policy.admin.dedicated(&host)
        && !is_admin_path
        && canonicalize(&raw_path, policy.path_rules)
            .ok()
            .is_none_or(|c| c.matched().first().is_none_or(|s| s != "admin"))
    {
        let p = Problem::from_denial(&Denial::NoRoute, &policy.realm);
        return raw(answer(
            &ctx,
            &p,
            None,
            None,
            Some("an admin hostname serves only /admin/*"),
        ));
    }
    // The failed-auth limiter's view of the client: its address (an IPv6 /64), when known.
    let client = client_ip.map(crate::limits::client_key);
    let guard = policy.limits.failed_auth.as_ref().zip(client.as_deref());
    // The gateway's own token endpoints, outside the route policy and the admin fence: every
    // request there presents a credential to look up, so a blocked address stops here.
    if matches!(raw_path.as_str(), "/oauth/token" | "/v1/keys/verify")
        && let Some((tier, ip)) = guard
        && let Some(retry) = metering::blocked(ip, now())
    {
        return raw(answer(
            &ctx,
            &problem::auth_failures_limited(tier, retry),
            None,
            None,
            None,
        ));
    }
    match raw_path.as_str() {
        "/oauth/token" => {
            return raw(tokens::token_endpoint(Request::from(req), env, &deployment, &ctx, &cache).await);
        }
        "/.well-known/jwks.json" => return raw(tokens::jwks(&deployment, &ctx)),
        "/v1/keys/verify" => {
            return raw(tokens::verify_endpoint(Request::from(req), env, &deployment, &ctx, &cache).await);
        }
        _ => {}
    }
    // The admin API: `/admin/...` as sent (its handlers validate every segment themselves), or
    // any path whose canonical form starts with `admin`, so `/%61dmin/keys` is `/admin/keys`.
    let admin_path = if raw_path == "/admin" || raw_path.starts_with("/admin/") {
        Some(raw_path.clone())
    } else {
        canonicalize(&raw_path, policy.path_rules)
            .ok()
            .filter(|c| c.matched().first().is_some_and(|s| s == "admin"))
            .map(|c| c.encoded(policy.path_rules))
    };
    if let Some(admin_path) = admin_path {
        if !policy.admin.admits(&host, client_ip) {
            // Outside the fence the admin API does not exist: the answer of any unknown path.
            let p = Problem::from_denial(&Denial::NoRoute, &policy.realm);
            return raw(answer(&ctx, &p, None, None, Some("outside the admin fence")));
        }
        let req = Request::from(req);
        if let Some(asset) = crate::console::asset(&admin_path, &method) {
            return raw(console_asset(&req, (url.scheme, &authority), env, &ctx, asset).await);
        }
        return raw(admin(req, url.query, env, &ctx, &admin_path).await);
    }
    if !FORWARDABLE.contains(&method.as_str()) {
        return raw(answer(&ctx, &problem::method_not_implemented(), None, None, None));
    }
    // The admin token never travels in a gateway path (keys are refused by the decision).
    if let Some(t) = ctx.token
        && crate::key::holds_secret(&raw_path, &policy.key_prefix, Some(t))
    {
        let p = Problem::from_denial(&Denial::KeyInPath, &policy.realm);
        return raw(answer(&ctx, &p, None, None, None));
    }

    let kv = validation_kv(env)?;
    let records = Records {
        store: &kv,
        cache: &cache,
    };
    let facts = RequestFacts {
        method: &method,
        path: &raw_path,
        query: url.query,
        headers: &RequestHeaders(&headers),
        client_ip,
        host: &authority,
        has_body: has_body(&headers),
    };
    // The decision's two pure steps; the one I/O between them is the record lookup (this
    // isolate's cache, then KV), and only for a request that presents a well-formed key.
    let now = now();
    // The revocation feed, at most once per `revocation_poll_ms` per isolate: tokens are
    // checked against it in the first step, key records in the second. A request the first
    // step decides without any credential (a public route, a preflight) never waits for it,
    // so neither does an isolate's first public request.
    let start = || feed::with(|f| gateway.start(&facts, now, f));
    let mut step = start();
    if !credential_free(&step) && feed::due(policy.revocation_poll_ms, now) {
        feed::refresh(env, policy.revocation_poll_ms, now).await;
        if matches!(step, Step::Done(..)) {
            // A token was decided against the older copy: decide again with the fresh one.
            step = start();
        }
    }
    // An address past the failed-authentication limit gets 429 before any lookup.
    if let Some((tier, ip)) = guard
        && unverified(&step)
        && let Some(retry) = metering::blocked(ip, now)
    {
        let route = match &step {
            Step::NeedRecord(p) => Some(p.route_index()),
            Step::Done(_, t) => t.route.get(),
        };
        let response = answer(
            &ctx,
            &problem::auth_failures_limited(tier, retry),
            route,
            None,
            None,
        )?;
        return raw(with_extra_headers(response, &gateway.cors_headers(&facts)));
    }
    // Where the principal's record came from, for `Server-Timing`.
    let mut source = "none";
    let (decision, trace) = match step {
        Step::Done(decision, trace) => {
            if matches!(&decision, Decision::Forward(f) if f.principal.is_some()) {
                source = "token";
            }
            (decision, trace)
        }
        Step::NeedRecord(pending) => {
            let (record, from) = lookup_traced(env, &records, pending.key_id(), now).await;
            source = from;
            let known = feed::with(|f| Known::new(record).with_feed(f, now));
            gateway.finish(pending, known, now)
        }
    };
    let cors = match &decision {
        Decision::Preflight(_) => Vec::new(),
        _ => gateway.cors_headers(&facts),
    };
    match decision {
        Decision::Deny(d) => {
            if let Some((tier, ip)) = guard
                && crate::limits::counts_as_failed_auth(&d)
            {
                metering::failed_auth(env, tier, ip, now).await;
            }
            if crate::usage::counted(&d)
                && let Some(k) = trace.key_id.borrow().as_ref()
            {
                metering::count(k, now, Problem::from_denial(&d, &policy.realm).code);
            }
            let reason = match &d {
                Denial::StoreUnavailable => Some("the KV read failed"),
                Denial::RecordInvalid(_) => Some("the stored record does not parse"),
                Denial::PepperMissing(_) => Some("the record needs KEY_PEPPER, which is not set"),
                Denial::LoopDetected => Some("the request came back to this gateway: check ORIGIN"),
                _ => None,
            };
            let key_id = trace.key_id.borrow().as_ref().map(|k| k.to_string());
            let p = Problem::from_denial(&d, &policy.realm);
            let response = answer(&ctx, &p, trace.route.get(), key_id.as_deref(), reason)?;
            raw(with_extra_headers(response, &cors))
        }
        Decision::Preflight(h) => {
            let headers = Headers::new();
            for (k, v) in &h {
                headers.set(k, v)?;
            }
            raw(Ok(Response::empty()?.with_status(204).with_headers(headers)))
        }
        Decision::Forward(f) => {
            let route = trace.route.get();
            let mut extra = cors;
            if let Some(principal) = &f.principal {
                match limits_and_credits(env, wctx, &ctx, policy, route, principal, now).await {
                    Ok(headers) => extra.extend(headers),
                    Err(response) => return raw(with_extra_headers(response?, &extra)),
                }
            }
            let cors = extra;
            let timing = deployment.server_timing.then_some((now, source));
            forward(
                req,
                &headers,
                &deployment,
                &ctx,
                route,
                (url.scheme, &authority),
                url.query,
                f,
                &cors,
                timing,
            )
            .await
        }
    }
}

/// The first step forwarded or answered a preflight with no credential involved: nothing in
/// the revocation feed can change that.
fn credential_free(step: &Step<'_, '_>) -> bool {
    match step {
        Step::Done(Decision::Forward(f), _) => f.principal.is_none(),
        Step::Done(Decision::Preflight(_), _) => true,
        _ => false,
    }
}

/// Whether the first step left a credential that is not known to be genuine: a key still to be
/// looked up, or one refused as a guess. (The failed-auth limiter guards exactly these.)
fn unverified(step: &Step<'_, '_>) -> bool {
    match step {
        Step::NeedRecord(_) => true,
        Step::Done(Decision::Deny(d), _) => crate::limits::counts_as_failed_auth(d),
        Step::Done(..) => false,
    }
}

/// An authenticated request's rate limit (its key's tier, else its route's), then its credits
/// (for a metered key, the route's cost), and its count in the key's usage. `Ok`: headers for
/// the forwarded response; `Err`: the answer instead (429, or 503 when a limiter fails closed
/// or the credits cannot be checked).
async fn limits_and_credits(
    env: &Env,
    wctx: &Context,
    ctx: &RequestContext<'_>,
    policy: &Policy,
    route: Option<usize>,
    principal: &crate::decide::Principal,
    now: Timestamp,
) -> Result<Vec<(&'static str, String)>, worker::Result<Response>> {
    use crate::limits::{FailMode, TierChoice};
    use metering::{Limited, Spend};
    let key = principal.key_id();
    let key_str = key.to_string();
    let matched = route.and_then(|i| policy.routes.get(i));
    // Counted in the key's usage under the problem's own code.
    let deny = |p: Problem, reason: Option<&str>| {
        metering::count(key, now, p.code);
        Err(answer(ctx, &p, route, Some(&key_str), reason))
    };
    let fail_closed = policy.limits.on_error == FailMode::FailClosed;
    let mut headers = Vec::new();
    match policy.limits.tier_for(
        principal.record.rate_tier.as_deref(),
        matched.and_then(|r| r.rate_tier.as_deref()),
    ) {
        TierChoice::None => {}
        TierChoice::Tier(tier) => match metering::limit(env, tier, &key_str, now).await {
            Limited::Under => headers.push(("RateLimit-Policy", tier.policy_header())),
            Limited::Over => return deny(problem::rate_limited(tier), None),
            Limited::Failed if fail_closed => {
                return deny(
                    problem::limiter_unavailable(),
                    Some("the rate limiter failed (on_error = fail_closed)"),
                );
            }
            Limited::Failed => {}
        },
        TierChoice::Unknown if fail_closed => {
            return deny(
                problem::limiter_unavailable(),
                Some("the key names a rate tier the policy does not declare"),
            );
        }
        TierChoice::Unknown => {}
    }
    if principal.record.metered {
        let cost = matched.map_or(1, |r| r.cost);
        match metering::spend(env, wctx, key, cost, now).await {
            Spend::Spent => {}
            Spend::Exhausted(retry) => {
                return deny(problem::credits_exhausted(cost, retry), None);
            }
            Spend::NoKey => {
                let p = Problem::from_denial(&Denial::InvalidKey, &policy.realm);
                return Err(answer(
                    ctx,
                    &p,
                    route,
                    Some(&key_str),
                    Some("the registry no longer knows the key"),
                ));
            }
            Spend::Unavailable(reason) => {
                let reason = format!("the registry is unreachable for credits: {reason}");
                return deny(problem::credits_unavailable(), Some(&reason));
            }
        }
    }
    metering::count(key, now, crate::usage::ALLOWED);
    Ok(headers)
}

/// Forward what the gateway matched and vouches for: the canonical path, the query without
/// keys, and the headers of `crate::forward::outbound_headers`, plus the request id.
#[allow(clippy::too_many_arguments)]
async fn forward(
    req: web_sys::Request,
    incoming: &Headers,
    deployment: &Deployment,
    ctx: &RequestContext<'_>,
    route: Option<usize>,
    (scheme, authority): (&str, &str),
    query: Option<&str>,
    f: Forward,
    cors: &[(&'static str, String)],
    timing: Option<(Timestamp, &'static str)>,
) -> worker::Result<web_sys::Response> {
    let policy = &deployment.gateway.policy;
    let incoming: Vec<(String, String)> = incoming.entries().collect();
    let bodiless = matches!(ctx.method, "GET" | "HEAD");
    let secrets = Secrets {
        admin_token: ctx.token,
        tokens: deployment.gateway.tokens.as_ref(),
    };
    let outbound = outbound_headers(policy, &incoming, &f, ctx.client_ip, bodiless, secrets);
    let query = outbound_query(policy, query, secrets);
    let target = deployment
        .target
        .url(scheme, authority, &f.path, query.as_deref());
    // Built header by header from exactly what `outbound_headers` returns: a native copy of the
    // incoming object trimmed by differences was tried, and leaked repeated `Set-Cookie`
    // request headers (listed one by one, unlike other names) and cost quadratic time.
    let headers = web_sys::Headers::new()?;
    for (name, value) in outbound {
        if !name.eq_ignore_ascii_case("x-request-id") {
            headers.append(&name, &value)?;
        }
    }
    // The signed principal: the origin can verify with the JWKS that this came through here.
    if let (true, Some(keys), Some(principal)) = (
        policy.tokens.assertion,
        &deployment.gateway.tokens,
        f.principal.as_ref(),
    ) && let Some(jwt) = crate::forward::assertion(keys, policy, principal, ctx.method, &f.path, now())
    {
        headers.set("X-Key-Assertion", &jwt)?;
    }
    // The origin can log the same id as the gateway, and knows the scheme the client used.
    headers.set("X-Request-Id", ctx.request_id)?;
    headers.set("X-Forwarded-Proto", scheme)?;
    // The runtime's `fetch` with a plain init object: no `Request` is built, and nothing is
    // read back from one (workers-rs's `Request::new_with_init` and `Fetch` would read the new
    // request's method, URL, headers and `cf`, then the response's headers, status, WebSocket
    // and `cf`).
    let init = web_sys::RequestInit::new();
    init.set_method(ctx.method);
    init.set_headers(&headers);
    init.set_redirect(web_sys::RequestRedirect::Manual);
    if !bodiless && let Some(body) = req.body() {
        init.set_body(&body);
    }
    // The origin was not reached, or its answer cannot be passed on: a problem, with CORS.
    let fail = |p: Problem, reason: String| {
        let key_id = f.principal.as_ref().map(|p| p.key_id().to_string());
        let response = answer(ctx, &p, route, key_id.as_deref(), Some(&reason))?;
        raw(with_extra_headers(response, cors))
    };
    let sent = now();
    let global: web_sys::WorkerGlobalScope = worker::js_sys::global().unchecked_into();
    let fetched =
        worker::wasm_bindgen_futures::JsFuture::from(global.fetch_with_str_and_init(&target, &init))
            .await
            .and_then(|r| r.dyn_into::<web_sys::Response>());
    let response = match fetched {
        Ok(r) => r,
        Err(e) => {
            let origin = target.split('?').next().unwrap_or_default();
            let reason = format!("fetch {origin} failed: {}", worker::Error::from(e));
            return fail(problem::origin_unavailable(), reason);
        }
    };
    let status = response.status();
    // A 101 can be passed on only with its WebSocket; without one (an origin answering 101 to
    // a plain request) the runtime cannot build the response at all.
    let websocket = status == 101
        && worker::js_sys::Reflect::get(&response, &"webSocket".into())
            .is_ok_and(|w| !w.is_null() && !w.is_undefined());
    if !websocket && !(200..=599).contains(&status) {
        let reason = format!("the origin answered status {status}");
        return fail(problem::origin_status_unusable(status), reason);
    }
    let mut extra: Vec<(&'static str, String)> = cors.to_vec();
    if let Some(at) = f.sunset {
        extra.push(("Sunset", at.to_http_date()));
    }
    // Always a copy with `X-Request-Id`: the fetched headers are immutable, and `stamp` setting
    // it on them would throw (an exception across the boundary costs more than the copy).
    extra.push(("X-Request-Id", ctx.request_id.to_owned()));
    if let Some((started, source)) = timing {
        extra.push(("Server-Timing", server_timing(started, sent, now(), source)));
    }
    with_extra_headers_raw(response, &extra)
}

/// KV as the validation path reads it (edge-cached for `KV_CACHE_TTL`).
fn validation_kv(env: &Env) -> worker::Result<Kv> {
    Ok(Kv::new(env, Some(KV_CACHE_TTL)))
}

/// A key's record for the decision's second step: this isolate's cache, then KV; and when the
/// revocation feed says that copy predates a change in effect, the current one from the
/// registry.
async fn lookup(
    env: &Env,
    records: &Records<'_, Kv>,
    id: &crate::key::KeyId,
    now: Timestamp,
) -> Result<Option<Rc<crate::record::KeyRecord>>, store::LookupError> {
    lookup_traced(env, records, id, now).await.0
}

/// [`lookup`], saying where the record came from: `cache`, `kv` or `registry`.
async fn lookup_traced(
    env: &Env,
    records: &Records<'_, Kv>,
    id: &crate::key::KeyId,
    now: Timestamp,
) -> (
    Result<Option<Rc<crate::record::KeyRecord>>, store::LookupError>,
    &'static str,
) {
    // What `Records::get` does (the cache, then KV), with one cache lookup that also says which.
    let hit = records.cache.borrow_mut().get(id, now);
    let cached = hit.is_some();
    let record = match hit {
        Some(r) => Ok(r),
        None => records.load(id, now).await,
    };
    if let Ok(Some(r)) = &record
        && let Some(version) = feed::with(|f| f.refresh_needed(r, now))
    {
        return (
            feed::current_record(env, records.cache, id, version, now).await,
            "registry",
        );
    }
    (record, if cached { "cache" } else { "kv" })
}

/// `Server-Timing` of a forwarded response: the gateway's time before the forward, the origin's
/// time, and where the record came from. (The Workers clock advances only across I/O, so the
/// gateway's own CPU time shows as 0; what shows is the time spent waiting on KV and the
/// registry.)
fn server_timing(started: Timestamp, sent: Timestamp, done: Timestamp, source: &str) -> String {
    format!(
        "gw;dur={};desc=\"gateway\", origin;dur={}, record;desc=\"{source}\"",
        (sent.millis() - started.millis()).max(0),
        (done.millis() - sent.millis()).max(0)
    )
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

/// The admin console's files (`console.rs`), from the `ASSETS` binding, once the admin fence
/// admitted the request; every answer carries the console's security headers.
async fn console_asset(
    req: &Request,
    (scheme, authority): (&str, &str),
    env: &Env,
    ctx: &RequestContext<'_>,
    asset: crate::console::Asset<'_>,
) -> worker::Result<Response> {
    let extra: Vec<(&'static str, String)> = crate::console::HEADERS
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    let file = match asset {
        crate::console::Asset::File(f) => f,
        crate::console::Asset::MethodNotAllowed => {
            let p = problem::method_not_allowed(crate::console::ALLOW);
            return with_extra_headers(answer(ctx, &p, None, None, None)?, &extra);
        }
    };
    let headers = Headers::new();
    if let Some(tag) = req.headers().get("if-none-match")? {
        headers.set("If-None-Match", &tag)?;
    }
    // The file's path on the same origin, without the query.
    let url = format!("{scheme}://{authority}{file}");
    let mut init = RequestInit::new();
    init.with_method(Method::from(ctx.method.to_owned()))
        .with_headers(headers);
    let fetched = match env.assets("ASSETS") {
        Ok(assets) => assets.fetch(url, Some(init)).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("no ASSETS binding: {e}")),
    };
    let response = match fetched {
        Ok(r) if r.status_code() != 404 => r,
        Ok(_) => answer(ctx, &problem::not_found(), None, None, None)?,
        Err(reason) => answer(ctx, &problem::not_found(), None, None, Some(&reason))?,
    };
    with_extra_headers(response, &extra)
}

/// The admin API runs in the registry Durable Object (`durable`): this hands it the request,
/// reduced to plain values once the admin fence has admitted it and its body is within bounds.
async fn admin(
    mut req: Request,
    query: Option<&str>,
    env: &Env,
    ctx: &RequestContext<'_>,
    path: &str,
) -> worker::Result<Response> {
    let body = match bounded_body(&mut req).await {
        Ok(b) => b,
        Err(p) => {
            let mut r = answer(ctx, &p, None, None, None)?;
            r.headers_mut().set("Cache-Control", "no-store")?;
            return Ok(r);
        }
    };
    let envelope = durable::Envelope {
        method: ctx.method.to_owned(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers: req.headers().entries().collect(),
        body: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &body),
        client_ip: ctx.client_ip.map(|i| i.to_string()),
        request_id: ctx.request_id.to_owned(),
    };
    match durable::forward_admin(env, &envelope).await {
        Ok(response) => {
            if ctx.method != "GET" && ctx.method != "HEAD" {
                // A change made through this isolate shows here at once: the next request reads
                // the feed from the registry itself, and the key's record from KV again.
                feed::invalidate();
                if let Some(id) = crate::admin::target_key(path)
                    && let Ok(d) = deployment(env)
                {
                    cache(&d.gateway.policy).borrow_mut().forget(&id);
                    metering::forget(&id);
                }
            }
            Ok(response)
        }
        Err(e) => {
            let mut r = answer(
                ctx,
                &problem::store_unavailable(),
                None,
                None,
                Some(&format!("the registry is unreachable: {e}")),
            )?;
            r.headers_mut().set("Cache-Control", "no-store")?;
            Ok(r)
        }
    }
}
