//! The admin listener: the JSON API of SPEC §4 behind the admin key.
//!
//! Every mutation follows one order: validate → commit to the store (durably) → refresh the
//! in-memory index → answer. So the next proxied request on this instance already sees the
//! change, and nothing is acknowledged before it is safe. Concurrent writers are resolved with
//! optimistic versions (a stale write is retried on fresh data), never by a lock held across
//! the store call. This module is never reachable from the proxy listener.
//!
//! A request goes `handle` → `routes` (open paths, then the key check here, then method + path)
//! → a handler in `tokens`, `ips`, `audit` or `probes`, which reads its body through `body` and
//! its query string through `query`. Handlers return an `AdminError` for every refusal;
//! `error` alone turns it into a response.

mod access_types;
mod audit;
mod body;
pub(crate) mod console;
pub(crate) mod dto;
mod error;
mod ips;
pub(crate) mod key;
pub(crate) mod openapi;
mod probes;
mod query;
mod routes;
mod tokens;
mod usage;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tracing::Instrument;

use crate::clock::{SharedClock, Timestamp};
use crate::config::LifecycleConfig;
use crate::limiter::FailureLimiter;
use crate::metrics::Scrape;
use crate::model::TokenId;
use crate::net;
use crate::server::ConnInfo;
use crate::shared::Shared;
use crate::state::TokenIndex;
use crate::store::Store;
use crate::token;
use crate::usage::UsageRecorder;

use self::audit::Actor;
use self::error::AdminError;
use self::key::AdminKey;
use self::routes::Call;

/// Everything the admin listener reads and writes; built once by `app`.
pub(crate) struct Admin {
    pub store: Arc<dyn Store>,
    pub index: Arc<TokenIndex>,
    pub usage: Arc<UsageRecorder>,
    pub limiter: Arc<FailureLimiter>,
    pub clock: SharedClock,
    pub lifecycle: LifecycleConfig,
    pub key: AdminKey,
    /// What `/metrics` reads.
    pub scrape: Scrape,
    /// `admin.metrics_public`: serve `/metrics` without the key.
    pub metrics_public: bool,
}

type AdminResult = Result<Response<Full<Bytes>>, AdminError>;

impl Admin {
    /// The admin API over the gateway's shared parts.
    pub(crate) fn new(config: &crate::config::Config, shared: &Shared, key: AdminKey) -> Admin {
        Admin {
            store: shared.store.clone(),
            index: shared.index.clone(),
            usage: shared.usage.clone(),
            limiter: shared.limiter.clone(),
            clock: shared.clock.clone(),
            lifecycle: config.lifecycle,
            key,
            scrape: Scrape {
                metrics: shared.metrics.clone(),
                index: shared.index.clone(),
                usage: shared.usage.clone(),
                clock: shared.clock.clone(),
                lifecycle: config.lifecycle,
                rate_limiter: shared.rate_limiter.clone(),
            },
            metrics_public: config.admin.metrics_public,
        }
    }

    pub(crate) async fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let client_ip = net::canonical_ip(conn.peer.ip());
        let path = req.uri().path().to_string();
        // Lines logged while the call is served carry who asked what (never the key).
        let span = tracing::debug_span!(
            "admin_request",
            method = %method,
            path = %path,
            client_ip = %client_ip,
        );
        let mut resp = self
            .dispatch(client_ip, req)
            .instrument(span)
            .await
            .unwrap_or_else(AdminError::into_response);
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        tracing::info!(
            target: "tokengate::admin",
            method = %method,
            path = %path,
            status = resp.status().as_u16(),
            client_ip = %client_ip,
        );
        resp
    }

    async fn dispatch(&self, client_ip: IpAddr, req: Request<Incoming>) -> AdminResult {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        if let Some(answer) = self.route_open(&method, &path).await {
            return answer;
        }
        // Brute force first (no key comparison for an IP over the limit), then the key.
        if let Some(secs) = self.limiter.check(client_ip) {
            return Err(AdminError::TooManyFailures(secs));
        }
        if !self.authorized(&req) {
            self.limiter.record_failure(client_ip);
            return Err(AdminError::Unauthorized);
        }
        let actor = Actor::of(&req, client_ip);
        let query = req.uri().query().map(str::to_string);
        let body = body::read(req).await?;
        self.route(Call {
            method,
            path,
            query,
            actor,
            body,
        })
        .await
    }

    /// Exactly one `Authorization`, the `Bearer` scheme parsed as the proxy parses it (SPEC §2),
    /// and the admin key (compared in constant time).
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        token::bearer_credentials(v.as_bytes()).is_some_and(|key| self.key.verify(key))
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Brings a committed change into this instance's index. The change is durable already,
    /// so the answer stays a success even if re-reading it fails; the token is then dropped
    /// from memory (refused here, fail closed) until a later refresh or reconciliation reads
    /// it back.
    async fn apply(&self, id: TokenId) {
        if let Err(e) = self.index.refresh(self.store.as_ref(), id).await {
            tracing::warn!(error = %e, token_id = %id, "re-reading a committed change failed; refusing the token here until it is read back");
            self.index.forget(id).await;
        }
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    // Serialising our own DTOs cannot fail (no maps with non-string keys, no custom impls).
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}
