//! The admin API of SPEC §4 (with the token and block rules of §1 and §3), black-box over HTTP
//! against the real gateway in-process.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::Clock;

const DAY: Duration = Duration::from_secs(86_400);
const SD: &str = "security-director";
const TPF: &str = "third-party-feeds";

// === helpers ===

/// RFC 3339 of a gateway-clock instant (whole seconds, `Z`), computed independently.
fn rfc(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("clock after 1970"));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn now_ms(gw: &TestGateway) -> i64 {
    gw.clock.now().0
}

fn now_rfc(gw: &TestGateway) -> String {
    rfc(now_ms(gw))
}

/// Parses an RFC 3339 `...Z` timestamp field.
#[track_caller]
fn ts(v: &Value, field: &str) -> SystemTime {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"));
    assert!(
        s.ends_with('Z'),
        "{field} = {s:?} does not end in Z, in {v}"
    );
    humantime::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("{field} = {s:?} is not RFC 3339 ({e}), in {v}"))
}

/// An admin request with arbitrary headers and a raw body.
async fn admin_raw(
    gw: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{}", gw.admin, path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&gw.http, b.body(Full::new(body.into())).unwrap()).await
}

fn bearer() -> String {
    format!("Bearer {ADMIN_KEY}")
}

#[track_caller]
fn no_store(r: &Resp) {
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "missing Cache-Control: no-store: {r}"
    );
}

/// 400 invalid_request naming `field`.
#[track_caller]
fn invalid(r: &Resp, field: &str) {
    r.expect(400, Some("invalid_request"));
    assert_eq!(r.json()["field"], field, "{r}");
}

/// `tg_` + 30 base62 + the CRC32 of those 30 as 6 zero-padded base62 digits.
#[track_caller]
fn assert_secret_format(s: &str) {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    assert_eq!(s.len(), 39, "secret {s:?} is not 39 characters");
    assert!(s.starts_with("tg_"), "secret {s:?} does not start with tg_");
    let rest = &s.as_bytes()[3..];
    assert!(
        rest.iter().all(|b| ALPHABET.contains(b)),
        "secret {s:?} is not base62 after tg_"
    );
    let mut crc = crc32fast::hash(&rest[..30]);
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    assert_eq!(
        &rest[30..],
        &digits[..],
        "secret {s:?}: the last 6 characters are not the base62 CRC32 of the 30 before"
    );
}

fn names(list: &Value) -> Vec<String> {
    list["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens array in {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

async fn show(gw: &TestGateway, name: &str) -> Value {
    let r = gw
        .admin(Method::GET, &format!("/v1/tokens/{name}"), None)
        .await;
    r.expect(200, None);
    r.json()
}

async fn block(gw: &TestGateway, name: &str, entries: &[&str]) -> Resp {
    gw.admin(
        Method::POST,
        &format!("/v1/tokens/{name}/ips/block"),
        Some(json!({ "ips": entries })),
    )
    .await
}

async fn unblock(gw: &TestGateway, name: &str, entries: &[&str]) -> Resp {
    gw.admin(
        Method::POST,
        &format!("/v1/tokens/{name}/ips/unblock"),
        Some(json!({ "ips": entries })),
    )
    .await
}

#[track_caller]
fn row<'a>(rows: &'a [Value], ip: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["ip"] == ip)
        .unwrap_or_else(|| panic!("no row for {ip} in {rows:?}"))
}

/// A gateway with `/sd/` (security-director) and `/feeds/` (third-party-feeds) routes.
async fn routed() -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .route("/feeds/", "third-party-feeds", up.addr)
        .start()
        .await;
    (gw, up)
}

/// A proxied GET from a chosen loopback source address (127.0.0.0/8 all reach 127.0.0.1).
async fn get_from(gw: &TestGateway, src: &str, path: &str, secret: &str) -> Resp {
    let mut conn = HttpConnector::new();
    conn.set_local_address(Some(src.parse().unwrap()));
    let client = Client::builder(TokioExecutor::new()).build(conn);
    let req = Request::get(gw.proxy_url(path))
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::default())
        .unwrap();
    send(&client, req).await
}

// === authentication ===

#[tokio::test]
async fn every_v1_endpoint_refuses_a_missing_wrong_or_non_bearer_key() {
    let gw = TestGateway::builder()
        .configure(|c| c.proxy.failed_auth_limit = 0)
        .start()
        .await;
    gw.create_token("known", &[SD]).await;
    let endpoints: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/v1/tokens", None),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "intruder", "access": [SD]})),
        ),
        (Method::GET, "/v1/tokens/known", None),
        (
            Method::PATCH,
            "/v1/tokens/known",
            Some(json!({"description": "pwned"})),
        ),
        (Method::DELETE, "/v1/tokens/known", None),
        (
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({"names": ["known"]})),
        ),
        (
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["known"]})),
        ),
        (Method::POST, "/v1/tokens/known/regenerate", None),
        (Method::GET, "/v1/tokens/known/ips", None),
        (
            Method::POST,
            "/v1/tokens/known/ips/block",
            Some(json!({"ips": ["10.0.0.1"]})),
        ),
        (
            Method::POST,
            "/v1/tokens/known/ips/unblock",
            Some(json!({"ips": ["10.0.0.1"]})),
        ),
        (Method::GET, "/v1/audit", None),
        (Method::GET, "/v1/tokens/unknown-name", None),
        (Method::GET, "/v1/no-such-endpoint", None),
    ];
    let truncated = format!("Bearer {}", &ADMIN_KEY[..ADMIN_KEY.len() - 1]);
    let extended = format!("Bearer {ADMIN_KEY}x");
    let basic = format!("Basic {ADMIN_KEY}");
    let auths: Vec<Option<&str>> = vec![
        None,
        Some("Bearer wrong-key-0123456789abcdefghijklmnopqrstuv"),
        Some(truncated.as_str()),
        Some(extended.as_str()),
        Some("Bearer "),
        Some(basic.as_str()),
        Some("Basic YWRtaW46YWRtaW4="),
    ];
    for (method, path, body) in &endpoints {
        for auth in &auths {
            let mut headers = vec![];
            if let Some(a) = auth {
                headers.push(("authorization", *a));
            }
            if body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            let bytes = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            let r = admin_raw(&gw, method.clone(), path, &headers, bytes).await;
            r.expect(401, Some("unauthorized"));
            no_store(&r);
        }
    }
    // Nothing the refused requests asked for happened.
    let t = show(&gw, "known").await;
    assert_eq!(t["status"], "active", "{t}");
    assert_eq!(t["description"], Value::Null, "{t}");
    assert!(gw.ips("known").await.is_empty());
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    r.expect(200, None);
    assert_eq!(names(&r.json()), ["known"], "{r}");
}

