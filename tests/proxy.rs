//! The proxy listener against SPEC §2-§3: every row of the status table and the order of the
//! checks, routing, path normalisation, header rules, client IP, usage records and protocols.
//! Each test starts its own gateway and upstreams on ephemeral loopback ports.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use support::*;
use tokengate::token::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SD: &str = "security-director";
const TPF: &str = "third-party-feeds";
const REALM: &str = "Bearer realm=\"tokengate\"";
const REALM_INVALID: &str = "Bearer realm=\"tokengate\", error=\"invalid_token\"";

// === helpers ===

/// A gateway with one route `/sd/` (security-director) → a fresh upstream.
async fn sd_gateway() -> (Upstream, TestGateway) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    (up, gw)
}

/// Like [`sd_gateway`], with the config changed by `f`.
async fn sd_gateway_with(
    f: impl FnOnce(&mut tokengate::config::Config),
) -> (Upstream, TestGateway) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(f)
        .start()
        .await;
    (up, gw)
}

/// A proxied request with arbitrary headers (appended in order, so names may repeat).
async fn req(gw: &TestGateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    gw.proxy_req(b.body(Full::default()).unwrap()).await
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// A GET with the token and extra headers.
async fn get_as(gw: &TestGateway, path: &str, secret: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = bearer(secret);
    let mut h: Vec<(&str, &str)> = vec![("authorization", &auth)];
    h.extend_from_slice(extra);
    req(gw, Method::GET, path, &h).await
}

/// A request from client IP `ip` as seen through a trusted proxy on loopback (the gateway
/// must have `trusted_proxies = ["127.0.0.0/8"]`).
async fn get_from(gw: &TestGateway, ip: &str, path: &str, secret: Option<&str>) -> Resp {
    let auth = secret.map(bearer);
    let mut h: Vec<(&str, &str)> = vec![("x-forwarded-for", ip)];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    req(gw, Method::GET, path, &h).await
}

fn trust_loopback(c: &mut tokengate::config::Config) {
    c.proxy.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
}

/// A raw HTTP/1.1 answer split into status, head and body.
struct RawResp {
    answer: String,
    status: u16,
    head: String,
    body: String,
}

impl RawResp {
    fn parse(answer: String) -> RawResp {
        let status = raw_status(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .unwrap_or_default();
        RawResp {
            answer,
            status,
            head,
            body,
        }
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    /// Asserts a JSON refusal with `status` and `code`.
    #[track_caller]
    fn expect(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "raw answer: {}", self.answer);
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json"),
            "raw answer: {}",
            self.answer
        );
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.answer));
        assert_eq!(v["error"], code, "raw answer: {}", self.answer);
    }
}

/// Sends a hand-written request (it should carry `Connection: close`) to the proxy.
async fn raw_req(gw: &TestGateway, bytes: &[u8]) -> RawResp {
    RawResp::parse(raw(gw.proxy, bytes).await)
}

fn ip_row<'a>(rows: &'a [Value], ip: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["ip"] == ip)
}

async fn deactivate(gw: &TestGateway, name: &str) {
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": [name]})),
    )
    .await
    .expect(200, None);
}

async fn block(gw: &TestGateway, name: &str, entries: &[&str]) -> Vec<Value> {
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/tokens/{name}/ips/block"),
            Some(json!({"ips": entries})),
        )
        .await;
    r.expect(200, None);
    r.json()["ips"].as_array().cloned().unwrap()
}

fn header_str(seen: &Seen, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

// === status table, row by row ===

#[tokio::test]
async fn connect_and_asterisk_targets_are_400() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let connect = format!(
        "CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n",
        up.addr.port()
    );
    raw_req(&gw, connect.as_bytes())
        .await
        .expect(400, "invalid_request");
    // Row 1 comes before row 4: no token needed to be told the request is malformed.
    let connect_anon = format!(
        "CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nConnection: close\r\n\r\n",
        up.addr.port()
    );
    raw_req(&gw, connect_anon.as_bytes())
        .await
        .expect(400, "invalid_request");
    let options = format!("OPTIONS * HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n", gw.proxy);
    raw_req(&gw, options.as_bytes())
        .await
        .expect(400, "invalid_request");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn duplicate_authorization_is_400() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let auth = bearer(&secret);
    req(
        &gw,
        Method::GET,
        "/sd/x",
        &[("authorization", &auth), ("authorization", &auth)],
    )
    .await
    .expect(400, Some("invalid_request"));
    // Row 3 comes before rows 4-5: two bad values are still 400, not 401.
    req(
        &gw,
        Method::GET,
        "/sd/x",
        &[
            ("authorization", "Bearer garbage"),
            ("authorization", "Basic abc"),
        ],
    )
    .await
    .expect(400, Some("invalid_request"));
    assert_eq!(up.count(), 0);
    // Positive control.
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
}

