//! Shared test support: the real gateway in-process on ephemeral loopback ports with a
//! temporary SQLite store and a manual clock, a scriptable upstream that records what it
//! receives, and small HTTP helpers whose failures print the request and the response.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokengate::app::{Gateway, StartOptions};
use tokengate::clock::ManualClock;
use tokengate::config::{Config, RouteConfig, StoreUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod certs;
pub mod redis;
pub mod webhooks;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijklmnop";

// === the gateway ===

pub struct Builder {
    config: Config,
    clock: ManualClock,
    dir: tempfile::TempDir,
    pg: Option<Arc<PgSchema>>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Builder {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::defaults();
        config.proxy.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.store.url = StoreUrl::Sqlite(dir.path().join("tokengate.db"));
        config.admin.key_file = dir.path().join("admin.key");
        config.proxy.shutdown_grace = Duration::from_secs(5);
        config.routes.clear();
        Builder {
            config,
            clock: ManualClock::starting_now(),
            dir,
            pg: None,
        }
    }

    /// Uses a PostgreSQL schema (see [`PgSchema`]) instead of the temporary SQLite file; the
    /// schema lives as long as the gateway and its other instances.
    pub fn postgres(mut self, schema: &Arc<PgSchema>) -> Builder {
        self.config.store.url = StoreUrl::Postgres(schema.url.clone());
        self.pg = Some(schema.clone());
        self
    }

    /// The clock of another gateway (instances sharing a store share the time too).
    pub fn clock(mut self, clock: &ManualClock) -> Builder {
        self.clock = clock.clone();
        self
    }

    /// A route `prefix` → `upstream` with `strip_prefix = true`.
    /// `access` names a configured access type (configure custom ones first).
    pub fn route(self, prefix: &str, access: &str, upstream: SocketAddr) -> Builder {
        self.route_with(prefix, access, upstream, |_| {})
    }

    pub fn route_with(
        mut self,
        prefix: &str,
        access: &str,
        upstream: SocketAddr,
        f: impl FnOnce(&mut RouteConfig),
    ) -> Builder {
        let access = self
            .config
            .access_types
            .bit(access)
            .unwrap_or_else(|| panic!("{access:?} is not a configured access type"));
        let mut r = RouteConfig {
            path_prefix: prefix.into(),
            host: None,
            access,
            upstream: Some(format!("http://{upstream}").parse().unwrap()),
            strip_prefix: true,
            preserve_host: false,
            forward_authorization: self.config.proxy.forward_authorization,
            tls: Default::default(),
        };
        f(&mut r);
        self.config.routes.push(r);
        self
    }

    /// Turns the forward-auth listener on (an ephemeral loopback port).
    pub fn forward_auth(mut self) -> Builder {
        self.config.forward_auth.listen = Some("127.0.0.1:0".parse().unwrap());
        self
    }

    /// A route without `upstream`: served only by the forward-auth listener.
    pub fn check_route(self, prefix: &str, access: &str) -> Builder {
        self.route_with(prefix, access, "127.0.0.1:9".parse().unwrap(), |r| {
            r.upstream = None
        })
    }

    /// The configuration the gateway will start with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Builder {
        f(&mut self.config);
        self
    }

    pub async fn start(self) -> TestGateway {
        let gw = start_gateway(&self.config, &self.clock).await;
        TestGateway {
            proxy: gw.proxy_addr,
            admin: gw.admin_addr,
            forward_auth: gw.forward_auth_addr,
            gw: Some(gw),
            clock: self.clock,
            config: self.config,
            dir: self.dir,
            http: client(),
            pg: self.pg,
        }
    }
}

