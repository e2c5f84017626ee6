//! The web console of SPEC §7, end to end in a real headless browser (Debian's `chromium`
//! driven through `chromedriver` over the W3C WebDriver protocol) against the real gateway on
//! ephemeral ports.
//!
//! The browser tests skip, with a printed reason, when `/usr/bin/chromium` or
//! `/usr/bin/chromedriver` is missing, and fail instead when `TOKENGATE_TEST_REQUIRE` names
//! `chromium` (see `support::skip`); `.ci/run` installs both and requires them. With `TOKENGATE_SCREENSHOTS=1`
//! they also write the README's pictures: `docs/console-{list,token,usage,rotation,audit}.png` at
//! 1280 px and `docs/console-{list,token,usage,audit}-narrow.png` at 400 px.
//!
//! The console's "now" (for "3 days ago") is the page's `Date.now()`; [`sign_in`] pins it to
//! the gateway's manual clock, so relative times follow the time the tests move.
//!
//! The WebDriver client is a few dozen lines over the hyper client the other tests use: the
//! protocol is JSON over HTTP, and this keeps a TLS stack out of the dev-dependencies.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one page state may take to appear.
const WAIT: Duration = Duration::from_secs(20);
/// How long chromedriver may take to start and name its port (a loaded CI machine, with test
/// binaries still compiling beside it, has taken more than 20 s).
const STARTUP: Duration = Duration::from_secs(90);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// === a minimal WebDriver client ===

