//! SPEC §11: `GET /v1/openapi.json` describes the admin API the server really serves.
//!
//! - The document is served without the key, names this instance's access types and the
//!   bearer scheme.
//! - Every documented operation is routed (never the router's 404 or 405), every other method
//!   on a documented path is 405 with an `Allow` naming the documented ones.
//! - schemathesis (PyPI, a property-based API tester independent of the gateway) runs every
//!   check it has against a real server on ephemeral ports: no 5xx, every answer conforming
//!   to the document (status, content type, headers, body schema), schema-invalid requests
//!   refused, schema-valid ones accepted, a missing key refused. Its summary is printed.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;

use http::Method;
use serde_json::{json, Value};
use support::*;

async fn gateway() -> (Upstream, TestGateway) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .configure(|c| {
            c.access_types = access_types(&[("reports", "Reports API"), ("billing", "Billing")]);
            // schemathesis sends many requests without the key on purpose (they must be 401):
            // no lockout of the loopback tester.
            c.proxy.failed_auth_limit = 1_000_000;
        })
        .route("/reports/", "reports", up.addr)
        .route("/billing/", "billing", up.addr)
        .start()
        .await;
    (up, gw)
}

async fn document(gw: &TestGateway) -> Value {
    let r = gw
        .admin_as(Method::GET, "/v1/openapi.json", None, None)
        .await;
    r.expect(200, None);
    assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
    r.json()
}

/// Every (method, path) the document holds.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_document_is_served_without_the_key_and_names_this_instance() {
    let (_up, gw) = gateway().await;
    let doc = document(&gw).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["AccessType"]["enum"], json!(["reports", "billing"]));
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_key"],
        json!({"type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["admin_key"]["description"]})
    );
    let ops = operations(&doc);
    for (m, p) in [
        ("GET", "/v1/tokens"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/tokens/activate"),
        ("POST", "/v1/tokens/deactivate"),
        ("GET", "/v1/tokens/{name}"),
        ("PATCH", "/v1/tokens/{name}"),
        ("DELETE", "/v1/tokens/{name}"),
        ("POST", "/v1/tokens/{name}/regenerate"),
        ("GET", "/v1/tokens/{name}/ips"),
        ("POST", "/v1/tokens/{name}/ips/block"),
        ("POST", "/v1/tokens/{name}/ips/unblock"),
        ("GET", "/v1/access-types"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/webhooks/deliveries"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    ] {
        assert!(ops.contains(&(m.into(), p.into())), "{m} {p} undocumented");
    }
    // Keyed operations say so; the answer to one without the key is the documented 401.
    let list = &doc["paths"]["/v1/tokens"]["get"];
    assert_eq!(list["security"], json!([{"admin_key": []}]));
    assert!(list["responses"]["401"].is_object());
    gw.admin_as(Method::GET, "/v1/tokens", None, None)
        .await
        .expect(401, Some("unauthorized"));
    // The creation answer links to the operations on the new token's name.
    let links = &doc["paths"]["/v1/tokens"]["post"]["responses"]["201"]["links"];
    assert_eq!(
        links["show_token"]["parameters"]["name"],
        "$response.body#/name"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_other_methods_are_405_with_allow() {
    let (_up, gw) = gateway().await;
    gw.create_token("feed-a", &["reports"]).await;
    let doc = document(&gw).await;
    let ops = operations(&doc);
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    let all = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    for path in paths {
        let concrete = path.replace("{name}", "feed-a");
        let documented: Vec<&str> = all
            .iter()
            .copied()
            .filter(|m| ops.contains(&(m.to_string(), path.clone())))
            .collect();
        for m in all {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            // DELETE last would remove the token the other operations use: skip it here
            // (it is exercised below).
            if m == "DELETE" && documented.contains(&m) {
                continue;
            }
            let r = gw.admin(method, &concrete, None).await;
            if documented.contains(&m) {
                assert_ne!(r.status.as_u16(), 405, "{m} {path} is documented: {r}");
                assert!(
                    !(r.status.as_u16() == 404 && r.text().contains("no such path")),
                    "{m} {path} is documented: {r}"
                );
            } else {
                r.expect(405, Some("method_not_allowed"));
                assert_eq!(
                    r.header("allow"),
                    Some(documented.join(", ").as_str()),
                    "{r}"
                );
            }
        }
    }
    gw.admin(Method::DELETE, "/v1/tokens/feed-a", None)
        .await
        .expect(204, None);
    gw.admin(Method::GET, "/v1/nothing-here", None)
        .await
        .expect(404, Some("not_found"));
}

/// `activate` and `deactivate` are the literal paths `/v1/tokens/activate` and
/// `/v1/tokens/deactivate`: no token may take those names, in any case.
#[tokio::test]
async fn the_names_of_the_api_paths_are_reserved() {
    let (_up, gw) = gateway().await;
    for name in ["activate", "Deactivate"] {
        let r = gw
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "access": ["reports"]})),
            )
            .await;
        r.expect(400, Some("invalid_request"));
        assert_eq!(r.json()["field"], "name", "{r}");
        assert!(
            r.json()["message"].as_str().unwrap().contains("reserved"),
            "{r}"
        );
    }
    gw.admin(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "activated", "access": ["reports"]})),
    )
    .await
    .expect(201, None);
}

