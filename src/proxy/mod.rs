//! The proxy listener: authenticates each request and forwards it to its route's upstream.
//!
//! [`Proxy::handle`] runs the request pipeline as a short list of named steps, in the order
//! of SPEC §2's status table; each step returns a typed outcome, and every refusal is a
//! [`ProxyError`] mapped to HTTP in one place. The hot path does no store IO, holds no lock
//! across an `.await`, and allocates little: identity header values are prebuilt per token,
//! common refusal bodies are static.

pub mod headers;
pub mod path;
pub mod route;
pub mod upstream;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{AUTHORIZATION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::clock::{SharedClock, Timestamp};
use crate::config::{Config, LifecycleConfig, ProxyConfig};
use crate::error::{ProxyBody, ProxyError};
use crate::limiter::FailureLimiter;
use crate::metrics::Metrics;
use crate::model::Status;
use crate::net;
use crate::policy::{self, Effective};
use crate::server::ConnInfo;
use crate::state::{TokenIndex, TokenState};
use crate::store::Store;
use crate::token::{self, Access};
use crate::usage::UsageRecorder;

use self::headers::{Forwarding, X_FORWARDED_FOR};
use self::route::{normalise_host, RouteTable};

/// Longest wait for the store on the idle-refusal path.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One configured route, ready for the hot path.
#[derive(Debug)]
pub struct Upstream {
    /// Position in the config's route list (metrics slot).
    pub index: usize,
    /// The route's path prefix, used as its name in logs.
    pub label: Box<str>,
    pub access: Access,
    scheme: Scheme,
    authority: Authority,
    /// `Host` sent upstream unless `preserve_host`.
    host_header: HeaderValue,
    /// Index of the route's upstream origin (`scheme://host:port`) in [`upstream::Upstreams`].
    origin: usize,
    /// The upstream URL's path without a trailing slash ("" for none).
    base_path: Box<str>,
    strip_prefix: bool,
    preserve_host: bool,
    forward_authorization: bool,
    /// Rate-limited warnings about this route's upstream failures.
    failures: upstream::FailureLog,
}

impl Upstream {
    /// Says once (at most once a second per route, with the count of those not said) why a
    /// request to this route's upstream got a 502 or 504. Names the upstream by `host:port`
    /// only: no user info, no request header, no credential.
    fn failed(&self, cause: &str, error: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.failures.due() {
            tracing::warn!(
                route = %self.label,
                upstream = %format_args!("{}://{}:{}", self.scheme, self.authority.host(),
                    self.authority.port_u16().unwrap_or(if self.scheme == Scheme::HTTPS { 443 } else { 80 })),
                cause,
                error = %error,
                suppressed,
                "upstream request failed"
            );
        }
    }
}

/// Everything the proxy pipeline reads. Built once at start-up, shared by all connections.
pub struct Proxy {
    cfg: ProxyConfig,
    lifecycle: LifecycleConfig,
    /// Route table → index into `upstreams`.
    routes: RouteTable<usize>,
    upstreams: Box<[Upstream]>,
    index: Arc<TokenIndex>,
    usage: Arc<UsageRecorder>,
    limiter: Arc<FailureLimiter>,
    clock: SharedClock,
    /// Read only on the idle-refusal path (see `recheck_idle`), never on a request that passes.
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Connection-affine upstream connections, and the pooled client (`upstream`).
    upstream: upstream::Upstreams,
}

/// What the access log line reports about a request, filled in as the pipeline goes.
#[derive(Default)]
struct Ctx<'a> {
    client_ip: Option<IpAddr>,
    token: Option<Arc<TokenState>>,
    route: Option<&'a Upstream>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        index: Arc<TokenIndex>,
        usage: Arc<UsageRecorder>,
        limiter: Arc<FailureLimiter>,
        clock: SharedClock,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Proxy> {
        let (upstream, origin_of) =
            upstream::Upstreams::build(&config.routes, config.proxy.upstream_timeout)?;
        let upstreams: Box<[Upstream]> = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let parts = r.upstream.clone().into_parts();
                let authority = parts
                    .authority
                    .expect("config validated the upstream authority");
                let base = r.upstream.path().trim_end_matches('/');
                Upstream {
                    index,
                    label: r.path_prefix.clone().into_boxed_str(),
                    access: r.access,
                    scheme: parts.scheme.unwrap_or(Scheme::HTTP),
                    host_header: HeaderValue::from_str(authority.as_str())
                        .expect("an authority is a valid header value"),
                    authority,
                    origin: origin_of[index],
                    base_path: base.into(),
                    strip_prefix: r.strip_prefix,
                    preserve_host: r.preserve_host,
                    forward_authorization: r.forward_authorization,
                    failures: upstream::FailureLog::default(),
                }
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.host.clone(), r.path_prefix.clone(), i))
            .collect();
        Ok(Proxy {
            cfg: config.proxy.clone(),
            lifecycle: config.lifecycle,
            routes: RouteTable::new(routes),
            upstreams,
            index,
            usage,
            limiter,
            clock,
            store,
            metrics,
            upstream,
        })
    }

    /// Serves one request: runs the pipeline, turns a refusal into its response, and writes
    /// the access log line.
    pub async fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let version = req.version();
        let mut ctx = Ctx::default();
        let resp = match self.pipeline(&conn, req, &mut ctx).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.refusal(e.code());
                let close = e.closes_connection() && version < Version::HTTP_2;
                let mut r = e.into_response();
                if close {
                    r.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
        };
        let latency = started.elapsed();
        self.metrics
            .request(ctx.route.map(|u| u.index), resp.status().as_u16(), latency);
        if self.cfg.access_log {
            let route = ctx.route.map_or("-", |u| &*u.label);
            let token = ctx.token.as_deref().map_or("-", |t| &*t.name);
            tracing::info!(
                target: "tokengate::access",
                method = %method,
                route,
                status = resp.status().as_u16(),
                token,
                client_ip = %ctx.client_ip.unwrap_or(conn.peer.ip()),
                latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            );
        }
        resp
    }

    async fn pipeline<'a>(
        &'a self,
        conn: &ConnInfo,
        mut req: Request<Incoming>,
        ctx: &mut Ctx<'a>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // 1. A request we can reason about at all.
        check_form(&req, self.cfg.max_header_bytes)?;
        let host = request_host(&req)?;
        // The client IP comes from the TCP peer, or from X-Forwarded-For of a trusted peer.
        let peer = net::canonical_ip(conn.peer.ip());
        let client_ip = net::client_ip(
            peer,
            &self.cfg.trusted_proxies,
            req.headers()
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes()),
        );
        ctx.client_ip = Some(client_ip);
        // 2. Brute-force limit: no lookup at all for an IP over it.
        if let Some(retry_after_secs) = self.limiter.check(client_ip) {
            return Err(ProxyError::TooManyFailures { retry_after_secs });
        }
        // 3-5. The bearer token, and the token it names.
        let presented = bearer(req.headers())?;
        let token = self.authenticate(presented, client_ip)?;
        ctx.token = Some(token.clone());
        let now = self.clock.now();
        let mut status = self.status_at(&token, now);
        if token.status == Status::Active && status != Effective::Active {
            // About to refuse a token as idle: another instance sharing the store may have
            // used it since this one last looked. One store read, on this refusal path only.
            // Boxed: a cold path, kept out of the size of every request's future.
            status = Box::pin(self.recheck_idle(&token, now)).await?;
        }
        if status == Effective::Deleted {
            // Idle past delete_after: gone, even before the sweep removes it.
            self.limiter.record_failure(client_ip);
            return Err(ProxyError::InvalidToken);
        }
        // 7. The path the router and the upstream will both see.
        let path = path::normalise_cow(req.uri().path())
            .map_err(|_| ProxyError::InvalidRequest("the path cannot be normalised safely"))?;
        // 8. Status, 9. IP block (counted in the IP's record).
        if status != Effective::Active {
            return Err(ProxyError::TokenInactive);
        }
        if policy::blocked_by(&token.blocks, client_ip).is_some() {
            self.usage.record_denied(token.id, client_ip);
            return Err(ProxyError::IpBlocked);
        }
        // 10. Route, 11. access.
        let m = self
            .routes
            .find(host.as_deref(), &path)
            .ok_or(ProxyError::NoRoute)?;
        let route = self.upstreams.get(*m.route).ok_or(ProxyError::NoRoute)?;
        ctx.route = Some(route);
        if !token.access.contains(route.access) {
            return Err(ProxyError::AccessDenied);
        }
        // Every check passed: this is a use, whatever the upstream answers.
        token.touch(now);
        self.usage.record_use(token.id, client_ip, now);
        let upstream_path = if route.strip_prefix { m.rest } else { &path };
        let target = upstream_target(route, upstream_path, req.uri().query())?;

        // 12-13. Forward: an HTTP/1 client's requests on its connection's own upstream
        // connection; HTTP/2 clients and upgrades through the pooled client.
        let client_version = req.version();
        let http1 = client_version < Version::HTTP_2;
        // Upgrade is an HTTP/1.1 mechanism: an HTTP/1.0 request's is ignored (RFC 9110 §7.8).
        let upgrade = if client_version == Version::HTTP_11 {
            headers::upgrade_request(req.method(), req.headers())
        } else {
            None
        };
        let affine = http1 && upgrade.is_none();
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if !http1 {
            // HTTP/2 may split `cookie` into crumbs; HTTP/1 wants one line (RFC 9113 §8.2.3).
            headers::join_cookies(&mut parts.headers);
        }
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.clone());
        let identity = token.identity();
        headers::prepare_request(
            &mut parts.headers,
            &Forwarding {
                // Untrusted peers (the common case) reuse the value built once per connection.
                client_ip: if client_ip == peer {
                    conn.peer_ip_header.clone()
                } else {
                    crate::server::ip_header(client_ip)
                },
                peer_trusted: self.cfg.trusted_proxies.iter().any(|n| n.contains(&peer)),
                original_host,
                scheme: if conn.tls { "https" } else { "http" },
                host: (!route.preserve_host).then_some(&route.host_header),
                keep_authorization: route.forward_authorization,
                token_name: &identity.name,
                token_id: &identity.id,
                token_access: &crate::state::access_header(token.access),
            },
        );
        if affine {
            parts.uri = Uri::from(target);
            if !parts.headers.contains_key(HOST) {
                // An HTTP/1.0 request without Host on a preserve_host route.
                parts.headers.insert(HOST, route.host_header.clone());
            }
        } else {
            parts.uri = absolute_uri(route, target)?;
        }
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, crate::body::ClientBody::new(body));
        let sent = Instant::now();
        let limit = self.cfg.upstream_timeout;
        let answer = if affine {
            let send = self
                .upstream
                .send(&conn.upstream, route.origin, upstream_req);
            conn.upstream.within(sent, limit, send).await
        } else {
            let send = self.upstream.send_pooled(route.index, upstream_req);
            tokio::time::timeout(limit, send).await.ok()
        };
        let mut resp = match answer {
            None => {
                route.failed("timeout", &"no response head within upstream_timeout");
                return Err(ProxyError::GatewayTimeout);
            }
            Some(Err(e)) => {
                if crate::body::client_body_failed(&*e) {
                    // The client's own body broke its framing (a bad chunk size): its fault,
                    // and no response head was sent yet.
                    tracing::debug!(error = %e, route = %route.label, "malformed request body");
                    return Err(ProxyError::Malformed("the request body is malformed"));
                }
                route.failed(upstream::cause(&*e), &upstream::Chain(&*e));
                return Err(ProxyError::BadGateway);
            }
            Some(Ok(r)) => r,
        };
        self.metrics.upstream(route.index, sent.elapsed());
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let resp_upgrade = if switching {
            // A 101 answers only the upgrade the client asked for.
            let agreed = resp.headers().get(http::header::UPGRADE).filter(|v| {
                upgrade
                    .as_ref()
                    .is_some_and(|u| v.as_bytes().eq_ignore_ascii_case(u.as_bytes()))
            });
            let Some(agreed) = agreed.cloned() else {
                route.failed(
                    "protocol",
                    &"101 Switching Protocols to a request that asked no such upgrade",
                );
                return Err(ProxyError::BadGateway);
            };
            Some(agreed)
        } else {
            None
        };
        if let (true, Some(client_side)) = (switching, client_upgrade) {
            let upstream_side = hyper::upgrade::on(&mut resp);
            let watch = TunnelWatch {
                index: self.index.clone(),
                clock: self.clock.clone(),
                lifecycle: self.lifecycle,
                token_id: token.id,
                client_ip,
                access: route.access,
                idle: self.cfg.idle_timeout,
                _slot: conn.slot.clone(),
            };
            tokio::spawn(tunnel(client_side, upstream_side, watch));
        }
        let (mut rparts, rbody) = resp.into_parts();
        if rparts.headers.contains_key(http::header::TRANSFER_ENCODING) {
            // hyper decoded the body by its Transfer-Encoding; a Content-Length beside it is
            // stale and would truncate the re-framed body (RFC 9112 §6.3).
            rparts.headers.remove(http::header::CONTENT_LENGTH);
        }
        headers::strip_hop_by_hop(&mut rparts.headers, resp_upgrade);
        // The client is answered in its own protocol, whatever the upstream spoke (an
        // HTTP/1.0 upstream must not turn a keep-alive client's connection into one-shot).
        rparts.version = client_version;
        Ok(Response::from_parts(rparts, Either::Right(rbody)))
    }

    /// Idle upstream connections kept for reuse, over all origins.
    pub fn upstream_idle_connections(&self) -> usize {
        self.upstream.idle_counts().iter().sum()
    }

    fn status_at(&self, token: &TokenState, now: Timestamp) -> Effective {
        policy::status_at(token.standing(), now, &self.lifecycle)
    }

    /// Raises the token's last use to the store's `last_used_at` (uses recorded by other
    /// instances), then decides again. With the embedded store a failed read keeps memory's
    /// answer (the refusal); with a shared store that cannot be reached the gateway cannot
    /// tell, so it answers 503 `store_unavailable`.
    async fn recheck_idle(
        &self,
        token: &TokenState,
        now: Timestamp,
    ) -> Result<Effective, ProxyError> {
        let shared = self.store.health();
        if shared.is_some_and(|h| !h.is_up()) {
            return Err(ProxyError::StoreUnavailable);
        }
        // At most one store read per token per second: a client hammering with an idle
        // token must not turn into a store query per request.
        let last = token.rechecked_at.load(Ordering::Relaxed);
        if now.0 - last < 1000
            || token
                .rechecked_at
                .compare_exchange(last, now.0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(self.status_at(token, now));
        }
        let read = tokio::time::timeout(RECHECK_TIMEOUT, self.store.token_by_id(token.id)).await;
        match read {
            Ok(Ok(Some(t))) => {
                if let Some(used) = t.token.last_used_at {
                    token.touch(used);
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "store read for an idle re-check failed");
                if shared.is_some() {
                    return Err(ProxyError::StoreUnavailable);
                }
            }
            Err(_) => {
                tracing::warn!("store read for an idle re-check timed out");
                if shared.is_some() {
                    return Err(ProxyError::StoreUnavailable);
                }
            }
        }
        Ok(self.status_at(token, now))
    }

    /// Steps 5-6: checks the secret's form and looks its hash up in memory. A malformed or
    /// unknown secret counts as a failed authentication of `client_ip`. With a shared store
    /// that is unreachable (two atomic loads, no await): an unknown secret is 503 (another
    /// instance may have created it), and a known token is served only while the outage is
    /// younger than `store.outage_grace`.
    fn authenticate(
        &self,
        presented: &[u8],
        client_ip: IpAddr,
    ) -> Result<Arc<TokenState>, ProxyError> {
        let Ok(hash) = token::parse_bearer(presented) else {
            self.limiter.record_failure(client_ip);
            return Err(ProxyError::InvalidToken);
        };
        let found = self.index.get(&hash);
        self.metrics.lookup(found.is_some());
        let down = self.store.health().filter(|h| !h.is_up());
        match (found, down) {
            (Some(t), None) => Ok(t),
            (Some(t), Some(h)) if h.serves_known(self.clock.now()) => Ok(t),
            (_, Some(_)) => Err(ProxyError::StoreUnavailable),
            (None, None) => {
                self.limiter.record_failure(client_ip);
                Err(ProxyError::InvalidToken)
            }
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection (WebSocket).
///
/// A tunnel lives outside hyper's connection (and so outside its limits): it closes itself
/// when no byte crossed it for `proxy.idle_timeout`, and as soon as its token stops being
/// usable from its client IP (deactivated, deleted, regenerated, idle, IP blocked, access
/// withdrawn), checked every second.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    watch: TunnelWatch,
) {
    let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
        return;
    };
    let activity = Arc::new(AtomicU64::new(0));
    let mut c = Counted {
        inner: TokioIo::new(c),
        activity: activity.clone(),
    };
    let mut u = Counted {
        inner: TokioIo::new(u),
        activity: activity.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
    tokio::pin!(copy);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut quiet_since) = (0, Instant::now());
    loop {
        tokio::select! {
            _ = &mut copy => return,
            _ = tick.tick() => {
                if !watch.still_allowed() {
                    tracing::debug!(token_id = %watch.token_id, "closing a tunnel: its token is no longer usable");
                    return;
                }
                let now = activity.load(Ordering::Relaxed);
                if now != seen {
                    (seen, quiet_since) = (now, Instant::now());
                } else if quiet_since.elapsed() >= watch.idle {
                    tracing::debug!(token_id = %watch.token_id, "closing an idle tunnel");
                    return;
                }
            }
        }
    }
}