/// The admin key's `Bearer` scheme is parsed as the proxy parses a token's (SPEC §2): any
/// case, one or more spaces or tabs.
#[tokio::test]
async fn the_admin_key_takes_the_same_bearer_grammar_as_the_proxy() {
    let gw = TestGateway::builder().start().await;
    for auth in [
        format!("Bearer {ADMIN_KEY}"),
        format!("bearer {ADMIN_KEY}"),
        format!("BEARER   {ADMIN_KEY}"),
        format!("Bearer\t{ADMIN_KEY}"),
        format!("Bearer \t {ADMIN_KEY} "),
    ] {
        let r = admin_raw(
            &gw,
            Method::GET,
            "/v1/tokens",
            &[("authorization", &auth)],
            String::new(),
        )
        .await;
        assert_eq!(r.status.as_u16(), 200, "{auth:?}: {r}");
    }
    let glued = format!("Bearer{ADMIN_KEY}");
    let r = admin_raw(
        &gw,
        Method::GET,
        "/v1/tokens",
        &[("authorization", &glued)],
        String::new(),
    )
    .await;
    r.expect(401, Some("unauthorized"));
}

#[tokio::test]
async fn health_endpoints_need_no_key() {
    let gw = TestGateway::builder().start().await;
    for path in ["/healthz", "/readyz"] {
        let r = gw.admin_as(Method::GET, path, None, None).await;
        r.expect(200, None);
        no_store(&r);
        let r = gw
            .admin_as(Method::GET, path, None, Some("not-the-key"))
            .await;
        r.expect(200, None);
        no_store(&r);
    }
}

#[tokio::test]
async fn every_admin_response_carries_cache_control_no_store() {
    let gw = TestGateway::builder().start().await;
    let mut seen = vec![];
    seen.push(
        gw.admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "a", "access": [SD]})),
        )
        .await
        .expect(201, None)
        .clone(),
    );
    seen.push(
        gw.admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "A", "access": [SD]})),
        )
        .await
        .expect(409, Some("name_taken"))
        .clone(),
    );
    seen.push(
        gw.admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "b b", "access": [SD]})),
        )
        .await
        .expect(400, Some("invalid_request"))
        .clone(),
    );
    seen.push(
        gw.admin(Method::GET, "/v1/tokens", None)
            .await
            .expect(200, None)
            .clone(),
    );
    seen.push(
        gw.admin(Method::GET, "/v1/tokens/a", None)
            .await
            .expect(200, None)
            .clone(),
    );
    seen.push(
        gw.admin(Method::GET, "/v1/tokens/zz", None)
            .await
            .expect(404, Some("not_found"))
            .clone(),
    );
    seen.push(
        gw.admin(
            Method::PATCH,
            "/v1/tokens/a",
            Some(json!({"description": "d"})),
        )
        .await
        .expect(200, None)
        .clone(),
    );
    seen.push(
        gw.admin(Method::POST, "/v1/tokens/a/regenerate", None)
            .await
            .expect(200, None)
            .clone(),
    );
    seen.push(
        gw.admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["a"]})),
        )
        .await
        .expect(200, None)
        .clone(),
    );
    seen.push(
        gw.admin(
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({"names": ["a"]})),
        )
        .await
        .expect(200, None)
        .clone(),
    );
    seen.push(
        block(&gw, "a", &["10.0.0.0/8"])
            .await
            .expect(200, None)
            .clone(),
    );
    seen.push(
        unblock(&gw, "a", &["10.0.0.1"])
            .await
            .expect(409, Some("blocked_by_cidr"))
            .clone(),
    );
    seen.push(
        gw.admin(Method::GET, "/v1/tokens/a/ips", None)
            .await
            .expect(200, None)
            .clone(),
    );
    let ct = [
        ("authorization", bearer()),
        ("content-type", "text/plain".to_string()),
    ];
    let ct: Vec<(&str, &str)> = ct.iter().map(|(k, v)| (*k, v.as_str())).collect();
    seen.push(
        admin_raw(&gw, Method::POST, "/v1/tokens", &ct, "{}")
            .await
            .expect(415, Some("unsupported_media_type"))
            .clone(),
    );
    seen.push(
        gw.admin(Method::DELETE, "/v1/tokens/a", None)
            .await
            .expect(204, None)
            .clone(),
    );
    seen.push(
        gw.admin_as(Method::GET, "/v1/tokens", None, None)
            .await
            .expect(401, Some("unauthorized"))
            .clone(),
    );
    seen.push(
        gw.admin_as(Method::GET, "/healthz", None, None)
            .await
            .expect(200, None)
            .clone(),
    );
    seen.push(
        gw.admin_as(Method::GET, "/readyz", None, None)
            .await
            .expect(200, None)
            .clone(),
    );
    for r in &seen {
        no_store(r);
    }
}

#[tokio::test]
async fn failed_admin_authentications_hit_the_per_ip_failure_limit() {
    const LIMIT: u32 = 3;
    let (gw, up) = {
        let up = Upstream::start().await;
        let gw = TestGateway::builder()
            .route("/sd/", "security-director", up.addr)
            .configure(|c| c.proxy.failed_auth_limit = LIMIT)
            .start()
            .await;
        (gw, up)
    };
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    for _ in 0..LIMIT {
        gw.admin_as(
            Method::GET,
            "/v1/tokens",
            None,
            Some("wrong-key-0123456789abcdefghijklmnopqrstuv"),
        )
        .await
        .expect(401, Some("unauthorized"));
    }
    // Whether this one is the last counted failure or already refused, the IP is over its limit after it.
    let r = gw
        .admin_as(
            Method::GET,
            "/v1/tokens",
            None,
            Some("wrong-key-0123456789abcdefghijklmnopqrstuv"),
        )
        .await;
    assert!(matches!(r.status.as_u16(), 401 | 429), "{r}");
    // Now even the right key is refused, with Retry-After.
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    r.expect(429, Some("too_many_failures"));
    no_store(&r);
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {r}"))
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After not an integer ({e}): {r}"));
    assert!(
        (1..=60).contains(&retry),
        "Retry-After {retry} out of 1..=60: {r}"
    );
    // Same per-IP limit as the proxy: a valid application token is refused too.
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(429, Some("too_many_failures"));
    gw.clock.advance(Duration::from_secs(30));
    gw.admin(Method::GET, "/v1/tokens", None)
        .await
        .expect(429, Some("too_many_failures"));
    gw.clock.advance(Duration::from_secs(31));
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    r.expect(200, None);
    assert_eq!(names(&r.json()), ["feed"], "{r}");
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    assert_eq!(
        up.count(),
        1,
        "only the request after the window reached the upstream"
    );
}

