//! Events (SPEC §10): what happened, as the webhooks report it.
//!
//! An [`Event`] is built from the audit entry of a change (`from_audit`), from the usage
//! flush (`ip.first_seen`, `ip.denied`), from the sweep (`token.expiring`) or from the
//! failed-authentication limiter (`auth.failures`). The stores turn it into one outbox row
//! per endpoint that subscribes to its type ([`Router::rows`]) and write those rows in the
//! transaction of the change itself; the [`dispatch`] task delivers them later, off the
//! request path. Nothing here does IO.

pub mod dispatch;
pub mod signing;

use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

use crate::clock::Timestamp;
use crate::model::{AuditAction, AuditEntry};

/// The event types of SPEC §10, in the table's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    TokenCreated,
    TokenUpdated,
    TokenRegenerated,
    TokenActivated,
    TokenDeactivated,
    TokenDeleted,
    TokenExpiring,
    IpFirstSeen,
    IpBlocked,
    IpUnblocked,
    IpDenied,
    AuthFailures,
}

impl EventType {
    pub const ALL: [EventType; 12] = [
        EventType::TokenCreated,
        EventType::TokenUpdated,
        EventType::TokenRegenerated,
        EventType::TokenActivated,
        EventType::TokenDeactivated,
        EventType::TokenDeleted,
        EventType::TokenExpiring,
        EventType::IpFirstSeen,
        EventType::IpBlocked,
        EventType::IpUnblocked,
        EventType::IpDenied,
        EventType::AuthFailures,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TokenCreated => "token.created",
            EventType::TokenUpdated => "token.updated",
            EventType::TokenRegenerated => "token.regenerated",
            EventType::TokenActivated => "token.activated",
            EventType::TokenDeactivated => "token.deactivated",
            EventType::TokenDeleted => "token.deleted",
            EventType::TokenExpiring => "token.expiring",
            EventType::IpFirstSeen => "ip.first_seen",
            EventType::IpBlocked => "ip.blocked",
            EventType::IpUnblocked => "ip.unblocked",
            EventType::IpDenied => "ip.denied",
            EventType::AuthFailures => "auth.failures",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of event types: what one endpoint's `events` list selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSet(u16);

impl EventSet {
    /// The types `patterns` name: each an exact type or a prefix followed by one trailing
    /// `*` (`token.*`, `ip.*`, `*`). A pattern that selects nothing is an error (a typo would
    /// otherwise subscribe to nothing, silently).
    pub fn parse(patterns: &[String]) -> Result<EventSet, String> {
        if patterns.is_empty() {
            return Err("lists no event type (e.g. [\"token.*\", \"ip.first_seen\"])".into());
        }
        let mut set = 0u16;
        for p in patterns {
            let p = p.trim();
            let matched = match p.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => EventType::ALL
                    .iter()
                    .filter(|t| t.as_str().starts_with(prefix))
                    .fold(0, |acc, t| acc | t.bit()),
                Some(_) => 0,
                None => EventType::ALL
                    .iter()
                    .find(|t| t.as_str() == p)
                    .map_or(0, |t| t.bit()),
            };
            if matched == 0 {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(format!(
                    "{p:?} matches no event type (an exact type or a prefix ending in *; the types are {})",
                    known.join(", ")
                ));
            }
            set |= matched;
        }
        Ok(EventSet(set))
    }

    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.bit() != 0
    }
}

/// One event, before it is addressed to endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventType,
    pub at: Timestamp,
    /// The token's (id, name); `None` for `auth.failures`.
    pub token: Option<(String, String)>,
    /// `data` beyond the token's `name` and `id`.
    pub data: Map<String, Value>,
    /// Events written at most once per key (`token.expiring`, `ip.denied`): a repeat with the
    /// same key and endpoint is not written.
    pub once_key: Option<String>,
}

