//! The admin listener: the JSON API of SPEC §4 behind the admin key.
//!
//! Every mutation follows one order: validate → commit to the store (durably) → refresh the
//! in-memory index → answer. So the next proxied request on this instance already sees the
//! change, and nothing is acknowledged before it is safe. Concurrent writers are resolved with
//! optimistic versions (a stale write is retried on fresh data), never by a lock held across
//! the store call. This module is never reachable from the proxy listener.

pub mod console;
pub mod dto;
pub mod key;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::audit;
use crate::clock::{SharedClock, Timestamp};
use crate::config::LifecycleConfig;
use crate::limiter::FailureLimiter;
use crate::metrics::Scrape;
use crate::model::{
    AuditAction, AuditEntry, InactiveReason, IpRecord, Status, TokenId, TokenRecord,
};
use crate::net::{self, BlockEntry};
use crate::policy::{self, Effective, Standing};
use crate::server::ConnInfo;
use crate::state::TokenIndex;
use crate::store::{Store, StoreError};
use crate::tls::ClientCertSubject;
use crate::token::{self, Access, Secret};
use crate::usage::UsageRecorder;

use self::dto::{AuditDto, AuditList, CreatedToken, IpDto, IpList, TokenDto, TokenList, Tokens};
use self::key::AdminKey;

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;
/// Most entries in one `names` or `ips` list.
pub const MAX_LIST: usize = 1000;
const LIST_DEFAULT: usize = 1000;
const LIST_MAX: usize = 10_000;
const AUDIT_DEFAULT: usize = 100;
const AUDIT_MAX: usize = 1000;
/// Attempts at a mutation that lost an optimistic-concurrency race.
const RETRIES: usize = 5;

#[derive(Debug)]
pub enum AdminError {
    Unauthorized,
    TooManyFailures(u64),
    Invalid {
        field: Option<String>,
        message: String,
    },
    NotFound,
    NamesNotFound(Vec<String>),
    NameTaken,
    BlockedByCidr {
        ip: String,
        cidr: String,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    /// Lost an optimistic-concurrency race too many times.
    Conflict,
    Unavailable(String),
}

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field: Some(field.to_string()),
        message: message.into(),
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AdminError::NotFound,
            StoreError::Conflict("name_taken") => AdminError::NameTaken,
            StoreError::Conflict(_) => AdminError::Conflict,
            StoreError::Unavailable(m) => AdminError::Unavailable(m),
        }
    }
}

