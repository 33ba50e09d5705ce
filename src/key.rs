//! API keys: their format (prefix, environment, public id, secret, checksum), generation from a
//! CSPRNG, strict parsing, and the versioned hash that is the only thing ever stored.
//!
//! Format: `{prefix}_{env}_{id}_{secret}_{crc}`, for example
//! `kg_live_3f9a0c1d2b4e5f60_<64 hex>_1a2b3c4d`.
//! - `prefix`: 1-16 of `[a-z0-9]`, configurable in the policy (`key_prefix`, default `kg`).
//! - `env`: `live` or `test`.
//! - `id`: the public key id, 16 lowercase hex digits (64 random bits). It names the KV record.
//! - `secret`: 64 lowercase hex digits (256 random bits from the platform CSPRNG).
//! - `crc`: CRC32 of everything before it, 8 lowercase hex digits, so that a mistyped or
//!   truncated key is rejected without any storage read (like GitHub's token checksums).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const DEFAULT_PREFIX: &str = "kg";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;
/// Longest string worth looking at; anything longer is malformed before any other work.
const MAX_KEY_LEN: usize = 160;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

/// The public id of a key. Once held, it is safe to use inside a storage key: 16 lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(s: &str) -> Option<Self> {
        is_lower_hex(s, ID_HEX).then(|| KeyId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn random() -> Result<Self, RandomError> {
        Ok(KeyId(hex::encode(random_bytes::<8>()?)))
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyId::parse(&s).ok_or_else(|| serde::de::Error::custom("invalid key id"))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The prefix keys carry, validated once when the policy loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(s: &str) -> Option<Self> {
        let ok =
            (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        ok.then(|| KeyPrefix(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        KeyPrefix(DEFAULT_PREFIX.to_owned())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomError;

fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|_| RandomError)?;
    Ok(buf)
}

/// Random hex of `n` bytes, for ids that are not key ids (audit events).
pub fn random_hex(n: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|_| RandomError)?;
    Ok(hex::encode(buf))
}

/// A well-formed API key. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    full: String,
    id: KeyId,
    environment: Environment,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ApiKey({}, {}, <redacted>)",
            self.environment.as_str(),
            self.id
        )
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn checksum(body: &str) -> String {
    format!("{:08x}", crc32fast::hash(body.as_bytes()))
}

impl ApiKey {
    /// A fresh key with a new id and 256 bits of secret.
    pub fn generate(prefix: &KeyPrefix, environment: Environment) -> Result<Self, RandomError> {
        let id = KeyId::random()?;
        let secret = hex::encode(random_bytes::<32>()?);
        let body = format!("{}_{}_{}_{}", prefix.as_str(), environment.as_str(), id, secret);
        let full = format!("{body}_{}", checksum(&body));
        Ok(ApiKey {
            full,
            id,
            environment,
        })
    }

    /// Strict parse: exact shape, expected prefix, valid checksum. No storage is touched.
    pub fn parse(s: &str, prefix: &KeyPrefix) -> Option<Self> {
        if s.len() > MAX_KEY_LEN {
            return None;
        }
        let (body, crc) = s.rsplit_once('_')?;
        let mut parts = body.split('_');
        let (p, env, id, secret) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || p != prefix.as_str() {
            return None;
        }
        let environment = Environment::parse(env)?;
        let id = KeyId::parse(id)?;
        if !is_lower_hex(secret, SECRET_HEX) || !is_lower_hex(crc, 8) {
            return None;
        }
        let mut expected = [0u8; 8];
        hex::encode_to_slice(crc32fast::hash(body.as_bytes()).to_be_bytes(), &mut expected).ok()?;
        if !bool::from(expected.ct_eq(crc.as_bytes())) {
            return None;
        }
        Some(ApiKey {
            full: s.to_owned(),
            id,
            environment,
        })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The plaintext. Only the issuing response may carry it.
    pub fn expose(&self) -> &str {
        &self.full
    }
}

/// How many hex digits of the secret, after the key id, make a string key-shaped. A masked key
/// (`kg_live_<id>` or `kg_live_<id>_****`) shows only the public id and is not a secret.
const SECRET_HEX_SHOWN: usize = 16;

/// Where, in `text`, something shaped like one of this gateway's keys starts and ends:
/// `<prefix>_live_` or `<prefix>_test_`, a 16-hex key id, `_`, and at least 16 hex digits of the
/// secret, in any letter case; the span runs to the end of the run of key characters.
pub fn key_like_spans(text: &str, prefix: &KeyPrefix) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    while start < text.len() {
        match key_like_at(text.as_bytes(), prefix.as_str().as_bytes(), start) {
            Some(end) => {
                spans.push((start, end));
                start = end;
            }
            None => start += 1,
        }
    }
    spans
}

/// Where a key-shaped string starting at `start` ends, if one starts there.
fn key_like_at(t: &[u8], p: &[u8], start: usize) -> Option<usize> {
    let at = |i: usize| t.get(i).map(u8::to_ascii_lowercase);
    let hex = |i: usize| at(i).is_some_and(|c| c.is_ascii_hexdigit());
    let i = start + p.len();
    let shaped = p.iter().enumerate().all(|(k, &b)| at(start + k) == Some(b))
        && at(i) == Some(b'_')
        && [b"live", b"test"]
            .iter()
            .any(|env| env.iter().enumerate().all(|(k, &e)| at(i + 1 + k) == Some(e)))
        && at(i + 5) == Some(b'_')
        && (i + 6..i + 6 + ID_HEX).all(hex)
        && at(i + 6 + ID_HEX) == Some(b'_')
        && (i + 7 + ID_HEX..i + 7 + ID_HEX + SECRET_HEX_SHOWN).all(hex);
    if !shaped {
        return None;
    }
    let mut end = i + 7 + ID_HEX + SECRET_HEX_SHOWN;
    while at(end).is_some_and(|c| c.is_ascii_hexdigit() || c == b'_') {
        end += 1;
    }
    Some(end)
}

/// Does `text` hold something shaped like one of this gateway's keys (see [`key_like_spans`])?
/// Used to keep keys from ever reaching the origin, a log line or a response body, also when
/// the checksum is wrong or the key sits in an unexpected place. Stops at the first one.
pub fn contains_key_like(text: &str, prefix: &KeyPrefix) -> bool {
    let (t, p) = (text.as_bytes(), prefix.as_str().as_bytes());
    (0..t.len()).any(|start| key_like_at(t, p, start).is_some())
}

/// `text` with every key-shaped string, and every occurrence of `token` (the admin token, when
/// set), replaced by `[redacted]`.
pub fn redact(text: &str, prefix: &KeyPrefix, token: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (a, b) in key_like_spans(text, prefix) {
        out.push_str(text.get(last..a).unwrap_or_default());
        out.push_str("[redacted]");
        last = b;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    match token.filter(|t| !t.is_empty()) {
        Some(t) => out.replace(t, "[redacted]"),
        None => out,
    }
}

/// How a stored hash was made. Kept in each record so a pepper can arrive later.
/// Percent-decodes what decodes and keeps the rest literally (`%zz` stays `%zz`, bytes that are
/// not UTF-8 become U+FFFD), as lenient origin decoders do.
fn lenient_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|&h| char::from(h).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Does `text` hold a key-shaped string (or `token`, the admin token, when given), as sent or
/// after any number of lenient percent-decodings (`%5F`, `%255F`, a stray `%zz` beside it), or
/// inside HTTP Basic credentials?
pub fn holds_secret(text: &str, prefix: &KeyPrefix, token: Option<&str>) -> bool {
    let token = token.filter(|t| !t.is_empty());
    holds_matching(text, |s| {
        contains_key_like(s, prefix) || token.is_some_and(|t| s.contains(t))
    })
}

/// Whether `found` holds for `text` as sent, after any number of lenient percent-decodings (with
/// `+` as a space), or for the credentials of an HTTP `Basic` value: the decodings an origin
/// might apply before it reads a secret out of a header or parameter.
pub fn holds_matching(text: &str, found: impl Fn(&str) -> bool) -> bool {
    // `Basic base64(user:password)`: a secret sent as a username or password.
    if let Some((scheme, rest)) = text.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
        && let Ok(decoded) = STANDARD.decode(rest.trim())
        && found(&String::from_utf8_lossy(&decoded))
    {
        return true;
    }
    if !text.contains('%') && !text.contains('+') {
        return found(text);
    }
    let mut current = text.replace('+', " ");
    // Each round that changes something shortens the text, so this ends.
    loop {
        if found(&current) {
            return true;
        }
        let next = lenient_decode(&current);
        if next == current {
            return false;
        }
        current = next;
    }
}

/// [`holds_secret`] for keys alone.
pub fn holds_key(text: &str, prefix: &KeyPrefix) -> bool {
    holds_secret(text, prefix, None)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashVersion {
    /// SHA-256 of the whole key, hex.
    Sha256,
    /// HMAC-SHA-256 of the whole key, keyed with `KEY_PEPPER`, hex.
    HmacSha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashError {
    /// The record was hashed with a pepper that this deployment does not have.
    PepperMissing,
}

/// Hashes keys for storage and verifies them in constant time.
#[derive(Clone, Default)]
pub struct KeyHasher {
    pepper: Option<Vec<u8>>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHasher(pepper: {})", self.pepper.is_some())
    }
}

impl KeyHasher {
    pub fn new(pepper: Option<&str>) -> Self {
        KeyHasher {
            pepper: pepper.filter(|p| !p.is_empty()).map(|p| p.as_bytes().to_vec()),
        }
    }

    /// The version new keys are stored with.
    /// From the `KEY_PEPPER` secret as the deployment has it: unset means no pepper, but set and
    /// empty is a configuration error (never silently "no pepper").
    pub fn from_secret(raw: Option<&str>) -> Result<Self, String> {
        match raw {
            Some("") => Err("KEY_PEPPER is set but empty: set a real pepper or delete the secret".into()),
            p => Ok(KeyHasher::new(p)),
        }
    }

    pub fn current_version(&self) -> HashVersion {
        if self.pepper.is_some() {
            HashVersion::HmacSha256
        } else {
            HashVersion::Sha256
        }
    }

    pub fn hash(&self, key: &ApiKey) -> (HashVersion, String) {
        let version = self.current_version();
        // current_version guarantees the pepper for HmacSha256.
        let digest = self.digest(key, version).unwrap_or_default();
        (version, hex::encode(digest))
    }

    fn digest(&self, key: &ApiKey, version: HashVersion) -> Result<[u8; 32], HashError> {
        match version {
            HashVersion::Sha256 => Ok(Sha256::digest(key.expose().as_bytes()).into()),
            HashVersion::HmacSha256 => {
                let pepper = self.pepper.as_deref().ok_or(HashError::PepperMissing)?;
                let mut mac =
                    <Hmac<Sha256> as Mac>::new_from_slice(pepper).map_err(|_| HashError::PepperMissing)?;
                mac.update(key.expose().as_bytes());
                Ok(mac.finalize().into_bytes().into())
            }
        }
    }

    /// Constant-time comparison of the key's hash with the stored hex hash.
    pub fn verify(&self, key: &ApiKey, version: HashVersion, stored_hex: &str) -> Result<bool, HashError> {
        let digest = self.digest(key, version)?;
        let mut stored = [0u8; 32];
        if hex::decode_to_slice(stored_hex, &mut stored).is_err() {
            return Ok(false);
        }
        Ok(bool::from(digest.ct_eq(&stored)))
    }
}

/// Constant-time equality of two secrets of any length (compares their SHA-256 digests, so the
/// length of the expected secret does not leak either).
pub fn secret_eq(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix() -> KeyPrefix {
        KeyPrefix::default()
    }

    #[test]
    fn generated_key_parses_back() {
        let key = ApiKey::generate(&prefix(), Environment::Test).unwrap();
        let parsed = ApiKey::parse(key.expose(), &prefix()).unwrap();
        assert_eq!(parsed, key);
        assert_eq!(parsed.environment(), Environment::Test);
        assert!(key.expose().starts_with("kg_test_"));
        // 256 bits of secret, hex encoded.
        assert_eq!(key.expose().split('_').nth(3).unwrap().len(), 64);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKey::generate(&prefix(), Environment::Live).unwrap();
        let secret = key.expose().split('_').nth(3).unwrap().to_owned();
        assert!(!format!("{key:?}").contains(&secret));
    }

    #[test]
    fn wrong_prefix_truncation_and_typos_are_rejected() {
        let key = ApiKey::generate(&prefix(), Environment::Live).unwrap();
        let s = key.expose();
        assert!(ApiKey::parse(s, &KeyPrefix::parse("other").unwrap()).is_none());
        assert!(ApiKey::parse(&s[..s.len() - 1], &prefix()).is_none());
        assert!(ApiKey::parse(&format!("{s}x"), &prefix()).is_none());
        assert!(ApiKey::parse("", &prefix()).is_none());
        assert!(ApiKey::parse(&s.to_uppercase(), &prefix()).is_none());
        let swapped = s.replacen("_live_", "_test_", 1);
        assert!(
            ApiKey::parse(&swapped, &prefix()).is_none(),
            "checksum covers the environment"
        );
    }

    #[test]
    fn hash_versions_verify_and_differ() {
        let key = ApiKey::generate(&prefix(), Environment::Live).unwrap();
        let plain = KeyHasher::new(None);
        let peppered = KeyHasher::new(Some("pepper"));
        let (v1, h1) = plain.hash(&key);
        let (v2, h2) = peppered.hash(&key);
        assert_eq!(v1, HashVersion::Sha256);
        assert_eq!(v2, HashVersion::HmacSha256);
        assert_eq!(h1, hex::encode(Sha256::digest(key.expose().as_bytes())));
        assert_ne!(h1, h2);
        assert!(plain.verify(&key, v1, &h1).unwrap());
        // A pepper introduced later still verifies the old SHA-256 records.
        assert!(peppered.verify(&key, v1, &h1).unwrap());
        assert!(peppered.verify(&key, v2, &h2).unwrap());
        assert_eq!(plain.verify(&key, v2, &h2), Err(HashError::PepperMissing));
        assert!(!peppered.verify(&key, v2, &h1).unwrap());
        assert!(!plain.verify(&key, v1, "zz").unwrap());
    }

    #[test]
    fn secret_eq_compares_exactly() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("", "abc"));
    }

    proptest! {
        #[test]
        fn any_single_character_change_is_rejected(pos in 0usize..110, c in proptest::char::range('0', 'z')) {
            let key = ApiKey::generate(&prefix(), Environment::Live).unwrap();
            let s = key.expose();
            let pos = pos % s.len();
            let mut bytes = s.as_bytes().to_vec();
            prop_assume!(bytes[pos] != c as u8);
            bytes[pos] = c as u8;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(ApiKey::parse(&changed, &prefix()).is_none());
        }

        #[test]
        fn random_strings_never_parse(s in "\\PC{0,120}") {
            prop_assert!(ApiKey::parse(&s, &prefix()).is_none());
        }
    }

    #[test]
    fn an_empty_pepper_is_an_error() {
        assert!(KeyHasher::from_secret(Some("")).is_err());
        assert_eq!(
            KeyHasher::from_secret(None).unwrap().current_version(),
            HashVersion::Sha256
        );
        assert_eq!(
            KeyHasher::from_secret(Some("p")).unwrap().current_version(),
            HashVersion::HmacSha256
        );
    }

    #[test]
    fn key_shapes_are_found_anywhere_in_any_case() {
        let prefix = KeyPrefix::default();
        let secret = "ab".repeat(32);
        for yes in [
            format!("kg_live_0123456789abcdef_{secret}_00000000"),
            format!("Bearer KG_TEST_0123456789ABCDEF_{}", &secret[..16]),
            format!("a=1; k=kg_live_0123456789abcdef_{secret}"),
        ] {
            assert!(contains_key_like(&yes, &prefix), "{yes}");
        }
        // The public id alone (a masked key) is not a secret.
        for no in [
            "kg_live_0123456789abcdef".to_owned(),
            "masked=kg_live_0123456789abcdef_****".to_owned(),
            format!("kg_live_0123456789abcdef_{}", &secret[..15]),
            "kg_prod_0123456789abcdef".into(),
            "Basic Zm9vOmJhcg==".into(),
        ] {
            assert!(!contains_key_like(&no, &prefix), "{no}");
        }
        let text = format!("x kg_live_0123456789abcdef_{secret}_00000000 y tok-123 z");
        assert_eq!(
            redact(&text, &prefix, Some("tok-123")),
            "x [redacted] y [redacted] z"
        );
    }
}
