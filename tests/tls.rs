//! TLS everywhere (issue 6): HTTPS on the proxy listener (HTTP/1.1 and h2 by ALPN), https
//! upstreams (private CA, server-name override, wrong certificate → 502, mutual TLS), the
//! admin listener with client certificates (and the CLI reaching it), certificate reload
//! under a live keep-alive connection (file change, explicit reload, SIGHUP), and start-up
//! errors that name the key. Certificates are generated here with rcgen; loopback only.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::{json, Value};
use support::certs::{Ca, Leaf};
use support::*;
use tokengate::app::{Gateway, StartOptions};
use tokengate::config::{Config, ServerTlsConfig, StoreUrl};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
const SD: &str = "security-director";

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    // Write then rename, as certificate tools do, so a reader never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// `proxy.tls` / `admin.tls` files for `leaf`, written into `dir` as `<prefix>.pem/.key`.
fn listener_files(dir: &Path, prefix: &str, leaf: &Leaf) -> ServerTlsConfig {
    ServerTlsConfig {
        cert: write(dir, &format!("{prefix}.pem"), &leaf.cert_pem),
        key: write(dir, &format!("{prefix}.key"), &leaf.key_pem),
        client_ca: None,
    }
}

// === a TLS client ===

fn client_config(roots: RootCertStore, alpn: &[&str], cert: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(tokengate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(l) => builder
            .with_client_auth_cert(vec![l.cert_der.clone()], l.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection (HTTP/1.1 keep-alive, or HTTP/2 when ALPN chose h2).
struct Conn {
    sender: Sender,
    authority: String,
    /// The certificate the server presented.
    server_cert: Vec<u8>,
    alpn: Option<Vec<u8>>,
}

impl Conn {
    async fn open(addr: SocketAddr, name: &str, config: Arc<ClientConfig>) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(config).connect(server_name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let (_, session) = tls.get_ref();
        let server_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Conn {
            sender,
            authority: format!("{name}:{}", addr.port()),
            server_cert,
            alpn,
        })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<(Resp, Version), String> {
        let mut b = Request::builder().method(method.clone());
        b = match self.sender {
            Sender::H1(_) => b.uri(path).header("host", &self.authority),
            Sender::H2(_) => b.uri(format!("https://{}{path}", self.authority)),
        };
        if let Some(t) = bearer {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        self.exchange(b.body(Full::new(bytes)).unwrap()).await
    }

    /// A GET of `path` with `headers` (for forward-auth checks).
    async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::get(path).header("host", &self.authority);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.exchange(b.body(Full::default()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .0
    }

    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(Resp, Version), String> {
        let (method, path) = (req.method().clone(), req.uri().to_string());
        let fut = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await.map_err(|e| chain(&e))
                }
                Sender::H2(s) => {
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await.map_err(|e| chain(&e))
                }
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| format!("{method} {path}: no answer in 30 s"))??;
        let version = resp.version();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            Resp {
                request: format!("{method} {path}"),
                status,
                headers,
                body,
            },
            version,
        ))
    }

    async fn get(&mut self, path: &str, bearer: Option<&str>) -> Resp {
        self.send(Method::GET, path, bearer, None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .0
    }
}

/// An error with its causes (hyper's own message is only "connection error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

// === an https upstream ===

/// An upstream that serves HTTP/1.1 over TLS with `leaf`, requiring client certificates
/// from `client_ca` if given. It answers JSON: the path, `X-Forwarded-Proto`, and the
/// subject of the client certificate (or null).
async fn tls_upstream(leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    let provider = tokengate::tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(vec![leaf.cert_der.clone()], leaf.key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let subject = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| tokengate::tls::subject_of(c));
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = json!({
                        "path": req.uri().path(),
                        "forwarded_proto": req.headers().get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok()),
                        "client": subject,
                    });
                    async move {
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                            body.to_string(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

// === the proxy listener ===

#[tokio::test]
async fn https_proxying_over_http1_and_h2_by_alpn() {
    let ca = Ca::new("Test Root");
    let leaf = ca.server(&["localhost", "127.0.0.1"]);
    let up = Upstream::start().await;
    let files = tempfile::tempdir().unwrap();
    let tls = listener_files(files.path(), "proxy", &leaf);
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.tls = Some(tls))
        .start()
        .await;
    let (secret, _) = gw.create_token("tls-client", &[SD]).await;

    // HTTP/1.1 chosen by ALPN, keep-alive: two requests on one connection.
    let mut h1 = Conn::open(
        gw.proxy,
        "localhost",
        client_config(ca.roots(), &["http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.server_cert, leaf.cert_der.to_vec());
    let (r, v) = h1
        .send(Method::GET, "/sd/hello", Some(&secret), None)
        .await
        .unwrap();
    r.expect(200, None);
    assert_eq!(v, Version::HTTP_11);
    let seen = up.last();
    assert_eq!(seen.target, "/hello");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    h1.get("/sd/again", None)
        .await
        .expect(401, Some("missing_token"));

    // h2 chosen by ALPN.
    let mut h2 = Conn::open(
        gw.proxy,
        "localhost",
        client_config(ca.roots(), &["h2", "http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let (r, v) = h2
        .send(Method::GET, "/sd/over-h2", Some(&secret), None)
        .await
        .unwrap();
    r.expect(200, None);
    assert_eq!(v, Version::HTTP_2);
    assert_eq!(up.last().target, "/over-h2");
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");

    // No ALPN at all: HTTP/1.1.
    let mut plain_alpn = Conn::open(gw.proxy, "127.0.0.1", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    plain_alpn
        .get("/sd/no-alpn", Some(&secret))
        .await
        .expect(200, None);

    // Clear-text HTTP on the TLS port gets no HTTP answer.
    let answer = raw(gw.proxy, b"GET /sd/x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/"), "{answer:?}");

    // A client that does not trust the gateway's CA cannot connect.
    let other = Ca::new("Other Root");
    let e = match Conn::open(
        gw.proxy,
        "localhost",
        client_config(other.roots(), &[], None),
    )
    .await
    {
        Ok(_) => panic!("a client with another CA connected"),
        Err(e) => e,
    };
    assert!(e.contains("certificate"), "{e}");
}

/// The forward-auth listener serves its checks over TLS with `forward_auth.tls`.
#[tokio::test]
async fn forward_auth_checks_over_tls() {
    let ca = Ca::new("Test Root");
    let leaf = ca.server(&["localhost"]);
    let files = tempfile::tempdir().unwrap();
    let tls = listener_files(files.path(), "checks", &leaf);
    let gw = TestGateway::builder()
        .forward_auth()
        .check_route("/sd/", SD)
        .configure(|c| c.forward_auth.tls = Some(tls))
        .start()
        .await;
    let (secret, _) = gw.create_token("checked", &[SD]).await;
    let addr = gw.forward_auth.unwrap();
    let mut conn = Conn::open(
        addr,
        "localhost",
        client_config(ca.roots(), &["http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(conn.server_cert, leaf.cert_der.to_vec());
    let auth = format!("Bearer {secret}");
    let check = [
        ("authorization", auth.as_str()),
        ("x-forwarded-uri", "/sd/x"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let r = conn.get_with("/auth", &check).await;
    r.expect(200, None);
    assert_eq!(r.header("x-tokengate-token"), Some("checked"));
    conn.get_with("/auth", &check[1..])
        .await
        .expect(401, Some("missing_token"));
    // Clear text on the TLS port gets no HTTP answer.
    let answer = raw(addr, b"GET /auth HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/"), "{answer:?}");
}

#[tokio::test]
async fn a_slow_tls_handshake_does_not_block_the_listener() {
    let ca = Ca::new("Test Root");
    let leaf = ca.server(&["localhost"]);
    let up = Upstream::start().await;
    let files = tempfile::tempdir().unwrap();
    let tls = listener_files(files.path(), "proxy", &leaf);
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| {
            c.proxy.tls = Some(tls);
            c.proxy.header_read_timeout = Duration::from_millis(500);
        })
        .start()
        .await;
    // A client that connects and says nothing: the accept loop keeps serving others...
    let mut silent = TcpStream::connect(gw.proxy).await.unwrap();
    let mut c = Conn::open(gw.proxy, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    c.get("/sd/x", None)
        .await
        .expect(401, Some("missing_token"));
    // ...and the silent one is closed once the handshake timeout passes.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut buf),
    )
    .await;
    assert!(read.is_ok(), "the server kept a silent TLS connection open");
}

// === upstreams over https ===

#[tokio::test]
async fn https_upstreams_with_a_private_ca_and_a_server_name_override() {
    let ca = Ca::new("Backend Root");
    let backend = tls_upstream(&ca.server(&["localhost"]), None).await;
    let named = tls_upstream(&ca.server(&["backend.internal"]), None).await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(files.path(), "backend-ca.pem", &ca.pem());
    let ca_file2 = ca_file.clone();
    let gw = TestGateway::builder()
        .route_with("/sd/", "security-director", backend, |r| {
            r.upstream = Some(
                format!("https://localhost:{}/api", backend.port())
                    .parse()
                    .unwrap(),
            );
            r.tls.ca_file = Some(ca_file);
        })
        .route_with("/named/", "security-director", named, |r| {
            r.upstream = Some(
                format!("https://127.0.0.1:{}", named.port())
                    .parse()
                    .unwrap(),
            );
            r.tls.ca_file = Some(ca_file2);
            r.tls.server_name = Some("backend.internal".into());
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("https-up", &[SD]).await;

    let r = gw.get("/sd/hello?x=1", Some(&secret)).await;
    r.expect(200, None);
    assert_eq!(r.json()["path"], "/api/hello");
    assert_eq!(r.json()["forwarded_proto"], "http");
    // Keep-alive to the upstream: a second request reuses the pooled TLS connection.
    gw.get("/sd/again", Some(&secret)).await.expect(200, None);

    let r = gw.get("/named/ok", Some(&secret)).await;
    r.expect(200, None);
    assert_eq!(r.json()["path"], "/ok");
}

#[tokio::test]
async fn a_wrong_upstream_certificate_is_502() {
    let ca = Ca::new("Backend Root");
    let other = Ca::new("Someone Else");
    let backend = tls_upstream(&ca.server(&["localhost"]), None).await;
    let misnamed = tls_upstream(&ca.server(&["elsewhere.internal"]), None).await;
    let plain = Upstream::start().await;
    let files = tempfile::tempdir().unwrap();
    let other_ca = write(files.path(), "other-ca.pem", &other.pem());
    let right_ca = write(files.path(), "ca.pem", &ca.pem());
    let gw = TestGateway::builder()
        // Verified against a CA that did not sign the upstream's certificate.
        .route_with("/wrong-ca/", "security-director", backend, |r| {
            r.upstream = Some(
                format!("https://localhost:{}", backend.port())
                    .parse()
                    .unwrap(),
            );
            r.tls.ca_file = Some(other_ca);
        })
        // The platform's roots do not know a private CA either.
        .route_with("/platform/", "security-director", backend, |r| {
            r.upstream = Some(
                format!("https://127.0.0.1:{}", backend.port())
                    .parse()
                    .unwrap(),
            );
        })
        // The right CA, but a certificate for another name.
        .route_with("/misnamed/", "security-director", misnamed, |r| {
            r.upstream = Some(
                format!("https://localhost:{}", misnamed.port())
                    .parse()
                    .unwrap(),
            );
            r.tls.ca_file = Some(right_ca);
        })
        // https:// to a server that only speaks plain HTTP.
        .route_with("/plain/", "security-director", plain.addr, |r| {
            r.upstream = Some(
                format!("https://127.0.0.1:{}", plain.addr.port())
                    .parse()
                    .unwrap(),
            );
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("wrong-cert", &[SD]).await;
    for path in ["/wrong-ca/x", "/platform/x", "/misnamed/x", "/plain/x"] {
        gw.get(path, Some(&secret))
            .await
            .expect(502, Some("bad_gateway"));
    }
    assert_eq!(
        plain.count(),
        0,
        "a request reached the upstream in clear text"
    );
}

#[tokio::test]
async fn mutual_tls_to_an_upstream() {
    let server_ca = Ca::new("Backend Root");
    let client_ca = Ca::new("Gateway Clients");
    let backend = tls_upstream(
        &server_ca.server(&["localhost", "127.0.0.1"]),
        Some(&client_ca),
    )
    .await;
    let gw_cert = client_ca.client("tokengate-gw");
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(files.path(), "backend-ca.pem", &server_ca.pem());
    let cert = write(files.path(), "gw.pem", &gw_cert.cert_pem);
    let key = write(files.path(), "gw.key", &gw_cert.key_pem);
    let ca_file2 = ca_file.clone();
    let gw = TestGateway::builder()
        .route_with("/mtls/", "security-director", backend, |r| {
            r.upstream = Some(
                format!("https://localhost:{}", backend.port())
                    .parse()
                    .unwrap(),
            );
            r.tls.ca_file = Some(ca_file);
            r.tls.client_cert = Some(cert);
            r.tls.client_key = Some(key);
        })
        // The same backend by another name, without a client certificate.
        .route_with("/no-cert/", "security-director", backend, |r| {
            r.upstream = Some(
                format!("https://127.0.0.1:{}", backend.port())
                    .parse()
                    .unwrap(),
            );
            r.tls.ca_file = Some(ca_file2);
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("mtls", &[SD]).await;
    let r = gw.get("/mtls/hello", Some(&secret)).await;
    r.expect(200, None);
    assert_eq!(r.json()["client"], "CN=tokengate-gw,O=Example Ops");
    gw.get("/no-cert/hello", Some(&secret))
        .await
        .expect(502, Some("bad_gateway"));
}

// === the admin listener ===

#[tokio::test]
async fn admin_client_certificates_and_the_admin_key_are_both_required() {
    let ca = Ca::new("Admin Root");
    let clients = Ca::new("Admin Clients");
    let strangers = Ca::new("Strangers");
    let leaf = ca.server(&["localhost", "127.0.0.1"]);
    let files = tempfile::tempdir().unwrap();
    let mut tls = listener_files(files.path(), "admin", &leaf);
    tls.client_ca = Some(write(files.path(), "clients.pem", &clients.pem()));
    let gw = TestGateway::builder()
        .configure(|c| c.admin.tls = Some(tls))
        .start()
        .await;
    let ops = clients.client("ops-admin");

    // No client certificate: refused in the handshake (TLS 1.3 may report it on first use).
    let no_cert = async {
        let mut c = Conn::open(gw.admin, "localhost", client_config(ca.roots(), &[], None)).await?;
        c.send(Method::GET, "/healthz", None, None).await
    }
    .await;
    match no_cert {
        Ok((r, _)) => panic!("served without a client certificate: {r}"),
        Err(e) => assert!(e.contains("CertificateRequired"), "{e}"),
    }
    // A certificate from another CA: refused too.
    let stranger = strangers.client("mallory");
    let bad_cert = async {
        let mut c = Conn::open(
            gw.admin,
            "localhost",
            client_config(ca.roots(), &[], Some(&stranger)),
        )
        .await?;
        c.send(Method::GET, "/healthz", None, None).await
    }
    .await;
    assert!(bad_cert.is_err(), "served a certificate from another CA");

    // A valid certificate without the key: 401.
    let mut c = Conn::open(
        gw.admin,
        "localhost",
        client_config(ca.roots(), &[], Some(&ops)),
    )
    .await
    .unwrap();
    c.get("/v1/tokens", None)
        .await
        .expect(401, Some("unauthorized"));
    c.get("/v1/tokens", Some("wrong-key-wrong-key-wrong-key-wrong"))
        .await
        .expect(401, Some("unauthorized"));
    // Both: served; the audit log names the certificate's subject.
    let (r, _) = c
        .send(
            Method::POST,
            "/v1/tokens",
            Some(ADMIN_KEY),
            Some(json!({"name": "via-mtls", "access": [SD]})),
        )
        .await
        .unwrap();
    r.expect(201, None);
    let audit = c.get("/v1/audit?token=via-mtls", Some(ADMIN_KEY)).await;
    audit.expect(200, None);
    let entries = audit.json()["entries"].clone();
    assert_eq!(entries[0]["action"], "create", "{audit}");
    assert_eq!(entries[0]["actor"], "CN=ops-admin,O=Example Ops", "{audit}");
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // The CLI with --ca-file, --client-cert and --client-key.
    let cli_dir = tempfile::tempdir().unwrap();
    let ca_file = write(cli_dir.path(), "ca.pem", &ca.pem());
    let cert = write(cli_dir.path(), "ops.pem", &ops.cert_pem);
    let key = write(cli_dir.path(), "ops.key", &ops.key_pem);
    let url = format!("https://localhost:{}", gw.admin.port());
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let out = cli(
        cli_dir.path(),
        &[
            "token",
            "list",
            "--json",
            "--admin-url",
            &url,
            "--ca-file",
            &p(&ca_file),
            "--client-cert",
            &p(&cert),
            "--client-key",
            &p(&key),
        ],
    )
    .await;
    assert_eq!(out.0, Some(0), "{out:?}");
    assert!(out.1.contains("via-mtls"), "{out:?}");
    // Without the client certificate: exit 1 with one line.
    let out = cli(
        cli_dir.path(),
        &[
            "token",
            "list",
            "--admin-url",
            &url,
            "--ca-file",
            &p(&ca_file),
        ],
    )
    .await;
    assert_eq!(out.0, Some(1), "{out:?}");
    assert_eq!(out.2.trim().lines().count(), 1, "{out:?}");
    // Without --ca-file the private CA is not trusted.
    let out = cli(
        cli_dir.path(),
        &[
            "token",
            "list",
            "--admin-url",
            &url,
            "--client-cert",
            &p(&cert),
            "--client-key",
            &p(&key),
        ],
    )
    .await;
    assert_eq!(out.0, Some(1), "{out:?}");
    assert!(out.2.contains("certificate"), "{out:?}");
    // TLS options with an http:// URL are a mistake, said as such.
    let out = cli(
        cli_dir.path(),
        &[
            "token",
            "list",
            "--admin-url",
            "http://127.0.0.1:1",
            "--ca-file",
            &p(&ca_file),
        ],
    )
    .await;
    // A usage error (SPEC §5: exit 2), not a refusal by the API.
    assert_eq!(out.0, Some(2), "{out:?}");
    assert!(out.2.contains("https://"), "{out:?}");
}

#[tokio::test]
async fn admin_over_tls_without_client_certificates_uses_the_key_alone() {
    let ca = Ca::new("Admin Root");
    let leaf = ca.server(&["localhost"]);
    let files = tempfile::tempdir().unwrap();
    let tls = listener_files(files.path(), "admin", &leaf);
    let gw = TestGateway::builder()
        .configure(|c| c.admin.tls = Some(tls))
        .start()
        .await;
    let cli_dir = tempfile::tempdir().unwrap();
    let ca_file = write(cli_dir.path(), "ca.pem", &ca.pem());
    let url = format!("https://localhost:{}", gw.admin.port());
    let out = cli(
        cli_dir.path(),
        &[
            "token",
            "create",
            "cli-tls",
            "--access",
            SD,
            "--admin-url",
            &url,
            "--ca-file",
            &ca_file.to_string_lossy(),
        ],
    )
    .await;
    assert_eq!(out.0, Some(0), "{out:?}");
    let mut c = Conn::open(gw.admin, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    let audit = c.get("/v1/audit?token=cli-tls", Some(ADMIN_KEY)).await;
    assert_eq!(audit.json()["entries"][0]["actor"], "admin-key", "{audit}");
}

/// Runs the CLI with `TOKENGATE_ADMIN_KEY`; returns (exit code, stdout, stderr).
async fn cli(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENGATE_") || k == "RUST_LOG" || k.starts_with("SSL_CERT") {
            cmd.env_remove(k);
        }
    }
    cmd.env("TOKENGATE_ADMIN_KEY", ADMIN_KEY);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output().expect("the CLI runs")),
    )
    .await
    .expect("the CLI finished within 60 s")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// === certificate reload ===

/// Opens connections until one presents `cert` (the reload is polled from the files).
async fn until_served(addr: SocketAddr, roots: &RootCertStore, cert: &[u8]) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = Conn::open(addr, "localhost", client_config(roots.clone(), &[], None))
            .await
            .unwrap();
        if c.server_cert == cert {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificate_reload_under_a_live_keep_alive_connection() {
    let ca = Ca::new("Test Root");
    let first = ca.server(&["localhost"]);
    let second = ca.server(&["localhost"]);
    let up = Upstream::start().await;
    let files = tempfile::tempdir().unwrap();
    let tls = listener_files(files.path(), "proxy", &first);
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.tls = Some(tls))
        .start()
        .await;
    let (secret, _) = gw.create_token("reload", &[SD]).await;
    let mut live = Conn::open(gw.proxy, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    assert_eq!(live.server_cert, first.cert_der.to_vec());
    live.get("/sd/1", Some(&secret)).await.expect(200, None);

    // New files on disk: new connections get the new certificate...
    listener_files(files.path(), "proxy", &second);
    let mut fresh = until_served(gw.proxy, &ca.roots(), &second.cert_der).await;
    fresh.get("/sd/2", Some(&secret)).await.expect(200, None);
    // ...while the live connection goes on.
    live.get("/sd/3", Some(&secret)).await.expect(200, None);

    // A broken certificate: the reload fails, naming the key, and the current one stays.
    write(
        files.path(),
        "proxy.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    );
    let e = gw.gateway().reload_tls().unwrap_err();
    assert!(e.to_string().starts_with("proxy.tls"), "{e}");
    assert!(e.to_string().contains("proxy.pem"), "{e}");
    let mut after = Conn::open(gw.proxy, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    assert_eq!(after.server_cert, second.cert_der.to_vec());
    after.get("/sd/4", Some(&secret)).await.expect(200, None);
    live.get("/sd/5", Some(&secret)).await.expect(200, None);
    // A key that does not match the certificate: refused the same way.
    write(files.path(), "proxy.pem", &first.cert_pem);
    let e = gw.gateway().reload_tls().unwrap_err();
    assert!(
        e.to_string().contains("is not the key of the certificate"),
        "{e}"
    );
    let after = Conn::open(gw.proxy, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    assert_eq!(after.server_cert, second.cert_der.to_vec());
}

/// The released binary: SIGHUP reloads the certificate (and does not stop the process).
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate() {
    let ca = Ca::new("Test Root");
    let first = ca.server(&["localhost"]);
    let second = ca.server(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    listener_files(dir.path(), "proxy", &first);
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"proxy.pem\", key = \"proxy.key\" }}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nurl = \"sqlite://{}\"\n",
        dir.path().join("tg.db").display()
    );
    write(dir.path(), "tokengate.toml", &config);
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["--config", "tokengate.toml", "serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENGATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("TOKENGATE_ADMIN_KEY", ADMIN_KEY);
    let mut child = Reap(cmd.spawn().expect("tokengate serve starts"));
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line_with = move |rx: mpsc::Receiver<String>, needle: &'static str| {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line.contains(needle) => return (line, rx),
                    Ok(line) => seen.push(line),
                    Err(e) => panic!("no log line with {needle:?} ({e:?}); got {seen:#?}"),
                }
            }
        })
    };
    let (listening, rx) = next_line_with(rx, "tokengate listening").await.unwrap();
    let proxy: SocketAddr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("proxy="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no proxy address in {listening:?}"));
    let mut live = Conn::open(proxy, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    assert_eq!(live.server_cert, first.cert_der.to_vec());
    live.get("/sd/x", None)
        .await
        .expect(401, Some("missing_token"));

    listener_files(dir.path(), "proxy", &second);
    let pid = child.0.id();
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (reloaded, _rx) = next_line_with(rx, "trigger=\"SIGHUP\"").await.unwrap();
    assert!(reloaded.contains("TLS certificate reloaded"), "{reloaded}");
    let fresh = Conn::open(proxy, "localhost", client_config(ca.roots(), &[], None))
        .await
        .unwrap();
    assert_eq!(fresh.server_cert, second.cert_der.to_vec());
    live.get("/sd/y", None)
        .await
        .expect(401, Some("missing_token"));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP stopped the gateway"
    );
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// === start-up ===

fn plain_config(dir: &Path) -> Config {
    let mut c = Config::defaults();
    c.proxy.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.store.url = StoreUrl::Sqlite(dir.join("tg.db"));
    c.admin.key_file = dir.join("admin.key");
    c.routes.clear();
    c
}

async fn start_err(config: Config) -> String {
    match Gateway::start(
        config,
        StartOptions {
            clock: Arc::new(tokengate::clock::SystemClock),
            admin_key: Some(ADMIN_KEY.into()),
        },
    )
    .await
    {
        Ok(gw) => {
            gw.shutdown().await.unwrap();
            panic!("the gateway started");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn bad_tls_files_stop_start_up_naming_the_key() {
    let ca = Ca::new("Test Root");
    let leaf = ca.server(&["localhost"]);
    let other = ca.server(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let files = listener_files(dir.path(), "srv", &leaf);

    let mut c = plain_config(dir.path());
    c.proxy.tls = Some(ServerTlsConfig {
        cert: dir.path().join("missing.pem"),
        ..files.clone()
    });
    let e = start_err(c).await;
    assert!(e.starts_with("proxy.tls.cert: cannot read"), "{e}");
    assert!(e.contains("missing.pem"), "{e}");

    let mut c = plain_config(dir.path());
    c.admin.tls = Some(ServerTlsConfig {
        key: write(dir.path(), "other.key", &other.key_pem),
        ..files.clone()
    });
    let e = start_err(c).await;
    assert!(e.starts_with("admin.tls.key:"), "{e}");
    assert!(!e.contains("PRIVATE KEY"), "{e}");

    let mut c = plain_config(dir.path());
    c.admin.tls = Some(ServerTlsConfig {
        client_ca: Some(write(dir.path(), "empty.pem", "")),
        ..files.clone()
    });
    let e = start_err(c).await;
    assert!(e.starts_with("admin.tls.client_ca:"), "{e}");

    let up = Upstream::start().await;
    let mut c = plain_config(dir.path());
    c.routes = vec![route_to(up.addr, |r| {
        r.upstream = Some(
            format!("https://localhost:{}", up.addr.port())
                .parse()
                .unwrap(),
        );
        r.tls.ca_file = Some(dir.path().join("nope.pem"));
    })];
    let e = start_err(c).await;
    assert!(e.starts_with("routes[0].ca_file: cannot read"), "{e}");
}

fn route_to(
    addr: SocketAddr,
    f: impl FnOnce(&mut tokengate::config::RouteConfig),
) -> tokengate::config::RouteConfig {
    let mut r = tokengate::config::RouteConfig {
        path_prefix: "/sd/".into(),
        host: None,
        access: tokengate::config::Config::defaults()
            .access_types
            .bit("security-director")
            .unwrap(),
        upstream: Some(format!("http://{addr}").parse().unwrap()),
        strip_prefix: true,
        preserve_host: false,
        forward_authorization: false,
        tls: Default::default(),
    };
    f(&mut r);
    r
}

#[tokio::test]
async fn a_plain_gateway_still_serves_plain_http() {
    // What `tokengate dev` runs: the defaults, no TLS anywhere.
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("plain", &[SD]).await;
    gw.get("/sd/x", Some(&secret)).await.expect(200, None);
    assert_eq!(up.last().headers["x-forwarded-proto"], "http");
}

/// Issue 15 item 15: two routes to one `host:port` with different TLS settings start, and
/// each gets the connections its own settings describe (never one made with the other's).
#[tokio::test]
async fn two_routes_to_one_origin_keep_their_own_tls_settings() {
    let ca = Ca::new("Backend Root");
    let backend = tls_upstream(&ca.server(&["localhost"]), None).await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(files.path(), "ca.pem", &ca.pem());
    let url: http::Uri = format!("https://localhost:{}", backend.port())
        .parse()
        .unwrap();
    let url2 = url.clone();
    let gw = TestGateway::builder()
        .route_with("/private/", "security-director", backend, |r| {
            r.upstream = Some(url);
            r.tls.ca_file = Some(ca_file);
        })
        // The same origin with the platform's roots, which do not know the private CA.
        .route_with("/platform/", "security-director", backend, |r| {
            r.upstream = Some(url2);
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("two-settings", &[SD]).await;
    // Alternating on one keep-alive client: a connection verified with the private CA must
    // never carry a request of the platform-roots route.
    for _ in 0..3 {
        gw.get("/private/x", Some(&secret)).await.expect(200, None);
        gw.get("/platform/x", Some(&secret))
            .await
            .expect(502, Some("bad_gateway"));
    }
}
