//! The forward-auth listener (SPEC §9): answers *authorization checks* for the nginx
//! (`auth_request`), Traefik (`ForwardAuth`), Caddy (`forward_auth`) or Envoy (`ext_authz`,
//! HTTP service) a user already runs. It never forwards anything.
//!
//! A check describes the original request, and [`ForwardAuth::handle`] turns that description
//! into a [`Subject`] for [`Proxy::decide`], the very decision the proxy listener makes (rows
//! 2-11a, with the same token index, limiter, rate limits and usage records). The description
//! comes only from what the calling proxy sets itself:
//!
//! - `/auth` and `/auth/{TYPE}`: method `X-Forwarded-Method` (else the check's own), URI
//!   `X-Forwarded-Uri`, host `X-Forwarded-Host`, client `X-Forwarded-For`. Headers a proxy may
//!   pass through from the client (`X-Original-URI`, ...) are never read, nor is the check's
//!   own query string (Caddy copies the client's onto it) or body.
//! - `{envoy_prefix}/...`: Envoy sends the original method, path and query on the check itself
//!   (after its `path_prefix`), the original host as `Host`/`:authority`, and the client in
//!   `X-Forwarded-For`.
//!
//! Only peers inside `forward_auth.callers` are answered (403 `untrusted_caller`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use ipnet::IpNet;
use tracing::Instrument;

use super::authorize::{check_form, check_method, request_host, Subject, Want};
use super::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_TOKENGATE_ACCESS, X_TOKENGATE_TOKEN, X_TOKENGATE_TOKEN_ID,
};
use super::{Ctx, Proxy};
use crate::config::Config;
use crate::error::{ProxyBody, ProxyError, RATELIMIT, RATELIMIT_POLICY};
use crate::net;
use crate::ratelimit;
use crate::revoke;
use crate::server::ConnInfo;
use crate::uri::host::normalise_host;

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// Envoy removes the headers named here from the original request before it goes upstream.
static X_ENVOY_AUTH_HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");
/// On a refusal, its `error` code: the proxies in front drop the check's body, and a config
/// can build its own answer from this (the README's nginx one does).
static X_TOKENGATE_ERROR: HeaderName = HeaderName::from_static("x-tokengate-error");

/// The forward-auth listener's state: the proxy's pipeline plus who may ask.
pub struct ForwardAuth {
    proxy: Arc<Proxy>,
    callers: Vec<IpNet>,
    trusted_hops: Vec<IpNet>,
    envoy_prefix: Box<str>,
}

/// Which of the three shapes a check has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/auth` (route matching) or `/auth/{TYPE}`.
    Auth,
    /// `{envoy_prefix}/...`.
    Envoy,
}

impl ForwardAuth {
    pub fn new(config: &Config, proxy: Arc<Proxy>) -> ForwardAuth {
        let f = &config.forward_auth;
        ForwardAuth {
            proxy,
            callers: f.callers.clone(),
            trusted_hops: f.trusted_hops.clone(),
            envoy_prefix: f.envoy_prefix.clone().into_boxed_str(),
        }
    }

