//! Signed webhooks (SPEC §10) against a real HTTPS receiver: every event type with its data
//! and never a secret, signatures checked by the Python `standardwebhooks` package, retries
//! with the same `webhook-id` and a fresh signature, 410 and `max_age`, `ip.denied`'s limits,
//! the deliveries list and CLI, and two PostgreSQL instances delivering each event once.
//! (SIGKILL after an acknowledged change: tests/durability.rs.)

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::webhooks::{secret_of, verify_with_standardwebhooks, Delivery, Receiver};
use support::*;
use tokengate::clock::{Clock, Timestamp};
use tokengate::config::{Config, WebhookEndpointConfig};
use tokengate::events::EventSet;

const SD: &str = "security-director";
const WAIT: Duration = Duration::from_secs(20);

/// Adds an endpoint for `rx` taking `events`, its secret in the test's directory.
fn endpoint(c: &mut Config, rx: &Receiver, events: &[&str]) {
    let dir = c.admin.key_file.parent().unwrap().to_path_buf();
    c.webhooks.endpoints.push(WebhookEndpointConfig {
        url: rx.url().parse().unwrap(),
        secret_file: dir.join(format!("webhook{}.secret", c.webhooks.endpoints.len())),
        events: EventSet::parse(&events.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        ca_file: Some(rx.ca_file.clone()),
    });
}

fn secret_file(gw: &TestGateway) -> std::path::PathBuf {
    gw.config.webhooks.endpoints[0].secret_file.clone()
}

/// The deliveries of `kind`, as JSON bodies.
fn of_type(got: &[Delivery], kind: &str) -> Vec<Value> {
    got.iter()
        .filter(|d| d.event_type() == kind)
        .map(Delivery::json)
        .collect()
}

fn count(got: &[Delivery], kind: &str) -> usize {
    of_type(got, kind).len()
}

async fn flush(gw: &TestGateway) {
    let g = gw.gateway();
    g.usage.flush(g.store.as_ref()).await.unwrap();
}

/// Waits until the outbox records `n` attempts in all (a receiver sees a delivery before
/// the gateway records its answer; a test moving the clock must wait for the record).
async fn recorded(gw: &TestGateway, n: i64) -> Vec<Value> {
    eventually(&format!("{n} attempts recorded"), WAIT, || async {
        let l = deliveries(gw).await;
        let sum: i64 = l.iter().map(|d| d["attempts"].as_i64().unwrap()).sum();
        (sum == n).then_some(l)
    })
    .await
    .0
}

/// A public revocation of `secret` on the proxy listener.
async fn revoke(gw: &TestGateway, secret: &str) -> Resp {
    let body = json!({"tokens": [secret]}).to_string();
    gw.proxy_req(
        Request::post("/_tokengate/revoke")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

async fn deliveries(gw: &TestGateway) -> Vec<Value> {
    let r = gw
        .admin(Method::GET, "/v1/webhooks/deliveries?limit=1000", None)
        .await;
    r.expect(200, None);
    r.json()["deliveries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_event_type_fires_with_its_data_and_a_valid_signature() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .configure(|c| {
            endpoint(c, &rx, &["*"]);
            c.proxy.failed_auth_limit = 3;
        })
        .start()
        .await;
    let mut secrets = Vec::new();
    let now = gw.clock.now();

    // token.created, then token.expiring from the sweep (it expires within expiry_notice).
    let expires = now.plus(Duration::from_secs(3 * 86_400));
    let (ci, created) = gw
        .create_token_with(
            json!({"name": "ci", "access": [SD], "description": "build bot",
            "expires_at": expires.rfc3339()}),
        )
        .await;
    secrets.push(ci.clone());
    let id = created["id"].as_str().unwrap().to_string();
    gw.gateway().sweeper.sweep_once().await.unwrap();
    gw.gateway().sweeper.sweep_once().await.unwrap(); // once, not once per sweep

    // ip.first_seen: the first use from an IP, and not the second.
    gw.get("/sd/a", Some(&ci)).await.expect(200, None);
    flush(&gw).await;
    gw.get("/sd/b", Some(&ci)).await.expect(200, None);
    flush(&gw).await;

    // token.updated, token.regenerated (with its grace).
    gw.patch_token("ci", json!({"description": "release bot"}))
        .await
        .expect(200, None);
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/ci/regenerate",
            Some(json!({"grace": "1h"})),
        )
        .await;
    r.expect(200, None);
    let ci = r.json()["token"].as_str().unwrap().to_string();
    secrets.push(ci.clone());

    // ip.blocked, ip.denied (once for three refusals), ip.unblocked.
    gw.admin(
        Method::POST,
        "/v1/tokens/ci/ips/block",
        Some(json!({"ips": ["127.0.0.1"]})),
    )
    .await
    .expect(200, None);
    for _ in 0..3 {
        gw.get("/sd/c", Some(&ci))
            .await
            .expect(403, Some("ip_blocked"));
        flush(&gw).await;
    }
    gw.admin(
        Method::POST,
        "/v1/tokens/ci/ips/unblock",
        Some(json!({"ips": ["127.0.0.1"]})),
    )
    .await
    .expect(200, None);

    // token.deactivated and token.activated by the admin.
    for op in ["deactivate", "activate"] {
        gw.admin(
            Method::POST,
            &format!("/v1/tokens/{op}"),
            Some(json!({"names": ["ci"]})),
        )
        .await
        .expect(200, None);
    }

    // auth.failures: the client IP reaches failed_auth_limit (3), once; then its window
    // (which also bars the admin API to that IP) passes.
    for _ in 0..5 {
        gw.get("/sd/x", Some("tg_not-a-real-token")).await;
    }
    gw.clock.advance(Duration::from_secs(61));

    // token.deactivated (revoked) by a public revocation.
    let (leak, _) = gw.create_token("leak", &[SD]).await;
    secrets.push(leak.clone());
    revoke(&gw, &leak).await.expect(202, None);

    // token.deleted by the admin.
    gw.admin(Method::DELETE, "/v1/tokens/leak", None)
        .await
        .expect(204, None);

    let want_now = [
        ("token.created", 2),
        ("token.expiring", 1),
        ("ip.first_seen", 1),
        ("token.updated", 1),
        ("token.regenerated", 1),
        ("ip.blocked", 1),
        ("ip.denied", 1),
        ("ip.unblocked", 1),
        ("token.deactivated", 2),
        ("token.activated", 1),
        ("auth.failures", 1),
        ("token.deleted", 1),
    ];
    let got = rx
        .until("the admin and usage events", WAIT, |g| {
            want_now.iter().all(|(t, n)| count(g, t) >= *n)
        })
        .await;
    for (kind, n) in want_now {
        assert_eq!(count(&got, kind), n, "{kind}");
    }
    // Real-time signatures, checked by an independent implementation.
    let secret = secret_of(&secret_file(&gw));
    verify_with_standardwebhooks(
        "every_event_type_fires_with_its_data_and_a_valid_signature",
        &secret,
        &got,
    );

    let one = |kind: &str| {
        let all = of_type(&got, kind);
        assert!(!all.is_empty(), "{kind}");
        all[0].clone()
    };
    let created = one("token.created");
    assert_eq!(created["data"]["name"], "ci");
    assert_eq!(created["data"]["id"], id.as_str());
    assert_eq!(created["data"]["description"], "build bot");
    assert_eq!(created["data"]["access"], json!([SD]));
    assert_eq!(created["timestamp"], now.rfc3339());
    assert_eq!(
        one("token.expiring")["data"]["expires_at"],
        expires.rfc3339()
    );
    assert_eq!(one("ip.first_seen")["data"]["ip"], "127.0.0.1");
    assert_eq!(
        one("token.updated")["data"]["description"],
        json!({"from": "build bot", "to": "release bot"})
    );
    assert_eq!(one("token.regenerated")["data"]["grace"], "1h");
    assert_eq!(one("ip.blocked")["data"]["ips"], json!(["127.0.0.1"]));
    assert_eq!(one("ip.unblocked")["data"]["ips"], json!(["127.0.0.1"]));
    let denied = one("ip.denied");
    assert_eq!(denied["data"]["ip"], "127.0.0.1");
    assert_eq!(denied["data"]["error"], "ip_blocked");
    assert_eq!(denied["data"]["name"], "ci");
    let reasons: Vec<Value> = of_type(&got, "token.deactivated")
        .iter()
        .map(|e| json!([e["data"]["name"], e["data"]["reason"]]))
        .collect();
    assert_eq!(
        reasons,
        [json!(["ci", "admin"]), json!(["leak", "revoked"])]
    );
    assert_eq!(one("token.activated")["data"]["reason"], "admin");
    let failures = one("auth.failures");
    assert_eq!(failures["data"], json!({"ip": "127.0.0.1"}));
    let deleted = one("token.deleted");
    assert_eq!(
        (&deleted["data"]["name"], &deleted["data"]["reason"]),
        (&json!("leak"), &json!("admin"))
    );

    // Each event once: every webhook-id delivered exactly once.
    let mut ids: HashMap<String, usize> = HashMap::new();
    for d in rx.got() {
        *ids.entry(d.id).or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    // The deliveries list shows each as delivered, with only scheme, host and port.
    let list = recorded(&gw, ids.len() as i64).await;
    assert_eq!(list.len(), ids.len());
    for d in &list {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["url"], format!("https://127.0.0.1:{}", rx.addr.port()));
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["response_status"], 204);
        assert_eq!(d["next_attempt_at"], Value::Null);
    }

    // The idle policy and expiry, by the sweep: `ci` expires (3 d), `old` lapses at 30 d
    // and is deleted at 90 d.
    let before = got.len();
    gw.create_token("old", &[SD]).await;
    gw.clock.advance(Duration::from_secs(31 * 86_400));
    gw.gateway().sweeper.sweep_once().await.unwrap();
    gw.clock.advance(Duration::from_secs(60 * 86_400));
    gw.gateway().sweeper.sweep_once().await.unwrap();
    let got = rx
        .until("the sweep's events", WAIT, |g| {
            let later = &g[before.min(g.len())..];
            count(later, "token.deactivated") >= 3 && count(later, "token.deleted") >= 2
        })
        .await;
    let later = &got[before..];
    let pairs = |kind: &str| -> Vec<Value> {
        let mut v: Vec<Value> = of_type(later, kind)
            .iter()
            .map(|e| json!([e["data"]["name"], e["data"]["reason"]]))
            .collect();
        v.sort_by_key(|x| x.to_string());
        v
    };
    // `ci` lapsed both ways (expired at 3 d, idle at 30 d): one event each.
    assert_eq!(
        pairs("token.deactivated"),
        [
            json!(["ci", "expired"]),
            json!(["ci", "idle"]),
            json!(["old", "idle"])
        ]
    );
    assert_eq!(
        pairs("token.deleted"),
        [json!(["ci", "idle"]), json!(["old", "idle"])]
    );
    // Signed at the (test) clock's time of each attempt.
    verify_with_standardwebhooks(
        "every_event_type_fires_with_its_data_and_a_valid_signature",
        &secret,
        later,
    );

    // No body ever holds a secret, nor the endpoint's path.
    for d in rx.got() {
        for s in &secrets {
            assert!(!d.body.contains(s.as_str()), "a secret in {}", d.body);
        }
        assert!(!d.body.contains("p4th-s3cret"));
        assert_eq!(d.content_type, "application/json");
        assert!(d.id.starts_with("msg_"), "{}", d.id);
    }
    // Rows delivered longer ago than webhooks.retention (30 d) are pruned: the clock is 91 d
    // on, and only the sweep's events were delivered since.
    let cutoff = gw.clock.now().minus(Duration::from_secs(30 * 86_400));
    let left = eventually("old deliveries pruned", WAIT, || async {
        gw.gateway().kick_webhooks();
        let l = deliveries(&gw).await;
        l.iter()
            .all(|d| {
                d["last_attempt_at"]
                    .as_str()
                    .is_none_or(|t| Timestamp::parse_rfc3339(t).unwrap() >= cutoff)
            })
            .then_some(l)
    })
    .await
    .0;
    assert!(
        left.iter()
            .all(|d| !ids.contains_key(d["id"].as_str().unwrap())),
        "the first events' rows are gone: {left:?}"
    );
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_again_with_the_same_id_and_a_fresh_signature() {
    let rx = Receiver::start().await;
    rx.script(&[500, 503, 404]);
    let gw = TestGateway::builder()
        .configure(|c| endpoint(c, &rx, &["token.created"]))
        .start()
        .await;
    gw.create_token("ci", &[SD]).await;
    rx.until("the first attempt", WAIT, |g| g.len() == 1).await;
    let list = recorded(&gw, 1).await;
    assert_eq!(list[0]["status"], "pending");
    assert_eq!(list[0]["attempts"], 1);
    assert_eq!(list[0]["response_status"], 500);
    // Retried after about 5 s, 1 min, 5 min (±20 %): not before the earliest, by the latest.
    for (i, (early, late)) in [(3, 3), (47, 25), (239, 122)].into_iter().enumerate() {
        gw.clock.advance(Duration::from_secs(early));
        // Nothing is due yet: a round now sends nothing (and neither does the background
        // one, which sees the same clock).
        assert_eq!(gw.gateway().deliver_due_webhooks().await, 0);
        assert_eq!(rx.got().len(), i + 1);
        gw.clock.advance(Duration::from_secs(late));
        gw.gateway().kick_webhooks();
        rx.until("the retry", WAIT, |g| g.len() == i + 2).await;
        recorded(&gw, i as i64 + 2).await;
    }
    let got = rx.got();
    assert_eq!(
        got.iter().map(|d| d.answered).collect::<Vec<_>>(),
        [500, 503, 404, 204]
    );
    assert!(
        got.iter().all(|d| d.id == got[0].id),
        "one webhook-id for every attempt"
    );
    assert!(got.iter().all(|d| d.body == got[0].body));
    let stamps: Vec<i64> = got.iter().map(|d| d.timestamp.parse().unwrap()).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "signed afresh: {stamps:?}"
    );
    verify_with_standardwebhooks(
        "a_failing_receiver_gets_the_event_again_with_the_same_id_and_a_fresh_signature",
        &secret_of(&secret_file(&gw)),
        &got,
    );
    let list = deliveries(&gw).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], got[0].id.as_str());
    assert_eq!(list[0]["type"], "token.created");
    assert_eq!(list[0]["status"], "delivered");
    assert_eq!(list[0]["attempts"], 4);
    assert_eq!(list[0]["response_status"], 204);

    // The CLI shows the same (off this thread: the gateway answers on it).
    let admin_url = format!("http://{}", gw.admin);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["--admin-url", &admin_url, "webhook", "deliveries"])
            .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("CREATED") && lines[0].contains("ATTEMPTS"),
        "{text}"
    );
    assert!(
        lines[1].contains("token.created") && lines[1].contains("delivered"),
        "{text}"
    );
    assert!(
        lines[1].contains(&got[0].id) && !text.contains("p4th-s3cret"),
        "{text}"
    );
    let metrics = gw.admin(Method::GET, "/metrics", None).await.text();
    assert!(
        metrics.contains("tokengate_webhook_attempts_total{outcome=\"retrying\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tokengate_webhook_attempts_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_410_fails_at_once_a_redirect_is_not_followed_and_max_age_ends_the_retries() {
    let gone = Receiver::start().await;
    gone.always(Some(410));
    let down = Receiver::start().await;
    down.always(Some(500));
    let moved = Receiver::start().await;
    moved.always(Some(302));
    let gw = TestGateway::builder()
        .configure(|c| {
            endpoint(c, &gone, &["token.*"]);
            endpoint(c, &down, &["token.created"]);
            endpoint(c, &moved, &["token.created"]);
            c.webhooks.max_age = Duration::from_secs(50);
        })
        .start()
        .await;
    gw.create_token("ci", &[SD]).await;
    gone.until("the 410", WAIT, |g| g.len() == 1).await;
    down.until("the first failure", WAIT, |g| g.len() == 1)
        .await;
    moved.until("the redirect", WAIT, |g| g.len() == 1).await;
    let list = recorded(&gw, 3).await;
    // A 3xx is a failure like any other (never followed): retried later.
    let redirected: Vec<&Value> = list
        .iter()
        .filter(|d| d["url"] == format!("https://127.0.0.1:{}", moved.addr.port()))
        .collect();
    assert_eq!(redirected.len(), 1);
    assert_eq!(redirected[0]["status"], "pending");
    assert_eq!(redirected[0]["response_status"], 302);
    assert_ne!(redirected[0]["next_attempt_at"], Value::Null);
    moved.always(None);
    // Retried at ~5 s; the next (48 s or more after that) would pass max_age (50 s): failed.
    gw.clock.advance(Duration::from_secs(7));
    gw.gateway().kick_webhooks();
    down.until("the second failure", WAIT, |g| g.len() == 2)
        .await;
    moved
        .until("the redirected delivery's retry", WAIT, |g| g.len() == 2)
        .await;
    let list = eventually("both deliveries failed", WAIT, || async {
        let l = deliveries(&gw).await;
        let failed = l.iter().filter(|d| d["status"] == "failed").count();
        (failed == 2 && l.len() == 3).then_some(l)
    })
    .await
    .0;
    let by_url: HashMap<String, &Value> = list
        .iter()
        .map(|d| (d["url"].as_str().unwrap().to_string(), d))
        .collect();
    let g = by_url[&format!("https://127.0.0.1:{}", gone.addr.port())];
    assert_eq!(
        (g["attempts"].as_i64(), g["response_status"].as_i64()),
        (Some(1), Some(410))
    );
    let d = by_url[&format!("https://127.0.0.1:{}", down.addr.port())];
    assert_eq!(
        (d["attempts"].as_i64(), d["response_status"].as_i64()),
        (Some(2), Some(500))
    );
    assert_eq!(d["next_attempt_at"], Value::Null);
    gw.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        gw.gateway().deliver_due_webhooks().await,
        0,
        "nothing more is sent"
    );
    assert_eq!(
        (gone.got().len(), down.got().len(), moved.got().len()),
        (1, 2, 2)
    );
}

