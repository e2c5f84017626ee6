//! Public revocation (SPEC §10): `POST /_tokengate/revoke` on the proxy listener (and the
//! forward-auth listener), without the admin key, so whoever finds a leaked secret (a person, a
//! secret scanner) can make it useless at once, as GitHub's credential-revocation API does.
//!
//! Every listed secret that is a token's current secret deactivates the token
//! (`inactive_reason: revoked`, ending any grace of its previous secret); one that is a
//! previous secret in its grace ends that grace. The answer is 202 `{}` whatever matched (no
//! validity oracle), given only after every change is committed. Each change is audited with
//! the actor `revocation` and the client IP. Requests are limited per client IP
//! (`proxy.revoke_limit` a minute), never counted as failed authentications.
//!
//! Not on the hot path: a revocation reads the store and writes it; a proxied request never
//! comes here.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::audit;
use crate::clock::{SharedClock, Timestamp};
use crate::config::LifecycleConfig;
use crate::error::{ProxyBody, ProxyError};
use crate::limiter::FailureLimiter;
use crate::model::{AuditAction, AuditEntry, InactiveReason, Status, TokenId, TokenRecord};
use crate::policy::{self, Effective, Standing};
use crate::state::TokenIndex;
use crate::store::{Conflict, Store, StoreError};
use crate::token::{self, SecretHash};

/// The path, on the proxy and forward-auth listeners.
pub(crate) const PATH: &str = "/_tokengate/revoke";
/// The audit actor of a public revocation.
pub(crate) const ACTOR: &str = "revocation";
/// The largest request body (SPEC §10).
const MAX_BODY: usize = 16 * 1024;
/// The most secrets one request may list.
const MAX_TOKENS: usize = 100;
/// Attempts at a versioned write that keeps losing races.
const RETRIES: usize = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    tokens: Vec<String>,
}

/// The revocation endpoint's state, shared by both listeners that serve it.
pub(crate) struct Revoker {
    store: Arc<dyn Store>,
    index: Arc<TokenIndex>,
    clock: SharedClock,
    /// For the effective status recorded in the audit entry.
    lifecycle: LifecycleConfig,
    /// Requests per client IP per minute (its own windows: never the failed-auth limiter's).
    limiter: FailureLimiter,
}