#[tokio::test]
async fn unsafe_paths_are_400_with_a_valid_token() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    for path in [
        "/sd/..%2f",
        "/sd/..%2F..%2Fetc",
        "/sd/%2e%2e/%2e%2e/x",
        "/sd/%2E%2E/%2E%2E/x",
        "/sd/../../x",
        "/sd/a%2Fb",
        "/sd/a%2fb",
        "/sd/a%5Cb",
        "/sd/a%5cb",
        "/sd/a%00b",
        "/sd/%252e%252e/x",
        "/sd/%252E",
        "/sd/a%252Fb",
        "/sd/a%252fb",
        "/sd/a%255Cb",
        "/sd/..;/x",
        "/sd/a/..;/b",
        "/sd/.;/x",
    ] {
        let r = gw.get(path, Some(&secret)).await;
        r.expect(400, Some("invalid_request"));
    }
    // A raw backslash cannot be put in an http::Uri: hand-written bytes.
    for target in ["/sd/a\\b", "/sd/..\\..\\x"] {
        let bytes = format!("GET {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n", gw.proxy);
        raw_req(&gw, bytes.as_bytes())
            .await
            .expect(400, "invalid_request");
    }
    assert_eq!(
        up.count(),
        0,
        "no unsafe path reached the upstream: {:?}",
        up.requests()
    );
}