#[tokio::test]
async fn ip_denied_is_sent_once_per_token_ip_and_hour_and_at_most_100_per_token() {
    let up = Upstream::start().await;
    let rx = Receiver::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .configure(|c| {
            endpoint(c, &rx, &["ip.denied"]);
            c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .start()
        .await;
    let (secret, _) = gw
        .create_token_with(json!({"name": "ci", "access": [SD], "allowed_ips": ["10.0.0.0/8"]}))
        .await;
    let from = |ip: String| {
        let secret = secret.clone();
        let gw = &gw;
        async move {
            gw.proxy_req(
                Request::get("/sd/x")
                    .header("authorization", format!("Bearer {secret}"))
                    .header("x-forwarded-for", ip)
                    .body(Full::default())
                    .unwrap(),
            )
            .await
        }
    };
    // One IP refused five times in each of two flushes: one event.
    for _ in 0..2 {
        for _ in 0..5 {
            from("198.51.100.7".into())
                .await
                .expect(403, Some("ip_not_allowed"));
        }
        flush(&gw).await;
    }
    assert_eq!(
        deliveries(&gw).await.len(),
        1,
        "once per token, IP and hour"
    );
    // 150 more client IPs outside the allow-list, in two flushes: 99 more events.
    for round in 0..2 {
        for i in 0..75 {
            from(format!("192.0.2.{}", round * 75 + i + 1))
                .await
                .expect(403, Some("ip_not_allowed"));
        }
        flush(&gw).await;
    }
    let list = deliveries(&gw).await;
    assert_eq!(list.len(), 100, "at most 100 per token per hour");
    assert!(list.iter().all(|d| d["type"] == "ip.denied"));
    let got = rx.until("100 deliveries", WAIT, |g| g.len() == 100).await;
    assert_eq!(
        got.iter()
            .filter(|d| d.json()["data"]["ip"] == "198.51.100.7")
            .count(),
        1
    );
    assert!(got
        .iter()
        .all(|d| d.json()["data"]["error"] == "ip_not_allowed"));
    // The next hour has a budget again.
    gw.clock.advance(Duration::from_secs(3600));
    from("198.51.100.7".into())
        .await
        .expect(403, Some("ip_not_allowed"));
    flush(&gw).await;
    rx.until("the next hour's ip.denied", WAIT, |g| g.len() == 101)
        .await;
}

#[tokio::test]
async fn two_postgres_instances_deliver_each_event_once() {
    let test = "two_postgres_instances_deliver_each_event_once";
    let Some(base) = postgres_url(test) else {
        return;
    };
    let schema = PgSchema::create(&base).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let up = Upstream::start().await;
    let configure = |c: &mut Config| {
        endpoint(c, &rx, &["token.*", "ip.first_seen", "ip.denied"]);
        c.webhooks.endpoints[0].secret_file = dir.path().join("webhook.secret");
    };

    // With a shared store, a missing secret is a start-up error, not a new secret.
    let failing = TestGateway::builder()
        .postgres(&schema)
        .configure(configure);
    let err = tokengate::app::Gateway::start(
        failing.config().clone(),
        tokengate::app::StartOptions {
            clock: std::sync::Arc::new(tokengate::clock::SystemClock),
            admin_key: Some(ADMIN_KEY.into()),
        },
    )
    .await
    .err()
    .expect("no secret file: start-up fails");
    let text = format!("{err:#}");
    assert!(
        text.contains("webhooks.endpoints[0].secret_file") && text.contains("does not exist"),
        "{text}"
    );
    assert!(!dir.path().join("webhook.secret").exists());
    drop(failing);
    std::fs::write(dir.path().join("webhook.secret"), secret_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(dir.path().join("webhook.secret"), private).unwrap();
    }

    let a = TestGateway::builder()
        .postgres(&schema)
        .route("/sd/", SD, up.addr)
        .configure(configure)
        .start()
        .await;
    let b = a.another_instance().await;
    // 40 changes, alternating instances; both dispatchers poll the one outbox.
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        gw.create_token(&format!("t{i}"), &[SD]).await;
        gw.admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": [format!("t{i}")]})),
        )
        .await
        .expect(200, None);
    }
    let got = rx.until("40 events", WAIT, |g| g.len() >= 40).await;
    // Both instances run more rounds: nothing is due any more, so nothing is sent again.
    for _ in 0..3 {
        assert_eq!(a.gateway().deliver_due_webhooks().await, 0);
        assert_eq!(b.gateway().deliver_due_webhooks().await, 0);
    }
    assert_eq!(rx.got().len(), got.len());
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for d in &got {
        *ids.entry(d.id.as_str()).or_default() += 1;
    }
    assert_eq!(ids.len(), 40);
    assert!(ids.values().all(|n| *n == 1), "duplicate attempts: {ids:?}");
    assert_eq!(count(&got, "token.created"), 20);
    assert_eq!(count(&got, "token.deactivated"), 20);
    verify_with_standardwebhooks(test, secret_key, &got);
    let list = deliveries(&b).await;
    assert_eq!(list.len(), 40);
    assert!(list
        .iter()
        .all(|d| d["status"] == "delivered" && d["attempts"] == 1));

    // Usage events across instances: both see a first use from 127.0.0.1 and flush at once,
    // both refuse it once blocked; each event is written once (the flushes lock the token).
    let (secret, _) = a.create_token("shared", &[SD]).await;
    eventually("b knows the token", WAIT, || async {
        (b.get("/sd/x", Some(&secret)).await.status == 200).then_some(())
    })
    .await;
    a.get("/sd/x", Some(&secret)).await.expect(200, None);
    tokio::join!(flush(&a), flush(&b));
    a.admin(
        Method::POST,
        "/v1/tokens/shared/ips/block",
        Some(json!({"ips": ["127.0.0.1"]})),
    )
    .await
    .expect(200, None);
    eventually("b sees the block", WAIT, || async {
        (b.get("/sd/x", Some(&secret)).await.status == 403).then_some(())
    })
    .await;
    a.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    tokio::join!(flush(&a), flush(&b));
    rx.until("the usage events", WAIT, |g| {
        count(g, "ip.first_seen") >= 1 && count(g, "ip.denied") >= 1
    })
    .await;
    for _ in 0..2 {
        assert_eq!(a.gateway().deliver_due_webhooks().await, 0);
        assert_eq!(b.gateway().deliver_due_webhooks().await, 0);
    }
    let got = rx.got();
    assert_eq!(
        count(&got, "ip.first_seen"),
        1,
        "one first use, two instances"
    );
    assert_eq!(count(&got, "ip.denied"), 1, "one refused IP, two instances");
    let denied = &of_type(&got, "ip.denied")[0];
    assert_eq!(denied["data"]["name"], "shared");
    assert_eq!(denied["data"]["error"], "ip_blocked");
    assert_eq!(of_type(&got, "ip.first_seen")[0]["data"]["ip"], "127.0.0.1");
    verify_with_standardwebhooks(test, secret_key, &got);
    drop(b);
}

