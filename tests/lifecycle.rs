//! The idle policy of SPEC §1 "Lifecycle", black-box over HTTP against the real gateway
//! in-process, with the gateway's manual clock moved by the tests: exact lapse and deletion
//! instants, what counts as use, reactivation, persistence by the sweep, and sweeps that race
//! each other or a request.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use http::Method;
use serde_json::{json, Value};
use support::*;
use tokengate::clock::{Clock, ManualClock, Timestamp};
use tokengate::config::Config;
use tokengate::lifecycle::Sweeper;
use tokengate::model::{InactiveReason, Status, TokenId};
use tokengate::policy::{self, Effective};
use tokengate::state::TokenIndex;
use tokengate::store::sqlite::SqliteStore;
use tokengate::store::{Store, SweepOutcome};
use tokengate::usage::UsageRecorder;

const SD: &str = "security-director";
const DAY: Duration = Duration::from_secs(86_400);
const DAY_MS: i64 = 86_400_000;
const SEC_MS: i64 = 1_000;
/// Long enough that no background sweep or usage flush runs during a test.
const NEVER: Duration = Duration::from_secs(365 * 86_400);

// === helpers ===

/// A gateway with `/sd/` (security-director) and `/tpf/` (third-party-feeds) routes, no
/// background sweep during the test (only the start-up one), and `f` applied to the config.
async fn gateway(f: impl FnOnce(&mut Config)) -> (Upstream, TestGateway) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .route("/tpf/", "third-party-feeds", up.addr)
        .configure(|c| {
            c.lifecycle.sweep_interval = NEVER;
            f(c);
        })
        .start()
        .await;
    (up, gw)
}

/// Like [`gateway`], and usage is written to the store only by a sweep, the `/ips` endpoint
/// or a graceful stop, so a test can observe the store's `last_used_at` while it is stale.
async fn gateway_without_flush() -> (Upstream, TestGateway) {
    gateway(|c| c.usage.flush_interval = NEVER).await
}

fn now_ms(gw: &TestGateway) -> i64 {
    gw.clock.now().0
}

fn set_clock(gw: &TestGateway, ms: i64) {
    gw.clock.set(Timestamp(ms));
}

/// RFC 3339 of a gateway-clock instant (whole seconds, `Z`), computed independently.
fn rfc(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("clock after 1970"));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Asserts `status` and `inactive_reason` of a token object.
#[track_caller]
fn assert_status(v: &Value, status: &str, reason: Option<&str>) {
    assert_eq!(
        (&v["status"], &v["inactive_reason"]),
        (&json!(status), &json!(reason)),
        "{v}"
    );
}

/// Asserts an active token whose idle clock started at `since_ms`.
#[track_caller]
fn assert_active_since(v: &Value, since_ms: i64, lc: &Config) {
    assert_status(v, "active", None);
    let inactive = i64::try_from(lc.lifecycle.inactive_after.as_millis()).unwrap();
    let delete = i64::try_from(lc.lifecycle.delete_after.as_millis()).unwrap();
    assert_eq!(v["inactive_at"], json!(rfc(since_ms + inactive)), "{v}");
    assert_eq!(v["delete_at"], json!(rfc(since_ms + delete)), "{v}");
}

