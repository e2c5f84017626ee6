//! Usage over time (SPEC §12, issue 24): hourly counters of admitted requests and refusals of
//! a known token by reason, per token and per kept IP record, read back through
//! `GET /v1/tokens/{name}/usage` and the IP list's `requests_7d`.
//!
//! Each behaviour that depends on the store runs on SQLite and on PostgreSQL (a fresh schema;
//! skipped, saying why, without `TOKENGATE_TEST_POSTGRES_URL`, see `support::skip`). The
//! clock is the test's `ManualClock`, set to exact instants around hour and day boundaries.

mod support;

use std::time::Duration;

use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::{ManualClock, Timestamp};
use tokengate::config::Config;

const SD: &str = "security-director";
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const NEVER: Duration = Duration::from_secs(365 * 86_400);
/// Midnight UTC some years ahead: every test starts from a day boundary.
const T0: i64 = 1_893_456_000_000; // 2030-01-01T00:00:00Z

fn rfc(ms: i64) -> String {
    Timestamp(ms).rfc3339()
}

/// A gateway on `pg`'s store (or SQLite) with `/sd/` (security-director) and `/feeds/`
/// (third-party-feeds) routed to one upstream, X-Forwarded-For trusted from loopback (so a
/// test picks its client IPs), flushes and sweeps left to the test, the clock at `start`.
async fn gateway(
    pg: bool,
    test: &str,
    start: i64,
    f: impl FnOnce(&mut Config),
) -> Option<(Upstream, TestGateway, Option<std::sync::Arc<PgSchema>>)> {
    let up = Upstream::start().await;
    let b = TestGateway::builder()
        .clock(&ManualClock::new(Timestamp(start)))
        .route("/sd/", SD, up.addr)
        .route("/feeds/", "third-party-feeds", up.addr)
        .configure(|c| {
            c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            c.usage.flush_interval = NEVER;
            c.lifecycle.sweep_interval = NEVER;
            f(c);
        });
    let (gw, schema) = start_on(pg, test, b).await?;
    Some((up, gw, schema))
}

/// A proxied GET of `path` from client IP `ip`.
async fn get_from(gw: &TestGateway, path: &str, secret: &str, ip: &str) -> Resp {
    let req = Request::get(path)
        .header("authorization", format!("Bearer {secret}"))
        .header("x-forwarded-for", ip)
        .body(Full::default())
        .unwrap();
    gw.proxy_req(req).await
}

/// `n` admitted requests from `ip`.
async fn uses(gw: &TestGateway, secret: &str, ip: &str, n: usize) {
    for _ in 0..n {
        get_from(gw, "/sd/x", secret, ip).await.expect(200, None);
    }
}

/// One request refused `access_denied` (the token holds no third-party-feeds).
async fn access_denied(gw: &TestGateway, secret: &str, ip: &str) {
    get_from(gw, "/feeds/x", secret, ip)
        .await
        .expect(403, Some("access_denied"));
}

/// `GET /v1/tokens/{name}/usage?{query}`, 200 expected.
async fn usage(gw: &TestGateway, name: &str, query: &str) -> Value {
    let r = gw
        .admin(
            Method::GET,
            &format!("/v1/tokens/{name}/usage?{query}"),
            None,
        )
        .await;
    r.expect(200, None);
    r.json()
}

/// One bucket as (start, requests, refused counts without the zeros).
type Bucket = (String, u64, Vec<(String, u64)>);

/// The buckets of an answer.
fn buckets(v: &Value) -> Vec<Bucket> {
    v["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets: {v}"))
        .iter()
        .map(|b| {
            let refused = b["refused"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, n)| n.as_u64() != Some(0))
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect();
            (
                b["start"].as_str().unwrap().to_string(),
                b["requests"].as_u64().unwrap(),
                refused,
            )
        })
        .collect()
}

async fn flush_of(gw: &TestGateway) {
    let g = gw.gateway();
    g.usage.flush(g.store.as_ref()).await.expect("flush");
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(false, concat!("sqlite::", stringify!($name))).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(true, concat!("postgres::", stringify!($name))).await } )*
        }
    };
}

