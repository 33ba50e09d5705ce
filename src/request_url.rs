//! The parts of a request's URL the gateway reads, split from the runtime's own serialisation.
//!
//! On Cloudflare (and under `wrangler dev`) the worker gets `request.url` as a WHATWG-serialised
//! absolute URL: scheme and host lowercased (an internationalised host in punycode), the
//! scheme's default port left out, the path percent-encoded as sent with dot segments resolved,
//! and no fragment. Splitting that text at its delimiters gives exactly what a full re-parse (the
//! `url` crate, as `worker::Request::url()` does) would: the tests below check it against `url`
//! for generated URLs. This saves a parse per request and keeps `url` out of the wasm.
//!
//! Raw `workerd` (self-hosted, and the benchmark and two-isolate rigs) builds the URL from the
//! Host header as sent, without that normalisation. Nothing then gets through that would not
//! have been refused anyway: a host that does not split (a bad port, an open bracket) makes
//! the request fail (500, not forwarded), and `.`, `..` or `\` segments that reach the path are
//! refused by `path::canonicalize` (400 `invalid_path`). The gateway and the origin see the
//! same path either way.

/// Scheme, host, port, path and query of an absolute `scheme://host[:port]/path[?query]` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestUrl<'a> {
    pub scheme: &'a str,
    /// As serialised: lowercase, an IPv6 address in brackets.
    pub host: &'a str,
    /// `None` when absent or the scheme's default (as `url::Url::port`).
    pub port: Option<u16>,
    /// Never empty: at least `/`.
    pub path: &'a str,
    /// After the first `?` (which may be empty), without any fragment.
    pub query: Option<&'a str>,
}

impl<'a> RequestUrl<'a> {
    /// `None` for anything that is not an absolute URL with an authority and a valid port.
    pub fn parse(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme_ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return None;
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, tail) = rest.split_at_checked(rest.find(['/', '?']).unwrap_or(rest.len()))?;
        // Userinfo never reaches a worker in a request URL; were it there, it is not the host.
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if host_port.starts_with('[') {
            let end = host_port.find(']')?;
            let (host, after) = host_port.split_at_checked(end + 1)?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':')?)),
            }
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            None | Some("") => None,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
            Some(_) => return None,
        };
        let port = port.filter(|p| default_port(scheme) != Some(*p));
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        Some(RequestUrl {
            scheme,
            host,
            port,
            path: if path.is_empty() { "/" } else { path },
            query,
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::RequestUrl;
    use proptest::prelude::*;

    /// Splits what the `url` crate serialises from `input` (as the runtime does) and compares
    /// every part with what `url` itself reads. Input `url` refuses is skipped.
    fn check(input: &str) {
        let Ok(u) = url::Url::parse(input) else {
            return;
        };
        let serialised = u.as_str();
        let ours = RequestUrl::parse(serialised).unwrap_or_else(|| panic!("{serialised} did not split"));
        assert_eq!(ours.scheme, u.scheme(), "{serialised}");
        assert_eq!(Some(ours.host), u.host_str(), "{serialised}");
        assert_eq!(ours.port, u.port(), "{serialised}");
        assert_eq!(ours.path, u.path(), "{serialised}");
        assert_eq!(ours.query, u.query(), "{serialised}");
    }

    #[test]
    fn splits_what_the_runtime_serialises_as_url_reads_it() {
        for input in [
            "https://api.example.com/",
            "https://api.example.com",
            "http://127.0.0.1:8787/licenses/a?x=1&y=2",
            "https://API.Example.COM:443/a/b/../c?",
            "http://example.com:80/%2e%2e/admin",
            "http://[::1]:8787/x?q=%3F#frag",
            "http://[2001:db8::1]/",
            "https://user:pw@example.com:8443/p?q",
            "http://example.com/a?b?c",
            "http://example.com/?#",
            "http://xn--nxasmq6b.example/x",
            "http://example.com/%61dmin/ui/",
            "http://example.com//double//slash",
        ] {
            check(input);
        }
    }

    #[test]
    fn refuses_what_is_not_an_absolute_url_with_a_host() {
        for bad in [
            "",
            "/relative",
            "example.com/x",
            "http:///x",
            "http://:80/x",
            "http://example.com:99999/",
            "http://example.com:8a/",
            "http://[::1/",
            "1http://example.com/",
        ] {
            assert_eq!(RequestUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn default_ports_are_none_and_others_kept() {
        assert_eq!(
            RequestUrl::parse("https://a.example:443/").map(|u| u.port),
            Some(None)
        );
        assert_eq!(
            RequestUrl::parse("http://a.example:80/").map(|u| u.port),
            Some(None)
        );
        assert_eq!(
            RequestUrl::parse("http://a.example:443/").map(|u| u.port),
            Some(Some(443))
        );
        assert_eq!(
            RequestUrl::parse("http://a.example:/").map(|u| u.port),
            Some(None)
        );
    }

    proptest! {
        #[test]
        fn agrees_with_the_url_crate(
            scheme in prop::sample::select(vec!["http", "https"]),
            host in prop::sample::select(vec!["api.example.com", "127.0.0.1", "[::1]", "Example.ORG", "xn--bcher-kva.example"]),
            port in prop::option::of(prop::sample::select(vec![80u16, 443, 8787, 1])),
            path in "(/[a-zA-Z0-9%._~!$&'()*+,;=:@-]{0,8}){0,5}",
            query in prop::option::of("[a-zA-Z0-9%=&/?:@._~-]{0,12}"),
            fragment in prop::option::of("[a-z?/]{0,4}"),
        ) {
            let mut input = format!("{scheme}://{host}");
            if let Some(p) = port {
                input.push_str(&format!(":{p}"));
            }
            input.push_str(&path);
            if let Some(q) = query {
                input.push('?');
                input.push_str(&q);
            }
            if let Some(f) = fragment {
                input.push('#');
                input.push_str(&f);
            }
            check(&input);
        }
    }
}
