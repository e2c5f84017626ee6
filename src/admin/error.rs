//! Every refusal of the admin API, and its one mapping to HTTP: status, `error` code,
//! `message`, the extra field some carry (`field`, `names`, `blocked_by`) and `Retry-After`.
//! Handlers return an [`AdminError`]; none builds an error response itself.

use bytes::Bytes;
use http::header::{ALLOW, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

use crate::store::{Conflict, StoreError};

use super::json_response;

#[derive(Debug)]
pub(crate) enum AdminError {
    Unauthorized,
    /// Too many failed authentications from this address; retry after this many seconds.
    TooManyFailures(u64),
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// No such token.
    NotFound,
    /// No route for this path.
    NoSuchPath,
    NamesNotFound(Vec<String>),
    /// Activation of tokens past their `expires_at` (SPEC §4): nothing was changed.
    TokensExpired(Vec<String>),
    /// Activation of tokens whose secret was revoked and not regenerated since (SPEC §1).
    TokensRevoked(Vec<String>),
    NameTaken,
    BlockedByCidr {
        ip: String,
        cidr: String,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The path exists with these methods only (the `Allow` value).
    MethodNotAllowed(String),
    /// Lost an optimistic-concurrency race too many times.
    Conflict,
    /// A store call failed (logged here, with its cause).
    Unavailable(String),
    /// `/readyz`: the store cannot serve this instance.
    NotReady(NotReady),
}

/// Why `/readyz` answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReady {
    /// A shared store's follower lost contact.
    Unreachable,
    /// The ping failed.
    Failed,
    /// The ping did not answer in time.
    Timeout,
}

/// 400 `invalid_request` naming `field`.
pub(crate) fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// 400 `invalid_request` about the body as a whole.
pub(crate) fn invalid_body(message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: None,
        message: message.into(),
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AdminError::NotFound,
            StoreError::Conflict(Conflict::NameTaken) => AdminError::NameTaken,
            StoreError::Conflict(_) => AdminError::Conflict,
            StoreError::Unavailable(m) => AdminError::Unavailable(m),
        }
    }
}