on_both_stores!(
    uses_land_in_the_hour_and_day_that_hold_them,
    refusals_of_a_known_token_are_counted_by_reason,
    history_is_pruned_after_usage_history_and_deleted_with_its_token,
    requests_7d_counts_seven_days_oldest_first,
    an_evicted_ip_record_takes_its_history_along,
);

async fn uses_land_in_the_hour_and_day_that_hold_them(pg: bool, test: &str) {
    // One millisecond before an hour that is also a day boundary.
    let start = T0 + DAY - 1;
    let Some((_up, gw, _s)) = gateway(pg, test, start, |_| {}).await else {
        return;
    };
    let (secret, _) = gw.create_token("clocked", &[SD]).await;
    get_from(&gw, "/sd/a", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_millis(1));
    for _ in 0..2 {
        get_from(&gw, "/sd/a", &secret, "192.0.2.1")
            .await
            .expect(200, None);
    }
    // The hour's last millisecond, then the next hour's first.
    gw.clock.advance(Duration::from_millis(HOUR as u64 - 1));
    get_from(&gw, "/sd/a", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_millis(1));
    get_from(&gw, "/sd/a", &secret, "192.0.2.2")
        .await
        .expect(200, None);
    // 3 buckets, from 23:00 to 01:00.
    let hourly = usage(
        &gw,
        "clocked",
        &format!("from={}&to={}", rfc(start), rfc(T0 + DAY + HOUR)),
    )
    .await;
    assert_eq!(hourly["step"], "1h");
    let none = Vec::new;
    assert_eq!(
        buckets(&hourly),
        vec![
            (rfc(T0 + DAY - HOUR), 1, none()),
            (rfc(T0 + DAY), 3, none()),
            (rfc(T0 + DAY + HOUR), 1, none()),
        ],
        "{hourly}"
    );
    // Every bucket of the range, empty ones included; one IP's alone.
    let one_ip = usage(
        &gw,
        "clocked",
        &format!(
            "from={}&to={}&ip=192.0.2.2",
            rfc(T0),
            rfc(T0 + DAY + 2 * HOUR)
        ),
    )
    .await;
    let b = buckets(&one_ip);
    assert_eq!(b.len(), 24 + 3, "{one_ip}");
    assert_eq!(b.iter().map(|b| b.1).sum::<u64>(), 1, "{one_ip}");
    assert_eq!(b[25], (rfc(T0 + DAY + HOUR), 1, none()));
    // By day: the first use on the first day, the rest on the second.
    let daily = usage(
        &gw,
        "clocked",
        &format!("step=1d&from={}&to={}", rfc(T0), rfc(T0 + 2 * DAY)),
    )
    .await;
    assert_eq!(daily["step"], "1d");
    assert_eq!(
        buckets(&daily),
        vec![
            (rfc(T0), 1, none()),
            (rfc(T0 + DAY), 4, none()),
            (rfc(T0 + 2 * DAY), 0, none())
        ]
    );
    // The default: the 24 hourly buckets ending with the current hour.
    let default = usage(&gw, "clocked", "").await;
    let b = buckets(&default);
    assert_eq!(b.len(), 24);
    assert_eq!(b[0].0, rfc(T0 + DAY + HOUR - 23 * HOUR));
    assert_eq!(b[23], (rfc(T0 + DAY + HOUR), 1, none()));
    assert_eq!(b.iter().map(|b| b.1).sum::<u64>(), 5);
}

