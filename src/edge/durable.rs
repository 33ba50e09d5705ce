//! The `Registry` Durable Object: the workers-rs side of `crate::registry`. It runs the admin
//! API against the registry's SQL, commits each request's writes as one transaction, copies
//! committed records to the KV replica (retrying from an alarm), and serves the revocation feed.
//!
//! The gateway worker reaches it through the `REGISTRY` binding only, at two internal paths:
//! `POST /admin` (an admin request, reduced to an [`Envelope`] after the admin fence and the
//! body bound), `GET /feed`, and `GET /record/{id}` (a key's current record, for an isolate
//! whose copy predates a change of its grants).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use worker::{
    DurableObject, Env, Headers, Method, Request, RequestInit, Response, SqlStorage, SqlStorageValue, State,
    console_error, console_log, durable_object,
};

use super::{KV_BINDING, Kv, TOKEN_WARNED, answer, deployment, now, respond};
use crate::admin::{AdminContext, AdminRequest};
use crate::cache::RecordCache;
use crate::credits::Settlement;
use crate::ip::ClientIp;
use crate::key::KeyPrefix;
use crate::log::{self, RequestContext};
use crate::problem;
use crate::registry::meter::LeaseRequest;
use crate::registry::{AdminStore, SqlDb, SqlRegistry, SqlValue};
use crate::store::{Records, StoreError};
use crate::usage::UsageBatch;

pub(super) const BINDING: &str = "REGISTRY";
/// The one registry object's name.
pub(super) const NAME: &str = "registry";
pub(super) const ADMIN_URL: &str = "https://registry.keygate.internal/admin";
pub(super) const FEED_URL: &str = "https://registry.keygate.internal/feed";
pub(super) const RECORD_URL: &str = "https://registry.keygate.internal/record/";
pub(super) const LEASE_URL: &str = "https://registry.keygate.internal/lease";
pub(super) const SETTLE_URL: &str = "https://registry.keygate.internal/settle";
pub(super) const USAGE_URL: &str = "https://registry.keygate.internal/usage";
/// Set to `1`, this var lets the admin token move the registry's clock
/// (`POST /admin/registry/clock`), for tests of refills. Never set it in a deployment.
pub(super) const TEST_CLOCK_VAR: &str = "KEYGATE_TEST_CLOCK";
/// Replica writes one flush makes at most (a Durable Object invocation may make 1,000
/// subrequests; the rest wait for the next flush, which the alarm schedules).
const FLUSH_BATCH: usize = 100;
const FLUSH_ROUNDS: usize = 5;
/// Audit events per minute for denied admin attempts with unverified credentials.
const UNVERIFIED_AUDITS_PER_MINUTE: u32 = 30;
/// Retry delay of a failed replica write, doubled per failure up to a minute.
const RETRY_MS: i64 = 1_000;
const RETRY_MAX_MS: i64 = 60_000;

/// An admin request as the gateway worker hands it over.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Base64 of the (bounded) body.
    pub body: String,
    pub client_ip: Option<String>,
    pub request_id: String,
}

/// The object's SQL storage behind the registry's [`SqlDb`].
pub(super) struct DoSql(SqlStorage);

fn sql_error(e: worker::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqlDb for DoSql {
    fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        let bindings: Vec<SqlStorageValue> = params
            .iter()
            .map(|p| match p {
                SqlValue::Null => SqlStorageValue::Null,
                SqlValue::Int(i) => SqlStorageValue::Integer(*i),
                SqlValue::Text(s) => SqlStorageValue::String(s.clone()),
            })
            .collect();
        let cursor = self.0.exec(sql, bindings).map_err(sql_error)?;
        let mut rows = Vec::new();
        for row in cursor.raw() {
            let row = row.map_err(sql_error)?;
            rows.push(
                row.into_iter()
                    .map(|v| match v {
                        SqlStorageValue::Null => SqlValue::Null,
                        SqlStorageValue::Boolean(b) => SqlValue::Int(i64::from(b)),
                        SqlStorageValue::Integer(i) => SqlValue::Int(i),
                        #[allow(clippy::cast_possible_truncation)]
                        SqlStorageValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                            SqlValue::Int(f as i64)
                        }
                        SqlStorageValue::Float(f) => SqlValue::Text(f.to_string()),
                        SqlStorageValue::String(s) => SqlValue::Text(s),
                        SqlStorageValue::Blob(b) => SqlValue::Text(String::from_utf8_lossy(&b).into_owned()),
                    })
                    .collect(),
            );
        }
        Ok(rows)
    }
}