#[tokio::test]
async fn header_block_over_max_header_bytes_is_431_json() {
    let (up, gw) = sd_gateway_with(|c| c.proxy.max_header_bytes = 2048).await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let big = "a".repeat(3000);
    let r = get_as(&gw, "/sd/x", &secret, &[("x-big", &big)]).await;
    r.expect(431, Some("headers_too_large"));
    assert!(r.json()["message"].is_string(), "{r}");
    // Many small headers add up too.
    let small = "b".repeat(100);
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), small.as_str())).collect();
    get_as(&gw, "/sd/x", &secret, &extra)
        .await
        .expect(431, Some("headers_too_large"));
    // Just under the limit passes.
    let ok = "c".repeat(1000);
    get_as(&gw, "/sd/x", &secret, &[("x-ok", &ok)])
        .await
        .expect(200, None);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn header_block_far_over_the_limit_is_still_431() {
    // The pipeline sees every head up to hyper's read buffer (2 x max_header_bytes, at least
    // 64 KiB) and answers the SPEC's JSON 431.
    let (up, gw) = sd_gateway_with(|c| c.proxy.max_header_bytes = 2048).await;
    let big = "a".repeat(40 * 1024);
    let bytes = format!(
        "GET /sd/x HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n",
        gw.proxy
    );
    raw_req(&gw, bytes.as_bytes())
        .await
        .expect(431, "headers_too_large");
    // FIXME: a head larger than hyper's read buffer is refused by hyper itself, before the
    // pipeline runs: still 431, but with an empty body instead of the JSON error (README,
    // "Deviations"). Fixing it needs a hook in hyper's HTTP/1 parse-error response.
    let huge = "a".repeat(200 * 1024);
    let bytes = format!(
        "GET /sd/x HTTP/1.1\r\nHost: {}\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n",
        gw.proxy
    );
    let answer = raw(gw.proxy, bytes.as_bytes()).await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn too_many_failures_is_429_per_client_ip_until_the_window_passes() {
    let (up, gw) = sd_gateway_with(|c| {
        trust_loopback(c);
        c.proxy.failed_auth_limit = 3;
    })
    .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let bad = Secret::generate();
    let limited = "198.51.100.1";
    let other = "198.51.100.2";
    for _ in 0..3 {
        get_from(&gw, limited, "/sd/x", Some(bad.expose()))
            .await
            .expect(401, Some("invalid_token"));
    }
    // Over the limit: every request from that IP is refused, even with a valid token.
    let r = get_from(&gw, limited, "/sd/x", Some(&secret)).await;
    r.expect(429, Some("too_many_failures"));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {r}"));
    assert!((1..=60).contains(&retry), "Retry-After {retry}: {r}");
    get_from(&gw, limited, "/sd/x", None)
        .await
        .expect(429, Some("too_many_failures"));
    // Row 2 comes before row 3.
    let auth = bearer(&secret);
    req(
        &gw,
        Method::GET,
        "/sd/x",
        &[
            ("x-forwarded-for", limited),
            ("authorization", &auth),
            ("authorization", &auth),
        ],
    )
    .await
    .expect(429, Some("too_many_failures"));
    assert_eq!(up.count(), 0, "nothing from the limited IP was forwarded");
    // Another client IP is unaffected.
    get_from(&gw, other, "/sd/x", Some(&secret))
        .await
        .expect(200, None);
    // The window passes.
    gw.clock.advance(Duration::from_secs(61));
    get_from(&gw, limited, "/sd/x", Some(&secret))
        .await
        .expect(200, None);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn missing_token_is_401_with_the_realm() {
    let (up, gw) = sd_gateway().await;
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("authorization", "")],
        vec![("authorization", "Bearer")],
        vec![("authorization", "Bearer   ")],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
        vec![("authorization", "Token abc")],
    ];
    for h in cases {
        let r = req(&gw, Method::GET, "/sd/x", &h).await;
        r.expect(401, Some("missing_token"));
        assert_eq!(r.header("www-authenticate"), Some(REALM), "{h:?}: {r}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn invalid_token_is_401_with_error_invalid_token() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    // Bad checksum: flip one character of the random part.
    let mut chars: Vec<char> = secret.chars().collect();
    chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
    let flipped: String = chars.into_iter().collect();
    assert_ne!(flipped, secret);
    let unknown = Secret::generate();
    let (regen, _) = gw.create_token("regen", &[SD]).await;
    gw.admin(Method::POST, "/v1/tokens/regen/regenerate", None)
        .await
        .expect(200, None);
    let (deleted, _) = gw.create_token("deleted", &[SD]).await;
    gw.admin(Method::DELETE, "/v1/tokens/deleted", None)
        .await
        .expect(204, None);
    let truncated = &secret[..secret.len() - 1];
    let lower = secret.to_lowercase();
    for bad in [
        "garbage",
        "tg_",
        truncated,
        flipped.as_str(),
        lower.as_str(),
        unknown.expose(),
        regen.as_str(),
        deleted.as_str(),
    ] {
        let r = gw.get("/sd/x", Some(bad)).await;
        r.expect(401, Some("invalid_token"));
        assert_eq!(r.header("www-authenticate"), Some(REALM_INVALID), "{r}");
    }
    assert_eq!(up.count(), 0);
    // The scheme is case-insensitive.
    let auth = format!("bEaReR {secret}");
    req(&gw, Method::GET, "/sd/x", &[("authorization", &auth)])
        .await
        .expect(200, None);
}

#[tokio::test]
async fn inactive_token_is_403_and_works_again_after_activation() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    deactivate(&gw, "t").await;
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    assert_eq!(up.count(), 1);
    gw.admin(
        Method::POST,
        "/v1/tokens/activate",
        Some(json!({"names": ["t"]})),
    )
    .await
    .expect(200, None);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn blocked_ip_is_403_and_counted_in_denied() {
    let (up, gw) = sd_gateway().await;
    let (a, _) = gw.create_token("by-ip", &[SD]).await;
    let (b, _) = gw.create_token("by-cidr", &[SD]).await;
    let (c, _) = gw.create_token("free", &[SD]).await;

    block(&gw, "by-ip", &["127.0.0.1"]).await;
    gw.get("/sd/x", Some(&a))
        .await
        .expect(403, Some("ip_blocked"));
    let rows = gw.ips("by-ip").await;
    let row = ip_row(&rows, "127.0.0.1").unwrap_or_else(|| panic!("no 127.0.0.1 row: {rows:?}"));
    assert_eq!(row["denied"], 1, "{rows:?}");
    assert_eq!(row["requests"], 0, "{rows:?}");
    assert_eq!(row["blocked"], true, "{rows:?}");
    assert_eq!(row["blocked_by"], "127.0.0.1", "{rows:?}");

    block(&gw, "by-cidr", &["127.0.0.0/8"]).await;
    gw.get("/sd/x", Some(&b))
        .await
        .expect(403, Some("ip_blocked"));
    gw.get("/sd/y", Some(&b))
        .await
        .expect(403, Some("ip_blocked"));
    let rows = gw.ips("by-cidr").await;
    assert!(
        ip_row(&rows, "127.0.0.0/8").is_some(),
        "the CIDR entry is its own row: {rows:?}"
    );
    let row = ip_row(&rows, "127.0.0.1").unwrap_or_else(|| panic!("no 127.0.0.1 row: {rows:?}"));
    assert_eq!(row["denied"], 2, "{rows:?}");
    assert_eq!(row["blocked"], true, "{rows:?}");
    assert_eq!(row["blocked_by"], "127.0.0.0/8", "{rows:?}");

    // Blocks are per token.
    gw.get("/sd/x", Some(&c)).await.expect(200, None);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn no_route_is_404_after_auth() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    for path in ["/nope", "/", "/sdx", "/SD/x", "/feeds/x"] {
        gw.get(path, Some(&secret))
            .await
            .expect(404, Some("no_route"));
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn access_denied_is_403() {
    let (up, gw) = sd_gateway().await;
    let (feeds, _) = gw.create_token("feeds-only", &[TPF]).await;
    gw.get("/sd/x", Some(&feeds))
        .await
        .expect(403, Some("access_denied"));
    let (both, _) = gw.create_token("both", &[TPF, SD]).await;
    gw.get("/sd/x", Some(&both)).await.expect(200, None);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn refused_upstream_is_502() {
    let dead = refused_addr().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", dead)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(502, Some("bad_gateway"));
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let (up, gw) = sd_gateway_with(|c| c.proxy.upstream_timeout = Duration::from_millis(300)).await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/hang", Some(&secret))
        .await
        .expect(504, Some("gateway_timeout"));
    assert_eq!(
        up.last().target,
        "/hang",
        "the request was forwarded before timing out"
    );
    // An upstream answering in time is fine, whatever its status.
    gw.get("/sd/status/418", Some(&secret))
        .await
        .expect(418, None);
}

// === order of checks ===

#[tokio::test]
async fn checks_run_in_the_table_order() {
    let (up, gw) = sd_gateway().await;
    let (inactive, _) = gw.create_token("inactive", &[SD]).await;
    let (blocked, _) = gw.create_token("blocked", &[SD]).await;
    let (feeds, _) = gw.create_token("feeds", &[TPF]).await;
    deactivate(&gw, "inactive").await;
    block(&gw, "inactive", &["127.0.0.1"]).await;
    block(&gw, "blocked", &["127.0.0.1"]).await;

    // 4 before 10: no token on an unknown path.
    gw.get("/nope", None)
        .await
        .expect(401, Some("missing_token"));
    // 5 before 10 and before 7.
    gw.get("/nope", Some("garbage"))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/..%2f", Some("garbage"))
        .await
        .expect(401, Some("invalid_token"));
    // 4 before 7.
    gw.get("/sd/..%2f", None)
        .await
        .expect(401, Some("missing_token"));
    // 7 before 8: bad path with an (inactive) token.
    gw.get("/sd/..%2f", Some(&inactive))
        .await
        .expect(400, Some("invalid_request"));
    // 8 before 9: inactive token from a blocked IP.
    gw.get("/sd/x", Some(&inactive))
        .await
        .expect(403, Some("token_inactive"));
    // 8 before 10, 9 before 10.
    gw.get("/nope", Some(&inactive))
        .await
        .expect(403, Some("token_inactive"));
    gw.get("/nope", Some(&blocked))
        .await
        .expect(403, Some("ip_blocked"));
    // 10 before 11.
    gw.get("/nope", Some(&feeds))
        .await
        .expect(404, Some("no_route"));
    gw.get("/sd/x", Some(&feeds))
        .await
        .expect(403, Some("access_denied"));
    assert_eq!(up.count(), 0, "no refused request reached the upstream");
}

// === routing and path normalisation ===

#[tokio::test]
async fn host_routes_win_over_hostless_then_longest_prefix() {
    let hostless = Upstream::start().await;
    let longer = Upstream::start().await;
    let hosted = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", hostless.addr)
        .route("/sd/v2/", "security-director", longer.addr)
        .route_with("/", "security-director", hosted.addr, |r| {
            r.host = Some("api.example".into())
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;

    // A route for the request's host wins over a longer hostless one; host compared
    // lowercased, without port or trailing dot.
    for host in [
        "api.example",
        "API.Example",
        "api.example:8443",
        "api.example.",
    ] {
        get_as(&gw, "/sd/v2/x", &secret, &[("host", host)])
            .await
            .expect(200, None);
        assert_eq!(
            hosted.count(),
            1,
            "host {host:?}: the hosted route answered"
        );
        assert_eq!(hosted.last().target, "/sd/v2/x", "host {host:?}");
        hosted.seen.lock().unwrap().clear();
    }
    // Other hosts fall back to hostless routes, longest prefix first.
    get_as(&gw, "/sd/v2/x", &secret, &[("host", "other.example")])
        .await
        .expect(200, None);
    assert_eq!(longer.last().target, "/x");
    get_as(&gw, "/sd/v2x", &secret, &[("host", "other.example")])
        .await
        .expect(200, None);
    assert_eq!(
        hostless.last().target,
        "/v2x",
        "a prefix never matches part of a segment"
    );
    gw.get("/sd/v2", Some(&secret)).await.expect(200, None);
    assert_eq!(
        longer.last().target,
        "/",
        "a prefix matches its path without the trailing slash"
    );
    assert_eq!(hostless.count(), 1);
    assert_eq!(longer.count(), 2);
    assert_eq!(hosted.count(), 0);
    // The hosted root route is invisible to other hosts.
    get_as(&gw, "/other", &secret, &[("host", "other.example")])
        .await
        .expect(404, Some("no_route"));
}

#[tokio::test]
async fn prefix_without_trailing_slash_matches() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd", Some(&secret)).await.expect(200, None);
    assert_eq!(up.last().target, "/");
    gw.get("/sd/", Some(&secret)).await.expect(200, None);
    assert_eq!(up.last().target, "/");
    gw.get("/sd?x=1", Some(&secret)).await.expect(200, None);
    assert_eq!(up.last().target, "/?x=1");
}

#[tokio::test]
async fn strip_prefix_true_and_false() {
    let stripped = Upstream::start().await;
    let kept = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", stripped.addr)
        .route_with("/keep/", "security-director", kept.addr, |r| {
            r.strip_prefix = false
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/a/b", Some(&secret)).await.expect(200, None);
    assert_eq!(stripped.last().target, "/a/b");
    gw.get("/keep/a/b", Some(&secret)).await.expect(200, None);
    assert_eq!(kept.last().target, "/keep/a/b");
    gw.get("/keep", Some(&secret)).await.expect(200, None);
    assert_eq!(kept.last().target, "/keep");
}

#[tokio::test]
async fn query_string_is_forwarded_byte_for_byte() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    for q in [
        "?b=2&a=%2F&c",
        "?x=%2e%2E&y=..%2f&z=a+b%20c",
        "?",
        "?a=1&a=2;b=%7e",
    ] {
        gw.get(&format!("/sd/q{q}"), Some(&secret))
            .await
            .expect(200, None);
        assert_eq!(up.last().target, format!("/q{q}"));
    }
}

#[tokio::test]
async fn the_upstream_receives_the_normalised_path() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    for (sent, expected) in [
        ("/sd//a/./b/../c", "/a/c"),
        ("/sd/a//b///c/", "/a/b/c/"),
        ("/sd/%7euser/%2a%41", "/~user/%2AA"),
        ("/sd/a/%2e/b/%2E%2E/c", "/a/c"),
        ("/x/../sd/y", "/y"),
        ("//sd/z", "/z"),
        ("/sd/a/b/..", "/a/"),
    ] {
        gw.get(sent, Some(&secret)).await.expect(200, None);
        assert_eq!(up.last().target, expected, "{sent}");
    }
}

#[tokio::test]
async fn host_is_rewritten_unless_preserve_host() {
    let rewritten = Upstream::start().await;
    let preserved = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", rewritten.addr)
        .route_with("/keep/", "security-director", preserved.addr, |r| {
            r.preserve_host = true
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    get_as(&gw, "/sd/x", &secret, &[("host", "gw.example:8080")])
        .await
        .expect(200, None);
    let seen = rewritten.last();
    assert_eq!(
        header_str(&seen, "host"),
        Some(rewritten.addr.to_string()),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-forwarded-host").as_deref(),
        Some("gw.example:8080"),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-forwarded-proto").as_deref(),
        Some("http"),
        "{seen:?}"
    );
    get_as(&gw, "/keep/x", &secret, &[("host", "gw.example:8080")])
        .await
        .expect(200, None);
    let seen = preserved.last();
    assert_eq!(
        header_str(&seen, "host").as_deref(),
        Some("gw.example:8080"),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-forwarded-host").as_deref(),
        Some("gw.example:8080"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn host_disagreeing_with_absolute_target_is_400() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let bad = format!(
        "GET http://other.example/sd/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n",
        gw.proxy
    );
    raw_req(&gw, bad.as_bytes())
        .await
        .expect(400, "invalid_request");
    assert_eq!(up.count(), 0);
    // Positive control: an absolute target that agrees with Host.
    let good = format!(
        "GET http://{0}/sd/x HTTP/1.1\r\nHost: {0}\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n",
        gw.proxy
    );
    let r = raw_req(&gw, good.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.answer);
    assert_eq!(up.last().target, "/x");
}

// === headers ===

#[tokio::test]
async fn authorization_is_removed_unless_the_route_forwards_it() {
    let removed = Upstream::start().await;
    let forwarded = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", removed.addr)
        .route_with("/fwd/", "security-director", forwarded.addr, |r| {
            r.forward_authorization = true
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    assert!(
        removed.last().headers.get("authorization").is_none(),
        "{:?}",
        removed.last()
    );
    gw.get("/fwd/x", Some(&secret)).await.expect(200, None);
    assert_eq!(
        header_str(&forwarded.last(), "authorization"),
        Some(bearer(&secret))
    );
}

#[tokio::test]
async fn identity_headers_are_set_and_client_ones_removed() {
    let (up, gw) = sd_gateway().await;
    let (secret, tok) = gw.create_token("Feed-A", &[TPF, SD]).await;
    let id = tok["id"].as_str().unwrap().to_string();
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[
            ("x-tokengate-token", "spoofed"),
            ("x-tokengate-token-id", "spoofed"),
            ("x-tokengate-access", "everything"),
            ("x-tokengate-admin", "yes"),
            ("X-TokenGate-Extra", "yes"),
            (
                "connection",
                "x-tokengate-token, x-tokengate-access, x-forwarded-for, x-forwarded-proto",
            ),
        ],
    )
    .await
    .expect(200, None);
    let seen = up.last();
    assert_eq!(
        header_str(&seen, "x-tokengate-token").as_deref(),
        Some("Feed-A"),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-tokengate-token-id"),
        Some(id),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-tokengate-access").as_deref(),
        Some("security-director,third-party-feeds"),
        "{seen:?}"
    );
    for name in [
        "x-tokengate-token",
        "x-tokengate-token-id",
        "x-tokengate-access",
    ] {
        assert_eq!(
            seen.headers.get_all(name).iter().count(),
            1,
            "{name} once: {seen:?}"
        );
    }
    let ours: Vec<&str> = seen
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-tokengate-"))
        .collect();
    assert_eq!(
        ours.len(),
        3,
        "only the gateway's own x-tokengate-* headers: {seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-forwarded-proto").as_deref(),
        Some("http"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[
            ("connection", "x-named, X-Other"),
            ("x-named", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ],
    )
    .await
    .expect(200, None);
    let seen = up.last();
    for gone in [
        "x-named",
        "x-other",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} forwarded: {seen:?}"
        );
    }
    if let Some(c) = header_str(&seen, "connection") {
        let c = c.to_ascii_lowercase();
        assert!(
            !c.contains("x-named") && !c.contains("x-other"),
            "client Connection forwarded: {seen:?}"
        );
    }
    assert_eq!(
        header_str(&seen, "x-kept").as_deref(),
        Some("yes"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_dropped() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await
    .expect(200, None);
    let seen = up.last();
    assert_eq!(
        seen.headers.get_all("x-forwarded-for").iter().count(),
        1,
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert!(seen.headers.get("forwarded").is_none(), "{seen:?}");
    assert!(seen.headers.get("x-real-ip").is_none(), "{seen:?}");
    assert_eq!(
        header_str(&seen, "x-forwarded-proto").as_deref(),
        Some("http"),
        "{seen:?}"
    );
    // What is recorded is the peer, not the claim.
    let rows = gw.ips("t").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ip"], "127.0.0.1", "{rows:?}");
    // And the claim cannot dodge a block of the peer, nor trigger a block of the claimed IP.
    block(&gw, "t", &["6.6.6.6"]).await;
    get_as(&gw, "/sd/x", &secret, &[("x-forwarded-for", "6.6.6.6")])
        .await
        .expect(200, None);
    block(&gw, "t", &["127.0.0.1"]).await;
    get_as(&gw, "/sd/x", &secret, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .expect(403, Some("ip_blocked"));
}

#[tokio::test]
async fn client_ip_from_a_trusted_peer_is_the_rightmost_untrusted_xff_entry() {
    let (up, gw) = sd_gateway_with(trust_loopback).await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let chain = "6.6.6.6, 203.0.113.9, 127.0.0.5";
    get_as(&gw, "/sd/x", &secret, &[("x-forwarded-for", chain)])
        .await
        .expect(200, None);
    let seen = up.last();
    let xff = header_str(&seen, "x-forwarded-for").unwrap_or_default();
    assert!(xff.starts_with(chain), "the trusted chain is kept: {xff:?}");
    assert!(
        xff.ends_with("203.0.113.9") && xff.len() > chain.len(),
        "the client IP is appended: {xff:?}"
    );
    // IPv4-mapped IPv6 is canonicalised.
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[("x-forwarded-for", "::ffff:198.51.100.7")],
    )
    .await
    .expect(200, None);

    let rows = gw.ips("t").await;
    let row =
        ip_row(&rows, "203.0.113.9").unwrap_or_else(|| panic!("no 203.0.113.9 row: {rows:?}"));
    assert_eq!(row["requests"], 1, "{rows:?}");
    assert!(
        ip_row(&rows, "198.51.100.7").is_some(),
        "mapped address recorded as IPv4: {rows:?}"
    );
    assert!(
        ip_row(&rows, "127.0.0.1").is_none(),
        "the trusted peer is not the client: {rows:?}"
    );
    assert!(
        ip_row(&rows, "127.0.0.5").is_none(),
        "a trusted hop is not the client: {rows:?}"
    );
    assert!(
        ip_row(&rows, "6.6.6.6").is_none(),
        "left of the client is not the client: {rows:?}"
    );

    // Blocks apply to that client IP.
    block(&gw, "t", &["203.0.113.9"]).await;
    get_as(&gw, "/sd/x", &secret, &[("x-forwarded-for", chain)])
        .await
        .expect(403, Some("ip_blocked"));
    get_as(&gw, "/sd/x", &secret, &[("x-forwarded-for", "203.0.113.9")])
        .await
        .expect(403, Some("ip_blocked"));
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[("x-forwarded-for", "203.0.113.10")],
    )
    .await
    .expect(200, None);
    // An entry left of the client cannot be used to hide it.
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[("x-forwarded-for", "203.0.113.10, 203.0.113.9")],
    )
    .await
    .expect(403, Some("ip_blocked"));
    // A malformed entry stops the walk at the last good address (here the peer).
    get_as(
        &gw,
        "/sd/x",
        &secret,
        &[("x-forwarded-for", "203.0.113.9, garbage")],
    )
    .await
    .expect(200, None);
    // No header: the trusted peer itself is the client.
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    let rows = gw.ips("t").await;
    let row = ip_row(&rows, "203.0.113.9").unwrap();
    assert_eq!(row["requests"], 1, "{rows:?}");
    assert_eq!(row["denied"], 3, "{rows:?}");
    assert_eq!(
        ip_row(&rows, "127.0.0.1").map(|r| r["requests"].clone()),
        Some(json!(2)),
        "{rows:?}"
    );
}

#[tokio::test]
async fn content_length_with_transfer_encoding_never_reaches_the_upstream_together() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    for cl in ["5", "3", "100"] {
        let bytes = format!(
            "POST /sd/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nContent-Length: {cl}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            gw.proxy
        );
        let before = up.count();
        let r = raw_req(&gw, bytes.as_bytes()).await;
        if r.status == 400 {
            assert_eq!(up.count(), before, "refused yet forwarded: {}", r.answer);
            continue;
        }
        assert_eq!(r.status, 200, "CL {cl}: {}", r.answer);
        let seen = up.last();
        let has_cl = seen.headers.contains_key("content-length");
        let has_te = seen.headers.contains_key("transfer-encoding");
        assert!(
            !(has_cl && has_te),
            "CL {cl}: the upstream got both: {seen:?}"
        );
        assert_eq!(
            seen.body_len, 5,
            "CL {cl}: the upstream got the chunked body: {seen:?}"
        );
        if has_cl {
            assert_eq!(
                header_str(&seen, "content-length").as_deref(),
                Some("5"),
                "CL {cl}: {seen:?}"
            );
        }
    }
}

// === usage ===

#[tokio::test]
async fn usage_counts_only_forwarded_requests() {
    let sd = Upstream::start().await;
    let feeds = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", sd.addr)
        .route("/feeds/", "third-party-feeds", feeds.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    assert_eq!(gw.token("t").await["last_used_at"], Value::Null);
    assert!(gw.ips("t").await.is_empty());

    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    gw.clock.advance(Duration::from_secs(10));
    gw.get("/sd/b", Some(&secret)).await.expect(200, None);
    // Whatever the upstream answers, it is a use.
    gw.get("/sd/status/500", Some(&secret))
        .await
        .expect(500, None);
    let rows = gw.ips("t").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["ip"], "127.0.0.1", "{rows:?}");
    assert_eq!(row["requests"], 3, "{rows:?}");
    assert_eq!(row["denied"], 0, "{rows:?}");
    assert_eq!(row["blocked"], false, "{rows:?}");
    let first = row["first_used_at"]
        .as_str()
        .unwrap_or_else(|| panic!("first_used_at: {rows:?}"))
        .to_string();
    let last = row["last_used_at"]
        .as_str()
        .unwrap_or_else(|| panic!("last_used_at: {rows:?}"))
        .to_string();
    assert!(first.ends_with('Z') && last.ends_with('Z'), "{rows:?}");
    assert!(first < last, "first {first} < last {last}");
    let tok = gw.token("t").await;
    assert_eq!(tok["last_used_at"], last.as_str(), "{tok}");

    // Refusals are not uses.
    gw.clock.advance(Duration::from_secs(10));
    gw.get("/nope", Some(&secret))
        .await
        .expect(404, Some("no_route"));
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/sd/..%2f", Some(&secret))
        .await
        .expect(400, Some("invalid_request"));
    gw.get("/sd/x", None)
        .await
        .expect(401, Some("missing_token"));
    deactivate(&gw, "t").await;
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    let rows = gw.ips("t").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["requests"], 3, "{rows:?}");
    assert_eq!(rows[0]["last_used_at"], last.as_str(), "{rows:?}");
    assert_eq!(gw.token("t").await["last_used_at"], last.as_str());
    assert_eq!(sd.count(), 3);
    assert_eq!(feeds.count(), 0);
}

#[tokio::test]
async fn idle_tokens_are_refused_and_refusals_never_keep_them_alive() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let (up, gw) = sd_gateway().await;
    let (used, _) = gw.create_token("used", &[SD]).await;
    let (refused, _) = gw.create_token("refused", &[SD]).await;
    gw.clock.advance(29 * DAY);
    gw.get("/sd/x", Some(&used)).await.expect(200, None);
    gw.get("/nope", Some(&refused))
        .await
        .expect(404, Some("no_route"));
    gw.get("/sd/..%2f", Some(&refused))
        .await
        .expect(400, Some("invalid_request"));
    gw.clock.advance(2 * DAY);
    gw.get("/sd/x", Some(&used)).await.expect(200, None);
    gw.get("/sd/x", Some(&refused))
        .await
        .expect(403, Some("token_inactive"));
    let tok = gw.token("refused").await;
    assert_eq!(
        (&tok["status"], &tok["inactive_reason"]),
        (&json!("inactive"), &json!("idle")),
        "{tok}"
    );
    // Past delete_after (90 days idle): gone, so its secret is simply invalid.
    gw.clock.advance(60 * DAY);
    gw.get("/sd/x", Some(&refused))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::GET, "/v1/tokens/refused", None)
        .await
        .expect(404, Some("not_found"));
    // The used token's idle clock started at its last use (day 31): 60 days idle = inactive.
    gw.get("/sd/x", Some(&used))
        .await
        .expect(403, Some("token_inactive"));
    assert_eq!(up.count(), 2);
}

// === protocols ===

#[tokio::test]
async fn http1_keep_alive_serves_several_requests_on_one_connection() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let stream = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    for (i, (path, expected)) in [
        ("/sd/k0", 200),
        ("/nope", 404),
        ("/sd/k1", 200),
        ("/sd/k2", 200),
    ]
    .into_iter()
    .enumerate()
    {
        sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("request {i}: connection not reusable: {e}"));
        let req = Request::get(path)
            .header("host", gw.proxy.to_string())
            .header("authorization", bearer(&secret))
            .body(Full::default())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            status,
            expected,
            "request {i} {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(
        up.requests()
            .iter()
            .map(|s| s.target.clone())
            .collect::<Vec<_>>(),
        ["/k0", "/k1", "/k2"]
    );
    drop(sender);
    let _ = conn.await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let (up, gw) = sd_gateway().await;
    let (secret, tok) = gw.create_token("t", &[SD]).await;
    let stream = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/sd/h2?x=1", gw.proxy))
        .header("authorization", bearer(&secret))
        .header("x-tokengate-token", "spoofed")
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = up.last();
    assert_eq!(seen.target, "/h2?x=1");
    assert_eq!(
        header_str(&seen, "x-tokengate-token").as_deref(),
        Some("t"),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-tokengate-token-id").as_deref(),
        tok["id"].as_str(),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-tokengate-access").as_deref(),
        Some(SD),
        "{seen:?}"
    );
    assert!(seen.headers.get("authorization").is_none(), "{seen:?}");

    // Refusals over HTTP/2 carry the same JSON.
    let req = Request::get(format!("http://{}/sd/h2", gw.proxy))
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "missing_token");

    // A Host header that disagrees with :authority is refused.
    let before = up.count();
    let req = Request::get(format!("http://{}/sd/h2", gw.proxy))
        .header("host", "other.example")
        .header("authorization", bearer(&secret))
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn a_16_mib_request_body_reaches_the_upstream() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let body = Bytes::from(vec![b'x'; 16 << 20]);
    let req = Request::post("/sd/upload")
        .header("authorization", bearer(&secret))
        .body(Full::new(body))
        .unwrap();
    let r = gw.proxy_req(req).await;
    r.expect(200, None);
    let seen = up.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.body_len, 16 << 20);
    assert_eq!(r.json()["body_len"], 16 << 20, "{r}");
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_once_authorized() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let upgrade = |auth: &str| {
        format!(
            "GET /sd/ws HTTP/1.1\r\nHost: {}\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            gw.proxy
        )
    };
    // Without a token: refused, nothing reaches the upstream.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(upgrade("").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(raw_status(&head), 401, "{head}");
    assert_eq!(up.count(), 0);

    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(upgrade(&format!("Authorization: Bearer {secret}\r\n")).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    let seen = up.last();
    assert_eq!(seen.target, "/ws");
    assert_eq!(
        header_str(&seen, "upgrade").as_deref(),
        Some("websocket"),
        "{seen:?}"
    );
    assert_eq!(
        header_str(&seen, "x-tokengate-token").as_deref(),
        Some("t"),
        "{seen:?}"
    );
    for msg in [&b"hello through the tunnel"[..], b"second frame"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .expect("echo read");
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn a_tunnel_closes_when_its_token_is_deactivated() {
    let (_up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let req = format!(
        "GET /sd/ws HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        gw.proxy
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["t"]})),
    )
    .await
    .expect(200, None);
    // The tunnel re-checks its token every second: it must close (EOF) well within 10 s.
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "the tunnel stayed open after deactivation"
    );
}

#[tokio::test]
async fn h2c_and_other_upgrades_are_never_passed_through() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    for (method, proto) in [("GET", "h2c"), ("POST", "websocket"), ("GET", "tls/1.2")] {
        let req = format!(
            "{method} /sd/x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {secret}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {proto}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            gw.proxy
        );
        let answer = raw(gw.proxy, req.as_bytes()).await;
        // Forwarded as a plain request: 200 from the upstream, never 101.
        assert_eq!(raw_status(&answer), 200, "{method} {proto}: {answer}");
        let seen = up.last();
        for h in ["upgrade", "http2-settings", "connection"] {
            assert!(
                header_str(&seen, h).is_none(),
                "{h} reached the upstream: {seen:?}"
            );
        }
    }
}

#[tokio::test]
async fn underscore_spellings_of_gateway_headers_are_dropped() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("real", &[SD]).await;
    let req = Request::get("/sd/x")
        .header("authorization", format!("Bearer {secret}"))
        .header("x_tokengate_token", "admin")
        .header("X_Tokengate_Access", "security-director,third-party-feeds")
        .header("x_forwarded_for", "6.6.6.6")
        .header("x_real_ip", "6.6.6.6")
        .header("x_other", "kept")
        .body(Full::default())
        .unwrap();
    gw.proxy_req(req).await.expect(200, None);
    let seen = up.last();
    for h in [
        "x_tokengate_token",
        "x_tokengate_access",
        "x_forwarded_for",
        "x_real_ip",
    ] {
        assert!(
            header_str(&seen, h).is_none(),
            "{h} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(header_str(&seen, "x_other").as_deref(), Some("kept"));
    assert_eq!(
        header_str(&seen, "x-tokengate-token").as_deref(),
        Some("real")
    );
}

// === rotation and deletion ===

#[tokio::test]
async fn regenerate_replaces_the_secret_at_once() {
    let (up, gw) = sd_gateway().await;
    let (old, created) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/x", Some(&old)).await.expect(200, None);
    let r = gw
        .admin(Method::POST, "/v1/tokens/t/regenerate", None)
        .await;
    r.expect(200, None);
    let new = r.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {r}"))
        .to_string();
    assert_ne!(new, old);
    assert_eq!(r.json()["id"], created["id"], "{r}");
    let resp = gw.get("/sd/x", Some(&old)).await;
    resp.expect(401, Some("invalid_token"));
    assert_eq!(resp.header("www-authenticate"), Some(REALM_INVALID));
    gw.get("/sd/x", Some(&new)).await.expect(200, None);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn delete_revokes_the_secret_at_once() {
    let (up, gw) = sd_gateway().await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    gw.admin(Method::DELETE, "/v1/tokens/t", None)
        .await
        .expect(204, None);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    // A new token with the same name does not revive the old secret.
    let (fresh, _) = gw.create_token("t", &[SD]).await;
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/x", Some(&fresh)).await.expect(200, None);
    assert_eq!(up.count(), 2);
}
