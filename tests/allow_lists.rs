//! Per-token allow-lists (SPEC §1 `allowed_ips`, §2 row 9a), on both stores: IPs and CIDRs,
//! canonicalised (IPv4-mapped included), a client outside every entry refused 403
//! `ip_not_allowed` and counted in its IP's `denied`, a block winning over the list, and an
//! X-Forwarded-For from a peer that is not a trusted proxy never getting inside.

#[macro_use]
mod support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const SD: &str = "security-director";

/// A proxied GET claiming `xff` as the client (believed only from a trusted proxy).
async fn get_as(gw: &TestGateway, secret: &str, xff: &str) -> Resp {
    gw.proxy_req(
        Request::get("/sd/x")
            .header("authorization", format!("Bearer {secret}"))
            .header("x-forwarded-for", xff)
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await
}

fn record<'a>(ips: &'a [Value], ip: &str) -> &'a Value {
    ips.iter()
        .find(|r| r["ip"] == ip)
        .unwrap_or_else(|| panic!("no record of {ip} in {ips:?}"))
}

async fn only_listed_clients_get_through(postgres: bool, test: &str) {
    let Some((_up, gw, _schema)) = gateway_on(postgres, test, |c| {
        c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
    else {
        return;
    };
    let (secret, v) = gw
        .create_token_with(json!({
            "name": "feed",
            "access": [SD],
            "allowed_ips": ["198.51.100.7", "10.1.0.0/16", "::ffff:192.0.2.9", "198.51.100.7"],
        }))
        .await;
    // Canonical: IPv4-mapped as IPv4, duplicates folded.
    assert_eq!(
        v["allowed_ips"],
        json!(["198.51.100.7", "10.1.0.0/16", "192.0.2.9"]),
        "{v}"
    );
    get_as(&gw, &secret, "198.51.100.7").await.expect(200, None);
    get_as(&gw, &secret, "10.1.200.9").await.expect(200, None);
    get_as(&gw, &secret, "::ffff:192.0.2.9")
        .await
        .expect(200, None);
    for outside in ["198.51.100.8", "10.2.0.1", "2001:db8::1"] {
        get_as(&gw, &secret, outside)
            .await
            .expect(403, Some("ip_not_allowed"));
    }
    // The refusal is counted in that IP's record, and is not a use.
    let ips = gw.ips("feed").await;
    let outside = record(&ips, "198.51.100.8");
    assert_eq!(
        (&outside["requests"], &outside["denied"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(record(&ips, "198.51.100.7")["requests"], 1);

    // A block wins over the list.
    gw.admin(
        Method::POST,
        "/v1/tokens/feed/ips/block",
        Some(json!({"ips": ["198.51.100.7"]})),
    )
    .await
    .expect(200, None);
    get_as(&gw, &secret, "198.51.100.7")
        .await
        .expect(403, Some("ip_blocked"));

    // Replaced, then cleared (any client IP), effective for the very next request.
    let patch = |list: Value| gw.patch_token("feed", json!({ "allowed_ips": list }));
    patch(json!(["10.2.0.0/16"])).await.expect(200, None);
    get_as(&gw, &secret, "10.2.0.1").await.expect(200, None);
    get_as(&gw, &secret, "10.1.200.9")
        .await
        .expect(403, Some("ip_not_allowed"));
    let r = patch(Value::Null).await;
    r.expect(200, None);
    assert_eq!(r.json()["allowed_ips"], Value::Null);
    get_as(&gw, &secret, "10.1.200.9").await.expect(200, None);
    let audit = gw
        .admin(Method::GET, "/v1/audit?token=feed", None)
        .await
        .json();
    let last = &audit["entries"][0];
    assert_eq!(
        (&last["action"], &last["details"]["allowed_ips"]),
        (
            &json!("update"),
            &json!({"from": ["10.2.0.0/16"], "to": null})
        ),
        "{audit}"
    );
}

async fn a_forwarded_for_from_an_untrusted_peer_cannot_get_inside(postgres: bool, test: &str) {
    // No trusted proxies: the client IP is the TCP peer (127.0.0.1), whatever XFF says.
    let Some((_up, mut gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let (secret, _) = gw
        .create_token_with(json!({"name": "feed", "access": [SD], "allowed_ips": ["198.51.100.7"]}))
        .await;
    get_as(&gw, &secret, "198.51.100.7")
        .await
        .expect(403, Some("ip_not_allowed"));
    let ips = gw.ips("feed").await;
    assert_eq!(record(&ips, "127.0.0.1")["denied"], 1, "{ips:?}");
    assert!(ips.iter().all(|r| r["ip"] != "198.51.100.7"), "{ips:?}");
    // The loopback peer itself, once listed, is let in; the list survives a restart.
    gw.patch_token("feed", json!({"allowed_ips": ["127.0.0.0/8"]}))
        .await
        .expect(200, None);
    gw.restart().await;
    assert_eq!(
        gw.token("feed").await["allowed_ips"],
        json!(["127.0.0.0/8"])
    );
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
}

on_both_stores!("allow_lists":
    only_listed_clients_get_through,
    a_forwarded_for_from_an_untrusted_peer_cannot_get_inside,
);

#[tokio::test]
async fn bad_allow_lists_are_refused_naming_the_field() {
    let gw = TestGateway::builder().start().await;
    let too_many: Vec<String> = (0..101).map(|i| format!("10.0.0.{i}")).collect();
    for list in [
        json!([]),
        json!(too_many),
        json!(["not-an-ip"]),
        json!(["10.0.0.0/33"]),
        // Host bits set: refused like a block entry, with the network it probably meant.
        json!(["10.1.2.3/16"]),
        json!("10.0.0.1"),
        json!([7]),
    ] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": "x", "access": [SD], "allowed_ips": list})),
            )
            .await;
        r.expect(400, Some("invalid_request"));
        assert_eq!(r.json()["field"], "allowed_ips", "{r}");
    }
    // 100 entries are fine.
    let hundred: Vec<String> = (0..100).map(|i| format!("10.0.0.{i}")).collect();
    gw.admin(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "x", "access": [SD], "allowed_ips": hundred})),
    )
    .await
    .expect(201, None);
}