impl AdminError {
    fn into_response(self) -> Response<Full<Bytes>> {
        type Parts<'a> = (StatusCode, &'a str, String, Option<(&'a str, Value)>);
        let (status, code, message, extra): Parts<'_> = match self {
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
            AdminError::NamesNotFound(names) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown token names; nothing was changed".into(),
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
            AdminError::MethodNotAllowed => (
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
        };
        let mut body = Map::new();
        body.insert("error".into(), Value::String(code.into()));
        body.insert("message".into(), Value::String(message));
        if let Some((k, v)) = extra {
            body.insert(k.into(), v);
        }
        json_response(status, &Value::Object(body))
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

/// Everything the admin listener reads and writes; built once by `app`.
pub struct Admin {
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
    pub async fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let client_ip = net::canonical_ip(conn.peer.ip());
        let path = req.uri().path().to_string();
        let mut resp = match self.dispatch(client_ip, req).await {
            Ok(r) => r,
            Err(AdminError::TooManyFailures(secs)) => {
                let mut r = AdminError::TooManyFailures(secs).into_response();
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
            Err(e) => e.into_response(),
        };
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
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method.clone(), path.as_str()) {
            (Method::GET, "/healthz") => {
                return Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ok"}),
                ))
            }
            (Method::GET, "/readyz") => return self.readyz().await,
            (Method::GET, "/metrics") if self.metrics_public => return Ok(self.metrics()),
            _ => {}
        }
        // The console page and its assets hold no data: they load without the key (SPEC §7).
        if method == Method::GET || method == Method::HEAD {
            if let Some(resp) = console::serve(&path) {
                return Ok(resp);
            }
        }
        // Brute force first (no key comparison for an IP over the limit), then the key.
        if let Some(secs) = self.limiter.check(client_ip) {
            return Err(AdminError::TooManyFailures(secs));
        }
        if !self.authorized(&req) {
            self.limiter.record_failure(client_ip);
            return Err(AdminError::Unauthorized);
        }
        // With `admin.tls.client_ca` the connection carries a verified client certificate
        // (the server refuses the handshake otherwise), and its subject is the actor.
        let actor = Actor {
            name: match req.extensions().get::<ClientCertSubject>() {
                Some(subject) => subject.0.to_string(),
                None => "admin-key".into(),
            },
            source_ip: client_ip,
        };
        let query = req.uri().query().map(str::to_string);
        let body = read_body(req).await?;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["v1", "tokens"] => match method {
                Method::GET => self.list(query.as_deref()).await,
                Method::POST => self.create(&actor, body).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", op @ ("activate" | "deactivate")] if method == Method::POST => {
                self.set_status(&actor, body, *op == "activate").await
            }
            ["v1", "tokens", name] => match method {
                Method::GET => self.show(name).await,
                Method::PATCH => self.update(&actor, name, body).await,
                Method::DELETE => self.delete(&actor, name).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", name, "regenerate"] => match method {
                Method::POST => self.regenerate(&actor, name).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", name, "ips"] => match method {
                Method::GET => self.ips(name).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", name, "ips", op @ ("block" | "unblock")] => match method {
                Method::POST => self.block(&actor, name, body, *op == "block").await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["metrics"] => match method {
                Method::GET => Ok(self.metrics()),
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "audit"] => match method {
                Method::GET => self.audit(query.as_deref()).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            _ => Ok(not_found_path()),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return false;
        };
        let v = v.as_bytes();
        if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || v[6] != b' ' {
            return false;
        }
        self.key.verify(v[7..].trim_ascii())
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

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(self.scrape.render())));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn readyz(&self) -> AdminResult {
        // A shared store whose follower lost contact: not ready, even if a pooled connection
        // would answer (this instance may have missed changes until it has reloaded).
        if self.store.health().is_some_and(|h| !h.is_up()) {
            return Ok(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "store_unavailable", "message": "the token store is unreachable"}),
            ));
        }
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ready"}),
            )),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness check failed");
                Ok(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"error": "store_unavailable", "message": "the token store is unavailable"}),
                ))
            }
            Err(_) => Ok(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "store_unavailable", "message": "the token store did not answer in time"}),
            )),
        }
    }

    // === tokens ===

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The latest use known anywhere: the store's, or this instance's unflushed one.
    fn last_used(&self, rec: &TokenRecord) -> Option<Timestamp> {
        let local = self.index.by_id(rec.id).and_then(|t| t.last_used_at());
        rec.last_used_at.max(local)
    }

    fn effective(&self, rec: &TokenRecord, now: Timestamp) -> Effective {
        let standing = Standing::of_record(rec, self.last_used(rec));
        policy::status_at(standing, now, &self.lifecycle)
    }

    fn dto(&self, rec: &TokenRecord, now: Timestamp) -> TokenDto {
        let last_used = self.last_used(rec);
        let standing = Standing::of_record(rec, last_used);
        let since = standing.idle_since();
        let (status, reason) = policy::status_at(standing, now, &self.lifecycle).reported();
        TokenDto {
            id: rec.id.to_string(),
            name: rec.name.clone(),
            description: rec.description.clone(),
            access: rec.access.names(),
            status,
            inactive_reason: reason,
            created_at: rec.created_at.rfc3339(),
            activated_at: rec.activated_at.map(Timestamp::rfc3339),
            deactivated_at: rec.deactivated_at.map(Timestamp::rfc3339),
            last_used_at: last_used.map(Timestamp::rfc3339),
            inactive_at: (status == Status::Active)
                .then(|| since.plus(self.lifecycle.inactive_after).rfc3339()),
            delete_at: Some(since.plus(self.lifecycle.delete_after).rfc3339()),
        }
    }

    /// A token by name (ignoring case), unless it does not exist or the idle policy has
    /// already deleted it.
    async fn find(&self, name: &str) -> Result<TokenRecord, AdminError> {
        if token::validate_name(name).is_err() {
            return Err(AdminError::NotFound);
        }
        let rec = self
            .store
            .token_by_name(&token::name_key(name))
            .await?
            .ok_or(AdminError::NotFound)?;
        if self.effective(&rec, self.now()) == Effective::Deleted {
            return Err(AdminError::NotFound);
        }
        Ok(rec)
    }

    async fn list(&self, query: Option<&str>) -> AdminResult {
        let mut status: Option<Status> = None;
        let mut q: Option<String> = None;
        let mut limit = LIST_DEFAULT;
        let mut after: Option<String> = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                // An empty value means "not given" (SPEC shows `?status=&q=&limit=&after=`).
                "status" | "limit" if v.is_empty() => {}
                "status" => {
                    status = Some(match &*v {
                        "active" => Status::Active,
                        "inactive" => Status::Inactive,
                        _ => return Err(invalid("status", "status must be active or inactive")),
                    })
                }
                "q" => q = Some(v.to_ascii_lowercase()).filter(|s| !s.is_empty()),
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=LIST_MAX).contains(n))
                        .ok_or_else(|| invalid("limit", format!("limit must be 1 to {LIST_MAX}")))?
                }
                "after" => after = Some(token::name_key(&v)).filter(|s| !s.is_empty()),
                other => {
                    return Err(invalid(
                        other,
                        format!(
                            "unknown query parameter {:?}",
                            token::truncate_for_message(other)
                        ),
                    ))
                }
            }
        }
        let now = self.now();
        let mut page: Vec<TokenDto> = Vec::new();
        let mut cursor = after;
        let mut more = false;
        // Status depends on the clock, so it is filtered here, in batches, not in SQL.
        'fetch: loop {
            let batch = self
                .store
                .list_tokens(cursor.as_deref(), q.as_deref(), limit + 1)
                .await?;
            let exhausted = batch.len() <= limit;
            for rec in &batch {
                cursor = Some(token::name_key(&rec.name));
                let dto = match self.effective(rec, now) {
                    Effective::Deleted => continue,
                    _ => self.dto(rec, now),
                };
                if status.is_some_and(|s| s != dto.status) {
                    continue;
                }
                if page.len() == limit {
                    more = true;
                    break 'fetch;
                }
                page.push(dto);
            }
            if exhausted {
                break;
            }
        }
        let next = if more {
            page.last().map(|t| t.name.clone())
        } else {
            None
        };
        Ok(json_response(
            StatusCode::OK,
            &TokenList { tokens: page, next },
        ))
    }

    async fn show(&self, name: &str) -> AdminResult {
        let rec = self.find(name).await?;
        Ok(json_response(StatusCode::OK, &self.dto(&rec, self.now())))
    }

    async fn create(&self, actor: &Actor, body: Bytes) -> AdminResult {
        let obj = json_object(&body)?;
        allow_fields(&obj, &["name", "description", "access"], &[])?;
        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("name", "name must be a string")),
            None => return Err(invalid("name", "name is required")),
        };
        token::validate_name(&name).map_err(|m| invalid("name", m))?;
        let description = parse_description(obj.get("description"))?.flatten();
        let access = match obj.get("access") {
            None => return Err(invalid("access", "access is required")),
            Some(v) => parse_access(v)?,
        };
        let now = self.now();
        let secret = Secret::generate();
        let rec = TokenRecord {
            id: TokenId::generate(),
            name,
            description,
            access,
            secret_hash: secret.hash(),
            status: Status::Active,
            inactive_reason: None,
            created_at: now,
            activated_at: Some(now),
            deactivated_at: None,
            last_used_at: None,
            version: 1,
        };
        // A name may be held by a token the idle policy has already deleted but no sweep has
        // removed yet: that name is free (SPEC §1), so drop the lapsed token first.
        if let Some(old) = self
            .store
            .token_by_name(&token::name_key(&rec.name))
            .await?
        {
            if self.effective(&old, now) == Effective::Deleted {
                let gone =
                    audit::by_idle_policy(now, AuditAction::Delete, &old.id.to_string(), &old.name);
                match self.store.delete_token(old.id, Some(&gone)).await {
                    Ok(()) | Err(StoreError::NotFound) => self.index.forget(old.id).await,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let entry = actor.entry(
            now,
            AuditAction::Create,
            &rec,
            serde_json::json!({"description": rec.description, "access": rec.access.names()}),
        );
        self.store.insert_token(&rec, &entry).await?;
        self.apply(rec.id).await;
        audit::emit(&entry);
        let dto = self.dto(&rec, now);
        Ok(json_response(
            StatusCode::CREATED,
            &CreatedToken {
                token: dto,
                secret: secret.expose().to_string(),
            },
        ))
    }

    async fn update(&self, actor: &Actor, name: &str, body: Bytes) -> AdminResult {
        let obj = json_object(&body)?;
        allow_fields(&obj, &["description", "access"], &["name", "id", "status"])?;
        let description = parse_description(obj.get("description"))?;
        let access = obj.get("access").map(parse_access).transpose()?;
        let rec = self
            .mutate_one(actor, AuditAction::Update, name, |rec| {
                let mut changes = Map::new();
                if let Some(d) = &description {
                    changes.insert(
                        "description".into(),
                        serde_json::json!({"from": rec.description, "to": d}),
                    );
                    rec.description = d.clone();
                }
                if let Some(a) = access {
                    changes.insert(
                        "access".into(),
                        serde_json::json!({"from": rec.access.names(), "to": a.names()}),
                    );
                    rec.access = a;
                }
                Some(Value::Object(changes))
            })
            .await?;
        Ok(json_response(StatusCode::OK, &self.dto(&rec, self.now())))
    }

    async fn delete(&self, actor: &Actor, name: &str) -> AdminResult {
        let rec = self.find(name).await?;
        let entry = actor.entry(self.now(), AuditAction::Delete, &rec, serde_json::json!({}));
        self.store.delete_token(rec.id, Some(&entry)).await?;
        // Committed: forget it before answering, so the next request is refused.
        self.index.forget(rec.id).await;
        audit::emit(&entry);
        Ok(empty_response(StatusCode::NO_CONTENT))
    }

    async fn regenerate(&self, actor: &Actor, name: &str) -> AdminResult {
        let mut secret = None;
        let rec = self
            .mutate_one(actor, AuditAction::Regenerate, name, |rec| {
                let s = Secret::generate();
                rec.secret_hash = s.hash();
                secret = Some(s);
                Some(serde_json::json!({}))
            })
            .await?;
        let secret = secret.ok_or(AdminError::Conflict)?;
        let dto = self.dto(&rec, self.now());
        Ok(json_response(
            StatusCode::OK,
            &CreatedToken {
                token: dto,
                secret: secret.expose().to_string(),
            },
        ))
    }

    /// Read → change → versioned write (with its audit row) → index refresh, retried on a
    /// lost race. `change` returns the audit details, or `None` when there is nothing to write.
    async fn mutate_one(
        &self,
        actor: &Actor,
        action: AuditAction,
        name: &str,
        mut change: impl FnMut(&mut TokenRecord) -> Option<Value>,
    ) -> Result<TokenRecord, AdminError> {
        for _ in 0..RETRIES {
            let mut rec = self.find(name).await?;
            let Some(details) = change(&mut rec) else {
                return Ok(rec);
            };
            let entry = actor.entry(self.now(), action, &rec, details);
            match self
                .store
                .save_tokens(std::slice::from_ref(&rec), std::slice::from_ref(&entry))
                .await
            {
                Ok(()) => {
                    self.apply(rec.id).await;
                    audit::emit(&entry);
                    rec.version += 1;
                    return Ok(rec);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AdminError::Conflict)
    }

    async fn set_status(&self, actor: &Actor, body: Bytes, activate: bool) -> AdminResult {
        let obj = json_object(&body)?;
        allow_fields(&obj, &["names"], &[])?;
        let names = string_list(obj.get("names"), "names")?;
        for _ in 0..RETRIES {
            let now = self.now();
            let mut records: Vec<TokenRecord> = Vec::with_capacity(names.len());
            let mut unknown = Vec::new();
            for n in &names {
                match self.find(n).await {
                    Ok(r) => records.push(r),
                    Err(AdminError::NotFound) => unknown.push(n.clone()),
                    Err(e) => return Err(e),
                }
            }
            if !unknown.is_empty() {
                return Err(AdminError::NamesNotFound(unknown));
            }
            let mut changed: Vec<TokenRecord> = Vec::new();
            let mut entries: Vec<AuditEntry> = Vec::new();
            let mut seen = HashSet::new();
            for rec in &records {
                if !seen.insert(rec.id) {
                    continue;
                }
                let mut r = rec.clone();
                let effective = self.effective(rec, now);
                let change = if activate {
                    // Activating an inactive token restarts its idle clock; an active one is left alone.
                    matches!(effective, Effective::Inactive(_)).then(|| {
                        r.status = Status::Active;
                        r.inactive_reason = None;
                        r.activated_at = Some(now);
                    })
                } else {
                    (r.status == Status::Active).then(|| {
                        r.status = Status::Inactive;
                        r.inactive_reason = Some(InactiveReason::Admin);
                        r.deactivated_at = Some(now);
                    })
                };
                if change.is_some() {
                    let (status, reason) = match effective {
                        Effective::Active => ("active", None),
                        Effective::Inactive(r) => ("inactive", Some(r.as_str())),
                        Effective::Deleted => ("deleted", None),
                    };
                    let action = if activate {
                        AuditAction::Activate
                    } else {
                        AuditAction::Deactivate
                    };
                    let details =
                        serde_json::json!({"previous_status": status, "previous_reason": reason});
                    entries.push(actor.entry(now, action, &r, details));
                    changed.push(r);
                }
            }
            match self.store.save_tokens(&changed, &entries).await {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            for r in &mut changed {
                self.apply(r.id).await;
                r.version += 1;
            }
            entries.iter().for_each(audit::emit);
            let tokens = records
                .iter()
                .map(|rec| {
                    let r = changed.iter().find(|c| c.id == rec.id).unwrap_or(rec);
                    self.dto(r, now)
                })
                .collect();
            return Ok(json_response(StatusCode::OK, &Tokens { tokens }));
        }
        Err(AdminError::Conflict)
    }

    // === IPs ===

    async fn ips(&self, name: &str) -> AdminResult {
        let rec = self.find(name).await?;
        Ok(json_response(StatusCode::OK, &self.ip_list(rec.id).await?))
    }

    async fn ip_list(&self, token_id: TokenId) -> Result<IpList, AdminError> {
        // Write pending usage first, so the list includes requests made a moment ago.
        if let Err(e) = self.usage.flush(self.store.as_ref()).await {
            tracing::warn!(error = %e, "usage flush before listing IPs failed");
        }
        let records = self.store.list_ips(token_id).await?;
        Ok(IpList {
            ips: ip_dtos(records),
        })
    }

    async fn block(&self, actor: &Actor, name: &str, body: Bytes, block: bool) -> AdminResult {
        let obj = json_object(&body)?;
        allow_fields(&obj, &["ips"], &[])?;
        let raw = string_list(obj.get("ips"), "ips")?;
        let mut entries = Vec::with_capacity(raw.len());
        for s in &raw {
            entries.push(BlockEntry::parse(s).map_err(|m| invalid("ips", m))?);
        }
        let rec = self.find(name).await?;
        let listed: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let entry = actor.entry(
            self.now(),
            if block {
                AuditAction::Block
            } else {
                AuditAction::Unblock
            },
            &rec,
            serde_json::json!({ "ips": listed }),
        );
        if block {
            self.store
                .block(rec.id, &entries, self.now(), &entry)
                .await?;
        } else {
            let current = self.store.list_ips(rec.id).await?;
            let exact: Vec<BlockEntry> = current
                .iter()
                .filter(|r| r.blocked_at.is_some())
                .map(|r| r.entry)
                .collect();
            for e in &entries {
                if exact.contains(e) {
                    continue;
                }
                // Not blocked by itself: if a network entry covers it, unblocking it alone
                // would be a no-op that looks like success.
                if let Some(cidr) = exact
                    .iter()
                    .filter(|b| !entries.contains(b))
                    .find(|b| !b.is_single() && b.net().contains(&e.net()))
                {
                    return Err(AdminError::BlockedByCidr {
                        ip: e.to_string(),
                        cidr: cidr.to_string(),
                    });
                }
            }
            self.store.unblock(rec.id, &entries, &entry).await?;
        }
        // Committed: refresh the index so the very next request sees the block list.
        self.apply(rec.id).await;
        audit::emit(&entry);
        Ok(json_response(StatusCode::OK, &self.ip_list(rec.id).await?))
    }
}

impl Admin {
    /// `GET /v1/audit?token=NAME&limit=N`: newest first.
    async fn audit(&self, query: Option<&str>) -> AdminResult {
        let mut token_key: Option<String> = None;
        let mut limit = AUDIT_DEFAULT;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "token" => token_key = Some(token::name_key(&v)).filter(|s| !s.is_empty()),
                "limit" if v.is_empty() => {}
                "limit" => {
                    limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=AUDIT_MAX).contains(n))
                        .ok_or_else(|| {
                            invalid("limit", format!("limit must be 1 to {AUDIT_MAX}"))
                        })?
                }
                other => {
                    return Err(invalid(
                        other,
                        format!(
                            "unknown query parameter {:?}",
                            token::truncate_for_message(other)
                        ),
                    ))
                }
            }
        }
        let rows = self.store.list_audit(token_key.as_deref(), limit).await?;
        let entries = rows
            .into_iter()
            .map(|a| AuditDto {
                at: a.at.rfc3339(),
                actor: a.actor,
                source_ip: a.source_ip,
                action: a.action.to_string(),
                token: a.token,
                token_id: a.token_id,
                details: a.details,
            })
            .collect();
        Ok(json_response(StatusCode::OK, &AuditList { entries }))
    }
}

