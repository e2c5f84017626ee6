//! The admin side of the audit log: who is making a change ([`Actor`]), and the audit list
//! endpoint. Entries are built and emitted by [`crate::audit`].

use std::net::IpAddr;

use http::{Request, StatusCode};
use serde_json::Value;

use crate::audit;
use crate::clock::Timestamp;
use crate::model::{AuditAction, AuditEntry, TokenRecord};
use crate::tls::ClientCertSubject;

use super::dto::{AuditDto, AuditList, DeliveryDto, DeliveryList};
use super::query::{AUDIT_LIST, DELIVERY_LIST};
use super::{json_response, Admin, AdminResult};

/// Who is making an admin change, for the audit log.
pub(crate) struct Actor {
    name: String,
    source_ip: IpAddr,
}

impl Actor {
    /// With `admin.tls.client_ca` the connection carries a verified client certificate (the
    /// server refuses the handshake otherwise), and its subject is the actor.
    pub(crate) fn of<B>(req: &Request<B>, source_ip: IpAddr) -> Actor {
        Actor {
            name: match req.extensions().get::<ClientCertSubject>() {
                Some(subject) => subject.0.to_string(),
                None => "admin-key".into(),
            },
            source_ip,
        }
    }

    pub(crate) fn entry(
        &self,
        at: Timestamp,
        action: AuditAction,
        rec: &TokenRecord,
        details: Value,
    ) -> AuditEntry {
        audit::by_admin(&self.name, self.source_ip, at, action, rec, details)
    }
}

impl Admin {
    /// `GET /v1/audit?token=NAME&limit=N`: newest first.
    pub(super) async fn audit(&self, query: Option<&str>) -> AdminResult {
        let query = AUDIT_LIST.parse(query)?;
        let rows = self
            .store
            .list_audit(query.token.as_deref(), query.limit)
            .await?;
        let entries = rows
            .into_iter()
            .map(|a| AuditDto {
                at: a.at.rfc3339(),
                actor: a.actor,
                source_ip: a.source_ip,
                action: a.action.to_string(),
                token: a.token,
                token_id: a.token_id,
                details: a.details,
            })
            .collect();
        Ok(json_response(StatusCode::OK, &AuditList { entries }))
    }

    /// `GET /v1/webhooks/deliveries?limit=N`: newest first (SPEC §4).
    pub(super) async fn deliveries(&self, query: Option<&str>) -> AdminResult {
        let query = DELIVERY_LIST.parse(query)?;
        let rows = self.store.list_deliveries(query.limit).await?;
        let deliveries = rows
            .into_iter()
            .map(|d| DeliveryDto {
                id: d.id,
                event_type: d.event_type,
                url: d.url,
                attempts: d.attempts,
                status: d.status,
                created_at: d.created_at.rfc3339(),
                last_attempt_at: d.last_attempt_at.map(Timestamp::rfc3339),
                next_attempt_at: d
                    .next_attempt_at
                    .filter(|_| d.status == crate::events::DeliveryStatus::Pending)
                    .map(Timestamp::rfc3339),
                response_status: d.response_status,
            })
            .collect();
        Ok(json_response(StatusCode::OK, &DeliveryList { deliveries }))
    }
}
