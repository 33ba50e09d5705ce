//! The token endpoints on the workers-rs side: `POST /oauth/token` (the client-credentials
//! exchange of `crate::oauth`, with the key looked up as on a gateway route) and
//! `GET /.well-known/jwks.json`.

use std::cell::RefCell;

use worker::{Env, Headers, Request, Response, console_log};

use super::{Deployment, KV_BINDING, Kv, answer, bounded_body, feed, lookup, now};
use crate::cache::RecordCache;
use crate::decide::{Denial, Known, key_ip_allowed};
use crate::log::{self, RequestContext};
use crate::oauth::{self, OAuthError};
use crate::problem::{self, Problem};
use crate::store::Records;

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
        Err(_) => {
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
    let kv = Kv {
        inner: env.kv(KV_BINDING)?,
        cache_ttl: Some(super::KV_CACHE_TTL),
    };
    let records = Records { store: &kv, cache };
    let record = lookup(env, &records, pending.key_id(), now).await;
    let known = feed::with(|f| Known::new(record).with_feed(f, now));
    let record = match gateway.authenticate_finish(pending, known, now) {
        Ok(r) => r,
        Err(d) => return oauth_error(ctx, &refused(&d, realm), realm, Some(&key_id)),
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
