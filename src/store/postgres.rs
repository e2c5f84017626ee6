//! The shared store: PostgreSQL, for several gateway instances behind a load balancer.
//!
//! Same semantics as [`super::sqlite`] (one schema, the same records and transactions), plus
//! what sharing needs:
//!
//! - **Versioned migrations** at start-up, inside one transaction holding
//!   `pg_advisory_xact_lock`, so instances starting together apply each migration once.
//! - **A change generation.** Every transaction that changes a token (create, update,
//!   activate/deactivate, regenerate, delete, block/unblock, idle sweep) first bumps the single
//!   row of `change_generation` (which also orders those transactions: the row lock is held to
//!   commit, so generations follow commit order and a rolled-back transaction consumes none),
//!   and before committing sends `NOTIFY` with `<generation>:<id>,<id>...` (or
//!   `<generation>:*`) on a channel private to the schema. Usage flushes change no generation
//!   (see [`PostgresStore::follow`] for why).
//! - **A follower per instance** ([`PostgresStore::follow`]): a dedicated connection LISTENs,
//!   re-reads each notified token into the in-memory index, and once a second reads the
//!   generation back: a gap, a lost notification or a reconnect means a full reload before the
//!   instance counts as up again. The same probe drives [`StoreHealth`].
//!
//! Every timestamp is a parameter from the gateway's clock; SQL never calls `now()`. Each call
//! runs in its own task, so a caller that stops waiting never leaves a transaction half done;
//! deadlocks and serialization failures between instances are retried. The connection URL may
//! carry a password: it is never logged (errors come from the driver, which does not echo it).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Transaction};

use super::*;
use crate::audit;
use crate::clock::SharedClock;
use crate::model::{InactiveReason, Status, TokenId};
use crate::state::LOAD_BATCH;
use crate::token::{Access, SecretHash};

/// Versioned migrations, applied in order at open, all in one transaction under the
/// migration lock. `name_key` and `entry` use the "C" collation so that ordering and paging
/// agree with the embedded store (byte order), whatever the database's locale.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"CREATE TABLE tokens (
        id              text PRIMARY KEY,
        name            text NOT NULL,
        name_key        text COLLATE "C" NOT NULL UNIQUE,
        description     text,
        access          smallint NOT NULL,
        secret_hash     bytea NOT NULL UNIQUE,
        status          text NOT NULL CHECK (status IN ('active', 'inactive')),
        inactive_reason text CHECK (inactive_reason IN ('admin', 'idle')),
        created_at      bigint NOT NULL,
        activated_at    bigint,
        deactivated_at  bigint,
        last_used_at    bigint,
        version         bigint NOT NULL DEFAULT 1
    );
    CREATE TABLE token_ips (
        token_id      text NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
        entry         text COLLATE "C" NOT NULL,
        first_used_at bigint,
        last_used_at  bigint,
        requests      bigint NOT NULL DEFAULT 0,
        denied        bigint NOT NULL DEFAULT 0,
        blocked_at    bigint,
        PRIMARY KEY (token_id, entry)
    );
    CREATE TABLE audit (
        seq        bigserial PRIMARY KEY,
        at         bigint NOT NULL,
        actor      text NOT NULL,
        source_ip  text,
        action     text NOT NULL,
        token      text NOT NULL,
        token_key  text COLLATE "C" NOT NULL,
        token_id   text NOT NULL,
        details    text NOT NULL
    );
    CREATE INDEX audit_by_token ON audit (token_key, seq);
    CREATE INDEX audit_by_time ON audit (at);
    CREATE TABLE change_generation (
        id         smallint PRIMARY KEY CHECK (id = 1),
        generation bigint NOT NULL
    );
    INSERT INTO change_generation (id, generation) VALUES (1, 0);"#,
)];

/// `pg_advisory_xact_lock` key of the migrations ("tokengat").
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e67_6174;

const TOKEN_COLUMNS: &str = "t.id, t.name, t.description, t.access, t.secret_hash, t.status, \
     t.inactive_reason, t.created_at, t.activated_at, t.deactivated_at, t.last_used_at, t.version";
/// The token's block entries, read in the same statement (one snapshot).
const BLOCKS_COLUMN: &str = "ARRAY(SELECT i.entry FROM token_ips i \
     WHERE i.token_id = t.id AND i.blocked_at IS NOT NULL ORDER BY i.entry)";