/// The chromedriver process we started; dropping it ends it and everything in its process
/// group (the browser it launched), whatever state the test is in.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Browser {
    port: u16,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
    // Dropped after `Browser::drop` has closed the session.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on an ephemeral port and opens a headless Chromium session, or
    /// returns `None` after [`skip`]ping `test` when no browser is installed (which fails the
    /// test instead when `TOKENGATE_TEST_REQUIRE` names `chromium`).
    async fn start(test: &str) -> Option<Browser> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                skip(
                    "chromium",
                    test,
                    &format!("{bin} is not installed (apt-get install chromium chromium-driver)"),
                );
                return None;
            }
        }
        // Its own process group: the browser it starts joins it, so Drop can end them all.
        let mut driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg("--port=0")
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let port = driver_port(&mut driver.0);
        let http = client();
        // Ready when /status says so (bounded polling, no fixed sleep).
        let deadline = Instant::now() + STARTUP;
        loop {
            let req = Request::get(format!("http://127.0.0.1:{port}/status"))
                .body(Full::default())
                .unwrap();
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(2), http.request(req)).await
            {
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--force-device-scale-factor=1",
                    "--window-size=1280,900", "--lang=en-US",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut b = Browser {
            _driver: driver,
            port,
            session: String::new(),
            http,
            _profile: profile,
        };
        let v = b.raw(Method::POST, "/session".into(), Some(caps)).await;
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string();
        Some(b)
    }

    /// One WebDriver call; the whole answer (`{"value": ...}`). Panics on a WebDriver error.
    async fn raw(&self, method: Method, path: String, body: Option<Value>) -> Value {
        let uri = format!("http://127.0.0.1:{}{}", self.port, path);
        let req = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), self.http.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: chromedriver did not answer"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e})"));
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{}", self.session, path);
        self.raw(method, p, body).await["value"].take()
    }

    async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `body` (a JavaScript function body using `arguments`) in the page.
    async fn js(&self, body: &str, args: Value) -> Value {
        self.cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": body, "args": args})),
        )
        .await
    }

    /// Polls `body` until it returns something truthy; panics after [`WAIT`] with `what`.
    async fn wait(&self, what: &str, body: &str, args: Value) -> Value {
        let script = format!("try {{ {body} }} catch (e) {{ return null; }}");
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.js(&script, args.clone()).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let page = self
                    .js("return document.querySelector('main').innerText", json!([]))
                    .await;
                panic!("timed out waiting for {what}; the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the table body `tbody` holds exactly `n` rows.
    async fn wait_rows(&self, tbody: &str, n: usize) {
        self.wait(
            &format!("{n} rows in {tbody}"),
            "return document.querySelectorAll(arguments[0] + ' tr').length === arguments[1]",
            json!([tbody, n]),
        )
        .await;
    }

    /// Waits until `css` matches an element that is displayed and enabled; its WebDriver id.
    async fn ready(&self, css: &str) -> String {
        self.wait(
            &format!("{css} to be visible and enabled"),
            "const e = document.querySelector(arguments[0]); \
             return !!e && !e.disabled && e.getClientRects().length > 0;",
            json!([css]),
        )
        .await;
        let v = self
            .cmd(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.ready(css).await;
        self.cmd(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Clears the field and types `text` into it (WebDriver key codes allowed, e.g. Enter).
    async fn fill(&self, css: &str, text: &str) {
        let id = self.ready(css).await;
        self.cmd(
            Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Picks an `<option>` of a `<select>` the way a user does (options have no box of their
    /// own, so [`Browser::click`]'s visibility wait does not apply).
    async fn choose(&self, select: &str, value: &str) {
        self.ready(select).await;
        let css = format!("{select} option[value='{value}']");
        let v = self
            .cmd(
                Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = v[ELEMENT].as_str().unwrap().to_string();
        self.cmd(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!([css]),
            )
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    async fn value(&self, css: &str) -> String {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.value : null;",
                json!([css]),
            )
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    /// Waits until the text of `css` contains `needle`.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let v = self
            .wait(
                &format!("{css} to contain {needle:?}"),
                "const e = document.querySelector(arguments[0]); \
                 return e && e.textContent.includes(arguments[1]) ? e.textContent : null;",
                json!([css, needle]),
            )
            .await;
        v.as_str().unwrap().to_string()
    }

    async fn wait_gone(&self, css: &str) {
        self.wait(
            &format!("{css} to disappear"),
            "const e = document.querySelector(arguments[0]); \
             return !e || e.getClientRects().length === 0;",
            json!([css]),
        )
        .await;
    }

    async fn session_key(&self) -> Value {
        self.js(
            "return window.sessionStorage.getItem('tokengate.adminKey');",
            json!([]),
        )
        .await
    }

    async fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Writes a PNG of the viewport to `path`.
    async fn screenshot(&self, path: &Path) {
        let v = self.cmd(Method::GET, "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        note(&format!("wrote {}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Close the browser through the driver (a plain blocking request: this may run while
        // a failed test unwinds); `Driver` then stops the driver we started.
        if !self.session.is_empty() {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
                     Connection: close\r\nContent-Length: 0\r\n\r\n",
                    self.session, self.port
                );
                // Read until the whole answer is in (the driver may keep the connection open).
                let mut out = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    out.extend_from_slice(&buf[..n]);
                    if http_answer_complete(&out) {
                        break;
                    }
                }
            }
        }
    }
}

/// Reads chromedriver's stdout until it names its port ("... started successfully on port N.").
fn driver_port(driver: &mut Child) -> u16 {
    let mut out = driver.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        let mut sent = false;
        // Keep draining after the port is found, so the driver never blocks on a full pipe.
        while let Ok(1) = out.read(&mut byte) {
            seen.push(byte[0]);
            if sent {
                continue;
            }
            let text = String::from_utf8_lossy(&seen);
            if let Some(rest) = text.split("successfully on port ").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if rest.len() > digits.len() && !digits.is_empty() {
                    let _ = tx.send(digits.parse::<u16>().ok());
                    sent = true;
                    seen.clear();
                }
            }
        }
    });
    rx.recv_timeout(STARTUP)
        .ok()
        .flatten()
        .filter(|p| *p != 0)
        .expect("chromedriver names the port it listens on")
}

/// Whether `raw` holds a whole HTTP/1.1 answer with a `Content-Length` body.
fn http_answer_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    raw.len() >= end + 4 + len
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        }
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn screenshots_wanted() -> Option<PathBuf> {
    (std::env::var("TOKENGATE_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
}

// === helpers for the gateway side ===

async fn gateway() -> (TestGateway, Upstream) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .route("/feeds/", "third-party-feeds", up.addr)
        .start()
        .await;
    (gw, up)
}

fn console_url(gw: &TestGateway) -> String {
    format!("http://{}/", gw.admin)
}

/// Opens the console, pins its clock to the gateway's (see [`pin_clock`]) and signs in.
async fn sign_in(b: &Browser, gw: &TestGateway) {
    b.goto(&console_url(gw)).await;
    b.ready("#signin-key").await;
    pin_clock(b, gw).await;
    b.fill("#signin-key", &format!("{ADMIN_KEY}\u{E007}")).await;
    b.ready("#view-list").await;
}

/// The console's "now" for relative times is `Date.now()` in the page: pin it to the
/// gateway's manual clock (which tests move by days), so that "3 days ago" means three days
/// of the gateway's time. Lasts until the next page load.
async fn pin_clock(b: &Browser, gw: &TestGateway) {
    let now = tokengate::clock::Clock::now(&gw.clock).millis();
    b.js("const t = arguments[0]; Date.now = () => t;", json!([now]))
        .await;
}

/// The exact UTC text the console shows on hover for an API time (`2026-11-26T03:04:05Z`).
fn exact(rfc3339: &str) -> String {
    rfc3339.replace('T', " ").replace('Z', " UTC")
}

/// The `data-name`s of the token list's rows, top to bottom.
async fn listed(b: &Browser) -> Vec<String> {
    let v = b
        .js(
            "return [...document.querySelectorAll('#token-rows tr')].map(r => r.dataset.name)",
            json!([]),
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// Waits until the token list shows exactly `names`, in that order.
async fn wait_listed(b: &Browser, what: &str, names: &[&str]) {
    b.wait(
        what,
        "const rows = [...document.querySelectorAll('#token-rows tr')].map(r => r.dataset.name); \
         return JSON.stringify(rows) === JSON.stringify(arguments[0]);",
        json!([names]),
    )
    .await;
}

/// The `aria-sort` of each sortable header of the token list (`null` where absent).
async fn aria_sort(b: &Browser) -> Value {
    b.js(
        "const o = {}; document.querySelectorAll('#token-table th[data-sort]')\
           .forEach(th => { o[th.dataset.sort] = th.getAttribute('aria-sort'); }); return o;",
        json!([]),
    )
    .await
}

/// Whether the page scrolls sideways (the 400 px rule: it must not).
const FITS: &str = "return document.documentElement.scrollWidth <= window.innerWidth";

/// A proxied GET from a chosen client address (the test's loopback peer is a trusted proxy
/// in the gateways that use this).
async fn get_from(gw: &TestGateway, path: &str, secret: &str, ip: &str) -> Resp {
    gw.proxy_req(
        Request::get(path)
            .header("authorization", format!("Bearer {secret}"))
            .header("x-forwarded-for", ip)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// Waits for the confirmation dialog, checks that its text names `needle`, and confirms.
async fn confirm(b: &Browser, needle: &str) {
    b.ready("#confirm-ok").await;
    let text = b.text("#confirm-dialog").await;
    assert!(
        text.contains(needle),
        "the confirmation {text:?} lacks {needle:?}"
    );
    b.click("#confirm-ok").await;
    b.wait_gone("#confirm-dialog").await;
}

/// Waits for the confirmation dialog and cancels it.
async fn cancel(b: &Browser) {
    b.ready("#confirm-cancel").await;
    b.click("#confirm-cancel").await;
    b.wait_gone("#confirm-dialog").await;
}

/// Creates a token with a description through the admin API; returns its secret.
async fn create(gw: &TestGateway, name: &str, description: &str, access: &[&str]) -> String {
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": name, "description": description, "access": access})),
        )
        .await;
    r.expect(201, None);
    r.json()["token"].as_str().unwrap().to_string()
}

/// The README's demo data: five tokens in each state (one lapsed to idle after 31 days, one
/// deactivated), `soc-dashboard` used once and `siem-export` from four client addresses at
/// different times (the test's loopback peer is a trusted proxy here). Returns
/// `siem-export`'s secret.
async fn demo_gateway() -> (TestGateway, Upstream, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .route("/feeds/", "third-party-feeds", up.addr)
        .configure(|c| c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
        .start()
        .await;
    let hour = Duration::from_secs(3600);
    let day = 24 * hour;

    // A token nobody used for 30 days lapses to inactive (idle).
    create(
        &gw,
        "legacy-importer",
        "Old CSV importer, replaced by siem-export",
        &["third-party-feeds"],
    )
    .await;
    gw.clock.advance(31 * day);
    let secret = create(
        &gw,
        "siem-export",
        "Nightly SIEM export of alarms and audit events",
        &["security-director", "third-party-feeds"],
    )
    .await;
    let soc = create(
        &gw,
        "soc-dashboard",
        "SOC wall dashboard (read-only)",
        &["security-director"],
    )
    .await;
    create(
        &gw,
        "threat-feed-partner",
        "Threat intelligence partner feed",
        &["third-party-feeds"],
    )
    .await;
    create(
        &gw,
        "contractor-2024",
        "Temporary access for the audit contractor",
        &["security-director"],
    )
    .await;
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["contractor-2024"]})),
    )
    .await
    .expect(200, None);
    gw.clock.advance(2 * hour);
    get_from(&gw, "/sd/alarms", &soc, "192.0.2.10")
        .await
        .expect(200, None);

    // siem-export is used from four addresses, at different times.
    for (ip, n) in [
        ("198.51.100.23", 3),
        ("2001:db8::7", 1),
        ("203.0.113.9", 2),
        ("192.0.2.44", 5),
    ] {
        gw.clock.advance(3 * hour + Duration::from_secs(17 * 60));
        for _ in 0..n {
            get_from(&gw, "/sd/events", &secret, ip)
                .await
                .expect(200, None);
        }
    }
    (gw, up, secret)
}

// === the page itself (no browser needed) ===

#[tokio::test]
async fn console_is_served_without_the_key_with_the_security_headers() {
    let (gw, _up) = gateway().await;
    for (path, ct) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let r = gw.admin_as(Method::GET, path, None, None).await;
        r.expect(200, None);
        assert_eq!(r.header("content-type"), Some(ct), "{r}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        for d in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(d), "{path}: CSP {csp:?} lacks {d}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{r}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{r}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{r}");
    }
    let page = gw.admin_as(Method::GET, "/", None, None).await.text();
    assert!(page.contains("src=\"/console/app.js\""), "{page}");
    // Access types come from the API: no product of the seed is named by the page itself.
    let script = gw
        .admin_as(Method::GET, "/console/app.js", None, None)
        .await
        .text();
    for text in [&page, &script] {
        for name in [
            "Security Director",
            "security-director",
            "Third Party",
            "third-party-feeds",
        ] {
            assert!(!text.contains(name), "the console names {name:?}");
        }
    }
    assert!(!page.contains("<script>"), "no inline script");
    // The page holds no data: everything it shows still needs the key.
    gw.admin_as(Method::GET, "/v1/tokens", None, None)
        .await
        .expect(401, Some("unauthorized"));
    gw.admin_as(Method::GET, "/console/other.js", None, None)
        .await
        .expect(401, Some("unauthorized"));
    gw.admin_as(Method::POST, "/", None, None)
        .await
        .expect(401, Some("unauthorized"));
    // And the proxy listener does not serve it.
    gw.get("/", None).await.expect(401, Some("missing_token"));
}

// === in the browser ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_end_to_end() {
    let Some(b) = Browser::start("console_end_to_end").await else {
        return;
    };
    let (gw, up) = gateway().await;

    // Sign in: a wrong key is refused next to the field and nothing is kept.
    b.goto(&console_url(&gw)).await;
    b.ready("#signin-key").await;
    b.fill("#signin-key", "not-the-admin-key-0123456789abcdef\u{E007}")
        .await;
    b.wait_text("#signin-error", "refused").await;
    assert_eq!(b.session_key().await, Value::Null);
    // The right key, submitted with the keyboard, opens the (empty) list.
    b.fill("#signin-key", &format!("{ADMIN_KEY}\u{E007}")).await;
    b.ready("#view-list").await;
    b.wait_text("#token-empty", "No tokens yet").await;
    assert_eq!(b.session_key().await, json!(ADMIN_KEY));
    let cookies = b.js("return document.cookie", json!([])).await;
    assert_eq!(cookies, json!(""), "the key is never a cookie");
    let url = b.js("return location.href", json!([])).await;
    assert!(!url.as_str().unwrap().contains(ADMIN_KEY), "{url}");

    // Create: API validation errors appear next to the field that caused them.
    b.click("#open-create").await;
    b.fill("#create-name", "bad name").await;
    b.click("#create-access-security-director").await;
    b.click("#create-submit").await;
    b.wait_text("#create-name-error", "only letters").await;
    assert_eq!(
        b.js(
            "return document.getElementById('create-name').getAttribute('aria-invalid')",
            json!([])
        )
        .await,
        json!("true")
    );
    b.fill("#create-name", "feed-a").await;
    b.click("#create-access-security-director").await; // unticks it: no access at all
    b.click("#create-submit").await;
    b.wait_text("#create-access-error", "access").await;
    assert_eq!(b.text("#create-name-error").await, "");
    b.click("#create-access-security-director").await;
    b.fill("#create-description", "SIEM export").await;
    b.click("#create-submit").await;

    // The secret is shown once, with a copy button and the warning.
    b.ready("#secret-dialog").await;
    let secret = b.value("#secret-value").await;
    assert!(
        secret.starts_with("tg_") && secret.len() == 39,
        "{secret:?}"
    );
    assert!(b
        .text("#secret-dialog")
        .await
        .contains("cannot be shown again"));
    b.click("#secret-copy").await;
    b.wait(
        "a copy status",
        "return document.getElementById('secret-copy-status').textContent.length > 0",
        json!([]),
    )
    .await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    // The dialog's `close` event (which forgets the secret) runs as a task after close().
    b.wait(
        "the secret field is cleared",
        "return document.getElementById('secret-value').value === ''",
        json!([]),
    )
    .await;
    let html = b
        .js("return document.documentElement.outerHTML", json!([]))
        .await;
    assert!(
        !html.as_str().unwrap().contains(&secret),
        "the secret is gone from the page once the dialog is closed"
    );
    assert_eq!(b.value("#secret-value").await, "");
    b.wait_text("#token-rows tr[data-name='feed-a']", "SIEM export")
        .await;
    let row = b.text("#token-rows tr[data-name='feed-a']").await;
    assert!(
        row.contains("Active") && row.contains("Security Director") && row.contains("never"),
        "{row}"
    );

    // A second token with a clashing name: 409 name_taken, shown at the name field.
    b.click("#open-create").await;
    b.fill("#create-name", "FEED-A").await;
    b.click("#create-access-third-party-feeds").await;
    b.click("#create-submit").await;
    b.wait_text("#create-name-error", "already exists").await;
    b.click("#create-cancel").await;
    b.wait_gone("#create-dialog").await;

    // Use the secret through the proxy; the client IP appears on the token page.
    gw.get("/sd/hello", Some(&secret)).await.expect(200, None);
    assert_eq!(up.last().target, "/hello");
    b.click("#token-rows tr[data-name='feed-a'] td.name a")
        .await;
    b.ready("#token-body").await;
    b.wait_text("#token-title", "feed-a").await;
    let ip_row = "#ip-rows tr[data-ip='127.0.0.1']";
    b.wait_text(&format!("{ip_row} td.requests"), "1").await;
    let facts = b.text("#token-facts").await;
    assert!(
        facts.contains("SIEM export") && facts.contains("Lapses on"),
        "{facts}"
    );

    // Block it from the table (after a confirmation): the next proxied request is refused.
    b.click(&format!("{ip_row} input[type=checkbox]")).await;
    b.click("#ips-block").await;
    confirm(&b, "127.0.0.1").await;
    b.wait_text(&format!("{ip_row} td.blocked"), "Blocked")
        .await;
    gw.get("/sd/hello", Some(&secret))
        .await
        .expect(403, Some("ip_blocked"));
    b.click("#ips-refresh").await;
    b.wait_text(&format!("{ip_row} td.denied"), "1").await;
    // Unblock: allowed again.
    b.click(&format!("{ip_row} input[type=checkbox]")).await;
    b.click("#ips-unblock").await;
    b.wait_text(&format!("{ip_row} td.blocked"), "No").await;
    gw.get("/sd/hello", Some(&secret)).await.expect(200, None);

    // Block an address not seen yet; a bad one is refused next to the input.
    b.fill("#block-input", "10.0.0.300").await;
    b.click("#block-submit").await;
    confirm(&b, "10.0.0.300").await;
    b.wait(
        "an error next to the block input",
        "return document.getElementById('block-error').textContent.length > 0",
        json!([]),
    )
    .await;
    b.fill("#block-input", "198.51.100.0/24\u{E007}").await;
    confirm(&b, "198.51.100.0/24").await;
    b.wait_text(
        "#ip-rows tr[data-ip='198.51.100.0/24'] td.blocked",
        "Blocked",
    )
    .await;
    assert_eq!(b.text("#block-error").await, "");
    assert_eq!(b.value("#block-input").await, "");

    // Edit description and access; an empty access set is refused next to it.
    b.fill("#edit-description", "SIEM export, nightly").await;
    b.click("#edit-access-security-director").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-access-error", "access").await;
    b.click("#edit-access-third-party-feeds").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-ok", "Saved").await;
    b.wait_text("#token-facts", "SIEM export, nightly").await;
    assert!(b.text("#token-facts").await.contains("Third Party feeds"));
    gw.get("/feeds/x", Some(&secret)).await.expect(200, None);
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(403, Some("access_denied"));

    // Regenerate asks first; cancelling changes nothing.
    b.click("#token-regenerate").await;
    b.wait_text("#confirm-dialog", "stops working").await;
    b.click("#confirm-cancel").await;
    b.wait_gone("#confirm-dialog").await;
    gw.get("/feeds/x", Some(&secret)).await.expect(200, None);
    b.click("#token-regenerate").await;
    b.click("#confirm-ok").await;
    b.ready("#secret-dialog").await;
    let new_secret = b.value("#secret-value").await;
    assert!(new_secret.starts_with("tg_") && new_secret != secret);
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.get("/feeds/x", Some(&new_secret))
        .await
        .expect(200, None);
    let secret = new_secret;

    // Back to the list: deactivate and activate from the selection.
    b.click("#back-to-list").await;
    b.ready("#view-list").await;
    let row = "#token-rows tr[data-name='feed-a']";
    b.click(&format!("{row} input[type=checkbox]")).await;
    b.wait_text("#list-selection", "1 selected").await;
    // Deactivate asks first; cancelling changes nothing.
    b.click("#bulk-deactivate").await;
    b.ready("#confirm-cancel").await;
    b.wait_text("#confirm-dialog", "Deactivate feed-a").await;
    b.click("#confirm-cancel").await;
    b.wait_gone("#confirm-dialog").await;
    gw.get("/feeds/x", Some(&secret)).await.expect(200, None);
    b.click("#bulk-deactivate").await;
    confirm(&b, "refused until it is activated again").await;
    b.wait_text(&format!("{row} td.status"), "Inactive").await;
    assert!(b
        .text(&format!("{row} td.status"))
        .await
        .contains("administrator"));
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));
    b.click(&format!("{row} input[type=checkbox]")).await;
    b.click("#bulk-activate").await;
    b.wait_text(&format!("{row} td.status"), "Active").await;
    b.wait_text("#bulk-ok", "Activated 1 token").await;
    gw.get("/feeds/x", Some(&secret)).await.expect(200, None);

    // Filter by name and by status.
    gw.create_token("beta-feed", &["third-party-feeds"]).await;
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["beta-feed"]})),
    )
    .await
    .expect(200, None);
    b.fill("#filter-q", "BETA").await;
    b.wait(
        "only beta-feed listed",
        "const rows = [...document.querySelectorAll('#token-rows tr')].map(r => r.dataset.name); \
         return rows.length === 1 && rows[0] === 'beta-feed';",
        json!([]),
    )
    .await;
    b.fill("#filter-q", "").await;
    b.choose("#filter-status", "inactive").await;
    b.wait(
        "only the inactive token listed",
        "const rows = [...document.querySelectorAll('#token-rows tr')].map(r => r.dataset.name); \
         return rows.length === 1 && rows[0] === 'beta-feed';",
        json!([]),
    )
    .await;
    b.choose("#filter-status", "active").await;
    b.wait(
        "only the active token listed",
        "const rows = [...document.querySelectorAll('#token-rows tr')].map(r => r.dataset.name); \
         return rows.length === 1 && rows[0] === 'feed-a';",
        json!([]),
    )
    .await;
    b.choose("#filter-status", "").await;
    b.wait_rows("#token-rows", 2).await;

    // Select-all and a bulk action over both.
    b.click("#select-all-tokens").await;
    b.wait_text("#list-selection", "2 selected").await;
    b.click("#bulk-deactivate").await;
    confirm(&b, "Deactivate 2 tokens").await;
    b.wait_text("#bulk-ok", "Deactivated 2 tokens").await;

    // A bulk action on a token deleted meanwhile: the API's 404 appears by the buttons.
    b.click("#select-all-tokens").await;
    gw.admin(Method::DELETE, "/v1/tokens/beta-feed", None)
        .await
        .expect(204, None);
    b.click("#bulk-activate").await;
    b.wait_text("#bulk-error", "beta-feed").await;
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(403, Some("token_inactive"));

    // Delete asks first, then the token is gone everywhere.
    b.click(&format!("{row} td.name a")).await;
    b.ready("#token-body").await;
    b.click("#token-delete").await;
    b.wait_text("#confirm-dialog", "cannot be undone").await;
    b.click("#confirm-ok").await;
    b.ready("#view-list").await;
    b.wait_text("#bulk-ok", "Deleted token feed-a").await;
    b.wait_text("#token-empty", "No tokens yet").await;
    gw.get("/feeds/x", Some(&secret))
        .await
        .expect(401, Some("invalid_token"));
    gw.admin(Method::GET, "/v1/tokens/feed-a", None)
        .await
        .expect(404, Some("not_found"));

    // Sign out forgets the key; a reload stays signed out.
    b.click("#sign-out").await;
    b.ready("#view-signin").await;
    assert_eq!(b.session_key().await, Value::Null);
    b.goto(&console_url(&gw)).await;
    b.ready("#signin-key").await;
    assert!(b.text("#token-rows").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_html_and_script_as_plain_text() {
    let Some(b) = Browser::start("console_shows_html_and_script_as_plain_text").await else {
        return;
    };
    let (gw, _up) = gateway().await;
    let payload = r#"<img src=x onerror="window.pwned=1"><script>window.pwned=2</script><b id="pwn">bold</b> & "quotes" 'single'"#;
    let r = gw
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "evil", "description": payload, "access": ["security-director"]})),
        )
        .await;
    r.expect(201, None);

    sign_in(&b, &gw).await;
    b.wait_text("#token-rows tr[data-name='evil'] td.desc", "onerror")
        .await;
    assert_eq!(
        b.text("#token-rows tr[data-name='evil'] td.desc").await,
        payload
    );
    // The same text typed into the create form is stored and shown as text too.
    b.click("#open-create").await;
    b.fill("#create-name", "evil-2").await;
    b.fill("#create-description", payload).await;
    b.click("#create-access-third-party-feeds").await;
    b.click("#create-submit").await;
    b.ready("#secret-dialog").await;
    b.click("#secret-done").await;
    b.wait_text("#token-rows tr[data-name='evil-2'] td.desc", "onerror")
        .await;
    let stored = gw.admin(Method::GET, "/v1/tokens/evil-2", None).await;
    assert_eq!(stored.json()["description"], payload);
    // A name full of markup is refused by the API; its message is shown as text as well.
    b.click("#open-create").await;
    b.fill("#create-name", "<img src=x onerror=window.pwned=3>")
        .await;
    b.click("#create-access-security-director").await;
    b.click("#create-submit").await;
    b.wait_text("#create-name-error", "name").await;
    b.click("#create-cancel").await;

    b.click("#token-rows tr[data-name='evil'] td.name a").await;
    b.wait_text("#token-facts", "onerror").await;
    b.fill("#block-input", "<b>1.2.3.4</b>\u{E007}").await;
    // The confirmation names the entry as text too.
    confirm(&b, "<b>1.2.3.4</b>").await;
    b.wait(
        "an error next to the block input",
        "return document.getElementById('block-error').textContent.length > 0",
        json!([]),
    )
    .await;
    let verdict = b
        .js(
            "return {
                pwned: typeof window.pwned === 'undefined' ? null : window.pwned,
                injected: document.querySelectorAll('main img, main script, #pwn, dialog img').length,
                facts: document.getElementById('token-facts').textContent,
            };",
            json!([]),
        )
        .await;
    assert_eq!(verdict["pwned"], Value::Null, "{verdict}");
    assert_eq!(verdict["injected"], 0, "{verdict}");
    assert!(
        verdict["facts"].as_str().unwrap().contains(payload),
        "{verdict}"
    );
}

