//! Token expiry (SPEC §1, §2 row 7a, §4) on both stores: the boundary to the millisecond with
//! the test clock, the proxy's 401 `token_expired` (not a failed authentication), the
//! effective status, activation refused, PATCH reviving, `lifecycle.max_expiry`, the sweep
//! recording each lapse once, and a restart keeping it. The PostgreSQL variants read
//! `TOKENGATE_TEST_POSTGRES_URL` (see `support::skip`).

#[macro_use]
mod support;

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::{Clock, Timestamp};

const SD: &str = "security-director";
const SECOND: i64 = 1000;
const HOUR: i64 = 3600 * SECOND;

fn now(gw: &TestGateway) -> i64 {
    gw.clock.now().0
}

fn set(gw: &TestGateway, ms: i64) {
    gw.clock.set(Timestamp(ms));
}

/// Creates token `name` that expires `expires_in` from now: its object and its secret.
async fn create_expiring(gw: &TestGateway, name: &str, expires_in: &str) -> (Value, String) {
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": name, "access": [SD], "expires_in": expires_in})),
        )
        .await;
    r.expect(201, None);
    let created = r.json();
    let secret = created["token"].as_str().unwrap().to_string();
    (created, secret)
}

async fn patch(gw: &TestGateway, name: &str, body: Value) -> Resp {
    gw.admin(Method::PATCH, &format!("/v1/tokens/{name}"), Some(body))
        .await
}

async fn set_status(gw: &TestGateway, what: &str, names: &[&str]) -> Resp {
    gw.admin(
        Method::POST,
        &format!("/v1/tokens/{what}"),
        Some(json!({ "names": names })),
    )
    .await
}

async fn boundaries_refusals_and_revival(postgres: bool, test: &str) {
    let Some((up, gw, _schema)) =
        gateway_on(postgres, test, |c| c.proxy.failed_auth_limit = 3).await
    else {
        return;
    };
    let t0 = now(&gw);
    let (created, secret) = create_expiring(&gw, "feed", "1h").await;
    let expires = Timestamp(t0 + HOUR);
    assert_eq!(created["expires_at"], expires.rfc3339(), "{created}");
    for k in ["previous_secret_expires_at", "rate_limit", "allowed_ips"] {
        assert_eq!(
            created[k],
            Value::Null,
            "{k} is present and null: {created}"
        );
    }
    let (other, _) = gw.create_token("other", &[SD]).await;

    // One millisecond before: served, and active.
    set(&gw, t0 + HOUR - 1);
    gw.get("/sd/a", Some(&secret)).await.expect(200, None);
    assert_eq!(gw.token("feed").await["status"], "active");

    // At expires_at: refused with 401 token_expired, and shown inactive/expired.
    set(&gw, t0 + HOUR);
    for _ in 0..5 {
        let r = gw.get("/sd/b", Some(&secret)).await;
        r.expect(401, Some("token_expired"));
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                "Bearer realm=\"tokengate\", error=\"invalid_token\", \
                 error_description=\"the token has expired\""
            )
        );
    }
    // Five refusals over a limit of 3, yet not failed authentications: the same client IP
    // is not locked out.
    gw.get("/sd/c", Some(&other)).await.expect(200, None);
    let t = gw.token("feed").await;
    assert_eq!(
        (&t["status"], &t["inactive_reason"], &t["inactive_at"]),
        (&json!("inactive"), &json!("expired"), &Value::Null),
        "{t}"
    );
    assert_eq!(
        up.count(),
        2,
        "only the two allowed requests were forwarded"
    );

    // Activation does not lift the expiry: 409, all or nothing.
    let r = set_status(&gw, "activate", &["other", "feed"]).await;
    r.expect(409, Some("token_expired"));
    assert_eq!(r.json()["names"], json!(["feed"]), "{r}");
    // Deactivating an expired token succeeds; expired is still reported first.
    set_status(&gw, "deactivate", &["feed"])
        .await
        .expect(200, None);
    assert_eq!(gw.token("feed").await["inactive_reason"], "expired");

    // A later expires_at lifts the expiry; the admin deactivation remains until activated.
    let later = Timestamp(now(&gw) + 24 * HOUR);
    let r = patch(&gw, "feed", json!({"expires_at": later.rfc3339()})).await;
    r.expect(200, None);
    assert_eq!(
        (&r.json()["status"], &r.json()["inactive_reason"]),
        (&json!("inactive"), &json!("admin")),
        "{r}"
    );
    gw.get("/sd/d", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    set_status(&gw, "activate", &["feed"])
        .await
        .expect(200, None);
    gw.get("/sd/e", Some(&secret)).await.expect(200, None);
    // Cleared with null: never expires.
    let r = patch(&gw, "feed", json!({"expires_at": null})).await;
    r.expect(200, None);
    assert_eq!(r.json()["expires_at"], Value::Null);
    set(&gw, now(&gw) + 10 * 24 * HOUR);
    gw.get("/sd/f", Some(&secret)).await.expect(200, None);

    // The audit records the expiry changes with their values.
    let audit = gw.admin(Method::GET, "/v1/audit?token=feed", None).await;
    audit.expect(200, None);
    let text = audit.json().to_string();
    assert!(text.contains(&later.rfc3339()), "{text}");
}

