//! The command line of SPEC §5: the built binary, run as a separate process against a gateway
//! running in-process on this test's runtime.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
const SD: &str = "security-director";
const TPF: &str = "third-party-feeds";

/// What one run of the binary did.
struct Out {
    cmd: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    /// Like `Display`, with stdout and stderr quoted, so control characters show as escapes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {:?}\n--- stdout ---\n{:?}\n--- stderr ---\n{:?}",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    #[track_caller]
    fn ok(&self) -> &Out {
        assert_eq!(self.code, Some(0), "{self}");
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// Exit 1 with exactly one non-empty line on stderr.
    #[track_caller]
    fn refused(&self) -> &Out {
        assert_eq!(self.code, Some(1), "{self}");
        let lines: Vec<&str> = self.stderr.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "stderr is not one line: {self}");
        assert!(!lines[0].trim().is_empty(), "empty error line: {self}");
        self
    }

    /// Every `tg_` secret printed on stdout.
    fn secrets(&self) -> Vec<String> {
        self.stdout
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .filter(|w| w.starts_with("tg_") && w.len() == 39)
            .map(str::to_string)
            .collect()
    }
}

/// A command for the binary in `dir`, with no `TOKENGATE_*` variables inherited.
fn command(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENGATE_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// Runs `cmd` to completion on a blocking thread; kills it and fails after `limit`.
async fn run(mut cmd: Command, limit: Duration) -> Out {
    let shown = format!(
        "tokengate {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    tokio::task::spawn_blocking(move || {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{shown}: cannot start: {e}"));
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(o)) => Out {
                cmd: shown,
                code: o.status.code(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Ok(Err(e)) => panic!("{shown}: {e}"),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                panic!("{shown}: still running after {limit:?} (killed)");
            }
        }
    })
    .await
    .expect("runner thread")
}

/// The CLI pointed at a test gateway, run from an empty directory.
struct Cli {
    dir: tempfile::TempDir,
    url: String,
}

impl Cli {
    fn new(gw: &TestGateway) -> Cli {
        Cli {
            dir: tempfile::tempdir().unwrap(),
            url: format!("http://{}", gw.admin),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        let mut c = command(self.dir.path());
        c.arg("--admin-url")
            .arg(&self.url)
            .args(args)
            .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY);
        run(c, Duration::from_secs(60)).await
    }
}

async fn show(gw: &TestGateway, name: &str) -> Value {
    let r = gw
        .admin(Method::GET, &format!("/v1/tokens/{name}"), None)
        .await;
    r.expect(200, None);
    r.json()
}

async fn routed() -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .route("/feeds/", "third-party-feeds", up.addr)
        .start()
        .await;
    (gw, up)
}

