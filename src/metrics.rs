//! Metrics (SPEC §8): counters and histograms the proxy updates with plain atomics (no lock,
//! no allocation per request), exposed in the Prometheus text format at scrape time.
//!
//! The exposition is written by the `prometheus-client` crate through a [`Collector`] that
//! reads the atomics (and, for gauges, the token index and usage buffer) when scraped. Labels
//! are route prefixes, status codes and refusal codes only: never a token name, secret or IP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::clock::SharedClock;
use crate::config::LifecycleConfig;
use crate::policy::{self, Effective};
use crate::state::TokenIndex;
use crate::usage::UsageRecorder;

/// Histogram bucket upper bounds, in seconds.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Status codes counted per route: 100..=599.
const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// The refusal codes counted in `tokengate_auth_refusals_total` (every proxy refusal that is
/// the gateway's decision; upstream failures are in the per-status request counts).
pub const REFUSALS: [&str; 16] = [
    "invalid_request",
    "not_implemented",
    "headers_too_large",
    "too_many_failures",
    "missing_token",
    "invalid_token",
    "store_unavailable",
    "token_expired",
    "token_inactive",
    "ip_blocked",
    "ip_not_allowed",
    "no_route",
    "access_denied",
    "rate_limited",
    "rate_limit_unavailable",
    "untrusted_caller",
];

#[derive(Debug)]
struct Histogram {
    /// Per-bucket counts (not cumulative) plus one overflow slot.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// (sum in seconds, count, per-bucket counts): the encoder makes them cumulative.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut out = Vec::with_capacity(BOUNDS.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            out.push((BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, out)
    }
}

#[derive(Debug)]
struct RouteMetrics {
    label: Box<str>,
    statuses: Box<[AtomicU64]>,
    latency: Histogram,
    upstream: Histogram,
}

impl RouteMetrics {
    fn new(label: &str) -> RouteMetrics {
        RouteMetrics {
            label: label.into(),
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::new(),
            upstream: Histogram::new(),
        }
    }
}

/// The gateway's counters. One per process, shared by the proxy and the admin listener.
#[derive(Debug)]
pub struct Metrics {
    /// One per configured route, in config order, then one for requests without a route.
    routes: Box<[RouteMetrics]>,
    refusals: [AtomicU64; REFUSALS.len()],
    /// Forward-auth checks: slot 0 allowed, then one per [`REFUSALS`] code.
    checks: [AtomicU64; REFUSALS.len() + 1],
    check_latency: Histogram,
    cache_hits: AtomicU64,
    previous_secret_uses: AtomicU64,
    cache_misses: AtomicU64,
    /// Webhook delivery attempts by [`WEBHOOK_OUTCOMES`].
    webhook_attempts: [AtomicU64; WEBHOOK_OUTCOMES.len()],
    /// Deliveries pending in the outbox, as the dispatcher last counted them.
    webhook_pending: AtomicU64,
}

/// Outcomes of a webhook delivery attempt: delivered, failed and retried later, failed for
/// good (410, or too old to retry).
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "retrying", "failed"];