async fn refusals_of_a_known_token_are_counted_by_reason(pg: bool, test: &str) {
    let Some((_up, gw, _s)) = gateway(pg, test, T0 + 10 * HOUR, |_| {}).await else {
        return;
    };
    let (secret, _) = gw.create_token("refused", &[SD]).await;
    let ip = "192.0.2.7";
    let path = |p: &str| format!("/v1/tokens/refused{p}");
    get_from(&gw, "/sd/x", &secret, ip).await.expect(200, None);
    get_from(&gw, "/elsewhere/x", &secret, ip)
        .await
        .expect(404, Some("no_route"));
    access_denied(&gw, &secret, ip).await;
    // A rate limit of one per hour: one use, then 429.
    gw.patch_token(
        "refused",
        json!({"rate_limit": {"requests": 1, "per": "1h"}}),
    )
    .await
    .expect(200, None);
    get_from(&gw, "/sd/x", &secret, ip).await.expect(200, None);
    get_from(&gw, "/sd/x", &secret, ip)
        .await
        .expect(429, Some("rate_limited"));
    gw.patch_token(
        "refused",
        json!({"rate_limit": null, "allowed_ips": ["198.51.100.0/24"]}),
    )
    .await
    .expect(200, None);
    get_from(&gw, "/sd/x", &secret, ip)
        .await
        .expect(403, Some("ip_not_allowed"));
    gw.patch_token("refused", json!({"allowed_ips": null}))
        .await
        .expect(200, None);
    let block = json!({"ips": [ip]});
    gw.admin(Method::POST, &path("/ips/block"), Some(block.clone()))
        .await
        .expect(200, None);
    get_from(&gw, "/sd/x", &secret, ip)
        .await
        .expect(403, Some("ip_blocked"));
    gw.admin(Method::POST, &path("/ips/unblock"), Some(block))
        .await
        .expect(200, None);
    let names = json!({"names": ["refused"]});
    gw.admin(Method::POST, "/v1/tokens/deactivate", Some(names.clone()))
        .await
        .expect(200, None);
    get_from(&gw, "/sd/x", &secret, ip)
        .await
        .expect(403, Some("token_inactive"));
    gw.admin(Method::POST, "/v1/tokens/activate", Some(names))
        .await
        .expect(200, None);
    // From an IP the token has no record of: counted for the token only.
    get_from(&gw, "/elsewhere/x", &secret, "203.0.113.50")
        .await
        .expect(404, Some("no_route"));
    // Not a known token: counted nowhere.
    get_from(&gw, "/sd/x", "tg_000000000000000000000000000000000000", ip)
        .await
        .expect(401, Some("invalid_token"));
    // The next hour: expired.
    gw.patch_token("refused", json!({"expires_in": "30m"}))
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(3600));
    get_from(&gw, "/sd/x", &secret, ip)
        .await
        .expect(401, Some("token_expired"));

    let hour = T0 + 10 * HOUR;
    let range = format!("from={}&to={}", rfc(hour), rfc(hour + HOUR));
    let reasons = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = list.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        v.sort();
        v
    };
    let sorted = |mut b: Vec<Bucket>| {
        b.iter_mut().for_each(|b| b.2.sort());
        b
    };
    let all = sorted(buckets(&usage(&gw, "refused", &range).await));
    assert_eq!(
        all,
        vec![
            (
                rfc(hour),
                2,
                reasons(&[
                    ("no_route", 2),
                    ("access_denied", 1),
                    ("rate_limited", 1),
                    ("ip_not_allowed", 1),
                    ("ip_blocked", 1),
                    ("token_inactive", 1),
                ])
            ),
            (rfc(hour + HOUR), 0, reasons(&[("token_expired", 1)])),
        ]
    );
    // The IP with a record has its own rows; the one without has none.
    let mine = sorted(buckets(
        &usage(&gw, "refused", &format!("{range}&ip={ip}")).await,
    ));
    assert_eq!(
        mine[0].2,
        reasons(&[
            ("no_route", 1),
            ("access_denied", 1),
            ("rate_limited", 1),
            ("ip_not_allowed", 1),
            ("ip_blocked", 1),
            ("token_inactive", 1),
        ])
    );
    assert_eq!(mine[1].2, reasons(&[("token_expired", 1)]));
    let stranger = usage(&gw, "refused", &format!("{range}&ip=203.0.113.50")).await;
    assert!(
        buckets(&stranger)
            .iter()
            .all(|b| b.1 == 0 && b.2.is_empty()),
        "{stranger}"
    );
    let ips: Vec<Value> = gw.ips("refused").await;
    assert_eq!(ips.len(), 1, "a refusal made no record: {ips:?}");
    // Every code is always present in `refused`.
    let raw = usage(&gw, "refused", &range).await;
    let keys: Vec<&String> = raw["buckets"][1]["refused"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys.len(), 7, "{raw}");
}