async fn start_gateway(config: &Config, clock: &ManualClock) -> Gateway {
    Gateway::start(
        config.clone(),
        StartOptions {
            clock: Arc::new(clock.clone()),
            admin_key: Some(ADMIN_KEY.to_string()),
        },
    )
    .await
    .expect("gateway starts")
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct TestGateway {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The forward-auth listener, when the builder turned it on.
    pub forward_auth: Option<SocketAddr>,
    pub gw: Option<Gateway>,
    pub clock: ManualClock,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub http: Client<HttpConnector, Full<Bytes>>,
    /// The PostgreSQL schema, when the gateway uses one (dropped after the last instance).
    pub pg: Option<Arc<PgSchema>>,
}

/// A response with its body read, and the request line that produced it (for messages).
#[derive(Debug, Clone)]
pub struct Resp {
    pub request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{self}: body is not JSON: {e}"))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts the status and, for JSON refusals, the `error` code.
    #[track_caller]
    pub fn expect(&self, status: u16, error: Option<&str>) -> &Resp {
        assert_eq!(self.status.as_u16(), status, "{self}");
        if let Some(code) = error {
            assert_eq!(self.json()["error"], code, "{self}");
            assert_eq!(
                self.headers.get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/json"[..]),
                "{self}"
            );
        }
        self
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request `{}` got {} {:?} body {}",
            self.request,
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

pub async fn send(http: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Resp {
    let request = format!("{} {}", req.method(), req.uri());
    let resp = tokio::time::timeout(Duration::from_secs(30), http.request(req))
        .await
        .unwrap_or_else(|_| panic!("{request}: no answer in 30 s"))
        .unwrap_or_else(|e| panic!("{request}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Resp {
        request,
        status,
        headers,
        body,
    }
}

impl TestGateway {
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub fn gateway(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway running")
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// A proxied GET with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let mut b = Request::get(self.proxy_url(path));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        send(&self.http, b.body(Full::default()).unwrap()).await
    }

    /// A proxied request built by the caller (URI is made absolute here).
    pub async fn proxy_req(&self, mut req: Request<Full<Bytes>>) -> Resp {
        *req.uri_mut() = self.proxy_url(&req.uri().to_string()).parse().unwrap();
        send(&self.http, req).await
    }

    /// A forward-auth check: `path` on the forward-auth listener with `headers` (name, value).
    pub async fn check(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
        let addr = self.forward_auth.expect("the forward-auth listener is on");
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        send(&self.http, b.body(Full::default()).unwrap()).await
    }

    /// An admin API call with the admin key.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.admin_as(method, path, body, Some(ADMIN_KEY)).await
    }

    pub async fn admin_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.admin, path));
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let bytes = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        send(&self.http, b.body(Full::new(bytes)).unwrap()).await
    }

    /// `GET /v1/tokens/{name}` (200 expected): the token object.
    pub async fn token(&self, name: &str) -> Value {
        let r = self
            .admin(Method::GET, &format!("/v1/tokens/{name}"), None)
            .await;
        r.expect(200, None);
        r.json()
    }

    /// `GET /v1/tokens/{name}/ips` (200 expected; flushes pending usage first): the rows.
    pub async fn ips(&self, name: &str) -> Vec<Value> {
        let r = self
            .admin(Method::GET, &format!("/v1/tokens/{name}/ips"), None)
            .await;
        r.expect(200, None);
        r.json()["ips"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no ips list: {r}"))
    }

    /// Creates a token through the admin API; returns (secret, token JSON).
    pub async fn create_token(&self, name: &str, access: &[&str]) -> (String, Value) {
        self.create_token_with(json!({"name": name, "access": access}))
            .await
    }

    /// `PATCH /v1/tokens/{name}` with `body`.
    pub async fn patch_token(&self, name: &str, body: Value) -> Resp {
        self.admin(Method::PATCH, &format!("/v1/tokens/{name}"), Some(body))
            .await
    }

    /// Creates a token from a whole `POST /v1/tokens` body; returns (secret, token JSON).
    pub async fn create_token_with(&self, body: Value) -> (String, Value) {
        let r = self.admin(Method::POST, "/v1/tokens", Some(body)).await;
        r.expect(201, None);
        let v = r.json();
        (v["token"].as_str().unwrap().to_string(), v)
    }

    /// Stops the gateway gracefully (drain, final usage flush).
    pub async fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await.expect("clean shutdown");
        }
    }

    /// Stops and starts again on the same store, config and clock (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        let gw = start_gateway(&self.config, &self.clock).await;
        self.proxy = gw.proxy_addr;
        self.admin = gw.admin_addr;
        self.forward_auth = gw.forward_auth_addr;
        self.gw = Some(gw);
        self.http = client();
    }
}

// === the upstream ===

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The gateway's end of the upstream connection the request arrived on.
    pub peer: SocketAddr,
}

