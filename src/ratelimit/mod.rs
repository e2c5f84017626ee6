//! Per-token rate limits (SPEC: a token's `rate_limit` and the `[rate_limit]` section).
//!
//! A limit is `{"requests": N, "per": "<duration>"}` ([`RateLimit`]): N from 1 to 1 000 000,
//! `per` from 1 s to 1 d in whole milliseconds. It is enforced as a token bucket in its GCRA
//! form: emission interval T = per/N, tolerance τ = per − T, so a token may spend a burst of
//! at most N uses at once and then gets one more every T. The long-run rate never exceeds
//! N per `per`, and there is no window edge to double a burst across: within any span of
//! time D at most N + ⌊N·D/per⌋ uses are admitted. Only admitted uses draw on the budget; a
//! refused one does not move the theoretical arrival time (TAT).
//!
//! # Exact arithmetic, the same in both backends
//!
//! Time comes in whole milliseconds from the gateway clock (`now`, never the Redis server's
//! `TIME`). T = per/N is often not a whole number of milliseconds (1 000 000 per 1 s is
//! 0.001 ms), so the bucket counts in *ticks* of 1/N ms: then T is exactly `per_ms` ticks
//! and the bucket holds exactly N·per_ms ticks. Nothing is rounded: the burst is exactly N
//! and the long-run rate exactly N per `per` (only the times reported are rounded, up, to
//! whole milliseconds). The state of a token is its TAT, held as a whole millisecond plus a
//! remainder in ticks (`0 ≤ rem < N`). Every product of ticks the step forms is at most
//! (N+1)·per_ms < 2^47, so the Redis Lua script (whose numbers are doubles, exact to 2^53)
//! computes the very same integers as the local backend. The step (`step`):
//!
//! ```text
//! d    = max(TAT − now, 0)          (ticks)
//! next = d + T
//! next > N·T  → Limited   retry_after = ⌈(next − N·T)/N⌉ ms, reset = ⌈d/N⌉ ms
//! otherwise   → Admitted  TAT = now + next, remaining = ⌊(N·T − next)/T⌋, reset = ⌈next/N⌉ ms
//! ```
//!
//! `reset` is the time until the bucket is full again (the TAT has passed), `retry_after`
//! the time until the next use would be admitted. A TAT further ahead than a full bucket
//! (the clock went back, or another instance's clock is ahead) is waited for as it is, never
//! cut short: cutting it would let instances with skewed clocks admit more than N per `per`.
//! A token checked under a different limit than the one its TAT was written under (its limit
//! changed) keeps what it has used, converted to the new limit's ticks, but at most one
//! empty bucket of the new limit (`convert`), so a relaxed limit helps at once.
//!
//! Time for Redis keys: the key of a token lives until its bucket is full again plus 1 s (by
//! the Redis server's clock, a relative expiry); a key that is gone reads as a full bucket.
//! A check that timed out may still be applied by Redis later (the script was sent).
//!
//! # Backends
//!
//! [`RateLimiter::local`] counts in this process alone (`backend = "local"`): a sharded
//! [`dashmap::DashMap`] from token id to a slot whose TAT is one `AtomicI64` updated by a
//! compare-and-swap loop, exact under concurrency, with no allocation once a token's slot
//! exists. [`RateLimiter::redis`] keeps one budget per token shared by every instance
//! (`backend = "redis"`): one atomic Lua script per check (EVALSHA, EVAL-loaded again after
//! NOSCRIPT) on the key `tokengate:rl:<uuid>`, written with a millisecond expiry (`SET … PX`,
//! the PEXPIRE of the key) so idle keys vanish; one multiplexed connection that reconnects by
//! itself; each call bounded by a timeout, after which (or on any error) the check answers
//! [`Verdict::Unavailable`] and the caller applies `on_backend_error`.
//!
//! # The API
//!
//! - [`RateLimit`]: `new(requests, per)`, `parse_cli("100/1m")`, `requests()`, `per()`,
//!   `per_text()`; serde as `{"requests": N, "per": "1m"}` (unknown fields refused, values
//!   validated). Error messages are written to fit a 400 body.
//! - [`RateLimiter`]: `local()`, `redis(url, timeout)`, `check(key, limit, now) -> Verdict`,
//!   `forget(key)`, `prune(now)`, `backend_errors()`.
//! - [`Verdict`]: `Admitted { remaining, reset_ms }`, `Limited { retry_after_ms, reset_ms }`,
//!   `Unavailable`.
//! - Headers ([draft-ietf-httpapi-ratelimit-headers-09], structured fields):
//!   [`policy_header`], [`ratelimit_header`], with [`retry_after_secs`] and [`reset_secs`]
//!   for the whole seconds they carry.
//!
//! [draft-ietf-httpapi-ratelimit-headers-09]:
//!     https://datatracker.ietf.org/doc/html/draft-ietf-httpapi-ratelimit-headers-09

