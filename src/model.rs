//! The domain model: one type for each thing the gateway keeps (a token, its id, its status
//! and why it is inactive, an IP record, a usage delta, an audit entry and its action), shared
//! by the store, the in-memory index, the proxy, the admin API and the lifecycle sweep. No IO.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use uuid::Uuid;

use crate::access::AccessNames;
use crate::clock::Timestamp;
use crate::net::BlockEntry;
use crate::ratelimit::RateLimit;
use crate::token::SecretHash;

/// A token's stable identifier: a UUID, spelled lower-case and hyphenated wherever it is
/// stored or shown. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(Uuid);

impl TokenId {
    /// A fresh random id (UUID v4).
    pub fn generate() -> TokenId {
        TokenId(Uuid::new_v4())
    }

    pub fn from_uuid(id: Uuid) -> TokenId {
        TokenId(id)
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }

    /// A stored id. Only the canonical form (lower-case, hyphenated: how the gateway writes
    /// them) is accepted; anything else can only come from an edited database.
    pub fn parse_stored(s: &str) -> Option<TokenId> {
        let id = Uuid::try_parse(s).ok()?;
        let mut buf = Uuid::encode_buffer();
        (id.hyphenated().encode_lower(&mut buf) == s).then_some(TokenId(id))
    }

    /// Writes the canonical form into `buf` (no allocation).
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        let mut full = Uuid::encode_buffer();
        let s = self.0.hyphenated().encode_lower(&mut full);
        buf.copy_from_slice(s.as_bytes());
        // The copied bytes are the ASCII of a hyphenated UUID.
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for TokenId {
    type Err = uuid::Error;

    /// Any UUID spelling (the canonical form is what [`fmt::Display`] writes).
    fn from_str(s: &str) -> Result<TokenId, uuid::Error> {
        Uuid::try_parse(s).map(TokenId)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Inactive,
}

impl Status {
    /// From its stored form; anything but `active` reads as inactive (fail closed).
    pub fn from_db(s: &str) -> Status {
        if s == "active" {
            Status::Active
        } else {
            Status::Inactive
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InactiveReason {
    Admin,
    Idle,
    /// Past `expires_at` (never stored: expiry is computed at request time).
    Expired,
    /// Its secret was reported to the revocation endpoint (SPEC §10). Stored as `admin` plus
    /// the reported secret's hash (so a previous release sharing the store reads an admin
    /// deactivation, and this one still refuses that secret if the other activates it).
    Revoked,
}

impl InactiveReason {
    /// From its stored form (`None` for null or an unknown value).
    pub fn from_db(s: Option<&str>) -> Option<InactiveReason> {
        match s {
            Some("admin") => Some(InactiveReason::Admin),
            Some("idle") => Some(InactiveReason::Idle),
            Some("expired") => Some(InactiveReason::Expired),
            _ => None,
        }
    }

    /// Its stored `inactive_reason` (`Revoked` is stored as `admin` with `revoked_hash`).
    pub fn db_str(self) -> &'static str {
        match self {
            InactiveReason::Revoked => "admin",
            other => other.as_str(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InactiveReason::Admin => "admin",
            InactiveReason::Idle => "idle",
            InactiveReason::Expired => "expired",
            InactiveReason::Revoked => "revoked",
        }
    }
}

/// One token as stored. `version` increases with every admin write (optimistic concurrency:
/// [`Store::save_token`] only succeeds against the version it read).
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: TokenId,
    pub name: String,
    pub description: Option<String>,
    /// The access types it holds, by name (configured or not: see `crate::access`).
    pub access: AccessNames,
    pub secret_hash: SecretHash,
    pub status: Status,
    pub inactive_reason: Option<InactiveReason>,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub deactivated_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    /// Hard expiry (SPEC §1): from this instant on the token is refused, whatever its status.
    pub expires_at: Option<Timestamp>,
    /// After a regenerate with a grace: the replaced secret, working until its end.
    pub previous_secret: Option<PreviousSecret>,
    /// Per-token rate limit (SPEC §1 `rate_limit`); `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// The client IPs and networks it may be used from (SPEC §1 `allowed_ips`), canonical;
    /// `None` = any.
    pub allowed_ips: Option<Vec<BlockEntry>>,
    /// The hash of its secret as reported to the revocation endpoint, while that is still
    /// its current secret: the token is then inactive/revoked whatever its stored status (a
    /// previous release sharing the store may have activated it), and activation is refused
    /// (409 `token_revoked`). A regenerate, by any release, leaves it stale: ignored on read.
    pub revoked_hash: Option<SecretHash>,
    pub version: i64,
}

/// A replaced secret that keeps working until `until` (rotation without downtime, SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviousSecret {
    pub hash: SecretHash,
    pub until: Timestamp,
}

/// A token with its block entries: everything the proxy needs to decide a request.
#[derive(Debug, Clone)]
pub struct TokenWithBlocks {
    pub token: TokenRecord,
    pub blocks: Vec<BlockEntry>,
}

/// A usage or block row for one token and one IP (or one CIDR block entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRecord {
    /// The canonical IP, or the CIDR of a network block entry.
    pub entry: BlockEntry,
    pub first_used_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub requests: u64,
    pub denied: u64,
    /// Set when this row is itself a block entry.
    pub blocked_at: Option<Timestamp>,
}

/// Usage gathered in memory since the last flush, for one token, one client IP and one hour
/// (a pair used across an hour boundary makes one delta per hour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub token_id: TokenId,
    /// `None`: refusals whose (token, IP) pair the recorder could not keep (its hourly cap
    /// of new pairs, SPEC §3); they count in the token's own hourly row only.
    pub ip: Option<IpAddr>,
    /// The start of the hour these counts fall in (UTC, ms).
    pub hour: Timestamp,
    /// Refusals of the token in that hour, by reason ([`Refusal::index`]); `ip_blocked` and
    /// `ip_not_allowed` are also in `denied`.
    pub refused: Refusals,
    pub requests: u64,
    pub denied: u64,
    /// First and last forwarded use in this batch (`None` if only denied requests).
    pub first_used_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    /// The latest refusal in this batch and why (`None` if none was refused).
    pub denied_at: Option<Timestamp>,
    pub denied_error: Option<Denial>,
}

/// Why a request from an IP was refused for its token (the `denied` counters, `ip.denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Blocked,
    NotAllowed,
}