    /// Answers one check: 200 with the identity headers, or the refusal the proxy listener
    /// would answer for the original request. Writes the access log line.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let peer = net::canonical_ip(conn.peer.ip());
        if req.uri().path() == revoke::PATH && self.callers.iter().any(|n| n.contains(&peer)) {
            // A revocation a trusted caller routes here (SPEC §10); its client is the one the
            // caller names (required, as on a check: without it every reporter would share the
            // caller's limit). An untrusted caller is refused below.
            return match forwarded_client(req.headers(), &self.trusted_hops) {
                Ok(client_ip) => self.proxy.revocation(client_ip, req, started).await,
                Err(e) => e.into_response(),
            };
        }
        let span = tracing::debug_span!(
            "check",
            client_ip = tracing::field::Empty,
            route = tracing::field::Empty,
        );
        let mut ctx = Ctx::new(&span);
        let mut method = None;
        let outcome = self
            .check(&conn, &req, &mut ctx, &mut method)
            .instrument(span)
            .await;
        let proxy = &self.proxy;
        let resp = match outcome {
            Ok(r) => {
                proxy.metrics.check(None, started.elapsed());
                r
            }
            Err(e) => {
                let code = e.code();
                proxy.metrics.refusal(code);
                proxy.metrics.check(Some(code), started.elapsed());
                let mut r = e.into_response();
                r.headers_mut()
                    .insert(&X_TOKENGATE_ERROR, HeaderValue::from_static(code));
                r
            }
        };
        proxy.access_line(
            "forward_auth",
            method.as_ref().unwrap_or(req.method()),
            &ctx,
            resp.status().as_u16(),
            conn.peer.ip(),
            started.elapsed(),
        );
        resp
    }

    async fn check<'a>(
        &'a self,
        conn: &ConnInfo,
        req: &Request<Incoming>,
        ctx: &mut Ctx<'a>,
        method_out: &mut Option<Method>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let peer = net::canonical_ip(conn.peer.ip());
        if !self.callers.iter().any(|n| n.contains(&peer)) {
            return Err(ProxyError::UntrustedCaller);
        }
        let path = req.uri().path();
        // Which check this is; any other path is 404 (before reading anything else).
        let (kind, want, original) = if path == "/auth" {
            (Kind::Auth, Want::Route { forwarding: false }, None)
        } else if let Some(name) = path.strip_prefix("/auth/") {
            let access = self
                .proxy
                .index
                .access_types()
                .bit(name)
                .ok_or(ProxyError::NoRoute)?;
            (Kind::Auth, Want::Access(access), None)
        } else if let Some(rest) = envoy_rest(path, &self.envoy_prefix) {
            (Kind::Envoy, Want::Route { forwarding: false }, Some(rest))
        } else {
            return Err(ProxyError::NoRoute);
        };
        // Row 1 for the check itself (its head's size and form).
        check_form(req, self.proxy.cfg.max_header_bytes)?;
        let headers = req.headers();
        let (host, target_path) = match kind {
            Kind::Envoy => {
                // Envoy's check is the original request (after the prefix), so its method
                // (checked by `check_form` above) and host are the check's own.
                (request_host(req, None)?, original.unwrap_or("/"))
            }
            Kind::Auth => {
                let method = match one(
                    headers,
                    &X_FORWARDED_METHOD,
                    "more than one X-Forwarded-Method",
                )? {
                    None => req.method().clone(),
                    Some(v) => Method::from_bytes(v.as_bytes()).map_err(|_| {
                        ProxyError::InvalidRequest("X-Forwarded-Method is not a method")
                    })?,
                };
                check_method(&method)?;
                *method_out = Some(method);
                let uri = one(headers, &X_FORWARDED_URI, "more than one X-Forwarded-Uri")?
                    .ok_or(ProxyError::InvalidRequest("a check needs X-Forwarded-Uri"))?;
                let host = match one(headers, &X_FORWARDED_HOST, "more than one X-Forwarded-Host")?
                {
                    None => None,
                    Some(v) => Some(
                        v.to_str()
                            .ok()
                            .and_then(normalise_host)
                            .ok_or(ProxyError::InvalidRequest("invalid X-Forwarded-Host"))?,
                    ),
                };
                (host, original_path(uri)?)
            }
        };
        let client_ip = forwarded_client(headers, &self.trusted_hops)?;
        let subject = Subject {
            host,
            path: target_path,
            client_ip,
            headers,
            want,
            strict_path: true,
        };
        let auth = self.proxy.decide(peer, subject, ctx).await?;
        // Allowed: an empty 200 with the identity headers for the proxy to pass upstream.
        let identity = auth.token.identity(self.proxy.index.access_types());
        let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(&X_TOKENGATE_TOKEN, identity.name.clone());
        h.insert(&X_TOKENGATE_TOKEN_ID, identity.id.clone());
        h.insert(&X_TOKENGATE_ACCESS, identity.access.clone());
        if kind == Kind::Envoy {
            // A route's own setting, else `proxy.forward_authorization`.
            let keep = auth
                .route
                .map_or(self.proxy.cfg.forward_authorization, |r| {
                    r.forward_authorization
                });
            if !keep {
                h.insert(
                    &X_ENVOY_AUTH_HEADERS_TO_REMOVE,
                    HeaderValue::from_static("authorization"),
                );
            }
        }
        if let (true, Some((limit, remaining, reset))) = (self.proxy.rate_headers, auth.rate) {
            h.insert(RATELIMIT_POLICY, ratelimit::policy_header(limit));
            h.insert(
                RATELIMIT,
                ratelimit::ratelimit_header(limit, remaining, reset),
            );
        }
        Ok(resp)
    }
}

