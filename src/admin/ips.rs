//! A token's IP list and its block list: `GET /v1/tokens/{name}/ips` and
//! `POST /v1/tokens/{name}/ips/block|unblock`.

use std::collections::HashMap;

use bytes::Bytes;
use http::StatusCode;

use crate::audit;
use crate::clock::Timestamp;
use crate::model::{AuditAction, IpRecord, TokenId};
use crate::net::BlockEntry;

use super::audit::Actor;
use super::body::{self, IpsBody};
use super::dto::{IpDto, IpList};
use super::{json_response, Admin, AdminError, AdminResult};

impl Admin {
    pub(super) async fn ips(&self, name: &str) -> AdminResult {
        let rec = self.find(name).await?;
        Ok(json_response(StatusCode::OK, &self.ip_list(rec.id).await?))
    }

    async fn ip_list(&self, token_id: TokenId) -> Result<IpList, AdminError> {
        self.flush_pending("IPs").await;
        let records = self.store.list_ips(token_id).await?;
        let weeks = self.ip_weeks(token_id).await?;
        Ok(IpList {
            ips: ip_dtos(records, &weeks),
        })
    }

    pub(super) async fn block(
        &self,
        actor: &Actor,
        name: &str,
        body: Bytes,
        block: bool,
    ) -> AdminResult {
        let entries = body::parse::<IpsBody>(&body)?.into_entries()?;
        let rec = self.find(name).await?;
        let listed: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let entry = actor.entry(
            self.now(),
            if block {
                AuditAction::Block
            } else {
                AuditAction::Unblock
            },
            &rec,
            serde_json::json!({ "ips": listed }),
        );
        if block {
            self.store
                .block(rec.id, &entries, self.now(), &entry)
                .await?;
        } else {
            let current = self.store.list_ips(rec.id).await?;
            let exact: Vec<BlockEntry> = current
                .iter()
                .filter(|r| r.blocked_at.is_some())
                .map(|r| r.entry)
                .collect();
            for e in &entries {
                if exact.contains(e) {
                    continue;
                }
                // Not blocked by itself: if a network entry covers it, unblocking it alone
                // would be a no-op that looks like success.
                if let Some(cidr) = exact
                    .iter()
                    .filter(|b| !entries.contains(b))
                    .find(|b| !b.is_single() && b.net().contains(&e.net()))
                {
                    return Err(AdminError::BlockedByCidr {
                        ip: e.to_string(),
                        cidr: cidr.to_string(),
                    });
                }
            }
            self.store.unblock(rec.id, &entries, &entry).await?;
        }
        // Committed: refresh the index so the very next request sees the block list.
        self.apply(rec.id).await;
        audit::emit(&entry);
        Ok(json_response(StatusCode::OK, &self.ip_list(rec.id).await?))
    }
}

/// The IP list of SPEC §4: effective block state per row, newest use first, never-used rows
/// last, then by address.
/// `weeks` holds each IP's `requests_7d` (an IP absent from it had none).
pub(crate) fn ip_dtos(records: Vec<IpRecord>, weeks: &HashMap<String, [u64; 7]>) -> Vec<IpDto> {
    let blocks: Vec<(BlockEntry, Timestamp)> = records
        .iter()
        .filter_map(|r| r.blocked_at.map(|at| (r.entry, at)))
        .collect();
    let mut rows: Vec<(Option<Timestamp>, IpDto)> = records
        .into_iter()
        .map(|r| {
            let cover = match r.blocked_at {
                Some(at) => Some((r.entry, at)),
                None => blocks
                    .iter()
                    .find(|(b, _)| !b.is_single() && b.net().contains(&r.entry.net()))
                    .copied(),
            };
            let ip = r.entry.to_string();
            let dto = IpDto {
                requests_7d: weeks.get(&ip).copied().unwrap_or_default().to_vec(),
                ip,
                first_used_at: r.first_used_at.map(Timestamp::rfc3339),
                last_used_at: r.last_used_at.map(Timestamp::rfc3339),
                requests: r.requests,
                denied: r.denied,
                blocked: cover.is_some(),
                blocked_by: cover.map(|(b, _)| b.to_string()),
                blocked_at: cover.map(|(_, at)| at.rfc3339()),
            };
            (r.last_used_at, dto)
        })
        .collect();
    rows.sort_by(|(a, x), (b, y)| match (a, b) {
        (Some(a), Some(b)) => b.cmp(a).then_with(|| x.ip.cmp(&y.ip)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => x.ip.cmp(&y.ip),
    });
    rows.into_iter().map(|(_, d)| d).collect()
}
