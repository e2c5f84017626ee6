//! Forwarding over upstream HTTP/1.1 connections that follow the client's connection.
//!
//! Each downstream HTTP/1 connection keeps the upstream connection its requests went out on
//! (its [`Affinity`]), one per upstream origin it used. A keep-alive client's requests all
//! travel on one upstream connection, with no pool lookup, no lock shared with other
//! connections and no task spawned per request (hyper-util's pooled client spawns one per
//! HTTP/1 request to put the connection back once the response body is read). When the
//! downstream connection closes, its upstream connections go to their origin's idle list,
//! where other downstream connections take them: a client that opens a connection per
//! request does not cost an upstream connect (or TLS handshake) each.
//!
//! HTTP/2 clients (many requests in flight on one connection) and protocol upgrades use the
//! pooled client instead ([`Upstreams::send_pooled`]).
//!
//! A client connection that uses more than [`MAX_AFFINE`] origins keeps the most recently
//! used ones; the least recently used goes back to its origin's idle list.
//!
//! Bounds: one upstream connection per origin per downstream connection, at most
//! [`MAX_AFFINE`] origins per downstream connection; at most [`MAX_IDLE`] idle connections
//! per origin, none older than [`IDLE_TIMEOUT`]. A connection the upstream closed ends its
//! task and is skipped. A request that was not written because its reused connection closed
//! under it is sent on the next connection; a request that was written is never replayed.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::Sleep;
use tower_service::Service;

use crate::body::ClientBody;
use crate::config::RouteConfig;
use crate::tls::{UpstreamClients, UpstreamConnector};

/// Upstream origins one downstream connection keeps a connection to (beyond that, requests
/// to further origins take and return idle connections per request).
pub const MAX_AFFINE: usize = 4;
/// Idle connections kept per origin.
pub const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One upstream `scheme://host:port` with one TLS setting: its connector and its idle
/// connections. (Two routes to one `host:port` with different TLS settings are two origins:
/// a connection made with one route's certificates never serves the other's requests.)
pub struct Origin {
    /// `scheme://authority/`, what the connector dials.
    uri: Uri,
    connector: UpstreamConnector,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    since: Instant,
    sender: http1::SendRequest<ClientBody>,
}

/// A connection in a downstream connection's hands.
struct Held {
    origin: Arc<Origin>,
    sender: http1::SendRequest<ClientBody>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Origin {
    /// The most recently idled connection that is still open.
    fn checkout(self: &Arc<Self>) -> Option<Held> {
        let mut idle = lock(&self.idle);
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(Held {
                    origin: self.clone(),
                    sender: i.sender,
                });
            }
        }
        None
    }

    fn release(&self, sender: http1::SendRequest<ClientBody>) {
        if !sender.is_ready() {
            // Closed, or a response body still in flight: dropping the sender lets hyper
            // finish or close that connection.
            return;
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        // The list is in release order, oldest first: drop the expired ones from its front
        // (one clock read, not one per entry: a client connecting per request releases a
        // connection per request). Closed ones are skipped by `checkout`, and removed here
        // only when the list is full, and by the reaper.
        let expired = idle.partition_point(|i| now.duration_since(i.since) >= IDLE_TIMEOUT);
        idle.drain(..expired);
        if idle.len() >= MAX_IDLE {
            Self::trim(&mut idle);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { since: now, sender });
        }
    }

    /// Drops closed and expired connections (the oldest are at the front).
    fn trim(idle: &mut Vec<Idle>) {
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
    }

    async fn connect(self: &Arc<Self>) -> Result<Held, BoxError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.uri.clone()).await?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Held {
            origin: self.clone(),
            sender,
        })
    }
}

/// The upstream connections one downstream connection holds (see the module docs). Created
/// empty with the connection; dropping it hands its connections to their origins' idle lists.
#[derive(Default)]
pub struct Affinity {
    held: Mutex<Vec<Held>>,
    /// The `upstream_timeout` timer of this connection's requests (see [`Affinity::within`]).
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity")
            .field("held", &lock(&self.held).len())
            .finish()
    }
}

impl Affinity {
    /// Runs `fut` for at most `limit` from `started`; `None` if the time ran out first.
    ///
    /// For the requests of one HTTP/1 connection, which run one after another: instead of a
    /// timer registered and removed per request (a `tokio::time::timeout`), the connection
    /// keeps one armed timer. Each request's deadline is later than those before it, so a
    /// timer armed by an earlier request can only fire early: the request then moves it to
    /// its own deadline. With steady traffic the timer moves about once per `limit`, not once
    /// per request; a firing with no request in flight wakes the connection once, harmlessly.
    pub async fn within<F: Future>(
        &self,
        started: std::time::Instant,
        limit: Duration,
        fut: F,
    ) -> Option<F::Output> {
        let start = tokio::time::Instant::from_std(started);
        // A limit too large to add is as good as none (about 30 years).
        let deadline = start
            .checked_add(limit)
            .unwrap_or_else(|| start + Duration::from_secs(30 * 365 * 86_400));
        let mut fut = std::pin::pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let mut timer = lock(&self.timer);
            let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            loop {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
                sleep.as_mut().reset(deadline);
            }
        })
        .await
    }

    fn take(&self, origin: &Arc<Origin>) -> Option<Held> {
        let mut held = lock(&self.held);
        let i = held.iter().position(|h| Arc::ptr_eq(&h.origin, origin))?;
        Some(held.remove(i))
    }

    /// Keeps the connection just used (its response body may still be arriving). When the
    /// connection already holds [`MAX_AFFINE`], the least recently used one goes to its
    /// origin's idle list instead: its last response finished before this request began (a
    /// client connection's HTTP/1 requests run one after another), so it is ready for reuse.
    fn keep(&self, h: Held) {
        let mut held = lock(&self.held);
        let evicted = (held.len() >= MAX_AFFINE).then(|| held.remove(0));
        held.push(h);
        drop(held);
        if let Some(old) = evicted {
            old.origin.release(old.sender);
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        for h in std::mem::take(&mut *lock(&self.held)) {
            h.origin.release(h.sender);
        }
    }
}

