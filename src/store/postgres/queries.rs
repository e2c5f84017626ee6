//! The shared store's [`Store`] implementation: the reads, and the calls into the writing
//! transactions of [`super::writes`] and the follower of [`super::follower`].

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use super::{describe, follower, Fail, PostgresStore};
use crate::clock::Timestamp;
use crate::events::{AttemptResult, Claimed, DeliveryRecord, OutboxRow};
use crate::model::{
    AuditEntry, HourCounts, IpRecord, TokenId, TokenRecord, TokenWithBlocks, UsageDelta,
};
use crate::net::BlockEntry;
use crate::store::rows::{self, TOKEN_COLUMNS};
use crate::store::sql::Dialect;
use crate::store::{
    ChangeSink, Store, StoreError, StoreHealth, StoreResult, SweepCutoffs, SweepOutcome, TokenSink,
    LOAD_BATCH,
};

const SQL: Dialect = Dialect::Postgres;

/// The token's block entries, read in the same statement (one snapshot), after
/// [`TOKEN_COLUMNS`] of `tokens t`.
const BLOCKS_COLUMN: &str = "ARRAY(SELECT i.entry FROM token_ips i \
     WHERE i.token_id = t.id AND i.blocked_at IS NOT NULL ORDER BY i.entry)";

/// A token row followed by the [`BLOCKS_COLUMN`] array (the column after the token's).
fn token_with_blocks(row: &Row) -> Result<TokenWithBlocks, Fail> {
    let token = rows::token(row)?;
    let raw: Vec<String> = row.try_get(rows::TOKEN_COLUMN_COUNT)?;
    let mut blocks = Vec::with_capacity(raw.len());
    for s in raw {
        blocks.push(rows::block_entry(&s).map_err(super::corrupt)?);
    }
    Ok(TokenWithBlocks { token, blocks })
}

#[async_trait]
impl Store for PostgresStore {
    async fn load_all(&self, sink: TokenSink) -> StoreResult<()> {
        self.run(sink, |i, sink| async move {
            let load = async {
                let mut c = i.client().await?;
                // A portal in a read-only transaction: rows arrive LOAD_BATCH at a time
                // instead of the whole table in one result.
                let tx = c
                    .build_transaction()
                    .read_only(true)
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .start()
                    .await?;
                let stmt = tx
                    .prepare(&format!(
                        "SELECT {TOKEN_COLUMNS}, {BLOCKS_COLUMN} FROM tokens t"
                    ))
                    .await?;
                let portal = tx.bind(&stmt, &[]).await?;
                loop {
                    let rows = tx.query_portal(&portal, LOAD_BATCH as i32).await?;
                    if rows.is_empty() {
                        break;
                    }
                    let batch = rows
                        .iter()
                        .map(token_with_blocks)
                        .collect::<Result<Vec<_>, Fail>>()?;
                    sink.send(batch).await.map_err(|_| {
                        StoreError::Unavailable("the token load was abandoned".into())
                    })?;
                }
                tx.commit().await?;
                Ok::<(), Fail>(())
            };
            // Not retried: a retry would resend a second snapshot after part of the first,
            // and a reload would then keep a token deleted in between.
            load.await.map_err(|f| match f {
                Fail::Db(e) => Fail::Store(StoreError::Unavailable(describe(&e))),
                other => other,
            })
        })
        .await
    }

    async fn token_by_id(&self, id: TokenId) -> StoreResult<Option<TokenWithBlocks>> {
        self.run(id.to_string(), |i, id| async move {
            let c = i.client().await?;
            let row = c
                .query_opt(
                    &format!(
                        "SELECT {TOKEN_COLUMNS}, {BLOCKS_COLUMN} FROM tokens t WHERE t.id = $1"
                    ),
                    &[&*id],
                )
                .await?;
            row.as_ref().map(token_with_blocks).transpose()
        })
        .await
    }