/// Asserts a token lapsed by the idle policy whose idle clock started at `since_ms`.
#[track_caller]
fn assert_idle_since(v: &Value, since_ms: i64, lc: &Config) {
    assert_status(v, "inactive", Some("idle"));
    let delete = i64::try_from(lc.lifecycle.delete_after.as_millis()).unwrap();
    assert_eq!(v["inactive_at"], Value::Null, "{v}");
    assert_eq!(v["delete_at"], json!(rfc(since_ms + delete)), "{v}");
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

async fn sweep(gw: &TestGateway) -> SweepOutcome {
    gw.gateway()
        .sweeper
        .sweep_once()
        .await
        .expect("the sweep succeeds")
}

/// The token names in one list of a sweep outcome, sorted.
fn names(list: &[(String, String)]) -> Vec<&str> {
    let mut v: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
    v.sort_unstable();
    v
}

/// A token id as the admin API spells it.
fn tid(id: &str) -> TokenId {
    TokenId::parse_stored(id).expect("a canonical token id")
}

/// The stored status, reason and `last_used_at` of a token (None if the row is gone).
async fn stored(
    gw: &TestGateway,
    id: &str,
) -> Option<(Status, Option<InactiveReason>, Option<Timestamp>)> {
    gw.gateway()
        .store
        .token_by_id(tid(id))
        .await
        .expect("store readable")
        .map(|t| {
            (
                t.token.status,
                t.token.inactive_reason,
                t.token.last_used_at,
            )
        })
}

async fn activate(gw: &TestGateway, names: &[&str]) -> Vec<Value> {
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens/activate",
            Some(json!({ "names": names })),
        )
        .await;
    r.expect(200, None);
    r.json()["tokens"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no tokens list: {r}"))
}

/// `POST /v1/tokens`, returning the raw response (the caller checks the status).
async fn create(gw: &TestGateway, name: &str) -> Resp {
    gw.admin(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": name, "access": [SD]})),
    )
    .await
}

/// Names listed by `GET /v1/tokens` (optionally with a status filter).
async fn listed(gw: &TestGateway, status: Option<&str>) -> Vec<String> {
    let path = match status {
        Some(s) => format!("/v1/tokens?status={s}"),
        None => "/v1/tokens".to_string(),
    };
    let r = gw.admin(Method::GET, &path, None).await;
    r.expect(200, None);
    r.json()["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens list: {r}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

// === lapse at inactive_after ===

#[tokio::test]
async fn used_and_never_used_tokens_lapse_at_exactly_30_days() {
    let (up, gw) = gateway(|_| {}).await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    // Tokens checked through the admin API only before their lapse (a request is a use and
    // would restart the clock), and probes that make one request just before it.
    let (never, v) = gw.create_token("never", &[SD]).await;
    assert_active_since(&v, t0, &cfg);
    let (never_probe, _) = gw.create_token("never-probe", &[SD]).await;
    let (used, _) = gw.create_token("used", &[SD]).await;
    let (used_probe, _) = gw.create_token("used-probe", &[SD]).await;
    let never_id = id_of(&v);

    gw.clock.advance(DAY);
    let t_use = now_ms(&gw);
    gw.get("/sd/a", Some(&used)).await.expect(200, None);
    gw.get("/sd/a", Some(&used_probe)).await.expect(200, None);
    // The use is visible at once (the admin API adds this instance's unflushed uses).
    let v = gw.token("used").await;
    assert_active_since(&v, t_use, &cfg);
    assert_eq!(v["last_used_at"], json!(rfc(t_use)), "{v}");

    // 30 days - 1 s after creation: still active.
    set_clock(&gw, t0 + 30 * DAY_MS - SEC_MS);
    let v = gw.token("never").await;
    assert_active_since(&v, t0, &cfg);
    assert_eq!(v["last_used_at"], Value::Null, "{v}");
    gw.get("/sd/b", Some(&never_probe)).await.expect(200, None);

    // Exactly 30 days: lapsed, with no sweep having run.
    set_clock(&gw, t0 + 30 * DAY_MS);
    gw.get("/sd/c", Some(&never))
        .await
        .expect(403, Some("token_inactive"));
    let v = gw.token("never").await;
    assert_idle_since(&v, t0, &cfg);
    assert_eq!(v["last_used_at"], Value::Null, "{v}");
    assert_eq!(
        stored(&gw, &never_id).await.map(|s| s.0),
        Some(Status::Active),
        "the store was changed although no sweep ran"
    );
    // The probe used at 30d - 1s restarted its clock.
    gw.get("/sd/c", Some(&never_probe)).await.expect(200, None);
    // The used token's clock started at its use, a day later.
    assert_active_since(&gw.token("used").await, t_use, &cfg);
    assert_eq!(
        listed(&gw, Some("inactive")).await,
        ["never"],
        "the list filter must use the effective status"
    );

    // The used token: 30 days - 1 s after its use still active, at 30 days inactive.
    set_clock(&gw, t_use + 30 * DAY_MS - SEC_MS);
    assert_active_since(&gw.token("used").await, t_use, &cfg);
    gw.get("/sd/d", Some(&used_probe)).await.expect(200, None);
    set_clock(&gw, t_use + 30 * DAY_MS);
    gw.get("/sd/e", Some(&used))
        .await
        .expect(403, Some("token_inactive"));
    let v = gw.token("used").await;
    assert_idle_since(&v, t_use, &cfg);
    assert_eq!(v["last_used_at"], json!(rfc(t_use)), "{v}");
    gw.get("/sd/e", Some(&used_probe)).await.expect(200, None);
    // Forwarded: 2 uses at day 1, then probes at 30d-1s, 30d, 31d-1s, 31d.
    assert_eq!(up.count(), 6);
}

#[tokio::test]
async fn the_sweep_persists_the_lapse_across_a_restart() {
    let (_up, mut gw) = gateway(|_| {}).await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (idle, v) = gw.create_token("idle", &[SD]).await;
    let id = id_of(&v);
    let (kept, _) = gw.create_token("kept", &[SD]).await;
    gw.clock.advance(29 * DAY);
    gw.get("/sd/x", Some(&kept)).await.expect(200, None);

    set_clock(&gw, t0 + 30 * DAY_MS);
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deactivated), ["idle"], "{out:?}");
    assert!(out.deleted.is_empty(), "{out:?}");
    assert_eq!(
        stored(&gw, &id).await,
        Some((Status::Inactive, Some(InactiveReason::Idle), None))
    );
    let v = gw.token("idle").await;
    assert_idle_since(&v, t0, &cfg);
    assert_eq!(v["deactivated_at"], json!(rfc(t0 + 30 * DAY_MS)), "{v}");

    // A day later, after a restart: the state comes from the store.
    gw.clock.advance(DAY);
    gw.restart().await;
    let v = gw.token("idle").await;
    assert_idle_since(&v, t0, &cfg);
    assert_eq!(v["deactivated_at"], json!(rfc(t0 + 30 * DAY_MS)), "{v}");
    gw.get("/sd/x", Some(&idle))
        .await
        .expect(403, Some("token_inactive"));
    assert_status(&gw.token("kept").await, "active", None);
    gw.get("/sd/x", Some(&kept)).await.expect(200, None);
}

// === reactivation ===

#[tokio::test]
async fn reactivation_at_day_31_restarts_the_idle_clock() {
    // Once with the lapse persisted by a sweep, once with it only effective.
    for swept in [true, false] {
        let (_up, gw) = gateway(|_| {}).await;
        let cfg = gw.config.clone();
        let t0 = now_ms(&gw);
        let (secret, v) = gw.create_token("revived", &[SD]).await;
        let id = id_of(&v);

        set_clock(&gw, t0 + 31 * DAY_MS);
        if swept {
            let out = sweep(&gw).await;
            assert_eq!(names(&out.deactivated), ["revived"], "{out:?}");
        }
        gw.get("/sd/x", Some(&secret))
            .await
            .expect(403, Some("token_inactive"));
        let t_act = now_ms(&gw);
        let tokens = activate(&gw, &["revived"]).await;
        assert_eq!(tokens.len(), 1, "{tokens:?}");
        assert_active_since(&tokens[0], t_act, &cfg);
        assert_eq!(tokens[0]["activated_at"], json!(rfc(t_act)), "{tokens:?}");
        assert_eq!(
            stored(&gw, &id).await.map(|s| (s.0, s.1)),
            Some((Status::Active, None)),
            "swept: {swept}"
        );
        // Works again at once (a use at the activation instant: same idle start).
        gw.get("/sd/x", Some(&secret)).await.expect(200, None);

        // Activating an active token changes nothing.
        set_clock(&gw, t_act + 5 * DAY_MS);
        let again = activate(&gw, &["revived"]).await;
        assert_active_since(&again[0], t_act, &cfg);
        assert_eq!(again[0]["activated_at"], json!(rfc(t_act)), "{again:?}");

        // 30 days after the activation - 1 s: still active, and a sweep leaves it alone.
        set_clock(&gw, t_act + 30 * DAY_MS - SEC_MS);
        assert_active_since(&gw.token("revived").await, t_act, &cfg);
        let out = sweep(&gw).await;
        assert!(
            out.deactivated.is_empty() && out.deleted.is_empty(),
            "swept: {swept}: {out:?}"
        );

        // 30 days after the activation: lapsed again.
        set_clock(&gw, t_act + 30 * DAY_MS);
        gw.get("/sd/x", Some(&secret))
            .await
            .expect(403, Some("token_inactive"));
        let v = gw.token("revived").await;
        assert_idle_since(&v, t_act, &cfg);
        assert_eq!(v["activated_at"], json!(rfc(t_act)), "{v}");
        let out = sweep(&gw).await;
        assert_eq!(names(&out.deactivated), ["revived"], "swept: {swept}");
        // The 90 days restarted with the activation too: not deleted a day after t0 + 90d.
        set_clock(&gw, t0 + 91 * DAY_MS);
        assert_idle_since(&gw.token("revived").await, t_act, &cfg);
    }
}

// === refusals are not uses ===

#[tokio::test]
async fn refused_requests_never_refresh_the_idle_clock() {
    let (up, gw) = gateway(|_| {}).await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("refused", &[SD]).await;
    let id = id_of(&v);

    gw.clock.advance(DAY);
    gw.get("/tpf/x", Some(&secret))
        .await
        .expect(403, Some("access_denied"));
    gw.get("/nowhere", Some(&secret))
        .await
        .expect(404, Some("no_route"));
    gw.get("/sd/..%2f", Some(&secret))
        .await
        .expect(400, Some("invalid_request"));

    gw.clock.advance(DAY);
    gw.admin(
        Method::POST,
        "/v1/tokens/refused/ips/block",
        Some(json!({"ips": ["127.0.0.1"]})),
    )
    .await
    .expect(200, None);
    for _ in 0..2 {
        gw.get("/sd/x", Some(&secret))
            .await
            .expect(403, Some("ip_blocked"));
    }
    let rows = gw.ips("refused").await;
    let row = rows
        .iter()
        .find(|r| r["ip"] == "127.0.0.1")
        .unwrap_or_else(|| panic!("no 127.0.0.1 row in {rows:?}"));
    assert_eq!(
        (
            &row["requests"],
            &row["denied"],
            &row["blocked"],
            &row["first_used_at"],
            &row["last_used_at"]
        ),
        (
            &json!(0),
            &json!(2),
            &json!(true),
            &Value::Null,
            &Value::Null
        ),
        "{row}"
    );
    let v = gw.token("refused").await;
    assert_eq!(
        v["last_used_at"],
        Value::Null,
        "denied requests are not uses: {v}"
    );
    assert_active_since(&v, t0, &cfg);
    assert_eq!(stored(&gw, &id).await.and_then(|s| s.2), None);

    set_clock(&gw, t0 + 30 * DAY_MS - SEC_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    assert_active_since(&gw.token("refused").await, t0, &cfg);

    // Lapsed on schedule; the inactive check comes before the block and the route.
    set_clock(&gw, t0 + 30 * DAY_MS);
    for path in ["/sd/x", "/tpf/x", "/nowhere"] {
        gw.get(path, Some(&secret))
            .await
            .expect(403, Some("token_inactive"));
    }
    assert_idle_since(&gw.token("refused").await, t0, &cfg);
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deactivated), ["refused"], "{out:?}");

    set_clock(&gw, t0 + 60 * DAY_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    let v = gw.token("refused").await;
    assert_idle_since(&v, t0, &cfg);
    assert_eq!(v["last_used_at"], Value::Null, "{v}");

    // Deleted on schedule.
    set_clock(&gw, t0 + 90 * DAY_MS - SEC_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    assert_idle_since(&gw.token("refused").await, t0, &cfg);
    let out = sweep(&gw).await;
    assert!(out.deleted.is_empty(), "{out:?}");
    set_clock(&gw, t0 + 90 * DAY_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::GET, "/v1/tokens/refused", None)
        .await
        .expect(404, Some("not_found"));
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deleted), ["refused"], "{out:?}");
    assert!(stored(&gw, &id).await.is_none());
    let left = gw.gateway().store.list_ips(tid(&id)).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(up.count(), 0, "nothing was ever forwarded");
}