// === POST /v1/tokens ===

#[tokio::test]
async fn create_returns_every_field_and_the_secret_once() {
    let gw = TestGateway::builder().start().await;
    let created_ms = now_ms(&gw);
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "Feed-A", "description": "the feed", "access": [TPF, SD, TPF]})),
        )
        .await;
    r.expect(201, None);
    no_store(&r);
    let t = r.json();
    for k in [
        "id",
        "name",
        "description",
        "access",
        "status",
        "inactive_reason",
        "created_at",
        "activated_at",
        "deactivated_at",
        "last_used_at",
        "inactive_at",
        "delete_at",
        "token",
    ] {
        assert!(t.get(k).is_some(), "field {k} missing in {t}");
    }
    let id = t["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id not a string: {t}"));
    assert!(
        id.len() == 36 || id.len() == 26,
        "id {id:?} is neither a UUID nor a ULID"
    );
    assert_eq!(t["name"], "Feed-A", "{t}");
    assert_eq!(t["description"], "the feed", "{t}");
    assert_eq!(
        t["access"],
        json!([SD, TPF]),
        "access sorted, duplicates folded: {t}"
    );
    assert_eq!(t["status"], "active", "{t}");
    assert_eq!(t["inactive_reason"], Value::Null, "{t}");
    assert_eq!(t["deactivated_at"], Value::Null, "{t}");
    assert_eq!(t["last_used_at"], Value::Null, "{t}");
    assert!(
        t["activated_at"].is_null() || t["activated_at"] == t["created_at"],
        "activated_at is neither null nor created_at: {t}"
    );
    assert_secret_format(t["token"].as_str().unwrap());
    let created = ts(&t, "created_at");
    assert_eq!(t["created_at"], rfc(created_ms), "{t}");
    assert_eq!(
        ts(&t, "inactive_at").duration_since(created).unwrap(),
        30 * DAY,
        "{t}"
    );
    assert_eq!(
        ts(&t, "delete_at").duration_since(created).unwrap(),
        90 * DAY,
        "{t}"
    );
    assert_eq!(t["inactive_at"], rfc(created_ms + 30 * 86_400_000), "{t}");
    assert_eq!(t["delete_at"], rfc(created_ms + 90 * 86_400_000), "{t}");

    // Without a description: null. Two tokens never share a secret or an id.
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "feed-b", "access": [SD]})),
        )
        .await;
    r.expect(201, None);
    let u = r.json();
    assert_eq!(u["description"], Value::Null, "{u}");
    assert_eq!(u["access"], json!([SD]), "{u}");
    assert_ne!(u["token"], t["token"]);
    assert_ne!(u["id"], t["id"]);
    assert_secret_format(u["token"].as_str().unwrap());
}

#[tokio::test]
async fn create_validates_every_field() {
    let gw = TestGateway::builder().start().await;
    let long = "a".repeat(33);
    let desc = "x".repeat(1025);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"access": [SD]}), "name"),
        (json!({"name": long, "access": [SD]}), "name"),
        (json!({"name": "feed a", "access": [SD]}), "name"),
        (json!({"name": "feed_a", "access": [SD]}), "name"),
        (json!({"name": "naïve", "access": [SD]}), "name"),
        (json!({"name": "", "access": [SD]}), "name"),
        (json!({"name": 7, "access": [SD]}), "name"),
        (json!({"name": null, "access": [SD]}), "name"),
        (
            json!({"name": "ok", "description": desc, "access": [SD]}),
            "description",
        ),
        (
            json!({"name": "ok", "description": 5, "access": [SD]}),
            "description",
        ),
        (json!({"name": "ok"}), "access"),
        (json!({"name": "ok", "access": []}), "access"),
        (json!({"name": "ok", "access": ["admin"]}), "access"),
        (
            json!({"name": "ok", "access": [SD, "Security-Director "]}),
            "access",
        ),
        (json!({"name": "ok", "access": SD}), "access"),
        (json!({"name": "ok", "access": [1]}), "access"),
        (
            json!({"name": "ok", "access": [SD], "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let r = gw.admin(Method::POST, "/v1/tokens", Some(body)).await;
        invalid(&r, field);
        no_store(&r);
    }
    for body in [
        json!([{"name": "ok", "access": [SD]}]),
        json!("ok"),
        json!(null),
        json!(42),
    ] {
        gw.admin(Method::POST, "/v1/tokens", Some(body))
            .await
            .expect(400, Some("invalid_request"));
    }
    let auth = bearer();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    for raw in [
        "{\"name\": \"ok\", \"access\": [",
        "not json",
        "{\"name\":\"ok\",\"access\":[\"security-director\"]}}",
    ] {
        admin_raw(&gw, Method::POST, "/v1/tokens", &headers, raw)
            .await
            .expect(400, Some("invalid_request"));
    }
    // Boundaries that are accepted: 32-character name, 1024 multi-byte characters.
    let name32 = "A".repeat(32);
    let desc1024 = "é".repeat(1024);
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": name32, "description": desc1024, "access": [SD]})),
        )
        .await;
    r.expect(201, None);
    assert_eq!(r.json()["description"], desc1024.as_str(), "{r}");
    assert_eq!(r.json()["name"], name32.as_str(), "{r}");
    // None of the refused requests created anything.
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    assert_eq!(names(&r.json()), [name32], "{r}");
}

#[tokio::test]
async fn create_refuses_a_name_taken_ignoring_case() {
    let gw = TestGateway::builder().start().await;
    let (_, a) = gw.create_token("Feed-A", &[SD]).await;
    for clash in ["feed-a", "FEED-A", "Feed-A"] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": clash, "access": [TPF]})),
            )
            .await;
        r.expect(409, Some("name_taken"));
        assert!(!r.text().contains("tg_"), "a refusal leaks a secret: {r}");
    }
    let t = show(&gw, "feed-a").await;
    assert_eq!(t["name"], "Feed-A", "{t}");
    assert_eq!(t["id"], a["id"], "{t}");
    assert_eq!(t["access"], json!([SD]), "the original is unchanged: {t}");
}

