//! The accept loop shared by the proxy and admin listeners: hyper-util's auto builder
//! (HTTP/1.1 keep-alive and h2c on one port, or HTTP/1.1 and h2 by ALPN over TLS), the limits
//! a public listener needs, and graceful shutdown.
//!
//! Limits applied to every connection: a header read timeout (hyper enforces it only when a
//! Timer is set, so one is always set), a bounded request head, HTTP/2 stream and header-list
//! limits, a keep-alive idle timeout, and a cap on concurrent connections (a full gateway
//! stops accepting; the kernel backlog holds the rest). On a TLS listener the handshake runs
//! in the connection's own task (never in the accept loop), bounded by the header read
//! timeout, with the certificate current at that moment (see `tls::ServerTls`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;

use crate::counted::{Activity, Counted};
use crate::tls::{ClientCertSubject, ServerTls};

/// HTTP/2: streams a client may open and reset before the server has accepted them, per
/// connection; one more and the connection is closed with GOAWAY (ENHANCE_YOUR_CALM). This is
/// the rapid-reset bound (CVE-2023-44487). Same as h2's default, set here so that it is
/// visible and cannot silently become unbounded.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// HTTP/2: streams the server itself may reset (refused beyond the concurrency limit, or
/// ended by a protocol error of the client) per connection before GOAWAY (ENHANCE_YOUR_CALM):
/// bounds floods of refused streams and "MadeYouReset" (CVE-2025-8671). hyper's default.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Per-listener connection settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub header_read_timeout: Duration,
    /// Upper bound of hyper's read buffer, i.e. of one HTTP/1 request head.
    pub max_buf_size: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_size: u32,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Connections one client IP may hold at once (0 = no cap); peers in
    /// `per_ip_exempt` (trusted proxies, which carry many clients) have no cap.
    pub max_connections_per_ip: usize,
    pub per_ip_exempt: Vec<ipnet::IpNet>,
    pub shutdown_grace: Duration,
}

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's canonical IP as a header value, built once per connection: it is the
    /// `X-Forwarded-For` of every request from an untrusted peer.
    pub peer_ip_header: HeaderValue,
    /// This connection's place under `max_connections`. A protocol upgrade hands the socket
    /// to a tunnel task that outlives the connection task; the tunnel keeps a clone, so the
    /// slot is free only when the socket really closes.
    pub slot: Arc<ConnSlot>,
}

/// Serves `listener` (plain HTTP) until `shutdown` turns true, then stops accepting and waits
/// up to `shutdown_grace` for open connections to finish their in-flight requests.
///
/// `connect` is called once per connection with what the server knows of it, and returns
/// that connection's request handler (so a listener can keep per-connection state, such as
/// the proxy's upstream connections, without the server knowing of it).
pub async fn serve<C, H, Fut, B>(
    listener: TcpListener,
    opts: ServerOptions,
    connect: C,
    shutdown: watch::Receiver<bool>,
) where
    C: Fn(ConnInfo) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_tls(listener, opts, None, connect, shutdown).await
}

