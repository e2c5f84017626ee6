//! What the two stores' SQL has in common, written once: the statements that differ only by
//! dialect (parameters, the idle start, a list of ids to leave alone) and the
//! least-recently-used trim of usage records.

use crate::net::BlockEntry;

/// The SQL dialect of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Statement parameter `n` (from 1).
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// The idle clock's start as SQL: the latest of created, activated and last used, the
    /// SQL twin of [`crate::policy::idle_start`] (an absent activation or use never wins).
    pub(super) fn idle_start(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "max(created_at, coalesce(activated_at, 0), coalesce(last_used_at, 0))"
            }
            // GREATEST ignores NULLs.
            Dialect::Postgres => "GREATEST(created_at, activated_at, last_used_at)",
        }
    }

    /// `id` is none of the ids in parameter `n`: a JSON array (text) for SQLite, a `text[]`
    /// for PostgreSQL.
    fn not_listed(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("id NOT IN (SELECT value FROM json_each(?{n}))"),
            Dialect::Postgres => format!("NOT (id = ANY(${n}))"),
        }
    }

    /// The sweep's deletion: tokens idle since parameter 1 or earlier, except those listed
    /// in parameter 2. Returns their ids and names.
    pub(super) fn sweep_delete(self) -> String {
        format!(
            "DELETE FROM tokens WHERE {idle} <= {before} AND {kept} RETURNING id, name",
            idle = self.idle_start(),
            before = self.param(1),
            kept = self.not_listed(2),
        )
    }

    /// The sweep's deactivation: active tokens idle since parameter 1 or earlier, except
    /// those listed in parameter 3, become inactive (reason idle). `deactivated_at` is the
    /// instant the token lapsed (idle start + parameter 2, `inactive_after` in ms), not the
    /// sweep's time: the record reads the same however late the sweep ran. Returns their ids
    /// and names.
    pub(super) fn sweep_deactivate(self) -> String {
        format!(
            "UPDATE tokens SET status = 'inactive', inactive_reason = 'idle',
                deactivated_at = {idle} + {lapse}, version = version + 1
             WHERE status = 'active' AND {idle} <= {before} AND {kept} RETURNING id, name",
            idle = self.idle_start(),
            before = self.param(1),
            lapse = self.param(2),
            kept = self.not_listed(3),
        )
    }

    /// One token's usage records as [`trim_victims`] reads them: entry, last use, whether it
    /// is a block entry (parameter 1: the token id).
    /// Marks each token whose `expires_at` passed (at parameter 1) and whose lapse was not
    /// recorded yet: `expiry_recorded` holds the `expires_at` whose lapse the sweep recorded,
    /// so each expiry is recorded once, and moving `expires_at` makes a new one recordable.
    /// Nothing the proxy reads changes (expiry is decided at request time).
    pub(super) fn sweep_expired(self) -> String {
        format!(
            "UPDATE tokens SET expiry_recorded = expires_at
             WHERE expires_at IS NOT NULL AND expires_at <= {now}
               AND (expiry_recorded IS NULL OR expiry_recorded <> expires_at)
             RETURNING id, name",
            now = self.param(1),
        )
    }

    pub(super) fn trim_rows(self) -> String {
        format!(
            "SELECT entry, last_used_at, blocked_at IS NOT NULL FROM token_ips WHERE token_id = {}",
            self.param(1)
        )
    }
}

/// The least-recently-used trim of one token's usage records, the same in both stores:
/// beyond `max_ips` unblocked records, the least recently used go (never used first, then
/// by entry), but never a record covered by one of the token's block entries (exact or
/// CIDR). `rows` are (entry, last use in ms, is a block entry), as [`Dialect::trim_rows`]
/// selects them; returns the entries to delete, or why a block entry is unreadable.
pub(super) fn trim_victims(
    rows: Vec<(String, Option<i64>, bool)>,
    max_ips: usize,
) -> Result<Vec<String>, String> {
    let mut blocks = Vec::new();
    let mut candidates: Vec<(Option<i64>, String)> = Vec::new();
    for (entry, last, blocked) in rows {
        if blocked {
            blocks.push(super::rows::block_entry(&entry)?);
        } else {
            candidates.push((last, entry));
        }
    }
    candidates.retain(|(_, entry)| {
        !BlockEntry::parse(entry)
            .map(|e| blocks.iter().any(|b| b.contains(e.net().addr())))
            .unwrap_or(false)
    });
    if candidates.len() <= max_ips {
        return Ok(Vec::new());
    }
    // Oldest first (never-used rows sort first: None < Some).
    candidates.sort();
    let excess = candidates.len() - max_ips;
    Ok(candidates
        .into_iter()
        .take(excess)
        .map(|(_, entry)| entry)
        .collect())
}

/// The webhook outbox (SPEC §10; SQLite migration 8, PostgreSQL 7), in SQL both read alike
/// (`bigint` has SQLite's integer affinity): one row per event and endpoint, written in the
/// transaction of the change it reports; `once_key` keeps events sent once per key
/// (`token.expiring`, `ip.denied`) from being written twice, by any instance.
pub(super) const OUTBOX_TABLE: &str = "CREATE TABLE webhook_outbox (
    id              text PRIMARY KEY,
    endpoint        text NOT NULL,
    url             text NOT NULL,
    event_type      text NOT NULL,
    token_id        text,
    payload         text NOT NULL,
    created_at      bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        bigint NOT NULL DEFAULT 0,
    next_attempt_at bigint,
    last_attempt_at bigint,
    response_status bigint,
    last_error      text,
    lease_owner     text,
    lease_until     bigint,
    once_key        text UNIQUE
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (endpoint, status, next_attempt_at);
CREATE INDEX webhook_outbox_done ON webhook_outbox (status, last_attempt_at);
CREATE INDEX webhook_outbox_by_time ON webhook_outbox (created_at);
CREATE INDEX webhook_outbox_by_token ON webhook_outbox (token_id, event_type, created_at);";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trim_drops_the_least_recently_used_uncovered_records() {
        let rows = vec![
            ("192.0.2.1".to_string(), Some(5), false),
            ("192.0.2.2".to_string(), None, false),
            ("192.0.2.3".to_string(), Some(1), false),
            ("198.51.100.0/24".to_string(), None, true),
            ("198.51.100.7".to_string(), Some(0), false),
            ("203.0.113.9".to_string(), Some(9), false),
        ];
        assert_eq!(
            trim_victims(rows.clone(), 2).unwrap(),
            vec!["192.0.2.2".to_string(), "192.0.2.3".to_string()],
            "never used first, then oldest; the record under the CIDR block stays"
        );
        assert!(trim_victims(rows, 4).unwrap().is_empty());
        assert!(trim_victims(vec![("nonsense".into(), None, true)], 0).is_err());
    }

    #[test]
    fn statements_use_each_dialects_parameters() {
        assert!(Dialect::Sqlite.sweep_delete().contains("<= ?1"));
        assert!(Dialect::Sqlite.sweep_deactivate().contains("+ ?2"));
        assert!(Dialect::Postgres.sweep_deactivate().contains("ANY($3)"));
        assert!(Dialect::Postgres.trim_rows().ends_with("token_id = $1"));
    }
}