/// Usage from several client addresses (the test's loopback peer is a trusted proxy here),
/// a CIDR block that covers one of them (unblocking that address alone is refused next to the
/// buttons), tokens in each state; and, with `TOKENGATE_SCREENSHOTS=1`, the README's pictures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_cidr_blocks_and_screenshots() {
    let Some(b) = Browser::start("console_cidr_blocks_and_screenshots").await else {
        return;
    };
    let (gw, _up, secret) = demo_gateway().await;
    sign_in(&b, &gw).await;
    b.wait_rows("#token-rows", 5).await;
    let legacy = b
        .text("#token-rows tr[data-name='legacy-importer'] td.status")
        .await;
    assert!(
        legacy.contains("Inactive") && legacy.contains("idle"),
        "{legacy}"
    );
    let lapses = b
        .text("#token-rows tr[data-name='soc-dashboard'] td.lapses")
        .await;
    assert_eq!(lapses, "in 29 days", "{lapses}");

    if let Some(dir) = screenshots_wanted() {
        b.click("#token-rows tr[data-name='contractor-2024'] input[type=checkbox]")
            .await;
        b.click("#token-rows tr[data-name='siem-export'] input[type=checkbox]")
            .await;
        b.wait_text("#list-selection", "2 selected").await;
        b.set_window(1280, 900).await;
        b.js("document.activeElement.blur()", json!([])).await;
        b.screenshot(&dir.join("console-list.png")).await;
        b.click("#select-all-tokens").await;
        b.click("#select-all-tokens").await;
    }

    b.click("#token-rows tr[data-name='siem-export'] td.name a")
        .await;
    b.wait_rows("#ip-rows", 4).await;
    // Newest use first.
    let order = b
        .js(
            "return [...document.querySelectorAll('#ip-rows tr')].map(r => r.dataset.ip)",
            json!([]),
        )
        .await;
    assert_eq!(
        order,
        json!(["192.0.2.44", "203.0.113.9", "2001:db8::7", "198.51.100.23"])
    );
    b.fill("#block-input", "203.0.113.0/24").await;
    b.click("#block-submit").await;
    confirm(&b, "203.0.113.0/24").await;
    let covered = "#ip-rows tr[data-ip='203.0.113.9']";
    b.wait_text(&format!("{covered} td.blocked"), "203.0.113.0/24")
        .await;
    get_from(&gw, "/sd/events", &secret, "203.0.113.9")
        .await
        .expect(403, Some("ip_blocked"));
    // Unblocking the covered address alone is refused, next to the buttons, naming the CIDR.
    b.click(&format!("{covered} input[type=checkbox]")).await;
    b.click("#ips-unblock").await;
    b.wait_text("#ips-error", "203.0.113.0/24").await;
    // Block one more address from the table.
    b.click("#ip-rows tr[data-ip='198.51.100.23'] input[type=checkbox]")
        .await;
    b.click(&format!("{covered} input[type=checkbox]")).await;
    b.click("#ips-block").await;
    confirm(&b, "198.51.100.23").await;
    b.wait_text("#ip-rows tr[data-ip='198.51.100.23'] td.blocked", "Blocked")
        .await;
    assert_eq!(b.text("#ips-error").await, "");
    b.click("#ips-refresh").await;
    b.wait_text(&format!("{covered} td.denied"), "1").await;

    if let Some(dir) = screenshots_wanted() {
        b.set_window(1280, 1180).await;
        b.js(
            "window.scrollTo(0, 0); document.activeElement.blur()",
            json!([]),
        )
        .await;
        b.screenshot(&dir.join("console-token.png")).await;
    }
}