fn names_in(v: &Value) -> Vec<String> {
    v["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens array in {v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

// === token commands ===

#[tokio::test(flavor = "multi_thread")]
async fn token_create_prints_a_working_secret_once() {
    let (gw, up) = routed().await;
    let cli = Cli::new(&gw);
    let o = cli
        .run(&[
            "token",
            "create",
            "Feed-A",
            "--access",
            "security-director,third-party-feeds",
            "--description",
            "nightly feed",
        ])
        .await;
    o.ok();
    let secrets = o.secrets();
    assert_eq!(
        secrets.len(),
        1,
        "the secret is not printed exactly once: {o}"
    );
    assert_eq!(
        o.stdout.matches(&secrets[0]).count(),
        1,
        "the secret is printed more than once: {o}"
    );
    gw.get("/sd/x", Some(&secrets[0])).await.expect(200, None);
    gw.get("/feeds/y", Some(&secrets[0]))
        .await
        .expect(200, None);
    assert_eq!(up.count(), 2);
    let t = show(&gw, "feed-a").await;
    assert_eq!(t["name"], "Feed-A", "{t}");
    assert_eq!(t["description"], "nightly feed", "{t}");
    assert_eq!(t["access"], json!([SD, TPF]), "{t}");
    assert!(
        !o.stderr.contains(&secrets[0]),
        "the secret reached stderr: {o}"
    );

    // --json prints the API's answer, secret included (once).
    let o = cli
        .run(&["--json", "token", "create", "feed-b", "--access", TPF])
        .await;
    o.ok();
    let v = o.json();
    assert_eq!(v["name"], "feed-b", "{o}");
    let secret = v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {o}"));
    gw.get("/feeds/z", Some(secret)).await.expect(200, None);
    gw.get("/sd/z", Some(secret))
        .await
        .expect(403, Some("access_denied"));

    // --secret-only prints the secret alone, on one line (for TOKEN=$(...)), on create and
    // on regenerate; with --json it is a usage error.
    for args in [
        &[
            "token",
            "create",
            "feed-c",
            "--access",
            TPF,
            "--secret-only",
        ][..],
        &["token", "regenerate", "feed-c", "--secret-only"],
    ] {
        let o = cli.run(args).await;
        o.ok();
        let secret = o.stdout.strip_suffix('\n').unwrap_or_else(|| panic!("{o}"));
        assert!(
            secret.len() == 39 && secret.starts_with("tg_") && !secret.contains('\n'),
            "{o}"
        );
        gw.get("/feeds/z", Some(secret)).await.expect(200, None);
    }
    // --json anywhere on the line: before the subcommand, between, or after.
    for args in [
        &[
            "token",
            "create",
            "feed-d",
            "--access",
            TPF,
            "--secret-only",
            "--json",
        ][..],
        &[
            "--json",
            "token",
            "create",
            "feed-d",
            "--access",
            TPF,
            "--secret-only",
        ],
        &["token", "--json", "regenerate", "feed-c", "--secret-only"],
    ] {
        let o = cli.run(args).await;
        assert_eq!(o.code, Some(2), "{o}");
        assert!(o.stdout.is_empty(), "{o}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_list_show_and_update() {
    let gw = TestGateway::builder().start().await;
    let (secret, created) = gw.create_token("alpha-feed", &[SD]).await;
    gw.create_token("Bravo", &[TPF]).await;
    let cli = Cli::new(&gw);

    let o = cli.run(&["token", "list"]).await;
    o.ok();
    assert!(
        o.stdout.contains("alpha-feed") && o.stdout.contains("Bravo"),
        "{o}"
    );
    assert!(!o.stdout.contains(&secret), "{o}");
    let a = o.stdout.find("alpha-feed").unwrap();
    let b = o.stdout.find("Bravo").unwrap();
    assert!(a < b, "the table is not sorted by name: {o}");

    for args in [
        &["--json", "token", "list"][..],
        &["token", "list", "--json"][..],
    ] {
        let o = cli.run(args).await;
        o.ok();
        assert_eq!(names_in(&o.json()), ["alpha-feed", "Bravo"], "{o}");
    }

    let o = cli.run(&["token", "show", "ALPHA-feed"]).await;
    o.ok();
    assert!(o.stdout.contains("alpha-feed"), "{o}");
    assert!(o.stdout.contains(created["id"].as_str().unwrap()), "{o}");
    assert!(!o.stdout.contains(&secret), "{o}");
    let o = cli.run(&["token", "show", "alpha-feed", "--json"]).await;
    o.ok();
    let v = o.json();
    assert_eq!(v["id"], created["id"], "{o}");
    assert!(v.get("token").is_none(), "show prints a secret field: {o}");

    let o = cli
        .run(&[
            "token",
            "update",
            "alpha-feed",
            "--description",
            "updated by cli",
        ])
        .await;
    o.ok();
    assert!(o.stdout.contains("updated by cli"), "{o}");
    let t = show(&gw, "alpha-feed").await;
    assert_eq!(t["description"], "updated by cli", "{t}");
    assert_eq!(t["access"], json!([SD]), "{t}");
    let o = cli
        .run(&[
            "--json",
            "token",
            "update",
            "alpha-feed",
            "--access",
            "third-party-feeds,security-director",
        ])
        .await;
    o.ok();
    assert_eq!(o.json()["access"], json!([SD, TPF]), "{o}");
    assert_eq!(
        show(&gw, "alpha-feed").await["description"],
        "updated by cli"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_deactivate_activate_regenerate_and_delete() {
    let (gw, _up) = routed().await;
    let (sa, _) = gw.create_token("a", &[SD]).await;
    let (sb, _) = gw.create_token("b", &[SD]).await;
    let cli = Cli::new(&gw);

    let o = cli.run(&["token", "deactivate", "a", "B"]).await;
    o.ok();
    for n in ["a", "b"] {
        let t = show(&gw, n).await;
        assert_eq!(
            (t["status"].as_str(), t["inactive_reason"].as_str()),
            (Some("inactive"), Some("admin")),
            "{t}"
        );
    }
    gw.get("/sd/x", Some(&sa))
        .await
        .expect(403, Some("token_inactive"));

    // All or nothing through the CLI too.
    let o = cli.run(&["token", "activate", "a", "ghost"]).await;
    o.refused();
    assert!(
        o.stderr.contains("ghost"),
        "the unknown name is not named: {o}"
    );
    assert_eq!(show(&gw, "a").await["status"], "inactive");

    let o = cli.run(&["--json", "token", "activate", "b", "a"]).await;
    o.ok();
    assert_eq!(names_in(&o.json()), ["b", "a"], "{o}");
    for n in ["a", "b"] {
        assert_eq!(show(&gw, n).await["status"], "active");
    }
    gw.get("/sd/x", Some(&sa)).await.expect(200, None);

    let o = cli.run(&["token", "regenerate", "a"]).await;
    o.ok();
    let fresh = o.secrets();
    assert_eq!(fresh.len(), 1, "{o}");
    assert_ne!(fresh[0], sa);
    gw.get("/sd/x", Some(&sa))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/sd/x", Some(&fresh[0])).await.expect(200, None);

    let o = cli.run(&["token", "delete", "b"]).await;
    o.ok();
    gw.admin(Method::GET, "/v1/tokens/b", None)
        .await
        .expect(404, Some("not_found"));
    gw.get("/sd/x", Some(&sb))
        .await
        .expect(401, Some("invalid_token"));
    cli.run(&["token", "delete", "b"]).await.refused();
}

/// The characters of `text` that would reach a terminal as controls (line breaks aside).
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n' && (c.is_control() || matches!(c, '\u{202a}'..='\u{202e}')))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_of_a_description_are_printed_escaped() {
    let gw = TestGateway::builder().start().await;
    // ESC (a colour), CR (overwrites the line), NUL, DEL, the 8-bit CSI and a bidi override.
    let description = "nightly \u{1b}[31mfeed\r\u{0}\u{7f}\u{9b}2J\u{202e}end";
    let escaped = r"nightly \u{1b}[31mfeed\u{d}\u{0}\u{7f}\u{9b}2J\u{202e}end";
    gw.admin(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "feed", "access": [SD], "description": description})),
    )
    .await
    .expect(201, None);
    assert_eq!(show(&gw, "feed").await["description"], description);
    let cli = Cli::new(&gw);

    for args in [
        &["token", "show", "feed"][..],
        &["token", "list"][..],
        &["token", "deactivate", "feed"][..],
        &["token", "update", "feed", "--access", TPF][..],
        &["audit"][..],
        &["audit", "feed"][..],
    ] {
        let o = cli.run(args).await;
        o.ok();
        assert_eq!(
            raw_controls(&o.stdout),
            Vec::<char>::new(),
            "raw control characters: {o:?}"
        );
        // The audit log shows the description inside JSON details, with JSON's escapes.
        let shown = if args[0] == "audit" {
            r"nightly \u001b[31mfeed\r\u0000\u{7f}\u{9b}2J\u{202e}end"
        } else {
            escaped
        };
        assert!(o.stdout.contains(shown), "{shown} not in: {o:?}");
    }

    // --json stays the API's JSON: valid, and the description exactly as stored.
    for args in [
        &["--json", "token", "show", "feed"][..],
        &["--json", "token", "list"][..],
    ] {
        let o = cli.run(args).await;
        o.ok();
        assert_eq!(
            raw_controls(&o.stdout),
            Vec::<char>::new(),
            "raw control characters: {o:?}"
        );
        let v = o.json();
        let t = if args[2] == "list" {
            &v["tokens"][0]
        } else {
            &v
        };
        assert_eq!(t["description"], description, "{o}");
    }
}

// === ip commands ===

#[tokio::test(flavor = "multi_thread")]
async fn ip_block_list_and_unblock() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    let cli = Cli::new(&gw);

    let o = cli
        .run(&[
            "ip",
            "block",
            "feed",
            "127.0.0.1",
            "10.0.0.0/8",
            "2001:0db8::1",
        ])
        .await;
    o.ok();
    let rows = gw.ips("feed").await;
    for ip in ["127.0.0.1", "10.0.0.0/8", "2001:db8::1"] {
        let r = rows
            .iter()
            .find(|r| r["ip"] == ip)
            .unwrap_or_else(|| panic!("{ip} not listed: {rows:?}"));
        assert_eq!(r["blocked"], true, "{r}");
    }
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));

    let o = cli.run(&["ip", "list", "feed"]).await;
    o.ok();
    for ip in ["127.0.0.1", "10.0.0.0/8", "2001:db8::1"] {
        assert!(o.stdout.contains(ip), "{ip} missing from the table: {o}");
    }
    let o = cli.run(&["ip", "list", "feed", "--json"]).await;
    o.ok();
    assert_eq!(o.json()["ips"].as_array().map(Vec::len), Some(3), "{o}");

    let o = cli.run(&["ip", "unblock", "feed", "10.1.2.3"]).await;
    o.refused();
    assert!(
        o.stderr.contains("10.0.0.0/8"),
        "the CIDR is not named: {o}"
    );

    let o = cli.run(&["ip", "unblock", "feed", "127.0.0.1"]).await;
    o.ok();
    let rows = gw.ips("feed").await;
    let me = rows.iter().find(|r| r["ip"] == "127.0.0.1").unwrap();
    assert_eq!(me["blocked"], false, "{me}");
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);

    cli.run(&["ip", "block", "feed", "10.0.0.1/8"])
        .await
        .refused();
    cli.run(&["ip", "list", "nope"]).await.refused();
}

