//! Upstream connections follow client connections (`src/proxy/upstream.rs`): a keep-alive
//! client's requests travel on one upstream connection, concurrent clients do not share
//! one, a closed client's connection is reused by the next client, and a connection the
//! upstream closed is replaced without failing the request.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SD: &str = "security-director";

/// One client connection to the proxy (HTTP/1.1 keep-alive).
struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(gw: &TestGateway) -> Client {
        let s = TcpStream::connect(gw.gateway().proxy_addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(s)).await.unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    /// GET `path` with `secret`; the status and the body.
    async fn get(&mut self, path: &str, secret: &str) -> (u16, String) {
        let (status, body) = self.get_bytes(path, secret).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// GET `path` with `secret`; the status and the body's bytes.
    async fn get_bytes(&mut self, path: &str, secret: &str) -> (u16, Bytes) {
        let req = Request::get(path)
            .header("host", "gw.test")
            .header("authorization", format!("Bearer {secret}"))
            .body(Full::default())
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

async fn gateway() -> (Upstream, TestGateway, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    (up, gw, secret)
}

/// A gateway routing `/sd/` to `addr`, and a token for it.
async fn gateway_to(addr: SocketAddr) -> (TestGateway, String) {
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    (gw, secret)
}

/// The upstream connections (gateway side) the upstream's requests arrived on, in order.
fn peers(up: &Upstream) -> Vec<SocketAddr> {
    up.requests().iter().map(|s| s.peer).collect()
}

#[tokio::test]
async fn a_keep_alive_client_keeps_one_upstream_connection() {
    let (up, gw, secret) = gateway().await;
    let mut c = Client::connect(&gw).await;
    for i in 0..5 {
        let (status, body) = c.get(&format!("/sd/n{i}"), &secret).await;
        assert_eq!(status, 200, "{body}");
    }
    let p = peers(&up);
    assert_eq!(p.len(), 5);
    assert!(p.iter().all(|x| *x == p[0]), "{p:?}");
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn concurrent_clients_do_not_share_an_upstream_connection() {
    let (up, gw, secret) = gateway().await;
    let mut a = Client::connect(&gw).await;
    let mut b = Client::connect(&gw).await;
    for _ in 0..3 {
        assert_eq!(a.get("/sd/a", &secret).await.0, 200);
        assert_eq!(b.get("/sd/b", &secret).await.0, 200);
    }
    let reqs = up.requests();
    let of = |path: &str| -> Vec<SocketAddr> {
        reqs.iter()
            .filter(|s| s.target == path)
            .map(|s| s.peer)
            .collect()
    };
    let (pa, pb) = (of("/a"), of("/b"));
    assert_eq!((pa.len(), pb.len()), (3, 3));
    assert!(pa.iter().all(|x| *x == pa[0]), "{pa:?}");
    assert!(pb.iter().all(|x| *x == pb[0]), "{pb:?}");
    assert_ne!(pa[0], pb[0]);
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_closed_clients_upstream_connection_serves_the_next_client() {
    let (up, gw, secret) = gateway().await;
    let mut a = Client::connect(&gw).await;
    assert_eq!(a.get("/sd/first", &secret).await.0, 200);
    assert_eq!(gw.gateway().upstream_idle_connections(), 0);
    drop(a);
    eventually(
        "the closed client's upstream connection is idle",
        Duration::from_secs(10),
        || async { (gw.gateway().upstream_idle_connections() == 1).then_some(()) },
    )
    .await;
    let mut b = Client::connect(&gw).await;
    assert_eq!(b.get("/sd/second", &secret).await.0, 200);
    let p = peers(&up);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0], p[1]);
    assert_eq!(up.connections(), 1);
    assert_eq!(gw.gateway().upstream_idle_connections(), 0);
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_gets_a_new_connection() {
    let (up, gw, secret) = gateway().await;
    let mut c = Client::connect(&gw).await;
    for i in 1..=3 {
        let (status, body) = c.get("/sd/close", &secret).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(up.connections(), i);
    }
    assert_eq!(c.get("/sd/after", &secret).await.0, 200);
    assert_eq!(up.connections(), 4);
}

/// An upstream that answers one request per connection with a keep-alive response, then
/// closes the socket (as an upstream whose keep-alive timeout is over does) and reports it.
async fn closing_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            drop(s);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_reused_connection_closed_by_the_upstream_does_not_fail_the_next_request() {
    let (addr, mut closed) = closing_upstream().await;
    let (gw, secret) = gateway_to(addr).await;
    let mut c = Client::connect(&gw).await;
    // Each request finds the connection of the one before closed by the upstream: whether
    // the gateway has already seen the close or not, the request goes on a new connection.
    for i in 0..20 {
        let (status, body) = c.get("/sd/x", &secret).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
        closed.recv().await.unwrap();
    }
}

#[tokio::test]
async fn each_upstream_origin_keeps_its_own_connection() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gw = TestGateway::builder()
        .route("/a/", "security-director", a.addr)
        .route("/b/", "security-director", b.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let mut c = Client::connect(&gw).await;
    for _ in 0..3 {
        assert_eq!(c.get("/a/x", &secret).await.0, 200);
        assert_eq!(c.get("/b/x", &secret).await.0, 200);
    }
    assert_eq!((a.count(), b.count()), (3, 3));
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

#[tokio::test]
async fn each_request_on_a_connection_gets_its_whole_upstream_timeout() {
    // The connection's requests share one timer (`Affinity::within`): one armed by an earlier
    // request fires during a later one, which must then keep waiting for its own deadline.
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| c.proxy.upstream_timeout = Duration::from_millis(1000))
        .start()
        .await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let mut c = Client::connect(&gw).await;
    // A arms the timer for its start + 1 s; B starts 0.6 s later and needs 0.7 s, so the
    // timer fires 0.4 s into B.
    assert_eq!(c.get("/sd/delay/600", &secret).await.0, 200);
    let (status, body) = c.get("/sd/delay/700", &secret).await;
    assert_eq!(status, 200, "{body}");
    // And a request that never gets an answer still ends at its own deadline.
    let started = std::time::Instant::now();
    let (status, body) = c.get("/sd/hang", &secret).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("gateway_timeout"), "{body}");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(up.connections(), 1);
}

/// A keep-alive upstream whose responses arrive in two parts: the head with half the body,
/// and the rest 20 ms later, so a response is still being read when the gateway already has
/// its head. Returns its address and the count of connections it accepted.
async fn split_body_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    pending.drain(..end);
                    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok";
                    if s.write_all(head).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if s.write_all(b"!!").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn a_client_using_more_origins_than_it_keeps_still_reuses_connections() {
    // Six origins, one client connection (which keeps at most four): going round them twice
    // must not open a second connection to any of them, although each response is still
    // arriving when the next origin's connection is put aside.
    let mut ups = Vec::new();
    for _ in 0..6 {
        ups.push(split_body_upstream().await);
    }
    let mut builder = TestGateway::builder();
    for (i, (addr, _)) in ups.iter().enumerate() {
        builder = builder.route(&format!("/u{i}/"), "security-director", *addr);
    }
    let gw = builder.start().await;
    let (secret, _) = gw.create_token("feed", &[SD]).await;
    let mut c = Client::connect(&gw).await;
    for _ in 0..2 {
        for i in 0..ups.len() {
            let (status, body) = c.get(&format!("/u{i}/x"), &secret).await;
            assert_eq!((status, body.as_str()), (200, "ok!!"));
        }
    }
    let conns: Vec<usize> = ups
        .iter()
        .map(|(_, n)| n.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert_eq!(conns, vec![1; 6]);
}

/// A keep-alive upstream (hyper) that answers every request with `CHUNKS` chunks of 64 KiB,
/// chunked, yielding to the runtime between chunks so the answer arrives in many reads.
/// Byte `i` of the body is `i % 251`. Returns its address, the connections it accepted, and
/// those that ended.
const CHUNKS: usize = 128;
type Counter = std::sync::Arc<std::sync::atomic::AtomicUsize>;
async fn streaming_upstream() -> (SocketAddr, Counter, Counter) {
    use std::sync::atomic::Ordering;
    /// The next chunk, and whether the scheduler was visited before it.
    struct Chunks(usize, bool);
    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            if self.0 == CHUNKS {
                return std::task::Poll::Ready(None);
            }
            if !self.1 {
                // Each chunk after a trip through the scheduler.
                self.1 = true;
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let start = self.0 * 65_536;
            self.0 += 1;
            self.1 = false;
            let chunk: Vec<u8> = (start..start + 65_536).map(|i| (i % 251) as u8).collect();
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(chunk)))))
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, ended) = (Counter::default(), Counter::default());
    let (c, e) = (conns.clone(), ended.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Chunks(0, false)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, conns, ended)
}