// === deletion at delete_after ===

#[tokio::test]
async fn tokens_are_deleted_at_exactly_90_days_and_their_names_are_free() {
    let (_up, mut gw) = gateway(|_| {}).await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (doomed, v) = gw.create_token("doomed", &[SD]).await;
    let doomed_id = id_of(&v);
    let (reused, v) = gw.create_token("reused", &[SD]).await;
    let reused_id = id_of(&v);
    // Give both IP records: a use (at t0, so the idle clock still starts at t0) and a block.
    for (name, secret) in [("doomed", &doomed), ("reused", &reused)] {
        gw.get("/sd/x", Some(secret)).await.expect(200, None);
        gw.admin(
            Method::POST,
            &format!("/v1/tokens/{name}/ips/block"),
            Some(json!({"ips": ["192.0.2.7", "198.51.100.0/24"]})),
        )
        .await
        .expect(200, None);
        assert_eq!(gw.ips(name).await.len(), 3, "{name}");
    }
    set_clock(&gw, t0 + 30 * DAY_MS);
    assert_eq!(
        names(&sweep(&gw).await.deactivated),
        ["doomed", "reused"],
        "lapsed at 30 days"
    );

    // 90 days - 1 s: still there, inactive.
    set_clock(&gw, t0 + 90 * DAY_MS - SEC_MS);
    for name in ["doomed", "reused"] {
        let v = gw.token(name).await;
        assert_idle_since(&v, t0, &cfg);
        assert_eq!(v["delete_at"], json!(rfc(t0 + 90 * DAY_MS)), "{v}");
    }
    gw.get("/sd/x", Some(&doomed))
        .await
        .expect(403, Some("token_inactive"));
    let out = sweep(&gw).await;
    assert!(
        out.deleted.is_empty() && out.deactivated.is_empty(),
        "{out:?}"
    );

    // 90 days: gone everywhere before any sweep.
    set_clock(&gw, t0 + 90 * DAY_MS);
    for (name, secret) in [("doomed", &doomed), ("reused", &reused)] {
        gw.get("/sd/x", Some(secret))
            .await
            .expect(401, Some("invalid_token"));
        gw.admin(Method::GET, &format!("/v1/tokens/{name}"), None)
            .await
            .expect(404, Some("not_found"));
        gw.admin(Method::GET, &format!("/v1/tokens/{name}/ips"), None)
            .await
            .expect(404, Some("not_found"));
    }
    assert!(listed(&gw, None).await.is_empty());
    assert!(stored(&gw, &doomed_id).await.is_some(), "no sweep ran yet");

    // The name is free before the sweep ran.
    let r = create(&gw, "reused").await;
    r.expect(201, None);
    let fresh = r.json();
    assert_ne!(id_of(&fresh), reused_id, "{r}");
    assert_active_since(&fresh, t0 + 90 * DAY_MS, &cfg);
    let fresh_secret = fresh["token"].as_str().unwrap().to_string();
    gw.get("/sd/x", Some(&fresh_secret)).await.expect(200, None);
    gw.get("/sd/x", Some(&reused))
        .await
        .expect(401, Some("invalid_token"));
    assert!(stored(&gw, &reused_id).await.is_none());
    let left = gw.gateway().store.list_ips(tid(&reused_id)).await.unwrap();
    assert!(left.is_empty(), "old IP records survive: {left:?}");

    // The sweep removes the other one, with its IP records.
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deleted), ["doomed"], "{out:?}");
    assert_eq!(out.deleted[0].0, doomed_id);
    assert!(out.deactivated.is_empty(), "{out:?}");
    assert!(stored(&gw, &doomed_id).await.is_none());
    let left = gw.gateway().store.list_ips(tid(&doomed_id)).await.unwrap();
    assert!(left.is_empty(), "old IP records survive: {left:?}");

    gw.restart().await;
    gw.admin(Method::GET, "/v1/tokens/doomed", None)
        .await
        .expect(404, Some("not_found"));
    gw.get("/sd/x", Some(&doomed))
        .await
        .expect(401, Some("invalid_token"));
    assert_eq!(id_of(&gw.token("reused").await), id_of(&fresh));
    let r = create(&gw, "doomed").await;
    r.expect(201, None);
    assert_ne!(id_of(&r.json()), doomed_id, "{r}");
    assert!(gw.ips("doomed").await.is_empty(), "a new name starts clean");
}

