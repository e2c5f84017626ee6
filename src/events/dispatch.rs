//! The webhook dispatcher: a background task that claims due outbox rows, signs and POSTs
//! each one, and records the attempt. Never on the request path.
//!
//! A round claims at most [`BATCH`] due rows under a lease of [`LEASE`] (longer than an
//! attempt may take), attempts them concurrently with a [`TIMEOUT`] each, and records each
//! result only while still holding its lease. A 2xx delivers; a 410 fails at once; anything
//! else (another status, a redirect, a timeout, a connection error) schedules the next try
//! after about 5 s, 1 min, 5 min, 30 min, then hourly (±20 % jitter) until
//! `webhooks.max_age`, when the row is `failed`. Rounds run when this instance commits new
//! rows, when [`Dispatcher::kick`] is called, and every [`POLL`] (rows other instances
//! wrote, retries coming due). A second task turns the failed-authentication limiter's
//! crossings into `auth.failures` rows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::{mpsc, watch, Notify};

use super::signing::SigningKey;
use super::{AttemptResult, Claimed, DeliveryStatus, Endpoint, Event, Router};
use crate::clock::{SharedClock, Timestamp};
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Rows claimed per round.
const BATCH: usize = 32;
/// How long a claimed row stays leased to this instance.
const LEASE: Duration = Duration::from_secs(60);
/// How long an attempt may take (SPEC §10: a 2xx within 10 s delivers).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between rounds with nothing written here.
const POLL: Duration = Duration::from_secs(5);
/// How often delivered and failed rows past `webhooks.retention` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The waits before the second, third... attempt; the last repeats.
const BACKOFF: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One configured endpoint, ready to deliver to.
struct Target {
    url: http::Uri,
    key: SigningKey,
    client: HttpsClient,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    router: Arc<Router>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    targets: HashMap<String, Target>,
    /// This instance's lease owner name (random per process).
    owner: String,
    max_age: Duration,
    retention: Duration,
    kick: Notify,
}

impl Dispatcher {
    /// Builds the endpoints' clients and reads their signing keys; `shared_store`: a missing
    /// secret file is an error rather than a new secret (every instance must sign alike).
    pub fn new(
        config: &WebhooksConfig,
        router: Arc<Router>,
        store: Arc<dyn Store>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        shared_store: bool,
    ) -> anyhow::Result<Dispatcher> {
        let mut targets = HashMap::new();
        for (i, e) in config.endpoints.iter().enumerate() {
            let key_name = format!("webhooks.endpoints[{i}]");
            let (key, origin) = SigningKey::load_or_create(&e.secret_file, !shared_store)
                .map_err(|m| anyhow::anyhow!("{key_name}.secret_file: {m}"))?;
            if origin == super::signing::KeyOrigin::Generated {
                tracing::info!(path = %e.secret_file.display(), endpoint = %super::display_url(&e.url), "generated a webhook signing secret (mode 0600): give it to the receiver");
            }
            let roots = match &e.ca_file {
                Some(p) => crate::tls::load_roots(&format!("{key_name}.ca_file"), p)?,
                None => crate::tls::platform_roots(),
            };
            let tls = crate::tls::client_config(roots, None)
                .map_err(|err| anyhow::anyhow!("{key_name}: TLS: {err}"))?;
            let client = crate::tls::https_client(tls, None, Some(TIMEOUT));
            let endpoint = Endpoint::new(&e.url, e.events);
            targets.insert(
                endpoint.key,
                Target {
                    url: e.url.clone(),
                    key,
                    client,
                },
            );
        }
        Ok(Dispatcher {
            store,
            router,
            clock,
            metrics,
            targets,
            owner: format!("tokengate-{}", uuid::Uuid::new_v4().simple()),
            max_age: config.max_age,
            retention: config.retention,
            kick: Notify::new(),
        })
    }

