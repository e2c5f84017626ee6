//! The first phase of a proxied request: SPEC §2 rows 1-11, in that order, from memory.
//! [`Proxy::authorize`] answers with an [`Authorized`] request or the [`ProxyError`] of the
//! first check that failed; it reads only the request's head (never its body), so the same
//! decision serves the proxy listener and a forward-auth check.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, Method, Request, Version};

use super::headers::X_FORWARDED_FOR;
use super::{Ctx, Proxy, Upstream, RECHECK_TIMEOUT};
use crate::access::Access;
use crate::clock::Timestamp;
use crate::config::OnBackendError;
use crate::error::ProxyError;
use crate::model::{Denial, InactiveReason, Refusal, Status};
use crate::net;
use crate::policy::{self, Effective};
use crate::ratelimit::{self, RateLimit, Verdict};
use crate::state::TokenState;
use crate::token;
use crate::uri::host::normalise_host;
use crate::uri::path;

/// A request every check let through (its use is already recorded).
pub(crate) struct Authorized<'a> {
    pub(crate) client_ip: IpAddr,
    /// The TCP peer (canonical).
    pub(crate) peer: IpAddr,
    pub(crate) token: Arc<TokenState>,
    /// The route matched; `None` for a forward-auth check that named its access type.
    pub(crate) route: Option<&'a Upstream>,
    /// It presented the token's previous secret (in a rotation grace), not the current one.
    pub(crate) previous_secret: bool,
    /// The normalised path when normalising changed it (else the request's own is).
    normalised: Option<String>,
    /// Bytes of the path that `strip_prefix` removes.
    strip: usize,
    /// The token's rate limit, the uses left and the seconds until its bucket is full, for
    /// the RateLimit headers of the forwarded response (`rate_limit.headers`).
    pub(crate) rate: Option<(RateLimit, u32, u64)>,
}

impl Authorized<'_> {
    /// The path the upstream receives: what routing saw, minus the prefix when stripped.
    pub(crate) fn upstream_path<'p>(&'p self, request_path: &'p str) -> &'p str {
        Self::rest(
            self.normalised.as_deref().unwrap_or(request_path),
            self.strip,
        )
    }

    fn rest(path: &str, strip: usize) -> &str {
        match path.get(strip..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }
}

/// The request a decision is about, once row 1 has passed and the client IP is known: the
/// proxy listener's own request, or the original request a forward-auth caller describes in
/// the headers it sets (SPEC §9).
pub(crate) struct Subject<'r> {
    /// The canonical host (`uri::host`), if the request named one.
    pub(crate) host: Option<Cow<'r, str>>,
    /// The raw path (no query), not yet normalised.
    pub(crate) path: &'r str,
    pub(crate) client_ip: IpAddr,
    /// Where the `Authorization` header is read from.
    pub(crate) headers: &'r HeaderMap,
    pub(crate) want: Want,
    /// Refuse a path that normalising would change (but for the case of escapes): for a
    /// forward-auth check, whose caller forwards the path as the client sent it, so an API
    /// that resolves `/sd//../feeds/x` differently must never receive a path the check
    /// decided on in another form.
    pub(crate) strict_path: bool,
}

/// What the request must be entitled to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want {
    /// Whatever the matching `[[routes]]` entry requires (rows 10-11). `forwarding`: the
    /// proxy listener, for which a route without `upstream` does not exist (404).
    Route { forwarding: bool },
    /// An access type named by the check itself (`/auth/{TYPE}`): no route is matched.
    Access(Access),
}