/// [`serve`], over TLS when `tls` is set. With a client CA, the verified client
/// certificate's subject is added to every request of the connection as a
/// [`ClientCertSubject`] extension.
pub async fn serve_tls<C, H, Fut, B>(
    listener: TcpListener,
    opts: ServerOptions,
    tls: Option<Arc<ServerTls>>,
    connect: C,
    mut shutdown: watch::Receiver<bool>,
) where
    C: Fn(ConnInfo) -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own timer starts when it begins to read a head, which is at accept and
        // again right after every response: it would cut keep-alive idle time down to the
        // header timeout, and never times a connection still in the HTTP/1-or-2 sniff. The
        // connection's `Watchdog` times heads (from accept, then from a head's first byte).
        .header_read_timeout(None)
        .max_buf_size(opts.max_buf_size)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.h2_max_concurrent_streams)
        .max_header_list_size(opts.h2_max_header_list_size)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(None);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connect = Arc::new(connect);
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let per_ip = PerIp::default();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let ip = crate::net::canonical_ip(peer.ip());
        let share = if opts.max_connections_per_ip == 0
            || opts.per_ip_exempt.iter().any(|n| n.contains(&ip))
        {
            None
        } else {
            match per_ip.take(ip, opts.max_connections_per_ip) {
                Some(share) => Some(share),
                None => {
                    // Closed at once, unread: one address cannot hold the listener's every
                    // slot and keep other clients out.
                    tracing::debug!(%peer, "refusing a connection: max_connections_per_ip reached");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let connect = connect.clone();
        let watch = Arc::new(ConnWatch::new());
        let io = IdleIo {
            inner: stream,
            activity: watch.clone(),
        };
        // The acceptor is taken now: a reload after this point applies to the next connection.
        let acceptor = tls.as_ref().map(|t| (t.acceptor(), t.client_auth()));
        let handshake_timeout = opts.header_read_timeout;
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let slot = Arc::new(ConnSlot {
            _permit: permit,
            _share: share,
        });
        let conn_watch = watch.clone();
        let task = tokio::spawn(async move {
            // Wakes the watchdog when this task ends, however it ends.
            let _ended = WakeOnDrop(conn_watch.clone());
            let (io, subject) = match acceptor {
                None => (MaybeTls::Plain(io), None),
                Some((acceptor, client_auth)) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Ok(Ok(s)) => {
                            let subject = if client_auth {
                                ClientCertSubject::of(s.get_ref().1)
                            } else {
                                None
                            };
                            (MaybeTls::Tls(Box::new(s)), subject)
                        }
                    }
                }
            };
            let info = ConnInfo {
                peer,
                tls: matches!(io, MaybeTls::Tls(_)),
                peer_ip_header: ip_header(crate::net::canonical_ip(peer.ip())),
                slot,
            };
            let handler = connect(info);
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                if let Some(s) = &subject {
                    req.extensions_mut().insert(s.clone());
                }
                let guard = InFlight::start(&conn_watch, req.version() >= http::Version::HTTP_2);
                // Boxed: hyper moves the service's future into its dispatcher per request, and
                // the pipeline's future is large; moving a pointer is cheaper than copying it
                // (benches/instructions.sh, BENCHMARKS.md).
                let fut = Box::pin(handler(req));
                async move {
                    let resp = fut.await;
                    Ok::<_, Infallible>(resp.map(|inner| Tracked {
                        inner,
                        _guard: guard,
                    }))
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
        // The timeouts run beside the connection, not inside it: polling a timer next to
        // the connection future would cost a timer poll on every wake-up of every request.
        tokio::spawn(watchdog(
            task.abort_handle(),
            watch,
            opts.header_read_timeout,
            opts.idle_timeout,
            peer,
        ));
    }
    drop(listener);
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

/// A connection's place under the listener's limits: one of `max_connections`, and one of
/// its client IP's `max_connections_per_ip`. Released when the last holder drops it (the
/// connection task, or the tunnel of an upgraded connection).
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    _share: Option<IpShare>,
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnSlot")
    }
}

/// Open connections per client IP (only IPs with at least one are present).
#[derive(Clone, Default)]
struct PerIp(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

impl PerIp {
    /// A share for `ip` unless it already holds `cap` connections.
    fn take(&self, ip: std::net::IpAddr, cap: usize) -> Option<IpShare> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpShare {
            ip,
            counts: self.clone(),
        })
    }
}

struct IpShare {
    ip: std::net::IpAddr,
    counts: PerIp,
}

