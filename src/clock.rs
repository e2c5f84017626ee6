//! The gateway's only source of wall-clock time.
//!
//! Every timestamp the gateway stores or compares (creation, use, idle limits, rate-limit
//! windows) comes from a [`Clock`]. Production uses [`SystemClock`]; tests inject a
//! [`ManualClock`] and move it forward to exercise the idle policy without waiting. The
//! database server's clock is never used (SQL never calls `now()`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC. The unit every layer (store, policy, API) shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating (durations come from config and may be huge).
    pub fn plus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// `self - d`, saturating.
    pub fn minus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }

    /// RFC 3339 in UTC with a `Z`, second precision (`2026-11-26T03:04:05Z`).
    pub fn rfc3339(self) -> String {
        // RFC 3339 ends at 9999-12-31T23:59:59Z; a huge configured duration must not panic.
        const MAX_SECS: u64 = 253_402_300_799;
        let secs = u64::try_from(self.0.div_euclid(1000))
            .unwrap_or(0)
            .min(MAX_SECS);
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
    }

    /// An RFC 3339 UTC time (`2027-01-31T00:00:00Z`, fractional seconds allowed); `None` for
    /// anything else, an offset other than `Z` included.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let t = humantime::parse_rfc3339(s.trim()).ok()?;
        let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis();
        i64::try_from(ms).ok().map(Timestamp)
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock that only moves when told to; shared by cloning. For tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }

    /// Starts at the current system time (rounded to a whole second, so API timestamps
    /// printed with second precision compare exactly).
    pub fn starting_now() -> Self {
        let now = SystemClock.now().0;
        Self::new(Timestamp(now - now.rem_euclid(1000)))
    }

    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// The clock handle the rest of the gateway holds.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_refuses_what_it_cannot_read_exactly() {
        let t = Timestamp::parse_rfc3339("2027-01-31T00:00:00Z").unwrap();
        assert_eq!(t.rfc3339(), "2027-01-31T00:00:00Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2027-01-31T00:00:00.250Z"),
            Some(Timestamp(t.0 + 250))
        );
        for bad in ["2027-01-31", "2027-01-31T00:00:00+02:00", "soon", ""] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(i64::MAX).rfc3339(), "9999-12-31T23:59:59Z");
        assert_eq!(Timestamp(-5).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_700_000_000_999).rfc3339(),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        assert_eq!(c.now(), Timestamp(1000));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Timestamp(3000));
        assert_eq!(c.now().plus(Duration::from_millis(5)), Timestamp(3005));
        assert_eq!(c.now().minus(Duration::from_millis(5)), Timestamp(2995));
    }
}
