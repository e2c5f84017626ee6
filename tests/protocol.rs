//! Protocol correctness against the real server (issue 15): connection timing, framing of
//! requests and responses, upgrades, HTTP/2 → HTTP/1 translation, refusals hyper makes
//! itself, and the version a client is answered in. Each test sends raw bytes (or uses a raw
//! upstream) so that what crosses the wire is exactly what the test says.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Waits until the server closes `s` (EOF or reset), up to `limit`; returns how long it took
/// and what arrived before the close.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|_| (start.elapsed(), String::from_utf8_lossy(&got).into_owned()))
}

/// Reads one response with a `content-length` body from a keep-alive connection.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body))
        .await
        .expect("body within 10 s")
        .expect("body");
    (head, body)
}

fn get(path: &str, secret: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\n\r\n")
}

// === 1, 2: connection timing ===

const HEAD: Duration = Duration::from_millis(400);
const IDLE: Duration = Duration::from_millis(2000);

fn timing(c: &mut tokengate::config::Config) {
    c.proxy.header_read_timeout = HEAD;
    c.proxy.idle_timeout = IDLE;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_timeout_from_accept() {
    let (up, gw, secret) = gateway_with_token(timing).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let (took, _) = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(
        took >= HEAD - Duration::from_millis(50) && took < IDLE,
        "a connection that sends nothing closes after header_read_timeout \
         ({HEAD:?}), not idle_timeout ({IDLE:?}): {took:?}"
    );
    // The same for one that sent only part of a head, and for an HTTP/2 preface alone.
    for opening in [
        &b"GET /sd/x HTTP/1.1\r\nHo"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        s.write_all(opening).await.unwrap();
        let (took, _) = closed_within(&mut s, Duration::from_secs(10))
            .await
            .expect("closed");
        assert!(
            took >= HEAD - Duration::from_millis(50) && took < IDLE,
            "{opening:?}: closed after {took:?}"
        );
    }
    assert_eq!(up.count(), 0);
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
}

#[tokio::test]
async fn a_keep_alive_connection_waits_idle_timeout_then_times_the_next_head() {
    let (up, gw, secret) = gateway_with_token(timing).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get("/sd/one", &secret).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Idle past the header timeout, well inside the idle timeout: still open and usable.
    tokio::time::sleep(HEAD * 2).await;
    s.write_all(get("/sd/two", &secret).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "a keep-alive connection idle for longer than header_read_timeout still serves: {head}"
    );
    assert_eq!(up.count(), 2);
    // Then left idle: closed after idle_timeout, not before.
    let (took, _) = closed_within(&mut s, IDLE * 3).await.expect("closed");
    assert!(
        took >= IDLE - Duration::from_millis(100),
        "an idle keep-alive connection is kept for idle_timeout ({IDLE:?}): closed after {took:?}"
    );

    // A next head that begins but never ends is cut off header_read_timeout after its first
    // byte.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get("/sd/three", &secret).as_bytes())
        .await
        .unwrap();
    read_response(&mut s).await;
    s.write_all(b"GET /sd/four HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let (took, _) = closed_within(&mut s, IDLE * 3).await.expect("closed");
    assert!(
        took >= HEAD - Duration::from_millis(50) && took < IDLE,
        "a started head must be whole within header_read_timeout: closed after {took:?}"
    );
    assert_eq!(up.count(), 3);
}

// === a raw upstream ===

/// An upstream that answers every request head it reads with `answer`, byte for byte, and
/// records what it received. With `close`, it closes the connection after each answer.
struct RawUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start(answer: &'static [u8], close: bool) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let r = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let r = r.clone();
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            match s.read(&mut b).await {
                                Ok(1) => head.push(b[0]),
                                _ => return,
                            }
                        }
                        r.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        if s.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { addr, received }
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

async fn gateway_to(addr: SocketAddr) -> (TestGateway, String) {
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &["security-director"]).await;
    (gw, secret)
}

/// The JSON `error` of a raw answer's body.
fn raw_error(answer: &str) -> String {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("no JSON body ({e}) in {answer:?}"));
    v["error"].as_str().unwrap_or_default().to_string()
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines().skip(1).any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.eq_ignore_ascii_case(name))
    })
}

