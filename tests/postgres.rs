//! Several gateway instances sharing one PostgreSQL store (issue 5): changes made through one
//! instance hold on the others within 1 s, usage from all of them adds up, concurrent sweeps
//! change each token once, propagation survives a lost listener connection, and an outage
//! of the server is handled as SPEC §2 row 6 and §4 say.
//!
//! Every test reads `TOKENGATE_TEST_POSTGRES_URL` and skips, saying why, when it is unset; it
//! fails when it is set but unreachable, or unset while `TOKENGATE_TEST_REQUIRE` names
//! `postgres` (see `support::skip`). Each test works on a fresh schema (dropped at the
//! end); the outage test runs a private cluster of its own (initdb + pg_ctl, ephemeral port)
//! and never touches the shared server. Behaviour that must match SQLite is in
//! `tests/store_suite.rs`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;
use tokengate::config::Config;

const SD: &str = "security-director";
const DAY: Duration = Duration::from_secs(86_400);
const NEVER: Duration = Duration::from_secs(365 * 86_400);
/// SPEC §2/§4: a change on one instance holds on every other within this.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Reconnecting after a lost connection, with the reload that follows.
const RECOVERY: Duration = Duration::from_secs(10);

/// Two instances on one fresh schema, sharing the clock, with `/sd/` routed to `up`.
async fn pair(
    url: &str,
    f: impl Fn(&mut Config) + Copy,
) -> (TestGateway, TestGateway, Upstream, Arc<PgSchema>) {
    let schema = PgSchema::create(url).await;
    let up = Upstream::start().await;
    let a = TestGateway::builder()
        .postgres(&schema)
        .route("/sd/", "security-director", up.addr)
        .configure(|c| {
            c.lifecycle.sweep_interval = NEVER;
            f(c);
        })
        .start()
        .await;
    let b = a.another_instance().await;
    (a, b, up, schema)
}

/// Polls a proxied GET on `gw` until it answers `status` (and `error`), within `within`.
async fn until_answer(
    gw: &TestGateway,
    secret: &str,
    status: u16,
    error: Option<&str>,
    within: Duration,
) -> Duration {
    let what = format!("GET /sd/x -> {status} {error:?}");
    eventually(&what, within, || async {
        let r = gw.get("/sd/x", Some(secret)).await;
        let code_ok = error.is_none_or(|e| {
            serde_json::from_slice::<Value>(&r.body)
                .map(|v| v["error"] == e)
                .unwrap_or(false)
        });
        (r.status.as_u16() == status && code_ok).then_some(())
    })
    .await
    .1
}