#[durable_object]
pub struct Registry {
    state: State,
    env: Env,
    registry: Result<Rc<SqlRegistry<DoSql>>, String>,
    /// A replica flush is under way (only one at a time, so replica writes land in order).
    flushing: Cell<bool>,
    /// Consecutive failed flushes, for the retry delay.
    failures: Cell<u32>,
    /// (minute, count) of audited attempts with unverified credentials.
    unverified: Cell<(i64, u32)>,
    commits: Cell<u32>,
    imported: Cell<bool>,
    /// This object's own, throwaway record cache: admin reads go to SQL (`Records::load`).
    cache: RefCell<RecordCache>,
    /// Milliseconds added to the clock (tests only: `KEYGATE_TEST_CLOCK`).
    clock_offset: Cell<i64>,
}

impl DurableObject for Registry {
    fn new(state: State, env: Env) -> Self {
        let registry = SqlRegistry::open(DoSql(state.storage().sql()))
            .map(Rc::new)
            .map_err(|e| e.0);
        Registry {
            state,
            env,
            registry,
            flushing: Cell::new(false),
            failures: Cell::new(0),
            unverified: Cell::new((0, 0)),
            commits: Cell::new(0),
            imported: Cell::new(false),
            cache: RefCell::new(RecordCache::new(1, 0, 0, 0)),
            clock_offset: Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let registry = match &self.registry {
            Ok(r) => r.clone(),
            Err(e) => {
                console_error!(
                    "{}",
                    serde_json::json!({"level": "error", "event": "registry", "reason": e})
                );
                return Response::error("registry unavailable", 503);
            }
        };
        self.ensure_imported(&registry).await?;
        let path = req.path();
        let response = match (req.method(), path.as_str()) {
            (Method::Get, "/feed") => {
                let page = registry.feed(now()).map_err(|e| worker::Error::RustError(e.0))?;
                let headers = Headers::new();
                headers.set("Content-Type", "application/json")?;
                headers.set("Cache-Control", "max-age=1")?;
                Response::from_json(&page)?.with_headers(headers)
            }
            (Method::Get, p) if p.starts_with("/record/") => {
                let id = p.strip_prefix("/record/").and_then(crate::key::KeyId::parse);
                match id.map(|id| registry.record_json(&id)) {
                    Some(Ok(Some(json))) => Response::ok(json)?,
                    Some(Ok(None)) => Response::error("no such key", 404)?,
                    Some(Err(e)) => Response::error(e.0, 503)?,
                    None => Response::error("not a key id", 400)?,
                }
            }
            (Method::Post, "/admin") => {
                let envelope: Envelope = req.json().await?;
                if envelope.path == "/admin/registry/clock" && self.test_clock() {
                    self.move_clock(&envelope)?
                } else {
                    self.admin(&registry, envelope)?
                }
            }
            (Method::Post, "/lease") => {
                let request: LeaseRequest = req.json().await?;
                match registry.lease(&request, self.clock()) {
                    Ok(answer) => Response::from_json(&answer)?,
                    Err(e) => Response::error(e.0, 503)?,
                }
            }
            (Method::Post, "/settle") => {
                let request: SettleRequest = req.json().await?;
                match registry.settle(&request.key_id, &request.settle) {
                    Ok(()) => Response::from_json(&serde_json::json!({"settled": request.settle.len()}))?,
                    Err(e) => Response::error(e.0, 503)?,
                }
            }
            (Method::Post, "/usage") => {
                let batch: UsageBatch = req.json().await?;
                match registry.add_usage(&batch) {
                    Ok(rows) => Response::from_json(&serde_json::json!({"rows": rows}))?,
                    Err(e) => Response::error(e.0, 503)?,
                }
            }
            _ => Response::error("not found", 404)?,
        };
        self.flush(&registry).await;
        Ok(response)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        if let Ok(registry) = &self.registry {
            let registry = registry.clone();
            if let Err(e) = registry.prune(self.clock()) {
                console_error!(
                    "{}",
                    serde_json::json!({"level": "error", "event": "registry", "reason": e.0})
                );
            }
            self.flush(&registry).await;
        }
        Response::ok("")
    }
}

impl Registry {
    fn test_clock(&self) -> bool {
        self.env.var(TEST_CLOCK_VAR).is_ok_and(|v| v.to_string() == "1")
    }