// === the policy numbers come from config ===

#[tokio::test]
async fn the_policy_offsets_come_from_config() {
    let (_up, gw) = gateway(|c| {
        c.lifecycle.inactive_after = Duration::from_secs(10);
        c.lifecycle.delete_after = Duration::from_secs(20);
    })
    .await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (quiet, v) = gw.create_token("quiet", &[SD]).await;
    assert_active_since(&v, t0, &cfg);
    let id = id_of(&v);
    let (busy, _) = gw.create_token("busy", &[SD]).await;
    gw.clock.advance(Duration::from_secs(5));
    gw.get("/sd/x", Some(&busy)).await.expect(200, None);

    set_clock(&gw, t0 + 10 * SEC_MS - SEC_MS);
    assert_active_since(&gw.token("quiet").await, t0, &cfg);
    set_clock(&gw, t0 + 10 * SEC_MS);
    gw.get("/sd/x", Some(&quiet))
        .await
        .expect(403, Some("token_inactive"));
    assert_idle_since(&gw.token("quiet").await, t0, &cfg);
    assert_active_since(&gw.token("busy").await, t0 + 5 * SEC_MS, &cfg);
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deactivated), ["quiet"], "{out:?}");

    set_clock(&gw, t0 + 15 * SEC_MS);
    gw.get("/sd/x", Some(&busy))
        .await
        .expect(403, Some("token_inactive"));

    set_clock(&gw, t0 + 20 * SEC_MS - SEC_MS);
    let v = gw.token("quiet").await;
    assert_idle_since(&v, t0, &cfg);
    assert_eq!(v["delete_at"], json!(rfc(t0 + 20 * SEC_MS)), "{v}");
    assert!(sweep(&gw).await.deleted.is_empty());

    set_clock(&gw, t0 + 20 * SEC_MS);
    gw.get("/sd/x", Some(&quiet))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::GET, "/v1/tokens/quiet", None)
        .await
        .expect(404, Some("not_found"));
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deleted), ["quiet"], "{out:?}");
    assert!(stored(&gw, &id).await.is_none());
    assert_idle_since(&gw.token("busy").await, t0 + 5 * SEC_MS, &cfg);
}

