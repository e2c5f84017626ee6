//! What the two stores' SQL has in common, written once: the statements that differ only by
//! dialect (parameters, the idle start, a list of ids to leave alone) and the
//! least-recently-used trim of usage records.

use std::collections::BTreeMap;

use crate::model::{HourCounts, Refusal, TokenId, UsageDelta};
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

/// The hourly usage history (SPEC §12; SQLite migration 9, PostgreSQL 8), in SQL both read
/// alike: one row per token, client IP and hour (`ip = ''`: the token's own row, every
/// request and refusal of the token that hour), summed by every instance's flush. A token's
/// rows go with it (cascade); an IP's go with its record (the least-recently-used trim) and
/// all of them after `usage.history` (the sweep). The refusal columns are named after their
/// error codes, in [`Refusal::ALL`]'s order ([`HOUR_COLUMNS`]).
pub(super) const USAGE_HOURS_TABLE: &str = "CREATE TABLE usage_hours (
    token_id       text NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    ip             text NOT NULL,
    hour           bigint NOT NULL,
    requests       bigint NOT NULL DEFAULT 0,
    token_expired  bigint NOT NULL DEFAULT 0,
    token_inactive bigint NOT NULL DEFAULT 0,
    ip_blocked     bigint NOT NULL DEFAULT 0,
    ip_not_allowed bigint NOT NULL DEFAULT 0,
    no_route       bigint NOT NULL DEFAULT 0,
    access_denied  bigint NOT NULL DEFAULT 0,
    rate_limited   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (token_id, ip, hour)
);
CREATE INDEX usage_hours_by_time ON usage_hours (hour);";

/// The counter columns of `usage_hours`: `requests`, then one per [`Refusal::ALL`], named by
/// its error code.
pub(super) const HOUR_COLUMNS: [&str; 1 + Refusal::COUNT] = {
    let mut cols = ["requests"; 1 + Refusal::COUNT];
    let mut i = 0;
    while i < Refusal::COUNT {
        cols[i + 1] = Refusal::ALL[i].code();
        i += 1;
    }
    cols
};

/// One hourly row's counters in [`HOUR_COLUMNS`]' order.
pub(super) type HourSums = [i64; 1 + Refusal::COUNT];

/// The `ip` column of an hourly row: the IP as stored, or `""` for the token's own row.
pub(super) fn hour_ip(ip: Option<std::net::IpAddr>) -> String {
    ip.map_or(String::new(), |ip| crate::net::canonical_ip(ip).to_string())
}

/// A flush's hourly rows, one per (token, IP or `""` for the token's own row, hour start),
/// in key order (the order PostgreSQL takes their row locks in): each delta adds to its IP's
/// row (when it has an IP) and to its token's.
pub(super) fn hour_rows(batch: &[UsageDelta]) -> BTreeMap<(TokenId, String, i64), HourSums> {
    let mut rows: BTreeMap<(TokenId, String, i64), HourSums> = BTreeMap::new();
    for d in batch {
        let mut sums: HourSums = [0; 1 + Refusal::COUNT];
        sums[0] = i64::try_from(d.requests).unwrap_or(i64::MAX);
        for (s, r) in sums[1..].iter_mut().zip(d.refused) {
            *s = i64::try_from(r).unwrap_or(i64::MAX);
        }
        if sums.iter().all(|&n| n == 0) {
            continue;
        }
        let own = std::iter::once(hour_ip(None));
        for key in own.chain(d.ip.map(|ip| hour_ip(Some(ip)))) {
            let row = rows.entry((d.token_id, key, d.hour.0)).or_default();
            for (a, b) in row.iter_mut().zip(sums) {
                *a = a.saturating_add(b);
            }
        }
    }
    rows
}

/// An hourly row as read (`hour` then [`HOUR_COLUMNS`]).
pub(super) fn hour_counts(hour: i64, sums: HourSums) -> HourCounts {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    HourCounts {
        hour: crate::clock::Timestamp(hour),
        requests: n(sums[0]),
        refused: std::array::from_fn(|i| n(sums[i + 1])),
    }
}

impl Dialect {
    /// A token's hourly rows for one IP (`''`: its own) with hours in [from, until):
    /// parameters token id, ip, from, until; columns `hour` then [`HOUR_COLUMNS`].
    pub(super) fn usage_hours_select(self) -> String {
        format!(
            "SELECT hour, {cols} FROM usage_hours
             WHERE token_id = {p1} AND ip = {p2} AND hour >= {p3} AND hour < {p4} ORDER BY hour",
            cols = HOUR_COLUMNS.join(", "),
            p1 = self.param(1),
            p2 = self.param(2),
            p3 = self.param(3),
            p4 = self.param(4),
        )
    }

    /// Per IP of a token, its requests per UTC day from the day starting at parameter 2:
    /// (ip, day number from that day, requests).
    pub(super) fn ip_days_select(self) -> String {
        format!(
            "SELECT ip, (hour - {p2}) / {day} AS day, CAST(sum(requests) AS bigint) FROM usage_hours
             WHERE token_id = {p1} AND ip <> '' AND hour >= {p2} AND requests > 0
             GROUP BY ip, day",
            day = crate::model::DAY_MS,
            p1 = self.param(1),
            p2 = self.param(2),
        )
    }

    /// `SET` of an hourly upsert: every counter adds the new row's.
    pub(super) fn hour_sums_update(self) -> String {
        HOUR_COLUMNS
            .iter()
            .map(|c| format!("{c} = usage_hours.{c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_hour_column() {
        for c in HOUR_COLUMNS {
            assert!(USAGE_HOURS_TABLE.contains(&format!("    {c} ")), "{c}");
        }
    }

    #[test]
    fn a_flush_adds_each_delta_to_its_ips_row_and_its_tokens() {
        let t = TokenId::generate();
        let delta = |ip: Option<&str>, hour: i64, requests: u64, expired: u64| UsageDelta {
            token_id: t,
            ip: ip.map(|s| s.parse().unwrap()),
            hour: crate::clock::Timestamp(hour),
            refused: [expired, 0, 0, 0, 0, 0, 0],
            requests,
            denied: 0,
            first_used_at: None,
            last_used_at: None,
            denied_at: None,
            denied_error: None,
        };
        let rows = hour_rows(&[
            delta(Some("192.0.2.1"), 0, 2, 0),
            delta(Some("::ffff:192.0.2.1"), 0, 1, 1),
            delta(Some("192.0.2.2"), 3_600_000, 1, 0),
            delta(None, 0, 0, 4),
            delta(Some("192.0.2.3"), 0, 0, 0),
        ]);
        let get = |ip: &str, hour: i64| rows[&(t, ip.to_string(), hour)];
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(get("", 0), [3, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(get("192.0.2.1", 0), [3, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(get("", 3_600_000)[0], 1);
        assert_eq!(get("192.0.2.2", 3_600_000)[0], 1);
    }

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
