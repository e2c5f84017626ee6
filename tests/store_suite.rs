//! One behavioural suite, two stores: every scenario here runs against the embedded SQLite
//! store (`sqlite::*`) and against PostgreSQL (`postgres::*`, each test on a fresh schema),
//! so the two can never drift apart. The PostgreSQL variants read `TOKENGATE_TEST_POSTGRES_URL`
//! and skip, saying why, when it is unset (they fail when it is set but unreachable, or unset
//! while `TOKENGATE_TEST_REQUIRE` names `postgres`: see `support::skip`).
//! Multi-instance and outage scenarios are in `tests/postgres.rs`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::Clock;
use tokengate::token::SecretHash;

const SD: &str = "security-director";
const TPF: &str = "third-party-feeds";
const DAY: Duration = Duration::from_secs(86_400);
/// No background sweep during a test (only the start-up one): tests sweep explicitly.
const NEVER: Duration = Duration::from_secs(365 * 86_400);

/// Which store a scenario runs against.
enum Backend {
    Sqlite,
    Postgres(Arc<PgSchema>),
}

impl Backend {
    /// The PostgreSQL backend on a fresh schema, or `None` (printed) when not configured.
    async fn postgres(test: &str) -> Option<Backend> {
        let url = postgres_url(test)?;
        Some(Backend::Postgres(PgSchema::create(&url).await))
    }

    fn builder(&self) -> Builder {
        let b = TestGateway::builder();
        match self {
            Backend::Sqlite => b,
            Backend::Postgres(schema) => b.postgres(schema),
        }
    }

