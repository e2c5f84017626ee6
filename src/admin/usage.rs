//! A token's usage over time (SPEC §12): `GET /v1/tokens/{name}/usage?from=&to=&step=&ip=`,
//! and the seven daily counts of each row of its IP list (`requests_7d`).
//!
//! The store keeps hourly rows only for hours that saw something; the answer holds every
//! bucket of the range, empty ones included, summed from them (a day is its 24 hours, UTC).

use std::collections::HashMap;
use std::net::IpAddr;

use http::StatusCode;
use serde_json::{json, Value};

use crate::clock::Timestamp;
use crate::model::{Refusals, TokenId, DAY_MS, HOUR_MS};
use crate::net;

use super::dto::{Usage, UsageBucket};
use super::error::{invalid, AdminError};
use super::query::{unknown_parameter, QueryParams};
use super::{json_response, Admin, AdminResult};

/// The most buckets one answer holds (SPEC §12); a longer range is 400.
pub(crate) const MAX_BUCKETS: i64 = 2000;

/// The bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Hour,
    Day,
}

impl Step {
    fn ms(self) -> i64 {
        match self {
            Step::Hour => HOUR_MS,
            Step::Day => DAY_MS,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Step::Hour => "1h",
            Step::Day => "1d",
        }
    }
}

/// A parsed usage query; `None` = not given (an empty value is the same as none).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UsageQuery {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub step: Step,
    /// One client IP's rows instead of the token's own (canonical).
    pub ip: Option<IpAddr>,
}

/// The buckets an answer holds: the first one's start and how many.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub first: Timestamp,
    pub count: usize,
    pub step: Step,
}

impl Range {
    fn end(&self) -> Timestamp {
        Timestamp(self.first.0 + self.step.ms() * self.count as i64)
    }
}

/// The query parameters of `GET /v1/tokens/{name}/usage`.
pub(crate) struct UsageParams;

pub(crate) const USAGE_PARAMS: UsageParams = UsageParams;

const TIME_PATTERN: &str =
    "^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z)?$";

impl QueryParams for UsageParams {
    fn openapi_parameters(&self) -> Vec<Value> {
        let empty = "An empty value is the same as none.";
        let time =
            |what: &str| json!({"type": "string", "pattern": TIME_PATTERN, "description": what});
        let params = [
            (
                "from",
                time("RFC 3339 UTC time (with `Z`)."),
                format!(
                    "The answer starts with the bucket holding this instant; default: 23 hours \
                     before `to` (the last 24 hourly buckets). Not after `to`. {empty}"
                ),
            ),
            (
                "to",
                time("RFC 3339 UTC time (with `Z`)."),
                format!(
                    "The answer ends with the bucket holding this instant; default: now. {empty}"
                ),
            ),
            (
                "step",
                json!({"type": "string", "enum": ["1h", "1d", ""], "default": "1h"}),
                format!("Bucket width: an hour or a day, aligned to UTC. {empty}"),
            ),
            (
                "ip",
                json!({"anyOf": [
                    {"type": "string", "format": "ipv4"},
                    {"type": "string", "format": "ipv6"},
                    {"type": "string", "enum": [""]},
                ]}),
                format!(
                    "Only this client IP's counts (kept for the IPs the token has a record of; \
                     an IP without one has only empty buckets). {empty}"
                ),
            ),
        ];
        params
            .into_iter()
            .map(|(name, schema, description)| {
                json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
            })
            .collect()
    }
}

/// Parses the query string; any other parameter is refused, naming it.
pub(crate) fn parse(query: Option<&str>) -> Result<UsageQuery, AdminError> {
    let mut q = UsageQuery {
        from: None,
        to: None,
        step: Step::Hour,
        ip: None,
    };
    let time = |field: &str, v: &str| {
        Timestamp::parse_rfc3339(v).map(Some).ok_or_else(|| {
            invalid(
                field,
                format!("{field} must be an RFC 3339 UTC time such as 2027-01-31T00:00:00Z"),
            )
        })
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            _ if v.is_empty() && ["from", "to", "step", "ip"].contains(&&*k) => {}
            "from" => q.from = time("from", &v)?,
            "to" => q.to = time("to", &v)?,
            "step" => {
                q.step = match &*v {
                    "1h" => Step::Hour,
                    "1d" => Step::Day,
                    _ => return Err(invalid("step", "step must be 1h or 1d")),
                }
            }
            "ip" => {
                let ip: IpAddr = v
                    .parse()
                    .map_err(|_| invalid("ip", "ip must be an IPv4 or IPv6 address"))?;
                q.ip = Some(net::canonical_ip(ip));
            }
            _ => return Err(unknown_parameter(&k)),
        }
    }
    Ok(q)
}

