//! The operator's own access types (SPEC §1, §4, §6 `[[access_types]]`), on both stores:
//! declared in the config, listed by `GET /v1/access-types`, checked at creation, granted by
//! routes; a type removed from the config stays on the tokens that hold it, grants nothing
//! and may be dropped by a PATCH, never added back.

#[macro_use]
mod support;

use std::sync::Arc;

use http::Method;
use serde_json::json;
use support::*;

async fn start(
    postgres: bool,
    test: &str,
) -> Option<(Upstream, TestGateway, Option<Arc<PgSchema>>)> {
    let up = Upstream::start().await;
    let b = TestGateway::builder()
        .configure(|c| {
            c.access_types = access_types(&[("reports", "Reports API"), ("billing", "Billing")])
        })
        .route("/reports/", "reports", up.addr)
        .route("/billing/", "billing", up.addr);
    let (gw, schema) = start_on(postgres, test, b).await?;
    Some((up, gw, schema))
}

fn access_header(up: &Upstream) -> Option<String> {
    up.last()
        .headers
        .get("x-tokengate-access")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

async fn a_custom_access_type_works_end_to_end(postgres: bool, test: &str) {
    let Some((up, gw, _schema)) = start(postgres, test).await else {
        return;
    };
    // Listed in config order, with their labels.
    let r = gw.admin(Method::GET, "/v1/access-types", None).await;
    r.expect(200, None);
    assert_eq!(
        r.json(),
        json!({"access_types": [
            {"name": "reports", "label": "Reports API"},
            {"name": "billing", "label": "Billing"},
        ]}),
        "{r}"
    );
    // Creation reads the configured set: the seed's types are not configured here.
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "x", "access": ["security-director"]})),
        )
        .await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(r.json()["field"], "access", "{r}");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("reports, billing"), "{message}");

    let (reports, v) = gw.create_token("reporter", &["reports", "reports"]).await;
    assert_eq!(v["access"], json!(["reports"]));
    let (both, v) = gw.create_token("both", &["reports", "billing"]).await;
    assert_eq!(v["access"], json!(["billing", "reports"]), "sorted");

    gw.get("/reports/q", Some(&reports)).await.expect(200, None);
    assert_eq!(access_header(&up).as_deref(), Some("reports"));
    gw.get("/billing/q", Some(&reports))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/billing/q", Some(&both)).await.expect(200, None);
    assert_eq!(access_header(&up).as_deref(), Some("billing,reports"));
}

async fn a_removed_type_stays_on_tokens_and_grants_nothing(postgres: bool, test: &str) {
    let Some((up, mut gw, _schema)) = start(postgres, test).await else {
        return;
    };
    let (both, _) = gw.create_token("both", &["reports", "billing"]).await;
    let (only, _) = gw.create_token("only-reports", &["reports"]).await;
    // The operator retires `reports`: its route goes too (a route must name a configured type).
    gw.config.access_types = access_types(&[("billing", "Billing")]);
    gw.config.routes.retain(|r| r.path_prefix == "/billing/");
    let billing = gw.config.access_types.bit("billing").unwrap();
    gw.config.routes[0].access = billing;
    gw.restart().await;

    // Still held, as the API shows it, but it grants nothing.
    assert_eq!(
        gw.token("both").await["access"],
        json!(["billing", "reports"])
    );
    gw.get("/billing/q", Some(&both)).await.expect(200, None);
    assert_eq!(
        access_header(&up).as_deref(),
        Some("billing"),
        "the header names only what the token grants"
    );
    gw.get("/billing/q", Some(&only))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/reports/q", Some(&both))
        .await
        .expect(404, Some("no_route"));

    // A PATCH may keep or drop the removed type, never add it.
    let patch = |name: &str, access: serde_json::Value| {
        let gw = &gw;
        let path = format!("/v1/tokens/{name}");
        async move {
            gw.admin(Method::PATCH, &path, Some(json!({ "access": access })))
                .await
        }
    };
    let r = patch("both", json!(["reports", "billing"])).await;
    r.expect(200, None);
    let r = patch("both", json!(["billing"])).await;
    r.expect(200, None);
    assert_eq!(r.json()["access"], json!(["billing"]));
    let r = patch("both", json!(["billing", "reports"])).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(r.json()["field"], "access", "{r}");
    assert_eq!(gw.token("both").await["access"], json!(["billing"]));
    // The refused patch changed nothing else either, and wrote no audit entry.
    let audit = gw
        .admin(Method::GET, "/v1/audit?token=both", None)
        .await
        .json();
    let updates = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "update")
        .count();
    assert_eq!(updates, 2, "{audit}");
    let r = patch("only-reports", json!(["billing"])).await;
    r.expect(200, None);
    gw.get("/billing/q", Some(&only)).await.expect(200, None);
}

on_both_stores!("access_types":
    a_custom_access_type_works_end_to_end,
    a_removed_type_stays_on_tokens_and_grants_nothing,
);