async fn the_sweep_records_each_lapse_once_and_a_restart_keeps_it(postgres: bool, test: &str) {
    let Some((_up, mut gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let t0 = now(&gw);
    let (_, secret) = create_expiring(&gw, "brief", "10m").await;
    let sweep = |gw: &TestGateway| {
        let s = gw.gateway().sweeper.clone();
        async move { s.sweep_once().await.expect("the sweep succeeds") }
    };
    assert!(sweep(&gw).await.expired.is_empty(), "not expired yet");
    set(&gw, t0 + 11 * 60 * SECOND);
    let out = sweep(&gw).await;
    assert_eq!(
        out.expired
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>(),
        ["brief"],
        "{out:?}"
    );
    assert!(
        sweep(&gw).await.expired.is_empty(),
        "a lapse is recorded once"
    );
    let entries = gw.admin(Method::GET, "/v1/audit?token=brief", None).await;
    let entries = entries.json()["entries"].as_array().unwrap().clone();
    let lapses: Vec<&Value> = entries
        .iter()
        .filter(|e| e["actor"] == "expiry-policy")
        .collect();
    assert_eq!(lapses.len(), 1, "{entries:?}");
    assert_eq!(lapses[0]["action"], "deactivate");
    assert_eq!(lapses[0]["details"]["reason"], "expired");
    // The stored status is untouched: only the clock makes it inactive.
    let t = gw.token("brief").await;
    assert_eq!(t["inactive_reason"], "expired", "{t}");

    // A new expiry can lapse again, and is recorded again.
    let again = Timestamp(now(&gw) + 60 * SECOND);
    patch(&gw, "brief", json!({"expires_at": again.rfc3339()}))
        .await
        .expect(200, None);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    set(&gw, again.0);
    assert_eq!(sweep(&gw).await.expired.len(), 1);

    // After a restart the expiry still holds (it is stored, not only in memory).
    gw.restart().await;
    gw.get("/sd/y", Some(&secret))
        .await
        .expect(401, Some("token_expired"));
    patch(&gw, "brief", json!({"expires_in": "1h"}))
        .await
        .expect(200, None);
    gw.get("/sd/z", Some(&secret)).await.expect(200, None);
}

async fn max_expiry_is_enforced(postgres: bool, test: &str) {
    let Some((_up, gw, _schema)) = gateway_on(postgres, test, |c| {
        c.lifecycle.max_expiry = Some(Duration::from_secs(30 * 86400))
    })
    .await
    else {
        return;
    };
    let create = |body: Value| {
        let gw = &gw;
        async move { gw.admin(Method::POST, "/v1/tokens", Some(body)).await }
    };
    let field = |r: &Resp| r.json()["field"].as_str().unwrap_or_default().to_string();
    let r = create(json!({"name": "a", "access": [SD]})).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(field(&r), "expires_at", "{r}");
    let r = create(json!({"name": "a", "access": [SD], "expires_in": "31d"})).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(field(&r), "expires_in", "{r}");
    let past = Timestamp(now(&gw) - SECOND).rfc3339();
    let r = create(json!({"name": "a", "access": [SD], "expires_at": past})).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(field(&r), "expires_at", "{r}");
    create(json!({"name": "a", "access": [SD], "expires_in": "30d"}))
        .await
        .expect(201, None);
    // A PATCH that does not touch the expiry skips the check; one that clears it fails.
    patch(&gw, "a", json!({"description": "x"}))
        .await
        .expect(200, None);
    let r = patch(&gw, "a", json!({"expires_at": null})).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(field(&r), "expires_at", "{r}");
    let r = patch(&gw, "a", json!({"expires_in": "1d", "expires_at": past})).await;
    r.expect(400, Some("invalid_request"));
}

on_both_stores!(
    "expiry":
    boundaries_refusals_and_revival,
    the_sweep_records_each_lapse_once_and_a_restart_keeps_it,
    max_expiry_is_enforced,
);
