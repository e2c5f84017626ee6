//! Persistence: the [`Store`] trait and the records it keeps.
//!
//! The store is the durable truth (tokens, statuses, block entries, usage records). It knows
//! nothing of HTTP, caches or policy, and never chooses a timestamp: every time it writes comes
//! in as an argument from the gateway's [`Clock`](crate::clock::Clock). Admin mutations are
//! committed durably before the call returns; the admin layer relies on that to answer only
//! after the change is safe. Implementations: [`sqlite::SqliteStore`] (embedded, default) and
//! [`postgres::PostgresStore`] (shared by several instances; it also reports its reachability
//! through [`StoreHealth`] and streams other instances' changes to a [`ChangeSink`]). What
//! they have in common is written once: row decoding in `rows`, the statements that differ
//! only by dialect and the least-recently-used trim in `sql`, the model's types in `sql_types`.

pub mod postgres;
mod rows;
mod sql;
mod sql_types;
pub mod sqlite;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::events::{AttemptResult, Claimed, DeliveryRecord, OutboxRow};
use crate::model::{
    AuditEntry, HourCounts, IpRecord, TokenId, TokenRecord, TokenWithBlocks, UsageDelta,
};
use crate::net::BlockEntry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique name is taken, or a concurrent writer changed the row first.
    #[error("conflict: {0}")]
    Conflict(Conflict),
    /// The store cannot be reached or refused the operation (disk full, read-only, corrupt).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Tokens per batch when [`Store::load_all`] streams the whole store into memory.
pub const LOAD_BATCH: usize = 4096;

/// Why a write met a [`StoreError::Conflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// Another token has the same name (ignoring case).
    NameTaken,
    /// Another unique column (the id or the secret hash) collided.
    Duplicate,
    /// The stored `version` is no longer the one the record was read at.
    Version,
}

