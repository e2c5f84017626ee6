//! `/healthz`, `/readyz` and `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::error::NotReady;
use super::{json_response, Admin, AdminError, AdminResult};

impl Admin {
    pub(super) fn healthz(&self) -> Response<Full<Bytes>> {
        json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    }

    pub(super) async fn readyz(&self) -> AdminResult {
        // A shared store whose follower lost contact: not ready, even if a pooled connection
        // would answer (this instance may have missed changes until it has reloaded).
        if self.store.health().is_some_and(|h| !h.is_up()) {
            return Err(AdminError::NotReady(NotReady::Unreachable));
        }
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ready"}),
            )),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness check failed");
                Err(AdminError::NotReady(NotReady::Failed))
            }
            Err(_) => Err(AdminError::NotReady(NotReady::Timeout)),
        }
    }

    pub(super) fn metrics(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(self.scrape.render())));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }
}