/// Issue 17: the expiry and the rotation grace in the console: set at creation (a preset),
/// shown on the token page, changed by the edit form, and a regenerate with a grace keeps the
/// old secret working and says until when.
#[tokio::test]
async fn console_expiry_and_rotation_grace() {
    let Some(b) = Browser::start("console_expiry_and_rotation_grace").await else {
        return;
    };
    let (gw, _up) = gateway().await;
    sign_in(&b, &gw).await;
    let now = tokengate::clock::Clock::now(&gw.clock);

    // Create with "In 90 days".
    b.click("#open-create").await;
    b.fill("#create-name", "expiring").await;
    b.click("#create-access-security-director").await;
    b.choose("#create-expiry", "90d").await;
    b.click("#create-submit").await;
    b.ready("#secret-dialog").await;
    let old = b.value("#secret-value").await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    let t = gw.token("expiring").await;
    let in_90d = tokengate::clock::Timestamp(now.0 + 90 * 86_400_000).rfc3339();
    assert_eq!(t["expires_at"], json!(in_90d), "{t}");

    // The token page shows it.
    b.wait_text("#token-rows tr[data-name='expiring']", "expiring")
        .await;
    b.click("#token-rows tr[data-name='expiring'] td.name a")
        .await;
    b.ready("#token-body").await;
    let date = &in_90d[..10];
    b.wait_text("#token-facts", date).await;

    // A date chosen in the edit form, then "never".
    b.choose("#edit-expiry", "date").await;
    b.ready("#edit-expiry-date").await;
    b.js(
        "document.getElementById('edit-expiry-date').value = arguments[0]",
        json!(["2099-01-31"]),
    )
    .await;
    b.click("#edit-save").await;
    b.wait_text("#edit-ok", "Saved").await;
    assert_eq!(
        gw.token("expiring").await["expires_at"],
        "2099-01-31T00:00:00Z"
    );
    b.wait_text("#token-facts", "2099-01-31").await;
    b.choose("#edit-expiry", "never").await;
    b.click("#edit-save").await;
    b.wait(
        "the expiry cleared",
        "return document.getElementById('token-facts').textContent.indexOf('2099') < 0",
        json!([]),
    )
    .await;
    assert_eq!(gw.token("expiring").await["expires_at"], Value::Null);

    // Regenerate with a one-hour grace: the old secret still works, and the page says until when.
    b.choose("#regenerate-grace", "1h").await;
    b.click("#token-regenerate").await;
    b.ready("#confirm-dialog").await;
    assert!(b
        .text("#confirm-dialog")
        .await
        .contains("keeps working for 1 hour"));
    b.click("#confirm-ok").await;
    b.ready("#secret-dialog").await;
    let new = b.value("#secret-value").await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    b.wait_text("#token-action-ok", "the old one works until")
        .await;
    b.wait_text("#token-facts", "Old secret works until").await;
    if let Some(dir) = screenshots_wanted() {
        b.screenshot(&dir.join("console-rotation.png")).await;
    }
    gw.get("/sd/x", Some(&old)).await.expect(200, None);
    gw.get("/sd/x", Some(&new)).await.expect(200, None);
    let until = tokengate::clock::Timestamp(tokengate::clock::Clock::now(&gw.clock).0 + 3_600_000)
        .rfc3339();
    assert_eq!(
        gw.token("expiring").await["previous_secret_expires_at"],
        json!(until)
    );
}

/// Issue 17: check boxes, badges and labels come from `/v1/access-types`: a gateway with its
/// own types shows those (labels as text), and a token made and edited in the page gets them.
#[tokio::test]
async fn console_access_types_come_from_the_config() {
    let Some(b) = Browser::start("console_access_types_come_from_the_config").await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .configure(|c| {
            c.access_types =
                access_types(&[("reports", "Reports <b>API</b>"), ("billing", "Billing")])
        })
        .route("/reports/", "reports", up.addr)
        .start()
        .await;
    sign_in(&b, &gw).await;
    b.click("#open-create").await;
    b.ready("#create-access-reports").await;
    b.ready("#create-access-billing").await;
    let choices = b.text("#create-access-options").await;
    assert!(choices.contains("Reports <b>API</b>"), "{choices}");
    assert!(choices.contains("Billing"), "{choices}");
    let boxes = b
        .js(
            "return document.querySelectorAll('#create-access-options input').length",
            json!([]),
        )
        .await;
    assert_eq!(boxes, json!(2));
    b.fill("#create-name", "reporter").await;
    b.click("#create-access-reports").await;
    b.click("#create-submit").await;
    b.ready("#secret-dialog").await;
    let secret = b.value("#secret-value").await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    assert_eq!(gw.token("reporter").await["access"], json!(["reports"]));
    gw.get("/reports/x", Some(&secret)).await.expect(200, None);

    // The list's badge carries the label, as text.
    let row = b
        .wait_text("#token-rows tr[data-name='reporter']", "Reports <b>API</b>")
        .await;
    assert!(!row.contains("reports,"), "{row}");
    // The edit form offers the configured types, ticked as the token holds them.
    b.click("#token-rows tr[data-name='reporter'] td.name a")
        .await;
    b.ready("#token-body").await;
    let ticked = b
        .js(
            "return [document.getElementById('edit-access-reports').checked, \
                     document.getElementById('edit-access-billing').checked]",
            json!([]),
        )
        .await;
    assert_eq!(ticked, json!([true, false]));
    b.click("#edit-access-billing").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-ok", "Saved").await;
    assert_eq!(
        gw.token("reporter").await["access"],
        json!(["billing", "reports"])
    );
    b.wait_text("#token-facts", "Billing").await;
}

