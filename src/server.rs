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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio_rustls::server::TlsStream;

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
    pub slot: Arc<OwnedSemaphorePermit>,
    /// The upstream connections this connection's requests are forwarded on (proxy only).
    pub upstream: Arc<crate::proxy::upstream::Affinity>,
}

/// Serves `listener` (plain HTTP) until `shutdown` turns true, then stops accepting and waits
/// up to `shutdown_grace` for open connections to finish their in-flight requests.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    opts: ServerOptions,
    handler: F,
    shutdown: watch::Receiver<bool>,
) where
    F: Fn(ConnInfo, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_tls(listener, opts, None, handler, shutdown).await
}

/// [`serve`], over TLS when `tls` is set. With a client CA, the verified client
/// certificate's subject is added to every request of the connection as a
/// [`ClientCertSubject`] extension.
pub async fn serve_tls<F, Fut, B>(
    listener: TcpListener,
    opts: ServerOptions,
    tls: Option<Arc<ServerTls>>,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(ConnInfo, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
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
    let permits = Arc::new(Semaphore::new(opts.max_connections));
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let activity = Arc::new(AtomicI64::new(0));
        let io = IdleIo {
            inner: stream,
            activity: activity.clone(),
        };
        // The acceptor is taken now: a reload after this point applies to the next connection.
        let acceptor = tls.as_ref().map(|t| (t.acceptor(), t.client_auth()));
        let handshake_timeout = opts.header_read_timeout;
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let idle = opts.idle_timeout;
        let slot = Arc::new(permit);
        let task = tokio::spawn(async move {
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
                upstream: Arc::default(),
            };
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                if let Some(s) = &subject {
                    req.extensions_mut().insert(s.clone());
                }
                let fut = handler(info.clone(), req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
        // The idle timeout runs beside the connection, not inside it: polling a timer next to
        // the connection future would cost a timer poll on every wake-up of every request.
        tokio::spawn(idle_watch(task.abort_handle(), activity, idle, peer));
    }
    drop(listener);
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

/// Resolves once the connection has seen no byte in either direction for `idle`.
/// A request waiting on a slow upstream is not idle traffic-wise, but upstream_timeout is
/// normally far below idle_timeout; a long-lived stream with no bytes for `idle` is closed.
async fn idle_watch(conn: AbortHandle, activity: Arc<AtomicI64>, idle: Duration, peer: SocketAddr) {
    let mut seen = -1;
    loop {
        tokio::time::sleep(idle).await;
        if conn.is_finished() {
            return;
        }
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            tracing::debug!(%peer, "closing idle connection");
            conn.abort();
            return;
        }
        seen = now;
    }
}

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

/// Wraps a connection's IO to count activity for the idle timeout.
struct IdleIo {
    inner: TcpStream,
    activity: Arc<AtomicI64>,
}

impl IdleIo {
    fn bump(&self) {
        // A counter, not a time: idle_watch only needs to know whether anything happened.
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.bump();
        }
        r
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.bump();
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.bump();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An IP address as a header value (its text form is always a valid value).
pub fn ip_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}
