//! The Redis backend: one budget per token shared by every instance.
//!
//! Each check is one round trip: the Lua script below, run atomically by Redis on the token's
//! key `tokengate:rl:<uuid>` (EVALSHA; the `redis` crate loads the script and retries when
//! the server answers NOSCRIPT, as it does after a restart). The script is the GCRA step of
//! `mod.rs` (`step`, `convert`) written in Lua over the same integers, with `now` from the
//! gateway clock as an argument. All requests share one multiplexed connection, a
//! [`ConnectionManager`], created without connecting: it connects in the background, and
//! reconnects by itself when the connection is lost (Redis restarted, network cut). Every
//! call is bounded by the configured timeout; a timeout or error counts in `errors` and
//! answers [`Verdict::Unavailable`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Script;
use uuid::Uuid;

use super::{RateLimit, Verdict};
use crate::clock::Timestamp;

/// The prefix of the keys, one per token.
const KEY_PREFIX: &str = "tokengate:rl:";
/// How much longer than its TAT a key lives: instances' clocks may differ a little, and a
/// key that vanished early would hand its token a fresh burst.
const EXPIRY_SLACK_MS: i64 = 1_000;

/// GCRA on one key. The value is `"<tat_ms> <rem> <N> <T>"`: the TAT as a millisecond plus
/// `rem` ticks of 1/N ms, and the limit that wrote it (T = per in ms). Every number stays
/// below 2^53 (Lua numbers are doubles): products of ticks are only formed once the TAT is
/// known to be at most `per` ahead, and then they are at most (N+1)·per_ms < 2^47.
const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])
local cap = n * t
local function ceil_div(a, b) return math.floor((a + b - 1) / b) end
local d = 0
local converted = false
local v = redis.call('GET', KEYS[1])
if v then
  local ms, rem, vn, vt = string.match(v, '^(%-?%d+) (%d+) (%d+) (%d+)$')
  if ms then
    local ahead = tonumber(ms) - now
    rem = tonumber(rem)
    vn = tonumber(vn)
    vt = tonumber(vt)
    if vn ~= n or vt ~= t then
      converted = true
      if ahead < 0 then
        d = 0
      elseif ahead > t then
        d = cap
      else
        d = math.min(ahead * n + ceil_div(rem * n, vn), cap)
      end
    elseif ahead > t then
      return {0, (ahead - t) + ceil_div(rem + t, n), ahead + ceil_div(rem, n)}
    elseif ahead >= 0 then
      d = ahead * n + rem
    end
  end
end
local function store(x)
  redis.call('SET', KEYS[1],
    string.format('%d %d %d %d', now + math.floor(x / n), x % n, n, t),
    'PX', ceil_div(x, n) + slack)
end
local nxt = d + t
if nxt > cap then
  if converted then store(d) end
  return {0, ceil_div(nxt - cap, n), ceil_div(d, n)}
end
store(nxt)
return {1, math.floor((cap - nxt) / t), ceil_div(nxt, n)}
";

pub(super) struct Redis {
    conn: ConnectionManager,
    script: Script,
    timeout: Duration,
    errors: AtomicU64,
    /// Whether the last check failed: the first failure and the recovery are logged, not
    /// every failed check.
    failing: AtomicBool,
}

impl Redis {
    pub(super) fn new(url: &str, timeout: Duration) -> Result<Redis, String> {
        if timeout.is_zero() {
            return Err("the rate-limit Redis timeout must be positive".into());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("the Redis rate limiter must be created inside the Tokio runtime".into());
        }
        let client =
            ::redis::Client::open(url).map_err(|e| format!("invalid rate_limit.redis_url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            // Connecting may take longer than one check may wait: checks answer Unavailable
            // meanwhile, and the connection is there for the next ones.
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(timeout))
            // A lost server is retried 100, 200, 400 ms later (with jitter), then again at the
            // next check, so a restarted Redis is found again within about a second.
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("rate_limit.redis_url: {e}"))?;
        // Open the connection now, in the background: the first request need not wait.
        let mut warm = conn.clone();
        tokio::spawn(async move {
            let _ = ::redis::cmd("PING").query_async::<()>(&mut warm).await;
        });
        Ok(Redis {
            conn,
            script: Script::new(SCRIPT),
            timeout,
            errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    pub(super) async fn check(&self, key: Uuid, limit: RateLimit, now: Timestamp) -> Verdict {
        let mut buf = [0u8; KEY_PREFIX.len() + 36];
        buf[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX.as_bytes());
        key.hyphenated().encode_lower(&mut buf[KEY_PREFIX.len()..]);
        let mut call = self.script.key(&buf[..]);
        call.arg(now.0)
            .arg(limit.per_ms())
            .arg(limit.ticks_per_ms())
            .arg(EXPIRY_SLACK_MS);
        let mut conn = self.conn.clone();
        let call = call.invoke_async::<(i64, i64, i64)>(&mut conn);
        let reply = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return self.failed(&e),
            Err(_) => return self.failed(&format_args!("no answer within {:?}", self.timeout)),
        };
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("rate-limit backend (Redis) answers again");
        }
        match reply {
            (1, remaining, reset_ms) => Verdict::Admitted {
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset_ms,
            },
            (_, retry_after_ms, reset_ms) => Verdict::Limited {
                retry_after_ms,
                reset_ms,
            },
        }
    }

    fn failed(&self, why: &dyn std::fmt::Display) -> Verdict {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, "rate-limit backend (Redis) unavailable");
        } else {
            tracing::debug!(error = %why, "rate-limit backend (Redis) unavailable");
        }
        Verdict::Unavailable
    }

    pub(super) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
