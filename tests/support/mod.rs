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
use tokengate::token::Access;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijklmnop";

// === the gateway ===

pub struct Builder {
    config: Config,
    clock: ManualClock,
    dir: tempfile::TempDir,
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
        }
    }

    /// A route `prefix` → `upstream` with `strip_prefix = true`.
    pub fn route(self, prefix: &str, access: Access, upstream: SocketAddr) -> Builder {
        self.route_with(prefix, access, upstream, |_| {})
    }

    pub fn route_with(
        mut self,
        prefix: &str,
        access: Access,
        upstream: SocketAddr,
        f: impl FnOnce(&mut RouteConfig),
    ) -> Builder {
        let mut r = RouteConfig {
            path_prefix: prefix.into(),
            host: None,
            access,
            upstream: format!("http://{upstream}").parse().unwrap(),
            strip_prefix: true,
            preserve_host: false,
            forward_authorization: self.config.proxy.forward_authorization,
        };
        f(&mut r);
        self.config.routes.push(r);
        self
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
            gw: Some(gw),
            clock: self.clock,
            config: self.config,
            dir: self.dir,
            http: client(),
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
    pub gw: Option<Gateway>,
    pub clock: ManualClock,
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub http: Client<HttpConnector, Full<Bytes>>,
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

    /// Creates a token through the admin API; returns (secret, token JSON).
    pub async fn create_token(&self, name: &str, access: &[&str]) -> (String, Value) {
        let r = self
            .admin(
                Method::POST,
                "/v1/tokens",
                Some(json!({"name": name, "access": access})),
            )
            .await;
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
}

/// A scriptable upstream on an ephemeral port. Paths (after any prefix strip):
/// `/hang` never answers; `/delay/<ms>` answers after a delay; `/status/<code>` answers that
/// status; `/ws` accepts a WebSocket-style upgrade and echoes bytes; anything else answers
/// 200 with JSON describing the request. Every request is recorded.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| upstream_handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr, seen }
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
    Ok(resp)
}

/// An address where nothing listens (bound, then released).
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
            gw: Some(gw),
            clock: self.clock.clone(),
            config: self.config.clone(),
            dir: tempfile::tempdir().expect("temp dir"),
            http: client(),
        }
    }
}