mod local;
mod redis;

use std::fmt;
use std::time::Duration;

use http::HeaderValue;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Timestamp;

/// The most requests a limit may allow per `per`.
pub const MAX_REQUESTS: u32 = 1_000_000;
/// The shortest `per`.
pub const MIN_PER: Duration = Duration::from_secs(1);
/// The longest `per`.
pub const MAX_PER: Duration = Duration::from_secs(86_400);

const REQUESTS_MSG: &str = "rate_limit.requests must be from 1 to 1000000";
const PER_RANGE_MSG: &str = "rate_limit.per must be from 1s to 1d";
const PER_MS_MSG: &str = "rate_limit.per must be a whole number of milliseconds";
const PER_SYNTAX_MSG: &str = "rate_limit.per must be a duration such as \"1m\" or \"30s\"";
const CLI_MSG: &str = "a rate limit is REQUESTS/PER, such as 100/1m";

/// A validated per-token limit: at most `requests` uses per `per`, in bursts of at most
/// `requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    requests: u32,
    per: Duration,
}

impl RateLimit {
    /// `requests` from 1 to 1 000 000, `per` from 1 s to 1 d in whole milliseconds.
    pub fn new(requests: u64, per: Duration) -> Result<RateLimit, String> {
        let requests = u32::try_from(requests)
            .ok()
            .filter(|r| (1..=MAX_REQUESTS).contains(r))
            .ok_or(REQUESTS_MSG)?;
        if !(MIN_PER..=MAX_PER).contains(&per) {
            return Err(PER_RANGE_MSG.into());
        }
        if per.subsec_nanos() % 1_000_000 != 0 {
            return Err(PER_MS_MSG.into());
        }
        Ok(RateLimit { requests, per })
    }

    /// The command-line form `REQUESTS/PER`, such as `100/1m` or `5/30s`.
    pub fn parse_cli(s: &str) -> Result<RateLimit, String> {
        let (requests, per) = s.split_once('/').ok_or(CLI_MSG)?;
        let requests = requests.trim();
        if requests.is_empty() || !requests.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CLI_MSG.into());
        }
        // All digits: a number too large for u64 is out of range like any other.
        let requests = requests.parse::<u64>().unwrap_or(u64::MAX);
        RateLimit::new(requests, parse_per(per)?)
    }

    pub fn requests(self) -> u32 {
        self.requests
    }

    pub fn per(self) -> Duration {
        self.per
    }

    /// `per` in humantime's spelling, which [`RateLimit`]'s parsers read back: `"1m"`,
    /// `"30s"`, `"1h 30m"`, `"1day"`.
    pub fn per_text(self) -> String {
        humantime::format_duration(self.per).to_string()
    }

    /// `per` in milliseconds: at most 86 400 000, validated by [`RateLimit::new`].
    fn per_ms(self) -> i64 {
        // Lossless: per ≤ 1 d.
        self.per.as_millis() as i64
    }

    /// Ticks (1/N ms) per millisecond: N.
    fn ticks_per_ms(self) -> i64 {
        i64::from(self.requests)
    }

    /// The bucket's size in ticks: N·per_ms ≤ 8.64·10^13.
    fn capacity(self) -> i64 {
        self.ticks_per_ms() * self.per_ms()
    }
}

