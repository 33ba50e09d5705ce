//! The token endpoints on the workers-rs side: `POST /oauth/token` (the client-credentials
//! exchange of `crate::oauth`, with the key looked up as on a gateway route),
//! `GET /.well-known/jwks.json`, and `POST /v1/keys/verify` (`crate::verify`).

use std::cell::RefCell;
use std::rc::Rc;

use worker::{Env, Headers, Request, Response, console_log};

use super::{Deployment, Kv, answer, bounded_body, feed, lookup, now};
use crate::cache::RecordCache;
use crate::decide::{Decision, Denial, Forward, Known, Principal, RequestFacts, Step, key_ip_allowed};
use crate::log::{self, RequestContext};
use crate::oauth::{self, OAuthError};
use crate::problem::{self, Problem};
use crate::record::KeyRecord;
use crate::store::Records;
use crate::verify;

fn json_response(status: u16, body: String, headers: &[(&'static str, String)]) -> worker::Result<Response> {
    let h = Headers::new();
    h.set("Content-Type", "application/json")?;
    for (k, v) in headers {
        h.set(k, v)?;
    }
    Ok(Response::from_bytes(body.into_bytes())?
        .with_status(status)
        .with_headers(h))
}

/// An RFC 6749 error, with its log line (the code is the OAuth error; never the key).
fn oauth_error(
    ctx: &RequestContext<'_>,
    e: &OAuthError,
    realm: &str,
    key_id: Option<&str>,
) -> worker::Result<Response> {
    let mut m = ctx.problem(e.error, e.status, None, key_id);
    m.insert("reason".into(), serde_json::json!(e.description));
    console_log!("{}", log::line(m));
    json_response(e.status, e.body(), &e.headers(realm))
}

/// What a refused key says to an OAuth client: `invalid_client`, or a server-side failure.
fn refused(d: &Denial, realm: &str) -> OAuthError {
    let p = Problem::from_denial(d, realm);
    if p.status >= 500 {
        return OAuthError {
            status: 503,
            error: "temporarily_unavailable",
            description: "The key could not be checked; retry.".into(),
        };
    }
    OAuthError::invalid_client(p.detail)
}

pub(super) async fn token_endpoint(
    mut req: Request,
    env: &Env,
    deployment: &Deployment,
    ctx: &RequestContext<'_>,
    cache: &RefCell<RecordCache>,
) -> worker::Result<Response> {
    let gateway = &deployment.gateway;
    let realm = gateway.policy.realm.as_str();
    let Some(keys) = &gateway.tokens else {
        let p = Problem::from_denial(&Denial::NoRoute, realm);
        return answer(ctx, &p, None, None, Some("TOKEN_SIGNING_KEY is not set"));
    };
    let body = match bounded_body(&mut req).await {
        Ok(b) if b.len() <= oauth::MAX_BODY => b,
        Ok(_) => {
            return oauth_error(
                ctx,
                &OAuthError::invalid_request("The body is over 8 KiB."),
                realm,
                None,
            );
        }
        Err(p) => return answer(ctx, &p, None, None, None),
    };
    let headers: Vec<(String, String)> = req.headers().entries().collect();
    let request = match oauth::parse(ctx.method, headers.as_slice(), &body) {
        Ok(r) => r,
        Err(e) => return oauth_error(ctx, &e, realm, None),
    };
    // The secret must be one of this gateway's keys; a token never is (tokens are not
    // exchanged for tokens).
    let pending = match gateway.authenticate_start(Ok(request.client_secret.clone())) {
        Ok(p) => p,
        Err(d) => {
            super::metering::note_failure(env, &gateway.policy, ctx.client_ip, &d, now()).await;
            let e = OAuthError::invalid_client("The client secret is not a key of this gateway.");
            return oauth_error(ctx, &e, realm, None);
        }
    };
    let key_id = pending.key_id().to_string();
    if let Err(e) = oauth::client_matches(&request, pending.key_id()) {
        return oauth_error(ctx, &e, realm, Some(&key_id));
    }
    let now = now();
    feed::refresh(env, gateway.policy.revocation_poll_ms, now).await;
    let kv = super::validation_kv(env)?;
    let records = Records { store: &kv, cache };
    let record = match finish_key(env, gateway, &records, pending, now).await {
        Ok(r) => r,
        Err(d) => {
            super::metering::note_failure(env, &gateway.policy, ctx.client_ip, &d, now).await;
            return oauth_error(ctx, &refused(&d, realm), realm, Some(&key_id));
        }
    };
    if !key_ip_allowed(&record, ctx.client_ip) {
        return oauth_error(ctx, &refused(&Denial::IpNotAllowed, realm), realm, Some(&key_id));
    }
    match oauth::issue(keys, &gateway.policy.tokens, &request, &record, now) {
        Ok((_, body)) => json_response(
            200,
            body.to_string(),
            &[
                ("Cache-Control", "no-store".into()),
                ("Pragma", "no-cache".into()),
            ],
        ),
        Err(e) => oauth_error(ctx, &e, realm, Some(&key_id)),
    }
}

/// The public keys that verify tokens and assertions (RFC 7517), cacheable for five minutes.
pub(super) fn jwks(deployment: &Deployment, ctx: &RequestContext<'_>) -> worker::Result<Response> {
    let policy = &deployment.gateway.policy;
    let Some(keys) = &deployment.gateway.tokens else {
        let p = Problem::from_denial(&Denial::NoRoute, &policy.realm);
        return answer(ctx, &p, None, None, Some("TOKEN_SIGNING_KEY is not set"));
    };
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return answer(ctx, &problem::method_not_allowed("GET, HEAD"), None, None, None);
    }
    json_response(
        200,
        keys.jwks().to_string(),
        &[("Cache-Control", "public, max-age=300".into())],
    )
}

/// `POST /v1/keys/verify` (see `crate::verify`): the caller's own key must hold `keys:verify`;
/// the answer is the decision the gateway would make for the credential in the body.
pub(super) async fn verify_endpoint(
    mut req: Request,
    env: &Env,
    deployment: &Deployment,
    ctx: &RequestContext<'_>,
    cache: &RefCell<RecordCache>,
) -> worker::Result<Response> {
    let gateway = &deployment.gateway;
    let policy = &gateway.policy;
    let realm = policy.realm.as_str();
    if ctx.method != "POST" {
        return answer(ctx, &problem::method_not_allowed("POST"), None, None, None);
    }
    let now = now();
    feed::refresh(env, policy.revocation_poll_ms, now).await;
    let kv = super::validation_kv(env)?;
    let records = Records { store: &kv, cache };
    let headers: Vec<(String, String)> = req.headers().entries().collect();
    let (credential, _) = crate::credential::extract(&policy.credentials, headers.as_slice(), None);
    // The caller: one of this gateway's keys (not a token), live, from an allowed address,
    // holding `keys:verify`.
    let caller = async {
        let pending = gateway.authenticate_start(credential)?;
        let record = finish_key(env, gateway, &records, pending, now).await?;
        if !key_ip_allowed(&record, ctx.client_ip) {
            return Err(Denial::IpNotAllowed);
        }
        let scope = crate::scope::Scope::parse(verify::SCOPE).map_err(|_| Denial::NoRoute)?;
        verify::scopes_granted(&record, &[scope])?;
        Ok(record)
    }
    .await;
    let caller = match caller {
        Ok(r) => r,
        Err(d) => {
            super::metering::note_failure(env, policy, ctx.client_ip, &d, now).await;
            return answer(ctx, &Problem::from_denial(&d, realm), None, None, None);
        }
    };
    let body = match bounded_body(&mut req).await {
        Ok(b) if b.len() <= verify::MAX_BODY => b,
        Ok(_) => {
            let p = problem::payload_too_large().with_detail("The body is over 8 KiB.");
            return answer(ctx, &p, None, None, None);
        }
        Err(p) => return answer(ctx, &p, None, None, None),
    };
    let request = match verify::parse(&body) {
        Ok(r) => r,
        Err(p) => return answer(ctx, &p, None, None, None),
    };
    let (decision, key_id) = match &request.check {
        verify::Check::Route { method, path } => {
            let headers = vec![(
                policy.credentials.bearer_header.clone(),
                format!("Bearer {}", request.credential),
            )];
            let host = policy
                .route_mode
                .as_ref()
                .and_then(|h| h.first().cloned())
                .unwrap_or_default();
            let facts = RequestFacts {
                method,
                path,
                query: None,
                headers: headers.as_slice(),
                client_ip: request.ip,
                host: &host,
                has_body: false,
            };
            let (decision, trace) = match feed::with(|f| gateway.start(&facts, now, f)) {
                Step::Done(d, t) => (d, t),
                Step::NeedRecord(pending) => {
                    let record = lookup(env, &records, pending.key_id(), now).await;
                    let known = feed::with(|f| Known::new(record).with_feed(f, now));
                    gateway.finish(pending, known, now)
                }
            };
            let key_id = trace.key_id.borrow().as_ref().map(ToString::to_string);
            (decision, key_id)
        }
        verify::Check::Scopes(scopes) => {
            let (result, key_id) = subject(env, gateway, &records, &request, now).await;
            let result = result.and_then(|r| verify::scopes_granted(&r, scopes).map(|()| r));
            let decision = match result {
                Ok(record) => Decision::Forward(Forward {
                    path: String::new(),
                    principal: Some(Principal { record, tenant: None }),
                    credential: Default::default(),
                    sunset: None,
                }),
                Err(d) => Decision::Deny(d),
            };
            (decision, key_id)
        }
    };
    let body = verify::answer(&decision, key_id.as_deref(), realm);
    let mut m = ctx.problem("verified", 200, None, key_id.as_deref());
    m.insert("event".into(), serde_json::json!("verify"));
    m.insert("level".into(), serde_json::json!("info"));
    m.insert("caller".into(), serde_json::json!(caller.id.as_str()));
    m.insert("valid".into(), body.get("valid").cloned().unwrap_or_default());
    m.insert("code".into(), body.get("code").cloned().unwrap_or_default());
    console_log!("{}", log::line(m));
    json_response(200, body.to_string(), &[("Cache-Control", "no-store".into())])
}

/// The credential of a verify request as a live record (a key looked up, or a token's claims),
/// from an allowed address; and the key id it names, when it got that far.
async fn subject(
    env: &Env,
    gateway: &crate::decide::Gateway,
    records: &Records<'_, Kv>,
    request: &verify::VerifyRequest,
    now: crate::time::Timestamp,
) -> (Result<Rc<KeyRecord>, Denial>, Option<String>) {
    let credential = &request.credential;
    let result = if let Some(keys) = gateway
        .tokens
        .as_ref()
        .filter(|_| crate::token::looks_like_jwt(credential))
    {
        feed::with(|f| gateway.token_record(keys, credential, now, f)).map(Rc::new)
    } else {
        match gateway.authenticate_start(Ok(credential.clone())) {
            Err(d) => Err(d),
            Ok(pending) => {
                let id = pending.key_id().to_string();
                let r = finish_key(env, gateway, records, pending, now).await;
                return (r.and_then(|r| allowed_from(r, request.ip)), Some(id));
            }
        }
    };
    let key_id = result.as_ref().ok().map(|r| r.id.to_string());
    (result.and_then(|r| allowed_from(r, request.ip)), key_id)
}

fn allowed_from(record: Rc<KeyRecord>, ip: Option<crate::ip::ClientIp>) -> Result<Rc<KeyRecord>, Denial> {
    if key_ip_allowed(&record, ip) {
        Ok(record)
    } else {
        Err(Denial::IpNotAllowed)
    }
}

/// The second step for a key presented to a token endpoint, as on a gateway route: its record
/// (cache, KV, or the registry when the feed calls that stale), then the hash check and its
/// state against the feed.
async fn finish_key(
    env: &Env,
    gateway: &crate::decide::Gateway,
    records: &Records<'_, Kv>,
    pending: crate::decide::PendingAuth,
    now: crate::time::Timestamp,
) -> Result<Rc<KeyRecord>, Denial> {
    let record = lookup(env, records, pending.key_id(), now).await;
    let known = feed::with(|f| Known::new(record).with_feed(f, now));
    gateway.authenticate_finish(pending, known, now)
}