impl AdminError {
    /// Every `error` code an admin answer can carry (the OpenAPI document's enum).
    pub(crate) const CODES: [&'static str; 13] = [
        "unauthorized",
        "too_many_failures",
        "invalid_request",
        "not_found",
        "token_expired",
        "token_revoked",
        "name_taken",
        "blocked_by_cidr",
        "payload_too_large",
        "unsupported_media_type",
        "method_not_allowed",
        "conflict",
        "store_unavailable",
    ];

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let header = match &self {
            AdminError::TooManyFailures(secs) => Some((RETRY_AFTER, HeaderValue::from(*secs))),
            AdminError::MethodNotAllowed(allow) => {
                HeaderValue::from_str(allow).ok().map(|v| (ALLOW, v))
            }
            _ => None,
        };
        let (status, code, message, extra) = self.parts();
        let mut body = Map::new();
        body.insert("error".into(), Value::String(code.into()));
        body.insert("message".into(), Value::String(message));
        if let Some((k, v)) = extra {
            body.insert(k.into(), v);
        }
        let mut resp = json_response(status, &Value::Object(body));
        if let Some((name, value)) = header {
            resp.headers_mut().insert(name, value);
        }
        resp
    }

    /// Status, `error` code, `message`, and the one extra body field some errors carry.
    fn parts(
        self,
    ) -> (
        StatusCode,
        &'static str,
        String,
        Option<(&'static str, Value)>,
    ) {
        match self {
            AdminError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin key is required (Authorization: Bearer <admin key>)".into(),
                None,
            ),
            AdminError::TooManyFailures(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "too many failed authentications from this address; retry later".into(),
                None,
            ),
            AdminError::Invalid { field, message } => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                message,
                field.map(|f| ("field", Value::String(f))),
            ),
            AdminError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such token".into(),
                None,
            ),
            AdminError::NoSuchPath => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path".into(),
                None,
            ),
            AdminError::NamesNotFound(names) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown token names; nothing was changed".into(),
                Some(("names", Value::from(names))),
            ),
            AdminError::TokensExpired(names) => (
                StatusCode::CONFLICT,
                "token_expired",
                "these tokens are past their expires_at: activation does not lift an expiry \
                 (PATCH expires_at does); nothing was changed"
                    .into(),
                Some(("names", Value::from(names))),
            ),
            AdminError::TokensRevoked(names) => (
                StatusCode::CONFLICT,
                "token_revoked",
                "these tokens' secrets were reported to the revocation endpoint and are public: \
                 regenerate them first; nothing was changed"
                    .into(),
                Some(("names", Value::from(names))),
            ),
            AdminError::NameTaken => (
                StatusCode::CONFLICT,
                "name_taken",
                "a token with this name (ignoring case) already exists".into(),
                None,
            ),
            AdminError::BlockedByCidr { ip, cidr } => (
                StatusCode::CONFLICT,
                "blocked_by_cidr",
                format!("{ip} is blocked by the CIDR entry {cidr}; unblock {cidr} instead"),
                Some(("blocked_by", Value::String(cidr))),
            ),
            AdminError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body exceeds 1 MiB".into(),
                None,
            ),
            AdminError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be application/json".into(),
                None,
            ),
            AdminError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed on this path".into(),
                None,
            ),
            AdminError::Conflict => (
                StatusCode::CONFLICT,
                "conflict",
                "the token was changed concurrently; retry".into(),
                None,
            ),
            AdminError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable for an admin request");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the token store is unavailable; nothing was changed".into(),
                    None,
                )
            }
            AdminError::NotReady(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                match why {
                    NotReady::Unreachable => "the token store is unreachable",
                    NotReady::Failed => "the token store is unavailable",
                    NotReady::Timeout => "the token store did not answer in time",
                }
                .into(),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(resp: Response<Full<Bytes>>) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Every variant's code is one the OpenAPI document lists, and every listed code is used.
    #[test]
    fn codes_lists_every_code() {
        let all = [
            AdminError::Unauthorized,
            AdminError::TooManyFailures(1),
            invalid("f", "m"),
            AdminError::NotFound,
            AdminError::NoSuchPath,
            AdminError::NamesNotFound(vec![]),
            AdminError::TokensExpired(vec![]),
            AdminError::TokensRevoked(vec![]),
            AdminError::NameTaken,
            AdminError::BlockedByCidr {
                ip: "10.0.0.1".into(),
                cidr: "10.0.0.0/8".into(),
            },
            AdminError::PayloadTooLarge,
            AdminError::UnsupportedMediaType,
            AdminError::MethodNotAllowed("GET".into()),
            AdminError::Conflict,
            AdminError::Unavailable("x".into()),
            AdminError::NotReady(NotReady::Failed),
        ];
        let used: std::collections::BTreeSet<&str> = all.into_iter().map(|e| e.parts().1).collect();
        let listed: std::collections::BTreeSet<&str> = AdminError::CODES.into_iter().collect();
        assert_eq!(used, listed);
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_allowed_methods() {
        let resp = AdminError::MethodNotAllowed("GET, POST".into()).into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, POST");
    }

    #[tokio::test]
    async fn too_many_failures_carries_retry_after() {
        let resp = AdminError::TooManyFailures(17).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "17");
        assert_eq!(body(resp).await["error"], "too_many_failures");
        let resp = AdminError::Unauthorized.into_response();
        assert!(resp.headers().get(RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn not_ready_and_no_such_path_keep_their_bodies() {
        let cases = [
            (NotReady::Unreachable, "the token store is unreachable"),
            (NotReady::Failed, "the token store is unavailable"),
            (NotReady::Timeout, "the token store did not answer in time"),
        ];
        for (why, message) in cases {
            let resp = AdminError::NotReady(why).into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body(resp).await,
                serde_json::json!({"error": "store_unavailable", "message": message})
            );
        }
        let resp = AdminError::NoSuchPath.into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body(resp).await,
            serde_json::json!({"error": "not_found", "message": "no such path"})
        );
    }
}