impl UsageQuery {
    /// The buckets from the one holding `from` to the one holding `to`, at `now`'s defaults.
    pub(crate) fn range(&self, now: Timestamp) -> Result<Range, AdminError> {
        let to = self.to.unwrap_or(now);
        let from = self.from.unwrap_or(Timestamp(to.0 - 23 * HOUR_MS));
        if from > to {
            return Err(invalid("from", "from must not be after to"));
        }
        let step = self.step.ms();
        let first = from.0 - from.0.rem_euclid(step);
        let last = to.0 - to.0.rem_euclid(step);
        let count = (last - first) / step + 1;
        if count > MAX_BUCKETS {
            // Only an explicit `from` can be this far from `to` (the default is 23 h).
            return Err(invalid(
                "from",
                format!(
                    "the range holds {count} buckets of {}; at most {MAX_BUCKETS}",
                    self.step.as_str()
                ),
            ));
        }
        Ok(Range {
            first: Timestamp(first),
            count: usize::try_from(count).unwrap_or(0),
            step: self.step,
        })
    }
}

/// Every bucket of `range`, summed from the hourly rows (oldest first).
pub(crate) fn buckets(range: &Range, rows: &[crate::model::HourCounts]) -> Vec<UsageBucket> {
    let step = range.step.ms();
    let mut sums: Vec<(u64, Refusals)> = vec![(0, Refusals::default()); range.count];
    for r in rows {
        let Some(slot) = usize::try_from((r.hour.0 - range.first.0).div_euclid(step))
            .ok()
            .and_then(|i| sums.get_mut(i))
        else {
            continue;
        };
        slot.0 = slot.0.saturating_add(r.requests);
        for (a, b) in slot.1.iter_mut().zip(r.refused) {
            *a = a.saturating_add(b);
        }
    }
    sums.into_iter()
        .enumerate()
        .map(|(i, (requests, refused))| UsageBucket {
            start: Timestamp(range.first.0 + step * i as i64).rfc3339(),
            requests,
            refused: refused.into(),
        })
        .collect()
}

/// The first instant of the UTC day six days before `now`'s: where `requests_7d` starts.
pub(crate) fn week_start(now: Timestamp) -> Timestamp {
    Timestamp(now.0 - now.0.rem_euclid(DAY_MS) - 6 * DAY_MS)
}

/// `requests_7d` per IP (as stored) from [`crate::store::Store::ip_days`]'s rows.
pub(crate) fn requests_7d(rows: Vec<(String, i64, u64)>) -> HashMap<String, [u64; 7]> {
    let mut out: HashMap<String, [u64; 7]> = HashMap::new();
    for (ip, day, n) in rows {
        if let Some(slot) = usize::try_from(day)
            .ok()
            .filter(|d| *d < 7)
            .map(|d| &mut out.entry(ip).or_default()[d])
        {
            *slot = slot.saturating_add(n);
        }
    }
    out
}

impl Admin {
    pub(super) async fn usage(&self, name: &str, query: Option<&str>) -> AdminResult {
        let q = parse(query)?;
        let range = q.range(self.now())?;
        let rec = self.find(name).await?;
        self.flush_pending("usage history").await;
        let rows = self
            .store
            .usage_hours(rec.id, q.ip, range.first, range.end())
            .await?;
        Ok(json_response(
            StatusCode::OK,
            &Usage {
                step: range.step.as_str(),
                buckets: buckets(&range, &rows),
            },
        ))
    }

    /// `requests_7d` of every IP of a token (flushed first by the caller).
    pub(super) async fn ip_weeks(
        &self,
        token_id: TokenId,
    ) -> Result<HashMap<String, [u64; 7]>, AdminError> {
        let rows = self.store.ip_days(token_id, week_start(self.now())).await?;
        Ok(requests_7d(rows))
    }