impl Conflict {
    pub fn as_str(self) -> &'static str {
        match self {
            Conflict::NameTaken => "name_taken",
            Conflict::Duplicate => "duplicate",
            Conflict::Version => "version",
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a lifecycle sweep runs and what it changes (see [`Store::sweep`]).
#[derive(Debug, Clone, Copy)]
pub struct SweepCutoffs {
    /// The sweep's time; its audit rows carry it.
    pub now: Timestamp,
    /// Active tokens idle since this instant or earlier become inactive (reason idle).
    pub inactive_before: Timestamp,
    /// Tokens idle since this instant or earlier are deleted.
    pub delete_before: Timestamp,
    /// Audit rows older than this are pruned.
    pub audit_before: Timestamp,
    /// Hourly usage rows of hours starting before this are pruned (`usage.history`).
    pub usage_before: Timestamp,
    /// `lifecycle.inactive_after` in ms: a token deactivated as idle records `deactivated_at`
    /// = its idle start + this, the instant it lapsed, however late the sweep ran.
    pub inactive_after_ms: i64,
    /// Tokens whose `expires_at` is after `now` and at most this get their `token.expiring`
    /// event (once); `None` when no webhook endpoint takes it.
    pub expiring_before: Option<Timestamp>,
}

/// What the lifecycle sweep changed (ids and names, for logs and cache invalidation).
#[derive(Debug, Clone, Default)]
pub struct SweepOutcome {
    pub deactivated: Vec<(String, String)>,
    pub deleted: Vec<(String, String)>,
    /// Tokens whose `expires_at` passed since the last sweep (recorded once each; nothing
    /// else about them changes).
    pub expired: Vec<(String, String)>,
    /// The audit rows the sweep wrote (actor `idle-policy`), for the tracing events.
    pub audit: Vec<AuditEntry>,
    /// Audit rows older than the retention that were pruned.
    pub pruned: usize,
    /// Hourly usage rows older than `usage.history` that were pruned.
    pub usage_pruned: usize,
}

/// Reachability of a store shared over the network, as its change follower last saw it.
///
/// The proxy reads it on every request (two atomic loads, no await): while the store is
/// down, tokens already in memory are served only until `outage_grace` has passed since the
/// last successful contact, and unknown secrets get 503 instead of 401 (the gateway cannot
/// tell whether another instance created them). Times come from the gateway's clock.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    /// Last successful contact (ms of the gateway clock).
    last_ok: AtomicI64,
    grace_ms: i64,
}

impl StoreHealth {
    /// Starts up: a store is only built after a successful connection.
    pub fn new(outage_grace: Duration, now: Timestamp) -> StoreHealth {
        StoreHealth {
            up: AtomicBool::new(true),
            last_ok: AtomicI64::new(now.0),
            grace_ms: i64::try_from(outage_grace.as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A successful contact at `now`, with memory known to be current.
    pub fn mark_up(&self, now: Timestamp) {
        self.last_ok.fetch_max(now.0, Ordering::AcqRel);
        self.up.store(true, Ordering::Release);
    }

    /// Contact lost; returns whether it was up until now (to log the transition once).
    pub fn mark_down(&self) -> bool {
        self.up.swap(false, Ordering::AcqRel)
    }

    pub fn last_ok(&self) -> Timestamp {
        Timestamp(self.last_ok.load(Ordering::Acquire))
    }

    /// Whether a token found in memory may be served at `now`: always while the store is up;
    /// during an outage only while it is younger than `outage_grace` (0 = fail closed).
    pub fn serves_known(&self, now: Timestamp) -> bool {
        self.is_up() || now.0.saturating_sub(self.last_ok().0) < self.grace_ms
    }
}

/// Where [`Store::load_all`] sends its batches.
pub type TokenSink = tokio::sync::mpsc::Sender<Vec<TokenWithBlocks>>;

/// Where a shared store delivers changes committed by any instance (including this one).
#[async_trait]
pub trait ChangeSink: Send + Sync + 'static {
    /// These tokens changed or were deleted: re-read them.
    async fn tokens_changed(&self, ids: &[String]) -> StoreResult<()>;
    /// Anything may have changed (after a reconnect, or a missed notification): reload all.
    async fn reload_all(&self) -> StoreResult<()>;
}

/// The persistence boundary. All methods are cancel-safe from the caller's point of view:
/// the work runs to completion (or rolls back) even if the awaiting future is dropped.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every token with its block entries (start-up load of the in-memory index), sent to
    /// `sink` in batches of at most [`LOAD_BATCH`], so that a million tokens
    /// never sit in memory as store records all at once. A batch may be sent again if the
    /// read is retried (applying a batch is idempotent). Stops with an error if `sink` closes.
    async fn load_all(&self, sink: TokenSink) -> StoreResult<()>;
    async fn token_by_id(&self, id: TokenId) -> StoreResult<Option<TokenWithBlocks>>;
    /// Lookup by the case-folded name.
    async fn token_by_name(&self, name_key: &str) -> StoreResult<Option<TokenRecord>>;
    /// Tokens whose name key is `> after` and contains `q` (both already case-folded),
    /// ordered by name key, at most `limit`.
    async fn list_tokens(
        &self,
        after: Option<&str>,
        q: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>>;
    /// Inserts a new token and its audit row; [`Conflict::NameTaken`] if the name (ignoring
    /// case) exists.
    async fn insert_token(&self, token: &TokenRecord, audit: &AuditEntry) -> StoreResult<()>;
    /// Writes the admin-controlled fields (description, access, secret hash, status, reason,
    /// activated/deactivated times) of every token in one transaction, each only if its stored
    /// `version` still equals the record's; bumps the versions. All or nothing:
    /// [`Conflict::Version`] or `NotFound` roll everything back, audit rows included.
    async fn save_tokens(&self, tokens: &[TokenRecord], audit: &[AuditEntry]) -> StoreResult<()>;
    /// Deletes a token and its IP records, writing `audit` in the same transaction.
    /// `NotFound` if it did not exist.
    async fn delete_token(&self, id: TokenId, audit: Option<&AuditEntry>) -> StoreResult<()>;
    async fn list_ips(&self, token_id: TokenId) -> StoreResult<Vec<IpRecord>>;
    /// Adds block entries (idempotent: an existing entry keeps its `blocked_at`).
    async fn block(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        now: Timestamp,
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// Removes exact block entries (idempotent).
    async fn unblock(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        audit: &AuditEntry,
    ) -> StoreResult<()>;
    /// Adds a batch of usage to the records (sums counters, keeps the earliest first use and
    /// the latest last use), raises each token's `last_used_at`, then trims each touched token
    /// to `max_ips` unblocked records, least recently used first. Deltas of tokens that no
    /// longer exist are dropped.
    ///
    /// Also adds each delta to the hourly history (SPEC §12): to its token's row of its hour,
    /// and to its IP's row of that hour if the IP has a record once the batch is applied
    /// (a refusal makes no record but of a blocked or not-allowed IP). A trimmed record's
    /// hourly rows go with it.
    async fn flush_usage(&self, batch: &[UsageDelta], max_ips: usize) -> StoreResult<()>;
    /// A token's hourly rows, its own (`ip` `None`) or one IP's, for the hours starting in
    /// [`from`, `until`), oldest first; hours without a row are absent.
    async fn usage_hours(
        &self,
        token_id: TokenId,
        ip: Option<std::net::IpAddr>,
        from: Timestamp,
        until: Timestamp,
    ) -> StoreResult<Vec<HourCounts>>;
    /// Per IP of a token, its requests per UTC day from the day starting at `since` on:
    /// (IP as stored, day number from `since`, requests), days without a request absent.
    async fn ip_days(
        &self,
        token_id: TokenId,
        since: Timestamp,
    ) -> StoreResult<Vec<(String, i64, u64)>>;
    /// Persists the idle policy at `at.now`: active tokens idle since `at.inactive_before` or
    /// earlier become inactive (reason idle); tokens idle since `at.delete_before` are deleted;
    /// each change gets an audit row (actor `idle-policy`) in the same transaction. Audit rows
    /// older than `at.audit_before` and hourly usage rows of hours before `at.usage_before`
    /// are pruned.
    ///
    /// `keep` lists token ids this instance knows were used recently (in memory, possibly not
    /// flushed yet): they are left alone whatever the store says.
    async fn sweep(&self, at: SweepCutoffs, keep: &[String]) -> StoreResult<SweepOutcome>;
    /// Audit rows, newest first, optionally for one token (by case-folded name), at most `limit`.
    async fn list_audit(
        &self,
        token_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>>;
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Writes webhook outbox rows on their own (events that report no store change:
    /// `auth.failures`); a row whose `once_key` exists is skipped.
    async fn enqueue_events(&self, rows: &[OutboxRow]) -> StoreResult<()>;
    /// Leases to `owner`, until `lease_until`, at most `limit` pending deliveries to
    /// `endpoint` due at `now` and not leased by anyone (an expired lease counts as none);
    /// several instances never lease the same row at once. Also returns how many deliveries
    /// are pending in all.
    async fn claim_deliveries(
        &self,
        owner: &str,
        endpoint: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<(Vec<Claimed>, u64)>;
    /// Records one attempt at delivery `id` and releases its lease; `false` (nothing written)
    /// when `owner` no longer holds the lease it took until `lease_until`.
    async fn finish_delivery(
        &self,
        owner: &str,
        lease_until: Timestamp,
        id: &str,
        result: &AttemptResult,
    ) -> StoreResult<bool>;
    /// Deliveries, newest first, at most `limit`.
    async fn list_deliveries(&self, limit: usize) -> StoreResult<Vec<DeliveryRecord>>;
    /// Deletes delivered and failed rows last tried before `before`, and fails the pending
    /// rows created before `orphaned_before` whose endpoint is not in `known` (no longer
    /// configured: nothing would ever try them). Returns how many rows it changed.
    async fn prune_deliveries(
        &self,
        before: Timestamp,
        known: &[String],
        orphaned_before: Timestamp,
    ) -> StoreResult<usize>;

    /// Reachability of a store shared over the network; `None` for an embedded store, which
    /// is never "unreachable" for reads (every token is in memory).
    fn health(&self) -> Option<&StoreHealth> {
        None
    }

    /// Starts following changes committed by other instances sharing this store, delivering
    /// them to `sink` until `shutdown` fires. `None` when the store is not shared.
    fn follow(
        self: Arc<Self>,
        sink: Arc<dyn ChangeSink>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let _ = (sink, shutdown);
        None
    }
}
