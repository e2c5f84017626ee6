//! Forward-auth behind real proxies (SPEC §9): nginx (`auth_request`, Debian's nginx-light) and
//! Caddy (`forward_auth`, Debian's caddy), each started here on an ephemeral loopback port with
//! the configuration the README shows (read from README.md, so the two cannot drift), in front
//! of an in-test upstream and a real gateway. A missing binary skips with its reason, or fails
//! when `TOKENGATE_TEST_REQUIRE` names `nginx` / `caddy` (`.ci/run` does, and installs both).

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const SD: &str = "security-director";
const FEEDS: &str = "third-party-feeds";

/// The fenced block after `<!-- forward-auth-config: NAME -->` in README.md.
fn readme_config(name: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let marker = format!("<!-- forward-auth-config: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let body = after
        .split_once("```")
        .and_then(|(_, rest)| rest.split_once('\n'))
        .map(|(_, rest)| rest)
        .expect("a fenced block after the marker");
    body.split_once("\n```")
        .expect("the fenced block ends")
        .0
        .to_string()
}

/// The README's addresses replaced by this test's: tokengate's checks and the API.
fn localise(config: &str, checks: SocketAddr, api: SocketAddr) -> String {
    config
        .replace("127.0.0.1:8081", &checks.to_string())
        .replace("127.0.0.1:9001", &api.to_string())
}

/// A running proxy process, killed when dropped.
struct Front {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(bin: &str, extra: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(String::from)
        .chain(extra.iter().map(|s| s.to_string()))
        .map(|d| format!("{d}/{bin}"))
        .find(|p| Path::new(p).is_file())
}

/// Starts `cmd` (which listens on `port`) and waits until the port accepts; `None` if the
/// process exited first (e.g. the port was taken meanwhile).
async fn run(mut cmd: Command, port: u16, dir: tempfile::TempDir, log: &Path) -> Option<Front> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn the proxy");
    let mut front = Front {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = front.child.try_wait() {
            note(&format!(
                "proxy exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
            return None;
        }
        if tokio::net::TcpStream::connect(front.addr).await.is_ok() {
            return Some(front);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not listen within 20 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_nginx(bin: &str, checks: SocketAddr, api: SocketAddr) -> Front {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = localise(&readme_config("nginx"), checks, api);
        assert!(server.contains("listen 8000;"), "{server}");
        let server = server.replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/t;\n  proxy_temp_path {d}/t;\n\
             fastcgi_temp_path {d}/t;\n  uwsgi_temp_path {d}/t;\n  scgi_temp_path {d}/t;\n{server}\n}}\n"
        );
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg("stderr");
        let log = dir.path().join("nginx.log");
        if let Some(f) = run(cmd, port, dir, &log).await {
            return f;
        }
    }
    panic!("nginx did not start in five attempts");
}

async fn start_caddy(bin: &str, checks: SocketAddr, api: SocketAddr) -> Front {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let site = localise(&readme_config("caddy"), checks, api);
        assert!(site.starts_with(":8000 {"), "{site}");
        // Loopback only, no admin endpoint, no certificates: the test's own global options.
        let site = site.replacen(":8000 {", &format!(":{port} {{\n\tbind 127.0.0.1"), 1);
        let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}\n");
        std::fs::write(dir.path().join("Caddyfile"), conf).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--adapter")
            .arg("caddyfile")
            .arg("--config")
            .arg(dir.path().join("Caddyfile"))
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path());
        let log = dir.path().join("caddy.log");
        if let Some(f) = run(cmd, port, dir, &log).await {
            return f;
        }
    }
    panic!("caddy did not start in five attempts");
}

