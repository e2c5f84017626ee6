//! Pure decisions: is a token usable now (status and the idle policy at request time), is an
//! IP blocked, does the token hold the route's access. No IO here; the lifecycle sweep that
//! persists these decisions lives in [`crate::lifecycle`].

use std::net::IpAddr;

use crate::clock::Timestamp;
use crate::config::LifecycleConfig;
use crate::model::{InactiveReason, Status, TokenRecord};
use crate::net::BlockEntry;

/// The latest of creation, (re)activation and last use: the idle clock starts here.
pub fn idle_start(
    created_at: Timestamp,
    activated_at: Option<Timestamp>,
    last_used_at: Option<Timestamp>,
) -> Timestamp {
    let mut t = created_at;
    if let Some(a) = activated_at {
        t = t.max(a);
    }
    if let Some(u) = last_used_at {
        t = t.max(u);
    }
    t
}

/// A token's status as the API and the proxy must report it at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effective {
    Active,
    Inactive(InactiveReason),
    /// Idle past `delete_after`: gone everywhere, sweep or not (proxy 401, admin 404).
    Deleted,
}

/// Applies the idle policy to a stored status at `now` (exact at request time).
pub fn effective(
    stored: Status,
    reason: Option<InactiveReason>,
    idle_since: Timestamp,
    now: Timestamp,
    lc: &LifecycleConfig,
) -> Effective {
    if now >= idle_since.plus(lc.delete_after) {
        return Effective::Deleted;
    }
    match stored {
        Status::Inactive => Effective::Inactive(reason.unwrap_or(InactiveReason::Admin)),
        Status::Active if now >= idle_since.plus(lc.inactive_after) => {
            Effective::Inactive(InactiveReason::Idle)
        }
        Status::Active => Effective::Active,
    }
}

/// What a token's effective status depends on: its stored status and reason, and the three
/// instants its idle clock starts from.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub status: Status,
    pub reason: Option<InactiveReason>,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

impl Standing {
    /// A stored token's, with `last_used_at` the latest use known (the store's, or a newer
    /// one this instance has not flushed yet).
    pub fn of_record(rec: &TokenRecord, last_used_at: Option<Timestamp>) -> Standing {
        Standing {
            status: rec.status,
            reason: rec.inactive_reason,
            created_at: rec.created_at,
            activated_at: rec.activated_at,
            last_used_at,
            expires_at: rec.expires_at,
        }
    }

    /// When the idle clock started.
    pub fn idle_since(&self) -> Timestamp {
        idle_start(self.created_at, self.activated_at, self.last_used_at)
    }
}

/// The one computation of a token's effective status at `now` (proxy, tunnels, admin API,
/// metrics all ask this). Idle past `delete_after` wins (the token is gone); then expiry
/// (SPEC §1: `expired` is reported first), then the stored status, then the idle policy.
pub fn status_at(s: Standing, now: Timestamp, lc: &LifecycleConfig) -> Effective {
    match effective(s.status, s.reason, s.idle_since(), now, lc) {
        Effective::Deleted => Effective::Deleted,
        _ if s.expires_at.is_some_and(|at| now >= at) => {
            Effective::Inactive(InactiveReason::Expired)
        }
        other => other,
    }
}

impl Effective {
    /// The status and reason the API reports. A deleted token is never shown (callers
    /// answer 404); should one slip through, it reads as idle.
    pub fn reported(self) -> (Status, Option<InactiveReason>) {
        match self {
            Effective::Active => (Status::Active, None),
            Effective::Inactive(r) => (Status::Inactive, Some(r)),
            Effective::Deleted => (Status::Inactive, Some(InactiveReason::Idle)),
        }
    }
}

/// The block entry covering `ip`, if any (exact entries are checked first so the answer
/// names the most specific one).
pub fn blocked_by(blocks: &[BlockEntry], ip: IpAddr) -> Option<&BlockEntry> {
    blocks
        .iter()
        .find(|b| b.is_single() && b.contains(ip))
        .or_else(|| blocks.iter().find(|b| b.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: i64 = 86_400_000;

    fn lc() -> LifecycleConfig {
        LifecycleConfig {
            inactive_after: Duration::from_secs(30 * 86400),
            delete_after: Duration::from_secs(90 * 86400),
            sweep_interval: Duration::from_secs(60),
            max_expiry: None,
            max_rotation_grace: Duration::from_secs(7 * 86400),
        }
    }

    #[test]
    fn idle_start_is_the_latest_event() {
        let t = |d: i64| Timestamp(d * DAY);
        assert_eq!(idle_start(t(1), None, None), t(1));
        assert_eq!(idle_start(t(1), Some(t(5)), Some(t(3))), t(5));
        assert_eq!(idle_start(t(1), Some(t(2)), Some(t(3))), t(3));
    }

    #[test]
    fn lapses_exactly_at_the_limits() {
        let start = Timestamp(100 * DAY);
        let at = |ms: i64| effective(Status::Active, None, start, Timestamp(start.0 + ms), &lc());
        assert_eq!(at(30 * DAY - 1000), Effective::Active);
        assert_eq!(at(30 * DAY), Effective::Inactive(InactiveReason::Idle));
        assert_eq!(at(90 * DAY - 1), Effective::Inactive(InactiveReason::Idle));
        assert_eq!(at(90 * DAY), Effective::Deleted);
        let admin = effective(
            Status::Inactive,
            Some(InactiveReason::Admin),
            start,
            start,
            &lc(),
        );
        assert_eq!(admin, Effective::Inactive(InactiveReason::Admin));
    }

    #[test]
    fn blocks_match_exact_before_cidr() {
        let blocks = vec![
            BlockEntry::parse("10.0.0.0/8").unwrap(),
            BlockEntry::parse("10.1.2.3").unwrap(),
        ];
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(blocked_by(&blocks, ip).unwrap().to_string(), "10.1.2.3");
        let ip: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(blocked_by(&blocks, ip).unwrap().to_string(), "10.0.0.0/8");
        let ip: IpAddr = "11.0.0.1".parse().unwrap();
        assert!(blocked_by(&blocks, ip).is_none());
    }
}
