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

mod follower;
mod outbox;
mod queries;
mod schema;
pub mod tls;
mod writes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::rows::{Columns, Value};
use super::{StoreError, StoreHealth, StoreResult};
use crate::clock::SharedClock;

/// Pooled connections per instance (the follower has one more of its own).
const POOL_SIZE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a transaction that lost a deadlock or serialization race to another instance.
const ATTEMPTS: usize = 4;

pub struct PostgresStore {
    inner: Arc<Inner>,
    /// For the follower's dedicated connection.
    listen_cfg: tokio_postgres::Config,
    /// The TLS connector of every connection (never used with `sslmode=disable`).
    tls: MakeRustlsConnect,
    schema: String,
    health: StoreHealth,
    clock: SharedClock,
}

struct Inner {
    pool: Pool,
    /// NOTIFY channel, private to the schema (channels are database-wide).
    channel: String,
    /// Where events go (set once at start-up; unset = no webhook endpoints).
    events: std::sync::OnceLock<Arc<crate::events::Router>>,
}

/// A failed step: a driver error (classified when it leaves this module) or a store answer.
pub(super) enum Fail {
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

/// What went wrong, with the server's own words when it answered (a `pg_hba.conf` refusal, a
/// wrong password) and the chain of causes otherwise (a TLS handshake's reason, a refused
/// connection): tokio-postgres's own message is only "db error" or "error connecting".
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("PostgreSQL {}: {}", db.code().code(), db.message());
    }
    let mut out = format!("PostgreSQL: {e}");
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn pool_fail(e: deadpool_postgres::PoolError) -> Fail {
    use deadpool_postgres::PoolError;
    let why = match &e {
        PoolError::Backend(pg) => describe(pg),
        other => other.to_string(),
    };
    Fail::Store(StoreError::Unavailable(format!(
        "cannot get a PostgreSQL connection: {why}"
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
        let parsed = tls::PgUrl::parse(url)
            .map_err(|e| StoreError::Unavailable(format!("store.url: {e}")))?;
        let tls = parsed.connector().map_err(StoreError::Unavailable)?;
        tracing::info!(sslmode = parsed.mode.as_str(), "connecting to PostgreSQL");
        let mut cfg = parsed.config;
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
            tls.clone(),
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
            schema::migrate(&mut client).await?;
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
            inner: Arc::new(Inner {
                pool,
                channel,
                events: std::sync::OnceLock::new(),
            }),
            listen_cfg,
            tls,
            schema,

            health: StoreHealth::new(outage_grace, now),
            clock,
        })
    }

    /// Writes the outbox rows of the events its changes report to `router`'s endpoints
    /// (SPEC §10). Set once, before the store is shared; a second call changes nothing.
    pub fn set_events(&self, router: Arc<crate::events::Router>) {
        let _ = self.inner.events.set(router);
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

impl Inner {
    async fn client(&self) -> Result<deadpool_postgres::Object, Fail> {
        self.pool.get().await.map_err(pool_fail)
    }
}

impl Columns for Row {
    type Error = Fail;

    fn column<T: Value>(&self, i: usize) -> Result<T, Fail> {
        Ok(self.try_get(i)?)
    }

    fn access(&self, i: usize) -> Result<i64, Fail> {
        Ok(i64::from(self.try_get::<_, i16>(i)?))
    }

    fn corrupt(&self, _: usize, what: &str) -> Fail {
        corrupt(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_names_truncated() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 63), "abc");
    }
}
