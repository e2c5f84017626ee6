//! The shared store's webhook outbox (SPEC §10): rows written inside the transactions of
//! the changes they report, and the dispatcher's claims. Several instances share the table:
//! a claim takes due rows with `FOR UPDATE SKIP LOCKED` and marks them leased to its owner,
//! so two instances never make the same attempt; a result is recorded only by the owner
//! still holding the lease.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{GenericClient, Transaction};

use super::{Fail, Inner};
use crate::clock::Timestamp;
use crate::events::{
    AttemptResult, Claimed, DeliveryRecord, DeliveryStatus, Event, EventType, OutboxRow, Router,
    DENIED_PER_TOKEN_HOUR, HOUR_MS,
};
use crate::model::{AuditEntry, UsageDelta};

/// Inserts `rows` in one statement; one whose `once_key` exists already (or repeats an
/// earlier row's) is skipped. Returns how many were written.
pub(super) async fn write_rows<C: GenericClient>(c: &C, rows: &[OutboxRow]) -> Result<u64, Fail> {
    if rows.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&OutboxRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let (ids, endpoints, urls, types, payloads) = (
        col(|r| &r.id),
        col(|r| &r.endpoint),
        col(|r| &r.url),
        col(|r| r.event_type),
        col(|r| &r.payload),
    );
    let tokens: Vec<Option<&str>> = rows.iter().map(|r| r.token_id.as_deref()).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.created_at.0).collect();
    let once: Vec<Option<&str>> = rows.iter().map(|r| r.once_key.as_deref()).collect();
    Ok(c.execute(
        "INSERT INTO webhook_outbox (id, endpoint, url, event_type, token_id, payload,
            created_at, next_attempt_at, once_key)
         SELECT id, endpoint, url, event_type, token_id, payload, created_at, created_at, once_key
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::int8[], $8::text[])
              AS u(id, endpoint, url, event_type, token_id, payload, created_at, once_key)
         ON CONFLICT (once_key) DO NOTHING",
        &[
            &ids, &endpoints, &urls, &types, &tokens, &payloads, &created, &once,
        ],
    )
    .await?)
}

impl Inner {
    pub(super) fn router(&self) -> Option<&Router> {
        self.events
            .get()
            .map(|r| &**r)
            .filter(|r| !r.endpoints().is_empty())
    }

    /// The outbox rows of audit entries, in their transaction.
    pub(super) async fn audit_events(
        &self,
        tx: &Transaction<'_>,
        audit: &[&AuditEntry],
    ) -> Result<u64, Fail> {
        let Some(router) = self.router() else {
            return Ok(0);
        };
        write_rows(tx, &router.rows_of_audit(audit.iter().copied())).await
    }

    /// After a commit that wrote `n` rows: wake the dispatcher.
    pub(super) fn written(&self, n: u64) {
        if n > 0 {
            if let Some(r) = self.router() {
                r.written();
            }
        }
    }

