//! The embedded store's webhook outbox (SPEC §10): rows written inside the transactions of
//! the changes they report, and the dispatcher's claims (one process holds the file, so a
//! lease only guards against a claim racing the previous round of the same process).

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection};

use super::{unavailable, Step};
use crate::clock::Timestamp;
use crate::events::{
    AttemptResult, Claimed, DeliveryRecord, DeliveryStatus, Event, EventType, OutboxRow, Router,
    DENIED_PER_TOKEN_HOUR, HOUR_MS,
};
use crate::model::{AuditEntry, TokenId, UsageDelta};
use crate::store::StoreError;

/// Inserts `rows`; one whose `once_key` exists already is skipped. Returns how many were
/// written.
pub(super) fn write_rows(conn: &Connection, rows: &[OutboxRow]) -> Step<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO webhook_outbox (id, endpoint, url, event_type, token_id, payload,
                created_at, next_attempt_at, once_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)
             ON CONFLICT (once_key) DO NOTHING",
        )
        .map_err(unavailable)?;
    let mut n = 0;
    for r in rows {
        n += stmt
            .execute(params![
                r.id,
                r.endpoint,
                r.url,
                r.event_type,
                r.token_id,
                r.payload,
                r.created_at.0,
                r.once_key
            ])
            .map_err(unavailable)?;
    }
    Ok(n)
}

/// The outbox rows of audit entries.
pub(super) fn audit_events<'a>(
    conn: &Connection,
    router: Option<&Router>,
    audit: impl IntoIterator<Item = &'a AuditEntry>,
) -> Step<usize> {
    match router {
        None => Ok(0),
        Some(r) => write_rows(conn, &r.rows_of_audit(audit)),
    }
}

/// `ip.first_seen` and `ip.denied` of a usage flush, before its upserts (inside its
/// transaction). `names` holds the batch's live tokens.
pub(super) fn usage_events(
    conn: &Connection,
    router: Option<&Router>,
    batch: &[UsageDelta],
    names: &HashMap<TokenId, String>,
) -> Step<usize> {
    let Some(router) = router else {
        return Ok(0);
    };
    let mut written = 0;
    if router.wants(EventType::IpFirstSeen) {
        let mut used = conn
            .prepare_cached(
                "SELECT 1 FROM token_ips WHERE token_id = ?1 AND entry = ?2
                   AND first_used_at IS NOT NULL",
            )
            .map_err(unavailable)?;
        let mut seen = HashSet::new();
        let mut rows = Vec::new();
        for d in batch {
            let (Some(at), Some(ip), Some(name)) = (d.first_used_at, d.ip, names.get(&d.token_id))
            else {
                continue;
            };
            let ip = crate::net::canonical_ip(ip).to_string();
            let id = d.token_id.to_string();
            if !seen.insert((d.token_id, ip.clone()))
                || used.exists(params![id, ip]).map_err(unavailable)?
            {
                continue;
            }
            rows.extend(router.rows(&Event::first_seen(&id, name, &ip, at)));
        }
        written += write_rows(conn, &rows)?;
    }
    let groups = router.denied_candidates(batch, |id| names.get(&id).map(String::as_str));
    for ((endpoint, id, hour), candidates) in groups {
        let start = hour * HOUR_MS;
        let used: i64 = conn
            .query_row(
                "SELECT count(*) FROM webhook_outbox WHERE token_id = ?1
                   AND event_type = 'ip.denied' AND endpoint = ?2
                   AND created_at >= ?3 AND created_at < ?4",
                params![id, endpoint, start, start + HOUR_MS],
                |r| r.get(0),
            )
            .map_err(unavailable)?;
        let left = usize::try_from(DENIED_PER_TOKEN_HOUR - used).unwrap_or(0);
        // A candidate whose IP had its event this hour already is skipped by its once_key
        // and leaves its place unused: the cap is never exceeded.
        let rows: Vec<OutboxRow> = candidates.into_iter().take(left).collect();
        written += write_rows(conn, &rows)?;
    }
    Ok(written)
}

/// `token.expiring` of the tokens expiring after `now` and by `before` (once each).
pub(super) fn expiring_events(
    conn: &Connection,
    router: Option<&Router>,
    now: Timestamp,
    before: Option<Timestamp>,
) -> Step<usize> {
    let (Some(router), Some(before)) = (router, before) else {
        return Ok(0);
    };
    if !router.wants(EventType::TokenExpiring) {
        return Ok(0);
    }
    // Per endpoint, only the tokens whose notice it has not had yet.
    let mut stmt = conn
        .prepare_cached(
            "SELECT t.id, t.name, t.expires_at FROM tokens t
             WHERE t.expires_at > ?1 AND t.expires_at <= ?2
               AND NOT EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.once_key =
                   ?3 || ':token.expiring:' || t.id || ':' || t.expires_at)",
        )
        .map_err(unavailable)?;
    let mut rows = Vec::new();
    for e in router
        .endpoints()
        .iter()
        .filter(|e| e.events.contains(EventType::TokenExpiring))
    {
        let found = stmt
            .query_map(params![now.0, before.0, e.key], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(unavailable)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        for (id, name, at) in found {
            let event = Event::expiring(now, &id, &name, Timestamp(at));
            let payload = event.payload();
            rows.push(Router::row(e, &event, payload));
        }
    }
    write_rows(conn, &rows)
}