#[tokio::test]
async fn create_refuses_other_content_types_and_oversized_bodies() {
    let gw = TestGateway::builder().start().await;
    let auth = bearer();
    let body = json!({"name": "plain", "access": [SD]}).to_string();
    let r = admin_raw(
        &gw,
        Method::POST,
        "/v1/tokens",
        &[("authorization", &auth), ("content-type", "text/plain")],
        body.clone(),
    )
    .await;
    r.expect(415, Some("unsupported_media_type"));
    gw.admin(Method::GET, "/v1/tokens/plain", None)
        .await
        .expect(404, Some("not_found"));
    // Media-type parameters are fine.
    let r = admin_raw(
        &gw,
        Method::POST,
        "/v1/tokens",
        &[
            ("authorization", &auth),
            ("content-type", "application/json; charset=utf-8"),
        ],
        body,
    )
    .await;
    r.expect(201, None);

    let mut big = json!({"name": "big", "description": "", "access": [SD]}).to_string();
    big.insert_str(
        big.len() - 1,
        &format!(",\"pad\":\"{}\"", "x".repeat(1 << 20)),
    );
    assert!(big.len() > 1 << 20);
    let r = admin_raw(
        &gw,
        Method::POST,
        "/v1/tokens",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        big,
    )
    .await;
    r.expect(413, Some("payload_too_large"));
    no_store(&r);
    gw.admin(Method::GET, "/v1/tokens/big", None)
        .await
        .expect(404, Some("not_found"));
}

// === GET /v1/tokens ===

#[tokio::test]
async fn list_sorts_filters_and_pages() {
    let gw = TestGateway::builder().start().await;
    let mut secrets = vec![];
    for n in ["charlie", "Alpha", "Delta-x", "bravo", "alpha2"] {
        secrets.push(gw.create_token(n, &[SD]).await.0);
    }
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["bravo"]})),
    )
    .await
    .expect(200, None);
    let list = |q: &'static str| {
        let gw = &gw;
        async move {
            let r = gw.admin(Method::GET, &format!("/v1/tokens{q}"), None).await;
            r.expect(200, None);
            assert!(!secrets_in(&r.text()), "list leaks a secret: {r}");
            (names(&r.json()), r.json()["next"].clone(), r)
        }
    };
    let (all, next, r) = list("").await;
    assert_eq!(
        all,
        ["Alpha", "alpha2", "bravo", "charlie", "Delta-x"],
        "{r}"
    );
    assert_eq!(next, Value::Null, "{r}");
    for t in r.json()["tokens"].as_array().unwrap() {
        assert!(t.get("token").is_none(), "list shows a secret field: {t}");
        assert!(!secrets.iter().any(|s| t.to_string().contains(s.as_str())));
    }
    let (n, _, r) = list("?q=ALP").await;
    assert_eq!(n, ["Alpha", "alpha2"], "{r}");
    let (n, _, r) = list("?q=a-X").await;
    assert_eq!(n, ["Delta-x"], "{r}");
    let (n, _, r) = list("?q=zzz").await;
    assert!(n.is_empty(), "{r}");
    let (n, _, r) = list("?status=inactive").await;
    assert_eq!(n, ["bravo"], "{r}");
    let (n, _, r) = list("?status=active").await;
    assert_eq!(n, ["Alpha", "alpha2", "charlie", "Delta-x"], "{r}");
    let (n, _, r) = list("?status=active&q=alpha").await;
    assert_eq!(n, ["Alpha", "alpha2"], "{r}");

    // Paging.
    let (n, next, r) = list("?limit=2").await;
    assert_eq!(n, ["Alpha", "alpha2"], "{r}");
    assert_eq!(next, "alpha2", "{r}");
    let r = gw
        .admin(Method::GET, "/v1/tokens?limit=2&after=alpha2", None)
        .await;
    r.expect(200, None);
    assert_eq!(names(&r.json()), ["bravo", "charlie"], "{r}");
    assert_eq!(r.json()["next"], "charlie", "{r}");
    let r = gw
        .admin(Method::GET, "/v1/tokens?limit=2&after=charlie", None)
        .await;
    r.expect(200, None);
    assert_eq!(names(&r.json()), ["Delta-x"], "{r}");
    assert_eq!(r.json()["next"], Value::Null, "{r}");
    let (n, next, r) = list("?limit=5").await;
    assert_eq!(n.len(), 5, "{r}");
    assert_eq!(
        next,
        Value::Null,
        "an exactly full last page has no next: {r}"
    );
    let (n, next, r) = list("?status=active&limit=2").await;
    assert_eq!(n, ["Alpha", "alpha2"], "{r}");
    assert_eq!(next, "alpha2", "{r}");
    let r = gw
        .admin(
            Method::GET,
            "/v1/tokens?status=active&limit=2&after=alpha2",
            None,
        )
        .await;
    assert_eq!(
        names(&r.json()),
        ["charlie", "Delta-x"],
        "the filter skips bravo across pages: {r}"
    );

    for bad in ["limit=0", "limit=10001", "limit=abc", "limit=-1"] {
        invalid(
            &gw.admin(Method::GET, &format!("/v1/tokens?{bad}"), None)
                .await,
            "limit",
        );
    }
    gw.admin(Method::GET, "/v1/tokens?limit=10000", None)
        .await
        .expect(200, None);
    // Empty values mean "not given", as in SPEC's `?status=&q=&limit=&after=`.
    let all = gw.admin(Method::GET, "/v1/tokens", None).await.json();
    let empty = gw
        .admin(Method::GET, "/v1/tokens?status=&q=&limit=&after=", None)
        .await;
    empty.expect(200, None);
    assert_eq!(empty.json(), all, "{empty}");
    for bad in ["status=bogus", "status=ACTIVE"] {
        invalid(
            &gw.admin(Method::GET, &format!("/v1/tokens?{bad}"), None)
                .await,
            "status",
        );
    }
}

/// Whether a text holds anything shaped like a secret.
fn secrets_in(text: &str) -> bool {
    text.match_indices("tg_").any(|(i, _)| {
        let rest = &text[i + 3..];
        rest.len() >= 36 && rest.bytes().take(36).all(|b| b.is_ascii_alphanumeric())
    })
}

// === GET / PATCH / DELETE /v1/tokens/{name} ===

#[tokio::test]
async fn show_looks_up_ignoring_case_and_never_shows_the_secret() {
    let gw = TestGateway::builder().start().await;
    let (secret, created) = gw.create_token("Feed-A", &[SD, TPF]).await;
    for lookup in ["Feed-A", "feed-a", "FEED-A"] {
        let r = gw
            .admin(Method::GET, &format!("/v1/tokens/{lookup}"), None)
            .await;
        r.expect(200, None);
        let t = r.json();
        assert_eq!(t["name"], "Feed-A", "{r}");
        assert_eq!(t["id"], created["id"], "{r}");
        assert!(t.get("token").is_none(), "GET shows a token field: {r}");
        assert!(!r.text().contains(&secret), "GET leaks the secret: {r}");
        for k in ["created_at", "inactive_at", "delete_at"] {
            assert_eq!(t[k], created[k], "{k}: {r}");
        }
    }
    for missing in ["nope", "Feed-B", "bad_name", "x".repeat(40).as_str()] {
        gw.admin(Method::GET, &format!("/v1/tokens/{missing}"), None)
            .await
            .expect(404, Some("not_found"));
    }
}

