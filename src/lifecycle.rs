//! The lifecycle sweep: persists the idle policy (SPEC §1) that the proxy and admin API
//! already apply exactly at request time.
//!
//! Runs once at start-up and every `lifecycle.sweep_interval`. It flushes this instance's
//! pending usage first, so a token used a moment ago here is not lapsed by the store's stale
//! `last_used_at`. The store applies both rules in one transaction whose conditions are
//! re-evaluated on the rows themselves, so a repeat, or another instance sweeping at the same
//! time, changes nothing twice.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::state::TokenIndex;
use crate::store::{Store, StoreResult, SweepOutcome};
use crate::usage::UsageRecorder;

pub struct Sweeper {
    pub store: Arc<dyn Store>,
    pub index: Arc<TokenIndex>,
    pub usage: Arc<UsageRecorder>,
    pub clock: SharedClock,
    pub lifecycle: LifecycleConfig,
}

impl Sweeper {
    /// One sweep at the current time.
    pub async fn sweep_once(&self) -> StoreResult<SweepOutcome> {
        self.usage.flush(self.store.as_ref()).await?;
        let now = self.clock.now();
        let out = self
            .store
            .sweep(
                now.minus(self.lifecycle.inactive_after),
                now.minus(self.lifecycle.delete_after),
                now,
            )
            .await?;
        for (id, name) in &out.deactivated {
            tracing::info!(token = %name, token_id = %id, actor = "idle-policy", "token deactivated after inactive_after without use");
            self.index.refresh(self.store.as_ref(), id).await?;
        }
        for (id, name) in &out.deleted {
            tracing::info!(token = %name, token_id = %id, actor = "idle-policy", "token deleted after delete_after without use");
            self.index.forget(id).await;
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
