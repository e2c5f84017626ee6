//! Databases made by the release before expiry open with this build: the migrations add the
//! expiry and rotation columns and turn the access bits into names, every token keeps working
//! with the access it had, and none of them expires. Both
//! fixtures were written by that release's binary (`token create`, `token deactivate`): the
//! SQLite file as it left it, the PostgreSQL schema as `pg_dump --inserts` printed it (its
//! schema name replaced by `__SCHEMA__`). The `.secret` files hold the secret of each one's
//! active token (test fixtures, nothing else).

mod support;

use http::Method;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::{ManualClock, Timestamp};
use tokengate::config::StoreUrl;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sqlite-before-expiry.db"
);
const SECRET: &str = include_str!("fixtures/sqlite-before-expiry.secret");

/// A gateway on a copy of the SQLite fixture (in the returned directory, as `release.db`),
/// with one route, its clock a minute after the fixture's tokens were made; and that time.
async fn sqlite_fixture(
    prefix: &str,
    access: &str,
) -> (
    tempfile::TempDir,
    Timestamp,
    ManualClock,
    Upstream,
    TestGateway,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("release.db");
    std::fs::copy(FIXTURE, &db).unwrap();
    // The fixture's tokens were made at 2026-12-01T10:54:50Z: look at them a minute later.
    let made = Timestamp::parse_rfc3339("2026-12-01T10:54:50Z").unwrap();
    let clock = ManualClock::new(Timestamp(made.0 + 60_000));
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .clock(&clock)
        .route(prefix, access, up.addr)
        .configure(|c| c.store.url = StoreUrl::Sqlite(db))
        .start()
        .await;
    (dir, made, clock, up, gw)
}

#[tokio::test]
async fn a_database_of_the_previous_release_opens_and_its_tokens_keep_working() {
    let (_dir, made, clock, _up, gw) = sqlite_fixture("/sd/", "security-director").await;
    let secret = SECRET.trim();
    gw.get("/sd/x", Some(secret)).await.expect(200, None);
    let live = gw.token("release-live").await;
    assert_eq!(
        (&live["status"], &live["expires_at"]),
        (&json!("active"), &Value::Null),
        "{live}"
    );
    let old = gw.token("release-feed").await;
    assert_eq!(
        (&old["status"], &old["inactive_reason"], &old["expires_at"]),
        (&json!("inactive"), &json!("admin"), &Value::Null),
        "{old}"
    );
    assert_eq!(
        old["access"],
        json!(["security-director", "third-party-feeds"])
    );
    assert_eq!(old["description"], "made by the release before expiry");
    // No limit and no allow-list on the migrated rows.
    assert_eq!(
        (&old["rate_limit"], &old["allowed_ips"]),
        (&Value::Null, &Value::Null)
    );
    // The migrated rows take the new fields.
    gw.admin(
        Method::PATCH,
        "/v1/tokens/release-live",
        Some(json!({"expires_in": "1h"})),
    )
    .await
    .expect(200, None);
    clock.set(Timestamp(made.0 + 60_000 + 3_600_000));
    gw.get("/sd/y", Some(secret))
        .await
        .expect(401, Some("token_expired"));
    // The audit written by the previous release is still readable.
    let audit = gw
        .admin(Method::GET, "/v1/audit?token=release-feed", None)
        .await;
    audit.expect(200, None);
    let actions: Vec<Value> = audit.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(actions, [json!("deactivate"), json!("create")], "{audit}");
}

const PG_FIXTURE: &str = include_str!("fixtures/postgres-before-expiry.sql");
const PG_SECRET: &str = include_str!("fixtures/postgres-before-expiry.secret");

#[tokio::test]
async fn a_postgres_schema_of_the_previous_release_migrates_and_its_tokens_keep_working() {
    let Some(url) = postgres_url(
        "a_postgres_schema_of_the_previous_release_migrates_and_its_tokens_keep_working",
    ) else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    pg_connect(&schema.base)
        .await
        .batch_execute(&PG_FIXTURE.replace("__SCHEMA__", &schema.name))
        .await
        .expect("the previous release's schema loads");
    let made = Timestamp::parse_rfc3339("2026-12-01T11:11:01Z").unwrap();
    let clock = ManualClock::new(Timestamp(made.0 + 60_000));
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .postgres(&schema)
        .clock(&clock)
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let secret = PG_SECRET.trim();
    gw.get("/sd/x", Some(secret)).await.expect(200, None);
    let old = gw.token("release-feed").await;
    assert_eq!(
        (&old["status"], &old["inactive_reason"], &old["expires_at"]),
        (&json!("inactive"), &json!("admin"), &Value::Null),
        "{old}"
    );
    let versions: Vec<i64> = schema
        .client()
        .await
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7, 8]);
    // The legacy access bits became names (migration 4).
    assert_eq!(
        old["access"],
        json!(["security-director", "third-party-feeds"])
    );
    assert_eq!(
        gw.token("release-live").await["access"],
        json!(["security-director"])
    );
    // Rotation works on the migrated rows.
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/release-live/regenerate",
            Some(json!({"grace": "1h"})),
        )
        .await;
    r.expect(200, None);
    gw.get("/sd/y", Some(secret)).await.expect(200, None);
}

#[tokio::test]
async fn a_row_the_previous_release_writes_after_the_migration_keeps_its_access() {
    // During a rolling upgrade an instance of the previous release may write a token after
    // this build migrated the database: it sets only the legacy bits. They are read as names.
    let (dir, _, _, _up, mut gw) = sqlite_fixture("/feeds/", "third-party-feeds").await;
    let db = dir.path().join("release.db");
    let secret = SECRET.trim();
    gw.get("/feeds/x", Some(secret))
        .await
        .expect(403, Some("access_denied"));
    gw.stop().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n = conn
        .execute(
            "UPDATE tokens SET access = 2, access_types = NULL WHERE name = 'release-live'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    // And one that drops a seed type through the previous release: only the bits change,
    // the names column still says both. The bits win: the removed type stays removed.
    let n = conn
        .execute(
            "UPDATE tokens SET access = 1 WHERE name = 'release-feed'",
            [],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
    gw.restart().await;
    assert_eq!(
        gw.token("release-live").await["access"],
        json!(["third-party-feeds"])
    );
    assert_eq!(
        gw.token("release-feed").await["access"],
        json!(["security-director"])
    );
    gw.get("/feeds/x", Some(secret)).await.expect(200, None);
}
