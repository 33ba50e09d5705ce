//! Native tests of the whole decision and admin paths over in-memory and failing stores.
//! (The same code runs in the worker; the e2e suite covers the workers-rs adapter.)
// Tests may unwrap and index: a failure here is a failed test, not an aborted isolate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admin;
mod admin_safety;
mod decision;
mod metering;
mod shipped_policy;
mod tokens;
mod versions;

use std::cell::RefCell;
use std::rc::Rc;

use futures::FutureExt;
use futures::executor::block_on;
use keygate::admin::{AdminContext, AdminRequest, Reply};
use keygate::cache::RecordCache;
use keygate::decide::{Decision, Gateway, Known, RequestFacts, Step};
use keygate::ip::ClientIp;
use keygate::key::KeyHasher;
use keygate::policy::Policy;
use keygate::problem::Problem;
use keygate::registry::sqlite::Sqlite;
use keygate::registry::{AdminStore, SqlRegistry};
use keygate::store::{KvStore, MemoryStore, Records};
use keygate::time::Timestamp;
use serde_json::{Value, json};

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";
/// A fixed Ed25519 seed (RFC 8037's example), base64url: the tests' TOKEN_SIGNING_KEY.
pub const SIGNING_SEED: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";

pub fn token_keys() -> keygate::token::TokenKeys {
    keygate::token::TokenKeys::from_secret(SIGNING_SEED).unwrap()
}
pub const T0: i64 = 1_800_000_000_000;

pub fn policy() -> Policy {
    Policy::from_json(&json!({
        "routes": [
            {"path": "/public/*", "public": true},
            {"path": "/internal/*", "ip_allowlist": ["10.0.0.0/8"], "scopes": ["internal:access"]},
            {"methods": ["GET"], "path": "/licenses/*", "scopes": ["license:read"]},
            {"methods": ["POST"], "path": "/keyrings/{ring}/encrypt", "scopes": ["keyring.{ring}.encrypt"]},
            {"path": "/orgs/{org}/*", "scopes": ["org:access"], "tenant_param": "org"}
        ]
    }))
    .unwrap()
}

/// A gateway with its KV store (the registry's replica) and cache, the registry the admin API
/// runs in, at a controllable time. As in the worker, every admin call is one unit of work in
/// the registry (committed, or dropped on an error), then flushed to the replica.
pub struct World<S = MemoryStore> {
    pub gateway: Gateway,
    pub store: S,
    pub cache: RefCell<RecordCache>,
    pub registry: SqlRegistry<Sqlite>,
    /// The registry's own record cache (the gateway's cache learns of changes from KV and the
    /// revocation feed, as in the worker).
    pub admin_cache: RefCell<RecordCache>,
    pub now: Timestamp,
}

impl World<MemoryStore> {
    pub fn new() -> Self {
        World::with_store(MemoryStore::new())
    }

    /// Every record in the replica and the registry (records and lifecycle facts), but not the
    /// audit log: what a refused request must leave untouched.
    pub fn keys_state(&self) -> std::collections::BTreeMap<String, String> {
        let mut state = self.store.snapshot();
        for table in ["records", "facts"] {
            let rows = keygate::registry::SqlDb::exec(
                self.registry.db(),
                &format!("SELECT * FROM {table} ORDER BY 1"),
                &[],
            )
            .unwrap();
            state.insert(format!("registry:{table}"), format!("{rows:?}"));
        }
        state
    }
}

impl<S> World<S> {
    /// The audit events in the registry, newest first.
    pub fn audit_events(&self) -> Vec<Value> {
        let (events, _) = self
            .registry
            .list_audit(None, self.now, None, 10_000, &mut |_, _| Ok(true))
            .unwrap();
        events.iter().map(|e| serde_json::from_str(e).unwrap()).collect()
    }
}

impl Default for World<MemoryStore> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: KvStore> World<S> {
    pub fn with_store(store: S) -> Self {
        World {
            gateway: Gateway {
                policy: policy(),
                hasher: KeyHasher::new(None),
                tokens: Some(token_keys()),
            },
            store,
            cache: RefCell::new(RecordCache::new(100, 100, 10, 5)),
            registry: SqlRegistry::open(Sqlite::memory().unwrap()).unwrap(),
            admin_cache: RefCell::new(RecordCache::new(1, 0, 0, 0)),
            now: Timestamp::from_millis(T0),
        }
    }