#[tokio::test]
async fn patch_changes_description_and_access_at_once() {
    let (gw, up) = routed().await;
    let (secret, created) = gw.create_token("feed", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(403, Some("access_denied"));

    let r = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/FEED",
            Some(json!({"description": "Nightly feed ✓"})),
        )
        .await;
    r.expect(200, None);
    no_store(&r);
    assert_eq!(r.json()["description"], "Nightly feed ✓", "{r}");
    assert_eq!(r.json()["access"], json!([SD]), "{r}");
    assert!(
        r.json().get("token").is_none() && !r.text().contains(&secret),
        "PATCH leaks the secret: {r}"
    );
    assert_eq!(show(&gw, "feed").await["description"], "Nightly feed ✓");

    let r = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/feed",
            Some(json!({"description": null})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json()["description"], Value::Null, "{r}");
    assert_eq!(show(&gw, "feed").await["description"], Value::Null);

    let r = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/feed",
            Some(json!({"access": [TPF]})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json()["access"], json!([TPF]), "{r}");
    // The very next proxied request sees the change.
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/feeds/y", Some(&secret)).await.expect(200, None);
    assert_eq!(up.last().target, "/y");

    let r = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/feed",
            Some(json!({"access": [TPF, SD, SD], "description": "both"})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json()["access"], json!([SD, TPF]), "{r}");
    assert_eq!(r.json()["description"], "both", "{r}");
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);

    // Refusals change nothing.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "renamed"}), "name"),
        (json!({"name": "feed"}), "name"),
        (json!({"id": "00000000-0000-0000-0000-000000000000"}), "id"),
        (json!({"status": "inactive"}), "status"),
        (json!({"colour": "red"}), "colour"),
        (json!({"token": "tg_x"}), "token"),
        (json!({"access": []}), "access"),
        (json!({"access": ["admin"]}), "access"),
        (json!({"description": "y".repeat(1025)}), "description"),
    ];
    for (body, field) in cases {
        invalid(
            &gw.admin(Method::PATCH, "/v1/tokens/feed", Some(body)).await,
            field,
        );
    }
    let t = show(&gw, "feed").await;
    assert_eq!(t["name"], "feed", "{t}");
    assert_eq!(t["id"], created["id"], "{t}");
    assert_eq!(t["status"], "active", "{t}");
    assert_eq!(t["access"], json!([SD, TPF]), "{t}");
    assert_eq!(t["description"], "both", "{t}");
    gw.admin(
        Method::PATCH,
        "/v1/tokens/nope",
        Some(json!({"description": "x"})),
    )
    .await
    .expect(404, Some("not_found"));
}

#[tokio::test]
async fn delete_removes_the_token_and_frees_its_name() {
    let (gw, _up) = routed().await;
    let (secret, old) = gw.create_token("Feed-A", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    let r = gw.admin(Method::DELETE, "/v1/tokens/feed-a", None).await;
    r.expect(204, None);
    no_store(&r);
    assert!(r.body.is_empty(), "204 with a body: {r}");
    gw.admin(Method::GET, "/v1/tokens/Feed-A", None)
        .await
        .expect(404, Some("not_found"));
    gw.admin(Method::GET, "/v1/tokens/Feed-A/ips", None)
        .await
        .expect(404, Some("not_found"));
    gw.admin(Method::DELETE, "/v1/tokens/Feed-A", None)
        .await
        .expect(404, Some("not_found"));
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    assert!(names(&r.json()).is_empty(), "{r}");

    let (secret2, new) = gw.create_token("FEED-A", &[SD]).await;
    assert_ne!(new["id"], old["id"], "a reused name got the old id");
    assert_ne!(secret2, secret);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    assert!(
        gw.ips("feed-a").await.is_empty(),
        "the old token's IP records came back with the name"
    );
    gw.get("/sd/x", Some(&secret2)).await.expect(200, None);
}

// === activate / deactivate ===

#[tokio::test]
async fn activate_and_deactivate_are_all_or_nothing_and_ordered() {
    let (gw, _up) = routed().await;
    let (sa, _) = gw.create_token("a", &[SD]).await;
    let (sb, _) = gw.create_token("b", &[SD]).await;
    let (_sc, _) = gw.create_token("c", &[SD]).await;

    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["b", "nope", "a", "Zzz"]})),
        )
        .await;
    r.expect(404, Some("not_found"));
    assert_eq!(r.json()["names"], json!(["nope", "Zzz"]), "{r}");
    for n in ["a", "b", "c"] {
        assert_eq!(
            show(&gw, n).await["status"],
            "active",
            "{n} changed by a refused deactivate"
        );
    }
    gw.get("/sd/x", Some(&sa)).await.expect(200, None);

    gw.clock.advance(Duration::from_secs(7));
    let t0 = now_rfc(&gw);
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["c", "A"]})),
        )
        .await;
    r.expect(200, None);
    no_store(&r);
    let tokens = r.json()["tokens"].clone();
    assert_eq!(names(&r.json()), ["c", "a"], "not in request order: {r}");
    for t in tokens.as_array().unwrap() {
        assert_eq!(t["status"], "inactive", "{t}");
        assert_eq!(t["inactive_reason"], "admin", "{t}");
        assert_eq!(t["deactivated_at"], t0, "{t}");
        assert_eq!(
            t["inactive_at"],
            Value::Null,
            "inactive_at is null while inactive: {t}"
        );
        assert!(t["delete_at"].is_string(), "{t}");
        assert!(t.get("token").is_none(), "{t}");
    }
    let a = show(&gw, "a").await;
    assert_eq!(
        (a["status"].as_str(), a["inactive_reason"].as_str()),
        (Some("inactive"), Some("admin")),
        "{a}"
    );
    assert_eq!(show(&gw, "b").await["status"], "active");
    gw.get("/sd/x", Some(&sa))
        .await
        .expect(403, Some("token_inactive"));
    gw.get("/sd/x", Some(&sb)).await.expect(200, None);

    // Deactivating again is harmless and keeps the first deactivated_at.
    gw.clock.advance(Duration::from_secs(3));
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["a"]})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json()["tokens"][0]["deactivated_at"], t0, "{r}");

    // Activate: one unknown name → nothing changes.
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({"names": ["a", "ghost"]})),
        )
        .await;
    r.expect(404, Some("not_found"));
    assert_eq!(r.json()["names"], json!(["ghost"]), "{r}");
    assert_eq!(show(&gw, "a").await["status"], "inactive");
    gw.get("/sd/x", Some(&sa))
        .await
        .expect(403, Some("token_inactive"));

    gw.clock.advance(Duration::from_secs(10));
    let b_before = show(&gw, "b").await;
    let t1 = now_ms(&gw);
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({"names": ["b", "a", "C"]})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(
        names(&r.json()),
        ["b", "a", "c"],
        "not in request order: {r}"
    );
    for t in r.json()["tokens"].as_array().unwrap() {
        assert_eq!(t["status"], "active", "{t}");
        assert_eq!(t["inactive_reason"], Value::Null, "{t}");
    }
    let a = &r.json()["tokens"][1];
    assert_eq!(
        a["activated_at"],
        rfc(t1),
        "activation restarts the idle clock: {r}"
    );
    assert_eq!(a["inactive_at"], rfc(t1 + 30 * 86_400_000), "{r}");
    // Activating an active token changes nothing.
    let b = &r.json()["tokens"][0];
    assert_eq!(b["activated_at"], b_before["activated_at"], "{r}");
    assert_eq!(b["inactive_at"], b_before["inactive_at"], "{r}");
    gw.get("/sd/x", Some(&sa)).await.expect(200, None);
    assert_eq!(show(&gw, "a").await["activated_at"], rfc(t1));
}