    /// A gateway with `/sd/` and `/feeds/` routes to one upstream, `f` applied to its config.
    async fn gateway(
        &self,
        f: impl FnOnce(&mut tokengate::config::Config),
    ) -> (TestGateway, Upstream) {
        let up = Upstream::start().await;
        let gw = self
            .builder()
            .route("/sd/", "security-director", up.addr)
            .route("/feeds/", "third-party-feeds", up.addr)
            .configure(|c| {
                c.lifecycle.sweep_interval = NEVER;
                f(c);
            })
            .start()
            .await;
        (gw, up)
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` for each scenario `NAME(Backend)`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(b) = super::Backend::postgres(concat!("postgres::", stringify!($name))).await else {
                        return;
                    };
                    super::$name(b).await;
                }
            )*
        }
    };
}

suite!(
    tokens_are_created_listed_shown_updated_regenerated_and_deleted,
    activate_and_deactivate_are_all_or_nothing,
    blocks_cover_ips_and_cidrs_and_unblocking_a_covered_ip_is_409,
    usage_sums_across_flushes_and_evicts_the_least_recently_used,
    every_change_writes_one_audit_row,
    sweeps_are_idempotent_and_write_idle_policy_rows,
    a_deleted_name_can_be_reused_by_a_new_token,
    the_start_up_load_streams_every_token_across_batches,
);

// === helpers ===

fn rfc(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[track_caller]
fn row<'a>(rows: &'a [Value], ip: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["ip"] == ip)
        .unwrap_or_else(|| panic!("no row for {ip} in {rows:?}"))
}

async fn ip_op(gw: &TestGateway, name: &str, op: &str, entries: &[&str]) -> Resp {
    gw.admin(
        Method::POST,
        &format!("/v1/tokens/{name}/ips/{op}"),
        Some(json!({ "ips": entries })),
    )
    .await
}

/// A proxied GET from a chosen loopback source address (127.0.0.0/8 all reach 127.0.0.1).
async fn get_from(gw: &TestGateway, src: &str, path: &str, secret: &str) -> Resp {
    let mut conn = HttpConnector::new();
    conn.set_local_address(Some(src.parse().expect("an IP")));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(conn);
    let req = Request::get(gw.proxy_url(path))
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::default())
        .expect("request");
    send(&client, req).await
}

async fn audit(gw: &TestGateway, query: &str) -> Vec<Value> {
    let r = gw
        .admin(Method::GET, &format!("/v1/audit{query}"), None)
        .await;
    r.expect(200, None);
    r.json()["entries"].as_array().cloned().unwrap_or_default()
}

// === scenarios ===

async fn tokens_are_created_listed_shown_updated_regenerated_and_deleted(b: Backend) {
    let (gw, _up) = b.gateway(|_| {}).await;
    let (s_b, created) = gw.create_token("Beta", &[SD]).await;
    assert_eq!(created["status"], "active", "{created}");
    assert_eq!(created["access"], json!([SD]), "{created}");
    gw.create_token("alpha", &[TPF, SD, SD]).await;
    gw.create_token("gamma-1", &[TPF]).await;
    gw.admin(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "BETA", "access": [SD]})),
    )
    .await
    .expect(409, Some("name_taken"));

    // Sorted by name ignoring case, paged, filtered.
    let all = gw.admin(Method::GET, "/v1/tokens", None).await;
    all.expect(200, None);
    assert_eq!(names(&all.json(), "tokens"), ["alpha", "Beta", "gamma-1"]);
    assert_eq!(all.json()["tokens"][0]["access"], json!([SD, TPF]));
    let p1 = gw
        .admin(Method::GET, "/v1/tokens?limit=2", None)
        .await
        .json();
    assert_eq!(names(&p1, "tokens"), ["alpha", "Beta"]);
    assert_eq!(p1["next"], "Beta");
    let p2 = gw
        .admin(Method::GET, "/v1/tokens?limit=2&after=Beta", None)
        .await
        .json();
    assert_eq!(names(&p2, "tokens"), ["gamma-1"]);
    assert_eq!(p2["next"], Value::Null);
    let q = gw.admin(Method::GET, "/v1/tokens?q=A-", None).await.json();
    assert_eq!(names(&q, "tokens"), ["gamma-1"]);

    // Show ignores case; update changes only what it names.
    let shown = gw.admin(Method::GET, "/v1/tokens/bEtA", None).await;
    shown.expect(200, None);
    assert_eq!(shown.json()["id"], created["id"]);
    let upd = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/beta",
            Some(json!({"description": "feed é", "access": [TPF]})),
        )
        .await;
    upd.expect(200, None);
    assert_eq!(upd.json()["description"], "feed é");
    assert_eq!(upd.json()["access"], json!([TPF]));
    gw.get("/sd/x", Some(&s_b))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/feeds/x", Some(&s_b)).await.expect(200, None);
    let cleared = gw
        .admin(
            Method::PATCH,
            "/v1/tokens/beta",
            Some(json!({"description": null})),
        )
        .await;
    assert_eq!(cleared.json()["description"], Value::Null, "{cleared}");
    assert_eq!(cleared.json()["access"], json!([TPF]), "{cleared}");

    // Regenerate: the old secret stops at once, the new one works, status unchanged.
    let r = gw
        .admin(Method::POST, "/v1/tokens/Beta/regenerate", None)
        .await;
    r.expect(200, None);
    let s_b2 = r.json()["token"].as_str().expect("new secret").to_string();
    assert_ne!(s_b2, s_b);
    gw.get("/feeds/x", Some(&s_b))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/feeds/x", Some(&s_b2)).await.expect(200, None);
    assert_eq!(r.json()["status"], "active");

    // Delete: gone everywhere.
    gw.admin(Method::DELETE, "/v1/tokens/beta", None)
        .await
        .expect(204, None);
    gw.get("/feeds/x", Some(&s_b2))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::GET, "/v1/tokens/beta", None)
        .await
        .expect(404, Some("not_found"));
    gw.admin(Method::DELETE, "/v1/tokens/beta", None)
        .await
        .expect(404, Some("not_found"));
    let all = gw.admin(Method::GET, "/v1/tokens", None).await.json();
    assert_eq!(names(&all, "tokens"), ["alpha", "gamma-1"]);
}

async fn activate_and_deactivate_are_all_or_nothing(b: Backend) {
    let (gw, _up) = b.gateway(|_| {}).await;
    let (s1, _) = gw.create_token("one", &[SD]).await;
    let (s2, _) = gw.create_token("two", &[SD]).await;
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["one", "nope", "two", "missing"]})),
        )
        .await;
    r.expect(404, Some("not_found"));
    assert_eq!(r.json()["names"], json!(["nope", "missing"]), "{r}");
    gw.get("/sd/x", Some(&s1)).await.expect(200, None);
    gw.get("/sd/x", Some(&s2)).await.expect(200, None);

    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["TWO", "one"]})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(names(&r.json(), "tokens"), ["two", "one"], "request order");
    for t in r.json()["tokens"].as_array().into_iter().flatten() {
        assert_eq!(t["status"], "inactive", "{t}");
        assert_eq!(t["inactive_reason"], "admin", "{t}");
    }
    gw.get("/sd/x", Some(&s1))
        .await
        .expect(403, Some("token_inactive"));
    gw.get("/sd/x", Some(&s2))
        .await
        .expect(403, Some("token_inactive"));

    gw.clock.advance(Duration::from_secs(10));
    let at = gw.clock.now().0;
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({"names": ["one"]})),
        )
        .await;
    r.expect(200, None);
    assert_eq!(r.json()["tokens"][0]["activated_at"], rfc(at));
    gw.get("/sd/x", Some(&s1)).await.expect(200, None);
    gw.get("/sd/x", Some(&s2))
        .await
        .expect(403, Some("token_inactive"));
    let listed = gw
        .admin(Method::GET, "/v1/tokens?status=inactive", None)
        .await
        .json();
    assert_eq!(names(&listed, "tokens"), ["two"]);
}

async fn blocks_cover_ips_and_cidrs_and_unblocking_a_covered_ip_is_409(b: Backend) {
    let (gw, _up) = b.gateway(|_| {}).await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let (other, _) = gw.create_token("other", &[SD]).await;
    get_from(&gw, "127.0.0.2", "/sd/a", &secret)
        .await
        .expect(200, None);
    let t_block = gw.clock.now().0;
    let r = ip_op(
        &gw,
        "feed",
        "block",
        &["127.0.0.0/8", "127.0.0.2/32", "2001:db8::/32"],
    )
    .await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(row(&rows, "127.0.0.2")["blocked_by"], "127.0.0.2");
    assert_eq!(row(&rows, "127.0.0.0/8")["blocked_at"], rfc(t_block));
    assert_eq!(row(&rows, "2001:db8::/32")["blocked"], true);
    ip_op(&gw, "feed", "block", &["10.0.0.1/8"])
        .await
        .expect(400, Some("invalid_request"));

    get_from(&gw, "127.0.0.2", "/sd/a", &secret)
        .await
        .expect(403, Some("ip_blocked"));
    get_from(&gw, "127.0.0.3", "/sd/a", &secret)
        .await
        .expect(403, Some("ip_blocked"));
    get_from(&gw, "127.0.0.3", "/sd/a", &other)
        .await
        .expect(200, None);

    // A repeat keeps the first blocked_at.
    gw.clock.advance(Duration::from_secs(5));
    let r = ip_op(&gw, "feed", "block", &["127.0.0.0/8"]).await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(row(&rows, "127.0.0.0/8")["blocked_at"], rfc(t_block));

    // The exact entry goes; the IP is still covered by the CIDR, and then 409.
    let r = ip_op(&gw, "feed", "unblock", &["127.0.0.2"]).await;
    r.expect(200, None);
    let rows = r.json()["ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(row(&rows, "127.0.0.2")["blocked_by"], "127.0.0.0/8");
    let r = ip_op(&gw, "feed", "unblock", &["127.0.0.2"]).await;
    r.expect(409, Some("blocked_by_cidr"));
    assert!(r.text().contains("127.0.0.0/8"), "{r}");
    let rows = gw.ips("feed").await;
    assert_eq!(row(&rows, "127.0.0.2")["denied"], 1, "{rows:?}");
    assert_eq!(row(&rows, "127.0.0.3")["denied"], 1, "{rows:?}");

    ip_op(&gw, "feed", "unblock", &["127.0.0.0/8", "2001:db8::/32"])
        .await
        .expect(200, None);
    get_from(&gw, "127.0.0.2", "/sd/a", &secret)
        .await
        .expect(200, None);
    let rows = gw.ips("feed").await;
    assert!(rows.iter().all(|r| r["blocked"] == false), "{rows:?}");
    let listed: BTreeSet<&str> = rows.iter().filter_map(|r| r["ip"].as_str()).collect();
    assert_eq!(
        listed,
        BTreeSet::from(["127.0.0.2", "127.0.0.3"]),
        "unblocked CIDR rows go"
    );
    assert_eq!(row(&rows, "127.0.0.2")["requests"], 2, "{rows:?}");
}

async fn usage_sums_across_flushes_and_evicts_the_least_recently_used(b: Backend) {
    let (gw, _up) = b
        .gateway(|c| {
            c.usage.max_ips_per_token = 2;
            c.usage.flush_interval = NEVER;
        })
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let g = gw.gateway();
    let t0 = gw.clock.now().0;
    for _ in 0..2 {
        get_from(&gw, "127.0.0.2", "/sd/a", &secret)
            .await
            .expect(200, None);
    }
    g.usage.flush(g.store.as_ref()).await.expect("flush");
    gw.clock.advance(Duration::from_secs(1));
    get_from(&gw, "127.0.0.2", "/sd/a", &secret)
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(1));
    get_from(&gw, "127.0.0.3", "/sd/a", &secret)
        .await
        .expect(200, None);
    g.usage.flush(g.store.as_ref()).await.expect("flush");
    let rows = gw.ips("feed").await;
    let r2 = row(&rows, "127.0.0.2");
    assert_eq!(r2["requests"], 3, "{r2}");
    assert_eq!(r2["first_used_at"], rfc(t0), "{r2}");
    assert_eq!(r2["last_used_at"], rfc(t0 + 1000), "{r2}");

    // A blocked record is never evicted; of the unblocked ones the least recent goes.
    ip_op(&gw, "feed", "block", &["127.0.0.9"])
        .await
        .expect(200, None);
    gw.clock.advance(Duration::from_secs(1));
    get_from(&gw, "127.0.0.4", "/sd/a", &secret)
        .await
        .expect(200, None);
    g.usage.flush(g.store.as_ref()).await.expect("flush");
    let rows = gw.ips("feed").await;
    let listed: Vec<&str> = rows.iter().filter_map(|r| r["ip"].as_str()).collect();
    assert_eq!(listed, ["127.0.0.4", "127.0.0.3", "127.0.0.9"], "{rows:?}");
    let t = gw.admin(Method::GET, "/v1/tokens/feed", None).await.json();
    assert_eq!(t["last_used_at"], rfc(t0 + 3000), "{t}");
}

async fn every_change_writes_one_audit_row(b: Backend) {
    let (gw, _up) = b.gateway(|_| {}).await;
    let (_, v) = gw.create_token("feed", &[SD]).await;
    gw.create_token("other", &[SD]).await;
    gw.admin(
        Method::PATCH,
        "/v1/tokens/feed",
        Some(json!({"description": "x"})),
    )
    .await
    .expect(200, None);
    for op in ["deactivate", "activate"] {
        gw.admin(
            Method::POST,
            &format!("/v1/tokens/{op}"),
            Some(json!({"names": ["feed"]})),
        )
        .await
        .expect(200, None);
    }
    gw.admin(Method::POST, "/v1/tokens/feed/regenerate", None)
        .await
        .expect(200, None);
    ip_op(&gw, "feed", "block", &["192.0.2.1"])
        .await
        .expect(200, None);
    ip_op(&gw, "feed", "unblock", &["192.0.2.1"])
        .await
        .expect(200, None);
    gw.admin(Method::DELETE, "/v1/tokens/feed", None)
        .await
        .expect(204, None);

    let entries = audit(&gw, "?token=FEED").await;
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "delete",
            "unblock",
            "block",
            "regenerate",
            "activate",
            "deactivate",
            "update",
            "create"
        ],
        "{entries:?}"
    );
    for e in &entries {
        assert_eq!(e["actor"], "admin-key", "{e}");
        assert_eq!(e["source_ip"], "127.0.0.1", "{e}");
        assert_eq!(e["token"], "feed", "{e}");
        assert_eq!(e["token_id"], v["id"], "{e}");
        assert!(e["details"].is_object(), "{e}");
        assert!(
            !e.to_string().contains("tg_"),
            "a secret in the audit log: {e}"
        );
    }
    assert_eq!(entries[2]["details"]["ips"], json!(["192.0.2.1"]));
    assert_eq!(audit(&gw, "").await.len(), 9);
    assert_eq!(audit(&gw, "?limit=2").await.len(), 2);
}

async fn sweeps_are_idempotent_and_write_idle_policy_rows(b: Backend) {
    let (gw, _up) = b.gateway(|_| {}).await;
    let (stale, _) = gw.create_token("stale", &[SD]).await;
    gw.create_token("older", &[SD]).await;
    let g = gw.gateway();
    gw.clock.advance(DAY * 20);
    let (fresh, _) = gw.create_token("fresh", &[SD]).await;
    gw.clock.advance(DAY * 11);
    // Exact at request time, before any sweep.
    gw.get("/sd/x", Some(&stale))
        .await
        .expect(403, Some("token_inactive"));
    gw.get("/sd/x", Some(&fresh)).await.expect(200, None);

    let first = g.sweeper.sweep_once().await.expect("sweep");
    let mut lapsed: Vec<&str> = first.deactivated.iter().map(|(_, n)| n.as_str()).collect();
    lapsed.sort_unstable();
    assert_eq!(lapsed, ["older", "stale"], "{first:?}");
    assert!(first.deleted.is_empty(), "{first:?}");
    let again = g.sweeper.sweep_once().await.expect("sweep");
    assert!(
        again.deactivated.is_empty() && again.deleted.is_empty(),
        "a second sweep changed something: {again:?}"
    );
    let t = gw.admin(Method::GET, "/v1/tokens/stale", None).await.json();
    assert_eq!(t["status"], "inactive", "{t}");
    assert_eq!(t["inactive_reason"], "idle", "{t}");

    // Activated again: the idle clock restarts.
    gw.admin(
        Method::POST,
        "/v1/tokens/activate",
        Some(json!({"names": ["stale"]})),
    )
    .await
    .expect(200, None);
    gw.clock.advance(DAY * 60);
    let out = g.sweeper.sweep_once().await.expect("sweep");
    let deleted: Vec<&str> = out.deleted.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(deleted, ["older"], "{out:?}");
    let again = g.sweeper.sweep_once().await.expect("sweep");
    assert!(
        again.deleted.is_empty() && again.deactivated.is_empty(),
        "{again:?}"
    );
    gw.admin(Method::GET, "/v1/tokens/older", None)
        .await
        .expect(404, Some("not_found"));

    let rows = audit(&gw, "").await;
    let mut idle: Vec<(String, String)> = rows
        .iter()
        .filter(|e| e["actor"] == "idle-policy")
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["token"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    idle.sort();
    // One row per change: "stale" lapsed twice (before and after its re-activation).
    let want: Vec<(String, String)> = [
        ("deactivate", "fresh"),
        ("deactivate", "older"),
        ("deactivate", "stale"),
        ("deactivate", "stale"),
        ("delete", "older"),
    ]
    .iter()
    .map(|(a, n)| (a.to_string(), n.to_string()))
    .collect();
    assert_eq!(idle, want, "{rows:?}");
}

async fn a_deleted_name_can_be_reused_by_a_new_token(b: Backend) {
    let (gw, _up) = b.gateway(|_| {}).await;
    let (old_secret, old) = gw.create_token("reuse-me", &[SD]).await;
    get_from(&gw, "127.0.0.5", "/sd/a", &old_secret)
        .await
        .expect(200, None);
    ip_op(&gw, "reuse-me", "block", &["192.0.2.1"])
        .await
        .expect(200, None);
    gw.admin(Method::DELETE, "/v1/tokens/REUSE-ME", None)
        .await
        .expect(204, None);
    let (new_secret, new) = gw.create_token("Reuse-Me", &[TPF]).await;
    assert_ne!(old["id"], new["id"], "ids are never reused");
    assert_eq!(new["name"], "Reuse-Me");
    gw.get("/feeds/a", Some(&old_secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/feeds/a", Some(&new_secret))
        .await
        .expect(200, None);
    let rows = gw.ips("reuse-me").await;
    assert!(
        rows.iter()
            .all(|r| r["ip"] != "127.0.0.5" && r["ip"] != "192.0.2.1"),
        "the old token's IP records survived its deletion: {rows:?}"
    );
}

/// Fills the store with `n` tokens straight through SQL (the admin API would commit each
/// one on its own); token `i` is `filler-i` with the hash of that name.
async fn bulk_fill(b: &Backend, gw: &TestGateway, n: usize) {
    let rows: Vec<(String, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let name = format!("filler-{i}");
            let hash = SecretHash::of(name.as_bytes()).as_bytes().to_vec();
            (format!("00000000-0000-4000-8000-{i:012}"), name, hash)
        })
        .collect();
    let now = gw.clock.now().0;
    match b {
        Backend::Sqlite => {
            let tokengate::config::StoreUrl::Sqlite(path) = &gw.config.store.url else {
                panic!("the SQLite backend uses SQLite");
            };
            let mut conn = rusqlite::Connection::open(path).expect("open the store file");
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let tx = conn.transaction().unwrap();
            {
                let mut stmt = tx
                    .prepare(
                        "INSERT INTO tokens (id, name, name_key, access, secret_hash, status,
                            created_at, activated_at, version)
                         VALUES (?1, ?2, ?2, 1, ?3, 'active', ?4, ?4, 1)",
                    )
                    .unwrap();
                for (id, name, hash) in &rows {
                    stmt.execute(rusqlite::params![id, name, hash, now])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        Backend::Postgres(schema) => {
            let (ids, rest): (Vec<String>, Vec<(String, Vec<u8>)>) =
                rows.into_iter().map(|(i, n, h)| (i, (n, h))).unzip();
            let (names, hashes): (Vec<String>, Vec<Vec<u8>>) = rest.into_iter().unzip();
            schema
                .client()
                .await
                .execute(
                    "INSERT INTO tokens (id, name, name_key, access, secret_hash, status,
                        created_at, activated_at, version)
                     SELECT id, name, name, 1, hash, 'active', $4, $4, 1
                     FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(id, name, hash)",
                    &[&ids, &names, &hashes, &now],
                )
                .await
                .expect("bulk insert");
        }
    }
}

async fn the_start_up_load_streams_every_token_across_batches(b: Backend) {
    let (mut gw, _up) = b.gateway(|_| {}).await;
    // More than two load batches, then a real token (last in the table) with a block entry.
    let n = 2 * tokengate::state::LOAD_BATCH + 7;
    bulk_fill(&b, &gw, n).await;
    let (secret, _) = gw.create_token("last", &[SD]).await;
    ip_op(&gw, "last", "block", &["192.0.2.7"])
        .await
        .expect(200, None);
    gw.restart().await;

    let index = &gw.gateway().index;
    assert_eq!(index.len(), n + 1, "every stored token is in memory");
    for i in [0, tokengate::state::LOAD_BATCH, n - 1] {
        let t = index
            .get(&SecretHash::of(format!("filler-{i}").as_bytes()))
            .unwrap_or_else(|| panic!("filler-{i} was loaded"));
        assert_eq!(t.id_string(), format!("00000000-0000-4000-8000-{i:012}"));
    }
    let id = gw.token("last").await["id"].as_str().unwrap().to_string();
    let last = index.get_by_id(&id).expect("the real token was loaded");
    assert_eq!(last.blocks.len(), 1, "its block entry came with it");
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
}