#[tokio::test]
async fn a_long_streamed_answer_arrives_whole_and_its_connection_serves_the_next_request() {
    // The answer arrives in many reads while the client reads it: every byte must arrive, in
    // order, and the upstream connection must then be ready for the client's next request.
    let (addr, conns, _) = streaming_upstream().await;
    let (gw, secret) = gateway_to(addr).await;
    let mut c = Client::connect(&gw).await;
    for round in 0..3 {
        let (status, body) = c.get_bytes("/sd/stream", &secret).await;
        assert_eq!(status, 200);
        assert_eq!(body.len(), CHUNKS * 65_536, "round {round}");
        let wrong = body
            .iter()
            .enumerate()
            .position(|(i, b)| *b != (i % 251) as u8);
        assert_eq!(wrong, None, "round {round}: the body arrived out of order");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_gone_in_the_middle_of_an_answer_leaves_no_broken_connection_behind() {
    let (addr, conns, ended) = streaming_upstream().await;
    let (gw, secret) = gateway_to(addr).await;
    // A raw client that reads the head and a little of the body, then hangs up.
    let mut s = TcpStream::connect(gw.gateway().proxy_addr).await.unwrap();
    let req = format!(
        "GET /sd/stream HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {secret}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 16_384];
    s.read_exact(&mut got).await.unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..16]);
    drop(s);
    // The half-read connection cannot carry another request: it is closed, not parked idle.
    eventually(
        "the half-read upstream connection is closed",
        Duration::from_secs(10),
        || async { (ended.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert_eq!(gw.gateway().upstream_idle_connections(), 0);
    // And the next client is served whole, on a new upstream connection.
    let mut c = Client::connect(&gw).await;
    let (status, body) = c.get_bytes("/sd/stream", &secret).await;
    assert_eq!((status, body.len()), (200, CHUNKS * 65_536));
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
}