/// What a tunnel re-checks about its token while it is open.
struct TunnelWatch {
    index: Arc<TokenIndex>,
    clock: SharedClock,
    lifecycle: LifecycleConfig,
    token_id: crate::model::TokenId,
    client_ip: IpAddr,
    access: Access,
    idle: Duration,
    /// The client connection's place under `proxy.max_connections`, held while the tunnel
    /// is open (the connection task that took it ends at the upgrade).
    _slot: Arc<crate::server::ConnSlot>,
}

impl TunnelWatch {
    fn still_allowed(&self) -> bool {
        let Some(t) = self.index.by_id(self.token_id) else {
            return false;
        };
        policy::status_at(t.standing(), self.clock.now(), &self.lifecycle) == Effective::Active
            && policy::blocked_by(&t.blocks, self.client_ip).is_none()
            && t.access.contains(self.access)
    }
}

/// Counts bytes moved through an upgraded connection (for the tunnel's idle timeout).
struct Counted<T> {
    inner: T,
    activity: Arc<AtomicU64>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Step 1: refuses request shapes the gateway never forwards, and head blocks over the limit.
fn check_form(req: &Request<Incoming>, max_header_bytes: usize) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::InvalidRequest("CONNECT is not supported"));
    }
    if req.method() == Method::TRACE {
        // TRACE echoes the request, credentials and gateway headers included, and the
        // gateway cannot honour Max-Forwards for an upstream chain it does not see.
        return Err(ProxyError::NotImplemented("TRACE is not supported"));
    }
    if req.version() < Version::HTTP_2 {
        check_transfer_coding(req.headers())?;
    }
    if !req.uri().path().starts_with('/') {
        return Err(ProxyError::InvalidRequest(
            "the request target must be an absolute path",
        ));
    }
    // Request line + each "name: value\r\n"; hyper bounds the raw head at a little more, so
    // this check decides the limit and answers with the JSON body.
    let mut size = req.method().as_str().len()
        + req.uri().path().len()
        + req.uri().query().map_or(0, |q| q.len() + 1)
        + 12;
    for (k, v) in req.headers() {
        size += k.as_str().len() + v.len() + 4;
        if size > max_header_bytes {
            return Err(ProxyError::HeadersTooLarge);
        }
    }
    if size > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// An HTTP/1 request's `Transfer-Encoding` must be `chunked` alone (hyper has refused the
