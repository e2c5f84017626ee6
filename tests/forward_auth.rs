//! The forward-auth listener (SPEC §9) with checks shaped as each proxy sends them, on both
//! stores where it matters. nginx and Caddy are tested as real processes in
//! `forward_auth_proxies.rs`; Traefik and Envoy cannot be installed here, so their checks are
//! built as their documentation says they send them:
//!
//! - Traefik `ForwardAuth` (doc.traefik.io/traefik/middlewares/http/forwardauth/): a `GET` to
//!   `address` carrying the client's headers and `X-Forwarded-Method`, `X-Forwarded-Proto`,
//!   `X-Forwarded-Host`, `X-Forwarded-Uri` and `X-Forwarded-For` (with `trustForwardHeader:
//!   false` it replaces the client's values with its own); `authResponseHeaders` are copied
//!   from a 2xx answer onto the request; any other answer goes back to the client as is.
//! - Envoy `ext_authz` HTTP service (envoyproxy.io, "External Authorization" filter,
//!   `http_service`): the original method, `path_prefix` + original path and query, the
//!   original `Host`/`:authority`, `Authorization` and the `allowed_headers` (the README's
//!   configuration allows `x-forwarded-for`, which the HCM set with `use_remote_address`),
//!   no body; `allowed_upstream_headers` are copied from a 200, and
//!   `x-envoy-auth-headers-to-remove` names headers Envoy removes before the upstream.

#[macro_use]
mod support;

use http::Method;
use serde_json::{json, Value};
use support::*;

const SD: &str = "security-director";
const FEEDS: &str = "third-party-feeds";

/// A Traefik-shaped check of `GET {uri}` on `host` from `client` with `secret`.
async fn traefik(gw: &TestGateway, uri: &str, client: &str, secret: Option<&str>) -> Resp {
    let auth = secret.map(|s| format!("Bearer {s}"));
    let mut h = vec![
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-uri", uri),
        ("x-forwarded-for", client),
    ];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    gw.check(Method::GET, "/auth", &h).await
}

async fn gateway(
    postgres: bool,
    test: &str,
) -> Option<(TestGateway, Option<std::sync::Arc<PgSchema>>)> {
    let up = Upstream::start().await;
    let mut b = TestGateway::builder()
        .forward_auth()
        .route("/sd/", SD, up.addr)
        .check_route("/feeds/", FEEDS);
    let schema = if postgres {
        let url = postgres_url(test)?;
        let s = PgSchema::create(&url).await;
        b = b.postgres(&s);
        Some(s)
    } else {
        None
    };
    Some((b.start().await, schema))
}

fn record<'a>(ips: &'a [Value], ip: &str) -> &'a Value {
    ips.iter()
        .find(|r| r["ip"] == ip)
        .unwrap_or_else(|| panic!("no record of {ip} in {ips:?}"))
}

/// An allowed check answers 200 with an empty body and the identity headers, and is a use:
/// the client's IP is recorded (never an address the client put in X-Forwarded-For before the
/// caller's), `last_used_at` moves.
async fn an_allowed_check_is_a_use(postgres: bool, test: &str) {
    let Some((gw, _schema)) = gateway(postgres, test).await else {
        return;
    };
    let (secret, v) = gw.create_token("feed", &[SD, FEEDS]).await;
    assert_eq!(gw.token("feed").await["last_used_at"], Value::Null);
    let r = traefik(
        &gw,
        "/sd/reports?since=1",
        "6.6.6.6, 198.51.100.7",
        Some(&secret),
    )
    .await;
    r.expect(200, None);
    assert!(r.body.is_empty(), "{r}");
    assert_eq!(r.header("x-tokengate-token"), Some("feed"), "{r}");
    assert_eq!(r.header("x-tokengate-token-id"), v["id"].as_str(), "{r}");
    assert_eq!(
        r.header("x-tokengate-access"),
        Some("security-director,third-party-feeds"),
        "{r}"
    );
    assert_eq!(r.header("x-envoy-auth-headers-to-remove"), None, "{r}");
    // A route without upstream serves checks.
    traefik(&gw, "/feeds/x", "198.51.100.7", Some(&secret))
        .await
        .expect(200, None);
    let ips = gw.ips("feed").await;
    assert_eq!(record(&ips, "198.51.100.7")["requests"], 2, "{ips:?}");
    assert!(
        ips.iter().all(|r| r["ip"] != "6.6.6.6"),
        "a client-chosen X-Forwarded-For entry was recorded: {ips:?}"
    );
    assert_ne!(gw.token("feed").await["last_used_at"], Value::Null);
    // ... and on the proxy listener that route does not exist.
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(404, Some("no_route"));
    // ... and that 404 is not a use.
    let ips = gw.ips("feed").await;
    assert!(ips.iter().all(|r| r["ip"] != "127.0.0.1"), "{ips:?}");
}