// === errors and exit codes ===

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_unreachable_api_exit_1_with_one_line() {
    let gw = TestGateway::builder().start().await;
    gw.create_token("taken", &[SD]).await;
    let cli = Cli::new(&gw);

    let o = cli.run(&["token", "show", "nope"]).await;
    o.refused();
    assert!(o.stdout.is_empty(), "{o}");
    // The refusal names the token and the admin API it came from.
    assert!(
        o.stderr.contains("not_found: no token named \"nope\""),
        "{o}"
    );
    assert!(
        o.stderr.contains(&format!("(admin API at {})", cli.url)),
        "{o}"
    );
    let o = cli.run(&["ip", "list", "a b+c"]).await;
    assert!(o.stderr.contains("no token named \"a b+c\""), "{o}");
    let o = cli.run(&["token", "activate", "nope", "taken"]).await;
    assert!(o.stderr.contains("nothing was changed: nope"), "{o}");
    cli.run(&["token", "create", "Taken", "--access", SD])
        .await
        .refused();
    cli.run(&["token", "create", "bad_name", "--access", SD])
        .await
        .refused();
    cli.run(&["token", "create", "ok", "--access", "admin"])
        .await
        .refused();

    // A wrong admin key is an API refusal too.
    let mut c = command(cli.dir.path());
    c.args(["--admin-url", &cli.url, "token", "list"]).env(
        "TOKENGATE_ADMIN_KEY",
        "wrong-key-0123456789abcdefghijklmnopqrstuv",
    );
    run(c, Duration::from_secs(60)).await.refused();

    // Nothing listens there.
    let dead = refused_addr().await;
    let mut c = command(cli.dir.path());
    c.args(["--admin-url", &format!("http://{dead}"), "token", "list"])
        .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY);
    let o = run(c, Duration::from_secs(60)).await;
    o.refused();
    assert!(
        !o.stderr.contains(ADMIN_KEY),
        "the admin key reached stderr: {o}"
    );
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    assert_eq!(names_in(&r.json()), ["taken"], "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    let gw = TestGateway::builder().start().await;
    let cli = Cli::new(&gw);
    for args in [
        &["token", "create", "x"][..],
        &["token", "frobnicate"][..],
        &["frobnicate"][..],
        &["token", "show"][..],
        &["token", "activate"][..],
        &["ip", "block", "feed"][..],
        &["token", "list", "--no-such-flag"][..],
        // Wrong in ways only the command itself can see: still usage errors.
        &["token", "update", "feed"][..],
        &["--admin-url", "ftp://nowhere", "token", "list"][..],
        // Values the API would refuse are refused before asking it.
        &["token", "list", "--status", "deleted"][..],
        &["audit", "--limit", "0"][..],
        &["audit", "--limit", "1001"][..],
        &["webhook", "deliveries", "--limit", "0"][..],
    ] {
        let o = cli.run(args).await;
        assert_eq!(o.code, Some(2), "{o}");
        assert!(!o.stderr.trim().is_empty(), "no usage message: {o}");
    }
    let r = gw.admin(Method::GET, "/v1/tokens", None).await;
    assert_eq!(names_in(&r.json()), Vec::<String>::new(), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_a_missing_config_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.args(["--config", "/nonexistent.toml", "serve"]);
    let o = run(c, Duration::from_secs(30)).await;
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stderr.contains("/nonexistent.toml"),
        "the file is not named: {o}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a failed start created data/"
    );
}

