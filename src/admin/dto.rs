//! The admin API's wire types: the only `Serialize` types the gateway puts on the wire.
//! A secret appears in exactly one of them ([`CreatedToken`]), built only by create and
//! regenerate.

use serde::Serialize;

use crate::model::{InactiveReason, Status};

#[derive(Debug, Serialize)]
pub(crate) struct TokenDto {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub access: Vec<String>,
    pub status: Status,
    pub inactive_reason: Option<InactiveReason>,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub deactivated_at: Option<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    /// While a replaced secret still works (a regenerate with a grace): until when.
    pub previous_secret_expires_at: Option<String>,
    /// `{"requests": N, "per": "1m"}`, or `null` for none.
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// Canonical IPs and CIDRs, or `null` for any client IP.
    pub allowed_ips: Option<Vec<String>>,
    pub inactive_at: Option<String>,
    pub delete_at: Option<String>,
}

/// A token plus its secret: the create and regenerate responses, and nothing else.
#[derive(Serialize)]
pub(crate) struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenDto,
    #[serde(rename = "token")]
    pub secret: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct TokenList {
    pub tokens: Vec<TokenDto>,
    pub next: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Tokens {
    pub tokens: Vec<TokenDto>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub(crate) struct IpDto {
    pub ip: String,
    pub first_used_at: Option<String>,
    pub last_used_at: Option<String>,
    pub requests: u64,
    pub denied: u64,
    pub blocked: bool,
    pub blocked_by: Option<String>,
    pub blocked_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct IpList {
    pub ips: Vec<IpDto>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuditDto {
    pub at: String,
    pub actor: String,
    pub source_ip: Option<String>,
    pub action: String,
    pub token: String,
    pub token_id: String,
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuditList {
    pub entries: Vec<AuditDto>,
}

/// `GET /v1/webhooks/deliveries`: newest first.
#[derive(Debug, Serialize)]
pub(crate) struct DeliveryList {
    pub deliveries: Vec<DeliveryDto>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeliveryDto {
    /// The `webhook-id`.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Scheme, host and port only (a path may hold a secret).
    pub url: String,
    pub attempts: i64,
    pub status: &'static str,
    pub created_at: String,
    pub last_attempt_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub response_status: Option<i64>,
}

/// `GET /v1/access-types`: the configured types, in config order.
#[derive(Debug, Serialize)]
pub(crate) struct AccessTypeList<'a> {
    pub access_types: Vec<AccessTypeDto<'a>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AccessTypeDto<'a> {
    pub name: &'a str,
    pub label: &'a str,
}