    /// Runs a round now (after a test moved the clock, say).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The delivery loop; returns when `shutdown` fires (an attempt in flight is abandoned:
    /// its lease expires and the row is tried again, at least once delivery).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut pruned_at: Option<Timestamp> = None;
        loop {
            let full = tokio::select! {
                n = self.round() => n == BATCH,
                _ = shutdown.changed() => return,
            };
            let now = self.clock.now();
            if pruned_at.is_none_or(|t| now.0 - t.0 >= PRUNE_EVERY.as_millis() as i64) {
                pruned_at = Some(now);
                match self.store.prune_deliveries(now.minus(self.retention)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        pruned = n,
                        "webhook deliveries past webhooks.retention pruned"
                    ),
                    Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = self.router.wake() => {}
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One round: claims the rows due now and attempts each; returns how many it claimed
    /// (a full [`BATCH`]: more may be due).
    pub async fn round(&self) -> usize {
        let now = self.clock.now();
        let claimed = match self
            .store
            .claim_deliveries(&self.owner, now, now.plus(LEASE), BATCH)
            .await
        {
            Ok((rows, pending)) => {
                self.metrics.set_webhook_pending(pending);
                rows
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming webhook deliveries failed; will retry");
                return 0;
            }
        };
        let n = claimed.len();
        let mut tasks = tokio::task::JoinSet::new();
        for row in claimed {
            let Some(target) = self.targets.get(&row.endpoint) else {
                // An endpoint no longer configured: its rows wait (another instance may
                // still have it) until they are too old, then fail.
                let result = self.outcome(&row, now, Err("endpoint not configured here".into()));
                self.record(&row, &result).await;
                continue;
            };
            let (url, key, client) = (
                target.url.clone(),
                target.key.clone(),
                target.client.clone(),
            );
            let clock = self.clock.clone();
            tasks.spawn(async move {
                let answer = attempt(&client, &url, &key, &row, clock.now()).await;
                (row, answer)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((row, answer)) = done else { continue };
            let result = self.outcome(&row, self.clock.now(), answer);
            self.record(&row, &result).await;
        }
        n
    }

    /// What an attempt's answer (a status, or why there was none) makes of its row.
    fn outcome(
        &self,
        row: &Claimed,
        at: Timestamp,
        answer: Result<StatusCode, String>,
    ) -> AttemptResult {
        let status = answer.as_ref().ok().map(|s| i64::from(s.as_u16()));
        match answer {
            Ok(s) if s.is_success() => AttemptResult {
                at,
                status: DeliveryStatus::Delivered,
                next_attempt_at: None,
                response_status: status,
                error: None,
            },
            Ok(StatusCode::GONE) => AttemptResult {
                at,
                status: DeliveryStatus::Failed,
                next_attempt_at: None,
                response_status: status,
                error: Some("410 Gone: the endpoint stopped taking events".into()),
            },
            other => {
                let error = match other {
                    Ok(s) => format!("answered {}", s.as_u16()),
                    Err(e) => e,
                };
                let next = at.plus(backoff(row.attempts + 1, jitter()));
                let too_old = next.0 > row.created_at.plus(self.max_age).0;
                AttemptResult {
                    at,
                    status: if too_old {
                        DeliveryStatus::Failed
                    } else {
                        DeliveryStatus::Pending
                    },
                    next_attempt_at: (!too_old).then_some(next),
                    response_status: status,
                    error: Some(error),
                }
            }
        }
    }

    async fn record(&self, row: &Claimed, r: &AttemptResult) {
        let outcome = match r.status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Pending => "retrying",
            DeliveryStatus::Failed => "failed",
        };
        self.metrics.webhook_attempt(outcome);
        tracing::info!(
            target: "tokengate::webhooks",
            id = %row.id,
            attempt = row.attempts + 1,
            outcome,
            response_status = r.response_status,
            error = r.error.as_deref().unwrap_or("-"),
            "webhook delivery attempt"
        );
        match self.store.finish_delivery(&self.owner, &row.id, r).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(id = %row.id, "a webhook delivery's lease ran out before its attempt was recorded; it will be tried again")
            }
            Err(e) => {
                tracing::warn!(id = %row.id, error = %e, "recording a webhook attempt failed; it will be tried again")
            }
        }
    }
}

/// The wait after failed attempt number `attempts` (1 = the first), scaled by `jitter`
/// (0.8 to 1.2).
pub fn backoff(attempts: i64, jitter: f64) -> Duration {
    let i = usize::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(BACKOFF.len() - 1);
    BACKOFF[i].mul_f64(jitter.clamp(0.8, 1.2))
}

/// A factor in [0.8, 1.2).
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX / 2);
    0.8 + 0.4 * f64::from(r) / 65_536.0
}

/// One signed POST: the answer's status, or why none came.
async fn attempt(
    client: &HttpsClient,
    url: &http::Uri,
    key: &SigningKey,
    row: &Claimed,
    now: Timestamp,
) -> Result<StatusCode, String> {
    // Signed afresh per attempt: receivers refuse old timestamps.
    let ts = now.0.div_euclid(1000);
    let body = Bytes::from(row.payload.clone());
    let req = Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("tokengate/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", row.id.as_str())
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", key.sign(&row.id, ts, &body))
        .body(Full::new(body))
        .map_err(|e| format!("bad request: {e}"))?;
    match tokio::time::timeout(TIMEOUT, client.request(req)).await {
        Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
        // The error chain names the cause (refused, TLS, reset) and never the URL's path.
        Ok(Err(e)) => Err(error_chain(&e)),
        Ok(Ok(resp)) => Ok(resp.status()),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Turns the failed-authentication limiter's crossings into `auth.failures` rows (written
/// on their own: they report no store change, and may be lost to a crash, SPEC §10).
pub async fn auth_failures(
    mut crossings: mpsc::Receiver<(IpAddr, Timestamp)>,
    store: Arc<dyn Store>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            n = crossings.recv_many(&mut buf, 256) => if n == 0 { return },
            _ = shutdown.changed() => return,
        }
        let rows: Vec<_> = buf
            .drain(..)
            .flat_map(|(ip, at)| {
                router.rows(&Event::auth_failures(
                    &crate::net::canonical_ip(ip).to_string(),
                    at,
                ))
            })
            .collect();
        if let Err(e) = store.enqueue_events(&rows).await {
            tracing::warn!(error = %e, events = rows.len(), "writing auth.failures events failed; they are dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_follows_the_schedule_within_its_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(1800));
        assert_eq!(backoff(5, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(50, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(1, 0.8), Duration::from_secs(4));
        assert_eq!(backoff(1, 9.0), Duration::from_secs(6));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.8..1.2).contains(&j), "{j}");
        }
    }
}
