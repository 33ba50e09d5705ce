//! Finding the caller's credential in a request: `Authorization: Bearer <key>` or
//! `X-API-Key: <key>` (names configurable), and the query string only where a policy opts in.
//!
//! - The scheme is case-insensitive (`bearer <key>` works); spaces and tabs around values are
//!   trimmed. Other schemes (`Basic ...`) are not our credential and are ignored.
//! - Repeated header lines arrive joined by `, `; each item is read separately.
//! - The same key sent several times is one credential; two different ones are ambiguous.
//! - Header names are exact: `X_API_Key` is not `X-API-Key`.

use crate::policy::CredentialConfig;

/// Read access to request headers, by lowercase name, with repeated lines joined by ", ".
pub trait HeaderSource {
    fn header(&self, name: &str) -> Option<String>;
}

impl HeaderSource for [(String, String)] {
    fn header(&self, name: &str) -> Option<String> {
        let mut values = self
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let mut joined = values.next()?.to_owned();
        for v in values {
            joined.push_str(", ");
            joined.push_str(v);
        }
        Some(joined)
    }
}

impl HeaderSource for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<String> {
        self.as_slice().header(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    Missing,
    Malformed,
    Ambiguous,
}

/// Where the credential was found, so the edge can remove it before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub in_bearer_header: bool,
    pub in_api_key_header: bool,
    pub in_query: bool,
}

fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The single credential string in the request.
pub fn extract<H: HeaderSource + ?Sized>(
    cfg: &CredentialConfig,
    headers: &H,
    query: Option<&str>,
) -> (Result<String, CredentialError>, Found) {
    let mut found = Found::default();
    // The first credential seen, and whether a different one followed (the same key sent
    // several times is one credential).
    let mut value: Option<String> = None;
    let mut ambiguous = false;
    let mut malformed = false;
    let mut push = |v: &str| match &value {
        None => value = Some(v.to_owned()),
        Some(first) => ambiguous |= first != v,
    };

    if let Some(v) = headers.header(&cfg.bearer_header) {
        for item in v.split(',') {
            let item = item.trim_matches(is_ws);
            let (scheme, rest) = item.split_once(is_ws).unwrap_or((item, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            found.in_bearer_header = true;
            let token = rest.trim_matches(is_ws);
            if token.is_empty() || token.contains(is_ws) {
                malformed = true;
            } else {
                push(token);
            }
        }
    }
    if let Some(v) = headers.header(&cfg.api_key_header) {
        found.in_api_key_header = true;
        for item in v.split(',') {
            let item = item.trim_matches(is_ws);
            if item.is_empty() || item.contains(is_ws) {
                malformed = true;
            } else {
                push(item);
            }
        }
    }
    if let (Some(param), Some(q)) = (&cfg.query_param, query) {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == param {
                found.in_query = true;
                if v.is_empty() {
                    malformed = true;
                } else {
                    push(v);
                }
            }
        }
    }

    let result = match (value, ambiguous, malformed) {
        (_, true, _) => Err(CredentialError::Ambiguous),
        (_, false, true) => Err(CredentialError::Malformed),
        (Some(v), false, false) => Ok(v),
        (None, false, false) => Err(CredentialError::Missing),
    };
    (result, found)
}

/// The query string without the credential parameter, for forwarding.
pub fn strip_query_param(query: &str, param: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != param)
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(query: Option<&str>) -> CredentialConfig {
        CredentialConfig {
            bearer_header: "authorization".into(),
            api_key_header: "x-api-key".into(),
            query_param: query.map(str::to_owned),
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn get(pairs: &[(&str, &str)]) -> Result<String, CredentialError> {
        extract(&cfg(None), &h(pairs), None).0
    }

    #[test]
    fn bearer_and_api_key() {
        assert_eq!(get(&[("Authorization", "Bearer k1")]), Ok("k1".into()));
        assert_eq!(get(&[("authorization", "bearer \t k1 ")]), Ok("k1".into()));
        assert_eq!(get(&[("X-API-Key", " k1 ")]), Ok("k1".into()));
        assert_eq!(
            get(&[("X-API-Key", "k1"), ("Authorization", "Bearer k1")]),
            Ok("k1".into())
        );
        assert_eq!(get(&[("X-API-Key", "k1"), ("X-API-Key", "k1")]), Ok("k1".into()));
    }

    #[test]
    fn missing_malformed_ambiguous() {
        assert_eq!(get(&[]), Err(CredentialError::Missing));
        assert_eq!(
            get(&[("Authorization", "Basic Zm9vOmJhcg==")]),
            Err(CredentialError::Missing)
        );
        assert_eq!(get(&[("X_API_Key", "k1")]), Err(CredentialError::Missing));
        assert_eq!(
            get(&[("Authorization", "Bearer")]),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            get(&[("Authorization", "Bearer a b")]),
            Err(CredentialError::Malformed)
        );
        assert_eq!(get(&[("X-API-Key", "")]), Err(CredentialError::Malformed));
        assert_eq!(
            get(&[("X-API-Key", "k1"), ("Authorization", "Bearer k2")]),
            Err(CredentialError::Ambiguous)
        );
        assert_eq!(get(&[("X-API-Key", "k1, k2")]), Err(CredentialError::Ambiguous));
    }

    #[test]
    fn query_only_when_enabled() {
        let hs = h(&[]);
        assert_eq!(
            extract(&cfg(None), &hs, Some("api_key=k1")).0,
            Err(CredentialError::Missing)
        );
        let (r, found) = extract(&cfg(Some("api_key")), &hs, Some("a=1&api_key=k1"));
        assert_eq!(r, Ok("k1".into()));
        assert!(found.in_query);
        assert_eq!(strip_query_param("a=1&api_key=k1&b=2", "api_key"), "a=1&b=2");
    }
}
