//! The per-client-IP limit on failed authentications (SPEC §2 row 2).
//!
//! A fixed one-minute window per IP, opened by its first failure. While an IP has
//! `limit` or more failures in its window, every request from it is answered 429 before any
//! lookup. Windows live in a bounded moka cache, so a flood from millions of addresses costs
//! bounded memory (the least recently seen windows are dropped first). Time comes from the
//! gateway clock, so tests can move it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{SharedClock, Timestamp};

const WINDOW_MS: i64 = 60_000;
/// How many distinct IPs' windows are remembered at once.
const MAX_TRACKED_IPS: u64 = 200_000;

struct Window {
    start: AtomicI64,
    count: AtomicU32,
}

pub struct FailureLimiter {
    limit: u32,
    clock: SharedClock,
    windows: moka::sync::Cache<IpAddr, Arc<Window>>,
    /// Time of the latest failure from any IP: when it is a window or more ago, no IP can be
    /// over its limit and `check` skips the cache lookup (the common case, on the hot path).
    last_failure: AtomicI64,
    /// Where a crossing of the limit goes (`auth.failures`, SPEC §10), when some webhook
    /// endpoint takes it: at most once per IP per window, never waiting.
    crossings: std::sync::OnceLock<tokio::sync::mpsc::Sender<(IpAddr, Timestamp)>>,
}

impl FailureLimiter {
    /// `limit` = failures allowed per IP per minute; 0 turns the limiter off.
    pub fn new(limit: u32, clock: SharedClock) -> FailureLimiter {
        FailureLimiter {
            limit,
            clock,
            windows: moka::sync::Cache::builder()
                .max_capacity(MAX_TRACKED_IPS)
                // Only for memory: correctness uses the gateway clock below.
                .time_to_idle(Duration::from_secs(120))
                .build(),
            last_failure: AtomicI64::new(i64::MIN / 2),
            crossings: std::sync::OnceLock::new(),
        }
    }

    /// Reports every IP that reaches the limit to `sink` (a full channel drops the report).
    pub fn report_crossings(&self, sink: tokio::sync::mpsc::Sender<(IpAddr, Timestamp)>) {
        let _ = self.crossings.set(sink);
    }

    /// `Some(retry_after_secs)` when `ip` is over its limit now.
    pub fn check(&self, ip: IpAddr) -> Option<u64> {
        let ip = window_key(ip);
        if self.limit == 0 {
            return None;
        }
        let now = self.clock.now();
        if now.0 - self.last_failure.load(Ordering::Relaxed) >= WINDOW_MS {
            return None;
        }
        let w = self.windows.get(&ip)?;
        let start = w.start.load(Ordering::Relaxed);
        let remaining = start + WINDOW_MS - now.0;
        if remaining <= 0 || w.count.load(Ordering::Relaxed) < self.limit {
            return None;
        }
        Some(u64::try_from((remaining + 999) / 1000).unwrap_or(1).max(1))
    }

    /// Counts one failed authentication from `ip`.
    pub fn record_failure(&self, client: IpAddr) {
        let ip = window_key(client);
        if self.limit == 0 {
            return;
        }
        let now: Timestamp = self.clock.now();
        self.last_failure.fetch_max(now.0, Ordering::Relaxed);
        let w = self.windows.get_with(ip, || {
            Arc::new(Window {
                start: AtomicI64::new(now.0),
                count: AtomicU32::new(0),
            })
        });
        let start = w.start.load(Ordering::Relaxed);
        let count = if now.0 - start >= WINDOW_MS {
            // The old window has passed: this failure opens a new one. Two racing failures
            // may both reset; the count is then off by one at most, which is harmless.
            w.start.store(now.0, Ordering::Relaxed);
            w.count.store(1, Ordering::Relaxed);
            1
        } else {
            w.count.fetch_add(1, Ordering::Relaxed) + 1
        };
        if count == self.limit {
            if let Some(sink) = self.crossings.get() {
                let _ = sink.try_send((client, now));
            }
        }
    }
}

/// IPv6 clients are counted per /64: one host usually holds a whole /64 and could otherwise
/// rotate through 2^64 addresses, each with a fresh window.
fn window_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn refuses_after_limit_until_the_window_passes() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let l = FailureLimiter::new(3, Arc::new(clock.clone()));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..2 {
            l.record_failure(ip);
            assert_eq!(l.check(ip), None);
        }
        l.record_failure(ip);
        assert_eq!(l.check(ip), Some(60));
        assert_eq!(l.check(other), None);
        clock.advance(Duration::from_millis(59_500));
        assert_eq!(l.check(ip), Some(1));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(ip), None);
        l.record_failure(ip);
        assert_eq!(l.check(ip), None, "a new window starts from one failure");
    }

    #[test]
    fn a_crossing_is_reported_once_per_window() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let l = FailureLimiter::new(3, Arc::new(clock.clone()));
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        l.report_crossings(tx);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            l.record_failure(ip);
        }
        assert_eq!(rx.try_recv().unwrap(), (ip, Timestamp(1_000_000)));
        assert!(rx.try_recv().is_err(), "once per window");
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            l.record_failure(ip);
        }
        assert_eq!(rx.try_recv().unwrap().0, ip);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let clock = ManualClock::new(Timestamp(0));
        let l = FailureLimiter::new(2, Arc::new(clock));
        l.record_failure("2001:db8:1:2::1".parse().unwrap());
        l.record_failure("2001:db8:1:2:ffff::9".parse().unwrap());
        assert!(l.check("2001:db8:1:2::77".parse().unwrap()).is_some());
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_none());
    }

    #[test]
    fn zero_turns_it_off() {
        let l = FailureLimiter::new(0, Arc::new(ManualClock::new(Timestamp(0))));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..100 {
            l.record_failure(ip);
        }
        assert_eq!(l.check(ip), None);
    }
}
