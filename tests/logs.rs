//! No log line ever contains a secret, a presented credential or the admin key (SPEC §1).
//! This binary installs a capturing subscriber at `trace` level for every crate, then drives
//! every path that handles secrets: create, use, refusals, regenerate, admin failures.

mod support;

use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;
use support::*;
use tokengate::token::Secret;

/// The token's name: in no request the proxy listener receives (paths, query, headers), so
/// only the gateway's own knowledge of the token can put it on an access-log line.
const NAME: &str = "nightly-kx7";
/// A query string value: the access log must not carry the request's query.
const QUERY: &str = "query-is-not-logged";

#[tokio::test]
async fn no_log_line_contains_a_secret_or_the_admin_key() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .forward_auth()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.access_log = true)
        .start()
        .await;
    let (secret, _) = gw.create_token(NAME, &["security-director"]).await;
    gw.get(&format!("/sd/ok?token={QUERY}"), Some(&secret))
        .await
        .expect(200, None);
    // The query did reach the gateway (and through it the upstream).
    let seen = up.last().target;
    assert!(seen.ends_with(&format!("ok?token={QUERY}")), "{seen}");
    gw.get("/nope", Some(&secret))
        .await
        .expect(404, Some("no_route"));
    // A well-formed unknown secret and a near miss of the real one.
    let unknown = Secret::generate();
    gw.get("/sd/x", Some(unknown.expose()))
        .await
        .expect(401, Some("invalid_token"));
    // The real secret with its last character changed (to one it does not already have).
    let last = if secret.ends_with('x') { 'y' } else { 'x' };
    let near = format!("{}{last}", &secret[..secret.len() - 1]);
    gw.get("/sd/x", Some(&near))
        .await
        .expect(401, Some("invalid_token"));
    let regen = gw
        .admin(Method::POST, &format!("/v1/tokens/{NAME}/regenerate"), None)
        .await;
    regen.expect(200, None);
    let new_secret = regen.json()["token"].as_str().unwrap().to_string();
    gw.get("/sd/x", Some(&new_secret)).await.expect(200, None);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin_as(
        Method::GET,
        "/v1/tokens",
        None,
        Some("wrong-admin-key-wrong-admin-key-x"),
    )
    .await
    .expect(401, Some("unauthorized"));
    gw.admin(
        Method::POST,
        &format!("/v1/tokens/{NAME}/ips/block"),
        Some(json!({"ips": ["192.0.2.1"]})),
    )
    .await
    .expect(200, None);
    // A regenerate with a grace: the old secret still works, and its access line says so.
    let graced = gw
        .admin(
            Method::POST,
            &format!("/v1/tokens/{NAME}/regenerate"),
            Some(json!({"grace": "1h"})),
        )
        .await;
    graced.expect(200, None);
    let newest = graced.json()["token"].as_str().unwrap().to_string();
    gw.get("/sd/graced-old", Some(&new_secret))
        .await
        .expect(200, None);
    gw.get("/sd/graced-new", Some(&newest))
        .await
        .expect(200, None);
    let with_auth_fwd = Request::get("/sd/y")
        .header("authorization", format!("Bearer {new_secret}"))
        .body(Full::default())
        .unwrap();
    gw.proxy_req(with_auth_fwd).await.expect(200, None);
    // Forward-auth checks, allowed and refused, with the query on the original URI.
    let newest_auth = format!("Bearer {newest}");
    let check_uri = format!("/sd/checked?token={QUERY}");
    for auth in [newest_auth.as_str(), "Bearer tg_nope"] {
        gw.check(
            Method::GET,
            "/auth",
            &[
                ("authorization", auth),
                ("x-forwarded-uri", &check_uri),
                ("x-forwarded-for", "198.51.100.7"),
            ],
        )
        .await;
    }

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // Positive checks look only at access-log lines, for strings no request carries: the
    // target, and the token's name (admin requests name it in their paths, the proxy's never).
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("tokengate::access"))
        .collect();
    assert!(!access.is_empty(), "the access log did not run:\n{logs}");
    assert!(
        access.iter().any(|l| l.contains(NAME)),
        "no access-log line names the token:\n{logs}"
    );
    // Each line names its listener; the checks' lines carry the client the caller named.
    assert!(
        access
            .iter()
            .all(|l| l.contains("listener=\"proxy\"") || l.contains("listener=\"forward_auth\"")),
        "an access-log line without its listener:\n{logs}"
    );
    let checks: Vec<&&str> = access
        .iter()
        .filter(|l| l.contains("listener=\"forward_auth\""))
        .collect();
    assert_eq!(checks.len(), 2, "{logs}");
    assert!(checks.iter().all(|l| l.contains("198.51.100.7")), "{logs}");
    assert!(
        checks
            .iter()
            .any(|l| l.contains(NAME) && l.contains("status=200")),
        "{logs}"
    );
    let marked: Vec<&&str> = access
        .iter()
        .filter(|l| l.contains("previous_secret=true"))
        .collect();
    // The two requests made with the replaced secret (`/sd/graced-old` and `/sd/y`), and
    // not the one with the newest.
    assert_eq!(
        marked.len(),
        2,
        "exactly the requests made with the replaced secret are marked:\n{logs}"
    );
    for (what, s) in [
        ("newest secret", newest.as_str()),
        ("query string", QUERY),
        ("secret", secret.as_str()),
        ("secret body", &secret[3..33]),
        ("regenerated secret", new_secret.as_str()),
        ("unknown presented secret", unknown.expose()),
        ("near-miss presented secret", near.as_str()),
        ("admin key", ADMIN_KEY),
        ("wrong admin key", "wrong-admin-key-wrong-admin-key-x"),
    ] {
        assert!(!logs.contains(s), "the {what} appears in the logs:\n{logs}");
    }
}
