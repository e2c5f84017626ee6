//! Header rules between client and upstream (SPEC §2 "Headers").
//!
//! Order matters and is fixed here: hop-by-hop headers (and those the client names in
//! `Connection`) are removed first, then everything the gateway owns is removed
//! (`x-tokengate-*`, and the forwarding headers from an untrusted peer), and only then are
//! the gateway's own headers added. So no client header can remove, replace or pre-empt a
//! header the gateway sets.

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, COOKIE, FORWARDED, HOST,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::HeaderMap;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_TOKENGATE_TOKEN: HeaderName = HeaderName::from_static("x-tokengate-token");
pub static X_TOKENGATE_TOKEN_ID: HeaderName = HeaderName::from_static("x-tokengate-token-id");
pub static X_TOKENGATE_ACCESS: HeaderName = HeaderName::from_static("x-tokengate-access");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The h2c upgrade's settings: meaningless (and unwanted) once the upgrade is refused.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and every header named in `Connection`.
/// When `upgrade` is `Some`, the request (or a 101 response) is a protocol upgrade and
/// `Connection: upgrade` / `Upgrade: <value>` are put back after the strip.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // One pass over the request's few names first: most requests carry none of these, and
    // a `remove` per listed name (each hashing it) costs more than that pass.
    if headers.keys().any(|k| HOP_BY_HOP.contains(&k)) {
        remove_hop_by_hop(headers);
    }
    if let Some(proto) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, proto);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), the obsolete `Keep-Alive`/`Proxy-Connection`, the
/// proxy credentials, and the h2c upgrade's settings.
static HOP_BY_HOP: [&HeaderName; 10] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHORIZATION,
    &PROXY_AUTHENTICATE,
    &HTTP2_SETTINGS,
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let connection = headers.get_all(CONNECTION); // looked up once, iterated per name
    let listed = |name: &str| {
        connection
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(name))
    };
    // Whether `Connection` lists a name beyond the hop-by-hop ones, found once. Usually it
    // does not (an upstream's `Connection: keep-alive` names one of them), and then no header
    // needs the per-name scan of `Connection`'s values below.
    let lists_others = connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            !HOP_BY_HOP
                .iter()
                .any(|h| t.eq_ignore_ascii_case(h.as_str()))
        });
    // Collect first (the names borrow from the map about to change), and only names that
    // are present: a response's usual `Connection: keep-alive` costs two removals, not a
    // parsed name and a removal per hop-by-hop header.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k) || (lists_others && listed(k.as_str())))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// The `Upgrade` value when the request asks for a protocol upgrade (`Connection: upgrade`).
///
/// Only a WebSocket upgrade of a GET is passed through: any other protocol (`h2c` above all)
/// would hand the client a raw channel to the upstream that no check of the gateway sees, so
/// its upgrade headers are stripped and the request is forwarded as a plain one.
pub fn upgrade_request(method: &http::Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != http::Method::GET {
        return None;
    }
    let wants = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = headers.get(UPGRADE).filter(|_| wants)?;
    upgrade
        .as_bytes()
        .eq_ignore_ascii_case(b"websocket")
        .then(|| upgrade.clone())
}

/// Joins an HTTP/2 request's `cookie` crumbs into one `cookie` line with `; ` (RFC 9113
/// §8.2.3), for an HTTP/1 upstream. Nothing to do (and nothing allocated) for one or none.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Every crumb was a valid value, and `; ` is too.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, v);
    }
}

/// Removes every `x-tokengate-*` header a client sent, and the underscore spellings of the
/// gateway's and the forwarding headers (`X_Tokengate_Token`, `x_forwarded_for`): CGI-style
/// upstreams (PHP, WSGI) map `_` and `-` to the same variable, so such a header would pass
/// for the real one. With `forwarding_claims`, also `Forwarded` and `X-Real-IP` (from an
/// untrusted peer). One pass over the names; nothing is allocated unless one is found.
fn strip_gateway_headers(headers: &mut HeaderMap, forwarding_claims: bool) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            k.as_str().starts_with("x-tokengate-")
                || is_underscore_alias(k.as_str())
                || (forwarding_claims && (*k == FORWARDED || *k == X_REAL_IP))
        })
        .cloned()
        .collect();
    for name in ours {
        headers.remove(&name);
    }
}

fn is_underscore_alias(name: &str) -> bool {
    if !name.contains('_') {
        return false;
    }
    let dashed = name.replace('_', "-");
    dashed.starts_with("x-tokengate-")
        || [
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-real-ip",
        ]
        .contains(&dashed.as_str())
}

/// What the pipeline learned about the request that the outgoing headers need.
pub struct Forwarding<'a> {
    /// The client IP as a header value.
    pub client_ip: HeaderValue,
    pub peer_trusted: bool,
    /// The request's original `Host` / `:authority`, for `X-Forwarded-Host`.
    pub original_host: Option<HeaderValue>,
    pub scheme: &'static str,
    /// `Some` = set `Host` to this (the upstream authority); `None` = keep the client's.
    pub host: Option<&'a HeaderValue>,
    pub keep_authorization: bool,
    pub token_name: &'a HeaderValue,
    pub token_id: &'a HeaderValue,
    pub token_access: &'a HeaderValue,
}

