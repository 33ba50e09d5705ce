//! Signed tokens: RFC 9068 access tokens that keygate issues in exchange for an API key, and the
//! signed assertion of the authenticated principal that it forwards to origins. Both are compact
//! JWS (RFC 7515) signed with Ed25519 (`EdDSA`, RFC 8037); the public keys are served as a JWKS.
//!
//! Verification is deliberately narrow: exactly one algorithm, exactly the expected `typ`, a `kid`
//! naming one of our keys, and no header parameter beyond `alg`, `typ` and `kid` (so no `crit`,
//! `jku`, `jwk`, `x5u`, `x5c`: nothing in a token can choose the key that verifies it).
//!
//! The secret is one or two comma-separated base64url 32-byte Ed25519 seeds. The first signs; all
//! verify, so a rotation puts the new seed first and keeps the previous one until the tokens it
//! signed have expired.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::ip::IpAllowlist;
use crate::key::{Environment, KeyId};
use crate::scope::Grant;
use crate::time::Timestamp;

/// The `typ` of an access token (RFC 9068).
pub const ACCESS_TYP: &str = "at+jwt";
/// The `typ` of the signed principal keygate forwards to origins.
pub const ASSERTION_TYP: &str = "keygate-assertion+jwt";

/// The only algorithm signed or accepted.
const ALG: &str = "EdDSA";
/// Longest token worth looking at; anything longer is malformed before any other work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const MAX_TOKEN_LEN: usize = MAX_TOKEN_BYTES;
/// How many seeds the secret may hold: the signing key and the one it replaced.
const MAX_SEEDS: usize = 2;
/// How many bytes of SHA-256 of the public key make its `kid`.
const KID_BYTES: usize = 12;
/// How far in the future `iat` may be (clock skew between issuers), in seconds.
const IAT_LEEWAY_S: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three non-empty base64url segments, or too long.
    Malformed,
    /// A header that is not a JSON object, an `alg` other than `EdDSA`, or a header parameter
    /// other than `alg`, `typ` and `kid`.
    Algorithm,
    /// A `typ` other than the one expected.
    Type,
    /// No `kid`, or one that names none of our keys.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` is not in the future.
    Expired,
    /// `iat` is too far in the future.
    NotYetValid,
    /// Claims that are not what the caller expects (or, when signing, not a JSON object).
    Claims,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::Algorithm => "unsupported token algorithm or header",
            TokenError::Type => "wrong token type",
            TokenError::UnknownKey => "token signed by an unknown key",
            TokenError::Signature => "invalid token signature",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::Claims => "invalid token claims",
        })
    }
}

impl std::error::Error for TokenError {}

/// The signing key and every verifying key, each with its `kid`. `Debug` shows only the kids.
#[derive(Clone)]
pub struct TokenKeys {
    signing: SigningKey,
    /// The signing key's public half first, then the previous one(s).
    verifying: Vec<(String, VerifyingKey)>,
    /// Access tokens this isolate has verified, by SHA-256 of the token: a repeated token skips
    /// the Ed25519 check (its claims, their times and the revocation feed are still checked on
    /// every request). Bounded by [`VERIFIED_CAPACITY`].
    verified: std::rc::Rc<std::cell::RefCell<std::collections::HashMap<[u8; 32], AccessClaims>>>,
    /// The header segment of every token these keys sign or accept (each kid, each `typ`): the
    /// same text for all of them, since `sign` writes exactly `alg`, `typ` and `kid`.
    own_headers: Vec<String>,
}

/// Verified access tokens one isolate remembers, at most.
pub const VERIFIED_CAPACITY: usize = 4_096;

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.verifying.iter().map(|(kid, _)| kid.as_str()).collect();
        f.debug_struct("TokenKeys")
            .field("signing_kid", &self.kid())
            .field("verifying_kids", &kids)
            .finish()
    }
}

/// The shortest base64 text worth decoding in [`TokenKeys::holds_own_token`]: the base64 of a
/// header segment (about 90 characters) is longer.
const MIN_WRAPPED: usize = 64;

const INDIFFERENT: base64::engine::GeneralPurposeConfig = base64::engine::GeneralPurposeConfig::new()
    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_INDIFFERENT: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, INDIFFERENT);
const URL_SAFE_INDIFFERENT: base64::engine::GeneralPurpose =
    base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, INDIFFERENT);

/// The base64url header segment `sign` writes for `typ` and `kid`.
fn header_segment(typ: &str, kid: &str) -> String {
    let header = Header { alg: ALG, typ, kid };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default())
}

