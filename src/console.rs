//! The admin console's serving rules: which admin paths are its files, which methods they
//! answer, and the security headers every console response carries. The files are Workers
//! static assets (`[assets]` in wrangler.toml, built from `console/` by `scripts/build.sh`);
//! the edge fetches them from the `ASSETS` binding only after the admin fence admitted the
//! request, so none of them is in the wasm and none is reachable outside the fence.

/// Where the console lives.
pub const PREFIX: &str = "/admin/ui";

/// The page's shell: `/admin/ui` and `/admin/ui/` both serve it, without a redirect.
const INDEX: &str = "/admin/ui/index.html";

/// Scripts, styles, images and API calls from this origin only; nothing inline, no `eval`, no
/// fonts, no frames, no plugins, no form posts (the console submits with `fetch`), and no
/// embedding in another page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
require-trusted-types-for 'script'; trusted-types 'none'";

/// Headers added to every console response (files, `304`s and errors alike).
pub const HEADERS: [(&str, &str); 6] = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    // File names are not content-hashed: always revalidate (the ETag makes that a 304).
    ("Cache-Control", "no-cache"),
];

/// What a request for the console asks of the `ASSETS` binding.
#[derive(Debug, PartialEq, Eq)]
pub enum Asset<'a> {
    /// Fetch this path from the binding.
    File(&'a str),
    /// The console's files answer only `GET` and `HEAD`.
    MethodNotAllowed,
}

pub const ALLOW: &str = "GET, HEAD";

/// `None` when the (canonical) admin path is not the console's: the admin API handles it.
pub fn asset<'a>(admin_path: &'a str, method: &str) -> Option<Asset<'a>> {
    let file = match admin_path {
        PREFIX | "/admin/ui/" => INDEX,
        p if p.starts_with("/admin/ui/") => p,
        _ => return None,
    };
    Some(match method {
        "GET" | "HEAD" => Asset::File(file),
        _ => Asset::MethodNotAllowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths() {
        assert_eq!(asset("/admin/ui", "GET"), Some(Asset::File(INDEX)));
        assert_eq!(asset("/admin/ui/", "HEAD"), Some(Asset::File(INDEX)));
        assert_eq!(
            asset("/admin/ui/console.js", "GET"),
            Some(Asset::File("/admin/ui/console.js"))
        );
        assert_eq!(asset("/admin/ui", "POST"), Some(Asset::MethodNotAllowed));
        for api in ["/admin/keys", "/admin/uix", "/admin/openapi.json", "/admin"] {
            assert_eq!(asset(api, "GET"), None, "{api}");
        }
    }

    #[test]
    fn the_policy_allows_nothing_inline_or_foreign() {
        let csp = CONTENT_SECURITY_POLICY;
        assert!(csp.starts_with("default-src 'none';"));
        assert!(csp.contains("frame-ancestors 'none'"));
        for weak in ["unsafe-inline", "unsafe-eval", "http:", "https:", "data:", "*"] {
            assert!(!csp.contains(weak), "{weak}");
        }
    }
}