async fn admin_ok(gw: &TestGateway, method: Method, path: &str, body: Option<Value>) -> Value {
    let r = gw.admin(method, path, body).await;
    assert!(r.status.is_success(), "{r}");
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_one_instance_hold_on_the_other_within_a_second() {
    let Some(url) = postgres_url("changes_through_one_instance_hold_on_the_other_within_a_second")
    else {
        return;
    };
    let (a, b, _up, _schema) = pair(&url, |_| {}).await;
    let mut worst = Duration::ZERO;

    // Created through A: usable on B (an unknown secret there until then is a plain 401).
    let (secret, _) = a.create_token("shared", &[SD]).await;
    worst = worst.max(until_answer(&b, &secret, 200, None, PROPAGATION).await);

    // Deactivated through B: refused on A.
    admin_ok(
        &b,
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["shared"]})),
    )
    .await;
    worst = worst.max(until_answer(&a, &secret, 403, Some("token_inactive"), PROPAGATION).await);
    admin_ok(
        &b,
        Method::POST,
        "/v1/tokens/activate",
        Some(json!({"names": ["shared"]})),
    )
    .await;
    worst = worst.max(until_answer(&a, &secret, 200, None, PROPAGATION).await);

    // Regenerated through B: the old secret is refused on A, the new one works there.
    let r = admin_ok(&b, Method::POST, "/v1/tokens/shared/regenerate", None).await;
    let fresh = r["token"].as_str().expect("new secret").to_string();
    worst = worst.max(until_answer(&a, &secret, 401, Some("invalid_token"), PROPAGATION).await);
    worst = worst.max(until_answer(&a, &fresh, 200, None, PROPAGATION).await);

    // Blocked through B: refused on A; access changed through B: refused on A.
    admin_ok(
        &b,
        Method::POST,
        "/v1/tokens/shared/ips/block",
        Some(json!({"ips": ["127.0.0.0/8"]})),
    )
    .await;
    worst = worst.max(until_answer(&a, &fresh, 403, Some("ip_blocked"), PROPAGATION).await);
    admin_ok(
        &b,
        Method::POST,
        "/v1/tokens/shared/ips/unblock",
        Some(json!({"ips": ["127.0.0.0/8"]})),
    )
    .await;
    worst = worst.max(until_answer(&a, &fresh, 200, None, PROPAGATION).await);
    admin_ok(
        &b,
        Method::PATCH,
        "/v1/tokens/shared",
        Some(json!({"access": ["third-party-feeds"]})),
    )
    .await;
    worst = worst.max(until_answer(&a, &fresh, 403, Some("access_denied"), PROPAGATION).await);

    // Deleted through B: unknown on A.
    admin_ok(&b, Method::DELETE, "/v1/tokens/shared", None).await;
    worst = worst.max(until_answer(&a, &fresh, 401, Some("invalid_token"), PROPAGATION).await);
    eprintln!("worst propagation latency between instances: {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_recorded_by_two_instances_adds_up() {
    let Some(url) = postgres_url("usage_recorded_by_two_instances_adds_up") else {
        return;
    };
    let (a, b, _up, _schema) = pair(&url, |c| c.usage.flush_interval = NEVER).await;
    let (secret, v) = a.create_token("busy", &[SD]).await;
    // Known on B (checked in its memory: a proxied request would count as a use).
    let id = v["id"].as_str().expect("id").to_string();
    eventually("B knows the token", PROPAGATION, || async {
        b.gateway().index.get_by_id(&id).map(|_| ())
    })
    .await;
    let t0 = a.clock.now_ms();
    for _ in 0..2 {
        a.get("/sd/x", Some(&secret)).await.expect(200, None);
    }
    a.clock.advance(Duration::from_secs(5));
    for _ in 0..2 {
        b.get("/sd/x", Some(&secret)).await.expect(200, None);
    }
    let t_later = a.clock.now_ms();
    // B (the later use) writes first, A after it: the later last use must survive.
    for gw in [&b, &a] {
        let g = gw.gateway();
        g.usage.flush(g.store.as_ref()).await.expect("flush");
    }
    // Then denied requests on both, after a block.
    admin_ok(
        &a,
        Method::POST,
        "/v1/tokens/busy/ips/block",
        Some(json!({"ips": ["127.0.0.1"]})),
    )
    .await;
    eventually("B knows the block", PROPAGATION, || async {
        b.gateway()
            .index
            .get_by_id(&id)
            .filter(|t| !t.blocks.is_empty())
            .map(|_| ())
    })
    .await;
    b.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    a.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    for gw in [&a, &b] {
        let g = gw.gateway();
        g.usage.flush(g.store.as_ref()).await.expect("flush");
    }
    let r = admin_ok(&a, Method::GET, "/v1/tokens/busy/ips", None).await;
    let row = &r["ips"][0];
    assert_eq!(row["ip"], "127.0.0.1", "{r}");
    assert_eq!(row["requests"], 4, "requests of both instances add up: {r}");
    assert_eq!(row["denied"], 2, "denied of both instances add up: {r}");
    assert_eq!(row["first_used_at"], rfc(t0), "{r}");
    assert_eq!(row["last_used_at"], rfc(t_later), "the later use wins: {r}");
    let t = admin_ok(&b, Method::GET, "/v1/tokens/busy", None).await;
    assert_eq!(t["last_used_at"], rfc(t_later), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_of_both_instances_at_once_change_each_token_once() {
    let Some(url) = postgres_url("sweeps_of_both_instances_at_once_change_each_token_once") else {
        return;
    };
    let (a, b, _up, _schema) = pair(&url, |_| {}).await;
    let mut secrets = Vec::new();
    for i in 0..12 {
        secrets.push(a.create_token(&format!("idle-{i:02}"), &[SD]).await.0);
    }
    let (keep, _) = a.create_token("kept", &[SD]).await;
    a.clock.advance(DAY * 29);
    until_answer(&b, &keep, 200, None, PROPAGATION).await;
    // B's write-behind (every second in production, long before the next sweep).
    let g = b.gateway();
    g.usage.flush(g.store.as_ref()).await.expect("flush");
    a.clock.advance(DAY * 2);

    let (x, y) = tokio::join!(
        a.gateway().sweeper.sweep_once(),
        b.gateway().sweeper.sweep_once()
    );
    let (x, y) = (x.expect("sweep on A"), y.expect("sweep on B"));
    let mut changed: Vec<&str> = x
        .deactivated
        .iter()
        .chain(&y.deactivated)
        .map(|(_, n)| n.as_str())
        .collect();
    changed.sort_unstable();
    let want: Vec<String> = (0..12).map(|i| format!("idle-{i:02}")).collect();
    assert_eq!(changed, want, "each token lapses exactly once: {x:?} {y:?}");
    for s in &secrets {
        until_answer(&a, s, 403, Some("token_inactive"), PROPAGATION).await;
        until_answer(&b, s, 403, Some("token_inactive"), PROPAGATION).await;
    }
    b.get("/sd/x", Some(&keep)).await.expect(200, None);

    a.clock.advance(DAY * 60);
    let (x, y) = tokio::join!(
        a.gateway().sweeper.sweep_once(),
        b.gateway().sweeper.sweep_once()
    );
    let (x, y) = (x.expect("sweep on A"), y.expect("sweep on B"));
    let deleted: BTreeSet<&str> = x
        .deleted
        .iter()
        .chain(&y.deleted)
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(deleted.len(), 12, "{x:?} {y:?}");
    assert_eq!(x.deleted.len() + y.deleted.len(), 12, "each deleted once");

    let entries = admin_ok(&a, Method::GET, "/v1/audit?limit=1000", None).await;
    let idle: Vec<&Value> = entries["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["actor"] == "idle-policy")
        .collect();
    let deactivations = idle.iter().filter(|e| e["action"] == "deactivate").count();
    let deletions = idle.iter().filter(|e| e["action"] == "delete").count();
    // "kept" lapsed in the second round (used at day 29, idle since).
    assert_eq!((deactivations, deletions), (13, 12), "{idle:?}");
    for s in &secrets {
        until_answer(&b, s, 401, Some("invalid_token"), PROPAGATION).await;
    }
}

#[tokio::test]
async fn a_use_not_yet_flushed_by_another_instance_keeps_its_token_from_the_sweep() {
    let Some(url) =
        postgres_url("a_use_not_yet_flushed_by_another_instance_keeps_its_token_from_the_sweep")
    else {
        return;
    };
    // B flushes usage once an hour: its use stays in its memory while A sweeps.
    let (a, b, _up, _schema) = pair(&url, |c| {
        c.usage.flush_interval = Duration::from_secs(3600);
    })
    .await;
    let (secret, _) = a.create_token("last-minute", &[SD]).await;
    a.clock.advance(DAY * 30 - Duration::from_secs(1));
    until_answer(&b, &secret, 200, None, PROPAGATION).await;
    // One second later the store's record (no use) says the token lapsed; B's use says not.
    a.clock.advance(Duration::from_secs(2));
    let out = a.gateway().sweeper.sweep_once().await.expect("sweep on A");
    assert!(out.deactivated.is_empty(), "{out:?}");
    // Long enough after for the sweep to trust the store: B's use has been flushed by then.
    let g = b.gateway();
    g.usage.flush(g.store.as_ref()).await.expect("flush on B");
    a.clock.advance(Duration::from_secs(3 * 3600));
    let out = a.gateway().sweeper.sweep_once().await.expect("sweep on A");
    assert!(out.deactivated.is_empty(), "{out:?}");
    b.get("/sd/x", Some(&secret)).await.expect(200, None);
    // Without uses, the token lapses at the policy's instant plus the margin.
    a.clock.advance(DAY * 30);
    let out = a.gateway().sweeper.sweep_once().await.expect("sweep on A");
    let names: Vec<&str> = out.deactivated.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["last-minute"], "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_survives_a_killed_listener_connection() {
    let Some(url) = postgres_url("propagation_survives_a_killed_listener_connection") else {
        return;
    };
    let (a, b, _up, schema) = pair(&url, |_| {}).await;
    let (secret, _) = a.create_token("steady", &[SD]).await;
    until_answer(&b, &secret, 200, None, PROPAGATION).await;

    // Both instances' listener connections go; a change is made at once, while they are
    // (or may be) down: after reconnecting, B must not keep serving the old state.
    eventually("both instances listening", RECOVERY, || async {
        (schema.listeners().await == 2).then_some(())
    })
    .await;
    let killed = schema.kill_listeners().await;
    assert_eq!(killed, 2, "one listener connection per instance");
    admin_ok(
        &a,
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["steady"]})),
    )
    .await;
    let (other, _) = a.create_token("created-meanwhile", &[SD]).await;
    until_answer(&b, &secret, 403, Some("token_inactive"), RECOVERY).await;
    until_answer(&b, &other, 200, None, RECOVERY).await;
    eventually("B ready again", RECOVERY, || async {
        let r = b.admin(Method::GET, "/readyz", None).await;
        (r.status == 200).then_some(())
    })
    .await;

    // And once reconnected, propagation is back to its usual bound.
    admin_ok(
        &a,
        Method::POST,
        "/v1/tokens/activate",
        Some(json!({"names": ["steady"]})),
    )
    .await;
    until_answer(&b, &secret, 200, None, PROPAGATION).await;
    admin_ok(&b, Method::DELETE, "/v1/tokens/created-meanwhile", None).await;
    until_answer(&a, &other, 401, Some("invalid_token"), PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notification_was_lost_is_caught_by_reconciliation() {
    let Some(url) =
        postgres_url("a_change_whose_notification_was_lost_is_caught_by_reconciliation")
    else {
        return;
    };
    let (a, b, _up, schema) = pair(&url, |_| {}).await;
    let (secret, _) = a.create_token("quiet", &[SD]).await;
    until_answer(&b, &secret, 200, None, PROPAGATION).await;
    // A change committed the way the gateway commits one, but without its NOTIFY.
    let client = schema.client().await;
    client
        .batch_execute(
            "BEGIN;
             UPDATE change_generation SET generation = generation + 1 WHERE id = 1;
             UPDATE tokens SET status = 'inactive', inactive_reason = 'admin',
                 version = version + 1 WHERE name = 'quiet';
             COMMIT;",
        )
        .await
        .expect("silent change");
    // The generation probe (every second) sees it missing twice in a row, then reloads.
    for gw in [&a, &b] {
        until_answer(
            gw,
            &secret,
            403,
            Some("token_inactive"),
            Duration::from_secs(5),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once() {
    let Some(url) = postgres_url("instances_starting_together_migrate_once") else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let clock = tokengate::clock::ManualClock::starting_now();
    let start = || {
        TestGateway::builder()
            .postgres(&schema)
            .clock(&clock)
            .start()
    };
    let (a, b, c) = tokio::join!(start(), start(), start());
    a.create_token("after-migration", &[SD]).await;
    for gw in [&b, &c] {
        let r = gw
            .admin(Method::GET, "/v1/tokens/after-migration", None)
            .await;
        r.expect(200, None);
    }
    let client = schema.client().await;
    let rows = client
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("schema_migrations");
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5, 6, 7, 8],
        "each migration applied once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_serves_cached_tokens_for_the_grace_then_recovers() {
    let Some(_) = postgres_url("a_store_outage_serves_cached_tokens_for_the_grace_then_recovers")
    else {
        return;
    };
    let cluster = PgCluster::start().await;
    let url = cluster.url();
    let up = Upstream::start().await;
    let clock = tokengate::clock::ManualClock::starting_now();
    let start = |grace: Duration| {
        let url = url.clone();
        let clock = clock.clone();
        async move {
            TestGateway::builder()
                .configure(|c| {
                    c.store.url = tokengate::config::StoreUrl::Postgres(url);
                    c.store.outage_grace = grace;
                    c.lifecycle.sweep_interval = NEVER;
                })
                .clock(&clock)
                .route("/sd/", "security-director", up.addr)
                .start()
                .await
        }
    };
    let mut a = start(Duration::from_secs(30)).await;
    let mut closed = start(Duration::ZERO).await;
    let (secret, _) = a.create_token("cached", &[SD]).await;
    until_answer(&closed, &secret, 200, None, PROPAGATION).await;
    a.get("/sd/x", Some(&secret)).await.expect(200, None);
    let unknown = {
        let b = a.create_token("doomed", &[SD]).await.0;
        admin_ok(&a, Method::DELETE, "/v1/tokens/doomed", None).await;
        b
    };
    a.get("/sd/x", Some(&unknown))
        .await
        .expect(401, Some("invalid_token"));
    let id = token_id(&a, "cached").await;
    for gw in [&a, &closed] {
        let g = gw.gateway();
        g.usage.flush(g.store.as_ref()).await.expect("flush");
    }
    let store = a.gateway().store.clone();
    let before = store.list_ips(id.parse().unwrap()).await.expect("ips")[0].requests;

    cluster.stop_server();
    for gw in [&a, &closed] {
        eventually("readyz 503 during the outage", RECOVERY, || async {
            let r = gw.admin(Method::GET, "/readyz", None).await;
            (r.status == 503).then_some(())
        })
        .await;
    }
    // Within the grace: the cached token works (and its use is buffered); unknown → 503.
    for _ in 0..3 {
        a.get("/sd/x", Some(&secret)).await.expect(200, None);
    }
    a.get("/sd/x", Some(&unknown))
        .await
        .expect(503, Some("store_unavailable"));
    // A revocation cannot be committed: 503 for every report, known secret or not (the
    // answer must not tell them apart), and nothing changes.
    for s in [&secret, &unknown] {
        a.proxy_req(
            http::Request::post("/_tokengate/revoke")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    serde_json::json!({ "tokens": [s] }).to_string(),
                )))
                .unwrap(),
        )
        .await
        .expect(503, Some("store_unavailable"));
    }
    // (After the outage the token still works: the 503 changed nothing.)
    // outage_grace = 0: fail closed at once.
    closed
        .get("/sd/x", Some(&secret))
        .await
        .expect(503, Some("store_unavailable"));
    // Admin mutations: a clear 503.
    let r = a
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "new", "access": [SD]})),
        )
        .await;
    r.expect(503, Some("store_unavailable"));
    a.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["cached"]})),
    )
    .await
    .expect(503, Some("store_unavailable"));
    assert!(a.gateway().usage.pending() > 0, "usage is buffered");
    // Past the grace: refused too.
    a.clock.advance(Duration::from_secs(31));
    a.get("/sd/x", Some(&secret))
        .await
        .expect(503, Some("store_unavailable"));

    // The server returns: ready again, the token works, and the buffered uses are written.
    cluster.start_server();
    for gw in [&a, &closed] {
        eventually("readyz 200 after the outage", RECOVERY, || async {
            let r = gw.admin(Method::GET, "/readyz", None).await;
            (r.status == 200).then_some(())
        })
        .await;
    }
    a.get("/sd/x", Some(&secret)).await.expect(200, None);
    closed.get("/sd/x", Some(&secret)).await.expect(200, None);
    a.get("/sd/x", Some(&unknown))
        .await
        .expect(401, Some("invalid_token"));
    // 3 uses during the outage and 1 after it on A, 1 after it on the other instance.
    eventually("buffered usage written", RECOVERY, || async {
        let n = store
            .list_ips(id.parse().unwrap())
            .await
            .ok()?
            .first()?
            .requests;
        assert!(n <= before + 5, "usage counted twice: {n} > {before} + 5");
        (n == before + 5).then_some(())
    })
    .await;
    // Propagation works again after the restart.
    admin_ok(
        &a,
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["cached"]})),
    )
    .await;
    until_answer(&closed, &secret, 403, Some("token_inactive"), PROPAGATION).await;
    a.stop().await;
    closed.stop().await;
}

async fn token_id(gw: &TestGateway, name: &str) -> String {
    let t = admin_ok(gw, Method::GET, &format!("/v1/tokens/{name}"), None).await;
    t["id"].as_str().unwrap_or_default().to_string()
}

fn rfc(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
    .to_string()
}

/// `ManualClock` in milliseconds.
trait NowMs {
    fn now_ms(&self) -> i64;
}

impl NowMs for tokengate::clock::ManualClock {
    fn now_ms(&self) -> i64 {
        use tokengate::clock::Clock;
        self.now().0
    }
}