impl Event {
    pub fn new(kind: EventType, at: Timestamp, token: Option<(&str, &str)>) -> Event {
        Event {
            kind,
            at,
            token: token.map(|(id, name)| (id.to_string(), name.to_string())),
            data: Map::new(),
            once_key: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.data.insert(key.to_string(), value.into());
        self
    }

    /// `ip.first_seen`: a use at `at` from `ip`, which token `id` had no record of use for.
    pub fn first_seen(id: &str, name: &str, ip: &str, at: Timestamp) -> Event {
        Event::new(EventType::IpFirstSeen, at, Some((id, name))).with("ip", ip)
    }

    /// `ip.denied`: `ip` refused with `error` for token `id` at `at` (once per token, IP and
    /// hour).
    pub fn denied(id: &str, name: &str, ip: &str, error: &str, at: Timestamp) -> Event {
        let hour = at.0.div_euclid(HOUR_MS);
        let mut e = Event::new(EventType::IpDenied, at, Some((id, name)))
            .with("ip", ip)
            .with("error", error);
        e.once_key = Some(format!("ip.denied:{id}:{ip}:{hour}"));
        e
    }

    /// `token.expiring`, written by the sweep at `now` (once per token and `expires_at`).
    pub fn expiring(now: Timestamp, id: &str, name: &str, expires_at: Timestamp) -> Event {
        let mut e = Event::new(EventType::TokenExpiring, now, Some((id, name)))
            .with("expires_at", expires_at.rfc3339());
        e.once_key = Some(format!("token.expiring:{id}:{}", expires_at.0));
        e
    }

    /// `auth.failures`: `ip` crossed `proxy.failed_auth_limit` at `at`.
    pub fn auth_failures(ip: &str, at: Timestamp) -> Event {
        Event::new(EventType::AuthFailures, at, None).with("ip", ip)
    }

    /// The body delivered: `{"type","timestamp","data"}` (SPEC §10).
    pub fn payload(&self) -> String {
        let mut data = Map::new();
        if let Some((id, name)) = &self.token {
            data.insert("name".into(), Value::from(name.as_str()));
            data.insert("id".into(), Value::from(id.as_str()));
        }
        for (k, v) in &self.data {
            data.insert(k.clone(), v.clone());
        }
        serde_json::json!({
            "type": self.kind.as_str(),
            "timestamp": self.at.rfc3339(),
            "data": data,
        })
        .to_string()
    }
}

/// The event an audit entry reports (every audited change has one).
pub fn from_audit(a: &AuditEntry) -> Event {
    let token = Some((a.token_id.as_str(), a.token.as_str()));
    let reason = || {
        a.details
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("admin")
            .to_string()
    };
    let fields = |kind| {
        let mut e = Event::new(kind, a.at, token);
        if let Value::Object(m) = &a.details {
            e.data = m.clone();
        }
        e
    };
    match a.action {
        AuditAction::Create => fields(EventType::TokenCreated),
        AuditAction::Update => fields(EventType::TokenUpdated),
        AuditAction::Regenerate => {
            let until = a
                .details
                .get("previous_secret_expires_at")
                .and_then(Value::as_str)
                .and_then(Timestamp::parse_rfc3339);
            let grace = until.map(|u| {
                // To the nearest second: the grace's end and the entry's time are read a tick
                // apart (3 599 999 ms is the 1 h asked for).
                let ms = u64::try_from(u.0.saturating_sub(a.at.0)).unwrap_or(0);
                let secs = (ms + 500) / 1000;
                humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
            });
            fields(EventType::TokenRegenerated).with("grace", grace)
        }
        AuditAction::Activate => {
            Event::new(EventType::TokenActivated, a.at, token).with("reason", "admin")
        }
        AuditAction::Deactivate => {
            Event::new(EventType::TokenDeactivated, a.at, token).with("reason", reason())
        }
        AuditAction::Delete => {
            Event::new(EventType::TokenDeleted, a.at, token).with("reason", reason())
        }
        AuditAction::Block | AuditAction::Unblock => {
            let kind = if a.action == AuditAction::Block {
                EventType::IpBlocked
            } else {
                EventType::IpUnblocked
            };
            let ips = a
                .details
                .get("ips")
                .cloned()
                .unwrap_or(Value::Array(vec![]));
            Event::new(kind, a.at, token).with("ips", ips)
        }
    }
}

/// `ip.denied`'s window: one per token and IP per hour, at most [`DENIED_PER_TOKEN_HOUR`]
/// per token per hour (hours of the gateway clock, from the epoch).
pub const HOUR_MS: i64 = 3_600_000;
pub const DENIED_PER_TOKEN_HOUR: i64 = 100;

/// One configured endpoint as the stores see it: a stable key (a hash of its URL: the store
/// never holds the URL, whose path or query may be a secret), what the deliveries list shows
/// of it, and the events it takes.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub key: String,
    pub display: String,
    pub events: EventSet,
}

