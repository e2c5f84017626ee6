//! The web console of SPEC §7: one static page and its assets, embedded in the binary.
//!
//! The console is a client of the admin API and nothing more: the page loads without the admin
//! key, and everything it shows comes from `/v1/...` requests that carry the key (kept in the
//! tab's `sessionStorage`). The assets are hand-written HTML, CSS and vanilla JavaScript in
//! `src/admin/console/` (no build step, nothing from other hosts). Every response carries a
//! strict Content-Security-Policy (no inline script or style, same-origin connections only)
//! and the anti-framing, no-sniff and no-referrer headers.

use bytes::Bytes;
use http::header::{
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The policy every console response carries: scripts and styles only from the page's own
/// origin (no inline code), API calls only to it, no plugins, no framing, no form posts, no
/// `<base>` rewriting.
pub(crate) const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");
const FAVICON_SVG: &str = include_str!("console/favicon.svg");

/// The console's paths and what they serve.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/index.html", "text/html; charset=utf-8", INDEX_HTML),
    ("/console/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/console/app.css", "text/css; charset=utf-8", APP_CSS),
    ("/console/favicon.svg", "image/svg+xml", FAVICON_SVG),
];

/// The console page or asset at `path` (for a `GET`), or `None` when `path` is not one of
/// the console's. Serving needs no admin key: the page holds no data.
pub(crate) fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, body) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_assets_with_the_security_headers() {
        for (path, ct) in [
            ("/", "text/html; charset=utf-8"),
            ("/index.html", "text/html; charset=utf-8"),
            ("/console/app.js", "text/javascript; charset=utf-8"),
            ("/console/app.css", "text/css; charset=utf-8"),
            ("/console/favicon.svg", "image/svg+xml"),
        ] {
            let resp = serve(path).unwrap_or_else(|| panic!("{path} is served"));
            let h = resp.headers();
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(h[CONTENT_TYPE], ct, "{path}");
            assert_eq!(
                h[CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY_VALUE,
                "{path}"
            );
            assert_eq!(h[X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(h[REFERRER_POLICY], "no-referrer", "{path}");
        }
        for path in [
            "/v1/tokens",
            "/console/",
            "/console/nope.js",
            "/index.htm",
            "",
        ] {
            assert!(serve(path).is_none(), "{path} is not a console path");
        }
    }

    #[test]
    fn the_policy_forbids_inline_script_and_foreign_hosts() {
        let csp = CONTENT_SECURITY_POLICY_VALUE;
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(!csp.contains("http:") && !csp.contains("https:") && !csp.contains('*'));
        for directive in [
            "script-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive}");
        }
    }

    #[test]
    fn the_assets_are_self_contained_and_insert_data_as_text() {
        // No inline script or style in the page, nothing loaded from another host.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        let inline_handler = INDEX_HTML.split(" on").skip(1).any(|rest| {
            let attr: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !attr.is_empty() && rest[attr.len()..].starts_with('=')
        });
        assert!(!inline_handler, "no inline event handlers");
        for asset in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains("//cdn"));
        }
        // The script never parses data as HTML.
        let code: String = APP_JS
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
            "document.cookie",
        ] {
            assert!(!code.contains(sink), "app.js uses {sink}");
        }
    }
}