on_both_stores!("forward_auth": an_allowed_check_is_a_use);

#[tokio::test]
async fn refusals_are_the_proxy_listeners() {
    let Some((gw, _)) = gateway(false, "refusals_are_the_proxy_listeners").await else {
        return;
    };
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let (feeds_only, _) = gw.create_token("other", &[FEEDS]).await;
    let c = "198.51.100.7";
    // Rows 4-5, with WWW-Authenticate.
    let r = traefik(&gw, "/sd/x", c, None).await;
    r.expect(401, Some("missing_token"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    assert_eq!(r.header("x-tokengate-error"), Some("missing_token"));
    let r = traefik(&gw, "/sd/x", c, Some("tg_notatoken")).await;
    r.expect(401, Some("invalid_token"));
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{r}"
    );
    // Row 7: a path the proxy listener refuses is refused here too.
    for bad in [
        "/sd/../../etc/passwd",
        "/sd/%2e%2e/%2e%2e/x",
        "/sd/a%2Fb",
        "/sd/..;/x",
    ] {
        traefik(&gw, bad, c, Some(&secret))
            .await
            .expect(400, Some("invalid_request"));
        gw.get(bad, Some(&secret))
            .await
            .expect(400, Some("invalid_request"));
    }
    // Rows 10-11: no route, access.
    traefik(&gw, "/nowhere/x", c, Some(&secret))
        .await
        .expect(404, Some("no_route"));
    traefik(&gw, "/feeds/x", c, Some(&secret))
        .await
        .expect(403, Some("access_denied"));
    traefik(&gw, "/sd/x", c, Some(&feeds_only))
        .await
        .expect(403, Some("access_denied"));
    // Row 9: a block of the client IP (the caller's X-Forwarded-For entry).
    gw.admin(
        Method::POST,
        "/v1/tokens/feed/ips/block",
        Some(json!({"ips": [c]})),
    )
    .await
    .expect(200, None);
    traefik(&gw, "/sd/x", c, Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    // A client cannot get out of the block by claiming another address first.
    traefik(&gw, "/sd/x", &format!("203.0.113.1, {c}"), Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    traefik(&gw, "/sd/x", "203.0.113.1", Some(&secret))
        .await
        .expect(200, None);
    // Row 9a: the allow-list.
    gw.patch_token(
        "feed",
        json!({"allowed_ips": ["203.0.113.0/24", "127.0.0.1"]}),
    )
    .await
    .expect(200, None);
    traefik(&gw, "/sd/x", "192.0.2.1", Some(&secret))
        .await
        .expect(403, Some("ip_not_allowed"));
    // Row 11a: the rate limit, with Retry-After and the RateLimit fields.
    gw.patch_token("feed", json!({"rate_limit": {"requests": 2, "per": "1h"}}))
        .await
        .expect(200, None);
    for _ in 0..2 {
        traefik(&gw, "/sd/x", "203.0.113.1", Some(&secret))
            .await
            .expect(200, None);
    }
    let r = traefik(&gw, "/sd/x", "203.0.113.1", Some(&secret)).await;
    r.expect(429, Some("rate_limited"));
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1),
        "{r}"
    );
    assert!(r.header("ratelimit-policy").is_some(), "{r}");
    // The proxy listener shares the budget: one token, one bucket.
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(429, Some("rate_limited"));
    // Row 8: inactive.
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["feed"]})),
    )
    .await
    .expect(200, None);
    traefik(&gw, "/sd/x", "203.0.113.1", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    // The refusals are counted, with the checks by outcome.
    let m = gw.admin(Method::GET, "/metrics", None).await.text();
    for line in [
        "tokengate_forward_auth_checks_total{outcome=\"allowed\"} 3",
        "tokengate_forward_auth_checks_total{outcome=\"rate_limited\"} 1",
        "tokengate_forward_auth_checks_total{outcome=\"ip_blocked\"} 2",
        "tokengate_forward_auth_checks_total{outcome=\"invalid_request\"} 4",
    ] {
        assert!(m.contains(line), "no {line:?} in\n{m}");
    }
}