async fn history_is_pruned_after_usage_history_and_deleted_with_its_token(pg: bool, test: &str) {
    let Some((_up, gw, _s)) = gateway(pg, test, T0, |c| {
        c.usage.history = Duration::from_secs(3 * 3600);
    })
    .await
    else {
        return;
    };
    let (secret, v) = gw.create_token("short", &[SD]).await;
    get_from(&gw, "/sd/x", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(3 * 3600));
    get_from(&gw, "/sd/x", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(2 * 3600));
    // Now T0 + 5 h: the hour of T0 is older than 3 h, that of T0 + 3 h is not.
    let range = format!("from={}&to={}", rfc(T0), rfc(T0 + 5 * HOUR));
    let before: Vec<u64> = buckets(&usage(&gw, "short", &range).await)
        .iter()
        .map(|b| b.1)
        .collect();
    assert_eq!(before, [1, 0, 0, 1, 0, 0]);
    let out = gw.gateway().sweeper.sweep_once().await.expect("sweep");
    assert_eq!(out.usage_pruned, 2, "the token's row and the IP's of T0");
    let after: Vec<u64> = buckets(&usage(&gw, "short", &range).await)
        .iter()
        .map(|b| b.1)
        .collect();
    assert_eq!(after, [0, 0, 0, 1, 0, 0]);
    // The IP record's own totals are not history: they stay.
    assert_eq!(gw.ips("short").await[0]["requests"], 2);
    // Deleted with the token.
    let id: tokengate::model::TokenId = v["id"].as_str().unwrap().parse().unwrap();
    gw.admin(Method::DELETE, "/v1/tokens/short", None)
        .await
        .expect(204, None);
    let store = &gw.gateway().store;
    let ip = Some("192.0.2.1".parse().unwrap());
    for who in [None, ip] {
        let rows = store
            .usage_hours(id, who, Timestamp(0), Timestamp(T0 + DAY))
            .await
            .unwrap();
        assert!(rows.is_empty(), "{who:?}: {rows:?}");
    }
}