impl Denial {
    /// The refusal's error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Blocked => "ip_blocked",
            Denial::NotAllowed => "ip_not_allowed",
        }
    }
}

/// A refusal of a known token, by its error code (SPEC §12): what the usage history counts
/// besides admitted requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TokenExpired,
    TokenInactive,
    IpBlocked,
    IpNotAllowed,
    AccessDenied,
    RateLimited,
    NoRoute,
}

/// Counts per [`Refusal`], indexed by [`Refusal::index`].
pub type Refusals = [u64; Refusal::COUNT];

impl Refusal {
    pub const COUNT: usize = 7;
    /// In the order of SPEC §2's rows (the order the API and the stores' columns use).
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::TokenExpired,
        Refusal::TokenInactive,
        Refusal::IpBlocked,
        Refusal::IpNotAllowed,
        Refusal::NoRoute,
        Refusal::AccessDenied,
        Refusal::RateLimited,
    ];

    /// The error code (also the store's column name).
    pub const fn code(self) -> &'static str {
        match self {
            Refusal::TokenExpired => "token_expired",
            Refusal::TokenInactive => "token_inactive",
            Refusal::IpBlocked => "ip_blocked",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::AccessDenied => "access_denied",
            Refusal::RateLimited => "rate_limited",
            Refusal::NoRoute => "no_route",
        }
    }

    /// Its place in [`Refusal::ALL`] and in a [`Refusals`] array.
    pub fn index(self) -> usize {
        match self {
            Refusal::TokenExpired => 0,
            Refusal::TokenInactive => 1,
            Refusal::IpBlocked => 2,
            Refusal::IpNotAllowed => 3,
            Refusal::NoRoute => 4,
            Refusal::AccessDenied => 5,
            Refusal::RateLimited => 6,
        }
    }
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Refusal {
        match d {
            Denial::Blocked => Refusal::IpBlocked,
            Denial::NotAllowed => Refusal::IpNotAllowed,
        }
    }
}

/// One hourly usage row as stored (SPEC §12): a token's, or one of its IPs'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourCounts {
    /// The hour's start (UTC, ms).
    pub hour: Timestamp,
    pub requests: u64,
    pub refused: Refusals,
}

/// The start of the UTC hour holding `t`.
pub fn hour_of(t: Timestamp) -> Timestamp {
    Timestamp(t.0 - t.0.rem_euclid(HOUR_MS))
}

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// One audit row (SPEC §8): written in the same transaction as the change it records.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// `admin-key`, a client-certificate subject, or `idle-policy`.
    pub actor: String,
    pub source_ip: Option<String>,
    pub action: AuditAction,
    pub token: String,
    pub token_id: String,
    /// A JSON object; never a secret.
    pub details: serde_json::Value,
}

/// What an audit entry records (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Create,
    Update,
    Activate,
    Deactivate,
    Regenerate,
    Delete,
    Block,
    Unblock,
}

impl AuditAction {
    pub const ALL: [AuditAction; 8] = [
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Activate,
        AuditAction::Deactivate,
        AuditAction::Regenerate,
        AuditAction::Delete,
        AuditAction::Block,
        AuditAction::Unblock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Activate => "activate",
            AuditAction::Deactivate => "deactivate",
            AuditAction::Regenerate => "regenerate",
            AuditAction::Delete => "delete",
            AuditAction::Block => "block",
            AuditAction::Unblock => "unblock",
        }
    }

    /// From its stored form (`None` for a value this version does not write).
    pub fn from_db(s: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_in_their_canonical_form_only() {
        let id = TokenId::generate();
        let s = id.to_string();
        assert_eq!(TokenId::parse_stored(&s), Some(id));
        assert_eq!(TokenId::parse_stored(&s.to_uppercase()), None);
        assert_eq!(TokenId::parse_stored(&s.replace('-', "")), None);
        assert_eq!(s.to_uppercase().parse::<TokenId>().ok(), Some(id));
        let mut buf = [0u8; 36];
        assert_eq!(id.encode(&mut buf), s);
    }

    #[test]
    fn audit_actions_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::from_db(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::from_db("prune"), None);
    }

    #[test]
    fn refusals_have_distinct_places_in_spec_order() {
        for (i, r) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        assert_eq!(
            Refusal::from(Denial::Blocked).code(),
            Denial::Blocked.as_str()
        );
        assert_eq!(hour_of(Timestamp(HOUR_MS * 5 + 1)), Timestamp(HOUR_MS * 5));
        assert_eq!(hour_of(Timestamp(-1)), Timestamp(-HOUR_MS));
    }

    #[test]
    fn statuses_serialise_as_the_spec_spells_them() {
        assert_eq!(serde_json::to_value(Status::Active).unwrap(), "active");
        assert_eq!(serde_json::to_value(InactiveReason::Idle).unwrap(), "idle");
    }
}