/// The outbox rows are in the change's own transaction: when they cannot be written (a
/// trigger refuses them here), the change is refused too, and nothing of it remains.
#[tokio::test]
async fn a_change_whose_event_cannot_be_written_is_not_made() {
    let rx = Receiver::start().await;
    let gw = TestGateway::builder()
        .configure(|c| endpoint(c, &rx, &["token.*"]))
        .start()
        .await;
    let (secret, _) = gw.create_token("ci", &[SD]).await;
    rx.until("token.created", WAIT, |g| g.len() == 1).await;
    let tokengate::config::StoreUrl::Sqlite(path) = &gw.config.store.url else {
        panic!("the test gateway uses SQLite");
    };
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TRIGGER no_outbox BEFORE INSERT ON webhook_outbox
         BEGIN SELECT RAISE(ABORT, 'outbox refused by the test'); END;",
    )
    .unwrap();
    gw.patch_token("ci", json!({"description": "changed"}))
        .await
        .expect(503, Some("store_unavailable"));
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["ci"]})),
    )
    .await
    .expect(503, Some("store_unavailable"));
    revoke(&gw, &secret)
        .await
        .expect(503, Some("store_unavailable"));
    let t = gw.token("ci").await;
    assert_eq!(
        (&t["description"], &t["status"]),
        (&Value::Null, &json!("active"))
    );
    let audit = gw.admin(Method::GET, "/v1/audit", None).await.json();
    assert_eq!(
        audit["entries"].as_array().unwrap().len(),
        1,
        "only the create: {audit}"
    );
    db.execute_batch("DROP TRIGGER no_outbox").unwrap();
    gw.patch_token("ci", json!({"description": "changed"}))
        .await
        .expect(200, None);
    let got = rx.until("token.updated", WAIT, |g| g.len() == 2).await;
    assert_eq!(got[1].event_type(), "token.updated");
}