/// The proxy's ways to an upstream: connection-affine HTTP/1.1 per origin, and the pooled
/// client for HTTP/2 clients and upgrades.
pub struct Upstreams {
    pooled: UpstreamClients,
    origins: Box<[Arc<Origin>]>,
}

impl Upstreams {
    /// Builds the clients for `routes`; also returns each route's origin index.
    pub fn build(
        routes: &[RouteConfig],
        connect_timeout: Duration,
    ) -> anyhow::Result<(Upstreams, Vec<usize>)> {
        let pooled = UpstreamClients::build(routes, connect_timeout)?;
        let mut keys: Vec<(Scheme, Authority, usize)> = Vec::new();
        let mut origins = Vec::new();
        let mut of_route = Vec::with_capacity(routes.len());
        for (route, r) in routes.iter().enumerate() {
            let Some(url) = &r.upstream else {
                // A forward-auth-only route: never forwarded, no origin.
                of_route.push(usize::MAX);
                continue;
            };
            let setting = pooled.setting_of(route);
            let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
            let authority = url
                .authority()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("an upstream URL without host"))?;
            let i = match keys
                .iter()
                .position(|k| k.0 == scheme && k.1 == authority && k.2 == setting)
            {
                Some(i) => i,
                None => {
                    let uri = Uri::builder()
                        .scheme(scheme.clone())
                        .authority(authority.clone())
                        .path_and_query("/")
                        .build()?;
                    origins.push(Arc::new(Origin {
                        connector: pooled.connector(route).clone(),
                        uri,
                        idle: Mutex::new(Vec::new()),
                    }));
                    keys.push((scheme, authority, setting));
                    keys.len() - 1
                }
            };
            of_route.push(i);
        }
        let upstreams = Upstreams {
            pooled,
            origins: origins.into_boxed_slice(),
        };
        upstreams.spawn_reaper();
        Ok((upstreams, of_route))
    }

    /// Closes expired idle connections every 30 s even when no request comes (outside a
    /// runtime, e.g. in unit tests, only requests trim the lists).
    fn spawn_reaper(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Vec<Weak<Origin>> = self.origins.iter().map(Arc::downgrade).collect();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut alive = false;
                for o in weak.iter().filter_map(Weak::upgrade) {
                    alive = true;
                    Origin::trim(&mut lock(&o.idle));
                }
                if !alive {
                    return;
                }
            }
        });
    }

    /// Sends `req` (origin-form URI) to origin `origin` on `affinity`'s connection to it, an
    /// idle one, or a new one.
    pub async fn send(
        &self,
        affinity: &Affinity,
        origin: usize,
        mut req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let origin = &self.origins[origin];
        while let Some(mut held) = affinity.take(origin).or_else(|| origin.checkout()) {
            if held.sender.ready().await.is_err() {
                continue; // closed: try the next one
            }
            match held.sender.try_send_request(req).await {
                Ok(resp) => {
                    affinity.keep(held);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed first. Safe to send elsewhere.
                    Some(r) => req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: a new connection's future holds a whole TLS connection while it handshakes,
        // and would otherwise make every request's future (which hyper moves) that much bigger.
        Box::pin(Self::send_fresh(affinity, origin, req)).await
    }

    async fn send_fresh(
        affinity: &Affinity,
        origin: &Arc<Origin>,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut held = origin.connect().await?;
        let resp = held.sender.send_request(req).await?;
        affinity.keep(held);
        Ok(resp)
    }

    /// Sends `req` (absolute URI) with the pooled client of route `route`'s TLS setting.
    pub async fn send_pooled(
        &self,
        route: usize,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        Ok(self.pooled.request(route, req).await?)
    }

    /// Idle connections per origin (for tests).
    pub fn idle_counts(&self) -> Vec<usize> {
        self.origins.iter().map(|o| lock(&o.idle).len()).collect()
    }
}

/// Rate-limits the warning a route logs when its upstream fails: at most one a second, the
/// next one saying how many were not logged meanwhile.
#[derive(Debug, Default)]
pub struct FailureLog {
    /// Milliseconds since [`log_epoch`] of the last warning (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

fn log_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl FailureLog {
    /// `Some(failures not logged since the last warning)` when a warning is due now.
    pub fn due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(log_epoch().elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last_ms.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000
            || self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

/// A short name for why an upstream request failed: `connection refused`, `connection
/// reset`, `tls`, `connect timeout`, `closed before answering`, `malformed response`, or
/// `error`.
pub fn cause(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut next = Some(e);
    let mut found = "error";
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "connection refused",
                ConnectionReset | ConnectionAborted | BrokenPipe => return "connection reset",
                TimedOut => return "connect timeout",
                _ => {}
            }
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return "tls";
            }
        }
        if err.is::<rustls::Error>() {
            return "tls";
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                found = "closed before answering";
            } else if h.is_parse() {
                found = "malformed response";
            } else if h.is_timeout() {
                found = "timeout";
            }
        }
        next = err.source();
    }
    found
}

/// An error and its sources, `: `-joined (hyper's and hyper-util's errors name the cause
/// only in their sources).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}