pub(super) fn claim(
    conn: &mut Connection,
    owner: &str,
    endpoint: &str,
    now: Timestamp,
    lease_until: Timestamp,
    limit: i64,
) -> Step<(Vec<Claimed>, u64)> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let claimed = {
        let mut stmt = tx
            .prepare_cached(
                "UPDATE webhook_outbox SET lease_owner = ?2, lease_until = ?3
                 WHERE id IN (
                    SELECT id FROM webhook_outbox
                    WHERE endpoint = ?5 AND status = 'pending' AND next_attempt_at <= ?1
                      AND (lease_until IS NULL OR lease_until <= ?1)
                    ORDER BY next_attempt_at, id LIMIT ?4)
                 RETURNING id, endpoint, payload, attempts, created_at",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(params![now.0, owner, lease_until.0, limit, endpoint], |r| {
                Ok(Claimed {
                    id: r.get(0)?,
                    endpoint: r.get(1)?,
                    payload: r.get(2)?,
                    attempts: r.get(3)?,
                    created_at: Timestamp(r.get(4)?),
                })
            })
            .map_err(unavailable)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)?
    };
    let pending: i64 = tx
        .query_row(
            "SELECT count(*) FROM webhook_outbox WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    tx.commit().map_err(unavailable)?;
    Ok((claimed, u64::try_from(pending).unwrap_or(0)))
}

pub(super) fn finish(
    conn: &Connection,
    owner: &str,
    lease_until: Timestamp,
    id: &str,
    r: &AttemptResult,
) -> Step<bool> {
    let n = conn
        .execute(
            "UPDATE webhook_outbox SET status = ?3, attempts = attempts + 1,
                last_attempt_at = ?4, next_attempt_at = ?5, response_status = ?6,
                last_error = ?7, lease_owner = NULL, lease_until = NULL
             WHERE id = ?1 AND lease_owner = ?2 AND lease_until = ?8",
            params![
                id,
                owner,
                r.status.as_str(),
                r.at.0,
                r.next_attempt_at.map(|t| t.0),
                r.response_status,
                r.error,
                lease_until.0
            ],
        )
        .map_err(unavailable)?;
    Ok(n == 1)
}

pub(super) fn deliveries(conn: &Connection, limit: i64) -> Step<Vec<DeliveryRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, event_type, url, attempts, status, created_at, last_attempt_at,
                next_attempt_at, response_status
             FROM webhook_outbox ORDER BY created_at DESC, id DESC LIMIT ?1",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([limit], |r| {
            Ok((
                r.get::<_, String>(4)?,
                DeliveryRecord {
                    id: r.get(0)?,
                    event_type: r.get(1)?,
                    url: r.get(2)?,
                    attempts: r.get(3)?,
                    status: DeliveryStatus::Pending,
                    created_at: Timestamp(r.get(5)?),
                    last_attempt_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
                    next_attempt_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
                    response_status: r.get(8)?,
                },
            ))
        })
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for r in rows {
        let (status, mut rec) = r.map_err(unavailable)?;
        rec.status = DeliveryStatus::parse(&status).ok_or_else(|| {
            super::Fail::from(StoreError::Unavailable(format!(
                "unexpected row: delivery status {status:?}"
            )))
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// `known`: the configured endpoints' keys as a JSON array.
pub(super) fn prune(
    conn: &Connection,
    before: Timestamp,
    known: &str,
    orphaned_before: Timestamp,
) -> Step<usize> {
    let pruned = conn
        .execute(
            "DELETE FROM webhook_outbox WHERE status IN ('delivered', 'failed')
               AND last_attempt_at < ?1",
            [before.0],
        )
        .map_err(unavailable)?;
    let failed = conn
        .execute(
            "UPDATE webhook_outbox SET status = 'failed', next_attempt_at = NULL,
                last_attempt_at = ?2, last_error = 'the endpoint is no longer configured',
                lease_owner = NULL, lease_until = NULL
             WHERE status = 'pending' AND endpoint NOT IN (SELECT value FROM json_each(?1))
               AND created_at < ?2",
            params![known, orphaned_before.0],
        )
        .map_err(unavailable)?;
    Ok(pruned + failed)
}

/// At open: leases held by an earlier run of this process (killed mid-attempt) are void,
/// since only one process uses the file.
pub(super) fn release_leases(conn: &Connection) -> Step<()> {
    conn.execute(
        "UPDATE webhook_outbox SET lease_owner = NULL, lease_until = NULL
         WHERE lease_owner IS NOT NULL",
        [],
    )
    .map_err(unavailable)?;
    Ok(())
}
