//! The Redis rate-limit backend through the whole gateway (SPEC §2 row 11a, §6
//! `[rate_limit]`): two instances on one Redis share one budget exactly; with Redis down,
//! `on_backend_error = "allow"` lets requests through and counts the errors, `"deny"` answers
//! 503 `rate_limit_unavailable`; with Redis back, limits resume. The outage tests run a
//! private `redis-server` (tests/support/redis.rs), never the shared one.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::json;
use support::redis::{redis_url, PrivateRedis};
use support::*;
use tokengate::config::{OnBackendError, RateLimitBackend};

const SD: &str = "security-director";

async fn gateway(url: &str, on_error: OnBackendError) -> (Upstream, TestGateway) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .configure(|c| {
            c.rate_limit.backend = RateLimitBackend::Redis {
                url: url.to_string(),
            };
            c.rate_limit.on_backend_error = on_error;
            c.rate_limit.redis_timeout = Duration::from_millis(100);
        })
        .start()
        .await;
    (up, gw)
}

async fn limited_token(gw: &TestGateway, requests: u32) -> String {
    let body = json!({
        "name": "feed",
        "access": [SD],
        "rate_limit": {"requests": requests, "per": "1m"},
    });
    gw.create_token_with(body).await.0
}

fn backend_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_rate_limit_backend_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no backend error counter in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_one_budget_exactly() {
    let Some(url) = redis_url("two_instances_on_one_redis_share_one_budget_exactly") else {
        return;
    };
    let (_up, a) = gateway(&url, OnBackendError::Deny).await;
    let secret = limited_token(&a, 5).await;
    // The second instance shares the store (it loads the token) and the clock.
    let b = a.another_instance().await;
    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.get("/sd/x", Some(&secret)).await;
        match r.status.as_u16() {
            200 => admitted += 1,
            429 => {
                r.expect(429, Some("rate_limited"));
                limited += 1;
            }
            _ => panic!("unexpected {r}"),
        }
    }
    assert_eq!(
        (admitted, limited),
        (5, 7),
        "one budget of 5 for both instances, not 5 each"
    );
    // Both see the refill at the shared clock's time: one interval (12 s) later, one more,
    // whichever instance asks.
    a.clock.advance(Duration::from_secs(12));
    b.get("/sd/y", Some(&secret)).await.expect(200, None);
    a.get("/sd/y", Some(&secret))
        .await
        .expect(429, Some("rate_limited"));
    let m = a.admin(Method::GET, "/metrics", None).await.text();
    assert_eq!(backend_errors(&m), 0);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_allows_or_denies_as_configured_and_limits_resume_when_it_is_back() {
    let test = "redis_down_allows_or_denies_as_configured_and_limits_resume_when_it_is_back";
    let Some(mut server) = PrivateRedis::find(test) else {
        return;
    };
    server.start().await;
    let url = server.url();
    let (_up, allow) = gateway(&url, OnBackendError::Allow).await;
    let (_up2, deny) = gateway(&url, OnBackendError::Deny).await;
    let open = limited_token(&allow, 2).await;
    let closed = limited_token(&deny, 2).await;
    // Up: both limit (the connection comes up in the background: wait for the first answer).
    eventually(
        "the allow gateway limits",
        Duration::from_secs(10),
        || async { (allow.get("/sd/x", Some(&open)).await.status == 429).then_some(()) },
    )
    .await;
    eventually(
        "the deny gateway limits",
        Duration::from_secs(10),
        || async { (deny.get("/sd/x", Some(&closed)).await.status == 429).then_some(()) },
    )
    .await;

    server.stop();
    // Fail open: every request passes, and each is a counted backend error.
    let before = backend_errors(&allow.admin(Method::GET, "/metrics", None).await.text());
    for _ in 0..4 {
        allow.get("/sd/x", Some(&open)).await.expect(200, None);
    }
    let after = backend_errors(&allow.admin(Method::GET, "/metrics", None).await.text());
    assert_eq!(after - before, 4);
    // Fail closed: 503, not a use.
    let r = deny.get("/sd/x", Some(&closed)).await;
    r.expect(503, Some("rate_limit_unavailable"));
    assert!(backend_errors(&deny.admin(Method::GET, "/metrics", None).await.text()) >= 1);

    // Back (empty: the private server keeps nothing): limits resume on both.
    server.start().await;
    let (_, took) = eventually(
        "the allow gateway limits again",
        Duration::from_secs(10),
        || async { (allow.get("/sd/x", Some(&open)).await.status == 429).then_some(()) },
    )
    .await;
    note(&format!(
        "{test}: limits resumed {took:?} after Redis came back"
    ));
    eventually(
        "the deny gateway serves and limits again",
        Duration::from_secs(10),
        || async { (deny.get("/sd/x", Some(&closed)).await.status == 429).then_some(()) },
    )
    .await;
}
