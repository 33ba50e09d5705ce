//! The smallest worker on keygate's stack that does a validated forward: read the key header,
//! SHA-256 it, one KV read, a serde_json record, a scope check, an optional Ed25519 token
//! check, and a forward with the runtime's fetch. A floor for the wasm size, not a gateway.
use serde::Deserialize;
use sha2::Digest;
use worker::wasm_bindgen::JsCast;
use worker::{Context, Env, Headers, Response, event, web_sys};

#[derive(Deserialize)]
struct Record {
    id: String,
    hash: String,
    scopes: Vec<String>,
    #[serde(default)]
    disabled: bool,
    expires_at: Option<String>,
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> worker::Result<web_sys::Response> {
    let headers = Headers(req.headers());
    if let Some(token) = headers.get("x-token")? {
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
            .unwrap_or_default();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&[7u8; 32]).ok();
        let sig = bytes
            .get(..64)
            .and_then(|s| ed25519_dalek::Signature::from_slice(s).ok());
        let ok = match (key, sig) {
            (Some(k), Some(s)) => k.verify_strict(bytes.get(64..).unwrap_or_default(), &s).is_ok(),
            _ => false,
        };
        if !ok {
            return Ok(Response::error("invalid token", 401)?.into());
        }
    }
    let key = headers.get("x-api-key")?.unwrap_or_default();
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    let kv = env.kv("KEYS")?;
    let Some(text) = kv.get(&digest).text().await? else {
        return Ok(Response::error("invalid key", 401)?.into());
    };
    let record: Record = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(_) => return Ok(Response::error("corrupt", 500)?.into()),
    };
    if record.disabled
        || record.expires_at.is_some()
        || record.hash != digest
        || !record.scopes.iter().any(|s| s == "read")
    {
        return Ok(Response::error("forbidden", 403)?.into());
    }
    let out = web_sys::Headers::new()?;
    out.set("X-Key-Id", &record.id)?;
    let init = web_sys::RequestInit::new();
    init.set_method(&req.method());
    init.set_headers(&out);
    let global: web_sys::WorkerGlobalScope = worker::js_sys::global().unchecked_into();
    let r = worker::wasm_bindgen_futures::JsFuture::from(global.fetch_with_str_and_init(&req.url(), &init))
        .await?;
    Ok(r.unchecked_into())
}
