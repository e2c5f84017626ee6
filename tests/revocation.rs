//! Public revocation (SPEC §10, §1): `POST /_tokengate/revoke` on the proxy listener (and the
//! forward-auth listener), without the admin key. A reported current secret deactivates its
//! token (`revoked`) at once here and within 1 s on another instance; a previous secret in its
//! grace only ends the grace; anything else changes nothing; the answer is always 202 `{}`.
//! A revoked token cannot be activated until regenerated.

#[macro_use]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const SD: &str = "security-director";

/// A revocation request of `body` (as JSON) to the proxy listener, from `xff` if given.
async fn revoke(gw: &TestGateway, body: Value) -> Resp {
    revoke_raw(gw, Method::POST, "application/json", body.to_string()).await
}

async fn revoke_raw(gw: &TestGateway, method: Method, ctype: &str, body: String) -> Resp {
    gw.proxy_req(
        Request::builder()
            .method(method)
            .uri("/_tokengate/revoke")
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

/// A revocation of `secret` sent straight to `addr` (the forward-auth listener), claiming
/// `xff` as the client when given.
async fn revoke_at(
    gw: &TestGateway,
    addr: std::net::SocketAddr,
    xff: Option<&str>,
    secret: &str,
) -> Resp {
    let mut b = Request::post(format!("http://{addr}/_tokengate/revoke"))
        .header("content-type", "application/json");
    if let Some(ip) = xff {
        b = b.header("x-forwarded-for", ip);
    }
    send(
        &gw.http,
        b.body(Full::new(Bytes::from(
            json!({"tokens": [secret]}).to_string(),
        )))
        .unwrap(),
    )
    .await
}

/// Regenerates `name`'s secret (with `grace`, if any); the new secret.
async fn regenerate(gw: &TestGateway, name: &str, grace: Option<&str>) -> String {
    let r = gw
        .admin(
            Method::POST,
            &format!("/v1/tokens/{name}/regenerate"),
            grace.map(|g| json!({ "grace": g })),
        )
        .await;
    r.expect(200, None);
    r.json()["token"].as_str().unwrap().to_string()
}

async fn activate(gw: &TestGateway, name: &str) -> Resp {
    gw.admin(
        Method::POST,
        "/v1/tokens/activate",
        Some(json!({ "names": [name] })),
    )
    .await
}

#[track_caller]
fn accepted(r: &Resp) {
    assert_eq!(r.status.as_u16(), 202, "{r}");
    assert_eq!(r.text(), "{}", "the answer tells nothing: {r}");
}

async fn audit(gw: &TestGateway, name: &str) -> Vec<Value> {
    let r = gw
        .admin(Method::GET, &format!("/v1/audit?token={name}"), None)
        .await;
    r.expect(200, None);
    r.json()["entries"].as_array().cloned().unwrap()
}

async fn a_reported_secret_deactivates_its_token_at_once(postgres: bool, test: &str) {
    let Some((_up, gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let (secret, _) = gw.create_token("leaked", &[SD]).await;
    let (other, _) = gw.create_token("bystander", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    // No admin key; the current secret among garbage.
    let r = revoke(&gw, json!({"tokens": ["garbage", &secret, "tg_nope"]})).await;
    accepted(&r);
    let t = gw.token("leaked").await;
    assert_eq!(
        (&t["status"], &t["inactive_reason"]),
        (&json!("inactive"), &json!("revoked")),
        "{t}"
    );
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    gw.get("/sd/x", Some(&other)).await.expect(200, None);
    // Audited as the revocation, from the client's address.
    let entries = audit(&gw, "leaked").await;
    let e = &entries[0];
    assert_eq!(
        (
            &e["actor"],
            &e["action"],
            &e["source_ip"],
            &e["details"]["reason"]
        ),
        (
            &json!("revocation"),
            &json!("deactivate"),
            &json!("127.0.0.1"),
            &json!("revoked")
        ),
        "{e}"
    );
    // Reporting it again changes nothing and writes nothing.
    let deactivated = gw.token("leaked").await["deactivated_at"].clone();
    accepted(&revoke(&gw, json!({"tokens": [&secret]})).await);
    assert_eq!(audit(&gw, "leaked").await.len(), entries.len());
    assert_eq!(gw.token("leaked").await["deactivated_at"], deactivated);
    // Unknown and malformed secrets get the same answer and write nothing anywhere.
    let total = |r: Resp| r.json()["entries"].as_array().unwrap().len();
    let before = total(gw.admin(Method::GET, "/v1/audit?limit=1000", None).await);
    let unknown = tokengate::token::Secret::generate();
    accepted(&revoke(&gw, json!({"tokens": [unknown.expose(), "x", ""]})).await);
    assert_eq!(
        total(gw.admin(Method::GET, "/v1/audit?limit=1000", None).await),
        before
    );

    // The reported secret is public: activation waits for a regenerate, which keeps the token
    // inactive and gives the revoked secret no grace, whatever was asked.
    let r = activate(&gw, "leaked").await;
    r.expect(409, Some("token_revoked"));
    assert_eq!(r.json()["names"], json!(["leaked"]));
    let fresh = regenerate(&gw, "leaked", Some("1h")).await;
    let t = gw.token("leaked").await;
    assert_eq!(
        (&t["status"], &t["inactive_reason"]),
        (&json!("inactive"), &json!("admin")),
        "{t}"
    );
    assert_eq!(t["previous_secret_expires_at"], Value::Null, "{t}");
    activate(&gw, "leaked").await.expect(200, None);
    gw.get("/sd/x", Some(&fresh)).await.expect(200, None);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
}

/// A previous secret in its grace only ends the grace; the current secret reported during a
/// grace revokes the token and ends the grace too.
async fn a_previous_secret_only_ends_its_grace(postgres: bool, test: &str) {
    let Some((_up, gw, _schema)) = gateway_on(postgres, test, |_| {}).await else {
        return;
    };
    let (old, _) = gw.create_token("rotating", &[SD]).await;
    let new = regenerate(&gw, "rotating", Some("1h")).await;
    gw.get("/sd/x", Some(&old)).await.expect(200, None);
    accepted(&revoke(&gw, json!({"tokens": [&old]})).await);
    gw.get("/sd/x", Some(&old))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/x", Some(&new)).await.expect(200, None);
    let t = gw.token("rotating").await;
    assert_eq!(
        (&t["status"], &t["previous_secret_expires_at"]),
        (&json!("active"), &Value::Null),
        "{t}"
    );
    let e = &audit(&gw, "rotating").await[0];
    assert_eq!(
        (&e["actor"], &e["action"]),
        (&json!("revocation"), &json!("update")),
        "{e}"
    );
    // Now a grace again, and the current secret reported.
    let newest = regenerate(&gw, "rotating", Some("1h")).await;
    accepted(&revoke(&gw, json!({"tokens": [&newest]})).await);
    gw.get("/sd/x", Some(&new))
        .await
        .expect(401, Some("invalid_token"));
    assert_eq!(gw.token("rotating").await["inactive_reason"], "revoked");
}

on_both_stores!("revocation": a_reported_secret_deactivates_its_token_at_once, a_previous_secret_only_ends_its_grace);

/// With PostgreSQL, another instance refuses the token within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_refuses_a_revoked_token_within_a_second() {
    let test = "another_instance_refuses_a_revoked_token_within_a_second";
    let Some((_up, a, _schema)) = gateway_on(true, test, |_| {}).await else {
        return;
    };
    let b = a.another_instance().await;
    let (secret, v) = a.create_token("shared", &[SD]).await;
    let id = v["id"].as_str().unwrap().to_string();
    eventually("B knows the token", Duration::from_secs(1), || async {
        b.gateway().index.get_by_id(&id).map(|_| ())
    })
    .await;
    b.get("/sd/x", Some(&secret)).await.expect(200, None);
    accepted(&revoke(&a, json!({"tokens": [&secret]})).await);
    let (_, took) = eventually(
        "B refuses the revoked token",
        Duration::from_secs(1),
        || async {
            let r = b.get("/sd/x", Some(&secret)).await;
            (r.status.as_u16() == 403).then_some(())
        },
    )
    .await;
    eprintln!("revocation reached the other instance in {took:?}");
}

#[tokio::test]
async fn malformed_requests_are_refused_and_the_limit_applies_per_ip() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .configure(|c| {
            c.proxy.revoke_limit = 5;
            c.proxy.failed_auth_limit = 2;
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    revoke_raw(&gw, Method::GET, "application/json", String::new())
        .await
        .expect(405, Some("method_not_allowed"));
    revoke_raw(
        &gw,
        Method::POST,
        "text/plain",
        r#"{"tokens":["a"]}"#.into(),
    )
    .await
    .expect(415, Some("unsupported_media_type"));
    revoke_raw(&gw, Method::POST, "application/json", "x".repeat(17 * 1024))
        .await
        .expect(413, Some("payload_too_large"));
    for bad in [
        json!({"tokens": []}),
        json!({"tokens": vec!["a"; 101]}),
        json!({"secrets": ["a"]}),
    ] {
        revoke(&gw, bad).await.expect(400, Some("invalid_request"));
    }
    // Five requests a minute from one address (the 415, 413 and three 400s above count, the
    // 405 does not), then 429 with Retry-After.
    let r = revoke(&gw, json!({"tokens": ["tg_nope"]})).await;
    r.expect(429, Some("too_many_requests"));
    assert!(r.header("retry-after").is_some(), "{r}");
    // None of that was a failed authentication of this address (its limit is 2).
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    gw.clock.advance(Duration::from_secs(61));
    accepted(&revoke(&gw, json!({"tokens": ["tg_nope"]})).await);
    // No admin data on the way: the token is untouched.
    assert_eq!(gw.token("t").await["status"], "active");
}

/// `proxy.revocation = false`: the path is routed like any other.
#[tokio::test]
async fn revocation_can_be_turned_off_on_the_proxy_listener() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/", SD, up.addr)
        .configure(|c| c.proxy.revocation = false)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    revoke(&gw, json!({"tokens": [&secret]}))
        .await
        .expect(401, Some("missing_token"));
    assert_eq!(gw.token("t").await["status"], "active");
}

/// The forward-auth listener answers revocations its trusted callers route to it; the client
/// is the one the caller names.
#[tokio::test]
async fn the_forward_auth_listener_answers_revocations() {
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let addr = gw.forward_auth.unwrap();
    let r = revoke_at(&gw, addr, Some("198.51.100.7"), &secret).await;
    accepted(&r);
    assert_eq!(gw.token("t").await["inactive_reason"], "revoked");
    let e = &audit(&gw, "t").await[0];
    assert_eq!(e["source_ip"], "198.51.100.7", "{e}");
}

/// A WebSocket tunnel opened with a previous secret closes once a revocation ends that grace
/// (the token itself stays active): a reported secret never keeps a tunnel.
#[tokio::test]
async fn a_tunnel_opened_with_a_reported_previous_secret_closes() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .start()
        .await;
    let (old, _) = gw.create_token("t", &[SD]).await;
    regenerate(&gw, "t", Some("1h")).await;
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let req = format!(
        "GET /sd/ws HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {old}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        gw.proxy
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    accepted(&revoke(&gw, json!({"tokens": [&old]})).await);
    assert_eq!(gw.token("t").await["status"], "active");
    let closed = closed_within(&mut s, Duration::from_secs(10))
        .await
        .is_some();
    assert!(
        closed,
        "the tunnel stayed open after its secret's grace ended"
    );
}

/// The limit is per client IP (here through a trusted proxy's X-Forwarded-For), a body over
/// 16 KiB is refused however it is framed, and revocation is never limited by row 2.
#[tokio::test]
async fn the_limit_is_per_client_ip_and_not_the_failed_auth_one() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .configure(|c| {
            c.proxy.revoke_limit = 2;
            c.proxy.failed_auth_limit = 1;
            c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .start()
        .await;
    let from = |ip: &'static str| {
        let gw = &gw;
        async move {
            gw.proxy_req(
                Request::post("/_tokengate/revoke")
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", ip)
                    .body(Full::new(Bytes::from(r#"{"tokens":["tg_nope"]}"#)))
                    .unwrap(),
            )
            .await
        }
    };
    // 198.51.100.1 fails an authentication: over row 2's limit of 1, it can still revoke.
    gw.proxy_req(
        Request::get("/sd/x")
            .header("authorization", "Bearer tg_bad")
            .header("x-forwarded-for", "198.51.100.1")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .expect(401, Some("invalid_token"));
    accepted(&from("198.51.100.1").await);
    accepted(&from("198.51.100.1").await);
    from("198.51.100.1")
        .await
        .expect(429, Some("too_many_requests"));
    // Another client has its own budget.
    accepted(&from("198.51.100.2").await);
    // A chunked body over 16 KiB (no Content-Length) is 413 too.
    let mut raw_req = b"POST /_tokengate/revoke HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.3\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b' '; 8192];
    for _ in 0..3 {
        raw_req.extend_from_slice(b"2000\r\n");
        raw_req.extend_from_slice(&chunk);
        raw_req.extend_from_slice(b"\r\n");
    }
    raw_req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(gw.proxy, &raw_req).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
}

/// On the forward-auth listener a revocation needs the client in X-Forwarded-For, and an
/// untrusted caller is refused as for checks.
#[tokio::test]
async fn forward_auth_revocations_need_a_trusted_caller_and_the_client() {
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &[SD]).await;
    let addr = gw.forward_auth.unwrap();
    let r = revoke_at(&gw, addr, None, &secret).await;
    r.expect(400, Some("invalid_request"));
    assert_eq!(gw.token("t").await["status"], "active");
    let gw2 = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .configure(|c| c.forward_auth.callers = vec!["192.0.2.0/24".parse().unwrap()])
        .start()
        .await;
    let (secret2, _) = gw2.create_token("t", &[SD]).await;
    let r = revoke_at(
        &gw2,
        gw2.forward_auth.unwrap(),
        Some("198.51.100.7"),
        &secret2,
    )
    .await;
    r.expect(403, Some("untrusted_caller"));
    assert_eq!(gw2.token("t").await["status"], "active");
}

/// A previous release sharing the store sees a revoked token as deactivated by an admin, and
/// its `activate` would set it active again: this release still refuses the reported secret
/// (the row carries its hash), until the secret is regenerated.
#[tokio::test]
async fn a_revoked_secret_stays_refused_when_an_older_release_activates_its_token() {
    let up = Upstream::start().await;
    let mut gw = TestGateway::builder()
        .route("/sd/", SD, up.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("leaked", &[SD]).await;
    accepted(&revoke(&gw, json!({"tokens": [&secret]})).await);
    let db = match &gw.config.store.url {
        tokengate::config::StoreUrl::Sqlite(p) => p.clone(),
        other => panic!("{other:?}"),
    };
    gw.stop().await;
    // What the previous release's activate writes (it knows no revoked_secret_hash).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (status, reason): (String, String) = conn
        .query_row(
            "SELECT status, inactive_reason FROM tokens WHERE name = 'leaked'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("inactive", "admin"));
    conn.execute(
        "UPDATE tokens SET status = 'active', inactive_reason = NULL, version = version + 1 WHERE name = 'leaked'",
        [],
    )
    .unwrap();
    drop(conn);
    gw.restart().await;
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    let t = gw.token("leaked").await;
    assert_eq!(
        (&t["status"], &t["inactive_reason"]),
        (&json!("inactive"), &json!("revoked")),
        "{t}"
    );
    // A regenerate (by either release) makes the reported hash stale.
    let fresh = regenerate(&gw, "leaked", None).await;
    activate(&gw, "leaked").await.expect(200, None);
    gw.get("/sd/x", Some(&fresh)).await.expect(200, None);
}
