//! The embedded store's [`Store`] implementation: its SQL and transactions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    outbox, probe, unavailable, SqliteStore, Step, BUSY_TIMEOUT, FLUSH_BUSY_TIMEOUT,
    PING_BUSY_TIMEOUT, THOROUGH_EVERY,
};
use crate::audit;
use crate::clock::Timestamp;
use crate::events::{AttemptResult, Claimed, DeliveryRecord, OutboxRow, Router};
use crate::model::{
    AuditEntry, HourCounts, IpRecord, TokenId, TokenRecord, TokenWithBlocks, UsageDelta,
};
use crate::net::BlockEntry;
use crate::store::rows::{self, TOKEN_COLUMNS};
use crate::store::sql::{self, Dialect};
use crate::store::{
    Conflict, Store, StoreError, StoreResult, SweepCutoffs, SweepOutcome, TokenSink, LOAD_BATCH,
};

const SQL: Dialect = Dialect::Sqlite;

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

fn blocks_of(conn: &Connection, token_id: &str) -> Step<Vec<BlockEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT entry FROM token_ips WHERE token_id = ?1 AND blocked_at IS NOT NULL",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([token_id], |r| r.get::<_, String>(0))
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for r in rows {
        let s = r.map_err(unavailable)?;
        out.push(rows::block_entry(&s).map_err(StoreError::Unavailable)?);
    }
    Ok(out)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_all(&self, sink: TokenSink) -> StoreResult<()> {
        self.run(move |conn| {
            let mut blocks: HashMap<String, Vec<BlockEntry>> = HashMap::new();
            {
                let mut stmt = conn
                    .prepare("SELECT token_id, entry FROM token_ips WHERE blocked_at IS NOT NULL")
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .map_err(unavailable)?;
                for r in rows {
                    let (id, entry) = r.map_err(unavailable)?;
                    let entry = rows::block_entry(&entry).map_err(StoreError::Unavailable)?;
                    blocks.entry(id).or_default().push(entry);
                }
            }
            let mut stmt = conn
                .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| rows::token(r))
                .map_err(unavailable)?;
            let closed = || StoreError::Unavailable("the token load was abandoned".into());
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            for r in rows {
                let token = r.map_err(unavailable)?;
                let b = blocks.remove(&token.id.to_string()).unwrap_or_default();
                batch.push(TokenWithBlocks { token, blocks: b });
                if batch.len() == LOAD_BATCH {
                    // On a blocking thread: waits while the index applies the previous batch.
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
                    sink.blocking_send(full).map_err(|_| closed())?;
                }
            }
            if !batch.is_empty() {
                sink.blocking_send(batch).map_err(|_| closed())?;
            }
            Ok(())
        })
        .await
    }

    async fn token_by_id(&self, id: TokenId) -> StoreResult<Option<TokenWithBlocks>> {
        let id = id.to_string();
        self.run(move |conn| {
            let token = conn
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                    [&id],
                    |r| rows::token(r),
                )
                .optional()
                .map_err(unavailable)?;
            match token {
                None => Ok(None),
                Some(token) => {
                    let blocks = blocks_of(conn, &id)?;
                    Ok(Some(TokenWithBlocks { token, blocks }))
                }
            }
        })
        .await
    }

    async fn token_by_name(&self, name_key: &str) -> StoreResult<Option<TokenRecord>> {
        let key = name_key.to_string();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name_key = ?1"),
                [&key],
                |r| rows::token(r),
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn list_tokens(
        &self,
        after: Option<&str>,
        q: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>> {
        let after = after.unwrap_or("").to_string();
        let q = q.unwrap_or("").to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            // instr() rather than LIKE: `q` may contain `%` or `_`, which must match literally.
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens
                     WHERE name_key > ?1 AND instr(name_key, ?2) > 0
                     ORDER BY name_key LIMIT ?3"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after, q, limit], |r| rows::token(r))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn insert_token(&self, t: &TokenRecord, audit: &AuditEntry) -> StoreResult<()> {
        let t = t.clone();
        let audit = audit.clone();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let values = TokenValues::of(&t);
            let res = tx.execute(
                "INSERT INTO tokens (id, name, name_key, description, access, secret_hash, status,
                    inactive_reason, created_at, activated_at, deactivated_at, last_used_at, version,
                    expires_at, previous_secret_hash, previous_secret_expires_at, access_types,
                    rate_limit_requests, rate_limit_per_ms, allowed_ips, revoked_secret_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21)",
                rusqlite::params_from_iter(values.params()),
            );
            match res {
                Ok(_) => {
                    let n = write_audit(&tx, &audit, ev.as_deref())?;
                    commit(tx, ev.as_deref(), n)
                }
                // Which unique column collided: the failed statement changed nothing, so the
                // name is taken exactly if a row with its key is there.
                Err(e) if is_unique_violation(&e) => {
                    let taken = tx
                        .prepare_cached("SELECT 1 FROM tokens WHERE name_key = ?1")
                        .and_then(|mut stmt| stmt.exists([crate::token::name_key(&t.name)]))
                        .map_err(unavailable)?;
                    Err(StoreError::Conflict(if taken {
                        Conflict::NameTaken
                    } else {
                        Conflict::Duplicate
                    })
                    .into())
                }
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord], audit: &[AuditEntry]) -> StoreResult<()> {
        let tokens = tokens.to_vec();
        let audit = audit.to_vec();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            for t in &tokens {
                let values = TokenValues::of(t);
                // The insert's numbering: name, name_key, created_at and last_used_at
                // (?2, ?3, ?9, ?12) never change and are not set.
                let n = tx
                    .execute(
                        "UPDATE tokens SET description = ?4, access = ?5, secret_hash = ?6,
                            status = ?7, inactive_reason = ?8, activated_at = ?10,
                            deactivated_at = ?11, expires_at = ?14, previous_secret_hash = ?15,
                            previous_secret_expires_at = ?16, access_types = ?17,
                            rate_limit_requests = ?18, rate_limit_per_ms = ?19, allowed_ips = ?20,
                            revoked_secret_hash = ?21, version = version + 1
                         WHERE id = ?1 AND version = ?13",
                        rusqlite::params_from_iter(values.params()),
                    )
                    .map_err(unavailable)?;
                if n == 0 {
                    let exists = tx
                        .query_row("SELECT 1 FROM tokens WHERE id = ?1", [&t.id], |_| Ok(()))
                        .optional()
                        .map_err(unavailable)?
                        .is_some();
                    // Dropping `tx` rolls back the rows already written.
                    return Err(if exists {
                        StoreError::Conflict(Conflict::Version)
                    } else {
                        StoreError::NotFound
                    }
                    .into());
                }
            }
            let mut n = 0;
            for a in &audit {
                n += write_audit(&tx, a, ev.as_deref())?;
            }
            commit(tx, ev.as_deref(), n)
        })
        .await
    }

    async fn delete_token(&self, id: TokenId, audit: Option<&AuditEntry>) -> StoreResult<()> {
        let id = id.to_string();
        let audit = audit.cloned();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let n = tx
                .execute("DELETE FROM tokens WHERE id = ?1", [&id])
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound.into());
            }
            let mut n = 0;
            if let Some(a) = &audit {
                n = write_audit(&tx, a, ev.as_deref())?;
            }
            commit(tx, ev.as_deref(), n)
        })
        .await
    }

    async fn list_ips(&self, token_id: TokenId) -> StoreResult<Vec<IpRecord>> {
        let id = token_id.to_string();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {} FROM token_ips WHERE token_id = ?1",
                    rows::IP_COLUMNS
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([&id], |r| rows::ip(r))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn block(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        now: Timestamp,
        audit: &AuditEntry,
    ) -> StoreResult<()> {
        let id = token_id.to_string();
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let audit = audit.clone();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let exists = tx
                .query_row("SELECT 1 FROM tokens WHERE id = ?1", [&id], |_| Ok(()))
                .optional()
                .map_err(unavailable)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound.into());
            }
            for e in &entries {
                // A repeat keeps the first blocked_at.
                tx.execute(
                    "INSERT INTO token_ips (token_id, entry, blocked_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (token_id, entry) DO UPDATE SET
                        blocked_at = coalesce(blocked_at, excluded.blocked_at)",
                    params![id, e, now.0],
                )
                .map_err(unavailable)?;
            }
            let n = write_audit(&tx, &audit, ev.as_deref())?;
            commit(tx, ev.as_deref(), n)
        })
        .await
    }

    async fn unblock(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        audit: &AuditEntry,
    ) -> StoreResult<()> {
        let id = token_id.to_string();
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let audit = audit.clone();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            for e in &entries {
                tx.execute(
                    "UPDATE token_ips SET blocked_at = NULL WHERE token_id = ?1 AND entry = ?2",
                    params![id, e],
                )
                .map_err(unavailable)?;
                // A row that existed only as a block entry (a CIDR, or an IP never seen) goes.
                tx.execute(
                    "DELETE FROM token_ips WHERE token_id = ?1 AND entry = ?2
                        AND requests = 0 AND denied = 0 AND first_used_at IS NULL",
                    params![id, e],
                )
                .map_err(unavailable)?;
            }
            let n = write_audit(&tx, &audit, ev.as_deref())?;
            commit(tx, ev.as_deref(), n)
        })
        .await
    }

    async fn flush_usage(&self, batch: &[UsageDelta], max_ips: usize) -> StoreResult<()> {
        let batch = batch.to_vec();
        let ev = self.router();
        self.run(move |conn| {
            // Usage is write-behind: a crash may lose the last interval anyway, so skip the
            // fsync per commit here; the next FULL commit syncs the WAL including these pages.
            // And wait less for a lock held elsewhere: a failed flush is retried next interval
            // anyway, while the connection it holds meanwhile is the admin API's too.
            conn.execute_batch("PRAGMA synchronous = NORMAL")
                .and_then(|()| conn.busy_timeout(FLUSH_BUSY_TIMEOUT))
                .map_err(unavailable)?;
            let res = flush_blocking(conn, &batch, max_ips, ev.as_deref());
            let reset = conn
                .execute_batch("PRAGMA synchronous = FULL")
                .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
                .map_err(unavailable);
            match (res, reset) {
                (res, Ok(())) => res,
                (Ok(()), Err(then)) => Err(then),
                // The reset's error is the answer; a fault seen by the flush still counts.
                (Err(first), Err(mut then)) => {
                    then.fault |= first.fault;
                    Err(then)
                }
            }
        })
        .await
    }

    async fn usage_hours(
        &self,
        token_id: TokenId,
        ip: Option<std::net::IpAddr>,
        from: Timestamp,
        until: Timestamp,
    ) -> StoreResult<Vec<HourCounts>> {
        let id = token_id.to_string();
        let ip = crate::store::sql::hour_ip(ip);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(&SQL.usage_hours_select())
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![id, ip, from.0, until.0], |r| rows::hour(r))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn ip_days(
        &self,
        token_id: TokenId,
        since: Timestamp,
    ) -> StoreResult<Vec<(String, i64, u64)>> {
        let id = token_id.to_string();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(&SQL.ip_days_select())
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![id, since.0], |r| rows::ip_day(r))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn sweep(&self, at: SweepCutoffs, keep: &[String]) -> StoreResult<SweepOutcome> {
        let keep = serde_json::Value::from(keep.to_vec()).to_string();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let deleted = id_names(&tx, &SQL.sweep_delete(), params![at.delete_before.0, keep])?;
            let lapse = at.inactive_after_ms;
            let deactivated = id_names(
                &tx,
                &SQL.sweep_deactivate(),
                params![at.inactive_before.0, lapse, keep],
            )?;
            let expired = id_names(&tx, &SQL.sweep_expired(), params![at.now.0])?;
            // Same transaction: no idle change without its audit row.
            let audit = audit::of_sweep(at.now, &deleted, &deactivated, &expired);
            let mut n = 0;
            for a in &audit {
                n += write_audit(&tx, a, ev.as_deref())?;
            }
            n += outbox::expiring_events(&tx, ev.as_deref(), at.now, at.expiring_before)?;
            let pruned = tx
                .execute("DELETE FROM audit WHERE at < ?1", [at.audit_before.0])
                .map_err(unavailable)?;
            let usage_pruned = tx
                .execute(
                    "DELETE FROM usage_hours WHERE hour < ?1",
                    [at.usage_before.0],
                )
                .map_err(unavailable)?;
            commit(tx, ev.as_deref(), n)?;
            Ok(SweepOutcome {
                deactivated,
                deleted,
                expired,
                audit,
                pruned,
                usage_pruned,
            })
        })
        .await
    }

    async fn list_audit(
        &self,
        token_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>> {
        let key = token_key.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {} FROM audit WHERE ?1 IS NULL OR token_key = ?1
                     ORDER BY seq DESC LIMIT ?2",
                    rows::AUDIT_COLUMNS
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![key, limit], |r| rows::audit(r))
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn enqueue_events(&self, rows: &[OutboxRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows.to_vec();
        let ev = self.router();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let n = outbox::write_rows(&tx, &rows)?;
            commit(tx, ev.as_deref(), n)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        endpoint: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<(Vec<Claimed>, u64)> {
        let (owner, endpoint) = (owner.to_string(), endpoint.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| outbox::claim(conn, &owner, &endpoint, now, lease_until, limit))
            .await
    }

    async fn finish_delivery(
        &self,
        owner: &str,
        lease_until: Timestamp,
        id: &str,
        result: &AttemptResult,
    ) -> StoreResult<bool> {
        let (owner, id, result) = (owner.to_string(), id.to_string(), result.clone());
        self.run(move |conn| outbox::finish(conn, &owner, lease_until, &id, &result))
            .await
    }

    async fn list_deliveries(&self, limit: usize) -> StoreResult<Vec<DeliveryRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| outbox::deliveries(conn, limit)).await
    }

    async fn prune_deliveries(
        &self,
        before: Timestamp,
        known: &[String],
        orphaned_before: Timestamp,
    ) -> StoreResult<usize> {
        let known = serde_json::Value::from(known.to_vec()).to_string();
        self.run(move |conn| outbox::prune(conn, before, &known, orphaned_before))
            .await
    }

    /// Ready means able to commit, not only to read. In WAL mode a write lock held by another
    /// process (a `sqlite3` shell left inside a transaction, a maintenance script) blocks
    /// writers only, so a read alone would report ready while every admin change and usage
    /// flush fails with SQLITE_BUSY: the probe takes the write lock, waiting only briefly,
    /// and rolls back (nothing is written). After a call failed with a fault of the file
    /// itself (damaged pages, disk full, read-only, I/O error), which a read of one table
    /// would not notice, the probe also runs `PRAGMA quick_check` and commits a write; the
    /// store is ready again once both succeed.
    async fn ping(&self) -> StoreResult<()> {
        let fault = self.fault.clone();
        if fault.load(Ordering::Acquire) {
            // The thorough check reads the whole file while holding the one connection: at
            // most one per THOROUGH_EVERY, however often /readyz is polled.
            let mut last = self
                .thorough_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|t| t.elapsed() < THOROUGH_EVERY) {
                return Err(StoreError::Unavailable(
                    "the database failed; it is checked again shortly".into(),
                ));
            }
            *last = Some(std::time::Instant::now());
        }
        self.run(move |conn| {
            conn.busy_timeout(PING_BUSY_TIMEOUT).map_err(unavailable)?;
            let res = probe(conn, fault.load(Ordering::Acquire));
            conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
            res.map_err(unavailable)?;
            fault.store(false, Ordering::Release);
            Ok(())
        })
        .await
    }
}

