//! Row decoding, written once for both stores. Each driver says how to read one column of its
//! row type ([`Columns`]); what the columns of a token, an IP record and an audit row mean is
//! decoded here, from the column lists both stores select ([`TOKEN_COLUMNS`], [`IP_COLUMNS`],
//! [`AUDIT_COLUMNS`]).

use crate::access::AccessNames;
use crate::clock::Timestamp;
use crate::model::{AuditEntry, InactiveReason, IpRecord, PreviousSecret, Status, TokenRecord};
use crate::net::BlockEntry;
use crate::ratelimit::RateLimit;
use crate::token::SecretHash;

/// How many columns [`TOKEN_COLUMNS`] has (a query may select more after them).
pub(super) const TOKEN_COLUMN_COUNT: usize = 20;

/// A token's columns, in the order [`token`] reads them (from column 0).
pub(super) const TOKEN_COLUMNS: &str = "id, name, description, access, secret_hash, status, \
     inactive_reason, created_at, activated_at, deactivated_at, last_used_at, version, expires_at, \
     previous_secret_hash, previous_secret_expires_at, access_types, rate_limit_requests, \
     rate_limit_per_ms, allowed_ips, revoked_secret_hash";

/// An IP record's columns, in the order [`ip`] reads them.
pub(super) const IP_COLUMNS: &str =
    "entry, first_used_at, last_used_at, requests, denied, blocked_at";

/// An audit row's columns, in the order [`audit`] reads them.
pub(super) const AUDIT_COLUMNS: &str = "at, actor, source_ip, action, token, token_id, details";

/// A type both drivers read from a column (see `sql_types` for the model's own).
pub(super) trait Value:
    rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>
{
}

impl<T> Value for T where T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a> {}

/// One result row of a driver, read column by column (columns count from 0).
pub(super) trait Columns {
    type Error;

    /// Column `i` as `T`; the driver's own error if it holds something else.
    fn column<T: Value>(&self, i: usize) -> Result<T, Self::Error>;

    /// The legacy access bits, an integer as wide as the dialect stores it.
    fn access(&self, i: usize) -> Result<i64, Self::Error>;

    /// Column `i` holds a value of the right type that the gateway never writes.
    fn corrupt(&self, i: usize, what: &str) -> Self::Error;
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

/// A token from [`TOKEN_COLUMNS`].
pub(super) fn token<R: Columns>(row: &R) -> Result<TokenRecord, R::Error> {
    let hash: Vec<u8> = row.column(4)?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| row.corrupt(4, "secret hash length"))?;
    let status: String = row.column(5)?;
    let reason: Option<String> = row.column(6)?;
    let secret_hash = SecretHash::from_bytes(hash);
    let revoked: Option<Vec<u8>> = row.column(19)?;
    // Revoked while the reported secret is still the current one, whatever the stored status
    // says (stored inactive/admin, see `db_str`; a previous release may have activated it).
    let revoked_hash = match revoked {
        None => None,
        Some(b) => {
            Some(SecretHash::from_bytes(b.try_into().map_err(|_| {
                row.corrupt(19, "revoked secret hash length")
            })?))
        }
    }
    .filter(|h| *h == secret_hash);
    let (status, inactive_reason) = match revoked_hash {
        Some(_) => (Status::Inactive, Some(InactiveReason::Revoked)),
        None => (
            Status::from_db(&status),
            InactiveReason::from_db(reason.as_deref()),
        ),
    };
    Ok(TokenRecord {
        id: row.column(0)?,
        name: row.column(1)?,
        description: row.column(2)?,
        access: access(row)?,
        secret_hash,
        status,
        inactive_reason,
        created_at: Timestamp(row.column(7)?),
        activated_at: ts(row.column(8)?),
        deactivated_at: ts(row.column(9)?),
        last_used_at: ts(row.column(10)?),
        version: row.column(11)?,
        expires_at: ts(row.column(12)?),
        previous_secret: previous_secret(row, 13)?,
        rate_limit: rate_limit(row, 16)?,
        allowed_ips: allowed_ips(row, 18)?,
        revoked_hash,
    })
}

/// The access names: the seed's two from the legacy bits (column 3), every other name from
/// the names column (15). This build writes both, agreeing; an instance of the previous
/// release sharing the database during a rolling upgrade writes only the bits, so they are
/// the truth for the seed's two (a type it removed stays removed).
fn access<R: Columns>(row: &R) -> Result<AccessNames, R::Error> {
    let names: Option<String> = row.column(15)?;
    let seed = AccessNames::from_legacy_bits(row.access(3)?);
    let own = names
        .map(|n| AccessNames::from_stored(&n))
        .unwrap_or_default();
    Ok(AccessNames::new(
        seed.iter()
            .chain(own.iter().filter(|n| !AccessNames::is_seed(n)))
            .map(str::to_string),
    ))
}

