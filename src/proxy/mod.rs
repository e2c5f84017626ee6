//! The proxy listener: authenticates each request and forwards it to its route's upstream.
//!
//! [`Proxy::handle`] runs a request through two named phases, as Pingora names its own:
//! `authorize` (`authorize.rs`: SPEC §2 rows 1-11 in order, from the request's head and memory
//! only) and `forward` (`forward.rs`: rewrite, send, rows 12-13, re-frame the answer); an
//! upgraded connection becomes a `tunnel` (`tunnel.rs`). Every refusal is a [`ProxyError`]
//! mapped to HTTP in one place. The hot path does no store IO, holds no lock
//! across an `.await`, and allocates little: identity header values are prebuilt per token,
//! common refusal bodies are static.

pub(crate) mod authorize;
mod forward;
mod forward_auth;
pub mod headers;
pub mod route;
mod tunnel;
pub mod upstream;

/// The path normalisation routing relies on (`crate::uri::path`, re-exported for tools).
pub use crate::uri::path;

/// Rows 3-4's `Authorization` check (public for the fuzz target).
pub use self::authorize::bearer;
/// The forward-auth listener (SPEC §9), on the same decision as the proxy listener.
pub use self::forward_auth::ForwardAuth;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::access::Access;
use crate::clock::SharedClock;
use crate::config::{Config, LifecycleConfig, OnBackendError, ProxyConfig};
use crate::error::ProxyBody;
use crate::limiter::FailureLimiter;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::revoke::{self, Revoker};
use crate::server::ConnInfo;
use crate::shared::Shared;
use crate::state::{TokenIndex, TokenState};
use crate::store::Store;
use crate::usage::UsageRecorder;

use self::route::RouteTable;

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
    strip_prefix: bool,
    forward_authorization: bool,
    /// Where the proxy listener sends the route's requests; `None` on a route served only by
    /// the forward-auth listener (the proxy listener answers it 404 `no_route`).
    target: Option<Target>,
    /// Rate-limited warnings about this route's upstream failures.
    failures: upstream::FailureLog,
}

/// A route's upstream, as the proxy listener forwards to it.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// `Host` sent upstream unless `preserve_host`.
    host_header: HeaderValue,
    /// Index of the route's upstream origin (`scheme://host:port`) in [`upstream::Upstreams`].
    origin: usize,
    /// The upstream URL's path without a trailing slash ("" for none).
    base_path: Box<str>,
    preserve_host: bool,
}

impl Upstream {
    /// Says once (at most once a second per route, with the count of those not said) why a
    /// request to this route's upstream got a 502 or 504. Names the upstream by `host:port`
    /// only: no user info, no request header, no credential.
    fn failed(&self, cause: &str, error: &dyn std::fmt::Display) {
        let Some(t) = &self.target else { return };
        if let Some(suppressed) = self.failures.due() {
            tracing::warn!(
                route = %self.label,
                upstream = %format_args!("{}://{}:{}", t.scheme, t.authority.host(),
                    t.authority.port_u16().unwrap_or(if t.scheme == Scheme::HTTPS { 443 } else { 80 })),
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
    rate_limiter: Arc<RateLimiter>,
    /// `rate_limit.on_backend_error` and `rate_limit.headers` (the rest is the limiter's).
    on_backend_error: OnBackendError,
    rate_headers: bool,
    /// Connection-affine upstream connections, and the pooled client (`upstream`).
    upstream: upstream::Upstreams,
    /// `POST /_tokengate/revoke` (SPEC §10): here unless `proxy.revocation = false`, and always
    /// on the forward-auth listener.
    revoker: Arc<Revoker>,
}

/// One client connection of the proxy listener: what the server knows of it, and the
/// upstream connections its requests travel on.
pub struct ProxyConn {
    pub info: ConnInfo,
    pub upstream: upstream::Affinity,
    /// The connection's last `Host`, already canonical (see [`authorize::KnownHost`]).
    pub host: authorize::KnownHost,
}

impl Ctx<'_> {
    /// Nothing learned yet, in `span`.
    fn new(span: &tracing::Span) -> Self {
        Ctx {
            span: span.clone(),
            client_ip: None,
            token: None,
            route: None,
            previous_secret: false,
        }
    }

    /// Adds what was learned to the request's span (when it is enabled at all).
    fn note(&self, field: &str, value: &dyn std::fmt::Display) {
        if !self.span.is_disabled() {
            self.span.record(field, tracing::field::display(value));
        }
    }
}

impl ProxyConn {
    pub fn new(info: ConnInfo) -> ProxyConn {
        ProxyConn {
            info,
            upstream: upstream::Affinity::default(),
            host: authorize::KnownHost::default(),
        }
    }
}

/// What the access log line reports about a request, filled in as the phases go.
pub(crate) struct Ctx<'a> {
    /// The request's span (see [`Proxy::handle`]).
    span: tracing::Span,
    client_ip: Option<IpAddr>,
    token: Option<Arc<TokenState>>,
    route: Option<&'a Upstream>,
    /// Authenticated with the token's previous secret (a rotation grace).
    previous_secret: bool,
}

impl Proxy {
    pub fn new(config: &Config, shared: &Shared) -> anyhow::Result<Proxy> {
        let (upstream, origin_of) =
            upstream::Upstreams::build(&config.routes, config.proxy.upstream_timeout)?;
        let upstreams: Box<[Upstream]> = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| Upstream {
                index,
                label: r.path_prefix.clone().into_boxed_str(),
                access: r.access,
                strip_prefix: r.strip_prefix,
                forward_authorization: r.forward_authorization,
                target: r.upstream.as_ref().map(|url| {
                    let parts = url.clone().into_parts();
                    let authority = parts
                        .authority
                        .expect("config validated the upstream authority");
                    Target {
                        scheme: parts.scheme.unwrap_or(Scheme::HTTP),
                        host_header: HeaderValue::from_str(authority.as_str())
                            .expect("an authority is a valid header value"),
                        authority,
                        origin: origin_of[index],
                        base_path: url.path().trim_end_matches('/').into(),
                        preserve_host: r.preserve_host,
                    }
                }),
                failures: upstream::FailureLog::default(),
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
            index: shared.index.clone(),
            usage: shared.usage.clone(),
            limiter: shared.limiter.clone(),
            clock: shared.clock.clone(),
            store: shared.store.clone(),
            metrics: shared.metrics.clone(),
            rate_limiter: shared.rate_limiter.clone(),
            on_backend_error: config.rate_limit.on_backend_error,
            rate_headers: config.rate_limit.headers,
            upstream,
            revoker: Arc::new(Revoker::new(
                shared.store.clone(),
                shared.index.clone(),
                shared.clock.clone(),
                config.lifecycle,
                config.proxy.revoke_limit,
            )),
        })
    }