/// An instance that claimed a row and died leaves it to another once its lease runs out;
/// a result it reports after that is not recorded.
#[tokio::test]
async fn a_lease_that_ran_out_is_taken_over_and_a_late_result_is_not_recorded() {
    use tokengate::events::{AttemptResult, DeliveryStatus};
    let rx = Receiver::start().await;
    rx.always(Some(503));
    let gw = TestGateway::builder()
        .configure(|c| endpoint(c, &rx, &["token.created"]))
        .start()
        .await;
    gw.create_token("ci", &[SD]).await;
    rx.until("the first attempt", WAIT, |g| g.len() == 1).await;
    recorded(&gw, 1).await;
    // "dead" claims the retry once it is due, and never reports.
    gw.clock.advance(Duration::from_secs(7));
    let key = tokengate::events::signing::SigningKey::parse(&secret_of(&secret_file(&gw)))
        .unwrap()
        .endpoint_key(&rx.url().parse::<http::Uri>().unwrap().to_string());
    let store = gw.gateway().store.clone();
    let (now, lease) = (gw.clock.now(), gw.clock.now().plus(Duration::from_secs(60)));
    let (rows, pending) = store
        .claim_deliveries("dead", &key, now, lease, 16)
        .await
        .unwrap();
    assert_eq!((rows.len(), pending), (1, 1));
    assert_eq!(
        gw.gateway().deliver_due_webhooks().await,
        0,
        "leased to another"
    );
    assert_eq!(rx.got().len(), 1);
    // Its lease runs out: this instance takes the row over and delivers it.
    rx.always(None);
    gw.clock.advance(Duration::from_secs(61));
    gw.gateway().kick_webhooks();
    rx.until("the delivery", WAIT, |g| g.len() == 2).await;
    recorded(&gw, 2).await;
    let late = AttemptResult {
        at: gw.clock.now(),
        status: DeliveryStatus::Failed,
        next_attempt_at: None,
        response_status: Some(500),
        error: Some("late".into()),
    };
    assert!(!store
        .finish_delivery("dead", lease, &rows[0].id, &late)
        .await
        .unwrap());
    let list = deliveries(&gw).await;
    assert_eq!(
        (&list[0]["status"], &list[0]["attempts"]),
        (&json!("delivered"), &json!(2))
    );
}

/// Rows of an endpoint removed from the config are not left pending for ever: once older than
/// `max_age` they fail, and `retention` later they are pruned (the hourly tidy runs without
/// any endpoint too).
#[tokio::test]
async fn the_rows_of_a_removed_endpoint_fail_after_max_age_and_are_pruned() {
    let rx = Receiver::start().await;
    rx.always(Some(503));
    let mut gw = TestGateway::builder()
        .configure(|c| endpoint(c, &rx, &["token.created"]))
        .start()
        .await;
    gw.create_token("ci", &[SD]).await;
    rx.until("the first attempt", WAIT, |g| g.len() == 1).await;
    recorded(&gw, 1).await;
    gw.config.webhooks.endpoints.clear();
    gw.restart().await;
    gw.clock.advance(Duration::from_secs(25 * 3600));
    let list = eventually("the orphaned row failed", WAIT, || async {
        let l = deliveries(&gw).await;
        (l[0]["status"] == "failed").then_some(l)
    })
    .await
    .0;
    assert_eq!(list[0]["attempts"], 1);
    gw.clock.advance(Duration::from_secs(31 * 86_400));
    eventually("the failed row pruned", WAIT, || async {
        deliveries(&gw).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(rx.got().len(), 1);
}