impl Proxy {
    /// SPEC §2 rows 1-11a for the proxy listener: the request's form (row 1) and client IP,
    /// then [`Proxy::decide`]. Needs only the request's head.
    pub(crate) async fn authorize<'a, B>(
        &'a self,
        conn: &super::ProxyConn,
        req: &Request<B>,
        ctx: &mut Ctx<'a>,
    ) -> Result<Authorized<'a>, ProxyError> {
        // Row 1. A request we can reason about at all.
        check_form(req, self.cfg.max_header_bytes)?;
        let host = request_host(req, Some(&conn.host))?;
        // The client IP comes from the TCP peer, or from X-Forwarded-For of a trusted peer.
        let peer = net::canonical_ip(conn.info.peer.ip());
        let client_ip = net::client_ip(
            peer,
            &self.cfg.trusted_proxies,
            req.headers()
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(|v| v.as_bytes()),
        );
        let subject = Subject {
            host,
            path: req.uri().path(),
            client_ip,
            headers: req.headers(),
            want: Want::Route { forwarding: true },
            // The proxy listener forwards exactly the path it decided on.
            strict_path: false,
        };
        self.decide(peer, subject, ctx).await
    }

    /// SPEC §2 rows 2-11a, in order, from memory only (but for the idle re-check of a shared
    /// store), and records the use when every check passed. Both listeners decide here, so a
    /// forward-auth check and a proxied request are refused for exactly the same reasons.
    pub(crate) async fn decide<'a>(
        &'a self,
        peer: IpAddr,
        subject: Subject<'_>,
        ctx: &mut Ctx<'a>,
    ) -> Result<Authorized<'a>, ProxyError> {
        let Subject {
            host,
            path,
            client_ip,
            headers,
            want,
            strict_path,
        } = subject;
        ctx.client_ip = Some(client_ip);
        ctx.note("client_ip", &client_ip);
        // Row 2. Brute-force limit: no lookup at all for an IP over it.
        if let Some(retry_after_secs) = self.limiter.check(client_ip) {
            return Err(ProxyError::TooManyFailures { retry_after_secs });
        }
        // Rows 3-6. The bearer token, and the token it names.
        let presented = bearer(headers)?;
        // One clock read for the whole decision.
        let now = self.clock.now();
        let (token, previous) = self.authenticate(presented, client_ip, now)?;
        ctx.previous_secret = previous;
        ctx.token = Some(token.clone());
        let mut status = self.status_at(&token, now);
        if token.status == Status::Active && status == Effective::Inactive(InactiveReason::Idle) {
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
        // Row 7. The path the router and the upstream will both see.
        let raw = path;
        let path = path::normalise_cow(raw)
            .map_err(|_| ProxyError::InvalidRequest("the path cannot be normalised safely"))?;
        if strict_path && !path.eq_ignore_ascii_case(raw) {
            return Err(ProxyError::InvalidRequest(
                "the path is not in normal form (dot segments, '//' or escaped unreserved characters): \
                 the proxy in front forwards it as sent",
            ));
        }
        // From here on every refusal is of a known token: counted by reason in its hourly
        // history (SPEC §12), the same dashmap update a use costs.
        let refuse = |why: Refusal, e: ProxyError| self.refused(&token, client_ip, now, why, e);
        // Row 7a. Past its expires_at: 401, and not a failed authentication.
        if status == Effective::Inactive(InactiveReason::Expired) {
            return refuse(Refusal::TokenExpired, ProxyError::TokenExpired);
        }
        // Row 8. Status, row 9. IP block (counted in the IP's record).
        if status != Effective::Active {
            return refuse(Refusal::TokenInactive, ProxyError::TokenInactive);
        }
        if policy::blocked_by(&token.blocks, client_ip).is_some() {
            self.usage
                .record_denied(token.id, client_ip, Denial::Blocked, now);
            return Err(ProxyError::IpBlocked);
        }
        // Row 9a. The token's allow-list (after blocks: a block always wins).
        if !token.allows(client_ip) {
            self.usage
                .record_denied(token.id, client_ip, Denial::NotAllowed, now);
            return Err(ProxyError::IpNotAllowed);
        }
        // Row 10. Route, row 11. access.
        let (route, required, strip) = match want {
            Want::Route { forwarding } => {
                let found = self.routes.find(host.as_deref(), &path);
                let Some((m, route)) = found.and_then(|m| Some((m, self.upstreams.get(*m.route)?)))
                else {
                    return refuse(Refusal::NoRoute, ProxyError::NoRoute);
                };
                ctx.route = Some(route);
                ctx.note("route", &route.label);
                if forwarding && route.target.is_none() {
                    // A forward-auth-only route does not exist on the proxy listener.
                    return refuse(Refusal::NoRoute, ProxyError::NoRoute);
                }
                // `strip_prefix` removes the prefix's directory (the prefix without its
                // trailing slash); what is left is the rest, or `/` for the directory itself.
                let strip = if route.strip_prefix {
                    m.prefix.len() - 1
                } else {
                    0
                };
                debug_assert_eq!(
                    Authorized::rest(&path, strip),
                    if route.strip_prefix { m.rest } else { &path }
                );
                (Some(route), route.access, strip)
            }
            Want::Access(access) => (None, access, 0),
        };
        if !token.access.contains(required) {
            return refuse(Refusal::AccessDenied, ProxyError::AccessDenied);
        }
        // Row 11a. The token's rate limit: only a request every check above let through
        // draws on it, and a refused one is not a use.
        let rate = match token.rate_limit() {
            Some(limit) => match self.check_rate(&token, limit, now).await {
                Err(e @ ProxyError::RateLimited { .. }) => {
                    return self.refused(&token, client_ip, now, Refusal::RateLimited, e)
                }
                r => r?,
            },
            None => None,
        };
        // Every check passed: this is a use, whatever the upstream answers.
        token.touch(now);
        self.usage.record_use(token.id, client_ip, now);
        let normalised = match path {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        Ok(Authorized {
            client_ip,
            peer,
            token,
            route,
            previous_secret: previous,
            normalised,
            strip,
            rate,
        })
    }

    /// Counts a refusal of a known token in its hourly history (SPEC §12) and returns it.
    fn refused<T>(
        &self,
        token: &TokenState,
        client_ip: IpAddr,
        now: Timestamp,
        why: Refusal,
        e: ProxyError,
    ) -> Result<T, ProxyError> {
        self.usage.record_refused(token.id, client_ip, why, now);
        Err(e)
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

    /// Rows 5-6: checks the secret's form and looks its hash up in memory. A malformed or
    /// unknown secret counts as a failed authentication of `client_ip`. With a shared store
    /// that is unreachable (two atomic loads, no await): an unknown secret is 503 (another
    /// instance may have created it), and a known token is served only while the outage is
    /// younger than `store.outage_grace`. Also says whether the secret was the token's
    /// previous one (in its rotation grace at `now`).
    fn authenticate(
        &self,
        presented: &[u8],
        client_ip: IpAddr,
        now: Timestamp,
    ) -> Result<(Arc<TokenState>, bool), ProxyError> {
        let Ok(hash) = token::parse_bearer(presented) else {
            self.limiter.record_failure(client_ip);
            return Err(ProxyError::InvalidToken);
        };
        let mut found = self.index.get(&hash);
        let mut previous = false;
        if found.is_none() {
            // A secret replaced by a regenerate with a grace works until the grace ends;
            // after it, it is as unknown as any other.
            found = self
                .index
                .get_previous(&hash)
                .filter(|t| t.previous().is_some_and(|p| now < p.until));
            if found.is_some() {
                previous = true;
                self.metrics.previous_secret_use();
            }
        }
        self.metrics.lookup(found.is_some());
        let down = self.store.health().filter(|h| !h.is_up());
        match (found, down) {
            (Some(t), None) => Ok((t, previous)),
            (Some(t), Some(h)) if h.serves_known(now) => Ok((t, previous)),
            (_, Some(_)) => Err(ProxyError::StoreUnavailable),
            (None, None) => {
                self.limiter.record_failure(client_ip);
                Err(ProxyError::InvalidToken)
            }
        }
    }

    /// Row 11a: one check of the token's budget (local: no await; Redis: one round trip).
    async fn check_rate(
        &self,
        token: &TokenState,
        limit: RateLimit,
        now: Timestamp,
    ) -> Result<Option<(RateLimit, u32, u64)>, ProxyError> {
        match self.rate_limiter.check(token.id.uuid(), limit, now).await {
            Verdict::Admitted {
                remaining,
                reset_ms,
            } => Ok(Some((limit, remaining, ratelimit::reset_secs(reset_ms)))),
            Verdict::Limited { retry_after_ms, .. } => Err(ProxyError::RateLimited {
                retry_after_secs: ratelimit::retry_after_secs(retry_after_ms),
                limit,
            }),
            // Counted by the limiter (`tokengate_rate_limit_backend_errors_total`).
            Verdict::Unavailable => match self.on_backend_error {
                OnBackendError::Allow => Ok(None),
                OnBackendError::Deny => Err(ProxyError::RateLimitUnavailable),
            },
        }
    }
}

/// Row 1: refuses request shapes the gateway never forwards, and head blocks over the limit.
pub(crate) fn check_form<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), ProxyError> {
    check_method(req.method())?;
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

/// Row 1's method rules (for a forward-auth check, applied to the original method too).
pub(crate) fn check_method(method: &Method) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::InvalidRequest("CONNECT is not supported"));
    }
    if method == Method::TRACE {
        // TRACE echoes the request, credentials and gateway headers included, and the
        // gateway cannot honour Max-Forwards for an upstream chain it does not see.
        return Err(ProxyError::NotImplemented("TRACE is not supported"));
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

/// The last `Host` value of a client connection whose routing host is a part of it as sent
/// (`api.example:8080` → `api.example`: no case or IPv6 form to change). An HTTP/1 client
/// sends the same value with every request, and a request whose `Host` is byte for byte that
/// value skips its validation (`normalise_host`, about 2 % of a proxied request's
/// instructions) and takes the same part. Only a value that passed is kept, and
/// `normalise_host` depends on nothing but its input, so the answer is the one it would give.
#[derive(Debug, Default)]
pub struct KnownHost(std::sync::Mutex<(String, usize)>);

impl KnownHost {
    /// The length of the routing host within `raw`, when `raw` is the known value.
    fn host_len(&self, raw: &[u8]) -> Option<usize> {
        let known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!known.0.is_empty() && known.0.as_bytes() == raw).then_some(known.1)
    }

    fn remember(&self, raw: &str, host_len: usize) {
        let mut known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.0.clear();
        known.0.push_str(raw);
        known.1 = host_len;
    }
}

