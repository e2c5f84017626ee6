//! Rotation without downtime (SPEC §1, §4): `regenerate` with a `grace` keeps the replaced
//! secret working until `previous_secret_expires_at`, on both stores, across a restart, and on
//! a second instance; a second regenerate ends the first grace; both secrets are uses.

#[macro_use]
mod support;

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::{Clock, Timestamp};

const SD: &str = "security-director";
const HOUR: i64 = 3_600_000;

async fn regenerate(gw: &TestGateway, name: &str, body: Option<Value>) -> Resp {
    gw.admin(Method::POST, &format!("/v1/tokens/{name}/regenerate"), body)
        .await
}

fn secret_of(r: &Resp) -> String {
    r.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret in {r}"))
        .to_string()
}

fn requests(ips: &[Value]) -> u64 {
    ips.iter()
        .map(|i| i["requests"].as_u64().unwrap_or(0))
        .sum()
}

async fn a_grace_keeps_the_old_secret_until_it_ends(postgres: bool, test: &str) {
    let Some((_up, mut gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let t0 = gw.clock.now().0;
    let (old, before) = gw.create_token("feed", &[SD]).await;
    let r = regenerate(&gw, "feed", Some(json!({"grace": "1h"}))).await;
    r.expect(200, None);
    let new = secret_of(&r);
    let until = Timestamp(t0 + HOUR).rfc3339();
    assert_eq!(r.json()["previous_secret_expires_at"], until, "{r}");
    // Regenerate changes neither status, expiry nor the idle clock.
    for k in ["status", "expires_at", "inactive_at", "activated_at"] {
        assert_eq!(r.json()[k], before[k], "{k}: {r}");
    }
    // Both secrets work, and both are uses of the token.
    gw.get("/sd/old", Some(&old)).await.expect(200, None);
    gw.get("/sd/new", Some(&new)).await.expect(200, None);
    assert_eq!(requests(&gw.ips("feed").await), 2);
    let metrics = gw.admin(Method::GET, "/metrics", None).await;
    assert!(
        metrics
            .text()
            .contains("tokengate_previous_secret_uses_total 1"),
        "{}",
        metrics.text()
    );

    // A restart inside the grace keeps it: it is stored, not only in memory.
    gw.restart().await;
    gw.get("/sd/old", Some(&old)).await.expect(200, None);

    // One millisecond before the end it works; at the end the old secret is unknown.
    gw.clock.set(Timestamp(t0 + HOUR - 1));
    gw.get("/sd/old", Some(&old)).await.expect(200, None);
    gw.clock.set(Timestamp(t0 + HOUR));
    gw.get("/sd/old", Some(&old))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/new", Some(&new)).await.expect(200, None);
    assert_eq!(
        gw.token("feed").await["previous_secret_expires_at"],
        Value::Null
    );
}

async fn a_second_regenerate_ends_the_first_grace(postgres: bool, test: &str) {
    let Some((_up, gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let (first, _) = gw.create_token("feed", &[SD]).await;
    let r = regenerate(&gw, "feed", Some(json!({"grace": "2h"}))).await;
    r.expect(200, None);
    let second = secret_of(&r);
    // At most one previous secret works: the newest grace replaces the first.
    let r = regenerate(&gw, "feed", Some(json!({"grace": "1h"}))).await;
    r.expect(200, None);
    let third = secret_of(&r);
    gw.get("/sd/x", Some(&first))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/x", Some(&second)).await.expect(200, None);
    gw.get("/sd/x", Some(&third)).await.expect(200, None);
    // Without a grace, the old secret stops at once, and so does any earlier grace.
    let r = regenerate(&gw, "feed", None).await;
    r.expect(200, None);
    assert_eq!(r.json()["previous_secret_expires_at"], Value::Null, "{r}");
    let fourth = secret_of(&r);
    for gone in [&second, &third] {
        gw.get("/sd/x", Some(gone))
            .await
            .expect(401, Some("invalid_token"));
    }
    gw.get("/sd/x", Some(&fourth)).await.expect(200, None);

    // The grace is bounded by lifecycle.max_rotation_grace (7 days by default).
    let r = regenerate(&gw, "feed", Some(json!({"grace": "8d"}))).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(r.json()["field"], "grace", "{r}");
    for bad in [
        json!({"grace": "soon"}),
        json!({"grace": 5}),
        json!({"graze": "1h"}),
    ] {
        regenerate(&gw, "feed", Some(bad.clone()))
            .await
            .expect(400, Some("invalid_request"));
    }
    // Nothing of the refused calls happened: the fourth secret still works.
    gw.get("/sd/x", Some(&fourth)).await.expect(200, None);
}

/// With PostgreSQL, another instance honours a grace within a second.
#[tokio::test]
async fn a_second_instance_honours_the_grace() {
    let Some((_up, gw, _schema)) = gateway_on(
        true,
        "rotation::a_second_instance_honours_the_grace",
        |_| {},
    )
    .await
    else {
        return;
    };
    let other = gw.another_instance().await;
    let (old, _) = gw.create_token("shared", &[SD]).await;
    eventually(
        "the other instance knows the token",
        Duration::from_secs(2),
        || async { (other.get("/sd/x", Some(&old)).await.status == 200).then_some(()) },
    )
    .await;
    let r = regenerate(&gw, "shared", Some(json!({"grace": "1h"}))).await;
    r.expect(200, None);
    let new = secret_of(&r);
    let (_, took) = eventually(
        "the new secret works there",
        Duration::from_secs(2),
        || async { (other.get("/sd/x", Some(&new)).await.status == 200).then_some(()) },
    )
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    other.get("/sd/x", Some(&old)).await.expect(200, None);
    drop(other);
}

on_both_stores!(
    "rotation":
    a_grace_keeps_the_old_secret_until_it_ends,
    a_second_regenerate_ends_the_first_grace,
);
