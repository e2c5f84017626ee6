//! `/metrics` (SPEC §8): Prometheus text that a Prometheus parser reads, counters that move
//! with traffic, behind the admin key unless `admin.metrics_public`, no names/secrets/IPs.

mod support;

use http::Method;
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use support::*;

async fn scrape(gw: &TestGateway) -> (Scrape, String) {
    let r = gw.admin(Method::GET, "/metrics", None).await;
    r.expect(200, None);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{r}"
    );
    let text = r.text();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    (parsed, text)
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

/// The value of the series `name{labels}`, which must exist: a missing series fails the test
/// (naming it and listing the series there are), so a renamed metric or label cannot pass as
/// a zero.
#[track_caller]
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels).map(|x| &x.value) {
        Some(Value::Counter(v)) | Some(Value::Gauge(v)) | Some(Value::Untyped(v)) => *v,
        Some(other) => panic!("{name}: unexpected {other:?}"),
        None => panic!(
            "no series {} in the scrape; it has:\n{}",
            series(name, labels.iter().map(|(k, v)| (*k, *v))),
            existing(s).join("\n")
        ),
    }
}

/// `name{k="v",...}`, labels sorted.
fn series<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut l: Vec<String> = labels.map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

/// Every series of the scrape (histograms once, by name and labels).
fn existing(s: &Scrape) -> Vec<String> {
    let mut all: Vec<String> = s
        .samples
        .iter()
        .map(|x| {
            series(
                &x.metric,
                x.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

#[tokio::test]
async fn counters_move_with_each_status_and_parse_as_prometheus_text() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("metered", &["security-director"]).await;
    let (before, _) = scrape(&gw).await;
    assert_eq!(
        value(&before, "tokengate_tokens", &[("status", "active")]),
        1.0
    );
    for _ in 0..3 {
        gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
    }
    gw.get("/sd/status/503", Some(&secret))
        .await
        .expect(503, None);
    gw.get("/sd/x", None)
        .await
        .expect(401, Some("missing_token"));
    gw.get("/sd/x", Some("tg_nope"))
        .await
        .expect(401, Some("invalid_token"));
    let unknown = tokengate::token::Secret::generate();
    gw.get("/sd/x", Some(unknown.expose()))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/elsewhere", Some(&secret))
        .await
        .expect(404, Some("no_route"));
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["metered"]})),
    )
    .await
    .expect(200, None);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));

    let (after, text) = scrape(&gw).await;
    let req = |route: &str, status: &str| {
        value(
            &after,
            "tokengate_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(req("/sd/", "200"), 3.0, "{text}");
    assert_eq!(req("/sd/", "503"), 1.0, "{text}");
    assert_eq!(req("none", "401"), 3.0, "{text}");
    assert_eq!(req("none", "404"), 1.0, "{text}");
    assert_eq!(req("none", "403"), 1.0, "{text}");
    let refusal = |r: &str| value(&after, "tokengate_auth_refusals_total", &[("reason", r)]);
    assert_eq!(refusal("missing_token"), 1.0);
    assert_eq!(refusal("invalid_token"), 2.0);
    assert_eq!(refusal("no_route"), 1.0);
    assert_eq!(refusal("token_inactive"), 1.0);
    assert_eq!(refusal("ip_blocked"), 0.0);
    // Lookups: every well-formed secret is a lookup; the garbage one never got that far.
    assert_eq!(
        value(&after, "tokengate_token_cache_hits_total", &[]),
        6.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "tokengate_token_cache_misses_total", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "tokengate_tokens", &[("status", "inactive")]),
        1.0
    );
    assert_eq!(
        value(&after, "tokengate_tokens", &[("status", "active")]),
        0.0
    );
    // Histograms: the four forwarded requests, all within the largest finite bucket.
    match &find(
        &after,
        "tokengate_request_duration_seconds",
        &[("route", "/sd/")],
    )
    .expect("histogram")
    .value
    {
        Value::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            assert_eq!(inf.count, 4.0, "{text}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(
        text.contains("tokengate_upstream_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("tokengate_usage_pending"), "{text}");
    assert!(
        text.contains("tokengate_usage_flush_errors_total"),
        "{text}"
    );
    // Never a token name, secret or client IP.
    for needle in ["metered", secret.as_str(), "127.0.0.1"] {
        assert!(!text.contains(needle), "{needle} in metrics:\n{text}");
    }
}

#[tokio::test]
async fn metrics_need_the_key_unless_public() {
    let gw = TestGateway::builder().start().await;
    gw.admin_as(Method::GET, "/metrics", None, None)
        .await
        .expect(401, Some("unauthorized"));
    gw.admin_as(
        Method::GET,
        "/metrics",
        None,
        Some("wrong-key-wrong-key-wrong-key-wrong"),
    )
    .await
    .expect(401, Some("unauthorized"));
    gw.admin(Method::GET, "/metrics", None)
        .await
        .expect(200, None);
    let public = TestGateway::builder()
        .configure(|c| c.admin.metrics_public = true)
        .start()
        .await;
    let r = public.admin_as(Method::GET, "/metrics", None, None).await;
    r.expect(200, None);
    assert!(r.text().contains("tokengate_requests"), "{r}");
    // Public metrics do not open anything else.
    public
        .admin_as(Method::GET, "/v1/tokens", None, None)
        .await
        .expect(401, Some("unauthorized"));
}