// === dev ===

/// Kills the child on drop, so a failing test leaves no process behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_prints_a_curl_line_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.arg("dev");
    let mut child = Reap(c.spawn().expect("tokengate dev starts"));
    let stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Drains stdout to the end, as a terminal would, after the test has stopped listening.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (err_tx, err_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = err_tx.send(s);
    });

    // Read the banner until the curl line (or give up after 60 s).
    let (printed, curl) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut printed = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let is_curl = line.trim_start().starts_with("curl ");
                    printed.push(line.clone());
                    if is_curl {
                        return (printed, line);
                    }
                }
                Err(e) => panic!("no curl line on stdout ({e:?}); got {printed:#?}"),
            }
        }
    })
    .await
    .unwrap();
    let banner = printed.join("\n");

    // curl -s -H 'Authorization: Bearer <secret>' http://<addr>/<path>
    let secret = curl
        .split("Bearer ")
        .nth(1)
        .and_then(|s| s.split(['\'', '"', ' ']).next())
        .unwrap_or_else(|| panic!("no bearer token in {curl:?}"))
        .to_string();
    assert!(
        secret.starts_with("tg_") && secret.len() == 39,
        "odd token {secret:?} in {curl:?}"
    );
    let url = curl
        .split_whitespace()
        .map(|w| w.trim_matches(['\'', '"']))
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {curl:?}"))
        .to_string();
    let uri: http::Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("bad URL {url:?}: {e}"));
    let host = uri.host().unwrap_or_default();
    assert!(
        host == "127.0.0.1" || host == "localhost" || host == "[::1]",
        "dev listens beyond loopback: {url}"
    );

    let req = Request::get(&url)
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = send(&client(), req).await;
    r.expect(200, None);
    assert!(
        !r.text().contains(&secret),
        "the echo upstream saw the Authorization header: {r}"
    );
    let without = send(
        &client(),
        Request::get(&url).body(Full::<Bytes>::default()).unwrap(),
    )
    .await;
    without.expect(401, Some("missing_token"));
    // The forward-auth listener it names answers a check for the demo token.
    let checks = banner
        .lines()
        .find(|l| l.trim_start().starts_with("forward-auth "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no forward-auth line in {banner}"))
        .to_string();
    assert!(checks.starts_with("http://127.0.0.1:"), "{checks}");
    let check = send(
        &client(),
        Request::get(format!("{checks}/auth"))
            .header("authorization", format!("Bearer {secret}"))
            .header("x-forwarded-uri", "/sd/hello")
            .header("x-forwarded-for", "127.0.0.1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    check.expect(200, None);
    assert_eq!(check.header("x-tokengate-token"), Some("demo"), "{check}");

    // Stop it (SIGTERM) and look at what it left behind.
    let pid = child.0.id();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    // stderr ends when the process does.
    let log = tokio::task::spawn_blocking(move || err_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("tokengate dev did not exit within 60 s of SIGTERM");
    let status = child.0.wait().expect("wait for tokengate dev");
    assert!(
        status.success(),
        "dev did not exit cleanly on SIGTERM: {status}\n{log}"
    );
    assert!(
        !log.contains(&secret),
        "the demo token reached the log (stderr): {log}"
    );
    if let Some(key) = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin key"))
        .map(str::trim)
    {
        assert!(
            !key.is_empty() && !log.contains(key),
            "the admin key reached the log: {log}"
        );
    }
    drop(child);
    assert!(
        !dir.path().join("data").exists(),
        "dev created data/ in its working directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_types_lists_the_configured_ones_in_config_order() {
    let gw = TestGateway::builder()
        .configure(|c| {
            c.access_types = access_types(&[("reports", "Reports API"), ("billing", "Billing")])
        })
        .start()
        .await;
    let cli = Cli::new(&gw);
    let o = cli.run(&["access-types"]).await;
    o.ok();
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{o}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LABEL"),
        "{o}"
    );
    assert!(
        lines[1].starts_with("reports") && lines[1].ends_with("Reports API"),
        "{o}"
    );
    assert!(
        lines[2].starts_with("billing") && lines[2].ends_with("Billing"),
        "{o}"
    );
    let o = cli.run(&["--json", "access-types"]).await;
    o.ok();
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["access_types"][1]["name"], "billing", "{o}");
    // Creation through the CLI reads the same set.
    cli.run(&["token", "create", "r", "--access", "security-director"])
        .await
        .refused();
    cli.run(&["token", "create", "r", "--access", "reports"])
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_and_allowed_ips_flags() {
    let gw = TestGateway::builder().start().await;
    let cli = Cli::new(&gw);
    cli.run(&[
        "token",
        "create",
        "feed",
        "--access",
        SD,
        "--rate-limit",
        "100/1m",
        "--allowed-ips",
        "192.0.2.1,10.0.0.0/8",
    ])
    .await
    .ok();
    let t = show(&gw, "feed").await;
    assert_eq!(t["rate_limit"], json!({"requests": 100, "per": "1m"}));
    assert_eq!(t["allowed_ips"], json!(["192.0.2.1", "10.0.0.0/8"]));
    // A malformed limit is a usage error, said before any request.
    let o = cli
        .run(&["token", "update", "feed", "--rate-limit", "lots"])
        .await;
    assert_eq!(o.code, Some(2), "{o}");
    // An address the API refuses is an API refusal.
    cli.run(&["token", "update", "feed", "--allowed-ips", "not-an-ip"])
        .await
        .refused();
    cli.run(&[
        "token",
        "update",
        "feed",
        "--rate-limit",
        "5/30s",
        "--allowed-ips",
        "198.51.100.0/24",
    ])
    .await
    .ok();
    let t = show(&gw, "feed").await;
    assert_eq!(t["rate_limit"], json!({"requests": 5, "per": "30s"}));
    assert_eq!(t["allowed_ips"], json!(["198.51.100.0/24"]));
    cli.run(&[
        "token",
        "update",
        "feed",
        "--rate-limit",
        "none",
        "--allowed-ips",
        "any",
    ])
    .await
    .ok();
    let t = show(&gw, "feed").await;
    assert_eq!(
        (&t["rate_limit"], &t["allowed_ips"]),
        (&Value::Null, &Value::Null)
    );
}

/// `token revoke` reads secrets from stdin and reports them to the proxy listener, with no
/// admin key anywhere in its environment.
#[tokio::test(flavor = "multi_thread")]
async fn token_revoke_reports_secrets_from_stdin_without_the_admin_key() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("leaked", &["security-director"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(dir.path());
    c.args(["token", "revoke", "--proxy-url"])
        .arg(format!("http://{}", gw.proxy))
        .stdin(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().expect("start tokengate");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(
                stdin,
                "# found in a public gist\n\ntg_not_a_secret\n  {secret}  "
            )
            .unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The line that is no tokengate secret is not sent.
    assert!(stdout.contains("reported 1 secret"), "{stdout}");
    assert!(stdout.contains("1 line(s) were not"), "{stdout}");
    let t = show(&gw, "leaked").await;
    assert_eq!(
        (&t["status"], &t["inactive_reason"]),
        (&json!("inactive"), &json!("revoked"))
    );
    // Nothing on stdin is a usage error.
    let mut c = command(dir.path());
    c.args(["token", "revoke", "--proxy-url"])
        .arg(format!("http://{}", gw.proxy));
    let o = run(c, Duration::from_secs(60)).await;
    assert_eq!(o.code, Some(2), "{o}");
}

/// A reader that goes away (`tokengate token list --json | head -1`) ends the command
/// quietly with status 0, not a panic.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_the_command_quietly() {
    let (gw, _up) = routed().await;
    gw.create_token("some", &["security-director"]).await;
    let cli = Cli::new(&gw);
    let mut c = command(cli.dir.path());
    c.arg("--admin-url")
        .arg(&cli.url)
        .args(["--json", "token", "list"])
        .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().expect("start tokengate");
        // Close the read end before the command gets its answer from the API.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_names_the_environment_and_the_exit_codes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "TOKENGATE_ADMIN_KEY",
        "TOKENGATE_ADMIN_URL",
        "Exit status:",
        "  0  success",
        "  1  the API refused",
        "  2  a usage error",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn every_argument_of_every_admin_subcommand_has_a_description() {
    let commands: [&[&str]; 16] = [
        &["token", "create"],
        &["token", "list"],
        &["token", "show"],
        &["token", "update"],
        &["token", "delete"],
        &["token", "activate"],
        &["token", "deactivate"],
        &["token", "regenerate"],
        &["token", "revoke"],
        &["ip", "list"],
        &["ip", "block"],
        &["ip", "unblock"],
        &["audit"],
        &["webhook", "deliveries"],
        &["access-types"],
        &["serve"],
    ];
    for args in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut entries = 0;
        for line in text.lines() {
            let t = line.trim();
            if !line.starts_with("  ")
                || !(t.starts_with('-') || t.starts_with('<') || t.starts_with('['))
            {
                continue;
            }
            entries += 1;
            let parts: Vec<&str> = t.split("  ").filter(|p| !p.trim().is_empty()).collect();
            assert!(
                parts.len() >= 2,
                "`tokengate {}`: {t:?} has no description",
                args.join(" ")
            );
        }
        assert!(entries > 0, "no arguments read from:\n{text}");
    }
}

/// `serve` and `dev` are no API clients: their help shows `--config` and none of the client
/// flags, which every admin subcommand shows (and accepts before or after itself).
#[test]
fn client_flags_are_shown_only_under_the_admin_subcommands() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let client = [
        "--admin-url",
        "--json",
        "--ca-file",
        "--client-cert",
        "--client-key",
    ];
    for args in [&["serve"][..], &["dev"]] {
        let text = help(args);
        assert!(text.contains("--config"), "{args:?}:\n{text}");
        for flag in client {
            assert!(!text.contains(flag), "{args:?} shows {flag}:\n{text}");
        }
    }
    for args in [
        &["token", "list"][..],
        &["token"],
        &["ip", "block"],
        &["audit"],
        &["access-types"],
        &["webhook", "deliveries"],
        &[],
    ] {
        let text = help(args);
        for flag in client {
            assert!(text.contains(flag), "{args:?} lacks {flag}:\n{text}");
        }
    }
}

/// The admin URL: a flag after the subcommand, else one before it, else TOKENGATE_ADMIN_URL.
#[tokio::test]
async fn an_admin_url_flag_wins_over_the_environment() {
    let gw = TestGateway::builder().start().await;
    let live = format!("http://{}", gw.admin);
    let dead = format!("http://{}", refused_addr().await);
    let dir = tempfile::tempdir().unwrap();
    let attempt = |env: &str, args: Vec<String>| {
        let mut c = command(dir.path());
        c.args(args)
            .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY)
            .env("TOKENGATE_ADMIN_URL", env);
        run(c, Duration::from_secs(60))
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let o = attempt(&live, s(&["access-types"])).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = attempt(&dead, s(&["--admin-url", &live, "access-types"])).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = attempt(&dead, s(&["access-types", "--admin-url", &live])).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = attempt(
        &live,
        s(&["--admin-url", &live, "token", "list", "--admin-url", &dead]),
    )
    .await;
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains(&dead), "{o:?}");
}

/// `script` (util-linux) runs the CLI on a pseudo-terminal, answering its question with
/// `answer`; returns the exit code and everything the terminal showed.
async fn on_a_terminal(cli: &Cli, args: &str, answer: &str) -> (Option<i32>, String) {
    let line = format!("{BIN} --admin-url {} {args}", cli.url);
    let answer = answer.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("script")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_regenerate_ask_on_a_terminal_unless_yes() {
    let gw = TestGateway::builder().start().await;
    gw.create_token("ci", &[SD]).await;
    let cli = Cli::new(&gw);
    let (code, text) = on_a_terminal(&cli, "token delete ci", "n\n").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("Delete token \"ci\"?") && text.contains("[y/N]"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    let (code, text) = on_a_terminal(&cli, "token regenerate ci", "\n").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("Regenerate token \"ci\"?"), "{text}");
    // Nothing changed: the token and its secret are as they were.
    gw.token("ci").await;
    let r = gw
        .admin(Method::GET, "/v1/audit?token=ci", None)
        .await
        .json();
    assert_eq!(r["entries"].as_array().unwrap().len(), 1, "{r}");
    let (code, text) = on_a_terminal(&cli, "token regenerate ci", "yes\n").await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("tg_"), "the new secret is printed: {text}");
    let (code, text) = on_a_terminal(&cli, "token delete ci --yes", "").await;
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("[y/N]"), "--yes does not ask: {text}");
    gw.admin(Method::GET, "/v1/tokens/ci", None)
        .await
        .expect(404, Some("not_found"));
}

/// `serve` logs the console's URL with the listeners, and warns when no route is configured.
#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_the_console_url_and_warns_without_routes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tokengate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             key_file = \"{d}/admin.key\"\n[store]\nurl = \"sqlite://{d}/tokengate.db\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut c = command(dir.path());
    c.args(["--config", cfg.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let done = line.contains("no [[routes]]");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("serve starts and warns within 60 s")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let listening = lines
        .iter()
        .find(|l| l.contains("tokengate listening"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let admin = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap();
    assert!(
        listening.contains(&format!("console=http://{admin}/")),
        "{listening}"
    );
    let warn = lines.last().unwrap();
    assert!(warn.contains("WARN") && warn.contains("404"), "{warn}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_usage_prints_totals_and_a_sparkline() {
    let (gw, _up) = routed().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    for _ in 0..3 {
        gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    }
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(403, Some("access_denied"));
    gw.clock.advance(Duration::from_secs(86_400));
    for _ in 0..2 {
        gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    }
    let cli = Cli::new(&gw);
    // The last 24 hours, by hour: yesterday's hour is just outside.
    let o = cli.run(&["token", "usage", "feed"]).await;
    o.ok();
    assert!(o.stdout.starts_with("feed: 24 buckets of 1h"), "{o}");
    let requests = o
        .stdout
        .lines()
        .find(|l| l.starts_with("requests"))
        .unwrap();
    let fields: Vec<&str> = requests.split_whitespace().collect();
    assert_eq!(fields[1], "2", "{o}");
    assert_eq!(fields[2].chars().count(), 24, "one bar per hour: {o}");
    assert!(fields[2].ends_with('█'), "{o}");
    // Two days, by day, ending with the gateway's today; the refusal by reason.
    let o = cli.run(&["token", "usage", "feed", "--days", "2"]).await;
    o.ok();
    assert!(o.stdout.contains("2 buckets of 1d"), "{o}");
    assert!(o.stdout.contains("requests           5"), "{o}");
    assert!(o.stdout.contains("  access_denied            1"), "{o}");
    let v = cli
        .run(&[
            "token",
            "usage",
            "feed",
            "--days",
            "2",
            "--ip",
            "127.0.0.1",
            "--json",
        ])
        .await
        .json();
    let now = tokengate::clock::Clock::now(&gw.clock).millis();
    let today = tokengate::clock::Timestamp(now - now % 86_400_000).rfc3339();
    assert_eq!(v["step"], "1d");
    assert_eq!(v["buckets"][1]["start"], today.as_str(), "{v}");
    let per_day: Vec<u64> = v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(per_day, [3, 2], "{v}");
    assert_eq!(
        cli.run(&["token", "usage", "feed", "--days", "0"])
            .await
            .code,
        Some(2)
    );
    cli.run(&["token", "usage", "feed", "--ip", "10.0.0.0/8"])
        .await
        .refused();
    cli.run(&["token", "usage", "nope"]).await.refused();
}
