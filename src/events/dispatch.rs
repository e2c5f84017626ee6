//! The webhook dispatcher: a background task that claims due outbox rows, signs and POSTs
//! each one, and records the attempt. Never on the request path.
//!
//! Each endpoint has its own lane, so an endpoint that hangs or fails delays only its own
//! events. A lane's round claims at most [`BATCH`] of its endpoint's due rows under a lease
//! of [`LEASE`] (longer than an attempt may take), attempts them concurrently with a
//! [`TIMEOUT`] each, and records each result only while it still holds that lease. A 2xx
//! delivers; a 410 fails at once; anything else (another status, a redirect, a timeout, a
//! connection error) schedules the next try after about 5 s, 1 min, 5 min, 30 min, then hourly
//! (±20 % jitter) until `webhooks.max_age`, when the row is `failed`. Rounds run when this
//! instance commits new rows, when [`Dispatcher::kick`] is called, and every [`POLL`] (rows
//! other instances wrote, retries coming due). Hourly, delivered and failed rows past
//! `webhooks.retention` are pruned, and pending rows of endpoints no longer configured fail
//! once older than `max_age`. A second task turns the failed-authentication limiter's
//! crossings into `auth.failures` rows (at most [`AUTH_FAILURES_PER_MINUTE`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::{mpsc, watch};

use super::signing::SigningKey;
use super::{AttemptResult, Claimed, DeliveryStatus, Event, Router};
use crate::clock::{SharedClock, Timestamp};
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Rows one endpoint's lane claims per round (its most attempts in flight).
const BATCH: usize = 16;
/// How long a claimed row stays leased to this instance.
const LEASE: Duration = Duration::from_secs(60);
/// How long an attempt may take (SPEC §10: a 2xx within 10 s delivers).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between rounds with nothing written here.
const POLL: Duration = Duration::from_secs(5);
/// How often delivered and failed rows past `webhooks.retention` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// `auth.failures` events written per minute at most (per instance), whatever the number of
/// client IPs crossing the limit: an attacker with many addresses cannot flood the receivers.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 60;
/// The waits before the second, third... attempt; the last repeats.
const BACKOFF: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
];

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One configured endpoint, ready to deliver to: what its lane needs. `targets[i]` is the
/// router's endpoint `i` (its store key and its wake-up).
struct Target {
    url: http::Uri,
    signing: SigningKey,
    client: HttpsClient,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    router: Arc<Router>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    targets: Vec<Target>,
    /// This instance's lease owner name (random per process).
    owner: String,
    max_age: Duration,
    retention: Duration,
}

/// Reads (or, with an embedded store, creates) the signing key of every endpoint, in config
/// order. With a shared store a missing file is an error: every instance must sign alike.
pub fn load_keys(config: &WebhooksConfig, shared_store: bool) -> anyhow::Result<Vec<SigningKey>> {
    let mut keys = Vec::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        let (key, origin) = SigningKey::load_or_create(&e.secret_file, !shared_store)
            .map_err(|m| anyhow::anyhow!("webhooks.endpoints[{i}].secret_file: {m}"))?;
        if origin == super::signing::KeyOrigin::Generated {
            tracing::info!(path = %e.secret_file.display(), endpoint = %super::display_url(&e.url), "generated a webhook signing secret (mode 0600): give it to the receiver");
        }
        keys.push(key);
    }
    Ok(keys)
}