impl Drop for IpShare {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// "No head in progress" in [`ConnWatch::head_started_ms`].
const NO_HEAD: u64 = u64::MAX;

/// What a connection's [`watchdog`] knows of it: kept by its IO (bytes moved, the first byte
/// of a head) and by its requests (received, answered). Atomics only; the request path
/// touches it twice per request and the IO once per read.
pub(crate) struct ConnWatch {
    /// When the connection was accepted.
    start: Instant,
    /// Bumped by every read or write that moved bytes.
    activity: AtomicU64,
    /// Request heads received so far.
    requests: AtomicU64,
    /// Requests whose response is not yet written out (or that were abandoned).
    in_flight: AtomicU64,
    /// An idle HTTP/1 connection waiting for the first byte of its next head.
    awaiting_head: AtomicBool,
    /// Milliseconds after `start` at which the head in progress got its first byte
    /// (HTTP/1, after the first request), or [`NO_HEAD`].
    head_started_ms: AtomicU64,
    /// Milliseconds after `start` at which the connection last had no request in flight.
    idle_since_ms: AtomicU64,
    /// Woken when the connection task ends.
    wake: Notify,
}

impl ConnWatch {
    fn new() -> ConnWatch {
        ConnWatch {
            start: Instant::now(),
            activity: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(false),
            head_started_ms: AtomicU64::new(NO_HEAD),
            idle_since_ms: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Called by the IO for every read that returned bytes.
    fn read_bytes(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
        if self.awaiting_head.load(Ordering::Relaxed)
            && self.awaiting_head.swap(false, Ordering::Relaxed)
        {
            // No wake-up: the watchdog looks within `header_read_timeout` anyway.
            self.head_started_ms.store(self.millis(), Ordering::Relaxed);
        }
    }
}

/// One request of a connection, from its head until its response is written out (it moves
/// into the response body) or it is abandoned. Atomics and one clock read; no wake-up.
struct InFlight {
    watch: Arc<ConnWatch>,
    http2: bool,
}

impl InFlight {
    fn start(watch: &Arc<ConnWatch>, http2: bool) -> InFlight {
        watch.requests.fetch_add(1, Ordering::Relaxed);
        watch.in_flight.fetch_add(1, Ordering::Relaxed);
        watch.awaiting_head.store(false, Ordering::Relaxed);
        watch.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight {
            watch: watch.clone(),
            http2,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = &self.watch;
        if w.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            w.idle_since_ms.store(w.millis(), Ordering::Relaxed);
            // An HTTP/2 connection's frames between requests (PING, SETTINGS) are not a
            // head: it stays idle until a stream begins.
            w.awaiting_head.store(!self.http2, Ordering::Relaxed);
        }
    }
}

struct WakeOnDrop(Arc<ConnWatch>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.wake.notify_one();
    }
}

/// A response body that ends its request's [`InFlight`] when it is dropped (written out,
/// or abandoned with the connection).
pub struct Tracked<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Closes the connection when it overstays (nginx's `client_header_timeout` and
/// `keepalive_timeout`):
/// - the first request's head (TLS handshake and the HTTP/2 preface included) must be whole
///   within `head` of accept, so a connection that sends nothing, or only a preface, is
///   closed then;
/// - between requests a connection may be idle for `idle`; once the next HTTP/1 head has
///   begun (its first byte), it must be whole within `head` of that byte;
/// - while a request is in flight, a connection on which no byte moved for `idle` (a
///   stalled body, a silent stream) is closed.
async fn watchdog(
    conn: AbortHandle,
    w: Arc<ConnWatch>,
    head: Duration,
    idle: Duration,
    peer: SocketAddr,
) {
    let far = |t: Instant, d: Duration| t.checked_add(d).unwrap_or(t + FAR_FUTURE);
    let mut quiet = (w.activity.load(Ordering::Relaxed), Instant::now());
    loop {
        if conn.is_finished() {
            return;
        }
        let (deadline, why) = if w.requests.load(Ordering::Relaxed) == 0 {
            (
                far(w.start, head),
                "no request head within header_read_timeout",
            )
        } else if w.in_flight.load(Ordering::Relaxed) > 0 {
            let a = w.activity.load(Ordering::Relaxed);
            if a != quiet.0 {
                quiet = (a, Instant::now());
            }
            (far(quiet.1, idle), "no byte moved within idle_timeout")
        } else {
            match w.head_started_ms.load(Ordering::Relaxed) {
                NO_HEAD => (
                    far(w.at(w.idle_since_ms.load(Ordering::Relaxed)), idle),
                    "idle for idle_timeout",
                ),
                begun => (
                    far(w.at(begun), head),
                    "request head not whole within header_read_timeout",
                ),
            }
        };
        if Instant::now() >= deadline {
            tracing::debug!(%peer, "closing the connection: {why}");
            conn.abort();
            return;
        }
        // After the first request, look again within `head` at the latest: a head that
        // begins meanwhile is then seen in time to be cut off at its own deadline, without a
        // wake-up per request (the request path only stores atomics).
        let wake = if w.requests.load(Ordering::Relaxed) == 0 {
            deadline
        } else {
            deadline.min(far(Instant::now(), head))
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = w.wake.notified() => {}
        }
        // Whatever changed meanwhile, the next round reads afresh; an unchanged state whose
        // deadline passed closes the connection.
    }
}

/// A bound too large to add to an instant is as good as none (about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// A connection's IO: plain, or TLS over it. (The idle counter sits below TLS, so it counts
/// the bytes on the wire.)
enum MaybeTls {
    Plain(IdleIo),
    Tls(Box<TlsStream<IdleIo>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, data),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, data),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(io) => io.is_write_vectored(),
            MaybeTls::Tls(io) => io.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection's IO, reporting its bytes to the connection's [`ConnWatch`].
type IdleIo = Counted<TcpStream, Arc<ConnWatch>>;

impl Activity for ConnWatch {
    fn read(&self) {
        self.read_bytes();
    }
    fn wrote(&self) {
        // A counter, not a time: the watchdog only needs to know whether anything happened.
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// An IP address as a header value (its text form is always a valid value).
pub fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}