/// The original path on Envoy's path: what follows `prefix` at a segment boundary (`/` for
/// the prefix itself), or `None` when the path is not under it.
fn envoy_rest<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// The single value of a header the calling proxy sets (two are a 400: one of them came
/// from somewhere else).
fn one<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    twice: &'static str,
) -> Result<Option<&'h HeaderValue>, ProxyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ProxyError::InvalidRequest(twice));
    }
    Ok(first)
}

/// The path of `X-Forwarded-Uri` (an origin-form request target: path and optional query;
/// the query plays no part in the decision).
fn original_path(uri: &HeaderValue) -> Result<&str, ProxyError> {
    let bad = ProxyError::InvalidRequest("X-Forwarded-Uri is not an origin-form request target");
    let text = uri.to_str().map_err(|_| bad.clone())?;
    // Validated as a request target (no spaces, controls or other bytes a URI cannot hold).
    PathAndQuery::try_from(text).map_err(|_| bad.clone())?;
    let path = text.split_once('?').map_or(text, |(p, _)| p);
    if !path.starts_with('/') || text.contains('#') {
        return Err(bad);
    }
    Ok(path)
}

/// The client of a check: the right-most `X-Forwarded-For` entry not inside `trusted_hops`
/// (the left-most when all are). A malformed entry stops the walk at the last good address;
/// with none (or no header at all) the check is a 400.
fn forwarded_client(headers: &HeaderMap, trusted_hops: &[IpNet]) -> Result<IpAddr, ProxyError> {
    net::forwarded_client(
        trusted_hops,
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .ok_or(ProxyError::InvalidRequest(
        "a check needs X-Forwarded-For with the client's address",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_prefix_matches_at_a_segment_boundary() {
        assert_eq!(envoy_rest("/envoy", "/envoy"), Some("/"));
        assert_eq!(envoy_rest("/envoy/", "/envoy"), Some("/"));
        assert_eq!(envoy_rest("/envoy/sd/x", "/envoy"), Some("/sd/x"));
        assert_eq!(envoy_rest("/envoyx/sd", "/envoy"), None);
        assert_eq!(envoy_rest("/other", "/envoy"), None);
        assert_eq!(envoy_rest("/a/b/c", "/a/b"), Some("/c"));
    }

    #[test]
    fn the_original_path_is_an_origin_form_target() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(original_path(&v("/sd/x?a=1")), Ok("/sd/x"));
        assert_eq!(original_path(&v("/")), Ok("/"));
        assert_eq!(original_path(&v("/sd/%2e%2e/x")), Ok("/sd/%2e%2e/x"));
        for bad in ["", "*", "sd/x", "http://h/x", "/a b", "/x#frag"] {
            assert!(original_path(&v(bad)).is_err(), "{bad:?}");
        }
        let raw = HeaderValue::from_bytes(b"/caf\xc3\xa9").unwrap();
        assert!(original_path(&raw).is_err());
    }

    #[test]
    fn two_values_of_a_header_the_caller_sets_are_refused() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_URI, HeaderValue::from_static("/a"));
        assert!(one(&h, &X_FORWARDED_URI, "twice").is_ok());
        h.append(&X_FORWARDED_URI, HeaderValue::from_static("/b"));
        assert!(one(&h, &X_FORWARDED_URI, "twice").is_err());
    }
}
