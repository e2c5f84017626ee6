//! The shared store's writing transactions: each token change bumps the change generation
//! and queues its notification; the usage flush and the sweep.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, Transaction};

use super::schema::NAME_KEY_CONSTRAINT;
use super::{corrupt, Fail, Inner};
use crate::audit;
use crate::clock::Timestamp;
use crate::model::{AuditEntry, TokenRecord, UsageDelta};
use crate::store::rows;
use crate::store::sql::{self, Dialect};
use crate::store::{Conflict, StoreError, SweepCutoffs, SweepOutcome};

const SQL: Dialect = Dialect::Postgres;

/// NOTIFY payloads must stay under 8000 bytes; longer id lists become "reload all".
const MAX_PAYLOAD: usize = 7000;

/// Bumps the change generation, taking its row lock: every token-changing transaction starts
/// here, so they are ordered and their generations follow commit order.
async fn bump(tx: &Transaction<'_>) -> Result<i64, Fail> {
    let row = tx
        .query_one(
            "UPDATE change_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Queues the change notification; PostgreSQL delivers it only if the transaction commits.
async fn notify(
    tx: &Transaction<'_>,
    channel: &str,
    generation: i64,
    ids: &[&str],
) -> Result<(), Fail> {
    let list = ids.join(",");
    let payload = if list.len() > MAX_PAYLOAD {
        format!("{generation}:*")
    } else {
        format!("{generation}:{list}")
    };
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await?;
    Ok(())
}

async fn write_audit(tx: &Transaction<'_>, a: &AuditEntry) -> Result<(), Fail> {
    let details = a.details.to_string();
    let key = crate::token::name_key(&a.token);
    tx.execute(
        "INSERT INTO audit (at, actor, source_ip, action, token, token_key, token_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &a.at.0,
            &a.actor,
            &a.source_ip,
            &a.action,
            &a.token,
            &key,
            &a.token_id,
            &details,
        ],
    )
    .await?;
    Ok(())
}

async fn token_exists(tx: &Transaction<'_>, id: &str) -> Result<bool, Fail> {
    Ok(tx
        .query_opt("SELECT 1 FROM tokens WHERE id = $1", &[&id])
        .await?
        .is_some())
}

impl Inner {
    pub(super) async fn insert_token(
        &self,
        t: &TokenRecord,
        audit: &AuditEntry,
    ) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        let key = crate::token::name_key(&t.name);
        let access = t.access.legacy_bits();
        let access_types = t.access.stored();
        let rate = rows::rate_limit_columns(t.rate_limit);
        let allowed = rows::allowed_ips_text(&t.allowed_ips);
        let hash = t.secret_hash.as_bytes().to_vec();
        let res = tx
            .execute(
                "INSERT INTO tokens (id, name, name_key, description, access, secret_hash, status,
                    inactive_reason, created_at, activated_at, deactivated_at, last_used_at, version,
                    expires_at, previous_secret_hash, previous_secret_expires_at, access_types,
                    rate_limit_requests, rate_limit_per_ms, allowed_ips, revoked_secret_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                    $17, $18, $19, $20, $21)",
                &[
                    &t.id,
                    &t.name,
                    &key,
                    &t.description,
                    &access,
                    &hash,
                    &t.status.as_str(),
                    &t.inactive_reason.map(|r| r.db_str()),
                    &t.created_at.0,
                    &t.activated_at.map(|x| x.0),
                    &t.deactivated_at.map(|x| x.0),
                    &t.last_used_at.map(|x| x.0),
                    &t.version,
                    &t.expires_at.map(|x| x.0),
                    &t.previous_secret.map(|p| p.hash.as_bytes().to_vec()),
                    &t.previous_secret.map(|p| p.until.0),
                    &access_types,
                    &rate.0,
                    &rate.1,
                    &allowed,
                    &t.revoked_hash.map(|h| h.as_bytes().to_vec()),
                ],
            )
            .await;
        if let Err(e) = res {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                let on_name = e
                    .as_db_error()
                    .and_then(|d| d.constraint())
                    .is_some_and(|c| c == NAME_KEY_CONSTRAINT);
                return Err(Fail::Store(StoreError::Conflict(if on_name {
                    Conflict::NameTaken
                } else {
                    Conflict::Duplicate
                })));
            }
            return Err(e.into());
        }
        write_audit(&tx, audit).await?;
        let events = self.audit_events(&tx, &[audit]).await?;
        notify(&tx, &self.channel, generation, &[&t.id.to_string()]).await?;
        tx.commit().await?;
        self.written(events);
        Ok(())
    }

    pub(super) async fn save_tokens(
        &self,
        tokens: &[TokenRecord],
        audit: &[AuditEntry],
    ) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        // Row locks in id order, as the usage flush takes them: no deadlock between the two.
        let mut ordered: Vec<&TokenRecord> = tokens.iter().collect();
        // Row locks in id order (the text order of canonical ids is the same).
        ordered.sort_by_key(|t| t.id);
        for t in &ordered {
            let access = t.access.legacy_bits();
            let access_types = t.access.stored();
            let rate = rows::rate_limit_columns(t.rate_limit);
            let allowed = rows::allowed_ips_text(&t.allowed_ips);
            let hash = t.secret_hash.as_bytes().to_vec();
            let n = tx
                .execute(
                    "UPDATE tokens SET description = $2, access = $3, secret_hash = $4,
                        status = $5, inactive_reason = $6, activated_at = $7,
                        deactivated_at = $8, expires_at = $10, previous_secret_hash = $11,
                        previous_secret_expires_at = $12, access_types = $13,
                            rate_limit_requests = $14, rate_limit_per_ms = $15, allowed_ips = $16,
                            revoked_secret_hash = $17, version = version + 1
                     WHERE id = $1 AND version = $9",
                    &[
                        &t.id,
                        &t.description,
                        &access,
                        &hash,
                        &t.status.as_str(),
                        &t.inactive_reason.map(|r| r.db_str()),
                        &t.activated_at.map(|x| x.0),
                        &t.deactivated_at.map(|x| x.0),
                        &t.version,
                        &t.expires_at.map(|x| x.0),
                        &t.previous_secret.map(|p| p.hash.as_bytes().to_vec()),
                        &t.previous_secret.map(|p| p.until.0),
                        &access_types,
                        &rate.0,
                        &rate.1,
                        &allowed,
                        &t.revoked_hash.map(|h| h.as_bytes().to_vec()),
                    ],
                )
                .await?;
            if n == 0 {
                // Dropping `tx` rolls back the rows already written (and the generation).
                return Err(Fail::Store(
                    if token_exists(&tx, &t.id.to_string()).await? {
                        StoreError::Conflict(Conflict::Version)
                    } else {
                        StoreError::NotFound
                    },
                ));
            }
        }
        for a in audit {
            write_audit(&tx, a).await?;
        }
        let events = self
            .audit_events(&tx, &audit.iter().collect::<Vec<_>>())
            .await?;
        let ids: Vec<String> = ordered.iter().map(|t| t.id.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        notify(&tx, &self.channel, generation, &ids).await?;
        tx.commit().await?;
        self.written(events);
        Ok(())
    }

    pub(super) async fn delete_token(
        &self,
        id: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        let n = tx
            .execute("DELETE FROM tokens WHERE id = $1", &[&id])
            .await?;
        if n == 0 {
            return Err(Fail::Store(StoreError::NotFound));
        }
        let mut events = 0;
        if let Some(a) = audit {
            write_audit(&tx, a).await?;
            events = self.audit_events(&tx, &[a]).await?;
        }
        notify(&tx, &self.channel, generation, &[id]).await?;
        tx.commit().await?;
        self.written(events);
        Ok(())
    }

    pub(super) async fn block(
        &self,
        id: &str,
        entries: &[String],
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        if !token_exists(&tx, id).await? {
            return Err(Fail::Store(StoreError::NotFound));
        }
        for e in entries {
            // A repeat keeps the first blocked_at.
            tx.execute(
                "INSERT INTO token_ips (token_id, entry, blocked_at) VALUES ($1, $2, $3)
                 ON CONFLICT (token_id, entry) DO UPDATE SET
                    blocked_at = coalesce(token_ips.blocked_at, excluded.blocked_at)",
                &[&id, e, &now.0],
            )
            .await?;
        }
        write_audit(&tx, audit).await?;
        let events = self.audit_events(&tx, &[audit]).await?;
        notify(&tx, &self.channel, generation, &[id]).await?;
        tx.commit().await?;
        self.written(events);
        Ok(())
    }

    pub(super) async fn unblock(
        &self,
        id: &str,
        entries: &[String],
        audit: &AuditEntry,
    ) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        tx.execute(
            "UPDATE token_ips SET blocked_at = NULL WHERE token_id = $1 AND entry = ANY($2)",
            &[&id, &entries],
        )
        .await?;
        // A row that existed only as a block entry (a CIDR, or an IP never seen) goes.
        tx.execute(
            "DELETE FROM token_ips WHERE token_id = $1 AND entry = ANY($2)
                AND requests = 0 AND denied = 0 AND first_used_at IS NULL",
            &[&id, &entries],
        )
        .await?;
        write_audit(&tx, audit).await?;
        let events = self.audit_events(&tx, &[audit]).await?;
        notify(&tx, &self.channel, generation, &[id]).await?;
        tx.commit().await?;
        self.written(events);
        Ok(())
    }

    /// Usage write-behind. Counters are added in SQL (`requests = requests + excluded...`),
    /// so batches from several instances sum whatever their interleaving. No generation and
    /// no notification: see [`PostgresStore::follow`].
    pub(super) async fn flush_usage(
        &self,
        batch: &[UsageDelta],
        max_ips: usize,
    ) -> Result<(), Fail> {
        // One row per (token, canonical IP), in key order (the order row locks are taken in).
        let mut merged: BTreeMap<(String, String), Merged> = BTreeMap::new();
        let mut ids: Vec<String> = Vec::new();
        for d in batch {
            ids.push(d.token_id.to_string());
            // A refusal other than a block or the allow-list makes no record.
            let Some(ip) = d.ip.filter(|_| d.requests > 0 || d.denied > 0) else {
                continue;
            };
            let key = (
                d.token_id.to_string(),
                crate::net::canonical_ip(ip).to_string(),
            );
            let m = merged.entry(key).or_insert((0, 0, None, None));
            m.0 =
                m.0.saturating_add(i64::try_from(d.requests).unwrap_or(i64::MAX));
            m.1 =
                m.1.saturating_add(i64::try_from(d.denied).unwrap_or(i64::MAX));
            if let Some(f) = d.first_used_at {
                m.2 = Some(m.2.map_or(f.0, |x| x.min(f.0)));
            }
            if let Some(l) = d.last_used_at {
                m.3 = Some(m.3.map_or(l.0, |x| x.max(l.0)));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Lock the tokens first, in id order: a token deleted meanwhile is simply absent
        // (its usage is dropped), and concurrent flushes queue instead of deadlocking.
        let names: HashMap<String, String> = tx
            .query(
                "SELECT id, name FROM tokens WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?)))
            .collect::<Result<_, Fail>>()?;
        // Before the upsert: `ip.first_seen` needs the records as they were.
        let events = self.usage_events(&tx, batch, &names).await?;
        let (mut t_ids, mut entries, mut firsts, mut lasts, mut reqs, mut dens) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut raise: BTreeMap<&str, i64> = BTreeMap::new();
        for ((id, entry), (r, d, f, l)) in &merged {
            if !names.contains_key(id.as_str()) {
                continue;
            }
            t_ids.push(id.as_str());
            entries.push(entry.as_str());
            reqs.push(*r);
            dens.push(*d);
            firsts.push(*f);
            lasts.push(*l);
            if let Some(l) = l {
                let e = raise.entry(id.as_str()).or_insert(*l);
                *e = (*e).max(*l);
            }
        }
        // LEAST/GREATEST ignore NULLs: the earliest first use and the latest last use win.
        if !t_ids.is_empty() {
            tx.execute(
            "INSERT INTO token_ips (token_id, entry, first_used_at, last_used_at, requests, denied)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
             ON CONFLICT (token_id, entry) DO UPDATE SET
                first_used_at = LEAST(token_ips.first_used_at, excluded.first_used_at),
                last_used_at = GREATEST(token_ips.last_used_at, excluded.last_used_at),
                requests = token_ips.requests + excluded.requests,
                denied = token_ips.denied + excluded.denied",
            &[&t_ids, &entries, &firsts, &lasts, &reqs, &dens],
        )
        .await?;
        }
        write_hours(&tx, batch, &names).await?;
        if !raise.is_empty() {
            let r_ids: Vec<&str> = raise.keys().copied().collect();
            let r_last: Vec<i64> = raise.values().copied().collect();
            tx.execute(
                "UPDATE tokens t SET last_used_at = GREATEST(t.last_used_at, u.last)
                 FROM unnest($1::text[], $2::int8[]) AS u(id, last) WHERE t.id = u.id",
                &[&r_ids, &r_last],
            )
            .await?;
        }
        let cap = i64::try_from(max_ips).unwrap_or(i64::MAX);
        let over = tx
            .query(
                "SELECT token_id FROM token_ips WHERE token_id = ANY($1) AND blocked_at IS NULL
                 GROUP BY token_id HAVING count(*) > $2 ORDER BY token_id",
                &[&ids, &cap],
            )
            .await?;
        for row in over {
            let id: String = row.try_get(0)?;
            trim_ips(&tx, &id, max_ips).await?;
        }
        tx.commit().await?;
        self.written(events);
        Ok(())
    }

    pub(super) async fn sweep(
        &self,
        at: SweepCutoffs,
        keep: &[String],
    ) -> Result<SweepOutcome, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Take the generation lock first (the order every token change uses); a concurrent
        // sweep of another instance waits here, then finds nothing left to change.
        tx.execute(
            "SELECT generation FROM change_generation WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?;
        let mut out = SweepOutcome::default();
        let pairs = |rows: Vec<Row>| -> Result<Vec<(String, String)>, Fail> {
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        };
        out.deleted = pairs(
            tx.query(&SQL.sweep_delete(), &[&at.delete_before.0, &keep])
                .await?,
        )?;
        let lapse = at.inactive_after_ms;
        out.deactivated = pairs(
            tx.query(
                &SQL.sweep_deactivate(),
                &[&at.inactive_before.0, &lapse, &keep],
            )
            .await?,
        )?;
        out.expired = pairs(tx.query(&SQL.sweep_expired(), &[&at.now.0]).await?)?;
        out.audit = audit::of_sweep(at.now, &out.deleted, &out.deactivated, &out.expired);
        for a in &out.audit {
            write_audit(&tx, a).await?;
        }
        let mut events = self
            .audit_events(&tx, &out.audit.iter().collect::<Vec<_>>())
            .await?;
        events += self
            .expiring_events(&tx, at.now, at.expiring_before)
            .await?;
        if !out.audit.is_empty() {
            let generation = bump(&tx).await?;
            let ids: Vec<&str> = out
                .deleted
                .iter()
                .chain(&out.deactivated)
                .map(|(id, _)| id.as_str())
                .collect();
            notify(&tx, &self.channel, generation, &ids).await?;
        }
        let pruned = tx
            .execute("DELETE FROM audit WHERE at < $1", &[&at.audit_before.0])
            .await?;
        out.pruned = usize::try_from(pruned).unwrap_or(usize::MAX);
        let pruned = tx
            .execute(
                "DELETE FROM usage_hours WHERE hour < $1",
                &[&at.usage_before.0],
            )
            .await?;
        out.usage_pruned = usize::try_from(pruned).unwrap_or(usize::MAX);
        tx.commit().await?;
        self.written(events);
        Ok(out)
    }
}

/// One usage row's sums in a flush: requests, denied, first use, last use (ms).
type Merged = (i64, i64, Option<i64>, Option<i64>);

/// The flush's hourly rows, summed into the other instances' (after the records: an IP's row
/// is written only if it has one), in key order under the tokens' locks.
async fn write_hours(
    tx: &Transaction<'_>,
    batch: &[UsageDelta],
    names: &HashMap<String, String>,
) -> Result<(), Fail> {
    let mut cols: Vec<Vec<i64>> = vec![Vec::new(); sql::HOUR_COLUMNS.len()];
    let (mut ids, mut ips, mut hours) = (Vec::new(), Vec::new(), Vec::new());
    for ((id, ip, hour), sums) in sql::hour_rows(batch) {
        let id = id.to_string();
        if !names.contains_key(&id) {
            continue;
        }
        ids.push(id);
        ips.push(ip);
        hours.push(hour);
        for (col, n) in cols.iter_mut().zip(sums) {
            col.push(n);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let names = sql::HOUR_COLUMNS.join(", ");
    let arrays = (4..4 + sql::HOUR_COLUMNS.len())
        .map(|i| format!("${i}::int8[]"))
        .collect::<Vec<_>>()
        .join(", ");
    let statement = format!(
        "INSERT INTO usage_hours (token_id, ip, hour, {names})
         SELECT u.* FROM unnest($1::text[], $2::text[], $3::int8[], {arrays})
            AS u(token_id, ip, hour, {names})
         WHERE u.ip = '' OR EXISTS (SELECT 1 FROM token_ips i
                                     WHERE i.token_id = u.token_id AND i.entry = u.ip)
         ON CONFLICT (token_id, ip, hour) DO UPDATE SET {set}",
        set = SQL.hour_sums_update(),
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&ids, &ips, &hours];
    params.extend(
        cols.iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)),
    );
    tx.execute(&statement, &params).await?;
    Ok(())
}

/// Keeps at most `max_ips` unblocked records for a token (see [`sql::trim_victims`]).
async fn trim_ips(tx: &Transaction<'_>, token_id: &str, max_ips: usize) -> Result<(), Fail> {
    let rows = tx
        .query(&SQL.trim_rows(), &[&token_id])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, Fail>>()?;
    let doomed = sql::trim_victims(rows, max_ips).map_err(corrupt)?;
    if doomed.is_empty() {
        return Ok(());
    }
    tx.execute(
        "DELETE FROM token_ips WHERE token_id = $1 AND entry = ANY($2)",
        &[&token_id, &doomed],
    )
    .await?;
    // The history of the IP records it keeps (SPEC §12): an evicted record's goes too.
    tx.execute(
        "DELETE FROM usage_hours WHERE token_id = $1 AND ip = ANY($2)",
        &[&token_id, &doomed],
    )
    .await?;
    Ok(())
}