// === uses keep a token alive ===

#[tokio::test]
async fn proxied_uses_keep_a_token_alive() {
    let (up, gw) = gateway_without_flush().await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("busy", &[SD]).await;
    let id = id_of(&v);

    // A use every 20 days for 100 days; the flush alternates between /ips and the sweep.
    let mut last_use: Option<i64> = None;
    for k in 1..=5i64 {
        set_clock(&gw, t0 + k * 20 * DAY_MS);
        gw.get("/sd/x", Some(&secret)).await.expect(200, None);
        let now = now_ms(&gw);
        assert_eq!(
            stored(&gw, &id).await.and_then(|s| s.2),
            last_use.map(Timestamp),
            "day {}: the store should not have this use before a flush",
            k * 20
        );
        if k % 2 == 1 {
            let rows = gw.ips("busy").await;
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0]["requests"], json!(k), "{rows:?}");
            assert_eq!(rows[0]["last_used_at"], json!(rfc(now)), "{rows:?}");
        } else {
            let out = sweep(&gw).await;
            assert!(
                out.deactivated.is_empty() && out.deleted.is_empty(),
                "day {}: {out:?}",
                k * 20
            );
        }
        assert_eq!(
            stored(&gw, &id).await,
            Some((Status::Active, None, Some(Timestamp(now))))
        );
        let v = gw.token("busy").await;
        assert_active_since(&v, now, &cfg);
        assert_eq!(v["last_used_at"], json!(rfc(now)), "{v}");
        last_use = Some(now);
    }
    assert_eq!(up.count(), 5);

    // The store's last_used_at is 29 days old at a use, and 30 days old a day later: the
    // sweep must flush this instance's use first and not lapse the token.
    let day100 = t0 + 100 * DAY_MS;
    set_clock(&gw, day100 + 29 * DAY_MS);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    set_clock(&gw, day100 + 30 * DAY_MS);
    assert_eq!(
        stored(&gw, &id).await,
        Some((Status::Active, None, Some(Timestamp(day100)))),
        "the store's last_used_at should still be stale here"
    );
    let out = sweep(&gw).await;
    assert!(
        out.deactivated.is_empty() && out.deleted.is_empty(),
        "a sweep lapsed a token used a day ago: {out:?}"
    );
    assert_eq!(
        stored(&gw, &id).await,
        Some((Status::Active, None, Some(Timestamp(day100 + 29 * DAY_MS))))
    );
    assert_active_since(&gw.token("busy").await, day100 + 29 * DAY_MS, &cfg);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
}

