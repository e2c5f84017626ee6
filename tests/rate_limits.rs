//! Per-token rate limits (SPEC §1 `rate_limit`, §2 row 11a) with the local backend, on both
//! stores: a burst of exactly N, refilled at N per `per` (the test clock moves), `Retry-After`
//! and the RateLimit headers, refusals that are neither uses nor failures, and limits set,
//! changed and cleared through the admin API, kept across a restart.

#[macro_use]
mod support;

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;

const SD: &str = "security-director";

async fn create_limited(gw: &TestGateway, name: &str, limit: Value) -> String {
    let (secret, v) = gw
        .create_token_with(json!({"name": name, "access": [SD], "rate_limit": limit}))
        .await;
    assert_eq!(v["rate_limit"], limit, "{v}");
    secret
}

async fn set_limit(gw: &TestGateway, limit: Value) -> Resp {
    gw.patch_token("feed", json!({ "rate_limit": limit })).await
}

fn requests(ips: &[Value]) -> u64 {
    ips.iter()
        .map(|i| i["requests"].as_u64().unwrap_or(0))
        .sum()
}

async fn a_burst_admits_exactly_n_then_refills_at_n_per_window(postgres: bool, test: &str) {
    let Some((_up, gw, _schema)) = gateway_on(postgres, test, |c| {
        // Rate-limited requests never count as failed authentications.
        c.proxy.failed_auth_limit = 2;
    })
    .await
    else {
        return;
    };
    let secret = create_limited(&gw, "feed", json!({"requests": 3, "per": "1m"})).await;
    for i in 0..3 {
        gw.get(&format!("/sd/{i}"), Some(&secret))
            .await
            .expect(200, None);
    }
    // The fourth at the same instant: 429, with when to come back (one emission interval,
    // 20 s, rounded up to whole seconds) and the policy.
    let r = gw.get("/sd/3", Some(&secret)).await;
    r.expect(429, Some("rate_limited"));
    assert_eq!(r.header("retry-after"), Some("20"), "{r}");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"default\";q=3;w=60"),
        "{r}"
    );
    // draft-09: on a 429, `t` is the Retry-After.
    assert_eq!(r.header("ratelimit"), Some("\"default\";r=0;t=20"), "{r}");
    for _ in 0..5 {
        gw.get("/sd/again", Some(&secret))
            .await
            .expect(429, Some("rate_limited"));
    }
    // Refused requests are not uses, and not failures (the failure limit is 2).
    assert_eq!(requests(&gw.ips("feed").await), 3);
    // 1 ms before the interval ends: still refused, and Retry-After says 1 s.
    gw.clock.advance(Duration::from_millis(19_999));
    let r = gw.get("/sd/early", Some(&secret)).await;
    r.expect(429, Some("rate_limited"));
    assert_eq!(r.header("retry-after"), Some("1"), "{r}");
    // One interval after the burst: exactly one more.
    gw.clock.advance(Duration::from_millis(1));
    gw.get("/sd/refilled", Some(&secret))
        .await
        .expect(200, None);
    gw.get("/sd/over", Some(&secret))
        .await
        .expect(429, Some("rate_limited"));
    // A full window later the whole burst is back, and no more than it: no double burst.
    gw.clock.advance(Duration::from_secs(60));
    for i in 0..3 {
        gw.get(&format!("/sd/w{i}"), Some(&secret))
            .await
            .expect(200, None);
    }
    gw.get("/sd/w3", Some(&secret))
        .await
        .expect(429, Some("rate_limited"));
    assert_eq!(requests(&gw.ips("feed").await), 7);
    // The metric counts the refusals by their code.
    let m = gw.admin(Method::GET, "/metrics", None).await.text();
    assert!(
        m.contains("tokengate_auth_refusals_total{reason=\"rate_limited\"} 9"),
        "{m}"
    );
}