/// Rate limit and allow-list on the token page (SPEC §7): set a limit in the edit form (in
/// force at the proxy), an invalid allowed IP refused next to its field, "Allow only these"
/// from the IP table (after a confirmation) makes the selected address the whole allow-list,
/// and emptying the fields clears both (null). Deactivating from the token page asks first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_rate_limit_and_allow_list() {
    let Some(b) = Browser::start("console_rate_limit_and_allow_list").await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
        .start()
        .await;
    let secret = create(&gw, "partner", "Partner feed", &["security-director"]).await;
    let t = gw.token("partner").await;
    assert_eq!(t["rate_limit"], Value::Null, "{t}");
    assert_eq!(t["allowed_ips"], Value::Null, "{t}");

    sign_in(&b, &gw).await;
    b.click("#token-rows tr[data-name='partner'] td.name a")
        .await;
    b.ready("#token-body").await;
    b.wait_text("#token-facts", "Rate limit").await;
    assert_eq!(b.text("#token-facts dd.rate-limit").await, "none");
    assert_eq!(b.text("#token-facts dd.allowed-ips").await, "any");
    assert_eq!(b.value("#edit-rate-requests").await, "");
    assert_eq!(b.value("#edit-allowed-ips").await, "");

    // Not a number: refused in the page, next to the field; out of range: the API's message.
    b.fill("#edit-rate-requests", "lots").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-rate_limit-error", "whole number").await;
    b.fill("#edit-rate-requests", "0").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-rate_limit-error", "1 to 1000000").await;
    assert_eq!(gw.token("partner").await["rate_limit"], Value::Null);

    // 2 per minute.
    b.fill("#edit-rate-requests", "2").await;
    b.choose("#edit-rate-per", "1h").await;
    b.choose("#edit-rate-per", "1m").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-ok", "Saved").await;
    assert_eq!(b.text("#edit-rate_limit-error").await, "");
    let t = gw.token("partner").await;
    assert_eq!(t["rate_limit"], json!({"requests": 2, "per": "1m"}), "{t}");
    assert_eq!(t["allowed_ips"], Value::Null, "{t}");
    b.wait_text("#token-facts dd.rate-limit", "2 per 1m").await;

    // An entry that is no IP: the API's message next to the allow-list, and nothing changes.
    b.fill("#edit-allowed-ips", "192.0.2.1, not-an-ip").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-allowed_ips-error", "not-an-ip").await;
    assert!(
        b.text("#edit-allowed_ips-error")
            .await
            .contains("not an IP address"),
        "{}",
        b.text("#edit-allowed_ips-error").await
    );
    assert_eq!(
        b.js(
            "return document.getElementById('edit-allowed-ips').getAttribute('aria-invalid')",
            json!([])
        )
        .await,
        json!("true")
    );
    let t = gw.token("partner").await;
    assert_eq!(t["allowed_ips"], Value::Null, "{t}");
    assert_eq!(t["rate_limit"], json!({"requests": 2, "per": "1m"}), "{t}");

    // Two clients; the limit set in the page is in force (a third use within the minute).
    let (chosen, other) = ("203.0.113.7", "198.51.100.23");
    get_from(&gw, "/sd/x", &secret, chosen)
        .await
        .expect(200, None);
    get_from(&gw, "/sd/x", &secret, other)
        .await
        .expect(200, None);
    get_from(&gw, "/sd/x", &secret, chosen)
        .await
        .expect(429, Some("rate_limited"));
    gw.clock.advance(Duration::from_secs(60));

    b.click("#ips-refresh").await;
    b.wait_rows("#ip-rows", 2).await;
    let disabled = "return document.getElementById('ips-allow-only').disabled";
    assert_eq!(
        b.js(disabled, json!([])).await,
        json!(true),
        "nothing selected"
    );
    let chosen_row = format!("#ip-rows tr[data-ip='{chosen}']");
    b.click(&format!("{chosen_row} input[type=checkbox]")).await;
    assert_eq!(b.js(disabled, json!([])).await, json!(false));
    // It asks first; cancelling changes nothing.
    b.click("#ips-allow-only").await;
    b.ready("#confirm-cancel").await;
    b.click("#confirm-cancel").await;
    b.wait_gone("#confirm-dialog").await;
    assert_eq!(gw.token("partner").await["allowed_ips"], Value::Null);
    b.click("#ips-allow-only").await;
    confirm(&b, chosen).await;
    b.wait_text("#token-facts dd.allowed-ips", chosen).await;
    let t = gw.token("partner").await;
    assert_eq!(t["allowed_ips"], json!([chosen]), "{t}");
    assert_eq!(t["rate_limit"], json!({"requests": 2, "per": "1m"}), "{t}");
    assert!(!b.text("#token-facts dd.allowed-ips").await.contains(other));
    // The edit form follows (so a later save keeps the list); its old error is gone.
    assert_eq!(b.value("#edit-allowed-ips").await, chosen);
    assert_eq!(b.text("#edit-allowed_ips-error").await, "");
    b.wait_text("#ips-ok", chosen).await;
    get_from(&gw, "/sd/x", &secret, other)
        .await
        .expect(403, Some("ip_not_allowed"));
    get_from(&gw, "/sd/x", &secret, chosen)
        .await
        .expect(200, None);
    b.click("#ips-refresh").await;
    b.wait_text(&format!("#ip-rows tr[data-ip='{other}'] td.denied"), "1")
        .await;

    // Saving the form without touching the allow-list keeps it.
    b.fill("#edit-description", "Partner feed, capped").await;
    b.click("#edit-save").await;
    b.wait_text("#token-facts", "Partner feed, capped").await;
    assert_eq!(gw.token("partner").await["allowed_ips"], json!([chosen]));

    // Emptying the allow-list: any client IP again (null).
    b.fill("#edit-allowed-ips", "").await;
    b.click("#edit-save").await;
    b.wait_text("#token-facts dd.allowed-ips", "any").await;
    let t = gw.token("partner").await;
    assert_eq!(t["allowed_ips"], Value::Null, "{t}");
    assert_eq!(t["rate_limit"], json!({"requests": 2, "per": "1m"}), "{t}");
    get_from(&gw, "/sd/x", &secret, other)
        .await
        .expect(200, None);
    // The minute's two uses are spent; emptying the limit lifts it (null).
    get_from(&gw, "/sd/x", &secret, other)
        .await
        .expect(429, Some("rate_limited"));
    b.fill("#edit-rate-requests", "").await;
    b.click("#edit-save").await;
    b.wait_text("#token-facts dd.rate-limit", "none").await;
    assert_eq!(gw.token("partner").await["rate_limit"], Value::Null);
    get_from(&gw, "/sd/x", &secret, other)
        .await
        .expect(200, None);

    // Deactivate on the token page asks first; activating does not.
    b.click("#token-toggle").await;
    b.ready("#confirm-cancel").await;
    b.click("#confirm-cancel").await;
    b.wait_gone("#confirm-dialog").await;
    assert_eq!(gw.token("partner").await["status"], "active");
    b.click("#token-toggle").await;
    confirm(&b, "refused until it is activated again").await;
    b.wait_text("#token-action-ok", "inactive").await;
    assert_eq!(gw.token("partner").await["status"], "inactive");
    b.wait_text("#token-toggle", "Activate").await;
    b.click("#token-toggle").await;
    b.wait_text("#token-action-ok", "The token is active").await;
    assert_eq!(gw.token("partner").await["status"], "active");
}

/// The create dialog's optional rate limit and allowed IPs: sent when filled (errors next to
/// their fields), left out when not; a `per` set through the API that the select does not
/// offer ("30s") is shown and kept by a save that does not touch it; and the token page and
/// the dialog hold at 400 px wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_create_with_rate_limit_and_allow_list() {
    let Some(b) = Browser::start("console_create_with_rate_limit_and_allow_list").await else {
        return;
    };
    let (gw, _up) = gateway().await;
    sign_in(&b, &gw).await;

    b.click("#open-create").await;
    b.fill("#create-name", "capped").await;
    b.click("#create-access-security-director").await;
    b.fill("#create-rate-requests", "1.5").await;
    b.click("#create-submit").await;
    b.wait_text("#create-rate_limit-error", "whole number")
        .await;
    b.fill("#create-rate-requests", "100").await;
    b.choose("#create-rate-per", "1h").await;
    b.fill("#create-allowed-ips", "192.0.2.1 bogus").await;
    b.click("#create-submit").await;
    b.wait_text("#create-allowed_ips-error", "bogus").await;
    assert_eq!(b.text("#create-rate_limit-error").await, "");
    b.fill("#create-allowed-ips", "192.0.2.1, 198.51.100.0/24")
        .await;
    b.click("#create-submit").await;
    b.ready("#secret-dialog").await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    let t = gw.token("capped").await;
    assert_eq!(
        t["rate_limit"],
        json!({"requests": 100, "per": "1h"}),
        "{t}"
    );
    assert_eq!(
        t["allowed_ips"],
        json!(["192.0.2.1", "198.51.100.0/24"]),
        "{t}"
    );

    // Left empty: no limit, any client IP.
    b.click("#open-create").await;
    assert_eq!(b.value("#create-rate-requests").await, "");
    assert_eq!(b.value("#create-allowed-ips").await, "");
    b.fill("#create-name", "plain").await;
    b.click("#create-access-security-director").await;
    b.click("#create-submit").await;
    b.ready("#secret-dialog").await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    let t = gw.token("plain").await;
    assert_eq!(t["rate_limit"], Value::Null, "{t}");
    assert_eq!(t["allowed_ips"], Value::Null, "{t}");

    // The token page shows what was set, and the form holds it.
    b.wait_text("#token-rows tr[data-name='capped']", "capped")
        .await;
    b.click("#token-rows tr[data-name='capped'] td.name a")
        .await;
    b.ready("#token-body").await;
    b.wait_text("#token-facts dd.rate-limit", "100 per 1h")
        .await;
    let allowed = b.text("#token-facts dd.allowed-ips").await;
    assert!(
        allowed.contains("192.0.2.1") && allowed.contains("198.51.100.0/24"),
        "{allowed}"
    );
    assert_eq!(b.value("#edit-rate-requests").await, "100");
    assert_eq!(b.value("#edit-rate-per").await, "1h");
    assert_eq!(
        b.value("#edit-allowed-ips").await,
        "192.0.2.1\n198.51.100.0/24"
    );

    // A limit per 30 s, set through the API: offered as it is, and kept by a save.
    gw.admin(
        Method::PATCH,
        "/v1/tokens/plain",
        Some(json!({"rate_limit": {"requests": 5, "per": "30s"}})),
    )
    .await
    .expect(200, None);
    b.click("#back-to-list").await;
    b.ready("#view-list").await;
    b.click("#token-rows tr[data-name='plain'] td.name a").await;
    b.ready("#token-body").await;
    b.wait_text("#token-facts dd.rate-limit", "5 per 30s").await;
    assert_eq!(b.value("#edit-rate-per").await, "30s");
    b.fill("#edit-description", "Edited").await;
    b.click("#edit-save").await;
    b.wait_text("#edit-ok", "Saved").await;
    let t = gw.token("plain").await;
    assert_eq!(t["description"], "Edited", "{t}");
    assert_eq!(t["rate_limit"], json!({"requests": 5, "per": "30s"}), "{t}");

    // 400 px wide: nothing sticks out sideways (tables scroll inside their frame).
    b.set_window(400, 900).await;
    let width = b.js("return window.innerWidth", json!([])).await;
    assert!(width.as_u64().is_some_and(|w| w <= 400), "{width}");
    let fits =
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth";
    b.wait("the token page to fit 400 px", fits, json!([]))
        .await;
    b.click("#back-to-list").await;
    b.ready("#view-list").await;
    b.click("#open-create").await;
    b.ready("#create-rate-requests").await;
    let dialog_fits = b
        .js(
            "const d = document.getElementById('create-dialog'); \
             return d.scrollWidth <= d.clientWidth && d.getBoundingClientRect().right <= window.innerWidth",
            json!([]),
        )
        .await;
    assert_eq!(dialog_fits, json!(true));
    b.wait("the list to fit 400 px", fits, json!([])).await;
}

/// Issue 20: a revoked token says what happened and what to do (regenerate), and cannot be
/// activated from the page until it is regenerated.
#[tokio::test]
async fn console_shows_a_revoked_token_with_its_advice() {
    let Some(b) = Browser::start("console_shows_a_revoked_token_with_its_advice").await else {
        return;
    };
    let (gw, _up) = gateway().await;
    let (secret, _) = gw.create_token("leaked", &["security-director"]).await;
    let r = gw
        .proxy_req(
            http::Request::post("/_tokengate/revoke")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    json!({"tokens": [secret]}).to_string(),
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 202, "{r}");
    sign_in(&b, &gw).await;
    b.wait_text("#token-rows tr[data-name='leaked']", "revoked")
        .await;
    b.click("#token-rows tr[data-name='leaked'] td.name a")
        .await;
    b.ready("#token-body").await;
    b.wait_text("#token-revoked-advice", "Regenerate it").await;
    let disabled = b
        .js(
            "return document.getElementById('token-toggle').disabled",
            json!([]),
        )
        .await;
    assert_eq!(disabled, json!(true));
    b.click("#token-regenerate").await;
    b.ready("#confirm-dialog").await;
    b.click("#confirm-ok").await;
    b.ready("#secret-dialog").await;
    b.click("#secret-done").await;
    b.wait_gone("#secret-dialog").await;
    b.wait_gone("#token-revoked-advice").await;
    b.wait_text("#token-toggle", "Activate").await;
    b.click("#token-toggle").await;
    b.wait_text("#token-toggle", "Deactivate").await;
    assert_eq!(gw.token("leaked").await["status"], "active");
}

