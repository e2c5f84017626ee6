//! Audit entries: the one place they are built (by the admin API, and by the idle policy in
//! the sweep and in the admin API) and the tracing event each committed entry emits.

use std::net::IpAddr;

use serde_json::Value;

use crate::clock::Timestamp;
use crate::model::{AuditAction, AuditEntry, TokenRecord};

/// The actor of changes made by the idle policy.
pub(crate) const IDLE_POLICY_ACTOR: &str = "idle-policy";

/// A change an administrator (`actor`: `admin-key` or a client-certificate subject) made
/// from `source_ip` to `token`.
pub(crate) fn by_admin(
    actor: &str,
    source_ip: IpAddr,
    at: Timestamp,
    action: AuditAction,
    token: &TokenRecord,
    details: Value,
) -> AuditEntry {
    AuditEntry {
        at,
        actor: actor.to_string(),
        source_ip: Some(source_ip.to_string()),
        action,
        token: token.name.clone(),
        token_id: token.id.to_string(),
        details,
    }
}

/// The idle policy as an actor, and the reason its entries give.
const IDLE_POLICY: (&str, &str) = (IDLE_POLICY_ACTOR, "idle");
/// The actor of the lapse of a token's `expires_at`, as the sweep records it.
pub(crate) const EXPIRY_POLICY_ACTOR: &str = "expiry-policy";

/// A change a policy (`idle-policy`, `expiry-policy`) made at `at` to token `token_id`
/// named `name`, with `{"reason": ...}` as its details.
fn by_policy(
    (actor, reason): (&str, &str),
    at: Timestamp,
    action: AuditAction,
    token_id: &str,
    name: &str,
) -> AuditEntry {
    AuditEntry {
        at,
        actor: actor.to_string(),
        source_ip: None,
        action,
        token: name.to_string(),
        token_id: token_id.to_string(),
        details: serde_json::json!({ "reason": reason }),
    }
}

/// A change the idle policy made at `at` to token `token_id` named `name`.
pub(crate) fn by_idle_policy(
    at: Timestamp,
    action: AuditAction,
    token_id: &str,
    name: &str,
) -> AuditEntry {
    by_policy(IDLE_POLICY, at, action, token_id, name)
}

/// The lapse of token `token_id`'s expiry, recorded at `at` (SPEC §1: a deactivation with
/// reason `expired`; the stored status does not change).
pub(crate) fn by_expiry_policy(at: Timestamp, token_id: &str, name: &str) -> AuditEntry {
    by_policy(
        (EXPIRY_POLICY_ACTOR, "expired"),
        at,
        AuditAction::Deactivate,
        token_id,
        name,
    )
}

/// The entries of one sweep: a deletion per token in `deleted`, a deactivation per token in
/// `deactivated` (`(id, name)` pairs) by the idle policy, and one per token in `expired` by
/// the expiry policy, all at `at`.
pub(crate) fn of_sweep(
    at: Timestamp,
    deleted: &[(String, String)],
    deactivated: &[(String, String)],
    expired: &[(String, String)],
) -> Vec<AuditEntry> {
    let del = deleted
        .iter()
        .map(|(id, name)| by_idle_policy(at, AuditAction::Delete, id, name));
    let deact = deactivated
        .iter()
        .map(|(id, name)| by_idle_policy(at, AuditAction::Deactivate, id, name));
    let exp = expired
        .iter()
        .map(|(id, name)| by_expiry_policy(at, id, name));
    del.chain(deact).chain(exp).collect()
}

/// The tracing event of an audit entry (after its transaction committed).
pub(crate) fn emit(a: &AuditEntry) {
    tracing::info!(
        target: "tokengate::audit",
        actor = %a.actor,
        source_ip = a.source_ip.as_deref().unwrap_or("-"),
        action = %a.action,
        token = %a.token,
        token_id = %a.token_id,
        details = %a.details,
    );
}