/// The rate limit (columns `i`, `i + 1`: requests, per in ms): both, or neither.
fn rate_limit<R: Columns>(row: &R, i: usize) -> Result<Option<RateLimit>, R::Error> {
    let requests: Option<i64> = row.column(i)?;
    let per_ms: Option<i64> = row.column(i + 1)?;
    match (requests, per_ms) {
        (Some(n), Some(ms)) => {
            let per = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            RateLimit::new(u64::try_from(n).unwrap_or(0), per)
                .map(Some)
                .map_err(|e| row.corrupt(i, &e))
        }
        _ => Ok(None),
    }
}

/// The allow-list (column `i`): canonical entries joined by `,`; null = any client IP.
fn allowed_ips<R: Columns>(row: &R, i: usize) -> Result<Option<Vec<BlockEntry>>, R::Error> {
    let list: Option<String> = row.column(i)?;
    list.map(|l| {
        l.split(',')
            .map(block_entry)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| row.corrupt(i, &e))
    })
    .transpose()
}

/// The store's form of an allow-list (see [`allowed_ips`]).
pub(super) fn allowed_ips_text(list: &Option<Vec<BlockEntry>>) -> Option<String> {
    list.as_ref().map(|l| {
        l.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The store's form of a rate limit: requests and per in ms.
pub(super) fn rate_limit_columns(l: Option<RateLimit>) -> (Option<i64>, Option<i64>) {
    match l {
        Some(l) => (
            Some(i64::from(l.requests())),
            Some(i64::try_from(l.per().as_millis()).unwrap_or(i64::MAX)),
        ),
        None => (None, None),
    }
}

/// The replaced secret's hash and end (columns `i`, `i + 1`): both, or neither.
fn previous_secret<R: Columns>(row: &R, i: usize) -> Result<Option<PreviousSecret>, R::Error> {
    let hash: Option<Vec<u8>> = row.column(i)?;
    let until: Option<i64> = row.column(i + 1)?;
    match (hash, until) {
        (Some(h), Some(until)) => {
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| row.corrupt(i, "previous secret hash length"))?;
            Ok(Some(PreviousSecret {
                hash: SecretHash::from_bytes(h),
                until: Timestamp(until),
            }))
        }
        _ => Ok(None),
    }
}

/// An IP record from [`IP_COLUMNS`].
/// An hourly usage row: `hour` then `sql::HOUR_COLUMNS` (`Dialect::usage_hours_select`).
pub(super) fn hour<R: Columns>(row: &R) -> Result<crate::model::HourCounts, R::Error> {
    let mut sums: super::sql::HourSums = Default::default();
    for (i, s) in sums.iter_mut().enumerate() {
        *s = row.column(i + 1)?;
    }
    Ok(super::sql::hour_counts(row.column(0)?, sums))
}

/// One IP's requests on one day (`Dialect::ip_days_select`): ip, day number, requests.
pub(super) fn ip_day<R: Columns>(row: &R) -> Result<(String, i64, u64), R::Error> {
    let n: i64 = row.column(2)?;
    Ok((
        row.column(0)?,
        row.column(1)?,
        u64::try_from(n).unwrap_or(0),
    ))
}

pub(super) fn ip<R: Columns>(row: &R) -> Result<IpRecord, R::Error> {
    let entry: String = row.column(0)?;
    let count = |i| row.column::<i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
    Ok(IpRecord {
        entry: block_entry(&entry).map_err(|e| row.corrupt(0, &e))?,
        first_used_at: ts(row.column(1)?),
        last_used_at: ts(row.column(2)?),
        requests: count(3)?,
        denied: count(4)?,
        blocked_at: ts(row.column(5)?),
    })
}

/// An audit row from [`AUDIT_COLUMNS`].
pub(super) fn audit<R: Columns>(row: &R) -> Result<AuditEntry, R::Error> {
    let details: String = row.column(6)?;
    Ok(AuditEntry {
        at: Timestamp(row.column(0)?),
        actor: row.column(1)?,
        source_ip: row.column(2)?,
        action: row.column(3)?,
        token: row.column(4)?,
        token_id: row.column(5)?,
        details: serde_json::from_str(&details).unwrap_or_else(|_| serde_json::json!({})),
    })
}

/// A stored block entry. The stores write them canonical: one that does not parse was
/// edited outside the gateway (the error says how it is wrong).
pub(super) fn block_entry(s: &str) -> Result<BlockEntry, String> {
    BlockEntry::parse(s)
}
