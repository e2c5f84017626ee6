//! The lifecycle sweep: persists the idle policy (SPEC §1) that the proxy and admin API
//! already apply exactly at request time, and prunes the audit log past `audit.retention` and
//! the hourly usage history past `usage.history`.
//!
//! Runs once at start-up and every `lifecycle.sweep_interval`. It reads the time first, then
//! flushes this instance's pending usage, then asks the store to apply both rules while
//! leaving alone every token that memory says was used within the window (a use that raced
//! the flush). The store re-evaluates the conditions on the rows themselves in one
//! transaction, so a repeat, or another instance sweeping at the same time, changes nothing
//! twice; each change gets its audit row (actor `idle-policy`) in that transaction.
//!
//! With a store shared by several instances, a use on another instance reaches the store only
//! with that instance's next usage flush, which this one cannot see or wait for. So a shared
//! store is swept [`shared_store_margin`] after the policy's instant: a token used at the last
//! moment elsewhere is neither deactivated nor (irreversibly) deleted on the strength of a
//! record that is behind. Requests still see the exact policy: the proxy and the admin API
//! decide the effective status at request time.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::model::TokenId;
use crate::state::TokenIndex;
use crate::store::{Store, StoreResult, SweepCutoffs, SweepOutcome};
use crate::usage::UsageRecorder;

pub struct Sweeper {
    pub store: Arc<dyn Store>,
    pub index: Arc<TokenIndex>,
    pub usage: Arc<UsageRecorder>,
    pub clock: SharedClock,
    pub lifecycle: LifecycleConfig,
    pub audit_retention: Duration,
    /// `usage.history`: how long hourly usage rows are kept.
    pub usage_history: Duration,
    /// How long after the policy's instant a token is swept: [`shared_store_margin`] with a
    /// shared store, zero with the embedded one (this instance's own flush, run first, and
    /// its memory see every use).
    pub margin: Duration,
    /// `webhooks.expiry_notice`, when some webhook endpoint takes `token.expiring`.
    pub expiry_notice: Option<Duration>,
}

impl Sweeper {
    /// The sweeper of the gateway's shared parts, with `config`'s policy and retention.
    pub fn new(config: &crate::config::Config, shared: &crate::shared::Shared) -> Sweeper {
        Sweeper {
            store: shared.store.clone(),
            index: shared.index.clone(),
            usage: shared.usage.clone(),
            clock: shared.clock.clone(),
            lifecycle: config.lifecycle,
            audit_retention: config.audit.retention,
            usage_history: config.usage.history,
            margin: if shared.store.health().is_some() {
                shared_store_margin(config.usage.flush_interval)
            } else {
                Duration::ZERO
            },
            expiry_notice: config
                .webhooks
                .endpoints
                .iter()
                .any(|e| e.events.contains(crate::events::EventType::TokenExpiring))
                .then_some(config.webhooks.expiry_notice),
        }
    }
}

/// The sweep's margin with a store shared by instances that flush usage every
/// `flush_interval`: two intervals (a flush may start just before a use and take a while)
/// plus 10 s for a slow or retried store write. Assumes every instance has the same
/// `usage.flush_interval`.
pub fn shared_store_margin(flush_interval: Duration) -> Duration {
    flush_interval
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(10))
}

impl Sweeper {
    /// One sweep at the current time.
    pub async fn sweep_once(&self) -> StoreResult<SweepOutcome> {
        // The time is read before the flush: every use before `now` is then either in the
        // store or (if it raced the flush) in memory, where `used_since` finds it.
        let now = self.clock.now();
        self.usage.flush(self.store.as_ref()).await?;
        let at = SweepCutoffs {
            now,
            inactive_before: now.minus(self.lifecycle.inactive_after.saturating_add(self.margin)),
            delete_before: now.minus(self.lifecycle.delete_after.saturating_add(self.margin)),
            audit_before: now.minus(self.audit_retention),
            usage_before: now.minus(self.usage_history),
            inactive_after_ms: i64::try_from(self.lifecycle.inactive_after.as_millis())
                .unwrap_or(i64::MAX),
            expiring_before: self.expiry_notice.map(|n| now.plus(n)),
        };
        let keep = self.index.used_since(at.inactive_before);
        let out = self.store.sweep(at, &keep).await?;
        let ids = |v: &[(String, String)]| -> Vec<TokenId> {
            v.iter()
                .filter_map(|(id, _)| TokenId::parse_stored(id))
                .collect()
        };
        for id in ids(&out.deactivated) {
            self.index.refresh(self.store.as_ref(), id).await?;
        }
        for id in ids(&out.deleted) {
            self.index.forget(id).await;
        }
        out.audit.iter().for_each(crate::audit::emit);
        if out.pruned > 0 {
            tracing::info!(
                pruned = out.pruned,
                "audit entries past audit.retention pruned"
            );
        }
        if out.usage_pruned > 0 {
            tracing::debug!(
                pruned = out.usage_pruned,
                "hourly usage rows past usage.history pruned"
            );
        }
        Ok(out)
    }

    /// The periodic loop (the start-up sweep has already run); returns when `shutdown` fires.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: skip it.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "lifecycle sweep failed; will retry");
            }
        }
    }
}