    pub fn records(&self) -> Records<'_, S> {
        Records {
            store: &self.store,
            cache: &self.cache,
        }
    }

    pub fn decide(&self, method: &str, path: &str, headers: &[(&str, &str)], ip: Option<&str>) -> Decision {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let facts = RequestFacts {
            method,
            path,
            query: None,
            headers: &headers,
            client_ip: ip.and_then(ClientIp::parse),
            host: "gw.example",
            has_body: false,
        };
        // As the edge drives it: start, the record (cache, then the replica), the current record
        // from the registry when the feed says the copy predates a change of its grants, finish.
        let feed = self.feed();
        match self.gateway.start(&facts, self.now, &feed) {
            Step::Done(decision, _) => decision,
            Step::NeedRecord(pending) => {
                let id = pending.key_id().clone();
                let mut record = block_on(self.records().get(&id, self.now));
                if let Ok(Some(r)) = &record
                    && feed.refresh_needed(r, self.now).is_some()
                {
                    record = Ok(self
                        .registry
                        .record_json(&id)
                        .unwrap()
                        .map(|j| Rc::new(serde_json::from_str(&j).unwrap())));
                }
                let known = Known::new(record).with_feed(&feed, self.now);
                self.gateway.finish(pending, known, self.now).0
            }
        }
    }

    /// The revocation feed as an isolate would hold it right now.
    pub fn feed(&self) -> keygate::revocation::Feed {
        let mut feed = keygate::revocation::Feed::default();
        feed.apply(self.registry.feed(self.now).unwrap(), true);
        feed
    }

    pub fn admin_raw(
        &self,
        method: &str,
        path: &str,
        auth: &str,
        body: Option<&str>,
    ) -> Result<Reply, Problem> {
        self.call(&Call {
            method,
            path: path.to_owned(),
            auth: auth.to_owned(),
            body: body.map(str::to_owned),
            headers: Vec::new(),
            ip: None,
            admin_token: TOKEN,
        })
    }

    /// One admin request with the token and extra request headers (`If-Match`,
    /// `Idempotency-Key`).
    pub fn admin_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, Problem> {
        self.call(&Call {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Call::token(method, path, body)
        })
    }

    /// One admin request, run as the registry runs it: one unit of work, committed (or dropped
    /// but for its audit event, on an error), then flushed to the replica.
    pub fn call(&self, call: &Call<'_>) -> Result<Reply, Problem> {
        let mut headers = vec![("authorization".to_owned(), format!("Bearer {}", call.auth))];
        if call.body.is_some() {
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
        }
        headers.extend(call.headers.iter().cloned());
        let (path, query) = match call.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (call.path.as_str(), None),
        };
        let req = AdminRequest {
            method: call.method,
            path,
            query,
            headers: &headers,
            body: call.body.as_deref().unwrap_or_default().as_bytes(),
            client_ip: call.ip.and_then(ClientIp::parse),
        };
        let records = Records {
            store: &self.registry,
            cache: &self.admin_cache,
        };
        let ctx = AdminContext::new(&self.gateway, records, Some(call.admin_token), self.now);
        // The registry never waits: one poll completes the request, as in the Durable Object.
        let result = ctx.handle(&req).now_or_never().expect("an admin request waited");
        if result.is_err() {
            self.registry.discard();
        }
        self.registry.commit(self.now).unwrap();
        // The replica; a store that is down keeps the writes pending, as KV would.
        let _ = block_on(self.registry.flush(&self.store, 10_000));
        result
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply, Problem> {
        self.admin_raw(method, path, TOKEN, body.map(|b| b.to_string()).as_deref())
    }

    /// Issue a key through the admin API: (plaintext, record).
    pub fn issue(&self, body: Value) -> (String, Value) {
        let reply = self.admin("POST", "/admin/keys", Some(body)).unwrap();
        assert_eq!(reply.status, 201);
        let v = reply.body.unwrap();
        (v["key"].as_str().unwrap().to_owned(), v["record"].clone())
    }
}

/// An admin request as a client sends it.
#[derive(Clone)]
pub struct Call<'a> {
    pub method: &'a str,
    pub path: String,
    /// The bearer credential: the admin token or an admin key.
    pub auth: String,
    pub body: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    pub ip: Option<&'a str>,
    /// The deployment's `ADMIN_TOKEN`.
    pub admin_token: &'a str,
}

impl<'a> Call<'a> {
    /// A request with the admin token.
    pub fn token(method: &'a str, path: impl Into<String>, body: Option<Value>) -> Self {
        Call {
            method,
            path: path.into(),
            auth: TOKEN.to_owned(),
            body: body.map(|b| b.to_string()),
            headers: Vec::new(),
            ip: None,
            admin_token: TOKEN,
        }
    }
}

pub use keygate::store::DownStore;