async fn requests_7d_counts_seven_days_oldest_first(pg: bool, test: &str) {
    let Some((_up, gw, _s)) = gateway(pg, test, T0 + 12 * HOUR, |_| {}).await else {
        return;
    };
    let (secret, _) = gw.create_token("weekly", &[SD]).await;
    // Uses on days 0 (once), 1 (twice), 7 (three times) and 8 (once, today), from one IP;
    // a refusal on day 8 is not a request.
    for (day, n) in [(0, 1), (1, 2), (7, 3), (8, 1)] {
        gw.clock.set(Timestamp(T0 + day * DAY + 12 * HOUR));
        uses(&gw, &secret, "192.0.2.1", n).await;
    }
    access_denied(&gw, &secret, "192.0.2.1").await;
    // The last second of day 8.
    gw.clock.set(Timestamp(T0 + 9 * DAY - 1000));
    gw.admin(
        Method::POST,
        "/v1/tokens/weekly/ips/block",
        Some(json!({"ips": ["10.0.0.0/8"]})),
    )
    .await
    .expect(200, None);
    let ips = gw.ips("weekly").await;
    let row = |ip: &str| {
        ips.iter()
            .find(|r| r["ip"] == ip)
            .unwrap_or_else(|| panic!("{ip}: {ips:?}"))["requests_7d"]
            .clone()
    };
    // Seven days ending with today (day 8): days 2..=8.
    assert_eq!(row("192.0.2.1"), json!([0, 0, 0, 0, 0, 3, 1]));
    assert_eq!(row("10.0.0.0/8"), json!([0, 0, 0, 0, 0, 0, 0]));
    // The answer of a block carries them too.
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/weekly/ips/unblock",
            Some(json!({"ips": ["10.0.0.0/8"]})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(
        r.json()["ips"][0]["requests_7d"],
        json!([0, 0, 0, 0, 0, 3, 1])
    );
    // A day later the week has moved on by one.
    gw.clock.advance(Duration::from_secs(1));
    assert_eq!(
        gw.ips("weekly").await[0]["requests_7d"],
        json!([0, 0, 0, 0, 3, 1, 0])
    );
}

async fn an_evicted_ip_record_takes_its_history_along(pg: bool, test: &str) {
    let Some((_up, gw, _s)) = gateway(pg, test, T0, |c| c.usage.max_ips_per_token = 1).await else {
        return;
    };
    let (secret, _) = gw.create_token("small", &[SD]).await;
    get_from(&gw, "/sd/x", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    flush_of(&gw).await;
    gw.clock.advance(Duration::from_secs(1));
    get_from(&gw, "/sd/x", &secret, "192.0.2.2")
        .await
        .expect(200, None);
    let ips = gw.ips("small").await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(ips[0]["ip"], "192.0.2.2");
    let range = format!("from={}&to={}", rfc(T0), rfc(T0));
    let n = |v: Value| buckets(&v)[0].1;
    assert_eq!(
        n(usage(&gw, "small", &format!("{range}&ip=192.0.2.1")).await),
        0
    );
    assert_eq!(
        n(usage(&gw, "small", &format!("{range}&ip=192.0.2.2")).await),
        1
    );
    // The token's own row keeps every request.
    assert_eq!(n(usage(&gw, "small", &range).await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart() {
    let Some((_up, mut gw, _s)) = gateway(false, "history_survives_a_restart", T0, |_| {}).await
    else {
        return;
    };
    let (secret, _) = gw.create_token("kept", &[SD]).await;
    uses(&gw, &secret, "192.0.2.1", 3).await;
    access_denied(&gw, &secret, "192.0.2.1").await;
    let range = format!("from={}&to={}", rfc(T0), rfc(T0 + HOUR));
    // Not flushed before the restart: the graceful stop writes it.
    gw.restart().await;
    let after = buckets(&usage(&gw, "kept", &range).await);
    assert_eq!(
        after,
        vec![
            (rfc(T0), 3, vec![("access_denied".to_string(), 1)]),
            (rfc(T0 + HOUR), 0, vec![]),
        ]
    );
    // And it goes on adding up.
    get_from(&gw, "/sd/x", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    assert_eq!(buckets(&usage(&gw, "kept", &range).await)[0].1, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_is_checked_and_at_most_2000_buckets_are_answered() {
    let Some((_up, gw, _s)) = gateway(false, "limits", T0 + 5000 * HOUR, |_| {}).await else {
        return;
    };
    gw.create_token("q", &[SD]).await;
    let now = T0 + 5000 * HOUR;
    let ok = usage(
        &gw,
        "q",
        &format!("from={}&to={}", rfc(now - 1999 * HOUR), rfc(now)),
    )
    .await;
    assert_eq!(ok["buckets"].as_array().unwrap().len(), 2000);
    let days = usage(&gw, "q", &format!("step=1d&from={}", rfc(now - 1999 * DAY))).await;
    assert_eq!(days["buckets"].as_array().unwrap().len(), 2000);
    let refused = |query: String, field: &'static str| {
        let gw = &gw;
        async move {
            let r = gw
                .admin(Method::GET, &format!("/v1/tokens/q/usage?{query}"), None)
                .await;
            r.expect(400, Some("invalid_request"));
            assert_eq!(r.json()["field"], field, "{query}: {r}");
        }
    };
    refused(
        format!("from={}&to={}", rfc(now - 2000 * HOUR), rfc(now)),
        "from",
    )
    .await;
    refused(format!("step=1d&from={}", rfc(now - 2000 * DAY)), "from").await;
    refused(format!("from={}&to={}", rfc(now), rfc(now - 1)), "from").await;
    refused("from=yesterday".into(), "from").await;
    refused("to=2030-01-01T00:00:00%2B02:00".into(), "to").await;
    refused("step=1w".into(), "step").await;
    refused("ip=10.0.0.0/8".into(), "ip").await;
    refused("colour=red".into(), "colour").await;
    gw.admin(Method::GET, "/v1/tokens/nobody/usage", None)
        .await
        .expect(404, Some("not_found"));
    gw.admin_as(Method::GET, "/v1/tokens/q/usage", None, None)
        .await
        .expect(401, Some("unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_sum_exactly() {
    let test = "two_instances_on_postgres_sum_exactly";
    let Some((_up, a, _schema)) = gateway(true, test, T0 + HOUR - 1000, |_| {}).await else {
        return;
    };
    let b = a.another_instance().await;
    let (secret, v) = a.create_token("shared", &[SD]).await;
    let id = v["id"].as_str().unwrap().to_string();
    eventually("B knows the token", Duration::from_secs(2), || async {
        b.gateway().index.get_by_id(&id).map(|_| ())
    })
    .await;
    // Both instances, both hours, two IPs, uses and refusals; flushed at once, twice.
    for round in 0..2 {
        for (gw, n) in [(&a, 3), (&b, 4)] {
            for i in 0..n {
                let ip = if i % 2 == 0 { "192.0.2.1" } else { "192.0.2.2" };
                get_from(gw, "/sd/x", &secret, ip).await.expect(200, None);
            }
            access_denied(gw, &secret, "192.0.2.1").await;
        }
        tokio::join!(flush_of(&a), flush_of(&b));
        if round == 0 {
            a.clock.advance(Duration::from_secs(1));
        }
    }
    let range = format!("from={}&to={}", rfc(T0), rfc(T0 + HOUR));
    for gw in [&a, &b] {
        let all = buckets(&usage(gw, "shared", &range).await);
        let denied = |n| vec![("access_denied".to_string(), n)];
        assert_eq!(
            all,
            vec![(rfc(T0), 7, denied(2)), (rfc(T0 + HOUR), 7, denied(2))]
        );
        let one = buckets(&usage(gw, "shared", &format!("{range}&ip=192.0.2.2")).await);
        assert_eq!(one, vec![(rfc(T0), 3, vec![]), (rfc(T0 + HOUR), 3, vec![])]);
    }
    let ips = a.ips("shared").await;
    let total: u64 = ips.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 14);
    drop(b);
}

/// BENCHMARKS.md's "rows per flush": one flush of one hour's use by 10 000 client IPs of one
/// token writes 10 000 IP records (as before), 10 000 hourly IP rows and one hourly token row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_10_000_active_ips_writes_one_hourly_row_per_ip_and_one_per_token() {
    let Some((_up, gw, _s)) = gateway(false, "rows_per_flush", T0 + HOUR / 2, |_| {}).await else {
        return;
    };
    let (_, v) = gw.create_token("busy", &[SD]).await;
    let id: tokengate::model::TokenId = v["id"].as_str().unwrap().parse().unwrap();
    let g = gw.gateway();
    for i in 0..10_000u32 {
        let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        g.usage.record_use(id, ip, Timestamp(T0 + HOUR / 2));
    }
    let started = std::time::Instant::now();
    let pairs = g.usage.flush(g.store.as_ref()).await.expect("flush");
    let took = started.elapsed();
    assert_eq!(pairs, 10_000);
    let tokengate::config::StoreUrl::Sqlite(db) = &gw.config.store.url else {
        panic!("SQLite");
    };
    let conn = rusqlite::Connection::open(db).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM token_ips"), 10_000);
    assert_eq!(
        count("SELECT count(*) FROM usage_hours WHERE ip <> ''"),
        10_000
    );
    assert_eq!(
        count("SELECT requests FROM usage_hours WHERE ip = ''"),
        10_000,
        "the token's own row"
    );
    note(&format!(
        "one flush of 10 000 (token, IP) pairs: 10 000 IP records + 10 001 hourly rows in {took:?} (this build's profile)"
    ));
}