/// Rewrites a request's headers for the upstream. `headers` has already been through
/// [`strip_hop_by_hop`].
pub fn prepare_request(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    strip_gateway_headers(headers, !f.peer_trusted);
    // Room for the headers added below, so the map grows at most once.
    headers.reserve(7);
    if !f.keep_authorization {
        headers.remove(AUTHORIZATION);
    }
    let ip = f.client_ip.clone();
    if f.peer_trusted {
        // Append the client IP to the chain the trusted proxy sent (folded into one line).
        let mut chain: Vec<u8> = Vec::new();
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(v.as_bytes());
        }
        let value = if chain.is_empty() {
            ip
        } else {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or(ip)
        };
        headers.insert(X_FORWARDED_FOR.clone(), value);
    } else {
        // From an untrusted peer, Forwarded and X-Real-IP are claims we cannot check:
        // `strip_gateway_headers` dropped them; X-Forwarded-For is replaced.
        headers.insert(X_FORWARDED_FOR.clone(), ip);
    }
    if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(f.scheme),
        );
    }
    match &f.original_host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    match (f.host, &f.original_host) {
        (Some(upstream), _) => {
            headers.insert(HOST, upstream.clone());
        }
        (None, Some(orig)) => {
            headers.insert(HOST, orig.clone());
        }
        (None, None) => {}
    }
    headers.insert(X_TOKENGATE_TOKEN.clone(), f.token_name.clone());
    headers.insert(X_TOKENGATE_TOKEN_ID.clone(), f.token_id.clone());
    headers.insert(X_TOKENGATE_ACCESS.clone(), f.token_access.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn every_connection_line_counts_whatever_the_first_one_says() {
        // The first line names only hop-by-hop headers; a later one names another.
        let mut h = map(&[
            ("connection", "Keep-Alive, TE"),
            ("connection", "x-debug"),
            ("x-debug", "1"),
            ("keep-alive", "timeout=5"),
            ("server", "kept"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert!(h.get("x-debug").is_none());
        assert!(h.get("keep-alive").is_none() && h.get("connection").is_none());
        assert_eq!(h.get("server").unwrap(), "kept");
        // Only hop-by-hop names listed: the rest stays.
        let mut h = map(&[("connection", "keep-alive"), ("server", "kept")]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("server").unwrap(), "kept");
    }

    #[test]
    fn connection_named_headers_are_removed_but_cannot_touch_gateway_headers() {
        let mut h = map(&[
            (
                "connection",
                "close, x-tokengate-token, x-forwarded-for, foo",
            ),
            ("foo", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-tokengate-token", "spoofed"),
            ("x-tokengate-whatever", "spoofed"),
            ("bar", "kept"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert!(h.get("foo").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("te").is_none());
        assert_eq!(h.get("bar").unwrap(), "kept");
        let name = HeaderValue::from_static("feed-a");
        let id = HeaderValue::from_static("id-1");
        let access = HeaderValue::from_static("third-party-feeds");
        let f = Forwarding {
            client_ip: HeaderValue::from_static("192.0.2.7"),
            peer_trusted: false,
            original_host: Some(HeaderValue::from_static("gw.example")),
            scheme: "http",
            host: None,
            keep_authorization: false,
            token_name: &name,
            token_id: &id,
            token_access: &access,
        };
        h.insert("x-tokengate-whatever", HeaderValue::from_static("spoofed"));
        h.insert("x_tokengate_token", HeaderValue::from_static("spoofed"));
        h.insert("x-tokengate_access", HeaderValue::from_static("spoofed"));
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x_custom_header", HeaderValue::from_static("kept"));
        prepare_request(&mut h, &f);
        assert_eq!(h.get("x-tokengate-token").unwrap(), "feed-a");
        assert!(h.get("x-tokengate-whatever").is_none());
        assert!(h.get("x_tokengate_token").is_none() && h.get("x-tokengate_access").is_none());
        assert!(h.get("x_forwarded_for").is_none());
        assert_eq!(h.get("x_custom_header").unwrap(), "kept");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "192.0.2.7");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "gw.example");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced_trusted_appended() {
        let name = HeaderValue::from_static("n");
        let id = HeaderValue::from_static("i");
        let access = HeaderValue::from_static("a");
        let mut f = Forwarding {
            client_ip: HeaderValue::from_static("198.51.100.1"),
            peer_trusted: false,
            original_host: None,
            scheme: "http",
            host: None,
            keep_authorization: true,
            token_name: &name,
            token_id: &id,
            token_access: &access,
        };
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("authorization", "Bearer x"),
        ]);
        prepare_request(&mut h, &f);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "198.51.100.1");
        assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none());
        assert!(
            h.get("authorization").is_some(),
            "kept when forward_authorization"
        );
        f.peer_trusted = true;
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        prepare_request(&mut h, &f);
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "1.1.1.1, 198.51.100.1, 198.51.100.1"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn upgrades_survive_the_strip() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let up = upgrade_request(&http::Method::GET, &h);
        assert_eq!(up.as_ref().unwrap(), "websocket");
        assert!(upgrade_request(&http::Method::POST, &h).is_none());
        let h2c = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert!(
            upgrade_request(&http::Method::GET, &h2c).is_none(),
            "h2c is never passed through"
        );
        let mut stripped = h2c.clone();
        strip_hop_by_hop(&mut stripped, None);
        assert!(stripped.is_empty(), "{stripped:?}");
        strip_hop_by_hop(&mut h, up);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(upgrade_request(&http::Method::GET, &map(&[("upgrade", "websocket")])).is_none());
    }
}