/// A request through the proxy in front, as a client sends it.
async fn via(gw: &TestGateway, front: &Front, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(format!("http://{}{path}", front.addr));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&gw.http, b.body(Full::<Bytes>::default()).unwrap()).await
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// What every proxy must show, with its README configuration. `strips_all`: the proxy can
/// remove every client-sent `x-tokengate-*` header (Caddy; stock nginx can only replace the
/// three identity headers by name).
async fn behind(front: &Front, gw: &TestGateway, up: &Upstream, strips_all: bool) {
    let (secret, v) = gw.create_token("feed", &[SD]).await;
    let auth = bearer(&secret);
    // A valid token reaches the upstream with the identity headers and without
    // Authorization; a client's own identity headers and X-Forwarded-For change nothing.
    let r = via(
        gw,
        front,
        "/sd/reports?since=2026-01-01",
        &[
            ("authorization", &auth),
            ("x-tokengate-token", "admin"),
            ("x-tokengate-access", "everything"),
            ("x-tokengate-scope", "admin"),
            // Spellings a CGI-style API reads as the real headers.
            ("x_tokengate_token", "admin"),
            ("x-tokengate_access", "everything"),
            (
                "x_tokengate-token-id",
                "00000000-0000-0000-0000-000000000000",
            ),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-uri", "/nowhere"),
            ("x-original-uri", "/nowhere"),
        ],
    )
    .await;
    r.expect(200, None);
    let seen = up.last();
    assert_eq!(seen.target, "/sd/reports?since=2026-01-01");
    assert_eq!(
        seen.headers["x-tokengate-token"], "feed",
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.headers["x-tokengate-token-id"],
        v["id"].as_str().unwrap()
    );
    assert_eq!(seen.headers["x-tokengate-access"], SD);
    assert_eq!(seen.headers.get_all("x-tokengate-token").iter().count(), 1);
    assert!(
        seen.headers.get("authorization").is_none(),
        "{:?}",
        seen.headers
    );
    if strips_all {
        assert!(
            seen.headers.get("x-tokengate-scope").is_none(),
            "{:?}",
            seen.headers
        );
    }
    // No proxy lets an underscore spelling of a gateway header through.
    let underscored: Vec<_> = seen
        .headers
        .keys()
        .filter(|k| {
            k.as_str().contains('_') && k.as_str().replace('_', "-").starts_with("x-tokengate")
        })
        .collect();
    assert!(underscored.is_empty(), "{:?}", seen.headers);
    // The IP recorded is the client's (loopback here), never the one it claimed.
    let ips = gw.ips("feed").await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert_eq!(ips[0]["ip"], "127.0.0.1");
    assert_eq!(ips[0]["requests"], 1);
    assert_ne!(gw.token("feed").await["last_used_at"], Value::Null);

    let before = up.count();
    // Missing and invalid tokens: 401 with WWW-Authenticate.
    let r = via(gw, front, "/sd/x", &[]).await;
    r.expect(401, Some("missing_token"));
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{r}"
    );
    via(
        gw,
        front,
        "/sd/x",
        &[("authorization", "Bearer tg_not_a_token")],
    )
    .await
    .expect(401, Some("invalid_token"));
    // A path the proxy listener refuses is refused too (whether by the proxy or by tokengate).
    for bad in ["/sd/a%2Fb", "/sd/..;/x", "/sd/%2e%2e/%2e%2e/etc/passwd"] {
        via(gw, front, bad, &[("authorization", &auth)])
            .await
            .expect(400, None);
    }
    // The proxy forwards the path as the client sent it: one that tokengate would resolve to
    // another route (`/sd//../feeds/x` is `/feeds/x` here, `/sd/feeds/x` for RFC 3986) is
    // refused, so a feeds token never reaches /sd/ on an API that resolves it the other way.
    let (feeds, _) = gw.create_token("feeds-only", &[FEEDS]).await;
    for tricky in ["/sd//../feeds/x", "/sd/%2e%2e/feeds/x", "/sd/./../feeds/x"] {
        via(gw, front, tricky, &[("authorization", &bearer(&feeds))])
            .await
            .expect(400, Some("invalid_request"));
    }
    via(gw, front, "/feeds/x", &[("authorization", &bearer(&feeds))])
        .await
        .expect(200, None);
    via(gw, front, "/nowhere/x", &[("authorization", &auth)])
        .await
        .expect(404, Some("no_route"));
    // Not allowed from this address.
    gw.patch_token("feed", json!({"allowed_ips": ["192.0.2.0/24"]}))
        .await
        .expect(200, None);
    via(gw, front, "/sd/x", &[("authorization", &auth)])
        .await
        .expect(403, Some("ip_not_allowed"));
    gw.patch_token("feed", json!({"allowed_ips": null}))
        .await
        .expect(200, None);
    // Rate-limited: 429 with Retry-After, through the proxy.
    gw.patch_token("feed", json!({"rate_limit": {"requests": 1, "per": "1h"}}))
        .await
        .expect(200, None);
    via(gw, front, "/sd/x", &[("authorization", &auth)])
        .await
        .expect(200, None);
    let r = via(gw, front, "/sd/x", &[("authorization", &auth)]).await;
    r.expect(429, Some("rate_limited"));
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1),
        "{r}"
    );
    gw.patch_token("feed", json!({"rate_limit": null}))
        .await
        .expect(200, None);
    // Blocked for the client's address (which it cannot dodge with X-Forwarded-For).
    gw.admin(
        Method::POST,
        "/v1/tokens/feed/ips/block",
        Some(json!({"ips": ["127.0.0.1"]})),
    )
    .await
    .expect(200, None);
    via(
        gw,
        front,
        "/sd/x",
        &[("authorization", &auth), ("x-forwarded-for", "192.0.2.1")],
    )
    .await
    .expect(403, Some("ip_blocked"));
    // Inactive.
    let (other, _) = gw.create_token("other", &[SD]).await;
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["other"]})),
    )
    .await
    .expect(200, None);
    via(gw, front, "/sd/x", &[("authorization", &bearer(&other))])
        .await
        .expect(403, Some("token_inactive"));
    assert_eq!(
        up.count(),
        before + 2,
        "only the two admitted requests reached the API"
    );
    // tokengate's answers were checks on the forward-auth listener.
    let m = gw.admin(Method::GET, "/metrics", None).await.text();
    assert!(
        m.contains("tokengate_forward_auth_checks_total{outcome=\"allowed\"} 3"),
        "{m}"
    );
}