/// Who is making an admin change, for the audit log.
struct Actor {
    name: String,
    source_ip: IpAddr,
}

impl Actor {
    fn entry(
        &self,
        at: Timestamp,
        action: AuditAction,
        rec: &TokenRecord,
        details: Value,
    ) -> AuditEntry {
        audit::by_admin(&self.name, self.source_ip, at, action, rec, details)
    }
}

fn not_found_path() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found", "message": "no such path"}),
    )
}

/// The IP list of SPEC §4: effective block state per row, newest use first, never-used rows
/// last, then by address.
pub fn ip_dtos(records: Vec<IpRecord>) -> Vec<IpDto> {
    let blocks: Vec<(BlockEntry, Timestamp)> = records
        .iter()
        .filter_map(|r| r.blocked_at.map(|at| (r.entry, at)))
        .collect();
    let mut rows: Vec<(Option<Timestamp>, IpDto)> = records
        .into_iter()
        .map(|r| {
            let cover = match r.blocked_at {
                Some(at) => Some((r.entry, at)),
                None => blocks
                    .iter()
                    .find(|(b, _)| !b.is_single() && b.net().contains(&r.entry.net()))
                    .copied(),
            };
            let dto = IpDto {
                ip: r.entry.to_string(),
                first_used_at: r.first_used_at.map(Timestamp::rfc3339),
                last_used_at: r.last_used_at.map(Timestamp::rfc3339),
                requests: r.requests,
                denied: r.denied,
                blocked: cover.is_some(),
                blocked_by: cover.map(|(b, _)| b.to_string()),
                blocked_at: cover.map(|(_, at)| at.rfc3339()),
            };
            (r.last_used_at, dto)
        })
        .collect();
    rows.sort_by(|(a, x), (b, y)| match (a, b) {
        (Some(a), Some(b)) => b.cmp(a).then_with(|| x.ip.cmp(&y.ip)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => x.ip.cmp(&y.ip),
    });
    rows.into_iter().map(|(_, d)| d).collect()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                AdminError::PayloadTooLarge
            } else {
                AdminError::Invalid {
                    field: None,
                    message: "the request body could not be read".into(),
                }
            }
        })?
        .to_bytes();
    if !bytes.is_empty() && json != Some(true) {
        return Err(AdminError::UnsupportedMediaType);
    }
    Ok(bytes)
}