    /// The registry's clock: the runtime's, moved by the test offset when one is set.
    fn clock(&self) -> crate::time::Timestamp {
        let t = now();
        crate::time::Timestamp::from_millis(t.millis().saturating_add(self.clock_offset.get()))
    }

    /// `POST /admin/registry/clock` with `{"offset_seconds": n}` and the admin token, only
    /// under `KEYGATE_TEST_CLOCK=1`: moves this registry's clock (refills, leases, admin
    /// times) by `n` seconds from the real one.
    fn move_clock(&self, envelope: &Envelope) -> worker::Result<Response> {
        let token = deployment(&self.env).ok().and_then(|d| d.admin_token.clone());
        let presented = envelope
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let authorized = match (token, presented) {
            (Some(t), Some(p)) if !t.is_empty() => {
                subtle::ConstantTimeEq::ct_eq(t.as_bytes(), p.as_bytes()).into()
            }
            _ => false,
        };
        if !authorized || envelope.method != "POST" {
            return Response::error("forbidden", 403);
        }
        let body = B64.decode(envelope.body.as_bytes()).unwrap_or_default();
        let offset = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("offset_seconds").and_then(serde_json::Value::as_i64));
        let Some(offset) = offset else {
            return Response::error("give {\"offset_seconds\": n}", 400);
        };
        self.clock_offset.set(offset.saturating_mul(1000));
        console_log!(
            "{}",
            serde_json::json!({"level": "warn", "event": "test_clock_moved", "offset_seconds": offset})
        );
        Response::from_json(&serde_json::json!({"offset_seconds": offset, "now": self.clock().to_rfc3339()}))
    }

    /// On first use, import the records a KV-only deployment left, before any other request is
    /// delivered (`blockConcurrencyWhile`).
    async fn ensure_imported(&self, registry: &Rc<SqlRegistry<DoSql>>) -> worker::Result<()> {
        if self.imported.get() {
            return Ok(());
        }
        if registry.imported().map_err(|e| worker::Error::RustError(e.0))? {
            self.imported.set(true);
            return Ok(());
        }
        let registry = registry.clone();
        let kv = Kv::new(&self.env, None);
        let count = self
            .state
            .block_concurrency_while(async move {
                if registry.imported().map_err(|e| worker::Error::RustError(e.0))? {
                    return Ok(0);
                }
                registry
                    .import_from(&kv, now())
                    .await
                    .map_err(|e| worker::Error::RustError(e.0))
            })
            .await?;
        console_log!(
            "{}",
            serde_json::json!({"level": "info", "event": "registry_import", "records": count})
        );
        self.imported.set(true);
        Ok(())
    }

