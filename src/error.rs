//! Refusals of the proxy listener and their one mapping to HTTP (linkerd's "rescue" idea):
//! pipeline steps return a [`ProxyError`], and only [`ProxyError::into_response`] decides the
//! status, the `error` code and the body. Bodies of the common refusals are static bytes, so a
//! flood of bad tokens allocates nothing for them.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::ratelimit::RateLimit;

/// The proxy's response body: a small static/owned body, or the upstream's stream.
/// The IETF RateLimit header fields (see `crate::ratelimit` for the draft followed).
pub(crate) const RATELIMIT_POLICY: http::HeaderName =
    http::HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

pub(crate) type ProxyBody = Either<Full<Bytes>, hyper::body::Incoming>;

macro_rules! json_body {
    ($code:literal, $msg:literal) => {
        concat!("{\"error\":\"", $code, "\",\"message\":\"", $msg, "\"}")
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// 400 `invalid_request` for a message whose framing cannot be trusted (no `Host` on
    /// HTTP/1.1, a malformed chunked body): the connection is closed after the answer.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// 501 `not_implemented`: a transfer coding other than `chunked`, or `TRACE`. The
    /// connection is closed after the answer (the body's framing is unknown).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("too many failed authentications")]
    TooManyFailures { retry_after_secs: u64 },
    #[error("missing bearer token")]
    MissingToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("token store unavailable")]
    StoreUnavailable,
    #[error("token expired")]
    TokenExpired,
    #[error("token inactive")]
    TokenInactive,
    #[error("client IP blocked for this token")]
    IpBlocked,
    #[error("client IP not in the token's allow-list")]
    IpNotAllowed,
    #[error("no route")]
    NoRoute,
    #[error("access denied")]
    AccessDenied,
    #[error("rate limited")]
    RateLimited {
        retry_after_secs: u64,
        limit: RateLimit,
    },
    #[error("rate limit backend unavailable")]
    RateLimitUnavailable,
    /// The revocation endpoint's own refusals (SPEC §10): 405, 413, 415, and 429 over
    /// `proxy.revoke_limit`.
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("too many revocation requests")]
    TooManyRevocations { retry_after_secs: u64 },
    /// 403 `untrusted_caller`: a forward-auth check from a peer outside `forward_auth.callers`.
    #[error("untrusted forward-auth caller")]
    UntrustedCaller,
    #[error("bad gateway")]
    BadGateway,
    #[error("gateway timeout")]
    GatewayTimeout,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidRequest(_) | ProxyError::Malformed(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::TooManyFailures { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::TooManyRevocations { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::MissingToken | ProxyError::InvalidToken | ProxyError::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            ProxyError::StoreUnavailable | ProxyError::RateLimitUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::TokenInactive
            | ProxyError::IpBlocked
            | ProxyError::IpNotAllowed
            | ProxyError::AccessDenied
            | ProxyError::UntrustedCaller => StatusCode::FORBIDDEN,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadGateway => StatusCode::BAD_GATEWAY,
            ProxyError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The SPEC's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidRequest(_) | ProxyError::Malformed(_) => "invalid_request",
            ProxyError::NotImplemented(_) => "not_implemented",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::TooManyFailures { .. } => "too_many_failures",
            ProxyError::MissingToken => "missing_token",
            ProxyError::InvalidToken => "invalid_token",
            ProxyError::StoreUnavailable => "store_unavailable",
            ProxyError::TokenExpired => "token_expired",
            ProxyError::TokenInactive => "token_inactive",
            ProxyError::IpBlocked => "ip_blocked",
            ProxyError::IpNotAllowed => "ip_not_allowed",
            ProxyError::NoRoute => "no_route",
            ProxyError::AccessDenied => "access_denied",
            ProxyError::UntrustedCaller => "untrusted_caller",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::UnsupportedMediaType => "unsupported_media_type",
            ProxyError::TooManyRevocations { .. } => "too_many_requests",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::RateLimitUnavailable => "rate_limit_unavailable",
            ProxyError::BadGateway => "bad_gateway",
            ProxyError::GatewayTimeout => "gateway_timeout",
        }
    }

    fn body(&self) -> Bytes {
        let s: &'static str = match self {
            ProxyError::InvalidRequest(reason)
            | ProxyError::Malformed(reason)
            | ProxyError::NotImplemented(reason) => {
                let v = serde_json::json!({"error": self.code(), "message": reason});
                return Bytes::from(v.to_string());
            }
            ProxyError::HeadersTooLarge => {
                json_body!("headers_too_large", "the request header block is too large")
            }
            ProxyError::TooManyFailures { .. } => json_body!(
                "too_many_failures",
                "too many failed authentications from this address; retry later"
            ),
            ProxyError::MissingToken => {
                json_body!(
                    "missing_token",
                    "an Authorization: Bearer token is required"
                )
            }
            ProxyError::InvalidToken => json_body!("invalid_token", "the token is not valid"),
            ProxyError::StoreUnavailable => json_body!(
                "store_unavailable",
                "the token store is unavailable; retry later"
            ),
            ProxyError::TokenExpired => json_body!("token_expired", "the token has expired"),
            ProxyError::TokenInactive => json_body!("token_inactive", "the token is inactive"),
            ProxyError::IpBlocked => {
                json_body!("ip_blocked", "this client address is blocked for the token")
            }
            ProxyError::IpNotAllowed => json_body!(
                "ip_not_allowed",
                "this client address is not allowed to use the token"
            ),
            ProxyError::RateLimited { .. } => json_body!(
                "rate_limited",
                "the token is over its rate limit; retry later"
            ),
            ProxyError::RateLimitUnavailable => json_body!(
                "rate_limit_unavailable",
                "the rate limit cannot be checked right now; retry later"
            ),
            ProxyError::NoRoute => json_body!("no_route", "no route matches this request"),
            ProxyError::AccessDenied => {
                json_body!(
                    "access_denied",
                    "the token does not grant access to this API"
                )
            }
            ProxyError::MethodNotAllowed => json_body!(
                "method_not_allowed",
                "the revocation endpoint takes POST only"
            ),
            ProxyError::PayloadTooLarge => json_body!(
                "payload_too_large",
                "a revocation request body is at most 16 KiB"
            ),
            ProxyError::UnsupportedMediaType => json_body!(
                "unsupported_media_type",
                "a revocation request body must be application/json"
            ),
            ProxyError::TooManyRevocations { .. } => json_body!(
                "too_many_requests",
                "too many revocation requests from this address; retry later"
            ),
            ProxyError::UntrustedCaller => json_body!(
                "untrusted_caller",
                "this address may not ask for authorization checks (forward_auth.callers)"
            ),
            ProxyError::BadGateway => {
                json_body!("bad_gateway", "the upstream could not be reached")
            }
            ProxyError::GatewayTimeout => {
                json_body!("gateway_timeout", "the upstream did not answer in time")
            }
        };
        Bytes::from_static(s.as_bytes())
    }

    /// Whether the connection must close after this answer (HTTP/1: the rest of the
    /// client's message cannot be told from the next one).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Malformed(_) | ProxyError::NotImplemented(_) | ProxyError::PayloadTooLarge
        )
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(Either::Left(Full::new(self.body())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            ProxyError::MissingToken => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokengate\""),
                );
            }
            ProxyError::InvalidToken => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokengate\", error=\"invalid_token\""),
                );
            }
            ProxyError::TokenExpired => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"tokengate\", error=\"invalid_token\", \
                         error_description=\"the token has expired\"",
                    ),
                );
            }
            ProxyError::TooManyFailures { retry_after_secs }
            | ProxyError::TooManyRevocations { retry_after_secs } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ProxyError::MethodNotAllowed => {
                h.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            }
            ProxyError::RateLimited {
                retry_after_secs,
                limit,
            } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                h.insert(RATELIMIT_POLICY, crate::ratelimit::policy_header(limit));
                // draft-09: on a 429, `t` is when to come back, as Retry-After says.
                h.insert(
                    RATELIMIT,
                    crate::ratelimit::ratelimit_header(limit, 0, retry_after_secs),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_json_with_the_code() {
        let all = [
            ProxyError::InvalidRequest("x \"quoted\""),
            ProxyError::Malformed("no Host"),
            ProxyError::NotImplemented("TRACE"),
            ProxyError::HeadersTooLarge,
            ProxyError::TooManyFailures {
                retry_after_secs: 3,
            },
            ProxyError::MissingToken,
            ProxyError::InvalidToken,
            ProxyError::StoreUnavailable,
            ProxyError::TokenExpired,
            ProxyError::TokenInactive,
            ProxyError::IpBlocked,
            ProxyError::IpNotAllowed,
            ProxyError::RateLimited {
                retry_after_secs: 1,
                limit: RateLimit::new(5, std::time::Duration::from_secs(60)).unwrap(),
            },
            ProxyError::RateLimitUnavailable,
            ProxyError::NoRoute,
            ProxyError::AccessDenied,
            ProxyError::UntrustedCaller,
            ProxyError::MethodNotAllowed,
            ProxyError::PayloadTooLarge,
            ProxyError::UnsupportedMediaType,
            ProxyError::TooManyRevocations {
                retry_after_secs: 1,
            },
            ProxyError::BadGateway,
            ProxyError::GatewayTimeout,
        ];
        for e in all {
            let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["error"], e.code());
            assert!(v["message"].is_string());
        }
    }
}