/// A leaked secret reported through the proxy reaches tokengate's revocation endpoint with
/// the client's address (never the one it claims), and revokes its token.
async fn revocation_through(front: &Front, gw: &TestGateway) {
    let (secret, _) = gw.create_token("reported", &[SD]).await;
    let r = send(
        &gw.http,
        Request::post(format!("http://{}/_tokengate/revoke", front.addr))
            .header("content-type", "application/json")
            .header("x-forwarded-for", "6.6.6.6")
            .body(Full::new(Bytes::from(
                json!({"tokens": [&secret]}).to_string(),
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (202, "{}".to_string()),
        "{r}"
    );
    assert_eq!(gw.token("reported").await["inactive_reason"], "revoked");
    let audit = gw
        .admin(Method::GET, "/v1/audit?token=reported", None)
        .await
        .json();
    let e = &audit["entries"][0];
    assert_eq!(
        (&e["actor"], &e["source_ip"]),
        (&json!("revocation"), &json!("127.0.0.1")),
        "{e}"
    );
}

async fn setup() -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .check_route("/feeds/", FEEDS)
        .start()
        .await;
    (gw, up)
}

#[tokio::test]
async fn nginx_auth_request_with_the_readme_configuration() {
    let Some(bin) = which("nginx", &["/usr/sbin"]) else {
        skip(
            "nginx",
            "nginx_auth_request_with_the_readme_configuration",
            "no nginx binary (apt-get install nginx-light)",
        );
        return;
    };
    let (mut gw, up) = setup().await;
    let front = start_nginx(&bin, gw.forward_auth.unwrap(), up.addr).await;
    behind(&front, &gw, &up, false).await;
    revocation_through(&front, &gw).await;
    // With tokengate unreachable, nginx refuses (500), never admits.
    let (secret, _) = gw.create_token("late", &[SD]).await;
    let before = up.count();
    gw.stop().await;
    let r = via_plain(&front, "/sd/x", &secret).await;
    assert_eq!(r.0, 500, "with tokengate down nginx must refuse: {}", r.1);
    assert_eq!(r.1.trim(), r#"{"error":"forward_auth_unavailable"}"#);
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn caddy_forward_auth_with_the_readme_configuration() {
    let Some(bin) = which("caddy", &[]) else {
        skip(
            "caddy",
            "caddy_forward_auth_with_the_readme_configuration",
            "no caddy binary (apt-get install caddy)",
        );
        return;
    };
    let (gw, up) = setup().await;
    let front = start_caddy(&bin, gw.forward_auth.unwrap(), up.addr).await;
    behind(&front, &gw, &up, true).await;
    revocation_through(&front, &gw).await;
}

/// The status and body of a GET through `front` with `secret`, on a fresh client.
async fn via_plain(front: &Front, path: &str, secret: &str) -> (u16, String) {
    let r = send(
        &client(),
        Request::get(format!("http://{}{path}", front.addr))
            .header("authorization", bearer(secret))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    (r.status.as_u16(), r.text())
}

// === Traefik and Envoy: not installable here; their README configurations are parsed ===

type Yaml = serde_norway::Value;

fn yaml(name: &str) -> Yaml {
    serde_norway::from_str(&readme_config(name))
        .unwrap_or_else(|e| panic!("README's {name} configuration is not valid YAML: {e}"))
}

/// `v` at `path` (mapping keys, or `[i]` sequence indices), or a panic naming the path.
fn at<'a>(v: &'a Yaml, path: &[&str]) -> &'a Yaml {
    let mut cur = v;
    for p in path {
        cur = match p.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
            Some(i) => cur.get(i.parse::<usize>().unwrap()),
            None => cur.get(*p),
        }
        .unwrap_or_else(|| panic!("no {p} in {path:?} of {v:?}"));
    }
    cur
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The settings `tests/forward_auth.rs`'s Traefik-shaped checks assume, and SPEC §9 (a)-(c).
#[test]
fn the_readme_traefik_configuration_sets_what_the_checks_rely_on() {
    let t = yaml("traefik");
    let fa = at(&t, &["http", "middlewares", "tokengate", "forwardAuth"]);
    assert_eq!(
        at(fa, &["address"]).as_str(),
        Some("http://127.0.0.1:8081/auth")
    );
    // (a) Traefik's own X-Forwarded-* replace the client's.
    assert_eq!(at(fa, &["trustForwardHeader"]).as_bool(), Some(false));
    assert_eq!(
        strings(at(fa, &["authResponseHeaders"])),
        [
            "X-Tokengate-Token",
            "X-Tokengate-Token-Id",
            "X-Tokengate-Access"
        ]
    );
    // (b) the client's identity headers are removed before the check adds the real ones, and
    // Authorization after it.
    let chain = strings(at(&t, &["http", "routers", "api", "middlewares"]));
    assert_eq!(
        chain,
        ["tokengate-clear", "tokengate", "tokengate-no-authorization"]
    );
    let clear = at(
        &t,
        &[
            "http",
            "middlewares",
            "tokengate-clear",
            "headers",
            "customRequestHeaders",
        ],
    );
    for h in [
        "X-Tokengate-Token",
        "X-Tokengate-Token-Id",
        "X-Tokengate-Access",
        "X_Tokengate_Token",
        "X_Tokengate_Token_Id",
        "X_Tokengate_Access",
    ] {
        assert_eq!(at(clear, &[h]).as_str(), Some(""), "{h}");
    }
    let no_auth = at(
        &t,
        &[
            "http",
            "middlewares",
            "tokengate-no-authorization",
            "headers",
            "customRequestHeaders",
        ],
    );
    assert_eq!(at(no_auth, &["Authorization"]).as_str(), Some(""));
}

/// The settings `tests/forward_auth.rs`'s Envoy-shaped checks assume, and SPEC §9 (a)-(c).
#[test]
fn the_readme_envoy_configuration_sets_what_the_checks_rely_on() {
    let e = yaml("envoy");
    let hcm = at(
        &e,
        &[
            "static_resources",
            "listeners",
            "[0]",
            "filter_chains",
            "[0]",
            "filters",
            "[0]",
            "typed_config",
        ],
    );
    // (a) the right-most X-Forwarded-For entry is the real peer; the path Envoy forwards is
    // the one tokengate decides on; no underscore header spellings.
    assert_eq!(at(hcm, &["use_remote_address"]).as_bool(), Some(true));
    assert_eq!(at(hcm, &["normalize_path"]).as_bool(), Some(true));
    assert_eq!(at(hcm, &["merge_slashes"]).as_bool(), Some(true));
    assert_eq!(
        at(
            hcm,
            &[
                "common_http_protocol_options",
                "headers_with_underscores_action"
            ]
        )
        .as_str(),
        Some("REJECT_REQUEST")
    );
    let filters = at(hcm, &["http_filters"]).as_sequence().unwrap();
    assert_eq!(
        at(&filters[0], &["name"]).as_str(),
        Some("envoy.filters.http.ext_authz"),
        "ext_authz runs first"
    );
    let authz = at(&filters[0], &["typed_config"]);
    // (c) an unreachable tokengate refuses, never admits.
    assert_eq!(at(authz, &["failure_mode_allow"]).as_bool(), Some(false));
    let http = at(authz, &["http_service"]);
    let defaults = tokengate::config::Config::defaults();
    assert_eq!(
        at(http, &["path_prefix"]).as_str(),
        Some(defaults.forward_auth.envoy_prefix.as_str())
    );
    let exact = |v: &Yaml| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|p| at(p, &["exact"]).as_str().unwrap().to_string())
            .collect()
    };
    let sent = exact(at(
        http,
        &["authorization_request", "allowed_headers", "patterns"],
    ));
    assert!(sent.contains(&"authorization".to_string()), "{sent:?}");
    assert!(sent.contains(&"x-forwarded-for".to_string()), "{sent:?}");
    // (b) the identity headers overwrite a client's, from the check's answer only.
    let upstream = exact(at(
        http,
        &[
            "authorization_response",
            "allowed_upstream_headers",
            "patterns",
        ],
    ));
    assert_eq!(
        upstream,
        [
            "x-tokengate-token",
            "x-tokengate-token-id",
            "x-tokengate-access"
        ]
    );
    let client = exact(at(
        http,
        &[
            "authorization_response",
            "allowed_client_headers",
            "patterns",
        ],
    ));
    for h in ["www-authenticate", "retry-after"] {
        assert!(client.contains(&h.to_string()), "{client:?}");
    }
    // The tokengate cluster is the forward-auth listener's address.
    let clusters = at(&e, &["static_resources", "clusters"])
        .as_sequence()
        .unwrap();
    let tg = clusters
        .iter()
        .find(|c| at(c, &["name"]).as_str() == Some("tokengate"))
        .expect("a tokengate cluster");
    let sock = at(
        tg,
        &[
            "load_assignment",
            "endpoints",
            "[0]",
            "lb_endpoints",
            "[0]",
            "endpoint",
            "address",
            "socket_address",
        ],
    );
    assert_eq!(at(sock, &["port_value"]).as_u64(), Some(8081));
}