/// The request's host for routing: `Host`, or the URI authority (`:authority` in HTTP/2);
/// both present and different → 400. HTTP/1.1 requires `Host` (RFC 9112 §3.2). `known`: the
/// connection's [`KnownHost`], if it keeps one.
pub(crate) fn request_host<'r, B>(
    req: &'r Request<B>,
    known: Option<&KnownHost>,
) -> Result<Option<Cow<'r, str>>, ProxyError> {
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
    let authority = req.uri().authority();
    let cached = match (header, known) {
        (Some(v), Some(k)) => k.host_len(v.as_bytes()),
        _ => None,
    };
    let from_header = match (header, cached) {
        (None, _) => None,
        // The connection's previous Host, which passed: ASCII, so `from_utf8` cannot fail, and
        // the routing host is the same leading part of it.
        (Some(v), Some(n)) => std::str::from_utf8(&v.as_bytes()[..n])
            .ok()
            .map(Cow::Borrowed),
        (Some(v), None) => {
            let raw = v
                .to_str()
                .map_err(|_| ProxyError::InvalidRequest("invalid Host header"))?;
            let host =
                normalise_host(raw).ok_or(ProxyError::InvalidRequest("invalid Host header"))?;
            if let (Some(k), Cow::Borrowed(h)) = (known, &host) {
                // A part of the value as sent (the name without its port or final dot).
                if std::ptr::eq(h.as_ptr(), raw.as_ptr()) {
                    k.remember(raw, h.len());
                }
            }
            Some(host)
        }
    };
    let from_uri = match authority {
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

/// Rows 3-4: the single `Authorization: Bearer <token>` value (public for the fuzz target).
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
    token::bearer_credentials(value.as_bytes()).ok_or(ProxyError::MissingToken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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

    fn with_host(host: &str) -> Request<()> {
        Request::get("/x").header(HOST, host).body(()).unwrap()
    }

    #[test]
    fn a_connections_known_host_gives_the_answer_the_check_gives() {
        // One connection's requests, in order: repeats, changes, invalid and uncacheable
        // values; with the cache each answer must be the one computed without it.
        let known = KnownHost::default();
        let hosts = [
            "api.example:8080",
            "api.example:8080",
            "api.example.",
            "api.example.",
            "API.example",
            "API.example",
            "[0:0::1]:443",
            "[0:0::1]:443",
            "api..example",
            "api..example",
            "api.example:8080",
            "api.example:99999",
            "api.example:99999",
            "api.example:8080",
        ];
        for h in hosts {
            let req = with_host(h);
            let fresh = request_host(&req, None);
            let cached = request_host(&req, Some(&known));
            assert_eq!(cached, fresh, "{h}");
        }
        // A value that passed is known; a value that failed never is.
        assert_eq!(known.host_len(b"api.example:8080"), Some(11));
        assert_eq!(known.host_len(b"api.example:99999"), None);
        assert_eq!(known.host_len(b"api..example"), None);
    }

    #[test]
    fn a_known_host_still_meets_the_authority_check() {
        let known = KnownHost::default();
        request_host(&with_host("a.example"), Some(&known)).unwrap();
        // Absolute form naming another host: the disagreement is still seen.
        let req = Request::get("http://b.example/x")
            .header(HOST, "a.example")
            .body(())
            .unwrap();
        assert!(matches!(
            request_host(&req, Some(&known)),
            Err(ProxyError::InvalidRequest(_))
        ));
    }
}