/// SPEC §7 "times show relative with the exact UTC time on hover": the list, the token page,
/// the IP table and the audit view show "3 days ago" / "in 27 days" / "just now", each a
/// `<time>` whose `datetime` is the API's value and whose title is the exact UTC time. "Now"
/// is the gateway's clock (pinned in the page, see [`pin_clock`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_times_are_relative_with_the_exact_time_on_hover() {
    let Some(b) = Browser::start("console_times_are_relative_with_the_exact_time_on_hover").await
    else {
        return;
    };
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
        .start()
        .await;
    let hour = Duration::from_secs(3600);
    let day = 24 * hour;
    let secret = create(&gw, "older", "Used three days ago", &["security-director"]).await;
    gw.clock.advance(2 * hour);
    get_from(&gw, "/sd/x", &secret, "192.0.2.7")
        .await
        .expect(200, None);
    gw.clock.advance(3 * day);
    let now = tokengate::clock::Clock::now(&gw.clock);
    // 5 h 35 min ahead reads "in 6 hours" (rounded to the nearest hour).
    let in_6h = now.plus(5 * hour + Duration::from_secs(35 * 60)).rfc3339();
    gw.create_token_with(json!({
        "name": "newer", "access": ["security-director"], "expires_at": in_6h,
    }))
    .await;
    let older = gw.token("older").await;
    let last_used = older["last_used_at"].as_str().unwrap().to_string();
    let lapses = older["inactive_at"].as_str().unwrap().to_string();

    sign_in(&b, &gw).await;
    let cell = "#token-rows tr[data-name='older'] td.last-used time";
    b.wait_text(cell, "3 days ago").await;
    let time_of = "const e = document.querySelector(arguments[0]); \
                   return e ? [e.tagName, e.textContent, e.getAttribute('datetime'), e.title] : null;";
    assert_eq!(
        b.js(time_of, json!([cell])).await,
        json!(["TIME", "3 days ago", last_used, exact(&last_used)])
    );
    // Used 3 days ago: it lapses 27 days from now (inactive_after is 30 days).
    let cell = "#token-rows tr[data-name='older'] td.lapses time";
    assert_eq!(
        b.js(time_of, json!([cell])).await,
        json!(["TIME", "in 27 days", lapses, exact(&lapses)])
    );
    assert_eq!(
        b.text("#token-rows tr[data-name='newer'] td.last-used")
            .await,
        "never"
    );

    // The token page: relative, and the exact time beside it; the IP table: relative.
    b.click("#token-rows tr[data-name='newer'] td.name a").await;
    b.ready("#token-body").await;
    b.wait_text("#token-facts", "Expires").await;
    let facts = b.text("#token-facts").await;
    assert!(
        facts.contains(&format!("in 6 hours{}", exact(&in_6h))),
        "{facts}"
    );
    assert!(
        facts.contains(&format!("just now{}", exact(&now.rfc3339()))),
        "{facts}"
    );
    b.click("#back-to-list").await;
    b.click("#token-rows tr[data-name='older'] td.name a").await;
    let ip = "#ip-rows tr[data-ip='192.0.2.7']";
    b.wait_text(&format!("{ip} td.when"), "3 days ago").await;
    assert_eq!(
        b.js(time_of, json!([format!("{ip} td.when time")])).await,
        json!(["TIME", "3 days ago", last_used, exact(&last_used)])
    );
    // Blocking: "since just now".
    b.fill("#block-input", "198.51.100.0/24\u{E007}").await;
    confirm(&b, "198.51.100.0/24").await;
    b.wait_text(
        "#ip-rows tr[data-ip='198.51.100.0/24'] td.blocked",
        "since just now",
    )
    .await;

    // The audit view: the block just now, the creation three days and two hours ago.
    b.click("#nav-audit").await;
    b.ready("#view-audit").await;
    b.wait_rows("#audit-rows", 3).await;
    let at = b
        .js(
            "return [...document.querySelectorAll('#audit-rows td.at time')]\
               .map(t => [t.textContent, t.getAttribute('datetime'), t.title])",
            json!([]),
        )
        .await;
    let created = older["created_at"].as_str().unwrap();
    assert_eq!(at[0][0], "just now", "{at}");
    assert_eq!(at[1][0], "just now", "{at}");
    assert_eq!(
        at[2],
        json!(["3 days ago", created, exact(created)]),
        "{at}"
    );
}

/// SPEC §7 "the list sorts by column and pages": a header is a button that sorts the rows
/// loaded (again: the other way), `aria-sort` names the order, the keyboard works; with a
/// page of 25, "Load more" continues the same filtered list, the new rows are sorted in, and
/// a change made on the second page keeps every loaded row in view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sorts_by_column_and_pages_with_filters() {
    let Some(b) = Browser::start("console_sorts_by_column_and_pages_with_filters").await else {
        return;
    };
    let (gw, _up) = gateway().await;
    // tok-01 .. tok-30, each used once, later names earlier (tok-30 used first, tok-01 last),
    // except tok-29 (never used) and tok-27, used most recently of all.
    let mut secrets = Vec::new();
    for i in 1..=30 {
        let (secret, _) = gw
            .create_token(&format!("tok-{i:02}"), &["security-director"])
            .await;
        secrets.push(secret);
    }
    for i in (1..=30).rev().filter(|i| *i != 29 && *i != 27) {
        gw.clock.advance(Duration::from_secs(60));
        gw.get("/sd/x", Some(&secrets[i - 1]))
            .await
            .expect(200, None);
    }
    gw.clock.advance(Duration::from_secs(60));
    gw.get("/sd/x", Some(&secrets[26])).await.expect(200, None);
    // Three inactive ones: tok-05 (first page) and tok-28, tok-30 (second page).
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["tok-05", "tok-28", "tok-30"]})),
    )
    .await
    .expect(200, None);
    let names = |r: std::ops::RangeInclusive<usize>| -> Vec<String> {
        r.map(|i| format!("tok-{i:02}")).collect()
    };

    sign_in(&b, &gw).await;
    b.choose("#page-size", "25").await;
    b.wait_rows("#token-rows", 25).await;
    assert_eq!(listed(&b).await, names(1..=25));
    b.ready("#load-more").await;
    assert_eq!(
        aria_sort(&b).await,
        json!({"name": "ascending", "description": null, "access": null,
               "status": null, "last_used": null, "lapses": null})
    );
    assert_eq!(
        b.js(
            "return document.getElementById('sort-note').hidden",
            json!([])
        )
        .await,
        json!(true)
    );

    // Last used, ascending: the oldest use first (tok-25 on this page); then descending.
    b.click("#token-table th[data-sort='last_used'] button")
        .await;
    let asc: Vec<String> = names(1..=25).into_iter().rev().collect();
    let asc: Vec<&str> = asc.iter().map(String::as_str).collect();
    wait_listed(&b, "oldest use first", &asc).await;
    let sorts = aria_sort(&b).await;
    assert_eq!(sorts["last_used"], "ascending", "{sorts}");
    assert_eq!(sorts["name"], Value::Null, "{sorts}");
    // The list is incomplete and not in the API's order: the page says so.
    b.wait_text("#sort-note", "load more").await;
    b.click("#token-table th[data-sort='last_used'] button")
        .await;
    let desc: Vec<&str> = asc.iter().rev().copied().collect();
    wait_listed(&b, "newest use first", &desc).await;
    assert_eq!(aria_sort(&b).await["last_used"], "descending");

    // Load more: the next page of the same list, sorted in (tok-27 was used last of all;
    // tok-29, never used, goes to the end).
    b.click("#load-more").await;
    let mut all: Vec<String> = vec!["tok-27".into()];
    all.extend(
        names(1..=30)
            .into_iter()
            .filter(|n| n != "tok-27" && n != "tok-29"),
    );
    all.push("tok-29".into());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_listed(&b, "all 30, newest use first", &all).await;
    b.wait_gone("#load-more").await;
    assert_eq!(
        b.js(
            "return document.getElementById('sort-note').hidden",
            json!([])
        )
        .await,
        json!(true),
        "everything is loaded: the order is complete"
    );

    // The keyboard: Status is a button; Enter sorts by it (active first).
    let id = b.ready("#token-table th[data-sort='status'] button").await;
    b.cmd(
        Method::POST,
        &format!("/element/{id}/value"),
        Some(json!({"text": "\u{E007}"})),
    )
    .await;
    b.wait(
        "sorted by status",
        "return document.querySelector(\"#token-table th[data-sort='status']\")\
           .getAttribute('aria-sort') === 'ascending'",
        json!([]),
    )
    .await;
    let rows = listed(&b).await;
    assert_eq!(&rows[27..], ["tok-05", "tok-28", "tok-30"], "{rows:?}");
    assert_eq!(&rows[..2], ["tok-01", "tok-02"], "{rows:?}");
    let focused = b
        .js(
            "return document.activeElement.getAttribute('data-sort')",
            json!([]),
        )
        .await;
    assert_eq!(focused, json!("status"), "the header keeps the focus");

    // A filter starts a new list; "Load more" continues that filter (27 active tokens).
    b.choose("#filter-status", "active").await;
    b.wait_rows("#token-rows", 25).await;
    b.click("#load-more").await;
    b.wait(
        "27 active tokens",
        "return document.querySelectorAll('#token-rows tr').length === 27 \
           && document.getElementById('load-more').hidden",
        json!([]),
    )
    .await;
    let rows = listed(&b).await;
    for n in ["tok-05", "tok-28", "tok-30"] {
        assert!(!rows.iter().any(|r| r == n), "{n} is inactive: {rows:?}");
    }
    // Deactivating a token of the second page reloads every row shown, not just page one.
    b.click("#token-rows tr[data-name='tok-29'] input[type=checkbox]")
        .await;
    b.click("#bulk-deactivate").await;
    confirm(&b, "tok-29").await;
    b.wait_text("#bulk-ok", "Deactivated 1 token").await;
    b.wait_rows("#token-rows", 26).await;
    assert_eq!(gw.token("tok-29").await["status"], "inactive");
    let rows = listed(&b).await;
    assert!(rows.iter().any(|r| r == "tok-26"), "{rows:?}");
    assert_eq!(aria_sort(&b).await["status"], "ascending");
}