impl Revoker {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        index: Arc<TokenIndex>,
        clock: SharedClock,
        lifecycle: LifecycleConfig,
        limit: u32,
    ) -> Revoker {
        Revoker {
            limiter: FailureLimiter::new(limit, clock.clone()),
            store,
            index,
            clock,
            lifecycle,
        }
    }

    /// Answers one revocation request from `client_ip`.
    pub(crate) async fn handle(
        &self,
        client_ip: IpAddr,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let http1 = req.version() < http::Version::HTTP_2;
        match self.revoke(client_ip, req).await {
            Ok(()) => {
                let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(b"{}"))));
                *r.status_mut() = StatusCode::ACCEPTED;
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => {
                // A body refused half-read leaves the rest of the message on the connection.
                let close = http1 && e.closes_connection();
                let mut r = e.into_response();
                if close {
                    r.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                r
            }
        }
    }

    async fn revoke(&self, client_ip: IpAddr, req: Request<Incoming>) -> Result<(), ProxyError> {
        if req.method() != Method::POST {
            return Err(ProxyError::MethodNotAllowed);
        }
        if let Some(retry_after_secs) = self.limiter.check(client_ip) {
            return Err(ProxyError::TooManyRevocations { retry_after_secs });
        }
        // Every request counts toward the limit, whatever it carries.
        self.limiter.record_failure(client_ip);
        if !is_json(req.headers()) {
            return Err(ProxyError::UnsupportedMediaType);
        }
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(ProxyError::PayloadTooLarge);
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::PayloadTooLarge)
            }
            Err(_) => return Err(ProxyError::Malformed("the request body could not be read")),
        };
        let secrets = parse(&body)?;
        // A shared store that is down: nothing can be committed, and answering 503 only to
        // the secrets that match would tell them apart. Every report gets it.
        if self.store.health().is_some_and(|h| !h.is_up()) {
            return Err(ProxyError::StoreUnavailable);
        }
        let now = self.clock.now();
        // Which token each secret names, from memory (the same lookups as the proxy's), then
        // each token changed once in the store. `current`: the secret is the token's current
        // one here, which ends its grace too, so it wins over the same token's previous one.
        let mut matches: Vec<(TokenId, SecretHash, bool)> = Vec::new();
        for s in &secrets {
            let Ok(hash) = token::parse_bearer(s.as_bytes()) else {
                continue;
            };
            let found = if let Some(t) = self.index.get(&hash) {
                // Already revoked, with no grace left to end: nothing to do, and no store
                // read (a public secret may be reported again and again).
                let done = t.inactive_reason == Some(InactiveReason::Revoked)
                    && t.previous().is_none_or(|p| now >= p.until);
                (!done).then_some((t.id, true))
            } else {
                self.index
                    .get_previous(&hash)
                    .filter(|t| t.previous().is_some_and(|p| now < p.until))
                    .map(|t| (t.id, false))
            };
            if let Some((id, current)) = found {
                match matches.iter_mut().find(|(i, _, _)| *i == id) {
                    Some(entry) if current => *entry = (id, hash, true),
                    Some(_) => {}
                    None => matches.push((id, hash, current)),
                }
            }
        }
        for (id, hash, _) in matches {
            self.apply(id, hash, client_ip).await?;
        }
        Ok(())
    }

    /// Commits one token's revocation (or the end of its grace), re-reading it on a lost race
    /// and checking the secret still matches; nothing is written when nothing changes.
    async fn apply(
        &self,
        id: TokenId,
        hash: SecretHash,
        client_ip: IpAddr,
    ) -> Result<(), ProxyError> {
        for _ in 0..RETRIES {
            let now = self.clock.now();
            let rec = match self.store.token_by_id(id).await {
                Ok(Some(t)) => t.token,
                Ok(None) => return Ok(()),
                Err(e) => return Err(unavailable(&e)),
            };
            let effective = policy::status_at(
                Standing::of_record(&rec, rec.last_used_at),
                now,
                &self.lifecycle,
            );
            let Some((rec, entry)) = change(rec, hash, now, client_ip, effective) else {
                return Ok(());
            };
            match self
                .store
                .save_tokens(std::slice::from_ref(&rec), std::slice::from_ref(&entry))
                .await
            {
                Ok(()) => {
                    if let Err(e) = self.index.refresh(self.store.as_ref(), id).await {
                        tracing::warn!(error = %e, token_id = %id, "re-reading a revoked token failed; refusing it here until it is read back");
                        self.index.forget(id).await;
                    }
                    audit::emit(&entry);
                    return Ok(());
                }
                // Changed or deleted since it was read: read it again.
                Err(StoreError::Conflict(Conflict::Version) | StoreError::NotFound) => continue,
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(ProxyError::StoreUnavailable)
    }
}

fn unavailable(e: &StoreError) -> ProxyError {
    tracing::warn!(error = %e, "a revocation could not be committed");
    ProxyError::StoreUnavailable
}

/// The change a reported secret makes to `rec` at `now`, with its audit entry; `None` when
/// the token is already as the revocation would leave it, or the secret is no longer its.
/// The secret is classified against this fresh record, not memory's: a regenerate committed
/// since (here or on another instance) may have made a current secret the previous one.
fn change(
    mut rec: TokenRecord,
    hash: SecretHash,
    now: Timestamp,
    client_ip: IpAddr,
    effective: Effective,
) -> Option<(TokenRecord, AuditEntry)> {
    let (action, details) = if rec.secret_hash == hash {
        // The current secret: the token is revoked (and any grace of its previous ends).
        let grace = rec.previous_secret.is_some_and(|p| now < p.until);
        if rec.revoked_hash.is_some() && rec.status == Status::Inactive && !grace {
            return None;
        }
        let (status, reason) = effective.reported();
        let previous_status = if effective == Effective::Deleted {
            "deleted"
        } else {
            status.as_str()
        };
        let previous_reason = reason.map(InactiveReason::as_str);
        if rec.status == Status::Active {
            rec.deactivated_at = Some(now);
        }
        rec.status = Status::Inactive;
        rec.inactive_reason = Some(InactiveReason::Revoked);
        rec.revoked_hash = Some(hash);
        rec.previous_secret = None;
        (
            AuditAction::Deactivate,
            serde_json::json!({
                "reason": "revoked",
                "previous_status": previous_status,
                "previous_reason": previous_reason,
                "previous_secret_grace_ended": grace,
            }),
        )
    } else {
        // Its previous secret, still in its grace: the grace ends.
        let p = rec
            .previous_secret
            .filter(|p| p.hash == hash && now < p.until)?;
        rec.previous_secret = None;
        (
            AuditAction::Update,
            serde_json::json!({
                "reason": "revoked",
                "previous_secret_expires_at": {"from": p.until.rfc3339(), "to": now.rfc3339()},
            }),
        )
    };
    let entry = audit::by_admin(ACTOR, client_ip, now, action, &rec, details);
    Some((rec, entry))
}

/// `application/json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// `{"tokens": [...]}` with 1 to 100 strings.
fn parse(body: &[u8]) -> Result<Vec<String>, ProxyError> {
    let b: RevokeBody = serde_json::from_slice(body).map_err(|_| {
        ProxyError::InvalidRequest("the body must be {\"tokens\": [\"tg_...\", ...]}")
    })?;
    if b.tokens.is_empty() || b.tokens.len() > MAX_TOKENS {
        return Err(ProxyError::InvalidRequest(
            "\"tokens\" must list 1 to 100 secrets",
        ));
    }
    Ok(b.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        assert_eq!(parse(br#"{"tokens":["a"]}"#).unwrap(), ["a"]);
        for bad in [
            &br#"{"tokens":[]}"#[..],
            br#"{"tokens":"a"}"#,
            br#"{"tokens":[1]}"#,
            br#"{"tokens":["a"],"x":1}"#,
            br#"[]"#,
            b"not json",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many = serde_json::json!({"tokens": vec!["a"; 101]}).to_string();
        assert!(parse(many.as_bytes()).is_err());
    }

    #[test]
    fn only_json_bodies() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, v.parse().unwrap());
            m
        };
        assert!(is_json(&h("application/json")));
        assert!(is_json(&h("Application/JSON; charset=utf-8")));
        assert!(!is_json(&h("text/plain")));
        assert!(!is_json(&h("application/jsonx")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