/// A scriptable upstream on an ephemeral port. Paths (after any prefix strip):
/// `/hang` never answers; `/delay/<ms>` answers after a delay; `/status/<code>` answers that
/// status; `/ws` accepts a WebSocket-style upgrade and echoes bytes; `/close` answers 200 and
/// closes the connection; anything else answers 200 with JSON describing the request. Every
/// request is recorded, and so is every connection accepted.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        upstream_handle(s.clone(), peer, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
        }
    }

    /// Connections the upstream accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn upstream_handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let path = req.uri().path().to_string();
    if path == "/ws" {
        seen.lock().unwrap().push(Seen {
            method,
            target,
            headers,
            body_len: 0,
            peer,
        });
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        resp.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        return Ok(resp);
    }
    let body = req.into_body().collect().await?.to_bytes();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        headers: headers.clone(),
        body_len: body.len(),
        peer,
    });
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let hdrs: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let out = json!({"method": method.as_str(), "target": target, "headers": hdrs, "body_len": body.len()});
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if path == "/close" {
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// An address where nothing listens (bound, then released).
/// Runs `cmd` (blocking: call it from `spawn_blocking` in an async test) in a process group of
/// its own for at most `limit`. When it ends, the group gets SIGTERM, so that what it started
/// in the background ends too; when the time runs out, SIGKILL. Returns its output (empty for
/// stdio that is not piped) and whether it ended by itself.
pub fn run_grouped(
    mut cmd: std::process::Command,
    limit: Duration,
) -> (std::process::Output, bool) {
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot start: {e}"));
    let group = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let ended = rx.recv_timeout(limit);
    let signal = if ended.is_ok() { "-TERM" } else { "-KILL" };
    // The `--` matters: procps's kill reads a bare `-12345` as an option, and then signals
    // every process it may.
    let _ = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{group}")])
        .stderr(std::process::Stdio::null())
        .status();
    let finished = ended.is_ok();
    let out = ended
        .or_else(|_| rx.recv())
        .expect("the waiting thread answers");
    (out.expect("waiting for the child"), finished)
}

/// A loopback port nothing listens on right now (bound, read, released), for a process that
/// binds it itself (the caller copes with losing a race for it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Sends raw bytes and reads the answer until the server closes or 10 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the peer closes `s` (EOF or reset), whatever it sends before, up to `limit`;
/// returns how long it took.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| start.elapsed())
}

/// The status code of the first response in a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

impl TestGateway {
    /// A second gateway instance sharing this one's store, config and clock (its own ports and
    /// memory), as when several instances share a store. It must be dropped before `self`.
    pub async fn another_instance(&self) -> TestGateway {
        let gw = start_gateway(&self.config, &self.clock).await;
        TestGateway {
            proxy: gw.proxy_addr,
            admin: gw.admin_addr,
            forward_auth: gw.forward_auth_addr,
            gw: Some(gw),
            clock: self.clock.clone(),
            config: self.config.clone(),
            dir: tempfile::tempdir().expect("temp dir"),
            http: client(),
            pg: self.pg.clone(),
        }
    }
}

// === skipped tests ===

/// Names the requirements (`postgres`, `chromium`, ...) whose tests must run: with one named
/// here, a test that would skip for want of it fails instead (`.ci/run` sets
/// `postgres,chromium`).
pub const REQUIRE_ENV: &str = "TOKENGATE_TEST_REQUIRE";
/// A file each skip appends a line to: requirement, suite, test and reason, tab-separated.
pub const SKIP_LOG_ENV: &str = "TOKENGATE_TEST_SKIP_LOG";

/// Prints past the test harness's output capture (`eprintln!` is captured; a direct write to
/// the stderr handle is not), so a line is visible in a plain `cargo test`.
pub fn note(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Whether `requirement` is named in [`REQUIRE_ENV`] (a comma-separated list).
pub fn required(requirement: &str) -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| {
        v.split(',')
            .any(|r| r.trim().eq_ignore_ascii_case(requirement))
    })
}