impl Endpoint {
    /// `signing`: the endpoint's key, which also keys the hash of its URL (so the store's
    /// copy of the hash cannot be used to guess a secret in the URL's path).
    pub fn new(url: &http::Uri, events: EventSet, signing: &signing::SigningKey) -> Endpoint {
        Endpoint {
            key: signing.endpoint_key(&url.to_string()),
            display: display_url(url),
            events,
        }
    }
}

/// `scheme://host:port` of a URL: what may be shown of it (a path may hold a secret).
pub fn display_url(url: &http::Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("http");
    let port = url
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{}:{port}", url.host().unwrap_or(""))
}

/// One row of the outbox: one event for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// The `webhook-id`: unique per event and endpoint, the same on every retry.
    pub id: String,
    pub endpoint: String,
    pub url: String,
    pub event_type: &'static str,
    pub token_id: Option<String>,
    pub payload: String,
    pub created_at: Timestamp,
    /// Set for events written at most once (`endpoint key:once key`).
    pub once_key: Option<String>,
}

/// Where events go: the configured endpoints. The stores hold one and ask it for the rows of
/// each event inside the transaction that writes it; the dispatcher waits on [`Router::wake`].
#[derive(Debug, Default)]
pub struct Router {
    endpoints: Vec<Endpoint>,
    wanted: EventSet,
    /// One per endpoint: its dispatcher lane waits on it.
    wakes: Vec<tokio::sync::Notify>,
}

static NONE: LazyLock<Arc<Router>> = LazyLock::new(|| Arc::new(Router::default()));

impl Router {
    pub fn new(endpoints: Vec<Endpoint>) -> Router {
        let wanted = EventSet(endpoints.iter().fold(0, |acc, e| acc | e.events.0));
        let wakes = endpoints
            .iter()
            .map(|_| tokio::sync::Notify::new())
            .collect();
        Router {
            endpoints,
            wanted,
            wakes,
        }
    }

    /// The router of a gateway without endpoints (no rows, ever).
    pub fn none() -> Arc<Router> {
        NONE.clone()
    }