/// The tester (`.ci/run` installs the version it pins).
const SCHEMATHESIS: &str = "schemathesis";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_answer_conforms() {
    let test = "schemathesis_finds_no_server_error_and_every_answer_conforms";
    let probe = std::process::Command::new(SCHEMATHESIS)
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(o) if o.status.success() => note(String::from_utf8_lossy(&o.stdout).trim()),
        Ok(o) => {
            return skip(
                "schemathesis",
                test,
                &format!(
                    "schemathesis --version failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
            )
        }
        Err(e) => {
            return skip(
                "schemathesis",
                test,
                &format!("schemathesis cannot run ({e}); pip install schemathesis"),
            )
        }
    }
    let (_up, gw) = gateway().await;
    // Something for the lists to show and the name operations to find.
    gw.create_token("feed-a", &["reports"]).await;
    let report = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(SCHEMATHESIS);
    cmd.current_dir(report.path())
        .args(["run", &format!("http://{}/v1/openapi.json", gw.admin)])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args(["--checks", "all"])
        // A schema-valid request can rightly be refused: the API has rules JSON Schema cannot
        // state (an expiry in the future and within lifecycle.max_expiry, a CIDR without host
        // bits, a grace within lifecycle.max_rotation_grace). The document admits everything
        // the server accepts, so the reverse check (schema-invalid → refused) runs.
        .args(["--exclude-checks", "positive_data_acceptance"])
        // Reproducible: the same cases every run, in one worker (two interleave the stateful
        // phase differently from run to run).
        .args([
            "--seed",
            "20261201",
            "--max-examples",
            "40",
            "--workers",
            "1",
        ])
        // A failure is reported as found: shrinking one once ran for many minutes in CI.
        .args(["--no-shrink", "--request-timeout", "30", "--no-color"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The gateway runs on this runtime's other thread while the tester blocks this one; a
    // tester still busy after 10 minutes is stopped (its output so far is then the report).
    let (out, _) =
        tokio::task::spawn_blocking(move || run_grouped(cmd, std::time::Duration::from_secs(600)))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .find("=== SUMMARY")
        .map(|i| &stdout[stdout[..i].rfind('\n').map_or(0, |n| n + 1)..])
        .unwrap_or(&stdout);
    note(&format!("schemathesis against the admin API:\n{summary}"));
    assert!(
        out.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran: every operation tested (schemathesis leaves out the document it was
    // given, GET /v1/openapi.json), and many cases.
    let documented = operations(&document(&gw).await).len();
    let tested: usize = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: ")?.parse().ok())
        .unwrap_or_else(|| panic!("no operation count in:\n{stdout}"));
    assert_eq!(
        tested,
        documented - 1,
        "not every operation was tested:\n{stdout}"
    );
    // "Test cases:" is followed by "  1361 generated, 1361 passed, 30 skipped".
    let cases: u64 = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" generated, ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no case count in:\n{stdout}"));
    assert!(cases >= 200, "only {cases} cases:\n{stdout}");
}