/// shapes it cannot frame): any other coding would reach the upstream silently dropped.
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    for v in headers.get_all(http::header::TRANSFER_ENCODING) {
        let other = v
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"));
        if other {
            return Err(ProxyError::NotImplemented(
                "only the chunked transfer coding is supported",
            ));
        }
    }
    Ok(())
}

/// The request's host for routing: `Host`, or the URI authority (`:authority` in HTTP/2);
/// both present and different → 400. HTTP/1.1 requires `Host` (RFC 9112 §3.2).
fn request_host(req: &Request<Incoming>) -> Result<Option<Cow<'_, str>>, ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::InvalidRequest("more than one Host header"));
    }
    if header.is_none() && req.version() == Version::HTTP_11 {
        return Err(ProxyError::Malformed(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    let from_header = match header {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(normalise_host)
                .ok_or(ProxyError::InvalidRequest("invalid Host header"))?,
        ),
    };
    let from_uri = match req.uri().authority() {
        None => None,
        Some(a) => Some(
            normalise_host(a.as_str()).ok_or(ProxyError::InvalidRequest("invalid authority"))?,
        ),
    };
    match (from_header, from_uri) {
        (Some(h), Some(a)) if h != a => Err(ProxyError::InvalidRequest(
            "Host disagrees with the request authority",
        )),
        (h, a) => Ok(a.or(h)),
    }
}

/// Steps 3-4: the single `Authorization: Bearer <token>` value (public for the fuzz target).
pub fn bearer(headers: &HeaderMap) -> Result<&[u8], ProxyError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(ProxyError::MissingToken);
    };
    if values.next().is_some() {
        return Err(ProxyError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let v = value.as_bytes();
    let (scheme, rest) = v.split_at(v.len().min(6));
    if !scheme.eq_ignore_ascii_case(b"bearer")
        || !rest.first().is_some_and(|&b| b == b' ' || b == b'\t')
    {
        return Err(ProxyError::MissingToken);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(ProxyError::MissingToken);
    }
    Ok(token)
}

/// The upstream request target: the route's base path, `path`, and the query.
fn upstream_target(
    route: &Upstream,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    let mut pq = String::with_capacity(
        route.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&route.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::from_maybe_shared(pq)
        .map_err(|_| ProxyError::InvalidRequest("the request target cannot be forwarded"))
}

/// `target` on the route's upstream, as an absolute URI (for the pooled client).
fn absolute_uri(route: &Upstream, pq: PathAndQuery) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(route.scheme.clone());
    parts.authority = Some(route.authority.clone());
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts)
        .map_err(|_| ProxyError::InvalidRequest("the request target cannot be forwarded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(v: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for s in v {
            m.append(AUTHORIZATION, HeaderValue::from_str(s).unwrap());
        }
        m
    }

    #[test]
    fn bearer_scheme_rules() {
        assert_eq!(bearer(&hm(&[])), Err(ProxyError::MissingToken));
        assert_eq!(bearer(&hm(&["Bearer"])), Err(ProxyError::MissingToken));
        assert_eq!(bearer(&hm(&["Bearer   "])), Err(ProxyError::MissingToken));
        assert_eq!(bearer(&hm(&["Basic abc"])), Err(ProxyError::MissingToken));
        assert_eq!(bearer(&hm(&["Bearerabc"])), Err(ProxyError::MissingToken));
        assert_eq!(bearer(&hm(&["bEaReR abc"])), Ok(&b"abc"[..]));
        assert_eq!(bearer(&hm(&["Bearer  abc "])), Ok(&b"abc"[..]));
        assert!(matches!(
            bearer(&hm(&["Bearer a", "Bearer b"])),
            Err(ProxyError::InvalidRequest(_))
        ));
    }
}