/// The one way a test skips because something outside Rust (`requirement`: `postgres`,
/// `chromium`, ...) is missing; the caller returns right after. When [`REQUIRE_ENV`] names
/// the requirement this panics instead, failing the test. Otherwise it prints the reason past
/// the output capture and appends `requirement<TAB>suite<TAB>test<TAB>reason` to the file
/// [`SKIP_LOG_ENV`] names, if any.
#[track_caller]
pub fn skip(requirement: &str, test: &str, reason: &str) {
    // Each test binary compiles this module itself: this is its crate, e.g. `store_suite`.
    let suite = env!("CARGO_CRATE_NAME");
    if required(requirement) {
        panic!(
            "{REQUIRE_ENV} names {requirement} but {suite}::{test} cannot run: {reason} \
             (unset {REQUIRE_ENV} or leave {requirement} out of it to skip instead)"
        );
    }
    note(&format!(
        "SKIPPED {suite}::{test} (needs {requirement}): {reason}"
    ));
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV).filter(|p| !p.is_empty()) {
        let field = |s: &str| s.replace(['\t', '\n', '\r'], " ");
        let line = format!(
            "{}\t{}\t{}\t{}\n",
            field(requirement),
            field(suite),
            field(test),
            field(reason)
        );
        // One append of one short line: lines of tests running at once do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "cannot append to {SKIP_LOG_ENV} {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

// === PostgreSQL ===

/// The variable naming the PostgreSQL server of the tests (`.ci/run` sets it).
pub const POSTGRES_ENV: &str = "TOKENGATE_TEST_POSTGRES_URL";

/// The test server's URL, or `None` after [`skip`]ping `test` (which fails instead when
/// `TOKENGATE_TEST_REQUIRE` names `postgres`). A set but unreachable server is not a skip:
/// creating the schema then fails the test.
#[track_caller]
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            skip(
                "postgres",
                test,
                &format!(
                    "{POSTGRES_ENV} is not set (e.g. postgres://postgres@127.0.0.1:5432/test)"
                ),
            );
            None
        }
    }
}

/// `url` with its `search_path` set to `schema` (through the libpq `options` parameter).
pub fn url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// A client on `url` (its connection driven by a task of the current runtime).
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL ({POSTGRES_ENV}): {e}"));
    tokio::spawn(conn);
    client
}

/// A fresh schema on a PostgreSQL server, for one test: created empty, dropped with all it
/// holds when the last handle goes (also when the test fails).
pub struct PgSchema {
    /// The server's URL without the schema.
    pub base: String,
    pub name: String,
    /// `base` with `search_path` = `name`: the gateway's `store.url`.
    pub url: String,
}

impl PgSchema {
    pub async fn create(base: &str) -> Arc<PgSchema> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).expect("random");
        let name = format!(
            "tg_test_{}",
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let client = pg_connect(base).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create schema {name}: {e}"));
        Arc::new(PgSchema {
            base: base.to_string(),
            url: url_with_schema(base, &name),
            name,
        })
    }

    /// A client whose `search_path` is this schema.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }

    /// How many change-follower connections use this schema.
    pub async fn listeners(&self) -> i64 {
        let client = pg_connect(&self.base).await;
        let app = format!("tokengate listener {}", self.name);
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .expect("pg_stat_activity")
            .get(0)
    }

    /// Terminates the change-follower connections of the gateways using this schema; returns
    /// how many there were.
    pub async fn kill_listeners(&self) -> i64 {
        let client = pg_connect(&self.base).await;
        let app = format!("tokengate listener {}", self.name);
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .expect("pg_terminate_backend");
        row.get(0)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop runs outside any async context we can block on: use a thread of our own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                    ))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(done, Ok(Some(()))) {
            eprintln!("could not drop test schema {}", self.name);
        }
    }
}

/// A private PostgreSQL cluster (initdb + pg_ctl in a temporary directory, on an ephemeral
/// port), for tests that stop and start the server. Never the machine's shared one.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    /// Run the server binaries as `postgres` (they refuse to run as root).
    as_user: Option<String>,
}

impl PgCluster {
    /// Initialises and starts a cluster with trust authentication. Panics with the reason if
    /// that is impossible (the caller has already decided PostgreSQL tests run).
    pub async fn start() -> PgCluster {
        let c = PgCluster::init().await;
        c.start_server();
        c
    }