/// The (id, name) pairs of the rows a `RETURNING id, name` statement changed.
fn id_names(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Step<Vec<(String, String)>> {
    let mut stmt = tx.prepare(sql).map_err(unavailable)?;
    let rows = stmt
        .query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Commits `tx`, which wrote `events` outbox rows, and then wakes the dispatcher.
fn commit(tx: rusqlite::Transaction<'_>, router: Option<&Router>, events: usize) -> Step<()> {
    tx.commit().map_err(unavailable)?;
    if let (Some(r), true) = (router, events > 0) {
        r.written();
    }
    Ok(())
}

/// Writes the audit row and the outbox rows of its event; returns how many of those.
fn write_audit(
    tx: &rusqlite::Transaction<'_>,
    a: &AuditEntry,
    router: Option<&Router>,
) -> Step<usize> {
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, source_ip, action, token, token_key, token_id, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            a.at.0,
            a.actor,
            a.source_ip,
            a.action,
            a.token,
            crate::token::name_key(&a.token),
            a.token_id,
            a.details.to_string(),
        ])
    })
    .map_err(unavailable)?;
    outbox::audit_events(tx, router, [a])
}

fn flush_blocking(
    conn: &mut Connection,
    batch: &[UsageDelta],
    max_ips: usize,
    router: Option<&Router>,
) -> Step<()> {
    // IMMEDIATE: the write lock is taken (with the busy wait) up front; a deferred transaction
    // that reads first could not wait for it when its first write came.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    // Per token: does it still exist (usage of a token deleted since is dropped), and its
    // latest use in this batch. One lookup per token, not one per (token, IP) row: a batch
    // from 10 000 client IPs of one token is 10 000 upserts and one existence check.
    let mut touched: HashMap<TokenId, (bool, Option<i64>)> = HashMap::new();
    let mut names: HashMap<TokenId, String> = HashMap::new();
    {
        let mut exists = tx
            .prepare_cached("SELECT name FROM tokens WHERE id = ?1")
            .map_err(unavailable)?;
        for d in batch {
            if let std::collections::hash_map::Entry::Vacant(e) = touched.entry(d.token_id) {
                let name: Option<String> = exists
                    .query_row([&d.token_id], |r| r.get(0))
                    .optional()
                    .map_err(unavailable)?;
                e.insert((name.is_some(), None));
                if let Some(name) = name {
                    names.insert(d.token_id, name);
                }
            }
        }
    }
    // Before the upserts: `ip.first_seen` needs the records as they were.
    let events = outbox::usage_events(&tx, router, batch, &names)?;
    {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO token_ips (token_id, entry, first_used_at, last_used_at, requests, denied)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (token_id, entry) DO UPDATE SET
                    first_used_at = coalesce(min(first_used_at, excluded.first_used_at),
                                             first_used_at, excluded.first_used_at),
                    last_used_at = coalesce(max(last_used_at, excluded.last_used_at),
                                            last_used_at, excluded.last_used_at),
                    requests = requests + excluded.requests,
                    denied = denied + excluded.denied",
            )
            .map_err(unavailable)?;
        let mut ip = IpText::default();
        for d in batch {
            let Some((true, last)) = touched.get_mut(&d.token_id) else {
                continue;
            };
            // A refusal other than a block or the allow-list makes no record.
            let Some(addr) = d.ip.filter(|_| d.requests > 0 || d.denied > 0) else {
                continue;
            };
            upsert
                .execute(params![
                    d.token_id,
                    ip.format(crate::net::canonical_ip(addr)),
                    d.first_used_at.map(|x| x.0),
                    d.last_used_at.map(|x| x.0),
                    i64::try_from(d.requests).unwrap_or(i64::MAX),
                    i64::try_from(d.denied).unwrap_or(i64::MAX),
                ])
                .map_err(unavailable)?;
            if let Some(l) = d.last_used_at {
                *last = Some(last.map_or(l.0, |x| x.max(l.0)));
            }
        }
        let mut raise = tx
            .prepare_cached(
                "UPDATE tokens SET last_used_at = coalesce(max(last_used_at, ?2), ?2) WHERE id = ?1",
            )
            .map_err(unavailable)?;
        for (id, (_, last)) in &touched {
            if let Some(l) = last {
                raise.execute(params![id, l]).map_err(unavailable)?;
            }
        }
    }
    write_hours(&tx, batch, &touched)?;
    for (id, (found, _)) in &touched {
        if *found {
            trim_ips(&tx, &id.to_string(), max_ips)?;
        }
    }
    commit(tx, router, events)
}

