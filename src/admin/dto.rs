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
    /// Requests (uses) from this IP per UTC day over the last seven days, oldest first, today
    /// last (SPEC §12).
    #[schema(min_items = 7, max_items = 7)]
    pub requests_7d: Vec<u64>,
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

/// `GET /v1/tokens/{name}/usage` (SPEC §12): every bucket of the range, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Usage {
    /// The buckets' width: `1h` or `1d` (UTC-aligned).
    #[schema(value_type = String, pattern = "^1[hd]$")]
    pub step: &'static str,
    pub buckets: Vec<UsageBucket>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageBucket {
    /// The bucket's first instant.
    #[schema(format = DateTime)]
    pub start: String,
    /// Admitted requests (uses).
    pub requests: u64,
    pub refused: RefusedCounts,
}

/// Refusals of the token in one bucket, by error code (every code always present).
#[derive(Debug, Default, Serialize, ToSchema, PartialEq, Eq)]
pub(crate) struct RefusedCounts {
    pub token_expired: u64,
    pub token_inactive: u64,
    pub ip_blocked: u64,
    pub ip_not_allowed: u64,
    pub no_route: u64,
    pub access_denied: u64,
    pub rate_limited: u64,
}

impl From<crate::model::Refusals> for RefusedCounts {
    fn from(r: crate::model::Refusals) -> RefusedCounts {
        let [token_expired, token_inactive, ip_blocked, ip_not_allowed, no_route, access_denied, rate_limited] =
            r;
        RefusedCounts {
            token_expired,
            token_inactive,
            ip_blocked,
            ip_not_allowed,
            no_route,
            access_denied,
            rate_limited,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Refusal;

    /// The refusal counts' fields are the error codes of `Refusal::ALL`, in its order.
    #[test]
    fn refused_counts_are_keyed_by_the_refusal_codes() {
        let mut r = [0; Refusal::COUNT];
        for (i, n) in r.iter_mut().enumerate() {
            *n = i as u64 + 1;
        }
        let v = serde_json::to_value(RefusedCounts::from(r)).unwrap();
        let got: Vec<(&str, u64)> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.as_str(), n.as_u64().unwrap()))
            .collect();
        let want: Vec<(&str, u64)> = Refusal::ALL
            .iter()
            .map(|r| (r.code(), r.index() as u64 + 1))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted);
    }
}