fn json_object(body: &Bytes) -> Result<Map<String, Value>, AdminError> {
    if body.is_empty() {
        return Err(AdminError::Invalid {
            field: None,
            message: "a JSON object body is required".into(),
        });
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(AdminError::Invalid {
            field: None,
            message: "the body must be a JSON object".into(),
        }),
        Err(e) => Err(AdminError::Invalid {
            field: None,
            message: format!("invalid JSON: {e}"),
        }),
    }
}

/// Refuses unknown fields (naming them) and fields that exist but cannot be changed here.
fn allow_fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    immutable: &[&str],
) -> Result<(), AdminError> {
    for k in obj.keys() {
        if immutable.contains(&k.as_str()) {
            return Err(invalid(k, format!("{k} cannot be changed")));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(
                k,
                format!("unknown field {:?}", token::truncate_for_message(k)),
            ));
        }
    }
    Ok(())
}

/// `None` = absent; `Some(None)` = null (clear); `Some(Some(s))` = set.
fn parse_description(v: Option<&Value>) -> Result<Option<Option<String>>, AdminError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => {
            token::validate_description(s).map_err(|m| invalid("description", m))?;
            Ok(Some(Some(s.clone())))
        }
        Some(_) => Err(invalid(
            "description",
            "description must be a string or null",
        )),
    }
}

fn parse_access(v: &Value) -> Result<Access, AdminError> {
    let Value::Array(items) = v else {
        return Err(invalid("access", "access must be an array of access types"));
    };
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => names.push(s.as_str()),
            _ => return Err(invalid("access", "access must be an array of strings")),
        }
    }
    Access::parse_list(names).map_err(|m| invalid("access", m))
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, AdminError> {
    let Some(Value::Array(items)) = v else {
        return Err(invalid(
            field,
            format!("{field} must be an array of strings"),
        ));
    };
    if items.is_empty() || items.len() > MAX_LIST {
        return Err(invalid(
            field,
            format!("{field} must hold 1 to {MAX_LIST} entries"),
        ));
    }
    items
        .iter()
        .map(|i| match i {
            Value::String(s) => Ok(s.clone()),
            _ => Err(invalid(
                field,
                format!("{field} must be an array of strings"),
            )),
        })
        .collect()
}