#[tokio::test]
async fn a_use_survives_a_restart() {
    let (_up, mut gw) = gateway_without_flush().await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("t", &[SD]).await;
    let id = id_of(&v);

    set_clock(&gw, t0 + 10 * DAY_MS);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    assert_eq!(
        stored(&gw, &id).await.and_then(|s| s.2),
        None,
        "not flushed yet"
    );
    // A graceful stop flushes the use.
    gw.restart().await;
    assert_eq!(
        stored(&gw, &id).await.and_then(|s| s.2),
        Some(Timestamp(t0 + 10 * DAY_MS))
    );

    set_clock(&gw, t0 + 39 * DAY_MS);
    assert_active_since(&gw.token("t").await, t0 + 10 * DAY_MS, &cfg);
    assert!(sweep(&gw).await.deactivated.is_empty());
    set_clock(&gw, t0 + 40 * DAY_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    assert_idle_since(&gw.token("t").await, t0 + 10 * DAY_MS, &cfg);
    assert_eq!(names(&sweep(&gw).await.deactivated), ["t"]);
}

// === sweeps: idempotent, and safe when racing ===

/// Creates `old-1..n` at the current time, then `mid-1..n` 60 days later and `fresh` 91 days
/// later, leaving the clock at +91 days: `old-*` are due for deletion, `mid-*` for
/// deactivation, `fresh` for nothing. Returns the ids by name.
async fn lapsed_population(gw: &TestGateway, n: usize) -> BTreeMap<String, String> {
    let t0 = now_ms(gw);
    let mut ids = BTreeMap::new();
    for i in 1..=n {
        let name = format!("old-{i}");
        let (secret, v) = gw.create_token(&name, &[SD]).await;
        // With a usage record, so deletion has IP rows to remove.
        gw.get("/sd/x", Some(&secret)).await.expect(200, None);
        ids.insert(name, id_of(&v));
    }
    set_clock(gw, t0 + 60 * DAY_MS);
    for i in 1..=n {
        let name = format!("mid-{i}");
        ids.insert(name.clone(), id_of(&gw.create_token(&name, &[SD]).await.1));
    }
    set_clock(gw, t0 + 91 * DAY_MS);
    ids.insert(
        "fresh".into(),
        id_of(&gw.create_token("fresh", &[SD]).await.1),
    );
    ids
}

/// Asserts that `outcomes` together deactivated each `mid-*` and deleted each `old-*` exactly
/// once, with the right ids, and touched nothing else.
#[track_caller]
fn assert_each_once(outcomes: &[&SweepOutcome], ids: &BTreeMap<String, String>, n: usize) {
    let deactivated: Vec<(String, String)> = outcomes
        .iter()
        .flat_map(|o| o.deactivated.iter().cloned())
        .collect();
    let deleted: Vec<(String, String)> = outcomes
        .iter()
        .flat_map(|o| o.deleted.iter().cloned())
        .collect();
    let expect = |prefix: &str| -> Vec<(String, String)> {
        (1..=n)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                (ids[&name].clone(), name)
            })
            .collect()
    };
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    };
    assert_eq!(sorted(deactivated), expect("mid"), "{outcomes:?}");
    assert_eq!(sorted(deleted), expect("old"), "{outcomes:?}");
}

async fn assert_population_swept(gw: &TestGateway, ids: &BTreeMap<String, String>) {
    for (name, id) in ids {
        let row = stored(gw, id).await;
        if name.starts_with("old-") {
            assert!(row.is_none(), "{name} not deleted");
            let left = gw.gateway().store.list_ips(tid(id)).await.unwrap();
            assert!(left.is_empty(), "{name}: {left:?}");
        } else if name.starts_with("mid-") {
            assert_eq!(
                row,
                Some((Status::Inactive, Some(InactiveReason::Idle), None)),
                "{name}"
            );
        } else {
            assert_eq!(row, Some((Status::Active, None, None)), "{name}");
        }
    }
}

#[tokio::test]
async fn a_second_sweep_changes_nothing() {
    let (_up, gw) = gateway(|_| {}).await;
    let ids = lapsed_population(&gw, 3).await;
    let first = sweep(&gw).await;
    assert_each_once(&[&first], &ids, 3);
    let second = sweep(&gw).await;
    assert!(
        second.deactivated.is_empty() && second.deleted.is_empty(),
        "{second:?}"
    );
    assert_population_swept(&gw, &ids).await;
    assert_eq!(listed(&gw, Some("active")).await, ["fresh"]);
    assert_eq!(
        listed(&gw, Some("inactive")).await,
        ["mid-1", "mid-2", "mid-3"]
    );
}