impl fmt::Display for RateLimit {
    /// The command-line form, `100/1m`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.requests, self.per_text())
    }
}

fn parse_per(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| PER_SYNTAX_MSG.to_string())
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("RateLimit", 2)?;
        s.serialize_field("requests", &self.requests)?;
        s.serialize_field("per", &self.per_text())?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RateLimit, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            requests: Requests,
            per: String,
        }
        let w = Wire::deserialize(deserializer)?;
        let per = parse_per(&w.per).map_err(de::Error::custom)?;
        RateLimit::new(w.requests.0, per).map_err(de::Error::custom)
    }
}

/// `requests` as any JSON integer, so that `0`, `-1` and `1e9` all get the range message.
struct Requests(u64);

impl<'de> Deserialize<'de> for Requests {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Requests, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Requests;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer from 1 to 1000000")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Requests, E> {
                Ok(Requests(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Requests, E> {
                u64::try_from(v)
                    .map(Requests)
                    .map_err(|_| E::custom(REQUESTS_MSG))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Requests, E> {
                Err(E::custom(REQUESTS_MSG))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The use is admitted and drawn from the budget. `remaining`: uses that would still be
    /// admitted right now, after this one; `reset_ms`: until the bucket is full again.
    Admitted { remaining: u32, reset_ms: i64 },
    /// Over the limit (answer 429 `rate_limited`); nothing was drawn. `retry_after_ms`:
    /// until the next use would be admitted (≥ 1); `reset_ms`: until the bucket is full.
    Limited { retry_after_ms: i64, reset_ms: i64 },
    /// The Redis backend failed or timed out: the caller applies `on_backend_error`.
    Unavailable,
}

/// The outcome of one GCRA step on `d` = TAT − now, in ticks (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Admitted: the new TAT is now + `next` ticks.
    Admit {
        next: i64,
        verdict: Verdict,
    },
    Refuse(Verdict),
}

/// ⌈a/b⌉ for a ≥ 0, b > 0, without overflow.
fn ceil_div(a: i64, b: i64) -> i64 {
    a / b + i64::from(a % b != 0)
}

/// One GCRA step; the Redis script (`redis.rs`) computes the same integers. A TAT more than
/// a full bucket ahead (the clock went back, or instances' clocks differ) is honoured as it
/// is: the use waits for it, with a `retry_after` that says how long, and nothing is admitted
/// early.
fn step(d: i64, limit: RateLimit) -> Step {
    let n = limit.ticks_per_ms();
    let t = limit.per_ms();
    let cap = limit.capacity();
    let d = d.max(0);
    let next = d.saturating_add(t);
    if next > cap {
        Step::Refuse(Verdict::Limited {
            retry_after_ms: ceil_div(next - cap, n),
            reset_ms: ceil_div(d, n),
        })
    } else {
        Step::Admit {
            next,
            verdict: Verdict::Admitted {
                // ≤ N − 1.
                remaining: ((cap - next) / t) as u32,
                reset_ms: ceil_div(next, n),
            },
        }
    }
}

/// A TAT written under limit `old`, `tat_ms` plus `rem` ticks of `old` (`0 ≤ rem < old.N`),
/// read at `now` under the different limit `new`: TAT − now in ticks of `new`, rounded up,
/// and at most `new`'s bucket (a token whose limit changes keeps what it has used, but is
/// never further behind than an empty bucket of its new limit: a relaxed limit helps at
/// once). The Redis script converts the same way.
fn convert(tat_ms: i64, rem: i64, old: RateLimit, new: RateLimit, now: Timestamp) -> i64 {
    let ahead_ms = tat_ms.saturating_sub(now.0);
    if ahead_ms < 0 {
        0
    } else if ahead_ms > new.per_ms() {
        new.capacity()
    } else {
        let n = new.ticks_per_ms();
        (ahead_ms * n + ceil_div(rem * n, old.ticks_per_ms())).min(new.capacity())
    }
}

/// Counts per-token uses against their [`RateLimit`]s, in this process or in Redis.
pub struct RateLimiter {
    backend: Backend,
}

enum Backend {
    Local(local::Local),
    Redis(redis::Redis),
}

impl RateLimiter {
    /// Each instance counts alone (`backend = "local"`).
    pub fn local() -> RateLimiter {
        RateLimiter {
            backend: Backend::Local(local::Local::new()),
        }
    }

    /// One budget per token shared by every instance using the Redis server at `url`
    /// (`redis://host:port[/db]`, `redis://:password@host`, `unix:///path`). Does not connect
    /// here: the connection is opened in the background, so start-up does not wait for Redis
    /// (nor fail when it is down) and it is re-opened by itself whenever it is lost. Each check
    /// waits at most `timeout` for Redis. Must be called inside the Tokio runtime.
    pub fn redis(url: &str, timeout: Duration) -> Result<RateLimiter, String> {
        Ok(RateLimiter {
            backend: Backend::Redis(redis::Redis::new(url, timeout)?),
        })
    }

    /// Checks one use by `key` (the token's id) at `now` (the gateway clock) against `limit`,
    /// drawing on the budget if it is admitted. The first check of a key starts from a full
    /// bucket; a key checked with a different limit than before keeps what it has used, at
    /// most an empty bucket of the new limit (see the module doc).
    pub async fn check(&self, key: Uuid, limit: RateLimit, now: Timestamp) -> Verdict {
        match &self.backend {
            Backend::Local(l) => l.check(key, limit, now),
            // Boxed: the round trip's future (a timer, the script call) would otherwise be
            // part of every request's future, with a local backend or no limit too.
            Backend::Redis(r) => Box::pin(r.check(key, limit, now)).await,
        }
    }

    /// Drops a token's state. Not called by the gateway today: a changed limit converts what
    /// was used (see `check`), and `prune` reclaims a deleted token's slot. Local: its state is dropped (its next
    /// check starts from a full bucket). Redis: nothing is done; the key expires by itself
    /// once its bucket is full again, and deleting it from every instance that learns of the
    /// change would hand the token a fresh burst each time.
    pub fn forget(&self, key: Uuid) {
        match &self.backend {
            Backend::Local(l) => l.forget(key),
            Backend::Redis(_) => {}
        }
    }

    /// How many checks failed for want of the backend (errors and timeouts of Redis; always
    /// 0 for local), for the metric of rate-limit backend errors.
    pub fn backend_errors(&self) -> u64 {
        match &self.backend {
            Backend::Local(_) => 0,
            Backend::Redis(r) => r.errors(),
        }
    }

    /// Local: drops the state of every key whose bucket is full again at `now`, which changes
    /// no verdict while the clock moves forward. Call it from a background tick. Redis: nothing
    /// to do (keys expire).
    pub fn prune(&self, now: Timestamp) {
        match &self.backend {
            Backend::Local(l) => l.prune(now),
            Backend::Redis(_) => {}
        }
    }
}

// === headers (draft-ietf-httpapi-ratelimit-headers-09, 18 March 2025) ===
//
// Two structured-field lists, each with one item named "default": the policy
// (`q` = quota in requests, `w` = window in seconds) and the current service limit
// (`r` = remaining quota, `t` = seconds until the quota resets). Draft-09 asks `t` to name
// the same moment as `Retry-After` when both are sent; later revisions redefine `t` (10:
// "until additional quota is made available", 11: "effective window").

/// The policy's name in both fields.
const POLICY: &str = "default";

/// `RateLimit-Policy: "default";q=<requests>;w=<per in seconds, rounded up>` (draft-09 §3;
/// `w` is whole seconds, so a `per` of 1.5 s is advertised as 2).
pub fn policy_header(limit: RateLimit) -> HeaderValue {
    let w = limit.per.as_millis().div_ceil(1000);
    ascii(format!("\"{POLICY}\";q={};w={w}", limit.requests))
}

/// `RateLimit: "default";r=<remaining>;t=<reset_secs>` (draft-09 §4); `remaining` is capped at
/// the limit's requests. For an admitted use pass [`reset_secs`] of its `reset_ms`; on a 429
/// pass the `Retry-After` value, as draft-09 §6 asks (and `remaining` 0).
pub fn ratelimit_header(limit: RateLimit, remaining: u32, reset_secs: u64) -> HeaderValue {
    let r = remaining.min(limit.requests);
    ascii(format!("\"{POLICY}\";r={r};t={reset_secs}"))
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(retry_after_ms: i64) -> u64 {
    u64::try_from(retry_after_ms)
        .unwrap_or(0)
        .div_ceil(1000)
        .max(1)
}

/// A reset time in whole seconds, rounded up (0 for none).
pub fn reset_secs(reset_ms: i64) -> u64 {
    u64::try_from(reset_ms).unwrap_or(0).div_ceil(1000)
}

fn ascii(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("digits, letters and ASCII punctuation are a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(n: u64, per: &str) -> RateLimit {
        RateLimit::new(n, humantime::parse_duration(per).unwrap()).unwrap()
    }

    #[test]
    fn new_validates_the_ranges_with_messages_for_a_400() {
        let s = Duration::from_secs;
        assert_eq!(lim(1, "1s").requests(), 1);
        assert_eq!(lim(1_000_000, "1d").per(), s(86_400));
        assert_eq!(lim(3, "1001ms").per(), Duration::from_millis(1001));
        assert_eq!(RateLimit::new(0, s(60)).unwrap_err(), REQUESTS_MSG);
        assert_eq!(RateLimit::new(1_000_001, s(60)).unwrap_err(), REQUESTS_MSG);
        assert_eq!(RateLimit::new(u64::MAX, s(60)).unwrap_err(), REQUESTS_MSG);
        assert_eq!(
            RateLimit::new(1 << 32, s(60)).unwrap_err(),
            REQUESTS_MSG,
            "no wrap to u32"
        );
        assert_eq!(
            RateLimit::new(10, Duration::from_millis(999)).unwrap_err(),
            PER_RANGE_MSG
        );
        assert_eq!(RateLimit::new(10, s(86_401)).unwrap_err(), PER_RANGE_MSG);
        assert_eq!(
            RateLimit::new(10, Duration::ZERO).unwrap_err(),
            PER_RANGE_MSG
        );
        assert_eq!(
            RateLimit::new(10, Duration::from_micros(1_500_500)).unwrap_err(),
            PER_MS_MSG
        );
    }

    #[test]
    fn parse_cli_reads_requests_slash_per() {
        assert_eq!(RateLimit::parse_cli("100/1m"), Ok(lim(100, "60s")));
        assert_eq!(RateLimit::parse_cli(" 5 / 30s "), Ok(lim(5, "30s")));
        assert_eq!(
            RateLimit::parse_cli("1000000/1d"),
            Ok(lim(1_000_000, "24h"))
        );
        assert_eq!(RateLimit::parse_cli("2/1h 30m"), Ok(lim(2, "90m")));
        for (bad, msg) in [
            ("0/1m", REQUESTS_MSG),
            ("1000001/1m", REQUESTS_MSG),
            ("99999999999999999999999/1m", REQUESTS_MSG),
            ("100/999ms", PER_RANGE_MSG),
            ("100/1d 1s", PER_RANGE_MSG),
            ("100/1m/2", PER_SYNTAX_MSG),
            ("100/often", PER_SYNTAX_MSG),
            ("100/", PER_SYNTAX_MSG),
            ("100", CLI_MSG),
            ("/1m", CLI_MSG),
            ("-1/1m", CLI_MSG),
            ("1.5/1m", CLI_MSG),
            ("ten/1m", CLI_MSG),
            ("", CLI_MSG),
        ] {
            assert_eq!(RateLimit::parse_cli(bad), Err(msg.to_string()), "{bad:?}");
        }
    }

    #[test]
    fn per_text_is_humantime_and_reads_back() {
        for (per, text) in [
            ("1m", "1m"),
            ("30s", "30s"),
            ("1h", "1h"),
            ("90m", "1h 30m"),
            ("1500ms", "1s 500ms"),
            ("1d", "1day"),
        ] {
            let l = lim(7, per);
            assert_eq!(l.per_text(), text);
            assert_eq!(RateLimit::parse_cli(&l.to_string()), Ok(l));
        }
    }

    #[test]
    fn serde_is_the_json_form_validated_with_unknown_fields_refused() {
        let l = lim(100, "1m");
        assert_eq!(
            serde_json::to_value(l).unwrap(),
            serde_json::json!({"requests": 100, "per": "1m"})
        );
        let back: RateLimit = serde_json::from_str(r#"{"requests": 100, "per": "1m"}"#).unwrap();
        assert_eq!(back, l);
        let err = |s: &str| {
            serde_json::from_str::<RateLimit>(s)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"requests": 0, "per": "1m"}"#).contains(REQUESTS_MSG));
        assert!(err(r#"{"requests": -5, "per": "1m"}"#).contains(REQUESTS_MSG));
        assert!(err(r#"{"requests": 1.5, "per": "1m"}"#).contains(REQUESTS_MSG));
        assert!(err(r#"{"requests": 1000001, "per": "1m"}"#).contains(REQUESTS_MSG));
        assert!(err(r#"{"requests": 10, "per": "999ms"}"#).contains(PER_RANGE_MSG));
        assert!(err(r#"{"requests": 10, "per": "soon"}"#).contains(PER_SYNTAX_MSG));
        assert!(err(r#"{"requests": "10", "per": "1m"}"#).contains("an integer from 1 to"));
        assert!(err(r#"{"requests": 10, "per": 60}"#).contains("invalid type"));
        assert!(err(r#"{"requests": 10}"#).contains("missing field `per`"));
        assert!(err(r#"{"requests": 10, "per": "1m", "burst": 5}"#).contains("unknown field"));
    }

    /// One key of the local backend, checked at whole milliseconds.
    struct Bucket {
        limit: RateLimit,
        key: Uuid,
        local: local::Local,
    }

    impl Bucket {
        fn new(limit: RateLimit) -> Bucket {
            Bucket {
                limit,
                key: Uuid::new_v4(),
                local: local::Local::new(),
            }
        }
        fn check(&mut self, now_ms: i64) -> Verdict {
            self.local.check(self.key, self.limit, Timestamp(now_ms))
        }
        fn admitted(&mut self, now_ms: i64, tries: u32) -> u32 {
            (0..tries)
                .filter(|_| matches!(self.check(now_ms), Verdict::Admitted { .. }))
                .count() as u32
        }
    }

    #[test]
    fn a_burst_admits_exactly_n_then_one_per_emission_interval() {
        for (n, per) in [
            (1, "1s"),
            (10, "1s"),
            (7, "1m"),
            (3, "1001ms"),
            (1000, "1s"),
            (1_000_000, "1s"),
            (1_000_000, "1d"),
        ] {
            let l = lim(n, per);
            let mut b = Bucket::new(l);
            let t0 = 1_000_000;
            assert_eq!(b.admitted(t0, l.requests() + 5), l.requests(), "{l}");
            assert!(matches!(b.check(t0), Verdict::Limited { .. }), "{l}");
            let per_ms = l.per_ms();
            if per_ms <= 60_000 {
                // Tried every millisecond for one `per`: exactly N more, however T rounds
                // to milliseconds (no drift), and not one more.
                let mut later = 0;
                for ms in 1..=per_ms {
                    later += b.admitted(t0 + ms, 2 + l.requests() / per_ms as u32);
                }
                assert_eq!(later, l.requests(), "{l}: one full refill in `per`");
            } else {
                // 1 000 000 per day: T = 86.4 ms.
                assert_eq!(b.admitted(t0 + 86, 2), 0, "{l}");
                assert_eq!(b.admitted(t0 + 87, 2), 1, "{l}");
                assert_eq!(b.admitted(t0 + 2 * per_ms, l.requests() + 1), l.requests());
            }
        }
    }

    #[test]
    fn one_more_after_per_over_n_and_the_full_burst_after_per() {
        let l = lim(10, "1s"); // T = 100 ms
        let mut b = Bucket::new(l);
        assert_eq!(b.admitted(0, 10), 10);
        assert_eq!(
            b.check(0),
            Verdict::Limited {
                retry_after_ms: 100,
                reset_ms: 1000
            }
        );
        assert_eq!(
            b.check(99),
            Verdict::Limited {
                retry_after_ms: 1,
                reset_ms: 901
            }
        );
        assert_eq!(
            b.check(100),
            Verdict::Admitted {
                remaining: 0,
                reset_ms: 1000
            }
        );
        assert!(matches!(b.check(100), Verdict::Limited { .. }));
        // `per` after the last use, the bucket is full again: a whole burst.
        assert_eq!(b.admitted(1100, 11), 10);
        // A refused use draws nothing: hammering while limited does not delay the refill.
        let mut b = Bucket::new(l);
        assert_eq!(b.admitted(0, 10), 10);
        assert_eq!(b.admitted(50, 1000), 0);
        assert_eq!(b.admitted(100, 2), 1);
    }

    #[test]
    fn remaining_and_reset_follow_the_bucket() {
        let l = lim(5, "1m"); // T = 12 s
        let mut b = Bucket::new(l);
        assert_eq!(
            b.check(0),
            Verdict::Admitted {
                remaining: 4,
                reset_ms: 12_000
            }
        );
        assert_eq!(
            b.check(0),
            Verdict::Admitted {
                remaining: 3,
                reset_ms: 24_000
            }
        );
        // 6 s later half a use has come back: this use leaves 2 (of 2.5), 30 s to full.
        assert_eq!(
            b.check(6_000),
            Verdict::Admitted {
                remaining: 2,
                reset_ms: 30_000
            }
        );
        assert_eq!(b.admitted(6_000, 3), 2);
        assert_eq!(
            b.check(6_000),
            Verdict::Limited {
                retry_after_ms: 6_000,
                reset_ms: 54_000
            }
        );
        // Sub-millisecond T: times round up to the next whole millisecond.
        let l = lim(3, "1s"); // T = 333.33 ms
        let mut b = Bucket::new(l);
        assert_eq!(b.admitted(0, 3), 3);
        assert_eq!(
            b.check(0),
            Verdict::Limited {
                retry_after_ms: 334,
                reset_ms: 1000
            }
        );
        assert!(matches!(b.check(333), Verdict::Limited { .. }));
        assert!(matches!(
            b.check(334),
            Verdict::Admitted { remaining: 0, .. }
        ));
    }

    #[test]
    fn no_double_burst_across_a_window_boundary() {
        // A fixed window would admit N just before t = per and N again just after it.
        let l = lim(100, "1m");
        let mut b = Bucket::new(l);
        assert_eq!(b.admitted(59_999, 100), 100);
        assert_eq!(b.admitted(60_000, 100), 0, "1 ms refills 1/600 of a use");
        assert_eq!(b.admitted(60_599, 100), 1, "T = 600 ms");
        // N at 0 and, at per − 1 ms, what has refilled meanwhile (99.98 uses): 99, not 100.
        let mut b = Bucket::new(l);
        assert_eq!(b.admitted(0, 100), 100);
        assert_eq!(b.admitted(59_999, 100), 99);
    }

    #[test]
    fn any_span_admits_at_most_n_plus_its_refill() {
        // Irregular traffic (a fixed-seed LCG): for every span [a, b] of the uses admitted,
        // count ≤ N + ⌊N·(b − a)/per⌋, the token bucket's bound.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for l in [
            lim(5, "1s"),
            lim(7, "1m"),
            lim(100, "10s"),
            lim(3, "1001ms"),
        ] {
            let mut b = Bucket::new(l);
            let mut now = 0;
            let mut admitted = Vec::new();
            for _ in 0..3000 {
                now += rnd(l.per_ms() as u64 / 4) as i64;
                for _ in 0..rnd(4) {
                    if let Verdict::Admitted { .. } = b.check(now) {
                        admitted.push(now);
                    }
                }
            }
            let n = i64::from(l.requests());
            for (i, &a) in admitted.iter().enumerate() {
                for (j, &z) in admitted.iter().enumerate().skip(i) {
                    let bound = n + n * (z - a) / l.per_ms();
                    assert!(
                        (j - i + 1) as i64 <= bound,
                        "{l}: {} in [{a}, {z}]",
                        j - i + 1
                    );
                }
            }
            assert!(admitted.len() > 100, "{l}: the traffic exercised the limit");
        }
    }

    #[test]
    fn a_clock_moved_back_delays_and_says_for_how_long() {
        let l = lim(2, "1s");
        let mut b = Bucket::new(l);
        assert_eq!(b.admitted(1_000_000, 2), 2);
        // Ten minutes back: nothing more until the TAT the uses set has come (again).
        assert_eq!(
            b.check(400_000),
            Verdict::Limited {
                retry_after_ms: 600_500,
                reset_ms: 601_000
            }
        );
        assert_eq!(b.admitted(1_000_499, 2), 0);
        assert_eq!(b.admitted(1_000_500, 2), 1);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        for (ms, secs) in [
            (-5, 1),
            (0, 1),
            (1, 1),
            (999, 1),
            (1000, 1),
            (1001, 2),
            (59_999, 60),
            (60_000, 60),
            (86_400_000, 86_400),
        ] {
            assert_eq!(retry_after_secs(ms), secs, "{ms} ms");
        }
        assert_eq!(reset_secs(0), 0);
        assert_eq!(reset_secs(-1), 0);
        assert_eq!(reset_secs(1), 1);
        assert_eq!(reset_secs(12_000), 12);
        assert_eq!(reset_secs(12_001), 13);
    }

    #[test]
    fn redis_wants_a_url_a_timeout_and_the_runtime_but_no_server() {
        let t = Duration::from_millis(50);
        let err = |r: Result<RateLimiter, String>| r.err().expect("refused");
        assert!(err(RateLimiter::redis("redis://127.0.0.1:1", t)).contains("Tokio runtime"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in = rt.enter();
        let e = err(RateLimiter::redis("http://:hunter2@127.0.0.1:1", t));
        assert!(e.starts_with("invalid rate_limit.redis_url"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the password stays out of messages: {e}"
        );
        assert!(err(RateLimiter::redis("rediss://127.0.0.1:1", t)).contains("redis_url"));
        assert!(err(RateLimiter::redis("redis://127.0.0.1:1", Duration::ZERO)).contains("timeout"));
        // Nothing listens on port 1: created all the same, without waiting.
        assert!(RateLimiter::redis("redis://127.0.0.1:1", t).is_ok());
    }

    #[test]
    fn headers_are_draft_09_structured_fields() {
        assert_eq!(policy_header(lim(100, "1m")), "\"default\";q=100;w=60");
        assert_eq!(policy_header(lim(5, "1500ms")), "\"default\";q=5;w=2");
        assert_eq!(
            policy_header(lim(1_000_000, "1d")),
            "\"default\";q=1000000;w=86400"
        );
        assert_eq!(
            ratelimit_header(lim(100, "1m"), 42, 30),
            "\"default\";r=42;t=30"
        );
        assert_eq!(
            ratelimit_header(lim(100, "1m"), 0, 1),
            "\"default\";r=0;t=1"
        );
        assert_eq!(
            ratelimit_header(lim(10, "1m"), 99, 6),
            "\"default\";r=10;t=6",
            "remaining never exceeds the quota"
        );
    }
}