/// A check of `path` carrying `secret` and `headers`.
async fn ask(gw: &TestGateway, path: &str, secret: &str, headers: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {secret}");
    let mut h = vec![("authorization", auth.as_str())];
    h.extend_from_slice(headers);
    gw.check(Method::GET, path, &h).await
}

/// The check's own query and body, and headers a proxy passes through from the client, play
/// no part: only the X-Forwarded-* the caller sets describe the original request.
#[tokio::test]
async fn only_the_callers_headers_describe_the_request() {
    let Some((gw, _)) = gateway(false, "only_the_callers_headers_describe_the_request").await
    else {
        return;
    };
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let client = ("x-forwarded-for", "198.51.100.7");
    let target = ("x-forwarded-uri", "/sd/x");
    // Without X-Forwarded-Uri or X-Forwarded-For: 400, whatever else is there.
    let r = ask(
        &gw,
        "/auth",
        &secret,
        &[("x-original-uri", "/sd/x"), client],
    )
    .await;
    r.expect(400, Some("invalid_request"));
    let message = |r: &Resp| r.json()["message"].as_str().unwrap().to_string();
    assert!(message(&r).contains("X-Forwarded-Uri"), "{r}");
    let r = ask(
        &gw,
        "/auth",
        &secret,
        &[target, ("x-real-ip", "198.51.100.7")],
    )
    .await;
    r.expect(400, Some("invalid_request"));
    assert!(message(&r).contains("X-Forwarded-For"), "{r}");
    // Caddy copies the client's query onto the check: it is never read.
    ask(
        &gw,
        "/auth?x-forwarded-uri=/feeds/&uri=/nowhere",
        &secret,
        &[target, client],
    )
    .await
    .expect(200, None);
    // A second X-Forwarded-Uri (one the caller did not set) is refused, not guessed at.
    ask(
        &gw,
        "/auth",
        &secret,
        &[("x-forwarded-uri", "/feeds/x"), target, client],
    )
    .await
    .expect(400, Some("invalid_request"));
    // The original method: CONNECT and TRACE are refused as on the proxy listener.
    for (m, status, code) in [
        ("CONNECT", 400, "invalid_request"),
        ("TRACE", 501, "not_implemented"),
    ] {
        ask(
            &gw,
            "/auth",
            &secret,
            &[("x-forwarded-method", m), target, client],
        )
        .await
        .expect(status, Some(code));
    }
    // The original host picks host routes; a bad one is a 400.
    ask(
        &gw,
        "/auth",
        &secret,
        &[("x-forwarded-host", "bad host"), target, client],
    )
    .await
    .expect(400, Some("invalid_request"));
    // Any path other than /auth, /auth/{TYPE}, the Envoy prefix: 404 before any check.
    for p in [
        "/",
        "/authx",
        "/auth/",
        "/auth/nope",
        "/auth/security-director/x",
        "/sd/x",
    ] {
        ask(&gw, p, &secret, &[target, client])
            .await
            .expect(404, Some("no_route"));
    }
}