impl Metrics {
    /// `routes`: the route labels (path prefixes) in config order.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Metrics {
        let mut all: Vec<RouteMetrics> = routes.into_iter().map(RouteMetrics::new).collect();
        all.push(RouteMetrics::new("none"));
        Metrics {
            routes: all.into_boxed_slice(),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            checks: std::array::from_fn(|_| AtomicU64::new(0)),
            check_latency: Histogram::new(),
            cache_hits: AtomicU64::new(0),
            previous_secret_uses: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            webhook_attempts: std::array::from_fn(|_| AtomicU64::new(0)),
            webhook_pending: AtomicU64::new(0),
        }
    }

    /// One webhook delivery attempt, by its outcome (one of [`WEBHOOK_OUTCOMES`]).
    pub fn webhook_attempt(&self, outcome: &str) {
        if let Some(i) = WEBHOOK_OUTCOMES.iter().position(|o| *o == outcome) {
            self.webhook_attempts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deliveries pending in the outbox (all instances' events, with a shared store).
    pub fn set_webhook_pending(&self, n: u64) {
        self.webhook_pending.store(n, Ordering::Relaxed);
    }

    fn route(&self, route: Option<usize>) -> Option<&RouteMetrics> {
        match route {
            Some(i) if i + 1 < self.routes.len() => self.routes.get(i),
            _ => self.routes.last(),
        }
    }

    /// One finished request: its route (None = none matched or not reached), status, latency.
    pub fn request(&self, route: Option<usize>, status: u16, latency: Duration) {
        if let Some(r) = self.route(route) {
            // Codes outside 100..=599 are not HTTP statuses hyper would send; not counted.
            let slot = status.checked_sub(STATUS_MIN).map(usize::from);
            if let Some(c) = slot.and_then(|i| r.statuses.get(i)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            r.latency.observe(latency);
        }
    }

    /// Time from sending to the upstream until its response headers.
    pub fn upstream(&self, route: usize, latency: Duration) {
        if let Some(r) = self.route(Some(route)) {
            r.upstream.observe(latency);
        }
    }

    /// A refusal by its SPEC error code (codes outside [`REFUSALS`] are ignored).
    pub fn refusal(&self, code: &str) {
        if let Some(i) = REFUSALS.iter().position(|c| *c == code) {
            if let Some(c) = self.refusals.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One answered forward-auth check: allowed (`None`) or its refusal code, and the time
    /// from its head to its answer. (Its refusal is also counted by [`Metrics::refusal`].)
    pub fn check(&self, refusal: Option<&str>, latency: Duration) {
        let slot = match refusal {
            None => Some(0),
            Some(code) => REFUSALS.iter().position(|c| *c == code).map(|i| i + 1),
        };
        if let Some(c) = slot.and_then(|i| self.checks.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.check_latency.observe(latency);
    }

    /// A request authenticated with a previous secret (rotation grace).
    pub fn previous_secret_use(&self) {
        self.previous_secret_uses.fetch_add(1, Ordering::Relaxed);
    }

    /// A token lookup by hash: found (hit) or not (miss).
    pub fn lookup(&self, hit: bool) {
        let c = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a scrape reads. Built per scrape; cheap (a handful of `Arc`s).
#[derive(Clone)]
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub index: Arc<TokenIndex>,
    pub usage: Arc<UsageRecorder>,
    pub clock: SharedClock,
    pub lifecycle: LifecycleConfig,
    pub rate_limiter: Arc<crate::ratelimit::RateLimiter>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Scrape {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        {
            let mut family = enc.encode_descriptor(
                "tokengate_requests",
                "Proxied requests by route (path prefix, or none) and status code.",
                None,
                MetricType::Counter,
            )?;
            for r in m.routes.iter() {
                for (i, c) in r.statuses.iter().enumerate() {
                    let v = c.load(Ordering::Relaxed);
                    if v == 0 {
                        continue;
                    }
                    let status = (usize::from(STATUS_MIN) + i).to_string();
                    let labels = [("route", &*r.label), ("status", status.as_str())];
                    ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = enc.encode_descriptor(
                "tokengate_auth_refusals",
                "Requests and forward-auth checks the gateway refused, by error code.",
                None,
                MetricType::Counter,
            )?;
            for (code, c) in REFUSALS.iter().zip(m.refusals.iter()) {
                let labels = [("reason", *code)];
                ConstCounter::new(c.load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = enc.encode_descriptor(
                "tokengate_forward_auth_checks",
                "Forward-auth checks answered, by outcome: allowed, or the refusal's error code.",
                None,
                MetricType::Counter,
            )?;
            let outcomes = std::iter::once("allowed").chain(REFUSALS.iter().copied());
            for (outcome, c) in outcomes.zip(m.checks.iter()) {
                ConstCounter::new(c.load(Ordering::Relaxed))
                    .encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        {
            let (sum, count, buckets) = m.check_latency.snapshot();
            enc.encode_descriptor(
                "tokengate_forward_auth_check_duration_seconds",
                "Time from a forward-auth check's head to its answer.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
        }
        for (name, help, pick) in [
            (
                "tokengate_request_duration_seconds",
                "Time from request head to response head, by route.",
                (|r: &RouteMetrics| &r.latency) as fn(&RouteMetrics) -> &Histogram,
            ),
            (
                "tokengate_upstream_duration_seconds",
                "Time from forwarding to the upstream's response head, by route.",
                |r: &RouteMetrics| &r.upstream,
            ),
        ] {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for r in m.routes.iter() {
                let (sum, count, buckets) = pick(r).snapshot();
                let labels = [("route", &*r.label)];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        {
            let now = self.clock.now();
            let (mut active, mut inactive) = (0i64, 0i64);
            for t in self.index.snapshot() {
                match policy::status_at(t.standing(), now, &self.lifecycle) {
                    Effective::Active => active += 1,
                    Effective::Inactive(_) => inactive += 1,
                    Effective::Deleted => {}
                }
            }
            let mut family = enc.encode_descriptor(
                "tokengate_tokens",
                "Tokens by effective status.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(active).encode(family.encode_family(&[("status", "active")])?)?;
            ConstGauge::new(inactive).encode(family.encode_family(&[("status", "inactive")])?)?;
        }
        let pending = i64::try_from(self.usage.pending()).unwrap_or(i64::MAX);
        gauge(
            &mut enc,
            "tokengate_usage_pending",
            "Usage records waiting for the next flush.",
            pending,
        )?;
        counter(
            &mut enc,
            "tokengate_usage_flush_errors",
            "Failed usage flushes.",
            self.usage.flush_errors(),
        )?;
        counter(
            &mut enc,
            "tokengate_usage_dropped",
            "Usage records dropped because the pending buffer was full.",
            self.usage.dropped(),
        )?;
        counter(
            &mut enc,
            "tokengate_usage_denied_capped",
            "Refusals (blocked or not allowed) not recorded because their token had made its \
             1000 new IP records of the hour.",
            self.usage.denied_capped(),
        )?;
        counter(
            &mut enc,
            "tokengate_token_cache_hits",
            "Token lookups that found the token in memory.",
            m.cache_hits.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "tokengate_previous_secret_uses",
            "Requests authenticated with a token's previous secret during a rotation grace \
             (when it stays at zero, clients have moved to the new secret).",
            m.previous_secret_uses.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "tokengate_rate_limit_backend_errors",
            "Rate-limit checks the backend (Redis) failed or did not answer in time; each was \
             let through or refused 503 as rate_limit.on_backend_error says.",
            self.rate_limiter.backend_errors(),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "tokengate_webhook_attempts",
                "Webhook delivery attempts, by outcome: delivered, retrying (failed, tried again \
                 later), failed (410, or past webhooks.max_age).",
                None,
                MetricType::Counter,
            )?;
            for (outcome, c) in WEBHOOK_OUTCOMES.iter().zip(m.webhook_attempts.iter()) {
                ConstCounter::new(c.load(Ordering::Relaxed))
                    .encode(family.encode_family(&[("outcome", *outcome)])?)?;
            }
        }
        gauge(
            &mut enc,
            "tokengate_webhook_pending",
            "Webhook deliveries pending in the outbox, as last counted by the dispatcher.",
            i64::try_from(m.webhook_pending.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut enc,
            "tokengate_token_cache_misses",
            "Token lookups of well-formed secrets that matched no token (refused without a store query).",
            m.cache_misses.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_per_bucket() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0031).abs() < 1e-6, "{sum}");
        assert_eq!(buckets.first(), Some(&(0.0005, 1)));
        assert_eq!(
            buckets.iter().find(|(b, _)| *b == 0.005).map(|x| x.1),
            Some(1)
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn statuses_and_routes() {
        let m = Metrics::new(["/sd/"]);
        m.request(Some(0), 200, Duration::ZERO);
        m.request(None, 401, Duration::ZERO);
        m.request(Some(7), 404, Duration::ZERO);
        m.request(Some(0), 42, Duration::ZERO);
        assert_eq!(m.routes[0].statuses[100].load(Ordering::Relaxed), 1);
        assert_eq!(m.routes[1].statuses[301].load(Ordering::Relaxed), 1);
        assert_eq!(m.routes[1].statuses[304].load(Ordering::Relaxed), 1);
        m.refusal("invalid_token");
        m.refusal("bad_gateway");
        let i = REFUSALS.iter().position(|c| *c == "invalid_token").unwrap();
        assert_eq!(m.refusals[i].load(Ordering::Relaxed), 1);
        assert_eq!(
            m.refusals
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>(),
            1,
            "codes outside REFUSALS are not counted"
        );
    }
}