    /// Initialises a cluster (trust authentication) without starting it, so a test can change
    /// its configuration first ([`PgCluster::write_data_file`]) and then `start_server`.
    pub async fn init() -> PgCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                let mut v: Vec<_> = d
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|p| p.join("initdb").exists())
                    .collect();
                v.sort();
                v.pop()
            })
            .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let as_user = root.then(|| "postgres".to_string());
        if let Some(user) = &as_user {
            let out = std::process::Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let port = refused_addr().await.port();
        let c = PgCluster {
            dir,
            bin,
            port,
            as_user,
        };
        let data = c.dir.path().join("data");
        c.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        c
    }

    /// Writes `name` into the data directory (`postgresql.conf`, `pg_hba.conf`, a certificate
    /// or key), owned by the server's user, mode 0600; returns its path.
    pub fn write_data_file(&self, name: &str, content: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("data").join(name);
        std::fs::write(&path, content).expect("write into the data directory");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if let Some(user) = &self.as_user {
            let out = std::process::Command::new("chown")
                .arg(user)
                .arg(&path)
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        path
    }

    /// Appends `lines` to `postgresql.conf`.
    pub fn configure(&self, lines: &str) {
        let conf = self.dir.path().join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push('\n');
        text.push_str(lines);
        self.write_data_file("postgresql.conf", &text);
    }

    /// The cluster's directory (its Unix socket lives here).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.as_user {
            Some(u) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => std::process::Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn start_server(&self) {
        let d = self.dir.path();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            d.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &d.join("data").to_string_lossy(),
                "-l",
                &d.join("log").to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server (fast: clients are disconnected at once) and waits until it is down.
    pub fn stop_server(&self) {
        let d = self.dir.path();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &d.join("data").to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let d = self.dir.path();
        let data = d.join("data");
        if data.join("postmaster.pid").exists() {
            let exe = self.bin.join("pg_ctl");
            let mut cmd = match &self.as_user {
                Some(u) => {
                    let mut c = std::process::Command::new("runuser");
                    c.args(["-u", u, "--"]).arg(&exe);
                    c
                }
                None => std::process::Command::new(&exe),
            };
            let _ = cmd
                .args([
                    "-D",
                    &data.to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
        }
    }
}

/// Polls `f` until it returns `Some` or `deadline` passes (then panics naming `what`).
/// Returns the value and how long it took.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, start.elapsed());
        }
        if start.elapsed() > deadline {
            panic!("{what}: not within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads from `s` until the end of a response head; returns the head.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(s, &mut byte),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete head in 10 s: {:?}",
                String::from_utf8_lossy(&buf)
            )
        })
        .unwrap();
        assert!(
            n > 0,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

// === shared fixtures ===

/// A gateway with one route `/sd/` (security-director) to a fresh [`Upstream`], configured by
/// `f`, and the secret of a token `t` that may use it.
pub async fn gateway_with_token(
    f: impl FnOnce(&mut tokengate::config::Config),
) -> (Upstream, TestGateway, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(f)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &["security-director"]).await;
    (up, gw, secret)
}

/// Log output captured in memory: give a clone to `tracing_subscriber::fmt().with_writer`.
#[derive(Clone, Default)]
pub struct LogCapture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Everything captured so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// === both stores ===

/// A gateway with one route `/sd/` to a fresh [`Upstream`], configured by `f`, on SQLite or
/// (with `postgres`) on a fresh PostgreSQL schema; `None` after [`skip`]ping `test` when no
/// PostgreSQL server is configured. The schema lives as long as the returned handle.
pub async fn gateway_on(
    postgres: bool,
    test: &str,
    f: impl FnOnce(&mut Config),
) -> Option<(Upstream, TestGateway, Option<Arc<PgSchema>>)> {
    let up = Upstream::start().await;
    let b = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(f);
    let (gw, schema) = start_on(postgres, test, b).await?;
    Some((up, gw, schema))
}

/// Starts `b` on its SQLite file, or (`postgres`) on a fresh PostgreSQL schema: `None` when
/// the test skips for want of a server.
pub async fn start_on(
    postgres: bool,
    test: &str,
    mut b: Builder,
) -> Option<(TestGateway, Option<Arc<PgSchema>>)> {
    let mut schema = None;
    if postgres {
        let url = postgres_url(test)?;
        let s = PgSchema::create(&url).await;
        b = b.postgres(&s);
        schema = Some(s);
    }
    Some((b.start().await, schema))
}

/// Configured access types (`Config::access_types`) from `(name, label)` pairs.
pub fn access_types(types: &[(&str, &str)]) -> Arc<tokengate::access::AccessTypes> {
    let types = types
        .iter()
        .map(|(name, label)| tokengate::access::AccessType {
            name: name.to_string(),
            label: label.to_string(),
        })
        .collect();
    Arc::new(tokengate::access::AccessTypes::new(types).expect("valid access types"))
}

/// Runs each `async fn NAME(postgres: bool, test: &str)` as two tests, `sqlite::NAME` and
/// `postgres::NAME` (which skips without a server: see [`gateway_on`]). Use with
/// `#[macro_use] mod support;`.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($suite:literal: $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(false, concat!($suite, "::sqlite::", stringify!($name))).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(true, concat!($suite, "::postgres::", stringify!($name))).await;
                }
            )*
        }
    };
}