/// SPEC §7 "deactivate and block ask for confirmation": from the list's selection, on the
/// token page, from the IP table's selection and for a typed IP or CIDR. Cancelling (the
/// button, or Escape) changes nothing; confirming changes it, as the admin API shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_confirms_deactivate_and_block() {
    let Some(b) = Browser::start("console_confirms_deactivate_and_block").await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
        .start()
        .await;
    let secret = create(&gw, "alpha", "First", &["security-director"]).await;
    create(&gw, "beta", "Second", &["security-director"]).await;
    get_from(&gw, "/sd/x", &secret, "192.0.2.1")
        .await
        .expect(200, None);
    let status = |name: &'static str| {
        let gw = &gw;
        async move { gw.token(name).await["status"].clone() }
    };
    let blocked = |ip: &'static str| {
        let gw = &gw;
        async move {
            gw.ips("alpha")
                .await
                .into_iter()
                .find(|r| r["ip"] == ip)
                .map(|r| r["blocked"].clone())
        }
    };

    sign_in(&b, &gw).await;
    // 1. Deactivate from the list's selection.
    b.click("#token-rows tr[data-name='beta'] input[type=checkbox]")
        .await;
    b.click("#bulk-deactivate").await;
    cancel(&b).await;
    assert_eq!(status("beta").await, "active");
    // Escape cancels too.
    b.click("#bulk-deactivate").await;
    let id = b.ready("#confirm-cancel").await;
    b.cmd(
        Method::POST,
        &format!("/element/{id}/value"),
        Some(json!({"text": "\u{E00C}"})),
    )
    .await;
    b.wait_gone("#confirm-dialog").await;
    assert_eq!(status("beta").await, "active");
    b.click("#bulk-deactivate").await;
    confirm(&b, "Deactivate beta").await;
    b.wait_text("#token-rows tr[data-name='beta'] td.status", "Inactive")
        .await;
    assert_eq!(status("beta").await, "inactive");

    // 2. Deactivate on the token page.
    b.click("#token-rows tr[data-name='alpha'] td.name a").await;
    b.ready("#token-body").await;
    b.wait_text("#token-toggle", "Deactivate").await;
    b.click("#token-toggle").await;
    cancel(&b).await;
    assert_eq!(status("alpha").await, "active");
    b.click("#token-toggle").await;
    confirm(&b, "Deactivate alpha").await;
    b.wait_text("#token-toggle", "Activate").await;
    assert_eq!(status("alpha").await, "inactive");

    // 3. Block from the IP table's selection.
    let row = "#ip-rows tr[data-ip='192.0.2.1']";
    b.click(&format!("{row} input[type=checkbox]")).await;
    b.click("#ips-block").await;
    cancel(&b).await;
    assert_eq!(blocked("192.0.2.1").await, Some(json!(false)));
    b.click("#ips-block").await;
    confirm(&b, "192.0.2.1").await;
    b.wait_text(&format!("{row} td.blocked"), "Blocked").await;
    assert_eq!(blocked("192.0.2.1").await, Some(json!(true)));

    // 4. Block a typed CIDR.
    b.fill("#block-input", "203.0.113.0/24\u{E007}").await;
    cancel(&b).await;
    assert_eq!(blocked("203.0.113.0/24").await, None);
    assert_eq!(b.value("#block-input").await, "203.0.113.0/24");
    b.click("#block-submit").await;
    confirm(&b, "203.0.113.0/24").await;
    b.wait_text(
        "#ip-rows tr[data-ip='203.0.113.0/24'] td.blocked",
        "Blocked",
    )
    .await;
    assert_eq!(blocked("203.0.113.0/24").await, Some(json!(true)));
}

/// SPEC §7 "an audit view lists /v1/audit" (§8): reachable from the navigation, newest
/// first, each entry with its time, actor, source IP, action, token and details (as text);
/// filtered by token name (any case) through the address, also from the token page's link;
/// and paged ("Show more" asks the API for a longer list: it has no cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_audit_view() {
    let Some(b) = Browser::start("console_audit_view").await else {
        return;
    };
    let (gw, _up) = gateway().await;
    let payload = "<img src=x onerror=\"window.pwned=1\"> nightly";
    create(&gw, "feed-a", payload, &["security-director"]).await;
    for i in 1..=25 {
        gw.create_token(&format!("filler-{i:02}"), &["security-director"])
            .await;
    }
    sign_in(&b, &gw).await;
    // Admin actions in the page: deactivate feed-a, block an address for it.
    b.click("#token-rows tr[data-name='feed-a'] td.name a")
        .await;
    b.ready("#token-body").await;
    b.click("#token-toggle").await;
    confirm(&b, "Deactivate feed-a").await;
    b.wait_text("#token-toggle", "Activate").await;
    b.fill("#block-input", "192.0.2.9\u{E007}").await;
    confirm(&b, "192.0.2.9").await;
    b.wait_text("#ip-rows tr[data-ip='192.0.2.9'] td.blocked", "Blocked")
        .await;

    // The navigation leads to every token's entries, newest first.
    b.click("#nav-audit").await;
    b.ready("#view-audit").await;
    assert_eq!(
        b.js(
            "return document.getElementById('nav-audit').getAttribute('aria-current')",
            json!([])
        )
        .await,
        json!("page")
    );
    b.wait_rows("#audit-rows", 28).await;
    let api = gw.admin(Method::GET, "/v1/audit", None).await.json();
    let rows = b
        .js(
            "return [...document.querySelectorAll('#audit-rows tr')].map(r => \
               [...r.querySelectorAll('td')].map(td => td.textContent))",
            json!([]),
        )
        .await;
    let entries = api["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 28, "{api}");
    for (row, e) in rows.as_array().unwrap().iter().zip(entries) {
        assert_eq!(row[1], e["actor"], "{row} {e}");
        assert_eq!(row[2], e["source_ip"], "{row} {e}");
        assert_eq!(row[3], e["action"], "{row} {e}");
        assert_eq!(row[4], e["token"], "{row} {e}");
    }
    assert_eq!(rows[0][3], "block", "{rows}");
    assert_eq!(rows[0][1], "admin-key", "{rows}");
    assert_eq!(rows[0][2], "127.0.0.1", "{rows}");
    assert_eq!(rows[0][5], "ips [\"192.0.2.9\"]", "{rows}");
    assert_eq!(
        rows[1][5], "previous_reason noneprevious_status active",
        "{rows}"
    );
    assert_eq!(rows[1][3], "deactivate", "{rows}");
    assert_eq!(rows[27][3], "create", "{rows}");
    assert_eq!(rows[27][4], "feed-a", "{rows}");
    // Details are text: the description's markup is shown, not run.
    let details = b.text("#audit-rows tr:last-child td.details").await;
    assert!(details.contains(payload), "{details}");
    let injected = b
        .js(
            "return [typeof window.pwned, document.querySelectorAll('#audit-rows img').length]",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!(["undefined", 0]));

    // Filter by token, any case: the address names it, so it can be linked and goes back.
    b.fill("#audit-token", "FEED-A\u{E007}").await;
    b.wait(
        "feed-a's three entries",
        "return [...document.querySelectorAll('#audit-rows tr')].map(r => r.dataset.action)\
           .join() === 'block,deactivate,create'",
        json!([]),
    )
    .await;
    let hash = b.js("return location.hash", json!([])).await;
    assert_eq!(hash, json!("#/audit?token=FEED-A"));
    b.click("#audit-all").await;
    b.wait_rows("#audit-rows", 28).await;
    b.fill("#audit-token", "nobody\u{E007}").await;
    b.wait_text("#audit-empty", "No audit entries for a token named nobody")
        .await;

    // Paging: 25 at a time; "Show more" brings the rest.
    b.click("#audit-all").await;
    b.choose("#audit-page-size", "25").await;
    b.wait_rows("#audit-rows", 25).await;
    b.click("#audit-more").await;
    b.wait_rows("#audit-rows", 28).await;
    b.wait_gone("#audit-more").await;

    // The token page links to its own entries.
    b.click("#audit-rows tr[data-token='feed-a'] td.token a")
        .await;
    b.ready("#token-body").await;
    b.click("#token-audit-link").await;
    b.ready("#view-audit").await;
    b.wait(
        "feed-a's entries",
        "const r = [...document.querySelectorAll('#audit-rows tr')]; \
         return r.length === 3 && r.every(t => t.dataset.token === 'feed-a');",
        json!([]),
    )
    .await;
    assert_eq!(b.value("#audit-token").await, "feed-a");
}

