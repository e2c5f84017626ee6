//! The gateway's shared parts, built once by `app` and handed as one handle to whoever needs
//! them (the proxy, the admin API, the sweeper), instead of one `Arc` argument each.

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::limiter::FailureLimiter;
use crate::metrics::Metrics;
use crate::state::TokenIndex;
use crate::store::Store;
use crate::usage::UsageRecorder;

/// Every long-lived shared part of a running gateway. Cloning it clones six `Arc`s.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub index: Arc<TokenIndex>,
    pub usage: Arc<UsageRecorder>,
    pub limiter: Arc<FailureLimiter>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    /// Per-token rate limits (local or Redis).
    pub rate_limiter: Arc<crate::ratelimit::RateLimiter>,
}