    pub fn wants(&self, t: EventType) -> bool {
        self.wanted.contains(t)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The outbox rows of `event`: one per endpoint that takes its type.
    pub fn rows(&self, event: &Event) -> Vec<OutboxRow> {
        if !self.wants(event.kind) {
            return Vec::new();
        }
        let payload = event.payload();
        self.endpoints
            .iter()
            .filter(|e| e.events.contains(event.kind))
            .map(|e| Self::row(e, event, payload.clone()))
            .collect()
    }

    /// The outbox row of `event` for endpoint `e` alone.
    pub fn row(e: &Endpoint, event: &Event, payload: String) -> OutboxRow {
        OutboxRow {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            endpoint: e.key.clone(),
            url: e.display.clone(),
            event_type: event.kind.as_str(),
            token_id: event.token.as_ref().map(|(id, _)| id.clone()),
            payload,
            created_at: event.at,
            once_key: event.once_key.as_ref().map(|k| format!("{}:{k}", e.key)),
        }
    }

    /// The `ip.denied` rows a usage flush may write, grouped by (endpoint key, token id,
    /// hour): a store counts the group's rows of that hour already written and keeps at most
    /// [`DENIED_PER_TOKEN_HOUR`] in all. `name_of` names the batch's live tokens (`None`:
    /// gone, no event).
    pub fn denied_candidates<'a>(
        &self,
        batch: &[crate::model::UsageDelta],
        name_of: impl Fn(crate::model::TokenId) -> Option<&'a str>,
    ) -> std::collections::BTreeMap<(String, String, i64), Vec<OutboxRow>> {
        let mut groups: std::collections::BTreeMap<(String, String, i64), Vec<OutboxRow>> =
            Default::default();
        if !self.wants(EventType::IpDenied) {
            return groups;
        }
        for d in batch {
            let (Some(name), Some(ip), Some(at), Some(error)) =
                (name_of(d.token_id), d.ip, d.denied_at, d.denied_error)
            else {
                continue;
            };
            let (id, ip) = (
                d.token_id.to_string(),
                crate::net::canonical_ip(ip).to_string(),
            );
            let hour = at.0.div_euclid(HOUR_MS);
            for row in self.rows(&Event::denied(&id, name, &ip, error.as_str(), at)) {
                let key = (row.endpoint.clone(), id.clone(), hour);
                groups.entry(key).or_default().push(row);
            }
        }
        groups
    }

    /// The rows of the events audit entries report.
    pub fn rows_of_audit<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a AuditEntry>,
    ) -> Vec<OutboxRow> {
        if self.endpoints.is_empty() {
            return Vec::new();
        }
        entries
            .into_iter()
            .flat_map(|a| self.rows(&from_audit(a)))
            .collect()
    }

    /// Tells the dispatcher's lanes that rows were committed (called after the commit).
    pub fn written(&self) {
        for w in &self.wakes {
            w.notify_one();
        }
    }

    /// Resolves after the next [`Router::written`] (or at once if one is pending), for the
    /// lane of endpoint `i`.
    pub async fn wake(&self, i: usize) {
        if let Some(w) = self.wakes.get(i) {
            w.notified().await;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// A delivery's state in the outbox (SPEC §4 `GET /v1/webhooks/deliveries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// A row as the deliveries list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: String,
    pub event_type: String,
    pub url: String,
    pub attempts: i64,
    pub status: DeliveryStatus,
    pub created_at: Timestamp,
    pub last_attempt_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub response_status: Option<i64>,
}

/// A row claimed for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: String,
    pub endpoint: String,
    pub payload: String,
    pub attempts: i64,
    pub created_at: Timestamp,
}