/// The idle clock's start (GREATEST ignores NULLs).
const IDLE_START: &str = "GREATEST(created_at, activated_at, last_used_at)";

/// Pooled connections per instance (the follower has one more of its own).
const POOL_SIZE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the follower reads the generation back (reconciliation and health probe).
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Notifications buffered between the listener connection and the follower; past it the
/// follower reloads everything instead.
const NOTIFY_QUEUE: usize = 1024;
/// NOTIFY payloads must stay under 8000 bytes; longer id lists become "reload all".
const MAX_PAYLOAD: usize = 7000;
/// Attempts at a transaction that lost a deadlock or serialization race to another instance.
const ATTEMPTS: usize = 4;

pub struct PostgresStore {
    inner: Arc<Inner>,
    /// For the follower's dedicated connection.
    listen_cfg: tokio_postgres::Config,
    schema: String,
    health: StoreHealth,
    clock: SharedClock,
}

struct Inner {
    pool: Pool,
    /// NOTIFY channel, private to the schema (channels are database-wide).
    channel: String,
}

/// A failed step: a driver error (classified when it leaves this module) or a store answer.
enum Fail {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Store(e) => e,
            Fail::Db(e) => StoreError::Unavailable(describe(&e)),
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => format!("PostgreSQL: {e}"),
    }
}

fn pool_fail(e: deadpool_postgres::PoolError) -> Fail {
    Fail::Store(StoreError::Unavailable(format!(
        "cannot get a PostgreSQL connection: {e}"
    )))
}