    /// `ip.first_seen` and `ip.denied` of a usage flush, inside it (the tokens' rows are
    /// locked, so concurrent flushes of one token are ordered and see each other's rows).
    /// `names` holds the live tokens of the batch by id.
    pub(super) async fn usage_events(
        &self,
        tx: &Transaction<'_>,
        batch: &[UsageDelta],
        names: &HashMap<String, String>,
    ) -> Result<u64, Fail> {
        let Some(router) = self.router() else {
            return Ok(0);
        };
        let mut written = 0;
        if router.wants(EventType::IpFirstSeen) {
            let (mut ids, mut entries, mut ats) = (Vec::new(), Vec::new(), Vec::new());
            for d in batch {
                if let (Some(at), Some(ip), true) = (
                    d.first_used_at,
                    d.ip,
                    names.contains_key(&d.token_id.to_string()),
                ) {
                    ids.push(d.token_id.to_string());
                    entries.push(crate::net::canonical_ip(ip).to_string());
                    ats.push(at);
                }
            }
            if !ids.is_empty() {
                let used: HashSet<(String, String)> = tx
                    .query(
                        "SELECT i.token_id, i.entry FROM token_ips i
                         JOIN unnest($1::text[], $2::text[]) AS u(id, entry)
                           ON i.token_id = u.id AND i.entry = u.entry
                         WHERE i.first_used_at IS NOT NULL",
                        &[&ids, &entries],
                    )
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, Fail>>()?;
                let mut rows = Vec::new();
                let mut seen = HashSet::new();
                for ((id, entry), at) in ids.into_iter().zip(entries).zip(ats) {
                    if used.contains(&(id.clone(), entry.clone()))
                        || !seen.insert((id.clone(), entry.clone()))
                    {
                        continue;
                    }
                    rows.extend(router.rows(&Event::first_seen(&id, &names[&id], &entry, at)));
                }
                written += write_rows(tx, &rows).await?;
            }
        }
        {
            let groups = router
                .denied_candidates(batch, |id| names.get(&id.to_string()).map(String::as_str));
            let mut rows = Vec::new();
            for ((endpoint, id, hour), candidates) in groups {
                let start = hour * HOUR_MS;
                let used: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM webhook_outbox WHERE token_id = $1
                           AND event_type = 'ip.denied' AND endpoint = $2
                           AND created_at >= $3 AND created_at < $4",
                        &[&id, &endpoint, &start, &(start + HOUR_MS)],
                    )
                    .await?
                    .try_get(0)?;
                let left = usize::try_from(DENIED_PER_TOKEN_HOUR - used).unwrap_or(0);
                // A candidate whose IP had its event this hour already is skipped by its
                // once_key and leaves its place unused: the cap is never exceeded.
                rows.extend(candidates.into_iter().take(left));
            }
            written += write_rows(tx, &rows).await?;
        }
        Ok(written)
    }

    pub(super) async fn expiring_events(
        &self,
        tx: &Transaction<'_>,
        now: Timestamp,
        before: Option<Timestamp>,
    ) -> Result<u64, Fail> {
        let (Some(router), Some(before)) = (self.router(), before) else {
            return Ok(0);
        };
        if !router.wants(EventType::TokenExpiring) {
            return Ok(0);
        }
        // Per endpoint, only the tokens whose notice it has not had: an index probe each,
        // in one statement, instead of an insert per token on every sweep.
        let mut out = Vec::new();
        for e in router
            .endpoints()
            .iter()
            .filter(|e| e.events.contains(EventType::TokenExpiring))
        {
            let rows = tx
                .query(
                    "SELECT t.id, t.name, t.expires_at FROM tokens t
                     WHERE t.expires_at > $1 AND t.expires_at <= $2
                       AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.once_key =
                           $3 || ':token.expiring:' || t.id || ':' || t.expires_at::text)",
                    &[&now.0, &before.0, &e.key],
                )
                .await?;
            for r in rows {
                let (id, name, at): (String, String, i64) =
                    (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                let event = Event::expiring(now, &id, &name, Timestamp(at));
                let payload = event.payload();
                out.push(Router::row(e, &event, payload));
            }
        }
        write_rows(tx, &out).await
    }

    pub(super) async fn enqueue(&self, rows: &[OutboxRow]) -> Result<(), Fail> {
        let c = self.client().await?;
        let n = write_rows(&**c, rows).await?;
        self.written(n);
        Ok(())
    }

    pub(super) async fn claim(
        &self,
        owner: &str,
        endpoint: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> Result<(Vec<Claimed>, u64), Fail> {
        let c = self.client().await?;
        let rows = c
            .query(
                "WITH due AS (
                    SELECT id FROM webhook_outbox
                    WHERE endpoint = $5 AND status = 'pending' AND next_attempt_at <= $1
                      AND (lease_until IS NULL OR lease_until <= $1)
                    ORDER BY next_attempt_at, id LIMIT $4
                    FOR UPDATE SKIP LOCKED)
                 UPDATE webhook_outbox o SET lease_owner = $2, lease_until = $3
                 FROM due WHERE o.id = due.id
                 RETURNING o.id, o.endpoint, o.payload, o.attempts, o.created_at",
                &[&now.0, &owner, &lease_until.0, &limit, &endpoint],
            )
            .await?;
        let claimed = rows
            .iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get(0)?,
                    endpoint: r.try_get(1)?,
                    payload: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                    created_at: Timestamp(r.try_get(4)?),
                })
            })
            .collect::<Result<Vec<_>, Fail>>()?;
        let pending: i64 = c
            .query_one(
                "SELECT count(*) FROM webhook_outbox WHERE status = 'pending'",
                &[],
            )
            .await?
            .try_get(0)?;
        Ok((claimed, u64::try_from(pending).unwrap_or(0)))
    }

    pub(super) async fn finish(
        &self,
        owner: &str,
        lease_until: Timestamp,
        id: &str,
        r: &AttemptResult,
    ) -> Result<bool, Fail> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE webhook_outbox SET status = $3, attempts = attempts + 1,
                    last_attempt_at = $4, next_attempt_at = $5, response_status = $6,
                    last_error = $7, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2 AND lease_until = $8",
                &[
                    &id,
                    &owner,
                    &r.status.as_str(),
                    &r.at.0,
                    &r.next_attempt_at.map(|t| t.0),
                    &r.response_status,
                    &r.error,
                    &lease_until.0,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    pub(super) async fn deliveries(&self, limit: i64) -> Result<Vec<DeliveryRecord>, Fail> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, event_type, url, attempts, status, created_at, last_attempt_at,
                    next_attempt_at, response_status
                 FROM webhook_outbox ORDER BY created_at DESC, id DESC LIMIT $1",
                &[&limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get(4)?;
                Ok(DeliveryRecord {
                    id: r.try_get(0)?,
                    event_type: r.try_get(1)?,
                    url: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                    status: DeliveryStatus::parse(&status)
                        .ok_or_else(|| super::corrupt(format!("delivery status {status:?}")))?,
                    created_at: Timestamp(r.try_get(5)?),
                    last_attempt_at: r.try_get::<_, Option<i64>>(6)?.map(Timestamp),
                    next_attempt_at: r.try_get::<_, Option<i64>>(7)?.map(Timestamp),
                    response_status: r.try_get(8)?,
                })
            })
            .collect()
    }

    pub(super) async fn prune(
        &self,
        before: Timestamp,
        known: &[String],
        orphaned_before: Timestamp,
    ) -> Result<u64, Fail> {
        let c = self.client().await?;
        let pruned = c
            .execute(
                "DELETE FROM webhook_outbox WHERE status IN ('delivered', 'failed')
                   AND last_attempt_at < $1",
                &[&before.0],
            )
            .await?;
        let failed = c
            .execute(
                "UPDATE webhook_outbox SET status = 'failed', next_attempt_at = NULL,
                    last_attempt_at = $2, last_error = 'the endpoint is no longer configured',
                    lease_owner = NULL, lease_until = NULL
                 WHERE status = 'pending' AND NOT (endpoint = ANY($1)) AND created_at < $2",
                &[&known, &orphaned_before.0],
            )
            .await?;
        Ok(pruned + failed)
    }
}
