//! The audit log (SPEC §8): one row per admin mutation or idle-policy change, written with the
//! change, readable at `GET /v1/audit`, never holding a secret.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;

async fn audit(gw: &TestGateway, query: &str) -> Vec<Value> {
    let r = gw
        .admin(Method::GET, &format!("/v1/audit{query}"), None)
        .await;
    r.expect(200, None);
    r.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no entries: {r}"))
}

#[tokio::test]
async fn every_admin_mutation_writes_one_entry_with_actor_ip_and_details() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let (secret, created) = gw.create_token("Feed-A", &["security-director"]).await;
    let id = created["id"].as_str().unwrap().to_string();
    let steps: Vec<(Method, String, Option<Value>, u16)> = vec![
        (
            Method::PATCH,
            "/v1/tokens/feed-a".into(),
            Some(json!({"description": "new"})),
            200,
        ),
        (
            Method::POST,
            "/v1/tokens/deactivate".into(),
            Some(json!({"names": ["feed-a"]})),
            200,
        ),
        (
            Method::POST,
            "/v1/tokens/activate".into(),
            Some(json!({"names": ["FEED-A"]})),
            200,
        ),
        (
            Method::POST,
            "/v1/tokens/feed-a/regenerate".into(),
            None,
            200,
        ),
        (
            Method::POST,
            "/v1/tokens/feed-a/ips/block".into(),
            Some(json!({"ips": ["10.0.0.0/8"]})),
            200,
        ),
        (
            Method::POST,
            "/v1/tokens/feed-a/ips/unblock".into(),
            Some(json!({"ips": ["10.0.0.0/8"]})),
            200,
        ),
        (Method::DELETE, "/v1/tokens/feed-a".into(), None, 204),
    ];
    let mut secrets = vec![secret];
    for (m, path, body, status) in steps {
        let r = gw.admin(m, &path, body).await;
        r.expect(status, None);
        let returned = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("token")?.as_str().map(str::to_string));
        secrets.extend(returned);
    }
    assert_eq!(secrets.len(), 2, "create and regenerate returned secrets");
    let entries = audit(&gw, "").await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
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
        "newest first, one per mutation: {entries:#?}"
    );
    for e in &entries {
        assert_eq!(e["actor"], "admin-key", "{e}");
        assert_eq!(e["source_ip"], "127.0.0.1", "{e}");
        assert_eq!(e["token"], "Feed-A", "{e}");
        assert_eq!(e["token_id"], id.as_str(), "{e}");
        assert!(e["details"].is_object(), "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let by = |a: &str| entries.iter().find(|e| e["action"] == a).unwrap().clone();
    assert_eq!(
        by("create")["details"]["access"],
        json!(["security-director"])
    );
    assert_eq!(
        by("update")["details"]["description"],
        json!({"from": null, "to": "new"})
    );
    assert_eq!(by("deactivate")["details"]["previous_status"], "active");
    assert_eq!(by("block")["details"]["ips"], json!(["10.0.0.0/8"]));
    let text = serde_json::to_string(&entries).unwrap();
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()) && !text.contains(&s[3..33]),
            "a secret is in the audit log"
        );
    }
}

#[tokio::test]
async fn refused_mutations_write_nothing_and_no_ops_write_nothing() {
    let gw = TestGateway::builder().start().await;
    gw.create_token("a", &["security-director"]).await;
    // All-or-nothing failure, validation failure, unknown token, CIDR conflict.
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["a", "ghost"]})),
    )
    .await
    .expect(404, Some("not_found"));
    gw.admin(Method::PATCH, "/v1/tokens/a", Some(json!({"name": "b"})))
        .await
        .expect(400, Some("invalid_request"));
    gw.admin(Method::DELETE, "/v1/tokens/ghost", None)
        .await
        .expect(404, Some("not_found"));
    gw.admin(
        Method::POST,
        "/v1/tokens/a/ips/block",
        Some(json!({"ips": ["10.0.0.0/8"]})),
    )
    .await
    .expect(200, None);
    gw.admin(
        Method::POST,
        "/v1/tokens/a/ips/unblock",
        Some(json!({"ips": ["10.1.2.3"]})),
    )
    .await
    .expect(409, Some("blocked_by_cidr"));
    // Activating an active token changes nothing, so it records nothing.
    gw.admin(
        Method::POST,
        "/v1/tokens/activate",
        Some(json!({"names": ["a"]})),
    )
    .await
    .expect(200, None);
    let actions: Vec<String> = audit(&gw, "")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["block", "create"]);
}

#[tokio::test]
async fn idle_policy_changes_are_recorded_with_actor_idle_policy_and_pruned_after_retention() {
    let gw = TestGateway::builder()
        .configure(|c| c.audit.retention = Duration::from_secs(100 * 86400))
        .start()
        .await;
    gw.create_token("sleepy", &["security-director"]).await;
    gw.clock.advance(Duration::from_secs(30 * 86400));
    let out = gw.gateway().sweeper.sweep_once().await.unwrap();
    assert_eq!(out.deactivated.len(), 1);
    gw.clock.advance(Duration::from_secs(60 * 86400));
    gw.gateway().sweeper.sweep_once().await.unwrap();
    let entries = audit(&gw, "?token=SLEEPY").await;
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("delete".to_string(), "idle-policy".to_string()),
            ("deactivate".to_string(), "idle-policy".to_string()),
            ("create".to_string(), "admin-key".to_string()),
        ],
        "{entries:#?}"
    );
    assert_eq!(entries[0]["source_ip"], Value::Null);
    assert_eq!(entries[0]["details"]["reason"], "idle");
    // 100 days of retention: the create (day 0) goes at day 101, the rest stays.
    gw.clock.advance(Duration::from_secs(11 * 86400));
    let out = gw.gateway().sweeper.sweep_once().await.unwrap();
    assert_eq!(out.pruned, 1);
    let left: Vec<String> = audit(&gw, "?token=sleepy")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().into())
        .collect();
    assert_eq!(left, ["delete", "deactivate"]);
}

#[tokio::test]
async fn audit_query_filters_and_limits() {
    let gw = TestGateway::builder().start().await;
    for n in ["one", "two", "three"] {
        gw.create_token(n, &["third-party-feeds"]).await;
    }
    assert_eq!(audit(&gw, "").await.len(), 3);
    assert_eq!(audit(&gw, "?limit=2").await.len(), 2);
    let two = audit(&gw, "?token=TWO").await;
    assert_eq!(two.len(), 1);
    assert_eq!(two[0]["token"], "two");
    assert!(audit(&gw, "?token=nobody").await.is_empty());
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?since=1"] {
        gw.admin(Method::GET, &format!("/v1/audit{bad}"), None)
            .await
            .expect(400, Some("invalid_request"));
    }
    gw.admin_as(Method::GET, "/v1/audit", None, None)
        .await
        .expect(401, Some("unauthorized"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_the_audit_log() {
    let gw = TestGateway::builder().start().await;
    gw.create_token("cli-audited", &["security-director"]).await;
    let admin = format!("http://{}", gw.admin);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let dir = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .args(args)
                .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY)
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    let out = run(vec![
        "--admin-url".into(),
        admin.clone(),
        "audit".into(),
        "cli-audited".into(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("create") && stdout.contains("admin-key") && stdout.contains("cli-audited"),
        "{stdout}"
    );
    let out = run(vec![
        "--admin-url".into(),
        admin,
        "audit".into(),
        "--json".into(),
    ])
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(v["entries"][0]["action"], "create");
}