    /// Serves one request: runs the pipeline, turns a refusal into its response, and writes
    /// the access log line.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ProxyConn>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        if self.cfg.revocation && req.uri().path() == revoke::PATH {
            // Before any check of SPEC §2: anyone may report a secret (§10).
            let peer = crate::net::canonical_ip(conn.info.peer.ip());
            let client_ip = crate::net::client_ip(
                peer,
                &self.cfg.trusted_proxies,
                req.headers()
                    .get_all(&headers::X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.as_bytes()),
            );
            return self.revocation(client_ip, req, started).await;
        }
        let method = req.method().clone();
        let version = req.version();
        // Every line logged while the request is served carries its identity (method, then
        // client IP and route as they are learned; never a credential, a path or a query).
        // A debug span: at the default level it is disabled and costs a level check.
        let span = tracing::debug_span!(
            "request",
            method = %method,
            client_ip = tracing::field::Empty,
            route = tracing::field::Empty,
        );
        let mut ctx = Ctx::new(&span);
        let outcome = async {
            match self.authorize(&conn, &req, &mut ctx).await {
                Ok(auth) => self.forward(&conn, req, auth).await,
                Err(e) => Err(e),
            }
        }
        .instrument(span)
        .await;
        let resp = match outcome {
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
        self.access_line(
            "proxy",
            &method,
            &ctx,
            resp.status().as_u16(),
            conn.info.peer.ip(),
            latency,
        );
        resp
    }

    /// The access log line of a proxied request, a check or a revocation (`listener`): never
    /// a credential, a path or a query. `fallback_ip` when no client IP was derived.
    fn access_line(
        &self,
        listener: &'static str,
        method: &http::Method,
        ctx: &Ctx<'_>,
        status: u16,
        fallback_ip: IpAddr,
        latency: Duration,
    ) {
        if !self.cfg.access_log {
            return;
        }
        let route = match (ctx.route, listener) {
            (Some(u), _) => &*u.label,
            (None, "revocation") => revoke::PATH,
            (None, _) => "-",
        };
        let token = ctx.token.as_deref().map_or("-", |t| &*t.name);
        tracing::info!(
            target: "tokengate::access",
            listener,
            method = %method,
            route,
            status,
            token,
            // Only on requests made with a replaced secret (nothing is recorded for None).
            previous_secret = ctx.previous_secret.then_some(true),
            client_ip = %ctx.client_ip.unwrap_or(crate::net::canonical_ip(fallback_ip)),
            latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// A revocation request (either listener): answered, counted, and logged without a token.
    pub(crate) async fn revocation(
        &self,
        client_ip: IpAddr,
        req: Request<Incoming>,
        started: Instant,
    ) -> Response<ProxyBody> {
        let method = req.method().clone();
        let resp = self.revoker.handle(client_ip, req).await;
        let latency = started.elapsed();
        self.metrics.request(None, resp.status().as_u16(), latency);
        let mut ctx = Ctx::new(&tracing::Span::none());
        ctx.client_ip = Some(client_ip);
        self.access_line(
            "revocation",
            &method,
            &ctx,
            resp.status().as_u16(),
            client_ip,
            latency,
        );
        resp
    }

    /// Idle upstream connections kept for reuse, over all origins.
    pub fn upstream_idle_connections(&self) -> usize {
        self.upstream.idle_counts().iter().sum()
    }
}