#[tokio::test]
async fn activate_and_deactivate_validate_the_name_list() {
    let gw = TestGateway::builder().start().await;
    gw.create_token("a", &[SD]).await;
    let many: Vec<String> = (0..1001).map(|i| format!("t{i}")).collect();
    let mut at_most: Vec<String> = (1..1000).map(|i| format!("t{i}")).collect();
    at_most.insert(0, "a".to_string());
    for op in ["activate", "deactivate"] {
        let path = format!("/v1/tokens/{op}");
        invalid(
            &gw.admin(Method::POST, &path, Some(json!({"names": many})))
                .await,
            "names",
        );
        invalid(
            &gw.admin(Method::POST, &path, Some(json!({"names": []})))
                .await,
            "names",
        );
        invalid(
            &gw.admin(Method::POST, &path, Some(json!({}))).await,
            "names",
        );
        invalid(
            &gw.admin(Method::POST, &path, Some(json!({"names": "a"})))
                .await,
            "names",
        );
        invalid(
            &gw.admin(Method::POST, &path, Some(json!({"names": [1]})))
                .await,
            "names",
        );
        invalid(
            &gw.admin(
                Method::POST,
                &path,
                Some(json!({"names": ["a"], "force": true})),
            )
            .await,
            "force",
        );
        let r = gw
            .admin(Method::POST, &path, Some(json!({"names": at_most})))
            .await;
        // 1000 names pass validation: the unknown ones are named, and nothing changes.
        r.expect(404, Some("not_found"));
        assert_eq!(r.json()["names"], json!(at_most[1..]), "{r}");
    }
    assert_eq!(show(&gw, "a").await["status"], "active");
}

// === regenerate ===

#[tokio::test]
async fn regenerate_replaces_the_secret_only() {
    let (gw, _up) = routed().await;
    let (old, created) = gw.create_token("feed", &[SD]).await;
    gw.clock.advance(Duration::from_secs(5));
    gw.get("/sd/x", Some(&old)).await.expect(200, None);
    let before = show(&gw, "feed").await;
    gw.clock.advance(Duration::from_secs(5));
    let r = gw
        .admin(Method::POST, "/v1/tokens/FEED/regenerate", None)
        .await;
    r.expect(200, None);
    no_store(&r);
    let t = r.json();
    let new = t["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no new token: {r}"))
        .to_string();
    assert_secret_format(&new);
    assert_ne!(new, old);
    assert_eq!(t["id"], created["id"], "{r}");
    assert_eq!(t["status"], "active", "{r}");
    for k in [
        "inactive_at",
        "delete_at",
        "last_used_at",
        "activated_at",
        "created_at",
    ] {
        assert_eq!(t[k], before[k], "regenerate changed {k}: {r}");
    }
    gw.get("/sd/x", Some(&old))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/x", Some(&new)).await.expect(200, None);
    let after = show(&gw, "feed").await;
    assert!(
        !after.to_string().contains(&new),
        "GET shows the new secret: {after}"
    );

    // An inactive token stays inactive.
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["feed"]})),
    )
    .await
    .expect(200, None);
    let r = gw
        .admin(Method::POST, "/v1/tokens/feed/regenerate", None)
        .await;
    r.expect(200, None);
    assert_eq!(
        (
            r.json()["status"].as_str(),
            r.json()["inactive_reason"].as_str()
        ),
        (Some("inactive"), Some("admin")),
        "{r}"
    );
    let newest = r.json()["token"].as_str().unwrap().to_string();
    gw.get("/sd/x", Some(&newest))
        .await
        .expect(403, Some("token_inactive"));
    gw.get("/sd/x", Some(&new))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::POST, "/v1/tokens/nope/regenerate", None)
        .await
        .expect(404, Some("not_found"));
}

// === IPs ===

#[tokio::test]
async fn ip_list_records_proxied_use() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    assert!(gw.ips("feed").await.is_empty());
    let t0 = now_ms(&gw);
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    gw.clock.advance(Duration::from_secs(5));
    gw.get("/sd/b", Some(&secret)).await.expect(200, None);
    gw.get("/feeds/c", Some(&secret))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/sd/d", Some(&secret)).await.expect(200, None);
    let t1 = now_ms(&gw);
    let rows = gw.ips("FEED").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["ip"], "127.0.0.1", "{r}");
    assert_eq!(r["requests"], 3, "refused requests are not uses: {r}");
    assert_eq!(r["denied"], 0, "{r}");
    assert_eq!(r["first_used_at"], rfc(t0), "{r}");
    assert_eq!(r["last_used_at"], rfc(t1), "{r}");
    assert_eq!(r["blocked"], false, "{r}");
    assert_eq!(r["blocked_by"], Value::Null, "{r}");
    assert_eq!(r["blocked_at"], Value::Null, "{r}");
    let t = show(&gw, "feed").await;
    assert_eq!(t["last_used_at"], rfc(t1), "{t}");
    assert_eq!(
        t["inactive_at"],
        rfc(t1 + 30 * 86_400_000),
        "use restarts the idle clock: {t}"
    );
    gw.admin(Method::GET, "/v1/tokens/nope/ips", None)
        .await
        .expect(404, Some("not_found"));
}