#[tokio::test]
async fn concurrent_sweeps_change_each_token_once() {
    let (_up, gw) = gateway(|_| {}).await;
    let ids = lapsed_population(&gw, 4).await;
    let sweeper = &gw.gateway().sweeper;
    let (a, b) = tokio::join!(sweeper.sweep_once(), sweeper.sweep_once());
    let (a, b) = (a.expect("sweep a"), b.expect("sweep b"));
    assert_each_once(&[&a, &b], &ids, 4);
    assert_population_swept(&gw, &ids).await;
    let again = sweep(&gw).await;
    assert!(
        again.deactivated.is_empty() && again.deleted.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn sweeps_of_two_instances_sharing_a_store_change_each_token_once() {
    let (_up, gw) = gateway(|_| {}).await;
    let ids = lapsed_population(&gw, 4).await;
    // A second instance: its own connection to the same SQLite file, its own memory.
    let tokengate::config::StoreUrl::Sqlite(path) = &gw.config.store.url else {
        panic!("the test gateway uses SQLite");
    };
    let other_store: Arc<dyn Store> = Arc::new(SqliteStore::open(path).await.unwrap());
    let other = Sweeper {
        index: Arc::new(
            TokenIndex::load(other_store.as_ref(), gw.config.access_types.clone())
                .await
                .unwrap(),
        ),
        store: other_store,
        usage: Arc::new(UsageRecorder::new(gw.config.usage.max_ips_per_token)),
        clock: Arc::new(gw.clock.clone()),
        lifecycle: gw.config.lifecycle,
        audit_retention: gw.config.audit.retention,
        usage_history: gw.config.usage.history,
        margin: Duration::ZERO,
        expiry_notice: None,
    };
    let (a, b) = tokio::join!(gw.gateway().sweeper.sweep_once(), other.sweep_once());
    let (a, b) = (a.expect("sweep here"), b.expect("sweep there"));
    assert_each_once(&[&a, &b], &ids, 4);
    assert_population_swept(&gw, &ids).await;
    // Each instance refreshed only what its own sweep changed, but both decide the same
    // effective status from memory (a token gone from memory is refused as unknown).
    let now = gw.clock.now();
    for index in [&gw.gateway().index, &other.index] {
        for (name, id) in &ids {
            let effective = index.get_by_id(id).map(|t| {
                let since = policy::idle_start(t.created_at, t.activated_at, t.last_used_at());
                policy::effective(
                    t.status,
                    t.inactive_reason,
                    since,
                    now,
                    &gw.config.lifecycle,
                )
            });
            let expected = match name.split('-').next() {
                Some("old") => None,
                Some("mid") => Some(Effective::Inactive(InactiveReason::Idle)),
                _ => Some(Effective::Active),
            };
            assert_eq!(
                effective.filter(|e| *e != Effective::Deleted),
                expected,
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn a_sweep_racing_a_use_does_not_lapse_the_token() {
    let (up, gw) = gateway_without_flush().await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("racer", &[SD]).await;
    let id = id_of(&v);
    let (_, v) = gw.create_token("idler", &[SD]).await;
    let idler_id = id_of(&v);

    set_clock(&gw, t0 + 30 * DAY_MS - SEC_MS);
    let (out, resp) = tokio::join!(
        gw.gateway().sweeper.sweep_once(),
        gw.get("/sd/x", Some(&secret))
    );
    resp.expect(200, None);
    let out = out.expect("the sweep succeeds");
    assert!(
        out.deactivated.is_empty() && out.deleted.is_empty(),
        "{out:?}"
    );
    let t_use = t0 + 30 * DAY_MS - SEC_MS;
    assert_active_since(&gw.token("racer").await, t_use, &cfg);
    assert_eq!(up.count(), 1);

    // At the instant the racer would have lapsed without that use, only the idler lapses,
    // whether or not the racing sweep flushed the use.
    set_clock(&gw, t0 + 30 * DAY_MS);
    let out = sweep(&gw).await;
    assert_eq!(names(&out.deactivated), ["idler"], "{out:?}");
    assert_eq!(out.deactivated[0].0, idler_id);
    assert_eq!(
        stored(&gw, &id).await,
        Some((Status::Active, None, Some(Timestamp(t_use))))
    );
    assert_active_since(&gw.token("racer").await, t_use, &cfg);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
}

/// What the proxy does once a request passed every check (`touch` + `record_use`), run by
/// the sweep's first clock read: a use that lands between the sweep's usage flush and its
/// store update, just before the lapse instant, while the clock crosses that instant.
struct UseDuringSweep {
    clock: ManualClock,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Clock for UseDuringSweep {
    fn now(&self) -> Timestamp {
        let hook = self.hook.lock().unwrap().take();
        if let Some(f) = hook {
            f();
        }
        self.clock.now()
    }
}

#[tokio::test]
async fn a_use_between_the_sweeps_flush_and_its_update_is_not_lapsed() {
    let (_up, gw) = gateway_without_flush().await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("racer", &[SD]).await;
    let id = id_of(&v);
    let lapse = t0 + 30 * DAY_MS;
    let t_use = lapse - 1;
    set_clock(&gw, t_use);

    let g = gw.gateway();
    let state = g.index.get_by_id(&id).expect("the token is in memory");
    let (usage, clock) = (g.usage.clone(), gw.clock.clone());
    let use_now: Box<dyn FnOnce() + Send> = Box::new(move || {
        state.touch(Timestamp(t_use));
        usage.record_use(state.id, "127.0.0.1".parse().unwrap(), Timestamp(t_use));
        clock.set(Timestamp(lapse));
    });
    let sweeper = Sweeper {
        store: g.store.clone(),
        index: g.index.clone(),
        usage: g.usage.clone(),
        clock: Arc::new(UseDuringSweep {
            clock: gw.clock.clone(),
            hook: Mutex::new(Some(use_now)),
        }),
        lifecycle: cfg.lifecycle,
        audit_retention: cfg.audit.retention,
        usage_history: cfg.usage.history,
        margin: Duration::ZERO,
        expiry_notice: None,
    };
    let out = sweeper.sweep_once().await.expect("the sweep succeeds");
    assert_eq!(now_ms(&gw), lapse, "the hook ran");
    assert!(
        out.deactivated.is_empty(),
        "a token used 1 ms before the sweep's instant was lapsed: {out:?}"
    );
    assert_active_since(&gw.token("racer").await, t_use, &cfg);
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    assert_eq!(stored(&gw, &id).await.map(|s| s.0), Some(Status::Active));
}

// === several instances sharing a store ===

#[tokio::test]
async fn a_use_on_another_instance_keeps_the_token_alive_here() {
    let (_up, gw) = gateway_without_flush().await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("shared", &[SD]).await;
    let id = id_of(&v);
    let other = gw.another_instance().await;

    set_clock(&gw, t0 + 20 * DAY_MS);
    other.get("/sd/x", Some(&secret)).await.expect(200, None);
    // The other instance writes its use to the store.
    assert_eq!(other.ips("shared").await.len(), 1);
    assert_eq!(
        stored(&gw, &id).await.and_then(|s| s.2),
        Some(Timestamp(t0 + 20 * DAY_MS))
    );

    // 30 days after creation, 10 days after that use: active on both instances.
    set_clock(&gw, t0 + 30 * DAY_MS);
    for (label, g) in [("this instance", &gw), ("the other", &other)] {
        assert_active_since(&g.token("shared").await, t0 + 20 * DAY_MS, &cfg);
        let r = g.get("/sd/x", Some(&secret)).await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "{label} refused a token used 10 days ago on another instance \
             (SPEC §1: before refusing a token as idle, take the store's last_used_at into account): {r}"
        );
    }
    assert!(sweep(&gw).await.deactivated.is_empty());
}

// === admin changes and the idle clock ===

#[tokio::test]
async fn admin_edits_do_not_restart_the_idle_clock() {
    let (_up, gw) = gateway(|_| {}).await;
    let cfg = gw.config.clone();
    let t0 = now_ms(&gw);
    gw.create_token("edited", &[SD]).await;

    set_clock(&gw, t0 + 29 * DAY_MS);
    gw.admin(
        Method::PATCH,
        "/v1/tokens/edited",
        Some(json!({"description": "still here", "access": [SD, "third-party-feeds"]})),
    )
    .await
    .expect(200, None);
    gw.admin(
        Method::POST,
        "/v1/tokens/edited/ips/block",
        Some(json!({"ips": ["192.0.2.1"]})),
    )
    .await
    .expect(200, None);
    gw.admin(
        Method::POST,
        "/v1/tokens/edited/ips/unblock",
        Some(json!({"ips": ["192.0.2.1"]})),
    )
    .await
    .expect(200, None);
    let r = gw
        .admin(Method::POST, "/v1/tokens/edited/regenerate", None)
        .await;
    r.expect(200, None);
    assert_active_since(&r.json(), t0, &cfg);
    let secret = r.json()["token"].as_str().unwrap().to_string();

    set_clock(&gw, t0 + 30 * DAY_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    assert_idle_since(&gw.token("edited").await, t0, &cfg);
}

#[tokio::test]
async fn admin_deactivated_tokens_are_deleted_on_the_same_schedule() {
    let (_up, gw) = gateway(|_| {}).await;
    let t0 = now_ms(&gw);
    let (secret, v) = gw.create_token("parked", &[SD]).await;
    let id = id_of(&v);

    set_clock(&gw, t0 + DAY_MS);
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["parked"]})),
    )
    .await
    .expect(200, None);
    // Past inactive_after it stays inactive for the admin's reason; the sweep leaves it.
    set_clock(&gw, t0 + 31 * DAY_MS);
    let v = gw.token("parked").await;
    assert_status(&v, "inactive", Some("admin"));
    assert_eq!(v["delete_at"], json!(rfc(t0 + 90 * DAY_MS)), "{v}");
    assert!(sweep(&gw).await.deactivated.is_empty());
    assert_eq!(
        stored(&gw, &id).await.map(|s| s.1),
        Some(Some(InactiveReason::Admin))
    );

    set_clock(&gw, t0 + 90 * DAY_MS - SEC_MS);
    assert_status(&gw.token("parked").await, "inactive", Some("admin"));
    set_clock(&gw, t0 + 90 * DAY_MS);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::GET, "/v1/tokens/parked", None)
        .await
        .expect(404, Some("not_found"));
    assert_eq!(names(&sweep(&gw).await.deleted), ["parked"]);
    assert!(stored(&gw, &id).await.is_none());
}

// === configuration ===

#[test]
fn delete_after_not_exceeding_inactive_after_is_a_startup_error() {
    for body in [
        "[lifecycle]\ninactive_after = \"30d\"\ndelete_after = \"30d\"\n",
        "[lifecycle]\ninactive_after = \"30d\"\ndelete_after = \"29d\"\n",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokengate.toml");
        std::fs::write(&file, body).unwrap();
        let err = Config::load(Some(&file), Vec::<(String, String)>::new())
            .expect_err("the config must be refused");
        assert!(
            err.to_string().starts_with("lifecycle.delete_after"),
            "{body:?}: {err}"
        );
    }
}