// === 3: response framing ===

#[tokio::test]
async fn a_response_with_content_length_and_chunked_reaches_the_client_chunked() {
    let up = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let (gw, secret) = gateway_to(up.addr).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    for round in 0..2 {
        s.write_all(get("/sd/x", &secret).as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !has_header(&head, "content-length"),
            "round {round}: a stale Content-Length reached the client: {head}"
        );
        // The chunked body, whole: 5 bytes "hello", then the last chunk.
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .expect("body within 10 s")
                .unwrap();
            assert!(
                n > 0,
                "closed mid-body: {:?}",
                String::from_utf8_lossy(&body)
            );
            body.push(b[0]);
        }
        assert_eq!(String::from_utf8_lossy(&body), "5\r\nhello\r\n0\r\n\r\n");
    }
    // HTTP/2 clients get the five bytes too.
    let (status, body) = h2_get(gw.proxy, "/sd/x", &secret, &[]).await;
    assert_eq!((status, body.as_str()), (200, "hello"));
}

/// One HTTP/2 (h2c, prior knowledge) GET; returns the status and the body.
async fn h2_get(
    addr: SocketAddr,
    path: &str,
    secret: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("h2 ready");
    let mut req = http::Request::get(format!("http://a{path}"))
        .header("authorization", format!("Bearer {secret}"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("h2 answer within 10 s")
        .expect("h2 answer");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

// === 4: malformed chunked request bodies ===

#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_clients_400() {
    let (up, gw, secret) = gateway_with_token(|_| {}).await;
    let cases: [(&str, String); 5] = [
        (
            "size overflow",
            "10000000000000003\r\nabc\r\n0\r\n\r\n".into(),
        ),
        ("negative size", "-3\r\nabc\r\n0\r\n\r\n".into()),
        ("hex prefix", "0x3\r\nabc\r\n0\r\n\r\n".into()),
        ("size without CRLF", "3\rxyz\r\n0\r\n\r\n".into()),
        (
            "1 MB chunk extension",
            format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(1 << 20)),
        ),
    ];
    for (what, body) in cases {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        let head = format!(
            "POST /sd/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(body.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(raw_status(&answer), 400, "{what}: {answer}");
        assert_eq!(raw_error(&answer), "invalid_request", "{what}: {answer}");
    }
    // The gateway keeps serving, and the upstream is fine.
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
    assert!(up.count() >= 1);
}

// === 5, 6, 10, 11: request framing the gateway refuses ===

#[tokio::test]
async fn http11_without_host_unknown_codings_and_trace_are_refused_with_json() {
    let (up, gw, secret) = gateway_with_token(|_| {}).await;
    let cases = [
        (
            "HTTP/1.1 without Host",
            format!("GET /sd/x HTTP/1.1\r\nAuthorization: Bearer {secret}\r\n\r\n"),
            400,
            "invalid_request",
        ),
        (
            "gzip, chunked",
            format!("POST /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            501,
            "not_implemented",
        ),
        (
            "TRACE with Max-Forwards: 0",
            format!("TRACE /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nMax-Forwards: 0\r\n\r\n"),
            501,
            "not_implemented",
        ),
        (
            "TRACE",
            format!("TRACE /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\n\r\n"),
            501,
            "not_implemented",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, req, status, code) in cases {
        // `raw` reads until the server closes: each of these refusals closes the connection
        // (or the test's 10 s bound would show up as a missing answer).
        let started = Instant::now();
        let answer = raw(gw.proxy, req.as_bytes()).await;
        let closed = started.elapsed() < Duration::from_secs(5);
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let error = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        if raw_status(&answer) != status || error.as_deref() != Some(code) || !closed {
            wrong.push(format!(
                "{what}: want {status} {code} and a close, got {answer:?} (closed: {closed})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    // HTTP/1.0 without Host is fine.
    let answer = raw(
        gw.proxy,
        format!("GET /sd/x HTTP/1.0\r\nAuthorization: Bearer {secret}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
}

#[tokio::test]
async fn hypers_own_parse_errors_close_the_connection_and_reach_no_upstream() {
    let (up, gw, secret) = gateway_with_token(|_| {}).await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (
            "xchunked",
            format!("POST /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            400,
        ),
        (
            "<> in the path",
            format!("GET /sd/<x> HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\n\r\n"),
            400,
        ),
        (
            "150 headers",
            format!("GET /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\n{many}\r\n"),
            431,
        ),
    ];
    for (what, req, status) in cases {
        let started = Instant::now();
        let answer = raw(gw.proxy, req.as_bytes()).await;
        assert_eq!(raw_status(&answer), status, "{what}: {answer}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: the connection stayed open after hyper's refusal"
        );
    }
    assert_eq!(
        up.count(),
        0,
        "a request hyper refused reached the upstream"
    );
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
}

// === 7, 8: upgrades ===

#[tokio::test]
async fn an_unsolicited_101_is_a_502() {
    let up = RawUpstream::start(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
    )
    .await;
    let (gw, secret) = gateway_to(up.addr).await;
    gw.get("/sd/x", Some(&secret))
        .await
        .expect(502, Some("bad_gateway"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn upgrade_on_http10_is_ignored() {
    let (up, gw, secret) = gateway_with_token(|_| {}).await;
    let answer = raw(
        gw.proxy,
        format!("GET /sd/echo HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = up.last();
    assert!(
        seen.headers.get("upgrade").is_none() && seen.headers.get("connection").is_none(),
        "an HTTP/1.0 request's Upgrade reached the upstream: {:?}",
        seen.headers
    );
}

// === 9: HTTP/2 cookie crumbs ===

#[tokio::test]
async fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_line() {
    let (up, gw, secret) = gateway_with_token(|_| {}).await;
    let (status, _) = h2_get(
        gw.proxy,
        "/sd/c",
        &secret,
        &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
    )
    .await;
    assert_eq!(status, 200);
    let seen = up.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"], "{:?}", seen.headers);
}

// === 13: the client's protocol version ===

#[tokio::test]
async fn an_http10_upstream_does_not_break_client_keep_alive() {
    let up = RawUpstream::start(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let (gw, secret) = gateway_to(up.addr).await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    for round in 0..3 {
        s.write_all(get("/sd/x", &secret).as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "round {round}: an HTTP/1.1 client is answered in HTTP/1.1: {head}"
        );
        assert_eq!(body, b"ok");
    }
    assert_eq!(up.count(), 3);
}

// === 1: one client IP cannot hold every connection slot ===

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test]
async fn one_client_ip_cannot_take_every_connection_slot() {
    let (_up, gw, secret) = gateway_with_token(|c| {
        c.proxy.max_connections = 3;
        c.proxy.max_connections_per_ip = 2;
        c.proxy.header_read_timeout = Duration::from_secs(30);
        c.proxy.idle_timeout = Duration::from_secs(60);
    })
    .await;
    // Two silent connections from one address hold its share...
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from("127.0.0.1", gw.proxy).await);
    }
    // ...so its third is closed at once, unanswered,
    let mut third = connect_from("127.0.0.1", gw.proxy).await;
    let (took, got) = closed_within(&mut third, Duration::from_secs(10))
        .await
        .expect("the third connection from one IP is closed");
    assert!(got.is_empty(), "{got:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // ...and a client from another address is served at once.
    let mut other = connect_from("127.0.0.2", gw.proxy).await;
    other
        .write_all(get("/sd/x", &secret).as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // A share is given back when its connection closes (the server notices the close
    // asynchronously, so a connection made in between may still be turned away).
    drop(held.pop());
    let secret = &secret;
    eventually(
        "a connection is served once a share is free",
        Duration::from_secs(10),
        || async move {
            let mut again = connect_from("127.0.0.1", gw.proxy).await;
            again
                .write_all(get("/sd/y", secret).as_bytes())
                .await
                .ok()?;
            let mut buf = [0u8; 12];
            again.read_exact(&mut buf).await.ok()?;
            (&buf == b"HTTP/1.1 200").then_some(())
        },
    )
    .await;
}