/// SPEC §7 "the layout holds at 400 px wide": at a 400 px viewport no view scrolls sideways
/// (the list, the token page, the audit log, the create and confirmation dialogs; tables
/// scroll inside their own frame). With `TOKENGATE_SCREENSHOTS=1` it also writes the narrow
/// pictures and the audit log's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_holds_at_400_px() {
    let Some(b) = Browser::start("console_holds_at_400_px").await else {
        return;
    };
    let (gw, _up, _secret) = demo_gateway().await;
    b.set_window(400, 900).await;
    let width = b.js("return window.innerWidth", json!([])).await;
    assert!(width.as_u64().is_some_and(|w| w <= 400), "{width}");
    sign_in(&b, &gw).await;
    b.wait_rows("#token-rows", 5).await;
    let shots = screenshots_wanted();
    let fit = |what: &'static str| {
        let b = &b;
        async move {
            let v = b.js(FITS, json!([])).await;
            let sizes = b
                .js(
                    "return [document.documentElement.scrollWidth, window.innerWidth]",
                    json!([]),
                )
                .await;
            assert_eq!(v, json!(true), "{what} scrolls sideways at 400 px: {sizes}");
        }
    };
    fit("the token list").await;
    // The table scrolls inside its frame, not the page.
    let inner = b
        .js(
            "const w = document.querySelector('#view-list .table-wrap'); \
             return [w.scrollWidth > w.clientWidth, getComputedStyle(w).overflowX]",
            json!([]),
        )
        .await;
    assert_eq!(inner, json!([true, "auto"]));
    if let Some(dir) = &shots {
        b.js("document.activeElement.blur()", json!([])).await;
        b.screenshot(&dir.join("console-list-narrow.png")).await;
    }

    b.click("#open-create").await;
    b.ready("#create-rate-requests").await;
    let dialog_fits = "const d = document.querySelector('dialog[open]'); \
         return d.scrollWidth <= d.clientWidth && d.getBoundingClientRect().right <= window.innerWidth";
    assert_eq!(b.js(dialog_fits, json!([])).await, json!(true));
    fit("the create dialog").await;
    b.click("#create-cancel").await;
    b.wait_gone("#create-dialog").await;

    b.click("#token-rows tr[data-name='siem-export'] td.name a")
        .await;
    b.wait_rows("#ip-rows", 4).await;
    fit("the token page").await;
    if let Some(dir) = &shots {
        b.js(
            "window.scrollTo(0, 0); document.activeElement.blur()",
            json!([]),
        )
        .await;
        b.screenshot(&dir.join("console-token-narrow.png")).await;
    }
    b.click("#ip-rows tr[data-ip='192.0.2.44'] input[type=checkbox]")
        .await;
    b.click("#ips-block").await;
    b.ready("#confirm-ok").await;
    assert_eq!(b.js(dialog_fits, json!([])).await, json!(true));
    fit("the confirmation").await;
    b.click("#confirm-ok").await;
    b.wait_text("#ip-rows tr[data-ip='192.0.2.44'] td.blocked", "Blocked")
        .await;

    b.click("#nav-audit").await;
    b.ready("#view-audit").await;
    b.wait_rows("#audit-rows", 7).await;
    fit("the audit log").await;
    if let Some(dir) = &shots {
        b.js("document.activeElement.blur()", json!([])).await;
        b.screenshot(&dir.join("console-audit-narrow.png")).await;
        b.set_window(1280, 900).await;
        b.js("document.activeElement.blur()", json!([])).await;
        b.screenshot(&dir.join("console-audit.png")).await;
    }
}

/// Issue 24: the token page charts its usage (SPEC §12): one bar group per bucket of the
/// API's answer with its values, stacked admitted and refused by reason, a table with the
/// same numbers, 24 h / 7 d / 30 d, each IP row's 7-day sparkline from `requests_7d`, and a
/// page that holds at 400 px. With `TOKENGATE_SCREENSHOTS=1` it writes
/// `docs/console-usage.png` and `docs/console-usage-narrow.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_usage_chart() {
    let Some(b) = Browser::start("console_usage_chart").await else {
        return;
    };
    let up = Upstream::start().await;
    // Eight days ago, on the hour: a week of daily use, then the last 24 hours by the hour.
    let now = tokengate::clock::Clock::now(&tokengate::clock::SystemClock).millis();
    let hour_ms = 3_600_000;
    let start = now - now % hour_ms - 8 * 24 * hour_ms;
    let gw = TestGateway::builder()
        .clock(&tokengate::clock::ManualClock::new(
            tokengate::clock::Timestamp(start),
        ))
        .route("/sd/", "security-director", up.addr)
        .route("/feeds/", "third-party-feeds", up.addr)
        .configure(|c| c.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
        .start()
        .await;
    let secret = create(
        &gw,
        "siem-export",
        "Nightly SIEM export of alarms and audit events",
        &["security-director"],
    )
    .await;
    gw.admin(
        Method::POST,
        "/v1/tokens/siem-export/ips/block",
        Some(json!({"ips": ["203.0.113.9"]})),
    )
    .await
    .expect(200, None);
    let set = |ms: i64| gw.clock.set(tokengate::clock::Timestamp(ms));
    for day in 0..7 {
        set(start + day * 24 * hour_ms + 12 * hour_ms);
        for _ in 0..(2 + day % 3) {
            get_from(&gw, "/sd/events", &secret, "198.51.100.23")
                .await
                .expect(200, None);
        }
    }
    let last = now - now % hour_ms;
    for h in 0..24 {
        set(last - (23 - h) * hour_ms + 60_000);
        let n = [3, 5, 2, 6, 9, 4][h as usize % 6];
        for i in 0..n {
            let ip = if i % 3 == 0 {
                "2001:db8::7"
            } else {
                "192.0.2.44"
            };
            get_from(&gw, "/sd/events", &secret, ip)
                .await
                .expect(200, None);
        }
        if h % 4 == 1 {
            get_from(&gw, "/feeds/daily", &secret, "192.0.2.44")
                .await
                .expect(403, Some("access_denied"));
        }
        if h % 6 == 3 {
            get_from(&gw, "/sd/events", &secret, "203.0.113.9")
                .await
                .expect(403, Some("ip_blocked"));
            get_from(&gw, "/archive/x", &secret, "192.0.2.44")
                .await
                .expect(404, Some("no_route"));
        }
    }
    set(last + 30 * 60_000);

    sign_in(&b, &gw).await;
    b.wait_rows("#token-rows", 1).await;
    b.click("#token-rows tr[data-name='siem-export'] td.name a")
        .await;
    b.wait_rows("#ip-rows", 4).await;

    // The page's bars as (start, requests, refused, {reason: n}) against the API's buckets.
    let drawn = || {
        let b = &b;
        async move {
            b.js(
                "return [...document.querySelectorAll('#usage-chart svg g.bar')].map(g => [\
                   g.dataset.start, Number(g.dataset.requests), Number(g.dataset.refused),\
                   Object.fromEntries([...g.querySelectorAll('rect[data-reason]')]\
                     .map(r => [r.dataset.reason, Number(r.dataset.n)]))])",
                json!([]),
            )
            .await
        }
    };
    let expected = |answer: &Value| -> Value {
        answer["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|bk| {
                let mut segs = serde_json::Map::new();
                let mut refused = 0;
                if bk["requests"].as_u64().unwrap() > 0 {
                    segs.insert("requests".into(), bk["requests"].clone());
                }
                for (k, n) in bk["refused"].as_object().unwrap() {
                    let n = n.as_u64().unwrap();
                    refused += n;
                    if n > 0 {
                        segs.insert(k.clone(), json!(n));
                    }
                }
                json!([bk["start"], bk["requests"], refused, segs])
            })
            .collect()
    };
    let api = |query: &str| {
        let (gw, query) = (&gw, query.to_string());
        async move {
            let r = gw
                .admin(
                    Method::GET,
                    &format!("/v1/tokens/siem-export/usage?{query}"),
                    None,
                )
                .await;
            r.expect(200, None);
            r.json()
        }
    };
    b.wait(
        "24 bars",
        "return document.querySelectorAll('#usage-chart svg g.bar').length === 24",
        json!([]),
    )
    .await;
    let hourly = api("step=1h").await;
    assert_eq!(drawn().await, expected(&hourly));
    let total: u64 = hourly["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bk| bk["requests"].as_u64().unwrap())
        .sum();
    assert!(total > 100, "{hourly}");
    let summary = b.text("#usage-summary").await;
    assert!(
        summary.starts_with(&format!("{total} requests and ")),
        "{summary}"
    );
    // The table holds the same numbers, one row per bucket.
    b.wait_rows("#usage-rows", 24).await;
    let cells = b
        .js(
            "return [...document.querySelectorAll('#usage-rows tr')].map(r => \
               [r.dataset.start, Number(r.cells[1].textContent), Number(r.cells[2].textContent)])",
            json!([]),
        )
        .await;
    let want: Vec<Value> = expected(&hourly)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!([e[0], e[1], e[2]]))
        .collect();
    assert_eq!(cells, json!(want));

    // Each IP row's sparkline: seven days from requests_7d.
    let ips = gw.ips("siem-export").await;
    for row in &ips {
        let ip = row["ip"].as_str().unwrap();
        let bars = b
            .js(
                "return [...document.querySelectorAll(`#ip-rows tr[data-ip='${arguments[0]}'] td.week rect`)]\
                   .map(r => Number(r.dataset.n))",
                json!([ip]),
            )
            .await;
        assert_eq!(bars, row["requests_7d"], "{ip}");
    }

    if let Some(dir) = screenshots_wanted() {
        b.set_window(1280, 1100).await;
        b.js(
            "document.getElementById('usage-card').scrollIntoView(); document.activeElement.blur()",
            json!([]),
        )
        .await;
        b.screenshot(&dir.join("console-usage.png")).await;
    }

    // 7 days and 30 days: daily bars ending today.
    for (button, n) in [("7d", 7), ("30d", 30)] {
        b.click(&format!("#usage-card button[data-period='{button}']"))
            .await;
        b.wait(
            "daily bars",
            "const s = document.querySelector('#usage-chart svg'); \
             return s && s.dataset.step === '1d' && s.querySelectorAll('g.bar').length === arguments[0]",
            json!([n]),
        )
        .await;
        let today = last - last % (24 * hour_ms);
        let from = tokengate::clock::Timestamp(today - (n - 1) * 24 * hour_ms).rfc3339();
        let daily = api(&format!("step=1d&from={from}")).await;
        assert_eq!(drawn().await, expected(&daily), "{button}");
        assert_eq!(
            b.text("#usage-card button[aria-pressed='true']").await,
            button.replace('d', " d")
        );
    }

    // 400 px: the chart fits and nothing scrolls sideways.
    b.click("#usage-card button[data-period='24h']").await;
    b.wait(
        "24 bars again",
        "return document.querySelectorAll('#usage-chart svg g.bar').length === 24",
        json!([]),
    )
    .await;
    b.set_window(400, 900).await;
    assert_eq!(b.js(FITS, json!([])).await, json!(true));
    let width = b
        .js(
            "return document.querySelector('#usage-chart svg').getBoundingClientRect().width",
            json!([]),
        )
        .await;
    assert!(
        width.as_f64().is_some_and(|w| w > 250.0 && w <= 400.0),
        "{width}"
    );
    if let Some(dir) = screenshots_wanted() {
        b.js(
            "document.getElementById('usage-card').scrollIntoView(); document.activeElement.blur()",
            json!([]),
        )
        .await;
        b.screenshot(&dir.join("console-usage-narrow.png")).await;
    }
}