/// The calling proxy forwards the path as the client sent it, so a check decides only on a
/// path already in normal form: `/sd//../feeds/x` (`/feeds/x` to tokengate, `/sd/feeds/x` to an
/// RFC 3986 resolver) and its kin are refused, never decided on as another route.
#[tokio::test]
async fn a_path_the_api_could_resolve_otherwise_is_refused() {
    let Some((gw, _)) = gateway(false, "a_path_the_api_could_resolve_otherwise_is_refused").await
    else {
        return;
    };
    let (feeds, _) = gw.create_token("feeds-only", &[FEEDS]).await;
    let client = ("x-forwarded-for", "198.51.100.7");
    for tricky in [
        "/sd//../feeds/x",
        "/sd/./../feeds/x",
        "/sd/x/../../feeds/x",
        "/sd/%2e%2e/feeds/x",
        "/feeds//x",
        "/feeds/%78",
        "/feeds/x/.",
    ] {
        ask(&gw, "/auth", &feeds, &[("x-forwarded-uri", tricky), client])
            .await
            .expect(400, Some("invalid_request"));
    }
    // Normal paths pass; escapes may be in either case.
    for fine in [
        "/feeds/x",
        "/feeds/",
        "/feeds",
        "/feeds/caf%c3%a9",
        "/feeds/a%2Bb?q=/../x",
    ] {
        ask(&gw, "/auth", &feeds, &[("x-forwarded-uri", fine), client])
            .await
            .expect(200, None);
    }
    // The proxy listener normalises and decides on what it will forward, as before: here
    // /feeds/x, a route only checks may use.
    gw.get("/sd/x/../../feeds/x", Some(&feeds))
        .await
        .expect(404, Some("no_route"));
}