async fn limits_are_set_changed_and_cleared_by_patch_and_kept(postgres: bool, test: &str) {
    let Some((_up, mut gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let (secret, v) = gw.create_token("feed", &[SD]).await;
    assert_eq!(v["rate_limit"], Value::Null);
    let r = set_limit(&gw, json!({"requests": 1, "per": "1h"})).await;
    r.expect(200, None);
    assert_eq!(r.json()["rate_limit"], json!({"requests": 1, "per": "1h"}));
    // The very next request sees it.
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    gw.get("/sd/b", Some(&secret))
        .await
        .expect(429, Some("rate_limited"));
    // Kept across a restart (the store has it).
    gw.restart().await;
    assert_eq!(
        gw.token("feed").await["rate_limit"],
        json!({"requests": 1, "per": "1h"})
    );
    // A relaxed limit helps at once.
    set_limit(&gw, json!({"requests": 100, "per": "1s"}))
        .await
        .expect(200, None);
    gw.get("/sd/c", Some(&secret)).await.expect(200, None);
    // Cleared: no limit at all.
    let r = set_limit(&gw, Value::Null).await;
    r.expect(200, None);
    assert_eq!(r.json()["rate_limit"], Value::Null);
    for _ in 0..150 {
        gw.get("/sd/d", Some(&secret)).await.expect(200, None);
    }
    // Each change is an `update` with the field in its details.
    let audit = gw
        .admin(Method::GET, "/v1/audit?token=feed", None)
        .await
        .json();
    let changes: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "update")
        .map(|e| &e["details"]["rate_limit"])
        .collect();
    assert_eq!(
        changes,
        [
            &json!({"from": {"requests": 100, "per": "1s"}, "to": null}),
            &json!({"from": {"requests": 1, "per": "1h"}, "to": {"requests": 100, "per": "1s"}}),
            &json!({"from": null, "to": {"requests": 1, "per": "1h"}}),
        ],
        "{audit}"
    );
}

on_both_stores!("rate_limits":
    a_burst_admits_exactly_n_then_refills_at_n_per_window,
    limits_are_set_changed_and_cleared_by_patch_and_kept,
);

#[tokio::test]
async fn bad_limits_are_refused_naming_the_field() {
    let gw = TestGateway::builder().start().await;
    for limit in [
        json!({"requests": 0, "per": "1m"}),
        json!({"requests": 1_000_001, "per": "1m"}),
        json!({"requests": 5, "per": "500ms"}),
        json!({"requests": 5, "per": "2d"}),
        json!({"requests": 5, "per": "soon"}),
        json!({"requests": 5}),
        json!({"requests": 5, "per": "1m", "burst": 9}),
        json!("100/1m"),
    ] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": "x", "access": [SD], "rate_limit": limit})),
            )
            .await;
        r.expect(400, Some("invalid_request"));
        assert_eq!(r.json()["field"], "rate_limit", "{limit}: {r}");
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(!message.starts_with("unknown field"), "{limit}: {message}");
    }
}

#[tokio::test]
async fn forwarded_responses_carry_the_ratelimit_headers_only_when_asked() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .start()
        .await;
    let secret = create_limited(&gw, "feed", json!({"requests": 10, "per": "10s"})).await;
    let r = gw.get("/sd/x", Some(&secret)).await;
    r.expect(200, None);
    assert_eq!(r.header("ratelimit"), None, "off by default: {r}");

    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .configure(|c| c.rate_limit.headers = true)
        .start()
        .await;
    let secret = create_limited(&gw, "feed", json!({"requests": 10, "per": "10s"})).await;
    let r = gw.get("/sd/x", Some(&secret)).await;
    r.expect(200, None);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"default\";q=10;w=10"),
        "{r}"
    );
    // 9 left; the bucket is full again one emission interval (1 s) from now.
    assert_eq!(r.header("ratelimit"), Some("\"default\";r=9;t=1"), "{r}");
    // A token without a limit gets none.
    let (plain, _) = gw.create_token("plain", &[SD]).await;
    let r = gw.get("/sd/y", Some(&plain)).await;
    r.expect(200, None);
    assert_eq!(r.header("ratelimit"), None, "{r}");
}