/// `kid` of a public key: base64url (no padding) of the first 12 bytes of its SHA-256.
fn kid_of(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.get(..KID_BYTES).unwrap_or_default())
}

/// One seed from the secret. `n` and `of` only number it in errors, which never quote it.
fn decode_seed(entry: &str, n: usize, of: usize) -> Result<SigningKey, String> {
    let entry = entry.trim().trim_end_matches('=');
    if entry.is_empty() {
        return Err(format!("token signing secret: seed {n} of {of} is empty"));
    }
    // base64url is the documented form; standard base64 (`openssl rand -base64 32`) is accepted
    // too: the alphabets differ only in `-_` / `+/`, so a seed cannot be read two ways.
    let engine = if entry.contains(['+', '/']) {
        &STANDARD_NO_PAD
    } else {
        &URL_SAFE_NO_PAD
    };
    // The decoder's own error quotes the offending character: do not pass it on.
    let mut bytes = engine
        .decode(entry)
        .map_err(|_| format!("token signing secret: seed {n} of {of} is not valid base64url"))?;
    let seed: Result<[u8; 32], _> = bytes.as_slice().try_into();
    let len = bytes.len();
    bytes.zeroize();
    match seed {
        Ok(mut seed) => {
            let key = SigningKey::from_bytes(&seed);
            seed.zeroize();
            Ok(key)
        }
        Err(_) => Err(format!(
            "token signing secret: seed {n} of {of} decodes to {len} bytes, expected a 32-byte Ed25519 seed"
        )),
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

impl TokenKeys {
    /// `secret`: one or two comma-separated base64url (no padding; padding accepted) 32-byte
    /// Ed25519 seeds. The first signs; all verify (a signing-key rotation keeps the previous one
    /// for verification). Errors are human-readable and never contain the secret.
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        let entries: Vec<&str> = secret.split(',').collect();
        let of = entries.len();
        if of > MAX_SEEDS {
            return Err(format!(
                "token signing secret: {of} comma-separated seeds, expected one (or two during a rotation: new,old)"
            ));
        }
        let mut signing: Option<SigningKey> = None;
        let mut verifying: Vec<(String, VerifyingKey)> = Vec::with_capacity(of);
        for (i, entry) in entries.iter().enumerate() {
            let key = decode_seed(entry, i + 1, of)?;
            let public = key.verifying_key();
            let kid = kid_of(&public);
            if !verifying.iter().any(|(k, _)| *k == kid) {
                verifying.push((kid, public));
            }
            if signing.is_none() {
                signing = Some(key);
            }
        }
        let own_headers = verifying
            .iter()
            .flat_map(|(kid, _)| [ACCESS_TYP, ASSERTION_TYP].map(|typ| header_segment(typ, kid)))
            .collect();
        match signing {
            Some(signing) => Ok(TokenKeys {
                signing,
                verifying,
                verified: Default::default(),
                own_headers,
            }),
            None => Err("token signing secret: no seed".to_owned()),
        }
    }

    /// A fresh secret (one seed) from the platform CSPRNG, base64url without padding.
    pub fn generate_secret() -> Result<String, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| "the platform's random number generator failed".to_owned())?;
        let secret = URL_SAFE_NO_PAD.encode(seed);
        seed.zeroize();
        Ok(secret)
    }

    /// The signing key's kid: base64url (no padding) of the first 12 bytes of SHA-256 of its
    /// public key.
    pub fn kid(&self) -> &str {
        // `from_secret` always puts the signing key's entry first.
        self.verifying
            .first()
            .map(|(kid, _)| kid.as_str())
            .unwrap_or_default()
    }

    /// Whether `text` holds one of the tokens these keys sign or accept (an access token or an
    /// assertion, current kid or previous): its header segment anywhere in `text`, as sent,
    /// after percent-decodings, inside `Basic` credentials, or with `text` itself base64. Such
    /// a token is a credential for every route of its key, so no copy of it is forwarded in
    /// any header, parameter or path (a public route takes no credential, so none was removed
    /// as one). Matching the header segment alone also catches a token cut short, padded,
    /// split over repeated headers or glued to other text. Another issuer's JWT passes.
    pub fn holds_own_token(&self, text: &str) -> bool {
        let found = |s: &str| self.own_headers.iter().any(|h| s.contains(h.as_str()));
        if crate::key::holds_matching(text, found) {
            return true;
        }
        // The whole value base64 (standard or URL-safe, padded or not), as a client might wrap
        // a token in a header of its own.
        let t = text.trim();
        t.len() >= MIN_WRAPPED
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'='))
            && [&STANDARD_INDIFFERENT, &URL_SAFE_INDIFFERENT]
                .iter()
                .filter_map(|e| e.decode(t).ok())
                .any(|d| found(&String::from_utf8_lossy(&d)))
    }

    /// RFC 8037 JWKS of every verifying key, the signing key first.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .verifying
            .iter()
            .map(|(kid, key)| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
                    "kid": kid,
                    "alg": ALG,
                    "use": "sig",
                })
            })
            .collect();
        json!({ "keys": keys })
    }

    /// Compact JWS with header exactly `{"alg":"EdDSA","typ":typ,"kid":self.kid()}`. The claims
    /// must serialize to a JSON object (else `Claims`).
    pub fn sign<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String, TokenError> {
        let header = serde_json::to_vec(&Header {
            alg: ALG,
            typ,
            kid: self.kid(),
        })
        .map_err(|_| TokenError::Claims)?;
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::Claims)?;
        if payload.first() != Some(&b'{') {
            return Err(TokenError::Claims);
        }
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self.signing.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(token)
    }

    /// [`TokenKeys::verify`] of an access token, remembering what verified: the same token
    /// again costs a SHA-256 and a map lookup instead of an Ed25519 verification. Expired
    /// entries are dropped when the map is full (everything, if none has expired).
    pub fn verify_access(&self, token: &str, now_s: i64) -> Result<AccessClaims, TokenError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified.borrow().get(&digest) {
            return Ok(claims.clone());
        }
        let claims: AccessClaims = self.verify(token, ACCESS_TYP)?;
        let mut verified = self.verified.borrow_mut();
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, c| c.exp > now_s);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    /// Verify a compact JWS strictly and return its claims; no time checks (see
    /// [`AccessClaims::check_time`]). In order:
    /// - `Malformed`: longer than 8 KiB, not exactly three segments, an empty segment, or a
    ///   segment that is not canonical unpadded base64url (so `alg: none` with an empty
    ///   signature is `Malformed`);
    /// - `Algorithm`: a header that is not a JSON object (or repeats a name), an `alg` other than
    ///   exactly `"EdDSA"`, or any header parameter besides `alg`, `typ`, `kid`;
    /// - `Type`: `typ` missing or not exactly `typ`;
    /// - `UnknownKey`: `kid` missing, not a string, or none of ours;
    /// - `Signature`: the Ed25519 signature does not verify (`verify_strict`);
    /// - `Claims`: the payload does not deserialize into `C`.
    pub fn verify<C: DeserializeOwned>(&self, token: &str, typ: &str) -> Result<C, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |seg: &str| {
            if seg.is_empty() {
                return Err(TokenError::Malformed);
            }
            URL_SAFE_NO_PAD.decode(seg).map_err(|_| TokenError::Malformed)
        };
        let (header, payload, signature) = (decode(h64)?, decode(p64)?, decode(s64)?);

        let header: HeaderObject = serde_json::from_slice(&header).map_err(|_| TokenError::Algorithm)?;
        let mut alg = None;
        let mut got_typ = None;
        let mut kid = None;
        for (name, value) in header.0 {
            match name.as_str() {
                "alg" => alg = Some(value),
                "typ" => got_typ = Some(value),
                "kid" => kid = Some(value),
                // crit, jku, jwk, x5u, x5c, b64, zip, ...: nothing we issue carries them.
                _ => return Err(TokenError::Algorithm),
            }
        }
        if alg.as_ref().and_then(Value::as_str) != Some(ALG) {
            return Err(TokenError::Algorithm);
        }
        if got_typ.as_ref().and_then(Value::as_str) != Some(typ) {
            return Err(TokenError::Type);
        }
        let kid = kid
            .as_ref()
            .and_then(Value::as_str)
            .ok_or(TokenError::UnknownKey)?;
        let key = self
            .verifying
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, key)| key)
            .ok_or(TokenError::UnknownKey)?;

        let signature = Signature::from_slice(&signature).map_err(|_| TokenError::Signature)?;
        let signed = token
            .get(..h64.len() + 1 + p64.len())
            .ok_or(TokenError::Malformed)?;
        key.verify_strict(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;

        serde_json::from_slice(&payload).map_err(|_| TokenError::Claims)
    }
}