    /// One admin request, start to end without a single await: the admin code runs on the
    /// registry's synchronous SQL, so no other request can interleave, and its writes commit
    /// together (or, on an error, only its audit event does).
    fn admin(&self, registry: &SqlRegistry<DoSql>, envelope: Envelope) -> worker::Result<Response> {
        let started = self.clock();
        let deployment = match deployment(&self.env) {
            Ok(d) => d,
            Err(reason) => {
                let prefix = KeyPrefix::default();
                let ctx = context(&envelope, None, &prefix, None);
                return answer(&ctx, &problem::policy_invalid(), None, None, Some(&reason));
            }
        };
        let gateway = &deployment.gateway;
        let client_ip = envelope.client_ip.as_deref().and_then(ClientIp::parse);
        let token = deployment.admin_token.as_deref();
        let ctx = context(&envelope, client_ip, &gateway.policy.key_prefix, token);
        let no_store = |mut r: Response| -> worker::Result<Response> {
            let h = r.headers_mut();
            h.set("Cache-Control", "no-store")?;
            // JSON for scripts only: never sniffed, rendered or framed.
            h.set("X-Content-Type-Options", "nosniff")?;
            h.set(
                "Content-Security-Policy",
                "default-src 'none'; frame-ancestors 'none'",
            )?;
            Ok(r)
        };
        let Ok(body) = B64.decode(envelope.body.as_bytes()) else {
            return no_store(answer(
                &ctx,
                &problem::internal_error("The admin request was garbled."),
                None,
                None,
                None,
            )?);
        };
        if let Some(reason) = crate::admin::admin_token_weakness(token)
            && !TOKEN_WARNED.replace(true)
        {
            let mut m = ctx.problem("admin_disabled", 503, None, None);
            m.insert("reason".into(), serde_json::json!(reason));
            console_error!("{}", log::line(m));
        }
        let admin = AdminContext::new(
            gateway,
            Records {
                store: registry,
                cache: &self.cache,
            },
            token,
            started,
        );
        let request = AdminRequest {
            method: &envelope.method,
            path: &envelope.path,
            query: envelope.query.as_deref(),
            headers: envelope.headers.as_slice(),
            body: &body,
            client_ip,
        };
        let minute = started.millis() / 60_000;
        let (window, used) = self.unverified.get();
        let used = if window == minute { used } else { 0 };
        admin.audit_unverified(used < UNVERIFIED_AUDITS_PER_MINUTE);
        // The registry's futures never wait (SQL storage is synchronous), so this resolves in
        // one poll; if it ever did not, nothing would be committed.
        let result = match admin.handle(&request).now_or_never() {
            Some(r) => r,
            None => {
                registry.discard();
                return no_store(answer(
                    &ctx,
                    &problem::internal_error("The admin request could not complete."),
                    None,
                    None,
                    Some("the admin handler awaited I/O inside the registry"),
                )?);
            }
        };
        if result.is_err() {
            registry.discard();
        }
        if let Err(e) = registry.commit(started) {
            registry.discard();
            return no_store(answer(
                &ctx,
                &problem::store_unavailable(),
                None,
                None,
                Some(&e.0),
            )?);
        }
        self.commits.set(self.commits.get().wrapping_add(1));
        let unverified = admin
            .journal()
            .iter()
            .filter(|e| e.actor == "unknown" || e.actor.starts_with("unverified:"))
            .count();
        self.unverified.set((
            minute,
            used.saturating_add(u32::try_from(unverified).unwrap_or(u32::MAX)),
        ));
        for event in admin.journal() {
            console_log!("{}", log::line(ctx.admin(&event)));
        }
        let response = match result {
            Ok(reply) => {
                let headers = Headers::new();
                for (k, v) in &reply.headers {
                    headers.set(k, v)?;
                }
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
                let target = crate::admin::target_key(&envelope.path).map(|k| k.to_string());
                let mut m = ctx.problem(p.code, p.status, None, target.as_deref());
                m.insert("actor".into(), serde_json::json!(admin.actor()));
                if p.status >= 500 {
                    m.insert("reason".into(), serde_json::json!(p.detail));
                }
                respond(&ctx, &p, m)?
            }
        };
        no_store(response)
    }