    /// Writes pending usage first, so an answer includes requests made a moment ago.
    pub(super) async fn flush_pending(&self, what: &str) {
        if let Err(e) = self.usage.flush(self.store.as_ref()).await {
            tracing::warn!(error = %e, "usage flush before reading {what} failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HourCounts;

    const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % DAY_MS;

    fn q(s: &str) -> UsageQuery {
        parse(Some(s)).unwrap()
    }

    fn refusal(s: &str, now: i64) -> (String, String) {
        match parse(Some(s)).and_then(|q| q.range(Timestamp(now))) {
            Err(AdminError::Invalid {
                field: Some(f),
                message,
            }) => (f, message),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn the_default_is_the_24_hours_ending_with_the_current_one() {
        let now = T0 + 5 * HOUR_MS + 1234;
        let r = q("").range(Timestamp(now)).unwrap();
        assert_eq!(r.count, 24);
        assert_eq!(r.first, Timestamp(T0 + 5 * HOUR_MS - 23 * HOUR_MS));
        assert_eq!(r.end(), Timestamp(T0 + 6 * HOUR_MS));
        assert_eq!(q("from=&to=&step=&ip="), q(""));
    }

    #[test]
    fn buckets_run_from_the_one_holding_from_to_the_one_holding_to() {
        let r = q("from=2027-01-01T10:59:59Z&to=2027-01-01T12:00:00Z&step=1h")
            .range(Timestamp(0))
            .unwrap();
        assert_eq!(r.count, 3);
        assert_eq!(r.first.rfc3339(), "2027-01-01T10:00:00Z");
        let r = q("from=2027-01-01T23:59:59Z&to=2027-01-03T00:00:00Z&step=1d")
            .range(Timestamp(0))
            .unwrap();
        assert_eq!(
            (r.first.rfc3339().as_str(), r.count),
            ("2027-01-01T00:00:00Z", 3)
        );
        // One instant: one bucket.
        let r = q("from=2027-01-01T10:00:00Z&to=2027-01-01T10:00:00Z")
            .range(Timestamp(0))
            .unwrap();
        assert_eq!(r.count, 1);
    }

    #[test]
    fn at_most_2000_buckets() {
        let from = Timestamp(T0).rfc3339();
        let ok = Timestamp(T0 + 1999 * HOUR_MS).rfc3339();
        let over = Timestamp(T0 + 2000 * HOUR_MS).rfc3339();
        assert_eq!(
            q(&format!("from={from}&to={ok}"))
                .range(Timestamp(0))
                .unwrap()
                .count,
            2000
        );
        let (field, message) = refusal(&format!("from={from}&to={over}"), 0);
        assert_eq!(field, "from");
        assert!(message.contains("2001 buckets"), "{message}");
        // The default daily range: the days holding the last 24 hours.
        assert_eq!(q("step=1d").range(Timestamp(T0)).unwrap().count, 2);
    }

    #[test]
    fn refusals_name_the_parameter() {
        assert_eq!(
            refusal("from=2027-01-02T00:00:00Z&to=2027-01-01T00:00:00Z", 0).0,
            "from"
        );
        // A `from` after now (the default `to`).
        assert_eq!(refusal("from=2027-01-02T00:00:00Z", 0).0, "from");
        assert_eq!(refusal("from=yesterday", 0).0, "from");
        assert_eq!(refusal("to=2027-01-01T00:00:00+02:00", 0).0, "to");
        assert_eq!(refusal("step=1w", 0).0, "step");
        assert_eq!(refusal("ip=10.0.0.0/8", 0).0, "ip");
        assert_eq!(refusal("ip=nonsense", 0).0, "ip");
        assert_eq!(refusal("colour=red", 0).0, "colour");
        assert_eq!(
            q("ip=::ffff:192.0.2.1").ip,
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn empty_buckets_are_included_and_days_sum_their_hours() {
        let range = Range {
            first: Timestamp(T0),
            count: 3,
            step: Step::Day,
        };
        let row = |hour: i64, requests: u64| HourCounts {
            hour: Timestamp(hour),
            requests,
            refused: [0, 0, 0, 0, 0, 0, requests],
        };
        let b = buckets(
            &range,
            &[
                row(T0, 1),
                row(T0 + 23 * HOUR_MS, 2),
                row(T0 + 2 * DAY_MS, 5),
            ],
        );
        let got: Vec<(u64, u64)> = b
            .iter()
            .map(|b| (b.requests, b.refused.rate_limited))
            .collect();
        assert_eq!(got, [(3, 3), (0, 0), (5, 5)]);
        assert_eq!(b[1].start, Timestamp(T0 + DAY_MS).rfc3339());
    }

    #[test]
    fn seven_days_oldest_first_today_last() {
        let now = Timestamp(T0 + 10 * DAY_MS + 5);
        assert_eq!(week_start(now), Timestamp(T0 + 4 * DAY_MS));
        let w = requests_7d(vec![
            ("192.0.2.1".into(), 0, 2),
            ("192.0.2.1".into(), 6, 3),
            ("192.0.2.1".into(), 7, 9),
            ("192.0.2.2".into(), 3, 1),
        ]);
        assert_eq!(w["192.0.2.1"], [2, 0, 0, 0, 0, 0, 3]);
        assert_eq!(w["192.0.2.2"], [0, 0, 0, 1, 0, 0, 0]);
    }
}