/// A JOSE header: a JSON object whose member names are unique (RFC 7515 §4 lets a parser
/// refuse duplicates; accepting them would let two parsers read different headers).
struct HeaderObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for HeaderObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderObject, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom("duplicate header parameter"));
                    }
                    entries.push((name, value));
                }
                Ok(HeaderObject(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Three non-empty base64url segments separated by dots, the first starting with `eyJ` (a JSON
/// header). Cheap; tells a token from an API key before any verification.
pub fn looks_like_jwt(s: &str) -> bool {
    let b64url = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut parts = s.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(h), Some(p), Some(sig), None) if h.starts_with("eyJ") && b64url(h) && b64url(p) && b64url(sig)
    )
}

/// RFC 9068 claims keygate puts in an access token (and, with `htm`/`htu`/`metadata`, in an
/// assertion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The key id.
    pub sub: KeyId,
    pub aud: String,
    /// Seconds since the epoch.
    pub exp: i64,
    pub iat: i64,
    /// Random, 16 hex digits.
    pub jti: String,
    /// Space-separated grants.
    pub scope: String,
    /// RFC 9068 requires `client_id`: the key id again.
    pub client_id: KeyId,
    pub environment: Environment,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    #[serde(default, skip_serializing_if = "IpAllowlist::is_empty")]
    pub ip_allowlist: IpAllowlist,
    /// The key record's version when the token was issued.
    pub ver: u64,
    /// The key's rate tier, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_tier: Option<String>,
    /// The key spends credits: so does every request with this token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metered: bool,
    /// Assertion only: the request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htm: Option<String>,
    /// Assertion only: the request URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htu: Option<String>,
    /// Assertion only: the key's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

impl AccessClaims {
    /// `exp` in the future (`exp > now`: a token is expired at its `exp` second), and `iat` not
    /// more than 60 s in the future.
    pub fn check_time(&self, now: Timestamp) -> Result<(), TokenError> {
        let now_ms = now.millis();
        if self.exp.saturating_mul(1000) <= now_ms {
            return Err(TokenError::Expired);
        }
        if self.iat.saturating_mul(1000) > now_ms.saturating_add(IAT_LEEWAY_S * 1000) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }

    /// The scope claim as grants (`Claims` if any entry does not parse). Empty: no grants.
    pub fn grants(&self) -> Result<Vec<Grant>, TokenError> {
        self.scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(|s| Grant::parse(s).map_err(|_| TokenError::Claims))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    const SEED_A: [u8; 32] = [7u8; 32];
    const SEED_B: [u8; 32] = [42u8; 32];

    fn secret(seed: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(seed)
    }

    fn keys() -> TokenKeys {
        TokenKeys::from_secret(&secret(&SEED_A)).unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: "https://gw.example".into(),
            sub: KeyId::parse("0123456789abcdef").unwrap(),
            aud: "https://api.example".into(),
            exp: 1_700_000_600,
            iat: 1_700_000_000,
            jti: "00112233aabbccdd".into(),
            scope: "orders:read users:*".into(),
            client_id: KeyId::parse("0123456789abcdef").unwrap(),
            environment: Environment::Live,
            tenants: vec!["acme".into()],
            ip_allowlist: IpAllowlist::parse(&["10.0.0.0/8", "192.0.2.1"]).unwrap(),
            ver: 3,
            rate_tier: None,
            metered: false,
            htm: None,
            htu: None,
            metadata: None,
        }
    }

    fn b64(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    /// A token with this exact header and payload JSON, signed by `keys` over the usual input.
    fn signed_raw(keys: &TokenKeys, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = keys.signing.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    fn payload_json() -> String {
        serde_json::to_string(&claims()).unwrap()
    }

    fn header_json(keys: &TokenKeys, extra: &str) -> String {
        format!(
            r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"{extra}}}"#,
            keys.kid()
        )
    }

    fn verify(keys: &TokenKeys, token: &str) -> Result<AccessClaims, TokenError> {
        keys.verify::<AccessClaims>(token, ACCESS_TYP)
    }

    #[test]
    fn verified_access_tokens_are_remembered_but_still_checked_in_full_once() {
        let k = keys();
        let token = k.sign(ACCESS_TYP, &claims()).unwrap();
        let first = k.verify_access(&token, 0).unwrap();
        assert_eq!(k.verify_access(&token, 0).unwrap(), first);
        assert_eq!(k.verified.borrow().len(), 1);
        // A tampered token is verified (and refused), never taken from the map.
        let mut bad = token.clone();
        bad.pop();
        bad.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(k.verify_access(&bad, 0).is_err());
        assert_eq!(k.verified.borrow().len(), 1);
        // Clones share the map (one per isolate).
        assert_eq!(k.clone().verified.borrow().len(), 1);
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let token = k.sign(ACCESS_TYP, &claims()).unwrap();
        assert!(looks_like_jwt(&token));
        assert_eq!(verify(&k, &token).unwrap(), claims());
        // The header is exactly alg, typ, kid.
        let h = token.split('.').next().unwrap();
        let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
        assert_eq!(h, json!({"alg": "EdDSA", "typ": "at+jwt", "kid": k.kid()}));
    }

    #[test]
    fn round_trip_assertion_with_optional_claims() {
        let k = keys();
        let mut c = claims();
        c.htm = Some("GET".into());
        c.htu = Some("https://api.example/orders".into());
        c.metadata = Some(serde_json::Map::from_iter([("plan".to_owned(), json!("pro"))]));
        c.tenants.clear();
        c.ip_allowlist = IpAllowlist::default();
        let token = k.sign(ASSERTION_TYP, &c).unwrap();
        assert_eq!(k.verify::<AccessClaims>(&token, ASSERTION_TYP).unwrap(), c);
        // An assertion is not an access token, nor the reverse.
        assert_eq!(verify(&k, &token), Err(TokenError::Type));
        // Empty lists and absent options are left out.
        let p = token.split('.').nth(1).unwrap();
        let p: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        assert!(p.get("tenants").is_none() && p.get("ip_allowlist").is_none());
        let access: Value = serde_json::to_value(claims()).unwrap();
        assert!(access.get("htm").is_none() && access.get("metadata").is_none());
        assert_eq!(access["ip_allowlist"], json!(["10.0.0.0/8", "192.0.2.1"]));
    }

    #[test]
    fn sign_refuses_non_object_claims() {
        assert_eq!(keys().sign(ACCESS_TYP, &[1, 2]), Err(TokenError::Claims));
        assert_eq!(keys().sign(ACCESS_TYP, &"x"), Err(TokenError::Claims));
    }

    #[test]
    fn rotation_new_key_signs_old_key_still_verifies() {
        let old = TokenKeys::from_secret(&secret(&SEED_B)).unwrap();
        let rotated = TokenKeys::from_secret(&format!("{},{}", secret(&SEED_A), secret(&SEED_B))).unwrap();
        assert_ne!(old.kid(), rotated.kid());
        assert_eq!(rotated.kid(), keys().kid());

        let old_token = old.sign(ACCESS_TYP, &claims()).unwrap();
        assert_eq!(verify(&rotated, &old_token).unwrap(), claims());
        let new_token = rotated.sign(ACCESS_TYP, &claims()).unwrap();
        assert_eq!(verify(&rotated, &new_token).unwrap(), claims());
        // The old key alone does not know the new one.
        assert_eq!(verify(&old, &new_token), Err(TokenError::UnknownKey));

        let jwks = rotated.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec![rotated.kid(), old.kid()]);
    }

    #[test]
    fn from_secret_accepts_padding_whitespace_and_standard_base64() {
        let padded = format!("{}=", secret(&SEED_A));
        assert_eq!(TokenKeys::from_secret(&padded).unwrap().kid(), keys().kid());
        let spaced = format!(" {} , {}\n", secret(&SEED_A), secret(&SEED_B));
        assert_eq!(TokenKeys::from_secret(&spaced).unwrap().verifying.len(), 2);
        let seed = [0xfbu8; 32]; // encodes with `+`/`/` in standard base64
        let std_b64 = base64::engine::general_purpose::STANDARD.encode(seed);
        assert!(std_b64.contains('+') || std_b64.contains('/'));
        assert_eq!(
            TokenKeys::from_secret(&std_b64).unwrap().kid(),
            TokenKeys::from_secret(&secret(&seed)).unwrap().kid()
        );
        // The same seed twice is one verifying key.
        let twice = format!("{0},{0}", secret(&SEED_A));
        assert_eq!(TokenKeys::from_secret(&twice).unwrap().verifying.len(), 1);
    }

    #[test]
    fn from_secret_errors_never_quote_the_secret() {
        let good = secret(&SEED_A);
        let short = b64(&[9u8; 31]);
        let bad_char = format!("{}!", good.get(..42).unwrap());
        let three = format!("{good},{good},{good}");
        for s in ["", " ", ",", short.as_str(), bad_char.as_str(), three.as_str()] {
            let err = TokenKeys::from_secret(s).unwrap_err();
            assert!(err.starts_with("token signing secret"), "{err}");
            if !s.trim().is_empty() {
                assert!(!err.contains(s.trim()), "{err}");
            }
            assert!(!err.contains(good.get(..8).unwrap()), "{err}");
        }
        assert!(TokenKeys::from_secret(&short).unwrap_err().contains("31 bytes"));
    }

    #[test]
    fn generated_secret_is_a_fresh_seed() {
        let a = TokenKeys::generate_secret().unwrap();
        let b = TokenKeys::generate_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let k = TokenKeys::from_secret(&a).unwrap();
        let token = k.sign(ACCESS_TYP, &claims()).unwrap();
        assert!(verify(&k, &token).is_ok());
    }

    #[test]
    fn kid_is_truncated_sha256_of_public_key() {
        let k = keys();
        let public = SigningKey::from_bytes(&SEED_A).verifying_key();
        let digest = Sha256::digest(public.as_bytes());
        assert_eq!(k.kid(), b64(&digest[..12]));
        assert_eq!(k.kid().len(), 16);
    }

    #[test]
    fn debug_shows_kids_not_seed() {
        let s = secret(&SEED_A);
        let k = TokenKeys::from_secret(&s).unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains(k.kid()));
        assert!(!dbg.contains(&s));
        assert!(!dbg.contains(&hex::encode(SEED_A)));
        assert!(!dbg.contains("7, 7, 7"));
    }

    /// RFC 8037 A.1/A.2: the seed and its public key; A.4: the signature over
    /// `{"alg":"EdDSA"}`.`Example of Ed25519 signing`.
    #[test]
    fn rfc8037_test_vector() {
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
        let k = TokenKeys::from_secret(&b64(&seed)).unwrap();
        let jwks = k.jwks();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a").unwrap()
        );
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], k.kid());
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);

        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = k.signing.sign(input.as_bytes());
        assert_eq!(
            b64(&sig.to_bytes()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn refuses_alg_none() {
        let k = keys();
        let header = format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#, k.kid());
        let unsigned = format!("{}.{}.", b64(header.as_bytes()), b64(payload_json().as_bytes()));
        assert_eq!(verify(&k, &unsigned), Err(TokenError::Malformed));
        let with_sig = signed_raw(&k, &header, &payload_json());
        assert_eq!(verify(&k, &with_sig), Err(TokenError::Algorithm));
        let no_kid = signed_raw(&k, r#"{"alg":"none"}"#, &payload_json());
        assert_eq!(verify(&k, &no_kid), Err(TokenError::Algorithm));
    }

    /// The key-confusion attack: HMAC-SHA256 keyed with the (public) verifying key.
    #[test]
    fn refuses_hs256_keyed_with_the_public_key() {
        let k = keys();
        let header = format!(r#"{{"alg":"HS256","typ":"at+jwt","kid":"{}"}}"#, k.kid());
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload_json().as_bytes()));
        let jwks = k.jwks();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let raw = URL_SAFE_NO_PAD.decode(x).unwrap();
        for secret in [raw.as_slice(), x.as_bytes(), jwks.to_string().as_bytes()] {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(input.as_bytes());
            let forged = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
            assert_eq!(verify(&k, &forged), Err(TokenError::Algorithm));
        }
    }

    #[test]
    fn refuses_other_algorithms() {
        let k = keys();
        for alg in ["RS256", "ES256", "EdDSA ", "eddsa", "Ed25519", ""] {
            let header = format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, k.kid());
            assert_eq!(
                verify(&k, &signed_raw(&k, &header, &payload_json())),
                Err(TokenError::Algorithm),
                "{alg}"
            );
        }
        let no_alg = format!(r#"{{"typ":"at+jwt","kid":"{}"}}"#, k.kid());
        let alg_array = format!(r#"{{"alg":["EdDSA"],"typ":"at+jwt","kid":"{}"}}"#, k.kid());
        let dup_alg = format!(
            r#"{{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#,
            k.kid()
        );
        for header in [
            no_alg.as_str(),
            &alg_array,
            &dup_alg,
            r#"["EdDSA","at+jwt"]"#,
            "null",
            "not json",
        ] {
            assert_eq!(
                verify(&k, &signed_raw(&k, header, &payload_json())),
                Err(TokenError::Algorithm),
                "{header}"
            );
        }
    }

    #[test]
    fn refuses_key_selecting_and_critical_headers() {
        let k = keys();
        for extra in [
            r#","jku":"https://evil.example/jwks""#,
            r#","jwk":{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#,
            r#","x5u":"https://evil.example/cert""#,
            r#","x5c":["MIIB"]"#,
            r#","crit":["exp"]"#,
            r#","b64":false"#,
        ] {
            let header = header_json(&k, extra);
            assert_eq!(
                verify(&k, &signed_raw(&k, &header, &payload_json())),
                Err(TokenError::Algorithm),
                "{extra}"
            );
        }
    }

    #[test]
    fn refuses_tampered_payload() {
        let k = keys();
        let token = k.sign(ACCESS_TYP, &claims()).unwrap();
        let mut elevated = claims();
        elevated.scope = "**".into();
        let forged_payload = b64(serde_json::to_string(&elevated).unwrap().as_bytes());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(verify(&k, &forged), Err(TokenError::Signature));
    }

    #[test]
    fn refuses_tampered_signature() {
        let k = keys();
        let token = k.sign(ACCESS_TYP, &claims()).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[0] ^= 1;
        assert_eq!(
            verify(&k, &format!("{input}.{}", b64(&sig))),
            Err(TokenError::Signature)
        );
        // Wrong length: still a signature failure, not a panic.
        assert_eq!(
            verify(&k, &format!("{input}.{}", b64(&sig[..63]))),
            Err(TokenError::Signature)
        );
        // A signature by another key under our kid.
        let other = TokenKeys::from_secret(&secret(&SEED_B)).unwrap();
        let by_other = signed_raw(&other, &header_json(&k, ""), &payload_json());
        assert_eq!(verify(&k, &by_other), Err(TokenError::Signature));
    }

    #[test]
    fn refuses_wrong_or_missing_kid() {
        let k = keys();
        let other = TokenKeys::from_secret(&secret(&SEED_B)).unwrap();
        let token = other.sign(ACCESS_TYP, &claims()).unwrap();
        assert_eq!(verify(&k, &token), Err(TokenError::UnknownKey));
        let no_kid = signed_raw(&k, r#"{"alg":"EdDSA","typ":"at+jwt"}"#, &payload_json());
        assert_eq!(verify(&k, &no_kid), Err(TokenError::UnknownKey));
        let num_kid = signed_raw(&k, r#"{"alg":"EdDSA","typ":"at+jwt","kid":1}"#, &payload_json());
        assert_eq!(verify(&k, &num_kid), Err(TokenError::UnknownKey));
    }

    #[test]
    fn refuses_wrong_or_missing_typ() {
        let k = keys();
        let token = k.sign(ASSERTION_TYP, &claims()).unwrap();
        assert_eq!(verify(&k, &token), Err(TokenError::Type));
        let token = k.sign("JWT", &claims()).unwrap();
        assert_eq!(verify(&k, &token), Err(TokenError::Type));
        let token = k.sign("AT+JWT", &claims()).unwrap();
        assert_eq!(verify(&k, &token), Err(TokenError::Type));
        let no_typ = signed_raw(
            &k,
            &format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, k.kid()),
            &payload_json(),
        );
        assert_eq!(verify(&k, &no_typ), Err(TokenError::Type));
    }

    #[test]
    fn refuses_malformed() {
        let k = keys();
        let token = k.sign(ACCESS_TYP, &claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let cases = [
            String::new(),
            "..".into(),
            format!("{}..{}", parts[0], parts[2]),
            format!(".{}.{}", parts[1], parts[2]),
            format!("{}.{}", parts[0], parts[1]),
            format!("{token}.{}", parts[2]),
            format!("{token}."),
            format!("{token}="),
            format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
            format!("{}.{}+.{}", parts[0], parts[1], parts[2]),
            format!("{} ", token),
            "kg_live_0123456789abcdef_00_00000000".into(),
            "not a token".into(),
        ];
        for t in &cases {
            assert_eq!(verify(&k, t), Err(TokenError::Malformed), "{t:?}");
        }
    }

    #[test]
    fn refuses_over_long_token() {
        let k = keys();
        let mut c = claims();
        c.tenants = vec!["t".repeat(7000)];
        let token = k.sign(ACCESS_TYP, &c).unwrap();
        assert!(token.len() > MAX_TOKEN_LEN);
        assert_eq!(verify(&k, &token), Err(TokenError::Malformed));
        c.tenants = vec!["t".repeat(5000)];
        let token = k.sign(ACCESS_TYP, &c).unwrap();
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert!(verify(&k, &token).is_ok());
    }

    #[test]
    fn refuses_claims_of_the_wrong_shape() {
        let k = keys();
        let t = k.sign(ACCESS_TYP, &json!({"sub": "0123456789abcdef"})).unwrap();
        assert_eq!(verify(&k, &t), Err(TokenError::Claims));
        let mut v = serde_json::to_value(claims()).unwrap();
        v["sub"] = json!("not-a-key-id");
        let t = k.sign(ACCESS_TYP, &v).unwrap();
        assert_eq!(verify(&k, &t), Err(TokenError::Claims));
        // A payload that is not JSON at all, correctly signed.
        let t = signed_raw(&k, &header_json(&k, ""), "garbage");
        assert_eq!(verify(&k, &t), Err(TokenError::Claims));
        // Duplicate claim names are refused by the derived Deserialize.
        let dup = payload_json().replacen('{', r#"{"exp":9999999999,"#, 1);
        let t = signed_raw(&k, &header_json(&k, ""), &dup);
        assert_eq!(verify(&k, &t), Err(TokenError::Claims));
    }

    #[test]
    fn check_time_edges() {
        let c = claims(); // iat 1_700_000_000, exp 1_700_000_600
        let at = |s: i64, ms: i64| Timestamp::from_millis(s * 1000 + ms);
        assert_eq!(c.check_time(at(1_700_000_000, 0)), Ok(()));
        assert_eq!(c.check_time(at(1_700_000_599, 999)), Ok(()));
        assert_eq!(c.check_time(at(1_700_000_600, 0)), Err(TokenError::Expired));
        assert_eq!(c.check_time(at(1_700_000_601, 0)), Err(TokenError::Expired));
        // iat up to 60 s ahead of the clock is skew; more is not yet valid.
        assert_eq!(c.check_time(at(1_699_999_940, 0)), Ok(()));
        assert_eq!(c.check_time(at(1_699_999_939, 999)), Err(TokenError::NotYetValid));
        // Extreme values do not overflow.
        let mut c2 = c.clone();
        c2.exp = i64::MAX;
        c2.iat = i64::MIN;
        assert_eq!(
            c2.check_time(Timestamp::from_millis(i64::MAX)),
            Err(TokenError::Expired)
        );
        assert_eq!(c2.check_time(Timestamp::from_millis(0)), Ok(()));
        c2.exp = i64::MIN;
        assert_eq!(
            c2.check_time(Timestamp::from_millis(i64::MIN)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn grants_parse_the_scope_claim() {
        let mut c = claims();
        let g = c.grants().unwrap();
        assert_eq!(
            g,
            vec![
                Grant::parse("orders:read").unwrap(),
                Grant::parse("users:*").unwrap()
            ]
        );
        c.scope = String::new();
        assert_eq!(c.grants().unwrap(), vec![]);
        c.scope = "orders:read bad!grant".into();
        assert_eq!(c.grants(), Err(TokenError::Claims));
    }

    #[test]
    fn looks_like_jwt_tells_tokens_from_keys() {
        let token = keys().sign(ACCESS_TYP, &claims()).unwrap();
        assert!(looks_like_jwt(&token));
        assert!(looks_like_jwt("eyJhbGciOiJFZERTQSJ9.RXhhbXBsZQ.c2ln"));
        let key = crate::key::ApiKey::generate(&crate::key::KeyPrefix::default(), Environment::Live).unwrap();
        assert!(!looks_like_jwt(key.expose()));
        for junk in [
            "",
            "eyJ",
            "eyJ..",
            "eyJa.b",
            "eyJa.b.c.d",
            "eyJa.b.",
            "eyJa..c",
            "abc.def.ghi",
            "eyJa.b c.d",
            "eyJa.b=.c",
            "eyJa.b+/.c",
            "Bearer eyJa.b.c",
        ] {
            assert!(!looks_like_jwt(junk), "{junk:?}");
        }
    }

    #[test]
    fn own_tokens_are_found_by_their_header_segment_and_no_other_jwt_is() {
        let k = keys();
        for typ in [ACCESS_TYP, ASSERTION_TYP] {
            let token = k.sign(typ, &claims()).unwrap();
            assert!(k.holds_own_token(&token), "{typ}");
            assert!(k.holds_own_token(&format!("Bearer {token}")), "{typ}");
        }
        // The previous key of a rotation still counts; a stranger's key does not.
        let old = TokenKeys::from_secret(&secret(&SEED_B)).unwrap();
        let rotated = TokenKeys::from_secret(&format!("{},{}", secret(&SEED_A), secret(&SEED_B))).unwrap();
        let old_token = old.sign(ACCESS_TYP, &claims()).unwrap();
        assert!(rotated.holds_own_token(&old_token));
        assert!(!k.holds_own_token(&old_token));
        assert!(!k.holds_own_token("eyJhbGciOiJFZERTQSJ9.e30.c2ln"));
        assert!(!k.holds_own_token("an ordinary header value"));
    }
}