/// What an attempt changes on its row.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub at: Timestamp,
    pub status: DeliveryStatus,
    /// When a pending row is tried again.
    pub next_attempt_at: Option<Timestamp>,
    pub response_status: Option<i64>,
    /// Why the attempt failed (no secret: a status, a timeout, a connection error).
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &[&str]) -> Result<EventSet, String> {
        EventSet::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn patterns_select_exact_types_and_trailing_globs() {
        let s = set(&["token.*", "ip.first_seen"]).unwrap();
        assert!(s.contains(EventType::TokenCreated) && s.contains(EventType::TokenExpiring));
        assert!(s.contains(EventType::IpFirstSeen));
        assert!(!s.contains(EventType::IpDenied) && !s.contains(EventType::AuthFailures));
        let all = set(&["*"]).unwrap();
        assert!(EventType::ALL.iter().all(|t| all.contains(*t)));
        assert!(set(&["ip.*"]).unwrap().contains(EventType::IpUnblocked));
        for bad in [
            &[][..],
            &["token.create"],
            &["tok*n.*"],
            &["*.created"],
            &["webhook.*"],
        ] {
            assert!(set(bad).is_err(), "{bad:?}");
        }
    }

    fn entry(action: AuditAction, details: Value) -> AuditEntry {
        AuditEntry {
            at: Timestamp(1_800_000_000_000),
            actor: "admin-key".into(),
            source_ip: Some("127.0.0.1".into()),
            action,
            token: "ci".into(),
            token_id: "0b4f6c1e-8a1e-4b55-9f63-3b1f1f1f1f1f".into(),
            details,
        }
    }

    #[test]
    fn audit_entries_map_to_their_events() {
        let e = from_audit(&entry(
            AuditAction::Deactivate,
            serde_json::json!({"previous_status": "active"}),
        ));
        assert_eq!(e.kind, EventType::TokenDeactivated);
        assert_eq!(e.data["reason"], "admin");
        assert!(!e.data.contains_key("previous_status"));
        let e = from_audit(&entry(
            AuditAction::Deactivate,
            serde_json::json!({"reason": "revoked"}),
        ));
        assert_eq!(e.data["reason"], "revoked");
        let e = from_audit(&entry(
            AuditAction::Delete,
            serde_json::json!({"reason": "idle"}),
        ));
        assert_eq!(
            (e.kind, e.data["reason"].as_str()),
            (EventType::TokenDeleted, Some("idle"))
        );
        let e = from_audit(&AuditEntry {
            at: Timestamp(1_800_000_000_001),
            ..entry(
                AuditAction::Regenerate,
                serde_json::json!({"previous_secret_expires_at": "2027-01-15T09:00:00Z"}),
            )
        });
        assert_eq!(e.kind, EventType::TokenRegenerated);
        assert_eq!(e.data["grace"], "1h");
        let e = from_audit(&entry(
            AuditAction::Regenerate,
            serde_json::json!({"previous_secret_expires_at": null}),
        ));
        assert_eq!(e.data["grace"], Value::Null);
        let e = from_audit(&entry(
            AuditAction::Block,
            serde_json::json!({"ips": ["192.0.2.1"]}),
        ));
        assert_eq!(
            (e.kind, &e.data["ips"]),
            (EventType::IpBlocked, &serde_json::json!(["192.0.2.1"]))
        );
        let body: Value = serde_json::from_str(&e.payload()).unwrap();
        assert_eq!(body["type"], "ip.blocked");
        assert_eq!(body["timestamp"], "2027-01-15T08:00:00Z");
        assert_eq!(body["data"]["name"], "ci");
        assert_eq!(body["data"]["id"], "0b4f6c1e-8a1e-4b55-9f63-3b1f1f1f1f1f");
    }

    #[test]
    fn rows_go_only_to_endpoints_that_take_the_type() {
        let a: http::Uri = "https://hooks.example.com/secret-path?k=v".parse().unwrap();
        let b: http::Uri = "http://127.0.0.1:9/x".parse().unwrap();
        let key = signing::SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let r = Router::new(vec![
            Endpoint::new(&a, set(&["token.*"]).unwrap(), &key),
            Endpoint::new(&b, set(&["ip.blocked"]).unwrap(), &key),
        ]);
        assert_eq!(r.endpoints()[0].key.len(), 32);
        assert!(!r.endpoints()[0].key.contains("secret"));
        let created = from_audit(&entry(
            AuditAction::Create,
            serde_json::json!({"description": "d"}),
        ));
        let rows = r.rows(&created);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].url, "https://hooks.example.com:443");
        assert!(rows[0].id.starts_with("msg_"));
        let rows = r.rows_of_audit(&[
            entry(AuditAction::Block, serde_json::json!({"ips": []})),
            entry(AuditAction::Activate, serde_json::json!({})),
        ]);
        assert_eq!(rows.len(), 2);
        assert_ne!(rows[0].id, rows[1].id);
        assert_eq!(rows[0].url, "http://127.0.0.1:9");
        assert!(Router::none().rows(&created).is_empty());
        assert!(!r.wants(EventType::IpDenied));
    }
}