/// The flush's hourly rows (after the records: an IP's row is written only if it has one).
fn write_hours(
    tx: &rusqlite::Transaction<'_>,
    batch: &[UsageDelta],
    touched: &HashMap<TokenId, (bool, Option<i64>)>,
) -> Step<()> {
    let cols = sql::HOUR_COLUMNS.join(", ");
    let values = (4..4 + sql::HOUR_COLUMNS.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut upsert = tx
        .prepare_cached(&format!(
            "INSERT INTO usage_hours (token_id, ip, hour, {cols})
             SELECT ?1, ?2, ?3, {values}
             WHERE ?2 = '' OR EXISTS (SELECT 1 FROM token_ips WHERE token_id = ?1 AND entry = ?2)
             ON CONFLICT (token_id, ip, hour) DO UPDATE SET {set}",
            set = SQL.hour_sums_update(),
        ))
        .map_err(unavailable)?;
    for ((id, ip, hour), sums) in sql::hour_rows(batch) {
        if !matches!(touched.get(&id), Some((true, _))) {
            continue;
        }
        let [r, a, b, c, d, e, f, g] = sums;
        upsert
            .execute(params![id, ip, hour, r, a, b, c, d, e, f, g])
            .map_err(unavailable)?;
    }
    Ok(())
}

/// An IP's text form written into a reused buffer (a flush formats thousands of them).
#[derive(Default)]
struct IpText(String);

impl IpText {
    fn format(&mut self, ip: std::net::IpAddr) -> &str {
        use std::fmt::Write;
        self.0.clear();
        let _ = write!(self.0, "{ip}");
        &self.0
    }
}

/// Keeps at most `max_ips` unblocked records for a token (see [`sql::trim_victims`]).
fn trim_ips(tx: &rusqlite::Transaction<'_>, token_id: &str, max_ips: usize) -> Step<()> {
    let count: i64 = tx
        .query_row(
            "SELECT count(*) FROM token_ips WHERE token_id = ?1 AND blocked_at IS NULL",
            [token_id],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    if usize::try_from(count).unwrap_or(0) <= max_ips {
        return Ok(());
    }
    let rows = {
        let mut stmt = tx.prepare_cached(&SQL.trim_rows()).map_err(unavailable)?;
        let rows = stmt
            .query_map([token_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(unavailable)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?
    };
    let doomed = sql::trim_victims(rows, max_ips).map_err(StoreError::Unavailable)?;
    let mut del = tx
        .prepare_cached("DELETE FROM token_ips WHERE token_id = ?1 AND entry = ?2")
        .map_err(unavailable)?;
    // The history of the IP records it keeps (SPEC §12): an evicted record's goes too.
    let mut del_hours = tx
        .prepare_cached("DELETE FROM usage_hours WHERE token_id = ?1 AND ip = ?2")
        .map_err(unavailable)?;
    for entry in doomed {
        del.execute(params![token_id, entry]).map_err(unavailable)?;
        del_hours
            .execute(params![token_id, entry])
            .map_err(unavailable)?;
    }
    Ok(())
}

/// A token's column values in the insert's order (?1 to ?20), owned, for the insert and the
/// update (which reads the same numbers).
struct TokenValues<'a> {
    t: &'a TokenRecord,
    name_key: String,
    previous_hash: Option<Vec<u8>>,
    access_types: String,
    rate: (Option<i64>, Option<i64>),
    allowed: Option<String>,
    revoked_hash: Option<Vec<u8>>,
}

impl<'a> TokenValues<'a> {
    fn of(t: &'a TokenRecord) -> TokenValues<'a> {
        TokenValues {
            t,
            name_key: crate::token::name_key(&t.name),
            previous_hash: t.previous_secret.map(|p| p.hash.as_bytes().to_vec()),
            access_types: t.access.stored(),
            rate: rows::rate_limit_columns(t.rate_limit),
            allowed: rows::allowed_ips_text(&t.allowed_ips),
            revoked_hash: t.revoked_hash.map(|h| h.as_bytes().to_vec()),
        }
    }

    fn params(&self) -> [Box<dyn rusqlite::ToSql + '_>; 21] {
        let t = self.t;
        [
            Box::new(&t.id),
            Box::new(&t.name),
            Box::new(&self.name_key),
            Box::new(&t.description),
            Box::new(t.access.legacy_bits()),
            Box::new(t.secret_hash.as_bytes().as_slice()),
            Box::new(t.status.as_str()),
            Box::new(t.inactive_reason.map(|r| r.db_str())),
            Box::new(t.created_at.0),
            Box::new(t.activated_at.map(|x| x.0)),
            Box::new(t.deactivated_at.map(|x| x.0)),
            Box::new(t.last_used_at.map(|x| x.0)),
            Box::new(t.version),
            Box::new(t.expires_at.map(|x| x.0)),
            Box::new(&self.previous_hash),
            Box::new(t.previous_secret.map(|p| p.until.0)),
            Box::new(&self.access_types),
            Box::new(self.rate.0),
            Box::new(self.rate.1),
            Box::new(&self.allowed),
            Box::new(&self.revoked_hash),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AccessNames;
    use crate::model::{AuditAction, Status};
    use crate::token::SecretHash;

    fn record(name: &str, secret: &[u8]) -> (TokenRecord, AuditEntry) {
        let token = TokenRecord {
            id: TokenId::generate(),
            name: name.to_string(),
            description: None,
            access: AccessNames::new(["security-director".to_string()]),
            secret_hash: SecretHash::of(secret),
            status: Status::Active,
            inactive_reason: None,
            created_at: Timestamp(1),
            activated_at: None,
            deactivated_at: None,
            last_used_at: None,
            expires_at: None,
            previous_secret: None,
            rate_limit: None,
            allowed_ips: None,
            revoked_hash: None,
            version: 1,
        };
        let audit = AuditEntry {
            at: Timestamp(1),
            actor: "admin-key".into(),
            source_ip: None,
            action: AuditAction::Create,
            token: name.to_string(),
            token_id: token.id.to_string(),
            details: serde_json::json!({}),
        };
        (token, audit)
    }

    #[tokio::test]
    async fn unique_violations_say_which_column_collided() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let (t, a) = record("Feed", b"one");
        store.insert_token(&t, &a).await.unwrap();

        let (t, a) = record("fEED", b"two");
        let e = store.insert_token(&t, &a).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(Conflict::NameTaken)),
            "{e}"
        );

        let (t, a) = record("other", b"one");
        let e = store.insert_token(&t, &a).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(Conflict::Duplicate)),
            "{e}"
        );
        assert_eq!(store.list_audit(None, 10).await.unwrap().len(), 1);
    }
}