/// `/auth/{TYPE}` requires that type and matches no route: any original path is fine.
#[tokio::test]
async fn a_check_can_name_its_access_type() {
    let Some((gw, _)) = gateway(false, "a_check_can_name_its_access_type").await else {
        return;
    };
    let (secret, _) = gw.create_token("feed", &[FEEDS]).await;
    let auth = format!("Bearer {secret}");
    let ask = |ty: &'static str, uri: &'static str| {
        let auth = auth.clone();
        let gw = &gw;
        async move {
            gw.check(
                Method::POST,
                &format!("/auth/{ty}"),
                &[
                    ("authorization", &auth),
                    ("x-forwarded-uri", uri),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
            )
            .await
        }
    };
    ask(FEEDS, "/anything/at/all").await.expect(200, None);
    ask(SD, "/sd/x").await.expect(403, Some("access_denied"));
    // The path is still normalised and checked.
    ask(FEEDS, "/a/../../x")
        .await
        .expect(400, Some("invalid_request"));
}

/// Envoy's HTTP service: the original request after `path_prefix`, its Host, and
/// `x-envoy-auth-headers-to-remove: authorization` on a 200 (unless forward_authorization).
#[tokio::test]
async fn envoy_checks_are_the_original_request_under_the_prefix() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .forward_auth()
        .route("/sd/", SD, up.addr)
        .route_with("/keep/", SD, up.addr, |r| r.forward_authorization = true)
        .route_with("/h/", FEEDS, up.addr, |r| {
            r.host = Some("feeds.example.com".into())
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let auth = format!("Bearer {secret}");
    let envoy = |method: Method, path: String, host: &'static str| {
        let auth = auth.clone();
        let gw = &gw;
        async move {
            gw.check(
                method,
                &path,
                &[
                    ("host", host),
                    ("authorization", &auth),
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-request-id", "0d9c1f"),
                    ("content-length", "0"),
                ],
            )
            .await
        }
    };
    let r = envoy(
        Method::DELETE,
        "/envoy/sd/items/7?force=1".into(),
        "api.example.com",
    )
    .await;
    r.expect(200, None);
    assert_eq!(r.header("x-tokengate-token"), Some("feed"));
    assert_eq!(
        r.header("x-envoy-auth-headers-to-remove"),
        Some("authorization")
    );
    let r = envoy(Method::GET, "/envoy/keep/x".into(), "api.example.com").await;
    r.expect(200, None);
    assert_eq!(r.header("x-envoy-auth-headers-to-remove"), None, "{r}");
    // The host comes from Host: the host route exists only for feeds.example.com.
    envoy(Method::GET, "/envoy/h/x".into(), "api.example.com")
        .await
        .expect(404, Some("no_route"));
    envoy(Method::GET, "/envoy/h/x".into(), "feeds.example.com")
        .await
        .expect(403, Some("access_denied"));
    // A prefix matches at a segment boundary, and the path is normalised after it.
    envoy(Method::GET, "/envoysd/x".into(), "api.example.com")
        .await
        .expect(404, Some("no_route"));
    envoy(Method::GET, "/envoy/sd/../../x".into(), "api.example.com")
        .await
        .expect(400, Some("invalid_request"));
    let r = gw
        .check(
            Method::GET,
            "/envoy/sd/x",
            &[("host", "api.example.com"), ("authorization", &auth)],
        )
        .await;
    r.expect(400, Some("invalid_request"));
    // Envoy forwards the path as sent unless told to normalise: a path tokengate would have
    // to change is refused rather than decided on in another form.
    for tricky in ["/envoy/sd//x", "/envoy/sd/./x", "/envoy/sd/%7Ex"] {
        envoy(Method::GET, tricky.into(), "api.example.com")
            .await
            .expect(400, Some("invalid_request"));
    }
    // Only the two allowed checks were uses, from the client Envoy named.
    let ips = gw.ips("feed").await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(
        (&ips[0]["ip"], &ips[0]["requests"]),
        (&json!("198.51.100.7"), &json!(2))
    );
}

/// Only `forward_auth.callers` are answered; an unknown caller learns nothing else.
#[tokio::test]
async fn only_trusted_callers_are_answered() {
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .configure(|c| {
            c.forward_auth.callers = vec!["192.0.2.0/24".parse().unwrap()];
            c.proxy.failed_auth_limit = 1;
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let auth = format!("Bearer {secret}");
    let r = gw
        .check(
            Method::GET,
            "/auth",
            &[
                ("authorization", &auth),
                ("x-forwarded-uri", "/sd/x"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )
        .await;
    r.expect(403, Some("untrusted_caller"));
    // A bad secret from an untrusted caller is not even looked at.
    let r = gw
        .check(
            Method::GET,
            "/auth",
            &[
                ("authorization", "Bearer tg_nope"),
                ("x-forwarded-uri", "/sd/x"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )
        .await;
    r.expect(403, Some("untrusted_caller"));
    // Not a use.
    assert!(gw.ips("feed").await.is_empty());
    let m = gw.admin(Method::GET, "/metrics", None).await.text();
    assert!(
        m.contains("tokengate_auth_refusals_total{reason=\"untrusted_caller\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("tokengate_auth_refusals_total{reason=\"invalid_token\"} 0"),
        "{m}"
    );
    // And no failed authentication of the caller's address (its limit is 1 here): its own
    // first bad secret on the proxy listener is still a 401, not a 429.
    gw.get("/sd/x", Some("tg_nope"))
        .await
        .expect(401, Some("invalid_token"));
}

/// trusted_hops: proxies between the caller and the client are skipped in the walk.
#[tokio::test]
async fn trusted_hops_are_skipped_in_the_forwarded_for_walk() {
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .configure(|c| c.forward_auth.trusted_hops = vec!["10.0.0.0/8".parse().unwrap()])
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let auth = format!("Bearer {secret}");
    gw.check(
        Method::GET,
        "/auth",
        &[
            ("authorization", &auth),
            ("x-forwarded-uri", "/sd/x"),
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.5"),
        ],
    )
    .await
    .expect(200, None);
    let ips = gw.ips("feed").await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(ips[0]["ip"], "198.51.100.7");
}

/// Failed authentications through checks count for the client IP (row 2), shared with the
/// proxy listener: one limiter per instance.
#[tokio::test]
async fn failed_checks_count_toward_the_clients_failure_limit() {
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .configure(|c| c.proxy.failed_auth_limit = 3)
        .start()
        .await;
    for _ in 0..3 {
        traefik(&gw, "/sd/x", "198.51.100.9", Some("tg_bad"))
            .await
            .expect(401, Some("invalid_token"));
    }
    let r = traefik(&gw, "/sd/x", "198.51.100.9", Some("tg_bad")).await;
    r.expect(429, Some("too_many_failures"));
    assert!(r.header("retry-after").is_some());
    // Another client is not affected.
    traefik(&gw, "/sd/x", "198.51.100.10", Some("tg_bad"))
        .await
        .expect(401, Some("invalid_token"));
}

/// The listener is off by default (a route without upstream then fails validation:
/// `config::tests::a_route_without_upstream_needs_the_forward_auth_listener`).
#[tokio::test]
async fn the_listener_is_off_by_default() {
    let gw = TestGateway::builder().start().await;
    assert_eq!(gw.forward_auth, None);
}