impl Dispatcher {
    /// Builds the endpoints' clients. `keys` are their signing keys in config order
    /// ([`load_keys`]); `router` was built from the same endpoints.
    pub fn new(
        config: &WebhooksConfig,
        keys: Vec<SigningKey>,
        router: Arc<Router>,
        store: Arc<dyn Store>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Dispatcher> {
        let mut targets = Vec::new();
        for (i, (e, signing)) in config.endpoints.iter().zip(keys).enumerate() {
            let key_name = format!("webhooks.endpoints[{i}]");
            let loopback = e
                .url
                .host()
                .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback())
                || e.url.host() == Some("localhost");
            if e.url.scheme_str() == Some("http") && !loopback {
                tracing::warn!(endpoint = %super::display_url(&e.url), "{key_name} is plain http beyond loopback: events (token names, client IPs) cross the network readable by anyone on the path; the signature only proves who sent them");
            }
            let roots = match &e.ca_file {
                Some(p) => crate::tls::load_roots(&format!("{key_name}.ca_file"), p)?,
                None => crate::tls::platform_roots(),
            };
            let tls = crate::tls::client_config(roots, None)
                .map_err(|err| anyhow::anyhow!("{key_name}: TLS: {err}"))?;
            targets.push(Target {
                url: e.url.clone(),
                signing,
                client: crate::tls::https_client(tls, None, Some(TIMEOUT)),
            });
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
        })
    }

    /// Wakes every lane for a round now (after a test moved the clock, say).
    pub fn kick(&self) {
        self.router.written();
    }

    /// One round of every lane, one after another; how many deliveries they attempted.
    pub async fn round_all(&self) -> usize {
        let mut n = 0;
        for i in 0..self.targets.len() {
            n += self.round(i).await;
        }
        n
    }

    /// The lanes and the housekeeping; returns when `shutdown` fires (an attempt in flight
    /// is abandoned: its lease runs out and the row is tried again: at least once delivery).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut lanes = tokio::task::JoinSet::new();
        for i in 0..self.targets.len() {
            lanes.spawn(self.clone().lane(i, shutdown.clone()));
        }
        let mut tidied_at: Option<Timestamp> = None;
        loop {
            let now = self.clock.now();
            if tidied_at.is_none_or(|t| now.0 - t.0 >= PRUNE_EVERY.as_millis() as i64) {
                tidied_at = Some(now);
                self.tidy(now).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => break,
            }
        }
        while lanes.join_next().await.is_some() {}
    }

    /// Prunes delivered and failed rows past `webhooks.retention`; fails the pending rows of
    /// endpoints no longer configured once they are older than `max_age`.
    async fn tidy(&self, now: Timestamp) {
        let known: Vec<String> = self
            .router
            .endpoints()
            .iter()
            .map(|e| e.key.clone())
            .collect();
        let res = self
            .store
            .prune_deliveries(now.minus(self.retention), &known, now.minus(self.max_age))
            .await;
        match res {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "webhook deliveries pruned (past webhooks.retention) or failed (of an endpoint no longer configured)"),
            Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
        }
    }

    /// Endpoint `i`'s loop: a round whenever rows may be due for it.
    async fn lane(self: Arc<Self>, i: usize, mut shutdown: watch::Receiver<bool>) {
        loop {
            let n = tokio::select! {
                n = self.round(i) => n,
                _ = shutdown.changed() => return,
            };
            if n == BATCH {
                continue;
            }
            tokio::select! {
                _ = self.router.wake(i) => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One round of endpoint `i`'s lane: claims its rows due now and attempts each; returns how
    /// many it claimed (a full [`BATCH`]: more may be due).
    async fn round(&self, i: usize) -> usize {
        let (target, key) = (&self.targets[i], &self.router.endpoints()[i].key);
        let now = self.clock.now();
        let lease = now.plus(LEASE);
        let claimed = match self
            .store
            .claim_deliveries(&self.owner, key, now, lease, BATCH)
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
            let (url, signing) = (target.url.clone(), target.signing.clone());
            let (client, clock) = (target.client.clone(), self.clock.clone());
            tasks.spawn(async move {
                let answer = attempt(&client, &url, &signing, &row, clock.now()).await;
                (row, answer)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((row, answer)) = done else { continue };
            let result = self.outcome(&row, self.clock.now(), answer);
            self.record(&row, lease, &result).await;
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

    async fn record(&self, row: &Claimed, lease: Timestamp, r: &AttemptResult) {
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
        match self
            .store
            .finish_delivery(&self.owner, lease, &row.id, r)
            .await
        {
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
    signing: &SigningKey,
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
        .header("webhook-signature", signing.sign(&row.id, ts, &body))
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
/// on their own: they report no store change, and may be lost to a crash, SPEC §10), at
/// most [`AUTH_FAILURES_PER_MINUTE`] a minute.
pub async fn auth_failures(
    mut crossings: mpsc::Receiver<(IpAddr, Timestamp)>,
    store: Arc<dyn Store>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    let mut cap = MinuteCap::default();
    loop {
        tokio::select! {
            n = crossings.recv_many(&mut buf, 256) => if n == 0 { return },
            _ = shutdown.changed() => return,
        }
        let mut rows = Vec::new();
        for (ip, at) in buf.drain(..) {
            if cap.admit(at) {
                let ip = crate::net::canonical_ip(ip).to_string();
                rows.extend(router.rows(&Event::auth_failures(&ip, at)));
            }
        }
        if let Err(e) = store.enqueue_events(&rows).await {
            tracing::warn!(error = %e, events = rows.len(), "writing auth.failures events failed; they are dropped");
        }
    }
}

/// At most [`AUTH_FAILURES_PER_MINUTE`] per clock minute; what is over is counted and logged
/// once the minute has passed.
#[derive(Debug, Default)]
struct MinuteCap {
    minute: i64,
    admitted: u32,
    dropped: u64,
}

impl MinuteCap {
    fn admit(&mut self, at: Timestamp) -> bool {
        let minute = at.0.div_euclid(60_000);
        if minute != self.minute {
            if self.dropped > 0 {
                tracing::warn!(dropped = self.dropped, "auth.failures events over {AUTH_FAILURES_PER_MINUTE} a minute were not written");
            }
            *self = MinuteCap {
                minute,
                admitted: 0,
                dropped: 0,
            };
        }
        if self.admitted < AUTH_FAILURES_PER_MINUTE {
            self.admitted += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_are_capped_per_minute() {
        let mut cap = MinuteCap::default();
        let t = Timestamp(1_800_000_000_000);
        let admitted = (0..100).filter(|_| cap.admit(t)).count();
        assert_eq!(admitted, AUTH_FAILURES_PER_MINUTE as usize);
        assert!(cap.admit(Timestamp(t.0 + 60_000)), "a new minute");
    }

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