#[tokio::test]
async fn block_accepts_unseen_ips_and_cidrs_canonically() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    let at = now_rfc(&gw);
    let r = block(&gw, "feed", &["198.51.100.0/24", "192.0.2.7"]).await;
    r.expect(200, None);
    no_store(&r);
    let rows = r.json()["ips"].as_array().unwrap().clone();
    let order: Vec<&str> = rows.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        ["127.0.0.1", "192.0.2.7", "198.51.100.0/24"],
        "used first, then never-used by ip: {rows:?}"
    );
    for ip in ["192.0.2.7", "198.51.100.0/24"] {
        let x = row(&rows, ip);
        assert_eq!(x["blocked"], true, "{x}");
        assert_eq!(x["blocked_by"], ip, "{x}");
        assert_eq!(x["blocked_at"], at, "{x}");
        assert_eq!(x["requests"], 0, "{x}");
        assert_eq!(x["denied"], 0, "{x}");
        assert_eq!(x["first_used_at"], Value::Null, "{x}");
        assert_eq!(x["last_used_at"], Value::Null, "{x}");
    }
    assert_eq!(row(&rows, "127.0.0.1")["blocked"], false);
    assert_eq!(
        gw.ips("feed").await,
        rows,
        "GET .../ips differs from the block answer"
    );
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);

    // Canonical forms.
    let r = block(
        &gw,
        "feed",
        &[
            "10.0.0.1/32",
            "2001:0db8::0001",
            "::ffff:10.0.0.2",
            "2001:DB8:0:0:0:0:0:2/128",
            "2001:db8:1::/48",
        ],
    )
    .await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().unwrap().clone();
    let all: BTreeSet<&str> = rows.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    let want: BTreeSet<&str> = [
        "127.0.0.1",
        "192.0.2.7",
        "198.51.100.0/24",
        "10.0.0.1",
        "2001:db8::1",
        "10.0.0.2",
        "2001:db8::2",
        "2001:db8:1::/48",
    ]
    .into();
    assert_eq!(all, want, "{rows:?}");
    for ip in [
        "10.0.0.1",
        "2001:db8::1",
        "10.0.0.2",
        "2001:db8::2",
        "2001:db8:1::/48",
    ] {
        assert_eq!(row(&rows, ip)["blocked_by"], ip, "{rows:?}");
    }

    // Refusals change nothing.
    for bad in [
        "10.0.0.1/8",
        "2001:db8::1/64",
        "not-an-ip",
        "10.0.0.256",
        "10.0.0.0/33",
        "",
    ] {
        invalid(&block(&gw, "feed", &[bad]).await, "ips");
        invalid(&unblock(&gw, "feed", &[bad]).await, "ips");
    }
    invalid(
        &block(&gw, "feed", &["192.0.2.50", "10.0.0.1/8"]).await,
        "ips",
    );
    let many: Vec<String> = (0..1001)
        .map(|i| format!("10.1.{}.{}", i / 250, i % 250))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    invalid(&block(&gw, "feed", &many).await, "ips");
    invalid(&block(&gw, "feed", &[]).await, "ips");
    invalid(
        &gw.admin(
            Method::POST,
            "/v1/tokens/feed/ips/block",
            Some(json!({"ips": "10.0.0.9"})),
        )
        .await,
        "ips",
    );
    invalid(
        &gw.admin(
            Method::POST,
            "/v1/tokens/feed/ips/block",
            Some(json!({"ips": ["10.0.0.9"], "note": "x"})),
        )
        .await,
        "note",
    );
    let now: BTreeSet<String> = gw
        .ips("feed")
        .await
        .iter()
        .map(|r| r["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        now,
        want.iter().map(|s| s.to_string()).collect(),
        "a refused block changed the list"
    );
    block(&gw, "nope", &["10.0.0.9"])
        .await
        .expect(404, Some("not_found"));
    let r = block(&gw, "feed", &many[..1000]).await;
    r.expect(200, None);
}

#[tokio::test]
async fn block_and_unblock_are_idempotent_and_enforced() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    let first = now_rfc(&gw);
    block(&gw, "feed", &["127.0.0.1", "192.0.2.7"])
        .await
        .expect(200, None);
    // The very next request is refused and counted.
    gw.get("/sd/a", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    gw.get("/sd/a", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    gw.clock.advance(Duration::from_secs(10));
    let r = block(&gw, "feed", &["127.0.0.1", "192.0.2.7"]).await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().unwrap().clone();
    for ip in ["127.0.0.1", "192.0.2.7"] {
        let x = row(&rows, ip);
        assert_eq!(
            x["blocked_at"], first,
            "a repeated block moved blocked_at: {x}"
        );
        assert_eq!(x["blocked"], true, "{x}");
        assert_eq!(x["blocked_by"], ip, "{x}");
    }
    let me = row(&rows, "127.0.0.1");
    assert_eq!(me["denied"], 2, "{me}");
    assert_eq!(me["requests"], 1, "{me}");

    let r = unblock(&gw, "feed", &["127.0.0.1"]).await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().unwrap().clone();
    let me = row(&rows, "127.0.0.1");
    assert_eq!(
        (
            me["blocked"].clone(),
            me["blocked_by"].clone(),
            me["blocked_at"].clone()
        ),
        (json!(false), Value::Null, Value::Null),
        "{me}"
    );
    assert_eq!(me["denied"], 2, "unblocking keeps the counters: {me}");
    assert_eq!(row(&rows, "192.0.2.7")["blocked"], true, "{rows:?}");
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    // Unblocking again, or something never blocked, is fine.
    unblock(&gw, "feed", &["127.0.0.1"]).await.expect(200, None);
    unblock(&gw, "feed", &["203.0.113.9"])
        .await
        .expect(200, None);
    let r = unblock(&gw, "feed", &["192.0.2.7"]).await;
    r.expect(200, None);
    assert!(
        r.json()["ips"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["blocked"] == false),
        "{r}"
    );
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
}

#[tokio::test]
async fn unblocking_an_ip_covered_by_a_cidr_is_refused() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let (other, _) = gw.create_token("other", &[SD]).await;
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    block(&gw, "feed", &["127.0.0.0/8", "127.0.0.1"])
        .await
        .expect(200, None);
    gw.get("/sd/a", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    gw.get("/sd/a", Some(&other)).await.expect(200, None);
    assert!(
        gw.ips("other").await.iter().all(|x| x["blocked"] == false),
        "a block leaked to another token"
    );

    // The exact entry goes; the CIDR still covers the IP.
    let r = unblock(&gw, "feed", &["127.0.0.1"]).await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().unwrap().clone();
    let me = row(&rows, "127.0.0.1");
    assert_eq!(me["blocked"], true, "{me}");
    assert_eq!(me["blocked_by"], "127.0.0.0/8", "{me}");
    gw.get("/sd/a", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));

    // Now it is covered only by the CIDR.
    let r = unblock(&gw, "feed", &["127.0.0.1"]).await;
    r.expect(409, Some("blocked_by_cidr"));
    assert!(
        r.text().contains("127.0.0.0/8"),
        "the refusal does not name the CIDR: {r}"
    );
    let r = block(&gw, "feed", &["10.0.0.0/8"]).await;
    r.expect(200, None);
    let r = unblock(&gw, "feed", &["10.1.0.0/16"]).await;
    r.expect(409, Some("blocked_by_cidr"));
    assert!(r.text().contains("10.0.0.0/8"), "{r}");
    let r = unblock(&gw, "feed", &["127.0.0.0/8"]).await;
    r.expect(200, None);
    assert!(
        r.json()["ips"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["ip"] != "127.0.0.0/8"),
        "the unblocked CIDR is still listed: {r}"
    );
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    assert_eq!(row(&gw.ips("feed").await, "127.0.0.1")["blocked"], false);
}

