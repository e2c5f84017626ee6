//! The token endpoints: create, list, show, patch, delete, regenerate, and the bulk
//! activate/deactivate; plus how a stored token is read (`find`) and shown (`dto`).

use std::collections::HashSet;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value};

use crate::audit;
use crate::clock::Timestamp;
use crate::model::{
    AuditAction, AuditEntry, InactiveReason, PreviousSecret, Status, TokenId, TokenRecord,
};
use crate::policy::{self, Effective, Standing};
use crate::store::{Conflict, StoreError};
use crate::token::{self, Secret};

use super::audit::Actor;
use super::body::{self, Expiry, NamesBody, NewToken, RegenerateBody, TokenPatch};
use super::dto::{CreatedToken, TokenDto, TokenList, Tokens};
use super::error::invalid;
use super::query::TOKEN_LIST;
use super::{empty_response, json_response, Admin, AdminError, AdminResult};

/// Attempts at a mutation that lost an optimistic-concurrency race.
const RETRIES: usize = 5;

impl Admin {
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
            access: rec.access.as_slice().to_vec(),
            status,
            inactive_reason: reason,
            created_at: rec.created_at.rfc3339(),
            activated_at: rec.activated_at.map(Timestamp::rfc3339),
            deactivated_at: rec.deactivated_at.map(Timestamp::rfc3339),
            last_used_at: last_used.map(Timestamp::rfc3339),
            expires_at: rec.expires_at.map(Timestamp::rfc3339),
            // A grace that has ended is not shown: that secret no longer works.
            previous_secret_expires_at: rec
                .previous_secret
                .filter(|p| p.until > now)
                .map(|p| p.until.rfc3339()),
            rate_limit: rec.rate_limit,
            allowed_ips: allowed_text(&rec.allowed_ips),
            inactive_at: (status == Status::Active)
                .then(|| since.plus(self.lifecycle.inactive_after).rfc3339()),
            delete_at: Some(since.plus(self.lifecycle.delete_after).rfc3339()),
        }
    }

    /// A token by name (ignoring case), unless it does not exist or the idle policy has
    /// already deleted it.
    pub(super) async fn find(&self, name: &str) -> Result<TokenRecord, AdminError> {
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

    pub(super) async fn list(&self, query: Option<&str>) -> AdminResult {
        let query = TOKEN_LIST.parse(query)?;
        let limit = query.limit;
        let now = self.now();
        let mut page: Vec<TokenDto> = Vec::new();
        let mut cursor = query.after;
        let mut more = false;
        // Status depends on the clock, so it is filtered here, in batches, not in SQL.
        'fetch: loop {
            let batch = self
                .store
                .list_tokens(cursor.as_deref(), query.q.as_deref(), limit + 1)
                .await?;
            let exhausted = batch.len() <= limit;
            for rec in &batch {
                cursor = Some(token::name_key(&rec.name));
                let dto = match self.effective(rec, now) {
                    Effective::Deleted => continue,
                    _ => self.dto(rec, now),
                };
                if query.status.is_some_and(|s| s != dto.status) {
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

    pub(super) async fn show(&self, name: &str) -> AdminResult {
        let rec = self.find(name).await?;
        Ok(json_response(StatusCode::OK, &self.dto(&rec, self.now())))
    }

    /// The `expires_at` a create or a patch asks for: in the future, and within
    /// `lifecycle.max_expiry` when that is set (a create must then carry one). `None` for a
    /// patch that does not touch the expiry.
    fn checked_expiry(
        &self,
        asked: Option<Expiry>,
        now: Timestamp,
        creating: bool,
    ) -> Result<Option<Option<Timestamp>>, AdminError> {
        let max = self.lifecycle.max_expiry;
        let (field, at) = match asked {
            None if !creating => return Ok(None),
            None | Some(Expiry::Never) => match max {
                None => return Ok(Some(None)),
                Some(m) => {
                    return Err(invalid(
                        "expires_at",
                        format!(
                            "lifecycle.max_expiry ({}) requires every token to expire: give \
                             expires_at or expires_in",
                            humantime::format_duration(m)
                        ),
                    ))
                }
            },
            Some(Expiry::At(t)) => ("expires_at", t),
            Some(Expiry::In(d)) => ("expires_in", now.plus(d)),
        };
        if at <= now {
            return Err(invalid(field, "the expiry must lie in the future"));
        }
        if let Some(m) = max.filter(|m| at > now.plus(*m)) {
            return Err(invalid(
                field,
                format!(
                    "the expiry must lie within lifecycle.max_expiry ({}) from now",
                    humantime::format_duration(m)
                ),
            ));
        }
        Ok(Some(Some(at)))
    }

    pub(super) async fn create(&self, actor: &Actor, body: Bytes) -> AdminResult {
        let parts = body::parse::<NewToken>(&body)?.into_parts()?;
        let access = self
            .index
            .access_types()
            .check_request(parts.access, None)
            .map_err(|m| invalid("access", m))?;
        let now = self.now();
        let expires_at = self.checked_expiry(parts.expiry, now, true)?.flatten();
        let secret = Secret::generate();
        let rec = TokenRecord {
            id: TokenId::generate(),
            name: parts.name,
            description: parts.description,
            access,
            secret_hash: secret.hash(),
            status: Status::Active,
            inactive_reason: None,
            created_at: now,
            activated_at: Some(now),
            deactivated_at: None,
            last_used_at: None,
            expires_at,
            previous_secret: None,
            rate_limit: parts.rate_limit,
            allowed_ips: parts.allowed_ips,
            revoked_hash: None,
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
            serde_json::json!({
                "description": rec.description,
                "access": rec.access.as_slice(),
                "expires_at": rec.expires_at.map(Timestamp::rfc3339),
                "rate_limit": rec.rate_limit,
                "allowed_ips": allowed_text(&rec.allowed_ips),
            }),
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

    pub(super) async fn update(&self, actor: &Actor, name: &str, body: Bytes) -> AdminResult {
        let patch = body::parse::<TokenPatch>(&body)?;
        let description = patch.description();
        let access = patch.access();
        let expires_at = self.checked_expiry(patch.expiry()?, self.now(), false)?;
        let rate_limit = patch.rate_limit();
        let allowed_ips = patch.allowed_ips();
        let types = self.index.access_types();
        // Which types are acceptable depends on what the token holds (it may keep a type no
        // longer configured): checked against the record read, refusing the whole patch.
        let mut refused = None;
        let rec = self
            .mutate_one(actor, AuditAction::Update, name, |rec| {
                let access = match access
                    .clone()
                    .map(|a| types.check_request(a, Some(&rec.access)))
                {
                    None => None,
                    Some(Ok(a)) => Some(a),
                    Some(Err(m)) => {
                        refused = Some(m);
                        return None;
                    }
                };
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
                        serde_json::json!({"from": rec.access.as_slice(), "to": a.as_slice()}),
                    );
                    rec.access = a;
                }
                if let Some(e) = expires_at {
                    changes.insert(
                        "expires_at".into(),
                        serde_json::json!({
                            "from": rec.expires_at.map(Timestamp::rfc3339),
                            "to": e.map(Timestamp::rfc3339),
                        }),
                    );
                    rec.expires_at = e;
                }
                if let Some(l) = rate_limit {
                    changes.insert(
                        "rate_limit".into(),
                        serde_json::json!({"from": rec.rate_limit, "to": l}),
                    );
                    rec.rate_limit = l;
                }
                if let Some(a) = &allowed_ips {
                    changes.insert(
                        "allowed_ips".into(),
                        serde_json::json!({
                            "from": allowed_text(&rec.allowed_ips),
                            "to": allowed_text(a),
                        }),
                    );
                    rec.allowed_ips = a.clone();
                }
                Some(Value::Object(changes))
            })
            .await?;
        if let Some(m) = refused {
            return Err(invalid("access", m));
        }
        Ok(json_response(StatusCode::OK, &self.dto(&rec, self.now())))
    }

    pub(super) async fn delete(&self, actor: &Actor, name: &str) -> AdminResult {
        let rec = self.find(name).await?;
        let entry = actor.entry(self.now(), AuditAction::Delete, &rec, serde_json::json!({}));
        self.store.delete_token(rec.id, Some(&entry)).await?;
        // Committed: forget it before answering, so the next request is refused.
        self.index.forget(rec.id).await;
        audit::emit(&entry);
        Ok(empty_response(StatusCode::NO_CONTENT))
    }

    /// A new secret; with a `grace`, the replaced one keeps working until its end (at most
    /// `lifecycle.max_rotation_grace`). A regenerate always ends an earlier grace at once: at
    /// most one previous secret works. Status, expiry and the idle clock do not change.
    pub(super) async fn regenerate(&self, actor: &Actor, name: &str, body: Bytes) -> AdminResult {
        let grace = RegenerateBody::grace_of(&body)?.filter(|g| !g.is_zero());
        let max = self.lifecycle.max_rotation_grace;
        if grace.is_some_and(|g| g > max) {
            return Err(invalid(
                "grace",
                format!(
                    "grace must be at most lifecycle.max_rotation_grace ({})",
                    humantime::format_duration(max)
                ),
            ));
        }
        let mut secret = None;
        let rec = self
            .mutate_one(actor, AuditAction::Regenerate, name, |rec| {
                let s = Secret::generate();
                // A reported secret is public: it gets no grace, whatever was asked.
                let was_revoked = rec.revoked_hash.take().is_some();
                let until = grace.filter(|_| !was_revoked).map(|g| self.now().plus(g));
                rec.previous_secret = until.map(|until| PreviousSecret {
                    hash: rec.secret_hash,
                    until,
                });
                rec.secret_hash = s.hash();
                secret = Some(s);
                // A revoked token stays inactive, and may be activated again now that its
                // reported secret is gone.
                if rec.inactive_reason == Some(InactiveReason::Revoked) {
                    rec.inactive_reason = Some(InactiveReason::Admin);
                }
                let mut details = serde_json::json!({
                    "previous_secret_expires_at": until.map(Timestamp::rfc3339),
                });
                if was_revoked {
                    details["revoked"] = serde_json::json!({"from": true, "to": false});
                }
                Some(details)
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
                Err(StoreError::Conflict(Conflict::Version)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AdminError::Conflict)
    }

    /// `POST /v1/tokens/activate|deactivate`: all of `names` or, if any is unknown, none.
    pub(super) async fn set_status(
        &self,
        actor: &Actor,
        body: Bytes,
        activate: bool,
    ) -> AdminResult {
        let names = body::parse::<NamesBody>(&body)?.into_names()?;
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
            if activate {
                // Activation never lifts an expiry (PATCH expires_at does): all or nothing.
                let expired: Vec<String> = records
                    .iter()
                    .filter(|r| {
                        self.effective(r, now) == Effective::Inactive(InactiveReason::Expired)
                    })
                    .map(|r| r.name.clone())
                    .collect();
                if !expired.is_empty() {
                    return Err(AdminError::TokensExpired(expired));
                }
                // A reported secret is public: regenerate first (which replaces it).
                let revoked: Vec<String> = records
                    .iter()
                    .filter(|r| r.revoked_hash.is_some())
                    .map(|r| r.name.clone())
                    .collect();
                if !revoked.is_empty() {
                    return Err(AdminError::TokensRevoked(revoked));
                }
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
                Err(StoreError::Conflict(Conflict::Version)) => continue,
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
}

/// An allow-list as the API shows it: canonical entries, or `null` for any client IP.
fn allowed_text(list: &Option<Vec<crate::net::BlockEntry>>) -> Option<Vec<String>> {
    list.as_ref()
        .map(|l| l.iter().map(ToString::to_string).collect())
}
