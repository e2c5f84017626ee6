//! The second phase of a proxied request: the headers rewritten for the upstream (SPEC §2
//! "Headers"), the request sent on the client connection's own upstream connection or the
//! pooled client (rows 12-13), and the answer re-framed for the client.

use std::time::Instant;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::authorize::Authorized;
use super::headers::{self, Forwarding};
use super::tunnel::{tunnel, TunnelWatch};
use super::{upstream, Proxy, ProxyConn, Target};
use crate::error::{ProxyBody, ProxyError};
use crate::error::{RATELIMIT, RATELIMIT_POLICY};
use crate::ratelimit;

impl Proxy {
    /// The second phase: rewrites the authorized request for its upstream, sends it
    /// (SPEC §2 rows 12-13), and turns the answer into the client's response.
    pub(crate) async fn forward(
        &self,
        conn: &ProxyConn,
        mut req: Request<Incoming>,
        auth: Authorized<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Authorized {
            client_ip,
            peer,
            ref token,
            route,
            rate,
            ..
        } = auth;
        // `decide` gave the proxy listener only routes with an upstream.
        let route = route.ok_or(ProxyError::NoRoute)?;
        let to = route.target.as_ref().ok_or(ProxyError::NoRoute)?;
        let upstream_path = auth.upstream_path(req.uri().path());
        let target = upstream_target(to, upstream_path, req.uri().query())?;

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
        let identity = token.identity(self.index.access_types());
        headers::prepare_request(
            &mut parts.headers,
            &Forwarding {
                // Untrusted peers (the common case) reuse the value built once per connection.
                client_ip: if client_ip == peer {
                    conn.info.peer_ip_header.clone()
                } else {
                    crate::server::ip_header(client_ip)
                },
                peer_trusted: self.cfg.trusted_proxies.iter().any(|n| n.contains(&peer)),
                original_host,
                scheme: if conn.info.tls { "https" } else { "http" },
                host: (!to.preserve_host).then_some(&to.host_header),
                keep_authorization: route.forward_authorization,
                token_name: &identity.name,
                token_id: &identity.id,
                token_access: &identity.access,
            },
        );
        if affine {
            parts.uri = Uri::from(target);
            if !parts.headers.contains_key(HOST) {
                // An HTTP/1.0 request without Host on a preserve_host route.
                parts.headers.insert(HOST, to.host_header.clone());
            }
        } else {
            parts.uri = absolute_uri(to, target)?;
        }
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, crate::body::ClientBody::new(body));
        let sent = Instant::now();
        let limit = self.cfg.upstream_timeout;
        let answer = if affine {
            let send = self.upstream.send(&conn.upstream, to.origin, upstream_req);
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
                // The secret it was opened with: the current one, or the previous in its grace.
                secret: match token.previous() {
                    Some(p) if auth.previous_secret => p.hash,
                    _ => token.hash,
                },
                idle: self.cfg.idle_timeout,
                _slot: conn.info.slot.clone(),
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
        if let (true, Some((limit, remaining, reset))) = (self.rate_headers, rate) {
            // The gateway's own fields: an upstream's are replaced, never passed beside them.
            rparts
                .headers
                .insert(RATELIMIT_POLICY, ratelimit::policy_header(limit));
            rparts.headers.insert(
                RATELIMIT,
                ratelimit::ratelimit_header(limit, remaining, reset),
            );
        }
        Ok(Response::from_parts(rparts, Either::Right(rbody)))
    }
}

/// The upstream request target: the route's base path, `path`, and the query.
fn upstream_target(
    route: &Target,
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
fn absolute_uri(route: &Target, pq: PathAndQuery) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(route.scheme.clone());
    parts.authority = Some(route.authority.clone());
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts)
        .map_err(|_| ProxyError::InvalidRequest("the request target cannot be forwarded"))
}