    async fn token_by_name(&self, name_key: &str) -> StoreResult<Option<TokenRecord>> {
        self.run(name_key.to_string(), |i, key| async move {
            let c = i.client().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens t WHERE t.name_key = $1"),
                    &[&*key],
                )
                .await?;
            row.as_ref().map(rows::token).transpose()
        })
        .await
    }

    async fn list_tokens(
        &self,
        after: Option<&str>,
        q: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>> {
        let arg = (
            after.unwrap_or("").to_string(),
            q.unwrap_or("").to_string(),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        self.run(arg, |i, a| async move {
            let c = i.client().await?;
            // strpos() rather than LIKE: `q` may contain `%` or `_`, which must match literally.
            let rows = c
                .query(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM tokens t
                         WHERE t.name_key > $1 AND strpos(t.name_key, $2) > 0
                         ORDER BY t.name_key LIMIT $3"
                    ),
                    &[&a.0, &a.1, &a.2],
                )
                .await?;
            rows.iter().map(rows::token).collect()
        })
        .await
    }

    async fn insert_token(&self, token: &TokenRecord, audit: &AuditEntry) -> StoreResult<()> {
        self.run((token.clone(), audit.clone()), |i, a| async move {
            i.insert_token(&a.0, &a.1).await
        })
        .await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord], audit: &[AuditEntry]) -> StoreResult<()> {
        if tokens.is_empty() && audit.is_empty() {
            return Ok(());
        }
        self.run((tokens.to_vec(), audit.to_vec()), |i, a| async move {
            i.save_tokens(&a.0, &a.1).await
        })
        .await
    }

    async fn delete_token(&self, id: TokenId, audit: Option<&AuditEntry>) -> StoreResult<()> {
        self.run((id.to_string(), audit.cloned()), |i, a| async move {
            i.delete_token(&a.0, a.1.as_ref()).await
        })
        .await
    }

    async fn list_ips(&self, token_id: TokenId) -> StoreResult<Vec<IpRecord>> {
        self.run(token_id.to_string(), |i, id| async move {
            let c = i.client().await?;
            let sql = format!(
                "SELECT {} FROM token_ips WHERE token_id = $1",
                rows::IP_COLUMNS
            );
            let rows = c.query(&sql, &[&*id]).await?;
            rows.iter().map(rows::ip).collect()
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
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        self.run(
            (token_id.to_string(), entries, audit.clone()),
            move |i, a| async move { i.block(&a.0, &a.1, now, &a.2).await },
        )
        .await
    }

    async fn unblock(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        audit: &AuditEntry,
    ) -> StoreResult<()> {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        self.run(
            (token_id.to_string(), entries, audit.clone()),
            |i, a| async move { i.unblock(&a.0, &a.1, &a.2).await },
        )
        .await
    }

    async fn flush_usage(&self, batch: &[UsageDelta], max_ips: usize) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.run(batch.to_vec(), move |i, b| async move {
            i.flush_usage(&b, max_ips).await
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
        let ip = crate::store::sql::hour_ip(ip);
        self.run((token_id.to_string(), ip), move |i, a| async move {
            let c = i.client().await?;
            let rows = c
                .query(&SQL.usage_hours_select(), &[&a.0, &a.1, &from.0, &until.0])
                .await?;
            rows.iter().map(rows::hour).collect()
        })
        .await
    }

    async fn ip_days(
        &self,
        token_id: TokenId,
        since: Timestamp,
    ) -> StoreResult<Vec<(String, i64, u64)>> {
        self.run(token_id.to_string(), move |i, id| async move {
            let c = i.client().await?;
            let rows = c.query(&SQL.ip_days_select(), &[&*id, &since.0]).await?;
            rows.iter().map(rows::ip_day).collect()
        })
        .await
    }

    async fn sweep(&self, at: SweepCutoffs, keep: &[String]) -> StoreResult<SweepOutcome> {
        self.run(keep.to_vec(), move |i, keep| async move {
            i.sweep(at, &keep).await
        })
        .await
    }

    async fn list_audit(
        &self,
        token_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>> {
        let arg = (
            token_key.map(str::to_string),
            i64::try_from(limit).unwrap_or(i64::MAX),
        );
        self.run(arg, |i, a| async move {
            let c = i.client().await?;
            let sql = format!(
                "SELECT {} FROM audit WHERE $1::text IS NULL OR token_key = $1
                 ORDER BY seq DESC LIMIT $2",
                rows::AUDIT_COLUMNS
            );
            let rows = c.query(&sql, &[&a.0, &a.1]).await?;
            rows.iter().map(rows::audit).collect()
        })
        .await
    }

    async fn enqueue_events(&self, rows: &[OutboxRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.run(rows.to_vec(), |i, r| async move { i.enqueue(&r).await })
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(
            (owner.to_string(), endpoint.to_string()),
            move |i, a| async move { i.claim(&a.0, &a.1, now, lease_until, limit).await },
        )
        .await
    }

    async fn finish_delivery(
        &self,
        owner: &str,
        lease_until: Timestamp,
        id: &str,
        result: &AttemptResult,
    ) -> StoreResult<bool> {
        self.run(
            (owner.to_string(), id.to_string(), result.clone()),
            move |i, a| async move { i.finish(&a.0, lease_until, &a.1, &a.2).await },
        )
        .await
    }

    async fn list_deliveries(&self, limit: usize) -> StoreResult<Vec<DeliveryRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run((), move |i, _| async move { i.deliveries(limit).await })
            .await
    }

    async fn prune_deliveries(
        &self,
        before: Timestamp,
        known: &[String],
        orphaned_before: Timestamp,
    ) -> StoreResult<usize> {
        self.run(known.to_vec(), move |i, k| async move {
            i.prune(before, &k, orphaned_before).await
        })
        .await
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run((), |i, _| async move {
            let c = i.client().await?;
            c.query_one("SELECT generation FROM change_generation WHERE id = 1", &[])
                .await?;
            Ok(())
        })
        .await
    }

    fn health(&self) -> Option<&StoreHealth> {
        Some(&self.health)
    }

    /// The change follower. One dedicated connection LISTENs on the schema's channel; each
    /// notification `<generation>:<ids>` re-reads those tokens (`*`: everything). Once a
    /// second it reads the generation back: that probe is the health signal, and if the
    /// generation is still ahead of what was applied one probe later (a lost notification),
    /// or a notification skips a generation, everything is reloaded. After any reconnect it
    /// LISTENs, then reloads everything, and only then counts as up again: an instance never
    /// goes on serving state it may have missed changes to.
    ///
    /// Usage flushes notify nothing: `last_used_at` changes with every flush and only ever
    /// matters when a token looks idle here, and that refusal path re-reads the token from
    /// the store first (`Proxy::recheck_idle`); the sweep and the admin API read the store's
    /// value too. So the only propagated facts are the ones an admin or the sweep changes.
    fn follow(
        self: Arc<Self>,
        sink: Arc<dyn ChangeSink>,
        shutdown: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(follower::follow_loop(self, sink, shutdown)))
    }
}
