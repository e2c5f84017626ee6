//! The admin API's wire types: the only `Serialize` types the gateway puts on the wire.
//! A secret appears in exactly one of them ([`CreatedToken`]), built only by create and
//! regenerate.

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{InactiveReason, Status};

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenDto {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub access: Vec<String>,
    pub status: Status,
    pub inactive_reason: Option<InactiveReason>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub activated_at: Option<String>,
    #[schema(format = DateTime)]
    pub deactivated_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// While a replaced secret still works (a regenerate with a grace): until when.
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
    /// `{"requests": N, "per": "1m"}`, or `null` for none.
    #[schema(value_type = Option<crate::ratelimit::RateLimit>)]
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// Canonical IPs and CIDRs, or `null` for any client IP.
    pub allowed_ips: Option<Vec<String>>,
    #[schema(format = DateTime)]
    pub inactive_at: Option<String>,
    #[schema(format = DateTime)]
    pub delete_at: Option<String>,
}

/// A token plus its secret: the create and regenerate responses, and nothing else.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenDto,
    #[serde(rename = "token")]
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenList {
    pub tokens: Vec<TokenDto>,
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Tokens {
    pub tokens: Vec<TokenDto>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq, ToSchema)]
pub(crate) struct IpDto {
    pub ip: String,
    #[schema(format = DateTime)]
    pub first_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    pub requests: u64,
    pub denied: u64,
    pub blocked: bool,
    pub blocked_by: Option<String>,
    #[schema(format = DateTime)]
    pub blocked_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct IpList {
    pub ips: Vec<IpDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditDto {
    #[schema(format = DateTime)]
    pub at: String,
    pub actor: String,
    pub source_ip: Option<String>,
    pub action: String,
    pub token: String,
    pub token_id: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditList {
    pub entries: Vec<AuditDto>,
}

/// `GET /v1/webhooks/deliveries`: newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    pub deliveries: Vec<DeliveryDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryDto {
    /// The `webhook-id`.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Scheme, host and port only (a path may hold a secret).
    pub url: String,
    pub attempts: i64,
    pub status: crate::events::DeliveryStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    pub response_status: Option<i64>,
}

/// `GET /v1/access-types`: the configured types, in config order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AccessTypeList<'a> {
    pub access_types: Vec<AccessTypeDto<'a>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AccessTypeDto<'a> {
    pub name: &'a str,
    pub label: &'a str,
}