fn corrupt(what: impl std::fmt::Display) -> Fail {
    Fail::Store(StoreError::Unavailable(format!("unexpected row: {what}")))
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// At most `max` bytes, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl PostgresStore {
    /// Connects, migrates, and finds the schema the URL's `search_path` selects.
    pub async fn open(
        url: &str,
        outage_grace: Duration,
        clock: SharedClock,
    ) -> StoreResult<PostgresStore> {
        let mut cfg = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!("store.url is not a valid PostgreSQL URL: {e}"))
        })?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        // Notice a dead peer (the follower's connection is mostly idle) within ~30 s.
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(20));
        if cfg.get_application_name().is_none() {
            cfg.application_name("tokengate");
        }
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let schema = {
            let mut client = pool.get().await.map_err(pool_fail)?;
            let row = client
                .query_one("SELECT current_schema()", &[])
                .await
                .map_err(Fail::from)?;
            let schema: Option<String> = row.try_get(0).map_err(Fail::from)?;
            let schema = schema.ok_or_else(|| {
                StoreError::Unavailable(
                    "the search_path of store.url names no existing schema".into(),
                )
            })?;
            migrate(&mut client).await?;
            schema
        };
        let digest = blake3::hash(schema.as_bytes()).to_hex();
        let channel = format!("tokengate_{}", &digest.as_str()[..16]);
        let mut listen_cfg = cfg;
        if listen_cfg.get_application_name() == Some("tokengate") {
            // Names the follower's connection in pg_stat_activity (and lets tests find it).
            listen_cfg.application_name(truncate(&format!("tokengate listener {schema}"), 63));
        }
        let now = clock.now();
        tracing::info!(schema = %schema, "PostgreSQL store ready");
        Ok(PostgresStore {
            inner: Arc::new(Inner { pool, channel }),
            listen_cfg,
            schema,
            health: StoreHealth::new(outage_grace, now),
            clock,
        })
    }

    /// The schema holding the tables (from the URL's `search_path`, else `public`).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Runs `op` in its own task (so it completes or rolls back even if the caller stops
    /// waiting), retrying it when it lost a deadlock or serialization race.
    async fn run<T, A, F, Fut>(&self, arg: A, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        A: Send + Sync + 'static,
        F: Fn(Arc<Inner>, Arc<A>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Fail>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let arg = Arc::new(arg);
        tokio::spawn(async move {
            let mut attempt = 1;
            loop {
                match op(inner.clone(), arg.clone()).await {
                    Err(Fail::Db(e)) if attempt < ATTEMPTS && is_transient(&e) => {
                        tracing::debug!(error = %describe(&e), attempt, "retrying a store transaction");
                        attempt += 1;
                    }
                    r => return r.map_err(StoreError::from),
                }
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

async fn migrate(client: &mut Client) -> Result<(), Fail> {
    let tx = client.transaction().await?;
    // Two instances starting together: the second waits here, then finds everything applied.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY)")
        .await?;
    let mut applied = HashSet::new();
    for r in tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
    {
        applied.insert(r.try_get::<_, i64>(0)?);
    }
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "PostgreSQL migration applied");
        }
    }
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(newer) = applied.iter().copied().filter(|v| *v > known).max() {
        tracing::warn!(
            schema_version = newer,
            "the database was migrated by a newer tokengate; this instance knows only up to {known}"
        );
    }
    tx.commit().await?;
    Ok(())
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn token_from_row(row: &Row) -> Result<TokenRecord, Fail> {
    let hash: Vec<u8> = row.try_get(4)?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt("secret hash length"))?;
    let status: String = row.try_get(5)?;
    let reason: Option<String> = row.try_get(6)?;
    let access: i16 = row.try_get(3)?;
    Ok(TokenRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        description: row.try_get(2)?,
        access: Access::from_bits(u8::try_from(access).unwrap_or(0)),
        secret_hash: SecretHash::from_bytes(hash),
        status: Status::from_db(&status),
        inactive_reason: InactiveReason::from_db(reason.as_deref()),
        created_at: Timestamp(row.try_get(7)?),
        activated_at: ts(row.try_get(8)?),
        deactivated_at: ts(row.try_get(9)?),
        last_used_at: ts(row.try_get(10)?),
        version: row.try_get(11)?,
    })
}

/// A token row followed by the [`BLOCKS_COLUMN`] array (column 12).
fn token_with_blocks(row: &Row) -> Result<TokenWithBlocks, Fail> {
    let token = token_from_row(row)?;
    let raw: Vec<String> = row.try_get(12)?;
    let mut blocks = Vec::with_capacity(raw.len());
    for s in raw {
        // Entries are written canonical by this store; an unparsable one means tampering.
        blocks.push(BlockEntry::parse(&s).map_err(corrupt)?);
    }
    Ok(TokenWithBlocks { token, blocks })
}

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
    async fn client(&self) -> Result<deadpool_postgres::Object, Fail> {
        self.pool.get().await.map_err(pool_fail)
    }

    async fn insert_token(&self, t: &TokenRecord, audit: &AuditEntry) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        let key = crate::token::name_key(&t.name);
        let access = i16::from(t.access.bits());
        let hash = t.secret_hash.as_bytes().to_vec();
        let res = tx
            .execute(
                "INSERT INTO tokens (id, name, name_key, description, access, secret_hash, status,
                    inactive_reason, created_at, activated_at, deactivated_at, last_used_at, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &[
                    &t.id,
                    &t.name,
                    &key,
                    &t.description,
                    &access,
                    &hash,
                    &t.status.as_str(),
                    &t.inactive_reason.map(|r| r.as_str()),
                    &t.created_at.0,
                    &t.activated_at.map(|x| x.0),
                    &t.deactivated_at.map(|x| x.0),
                    &t.last_used_at.map(|x| x.0),
                    &t.version,
                ],
            )
            .await;
        if let Err(e) = res {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                let on_name = e
                    .as_db_error()
                    .and_then(|d| d.constraint())
                    .is_some_and(|c| c.contains("name_key"));
                return Err(Fail::Store(StoreError::Conflict(if on_name {
                    "name_taken"
                } else {
                    "duplicate"
                })));
            }
            return Err(e.into());
        }
        write_audit(&tx, audit).await?;
        notify(&tx, &self.channel, generation, &[&t.id.to_string()]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_tokens(&self, tokens: &[TokenRecord], audit: &[AuditEntry]) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        // Row locks in id order, as the usage flush takes them: no deadlock between the two.
        let mut ordered: Vec<&TokenRecord> = tokens.iter().collect();
        // Row locks in id order (the text order of canonical ids is the same).
        ordered.sort_by_key(|t| t.id);
        for t in &ordered {
            let access = i16::from(t.access.bits());
            let hash = t.secret_hash.as_bytes().to_vec();
            let n = tx
                .execute(
                    "UPDATE tokens SET description = $2, access = $3, secret_hash = $4,
                        status = $5, inactive_reason = $6, activated_at = $7,
                        deactivated_at = $8, version = version + 1
                     WHERE id = $1 AND version = $9",
                    &[
                        &t.id,
                        &t.description,
                        &access,
                        &hash,
                        &t.status.as_str(),
                        &t.inactive_reason.map(|r| r.as_str()),
                        &t.activated_at.map(|x| x.0),
                        &t.deactivated_at.map(|x| x.0),
                        &t.version,
                    ],
                )
                .await?;
            if n == 0 {
                // Dropping `tx` rolls back the rows already written (and the generation).
                return Err(Fail::Store(
                    if token_exists(&tx, &t.id.to_string()).await? {
                        StoreError::Conflict("version")
                    } else {
                        StoreError::NotFound
                    },
                ));
            }
        }
        for a in audit {
            write_audit(&tx, a).await?;
        }
        let ids: Vec<String> = ordered.iter().map(|t| t.id.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        notify(&tx, &self.channel, generation, &ids).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_token(&self, id: &str, audit: Option<&AuditEntry>) -> Result<(), Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let generation = bump(&tx).await?;
        let n = tx
            .execute("DELETE FROM tokens WHERE id = $1", &[&id])
            .await?;
        if n == 0 {
            return Err(Fail::Store(StoreError::NotFound));
        }
        if let Some(a) = audit {
            write_audit(&tx, a).await?;
        }
        notify(&tx, &self.channel, generation, &[id]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn block(
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
        notify(&tx, &self.channel, generation, &[id]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unblock(&self, id: &str, entries: &[String], audit: &AuditEntry) -> Result<(), Fail> {
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
        notify(&tx, &self.channel, generation, &[id]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Usage write-behind. Counters are added in SQL (`requests = requests + excluded...`),
    /// so batches from several instances sum whatever their interleaving. No generation and
    /// no notification: see [`PostgresStore::follow`].
    async fn flush_usage(&self, batch: &[UsageDelta], max_ips: usize) -> Result<(), Fail> {
        // One row per (token, canonical IP), in key order (the order row locks are taken in).
        let mut merged: BTreeMap<(String, String), Merged> = BTreeMap::new();
        for d in batch {
            let key = (
                d.token_id.to_string(),
                crate::net::canonical_ip(d.ip).to_string(),
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
        let ids: Vec<&str> = {
            let mut v: Vec<&str> = merged.keys().map(|(id, _)| id.as_str()).collect();
            v.dedup();
            v
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Lock the tokens first, in id order: a token deleted meanwhile is simply absent
        // (its usage is dropped), and concurrent flushes queue instead of deadlocking.
        let live: HashSet<String> = tx
            .query(
                "SELECT id FROM tokens WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()?;
        let (mut t_ids, mut entries, mut firsts, mut lasts, mut reqs, mut dens) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut raise: BTreeMap<&str, i64> = BTreeMap::new();
        for ((id, entry), (r, d, f, l)) in &merged {
            if !live.contains(id.as_str()) {
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
        if t_ids.is_empty() {
            return Ok(());
        }
        // LEAST/GREATEST ignore NULLs: the earliest first use and the latest last use win.
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
        Ok(())
    }

    async fn sweep(&self, at: SweepCutoffs, keep: &[String]) -> Result<SweepOutcome, Fail> {
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
            tx.query(
                &format!(
                    "DELETE FROM tokens WHERE {IDLE_START} <= $1 AND NOT (id = ANY($2))
                     RETURNING id, name"
                ),
                &[&at.delete_before.0, &keep],
            )
            .await?,
        )?;
        // deactivated_at = the instant the token lapsed (idle start + inactive_after).
        let lapse = at.inactive_after_ms;
        out.deactivated = pairs(
            tx.query(
                &format!(
                    "UPDATE tokens SET status = 'inactive', inactive_reason = 'idle',
                        deactivated_at = {IDLE_START} + $2, version = version + 1
                     WHERE status = 'active' AND {IDLE_START} <= $1 AND NOT (id = ANY($3))
                     RETURNING id, name"
                ),
                &[&at.inactive_before.0, &lapse, &keep],
            )
            .await?,
        )?;
        out.audit = audit::of_sweep(at.now, &out.deleted, &out.deactivated);
        for a in &out.audit {
            write_audit(&tx, a).await?;
        }
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
        tx.commit().await?;
        Ok(out)
    }
}

/// One usage row's sums in a flush: requests, denied, first use, last use (ms).
type Merged = (i64, i64, Option<i64>, Option<i64>);

/// Keeps at most `max_ips` unblocked records for a token, dropping the least recently used.
/// Records covered by a block entry (exact or CIDR) are never dropped.
async fn trim_ips(tx: &Transaction<'_>, token_id: &str, max_ips: usize) -> Result<(), Fail> {
    let mut blocks = Vec::new();
    let mut candidates: Vec<(Option<i64>, String)> = Vec::new();
    for r in tx
        .query(
            "SELECT entry, last_used_at, blocked_at IS NOT NULL FROM token_ips WHERE token_id = $1",
            &[&token_id],
        )
        .await?
    {
        let entry: String = r.try_get(0)?;
        if r.try_get::<_, bool>(2)? {
            blocks.push(BlockEntry::parse(&entry).map_err(corrupt)?);
        } else {
            candidates.push((r.try_get(1)?, entry));
        }
    }
    candidates.retain(|(_, entry)| {
        !BlockEntry::parse(entry)
            .map(|e| blocks.iter().any(|b| b.contains(e.net().addr())))
            .unwrap_or(false)
    });
    if candidates.len() <= max_ips {
        return Ok(());
    }
    // Oldest first (never-used rows sort first: None < Some).
    candidates.sort();
    let excess = candidates.len() - max_ips;
    let doomed: Vec<String> = candidates
        .into_iter()
        .take(excess)
        .map(|(_, e)| e)
        .collect();
    tx.execute(
        "DELETE FROM token_ips WHERE token_id = $1 AND entry = ANY($2)",
        &[&token_id, &doomed],
    )
    .await?;
    Ok(())
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
            row.as_ref().map(token_from_row).transpose()
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
            rows.iter().map(token_from_row).collect()
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
            let rows = c
                .query(
                    "SELECT entry, first_used_at, last_used_at, requests, denied, blocked_at
                     FROM token_ips WHERE token_id = $1",
                    &[&*id],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let entry: String = r.try_get(0)?;
                out.push(IpRecord {
                    entry: BlockEntry::parse(&entry).map_err(corrupt)?,
                    first_used_at: ts(r.try_get(1)?),
                    last_used_at: ts(r.try_get(2)?),
                    requests: u64::try_from(r.try_get::<_, i64>(3)?).unwrap_or(0),
                    denied: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
                    blocked_at: ts(r.try_get(5)?),
                });
            }
            Ok(out)
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
            let rows = c
                .query(
                    "SELECT at, actor, source_ip, action, token, token_id, details FROM audit
                     WHERE $1::text IS NULL OR token_key = $1 ORDER BY seq DESC LIMIT $2",
                    &[&a.0, &a.1],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let details: String = r.try_get(6)?;
                out.push(AuditEntry {
                    at: Timestamp(r.try_get(0)?),
                    actor: r.try_get(1)?,
                    source_ip: r.try_get(2)?,
                    action: r.try_get(3)?,
                    token: r.try_get(4)?,
                    token_id: r.try_get(5)?,
                    details: serde_json::from_str(&details)
                        .unwrap_or_else(|_| serde_json::json!({})),
                });
            }
            Ok(out)
        })
        .await
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
        Some(tokio::spawn(follow_loop(self, sink, shutdown)))
    }
}

enum Ended {
    Shutdown,
    Lost(String),
}

/// Aborts the listener connection's driver when the follower lets go of it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow_loop(
    store: Arc<PostgresStore>,
    sink: Arc<dyn ChangeSink>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        match store.follow_once(sink.as_ref(), &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Lost(why) => {
                if store.health.mark_down() {
                    tracing::warn!(
                        error = %why,
                        "lost contact with PostgreSQL: cached tokens are served for at most store.outage_grace, unknown ones get 503"
                    );
                } else {
                    tracing::debug!(error = %why, "PostgreSQL still unreachable");
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn read_generation(client: &Client) -> Result<i64, String> {
    let q = client.query_one("SELECT generation FROM change_generation WHERE id = 1", &[]);
    match tokio::time::timeout(PROBE_TIMEOUT, q).await {
        Ok(Ok(row)) => row.try_get(0).map_err(|e| describe(&e)),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err("PostgreSQL did not answer the probe in time".into()),
    }
}

/// `<generation>:<id>,<id>...` → (generation, ids), `None` ids for `*`.
fn parse_payload(p: &str) -> Option<(i64, Option<Vec<String>>)> {
    let (g, rest) = p.split_once(':')?;
    let g = g.parse().ok()?;
    if rest == "*" {
        return Some((g, None));
    }
    Some((
        g,
        Some(
            rest.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    ))
}

impl PostgresStore {
    /// One listener connection's life: connect, LISTEN, reload, then follow until it fails.
    async fn follow_once(
        &self,
        sink: &dyn ChangeSink,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, self.listen_cfg.connect(NoTls));
        let (client, mut conn) = match connect.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ended::Lost(describe(&e)),
            Err(_) => return Ended::Lost("connecting to PostgreSQL timed out".into()),
        };
        let (tx, mut rx) = mpsc::channel::<String>(NOTIFY_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        let _driver = AbortOnDrop(tokio::spawn(async move {
            while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.try_send(n.payload().to_string()).is_err() {
                            flag.store(true, Ordering::Release);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // Dropping `tx` tells the follower the connection is gone.
        }));
        let listen = format!("LISTEN {}", quote_ident(&self.inner.channel));
        if let Err(e) = client.batch_execute(&listen).await {
            return Ended::Lost(describe(&e));
        }
        let was_down = !self.health.is_up();
        let mut applied = match self.resync(&client, sink).await {
            Ok(g) => g,
            Err(e) => return Ended::Lost(e),
        };
        self.health.mark_up(self.clock.now());
        if was_down {
            tracing::info!("PostgreSQL reachable again; tokens reloaded");
        } else {
            tracing::debug!("following token changes through LISTEN/NOTIFY");
        }
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // A generation the store had reached at the previous probe but this instance had not.
        let mut behind: Option<i64> = None;
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ended::Shutdown;
                    }
                }
                msg = rx.recv() => {
                    let Some(payload) = msg else {
                        return Ended::Lost("the listener connection closed".into());
                    };
                    let res = if overflow.swap(false, Ordering::AcqRel) {
                        self.resync(&client, sink).await.map(|g| applied = applied.max(g))
                    } else {
                        self.apply(&client, sink, &payload, &mut applied).await
                    };
                    if let Err(e) = res {
                        return Ended::Lost(e);
                    }
                }
                _ = tick.tick() => {
                    let g = match read_generation(&client).await {
                        Ok(g) => g,
                        Err(e) => return Ended::Lost(e),
                    };
                    if g > applied && behind.is_some_and(|b| applied < b) {
                        tracing::warn!(store = g, applied, "missed a change notification; reloading all tokens");
                        match self.resync(&client, sink).await {
                            Ok(g) => applied = applied.max(g),
                            Err(e) => return Ended::Lost(e),
                        }
                        behind = None;
                    } else {
                        behind = (g > applied).then_some(g);
                    }
                    self.health.mark_up(self.clock.now());
                }
            }
        }
    }

    /// Applies one notification in generation order; a gap or an unreadable payload means
    /// something was missed, so everything is reloaded.
    async fn apply(
        &self,
        client: &Client,
        sink: &dyn ChangeSink,
        payload: &str,
        applied: &mut i64,
    ) -> Result<(), String> {
        match parse_payload(payload) {
            // Already reflected (the reload read a later state).
            Some((g, _)) if g <= *applied => Ok(()),
            Some((g, ids)) if g == *applied + 1 => {
                match ids {
                    Some(ids) => sink.tokens_changed(&ids).await,
                    None => sink.reload_all().await,
                }
                .map_err(|e| e.to_string())?;
                *applied = g;
                Ok(())
            }
            other => {
                tracing::warn!(
                    applied = *applied,
                    got = ?other.map(|(g, _)| g),
                    "change notifications out of sequence; reloading all tokens"
                );
                let g = self.resync(client, sink).await?;
                *applied = (*applied).max(g);
                Ok(())
            }
        }
    }

    /// Reads the generation, then reloads everything: the reload reflects at least that
    /// generation, so it becomes the applied one.
    async fn resync(&self, client: &Client, sink: &dyn ChangeSink) -> Result<i64, String> {
        let g = read_generation(client).await?;
        sink.reload_all().await.map_err(|e| e.to_string())?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload("7:a,b"),
            Some((7, Some(vec!["a".to_string(), "b".to_string()])))
        );
        assert_eq!(parse_payload("8:*"), Some((8, None)));
        assert_eq!(parse_payload("9:"), Some((9, Some(vec![]))));
        assert_eq!(parse_payload("x:a"), None);
        assert_eq!(parse_payload("nonsense"), None);
    }

    #[test]
    fn identifiers_are_quoted_and_names_truncated() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 63), "abc");
    }
}