    /// Copy committed changes to the KV replica. Only one flush runs at a time; a failure (or
    /// work left over) schedules the alarm, which flushes again until everything has landed.
    async fn flush(&self, registry: &Rc<SqlRegistry<DoSql>>) {
        if self.flushing.replace(true) {
            return;
        }
        // A missing binding is retried by the alarm like any failed write.
        if let Err(e) = self.env.kv(KV_BINDING) {
            self.flushing.set(false);
            self.retry_later(&e.to_string()).await;
            return;
        }
        let kv = Kv::new(&self.env, None);
        let mut failure = None;
        // At most FLUSH_ROUNDS batches per invocation (its subrequests are limited); the alarm
        // below takes the rest.
        for _ in 0..FLUSH_ROUNDS {
            match registry.flush(&kv, FLUSH_BATCH).await {
                Ok(n) if n < FLUSH_BATCH => break,
                Ok(_) => continue,
                Err(e) => {
                    failure = Some(e.0);
                    break;
                }
            }
        }
        self.flushing.set(false);
        match failure {
            Some(reason) => self.retry_later(&reason).await,
            None => {
                self.failures.set(0);
                // A prune now and then keeps expired audit events and feed entries out.
                if self.commits.get() % 100 == 99 {
                    let _ = registry.prune(now());
                }
                // Changes committed while the last write was under way.
                if registry.replica_lag().map(|l| l.pending > 0).unwrap_or(false) {
                    let _ = self.state.storage().set_alarm(RETRY_MS).await;
                }
            }
        }
    }

    async fn retry_later(&self, reason: &str) {
        let failures = self.failures.get().saturating_add(1);
        self.failures.set(failures);
        let delay = RETRY_MS
            .saturating_mul(1_i64 << failures.min(6))
            .min(RETRY_MAX_MS);
        console_error!(
            "{}",
            serde_json::json!({"level": "error", "event": "replica_write_failed", "reason": reason, "failures": failures, "retry_in_ms": delay})
        );
        if let Err(e) = self.state.storage().set_alarm(delay).await {
            console_error!(
                "{}",
                serde_json::json!({"level": "error", "event": "registry", "reason": e.to_string()})
            );
        }
    }
}

fn context<'a>(
    envelope: &'a Envelope,
    client_ip: Option<ClientIp>,
    prefix: &'a KeyPrefix,
    token: Option<&'a str>,
) -> RequestContext<'a> {
    RequestContext {
        request_id: &envelope.request_id,
        method: &envelope.method,
        path: &envelope.path,
        client_ip,
        key_prefix: prefix,
        token,
    }
}

/// The gateway side: hand an admin request to the registry and return its answer.
pub(super) async fn forward_admin(env: &Env, envelope: &Envelope) -> worker::Result<Response> {
    let stub = env.durable_object(BINDING)?.id_from_name(NAME)?.get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(serde_json::to_string(envelope)?.into()));
    stub.fetch_with_request(Request::new_with_init(ADMIN_URL, &init)?)
        .await
}

/// Leases handed back at their end.
#[derive(Deserialize)]
struct SettleRequest {
    key_id: String,
    settle: Vec<Settlement>,
}

/// The gateway side: a JSON call to the registry (`LEASE_URL`, `SETTLE_URL`, `USAGE_URL`).
pub(super) async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
    env: &Env,
    url: &str,
    body: &B,
) -> worker::Result<T> {
    let stub = env.durable_object(BINDING)?.id_from_name(NAME)?.get_stub()?;
    let mut response = stub
        .fetch_with_request(super::metering::json_request(url, body)?)
        .await?;
    if response.status_code() != 200 {
        return Err(worker::Error::RustError(format!(
            "the registry answered {}",
            response.status_code()
        )));
    }
    response.json().await
}

/// The gateway side: a key's current record, straight from the registry.
pub(super) async fn fetch_record(env: &Env, id: &crate::key::KeyId) -> worker::Result<Response> {
    let stub = env.durable_object(BINDING)?.id_from_name(NAME)?.get_stub()?;
    stub.fetch_with_str(&format!("{RECORD_URL}{id}")).await
}

/// The gateway side: the registry's revocation feed, fresh.
pub(super) async fn fetch_feed(env: &Env) -> worker::Result<Response> {
    let stub = env.durable_object(BINDING)?.id_from_name(NAME)?.get_stub()?;
    stub.fetch_with_str(FEED_URL).await
}