#[tokio::test]
async fn ip_list_orders_newest_use_first_then_never_used_by_ip() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    get_from(&gw, "127.0.0.3", "/sd/a", &secret)
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(5));
    get_from(&gw, "127.0.0.4", "/sd/a", &secret)
        .await
        .expect(200, None);
    get_from(&gw, "127.0.0.2", "/sd/a", &secret)
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(5));
    get_from(&gw, "127.0.0.1", "/sd/a", &secret)
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(5));
    get_from(&gw, "127.0.0.3", "/sd/a", &secret)
        .await
        .expect(200, None);
    block(&gw, "feed", &["192.0.2.9", "10.9.9.9", "10.9.0.0/16"])
        .await
        .expect(200, None);
    let rows = gw.ips("feed").await;
    let order: Vec<&str> = rows.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        [
            "127.0.0.3",
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.4",
            "10.9.0.0/16",
            "10.9.9.9",
            "192.0.2.9"
        ],
        "{rows:?}"
    );
    let three = row(&rows, "127.0.0.3");
    assert_eq!(three["requests"], 2, "{three}");
    assert_ne!(three["first_used_at"], three["last_used_at"], "{three}");
    // 10.9.9.9 is blocked by its own entry even though a CIDR covers it too.
    assert_eq!(row(&rows, "10.9.9.9")["blocked_by"], "10.9.9.9", "{rows:?}");
}

// === durability and secrecy ===

#[tokio::test]
async fn state_survives_a_restart_and_is_enforced() {
    let up = Upstream::start().await;
    let mut gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let (keep, _) = gw.create_token("keep", &[SD]).await;
    let (blocked, _) = gw.create_token("blocked", &[SD]).await;
    let (off, _) = gw.create_token("off", &[SD]).await;
    gw.admin(
        Method::PATCH,
        "/v1/tokens/keep",
        Some(json!({"description": "kept"})),
    )
    .await
    .expect(200, None);
    gw.get("/sd/a", Some(&keep)).await.expect(200, None);
    gw.get("/sd/a", Some(&keep)).await.expect(200, None);
    block(&gw, "blocked", &["127.0.0.1", "10.0.0.0/8"])
        .await
        .expect(200, None);
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["off"]})),
    )
    .await
    .expect(200, None);
    let before: Vec<Value> = {
        let r = gw.admin(Method::GET, "/v1/tokens", None).await;
        r.json()["tokens"].as_array().unwrap().clone()
    };
    let old_admin = gw.admin;

    gw.restart().await;
    assert_ne!(gw.admin, old_admin, "restart should bind new ports");
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    r.expect(200, None);
    assert_eq!(
        r.json()["tokens"].as_array().unwrap(),
        &before,
        "tokens changed across a restart"
    );
    let k = show(&gw, "keep").await;
    assert_eq!(k["description"], "kept", "{k}");
    let o = show(&gw, "off").await;
    assert_eq!(
        (o["status"].as_str(), o["inactive_reason"].as_str()),
        (Some("inactive"), Some("admin")),
        "{o}"
    );
    let rows = gw.ips("keep").await;
    assert_eq!(
        row(&rows, "127.0.0.1")["requests"],
        2,
        "usage flushed at shutdown: {rows:?}"
    );
    let rows = gw.ips("blocked").await;
    assert_eq!(row(&rows, "127.0.0.1")["blocked"], true, "{rows:?}");
    assert_eq!(row(&rows, "10.0.0.0/8")["blocked"], true, "{rows:?}");

    gw.get("/sd/a", Some(&keep)).await.expect(200, None);
    gw.get("/sd/a", Some(&blocked))
        .await
        .expect(403, Some("ip_blocked"));
    gw.get("/sd/a", Some(&off))
        .await
        .expect(403, Some("token_inactive"));
    gw.stop().await;
}

/// Every file under `dir`, as bytes.
fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn secrets_are_never_stored_or_returned_after_creation() {
    let (mut gw, _up) = routed().await;
    let mut secrets = vec![];
    for n in ["one", "two", "three"] {
        secrets.push(gw.create_token(n, &[SD, TPF]).await.0);
    }
    gw.get("/sd/a", Some(&secrets[0])).await.expect(200, None);
    for _ in 0..2 {
        let r = gw
            .admin(Method::POST, "/v1/tokens/two/regenerate", None)
            .await;
        r.expect(200, None);
        secrets.push(r.json()["token"].as_str().unwrap().to_string());
    }
    gw.get("/sd/a", Some(&secrets[4])).await.expect(200, None);
    block(&gw, "one", &["192.0.2.1"]).await.expect(200, None);
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["three"]})),
    )
    .await
    .expect(200, None);

    let mut texts = vec![];
    for path in [
        "/v1/tokens",
        "/v1/tokens/one",
        "/v1/tokens/two",
        "/v1/tokens/three",
        "/v1/tokens/one/ips",
        "/v1/tokens/two/ips",
    ] {
        let r = gw.admin(Method::GET, path, None).await;
        r.expect(200, None);
        texts.push(r.to_string());
    }
    let r = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/one",
            Some(json!({"description": "d"})),
        )
        .await;
    texts.push(r.to_string());
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({"names": ["one", "two", "three"]})),
        )
        .await;
    texts.push(r.to_string());
    for t in &texts {
        assert!(
            !secrets_in(t),
            "a response after creation carries a secret: {t}"
        );
    }

    let dir = gw.dir.path().to_path_buf();
    let check = |when: &str| {
        let files = all_files(&dir);
        assert!(
            files.iter().any(|(p, _)| p.ends_with("tokengate.db")),
            "no database in {:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for (path, bytes) in &files {
            for s in &secrets {
                assert!(
                    !contains(bytes, s.as_bytes()),
                    "{when}: {path} contains the secret {s}"
                );
                assert!(
                    !contains(bytes, &s.as_bytes()[3..33]),
                    "{when}: {path} contains the body of secret {s}"
                );
            }
        }
        files.len()
    };
    let n = check("while running");
    assert!(n >= 1);
    gw.stop().await;
    check("after shutdown");
}
